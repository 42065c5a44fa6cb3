//! Soundness of the epoch rules as a user can reach them from safe code (issue 12):
//! - `stats()` while the index grows back to back never reads a table growth has freed;
//! - `checkpoint*()` and `grow_index()` called from inside an operation of the store (an RMW
//!   function, which runs epoch protected) return `Error::Busy` instead of waiting forever for
//!   their own thread, while nested store *operations* keep working.
//!
//! The re-entrancy tests run their body under a watchdog, so a regression fails after a minute
//! instead of hanging the suite.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::device::null_disk::NullDisk;
use rskv::{CheckpointKind, Config, Error, LogMode, RmwContext, RsKv, Status};

/// Runs `body` on a thread of its own and fails the test if it does not finish within a
/// minute (a re-entrant call that waits for its own thread never would).
fn within_a_minute<T: Send + 'static>(what: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer after 60 s (waiting for its own thread?)")
        }
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
    }
}

fn assert_reentrancy_refused<T>(call: &str, r: &rskv::Result<T>) {
    match r {
        Err(Error::Busy(why)) => assert!(
            why.contains("inside an operation"),
            "{call}: Busy, but not saying why: {why}"
        ),
        Err(e) => panic!("{call} from inside an rmw function: expected Busy, got {e}"),
        Ok(_) => panic!("{call} from inside an rmw function succeeded"),
    }
}

fn file_store<V: rskv::Codec>(dir: &std::path::Path) -> RsKv<u64, V, FileSystemDisk> {
    let config = Config::new()
        .table_size(1 << 8)
        .log_memory_size(1 << 20)
        .page_size(64 << 10);
    RsKv::open(config, FileSystemDisk::new(dir).expect("disk")).expect("open")
}

#[test]
fn stats_is_sound_while_the_index_grows_back_to_back() {
    // Stores grown several times in a row while another thread reads stats() in a tight loop.
    // Before the fix stats() read the index tables without protection; in the first phase of a
    // growth it even followed the second table pointer, null or already freed.
    const FIRST_BITS: u32 = 10;
    const GROWTHS: u32 = 6;
    const KEYS: u64 = 2_000;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut rounds = 0;
    while rounds < 3 || (Instant::now() < deadline && rounds < 100) {
        rounds += 1;
        let kv: Arc<RsKv<u64, u64, NullDisk>> = Arc::new(
            RsKv::open(
                Config::new()
                    .table_size(1 << FIRST_BITS)
                    .log_memory_size(1 << 20)
                    .page_size(64 << 10),
                NullDisk::new(),
            )
            .expect("open"),
        );
        for k in 0..KEYS {
            kv.insert(&k, &(k * 3)).expect("insert");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (kv, stop, reads) = (kv.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut last = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = kv.stats();
                    let b = s.index_buckets;
                    assert!(
                        b.is_power_of_two(),
                        "index_buckets {b} is not a power of two"
                    );
                    assert!(b >= last, "index_buckets went down: {last} -> {b}");
                    assert!(
                        (1 << FIRST_BITS..=1 << (FIRST_BITS + GROWTHS)).contains(&b),
                        "index_buckets {b} out of range"
                    );
                    let tables = 64 * b as usize;
                    assert!(
                        s.index_memory >= tables && s.index_memory <= 3 * tables + (64 << 20),
                        "index_memory {} for {b} buckets",
                        s.index_memory
                    );
                    assert!(
                        s.overflow_buckets < 1 << 20,
                        "overflow {}",
                        s.overflow_buckets
                    );
                    last = b;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Each growth starts only once the reader has read since the previous one, so the two
        // really overlap (a growth of these tables takes microseconds).
        let mut seen = 0;
        for _ in 0..GROWTHS {
            while reads.load(Ordering::Relaxed) == seen && !reader.is_finished() {
                std::hint::spin_loop();
            }
            seen = reads.load(Ordering::Relaxed);
            kv.grow_index().expect("grow_index");
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("stats reader panicked");
        assert_eq!(kv.stats().index_buckets, 1 << (FIRST_BITS + GROWTHS));
        for k in 0..KEYS {
            assert_eq!(
                kv.get(&k).expect("get"),
                Some(k * 3),
                "key {k} after growth"
            );
        }
    }
}

#[test]
fn checkpoint_inside_an_rmw_function_is_busy_and_nested_operations_work() {
    within_a_minute("checkpoint inside rmw", || {
        let dir = tempfile::tempdir().expect("tempdir");
        // u64 values: the RMW takes the one-word fast path (a short protection).
        let kv: RsKv<u64, u64, _> = file_store(dir.path());
        kv.insert(&1, &10).expect("insert");
        kv.insert(&2, &32).expect("insert");
        let mut calls = 0;
        let got = kv
            .rmw(&1, |old| {
                calls += 1;
                assert_reentrancy_refused("checkpoint", &kv.checkpoint());
                assert_reentrancy_refused(
                    "checkpoint_with",
                    &kv.checkpoint_with(CheckpointKind::LogOnly, LogMode::Snapshot),
                );
                assert_reentrancy_refused(
                    "checkpoint_async",
                    &kv.checkpoint_async(CheckpointKind::Full, LogMode::FoldOver),
                );
                // Nested operations on other keys still work.
                let other = kv.get(&2).expect("nested get").expect("key 2");
                kv.insert(&3, &7).expect("nested insert");
                assert_eq!(kv.rmw(&4, |o| o.unwrap_or(0) + 1).expect("nested rmw"), 1);
                old.expect("key 1") + other
            })
            .expect("rmw");
        assert!(calls >= 1);
        assert_eq!(got, 42);
        assert_eq!(kv.get(&1).expect("get"), Some(42));
        assert_eq!(kv.get(&3).expect("get"), Some(7));
        // The refusals left no claim behind: a checkpoint from outside succeeds.
        kv.checkpoint().expect("checkpoint outside any operation");
    });
}

#[test]
fn checkpoint_inside_a_general_rmw_is_busy() {
    within_a_minute("checkpoint inside general rmw", || {
        let dir = tempfile::tempdir().expect("tempdir");
        // String values: the general path (a full epoch guard).
        let kv: RsKv<u64, String, _> = file_store(dir.path());
        kv.insert(&1, &"a".to_string()).expect("insert");
        let got = kv
            .rmw(&1, |old| {
                assert_reentrancy_refused("checkpoint", &kv.checkpoint());
                assert_reentrancy_refused("grow_index", &kv.grow_index());
                old.unwrap_or_default() + "b"
            })
            .expect("rmw");
        assert_eq!(got, "ab");
        kv.checkpoint().expect("checkpoint outside any operation");
    });
}

#[test]
fn grow_index_inside_an_rmw_function_is_busy() {
    within_a_minute("grow_index inside rmw", || {
        let kv: RsKv<u64, u64, NullDisk> = RsKv::open(
            Config::new().table_size(1 << 6).log_memory_size(1 << 20),
            NullDisk::new(),
        )
        .expect("open");
        kv.insert(&1, &1).expect("insert");
        let before = kv.stats().index_buckets;
        kv.rmw(&1, |old| {
            assert_reentrancy_refused("grow_index", &kv.grow_index());
            old.unwrap_or(0) + 1
        })
        .expect("rmw");
        assert_eq!(kv.stats().index_buckets, before, "grew from inside the rmw");
        kv.grow_index().expect("grow_index outside any operation");
        assert_eq!(kv.stats().index_buckets, 2 * before);
        assert_eq!(kv.get(&1).expect("get"), Some(2));
    });
}

/// An RMW context that tries to checkpoint and grow the store it runs in.
struct Reentrant<'a> {
    kv: &'a RsKv<u64, u64, FileSystemDisk>,
    key: u64,
    refused: RefCell<Vec<&'static str>>,
}

impl Reentrant<'_> {
    fn try_reenter(&self) {
        let mut refused = self.refused.borrow_mut();
        if matches!(self.kv.checkpoint(), Err(Error::Busy(_))) {
            refused.push("checkpoint");
        }
        if matches!(self.kv.grow_index(), Err(Error::Busy(_))) {
            refused.push("grow_index");
        }
    }
}

impl RmwContext for Reentrant<'_> {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.key
    }
    fn rmw_initial(&self) -> u64 {
        self.try_reenter();
        1
    }
    fn rmw_copy(&self, old: &u64) -> u64 {
        self.try_reenter();
        old + 1
    }
    fn rmw_atomic(&self, value: &mut u64) -> bool {
        self.try_reenter();
        *value += 1;
        true
    }
}

#[test]
fn checkpoint_and_growth_inside_a_context_rmw_are_busy() {
    within_a_minute("checkpoint inside rmw_context", || {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv: RsKv<u64, u64, _> = file_store(dir.path());
        for (key, existing) in [(5, false), (5, true)] {
            let ctx = Reentrant {
                kv: &kv,
                key,
                refused: RefCell::new(Vec::new()),
            };
            assert_eq!(kv.rmw_context(&ctx), Status::Ok);
            let refused = ctx.refused.into_inner();
            assert!(
                !refused.is_empty() && refused.chunks(2).all(|c| c == ["checkpoint", "grow_index"]),
                "existing key {existing}: refused {refused:?}"
            );
        }
        assert_eq!(kv.get(&5).expect("get"), Some(2));
        kv.checkpoint().expect("checkpoint outside any operation");
    });
}
