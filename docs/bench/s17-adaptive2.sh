#!/bin/bash
# Session 17: after the cap fix (a capped log's remainder goes to the cache): R2Kv's C and RMW
# with the adaptive split from 48/16, the fixed 32/32 RMW again, and RsKv's RMW both ways
# again. Same setup as s17-adaptive.sh; bench built at the cap-fix commit.
set -u
mkdir -p /tmp/s17 && cd /tmp/s17
BIN=${BIN:-/tmp/s17/bench-split2}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s17/data --keys 8M --distribution zipf --threads 1"
R2="--store r2kv --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32 --r2-lay-out-chains"
$BIN $B --workload c $R2 --read-cache 48MiB --adaptive-split --json s17b-r2-adaptive48.jsonl
$BIN $B --workload rmw $R2 --read-cache 32MiB --json s17b-r2-fixed32.jsonl
$BIN $B --workload rmw $R2 --read-cache 48MiB --adaptive-split --json s17b-r2-adaptive48.jsonl
$BIN $B --workload rmw --store rskv --read-cache 16MiB --adaptive-split --json s17b-rskv-adaptive.jsonl
$BIN $B --workload rmw --store rskv --read-cache 16MiB --json s17b-rskv-fixed.jsonl
echo done > adaptive2.finished
