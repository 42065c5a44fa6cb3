#!/bin/bash
# Session 16: the update cells with 2 threads, after the keep filter (bench built at 7f4b522);
# otherwise the setup of s16-keep.sh.
set -u
mkdir -p /tmp/s16 && cd /tmp/s16
AFTER=${AFTER:-/tmp/s16/bench-keep}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s16/data --keys 8M --distribution zipf --threads 2"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
RS="--store rskv --read-cache 16MiB"
for wl in rmw a; do
  $AFTER $B --workload $wl $RS --json s16-2t-rskv.jsonl
  $AFTER $B --workload $wl $R2 --json s16-2t-r2.jsonl
done
echo done > two.finished
