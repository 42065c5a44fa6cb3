//! Store configuration: a plain struct with `Default`, builder-style setters, and validation
//! that names the bad field.

use std::time::Duration;

use crate::core::status::{Error, Result};
use crate::hlog::persistent_memory_malloc::{MAX_PAGE_BITS, MIN_FRAMES, MIN_PAGE_BITS};

/// Bytes of one hash bucket (and of one overflow bucket).
const BUCKET_BYTES: u64 = 64;

/// Configuration of an [`RsKv`](crate::RsKv) store.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Hash buckets (64 bytes each, 7 entries) the index starts with; rounded up to a power of
    /// two. Default `1 << 16` (4 MiB of index). FASTER sizes it at about #keys / 2 entries.
    /// The index doubles by itself as keys come (see [`Config::auto_grow_index`]).
    pub table_size: u64,
    /// Bytes of log memory (the in-memory pages of the hybrid log). Default 256 MiB. Ignored
    /// when [`Config::memory_budget`] is set: the budget decides it.
    pub log_memory_size: u64,
    /// One memory budget in bytes for the index tables, their overflow buckets and the log
    /// memory (the read cache will join it). Default `None`: `table_size` and
    /// `log_memory_size` as given, and the index grows without bound.
    ///
    /// The split: the index gets a quarter of the budget, or twice its starting table
    /// (`64 × table_size` bytes) if that is more; the log gets the rest, rounded down to whole
    /// pages (the page size as set, or derived from the log's share as without a budget), and
    /// the index also gets that rounding. The index's share then bounds it:
    /// - automatic growth (and [`RsKv::grow_index`](crate::RsKv::grow_index)) doubles the
    ///   table only if the growth fits the share at its peak: the old table, the new one (twice
    ///   as big) and the overflow buckets, counted as three times those in use (the old
    ///   table's until it is freed, and up to two copies of each in the new one). When it does
    ///   not fit, the index stays as it is and [`Stats::growth_refused_by_budget`](crate::Stats)
    ///   says so;
    /// - operations allocate no overflow bucket page past the share: inserting a new key then
    ///   fails with [`Error::IndexFull`] (the index is as large as the budget allows; raise
    ///   the budget).
    ///
    /// The store's resident memory stays within the budget plus a fixed slack of 16 MiB
    /// ([`MEMORY_BUDGET_SLACK`]) for what it does not count: the epoch table, the overflow
    /// allocator's page table, I/O and checkpoint buffers, thread stacks and allocator
    /// rounding. A budget whose log share is under 4 pages is refused with
    /// [`Error::Config`]; at recovery the split is made again with the recovered index's
    /// size and the checkpoint's page size.
    pub memory_budget: Option<u64>,
    /// Automatic index growth: a background thread doubles the index, while operations run,
    /// when the overflow buckets it gained since its last growth pass this fraction of its
    /// buckets (Tsavorite's rule). Default `Some(0.5)`; `None` turns it off
    /// ([`RsKv::grow_index`](crate::RsKv::grow_index) still grows it by hand). Overflow
    /// buckets a growth could not remove (entries whose chains are on disk are copied to both
    /// halves, as in FASTER) are not counted against the next one.
    ///
    /// While a growth starts, operations wait (they retry) until every thread that was inside
    /// an operation has left it; an operation nested in an update's function cannot wait (its
    /// outer operation is one of those) and fails with [`Error::Busy`]. A store whose update
    /// functions call it and cannot retry should grow by hand instead.
    pub auto_grow_index: Option<f64>,
    /// How often the store's maintenance thread looks for work (index growth), when nothing
    /// wakes it earlier. Default 250 ms (F2's). The thread exists only while a task is enabled
    /// ([`Config::auto_grow_index`]).
    pub maintenance_interval: Duration,
    /// Bytes of one log page, a power of two from 4 KiB to 256 MiB; also the largest record.
    /// Default: `log_memory_size / 16` rounded down to a power of two, clamped to 4 KiB..32 MiB.
    pub page_size: Option<u64>,
    /// Fraction of in-memory pages that are mutable (updated in place). Default 0.9.
    pub mutable_fraction: f64,
    /// Copy a record that a read fetched from disk to the tail of the log, so the next read of
    /// the key finds it in memory (FASTER's "copy reads to tail"): for skewed reads of a data
    /// set larger than memory, at the cost of log growth. The copy is a conditional insert
    /// that gives way to any newer record of the key, and is skipped when checking that would
    /// itself need the disk. Default off.
    pub copy_reads_to_tail: bool,
    /// When recovery picks the newest checkpoint by itself and finds that a completed (once
    /// acknowledged) log checkpoint cannot be recovered (a damaged file, a log page that no
    /// longer matches it), fall back to the newest older checkpoint that can. Default off:
    /// recovery then fails with [`Error::Checkpoint`] naming the checkpoint and the problem,
    /// because falling back silently loses every update the newer checkpoint had made
    /// durable. Either way nothing is deleted: a checkpoint skipped by a fallback (and any
    /// newer than the one recovered) is moved to `checkpoints/set-aside/` for the user to
    /// inspect or remove, since the recovered store's log will overwrite what it described.
    /// Recovering an older checkpoint on purpose (`RsKv::recover` with its token) needs no
    /// fallback.
    pub recovery_fallback: bool,
    /// The name recorded for the key type in checkpoints and checked when recovering
    /// (default: the type's name without module paths, e.g. `u64`, `String`, `Vec<u8>`,
    /// `UserData`). Set it to keep recovering after renaming the type, or to tell apart two
    /// types of the same name whose encodings differ.
    pub key_type_name: Option<String>,
    /// As [`Config::key_type_name`], for the value type.
    pub value_type_name: Option<String>,
    /// Refuse to open a device that holds a completed checkpoint ([`Error::Checkpoint`])
    /// instead of recovering it (RocksDB's `error_if_exists`). Default off: `open` recovers the
    /// newest checkpoint, as every Rust store does.
    pub error_if_exists: bool,
    /// Take a full checkpoint when the store is closed ([`crate::RsKv::close`], or dropped),
    /// so that a clean shutdown keeps every update. Default off, as in FASTER: what survives a
    /// drop or a crash is what the last checkpoint holds, and a drop costs nothing. A failure
    /// in `close` is returned; in a drop it is only logged.
    pub checkpoint_on_close: bool,
    /// Bytes of read cache (FASTER's): a second in-memory log, never written to the device,
    /// holding copies of records that reads fetched from the device, in front of their hash
    /// chains, so the next read of a hot key finishes in memory without writing the log (as
    /// `copy_reads_to_tail` would; the two are alternatives and setting both is refused).
    /// From 32 KiB to 2 GiB, used as 64 pages of `size / 64` bytes (a record larger than a
    /// page is not cached); eviction is FIFO by page, and a hit in the oldest eighth is copied
    /// back to the front. Default `None` (off). With a [`Config::memory_budget`] the cache's
    /// bytes come out of the budget first (at most half of it) and the rest is split between
    /// the index and the log as described there. Checkpoints and recovery ignore it;
    /// [`Stats`](crate::Stats) reports its hits, misses, insertions and evictions.
    pub read_cache_size: Option<u64>,
    /// Which reads that found their record on the device copy it into the read cache. Default
    /// [`CacheAdmission::SecondMiss`]: only a key that missed before, recently.
    pub read_cache_admission: CacheAdmission,
    /// Whether a record leaving the log's memory is copied into the read cache when its key
    /// was used beyond the log's memory recently: it missed (a read, or an update that read its
    /// old value from the device), or an update replaced its cached copy, within the last one
    /// or two log memories of appends (a filter of its own remembers). So a key written again
    /// and again stays in memory in the cache's bytes, which update-heavy workloads would
    /// otherwise leave idle. Only with a read cache and [`CacheAdmission::SecondMiss`]. Each log page is
    /// walked once between becoming read-only and leaving memory, by an operation as it
    /// starts; so that such a moment exists, the log keeps at least one read-only page (at
    /// most `frames - 3` mutable pages). Default `true`.
    pub read_cache_keeps_evicted: bool,
    /// Whether the log's memory and the read cache's trade bytes while the store runs (their
    /// sum stays what it was configured to be). Default [`MemorySplit::Fixed`]. Needs a read
    /// cache and a device that keeps data.
    pub memory_split: MemorySplit,
    /// Compact the log in the background to keep it within a disk budget
    /// ([`LogCompaction`](crate::LogCompaction), F2's settings). Default off: the log grows
    /// until the user compacts or truncates it.
    pub log_compaction: Option<crate::ops::compact::LogCompaction>,
    /// Operations a [`Session`](crate::Session) keeps pending at once, each with its device
    /// read in flight (FASTER's 128). Default 128; 0 is refused. When a session that already
    /// has this many pending starts another one that must go to disk, it first finishes
    /// those that are done and, if none is, waits until one is: their contexts' `complete`
    /// then runs inside that operation call (as it would in `complete_pending`), before the
    /// new operation issues its read and returns [`Status::Pending`](crate::Status).
    pub pending_depth: usize,
}

/// How the log's memory and the read cache's share their bytes ([`Config::memory_split`]).
///
/// They form one *pool* of `log memory + read cache` bytes. With a split that moves, the log
/// allocates frames for the whole pool and the cache pages of a 64th of it (address space
/// only: memory is touched as it is used), and each keeps only its share *live*; memory that
/// leaves a share is given back to the kernel (`madvise(MADV_DONTNEED)`), so the store's
/// resident memory follows the shares, not the allocations. Each side keeps at least an
/// eighth of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MemorySplit {
    /// The configured sizes, for good.
    #[default]
    Fixed,
    /// Moves only when [`RsKv::set_read_cache_share`](crate::rskv_core::RsKv::set_read_cache_share)
    /// says so.
    Manual,
    /// The maintenance thread moves it towards the side that would save more device reads:
    /// it counts the misses that an eighth of the pool more on each side would have turned
    /// into hits (reads of records that left the log's memory within that many bytes; misses
    /// of keys whose copies the cache evicted within that many bytes) and, when one side's
    /// count beats the other's by a quarter, moves a sixteenth of the pool to it: first out of
    /// the other side, then, once that memory is given back, into this one.
    Adaptive,
}

/// Which reads that found their record on the device copy it into the read cache
/// ([`Config::read_cache_admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CacheAdmission {
    /// Every one, as FASTER's read cache does.
    Every,
    /// Every one until the cache first fills; from then on only a key that missed before
    /// within a recent window (the misses whose copies would fill a quarter to half of the
    /// cache), remembered by a two-generation Bloom filter of 1/128 of the cache's bytes,
    /// taken out of them. A key read once in a long while then does not push a hotter one
    /// out: with 8M keys of 100 bytes in 128 MiB, zipf 0.99 reads ran 1.23x as fast as with
    /// [`CacheAdmission::Every`] (BENCHMARKS.md). A key's first miss in a full cache is not
    /// copied, so a key read exactly twice gains nothing.
    #[default]
    SecondMiss,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            table_size: 1 << 16,
            log_memory_size: 256 << 20,
            memory_budget: None,
            auto_grow_index: Some(0.5),
            maintenance_interval: Duration::from_millis(250),
            page_size: None,
            mutable_fraction: 0.9,
            copy_reads_to_tail: false,
            recovery_fallback: false,
            key_type_name: None,
            value_type_name: None,
            error_if_exists: false,
            checkpoint_on_close: false,
            log_compaction: None,
            read_cache_size: None,
            read_cache_admission: CacheAdmission::SecondMiss,
            read_cache_keeps_evicted: true,
            memory_split: MemorySplit::Fixed,
            pending_depth: 128,
        }
    }
}

/// The geometry a [`Config`] resolves to (after rounding), as the store uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// log2 of the bucket count.
    pub index_bits: u32,
    /// log2 of the page size.
    pub page_bits: u32,
    /// In-memory page frames.
    pub frames: u64,
    /// How [`Config::memory_budget`] was split, if one was set.
    pub budget: Option<MemoryBudget>,
    /// Bytes of read cache (0: off).
    pub read_cache_bytes: u64,
}

/// The resident memory the store may hold beyond [`Config::memory_budget`]: what the budget does
/// not count (epoch table, the overflow allocator's page table of 512 KiB, I/O and checkpoint
/// buffers, thread stacks, allocator rounding). Measured by `tests/memory_budget.rs`.
pub const MEMORY_BUDGET_SLACK: u64 = 16 << 20;

/// How a [`Config::memory_budget`] is split (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The whole budget.
    pub total: u64,
    /// The index's share: its tables and overflow buckets, growth included.
    pub index: u64,
    /// The log's share: its in-memory pages (`frames × page size`).
    pub log: u64,
    /// The read cache's share ([`Config::read_cache_size`], taken out first).
    pub read_cache: u64,
}

impl MemoryBudget {
    /// Splits `total` bytes for an index of `2^index_bits` buckets and a log of pages of
    /// `2^page_bits` bytes (`None`: derived from the log's share, as without a budget).
    /// Returns the split and the page bits.
    ///
    /// # Errors
    /// [`Error::Config`] (`memory_budget`) when the log's share is under [`MIN_FRAMES`] pages.
    pub(crate) fn split(
        total: u64,
        index_bits: u32,
        page_bits: Option<u32>,
    ) -> Result<(Self, u32)> {
        let table = BUCKET_BYTES << index_bits;
        let index_floor = (total / 4).max(2 * table);
        let room = total.saturating_sub(index_floor);
        let page_bits = page_bits.unwrap_or_else(|| derived_page_bits(room));
        let frames = room >> page_bits;
        if frames < MIN_FRAMES {
            return Err(Error::Config {
                field: "memory_budget",
                reason: format!(
                    "{total} bytes leave the log {room} bytes after the index's {index_floor} \
                     (a quarter of the budget, at least twice the {table}-byte table), fewer \
                     than {MIN_FRAMES} pages of {} bytes; raise the budget or lower table_size",
                    1u64 << page_bits
                ),
            });
        }
        if frames > MAX_FRAMES {
            return Err(Error::Config {
                field: "memory_budget",
                reason: format!("its log share is {frames} pages, too many; raise page_size"),
            });
        }
        let log = frames << page_bits;
        Ok((
            Self {
                total,
                index: total - log,
                log,
                read_cache: 0,
            },
            page_bits,
        ))
    }
}

/// The most in-memory pages a log may have.
const MAX_FRAMES: u64 = 1 << 20;

/// The page size (log2) for `log_memory` bytes when none is set: a sixteenth of it, rounded down
/// to a power of two, clamped to 4 KiB..32 MiB.
fn derived_page_bits(log_memory: u64) -> u32 {
    let per_page = (log_memory / 16).max(1);
    (63 - per_page.leading_zeros()).clamp(MIN_PAGE_BITS, 25)
}

impl MemoryBudget {
    /// This split (of what a read cache of `bytes` left) as part of a budget that includes the
    /// cache.
    #[must_use]
    pub(crate) fn with_read_cache(self, bytes: u64) -> Self {
        Self {
            total: self.total + bytes,
            read_cache: bytes,
            ..self
        }
    }
}

impl Resolved {
    /// Bytes of log memory actually used (frames × page size).
    #[must_use]
    pub fn log_memory_size(&self) -> u64 {
        self.frames << self.page_bits
    }
    /// Pages of the log's and the read cache's memory together (the pool of
    /// [`MemorySplit`]), at most [`MAX_FRAMES`].
    #[must_use]
    pub fn pool_frames(&self) -> u64 {
        ((self.log_memory_size() + self.read_cache_bytes) >> self.page_bits).min(MAX_FRAMES)
    }

    /// Bytes of one page.
    #[must_use]
    pub fn page_size(&self) -> u64 {
        1 << self.page_bits
    }
    /// Buckets in the index.
    #[must_use]
    pub fn table_size(&self) -> u64 {
        1 << self.index_bits
    }
}

impl Config {
    /// The defaults.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`Config::table_size`] (buckets).
    #[must_use]
    pub fn table_size(mut self, buckets: u64) -> Self {
        self.table_size = buckets;
        self
    }
    /// Sets [`Config::log_memory_size`] (bytes).
    #[must_use]
    pub fn log_memory_size(mut self, bytes: u64) -> Self {
        self.log_memory_size = bytes;
        self
    }
    /// Sets [`Config::page_size`] (bytes).
    #[must_use]
    pub fn page_size(mut self, bytes: u64) -> Self {
        self.page_size = Some(bytes);
        self
    }
    /// Sets [`Config::mutable_fraction`].
    #[must_use]
    pub fn mutable_fraction(mut self, fraction: f64) -> Self {
        self.mutable_fraction = fraction;
        self
    }

    /// Sets [`Config::memory_budget`] (bytes).
    #[must_use]
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Sets [`Config::auto_grow_index`] (the fraction of overflow buckets to buckets; `None`
    /// turns automatic growth off).
    #[must_use]
    pub fn auto_grow_index(mut self, fraction: Option<f64>) -> Self {
        self.auto_grow_index = fraction;
        self
    }

    /// Sets [`Config::maintenance_interval`].
    #[must_use]
    pub fn maintenance_interval(mut self, every: Duration) -> Self {
        self.maintenance_interval = every;
        self
    }

    /// Sets [`Config::copy_reads_to_tail`].
    #[must_use]
    pub fn copy_reads_to_tail(mut self, on: bool) -> Self {
        self.copy_reads_to_tail = on;
        self
    }

    /// Sets [`Config::recovery_fallback`].
    #[must_use]
    pub fn recovery_fallback(mut self, on: bool) -> Self {
        self.recovery_fallback = on;
        self
    }

    /// Sets [`Config::key_type_name`] and [`Config::value_type_name`].
    #[must_use]
    pub fn type_names(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.key_type_name = Some(key.into());
        self.value_type_name = Some(value.into());
        self
    }

    /// Sets [`Config::error_if_exists`].
    #[must_use]
    pub fn error_if_exists(mut self, on: bool) -> Self {
        self.error_if_exists = on;
        self
    }

    /// Sets [`Config::checkpoint_on_close`].
    #[must_use]
    pub fn checkpoint_on_close(mut self, on: bool) -> Self {
        self.checkpoint_on_close = on;
        self
    }

    /// Sets [`Config::read_cache_size`] (bytes).
    #[must_use]
    pub fn read_cache(mut self, bytes: u64) -> Self {
        self.read_cache_size = Some(bytes);
        self
    }

    /// Sets [`Config::memory_split`].
    #[must_use]
    pub fn memory_split(mut self, split: MemorySplit) -> Self {
        self.memory_split = split;
        self
    }

    /// Sets [`Config::read_cache_admission`].
    #[must_use]
    pub fn read_cache_admission(mut self, admission: CacheAdmission) -> Self {
        self.read_cache_admission = admission;
        self
    }

    /// Sets [`Config::read_cache_keeps_evicted`].
    #[must_use]
    pub fn read_cache_keeps_evicted(mut self, keep: bool) -> Self {
        self.read_cache_keeps_evicted = keep;
        self
    }

    /// Compacts the log in the background by `settings` (see [`Config::log_compaction`]).
    #[must_use]
    pub fn log_compaction(mut self, settings: crate::ops::compact::LogCompaction) -> Self {
        self.log_compaction = Some(settings);
        self
    }

    /// Sets [`Config::pending_depth`] (operations).
    #[must_use]
    pub fn pending_depth(mut self, ops: usize) -> Self {
        self.pending_depth = ops;
        self
    }

    /// Checks the values and rounds them to what the store will use. Too small a log memory is
    /// rounded up to the minimum of 4 pages of 4 KiB; with a memory budget, the log memory is
    /// the budget's log share ([`Config::memory_budget`]). `Resolved` reports the result.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field that is out of range.
    pub fn resolve(&self) -> Result<Resolved> {
        if self.table_size == 0 || self.table_size > 1 << 36 {
            return Err(Error::Config {
                field: "table_size",
                reason: format!("{} buckets is not in 1..=2^36", self.table_size),
            });
        }
        let index_bits = self.table_size.next_power_of_two().trailing_zeros();
        if let Some(c) = &self.log_compaction {
            c.validate()?;
        }
        if !(0.0..=1.0).contains(&self.mutable_fraction) || self.mutable_fraction.is_nan() {
            return Err(Error::Config {
                field: "mutable_fraction",
                reason: format!("{} is not in 0..=1", self.mutable_fraction),
            });
        }
        if let Some(f) = self.auto_grow_index {
            if !(f.is_finite() && f > 0.0) {
                return Err(Error::Config {
                    field: "auto_grow_index",
                    reason: format!("{f} is not a positive fraction of overflow buckets"),
                });
            }
        }
        if self.pending_depth == 0 {
            return Err(Error::Config {
                field: "pending_depth",
                reason: "a session must be able to keep at least one operation pending".into(),
            });
        }
        if self.maintenance_interval.is_zero() {
            return Err(Error::Config {
                field: "maintenance_interval",
                reason: "zero would make the maintenance thread spin".into(),
            });
        }
        let set_page_bits = match self.page_size {
            Some(p) => {
                if !p.is_power_of_two()
                    || !(MIN_PAGE_BITS..=MAX_PAGE_BITS).contains(&p.trailing_zeros())
                {
                    return Err(Error::Config {
                        field: "page_size",
                        reason: format!("{p} is not a power of two from 4 KiB to 256 MiB"),
                    });
                }
                Some(p.trailing_zeros())
            }
            None => None,
        };
        let read_cache_bytes = self.read_cache_bytes()?;
        if self.memory_split != MemorySplit::Fixed && read_cache_bytes == 0 {
            return Err(Error::Config {
                field: "memory_split",
                reason: "a split that moves needs a read cache to move memory to".into(),
            });
        }
        if let Some(total) = self.memory_budget {
            let (budget, page_bits) = MemoryBudget::split(
                total.saturating_sub(read_cache_bytes),
                index_bits,
                set_page_bits,
            )?;
            return Ok(Resolved {
                index_bits,
                page_bits,
                frames: budget.log >> page_bits,
                budget: Some(budget.with_read_cache(read_cache_bytes)),
                read_cache_bytes,
            });
        }
        let page_bits = set_page_bits.unwrap_or_else(|| derived_page_bits(self.log_memory_size));
        let frames = self
            .log_memory_size
            .div_ceil(1 << page_bits)
            .max(MIN_FRAMES);
        if frames > MAX_FRAMES {
            return Err(Error::Config {
                field: "log_memory_size",
                reason: format!("{frames} pages is too many; raise page_size"),
            });
        }
        Ok(Resolved {
            index_bits,
            page_bits,
            frames,
            budget: None,
            read_cache_bytes,
        })
    }

    /// The read cache's bytes as the store uses them (0: off), checked.
    ///
    /// # Errors
    /// [`Error::Config`] for a size out of range, more than half the memory budget, or a cache
    /// beside `copy_reads_to_tail`.
    pub(crate) fn read_cache_bytes(&self) -> Result<u64> {
        use crate::hlog::read_cache::{FRAMES, MAX_BYTES, MIN_BYTES};
        let Some(bytes) = self.read_cache_size else {
            return Ok(0);
        };
        let bad = |reason: String| {
            Err(Error::Config {
                field: "read_cache_size",
                reason,
            })
        };
        if !(MIN_BYTES..=MAX_BYTES).contains(&bytes) {
            return bad(format!("{bytes} bytes is not in {MIN_BYTES}..={MAX_BYTES}"));
        }
        if self.copy_reads_to_tail {
            return bad("a read cache and copy_reads_to_tail are alternatives: set one".into());
        }
        if let Some(total) = self.memory_budget {
            if bytes > total / 2 {
                return bad(format!(
                    "{bytes} bytes is more than half the memory budget of {total}"
                ));
            }
        }
        Ok(bytes / FRAMES / 8 * 8 * FRAMES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_sizes_resolve() {
        let r = Config::new()
            .table_size(1 << 20)
            .log_memory_size(1 << 16)
            .resolve()
            .unwrap();
        assert_eq!((r.index_bits, r.page_bits, r.frames), (20, 12, 16));
        let tiny = Config::new().log_memory_size(100).resolve().unwrap();
        assert_eq!(tiny.log_memory_size(), 4 * 4096);
        let big = Config::new().log_memory_size(1 << 30).resolve().unwrap();
        assert_eq!(big.page_size(), 32 << 20);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Config::new().page_size(5000).resolve().unwrap_err();
        assert!(matches!(
            e,
            Error::Config {
                field: "page_size",
                ..
            }
        ));
        let e = Config::new().mutable_fraction(1.5).resolve().unwrap_err();
        assert!(matches!(
            e,
            Error::Config {
                field: "mutable_fraction",
                ..
            }
        ));
        let e = Config::new().table_size(0).resolve().unwrap_err();
        assert!(matches!(
            e,
            Error::Config {
                field: "table_size",
                ..
            }
        ));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = Config::new()
                .auto_grow_index(Some(bad))
                .resolve()
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Config {
                        field: "auto_grow_index",
                        ..
                    }
                ),
                "{bad}"
            );
        }
        let e = Config::new()
            .maintenance_interval(Duration::ZERO)
            .resolve()
            .unwrap_err();
        assert!(matches!(
            e,
            Error::Config {
                field: "maintenance_interval",
                ..
            }
        ));
        let e = Config::new().pending_depth(0).resolve().unwrap_err();
        assert!(matches!(
            e,
            Error::Config {
                field: "pending_depth",
                ..
            }
        ));
        assert!(Config::new().pending_depth(1).resolve().is_ok());
    }

    #[test]
    fn a_budget_is_split_between_index_and_log() {
        // 128 MiB, default 4 MiB table: the index gets a quarter, the log 96 MiB in 4 MiB
        // pages (a sixteenth of 96 MiB rounded down to a power of two).
        let r = Config::new().memory_budget(128 << 20).resolve().unwrap();
        let b = r.budget.unwrap();
        assert_eq!((b.total, b.index, b.log), (128 << 20, 32 << 20, 96 << 20));
        assert_eq!((r.page_size(), r.log_memory_size()), (4 << 20, 96 << 20));
        // A 16 MiB table takes twice its size (more than a quarter of 100 MiB); the log gets
        // 8 pages of 8 MiB of the 68 MiB left, and the index the 4 MiB of rounding.
        let r = Config::new()
            .memory_budget(100 << 20)
            .table_size(1 << 18)
            .page_size(8 << 20)
            .resolve()
            .unwrap();
        let b = r.budget.unwrap();
        assert_eq!((b.index, b.log), (36 << 20, 64 << 20));
        assert_eq!(r.frames, 8);
        // log_memory_size is ignored under a budget.
        let r = Config::new()
            .memory_budget(128 << 20)
            .log_memory_size(1 << 30)
            .resolve()
            .unwrap();
        assert_eq!(r.log_memory_size(), 96 << 20);
    }

    #[test]
    fn impossible_budgets_are_refused() {
        let refused = |c: Config| {
            matches!(
                c.resolve(),
                Err(Error::Config {
                    field: "memory_budget",
                    ..
                })
            )
        };
        // The default 4 MiB table takes 8 MiB of a 9 MiB budget, and 1 MiB is not 4 pages.
        assert!(refused(
            Config::new().memory_budget(9 << 20).page_size(1 << 20)
        ));
        assert!(refused(Config::new().memory_budget(0)));
        // The smallest budget for a 1-bucket table: three quarters of it must hold 4 pages of
        // 4 KiB.
        assert!(refused(Config::new().memory_budget(21_844).table_size(1)));
        let r = Config::new()
            .memory_budget(21_848)
            .table_size(1)
            .resolve()
            .unwrap();
        assert_eq!((r.frames, r.page_size()), (4, 4096));
    }
}
