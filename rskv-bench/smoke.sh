#!/usr/bin/env bash
# CI smoke test of the benchmark: a small RsKv grid (6 runs of 100k keys, 200k operations,
# 2 threads), then the checkpoint scenario in both log modes (20k keys, 1 s: a full checkpoint
# during the run, recovery from it, every key read back). Exits non-zero if any read returned
# a missing or wrong value, any operation, checkpoint or recovery failed, or a run hung for
# 2 minutes. Between them, larger-than-memory runs with batched multi-get reads and multi-RMWs
# (--batch-reads, --batch-rmw: up to 16 device reads in flight per thread) and the memory probe
# on small buffers. R2Kv (the two-tier store) runs the same way with a 2 MiB hot log budget, so
# most keys move to its cold tier during the load and reads, RMWs and deletes cross both
# tiers. Builds only RsKv (no peer features). Then the log-maintenance scenario,
# small: the same 2 s update-heavy, larger-than-memory run without and with background
# compaction (--log-budget 0,4MiB), sampled every 250 ms (--timeline), every key read back
# after the run; its CSV and SVG files must exist. Runs in a few seconds once built.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -p rskv-bench --release -- \
    --store rskv --keys 100000 --ops 200000 --threads 2 \
    --workload a,c,rmw --distribution uniform,zipf \
    --verify-all --run-timeout 120s --dir target/rskv-bench-smoke
cargo run -p rskv-bench --release -- \
    --store rskv --keys 50k --value-size 100 --memory 4MiB --ops 20000 --threads 2 \
    --workload b,f --distribution zipf --batch 16 --batch-reads --batch-rmw \
    --verify-all --run-timeout 120s --dir target/rskv-bench-smoke
cargo run -p rskv-bench --release -- \
    --store r2kv --keys 50k --value-size 100 --memory 4MiB --r2-hot-budget 4MiB --ops 20000 \
    --threads 2 --workload b,custom --mix read=40,upsert=30,rmw=20,delete=10 --distribution zipf \
    --batch 16 --batch-reads --verify-all --run-timeout 120s --dir target/rskv-bench-smoke
cargo run -p rskv-bench --release -- --probe-memory 4MiB
timeline_dir=target/rskv-bench-smoke-timeline
rm -rf "$timeline_dir"
cargo run -p rskv-bench --release -- \
    --store rskv --keys 20k --value-size 100 --memory 1MiB --duration 2s --warmup 200ms \
    --threads 2 --workload a --op-buffer 1M --log-budget 0,4MiB --segment-size 1MiB \
    --timeline 250ms --timeline-dir "$timeline_dir" \
    --verify-all --run-timeout 120s --dir target/rskv-bench-smoke
for f in budget4MiB-run1.svg budget4MiB-run1.csv budget4MiB-run1-passes.csv nocompaction-run0.svg; do
    ls "$timeline_dir"/timeline-rskv-*-"$f" >/dev/null
done
exec cargo run -p rskv-bench --release -- \
    --store rskv --keys 20k --duration 1s --threads 2 --workload a \
    --checkpoint fold-over,snapshot --op-buffer 1M \
    --verify-all --run-timeout 120s --dir target/rskv-bench-smoke
