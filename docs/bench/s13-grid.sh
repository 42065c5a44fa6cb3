#!/bin/bash
# Session 13: the zipf half of session 12's grid again after the read cache's admission and the
# smaller scan reads: A, B, C, RMW x zipf 0.99 x 1 and 2 threads, both stores held to 128 MiB,
# 8M keys of 100 B, one run per cell. Then R2Kv at 16M keys (C zipf and uniform with 1 thread,
# B zipf with 2), as in session 11.
set -u
mkdir -p /tmp/s13g
N=${N:-target/release/rskv-bench}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s13g/data"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2"
$N $B --keys 8M --workload a,b,c,rmw --distribution zipf --threads 1,2 --store rskv --read-cache 16MiB --json /tmp/s13g/s13-grid-rskv.jsonl
$N $B --keys 8M --workload a,b,c,rmw --distribution zipf --threads 1,2 $R2 --json /tmp/s13g/s13-grid-r2kv.jsonl
$N $B --keys 16M --workload c --distribution zipf,uniform --threads 1 $R2 --json /tmp/s13g/s13-r2-16M.jsonl
$N $B --keys 16M --workload b --distribution zipf --threads 2 $R2 --json /tmp/s13g/s13-r2-16M.jsonl
echo done > /tmp/s13g/finished
