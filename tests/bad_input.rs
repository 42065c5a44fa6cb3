//! Bad input and bad luck get a clear error, and the store stays right for every other key.
mod common;

use std::sync::Arc;

use rskv::device::faulty_disk::FaultyDisk;
use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, DeleteContext, Error, ReadContext, RsKv, Status, UpsertContext};

#[test]
fn value_larger_than_a_page_is_refused() {
    let (_dir, kv) = common::small_store::<u64, Vec<u8>>(64 << 10);
    kv.insert(&1, &vec![1; 10]).unwrap();
    let err = kv.insert(&2, &vec![0; 5000]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RecordTooLarge {
                page_size: 4096,
                ..
            }
        ),
        "{err}"
    );
    let err = kv.rmw(&1, |_| vec![0; 5000]).unwrap_err();
    assert!(matches!(err, Error::RecordTooLarge { .. }), "{err}");
    assert_eq!(kv.get(&1).unwrap(), Some(vec![1; 10]));
    assert_eq!(kv.get(&2).unwrap(), None);
}

struct Colliding(u64, u64);
impl UpsertContext for Colliding {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn value(&self) -> &u64 {
        &self.1
    }
    fn key_hash(&self) -> u64 {
        42
    }
}
struct CollidingRead(u64, Option<u64>);
impl ReadContext for CollidingRead {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn key_hash(&self) -> u64 {
        42
    }
    fn get(&mut self, v: &u64) {
        self.1 = Some(*v);
    }
}
struct CollidingDelete(u64);
impl DeleteContext for CollidingDelete {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn key_hash(&self) -> u64 {
        42
    }
}

#[test]
fn thousands_of_keys_with_one_hash_stay_correct() {
    // One chain of 2,000 records (plus tombstones); the log memory holds most of it, since a
    // chain that long on disk costs one device read per record walked.
    let (_dir, kv) = common::small_store::<u64, u64>(1 << 20);
    let n = 2_000u64;
    for k in 0..n {
        assert_eq!(kv.upsert(&Colliding(k, k * 10)), Status::Ok);
    }
    for k in (0..n).step_by(2) {
        assert_eq!(kv.delete(&CollidingDelete(k)), Status::Ok);
    }
    for k in 0..n {
        let mut r = CollidingRead(k, None);
        let s = kv.read(&mut r);
        if k % 2 == 0 {
            assert_eq!(s, Status::NotFound, "deleted key {k}");
        } else {
            assert_eq!((s.unwrap(), r.1), (Status::Ok, Some(k * 10)), "key {k}");
        }
    }
}

#[test]
fn data_directory_that_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let Err(err) = FileSystemDisk::new(file.join("sub")) else {
        panic!("creating a directory under a regular file must fail")
    };
    assert!(matches!(err, Error::Path { .. }), "{err}");
}

#[test]
fn deleted_key_reads_not_found_everywhere() {
    let (_dir, kv) = common::small_store::<u64, u64>(16 << 10);
    kv.insert(&7, &70).unwrap();
    kv.remove(&7).unwrap();
    assert_eq!(kv.get(&7).unwrap(), None);
    // Push the tombstone to disk and read again.
    for k in 100..3_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    assert_eq!(kv.get(&7).unwrap(), None);
    assert_eq!(kv.rmw(&7, |old| old.unwrap_or(1000) + 1).unwrap(), 1001);
}

#[test]
fn failing_device_writes_poison_the_store_instead_of_losing_data() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyDisk::new(FileSystemDisk::new(dir.path()).unwrap());
    disk.fail_writes_after(3);
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(four_pages(), disk).unwrap();
    let mut acknowledged = Vec::new();
    let mut failed = None;
    for k in 0..5_000u64 {
        match kv.insert(&k, &vec![k as u8; 100]) {
            Ok(()) => acknowledged.push(k),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.expect("writes must start failing once the device does");
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    // Everything acknowledged is still readable: nothing was evicted unflushed.
    for k in acknowledged {
        assert_eq!(
            kv.get(&k).unwrap(),
            Some(vec![k as u8; 100]),
            "acknowledged key {k}"
        );
    }
}

/// Lets 3 more writes reach `disk`, then inserts 100-byte values of keys 0, 1, ... until the
/// store refuses one, which must be `Poisoned`; returns how many it acknowledged.
fn fill_until_poisoned(
    kv: &RsKv<u64, Vec<u8>, Arc<FaultyDisk<FileSystemDisk>>>,
    disk: &FaultyDisk<FileSystemDisk>,
) -> u64 {
    disk.fail_writes_after(3);
    let mut n = 0u64;
    let err = loop {
        match kv.insert(&n, &vec![n as u8; 100]) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 5_000, "a full disk never refused a write");
    };
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    n
}

/// A store whose log memory is four pages of 4 KiB, so that a few hundred inserts reach the
/// device.
fn four_pages() -> Config {
    Config::new()
        .table_size(64)
        .log_memory_size(16 << 10)
        .page_size(4096)
}

/// A full disk that gets room again: the checkpoint after it writes the pages that failed,
/// the poison lifts, writes go on, and recovery finds every acknowledged key. A checkpoint
/// while the disk is still full fails the same way and records nothing.
#[test]
fn a_full_disk_that_gets_room_again_lets_the_store_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = four_pages();
    let n = {
        let disk = std::sync::Arc::new(FaultyDisk::new(FileSystemDisk::new(dir.path()).unwrap()));
        let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config.clone(), disk.clone()).unwrap();
        let n = fill_until_poisoned(&kv, &disk);
        let err = kv.checkpoint().unwrap_err();
        assert!(matches!(err, Error::Poisoned(_)), "{err}");
        disk.heal();
        kv.checkpoint().unwrap();
        for k in n..n + 2_000 {
            kv.insert(&k, &vec![k as u8; 100]).unwrap();
        }
        kv.checkpoint().unwrap();
        n + 2_000
    };
    let (kv, _) =
        RsKv::<u64, Vec<u8>, _>::recover(config, FileSystemDisk::new(dir.path()).unwrap(), None)
            .unwrap();
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(vec![k as u8; 100]), "key {k}");
    }
}

/// A full disk that gets room again, with no checkpoint: the maintenance thread writes the pages
/// that failed again by itself, counting its failures in `Stats` while the disk is still full,
/// and writes go on once it has room. Polls (with a deadline) only because the thread has no
/// call to wait on.
#[test]
fn the_maintenance_thread_rewrites_failed_pages_once_the_disk_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let config = four_pages().maintenance_interval(std::time::Duration::from_millis(2));
    let disk = std::sync::Arc::new(FaultyDisk::new(FileSystemDisk::new(dir.path()).unwrap()));
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config, disk.clone()).unwrap();
    assert!(kv.stats().maintenance_error.is_none());
    let n = fill_until_poisoned(&kv, &disk);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    };
    wait_for("a failed rewrite to show in Stats", &|| {
        let s = kv.stats();
        s.maintenance_failures > 0 && s.maintenance_error.is_some()
    });
    assert!(
        kv.insert(&n, &vec![0; 100]).is_err(),
        "still full: still poisoned"
    );
    disk.heal();
    wait_for("the poison to lift", &|| {
        kv.insert(&n, &vec![n as u8; 100]).is_ok()
    });
    for k in n + 1..n + 2_000 {
        kv.insert(&k, &vec![k as u8; 100]).unwrap();
    }
    for k in 0..n + 2_000 {
        assert_eq!(kv.get(&k).unwrap(), Some(vec![k as u8; 100]), "key {k}");
    }
    wait_for("the error to clear", &|| {
        kv.stats().maintenance_error.is_none()
    });
}

#[test]
fn failing_device_reads_give_errors_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let disk = std::sync::Arc::new(FaultyDisk::new(FileSystemDisk::new(dir.path()).unwrap()));
    let kv: RsKv<u64, u64, _> = RsKv::open(four_pages(), disk.clone()).unwrap();
    for k in 0..3_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    disk.fail_reads(true);
    let err = kv.get(&0).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(
        kv.get(&2_999).unwrap(),
        Some(2_999),
        "in-memory keys unaffected"
    );
    disk.fail_reads(false);
    assert_eq!(kv.get(&0).unwrap(), Some(0));
}

#[test]
fn null_disk_store_works_in_memory_and_refuses_to_drop_data() {
    use rskv::device::null_disk::NullDisk;
    let kv: RsKv<u64, u64, _> = RsKv::open(
        Config::new()
            .table_size(64)
            .log_memory_size(64 << 10)
            .page_size(4096),
        NullDisk::new(),
    )
    .unwrap();
    let mut written = 0u64;
    let err = loop {
        match kv.insert(&written, &written) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(
            written < 1_000_000,
            "a 64 KiB in-memory log cannot hold a million records"
        );
    };
    assert!(matches!(err, Error::LogFull { .. }), "{err}");
    assert!(written > 500, "only {written} records fitted");
    for k in 0..written {
        assert_eq!(kv.get(&k).unwrap(), Some(k), "key {k}");
    }
    // In-place updates still work when the log is full.
    kv.insert(&0, &7).unwrap();
    assert_eq!(kv.get(&0).unwrap(), Some(7));
}

/// A record whose bytes changed on the device (bit rot, a stray write) is reported as
/// corrupt, whether the change hit its value, its key or its chain pointer; never a wrong
/// value, and never a key that silently reads as absent. Other keys stay readable.
#[test]
fn corrupted_records_on_disk_are_errors_not_wrong_values() {
    let (dir, kv) = common::small_store::<u64, String>(16 << 10);
    let value = |k: u64| format!("value-{k:06}-payload");
    for k in 0..3_000u64 {
        kv.insert(&k, &value(k)).unwrap();
    }
    let log = dir.path().join("log.0");
    let original = std::fs::read(&log).unwrap();
    // (key, where to flip inside its value's bytes on disk: relative to the value's start)
    for (k, delta) in [(10u64, 3isize), (20, -2), (30, -10), (40, -30)] {
        let needle = value(k);
        let at = original
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .expect("record on disk");
        // Offsets before the value reach its length prefix, the key and the header words.
        let flip = at.checked_add_signed(delta).unwrap();
        let mut bytes = original.clone();
        bytes[flip] ^= 0x10;
        std::fs::write(&log, &bytes).unwrap();
        let got = kv.get(&k);
        assert!(
            matches!(got, Err(Error::Corrupt { .. })),
            "key {k}, byte {delta} from the value: {got:?}"
        );
        std::fs::write(&log, &original).unwrap();
        assert_eq!(kv.get(&k).unwrap(), Some(value(k)), "key {k} after repair");
    }
    assert_eq!(kv.get(&2_999).unwrap(), Some(value(2_999)));
    assert_eq!(kv.get(&11).unwrap(), Some(value(11)));
}
