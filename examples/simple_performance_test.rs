//! Load, read, upsert and RMW throughput with 1 and 2 threads, in Mops/s, in memory.
//! Keys and values are 8-byte integers. Set RSKV_PERF_KEYS (default 8,000,000) to resize.
//! Timing figures are printed, never asserted; the full benchmark is `rskv-bench`.
use std::sync::Arc;
use std::time::Instant;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, RsKv};

fn keys_for(thread: u64, threads: u64, n: u64) -> impl Iterator<Item = u64> {
    // A multiplicative permutation spreads each thread's keys over the key space.
    (thread..n)
        .step_by(threads as usize)
        .map(move |i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n)
}

fn run(
    kv: &Arc<RsKv<u64, u64, FileSystemDisk>>,
    threads: u64,
    n: u64,
    what: &str,
    op: fn(&RsKv<u64, u64, FileSystemDisk>, u64),
) {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for k in keys_for(t, threads, n) {
                    op(&kv, k);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what:>8} {threads} thread(s): {:7.2} Mops/s",
        n as f64 / secs / 1e6
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::var("RSKV_PERF_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8_000_000);
    for threads in [1u64, 2] {
        let dir = tempfile::tempdir()?;
        // Index: ~n/4 entries (n/32 buckets of 7); log: room for every record in memory.
        let config = Config::new()
            .table_size((n / 4).next_power_of_two())
            .log_memory_size((n * 48).next_power_of_two() * 2);
        let kv = Arc::new(RsKv::<u64, u64, _>::open(
            config,
            FileSystemDisk::new(dir.path())?,
        )?);
        run(&kv, threads, n, "load", |kv, k| {
            kv.insert(&k, &k).expect("insert")
        });
        run(&kv, threads, n, "read", |kv, k| {
            assert_eq!(kv.get(&k).expect("get"), Some(k))
        });
        run(&kv, threads, n, "upsert", |kv, k| {
            kv.insert(&k, &(k + 1)).expect("upsert")
        });
        run(&kv, threads, n, "rmw", |kv, k| {
            kv.rmw(&k, |v| v.unwrap_or(0) + 1).expect("rmw");
        });
        let v = kv.get(&3)?;
        assert_eq!(v, Some(3 + 2), "key 3 after upsert and rmw");
    }
    Ok(())
}
