//! Several threads on overlapping keys: RMW totals must be exact, readers must never see a torn
//! or foreign value, whether records are in the mutable region, read-only region or on disk.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn rmw_totals_are_exact(threads: u64, log_memory: u64) {
    let (_dir, kv) = common::small_store::<u64, u64>(log_memory);
    let kv = Arc::new(kv);
    let keys = 200u64;
    let rounds = 40u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for r in 0..rounds {
                    for i in 0..keys {
                        // Different threads walk the keys in different orders.
                        let k = (i * (2 * t + 1) + r) % keys;
                        kv.rmw(&k, |old| old.unwrap_or(0) + 1).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for k in 0..keys {
        assert_eq!(kv.get(&k).unwrap(), Some(threads * rounds), "key {k}");
    }
}

#[test]
fn rmw_increments_2_threads_in_memory() {
    rmw_totals_are_exact(2, 4 << 20);
}

#[test]
fn rmw_increments_4_threads_through_disk() {
    // 16 KiB of log memory: most increments copy from the read-only region or from disk.
    rmw_totals_are_exact(4, 16 << 10);
}

#[test]
fn rmw_increments_8_threads_through_disk() {
    rmw_totals_are_exact(8, 32 << 10);
}

/// A value whose parts must agree: a torn read shows up as a mismatch.
fn pattern(key: u64, version: u64, len: usize) -> Vec<u64> {
    (0..len as u64)
        .map(|i| key.wrapping_mul(1_000_003) ^ version ^ i)
        .collect()
}

fn check(key: u64, v: &[u64]) {
    assert!(!v.is_empty(), "key {key}: empty value");
    let version = v[0] ^ key.wrapping_mul(1_000_003);
    assert_eq!(
        v,
        pattern(key, version, v.len()).as_slice(),
        "key {key}: torn or foreign value"
    );
}

#[test]
fn readers_never_see_torn_or_foreign_values() {
    let (_dir, kv) = common::small_store::<u64, Vec<u64>>(64 << 10);
    let kv = Arc::new(kv);
    let keys = 64u64;
    for k in 0..keys {
        kv.insert(&k, &pattern(k, 0, 4)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (kv, stop) = (kv.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut version = t;
                while !stop.load(Ordering::Relaxed) {
                    version += 2;
                    let k = version % keys;
                    // Lengths vary so some updates fit in place and some move to the tail.
                    let len = 1 + (version % 13) as usize;
                    kv.insert(&k, &pattern(k, version, len)).unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let k = (i * 7 + t) % keys;
                    let v = kv.get(&k).unwrap().expect("loaded key must exist");
                    check(k, &v);
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
}

#[test]
fn index_grows_while_threads_operate() {
    let (_dir, kv) = common::small_store::<u64, u64>(1 << 20);
    let kv = Arc::new(kv);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let (kv, stop) = (kv.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 20_000 {
                    kv.insert(&(t << 40 | n), &n).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let before = kv.stats().index_buckets;
    kv.grow_index().unwrap();
    kv.grow_index().unwrap();
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(kv.stats().index_buckets, before * 4);
    for (t, n) in counts.into_iter().enumerate() {
        for i in 0..n {
            assert_eq!(
                kv.get(&((t as u64) << 40 | i)).unwrap(),
                Some(i),
                "thread {t} key {i}"
            );
        }
    }
}
