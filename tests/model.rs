//! Model test: random operation sequences against a `HashMap` oracle, on a store whose log
//! memory is four 4 KiB pages, so most records live on disk. Checkpoints of every kind and
//! "crash and recover" steps are interleaved: a recovered store must equal the oracle as it was
//! at the last completed log checkpoint.
use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{CheckpointKind, Config, LogMode, RsKv};

type Kv = RsKv<u16, Vec<u8>, FileSystemDisk>;

/// `copy`: reads copy records they fetch from disk to the tail (`copy_reads_to_tail`).
fn config(copy: bool) -> Config {
    Config::new()
        .table_size(1 << 8)
        .log_memory_size(16 << 10)
        .page_size(4096)
        .copy_reads_to_tail(copy)
}

fn open(dir: &Path, copy: bool) -> Kv {
    RsKv::open(config(copy), FileSystemDisk::new(dir).unwrap()).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(u16, Vec<u8>),
    Read(u16),
    Rmw(u16, u8),
    Delete(u16),
    Checkpoint(u8),
    Recover,
}

const KINDS: [(CheckpointKind, LogMode); 5] = [
    (CheckpointKind::Full, LogMode::FoldOver),
    (CheckpointKind::Full, LogMode::Snapshot),
    (CheckpointKind::LogOnly, LogMode::FoldOver),
    (CheckpointKind::LogOnly, LogMode::Snapshot),
    (CheckpointKind::IndexOnly, LogMode::FoldOver),
];

fn op() -> impl Strategy<Value = Op> {
    let key = 0u16..48;
    prop_oneof![
        3 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(k, v)| Op::Upsert(k, v)),
        3 => key.clone().prop_map(Op::Read),
        2 => (key.clone(), any::<u8>()).prop_map(|(k, d)| Op::Rmw(k, d)),
        1 => key.prop_map(Op::Delete),
        1 => (0u8..KINDS.len() as u8).prop_map(Op::Checkpoint),
        1 => Just(Op::Recover),
    ]
}

fn run(ops: &[Op], copy: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = open(dir.path(), copy);
    let mut model: HashMap<u16, Vec<u8>> = HashMap::new();
    // The oracle as of the last completed log checkpoint (None: no checkpoint yet).
    let mut durable: Option<HashMap<u16, Vec<u8>>> = None;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Upsert(k, v) => {
                kv.insert(k, v).unwrap();
                model.insert(*k, v.clone());
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
            Op::Rmw(k, d) => {
                let f = |old: Option<Vec<u8>>| {
                    let mut v = old.unwrap_or_default();
                    v.push(*d);
                    v
                };
                let new = kv.rmw(k, f).unwrap();
                let want = f(model.get(k).cloned());
                prop_assert_eq!(&new, &want, "op {} rmw {}", i, k);
                model.insert(*k, want);
            }
            Op::Delete(k) => {
                kv.remove(k).unwrap();
                model.remove(k);
            }
            Op::Checkpoint(c) => {
                let (kind, mode) = KINDS[*c as usize];
                kv.checkpoint_with(kind, mode).unwrap();
                if kind != CheckpointKind::IndexOnly {
                    durable = Some(model.clone());
                }
            }
            Op::Recover => {
                drop(kv);
                let disk = FileSystemDisk::new(dir.path()).unwrap();
                match &durable {
                    Some(d) => {
                        kv = RsKv::recover(config(copy), disk, None).unwrap().0;
                        model = d.clone();
                    }
                    None => {
                        prop_assert!(
                            RsKv::<u16, Vec<u8>, _>::recover(config(copy), disk, None).is_err()
                        );
                        // Nothing durable: start over (an index-only checkpoint may be there).
                        let _ = std::fs::remove_dir_all(dir.path().join("checkpoints"));
                        kv = open(dir.path(), copy);
                        model.clear();
                    }
                }
                for k in 0..48u16 {
                    prop_assert_eq!(
                        kv.get(&k).unwrap(),
                        model.get(&k).cloned(),
                        "op {} after recovery, key {}",
                        i,
                        k
                    );
                }
            }
        }
    }
    for (k, v) in &model {
        let got = kv.get(k).unwrap();
        prop_assert_eq!(got.as_ref(), Some(v), "final read {}", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matches_hashmap_oracle(ops in proptest::collection::vec(op(), 1..400), copy in any::<bool>()) {
        run(&ops, copy)?;
    }
}
