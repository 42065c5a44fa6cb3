#!/bin/bash
# Session 14, at dbd9cd4: the layout pass with marked chains (C zipf, 1 thread, R2Kv laid out).
set -u
cd /tmp/s14
N=${N:-/work/target-main/release/rskv-bench}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s14/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
$N $B --workload c $R2 --json s14-marks-r2-laid-out.jsonl
