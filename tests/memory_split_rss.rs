//! Memory that leaves a share of the pool really goes back to the kernel
//! (`Config::memory_split`): a store whose log and read cache share 32 MiB fills both, gives
//! almost all of it to the log and fills that, then almost all to the cache and fills that.
//! Had the memory leaving each share stayed resident, the store would hold about 54 MiB of
//! frames by the end; it holds the pool.
//!
//! Resident memory is process-wide, so this file holds one test (one process).

use rskv::device::file_system_disk::{DiskOptions, FileSystemDisk, IoMode};
use rskv::{CacheAdmission, Config, MemorySplit, RsKv, MEMORY_BUDGET_SLACK};

const MIB: u64 = 1 << 20;
const POOL: u64 = 32 * MIB;

/// The process's resident memory in bytes (`VmRSS` of `/proc/self/status`), where Linux has it.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn value(k: u64) -> Vec<u8> {
    (0..100).map(|i| (k as u8).wrapping_add(i)).collect()
}

#[test]
fn memory_leaving_a_share_goes_back_to_the_kernel() {
    let Some(before) = rss() else {
        eprintln!("skipped: no /proc/self/status VmRSS to measure resident memory with");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = FileSystemDisk::with_options(
        dir.path(),
        DiskOptions::default().with_direct_io(IoMode::Auto),
    )
    .expect("disk");
    let config = Config::new()
        .table_size(1 << 16)
        .log_memory_size(POOL / 2)
        .page_size(MIB)
        .read_cache(POOL / 2)
        .read_cache_admission(CacheAdmission::Every)
        .memory_split(MemorySplit::Manual)
        .auto_grow_index(None);
    let kv: RsKv<u64, Vec<u8>, FileSystemDisk> = RsKv::open(config, disk).expect("open");
    let check = |what: &str| {
        let stats = kv.stats();
        let split = stats.memory_split.expect("the split moves");
        let store = rss().expect("VmRSS").saturating_sub(before);
        let bound = POOL + stats.index_memory as u64 + MEMORY_BUDGET_SLACK / 2;
        eprintln!(
            "{what}: resident +{} MiB; log {} MiB ({} MiB resident), cache {} MiB ({} MiB \
             resident), index {} MiB",
            store / MIB,
            split.log_bytes / MIB,
            split.log_resident_bytes / MIB,
            split.cache_bytes / MIB,
            split.cache_resident_bytes / MIB,
            stats.index_memory / MIB as usize,
        );
        assert!(
            store <= bound,
            "{what}: the store holds {store} bytes resident, over its pool of {POOL} plus \
             index and {} of slack ({bound}); {split:?}",
            MEMORY_BUDGET_SLACK / 2
        );
    };
    let mut next = 0u64;
    let mut load = |n: u64| {
        for k in next..next + n {
            kv.insert(&k, &value(k)).expect("insert");
        }
        next += n;
    };
    let read = |keys: std::ops::Range<u64>| {
        let keys: Vec<u64> = keys.collect();
        for chunk in keys.chunks(64) {
            for (k, v) in chunk.iter().zip(kv.get_many(chunk).expect("get_many")) {
                assert_eq!(v, Some(value(*k)), "key {k}");
            }
        }
    };
    // Both halves full: ~40 MB of log for 16 MiB of memory, and ~110K copies of ~150 bytes.
    load(300_000);
    read(0..110_000);
    check("log 16 MiB and cache 16 MiB, both full");
    // Almost all to the log, which the next appends fill.
    let (log, cache) = kv.set_read_cache_share(0).expect("moves");
    assert!(
        log >= 27 * MIB && cache <= 4 * MIB + MIB / 2,
        "{log} {cache}"
    );
    load(300_000);
    read(0..2_000);
    check("log 28 MiB, full");
    // Almost all to the cache, which the next reads fill.
    let (log, cache) = kv.set_read_cache_share(POOL).expect("moves");
    assert!(log <= 6 * MIB && cache >= 25 * MIB, "{log} {cache}");
    load(10_000);
    read(0..200_000);
    check("cache 28 MiB, full");
    let s = kv.stats();
    let c = s.read_cache.expect("the cache is on");
    assert!(
        c.inserted > 150_000 && c.evicted > 50_000,
        "the cache did not turn over: {c:?}"
    );
}
