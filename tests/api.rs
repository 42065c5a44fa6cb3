//! The conveniences a Rust user expects: `contains_key`, operation counters in `Stats`, `Debug`
//! for the store, sessions and checkpoint handles, one `Result` for the context API.

mod common;

use rskv::{CheckpointKind, LogMode, ReadContext, Status};

struct Get(u64, Option<u64>);

impl ReadContext for Get {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn get(&mut self, v: &u64) {
        self.1 = Some(*v);
    }
}

#[test]
fn contains_key_and_counters() {
    let (_dir, kv) = common::small_store::<u64, u64>(64 << 10);
    for k in 0..10_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    kv.remove(&5).unwrap();
    kv.rmw(&9_999, |v| v.unwrap_or(0) + 1).unwrap();
    assert!(kv.contains_key(&9_998).unwrap(), "in memory");
    assert!(kv.contains_key(&0).unwrap(), "on disk");
    assert!(!kv.contains_key(&5).unwrap(), "deleted");
    assert!(!kv.contains_key(&20_000).unwrap(), "never written");
    assert_eq!(kv.get(&1).unwrap(), Some(1));
    let ops = kv.stats().ops;
    assert_eq!(ops.upserts, 10_000);
    assert_eq!(ops.deletes, 1);
    assert_eq!(ops.rmws, 1);
    assert_eq!(ops.reads(), 5);
    assert_eq!(ops.reads_not_found, 2);
    assert_eq!(ops.reads_on_disk, 2, "{ops:?}");
    assert_eq!(ops.reads_in_memory, 1, "{ops:?}");
    assert!(ops.pending >= 2, "{ops:?}");
}

#[test]
fn context_results_compare_with_statuses_and_debug_says_something() {
    let (_dir, kv) = common::small_store::<u64, u64>(64 << 10);
    assert_eq!(kv.upsert(&common::Put(1, 2)), Status::Ok);
    let mut g = Get(1, None);
    assert!(kv.read(&mut g) == Status::Ok);
    assert_eq!(g.1, Some(2));
    let mut missing = Get(7, None);
    assert_eq!(kv.read(&mut missing).unwrap(), Status::NotFound);
    let debug = format!("{kv:?}");
    assert!(
        debug.contains("RsKv") && debug.contains("markers"),
        "{debug}"
    );
    let session = kv.start_session();
    assert!(format!("{session:?}").contains("Session"));
    drop(session);
    let handle = kv
        .checkpoint_async(CheckpointKind::Full, LogMode::FoldOver)
        .unwrap();
    assert!(format!("{handle:?}").contains("token"));
    handle.wait().unwrap();
}
