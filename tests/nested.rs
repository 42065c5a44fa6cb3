//! Store operations nested inside an update's function, where both go to disk: the inner
//! operation blocks its thread on its own device read while the outer one waits (a nested
//! executor must not panic, and nothing may deadlock).

mod common;

/// A small store without automatic growth: a nested operation that meets a growth starting
/// (its PREPARE phase) fails with `Busy`, since it cannot wait while its outer operation holds
/// the epoch; these tests are about nesting disk-bound operations, not about growth.
fn store() -> (
    tempfile::TempDir,
    rskv::RsKv<u64, u64, rskv::device::file_system_disk::FileSystemDisk>,
) {
    common::small_store_with(common::small_config(64 << 10).auto_grow_index(None))
}

#[test]
fn nested_disk_bound_operations_inside_an_rmw_finish() {
    let (_dir, kv) = store();
    for k in 0..20_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    // Keys 0 and 1 are long on disk: the outer RMW and the nested ones all need the device.
    let got = kv
        .rmw(&0, |old| {
            let inner = kv.get(&1).unwrap().unwrap();
            let bumped = kv.rmw(&2, |v| v.unwrap_or(0) + 1).unwrap();
            old.unwrap_or(0) + inner + bumped
        })
        .unwrap();
    assert_eq!(got, 1 + 3);
    assert_eq!(kv.get(&2).unwrap(), Some(3));
    // The same through a batch and an async call.
    let many = kv
        .rmw_many(&[3, 4], |k, old| {
            old.unwrap_or(0) + kv.get(&(k + 100)).unwrap().unwrap()
        })
        .unwrap();
    assert_eq!(many, vec![3 + 103, 4 + 104]);
    let v = futures_executor::block_on(
        kv.rmw_async(&5, |old| old.unwrap_or(0) + kv.get(&105).unwrap().unwrap()),
    )
    .unwrap();
    assert_eq!(v, 5 + 105);
}

#[test]
fn a_session_drives_its_pending_updates_whose_functions_read_the_disk() {
    let (_dir, kv) = store();
    for k in 0..20_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    let mut s = kv.start_session();
    assert_eq!(s.rmw(common::Add(0, 1)), rskv::Status::Pending);
    assert!(s.complete_pending(true));
    // A blocking call from inside a pending update's function.
    struct Nested<'a>(&'a rskv::RsKv<u64, u64, rskv::device::file_system_disk::FileSystemDisk>);
    impl rskv::RmwContext for Nested<'_> {
        type Key = u64;
        type Value = u64;
        fn key(&self) -> &u64 {
            &7
        }
        fn rmw_initial(&self) -> u64 {
            0
        }
        fn rmw_copy(&self, old: &u64) -> u64 {
            old + self.0.get(&8).unwrap().unwrap()
        }
    }
    assert_eq!(s.rmw(Nested(&kv)), rskv::Status::Pending);
    assert!(s.complete_pending(true));
    assert_eq!(kv.get(&7).unwrap(), Some(15));
}

/// A nested operation that needs the log to move on (a page to be flushed and evicted) cannot
/// get it while its caller's protection holds the epoch (moving the epoch would let the log
/// evict the page the outer operation is using): it fails with `Busy`, never spins, and the
/// outer operation and the store carry on.
#[test]
fn nested_writes_that_fill_the_log_fail_instead_of_hanging() {
    let (_dir, kv) = common::small_store::<u64, u64>(64 << 10);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut nested = Ok(());
            let r = kv.rmw(&0, |old| {
                for i in 0..100_000u64 {
                    if let Err(e) = kv.insert(&(1_000_000 + i), &i) {
                        nested = Err(e);
                        break;
                    }
                }
                old.unwrap_or(0) + 1
            });
            tx.send((r.map(|_| ()), nested)).unwrap();
        });
        let (outer, nested) = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("nested writes hung");
        outer.unwrap();
        match nested {
            Err(rskv::Error::Busy(_)) => {}
            Ok(()) => panic!("100k nested inserts went through 64 KiB of log memory"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    });
    // The store is fine afterwards.
    for i in 0..10_000u64 {
        kv.insert(&(2_000_000 + i), &i).unwrap();
    }
    assert_eq!(kv.get(&2_009_999).unwrap(), Some(9_999));
}

/// A context's `complete` runs inside `complete_pending`, while the session drives its other
/// pending updates; a blocking checkpoint there would wait for those updates, which only this
/// thread can finish. It must fail with `Busy`, not hang.
#[test]
fn a_checkpoint_from_a_completion_callback_is_busy_not_a_hang() {
    use rskv::device::faulty_disk::FaultyDisk;
    use std::sync::{Arc, Mutex};

    type Store = rskv::RsKv<u64, u64, Arc<FaultyDisk<rskv::FileSystemDisk>>>;
    struct CheckpointOnComplete<'a> {
        kv: &'a Store,
        got: Arc<Mutex<Option<rskv::Result<rskv::Token>>>>,
    }
    impl rskv::RmwContext for CheckpointOnComplete<'_> {
        type Key = u64;
        type Value = u64;
        fn key(&self) -> &u64 {
            &0
        }
        fn rmw_initial(&self) -> u64 {
            1
        }
        fn rmw_copy(&self, old: &u64) -> u64 {
            old + 1
        }
        fn complete(self, _result: rskv::Result<rskv::Status, &rskv::Error>) {
            *self.got.lock().unwrap() = Some(self.kv.checkpoint());
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(
        rskv::FileSystemDisk::new(dir.path()).unwrap(),
    ));
    let config = rskv::Config::new()
        .table_size(1 << 8)
        .log_memory_size(64 << 10)
        .page_size(4096);
    let kv: Store = rskv::RsKv::open(config, disk.clone()).unwrap();
    for k in 0..20_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    let got = Arc::new(Mutex::new(None));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut session = kv.start_session();
            // Both reads complete together, the checkpointing update's first.
            disk.hold_reads_until(2);
            let ctx = CheckpointOnComplete {
                kv: &kv,
                got: got.clone(),
            };
            assert_eq!(session.rmw(ctx), rskv::Status::Pending);
            assert_eq!(session.rmw(common::Add(1, 5)), rskv::Status::Pending);
            tx.send(session.complete_pending(true)).unwrap();
        });
        let done = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| {
                // The hung thread cannot be joined: end the test binary as a failure.
                eprintln!("a checkpoint from a completion callback hung");
                std::process::abort()
            });
        assert!(done);
    });
    match got.lock().unwrap().take() {
        Some(Err(rskv::Error::Busy(_))) => {}
        other => panic!("expected Busy from the callback, got {other:?}"),
    }
    assert_eq!(kv.get(&0).unwrap(), Some(1));
    assert_eq!(kv.get(&1).unwrap(), Some(6));
    // Outside the callback, checkpoints work.
    kv.checkpoint().unwrap();
}
