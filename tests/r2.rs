//! R2Kv, the two-tier store: reads, upserts, deletes and RMWs through hot-to-cold and
//! cold-to-cold compactions, concurrent operations while they run, checkpoint and recovery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{CacheAdmission, ColdIndexConfig, Config, LogCompaction, R2Config, R2Kv};

/// A small hot tier (64 KiB pages, 512 KiB of log memory) so records reach its disk soon, and
/// background migration off unless a test asks (budgets far away, long interval).
fn config() -> R2Config {
    R2Config::new()
        .hot(
            Config::new()
                .table_size(1 << 12)
                .page_size(64 << 10)
                .log_memory_size(512 << 10),
        )
        .hot_to_cold(LogCompaction::with_budget(1 << 40))
        .cold_to_cold(LogCompaction::with_budget(1 << 40))
        .cold_page_size(64 << 10)
        .cold_log_memory(512 << 10)
        .maintenance_interval(Duration::from_secs(3600))
}

fn open<V: rskv::Codec>(dir: &std::path::Path, c: R2Config) -> R2Kv<u64, V> {
    R2Kv::open(c, FileSystemDisk::new(dir).unwrap()).unwrap()
}

/// Moves everything of the hot log that is on the device to the cold tier.
fn migrate<V: rskv::Codec>(kv: &R2Kv<u64, V>) -> rskv::Compaction {
    kv.compact_hot(kv.hot_markers().safe_head).unwrap()
}

fn value(k: u64, round: u64) -> String {
    format!("value-{k}-{round}-{}", "x".repeat((k % 50) as usize))
}

#[test]
fn reads_find_values_in_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<String>(dir.path(), config());
    let n = 20_000;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let moved = migrate(&kv);
    assert!(moved.copied > 10_000, "{moved:?}");
    assert!(kv.hot_markers().begin > rskv::Address::new(0));
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
    }
    let s = kv.stats();
    assert!(s.cold_hits > 10_000, "{s:?}");
    assert_eq!(s.hot_to_cold.passes, 1);
    // The hot index forgot the keys that moved (their chains were wholly below begin).
    assert!(s.hot_entries_freed > 1_000, "{s:?}");
    assert!(kv.get(&(n + 1)).unwrap().is_none());
    // Newer values in the hot tier hide the cold ones.
    for k in (0..n).step_by(3) {
        kv.insert(&k, &value(k, 1)).unwrap();
    }
    for k in 0..n {
        let round = u64::from(k % 3 == 0);
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, round)), "key {k}");
    }
    let many = kv.get_many(&(0..n).collect::<Vec<_>>()).unwrap();
    for (k, v) in (0..n).zip(many) {
        assert_eq!(v, Some(value(k, u64::from(k % 3 == 0))));
    }
}

#[test]
fn deletes_survive_both_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<String>(dir.path(), config());
    let n = 20_000;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    migrate(&kv);
    // Delete every other key: the cold ones get hot tombstones.
    for k in (0..n).step_by(2) {
        kv.remove(&k).unwrap();
    }
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap().is_some(), k % 2 == 1, "key {k}");
    }
    // Fill the hot log so the tombstones reach its disk, then move them to the cold tier.
    for k in n..2 * n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let moved = migrate(&kv);
    assert!(moved.tombstones > 0, "{moved:?}");
    for k in 0..n {
        assert_eq!(
            kv.get(&k).unwrap().is_some(),
            k % 2 == 1,
            "key {k} after hot-to-cold"
        );
    }
    // Cold-to-cold over everything on the cold device.
    let cold = kv.cold_markers();
    let c = kv.compact_cold(cold.safe_head).unwrap();
    assert!(c.copied > 0 && c.tombstones > 0, "{c:?}");
    assert!(kv.cold_markers().begin > cold.begin);
    for k in 0..2 * n {
        assert_eq!(
            kv.get(&k).unwrap().is_some(),
            k >= n || k % 2 == 1,
            "key {k} after cold-to-cold"
        );
    }
}

#[test]
fn rmw_on_cold_records_keeps_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<u64>(dir.path(), config());
    let n = 30_000u64;
    for k in 0..n {
        kv.rmw(&k, |old| old.unwrap_or(0) + 1).unwrap();
    }
    migrate(&kv);
    // Every key is in the cold tier only now (those still in hot memory excepted).
    for k in 0..n {
        assert_eq!(
            kv.rmw(&k, |old| old.unwrap_or(0) + 1).unwrap(),
            2,
            "key {k}"
        );
    }
    assert!(kv.stats().cold_rmws > 0);
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(2));
    }
    // Deleted in the hot tier over a cold value: starts again from nothing.
    kv.remove(&5).unwrap();
    assert_eq!(kv.rmw(&5, |old| old.unwrap_or(100) + 1).unwrap(), 101);
}

#[test]
fn concurrent_operations_while_compactions_run() {
    let dir = tempfile::tempdir().unwrap();
    // With a small read cache, so cold copies are made and evicted all along.
    let mut c = config();
    c.hot = c
        .hot
        .read_cache(256 << 10)
        .read_cache_admission(CacheAdmission::Every);
    let kv = Arc::new(open::<u64>(dir.path(), c));
    let per_class = 20_000u64;
    let rounds = 4u64;
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (kv, stop) = (kv.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut passes = 0;
            while !stop.load(Ordering::Acquire) {
                let hot = kv.hot_markers();
                if hot.safe_head > hot.begin {
                    kv.compact_hot(hot.safe_head).unwrap();
                    passes += 1;
                }
                let cold = kv.cold_markers();
                if cold.safe_head > cold.begin {
                    kv.compact_cold(cold.safe_head).unwrap();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            passes
        })
    };
    // Class 0: increments; class 1: upserts of the round; class 2: upsert then delete.
    let workers: Vec<_> = (0..3u64)
        .map(|class| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for round in 1..=rounds {
                    for i in 0..per_class {
                        let k = class * per_class + i;
                        match class {
                            0 => {
                                kv.rmw(&k, |old| old.unwrap_or(0) + 1).unwrap();
                            }
                            1 => kv.insert(&k, &round).unwrap(),
                            _ => {
                                kv.insert(&k, &round).unwrap();
                                if round == rounds && i % 2 == 0 {
                                    kv.remove(&k).unwrap();
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // A reader of class 1 (upserts of the round): no key ever reads older than it did.
    let reader = {
        let (kv, stop) = (kv.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = vec![0u64; per_class as usize];
            let mut reads = 0u64;
            while !stop.load(Ordering::Acquire) {
                for i in (0..per_class).step_by(7) {
                    let v = kv.get(&(per_class + i)).unwrap().unwrap_or(0);
                    assert!(
                        v >= seen[i as usize],
                        "key {} went back from {} to {v}",
                        per_class + i,
                        seen[i as usize]
                    );
                    seen[i as usize] = v;
                    reads += 1;
                }
            }
            reads
        })
    };
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    let passes = compactor.join().unwrap();
    assert!(reader.join().unwrap() > 0);
    assert!(passes > 0, "no hot-to-cold pass ran during the test");
    let check = |kv: &R2Kv<u64, u64>| {
        for i in 0..per_class {
            assert_eq!(kv.get(&i).unwrap(), Some(rounds), "increments of {i}");
            assert_eq!(kv.get(&(per_class + i)).unwrap(), Some(rounds));
            let k = 2 * per_class + i;
            let expect = (i % 2 == 1).then_some(rounds);
            assert_eq!(kv.get(&k).unwrap(), expect, "key {k}");
        }
    };
    check(&kv);
    migrate(&kv);
    let cold = kv.cold_markers();
    kv.compact_cold(cold.safe_head).unwrap();
    check(&kv);
    check(&kv);
    let cache = kv.stats().hot.read_cache.unwrap();
    assert!(cache.inserted > 0 && cache.hits > 0, "{cache:?}");
}

#[test]
fn one_checkpoint_recovers_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000u64;
    let token = {
        let kv = open::<String>(dir.path(), config());
        for k in 0..n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        migrate(&kv);
        for k in (0..n).step_by(4) {
            kv.remove(&k).unwrap();
        }
        for k in (1..n).step_by(4) {
            kv.insert(&k, &value(k, 1)).unwrap();
        }
        let token = kv.checkpoint().unwrap();
        // After the checkpoint: lost on recovery.
        kv.insert(&(n + 7), &value(n + 7, 0)).unwrap();
        migrate(&kv);
        token
    };
    let kv = open::<String>(dir.path(), config());
    assert!(kv.stats().cold_log_bytes > 0);
    let _ = token;
    for k in 0..n {
        let expect = match k % 4 {
            0 => None,
            1 => Some(value(k, 1)),
            _ => Some(value(k, 0)),
        };
        assert_eq!(kv.get(&k).unwrap(), expect, "key {k}");
    }
    assert_eq!(kv.get(&(n + 7)).unwrap(), None);
    // The recovered store goes on: another migration and checkpoint, recovered again.
    for k in n..2 * n {
        kv.insert(&k, &value(k, 2)).unwrap();
    }
    migrate(&kv);
    kv.checkpoint().unwrap();
    drop(kv);
    let kv = open::<String>(dir.path(), config());
    for k in (0..2 * n).step_by(7) {
        let expect = if k >= n {
            Some(value(k, 2))
        } else {
            match k % 4 {
                0 => None,
                1 => Some(value(k, 1)),
                _ => Some(value(k, 0)),
            }
        };
        assert_eq!(
            kv.get(&k).unwrap(),
            expect,
            "key {k} after the second recovery"
        );
    }
}

#[test]
fn background_migration_keeps_the_hot_log_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 2 << 20;
    let c = config()
        .hot_to_cold(LogCompaction::with_budget(budget).max_pass(1 << 20))
        .maintenance_interval(Duration::from_millis(5));
    let kv = open::<String>(dir.path(), c);
    let n = 60_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    // Let the last pass finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while kv.stats().hot_to_cold.passes == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = kv.stats();
    assert!(s.hot_to_cold.passes > 0, "{s:?}");
    let m = kv.hot_markers();
    assert!(
        m.tail.raw() - m.begin.raw() < 2 * budget + (1 << 20),
        "hot log {} bytes",
        m.tail.raw() - m.begin.raw()
    );
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
    }
}

#[test]
fn cold_reads_are_cached_in_the_hot_read_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.hot = c.hot.read_cache(64 << 10);
    let kv = open::<String>(dir.path(), c);
    let n = 20_000;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    migrate(&kv);
    // Fill the cache (2000 copies of about 90 bytes for 62 KiB), then the default admission
    // copies a cold record on its key's second miss only.
    for k in 10_000..12_000 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    // The filter's false positives (about 1% at this size) copy a few on their first miss.
    let mut refused = 100;
    for round in 0..2 {
        let before = kv.stats();
        let was = before.hot.read_cache.unwrap();
        for k in 0..100 {
            assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
        }
        let after = kv.stats();
        let now = after.hot.read_cache.unwrap();
        let (cold, not_admitted) = (
            after.cold_reads - before.cold_reads,
            now.not_admitted - was.not_admitted,
        );
        let copied = now.inserted - was.inserted;
        if round == 0 {
            assert_eq!(cold, 100, "{now:?}");
            assert!(
                not_admitted >= 95 && not_admitted + copied == 100,
                "{now:?}"
            );
            refused = not_admitted;
        } else {
            // Those copied in round 0 are hits now; the others are copied (or skipped when no
            // frame was free yet: frames are released by epoch actions).
            let skipped = now.skipped - was.skipped;
            assert_eq!(
                (cold, not_admitted, copied + skipped),
                (refused, 0, refused),
                "{now:?}"
            );
        }
    }
    let before = kv.stats();
    for k in 0..100 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    let after = kv.stats();
    assert_eq!(
        after.cold_reads, before.cold_reads,
        "second reads went to the cold tier"
    );
    // An update replaces the cached cold copy; a delete hides it.
    kv.insert(&3, &value(3, 9)).unwrap();
    kv.remove(&4).unwrap();
    assert_eq!(kv.get(&3).unwrap(), Some(value(3, 9)));
    assert_eq!(kv.get(&4).unwrap(), None);
    assert_eq!(kv.rmw(&5, |v| v.unwrap() + "!").unwrap(), value(5, 0) + "!");
    assert_eq!(kv.get(&5).unwrap(), Some(value(5, 0) + "!"));
    // An RMW of a key with a cached cold copy takes the copy as its old value: no cold read.
    let before = kv.stats();
    for k in 10..60 {
        assert_eq!(kv.rmw(&k, |v| v.unwrap() + "?").unwrap(), value(k, 0) + "?");
    }
    let after = kv.stats();
    assert_eq!(
        (after.cold_reads, after.cold_rmws),
        (before.cold_reads, before.cold_rmws),
        "RMWs of cached keys read the cold tier"
    );
    for k in 10..60 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0) + "?"));
    }
}

#[test]
fn async_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<u64>(dir.path(), config());
    let get = kv.get_async(&1);
    send(&get);
    let rmw = kv.rmw_async(&1, |v| v.unwrap_or(0) + 1);
    send(&rmw);
    drop((get, rmw));
    assert_eq!(
        futures_executor::block_on(kv.rmw_async(&1, |v| v.unwrap_or(0) + 1)).unwrap(),
        1
    );
    assert_eq!(
        futures_executor::block_on(kv.get_async(&1)).unwrap(),
        Some(1)
    );
}

struct Put(u64, u64);
impl rskv::UpsertContext for Put {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn value(&self) -> &u64 {
        &self.1
    }
}
struct Get(u64, Option<u64>);
impl rskv::ReadContext for Get {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn get(&mut self, v: &u64) {
        self.1 = Some(*v);
    }
}
struct Add(u64, u64);
impl rskv::RmwContext for Add {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn rmw_initial(&self) -> u64 {
        self.1
    }
    fn rmw_copy(&self, old: &u64) -> u64 {
        old + self.1
    }
}
struct Del(u64);
impl rskv::DeleteContext for Del {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
}
struct OwnHash(u64);
impl rskv::DeleteContext for OwnHash {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn key_hash(&self) -> u64 {
        self.0
    }
}

#[test]
fn the_context_api_works_across_tiers() {
    use rskv::Status;
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<u64>(dir.path(), config());
    for k in 0..30_000u64 {
        assert_eq!(kv.upsert(&Put(k, k)).unwrap(), Status::Ok);
    }
    migrate(&kv);
    let mut g = Get(7, None);
    assert_eq!(kv.read(&mut g).unwrap(), Status::Ok);
    assert_eq!(g.1, Some(7));
    // An RMW of a cold record through the context: the cold value is the old one.
    assert_eq!(kv.rmw_context(&Add(7, 10)).unwrap(), Status::Ok);
    assert_eq!(kv.get(&7).unwrap(), Some(17));
    assert_eq!(kv.rmw_context(&Add(1 << 40, 5)).unwrap(), Status::Ok);
    assert_eq!(kv.get(&(1 << 40)).unwrap(), Some(5));
    assert_eq!(kv.delete(&Del(8)).unwrap(), Status::Ok);
    let mut g = Get(8, None);
    assert_eq!(kv.read(&mut g).unwrap(), Status::NotFound);
    assert!(matches!(
        kv.delete(&OwnHash(9)),
        Err(rskv::Error::Config { .. })
    ));
}

/// What session reads found, by key.
type Found = Arc<std::sync::Mutex<Vec<(u64, Option<u64>)>>>;

/// A session read that reports what it found into a shared vector.
struct SessionGet {
    key: u64,
    got: Option<u64>,
    out: Found,
}
impl rskv::ReadContext for SessionGet {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.key
    }
    fn get(&mut self, v: &u64) {
        self.got = Some(*v);
    }
    fn complete(self, r: rskv::Result<rskv::Status, &rskv::Error>) {
        if let Err(e) = r {
            panic!("session read of key {} failed: {e}", self.key);
        }
        self.out.lock().unwrap().push((self.key, self.got));
    }
}

#[test]
fn sessions_read_and_update_both_tiers_with_exact_commit_points() {
    use rskv::Status;
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000u64;
    let (id, serial) = {
        let kv = open::<u64>(dir.path(), config());
        for k in 0..n {
            kv.insert(&k, &k).unwrap();
        }
        migrate(&kv);
        let mut s = kv.start_session();
        // Reads of cold keys go pending (chunk and record on the device); all finish.
        let out: Found = Arc::default();
        let mut pending = 0;
        for k in (0..n).step_by(10) {
            let ctx = SessionGet {
                key: k,
                got: None,
                out: out.clone(),
            };
            if s.read(ctx).unwrap() == Status::Pending {
                pending += 1;
            }
        }
        assert!(pending > 100, "only {pending} reads went pending");
        assert!(s.complete_pending(true));
        let mut got = out.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got.len(), (n / 10) as usize);
        for (k, v) in got {
            assert_eq!(v, Some(k), "key {k}");
        }
        // RMWs of cold keys take the cold value as the old one; deletes hide cold values.
        for k in (0..n).step_by(10) {
            let _status = s.rmw(Add(k, 1000)).unwrap();
        }
        for k in (5..n).step_by(10) {
            assert_eq!(s.delete(Del(k)).unwrap(), Status::Ok);
        }
        assert!(s.complete_pending(true));
        let st = kv.stats();
        // Counted through the session too (about 40% of the keys moved to the cold tier).
        assert!(
            st.cold_rmws > 100 && st.cold_reads > 100 && st.hot_hits > 100,
            "{st:?}"
        );
        for k in (0..n).step_by(5) {
            let want = match k % 10 {
                0 => Some(k + 1000),
                _ => None,
            };
            assert_eq!(kv.get(&k).unwrap(), want, "key {k}");
        }
        kv.checkpoint().unwrap();
        (s.id(), s.serial_num())
    };
    let kv = open::<u64>(dir.path(), config());
    let (mut s, point) = kv.continue_session(id).unwrap();
    assert_eq!(
        point.until, serial.0,
        "every operation finished before the checkpoint"
    );
    assert!(point.excluded.is_empty(), "{point:?}");
    assert_eq!(kv.get(&10).unwrap(), Some(1010));
    assert_eq!(kv.get(&15).unwrap(), None);
    let _status = s.rmw(Add(10, 1)).unwrap();
    assert!(s.complete_pending(true));
    assert_eq!(kv.get(&10).unwrap(), Some(1011));
}

#[test]
fn variable_length_keys_and_values_through_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let kv: R2Kv<String, Vec<u8>> =
        R2Kv::open(config(), FileSystemDisk::new(dir.path()).unwrap()).unwrap();
    let key = |k: u64| format!("key-{k}-{}", "k".repeat((k % 40) as usize));
    let val = |k: u64, r: u8| vec![r; (k % 300) as usize];
    let n = 10_000u64;
    for k in 0..n {
        kv.insert(&key(k), &val(k, 1)).unwrap();
    }
    kv.compact_hot(kv.hot_markers().safe_head).unwrap();
    for k in (0..n).step_by(3) {
        kv.remove(&key(k)).unwrap();
    }
    for k in (1..n).step_by(3) {
        let new = kv.rmw(&key(k), |old| {
            let mut v = old.unwrap();
            v.push(9);
            v
        });
        assert_eq!(new.unwrap().len() as u64, k % 300 + 1);
    }
    for k in n..2 * n {
        kv.insert(&key(k), &val(k, 2)).unwrap();
    }
    kv.compact_hot(kv.hot_markers().safe_head).unwrap();
    kv.compact_cold(kv.cold_markers().safe_head).unwrap();
    for k in 0..n {
        let want = match k % 3 {
            0 => None,
            1 => {
                let mut v = val(k, 1);
                v.push(9);
                Some(v)
            }
            _ => Some(val(k, 1)),
        };
        assert_eq!(kv.get(&key(k)).unwrap(), want, "key {k}");
    }
}

#[test]
fn a_hot_budget_the_log_memory_alone_exceeds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config().hot_to_cold(LogCompaction::with_budget(4 << 20));
    c.hot = c.hot.log_memory_size(4 << 20);
    let r = R2Kv::<u64, u64>::open(c, FileSystemDisk::new(dir.path()).unwrap());
    assert!(
        matches!(
            r,
            Err(rskv::Error::Config {
                field: "hot_to_cold.budget",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn a_zero_maintenance_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = config().maintenance_interval(Duration::ZERO);
    let r = R2Kv::<u64, u64>::open(c, FileSystemDisk::new(dir.path()).unwrap());
    assert!(
        matches!(
            r,
            Err(rskv::Error::Config {
                field: "maintenance_interval",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn maintenance_from_inside_an_update_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<u64>(dir.path(), config());
    let mut inner = Vec::new();
    kv.rmw(&1, |v| {
        inner.push(kv.compact_hot(kv.hot_markers().safe_head).map(|_| ()));
        inner.push(kv.compact_cold(kv.cold_markers().safe_head).map(|_| ()));
        inner.push(kv.checkpoint().map(|_| ()));
        v.unwrap_or(0) + 1
    })
    .unwrap();
    assert!(
        inner.iter().all(|r| matches!(r, Err(rskv::Error::Busy(_)))),
        "{inner:?}"
    );
    kv.compact_hot(kv.hot_markers().safe_head).unwrap();
    assert_eq!(kv.get(&1).unwrap(), Some(1));
}

#[test]
fn two_threads_increment_the_same_keys_across_migrations() {
    increment_across_migrations(config());
}

/// As above, with a hot read cache that keeps records leaving the hot log's memory (their
/// keys missed in the hot tier), so increments may also take old values from kept copies
/// (how many depends on how the threads interleave with the mover: the next test shows the
/// mechanism alone).
#[test]
fn two_threads_increment_the_same_keys_across_migrations_with_kept_records() {
    let mut c = config();
    // Large enough that the admission filter remembers a key's miss for a whole round.
    c.hot = c.hot.read_cache(4 << 20);
    increment_across_migrations(c);
}

/// An RMW of a cold key notes a miss; its new hot record is kept in the read cache when it
/// leaves the hot log's memory, so the next RMW reads neither tier's device, even after the
/// record moved to the cold tier and the hot log was truncated below it.
#[test]
fn hot_records_of_cold_rmws_are_kept_as_they_leave_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.hot = c.hot.read_cache(4 << 20);
    let kv = open::<String>(dir.path(), c);
    let n = 20_000;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    migrate(&kv);
    assert_eq!(
        kv.stats().hot.read_cache.unwrap().kept,
        0,
        "loaded records were kept"
    );
    for k in 0..200 {
        assert_eq!(kv.rmw(&k, |v| v.unwrap() + "+").unwrap(), value(k, 0) + "+");
    }
    assert!(kv.stats().cold_rmws >= 200);
    // Filler pushes the new records out of the hot log's memory (not to the cold tier).
    for k in n..n + 20_000 {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    // And the hot log moves to the cold tier and is truncated below them: the copies still
    // hold the keys' newest values (DESIGN.md, "Kept copies outlive hot truncation").
    migrate(&kv);
    let before = kv.stats();
    assert!(
        kv.hot_markers().begin > rskv::Address::new(20_000 * 8),
        "nothing truncated"
    );
    let cache = before.hot.read_cache.unwrap();
    assert!(cache.kept >= 195 && cache.kept <= 200, "{cache:?}");
    for k in 0..200 {
        assert_eq!(
            kv.rmw(&k, |v| v.unwrap() + "+").unwrap(),
            value(k, 0) + "++"
        );
    }
    let after = kv.stats();
    // A copy is one per index entry: two kept keys of one entry keep one copy between them.
    let (cold, hits) = (
        after.cold_reads - before.cold_reads,
        after.hot.read_cache.unwrap().hits - cache.hits,
    );
    assert!(
        cold <= 5 && hits + cold == 200,
        "RMWs of kept keys read the cold tier: {cold} cold reads, {hits} hits"
    );
    assert!(
        after.hot.bytes_read - before.hot.bytes_read < 20 * 4096,
        "RMWs of kept keys read the hot device"
    );
}

fn increment_across_migrations(config: R2Config) -> rskv::R2Stats {
    let dir = tempfile::tempdir().unwrap();
    let kv = Arc::new(open::<u64>(dir.path(), config));
    let keys = 3_000u64;
    // Filler so the counters reach the device and move to the cold tier between rounds.
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (kv, stop) = (kv.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = 1u64 << 40;
            while !stop.load(Ordering::Acquire) {
                for _ in 0..2_000 {
                    kv.insert(&f, &0).unwrap();
                    f += 1;
                }
                let hot = kv.hot_markers();
                if hot.safe_head > hot.begin {
                    kv.compact_hot(hot.safe_head).unwrap();
                }
            }
        })
    };
    let rounds = 20u64;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    for k in 0..keys {
                        kv.rmw(&k, |v| v.unwrap_or(0) + 1).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    mover.join().unwrap();
    for k in 0..keys {
        assert_eq!(kv.get(&k).unwrap(), Some(2 * rounds), "key {k}");
    }
    let stats = kv.stats();
    assert!(
        stats.cold_rmws > 0,
        "no increment took its old value from the cold tier"
    );
    stats
}

#[test]
fn every_flipped_byte_of_cold_meta_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = {
        let kv = open::<u64>(dir.path(), config());
        for k in 0..20_000u64 {
            kv.insert(&k, &k).unwrap();
        }
        migrate(&kv);
        kv.checkpoint().unwrap()
    };
    let path = dir
        .path()
        .join("checkpoints")
        .join(token.to_string())
        .join("cold.meta");
    let good = std::fs::read(&path).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let r = R2Kv::<u64, u64>::open(config(), FileSystemDisk::new(dir.path()).unwrap());
        assert!(
            matches!(r, Err(rskv::Error::Checkpoint { .. })),
            "byte {i}: {r:?}"
        );
    }
    std::fs::write(&path, &good).unwrap();
    let kv = open::<u64>(dir.path(), config());
    assert_eq!(kv.get(&7).unwrap(), Some(7));
}

/// Moves of different keys into one cold index entry finish out of order when their chunk
/// updates wait for the device (two pass threads, many moves in flight each, chunks mostly on
/// the device): a move whose record was written before another's may find that one in the
/// entry. Linking it there would make a chain that goes forward in the log, which reads
/// refuse as corrupt; every chain must still go backwards and every key read back.
#[test]
fn racing_moves_into_one_entry_keep_chains_going_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let c = config()
        .hot_to_cold(
            LogCompaction::with_budget(1 << 40)
                .threads(2)
                .lookups_in_flight(64),
        )
        .cold_index(
            ColdIndexConfig::new()
                .chunk_bits(8)
                .log_memory(16 << 10)
                .page_size(4 << 10),
        );
    let kv = open::<String>(dir.path(), c);
    // About 2.4 keys per entry of 256 x 32.
    let n = 20_000;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let moved = migrate(&kv);
    assert!(moved.copied > 10_000, "{moved:?}");
    let s = kv.stats();
    assert!(
        s.cold_index.chunk_reads > 0,
        "chunks never left memory: {s:?}"
    );
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
    }
}

/// A move whose chunk update waited for the device finds its record no longer in the cold
/// log's mutable region and leaves it as an orphan. Its page may be being written by then,
/// its checksums stamped: marking the record invalid in memory at that moment put the bit on
/// the device without its checksum, and every later scan of the page (a whole iteration, a
/// cold-to-cold pass) failed with `Corrupt` ("record checksum mismatch"). Before the fix 3 of
/// 5 rounds of this failed; small pages and cold memory (4 KiB, 32 KiB) and a cold index whose
/// chunks do not fit its memory make orphans common.
#[test]
fn orphaned_cold_records_never_fail_verification() {
    let c = config()
        .hot(
            Config::new()
                .table_size(1 << 10)
                .page_size(4 << 10)
                .log_memory_size(64 << 10),
        )
        .cold_page_size(4 << 10)
        .cold_log_memory(32 << 10)
        .cold_index(
            ColdIndexConfig::new()
                .chunk_bits(10)
                .log_memory(64 << 10)
                .page_size(4 << 10),
        );
    let n = 4_000;
    for round in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let kv = open::<String>(dir.path(), c.clone());
        for k in 0..n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        let moved = migrate(&kv);
        assert!(moved.copied > 2_000, "{moved:?}");
        let pairs = kv
            .iter()
            .unwrap()
            .collect::<rskv::Result<Vec<_>>>()
            .unwrap_or_else(|e| panic!("round {round}: iteration: {e}"));
        assert_eq!(pairs.len(), n as usize, "round {round}");
        for (k, v) in &pairs {
            assert_eq!(*v, value(*k, 0), "round {round}: key {k}");
        }
        let cold = kv.cold_markers();
        let c = kv
            .compact_cold(cold.safe_head)
            .unwrap_or_else(|e| panic!("round {round}: cold-to-cold: {e}"));
        assert!(c.copied > 1_000, "round {round}: {c:?}");
        for k in (0..n).step_by(7) {
            assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
        }
    }
}

/// The Prometheus export says what `stats()` says: every sample is preceded by its HELP and
/// TYPE, parses, and matches the figure it names.
#[test]
fn the_prometheus_export_matches_the_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.hot = c.hot.read_cache(64 << 10);
    let kv = open::<String>(dir.path(), c);
    for k in 0..20_000 {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    migrate(&kv);
    for k in (0..3_000).chain(0..100) {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    let stats = kv.stats();
    let text = stats.prometheus();
    let mut samples = std::collections::HashMap::new();
    let mut described = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            described.insert(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let kind = rest.split(' ').nth(1).unwrap();
            assert!(kind == "counter" || kind == "gauge", "{line}");
        } else {
            let (name, v) = line.rsplit_once(' ').unwrap();
            let metric = name.split('{').next().unwrap();
            assert!(described.contains(metric), "{metric} has no HELP before it");
            let v: u64 = v.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(
                samples.insert(name.to_string(), v).is_none(),
                "{name} twice"
            );
        }
    }
    let cache = stats.hot.read_cache.unwrap();
    assert!(
        stats.cold_hits >= 3_000 && cache.not_admitted > 0,
        "{stats:?}"
    );
    for (name, want) in [
        ("rskv_r2_read_hits_total{tier=\"cold\"}", stats.cold_hits),
        ("rskv_r2_read_hits_total{tier=\"hot\"}", stats.hot_hits),
        ("rskv_r2_read_hits_total{tier=\"read_cache\"}", cache.hits),
        ("rskv_r2_cold_reads_total", stats.cold_reads),
        (
            "rskv_r2_read_cache_copies_total{copy=\"inserted\"}",
            cache.inserted,
        ),
        (
            "rskv_r2_read_cache_copies_total{copy=\"not_admitted\"}",
            cache.not_admitted,
        ),
        ("rskv_r2_read_cache_kept_total", cache.kept),
        (
            "rskv_r2_read_cache_copies_total{copy=\"skipped\"}",
            cache.skipped,
        ),
    ] {
        assert_eq!(samples.get(name), Some(&want), "{name} in\n{text}");
    }
}

/// Cold-to-cold compaction lays each chain out together, oldest first below its head, and a
/// cold read fetches `cold_chain_window` bytes below its record: a read of a key whose cold
/// index entry other keys share then costs one device read, not one per record before its own
/// (`r2::cold`, invariant 6). Counted by the cold log's device reads, never by time; the same
/// run without the window shows what it saves.
#[test]
fn chains_laid_out_by_cold_to_cold_are_read_with_one_device_read() {
    let n = 20_000u64;
    let mut per_read = Vec::new();
    for window in [0u64, 1024] {
        let dir = tempfile::tempdir().unwrap();
        // About 2.4 keys per entry of 256 x 32, the chunks in memory; cold pages of 4 KiB and
        // 4 of them in memory, so almost every cold record is read from the device.
        let c = config()
            .cold_page_size(4 << 10)
            .cold_log_memory(16 << 10)
            .cold_chain_window(window)
            .cold_index(ColdIndexConfig::new().chunk_bits(8));
        let kv = open::<String>(dir.path(), c);
        for k in 0..n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        migrate(&kv);
        let device_reads_per_cold_read = |kv: &R2Kv<u64, String>| {
            let before = kv.stats();
            for k in 0..n {
                assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
            }
            let after = kv.stats();
            // The hot log's newest pages stay in memory: their keys are read there.
            let cold_reads = after.cold_reads - before.cold_reads;
            assert!(cold_reads > n / 2, "{cold_reads} of {n} reads went cold");
            (after.cold_device_reads - before.cold_device_reads) as f64 / cold_reads as f64
        };
        let scattered = device_reads_per_cold_read(&kv);
        let cold = kv.cold_markers();
        let before = kv.stats().cold_device_reads;
        let c = kv.compact_cold(cold.safe_head).unwrap();
        assert!(kv.cold_markers().begin > cold.begin, "{c:?}");
        let s = kv.stats();
        let pass_reads = s.cold_device_reads - before;
        eprintln!("window {window}: the pass read {pass_reads} times for {c:?}");
        if window > 0 {
            // Each chain's walk once; its other records skip theirs (about 1 read a record,
            // where moving records one by one walks each one's chain: 2.6 here).
            assert!(pass_reads * 2 < c.records * 3, "{pass_reads} reads: {c:?}");
        }
        if window == 0 {
            assert_eq!(s.cold_chains_laid_out, 0);
        } else {
            // Each chain once (over 2 keys each), and almost every cold record in one.
            let moved = s.hot_to_cold.moved;
            assert!(s.cold_chains_laid_out < moved * 2 / 3, "{s:?}");
            assert!(s.cold_chain_records_laid_out > moved * 9 / 10, "{s:?}");
        }
        let laid_out = device_reads_per_cold_read(&kv);
        // Absent keys end their walk at the chain's end, laid out or not.
        for k in n..n + 1000 {
            assert_eq!(kv.get(&k).unwrap(), None, "key {k}");
        }
        per_read.push((
            window,
            scattered,
            laid_out,
            kv.stats().cold_records_in_buffer,
        ));
    }
    let [(_, scattered0, after0, in_buffer0), (_, _, after1, in_buffer1)] = per_read[..] else {
        unreachable!()
    };
    eprintln!("(window, device reads per cold read before, after, in buffer): {per_read:?}");
    // Without the window a read walks the chain one device read per record.
    assert!(scattered0 > 1.5 && after0 > 1.5, "{per_read:?}");
    // (only a predecessor that shares its read unit with the record comes for free).
    assert!(in_buffer0 < n / 100, "{per_read:?}");
    // With it, after cold-to-cold, about one read per get.
    assert!(after1 < 1.1, "{per_read:?}");
    assert!(in_buffer1 > n / 2, "{per_read:?}");
}

/// Laying chains out (`r2::cold`, invariant 6) where the chains are long and hold superseded
/// versions and deleted keys, with two workers and many moves in flight, so that moves of one
/// entry race (a lost swap orphans its copies and walks again): every key reads its newest
/// value, every deleted key stays deleted (its tombstone is dropped with the chain below it),
/// before and after a checkpoint and recovery.
#[test]
fn laying_out_chains_keeps_newest_values_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    // About 10 keys per entry of 64 x 32.
    let c = config()
        .cold_page_size(16 << 10)
        .cold_log_memory(64 << 10)
        .cold_index(ColdIndexConfig::new().chunk_bits(6));
    let n = 20_000u64;
    let expect = |k: u64| match k % 4 {
        0 => None,              // deleted in round 1
        1 => Some(value(k, 1)), // updated in round 1
        _ => Some(value(k, 0)),
    };
    let check = |kv: &R2Kv<u64, String>, when: &str| {
        for k in 0..n {
            assert_eq!(kv.get(&k).unwrap(), expect(k), "key {k} {when}");
        }
    };
    {
        let kv = open::<String>(dir.path(), c.clone());
        for k in 0..n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        migrate(&kv);
        for k in 0..n {
            match k % 4 {
                0 => kv.remove(&k).unwrap(),
                1 => kv.insert(&k, &value(k, 1)).unwrap(),
                _ => {}
            }
        }
        // Push round 1 past the hot log's memory, then down to the cold tier.
        for k in n..2 * n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        migrate(&kv);
        check(&kv, "before cold-to-cold");
        let cold = kv.cold_markers();
        kv.compact_cold(cold.safe_head).unwrap();
        let s = kv.stats();
        assert!(s.cold_chains_laid_out > 100, "{s:?}");
        check(&kv, "after cold-to-cold");
        // And once more over the laid-out chains themselves.
        let cold = kv.cold_markers();
        kv.compact_cold(cold.safe_head).unwrap();
        check(&kv, "after a second cold-to-cold");
        kv.checkpoint().unwrap();
    }
    let kv = open::<String>(dir.path(), c);
    check(&kv, "after recovery");
}
