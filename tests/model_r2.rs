//! R2Kv against a `HashMap` oracle (proptest): upserts, conditional inserts, reads, RMWs,
//! deletes and whole iterations mixed with hot-to-cold migrations, cold-to-cold compactions, checkpoints and recoveries, on tiny pages
//! and a tiny cold index (16 chunks, so chains share entries) and a tiny hot read cache.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{CacheAdmission, ColdIndexConfig, Config, LogCompaction, R2Config, R2Kv};

type Kv = R2Kv<u16, Vec<u8>, FileSystemDisk>;

/// `cache`: none, or the smallest read cache with this admission (`Every`: every miss copied,
/// so it turns over all the time; `SecondMiss`: records leaving the hot log's memory are kept
/// too, when their key missed).
fn config(cache: Option<CacheAdmission>) -> R2Config {
    let mut hot = Config::new()
        .table_size(64)
        .page_size(4 << 10)
        .log_memory_size(16 << 10);
    if let Some(admission) = cache {
        hot = hot.read_cache(32 << 10).read_cache_admission(admission);
    }
    R2Config::new()
        .hot(hot)
        .hot_to_cold(LogCompaction::with_budget(1 << 40))
        .cold_to_cold(LogCompaction::with_budget(1 << 40))
        .cold_page_size(4 << 10)
        .cold_log_memory(16 << 10)
        .cold_index(
            ColdIndexConfig::new()
                .chunk_bits(4)
                .log_memory(64 << 10)
                .page_size(4 << 10)
                .log_budget(1 << 20),
        )
        .maintenance_interval(Duration::from_secs(3600))
}

fn open(dir: &Path, cache: Option<CacheAdmission>) -> Kv {
    R2Kv::open(config(cache), FileSystemDisk::new(dir).unwrap()).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(u16, Vec<u8>),
    /// Insert only if the key has no live value in either tier.
    Insert(u16, Vec<u8>),
    Read(u16),
    /// `iter()` whole: every live pair once.
    Iter,
    ReadAll,
    Rmw(u16, u8),
    Delete(u16),
    Checkpoint,
    Recover,
    /// Move this fraction (of 255) of the hot log's on-disk part to the cold tier.
    Migrate(u8),
    /// Compact this fraction (of 255) of the cold log's on-disk part.
    CompactCold(u8),
}

const KEYS: u16 = 48;

fn op() -> impl Strategy<Value = Op> {
    let key = 0u16..KEYS;
    prop_oneof![
        12 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(k, v)| Op::Upsert(k, v)),
        4 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(k, v)| Op::Insert(k, v)),
        12 => key.clone().prop_map(Op::Read),
        2 => Just(Op::Iter),
        2 => Just(Op::ReadAll),
        8 => (key.clone(), any::<u8>()).prop_map(|(k, d)| Op::Rmw(k, d)),
        4 => key.prop_map(Op::Delete),
        3 => Just(Op::Checkpoint),
        3 => Just(Op::Recover),
        6 => any::<u8>().prop_map(Op::Migrate),
        3 => any::<u8>().prop_map(Op::CompactCold),
    ]
}

fn point(m: rskv::LogMarkers, f: u8) -> rskv::Address {
    let span = m.safe_head.raw().saturating_sub(m.begin.raw());
    rskv::Address::new(m.begin.raw() + span * u64::from(f) / 255)
}

fn step(old: Option<Vec<u8>>, d: u8) -> Vec<u8> {
    let mut v = old.unwrap_or_default();
    v.push(d);
    v
}

fn check_all(kv: &Kv, model: &HashMap<u16, Vec<u8>>, what: &str) -> Result<(), TestCaseError> {
    for k in 0..KEYS {
        prop_assert_eq!(
            kv.get(&k).unwrap(),
            model.get(&k).cloned(),
            "{} key {}",
            what,
            k
        );
    }
    Ok(())
}

fn run(ops: &[Op], cache: Option<CacheAdmission>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = open(dir.path(), cache);
    let mut model: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut durable: Option<HashMap<u16, Vec<u8>>> = None;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Upsert(k, v) => {
                kv.insert(k, v).unwrap();
                model.insert(*k, v.clone());
            }
            Op::Insert(k, v) => {
                let wrote = kv.conditional_insert(k, v).unwrap();
                prop_assert_eq!(wrote, !model.contains_key(k), "op {} insert {}", i, k);
                model.entry(*k).or_insert_with(|| v.clone());
            }
            Op::Iter => {
                let mut seen: HashMap<u16, Vec<u8>> = HashMap::new();
                for pair in kv.iter().unwrap() {
                    let (k, v) = pair.unwrap();
                    prop_assert!(
                        seen.insert(k, v).is_none(),
                        "op {} iter: key {} twice",
                        i,
                        k
                    );
                }
                prop_assert_eq!(&seen, &model, "op {} iter", i);
            }
            Op::Read(k) => {
                prop_assert_eq!(
                    kv.get(k).unwrap(),
                    model.get(k).cloned(),
                    "op {} read {}",
                    i,
                    k
                );
            }
            Op::ReadAll => check_all(&kv, &model, &format!("op {i} read-all"))?,
            Op::Rmw(k, d) => {
                let new = kv.rmw(k, |old| step(old, *d)).unwrap();
                let want = step(model.get(k).cloned(), *d);
                prop_assert_eq!(&new, &want, "op {} rmw {}", i, k);
                model.insert(*k, want);
            }
            Op::Delete(k) => {
                kv.remove(k).unwrap();
                model.remove(k);
            }
            Op::Checkpoint => {
                kv.checkpoint().unwrap();
                durable = Some(model.clone());
            }
            Op::Migrate(f) => {
                let c = kv.compact_hot(point(kv.hot_markers(), *f)).unwrap();
                prop_assert_eq!(c.records, c.copied + c.superseded);
                check_all(&kv, &model, &format!("op {i} after migration {c:?}"))?;
            }
            Op::CompactCold(f) => {
                let c = kv.compact_cold(point(kv.cold_markers(), *f)).unwrap();
                check_all(&kv, &model, &format!("op {i} after cold compaction {c:?}"))?;
            }
            Op::Recover => {
                drop(kv);
                kv = open(dir.path(), cache);
                model = durable.clone().unwrap_or_default();
                check_all(&kv, &model, &format!("op {i} after recovery"))?;
            }
        }
    }
    check_all(&kv, &model, "final")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn r2kv_matches_hashmap_oracle(
        ops in proptest::collection::vec(op(), 1..300),
        cache in prop_oneof![
            Just(None),
            Just(Some(CacheAdmission::Every)),
            Just(Some(CacheAdmission::SecondMiss)),
        ],
    ) {
        run(&ops, cache)?;
    }
}

/// The model's configuration really moves records to the cold tier and reads them there.
#[test]
fn the_model_configuration_reaches_the_cold_tier() {
    let mut ops = Vec::new();
    for round in 0..8u8 {
        for k in 0..KEYS {
            ops.push(Op::Upsert(k, vec![round; 200]));
        }
        ops.push(Op::Migrate(255));
        ops.push(Op::CompactCold(128));
    }
    ops.push(Op::Checkpoint);
    ops.push(Op::Recover);
    ops.push(Op::ReadAll);
    run(&ops, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path(), Some(CacheAdmission::Every));
    for k in 0..KEYS {
        kv.insert(&k, &vec![1; 200]).unwrap();
    }
    for _ in 0..4 {
        for k in KEYS..4 * KEYS {
            kv.insert(&k, &vec![2; 200]).unwrap();
        }
    }
    let moved = kv.compact_hot(kv.hot_markers().safe_head).unwrap();
    assert!(moved.copied >= u64::from(KEYS), "{moved:?}");
    for k in 0..KEYS {
        assert_eq!(kv.get(&k).unwrap(), Some(vec![1; 200]));
    }
    let s = kv.stats();
    assert!(s.cold_hits > 0 && s.cold_index.chunks == 16, "{s:?}");
    // Cold-to-cold lays chains out together here (`r2::cold`, invariant 6), so the model's
    // compactions take that path too.
    kv.compact_cold(kv.cold_markers().safe_head).unwrap();
    for k in 0..KEYS {
        assert_eq!(kv.get(&k).unwrap(), Some(vec![1; 200]));
    }
    let s = kv.stats();
    assert!(s.cold_chains_laid_out > 0, "{s:?}");
}
