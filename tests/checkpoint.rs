//! Checkpoint and recovery in one process: every kind and mode round-trips, recovery replays
//! what the index checkpoint missed, sessions continue at their commit points, and bad files are
//! refused with errors naming them.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{Add, Put};

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{CheckpointKind, Config, Error, LogMode, RsKv, Token};

type Kv = RsKv<u64, u64, FileSystemDisk>;

fn config() -> Config {
    Config::new()
        .table_size(1 << 8)
        .log_memory_size(64 << 10)
        .page_size(4096)
}

fn open(dir: &Path) -> Kv {
    RsKv::open(config(), FileSystemDisk::new(dir).unwrap()).unwrap()
}

fn recover(dir: &Path, token: Option<Token>) -> rskv::Result<(Kv, rskv::RecoveryInfo)> {
    RsKv::recover(config(), FileSystemDisk::new(dir).unwrap(), token)
}

fn check(kv: &Kv, model: &HashMap<u64, u64>, keys: u64) {
    for k in 0..keys {
        assert_eq!(kv.get(&k).unwrap(), model.get(&k).copied(), "key {k}");
    }
}

#[test]
fn every_kind_and_mode_round_trips() {
    for (kind, mode) in [
        (CheckpointKind::Full, LogMode::FoldOver),
        (CheckpointKind::Full, LogMode::Snapshot),
        (CheckpointKind::LogOnly, LogMode::FoldOver),
        (CheckpointKind::LogOnly, LogMode::Snapshot),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut model = HashMap::new();
        {
            let kv = open(dir.path());
            for k in 0..3000u64 {
                kv.insert(&k, &(k * 10)).unwrap();
                model.insert(k, k * 10);
            }
            for k in (0..3000u64).step_by(3) {
                kv.rmw(&k, |v| v.unwrap_or(0) + 1).unwrap();
                *model.get_mut(&k).unwrap() += 1;
            }
            for k in (0..3000u64).step_by(7) {
                kv.remove(&k).unwrap();
                model.remove(&k);
            }
            kv.checkpoint_with(kind, mode).unwrap();
            // Written after the checkpoint: must not come back.
            for k in 0..100u64 {
                kv.insert(&k, &999_999).unwrap();
            }
            kv.insert(&5000, &1).unwrap();
        }
        let (kv, info) = recover(dir.path(), None).unwrap();
        assert_eq!(
            info.index_token.is_some(),
            kind == CheckpointKind::Full,
            "{kind:?} {mode:?}"
        );
        check(&kv, &model, 5001);
        // The recovered store is fully usable: write, checkpoint, recover again.
        for k in 0..500u64 {
            kv.rmw(&k, |v| v.unwrap_or(0) + 7).unwrap();
            *model.entry(k).or_insert(0) += 7;
        }
        kv.checkpoint_with(kind, mode).unwrap();
        drop(kv);
        let (kv, _) = recover(dir.path(), None).unwrap();
        check(&kv, &model, 5001);
    }
}

#[test]
fn index_only_checkpoint_pairs_with_a_later_log_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = HashMap::new();
    {
        let kv = open(dir.path());
        for k in 0..2000u64 {
            kv.insert(&k, &k).unwrap();
            model.insert(k, k);
        }
        let index = kv
            .checkpoint_with(CheckpointKind::IndexOnly, LogMode::FoldOver)
            .unwrap();
        for k in 1000..4000u64 {
            kv.insert(&k, &(k + 1)).unwrap();
            model.insert(k, k + 1);
        }
        let log = kv
            .checkpoint_with(CheckpointKind::LogOnly, LogMode::FoldOver)
            .unwrap();
        assert!(log > index);
        let listed = kv.checkpoints().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].has_index && listed[0].log.is_none());
        assert!(!listed[1].has_index && listed[1].log.is_some());
    }
    let (kv, info) = recover(dir.path(), None).unwrap();
    assert!(info.index_token.is_some(), "the index checkpoint is used");
    check(&kv, &model, 4000);
}

#[test]
fn sessions_continue_at_their_commit_points() {
    let dir = tempfile::tempdir().unwrap();
    let (id_a, id_b);
    {
        let kv = open(dir.path());
        let mut a = kv.start_session();
        let mut b = kv.start_session();
        id_a = a.id();
        id_b = b.id();
        for i in 0..50u64 {
            assert_eq!(a.upsert(Put(i, i)), rskv::Status::Ok);
        }
        for i in 0..20u64 {
            assert_eq!(b.upsert(Put(100 + i, i)), rskv::Status::Ok);
        }
        kv.checkpoint().unwrap();
        for i in 50..60u64 {
            let _ = a.upsert(Put(i, i));
        }
    }
    let (kv, _) = recover(dir.path(), None).unwrap();
    let (mut a, pa) = kv.continue_session(id_a).unwrap();
    let (_b, pb) = kv.continue_session(id_b).unwrap();
    assert_eq!((pa.until, pb.until), (50, 20));
    assert!(pa.excluded.is_empty() && pb.excluded.is_empty());
    assert_eq!(a.serial_num().0, 50);
    assert_eq!(kv.get(&49).unwrap(), Some(49));
    assert_eq!(kv.get(&50).unwrap(), None);
    assert!(matches!(kv.continue_session(id_a), Err(Error::Busy(_))));
    // A new session does not reuse a recovered id.
    let c = kv.start_session();
    assert!(c.id() != id_a && c.id() != id_b);
    let _ = a.upsert(Put(50, 1));
    assert_eq!(a.serial_num().0, 51);
}

#[test]
fn missing_and_damaged_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        recover(dir.path(), None),
        Err(Error::Checkpoint { .. })
    ));
    let (t1, t2);
    {
        let kv = open(dir.path());
        for k in 0..500u64 {
            kv.insert(&k, &k).unwrap();
        }
        t1 = kv.checkpoint().unwrap();
        for k in 0..500u64 {
            kv.insert(&k, &(k + 1)).unwrap();
        }
        t2 = kv
            .checkpoint_with(CheckpointKind::Full, LogMode::Snapshot)
            .unwrap();
    }
    let ckpt = dir.path().join("checkpoints");
    let meta2 = ckpt.join(t2.to_string()).join("log.meta");
    let good = std::fs::read(&meta2).unwrap();
    // Flip a byte: the newest checkpoint is skipped, the older one recovers.
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    std::fs::write(&meta2, &bad).unwrap();
    let e = recover(dir.path(), Some(t2)).expect_err("corrupt meta refused");
    assert!(e.to_string().contains("log.meta"), "{e}");
    std::fs::write(&meta2, &good).unwrap();
    // A truncated snapshot file is refused the same way.
    let snap = ckpt.join(t2.to_string()).join("snapshot.dat");
    let data = std::fs::read(&snap).unwrap();
    std::fs::write(&snap, &data[..data.len() - 1]).unwrap();
    let e = recover(dir.path(), Some(t2)).expect_err("truncated snapshot refused");
    assert!(e.to_string().contains("snapshot.dat"), "{e}");
    // Recovering the newest fails, naming t2: it completed, so falling back silently would
    // lose what it made durable.
    let e = recover(dir.path(), None).expect_err("fell back past a completed checkpoint");
    assert!(e.to_string().contains(&t2.to_string()), "{e}");
    // Asked to, it falls back to t1, reporting why t2 was skipped.
    let (kv, info) = RsKv::recover(
        config().recovery_fallback(true),
        FileSystemDisk::new(dir.path()).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(info.token, t1);
    assert_eq!(info.skipped.len(), 1);
    for k in 0..500u64 {
        assert_eq!(kv.get(&k).unwrap(), Some(k));
    }
}

#[test]
fn a_store_over_null_disk_cannot_checkpoint() {
    let kv: RsKv<u64, u64, _> =
        RsKv::open(config(), rskv::device::null_disk::NullDisk::new()).unwrap();
    assert!(matches!(kv.checkpoint(), Err(Error::Config { .. })));
}

#[test]
fn repeated_recovery_from_snapshots_keeps_old_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = HashMap::new();
    {
        let kv = open(dir.path());
        for k in 0..20u64 {
            kv.insert(&k, &k).unwrap();
            model.insert(k, k);
        }
        kv.checkpoint_with(CheckpointKind::LogOnly, LogMode::Snapshot)
            .unwrap();
    }
    for round in 0..4u64 {
        let (kv, _) = recover(dir.path(), None).unwrap();
        check(&kv, &model, 100);
        for k in 20 + round * 5..25 + round * 5 {
            kv.insert(&k, &(k + round)).unwrap();
            model.insert(k, k + round);
        }
        check(&kv, &model, 100);
        if round % 2 == 0 {
            kv.checkpoint_with(CheckpointKind::Full, LogMode::Snapshot)
                .unwrap();
        } else {
            // Not checkpointed: lost at the next recovery.
            for k in 20 + round * 5..25 + round * 5 {
                model.insert(k, k + round - 1);
            }
            if round == 1 {
                for k in 25..30 {
                    model.remove(&k);
                }
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Truncating or flipping bytes of any checkpoint file, or of the log segment, makes recovery
/// still recover the newer one exactly (when only a redundant file was hit) or fail with an
/// error, and, with `recovery_fallback`, fall back to the older checkpoint (with exactly its
/// data): never wrong data.
#[test]
fn damaged_files_fall_back_or_fail_cleanly() {
    let pristine = tempfile::tempdir().unwrap();
    let mut at = Vec::new();
    let mut tokens = Vec::new();
    {
        let kv = open(pristine.path());
        let mut model = HashMap::new();
        for round in 0..2u64 {
            for k in 0..4000u64 {
                kv.insert(&k, &(k + round)).unwrap();
                model.insert(k, k + round);
            }
            tokens.push(
                kv.checkpoint_with(CheckpointKind::Full, LogMode::Snapshot)
                    .unwrap(),
            );
            at.push(model.clone());
        }
        for k in 0..4000u64 {
            kv.insert(&k, &0).unwrap();
        }
    }
    let newest = pristine
        .path()
        .join("checkpoints")
        .join(tokens[1].to_string());
    let mut victims: Vec<std::path::PathBuf> =
        ["index.meta", "index.dat", "log.meta", "snapshot.dat"]
            .iter()
            .map(|f| newest.join(f))
            .collect();
    victims.push(pristine.path().join("log.0"));
    let (mut fell_back, mut failed, mut exact) = (0, 0, 0);
    for victim in &victims {
        let len = std::fs::metadata(victim)
            .unwrap_or_else(|e| panic!("{}: {e}", victim.display()))
            .len();
        assert!(len > 0, "{}", victim.display());
        let damages: Vec<(&str, u64)> = (1..=5)
            .map(|i| ("flip", len * i / 6))
            .chain([("truncate", len / 2), ("truncate", 0)])
            .collect();
        for (what, pos) in damages {
            let case = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), case.path());
            let path = case
                .path()
                .join(victim.strip_prefix(pristine.path()).unwrap());
            let mut bytes = std::fs::read(&path).unwrap();
            if what == "flip" {
                bytes[pos as usize] ^= 0x5a;
            } else {
                bytes.truncate(pos as usize);
            }
            std::fs::write(&path, &bytes).unwrap();
            let label = format!("{what} at {pos} of {}", victim.display());
            // Without fallback: the newest checkpoint exactly, or an error.
            match recover(case.path(), None) {
                Ok((kv, info)) => {
                    assert_eq!(info.token, tokens[1], "{label}: fell back on its own");
                    check(&kv, &at[1], 4000);
                    continue;
                }
                Err(e) => assert!(
                    matches!(e, Error::Checkpoint { .. } | Error::Corrupt { .. }),
                    "{label}: {e}"
                ),
            }
            let fallback = RsKv::recover(
                config().recovery_fallback(true),
                FileSystemDisk::new(case.path()).unwrap(),
                None,
            );
            match fallback {
                Ok((kv, info)) => {
                    let i = tokens.iter().position(|t| *t == info.token).unwrap();
                    check(&kv, &at[i], 4000);
                    if i == 0 {
                        fell_back += 1;
                    } else {
                        exact += 1;
                    }
                }
                Err(e) => {
                    assert!(
                        matches!(e, Error::Checkpoint { .. } | Error::Corrupt { .. }),
                        "{label}: {e}"
                    );
                    failed += 1;
                }
            }
        }
    }
    eprintln!("damage cases: {fell_back} fell back, {exact} recovered the newest, {failed} failed");
    // Damage to the newest checkpoint's own files must have made some recoveries fall back.
    assert!(fell_back > 0, "exact {exact}, failed {failed}");
}

/// An update waiting for the disk when a checkpoint starts is in the checkpoint if its caller
/// drives it meanwhile (the checkpoint waits for it), and is reported excluded if it sits in a
/// session nobody drives (the checkpoint does not wait for it).
#[test]
fn pending_updates_are_included_or_reported_excluded() {
    // A session that goes idle with its update pending.
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let kv = open(dir.path());
        for k in 0..5000u64 {
            kv.insert(&k, &k).unwrap();
        }
        let mut s = kv.start_session();
        id = s.id();
        // Key 0 is long on disk: the RMW goes pending (serial 1).
        assert_eq!(s.rmw(Add(0, 1000)), rskv::Status::Pending);
        kv.checkpoint().unwrap();
        assert!(s.complete_pending(true));
        assert_eq!(kv.get(&0).unwrap(), Some(1000), "the live store has it");
        assert_eq!(s.upsert(Put(1, 77)), rskv::Status::Ok); // serial 2, after the checkpoint
    }
    {
        let (kv, _) = recover(dir.path(), None).unwrap();
        let (_s, point) = kv.continue_session(id).unwrap();
        assert_eq!(point.until, 1);
        assert_eq!(point.excluded, vec![1]);
        assert_eq!(kv.get(&0).unwrap(), Some(0));
        assert_eq!(
            kv.get(&1).unwrap(),
            Some(1),
            "serial 2 is after the commit point"
        );
    }

    // A blocking update whose device read is held across the checkpoint's start: driven
    // throughout, so the checkpoint waits for it and it lands in the checkpointed version,
    // whatever the interleaving.
    use rskv::device::faulty_disk::FaultyDisk;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    {
        let disk = Arc::new(FaultyDisk::new(FileSystemDisk::new(dir.path()).unwrap()));
        let kv: RsKv<u64, u64, _> = RsKv::open(config(), disk.clone()).unwrap();
        for k in 0..5000u64 {
            kv.insert(&k, &k).unwrap();
        }
        disk.hold_reads_until(u64::MAX);
        let reads = disk.reads();
        std::thread::scope(|scope| {
            let updater = scope.spawn(|| kv.rmw(&0, |v| v.unwrap_or(0) + 1000).unwrap());
            while disk.reads() == reads {
                std::thread::yield_now();
            }
            // The update is on its way to the disk (its read is held): checkpoint now.
            let handle = kv
                .checkpoint_async(CheckpointKind::Full, LogMode::FoldOver)
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            disk.release_reads();
            handle.wait().unwrap();
            assert_eq!(updater.join().unwrap(), 1000);
        });
    }
    let (kv, _) = recover(dir.path(), None).unwrap();
    assert_eq!(
        kv.get(&0).unwrap(),
        Some(1000),
        "the driven update missed the checkpoint"
    );
}

struct IdPut(u64, u64);

impl rskv::UpsertContext for IdPut {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn value(&self) -> &u64 {
        &self.1
    }
    fn key_hash(&self) -> u64 {
        self.0 // the seed's contexts hash a u64 key to itself
    }
}

struct IdGet(u64, Option<u64>);

impl rskv::ReadContext for IdGet {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn key_hash(&self) -> u64 {
        self.0
    }
    fn get(&mut self, value: &u64) {
        self.1 = Some(*value);
    }
}

#[test]
fn stores_with_their_own_key_hash_recover_with_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = open(dir.path());
        for k in 0..3000u64 {
            assert_eq!(kv.upsert(&IdPut(k, k + 1)), rskv::Status::Ok);
        }
        kv.checkpoint_with(CheckpointKind::LogOnly, LogMode::FoldOver)
            .unwrap();
    }
    // RsKv's own hash would rebuild an index whose entries lookups never reach.
    let reason = refused_hash(recover(dir.path(), None));
    assert!(reason.contains("contexts' own key_hash"), "{reason}");
    let disk = FileSystemDisk::new(dir.path()).unwrap();
    let (kv, info): (Kv, _) = RsKv::recover_with_hash(config(), disk, None, |k: &u64| *k).unwrap();
    assert!(info.index_token.is_none(), "the whole log was replayed");
    for k in 0..3000u64 {
        let mut ctx = IdGet(k, None);
        assert_eq!(kv.read(&mut ctx), rskv::Status::Ok, "key {k}");
        assert_eq!(ctx.1, Some(k + 1));
    }
}

/// Recovery marks records written after the checkpoint's version change invalid on disk; the
/// same checkpoint must still verify and recover again (a crash during or after recovery).
#[test]
fn recovering_twice_from_one_checkpoint_gives_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let token;
    {
        let kv = open(dir.path());
        let stop = std::sync::atomic::AtomicBool::new(false);
        token = std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    kv.insert(&(i % 3000), &i).unwrap();
                    i += 1;
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(30));
            let t = kv
                .checkpoint_with(CheckpointKind::Full, LogMode::FoldOver)
                .unwrap();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            t
        });
    }
    let snapshot = |kv: &Kv| {
        (0..3000u64)
            .map(|k| kv.get(&k).unwrap())
            .collect::<Vec<_>>()
    };
    let (kv, first) = recover(dir.path(), None).unwrap();
    let a = snapshot(&kv);
    drop(kv);
    let (kv, second) = recover(dir.path(), None).unwrap();
    assert_eq!((first.token, second.token), (token, token));
    assert!(second.skipped.is_empty(), "{:?}", second.skipped);
    assert_eq!(snapshot(&kv), a);
}

/// Recovery reads the newest pages back into memory: a recovered store serves recent keys
/// without touching the disk, and can update them (no lock or seal bit survives from the copy
/// the checkpoint took while other threads were writing).
#[test]
fn recovered_store_starts_warm_and_writable() {
    for mode in [LogMode::FoldOver, LogMode::Snapshot] {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = open(dir.path());
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        kv.rmw(&(i % 200), |v| v.unwrap_or(0) + 1).unwrap();
                        i += 1;
                    }
                });
                std::thread::sleep(std::time::Duration::from_millis(20));
                kv.checkpoint_with(CheckpointKind::Full, mode).unwrap();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        }
        let (kv, _) = recover(dir.path(), None).unwrap();
        let before: Vec<Option<u64>> = (0..200u64).map(|k| kv.get(&k).unwrap()).collect();
        assert_eq!(kv.stats().bytes_read, 0, "{mode:?}: reads went to disk");
        for k in 0..200u64 {
            kv.rmw(&k, |v| v.unwrap_or(0) + 1).unwrap();
            kv.insert(&(k + 1000), &k).unwrap();
            assert_eq!(
                kv.get(&k).unwrap(),
                Some(before[k as usize].unwrap_or(0) + 1)
            );
        }
    }
}

/// The reason recovery gives for refusing a hash (panics on anything else).
fn refused_hash(r: rskv::Result<(Kv, rskv::RecoveryInfo)>) -> String {
    match r {
        Err(Error::Config {
            field: "key_hash",
            reason,
        }) => reason,
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("recovered with another hash than the store ran with"),
    }
}

/// Checkpoints record which hash filed their keys; recovery with another is refused instead of
/// rebuilding an index where every key reads as absent (session 12 found the facade of such a
/// store losing keys that way). Nothing on disk changes, so the right hash recovers afterwards.
#[test]
fn recovery_with_another_hash_than_the_store_ran_with_is_refused() {
    let given = |k: &u64| k.wrapping_mul(3);
    let disk = |dir: &Path| FileSystemDisk::new(dir).unwrap();
    let fill = |kv: &Kv| {
        for k in 0..3000u64 {
            kv.insert(&k, &(k + 1)).unwrap();
        }
        kv.checkpoint_with(CheckpointKind::Full, LogMode::FoldOver)
            .unwrap();
    };
    let check = |kv: &Kv| {
        for k in 0..3000u64 {
            assert_eq!(kv.get(&k).unwrap(), Some(k + 1), "key {k}");
        }
    };
    // A store opened with a hash of its own.
    let dir = tempfile::tempdir().unwrap();
    fill(&RsKv::open_with_hash(config(), disk(dir.path()), given).unwrap());
    let reason = refused_hash(recover(dir.path(), None));
    assert!(
        reason.contains("recover_with_hash and the same function"),
        "{reason}"
    );
    let other = RsKv::recover_with_hash(config(), disk(dir.path()), None, |k: &u64| k ^ 1);
    let reason = refused_hash(other);
    assert!(reason.contains("another function"), "{reason}");
    let (kv, _) = RsKv::recover_with_hash(config(), disk(dir.path()), None, given).unwrap();
    check(&kv);
    drop(kv);

    // A store with RsKv's own hash.
    let dir = tempfile::tempdir().unwrap();
    fill(&open(dir.path()));
    let reason = refused_hash(RsKv::recover_with_hash(
        config(),
        disk(dir.path()),
        None,
        given,
    ));
    assert!(reason.contains("recover with RsKv::recover"), "{reason}");
    // A given function that is RsKv's own hash is RsKv's hash.
    let own = |k: &u64| rskv::hash_key(k);
    let (kv, _) = RsKv::recover_with_hash(config(), disk(dir.path()), None, own).unwrap();
    check(&kv);
    drop(kv);
    let (kv, _) = recover(dir.path(), None).unwrap();
    check(&kv);
}
