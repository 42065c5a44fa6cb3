#!/bin/bash
# Session 14, after s14-chains.sh: the same stores on 2 threads (B and C zipf) and on the
# update-heavy zipf cells (A, RMW) with 1 thread, R2Kv with its chains laid out after the load.
set -u
cd /tmp/s14
N=${N:-/work/target-main/release/rskv-bench}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s14/data --keys 8M --distribution zipf"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
RS="--store rskv --read-cache 16MiB"
for wl in c b; do
  $N $B --threads 2 --workload $wl $RS --json s14-more-rskv.jsonl
  $N $B --threads 2 --workload $wl $R2 --json s14-more-r2-laid-out.jsonl
done
for wl in a rmw; do
  $N $B --threads 1 --workload $wl $RS --json s14-more-rskv.jsonl
  $N $B --threads 1 --workload $wl $R2 --json s14-more-r2-laid-out.jsonl
done
echo done > finished-more
