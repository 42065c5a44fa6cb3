#!/bin/bash
# Session 15: workload F (50% read, 50% RMW), zipf, 8M keys x 100 B, 128 MiB, 1 thread:
# before (bench-base, 549f87a) and after (bench-f) RMWs take cached copies as old values.
cd /tmp/s15
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s15/data --keys 8M --distribution zipf --threads 1 --workload f"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
RS="--store rskv --read-cache 16MiB"
for bin in base f; do
  ./bench-$bin $B $RS --json s15-f-rskv-$bin.jsonl > f-rskv-$bin.out 2>&1
done
for bin in base f; do
  ./bench-$bin $B $R2 --json s15-f-r2-$bin.jsonl > f-r2-$bin.out 2>&1
done
echo done > f.finished
