//! Several threads on overlapping keys: RMW totals must be exact, readers must never see a torn
//! or foreign value, whether records are in the mutable region, read-only region or on disk.
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// Waits for the readers, then stops and joins the writers (a reader's panic fails the test).
fn stop_after(
    readers: Vec<std::thread::JoinHandle<()>>,
    stop: &AtomicBool,
    writers: Vec<std::thread::JoinHandle<()>>,
) {
    for r in readers {
        r.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
}

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
    stop_after(readers, &stop, writers);
}

/// Two threads insert (and, with `read_back`, read back keys they inserted) while the test
/// thread grows the index `growths` times by hand (automatic growth off, so the count is
/// known); every key reads back at the end.
fn grow_while_inserting(table_size: u64, growths: u32, min_keys: u64, read_back: bool) {
    let (_dir, kv) = common::small_store_with::<u64, u64>(
        common::small_config(1 << 20)
            .table_size(table_size)
            .auto_grow_index(None),
    );
    let kv = Arc::new(kv);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let (kv, stop) = (kv.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < min_keys {
                    kv.insert(&((t << 40) | n), &n).unwrap();
                    if read_back {
                        assert_eq!(kv.get(&((t << 40) | (n / 2))).unwrap(), Some(n / 2));
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let before = kv.stats().index_buckets;
    for _ in 0..growths {
        kv.grow_index().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(kv.stats().index_buckets, before << growths);
    for (t, n) in counts.into_iter().enumerate() {
        for i in 0..n {
            assert_eq!(
                kv.get(&(((t as u64) << 40) | i)).unwrap(),
                Some(i),
                "thread {t} key {i}"
            );
        }
    }
}

#[test]
fn index_grows_while_threads_operate() {
    grow_while_inserting(1 << 8, 2, 20_000, false);
}

/// Growths back to back while threads insert: an operation that read one growth's state may
/// still be about to load its tables when the next growth starts. The next growth must not
/// publish its tables before every such operation is gone (it once did, and an operation then
/// split a chunk of the new growth from the wrong tables: lost keys, a panic or a hang).
#[test]
fn index_grows_back_to_back_while_threads_operate() {
    grow_while_inserting(1 << 6, 8, 5_000, true);
}

/// The one-word fast paths under contention: writers increment a few hot `u64` keys (in place,
/// and through the general path whenever a record is sealed or leaves the mutable region of a
/// small log), delete and re-insert a few others, and write filler records; readers check that
/// every value they see belongs to its key and that the hot keys' versions only move forward.
#[test]
fn one_word_readers_see_only_their_keys_values_in_order() {
    let (_dir, kv) = common::small_store::<u64, u64>(16 << 10);
    let kv = Arc::new(kv);
    // Keys 0..8 are incremented; keys 8..12 are deleted and re-inserted.
    let (hot, churn) = (8u64, 4u64);
    let value = |k: u64, version: u64| k << 40 | version;
    for k in 0..hot + churn {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Writes done so far: readers keep reading until the writers have done plenty.
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (kv, stop, written) = (kv.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    written.fetch_add(1, Ordering::Relaxed);
                    match n % 6 {
                        0..=2 => {
                            let k = n % hot;
                            kv.rmw(&k, |old| old.expect("hot keys are never deleted") + 1)
                                .unwrap();
                        }
                        3 => {
                            let k = hot + n % churn;
                            kv.remove(&k).unwrap();
                            kv.insert(&k, &value(k, n)).unwrap();
                        }
                        // Filler records push the others out of the mutable region.
                        _ => kv.insert(&(1_000 + n % 512), &n).unwrap(),
                    }
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let (kv, written) = (kv.clone(), written.clone());
            std::thread::spawn(move || {
                let mut last = vec![0u64; hot as usize];
                let mut i = 0u64;
                while i < 50_000 || written.load(Ordering::Relaxed) < 1_000_000 {
                    i += 1;
                    let k = (i + t) % (hot + churn);
                    let Some(v) = kv.get(&k).unwrap() else {
                        assert!(k >= hot, "hot key {k} vanished");
                        continue;
                    };
                    assert_eq!(v >> 40, k, "key {k} read another key's value {v:#x}");
                    if k < hot {
                        let version = v & ((1 << 40) - 1);
                        assert!(
                            version >= last[k as usize],
                            "key {k} went back to {version}"
                        );
                        last[k as usize] = version;
                    }
                }
            })
        })
        .collect();
    stop_after(readers, &stop, writers);
}
