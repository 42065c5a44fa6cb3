//! R2Kv on a failing device: a full cold log or cold index device during migration (by hand
//! and in the background), read errors on the cold tier, checkpoints while a device is full or
//! cannot sync, a torn cold log write, and a flipped bit in a cold record on disk. Each fault
//! gives a clear `Error`, never a panic, a hang, a wrong value or a lost key; once the device
//! heals, migration and checkpoints work again; recovery gives exactly the state the last
//! completed checkpoint covered.
//!
//! The faults reach the tiers through `FaultyDisk`'s sub-device knobs: R2Kv keeps its hot log on
//! the device it is given and opens the sub-devices `cold` (the cold log) and `cold-index` (the
//! cold index's store) from it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskv::device::faulty_disk::{Faults, FaultyDisk};
use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{ColdIndexConfig, Config, Error, LogCompaction, R2Config, R2Kv, ReadContext, Status};

type Disk = Arc<FaultyDisk<FileSystemDisk>>;
type Kv = R2Kv<u64, String, Disk>;
/// Each key's latest value (`None`: deleted).
type Model = BTreeMap<u64, Option<String>>;

/// The sub-device of the cold log.
const COLD: &str = "cold";
/// The sub-device of the cold index's store.
const COLD_INDEX: &str = "cold-index";
/// Keys a test writes before migrating.
const N: u64 = 4_000;

/// Small everything, so records leave memory at once: 4 KiB pages, a 64 KiB hot log, a 32
/// KiB cold log, and a cold index of 1,024 chunks (224 KiB of chunk records) over 64 KiB of log
/// memory, so chunk updates reach its device. Background migration off (budgets far away,
/// long interval) unless a test asks.
fn config() -> R2Config {
    R2Config::new()
        .hot(
            Config::new()
                .table_size(1 << 10)
                .page_size(4 << 10)
                .log_memory_size(64 << 10),
        )
        .hot_to_cold(LogCompaction::with_budget(1 << 40))
        .cold_to_cold(LogCompaction::with_budget(1 << 40))
        .cold_page_size(4 << 10)
        .cold_log_memory(32 << 10)
        .cold_index(
            ColdIndexConfig::new()
                .chunk_bits(10)
                .log_memory(64 << 10)
                .page_size(4 << 10)
                .log_budget(4 << 20),
        )
        .maintenance_interval(Duration::from_secs(3600))
}

fn open_with(dir: &Path, c: R2Config) -> (Disk, Kv) {
    let disk: Disk = Arc::new(FaultyDisk::new(FileSystemDisk::new(dir).unwrap()));
    let kv = R2Kv::open(c, disk.clone()).unwrap();
    (disk, kv)
}

fn open(dir: &Path) -> (Disk, Kv) {
    open_with(dir, config())
}

/// The knobs of device `name`: the hot log's device for `""`, else that sub-device.
fn faults(disk: &Disk, name: &str) -> Faults {
    if name.is_empty() {
        disk.faults()
    } else {
        disk.sub_device_faults(name)
    }
}

fn value(k: u64, round: u64) -> String {
    format!("value-{k}-{round}-{}", "x".repeat((k % 20) as usize))
}

/// Writes round `round` of `keys` into store and model.
fn put(kv: &Kv, model: &mut Model, keys: std::ops::Range<u64>, round: u64) {
    for k in keys {
        kv.insert(&k, &value(k, round)).unwrap();
        model.insert(k, Some(value(k, round)));
    }
}

/// Keys `0..N`, moved to the cold tier (all but those still in hot memory), then every third
/// one updated and every seventh deleted in the hot tier, then fillers so those updates reach
/// the hot log's device: a migration now moves values, tombstones and newer versions of cold
/// keys.
fn two_tiers(kv: &Kv) -> Model {
    let mut model = Model::new();
    put(kv, &mut model, 0..N, 0);
    migrate(kv).unwrap();
    for k in (0..N).step_by(3) {
        kv.insert(&k, &value(k, 1)).unwrap();
        model.insert(k, Some(value(k, 1)));
    }
    for k in (0..N).step_by(7) {
        kv.remove(&k).unwrap();
        model.insert(k, None);
    }
    put(kv, &mut model, N..2 * N, 0);
    model
}

/// Moves everything of the hot log that is on the device to the cold tier.
fn migrate(kv: &Kv) -> rskv::Result<rskv::Compaction> {
    kv.compact_hot(kv.hot_markers().safe_head)
}

fn is_io<T>(r: &rskv::Result<T>) -> bool {
    matches!(r, Err(Error::Io { .. }))
}

fn corrupt<T>(r: &rskv::Result<T>) -> bool {
    matches!(r, Err(Error::Corrupt { .. }))
}

/// Every key of the model reads its latest value: all through `get_many` (whose device
/// reads are in flight together), every ninth through `get` too.
fn check(kv: &Kv, model: &Model, when: &str) {
    let keys: Vec<u64> = model.keys().copied().collect();
    for batch in keys.chunks(1024) {
        let got = kv.get_many(batch).unwrap();
        for (k, v) in batch.iter().zip(got) {
            assert_eq!(v, model[k], "key {k} {when}");
        }
    }
    for k in keys.iter().step_by(9) {
        assert_eq!(kv.get(k).unwrap(), model[k], "get of key {k} {when}");
    }
}

/// An error a full device causes: the log whose page write failed is poisoned, and the
/// error says the device refused it.
fn assert_full_device_error(e: &Error, what: &str) {
    assert!(
        matches!(e, Error::Poisoned(why) if why.contains("no space left")),
        "{what}: {e}"
    );
}

/// A full device under `name` during a hot-to-cold pass by hand: the pass fails with a clear
/// error and truncates nothing, every key still reads its latest value, and once the device
/// heals the next pass moves everything and a checkpoint makes it durable.
fn full_device_during_migration(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (disk, kv) = open(dir.path());
    let model = two_tiers(&kv);
    let f = faults(&disk, name);
    let begin = kv.hot_markers().begin;
    f.fail_writes_after(0);
    let err = migrate(&kv).unwrap_err();
    assert_full_device_error(&err, &format!("migration with {name} full"));
    assert!(f.writes() > 0, "nothing was written to {name}");
    assert_eq!(kv.hot_markers().begin, begin, "a failed pass truncated");
    check(&kv, &model, &format!("after the failed pass ({name} full)"));
    // Still full: another pass and a checkpoint fail the same way.
    assert_full_device_error(&migrate(&kv).unwrap_err(), "second pass");
    assert_full_device_error(&kv.checkpoint().unwrap_err(), "checkpoint");
    f.heal();
    let moved = migrate(&kv).unwrap();
    assert!(moved.copied > 1_000, "{moved:?}");
    assert!(kv.hot_markers().begin > begin);
    check(&kv, &model, &format!("after healing {name}"));
    kv.checkpoint().unwrap();
    drop(kv);
    let (_, kv) = open(dir.path());
    check(&kv, &model, &format!("recovered after healing {name}"));
}

#[test]
fn a_full_cold_log_fails_migration_and_loses_nothing() {
    full_device_during_migration(COLD);
}

#[test]
fn a_full_cold_index_fails_migration_and_loses_nothing() {
    full_device_during_migration(COLD_INDEX);
}

/// Waits (a minute at most) until `done` holds of the store's statistics; background work
/// has no call to wait on.
fn wait_for(kv: &Kv, what: &str, done: impl Fn(&rskv::R2Stats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&kv.stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", kv.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The same with background migration: the maintenance thread's failed passes are counted
/// and their error is in the statistics; the keys all read; after healing, background passes
/// succeed (the error clears) and nothing is lost.
fn full_device_during_background_migration(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let c = config()
        .hot_to_cold(LogCompaction::with_budget(1 << 20).max_pass(1 << 20))
        .maintenance_interval(Duration::from_millis(10));
    let (disk, kv) = open_with(dir.path(), c);
    let f = faults(&disk, name);
    f.fail_writes_after(0);
    // About 2.5 MiB of records: past the 0.8 MiB trigger, so passes are due from early on.
    let big = |k: u64, round: u64| format!("{}{}", value(k, round), "y".repeat(200));
    let mut model = Model::new();
    for k in 0..10_000u64 {
        kv.insert(&k, &big(k, 0)).unwrap();
        model.insert(k, Some(big(k, 0)));
    }
    wait_for(&kv, "a failed background pass", |s| {
        s.maintenance_failures > 0
    });
    let s = kv.stats();
    let why = s.maintenance_error.expect("the failure's error");
    assert!(why.contains("no space left"), "{why}");
    assert_eq!(s.hot_to_cold.passes, 0, "a pass succeeded on a full device");
    check(&kv, &model, &format!("while {name} is full"));
    f.heal();
    wait_for(&kv, "a background pass after healing", |s| {
        s.hot_to_cold.passes > 0 && s.maintenance_error.is_none()
    });
    assert!(kv.stats().cold_log_bytes > 0);
    check(&kv, &model, &format!("after healing {name}"));
}

#[test]
fn a_full_cold_log_fails_background_migration_visibly() {
    full_device_during_background_migration(COLD);
}

#[test]
fn a_full_cold_index_fails_background_migration_visibly() {
    full_device_during_background_migration(COLD_INDEX);
}

/// How a session read completed: its key, status (or error) and value.
type Completion = (u64, Result<Status, String>, Option<String>);

/// A session read that records how it completed.
struct SessionGet {
    key: u64,
    got: Option<String>,
    out: Arc<Mutex<Vec<Completion>>>,
}

impl ReadContext for SessionGet {
    type Key = u64;
    type Value = String;
    fn key(&self) -> &u64 {
        &self.key
    }
    fn get(&mut self, v: &String) {
        self.got = Some(v.clone());
    }
    fn complete(self, r: rskv::Result<Status, &Error>) {
        let r = r.map_err(|e| format!("{e:?}"));
        self.out.lock().unwrap().push((self.key, r, self.got));
    }
}

/// Read errors on a cold tier device (`name`): reads and updates of cold-only keys return
/// the device's error (never "absent", never a panic or a hang) through every API, hot keys are
/// not affected, and after healing every key reads its value with no update lost or doubled.
fn read_errors_on(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (disk, kv) = open(dir.path());
    let mut model = Model::new();
    put(&kv, &mut model, 0..N, 0);
    migrate(&kv).unwrap();
    // Keys 0..100 were moved first: their records (and most of their chunks) are on the
    // devices only. The last keys are still in hot memory.
    let cold: Vec<u64> = (0..100).collect();
    let hot = N - 1;
    let f = faults(&disk, name);
    f.fail_reads(true);
    let mut failed = Vec::new();
    for &k in &cold {
        match kv.get(&k) {
            Ok(v) => assert_eq!(v, model[&k], "key {k}"),
            Err(Error::Io { .. }) => failed.push(k),
            Err(e) => panic!("key {k}: {e}"),
        }
    }
    // Those whose record (or chunk) is in memory read right; the rest need the device.
    assert!(
        failed.len() > 20,
        "only {} of 100 cold reads met the failing {name}",
        failed.len()
    );
    let k = failed[0];
    assert!(is_io(&kv.get(&k)), "get");
    assert!(is_io(&kv.contains_key(&k)), "contains_key");
    assert!(is_io(&kv.get_many(&[hot, k])), "get_many");
    assert!(
        is_io(&futures_executor::block_on(kv.get_async(&k))),
        "get_async"
    );
    let bump = |v: Option<String>| v.unwrap_or_default() + "+";
    assert!(is_io(&kv.rmw(&k, bump)), "rmw");
    assert!(is_io(&kv.rmw_many(&[hot, k], |_, v| bump(v))), "rmw_many");
    assert!(
        is_io(&kv.conditional_insert(&k, &"new".to_string())),
        "conditional_insert"
    );
    // rmw_many ran the hot key's update to its end.
    model.insert(hot, Some(bump(model[&hot].clone())));
    // Through a session: the read goes pending on the device and completes with the error.
    let out = Arc::default();
    {
        let mut s = kv.start_session();
        for key in [k, hot] {
            let ctx = SessionGet {
                key,
                got: None,
                out: Arc::clone(&out),
            };
            match s.read(ctx) {
                Ok(Status::Pending | Status::Ok) => {}
                other => panic!("session read of {key}: {other:?}"),
            }
        }
        assert!(s.complete_pending(true));
    }
    let done = out.lock().unwrap().clone();
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done.iter()
            .any(|d| matches!(d, (key, Err(e), None) if *key == k && e.starts_with("Io"))),
        "{done:?}"
    );
    assert!(
        done.contains(&(hot, Ok(Status::Ok), model[&hot].clone())),
        "{done:?}"
    );
    // An iteration ends with the error as an item.
    let items: Vec<_> = kv.iter().unwrap().collect();
    assert!(
        matches!(items.last(), Some(Err(Error::Io { .. }))),
        "iteration ended with {:?}",
        items.last().map(|i| i.as_ref().map(|_| ()))
    );
    // Hot keys work meanwhile.
    assert_eq!(kv.get(&hot).unwrap(), model[&hot]);
    kv.insert(&(hot - 1), &value(hot - 1, 5)).unwrap();
    model.insert(hot - 1, Some(value(hot - 1, 5)));
    f.fail_reads(false);
    check(&kv, &model, &format!("after {name} reads work again"));
    // Nothing the failed updates computed was written.
    assert_eq!(kv.rmw(&k, bump).unwrap(), bump(model[&k].clone()));
    assert!(!kv.conditional_insert(&k, &"new".to_string()).unwrap());
}

#[test]
fn read_errors_on_the_cold_log_are_errors_not_absent_keys() {
    read_errors_on(COLD);
}

#[test]
fn read_errors_on_the_cold_index_are_errors_not_absent_keys() {
    read_errors_on(COLD_INDEX);
}

/// How a device fails a checkpoint.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Every write fails (a full disk).
    Full,
    /// Every flush (fsync) fails.
    Flush,
}

/// A checkpoint while device `name` has `fault`: it fails with a clear error. Then either
/// the device heals and the next checkpoint succeeds and recovery gives exactly its state, or
/// the store goes away still broken and recovery gives exactly the state of the checkpoint
/// before.
fn checkpoint_with_a_fault(name: &str, fault: Fault, heal: bool) {
    let case = format!("{fault:?} on {name:?}, heal: {heal}");
    let dir = tempfile::tempdir().unwrap();
    let (covered, last) = {
        let (disk, kv) = open(dir.path());
        let mut model = two_tiers(&kv);
        kv.checkpoint().unwrap();
        let first = model.clone();
        // Something new for every device: hot records, cold records, chunk updates.
        migrate(&kv).unwrap();
        put(&kv, &mut model, 2 * N..3 * N, 0);
        for k in (1..N).step_by(5) {
            kv.insert(&k, &value(k, 2)).unwrap();
            model.insert(k, Some(value(k, 2)));
        }
        migrate(&kv).unwrap();
        let f = faults(&disk, name);
        match fault {
            Fault::Full => f.fail_writes_after(0),
            Fault::Flush => f.fail_flush(true),
        }
        let err = kv.checkpoint().unwrap_err();
        match fault {
            Fault::Full => assert_full_device_error(&err, &case),
            Fault::Flush => assert!(
                matches!(&err, Error::Io { source, .. } if source.to_string().contains("injected flush")),
                "{case}: {err}"
            ),
        }
        check(
            &kv,
            &model,
            &format!("after the failed checkpoint ({case})"),
        );
        let covered = if heal {
            f.heal();
            kv.checkpoint().unwrap();
            model.clone()
        } else {
            first
        };
        // Not covered by any checkpoint: gone after recovery. (A hot log device still full
        // may refuse them once they need a new page.)
        for k in 3 * N..3 * N + 100 {
            let _ = kv.insert(&k, &value(k, 0));
        }
        let _ = kv.insert(&2, &value(2, 9));
        (covered, 3 * N + 100)
    };
    let (_, kv) = open(dir.path());
    check(&kv, &covered, &format!("recovered ({case})"));
    for k in 3 * N..last {
        assert_eq!(kv.get(&k).unwrap(), None, "key {k}, written after ({case})");
    }
    // The recovered store goes on: migrate and checkpoint again.
    let mut model = covered;
    put(&kv, &mut model, 4 * N..5 * N, 0);
    migrate(&kv).unwrap();
    kv.checkpoint().unwrap();
    drop(kv);
    let (_, kv) = open(dir.path());
    check(&kv, &model, &format!("recovered twice ({case})"));
}

#[test]
fn a_checkpoint_on_a_full_cold_log_fails_and_the_next_one_works() {
    checkpoint_with_a_fault(COLD, Fault::Full, true);
    checkpoint_with_a_fault(COLD, Fault::Full, false);
}

#[test]
fn a_checkpoint_on_a_full_cold_index_fails_and_the_next_one_works() {
    checkpoint_with_a_fault(COLD_INDEX, Fault::Full, true);
    checkpoint_with_a_fault(COLD_INDEX, Fault::Full, false);
}

#[test]
fn a_checkpoint_on_a_full_hot_log_device_fails_and_the_next_one_works() {
    checkpoint_with_a_fault("", Fault::Full, true);
    checkpoint_with_a_fault("", Fault::Full, false);
}

#[test]
fn a_checkpoint_whose_sync_fails_is_not_recorded() {
    for name in [COLD, COLD_INDEX, ""] {
        checkpoint_with_a_fault(name, Fault::Flush, true);
        checkpoint_with_a_fault(name, Fault::Flush, false);
    }
}

/// A torn write of a cold log page (half of it reaches the device, then an error): the pass
/// that caused it may even have finished (page writes complete after it), but the page is
/// written again whole by the next checkpoint, and recovery reads every key back.
#[test]
fn a_torn_cold_log_write_is_written_again_whole() {
    let dir = tempfile::tempdir().unwrap();
    let model = {
        let (disk, kv) = open(dir.path());
        let model = two_tiers(&kv);
        disk.sub_device_faults(COLD).tear_next_write();
        let _pass = migrate(&kv);
        check(&kv, &model, "after the torn write");
        kv.checkpoint().unwrap();
        model
    };
    let (_, kv) = open(dir.path());
    check(&kv, &model, "recovered after the torn write");
}

/// Flips one byte of `key`'s value (round 0) in the cold log's file.
fn flip_value_byte(file: &Path, key: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    let needle = value(key, 0);
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("key {key}'s value is not in {}", file.display()));
    bytes[at + 3] ^= 0x10;
    std::fs::write(file, bytes).unwrap();
}

/// A flipped bit in a cold record on disk: after recovery, reading it reports corruption
/// (never a wrong value, never a panic), whether the record's page stays on the device or is
/// one of the newest pages recovery loads into memory; an update of the key too, and the
/// cold-to-cold compaction that meets it. Other keys read their values.
#[test]
fn a_flipped_bit_in_a_cold_record_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    {
        let (_, kv) = open(dir.path());
        put(&kv, &mut model, 0..N, 0);
        migrate(&kv).unwrap();
        kv.checkpoint().unwrap();
    }
    // The cold log's segment: `log.0` of its sub-device's directory.
    let file = dir.path().join(COLD).join("log.0");
    let on_disk = std::fs::read(&file).unwrap();
    let in_file = |k: u64| {
        let needle = value(k, 0);
        on_disk
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    // Key 10: moved early, so its page stays on the device. The last key moved: in the newest
    // page, which recovery reads back into memory.
    let newest = (0..N).rev().find(|&k| in_file(k)).unwrap();
    assert!(newest > N / 2, "{newest}");
    for k in [10, newest] {
        flip_value_byte(&file, k);
    }
    let (_, kv) = open(dir.path());
    for k in [10, newest] {
        let got = kv.get(&k);
        assert!(corrupt(&got), "key {k}: {got:?}");
        let got = kv.rmw(&k, |v| v.unwrap_or_default() + "!");
        assert!(corrupt(&got), "rmw of key {k}: {got:?}");
    }
    // Another key whose chain runs through a damaged record reports it too; none reads wrong.
    let mut right = 0;
    for (k, v) in &model {
        match kv.get(k) {
            Ok(got) => {
                assert_eq!(got, *v, "key {k}");
                right += 1;
            }
            Err(Error::Corrupt { .. }) => {}
            Err(e) => panic!("key {k}: {e}"),
        }
    }
    assert!(right >= model.len() - 10, "only {right} keys read right");
    let cold = kv.cold_markers();
    let got = kv.compact_cold(cold.safe_head);
    assert!(corrupt(&got), "cold-to-cold over the damaged page: {got:?}");
}

/// Flipped bits in records of chains that cold-to-cold laid out together (`r2::cold`,
/// invariant 6), whose reads take the records below a chain's head from the head's own device
/// read: every such record is still checksum-verified, so a damaged key reads `Corrupt`, a key
/// whose walk passes through a damaged record reports it too, and no key reads a wrong value.
#[test]
fn a_flipped_bit_in_a_laid_out_chain_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    // About 2 keys per entry of 64 x 32, so most chains hold several keys.
    let c = || config().cold_index(ColdIndexConfig::new().chunk_bits(6).log_memory(64 << 10));
    {
        let (_, kv) = open_with(dir.path(), c());
        put(&kv, &mut model, 0..N, 0);
        migrate(&kv).unwrap();
        kv.compact_cold(kv.cold_markers().safe_head).unwrap();
        let s = kv.stats();
        assert!(s.cold_chains_laid_out > 100, "{s:?}");
        kv.checkpoint().unwrap();
    }
    // The segment file holds the records the pass replaced (below the cold log's begin) and,
    // above them, the pass's copies.
    let file = dir.path().join(COLD).join("log.0");
    let mut bytes = std::fs::read(&file).unwrap();
    // Keys that reached the cold tier were laid out: their value is there twice.
    let mut damaged = Vec::new();
    for k in (0..N).step_by(37) {
        let needle = value(k, 0);
        let found: Vec<usize> = bytes
            .windows(needle.len())
            .enumerate()
            .filter_map(|(i, w)| (w == needle.as_bytes()).then_some(i))
            .collect();
        // The first is the record hot-to-cold wrote, now below the cold log's begin; the
        // others are copies the pass wrote (the laid-out one, and any orphaned by a lost swap).
        if let [_, copies @ ..] = &found[..] {
            if !copies.is_empty() {
                for at in copies {
                    bytes[at + 3] ^= 0x10;
                }
                damaged.push(k);
            }
        }
    }
    assert!(damaged.len() > 20, "{damaged:?}");
    std::fs::write(&file, bytes).unwrap();
    let (_, kv) = open_with(dir.path(), c());
    let before = kv.stats();
    let (mut right, mut passed_through) = (0, 0);
    for (k, v) in &model {
        match kv.get(k) {
            Ok(got) => {
                assert!(!damaged.contains(k), "damaged key {k} read {got:?}");
                assert_eq!(got, *v, "key {k}");
                right += 1;
            }
            Err(Error::Corrupt { .. }) => passed_through += usize::from(!damaged.contains(k)),
            Err(e) => panic!("key {k}: {e}"),
        }
    }
    let after = kv.stats();
    let reads = after.cold_device_reads - before.cold_device_reads;
    let cold = after.cold_reads - before.cold_reads;
    // The walks took chain records from their heads' buffers (about one device read a read).
    assert!(
        after.cold_records_in_buffer > before.cold_records_in_buffer + cold / 4,
        "{after:?}"
    );
    assert!(
        reads * 10 < cold * 12,
        "{reads} device reads for {cold} cold reads"
    );
    assert!(
        passed_through > 0,
        "no walk passed through a damaged record"
    );
    assert!(
        right >= model.len() - 4 * damaged.len(),
        "only {right} keys read right"
    );
}
