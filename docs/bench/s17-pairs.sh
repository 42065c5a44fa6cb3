#!/bin/bash
# Session 17: RsKv's A and F, fixed and adaptive, beside which R2Kv's A and F (s17-adaptive.sh)
# can be read in the same session. Same setup as s17-adaptive2.sh (bench at 96cd00c).
set -u
mkdir -p /tmp/s17 && cd /tmp/s17
BIN=${BIN:-/tmp/s17/bench-split2}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s17/data --keys 8M --distribution zipf --threads 1"
for wl in a f; do
  $BIN $B --workload $wl --store rskv --read-cache 16MiB --json s17c-rskv-fixed.jsonl
  $BIN $B --workload $wl --store rskv --read-cache 16MiB --adaptive-split --json s17c-rskv-adaptive.jsonl
done
echo done > pairs.finished
