#!/bin/bash
# Session 11 quiet-machine runs. Order: fio, then the stores.
set -u
cd /tmp/s11
mkdir -p data
# fio: the device's random-read rate at 512 B (the stores' read unit) and 4 KiB, queue depth 128 and 1.
fio --name=prep --filename=data/fio.dat --size=2G --rw=write --bs=4M --direct=1 --ioengine=libaio --output=/dev/null
for bs in 512 4k; do for qd in 128 1; do
  fio --name=rr-$bs-qd$qd --filename=data/fio.dat --size=2G --rw=randread --bs=$bs --direct=1 \
      --ioengine=io_uring --iodepth=$qd --runtime=15s --time_based --output-format=json \
      --output=fio-$bs-qd$qd.json
done; done
rm -f data/fio.dat
N=/work/target-main/release/rskv-bench
B="--value-size 100 --memory 128MiB --sessions --duration 15s --warmup 2s --segment-size 64MiB --no-progress --distribution zipf --dir /tmp/s11/data --keys 8M --threads 1"
$N $B --store rskv --read-cache 16MiB --workload b,c --json held-8M-rskv.jsonl > held-8M-rskv.txt 2>&1
$N $B --store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --workload b,c --json held-8M-r2kv.jsonl > held-8M-r2kv.txt 2>&1
# The allocator set-up's cost: glibc's dynamic thresholds, B only.
$N $B --store rskv --read-cache 16MiB --workload b --glibc-malloc-defaults --json malloc-default-rskv.jsonl > /dev/null 2>&1
$N $B --store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --workload b --glibc-malloc-defaults --json malloc-default-r2kv.jsonl > /dev/null 2>&1
# In-memory RMW: the lock count's cost (d26ac56 = before the lock-cycle commit), interleaved.
M="--store rskv --keys 8M --value-size 8 --workload rmw --threads 1 --distribution uniform,zipf --duration 10s --warmup 2s --no-progress --dir /tmp/s11/data"
for i in 1 2; do
  /tmp/bench-d26 $M --json rmw-d26.jsonl > /dev/null 2>&1
  $N $M --json rmw-new.jsonl > /dev/null 2>&1
done
echo done > finished
