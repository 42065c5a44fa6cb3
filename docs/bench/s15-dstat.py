import time, sys
# Samples /proc/diskstats for vda every second (reads/s, bytes per read, ms per read, queue depth) into argv[1]; session 15 ran it beside rskv-bench runs.
# columns: reads, reads merged, sectors read, ms reading, writes, wmerged, sectors written, ms writing, inflight, io ms, weighted ms
prev=None
out=open(sys.argv[1],'w')
while True:
    for l in open('/proc/diskstats'):
        f=l.split()
        if f[2]=='vda':
            v=list(map(int,f[3:14])); t=time.time()
            if prev:
                d=[a-b for a,b in zip(v,prev[1])]; dt=t-prev[0]
                r=d[0]/dt; rs=d[2]*512/max(d[0],1); rl=d[3]/max(d[0],1)
                w=d[4]/dt; ws=d[6]*512/max(d[4],1)
                out.write(f"{t:.0f} r/s {r:8.0f} rsz {rs:7.0f} rlat_ms {rl:6.2f} w/s {w:6.0f} wsz {ws:8.0f} qd {d[10]/1000/dt:6.1f}\n"); out.flush()
            prev=(t,v)
    time.sleep(1)
