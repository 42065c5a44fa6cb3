//! R2Kv's facade methods that mirror RsKv's: `conditional_insert` (insert if the key has no
//! live value in either tier), `rmw_many` (one tiered RMW per key) and `iter` (every live pair
//! of both tiers once), with keys in the hot tier, the cold tier, both, and deleted in one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, Error, LogCompaction, R2Config, R2Kv};

/// As `tests/r2.rs`: a small hot tier (64 KiB pages, 512 KiB of log memory) so records reach
/// its disk soon, and background migration off (budgets far away, long interval).
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
fn migrate<V: rskv::Codec>(kv: &R2Kv<u64, V>) {
    let hot = kv.hot_markers();
    if hot.safe_head > hot.begin {
        kv.compact_hot(hot.safe_head).unwrap();
    }
}

/// Compacts everything of the cold log that is on the device.
fn compact_cold<V: rskv::Codec>(kv: &R2Kv<u64, V>) {
    let cold = kv.cold_markers();
    if cold.safe_head > cold.begin {
        kv.compact_cold(cold.safe_head).unwrap();
    }
}

/// Inserts `count` filler keys from `from` (above every key a test checks), so what was
/// written before reaches the hot log's device and can move to the cold tier.
fn fill(kv: &R2Kv<u64, String>, from: u64, count: u64) {
    for k in from..from + count {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
}

fn value(k: u64, round: u64) -> String {
    format!("value-{k}-{round}-{}", "x".repeat((k % 50) as usize))
}

/// Whether a read of `key` misses the hot tier and asks the cold tier (no read cache is
/// configured, so a hot miss always reads cold), and what the cold tier answers.
fn cold_answer(kv: &R2Kv<u64, String>, key: u64) -> (bool, Option<String>) {
    let before = kv.stats();
    let v = kv.get(&key).unwrap();
    let after = kv.stats();
    (after.cold_reads == before.cold_reads + 1, v)
}

const FILLER: u64 = 1 << 40;

#[test]
fn conditional_insert_writes_only_keys_without_a_live_value() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<String>(dir.path(), config());
    let n = 20_000u64;
    fill(&kv, 0, n);
    migrate(&kv);
    let new = |k: u64| format!("new-{k}");

    // Absent in both tiers: written, once.
    let absent = n + 1;
    assert!(kv.conditional_insert(&absent, &new(absent)).unwrap());
    assert!(!kv
        .conditional_insert(&absent, &"again".to_string())
        .unwrap());
    assert_eq!(kv.get(&absent).unwrap(), Some(new(absent)));

    // Only in the hot tier.
    let hot = n + 2;
    kv.insert(&hot, &value(hot, 1)).unwrap();
    assert!(!kv.conditional_insert(&hot, &new(hot)).unwrap());
    assert_eq!(kv.get(&hot).unwrap(), Some(value(hot, 1)));

    // Only in the cold tier.
    let cold = 10;
    assert_eq!(cold_answer(&kv, cold), (true, Some(value(cold, 0))));
    assert!(!kv.conditional_insert(&cold, &new(cold)).unwrap());
    assert_eq!(kv.get(&cold).unwrap(), Some(value(cold, 0)));

    // In both tiers, the hot value newer.
    let both = 11;
    assert!(cold_answer(&kv, both).0);
    kv.insert(&both, &value(both, 1)).unwrap();
    assert!(!kv.conditional_insert(&both, &new(both)).unwrap());
    assert_eq!(kv.get(&both).unwrap(), Some(value(both, 1)));

    // Deleted in the hot tier, the old value still in the cold tier: absent, so written.
    let hot_tombstone = 12;
    assert!(cold_answer(&kv, hot_tombstone).0);
    kv.remove(&hot_tombstone).unwrap();
    assert!(kv
        .conditional_insert(&hot_tombstone, &new(hot_tombstone))
        .unwrap());
    assert!(!kv
        .conditional_insert(&hot_tombstone, &"again".into())
        .unwrap());
    assert_eq!(kv.get(&hot_tombstone).unwrap(), Some(new(hot_tombstone)));

    // Deleted, and the tombstone moved to the cold tier above the old cold value.
    let (cold_tombstone, dropped_tombstone) = (13, 14);
    kv.remove(&cold_tombstone).unwrap();
    kv.remove(&dropped_tombstone).unwrap();
    fill(&kv, FILLER, n);
    migrate(&kv);
    assert_eq!(cold_answer(&kv, cold_tombstone), (true, None));
    assert!(kv
        .conditional_insert(&cold_tombstone, &new(cold_tombstone))
        .unwrap());
    assert_eq!(kv.get(&cold_tombstone).unwrap(), Some(new(cold_tombstone)));

    // Cold-to-cold dropped the tombstone with the value below it: absent everywhere.
    compact_cold(&kv);
    assert_eq!(cold_answer(&kv, dropped_tombstone), (true, None));
    assert!(kv
        .conditional_insert(&dropped_tombstone, &new(dropped_tombstone))
        .unwrap());
    assert_eq!(
        kv.get(&dropped_tombstone).unwrap(),
        Some(new(dropped_tombstone))
    );

    // Nothing else changed.
    for k in (0..n).step_by(97).filter(|k| !(10..=14).contains(k)) {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
    }
}

/// Two threads race to insert the same keys (deleted, the tombstones and the old values in
/// the cold tier) while records keep migrating, the winners' too: exactly one wins each key,
/// and its value stays.
#[test]
fn conditional_insert_has_one_winner_per_key_across_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Arc::new(open::<String>(dir.path(), config()));
    let keys = 4_000u64;
    fill(&kv, 0, keys);
    for k in 0..keys {
        kv.remove(&k).unwrap();
    }
    fill(&kv, FILLER, 20_000);
    migrate(&kv);
    let cold_only = (0..keys)
        .filter(|&k| cold_answer(&kv, k) == (true, None))
        .count();
    assert!(
        cold_only as u64 > keys / 2,
        "{cold_only} tombstones in the cold tier"
    );
    let passes = kv.stats().hot_to_cold.passes;
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (kv, stop) = (kv.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = 2 * FILLER;
            while !stop.load(Ordering::Acquire) {
                fill(&kv, next, 2_000);
                next += 2_000;
                migrate(&kv);
            }
        })
    };
    let racers: Vec<_> = (0..2u64)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                (0..keys)
                    .map(|k| kv.conditional_insert(&k, &format!("{t}-{k}")).unwrap())
                    .collect::<Vec<bool>>()
            })
        })
        .collect();
    let won: Vec<Vec<bool>> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    let passes = kv.stats().hot_to_cold.passes - passes;
    stop.store(true, Ordering::Release);
    mover.join().unwrap();
    assert!(passes > 1, "{passes} hot-to-cold passes during the race");
    for (k, (&zero, &one)) in won[0].iter().zip(&won[1]).enumerate() {
        assert!(
            zero != one,
            "key {k}: thread 0 won {zero}, thread 1 won {one}"
        );
        let winner = u8::from(one);
        assert_eq!(
            kv.get(&(k as u64)).unwrap(),
            Some(format!("{winner}-{k}")),
            "key {k}"
        );
    }
}

#[test]
fn rmw_many_keeps_exact_totals_across_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<u64>(dir.path(), config());
    let n = 30_000u64;
    let mut model: HashMap<u64, u64> = HashMap::new();
    for k in 0..n {
        kv.insert(&k, &k).unwrap();
        model.insert(k, k);
    }
    migrate(&kv);
    assert!(kv.hot_markers().begin.raw() > 0);
    // Hot over cold, hot tombstones over cold, and hot-only keys.
    for k in (0..n).step_by(5) {
        kv.insert(&k, &(k + 1)).unwrap();
        model.insert(k, k + 1);
    }
    for k in (0..n).step_by(7) {
        kv.remove(&k).unwrap();
        model.remove(&k);
    }
    for k in n..n + 1_000 {
        kv.insert(&k, &k).unwrap();
        model.insert(k, k);
    }
    let cold_rmws = kv.stats().cold_rmws;
    // Every third key, absent keys, and duplicates (one key three times, one twice).
    let mut batch: Vec<u64> = (0..n + 1_010).step_by(3).collect();
    batch.extend([3, 3, n + 2, 6]);
    let f = |k: &u64, old: Option<u64>| old.unwrap_or(1_000_000) + 1 + (k % 2) * 10;
    let out = kv.rmw_many(&batch, f).unwrap();
    assert_eq!(out.len(), batch.len());
    let mut occurrences: HashMap<u64, Vec<u64>> = HashMap::new();
    for (k, v) in batch.iter().zip(&out) {
        occurrences.entry(*k).or_default().push(*v);
    }
    for (k, mut got) in occurrences {
        got.sort_unstable();
        let mut expect = Vec::new();
        for _ in 0..got.len() {
            let v = f(&k, model.get(&k).copied());
            model.insert(k, v);
            expect.push(v);
        }
        assert_eq!(got, expect, "key {k}");
    }
    for k in 0..n + 1_020 {
        assert_eq!(kv.get(&k).unwrap(), model.get(&k).copied(), "key {k}");
    }
    assert!(
        kv.stats().cold_rmws > cold_rmws,
        "no key of the batch took its old value from the cold tier"
    );
}

/// Two threads increment overlapping batches (with a key twice in each) while a third moves
/// records to the cold tier and compacts it: every increment counts.
#[test]
fn rmw_many_from_two_threads_while_records_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Arc::new(open::<u64>(dir.path(), config()));
    let keys = 3_000u64;
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (kv, stop) = (kv.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = FILLER;
            while !stop.load(Ordering::Acquire) {
                for _ in 0..2_000 {
                    kv.insert(&f, &0).unwrap();
                    f += 1;
                }
                migrate(&kv);
                compact_cold(&kv);
            }
        })
    };
    let rounds = 10u64;
    // Thread 0 takes keys [0, 2/3 keys), thread 1 [1/3 keys, keys); both take key 0 twice.
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let mut batch: Vec<u64> = (t * keys / 3..(t + 2) * keys / 3).collect();
                batch.extend([0, 0]);
                for _ in 0..rounds {
                    for chunk in batch.chunks(500) {
                        kv.rmw_many(chunk, |_, v| v.unwrap_or(0) + 1).unwrap();
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
        let per_round = match k {
            0 => 2 + 2 + 1,
            k if (keys / 3..2 * keys / 3).contains(&k) => 2,
            _ => 1,
        };
        assert_eq!(kv.get(&k).unwrap(), Some(per_round * rounds), "key {k}");
    }
    assert!(kv.stats().cold_rmws > 0);
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Everything `kv.iter()` yields, failing on a key yielded twice.
fn collect(kv: &R2Kv<u64, String>) -> HashMap<u64, String> {
    let mut seen = HashMap::new();
    for pair in kv.iter().unwrap() {
        let (k, v) = pair.unwrap();
        assert!(seen.insert(k, v).is_none(), "key {k} yielded twice");
    }
    seen
}

fn assert_matches(seen: &HashMap<u64, String>, model: &HashMap<u64, String>, when: &str) {
    assert_eq!(seen.len(), model.len(), "{when}: number of pairs");
    for (k, v) in model {
        assert_eq!(seen.get(k), Some(v), "{when}: key {k}");
    }
}

#[test]
fn iter_yields_exactly_the_model_through_both_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<String>(dir.path(), config());
    let mut model: HashMap<u64, String> = HashMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let space = 8_000u64;
    for round in 0..6u64 {
        for _ in 0..12_000 {
            let k = rng.below(space);
            match rng.below(10) {
                0..=5 => {
                    let v = format!("{}-{}", value(k, round), "y".repeat(rng.below(80) as usize));
                    kv.insert(&k, &v).unwrap();
                    model.insert(k, v);
                }
                6 | 7 => {
                    kv.remove(&k).unwrap();
                    model.remove(&k);
                }
                _ => {
                    let v = kv
                        .rmw(&k, |old| format!("{}+", old.unwrap_or_default()))
                        .unwrap();
                    let m = model.entry(k).or_default();
                    m.push('+');
                    assert_eq!(&v, m, "rmw of {k}");
                }
            }
        }
        assert_matches(&collect(&kv), &model, &format!("round {round}"));
        migrate(&kv);
        assert_matches(
            &collect(&kv),
            &model,
            &format!("round {round}, hot-to-cold"),
        );
        if round % 2 == 1 {
            compact_cold(&kv);
            assert_matches(
                &collect(&kv),
                &model,
                &format!("round {round}, cold-to-cold"),
            );
        }
    }
    let s = kv.stats();
    assert!(
        s.hot_to_cold.passes >= 6 && s.cold_to_cold.passes >= 2,
        "{s:?}"
    );
    let cold = kv.cold_markers();
    assert!(
        cold.head > cold.begin,
        "the cold log should be partly on its device: {cold:?}"
    );
    // A key whose only records are cold (so the cold phase yields it): the last round's
    // migration left the earliest keys' records there.
    assert!(
        model.keys().any(|&k| cold_answer(&kv, k).0),
        "no live key is cold-only"
    );
}

#[test]
fn an_open_iterator_holds_off_passes_but_not_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<String>(dir.path(), config());
    let n = 20_000u64;
    let model: HashMap<u64, String> = (0..n).map(|k| (k, value(k, 0))).collect();
    fill(&kv, 0, n);
    migrate(&kv);
    let cold_only = (0..n).filter(|&k| cold_answer(&kv, k).0).count() as u64;
    assert!(cold_only > 200, "{cold_only} cold-only keys");
    let mut it = kv.iter().unwrap();
    let mut seen = HashMap::new();
    // Into the cold phase (the hot tier holds fewer than n - 200 pairs): the hot phase's
    // claim is still held.
    for _ in 0..n - 100 {
        let (k, v) = it.next().unwrap().unwrap();
        assert!(seen.insert(k, v).is_none(), "key {k} yielded twice");
    }
    let (hot, cold) = (kv.hot_markers(), kv.cold_markers());
    assert!(matches!(kv.compact_hot(hot.safe_head), Err(Error::Busy(_))));
    assert!(matches!(
        kv.compact_cold(cold.safe_head),
        Err(Error::Busy(_))
    ));
    assert!(matches!(kv.iter(), Err(Error::Busy(_))));
    // A checkpoint runs beside it, on the same thread too.
    kv.checkpoint().unwrap();
    for pair in it {
        let (k, v) = pair.unwrap();
        assert!(seen.insert(k, v).is_none(), "key {k} yielded twice");
    }
    assert_matches(&seen, &model, "around a checkpoint");
    // Dropped: passes run again.
    fill(&kv, FILLER, n);
    kv.compact_hot(kv.hot_markers().safe_head).unwrap();
    // From inside an operation: Busy, not a hang.
    let mut inner = None;
    kv.rmw(&1, |old| {
        inner = Some(kv.iter().map(|_| ()));
        old.unwrap_or_default()
    })
    .unwrap();
    assert!(matches!(inner, Some(Err(Error::Busy(_)))), "{inner:?}");
}

/// Writes during the iteration (made between two of its steps, before its cold phase) do not
/// change what it yields for keys that were live or absent when it was created: a cold-only
/// key updated, deleted or RMWed in the hot tier meanwhile is still yielded once, with its
/// cold value; a key deleted or absent then and written meanwhile is not yielded.
#[test]
fn iter_yields_what_each_key_held_at_its_creation() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open::<String>(dir.path(), config());
    let n = 20_000u64;
    fill(&kv, 0, n);
    migrate(&kv);
    let (updated, removed, rmwed, deleted, absent, hot) = (10, 11, 12, 20, n + 5, 30);
    for k in [updated, removed, rmwed, deleted, hot] {
        assert!(cold_answer(&kv, k).0, "key {k} should be cold-only");
    }
    kv.remove(&deleted).unwrap();
    kv.insert(&hot, &value(hot, 1)).unwrap();
    let mut model: HashMap<u64, String> = (0..n).map(|k| (k, value(k, 0))).collect();
    model.remove(&deleted);
    model.insert(hot, value(hot, 1));

    let mut it = kv.iter().unwrap();
    let mut seen = HashMap::new();
    let (k, v) = it.next().unwrap().unwrap();
    seen.insert(k, v);
    kv.insert(&updated, &value(updated, 2)).unwrap();
    kv.remove(&removed).unwrap();
    kv.rmw(&rmwed, |old| format!("{}+", old.unwrap_or_default()))
        .unwrap();
    kv.insert(&deleted, &value(deleted, 2)).unwrap();
    kv.insert(&absent, &value(absent, 2)).unwrap();
    kv.insert(&hot, &value(hot, 2)).unwrap();
    for pair in it {
        let (k, v) = pair.unwrap();
        assert!(seen.insert(k, v).is_none(), "key {k} yielded twice");
    }
    // `hot` may be yielded with either value it held during the iteration (its record may be
    // updated in place).
    let hot_value = seen.remove(&hot);
    assert!(
        hot_value == Some(value(hot, 1)) || hot_value == Some(value(hot, 2)),
        "{hot_value:?}"
    );
    model.remove(&hot);
    assert_matches(&seen, &model, "writes during the iteration");
}

/// A writer updates, deletes and inserts keys that are multiples of 3 while the iteration
/// runs, and background migration is on. The iteration yields no key twice; every other key
/// exactly as it was; and every multiple of 6 (only ever upserted, so live throughout) once,
/// with a value the writer gave it.
#[test]
fn iter_while_a_writer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let c = config()
        .hot_to_cold(LogCompaction::with_budget(2 << 20).max_pass(1 << 20))
        .maintenance_interval(Duration::from_millis(5));
    let kv = Arc::new(open::<String>(dir.path(), c));
    let n = 30_000u64;
    let mut model: HashMap<u64, String> = HashMap::new();
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
        model.insert(k, value(k, 0));
    }
    for k in (1..n).step_by(10) {
        kv.remove(&k).unwrap();
        model.remove(&k);
    }
    for k in (2..n).step_by(10) {
        kv.insert(&k, &value(k, 1)).unwrap();
        model.insert(k, value(k, 1));
    }
    // At least one background pass before the iteration (none runs during it).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while kv.stats().hot_to_cold.passes == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(kv.stats().hot_to_cold.passes > 0, "no background pass ran");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (kv, stop, writes) = (kv.clone(), stop.clone(), writes.clone());
        std::thread::spawn(move || {
            let mut round = 2;
            while !stop.load(Ordering::Acquire) {
                for k in (0..n + 3_000).step_by(3) {
                    if k % 6 == 0 {
                        kv.insert(&k, &value(k, round)).unwrap();
                    } else if round % 2 == 0 {
                        kv.remove(&k).unwrap();
                    } else {
                        kv.rmw(&k, |_| value(k, round)).unwrap();
                    }
                    writes.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                }
                round += 1;
            }
        })
    };
    while writes.load(Ordering::Relaxed) < 1_000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // A background pass may be running: then iter is Busy for a moment.
    let it = loop {
        match kv.iter() {
            Ok(it) => break it,
            Err(Error::Busy(_)) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    };
    let before = writes.load(Ordering::Relaxed);
    let mut seen = HashMap::new();
    for pair in it {
        let (k, v) = pair.unwrap();
        assert!(seen.insert(k, v).is_none(), "key {k} yielded twice");
    }
    let during = writes.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    assert!(during > 0, "the writer wrote nothing during the iteration");
    for k in (0..n + 3_000).filter(|k| k % 3 != 0) {
        assert_eq!(seen.get(&k), model.get(&k), "untouched key {k}");
    }
    for k in (0..n).step_by(6) {
        let v = seen.get(&k);
        assert!(
            v.is_some_and(|v| v.starts_with(&format!("value-{k}-"))),
            "key {k}, live throughout: {v:?}"
        );
    }
}
