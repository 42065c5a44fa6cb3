#!/bin/bash
# Session 12: the grid issues 14 and 15 ask for, both stores held to 128 MiB, 8M keys of 100 B:
# workloads A, B, C, RMW x zipf 0.99 and uniform x 1 and 2 threads, one run per cell.
set -u
cd /tmp/s12g
N=/work/target-main/release/rskv-bench
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --keys 8M --dir /tmp/s12g/data --workload a,b,c,rmw --distribution zipf,uniform --threads 1,2"
$N $B --store rskv --read-cache 16MiB --json grid-rskv.jsonl > grid-rskv.txt 2>&1
$N $B --store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --json grid-r2kv.jsonl > grid-r2kv.txt 2>&1
echo done > finished
