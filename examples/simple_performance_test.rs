//! Load, read, upsert and RMW throughput with 1 and 2 threads, in Mops/s, in memory.
//! Keys and values are 8-byte integers. Set RSKV_PERF_KEYS (default 8,000,000) to resize.
//! Timing figures are printed, never asserted; the full benchmark is `rskv-bench`.
use std::sync::Arc;
use std::time::Instant;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, RsKv};

fn keys_for(thread: u64, threads: u64, n: u64) -> impl Iterator<Item = u64> {
    // i -> i * P mod n is a permutation of 0..n when the prime P does not divide n; it spreads
    // each thread's keys over the whole key space.
    const P: u128 = 2_654_435_761;
    assert!(
        u128::from(n) % P != 0,
        "key count must not be a multiple of {P}"
    );
    (thread..n)
        .step_by(threads as usize)
        .map(move |i| (u128::from(i) * P % u128::from(n)) as u64)
}

fn run(
    kv: &Arc<RsKv<u64, u64, FileSystemDisk>>,
    threads: u64,
    n: u64,
    what: &str,
    op: fn(&RsKv<u64, u64, FileSystemDisk>, u64),
) {
    run_batched(kv, threads, n, what, 1, move |kv, keys| op(kv, keys[0]));
}

/// Runs `op` over each thread's keys in batches of `batch` and prints the throughput.
fn run_batched(
    kv: &Arc<RsKv<u64, u64, FileSystemDisk>>,
    threads: u64,
    n: u64,
    what: &str,
    batch: usize,
    op: impl Fn(&RsKv<u64, u64, FileSystemDisk>, &[u64]) + Copy + Send + 'static,
) {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let keys: Vec<u64> = keys_for(t, threads, n).collect();
                for chunk in keys.chunks(batch) {
                    op(&kv, chunk);
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
        // The same reads in batches of 16 (RsKv::get_many overlaps their cache misses).
        run_batched(&kv, threads, n, "read x16", 16, |kv, keys| {
            let got = kv.get_many(keys).expect("get_many");
            for (k, v) in keys.iter().zip(got) {
                assert_eq!(v, Some(k + 2));
            }
        });
        // Every key saw one load (k), one upsert (k + 1) and one RMW (+1).
        let wrong: Vec<u64> = (0..n)
            .filter(|k| kv.get(k).ok().flatten() != Some(k + 2))
            .take(10)
            .collect();
        if !wrong.is_empty() {
            return Err(format!("keys with wrong values after the run: {wrong:?}").into());
        }
    }
    Ok(())
}
