//! The cold index's resident memory is bounded by its configuration, not by the number of keys
//! (issue 15): the process's RSS grows by at most the index's `memory_bound` plus the crate's
//! documented slack while hashes go in, whether there are 1M of them (the default) or 16M
//! (`RSKV_COLD_INDEX_KEYS=16000000`, run by hand: about a minute).
//!
//! Resident memory is process-wide, so this file holds one test (one process), and the model
//! it checks against is allocated before the first measurement.

use rskv::device::file_system_disk::{DiskOptions, IoMode};
use rskv::index::cold_index_contexts::ChunkGeometry;
use rskv::index::{ColdIndex, ColdIndexConfig, KeyHash};
use rskv::{Address, FileSystemDisk, MEMORY_BUDGET_SLACK};

const MIB: u64 = 1 << 20;

/// The process's resident memory in bytes (`VmRSS` of `/proc/self/status`), where Linux has it.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn addr(i: u64) -> Address {
    Address::new(i * 8 + 64)
}

fn entry(g: ChunkGeometry, h: KeyHash) -> usize {
    let p = g.locate(h);
    p.chunk.0 as usize * g.entries() + p.entry
}

#[test]
fn resident_memory_stays_within_the_configured_bound() {
    let n: u64 = std::env::var("RSKV_COLD_INDEX_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // 2^16 chunks of 32 entries (14 MiB of chunk records) over 4 MiB of inner log memory:
    // most chunks live on the device whatever n is.
    let config = ColdIndexConfig::new().chunk_bits(16).log_memory(4 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    // Buffered I/O keeps the device reads quick; the page cache is not resident memory.
    let disk = FileSystemDisk::with_options(
        dir.path(),
        DiskOptions::default()
            .with_segment_size(4 * MIB)
            .with_direct_io(IoMode::Off),
    )
    .expect("disk");
    let idx = ColdIndex::open(&config, disk).expect("open");
    let g = idx.geometry();
    // The model: the last hash written to each entry (allocated and touched before measuring).
    let mut last = vec![u64::MAX; g.chunks() as usize * g.entries()];
    let Some(before) = rss() else {
        eprintln!("skipped: no /proc/self/status VmRSS to measure resident memory with");
        return;
    };
    let bound = idx.stats().memory_bound;
    let mut peak = 0;
    for i in 0..n {
        let h = KeyHash::new(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let cur = idx.get(h).expect("get");
        assert_eq!(idx.try_update(h, cur, addr(i)).expect("try_update"), Ok(()));
        last[entry(g, h)] = i;
        if i % 250_000 == 0 || i == n - 1 {
            let grown = rss().expect("VmRSS").saturating_sub(before);
            peak = peak.max(grown);
            assert!(
                grown <= bound + MEMORY_BUDGET_SLACK,
                "after {i} hashes the process grew by {grown} bytes, over the index's bound of \
                 {bound} plus {MEMORY_BUDGET_SLACK} of slack: {:?}",
                idx.stats()
            );
        }
    }
    let s = idx.stats();
    eprintln!(
        "{n} hashes in {} entries: resident growth at most {} MiB (bound {} MiB + slack {} MiB); \
         {} chunk reads from the device; {:.2} bytes of bound per hash",
        s.chunks * s.entries_per_chunk,
        peak / MIB,
        bound / MIB,
        MEMORY_BUDGET_SLACK / MIB,
        s.chunk_reads,
        bound as f64 / n as f64
    );
    // The chunks did not all fit in memory: the bound held with chunks on the device.
    assert!(s.chunk_reads > 0, "{s:?}");
    // Every entry holds the address of the last hash written to it.
    for (e, &i) in last.iter().enumerate().step_by(13) {
        if i != u64::MAX {
            let h = KeyHash::new(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert_eq!(entry(g, h), e);
            assert_eq!(idx.get(h).expect("get"), addr(i), "entry {e}");
        }
    }
}
