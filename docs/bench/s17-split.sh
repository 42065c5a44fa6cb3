#!/bin/bash
# Session 17: R2Kv's cells with the hot budget's 64 MiB split 48/16 (read cache / hot log, the
# bench default) and 32/32, alternating, to see which cells want which split before building a
# split that follows the workload. Same setup as s16-keep.sh; bench built at 7f4b522.
set -u
mkdir -p /tmp/s17 && cd /tmp/s17
BIN=${BIN:-/tmp/s16/bench-keep}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s17/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
for wl in rmw a c f; do
  for rc in 48MiB 32MiB; do
    $BIN $B --workload $wl $R2 --read-cache $rc --json s17-split-r2-rc$rc.jsonl
  done
done
echo done > split.finished
