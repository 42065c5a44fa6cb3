#!/bin/bash
# Session 14: R2Kv with its cold chains laid out together (one cold-to-cold pass after the
# load, --r2-lay-out-chains) against R2Kv as before (--r2-cold-chain-window 0) and single-tier
# RsKv, 8M keys of 100 B, 128 MiB, 1 thread, interleaved. fio first: the device's rate today.
set -u
mkdir -p /tmp/s14/data
cd /tmp/s14
N=${N:-/work/target-main/release/rskv-bench}
fio --name=prep --filename=data/fio.dat --size=2G --rw=write --bs=4M --direct=1 --ioengine=libaio --output=/dev/null
for bs in 512 2k; do
  fio --name=rr-$bs --filename=data/fio.dat --size=2G --rw=randread --bs=$bs --direct=1 \
      --ioengine=libaio --iodepth=128 --runtime=10 --time_based --output-format=json \
      --output=fio-$bs-qd128.json
done
rm -f data/fio.dat
B="--value-size 100 --memory 128MiB --sessions --duration 10s --warmup 2s --segment-size 64MiB --no-progress --dir /tmp/s14/data --keys 8M --threads 1"
R2="--store r2kv --read-cache 48MiB --r2-hot-budget 64MiB --compaction-threads 2 --compaction-lookups 32"
RS="--store rskv --read-cache 16MiB"
for wl in c b; do
  $N $B --workload $wl --distribution zipf $RS --json s14-rskv.jsonl
  $N $B --workload $wl --distribution zipf $R2 --r2-lay-out-chains --json s14-r2-laid-out.jsonl
  $N $B --workload $wl --distribution zipf $R2 --r2-cold-chain-window 0 --json s14-r2-before.jsonl
done
$N $B --workload c --distribution uniform $RS --json s14-rskv.jsonl
$N $B --workload c --distribution uniform $R2 --r2-lay-out-chains --json s14-r2-laid-out.jsonl
$N $B --workload c --distribution uniform $R2 --r2-cold-chain-window 0 --json s14-r2-before.jsonl
echo done > finished
