//! `Config::copy_reads_to_tail`: a record read from disk is copied to the tail (so the next read
//! of the key stays in memory), and a copy never replaces a newer value.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, RsKv};

fn store(copy: bool) -> (tempfile::TempDir, RsKv<u64, Vec<u8>, FileSystemDisk>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = FileSystemDisk::new(dir.path()).expect("disk");
    let kv = RsKv::open(
        Config::new()
            .table_size(1 << 10)
            .log_memory_size(64 << 10)
            .page_size(4096)
            .copy_reads_to_tail(copy),
        disk,
    )
    .expect("open");
    (dir, kv)
}

fn value(k: u64, version: u64) -> Vec<u8> {
    let mut v = vec![(k % 251) as u8; 64];
    v[..8].copy_from_slice(&version.to_le_bytes());
    v
}

/// The first read of an on-disk key goes to the device and copies the record; the second read
/// of it does not touch the device. Without the option, every read goes to the device.
#[test]
fn a_read_from_disk_brings_the_record_back_to_memory() {
    for copy in [true, false] {
        let (_dir, kv) = store(copy);
        for k in 0..4000u64 {
            kv.insert(&k, &value(k, 1)).unwrap();
        }
        let head = kv.stats().markers.head;
        assert!(head.raw() > 64 << 10, "most records are on disk");
        let key = 3u64; // written first: on disk
        let read_before = kv.stats().bytes_read;
        let tail_before = kv.stats().markers.tail;
        assert_eq!(kv.get(&key).unwrap(), Some(value(key, 1)));
        let read_once = kv.stats().bytes_read;
        assert!(read_once > read_before, "the first read goes to the device");
        assert_eq!(
            kv.stats().markers.tail > tail_before,
            copy,
            "copy={copy}: the record is copied to the tail only with the option"
        );
        assert_eq!(kv.get(&key).unwrap(), Some(value(key, 1)));
        let read_twice = kv.stats().bytes_read;
        assert_eq!(
            read_twice == read_once,
            copy,
            "copy={copy}: the second read stays in memory only with the option"
        );
        // The copy is an ordinary record: updates and deletes see it as the newest.
        kv.insert(&key, &value(key, 2)).unwrap();
        assert_eq!(kv.get(&key).unwrap(), Some(value(key, 2)));
        kv.remove(&key).unwrap();
        assert_eq!(kv.get(&key).unwrap(), None);
        // Every other key is intact (and copied by these reads, where enabled).
        for k in (0..4000u64).filter(|&k| k != key) {
            assert_eq!(kv.get(&k).unwrap(), Some(value(k, 1)), "key {k}");
        }
    }
}

/// Writers raise each of their own keys' versions while readers read every key (copying the
/// on-disk ones to the tail). A copy that landed over a newer value would make a key's final
/// value older than its writer's last write.
#[test]
fn copies_never_replace_newer_values() {
    let (_dir, kv) = store(true);
    let kv = Arc::new(kv);
    const KEYS: u64 = 2000;
    for k in 0..KEYS {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                // Writer w owns the keys k with k % 2 == w; each round raises all their versions.
                let mut last = 0;
                for round in 1..=6u64 {
                    for k in (w..KEYS).step_by(2) {
                        kv.insert(&k, &value(k, round)).unwrap();
                    }
                    last = round;
                }
                last
            })
        })
        .collect();
    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (kv, stop) = (kv.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for k in (r..KEYS).step_by(3) {
                        let v = kv.get(&k).unwrap().expect("every key has a value");
                        assert_eq!(&v[8..], &value(k, 0)[8..], "key {k}: a foreign value");
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let last: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    for k in 0..KEYS {
        let want = value(k, last[(k % 2) as usize]);
        assert_eq!(kv.get(&k).unwrap(), Some(want), "key {k}");
    }
}
