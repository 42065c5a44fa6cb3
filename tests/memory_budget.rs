//! One memory budget (issue 13, item 6): a store given 128 MiB holds its index, overflow
//! buckets and log memory within it, and its resident memory stays within the budget plus the
//! documented slack, while automatic growth stops where the budget says and, once the index's
//! share is used up, new keys are refused with `IndexFull`.
//!
//! Resident memory is process-wide, so this file holds one test (one process).

use rskv::device::file_system_disk::{DiskOptions, FileSystemDisk, IoMode};
use rskv::{Config, Error, RsKv, Stats, MEMORY_BUDGET_SLACK};

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

const MIB: u64 = 1 << 20;

#[test]
fn resident_memory_stays_within_the_budget_and_growth_stops_there() {
    let Some(before) = rss() else {
        eprintln!("skipped: no /proc/self/status VmRSS to measure resident memory with");
        return;
    };
    const BUDGET: u64 = 128 * MIB;
    // Records of ~136 bytes: 2.5M are 340 MB of log for 96 MiB of log memory, and more keys
    // than the index's quarter of the budget holds without overflow buckets once its growth
    // is refused; 4M are more than it can hold at all (about 3.2M: 32 MiB of 64-byte buckets
    // of 7 entries, less the free slots of each chain's last bucket).
    const KEYS: u64 = 2_500_000;
    const MORE_KEYS: u64 = 4_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = FileSystemDisk::with_options(
        dir.path(),
        DiskOptions::default().with_direct_io(IoMode::Auto),
    )
    .expect("disk");
    let kv: RsKv<u64, Vec<u8>, FileSystemDisk> =
        RsKv::open(Config::new().memory_budget(BUDGET), disk).expect("open");
    let split = kv.resolved().budget.expect("a budget");
    assert_eq!(split.index + split.log, BUDGET);
    eprintln!(
        "device {}; index share {} MiB, log {} MiB; resident before opening {} MiB",
        kv.device_description(),
        split.index / MIB,
        split.log / MIB,
        before / MIB
    );
    let check = |what: &str, stats: &Stats| {
        let now = rss().expect("VmRSS");
        let store = now.saturating_sub(before);
        eprintln!(
            "{what}: resident +{} MiB (tables {} MiB, overflow {} MiB, log {} MiB, {} buckets)",
            store / MIB,
            stats.index_table_bytes / MIB,
            stats.overflow_bytes / MIB,
            stats.log_memory as u64 / MIB,
            stats.index_buckets
        );
        assert!(
            store <= BUDGET + MEMORY_BUDGET_SLACK,
            "{what}: the store holds {store} bytes resident, over the budget of {BUDGET} plus \
             {MEMORY_BUDGET_SLACK} of slack; {stats:?}"
        );
        assert!(
            stats.index_memory as u64 <= split.index,
            "{what}: the index holds more than its share: {stats:?}"
        );
        assert_eq!(stats.log_memory as u64, split.log);
    };
    for k in 0..KEYS {
        kv.insert(&k, &value(k)).expect("insert");
        if k % 250_000 == 249_999 {
            check(&format!("{} keys", k + 1), &kv.stats());
        }
    }
    let stats = kv.stats();
    check(&format!("{KEYS} keys"), &stats);
    assert!(stats.index_growths > 0, "the index never grew: {stats:?}");
    assert!(
        stats.growth_refused_by_budget,
        "growth was not stopped by the budget: {stats:?}"
    );
    // On until the index's share is used up: new keys are then refused, old ones still work.
    let mut stored = MORE_KEYS;
    for k in KEYS..MORE_KEYS {
        match kv.insert(&k, &value(k)) {
            Ok(()) => {}
            Err(Error::IndexFull) => {
                stored = k;
                break;
            }
            Err(e) => panic!("insert {k}: {e}"),
        }
        if k % 250_000 == 249_999 {
            check(&format!("{} keys", k + 1), &kv.stats());
        }
    }
    check(&format!("index full at {stored} keys"), &kv.stats());
    assert!(
        stored < MORE_KEYS,
        "{MORE_KEYS} keys fit an index share of {} bytes",
        split.index
    );
    assert!(
        kv.insert(&0, &value(1)).is_ok(),
        "an existing key can still be updated"
    );
    assert_eq!(kv.get(&0).expect("get"), Some(value(1)));
    kv.insert(&0, &value(0)).expect("update");
    for k in (0..stored).step_by(101) {
        assert_eq!(kv.get(&k).expect("get"), Some(value(k)), "key {k}");
    }
    check("after reads", &kv.stats());
}
