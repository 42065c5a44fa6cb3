//! The read cache: hits, invalidation by updates and deletes, truncation, eviction, index
//! growth, compaction, checkpoints and recovery, and readers racing writers; then the
//! admission filter. The mechanism tests copy every miss (`CacheAdmission::Every`), so each
//! read exercises insertion.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rskv::device::file_system_disk::{DiskOptions, FileSystemDisk};
use rskv::{CacheAdmission, Config, Error, RsKv};

mod common;
use common::{spawn_incrementers, HashedGet, HashedPut};

const MIB: u64 = 1 << 20;

fn disk(dir: &std::path::Path) -> FileSystemDisk {
    FileSystemDisk::with_options(dir, DiskOptions::default().with_segment_size(MIB)).unwrap()
}

/// 256 KiB of log memory in 4 KiB pages (records leave memory fast), a read cache of `cache`
/// bytes that copies every miss, and a small index so that chains hold several keys.
fn config(cache: u64) -> Config {
    Config::new()
        .table_size(1 << 8)
        .log_memory_size(256 << 10)
        .page_size(4096)
        .read_cache(cache)
        .read_cache_admission(CacheAdmission::Every)
}

fn value(k: u64, round: u64) -> Vec<u8> {
    let mut v = vec![(k % 251) as u8; 100];
    v[..8].copy_from_slice(&(k ^ round << 40).to_le_bytes());
    v
}

type Kv = RsKv<u64, Vec<u8>, FileSystemDisk>;

fn open(dir: &std::path::Path, cache: u64) -> Kv {
    RsKv::open(config(cache), disk(dir)).unwrap()
}

fn cache_stats(kv: &Kv) -> rskv::ReadCacheStats {
    cache_stats_of(kv)
}

fn cache_stats_of<V: rskv::Codec>(kv: &RsKv<u64, V, FileSystemDisk>) -> rskv::ReadCacheStats {
    kv.stats().read_cache.expect("the read cache is on")
}

#[test]
fn a_second_read_of_an_on_disk_key_is_a_hit_without_device_io() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path(), 4 * MIB);
    let n = 5_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    for k in 0..200 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    let s = cache_stats(&kv);
    assert!(s.inserted >= 190, "{s:?}");
    let read_before = kv.stats().bytes_read;
    for k in 0..200 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
    }
    let after = cache_stats(&kv);
    assert!(after.hits >= s.hits + 190, "{after:?}");
    assert!(
        kv.stats().bytes_read - read_before < 20 * 4096,
        "cached reads went to the device"
    );
}

#[test]
fn updates_deletes_and_rmw_replace_cached_copies() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path(), 4 * MIB);
    let n = 5_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    // Cache keys 0..300.
    for k in 0..300 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    assert!(cache_stats(&kv).inserted >= 290);
    for k in 0..100 {
        kv.insert(&k, &value(k, 1)).unwrap();
    }
    for k in 100..200 {
        kv.remove(&k).unwrap();
    }
    for k in 200..300 {
        kv.rmw(&k, |old| {
            let mut v = old.expect("present").clone();
            v[99] = v[99].wrapping_add(1);
            v
        })
        .unwrap();
    }
    for k in 0..300 {
        let want = match k {
            0..=99 => Some(value(k, 1)),
            100..=199 => None,
            _ => {
                let mut v = value(k, 0);
                v[99] = v[99].wrapping_add(1);
                Some(v)
            }
        };
        assert_eq!(kv.get(&k).unwrap(), want, "key {k}");
    }
    // Push them all out of memory again, then read them through the cache twice.
    for k in n..2 * n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    for _ in 0..2 {
        for k in 0..100 {
            assert_eq!(kv.get(&k).unwrap(), Some(value(k, 1)), "key {k}");
        }
        for k in 100..200 {
            assert_eq!(kv.get(&k).unwrap(), None, "key {k}");
        }
    }
}

#[test]
fn eviction_keeps_every_read_right() {
    let dir = tempfile::tempdir().unwrap();
    // 64 pages of 4 KiB: about 1,600 copies of these records.
    let kv = open(dir.path(), 256 << 10);
    let n = 20_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    for round in 0..3u64 {
        for i in 0..n {
            let k = (i * 7919 + round) % n;
            assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
        }
    }
    let s = cache_stats(&kv);
    assert!(s.evicted > 1_000, "{s:?}");
    assert!(s.inserted > 10_000, "{s:?}");
    // Hot keys stay: after the sweep, a small set read over and over is mostly hits.
    let before = cache_stats(&kv).hits;
    for _ in 0..20 {
        for k in 0..100 {
            assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
        }
    }
    let s = cache_stats(&kv);
    assert!(s.hits - before >= 1_800, "{s:?}");
    assert!(
        s.refreshed > 0,
        "hot copies were never given a second chance: {s:?}"
    );
}

#[test]
fn a_cached_copy_of_a_truncated_record_reads_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path(), 4 * MIB);
    let n = 20_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    for k in 0..500 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    assert!(cache_stats(&kv).inserted >= 490);
    let until = kv.stats().markers.safe_head;
    kv.truncate_until(until).unwrap();
    // Keys 0..500 were logged first: their records are gone, so are they, cached or not.
    for k in 0..500 {
        assert_eq!(kv.get(&k).unwrap(), None, "key {k}");
    }
    for k in n - 100..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
}

#[test]
fn growth_compaction_checkpoint_and_recovery_with_cached_entries() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000u64;
    let token = {
        let kv = open(dir.path(), MIB);
        for k in 0..n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        for k in (0..n).step_by(3) {
            kv.insert(&k, &value(k, 1)).unwrap();
        }
        let want = |k: u64| value(k, u64::from(k % 3 == 0));
        for k in 0..n {
            assert_eq!(kv.get(&k).unwrap(), Some(want(k)));
        }
        assert!(cache_stats(&kv).inserted > 1_000);
        // Splits write cached entries as their log addresses.
        kv.grow_index().unwrap();
        for k in 0..n {
            assert_eq!(kv.get(&k).unwrap(), Some(want(k)), "after growth, key {k}");
        }
        // Compaction copies live records over cached entries.
        let until = kv.stats().markers.safe_head;
        let c = kv.compact(until).unwrap();
        assert!(c.copied > 0);
        for k in 0..n {
            assert_eq!(
                kv.get(&k).unwrap(),
                Some(want(k)),
                "after compaction, key {k}"
            );
        }
        // Fill the cache again, then checkpoint: the index checkpoint must not name it.
        for k in 0..n {
            assert_eq!(kv.get(&k).unwrap(), Some(want(k)));
        }
        kv.checkpoint().unwrap()
    };
    let (kv, info) =
        RsKv::<u64, Vec<u8>, _>::recover(config(MIB), disk(dir.path()), Some(token)).unwrap();
    assert_eq!(info.token, token);
    for k in 0..n {
        assert_eq!(
            kv.get(&k).unwrap(),
            Some(value(k, u64::from(k % 3 == 0))),
            "after recovery, key {k}"
        );
    }
}

#[test]
fn bad_read_cache_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |c: Config| {
        matches!(
            RsKv::<u64, u64, _>::open(c, disk(dir.path())),
            Err(Error::Config {
                field: "read_cache_size",
                ..
            })
        )
    };
    assert!(refused(Config::new().read_cache(1000)));
    assert!(refused(Config::new().read_cache(8 << 30)));
    assert!(refused(
        Config::new().read_cache(MIB).copy_reads_to_tail(true)
    ));
    assert!(refused(
        Config::new().memory_budget(64 * MIB).read_cache(40 * MIB)
    ));
    let r = Config::new()
        .memory_budget(128 * MIB)
        .read_cache(64 * MIB)
        .resolve()
        .unwrap();
    let b = r.budget.unwrap();
    assert_eq!((b.total, b.read_cache), (128 * MIB, 64 * MIB));
    assert_eq!(b.index + b.log + b.read_cache, b.total);
}

/// Readers fill the cache while a writer updates the same keys, and compactions and index
/// growths run: no reader ever sees a value older than one it saw before for that key, and a
/// key deleted for good never reads back.
#[test]
fn readers_filling_the_cache_never_go_back_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Arc::new(open(dir.path(), 256 << 10));
    let keys = 5_000u64;
    // Value of key k at version v: k in the high half, v in the low.
    let val = |k: u64, v: u64| -> Vec<u8> {
        let mut b = vec![0u8; 100];
        b[..8].copy_from_slice(&(k << 32 | v).to_le_bytes());
        b
    };
    let decode = |b: &[u8]| {
        let w = u64::from_le_bytes(b[..8].try_into().unwrap());
        (w >> 32, w & 0xffff_ffff)
    };
    for k in 0..keys {
        kv.insert(&k, &val(k, 1)).unwrap();
    }
    // Keys 0..100 are deleted for good at the start; filler keeps records moving to disk.
    for k in 0..100 {
        kv.remove(&k).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(1)).collect());
    let writers: Vec<_> = (0..1u64)
        .map(|t| {
            let (kv, stop, versions) = (kv.clone(), stop.clone(), versions.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let k = 100 + (i * 7) % (keys - 100);
                    // Versions only grow: each write is the key's next.
                    let v = versions[k as usize].fetch_add(1, Ordering::AcqRel) + 1;
                    kv.rmw(&k, |old| {
                        let old = old.map_or(0, |b| {
                            u64::from_le_bytes(b[..8].try_into().unwrap()) & 0xffff_ffff
                        });
                        val(k, old.max(v))
                    })
                    .unwrap();
                    kv.insert(&(1_000_000 + i % 5_000), &val(0, 0)).unwrap();
                }
            })
        })
        .collect();
    let maintenance = {
        let (kv, stop) = (kv.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut growths, mut passes) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                if growths < 3 {
                    kv.grow_index().unwrap();
                    growths += 1;
                }
                let m = kv.stats().markers;
                let until = rskv::Address::new((m.begin.raw() + m.safe_head.raw()) / 2);
                match kv.compact(until) {
                    Ok(_) => passes += 1,
                    Err(Error::Busy(_)) => {}
                    Err(e) => panic!("compaction failed: {e}"),
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (growths, passes)
        })
    };
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let mut seen = vec![0u64; keys as usize];
                // Until the cache turned over (its 64 pages hold about 1,700 copies).
                let turned_over = || kv.stats().read_cache.unwrap().inserted >= 3_400;
                for i in 0..1_000_000u64 {
                    if i >= 60_000 && i % 1_000 == 0 && turned_over() {
                        break;
                    }
                    // Each key twice in a row: the second read finds the copy the first
                    // put in the cache (unless an update or a compaction came between), so
                    // hits do not depend on how the two readers drift apart (the 5,000 keys
                    // are three times what the cache holds).
                    let k = (i / 2 * 13 + t * 101) % keys;
                    match kv.get(&k).unwrap() {
                        Some(b) => {
                            assert!(k >= 100, "deleted key {k} read back");
                            let (key, v) = decode(&b);
                            assert_eq!(key, k, "another key's value");
                            assert!(
                                v >= seen[k as usize],
                                "key {k} went back from {} to {v}",
                                seen[k as usize]
                            );
                            seen[k as usize] = v;
                        }
                        None => assert!(k < 100, "live key {k} read as absent"),
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let (growths, passes) = maintenance.join().unwrap();
    assert!(
        growths == 3 && passes > 0,
        "{growths} growths, {passes} passes"
    );
    let s = cache_stats(&kv);
    assert!(s.hits > 1_000 && s.inserted >= 3_400, "{s:?}");
}

#[test]
fn by_default_a_full_cache_copies_a_key_on_its_second_miss() {
    let dir = tempfile::tempdir().unwrap();
    // 64 pages of 1 KiB: about 400 copies of 152 bytes.
    let config = config(64 << 10).read_cache_admission(CacheAdmission::default());
    let kv: Kv = RsKv::open(config, disk(dir.path())).unwrap();
    for k in 0..5_000u64 {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let read = |keys: std::ops::Range<u64>| {
        for k in keys {
            assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)), "key {k}");
        }
    };
    // While it fills, every miss is copied; once full, first misses are not.
    read(1000..3000);
    let full = cache_stats(&kv);
    assert!(full.inserted >= 350 && full.not_admitted > 1000, "{full:?}");
    // First misses: remembered, not copied.
    read(0..50);
    let s = cache_stats(&kv);
    assert_eq!(s.not_admitted, full.not_admitted + 50, "{s:?}");
    assert_eq!(s.inserted, full.inserted, "{s:?}");
    // Second misses: copied, unless no frame was free yet (a released frame waits for an
    // epoch action, which a loaded machine may run late: the copy is skipped then).
    read(0..50);
    let s = cache_stats(&kv);
    assert_eq!(s.not_admitted, full.not_admitted + 50, "{s:?}");
    let copied = s.inserted - full.inserted;
    assert_eq!(copied + s.skipped - full.skipped, 50, "{s:?}");
    assert!(copied >= 40, "{s:?}");
    // Third reads: the copied ones are hits, without the device.
    let before = kv.stats().bytes_read;
    read(0..50);
    let now = cache_stats(&kv);
    assert_eq!(
        (now.hits, now.misses),
        (s.hits + copied, s.misses + 50 - copied),
        "{now:?}"
    );
    if copied == 50 {
        assert_eq!(
            kv.stats().bytes_read,
            before,
            "cached reads went to the device"
        );
    }
    // The filter's memory is part of the cache's.
    assert_eq!(now.memory_bytes, 64 << 10);
}

#[test]
fn an_rmw_of_a_cached_key_takes_the_copy_as_its_old_value_without_device_io() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path(), 4 * MIB);
    let n = 5_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    for k in 0..200 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    let bump = |v: Option<Vec<u8>>| {
        let mut v = v.expect("present");
        v[99] = v[99].wrapping_add(1);
        v
    };
    let (hits, read) = (cache_stats(&kv).hits, kv.stats().bytes_read);
    for k in 0..200 {
        kv.rmw(&k, bump).unwrap();
    }
    // The RMWs found their old values in the copies, and their writes unlinked them.
    assert!(
        cache_stats(&kv).hits >= hits + 190,
        "{:?}",
        cache_stats(&kv)
    );
    assert!(
        kv.stats().bytes_read - read < 20 * 4096,
        "RMWs of cached keys went to the device"
    );
    // Conditional inserts see the cached values too (no write), and deletes replace them.
    for k in 200..300 {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
    }
    let read = kv.stats().bytes_read;
    for k in 200..300 {
        assert!(!kv
            .conditional_insert(&k, &value(k, 7), rskv::Address::INVALID)
            .unwrap());
    }
    assert!(kv.stats().bytes_read - read < 20 * 4096);
    for k in 250..300 {
        kv.remove(&k).unwrap();
    }
    for k in 0..300 {
        let want = match k {
            0..=199 => Some(bump(Some(value(k, 0)))),
            200..=249 => Some(value(k, 0)),
            _ => None,
        };
        assert_eq!(kv.get(&k).unwrap(), want, "key {k}");
    }
    // And again once everything left memory: no copy in front, the RMW reads the device.
    for k in n..2 * n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    for k in 0..200 {
        kv.rmw(&k, bump).unwrap();
        assert_eq!(
            kv.get(&k).unwrap(),
            Some(bump(Some(bump(Some(value(k, 0))))))
        );
    }
}

/// Readers keep copying keys into a tiny cache while RMWs increment the same keys (taking
/// their old values from those copies when they are linked) and compaction and index growth
/// run: every increment counts exactly once.
#[test]
fn increments_through_cached_copies_keep_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Arc::new(open(dir.path(), 64 << 10));
    let keys = 2_000u64;
    let counter = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap());
    fn with(c: u64) -> Vec<u8> {
        let mut v = vec![7u8; 100];
        v[..8].copy_from_slice(&c.to_le_bytes());
        v
    }
    for k in 0..keys {
        kv.insert(&k, &with(0)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = 3u64;
    // Filler pushes records out of memory.
    let incrementers = spawn_incrementers(&kv, keys, rounds, with, |_, i| (1_000_000 + i, with(0)));
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let (kv, stop) = (kv.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let k = (i * 13) % keys;
                    let v = kv.get(&k).unwrap().expect("present");
                    assert!(counter(&v) <= 2 * rounds, "key {k}: {}", counter(&v));
                }
            })
        })
        .collect();
    let maintenance = grow_and_compact(&kv, &stop);
    for t in incrementers {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in readers {
        t.join().unwrap();
    }
    maintenance.join().unwrap();
    for k in 0..keys {
        let v = kv.get(&k).unwrap().expect("present");
        assert_eq!(counter(&v), 2 * rounds, "key {k}");
    }
    let s = cache_stats(&kv);
    assert!(s.hits > 100 && s.inserted > 1_000, "{s:?}");
}

/// Records leaving the log's memory are copied into the cache when their key missed recently
/// (here: an RMW read it from the device), and only then: loaded keys are not.
#[test]
fn records_of_recently_missed_keys_are_kept_when_they_leave_memory() {
    for keep in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let config = config(4 * MIB)
            .read_cache_admission(CacheAdmission::default())
            .read_cache_keeps_evicted(keep);
        let kv: Kv = RsKv::open(config, disk(dir.path())).unwrap();
        let n = 5_000u64;
        for k in 0..n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        assert_eq!(cache_stats(&kv).kept, 0, "loaded records were kept");
        let bump = |v: Option<Vec<u8>>| {
            let mut v = v.expect("present");
            v[99] = v[99].wrapping_add(1);
            v
        };
        // Each RMW reads its key from the device (a miss) and writes a new record.
        for k in 0..200 {
            kv.rmw(&k, bump).unwrap();
        }
        // Filler pushes those records out of memory.
        for k in n..2 * n {
            kv.insert(&k, &value(k, 0)).unwrap();
        }
        let s = cache_stats(&kv);
        let read = kv.stats().bytes_read;
        for k in 0..200 {
            kv.rmw(&k, bump).unwrap();
        }
        for k in 0..200 {
            assert_eq!(
                kv.get(&k).unwrap(),
                Some(bump(Some(bump(Some(value(k, 0))))))
            );
        }
        let device = kv.stats().bytes_read - read;
        if keep {
            // Each page is walked once it is read-only, long before it leaves memory.
            assert!(s.kept >= 195 && s.kept <= 200, "{s:?}");
            assert!(
                device < 40 * 4096,
                "kept records were read from the device: {device}"
            );
        } else {
            assert_eq!(s.kept, 0, "{s:?}");
            assert!(device >= 150 * 512, "{device}");
        }
    }
}

/// The keep filter's memory is the log's, not the admission window's: a key whose RMW missed
/// is still kept after many read misses of other keys (each window of the admission filter is
/// ~430 of them with this cache), and a key whose RMW replaced its kept copy is kept again, round
/// after round, without another device read.
#[test]
fn keys_used_beyond_memory_stay_kept_round_after_round() {
    let dir = tempfile::tempdir().unwrap();
    // Enough buckets that the index does not grow: a split writes cached entries as their
    // log addresses, which would drop the kept copies between rounds.
    let config = config(256 << 10)
        .table_size(1 << 12)
        .read_cache_admission(CacheAdmission::default());
    let kv: Kv = RsKv::open(config, disk(dir.path())).unwrap();
    let n = 5_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k, 0)).unwrap();
    }
    let bump = |v: Option<Vec<u8>>| {
        let mut v = v.expect("present");
        v[99] = v[99].wrapping_add(1);
        v
    };
    // Two log memories of new keys (records of 136 bytes, 256 KiB of log).
    let mut filler = 1_000_000u64;
    let mut push_out = || {
        for _ in 0..4_000 {
            kv.insert(&filler, &value(filler, 0)).unwrap();
            filler += 1;
        }
    };
    let hot = 0..200u64;
    let mut cold = 1_000..n;
    for round in 1..=3u64 {
        let read = kv.stats().bytes_read;
        for k in hot.clone() {
            kv.rmw(&k, bump).unwrap();
        }
        let device = kv.stats().bytes_read - read;
        if round == 1 {
            assert!(device >= 150 * 512, "round 1 read {device} bytes");
        } else {
            assert!(
                device < 10 * 4096,
                "round {round}: kept records were read from the device: {device} bytes"
            );
        }
        // Misses of other keys, more than three admission windows of them.
        for k in cold.by_ref().take(1_500) {
            assert_eq!(kv.get(&k).unwrap(), Some(value(k, 0)));
        }
        let kept = cache_stats(&kv).kept;
        push_out();
        let s = cache_stats(&kv);
        assert!(
            s.kept - kept >= 190,
            "round {round}: {} of 200 kept ({s:?})",
            s.kept - kept
        );
    }
    for k in hot {
        let want = (0..3).fold(value(k, 0), |v, _| bump(Some(v)));
        assert_eq!(kv.get(&k).unwrap(), Some(want));
    }
}

/// A store whose contexts file keys under their own hash cannot rehash the records leaving its
/// log unless it was opened with that hash: then it keeps none of them (the walk stops at the
/// first key), and every read stays right. Opened with the hash, the same run keeps them.
#[test]
fn a_store_that_cannot_rehash_its_keys_keeps_nothing() {
    fn their_hash(k: &u64) -> u64 {
        k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
    }
    for told in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        // Enough buckets for 40K keys without an index growth (see the test above).
        let config = config(256 << 10)
            .table_size(1 << 14)
            .read_cache_admission(CacheAdmission::default());
        let kv: RsKv<u64, u64, FileSystemDisk> = if told {
            RsKv::open_with_hash(config, disk(dir.path()), their_hash).unwrap()
        } else {
            RsKv::open(config, disk(dir.path())).unwrap()
        };
        let get = |k: u64| {
            let mut g = HashedGet(k, Arc::default(), their_hash);
            let _ = kv.read(&mut g).unwrap();
            let v = *g.1.lock().unwrap();
            v
        };
        // Records of 40 bytes: 20K keys are three log memories.
        for k in 0..20_000 {
            let _ = kv.upsert(&HashedPut(k, k, their_hash)).unwrap();
        }
        for k in 0..200 {
            assert_eq!(get(k), Some(k), "missed key {k}");
        }
        for k in 0..200 {
            let _ = kv.upsert(&HashedPut(k, k + 1, their_hash)).unwrap();
        }
        for k in 20_000..40_000 {
            let _ = kv.upsert(&HashedPut(k, k, their_hash)).unwrap();
        }
        let kept = cache_stats_of(&kv).kept;
        if told {
            assert!(
                kept >= 190,
                "{kept} of 200 kept with the store's hash known"
            );
        } else {
            assert_eq!(
                kept, 0,
                "records kept under a hash the store cannot compute"
            );
        }
        for k in 0..200 {
            assert_eq!(get(k), Some(k + 1), "key {k}");
        }
        for k in (200..40_000).step_by(97) {
            assert_eq!(get(k), Some(k), "key {k}");
        }
    }
}

/// Keeping races updates of the same keys: increments stay exact while pages leave memory and
/// their records are kept, with compaction and index growth running.
#[test]
fn increments_stay_exact_while_records_leaving_memory_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(256 << 10).read_cache_admission(CacheAdmission::default());
    let kv: Arc<Kv> = Arc::new(RsKv::open(config, disk(dir.path())).unwrap());
    let keys = 3_000u64;
    let counter = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap());
    let with = |c: u64| {
        let mut v = vec![3u8; 100];
        v[..8].copy_from_slice(&c.to_le_bytes());
        v
    };
    for k in 0..keys {
        kv.insert(&k, &with(0)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = 4u64;
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for r in 0..rounds {
                    for i in 0..keys {
                        // Skewed: low keys come round often, so they miss, then stay kept.
                        let k = ((i * 31 + t * 11 + r * 5) % keys) % (1 + i % 400);
                        kv.rmw(&k, |old| with(counter(&old.expect("present")) + 1))
                            .unwrap();
                        kv.insert(&(1_000_000 + i), &with(0)).unwrap();
                    }
                }
            })
        })
        .collect();
    let maintenance = grow_and_compact(&kv, &stop);
    // The expected totals, computed the same way.
    let mut want = vec![0u64; keys as usize];
    for t in 0..2u64 {
        for r in 0..rounds {
            for i in 0..keys {
                want[(((i * 31 + t * 11 + r * 5) % keys) % (1 + i % 400)) as usize] += 1;
            }
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    maintenance.join().unwrap();
    for k in 0..keys {
        let v = kv.get(&k).unwrap().expect("present");
        assert_eq!(counter(&v), want[k as usize], "key {k}");
    }
    let s = cache_stats(&kv);
    assert!(s.kept > 100, "{s:?}");
}

/// Grows the index twice, then compacts the older half of the on-disk log every 10 ms, until
/// `stop`.
fn grow_and_compact(kv: &Arc<Kv>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (kv, stop) = (kv.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut growths = 0;
        while !stop.load(Ordering::Relaxed) {
            if growths < 2 {
                kv.grow_index().unwrap();
                growths += 1;
            }
            let m = kv.stats().markers;
            let until = rskv::Address::new((m.begin.raw() + m.safe_head.raw()) / 2);
            match kv.compact(until) {
                Ok(_) | Err(Error::Busy(_)) => {}
                Err(e) => panic!("compaction failed: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    })
}
