//! First end-to-end checks: values survive eviction to disk and come back.
mod common;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, RsKv};

#[test]
fn records_leave_memory_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FileSystemDisk::new(dir.path()).unwrap();
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(
        Config::new().table_size(1 << 10).log_memory_size(64 << 10),
        disk,
    )
    .unwrap();
    let n = 5_000u64;
    for k in 0..n {
        kv.insert(&k, &vec![(k % 251) as u8; 100]).unwrap();
    }
    let stats = kv.stats();
    assert!(
        stats.markers.head.raw() > 64,
        "nothing was evicted: {stats:?}"
    );
    assert!(stats.bytes_written > 0);
    for k in 0..n {
        assert_eq!(
            kv.get(&k).unwrap(),
            Some(vec![(k % 251) as u8; 100]),
            "key {k}"
        );
    }
    assert!(kv.stats().bytes_read > 0, "no read went to disk");
    for k in (0..n).step_by(3) {
        kv.rmw(&k, |old| {
            let mut v = old.unwrap();
            v[0] = 255;
            v
        })
        .unwrap();
    }
    for k in (0..n).step_by(7) {
        kv.remove(&k).unwrap();
    }
    for k in 0..n {
        let got = kv.get(&k).unwrap();
        if k % 7 == 0 {
            assert_eq!(got, None, "deleted key {k}");
        } else {
            let mut want = vec![(k % 251) as u8; 100];
            if k % 3 == 0 {
                want[0] = 255;
            }
            assert_eq!(got, Some(want), "key {k}");
        }
    }
}

#[test]
fn batches_match_single_operations() {
    let (_dir, kv) = common::small_store::<u64, u64>(64 << 10);
    let pairs: Vec<(u64, u64)> = (0..5000u64).map(|k| (k, k * 3)).collect();
    for chunk in pairs.chunks(16) {
        kv.insert_many(chunk).unwrap();
    }
    let keys: Vec<u64> = (0..5100u64).collect();
    for chunk in keys.chunks(16) {
        let got = kv.get_many(chunk).unwrap();
        for (k, v) in chunk.iter().zip(got) {
            assert_eq!(v, (*k < 5000).then_some(k * 3), "key {k}");
        }
    }
    // One large batch of keys scattered over the log (most on disk, whose reads are in flight
    // together), with deleted and missing keys among them.
    for k in (0..5000u64).step_by(11) {
        kv.remove(&k).unwrap();
    }
    let scattered: Vec<u64> = (0..300u64).map(|i| (i * 7919) % 5100).collect();
    let got = kv.get_many(&scattered).unwrap();
    assert_eq!(got.len(), scattered.len());
    for (k, v) in scattered.iter().zip(got) {
        assert_eq!(v, (*k < 5000 && k % 11 != 0).then_some(k * 3), "key {k}");
    }
    for k in (0..5000u64).step_by(11) {
        kv.insert(&k, &(k * 3)).unwrap();
    }
    let new = kv
        .rmw_many(&keys[..32], |k, old| old.unwrap_or(0) + k)
        .unwrap();
    assert_eq!(new, (0..32u64).map(|k| k * 4).collect::<Vec<_>>());
    assert_eq!(
        kv.get(&4999).unwrap(),
        Some(4999 * 3),
        "records on disk come back in batches too"
    );
}
