#!/bin/bash
# Session 16: records leaving the log's memory are kept by a filter of their own, clocked by the
# log (and keys whose copy an update replaced are noted). Zipf 0.99, 8M keys of 100 B, 128 MiB
# per store, sessions, 1 thread; R2Kv with its chains laid out after the load.
# BEFORE is the bench built at aaf308b (session 15's head), AFTER at 7f4b522; they alternate
# cell by cell.
set -u
mkdir -p /tmp/s16 && cd /tmp/s16
BEFORE=${BEFORE:-/tmp/s16/bench-base}
AFTER=${AFTER:-/tmp/s16/bench-keep}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s16/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
RS="--store rskv --read-cache 16MiB"
for wl in ${WORKLOADS:-rmw a f}; do
  for bin in BEFORE AFTER; do
    ${!bin} $B --workload $wl $RS --json s16-keep-rskv-$bin.jsonl
    ${!bin} $B --workload $wl $R2 --json s16-keep-r2-$bin.jsonl
  done
done
echo done > keep.finished
