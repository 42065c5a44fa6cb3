#!/bin/bash
# Session 15: RMWs take read-cache copies as their old values, and records leaving the hot log's
# memory are kept in the read cache when their key missed recently. Zipf 0.99, 8M keys of 100 B,
# 128 MiB per store, sessions, 1 thread; R2Kv with its chains laid out after the load.
# BEFORE is the bench built at 549f87a (session 14's head), AFTER at this session's head;
# the two alternate cell by cell.
set -u
cd /tmp/s15
BEFORE=${BEFORE:-/tmp/s15/bench-base}
AFTER=${AFTER:-/tmp/s15/bench-kept}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s15/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
RS="--store rskv --read-cache 16MiB"
for wl in rmw a; do
  for bin in BEFORE AFTER; do
    ${!bin} $B --workload $wl $RS --json s15-kept-rskv-$bin.jsonl
    ${!bin} $B --workload $wl $R2 --json s15-kept-r2-$bin.jsonl
  done
done
for wl in b c; do
  $AFTER $B --workload $wl $RS --json s15-kept-rskv-AFTER.jsonl
  $AFTER $B --workload $wl $R2 --json s15-kept-r2-AFTER.jsonl
done
echo done > kept.finished
# Then, with copies outliving hot truncation (R2Kv only; OUTLIVE built at that commit):
# OUTLIVE=/tmp/s15/bench-outlive; for wl in rmw a; do
#   $OUTLIVE $B --workload $wl $R2 --json s15-kept-r2-OUTLIVE.jsonl; done
