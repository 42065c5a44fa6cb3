//! How a memory budget is split, for RsKv, for R2Kv (module `r2`) and (as one number) for
//! the peers.

mod r2;

use anyhow::bail;

use crate::spec::{MemoryPlan, RunSpec, StoreKind};

const BUCKET_BYTES: u64 = 64;
const MIN_PAGE: u64 = 4 << 10;
const MAX_PAGE: u64 = 32 << 20;
/// RsKv's record header: three words.
const RECORD_HEADER: u64 = 24;
/// Smallest log of an in-memory run.
const MIN_AUTO_LOG: u64 = 64 << 20;

fn varint_len(v: u64) -> u64 {
    u64::from((64 - v.leading_zeros()).max(1).div_ceil(7))
}

fn round8(v: u64) -> u64 {
    v.div_ceil(8) * 8
}

/// Bytes of an RsKv record for these sizes: header, then key and value encodings each padded
/// to words (a `u64` is its 8 bytes; byte strings are postcard's length varint and the bytes).
pub fn record_bytes(key_size: usize, value_size: usize) -> u64 {
    let key = if key_size == 8 {
        8
    } else {
        key_size as u64 + varint_len(key_size as u64)
    };
    let value = if value_size == 8 {
        8
    } else {
        value_size as u64 + varint_len(value_size as u64)
    };
    RECORD_HEADER + round8(key) + round8(value)
}

/// The default page: a sixteenth of the log, as RsKv's own default, within 4 KiB..32 MiB.
pub(crate) fn default_page(log: u64) -> u64 {
    let p = (log / 16).max(1);
    (1u64 << (63 - p.leading_zeros())).clamp(MIN_PAGE, MAX_PAGE)
}

/// Entries of a hash bucket (the eighth word links the overflow bucket).
const BUCKET_ENTRIES: u64 = 7;
/// Overflow buckets are allocated in pages of this many.
const OVERFLOW_PAGE_BUCKETS: u64 = 1024;

/// The overflow bucket memory an index of `table` buckets takes for `keys` distinct keys, in
/// whole pages: the expected number of overflow buckets when keys fall into buckets at
/// random (Poisson), plus a sixteenth and one page for the spread between runs. For 8M keys
/// in 1Mi buckets this is 34 MiB (session 8 measured 530k overflow buckets, 32 MiB).
pub(crate) fn overflow_bytes(keys: u64, table: u64) -> u64 {
    if keys == 0 || table == 0 {
        return 0;
    }
    let lambda = keys as f64 / table as f64;
    // Sum over the bucket's key count k of P(k) * (overflow buckets for k keys), with P(k) in
    // logs: e^-lambda underflows to 0 past lambda ~ 745 (a --table-size far too small).
    let ln_lambda = lambda.ln();
    let mut ln_p = -lambda;
    let mut expected = 0.0;
    let last = (lambda + 12.0 * lambda.sqrt() + 64.0) as u64;
    for k in 1..=last {
        ln_p += ln_lambda - (k as f64).ln();
        let overflow = k.saturating_sub(BUCKET_ENTRIES).div_ceil(BUCKET_ENTRIES);
        expected += ln_p.exp() * overflow as f64;
    }
    let buckets = (expected * table as f64 * 17.0 / 16.0).ceil() as u64;
    (buckets.div_ceil(OVERFLOW_PAGE_BUCKETS) + 1) * OVERFLOW_PAGE_BUCKETS * BUCKET_BYTES
}

/// The table for `keys` under a budget: the power of two from `keys / 16` to `keys / 4`
/// buckets whose table plus expected overflow is smallest (8M keys: 512Ki buckets, 32 MiB,
/// plus 54 MiB of overflow, against 1Mi buckets and 34 MiB of overflow).
pub(crate) fn budget_table(keys: u64) -> u64 {
    let low = keys.div_ceil(16).max(1).next_power_of_two();
    let mut best = low;
    let mut t = low;
    while t <= keys.div_ceil(4).max(1).next_power_of_two() {
        if t * BUCKET_BYTES + overflow_bytes(keys, t)
            < best * BUCKET_BYTES + overflow_bytes(keys, best)
        {
            best = t;
        }
        t *= 2;
    }
    best
}

/// The memory plan of a run: RsKv's split (also the one number peers get), or R2Kv's.
///
/// With `--memory` RsKv is held to the budget: the index counts its expected overflow
/// buckets for the keys ([`overflow_bytes`]) and the stores run without automatic index
/// growth (a doubling would leave the budget), so the log gets what the index and the read
/// cache leave.
pub fn plan(spec: &RunSpec) -> anyhow::Result<MemoryPlan> {
    if spec.store == StoreKind::R2kv {
        return r2::plan(spec);
    }
    let table_size = spec
        .table_size
        .unwrap_or_else(|| {
            if spec.memory.is_some() {
                budget_table(spec.keys)
            } else {
                spec.keys.div_ceil(8)
            }
        })
        .max(1)
        .next_power_of_two();
    let record = record_bytes(spec.key_size, spec.value_size);
    let cache = spec.read_cache.unwrap_or(0);
    let overflow = if spec.memory.is_some() {
        overflow_bytes(spec.keys, table_size)
    } else {
        0
    };
    let index_bytes = table_size * BUCKET_BYTES;
    let (budget, log_wanted) = match spec.memory {
        Some(budget) => {
            if index_bytes + overflow + cache >= budget {
                bail!(
                    "the RsKv index ({table_size} buckets = {} MiB, and {} MiB of overflow buckets for {} keys) does not fit --memory {} MiB",
                    index_bytes >> 20,
                    overflow >> 20,
                    spec.keys,
                    budget >> 20
                );
            }
            (budget, budget - index_bytes - overflow - cache)
        }
        None => {
            // Twice the loaded data: room for the records that updates append.
            let log = (2 * spec.keys * record).max(MIN_AUTO_LOG);
            (0, log)
        }
    };
    let page_size = match spec.page_size {
        Some(p) => p,
        None => default_page(log_wanted),
    };
    if !page_size.is_power_of_two() || !(MIN_PAGE..=256 << 20).contains(&page_size) {
        bail!("--page-size {page_size} must be a power of two from 4 KiB to 256 MiB");
    }
    let log_bytes = if spec.memory.is_some() {
        // Stay within the budget: whole pages, rounded down.
        (log_wanted / page_size) * page_size
    } else {
        log_wanted.div_ceil(page_size) * page_size
    };
    if log_bytes < 4 * page_size {
        bail!(
            "RsKv's log memory ({} KiB after the index's {} MiB) is under 4 pages of {} KiB; raise --memory or lower --table-size/--page-size",
            log_bytes >> 10,
            index_bytes >> 20,
            page_size >> 10
        );
    }
    Ok(MemoryPlan {
        budget: if spec.memory.is_some() {
            budget
        } else {
            index_bytes + log_bytes + cache
        },
        explicit: spec.memory.is_some(),
        table_size,
        index_bytes,
        overflow_bytes: overflow,
        log_bytes,
        read_cache_bytes: cache,
        page_size,
        record_bytes: record,
        r2: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes() {
        // u64 keys and 8-byte values: 5 words.
        assert_eq!(record_bytes(8, 8), 40);
        // 100-byte values: 101 bytes of encoding, 104 padded.
        assert_eq!(record_bytes(8, 100), 24 + 8 + 104);
    }

    #[test]
    fn overflow_estimates_match_poisson() {
        // 8M keys, 1Mi buckets: 0.53M overflow buckets expected (session 8 counted 530k).
        let b = overflow_bytes(8_000_000, 1 << 20) / BUCKET_BYTES;
        assert!((540_000..620_000).contains(&b), "{b}");
        // Half a key per bucket: almost none, but never zero pages.
        let small = overflow_bytes(1 << 20, 2 << 20);
        assert!(small <= 2 * OVERFLOW_PAGE_BUCKETS * BUCKET_BYTES, "{small}");
        assert_eq!(overflow_bytes(0, 1024), 0);
        // A table far too small: about keys / 7 buckets, not zero.
        let tiny = overflow_bytes(8_000_000, 1) / BUCKET_BYTES;
        assert!((1_100_000..1_300_000).contains(&tiny), "{tiny}");
    }

    #[test]
    fn a_budget_holds_the_index_with_its_overflow() {
        use clap::Parser;
        let spec = crate::cli::Args::try_parse_from([
            "rskv-bench",
            "--no-progress",
            "--keys",
            "8M",
            "--value-size",
            "100",
            "--memory",
            "128MiB",
            "--read-cache",
            "16MiB",
        ])
        .unwrap()
        .runs()
        .unwrap()
        .remove(0);
        let p = plan(&spec).unwrap();
        assert_eq!(p.table_size, 512 << 10);
        assert!(p.overflow_bytes > 48 << 20);
        let total = p.index_bytes + p.overflow_bytes + p.log_bytes + p.read_cache_bytes;
        assert!(
            total <= p.budget && total + p.page_size > p.budget,
            "{total}"
        );
    }
}
