#!/bin/bash
# Session 16, second round: the A cell again (R2Kv, before and after alternating, twice), then
# B and C with the keep filter for both stores. Same setup as s16-keep.sh.
set -u
mkdir -p /tmp/s16 && cd /tmp/s16
BEFORE=${BEFORE:-/tmp/s16/bench-base}
AFTER=${AFTER:-/tmp/s16/bench-keep}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s16/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
RS="--store rskv --read-cache 16MiB"
for rep in 1 2; do
  for bin in AFTER BEFORE; do
    ${!bin} $B --workload a $R2 --json s16-keep2-r2-$bin.jsonl
  done
done
for wl in b c; do
  $AFTER $B --workload $wl $RS --json s16-keep2-rskv-AFTER.jsonl
  $AFTER $B --workload $wl $R2 --json s16-keep2-r2-AFTER.jsonl
done
echo done > keep2.finished
