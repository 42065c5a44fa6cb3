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

/// The memory plan of a run: RsKv's split (also the one number peers get), or R2Kv's.
pub fn plan(spec: &RunSpec) -> anyhow::Result<MemoryPlan> {
    if spec.store == StoreKind::R2kv {
        return r2::plan(spec);
    }
    let table_size = spec
        .table_size
        .unwrap_or_else(|| spec.keys.div_ceil(8))
        .max(1)
        .next_power_of_two();
    let index_bytes = table_size * BUCKET_BYTES;
    let record = record_bytes(spec.key_size, spec.value_size);
    let cache = spec.read_cache.unwrap_or(0);
    let (budget, log_wanted) = match spec.memory {
        Some(budget) => {
            if index_bytes + cache >= budget {
                bail!(
                    "the RsKv index ({table_size} buckets = {} MiB) does not fit --memory {} MiB; pass a smaller --table-size",
                    index_bytes >> 20,
                    budget >> 20
                );
            }
            (budget, budget - index_bytes - cache)
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
}
