//! Index growth as the engine runs it: the claim it shares with checkpoints, the memory budget
//! check, and sorting chains between the halves of a split by reading their keys in the log
//! (FASTER's `TraceBackForOtherChainStart`, see [`crate::index::split`]).
//!
//! # Sorting needs the store's own hash
//! A split sorts a record by hashing its logged key the way the facade does ([`hash_key`]). A
//! context that overrides `key_hash` files keys by another hash, which a split cannot
//! recompute; so the engine notes any context operation whose hash differs from RsKv's, and a
//! store recovered with [`recover_with_hash`](crate::RsKv::recover_with_hash) starts noted.
//! From then on splits copy every entry to both halves (always correct). As a second guard, a
//! record whose recomputed tag is not its entry's stops the sorting of that entry (a chain only
//! ever holds keys of its entry's tag) and notes the store too.
//!
//! [`hash_key`]: crate::hash_key

use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};
use std::sync::{Arc, Weak};

use crate::core::address::Address;
use crate::core::light_epoch::Protected;
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::index::hash_bucket::HashBucketEntry;
use crate::index::hash_table::OverflowPool;
use crate::index::key_hash::hash_words;
use crate::index::{KeyHash, Split, SplitChains};
use crate::ops::Engine;
use crate::sync::{AtomicU64, Ordering};

/// Records a split follows down one chain before it gives up sorting the rest of it (a long
/// chain of one hot key's copies): what is below stays shared by both halves.
const MAX_SPLIT_WALK: usize = 256;

/// Growth bookkeeping of one store, for [`crate::Stats`].
#[derive(Default)]
pub(crate) struct GrowthBook {
    /// Growths completed since the store was opened (by hand or automatically).
    pub(crate) growths: AtomicU64,
    /// The last growth the index needed was refused by the memory budget (cleared by a growth).
    pub(crate) refused_by_budget: AtomicBool,
    /// Passes the maintenance thread made.
    pub(crate) maintenance_passes: AtomicU64,
    /// Background tasks (growth, compaction, rewriting failed pages) that failed.
    pub(crate) health: crate::maintenance::MaintenanceHealth,
}

/// Why a growth did not happen.
#[derive(Debug)]
pub(crate) enum NoGrowth {
    /// The memory budget's index share cannot hold it: `need` bytes at its peak, `share`
    /// allowed.
    Budget { need: u64, share: u64 },
    /// Another error (a checkpoint runs, overflow buckets ran out, the caller is protected).
    Failed(Error),
}

impl From<NoGrowth> for Error {
    fn from(e: NoGrowth) -> Self {
        match e {
            NoGrowth::Budget { need, share } => Error::Config {
                field: "memory_budget",
                reason: format!(
                    "doubling the index needs {need} bytes at its peak, more than the index's \
                     share of {share}"
                ),
            },
            NoGrowth::Failed(e) => e,
        }
    }
}

/// The engine as the index's chain sorter. A weak reference: the index is part of the engine,
/// and is only ever used through a strong one.
struct LogChains<D: Disk>(Weak<Engine<D>>);

impl<D: Disk> SplitChains for LogChains<D> {
    fn uncache(&self, entry: HashBucketEntry) -> HashBucketEntry {
        let Some(engine) = self.0.upgrade() else {
            return entry;
        };
        engine.uncached(entry).unwrap_or_else(|e| {
            tracing::error!(error = %e, "index split: a read-cache entry names no copy");
            entry
        })
    }

    fn sort(&self, g: &dyn Protected, bucket: usize, bits: u32, entries: &mut [Split]) {
        let Some(engine) = self.0.upgrade() else {
            return;
        };
        if !std::ptr::eq(g.epoch(), Arc::as_ptr(&engine.epoch)) || engine.hasher.is_foreign() {
            return;
        }
        // Read under `g`: records at or above it stay in memory while `g` lives.
        let head = engine.hlog.head();
        let begin = engine.hlog.begin();
        for split in entries {
            split.to = engine.sort_chain(
                split.entry.address(),
                split.entry.tag(),
                bucket,
                bits,
                head,
                begin,
            );
            if engine.hasher.is_foreign() {
                return;
            }
        }
    }
}

impl<D: Disk> Engine<D> {
    /// Puts the engine in an `Arc` and installs it as its index's chain sorter.
    pub(crate) fn into_shared(self) -> Arc<Self> {
        let engine = Arc::new(self);
        engine
            .index
            .set_splitter(Box::new(LogChains(Arc::downgrade(&engine))));
        engine
    }

    /// Where the copies of an entry (`tag`, chain from `from`) of old bucket `bucket` of a
    /// table of `2^bits` buckets go. The caller is protected and read `head` and `begin` under
    /// that protection.
    fn sort_chain(
        &self,
        from: Address,
        tag: u16,
        bucket: usize,
        bits: u32,
        head: Address,
        begin: Address,
    ) -> [Option<Address>; 2] {
        let mut to = [None, None];
        // Every half not placed yet starts at `a`: nothing above it was one of its keys.
        let stop = |to: &mut [Option<Address>; 2], a: Address| {
            for t in to.iter_mut().filter(|t| t.is_none()) {
                *t = Some(a);
            }
            *to
        };
        let mut a = from;
        for _ in 0..MAX_SPLIT_WALK {
            if a.is_invalid() || a < begin {
                // The chain ends: a half not met has no key here.
                return to;
            }
            if a < head {
                return stop(&mut to, a);
            }
            let Ok(rec) = self.hlog.record(a) else {
                return stop(&mut to, a);
            };
            let hash = KeyHash::new(hash_words(
                rec.key_len(),
                rec.key_words().iter().map(|w| w.load(Ordering::Relaxed)),
            ));
            if hash.tag() != tag {
                self.hasher.note_foreign();
                return [Some(from); 2];
            }
            // A key of another old bucket (left here by a split that could not sort it) is
            // looked up through neither half: skip it.
            if hash.bucket(bits) == bucket {
                let half = (hash.value() >> bits & 1) as usize;
                if to[half].is_none() {
                    to[half] = Some(a);
                    if to[1 - half].is_some() {
                        return to;
                    }
                }
            }
            let prev = rec.info().prev();
            if prev >= a {
                return stop(&mut to, a);
            }
            a = prev;
        }
        stop(&mut to, a)
    }

    /// Bytes the index would hold at the peak of a doubling now, when it is bounded by a
    /// budget: the old table, the new one, and the overflow pages, counted for three times the
    /// buckets in use (the old table's stay until it is freed, and a split gives each new
    /// bucket at most the entries of its old one, so at most twice as many again).
    fn growth_peak(&self) -> u64 {
        let table = self.index.table_bytes();
        let overflow = self.index.overflow_buckets();
        let pages = (3 * overflow).div_ceil(crate::core::malloc_fixed_page_size::PAGE_ITEMS as u64);
        let overflow_bytes =
            (pages * OverflowPool::PAGE_BYTES as u64).max(self.index.overflow_bytes());
        3 * table + overflow_bytes
    }

    /// Doubles the index while operations run: FASTER's `GrowIndex`. Shares the claim with
    /// checkpoints (waits for another growth; `Busy` while a checkpoint runs) and, with a
    /// memory budget, grows only if [`Engine::growth_peak`] fits the index's share.
    pub(crate) fn grow_index(&self) -> Result<(), NoGrowth> {
        if self.epoch.is_protected_here() {
            return Err(NoGrowth::Failed(Error::Busy(
                "grow_index called from inside an operation of this store (e.g. an rmw \
                 function); it would wait for its own thread",
            )));
        }
        let _claim = self
            .cpr
            .claim_growth("a checkpoint is running", true)
            .map_err(NoGrowth::Failed)?;
        if let Some(budget) = self.budget {
            let need = self.growth_peak();
            if need > budget.index {
                self.growth
                    .refused_by_budget
                    .store(true, StdOrdering::Release);
                return Err(NoGrowth::Budget {
                    need,
                    share: budget.index,
                });
            }
        }
        let from = self.index.bits();
        match self.index.grow() {
            Ok(_) => {
                self.growth.growths.fetch_add(1, Ordering::Relaxed);
                self.growth
                    .refused_by_budget
                    .store(false, StdOrdering::Release);
                tracing::info!(
                    from_buckets = 1u64 << from,
                    to_buckets = 1u64 << self.index.bits(),
                    overflow_buckets = self.index.overflow_buckets(),
                    "index grown"
                );
                Ok(())
            }
            Err(_) => Err(NoGrowth::Failed(Error::IndexFull)),
        }
    }
}
