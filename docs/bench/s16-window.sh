#!/bin/bash
# Session 16: does a smaller cold chain window (the bytes a cold read fetches below its record)
# help R2Kv's device-bound RMW cell? Default 1 KiB against 512 B and 256 B, same setup as
# s16-keep.sh, the bench built at 7f4b522.
set -u
mkdir -p /tmp/s16 && cd /tmp/s16
AFTER=${AFTER:-/tmp/s16/bench-keep}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s16/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
for rep in 1 2; do
  for w in 512 1024 256; do
    $AFTER $B --workload rmw $R2 --r2-cold-chain-window $w --json s16-window-$w.jsonl
  done
done
echo done > window.finished
