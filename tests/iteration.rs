//! `RsKv::iter`: every live key once, with a value it held during the scan, while writers run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, Error, RsKv};

fn config() -> Config {
    Config::new()
        .table_size(1 << 10)
        .log_memory_size(256 << 10)
        .page_size(4096)
}

#[test]
fn iteration_yields_each_live_key_once_with_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let kv: RsKv<u64, Vec<u8>, _> =
        RsKv::open(config(), FileSystemDisk::new(dir.path()).unwrap()).unwrap();
    let mut model = HashMap::new();
    for round in 0..3u8 {
        for k in 0..10_000u64 {
            if round == 0 || k % 3 == u64::from(round) {
                let v = vec![round; 40 + (k % 60) as usize];
                kv.insert(&k, &v).unwrap();
                model.insert(k, v);
            }
        }
    }
    for k in (0..10_000u64).step_by(11) {
        kv.remove(&k).unwrap();
        model.remove(&k);
    }
    assert!(
        kv.stats().markers.head.raw() > 1 << 20,
        "most of the log should be on disk"
    );
    let mut seen = HashMap::new();
    for pair in kv.iter().unwrap() {
        let (k, v) = pair.unwrap();
        assert!(seen.insert(k, v).is_none(), "key {k} yielded twice");
    }
    assert_eq!(seen.len(), model.len());
    assert!(seen == model, "iteration does not match the model");
    // Compaction waits for the iterator.
    let it = kv.iter().unwrap();
    let safe_head = kv.stats().markers.safe_head;
    assert!(matches!(kv.compact(safe_head), Err(Error::Busy(_))));
    drop(it);
    kv.compact(safe_head).unwrap();
    let after: HashMap<u64, Vec<u8>> = kv.iter().unwrap().map(Result::unwrap).collect();
    assert!(
        after == model,
        "iteration after compaction does not match the model"
    );
}

/// Writers bump per-key counters (values only grow) while an iteration runs: every key that
/// existed before is seen exactly once, with a value between its values before and after.
#[test]
fn iteration_while_writers_run() {
    const KEYS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<RsKv<u64, u64, _>> = Arc::new(
        RsKv::open(
            config().mutable_fraction(0.5),
            FileSystemDisk::new(dir.path()).unwrap(),
        )
        .unwrap(),
    );
    for k in 0..KEYS {
        kv.insert(&k, &1).unwrap();
    }
    let before: Vec<u64> = (0..KEYS).map(|k| kv.get(&k).unwrap().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (kv, stop) = (kv.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1du64 + t;
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % KEYS;
                    kv.rmw(&k, |old| old.unwrap_or(0) + 1).unwrap();
                    // New keys appear too; they may or may not be seen, but only once.
                    kv.insert(&(KEYS + n * 2 + t), &1).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for pair in kv.iter().unwrap() {
        let (k, v) = pair.unwrap();
        assert!(seen.insert(k, v).is_none(), "key {k} yielded twice");
    }
    stop.store(true, Ordering::Release);
    let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(written > 0);
    for k in 0..KEYS {
        let after = kv.get(&k).unwrap().unwrap();
        let got = *seen
            .get(&k)
            .unwrap_or_else(|| panic!("key {k} was not seen"));
        assert!(
            before[k as usize] <= got && got <= after,
            "key {k}: saw {got}, held {} before and {after} after",
            before[k as usize]
        );
    }
}
