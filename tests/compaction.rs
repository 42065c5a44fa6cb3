//! Log maintenance: truncation and lookup compaction, alone, under load, with checkpoints,
//! with a read that is on its way to a record being truncated, and with device errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rskv::device::faulty_disk::FaultyDisk;
use rskv::device::file_system_disk::{DiskOptions, FileSystemDisk};
use rskv::{hash_key, Address, Config, Disk, Error, RsKv};

mod common;
use common::{HashedGet, HashedPut};

const MIB: u64 = 1 << 20;

fn disk(dir: &std::path::Path) -> FileSystemDisk {
    FileSystemDisk::with_options(dir, DiskOptions::default().with_segment_size(MIB)).unwrap()
}

fn config() -> Config {
    Config::new()
        .table_size(1 << 12)
        .log_memory_size(256 << 10)
        .page_size(4096)
}

fn value(k: u64, round: u64) -> Vec<u8> {
    let mut v = vec![(k % 251) as u8; 100];
    v[..8].copy_from_slice(&(k ^ round << 40).to_le_bytes());
    v
}

/// Bytes of `log.*` segment files in `dir`.
fn segment_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("log."))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn safe_head<K: rskv::Codec, V: rskv::Codec, D: Disk>(kv: &RsKv<K, V, D>) -> Address {
    kv.stats().markers.safe_head
}

#[test]
fn truncation_drops_old_records_without_io_and_gives_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config(), disk(dir.path())).unwrap();
    let n = 40_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let before = segment_bytes(dir.path());
    let until = safe_head(&kv);
    let t = kv.truncate_until(until).unwrap();
    assert!(t.begin > t.begin_before && t.begin <= until);
    assert_eq!(kv.stats().markers.begin, t.begin);
    // No checkpoint needs the old segments: they are gone at once.
    let after = segment_bytes(dir.path());
    assert!(t.bytes_freed >= 3 * MIB, "freed {} bytes", t.bytes_freed);
    assert!(
        after < before && before - after >= 3 * MIB,
        "{before} -> {after}"
    );
    // Keys whose only record was truncated are absent, and finding that takes no device read.
    let read_before = kv.stats().bytes_read;
    let mut gone = 0;
    for k in 0..1000 {
        if kv.get(&k).unwrap().is_none() {
            gone += 1;
        }
    }
    assert_eq!(gone, 1000, "the oldest keys were all below the new begin");
    assert_eq!(
        kv.stats().bytes_read,
        read_before,
        "a lookup read below begin"
    );
    // The newest keys are all still there.
    for k in n - 100..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    // Bad input: below begin, beyond safe head.
    assert!(matches!(
        kv.truncate_until(Address::new(t.begin.raw() - 4096)),
        Err(Error::Config { .. })
    ));
    let tail = kv.tail_address();
    assert!(matches!(kv.truncate_until(tail), Err(Error::Config { .. })));
    assert!(matches!(kv.compact(tail), Err(Error::Config { .. })));
}

#[test]
fn compaction_keeps_every_live_key_and_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config(), disk(dir.path())).unwrap();
    let n = 20_000u64;
    let mut model = std::collections::HashMap::new();
    for round in 0..3 {
        for k in 0..n {
            if round == 0 || k % (round + 1) == 0 {
                kv.insert(&k, &value(k, round)).unwrap();
                model.insert(k, value(k, round));
            }
        }
        if round == 0 {
            for k in (0..n).filter(|k| k % 7 == 3) {
                kv.remove(&k).unwrap();
                model.remove(&k);
            }
        }
    }
    let before = segment_bytes(dir.path());
    let c = kv.compact(safe_head(&kv)).unwrap();
    assert!(
        c.copied > 0 && c.superseded > 0 && c.tombstones > 0,
        "{c:?}"
    );
    assert_eq!(c.records, c.copied + c.superseded + c.tombstones);
    assert!(c.scanned_bytes >= 4 * MIB);
    assert!(c.bytes_freed() > 0 && segment_bytes(dir.path()) < before);
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), model.get(&k).cloned(), "key {k}");
    }
    // Compacting again what the first pass copied: everything it copies now was copied once.
    let again = kv.compact(safe_head(&kv)).unwrap();
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), model.get(&k).cloned(), "key {k}");
    }
    assert!(again.truncation.is_some() || again.records == 0);
}

/// Two threads increment and delete overlapping keys while compactions run back to back:
/// totals are exact, deleted keys stay deleted.
#[test]
fn compaction_under_rmw_and_delete_load() {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<RsKv<u64, u64, _>> =
        Arc::new(RsKv::open(config().mutable_fraction(0.3), disk(dir.path())).unwrap());
    const KEYS: u64 = 20_000;
    const DOOMED: u64 = 500;
    // Doomed keys (KEYS..KEYS+DOOMED) exist first and are deleted by thread 0 during the run.
    for k in KEYS..KEYS + DOOMED {
        kv.insert(&k, &7).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (kv, done) = (kv.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut passes, mut copied) = (0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                match kv.compact(safe_head(&kv)) {
                    Ok(c) => {
                        passes += u64::from(c.truncation.is_some());
                        copied += c.copied;
                    }
                    Err(e) => panic!("compaction failed: {e}"),
                }
                std::thread::yield_now();
            }
            (passes, copied)
        })
    };
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let mut counts = vec![0u64; KEYS as usize];
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for i in 0..60_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % KEYS;
                    kv.rmw(&k, |old| old.unwrap_or(0) + 1).unwrap();
                    counts[k as usize] += 1;
                    if t == 0 && i % 100 == 0 && i / 100 < DOOMED {
                        kv.remove(&(KEYS + i / 100)).unwrap();
                    }
                }
                counts
            })
        })
        .collect();
    let counts: Vec<Vec<u64>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    done.store(true, Ordering::Release);
    let (passes, copied) = compactor.join().unwrap();
    assert!(
        passes >= 2 && copied > 0,
        "{passes} passes, {copied} copies"
    );
    assert!(kv.stats().markers.begin > Address::FIRST_VALID);
    for k in 0..KEYS {
        let want = counts[0][k as usize] + counts[1][k as usize];
        let got = kv.get(&k).unwrap().unwrap_or(0);
        assert_eq!(got, want, "key {k}");
    }
    for k in KEYS..KEYS + DOOMED {
        assert_eq!(kv.get(&k).unwrap(), None, "deleted key {k} came back");
    }
}

/// With checkpoints, space comes back only once a checkpoint records the new begin; the older
/// checkpoint is then removed, and recovery restores everything.
#[test]
fn compaction_with_checkpoints_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000u64;
    {
        let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config(), disk(dir.path())).unwrap();
        for k in 0..n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        let first = kv.checkpoint().unwrap();
        for k in (0..n).step_by(2) {
            kv.insert(&k, &value(k, 1)).unwrap();
        }
        let c = kv.compact(safe_head(&kv)).unwrap();
        assert!(c.copied > 0);
        assert_eq!(
            c.bytes_freed(),
            0,
            "the checkpoint still needs the old segments"
        );
        let before = segment_bytes(dir.path());
        let second = kv.checkpoint().unwrap();
        assert!(
            segment_bytes(dir.path()) < before,
            "the checkpoint released nothing"
        );
        let listed: Vec<_> = kv.checkpoints().unwrap().iter().map(|c| c.token).collect();
        assert!(
            !listed.contains(&first) && listed.contains(&second),
            "{listed:?}"
        );
        // Updates after the checkpoint are lost by the drop, as always.
        kv.insert(&1, &value(1, 9)).unwrap();
    }
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config(), disk(dir.path())).unwrap();
    assert!(kv.recovered().is_some());
    for k in 0..n {
        let round = u64::from(k % 2 == 0);
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, round)), "key {k}");
    }
}

/// Keys 0 and 1 share one hash (a context's `key_hash`), so one chain holds both: a read of
/// key 0 fetches key 1's record first, then continues to its own, older record. That record is
/// compacted and its segment deleted between the two fetches: the read must start over and
/// find the copy, not read a deleted segment.
#[test]
fn a_read_on_its_way_to_a_truncated_record_finds_the_copy() {
    fn shared(k: &u64) -> u64 {
        if *k < 2 {
            42
        } else {
            hash_key(k)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let kv: RsKv<u64, u64, _> = RsKv::open_with_hash(config(), disk(dir.path()), shared).unwrap();
    let _ = kv.upsert(&HashedPut(0, 100, shared)).unwrap();
    let _ = kv.upsert(&HashedPut(1, 101, shared)).unwrap();
    let _ = kv.get(&5); // a facade read: its hash agrees with `shared`
    for k in 2..100_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    let seen = Arc::new(std::sync::Mutex::new(None));
    let mut s = kv.start_session();
    assert_eq!(
        s.read(HashedGet(0, seen.clone(), shared)).unwrap(),
        rskv::Status::Pending,
        "key 0 should be on disk"
    );
    let c = kv.compact(safe_head(&kv)).unwrap();
    assert!(c.bytes_freed() > 0, "{c:?}");
    assert!(s.complete_pending(true));
    assert_eq!(*seen.lock().unwrap(), Some(100));
    let mut direct = HashedGet(1, Arc::new(std::sync::Mutex::new(None)), shared);
    let _ = kv.read(&mut direct).unwrap();
    assert_eq!(*direct.1.lock().unwrap(), Some(101));
}

/// A store whose contexts use another hash, opened without it, refuses to compact instead of
/// filing copies under the wrong hash.
#[test]
fn compaction_refuses_an_unknown_context_hash() {
    fn identity(k: &u64) -> u64 {
        *k
    }
    let dir = tempfile::tempdir().unwrap();
    let kv: RsKv<u64, u64, _> = RsKv::open(config(), disk(dir.path())).unwrap();
    for k in 0..50_000 {
        let _ = kv.upsert(&HashedPut(k, k, identity)).unwrap();
    }
    let err = kv.compact(safe_head(&kv)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                field: "key_hash",
                ..
            }
        ),
        "{err}"
    );
}

/// A device read error in the middle of a compaction fails it; nothing is truncated and every
/// key still reads its value once the device heals.
#[test]
fn a_read_error_mid_compaction_leaves_the_store_whole() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(disk(dir.path())));
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config(), disk.clone()).unwrap();
    let n = 20_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let begin = kv.stats().markers.begin;
    disk.fail_reads(true);
    let err = kv.compact(safe_head(&kv)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(
        kv.stats().markers.begin,
        begin,
        "a failed compaction truncated"
    );
    disk.heal();
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
    }
    // And the next pass works.
    let c = kv.compact(safe_head(&kv)).unwrap();
    assert!(c.copied > 0);
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
    }
}

/// A full disk during compaction: the pass (or the writes after it) fails with an error, and
/// recovery brings back everything the checkpoint before it covered.
#[test]
fn a_full_disk_mid_compaction_loses_nothing_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000u64;
    {
        let disk = Arc::new(FaultyDisk::new(disk(dir.path())));
        let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config(), disk.clone()).unwrap();
        for k in 0..n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        kv.checkpoint().unwrap();
        disk.fail_writes_after(3);
        let compacted = kv.compact(safe_head(&kv));
        // Copies fill memory; once their pages must be written, the disk is full.
        let mut failed = compacted.is_err();
        for k in 0..n {
            if kv.insert(&k, &value(k, 1)).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "no error although the disk refused every write");
        assert!(kv.checkpoint().is_err());
    }
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config(), disk(dir.path())).unwrap();
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
    }
}

/// Compaction and iteration called from inside an update's function return `Busy` at once:
/// they would wait for the operation that calls them.
#[test]
fn maintenance_from_inside_an_update_is_busy_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let kv: RsKv<u64, Vec<u8>, _> = RsKv::open(config(), disk(dir.path())).unwrap();
    for k in 0..20_000u64 {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let until = safe_head(&kv);
    let mut inside = None;
    kv.rmw(&20_000, |old| {
        inside = Some((kv.compact(until).err(), kv.iter().err()));
        old.unwrap_or_default()
    })
    .unwrap();
    let (compact, iter) = inside.unwrap();
    assert!(matches!(compact, Some(Error::Busy(_))), "{compact:?}");
    assert!(matches!(iter, Some(Error::Busy(_))), "{iter:?}");
    // Outside, both work.
    assert!(kv.compact(until).unwrap().copied > 0);
    assert_eq!(kv.iter().unwrap().count(), 20_001);
}

/// Facade operations of a store opened with its contexts' hash file keys under that hash too:
/// compaction rehashes every logged key with it, so a key the facade wrote under RsKv's own
/// hash would be moved where the facade never looks.
#[test]
fn facade_keys_survive_compaction_in_a_store_with_its_own_hash() {
    fn own(k: &u64) -> u64 {
        k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
    }
    let dir = tempfile::tempdir().unwrap();
    let kv: RsKv<u64, u64, _> = RsKv::open_with_hash(config(), disk(dir.path()), own).unwrap();
    for k in 0..100_000u64 {
        kv.insert(&k, &(k + 1)).unwrap();
    }
    let c = kv.compact(safe_head(&kv)).unwrap();
    assert!(c.bytes_freed() > 0, "{c:?}");
    for k in 0..100_000u64 {
        assert_eq!(kv.get(&k).unwrap(), Some(k + 1), "key {k}");
    }
    // Recovery rebuilds the index by rehashing every replayed key with the same hash.
    kv.checkpoint().unwrap();
    drop(kv);
    let (kv, _): (RsKv<u64, u64, _>, _) =
        RsKv::recover_with_hash(config(), disk(dir.path()), None, own).unwrap();
    for k in (0..100_000u64).step_by(7) {
        assert_eq!(kv.get(&k).unwrap(), Some(k + 1), "key {k} after recovery");
        assert!(kv.contains_key(&k).unwrap());
    }
    assert_eq!(
        kv.get_many(&[3, 100_001]).unwrap(),
        vec![Some(4), None],
        "batched reads hash alike"
    );
    kv.rmw(&5, |v| v.unwrap_or(0) + 10).unwrap();
    assert_eq!(kv.get(&5).unwrap(), Some(16));
}
