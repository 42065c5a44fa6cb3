#!/bin/bash
# Session 16: how R2Kv's update and read cells trade when the read cache's memory moves to the
# hot log (input for a split that follows the workload). Same setup as s16-keep.sh but a 32 MiB
# read cache (the hot log gets the other 16 MiB), bench built at 7f4b522.
set -u
mkdir -p /tmp/s16 && cd /tmp/s16
AFTER=${AFTER:-/tmp/s16/bench-keep}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s16/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --read-cache 32MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
for wl in rmw c; do
  $AFTER $B --workload $wl $R2 --json s16-split-r2-rc32.jsonl
done
echo done > split.finished
