#!/bin/bash
# Session 17: R2Kv with the adaptive split (starting from 48 MiB of read cache and 16 MiB of
# hot log) beside the fixed 32/32 split, alternating, then RsKv (16 MiB read cache) fixed and
# adaptive. Same setup as s16-keep.sh; bench built at 39216e1.
set -u
mkdir -p /tmp/s17 && cd /tmp/s17
BIN=${BIN:-/tmp/s17/bench-split}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s17/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
for wl in rmw a c f; do
  $BIN $B --workload $wl $R2 --read-cache 32MiB --json s17-r2-fixed32.jsonl
  $BIN $B --workload $wl $R2 --read-cache 48MiB --adaptive-split --json s17-r2-adaptive48.jsonl
done
for wl in rmw c; do
  $BIN $B --workload $wl --store rskv --read-cache 16MiB --json s17-rskv-fixed.jsonl
  $BIN $B --workload $wl --store rskv --read-cache 16MiB --adaptive-split --json s17-rskv-adaptive.jsonl
done
echo done > adaptive.finished
