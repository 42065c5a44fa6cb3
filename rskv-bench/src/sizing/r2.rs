//! R2Kv's split of a memory budget (`--store r2kv`). Everything that holds memory counts
//! against `--memory`: the hot index, the hot log, the hot read cache, the cold index (its
//! inner table, the most its overflow buckets may take, its inner log memory) and the cold
//! log's memory. With `--memory M`, for `n` keys of records of `R` bytes:
//!
//! 1. **Cold index**: `2^floor(log2(n / 32))` chunks of 32 entries (between `n/64` and `n/32`
//!    chunks: 1 to 2 keys per entry, so chains stay short), its default inner table of
//!    `chunks / 4` buckets (16 B per chunk), the bound on its overflow buckets, and an inner
//!    log memory that holds every chunk's record plus a quarter (224 B per chunk: 28 MiB for
//!    8M keys), at most `3 M / 8` (`--r2-cold-index-memory` overrides it). Chunks in memory
//!    keep the entry CAS of a migrated record in place; a chunk on the device costs a read and
//!    an append per CAS, which throttled an 8M-key load to 0.075 Mops/s with 16 MiB.
//! 2. **Cold log memory**: `M / 32` rounded down to a power of two, from 256 KiB to 4 MiB.
//! 3. **Read cache**: `--read-cache` if given, else `M / 4`.
//! 4. **Uncounted**: 6 MiB (at most `M / 16`) for what no part sizes (three stores' epoch
//!    tables, I/O rings and buffers, the background threads), as measured.
//! 5. **Hot index**: sized for the hot set, not for every key: the records the hot log keeps
//!    on disk (its disk budget, below, plus a pass that may run while writers fill it), the
//!    keys of the last pass (their entries stay until the sweep after it) and the read
//!    cache's, over the record size; the table (a power of two, 4 to 16 keys per bucket) whose
//!    size plus the overflow buckets those keys are expected to take (`sizing::overflow_bytes`)
//!    is smallest, at most a quarter of what is left (`--table-size` overrides it). It does not grow
//!    (the budget would not hold). Session 11 counted 1.35-1.5M keys' worth of overflow at
//!    16M keys with a 64 MiB hot budget, where the hot log and read cache alone hold 1.1M.
//! 6. **Hot log**: the rest, in whole pages (a sixteenth of it, 4 KiB..32 MiB, or
//!    `--page-size`).
//!
//! Disk budgets: the hot log's (`R2Config::hot_to_cold`) is 4x its memory (or
//! `--r2-hot-budget`), so migration starts early, with passes of at most half of it; the cold
//! log's (`R2Config::cold_to_cold`) is 4x the loaded data (at least 64 MiB), so cold-to-cold
//! compaction runs only when the cold log really holds that much garbage.
//!
//! Without `--memory` (in memory) the hot tier gets RsKv's in-memory plan (log twice the data,
//! index `n / 8` buckets), the cold index and cold log a few MiB, and the hot log's disk
//! budget is twice its memory: nothing migrates unless updates outgrow memory.

use anyhow::bail;

use super::{
    budget_table, default_page, overflow_bytes, record_bytes, BUCKET_BYTES, MIN_AUTO_LOG, MIN_PAGE,
};
use crate::spec::{MemoryPlan, R2Plan, RunSpec};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Cold index entries per chunk (the default of `ColdIndexConfig`).
const ENTRIES: u32 = 32;
/// Bytes of a cold index entry (a 48-bit address).
const ENTRY_BYTES: u64 = 6;
/// Entries of an inner overflow bucket, and buckets per overflow page (64 KiB).
const OVERFLOW_ENTRIES: u64 = 7;
const OVERFLOW_PAGE_BUCKETS: u64 = 1024;
/// Resident memory R2Kv holds beyond the parts the plan sizes: three stores' epoch tables,
/// I/O rings and buffers (hot, cold, the cold index's inner one), and the stacks and
/// allocations of its maintenance and compaction threads. Measured at 16M keys with 1 thread
/// (session 11, `docs/bench/s11-r2-16M.jsonl`): 5.1-5.4 MiB of growth above the parts' sizes.
const UNCOUNTED: u64 = 6 * MIB;
/// The hot log's disk budget over its memory.
const HOT_BUDGET_PER_MEMORY: u64 = 4;
/// The cold log's disk budget over the loaded data.
const COLD_BUDGET_PER_DATA: u64 = 4;
/// Time between two checks of the budgets (R2Kv's default is 250 ms: a load outruns that).
const MAINTENANCE_MS: u64 = 20;
/// Cold log frames.
const COLD_FRAMES: u64 = 8;
/// The least, the most and the share of the budget of the cold log's memory.
const COLD_LOG_MIN: u64 = 256 * KIB;
const COLD_LOG_MAX: u64 = 4 * MIB;
/// The least inner log memory of the cold index (16 pages of 4 KiB).
const COLD_INDEX_LOG_MIN: u64 = 64 * KIB;
/// Read cache limits of RsKv (`Config::read_cache`).
const READ_CACHE_MIN: u64 = 32 * KIB;
const READ_CACHE_MAX: u64 = 2 << 30;

fn round8(v: u64) -> u64 {
    v.div_ceil(8) * 8
}

fn pow2_floor(v: u64) -> u64 {
    if v == 0 {
        0
    } else {
        1 << (63 - v.leading_zeros())
    }
}

/// The cold index for `keys`: chunk bits, inner table, overflow bound, every chunk's records.
struct ColdIndexShape {
    chunk_bits: u32,
    table: u64,
    overflow_bytes: u64,
    chunk_records: u64,
}

fn cold_index_shape(keys: u64) -> ColdIndexShape {
    let chunks = pow2_floor((keys / u64::from(ENTRIES)).max(1));
    let chunk_bits = chunks.trailing_zeros();
    let table = (chunks / 4).max(1);
    let overflow_pages = chunks
        .div_ceil(OVERFLOW_ENTRIES)
        .div_ceil(OVERFLOW_PAGE_BUCKETS);
    // An inner record: header, the u64 chunk id, the chunk's entries.
    let record = 24 + 8 + round8(u64::from(ENTRIES) * ENTRY_BYTES);
    ColdIndexShape {
        chunk_bits,
        table,
        overflow_bytes: overflow_pages * OVERFLOW_PAGE_BUCKETS * BUCKET_BYTES,
        chunk_records: chunks * record,
    }
}

/// The cold index's inner log memory: every chunk's record plus a quarter (the inner log
/// keeps 90% of its memory mutable, and a chunk updated in place costs no device read and no
/// append), in whole pages of a sixteenth of it; at most 3/8 of the budget.
fn cold_index_log(chunk_records: u64, budget: u64) -> u64 {
    let wanted = (chunk_records + chunk_records / 4)
        .min(budget / 8 * 3)
        .max(COLD_INDEX_LOG_MIN);
    let page = pow2_floor(wanted / 16).max(MIN_PAGE);
    wanted.div_ceil(page) * page
}

/// The cold log's memory and page for a share `share` of the budget.
fn cold_log(share: u64, record: u64) -> (u64, u64) {
    let memory = pow2_floor(share.clamp(COLD_LOG_MIN, COLD_LOG_MAX));
    // A record must fit a page.
    let page = (memory / COLD_FRAMES)
        .max(record.next_power_of_two())
        .max(MIN_PAGE);
    (memory.max(4 * page), page)
}

/// R2Kv's plan for `spec` (the module docs say how).
pub(super) fn plan(spec: &RunSpec) -> anyhow::Result<MemoryPlan> {
    let record = record_bytes(spec.key_size, spec.value_size);
    let data = spec.keys.saturating_mul(record);
    let ci = cold_index_shape(spec.keys);
    let ci_table_bytes = ci.table * BUCKET_BYTES;
    let cold_budget = (COLD_BUDGET_PER_DATA * data).max(64 * MIB);
    let cache = |budget: Option<u64>| -> anyhow::Result<u64> {
        let bytes = match (spec.read_cache, budget) {
            (Some(b), _) => b,
            (None, Some(m)) => m / 4,
            (None, None) => 0,
        };
        if bytes == 0 {
            return Ok(0);
        }
        if !(READ_CACHE_MIN..=READ_CACHE_MAX).contains(&bytes) {
            bail!("R2Kv's read cache of {bytes} bytes is not in 32 KiB..2 GiB (--read-cache)");
        }
        // As RsKv rounds it: 64 frames of whole words.
        Ok(bytes / 64 / 8 * 8 * 64)
    };
    let Some(budget) = spec.memory else {
        // In memory: the hot tier as RsKv's in-memory plan.
        let table_size = spec
            .table_size
            .unwrap_or_else(|| spec.keys.div_ceil(8))
            .max(1)
            .next_power_of_two();
        let log_wanted = (2 * data).max(MIN_AUTO_LOG);
        let page_size = spec.page_size.unwrap_or_else(|| default_page(log_wanted));
        let log_bytes = log_wanted.div_ceil(page_size) * page_size;
        let read_cache_bytes = cache(None)?;
        let ci_log = spec
            .r2_cold_index_memory
            .unwrap_or_else(|| cold_index_log(ci.chunk_records, u64::MAX));
        let (cold_log_bytes, cold_page_size) = cold_log(COLD_LOG_MAX, record);
        let hot_budget = spec.r2_hot_budget.unwrap_or(2 * log_bytes);
        let r2 = r2_plan(
            &ci,
            ci_log,
            cold_log_bytes,
            cold_page_size,
            hot_budget,
            cold_budget,
        );
        let index_bytes = table_size * BUCKET_BYTES;
        return Ok(MemoryPlan {
            budget: index_bytes
                + log_bytes
                + read_cache_bytes
                + r2.cold_index_memory
                + cold_log_bytes,
            explicit: false,
            table_size,
            index_bytes,
            overflow_bytes: 0,
            log_bytes,
            read_cache_bytes,
            page_size,
            record_bytes: record,
            r2: Some(r2),
        });
    };
    let read_cache_bytes = cache(Some(budget))?;
    if read_cache_bytes > budget / 2 {
        bail!("--read-cache {read_cache_bytes} is more than half of --memory {budget} (R2Kv)");
    }
    let ci_log = spec
        .r2_cold_index_memory
        .unwrap_or_else(|| cold_index_log(ci.chunk_records, budget));
    let ci_memory = ci_table_bytes + ci.overflow_bytes + ci_log;
    let (cold_log_bytes, cold_page_size) = cold_log(budget / 32, record);
    let uncounted = UNCOUNTED.min(budget / 16);
    let taken = read_cache_bytes + ci_memory + cold_log_bytes + uncounted;
    if taken >= budget {
        bail!(
            "R2Kv: read cache {} + cold index {} + cold log {} + uncounted {} leave nothing of --memory {} for the hot tier; raise --memory or lower --read-cache",
            read_cache_bytes,
            ci_memory,
            cold_log_bytes,
            uncounted,
            budget
        );
    }
    let rest = budget - taken;
    // The keys the hot index holds at most: the hot log's records on disk (its budget, plus
    // the pass that may run while writers fill it up to `budget + max pass`), the keys of the
    // last pass, whose entries stay until the sweep after it, and the read cache's. The
    // default disk budget is 4x the log memory, which is at most `rest`.
    let hot_disk = spec
        .r2_hot_budget
        .unwrap_or(HOT_BUDGET_PER_MEMORY * rest)
        .max(MIB);
    let hot_keys = (hot_disk + 2 * max_pass(hot_disk) + read_cache_bytes) / record;
    let table_size = match spec.table_size {
        Some(t) => t.max(1).next_power_of_two(),
        None => {
            // The cheapest table with its overflow, at most a quarter of what is left.
            let mut t = budget_table(hot_keys);
            while t > 1 && t * BUCKET_BYTES > rest / 4 {
                t /= 2;
            }
            t
        }
    };
    let index_bytes = table_size * BUCKET_BYTES;
    let overflow = overflow_bytes(hot_keys, table_size);
    if index_bytes + overflow >= rest {
        bail!(
            "R2Kv's hot index ({table_size} buckets and {overflow} bytes of overflow buckets) does not fit the {rest} bytes --memory leaves the hot tier; pass a smaller --table-size"
        );
    }
    let log_wanted = rest - index_bytes - overflow;
    let page_size = spec.page_size.unwrap_or_else(|| default_page(log_wanted));
    let log_bytes = log_wanted / page_size * page_size;
    if log_bytes < 4 * page_size {
        bail!(
            "R2Kv's hot log memory ({} KiB) is under 4 pages of {} KiB; raise --memory",
            log_bytes >> 10,
            page_size >> 10
        );
    }
    let hot_budget = spec
        .r2_hot_budget
        .unwrap_or(HOT_BUDGET_PER_MEMORY * log_bytes)
        .max(MIB);
    let r2 = r2_plan(
        &ci,
        ci_log,
        cold_log_bytes,
        cold_page_size,
        hot_budget,
        cold_budget,
    );
    Ok(MemoryPlan {
        budget,
        explicit: true,
        table_size,
        index_bytes,
        overflow_bytes: overflow,
        log_bytes,
        read_cache_bytes,
        page_size,
        record_bytes: record,
        r2: Some(r2),
    })
}

/// The most one hot-to-cold pass moves, for a hot log disk budget.
fn max_pass(hot_budget: u64) -> u64 {
    (hot_budget / 2).max(MIB)
}

fn r2_plan(
    ci: &ColdIndexShape,
    ci_log: u64,
    cold_log_bytes: u64,
    cold_page_size: u64,
    hot_budget: u64,
    cold_budget: u64,
) -> R2Plan {
    let table_bytes = ci.table * BUCKET_BYTES;
    R2Plan {
        cold_chunk_bits: ci.chunk_bits,
        cold_entries_per_chunk: ENTRIES,
        cold_index_table_size: ci.table,
        cold_index_table_bytes: table_bytes,
        cold_index_overflow_bytes: ci.overflow_bytes,
        cold_index_log_bytes: ci_log,
        cold_index_memory: table_bytes + ci.overflow_bytes + ci_log,
        cold_index_chunk_bytes: ci.chunk_records,
        cold_log_bytes,
        cold_page_size,
        hot_budget,
        hot_max_pass: max_pass(hot_budget),
        cold_budget,
        maintenance_ms: MAINTENANCE_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> RunSpec {
        use clap::Parser;
        let mut all = vec!["rskv-bench", "--no-progress", "--store", "r2kv"];
        all.extend_from_slice(argv);
        crate::cli::Args::try_parse_from(all)
            .unwrap()
            .runs()
            .unwrap()
            .remove(0)
    }

    #[test]
    fn the_split_stays_within_the_budget() {
        for (keys, memory) in [("8M", "128MiB"), ("1M", "32MiB"), ("50k", "4MiB")] {
            let s = spec(&["--keys", keys, "--value-size", "100", "--memory", memory]);
            let p = plan(&s).unwrap();
            let r2 = p.r2.unwrap();
            let total = p.index_bytes
                + p.overflow_bytes
                + p.log_bytes
                + p.read_cache_bytes
                + r2.cold_index_memory
                + r2.cold_log_bytes;
            assert!(total <= p.budget, "{keys}/{memory}: {total} > {}", p.budget);
            // 1 to 2 keys per cold index entry.
            let entries = (1u64 << r2.cold_chunk_bits) * u64::from(r2.cold_entries_per_chunk);
            assert!(
                entries <= s.keys && 2 * entries > s.keys,
                "{keys}: {entries}"
            );
            assert_eq!(p.read_cache_bytes, p.budget / 4 / 512 * 512);
            assert_eq!(r2.hot_budget, 4 * p.log_bytes);
            assert!(r2.cold_budget >= 4 * s.keys * p.record_bytes);
        }
        // 8M keys, 128 MiB: 2^17 chunks (28 MiB of chunk records), 36 MiB of inner log.
        let p = plan(&spec(&[
            "--keys",
            "8M",
            "--value-size",
            "100",
            "--memory",
            "128MiB",
        ]))
        .unwrap();
        let r2 = p.r2.unwrap();
        assert_eq!(r2.cold_chunk_bits, 17);
        assert_eq!(r2.cold_index_chunk_bytes, 28 << 20);
        assert_eq!(r2.cold_index_log_bytes, 36 << 20);
    }

    #[test]
    fn in_memory_runs_keep_everything_hot() {
        let p = plan(&spec(&["--keys", "100k"])).unwrap();
        let r2 = p.r2.unwrap();
        assert!(!p.explicit && p.read_cache_bytes == 0);
        assert!(r2.hot_budget >= 2 * p.log_bytes);
    }
}
