//! Disk space under automatic compaction: keys overwritten many times through a small log
//! memory stay within the disk budget, and every key reads its newest value at the end.
//!
//! Issue 13's figure is 1M keys overwritten 30 times; CI runs 200k keys (set `RSKV_SPACE_KEYS`
//! for more).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rskv::device::file_system_disk::{DiskOptions, FileSystemDisk};
use rskv::{Config, LogCompaction, RsKv};

const MIB: u64 = 1 << 20;
const ROUNDS: u64 = 30;
const SEGMENT: u64 = 4 * MIB;

fn value(k: u64, round: u64) -> Vec<u8> {
    let mut v = vec![(k % 253) as u8; 100];
    v[..16].copy_from_slice(&[k.to_le_bytes(), round.to_le_bytes()].concat());
    v
}

#[test]
fn overwrites_stay_within_the_disk_budget() {
    let keys: u64 = std::env::var("RSKV_SPACE_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    // A record: 24-byte header, 8-byte key, 100-byte value rounded to 104.
    let live = keys * 136;
    let budget = 3 * live;
    let max_pass = (budget / 5).max(MIB);
    let dir = tempfile::tempdir().unwrap();
    let disk = FileSystemDisk::with_options(
        dir.path(),
        DiskOptions::default().with_segment_size(SEGMENT),
    )
    .unwrap();
    // Issue 13's 32 MiB for 1M keys: the same ratio of log memory to data, so that most
    // overwrites find their record on disk and append.
    let memory = (32 * MIB * keys / 1_000_000).max(4 * MIB);
    let config = Config::new()
        .table_size((keys / 4).next_power_of_two())
        .log_memory_size(memory)
        .page_size(1 << 16)
        .log_compaction(LogCompaction::with_budget(budget).max_pass(max_pass));
    let kv = Arc::new(RsKv::<u64, Vec<u8>, _>::open(config, disk).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (kv, done, peak) = (kv.clone(), done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                peak.fetch_max(kv.stats().disk_bytes, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    for round in 0..ROUNDS {
        for k in 0..keys {
            kv.insert(&k, &value(k, round)).unwrap();
        }
    }
    done.store(true, Ordering::Release);
    watcher.join().unwrap();
    let stats = kv.stats();
    let written = stats.markers.tail.raw();
    assert!(
        written > 10 * budget,
        "the run wrote {written} bytes of log, too little to test a budget of {budget}"
    );
    assert!(stats.compaction.passes > 0 && stats.compaction.bytes_freed > 0);
    // The budget counts the log from begin to tail; segment files add a partial segment at
    // each end. One pass may be copying while the log grows past the budget.
    let allowed = budget + max_pass + 2 * SEGMENT;
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= allowed,
        "segment files reached {peak} bytes; budget {budget}, allowed {allowed} \
         ({} passes, {} wasted)",
        stats.compaction.passes,
        stats.compaction.wasted_passes
    );
    for k in 0..keys {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k, ROUNDS - 1)), "key {k}");
    }
}
