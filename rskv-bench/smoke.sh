#!/usr/bin/env bash
# CI smoke test of the benchmark: a small RsKv grid (6 runs of 100k keys, 200k operations,
# 2 threads) that exits non-zero if any read returned a missing or wrong value, or any
# operation failed, or a run hung for 2 minutes. Builds only RsKv (no peer features). Runs in
# a few seconds once built.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -p rskv-bench --release -- \
    --store rskv --keys 100000 --ops 200000 --threads 2 \
    --workload a,c,rmw --distribution uniform,zipf \
    --verify-all --run-timeout 120s --dir target/rskv-bench-smoke
