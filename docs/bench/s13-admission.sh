#!/bin/bash
# Session 13: the read cache's admission, second miss (default) against every miss
# (--read-cache-every, FASTER's behaviour), same build, interleaved, both stores held to 128 MiB,
# 8M keys of 100 B, 1 thread: B and C zipf 0.99, C uniform.
set -u
mkdir -p /tmp/s13
N=${N:-target/release/rskv-bench}
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --keys 8M --dir /tmp/s13/data --threads 1"
RS="--store rskv --read-cache 16MiB"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2"
for round in 1 2; do
  for admission in "" "--read-cache-every"; do
    tag=${admission:+every}; tag=${tag:-second}
    $N $B $RS $admission --workload b,c --distribution zipf --json /tmp/s13/s13-rskv-$tag.jsonl
    $N $B $R2 $admission --workload b,c --distribution zipf --json /tmp/s13/s13-r2kv-$tag.jsonl
  done
done
for admission in "" "--read-cache-every"; do
  tag=${admission:+every}; tag=${tag:-second}
  $N $B $RS $admission --workload c --distribution uniform --json /tmp/s13/s13-rskv-$tag.jsonl
  $N $B $R2 $admission --workload c --distribution uniform --json /tmp/s13/s13-r2kv-$tag.jsonl
done
echo done > /tmp/s13/finished
# Then R2Kv's C zipf for 60 s, where its 48 MiB cache has turned over several times.
for admission in "" "--read-cache-every"; do
  tag=${admission:+every}; tag=${tag:-second}
  $N ${B/--duration 10s/--duration 60s} $R2 $admission --workload c --distribution zipf --json /tmp/s13/s13-r2kv-60s-$tag.jsonl
done
echo done > /tmp/s13/finished-60s
