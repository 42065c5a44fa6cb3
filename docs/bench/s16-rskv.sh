#!/bin/bash
# Session 16: RsKv's A and RMW cells again, before and after the keep filter, alternating (same
# setup as s16-keep.sh).
set -u
mkdir -p /tmp/s16 && cd /tmp/s16
BEFORE=${BEFORE:-/tmp/s16/bench-base}
AFTER=${AFTER:-/tmp/s16/bench-keep}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s16/data --keys 8M --distribution zipf --threads 1"
RS="--store rskv --read-cache 16MiB"
for rep in 1 2; do
  for wl in a rmw; do
    for bin in BEFORE AFTER; do
      ${!bin} $B --workload $wl $RS --json s16-rskv-$bin.jsonl
    done
  done
done
echo done > rskv.finished
