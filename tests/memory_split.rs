//! The split of memory between the log and the read cache (`Config::memory_split`): moved by
//! hand while threads update, read and checkpoint (totals stay exact, before and after
//! recovery); memory leaving a share is given back (by the store's own accounting here; the
//! process's RSS in `tests/memory_split_rss.rs`); and the adaptive split moves memory towards
//! the side that would save device reads, each way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskv::device::file_system_disk::{DiskOptions, FileSystemDisk};
use rskv::{CacheAdmission, Config, Error, MemorySplit, RsKv, SplitStats};

mod common;
use common::spawn_incrementers;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Pages of the log (and about the cache's pages too: 64 of a 64th of the pool).
const PAGE: u64 = 16 * KIB;

type Kv = RsKv<u64, Vec<u8>, FileSystemDisk>;

fn disk(dir: &std::path::Path) -> FileSystemDisk {
    FileSystemDisk::with_options(dir, DiskOptions::default().with_segment_size(MIB)).unwrap()
}

/// A pool of 1 MiB: 512 KiB of log in 16 KiB pages and 512 KiB of read cache.
fn config(split: MemorySplit) -> Config {
    Config::new()
        .table_size(1 << 12)
        .log_memory_size(512 * KIB)
        .page_size(PAGE)
        .read_cache(512 * KIB)
        .memory_split(split)
}

fn with(counter: u64, len: usize) -> Vec<u8> {
    let mut v = vec![7u8; len];
    v[..8].copy_from_slice(&counter.to_le_bytes());
    v
}

fn counter(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

fn split(kv: &Kv) -> SplitStats {
    kv.stats().memory_split.expect("the split moves")
}

#[test]
fn a_fixed_split_refuses_to_move_and_a_moving_one_needs_a_cache_and_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::open(config(MemorySplit::Fixed), disk(dir.path())).unwrap();
    assert!(matches!(
        kv.set_read_cache_share(MIB),
        Err(Error::Config {
            field: "memory_split",
            ..
        })
    ));
    assert!(kv.stats().memory_split.is_none());
    drop(kv);
    let dir = tempfile::tempdir().unwrap();
    let no_cache = Config::new()
        .log_memory_size(512 * KIB)
        .memory_split(MemorySplit::Manual);
    assert!(matches!(
        Kv::open(no_cache, disk(dir.path())),
        Err(Error::Config {
            field: "memory_split",
            ..
        })
    ));
    let null = RsKv::<u64, Vec<u8>, _>::open(config(MemorySplit::Manual), rskv::NullDisk::new());
    assert!(matches!(
        null,
        Err(Error::Config {
            field: "memory_split",
            ..
        })
    ));
}

/// Shares are rounded to pages and kept at least an eighth of the pool each; the log keeps
/// its share of pages in memory and gives the rest back once it moves on.
#[test]
fn shares_are_clamped_and_memory_leaving_a_share_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::open(config(MemorySplit::Manual), disk(dir.path())).unwrap();
    let s = split(&kv);
    assert_eq!((s.pool_bytes, s.log_bytes), (MIB, 512 * KIB));
    // Fill the log's memory and more, and the cache (reads of keys that left memory).
    let keys = 12_000u64;
    for k in 0..keys {
        kv.insert(&k, &with(k, 100)).unwrap();
    }
    for _ in 0..2 {
        for k in 0..4_000 {
            assert_eq!(kv.get(&k).unwrap(), Some(with(k, 100)));
        }
    }
    // The whole pool to the cache: the log keeps its floor (an eighth of the pool).
    let (log, cache) = kv.set_read_cache_share(MIB).unwrap();
    assert_eq!(log, MIB / 8);
    assert!(cache <= MIB - MIB / 8 && cache > MIB / 2, "{cache}");
    // Appends move the log on: its frames past its share are released.
    for k in keys..keys + 6_000 {
        kv.insert(&k, &with(k, 100)).unwrap();
    }
    let s = split(&kv);
    assert!(
        s.log_resident_bytes <= s.log_bytes + 2 * PAGE,
        "the log holds more than its share: {s:?}"
    );
    // Now the other way: the cache keeps its floor, evicts ahead and gives frames back as
    // reads go on.
    let (log, cache) = kv.set_read_cache_share(0).unwrap();
    assert!(
        (MIB / 8 - PAGE..=MIB / 8 + PAGE).contains(&cache),
        "{cache}"
    );
    assert!(log >= MIB - MIB / 8 - PAGE, "{log}");
    for round in 0..3 {
        for k in 0..6_000 {
            assert_eq!(
                kv.get(&k).unwrap(),
                Some(with(k, 100)),
                "round {round}, key {k}"
            );
        }
    }
    let s = split(&kv);
    assert!(
        s.cache_resident_bytes <= s.cache_bytes + 4 * PAGE,
        "the cache holds more than its share: {s:?}"
    );
    let cache_stats = kv.stats().read_cache.unwrap();
    assert!(
        cache_stats.evicted > 0 && cache_stats.hits > 0,
        "{cache_stats:?}"
    );
    // Every key reads back after all that.
    for k in 0..keys + 6_000 {
        assert_eq!(kv.get(&k).unwrap(), Some(with(k, 100)), "key {k}");
    }
}

/// Two callers moving the split at once: one move sets the shares at a time, the other gets
/// `Error::Busy` (nobody waits), so the shares a move leaves (read back under its claim) never
/// add up to more than the pool, whichever decisions interleave.
#[test]
fn racing_moves_never_overcommit_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Arc::new(Kv::open(config(MemorySplit::Manual), disk(dir.path())).unwrap());
    let movers: Vec<_> = (0..2u64)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let (mut ok, mut busy) = (0, 0);
                for i in 0..5_000u64 {
                    let want = if (i + t) % 2 == 0 { 0 } else { MIB };
                    match kv.set_read_cache_share(want) {
                        Ok((log, cache)) => {
                            ok += 1;
                            assert!(log + cache <= MIB, "{log} + {cache} over the pool");
                        }
                        Err(Error::Busy(_)) => busy += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (ok, busy)
            })
        })
        .collect();
    let ok: u64 = movers.into_iter().map(|m| m.join().unwrap().0).sum();
    assert!(ok > 0);
}

/// The worst interleavings on purpose: the split swings between its extremes every few
/// hundred microseconds while two threads increment shared counters (appending filler so
/// that records leave memory and are kept or read back), a reader fills the cache, and a
/// checkpoint runs. Totals stay exact, and again after recovery.
#[test]
fn increments_stay_exact_while_the_split_swings() {
    let dir = tempfile::tempdir().unwrap();
    let make = || {
        config(MemorySplit::Manual)
            .read_cache_admission(CacheAdmission::SecondMiss)
            .read_cache_keeps_evicted(true)
    };
    let kv = Arc::new(Kv::open(make(), disk(dir.path())).unwrap());
    let keys = 1_500u64;
    for k in 0..keys {
        kv.insert(&k, &with(0, 200)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = 4u64;
    let incrementers = spawn_incrementers(
        &kv,
        keys,
        rounds,
        |c| with(c, 200),
        |t, i| (1_000_000 + (i + t * 1_500) % 3_000, with(0, 300)),
    );
    let reader = {
        let (kv, stop) = (kv.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let k = (i * 13) % keys;
                let v = kv.get(&k).unwrap().expect("present");
                assert!(counter(&v) <= 2 * rounds, "key {k}: {}", counter(&v));
            }
        })
    };
    let mover = {
        let (kv, stop) = (kv.clone(), stop.clone());
        std::thread::spawn(move || {
            let shares = [0, MIB, MIB / 2, MIB / 8, 7 * MIB / 8, 300 * KIB];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                kv.set_read_cache_share(shares[i % shares.len()]).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    kv.checkpoint().unwrap();
    for t in incrementers {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let moves = mover.join().unwrap();
    assert!(moves > 20, "the split moved only {moves} times");
    for k in 0..keys {
        let v = kv.get(&k).unwrap().expect("present");
        assert_eq!(counter(&v), 2 * rounds, "key {k}");
    }
    let s = kv.stats();
    let c = s.read_cache.unwrap();
    assert!(c.hits > 0 && c.evicted > 0, "{c:?}");
    assert!(
        s.markers.head.raw() > 4 * MIB,
        "records should have left the 1 MiB pool many times over: {:?}",
        s.markers
    );
    kv.checkpoint().unwrap();
    let kv = Arc::into_inner(kv).unwrap();
    drop(kv);
    let (kv, _) = Kv::recover(make(), disk(dir.path()), None).unwrap();
    for k in 0..keys {
        let v = kv.get(&k).unwrap().expect("present after recovery");
        assert_eq!(counter(&v), 2 * rounds, "key {k} after recovery");
    }
    assert_eq!(
        split(&kv).log_bytes,
        512 * KIB,
        "recovery starts from the configured split"
    );
}

fn adaptive(dir: &std::path::Path, config: Config) -> Kv {
    Kv::open(
        config
            .memory_split(MemorySplit::Adaptive)
            .maintenance_interval(Duration::from_millis(5)),
        disk(dir),
    )
    .unwrap()
}

/// Runs `round` until `done` says so, or fails after a generous time (a guard against a
/// split that never moves, not a measure of speed).
fn until(mut round: impl FnMut(), done: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        round();
    }
}

/// RMWs cycling over keys whose records span a little more log than its memory: each reads
/// a record that just left memory (a log ghost), and nothing is cached (no reads; records
/// leaving memory are not kept), so the log's share grows until the cycle fits and the
/// device reads stop.
#[test]
fn the_adaptive_split_grows_the_log_for_updates_of_records_just_below_head() {
    let dir = tempfile::tempdir().unwrap();
    let kv = adaptive(
        dir.path(),
        config(MemorySplit::Adaptive).read_cache_keeps_evicted(false),
    );
    // Records of ~232 bytes: 2,500 keys are ~580 KB, past the log's 512 KiB of memory by less
    // than the probe (an eighth of the pool).
    let keys = 2_500u64;
    for k in 0..keys {
        kv.insert(&k, &with(0, 200)).unwrap();
    }
    let start = split(&kv);
    let mut r = 0;
    until(
        || {
            r += 1;
            for k in 0..keys {
                kv.rmw(&k, |old| with(counter(&old.expect("present")) + 1, 200))
                    .unwrap();
            }
        },
        || split(&kv).log_bytes > start.log_bytes,
        "the log's share never grew",
    );
    let s = split(&kv);
    assert!(s.log_ghosts > 0 && s.moves > 0, "{s:?}");
    assert!(s.cache_bytes < start.cache_bytes, "{s:?}");
    // Once the cycle fits, RMWs stop reading the device.
    let mut fits = |kv: &Kv| {
        let before = kv.stats().device_reads;
        for k in 0..keys {
            kv.rmw(&k, |old| with(counter(&old.expect("present")) + 1, 200))
                .unwrap();
        }
        r += 1;
        kv.stats().device_reads == before
    };
    let start = Instant::now();
    while !fits(&kv) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            split(&kv)
        );
    }
    for k in 0..keys {
        assert_eq!(counter(&kv.get(&k).unwrap().unwrap()), r as u64, "key {k}");
    }
}

/// Reads cycling over a working set whose copies overflow the cache's share but fit the
/// pool, of records far below the log's head (no log ghosts): each miss is of a key the cache
/// just evicted (a cache ghost), so the cache's share grows until the set fits.
#[test]
fn the_adaptive_split_grows_the_cache_for_reads_of_copies_just_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let kv = adaptive(
        dir.path(),
        config(MemorySplit::Adaptive).read_cache_admission(CacheAdmission::Every),
    );
    for k in 0..20_000u64 {
        kv.insert(&k, &with(k, 100)).unwrap();
    }
    // 3,400 copies of ~152 bytes: ~520 KB, past the ~460 KB the cache's share holds (its
    // live frames less the two it keeps free) by less than the probe.
    let set = 3_400u64;
    let start = split(&kv);
    until(
        || {
            for k in 0..set {
                assert_eq!(kv.get(&k).unwrap(), Some(with(k, 100)), "key {k}");
            }
        },
        || split(&kv).cache_bytes > start.cache_bytes,
        "the cache's share never grew",
    );
    let s = split(&kv);
    assert!(s.cache_ghosts > 0 && s.moves > 0, "{s:?}");
    assert!(s.log_bytes < start.log_bytes, "{s:?}");
    let start = Instant::now();
    loop {
        let before = kv.stats().device_reads;
        for k in 0..set {
            assert_eq!(kv.get(&k).unwrap(), Some(with(k, 100)), "key {k}");
        }
        if kv.stats().device_reads == before {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            split(&kv)
        );
    }
}
