//! The [`Engine`]: the store without types (epoch, index, hybrid log, checkpoint state), and
//! what every operation shares: the retry loop of attempts, chain walks, appends. The
//! operations themselves are the sibling modules; the checkpoint state machine's rules are
//! [`crate::ops::cpr`].

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::light_epoch::{EpochGuard, LightEpoch};
use crate::core::lock_cycle::Cycle;
use crate::core::record::{record_size, LockRefused, RecordInfo, RecordRef, Version};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::hlog::{AllocError, HybridLog};
use crate::index::{EntrySlot, HashIndex, IndexBusy, KeyHash, MemIndex};
use crate::ops::compact::Prefetch;
use crate::ops::cpr::book::Cpr;
use crate::ops::cpr::{OpVersion, Phase, SystemState};
use crate::sync::AtomicU64;

/// The store without types: epoch, index and log.
pub struct Engine<D: Disk> {
    pub(crate) epoch: Arc<LightEpoch>,
    pub(crate) index: MemIndex,
    pub(crate) hlog: HybridLog<D>,
    /// The `(phase, version)` word of the checkpoint state machine.
    pub(super) state: CachePadded<AtomicU64>,
    /// Records of the version after the one being checkpointed lie at or above this address
    /// (`u64::MAX` while none can exist yet).
    pub(super) newer_from: AtomicU64,
    /// Checkpoint bookkeeping: sessions, pending updates, the driver's claim.
    pub(crate) cpr: Cpr,
    /// Copy records that reads fetch from disk to the tail (`Config::copy_reads_to_tail`).
    pub(crate) copy_reads: bool,
    /// Operations a session keeps pending at once (`Config::pending_depth`).
    pub(crate) pending_depth: usize,
    /// The key and value types, recorded by log checkpoints.
    pub(crate) types: crate::core::checkpoint::TypeNames,
    /// Operation counts, per thread.
    pub(crate) counters: crate::ops::counters::Counters,
    /// Truncation and device-space bookkeeping.
    pub(crate) retention: crate::ops::truncate::Retention,
    /// Logged keys' hashes, for compaction and iteration.
    pub(crate) hasher: crate::index::key_hash::KeyHasher,
    /// How the memory budget is split, if one is set (`Config::memory_budget`).
    pub(crate) budget: Option<crate::config::MemoryBudget>,
    /// Growths and budget refusals, maintenance passes.
    pub(crate) growth: crate::ops::growth::GrowthBook,
    /// The read cache, if on (`Config::read_cache`).
    pub(crate) read_cache: Option<crate::hlog::read_cache::ReadCache>,
    /// Whether a cache copy whose source was truncated still holds its key's newest value: R2Kv's
    /// hot tier, whose truncation only follows the move of every newest record to the cold
    /// tier (`read_cache`, invariant 3; docs/DESIGN.md, "Kept copies outlive hot truncation").
    /// Set once, before the store's first operation.
    pub(crate) copies_outlive_truncation: std::sync::atomic::AtomicBool,
    /// The pool the log and the read cache share when their split moves
    /// (`Config::memory_split`; `ops::split`).
    pub(crate) pool: Option<crate::ops::split::Pool>,
}

/// `prev` of the record at `a`, checked to point below it (a chain that does not go backwards
/// is corrupt, and following it could loop).
///
/// # Errors
/// [`Error::Corrupt`] naming `a`.
#[inline(always)]
pub(crate) fn backwards(a: Address, prev: Address) -> Result<Address> {
    if prev >= a {
        return Err(Error::Corrupt {
            address: a.raw(),
            reason: "chain does not go backwards".into(),
        });
    }
    Ok(prev)
}

/// [`Engine::trace`] in any log (R2Kv's cold log too): walks the chain from `from` while
/// addresses are `>= floor`, which the caller keeps at or above `log`'s head under its
/// protection.
#[inline]
pub(crate) fn trace<'l, D: Disk>(
    log: &'l HybridLog<D>,
    from: Address,
    key: &Encoded,
    floor: Address,
) -> Result<(Address, Option<RecordRef<'l>>)> {
    let mut a = from;
    while !a.is_invalid() && a >= floor {
        let rec = log.record(a)?;
        if rec.key_is(key) {
            return Ok((a, Some(rec)));
        }
        a = backwards(a, rec.info().prev())?;
    }
    Ok((a, None))
}

/// Attempts a nested operation makes without moving the epoch (after lost races, records
/// locked by other writers) before it fails with [`Error::Busy`]; each after a backoff, mostly a
/// yield.
pub(crate) const NESTED_RETRIES: u32 = 1024;

/// Why an attempt stopped without a result.
pub(crate) enum Stop {
    /// Refresh the epoch and try again.
    Retry,
    /// Try again once the epoch moved on (the log must roll to a new page, the index must
    /// finish switching tables). A nested operation cannot wait for that: see [`Engine::retry`].
    Wait,
    /// The operation met a record of a newer version: retry in the current version.
    Shift,
    /// A hard error.
    Fail(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Fail(e)
    }
}

impl From<AllocError> for Stop {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::RetryLater => Stop::Wait,
            AllocError::Fatal(e) => Stop::Fail(e),
        }
    }
}

impl From<Cycle> for Stop {
    fn from(c: Cycle) -> Self {
        Stop::Fail(c.into())
    }
}

impl From<LockRefused> for Stop {
    fn from(e: LockRefused) -> Self {
        match e {
            LockRefused::Sealed => Stop::Retry,
            LockRefused::HeldHere => Stop::Fail(Error::Busy(
                "an update's function updated its own key: the record is locked by this thread \
                 (the update that runs the function)",
            )),
            LockRefused::Cycle => Stop::from(Cycle),
        }
    }
}

impl From<IndexBusy> for Stop {
    fn from(e: IndexBusy) -> Self {
        match e {
            IndexBusy::RetryLater => Stop::Wait,
            IndexBusy::Full => Stop::Fail(Error::IndexFull),
        }
    }
}

impl<D: Disk> Engine<D> {
    /// An engine over an index of `2^index_bits` buckets and a log.
    pub(crate) fn new(epoch: Arc<LightEpoch>, index_bits: u32, hlog: HybridLog<D>) -> Self {
        Self::with_index(epoch.clone(), MemIndex::new(index_bits, epoch), hlog)
    }

    /// An engine over an existing index (recovery builds it first).
    pub(crate) fn with_index(epoch: Arc<LightEpoch>, index: MemIndex, hlog: HybridLog<D>) -> Self {
        Self {
            index,
            epoch,
            hlog,
            state: CachePadded::new(AtomicU64::new(
                SystemState {
                    phase: Phase::Rest,
                    version: 1,
                }
                .word(),
            )),
            newer_from: AtomicU64::new(u64::MAX),
            cpr: Cpr::default(),
            copy_reads: false,
            pending_depth: 128,
            types: crate::core::checkpoint::TypeNames::default(),
            counters: crate::ops::counters::Counters::default(),
            retention: crate::ops::truncate::Retention::default(),
            hasher: crate::index::key_hash::KeyHasher::default(),
            budget: None,
            growth: crate::ops::growth::GrowthBook::default(),
            read_cache: None,
            copies_outlive_truncation: std::sync::atomic::AtomicBool::new(false),
            pool: None,
        }
    }

    /// Turns the read cache on with `bytes` of memory (0: off), beside a log that keeps
    /// `log_pages` pages in memory (fewer than its frames when the split moves: the log's
    /// frames then cover the pool, `ops::split`).
    pub(crate) fn set_read_cache(&mut self, bytes: u64, log_pages: u64, config: &crate::Config) {
        if bytes > 0 && config.read_cache_keeps_evicted {
            self.hlog.keep_read_only_page();
        }
        let page_bits = self.hlog.geometry().page_bits;
        let log_bytes = log_pages << page_bits;
        let movable = (bytes > 0 && config.memory_split != crate::MemorySplit::Fixed).then(|| {
            let pool = log_bytes + bytes;
            self.pool = Some(crate::ops::split::Pool {
                bytes: pool,
                log_cap: self.hlog.geometry().frames.into(),
                moves: 0.into(),
                moving: false.into(),
            });
            crate::hlog::read_cache::Movable { pool_bytes: pool }
        });
        self.hlog.set_live_pages(log_pages);
        self.read_cache = (bytes > 0).then(|| {
            crate::hlog::read_cache::ReadCache::new(
                bytes,
                self.epoch.clone(),
                config.read_cache_admission,
                config
                    .read_cache_keeps_evicted
                    .then_some(crate::hlog::read_cache::LogShape {
                        memory_bytes: log_bytes,
                        frames: log_pages,
                    }),
                movable,
            )
        });
    }

    /// Sets the memory budget: the index is bounded by its share.
    pub(crate) fn set_budget(&mut self, budget: Option<crate::config::MemoryBudget>) {
        self.budget = budget;
        self.index.set_memory_limit(budget.map(|b| b.index));
    }

    /// Protects the calling thread. The checkpoint state is read (and acknowledged) per
    /// attempt by [`Engine::op_version`], which every operation runs first; a protection that
    /// runs no attempt holds back a phase change only until it ends.
    pub(crate) fn protect(&self) -> Result<EpochGuard<'_>> {
        if self.hlog.over_limit() {
            self.slow_down();
        }
        if let Some(cache) = &self.read_cache {
            if cache.keeps_below(self.hlog.geometry().page(self.hlog.safe_read_only())) {
                self.keep_evicted(cache);
            }
        }
        self.epoch.protect()
    }

    /// Pauses an operation about to start while the log is past its hard limit
    /// ([`crate::LogCompaction`]), unless the thread compacts or is inside an operation.
    #[cold]
    fn slow_down(&self) {
        if !crate::ops::compact::compacting_here() && !self.epoch.is_protected_here() {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// Runs `attempt` until it stops with something other than [`Stop::Retry`] or
    /// [`Stop::Shift`], refreshing the epoch between attempts. Returns the result and the version
    /// the successful attempt ran in. A shift drops `pin`.
    ///
    /// Each attempt gets the guard by a reference that cannot outlive it (the closure is
    /// higher-ranked over that borrow), so nothing it looked up in the index survives into the
    /// refresh before the next attempt.
    pub(crate) fn retry<T>(
        &self,
        g: &EpochGuard<'_>,
        pin: &mut Option<u64>,
        mut attempt: impl FnMut(&EpochGuard<'_>, OpVersion) -> Result<T, Stop>,
    ) -> Result<(T, u64)> {
        let mut round = 0;
        loop {
            let ov = self.op_version(g, *pin);
            match attempt(g, ov) {
                Ok(v) => return Ok((v, ov.version)),
                Err(Stop::Fail(e)) => return Err(e),
                Err(stop) => {
                    if matches!(stop, Stop::Shift) {
                        *pin = None;
                    }
                    if g.is_nested() {
                        // The outer attempt relies on the slot's epoch: never move it. What
                        // needs the epoch to move will not happen while the outer one holds it.
                        if matches!(stop, Stop::Wait) || round >= NESTED_RETRIES {
                            return Err(Error::Busy(
                                "an operation nested inside another's function cannot wait for \
                                 the log or index to move on: the outer operation holds them",
                            ));
                        }
                        self.epoch.drain();
                    } else {
                        // SAFETY: the slot is this thread's (`g` is not `Send`), it is the only
                        // protection of the slot (not nested), and the failed attempt's lookups
                        // under `g` ended with it (see above).
                        unsafe { self.epoch.refresh_at(g.slot()) };
                    }
                    crate::sync::backoff(&mut round);
                }
            }
        }
    }

    /// The index entry for `hash`, created if absent; it borrows from `g`.
    pub(crate) fn entry_for_update<'g>(
        &'g self,
        g: &'g EpochGuard<'_>,
        hash: KeyHash,
    ) -> Result<EntrySlot<'g>, Stop> {
        Ok(self.index.find_or_create_entry(g, hash)?)
    }

    /// Walks the chain from `from` while addresses are `>= floor` (and in memory: the caller
    /// passes a floor at or above head), returning the key's record if met, and where the walk
    /// stopped.
    #[inline]
    pub(crate) fn trace(
        &self,
        from: Address,
        key: &Encoded,
        floor: Address,
    ) -> Result<(Address, Option<RecordRef<'_>>)> {
        trace(&self.hlog, from, key, floor)
    }

    /// Writes a new record at the tail, chained to `prev`. Not yet published.
    pub(crate) fn append(
        &self,
        ov: OpVersion,
        prev: Address,
        key: &Encoded,
        value: Option<&Encoded>,
    ) -> Result<(Address, RecordRef<'_>), Stop> {
        let size = record_size(key.len(), value.map_or(0, |v| v.len().next_multiple_of(8)));
        if size > self.hlog.page_size() {
            return Err(Stop::Fail(Error::RecordTooLarge {
                size,
                page_size: self.hlog.page_size(),
            }));
        }
        let address = self.hlog.allocate(size)?;
        let info = RecordInfo::new(prev, Version::of(ov.version));
        let rec = RecordRef::write_new(self.hlog.space(address, size), info, key, value);
        if let Err(stop) = self.check_shift(ov, prev) {
            // The space is taken either way: an invalid record keeps the page parseable past
            // it (a zero hole would end every scan of the page there: recovery's replay and
            // compaction would miss the records after it).
            rec.set_invalid();
            return Err(stop);
        }
        Ok((address, rec))
    }

    /// Appends a record and swings `entry` to it; on a lost CAS the record is marked invalid
    /// and the attempt retries.
    pub(crate) fn append_and_swing(
        &self,
        ov: OpVersion,
        entry: &mut EntrySlot<'_>,
        key: &Encoded,
        value: Option<&Encoded>,
    ) -> Result<(), Stop> {
        let (address, rec) = self.append(ov, self.log_head(entry)?, key, value)?;
        let replaced = match entry.target() {
            crate::index::hash_bucket::Target::Cache(copy) => Some(copy),
            crate::index::hash_bucket::Target::Log(_) => None,
        };
        if entry.try_update(address).is_ok() {
            if let Some(copy) = replaced {
                self.note_replaced_copy(copy, key);
            }
            Ok(())
        } else {
            rec.set_invalid();
            Err(Stop::Retry)
        }
    }

    /// Prefetches what the operations on `hashes` will touch first: every bucket, then (once
    /// those are on their way) every chain head in memory, so that the cache misses of a batch
    /// overlap instead of following one another, under the caller's protection `g`.
    pub(crate) fn prefetch(
        &self,
        g: &EpochGuard<'_>,
        hashes: impl Iterator<Item = KeyHash> + Clone,
    ) {
        for h in hashes.clone() {
            self.prefetch_stage(g, h, Prefetch::Buckets, 1);
        }
        for h in hashes {
            self.prefetch_stage(g, h, Prefetch::Records, 1);
        }
    }

    /// [`crate::ops::compact::Mover::prefetch`] for this store's index and log: `key`'s bucket,
    /// or the record its entry leads to (the whole record: `record_bytes` from its start).
    pub(crate) fn prefetch_key(&self, key: &[u8], stage: Prefetch) {
        self.prefetch_hash(self.hasher.rehash(key).ok().map(KeyHash::new), stage, 64);
    }

    /// As [`Engine::prefetch_key`] for a known hash (`None`: nothing), prefetching
    /// `record_bytes` of the record.
    pub(crate) fn prefetch_hash(
        &self,
        hash: Option<KeyHash>,
        stage: Prefetch,
        record_bytes: usize,
    ) {
        if let (Some(hash), Ok(g)) = (hash, self.epoch.protect()) {
            self.prefetch_stage(&g, hash, stage, record_bytes);
        }
    }

    /// One stage of a prefetch under `g`: `hash`'s bucket, or `record_bytes` of the record its
    /// entry leads to (by then its bucket is on its way or cached).
    fn prefetch_stage(
        &self,
        g: &EpochGuard<'_>,
        hash: KeyHash,
        stage: Prefetch,
        record_bytes: usize,
    ) {
        match stage {
            Prefetch::Buckets => self.index.prefetch(g, hash),
            Prefetch::Records => {
                if let Ok(Some(e)) = self.index.find_entry(g, hash) {
                    if let crate::index::hash_bucket::Target::Log(a) = e.target() {
                        self.hlog.prefetch_span(a, record_bytes);
                    }
                }
            }
        }
    }

    /// Whether a chain continues on disk at `a` (below head, inside the log).
    pub(crate) fn on_disk(&self, a: Address) -> bool {
        !a.is_invalid() && a >= self.hlog.begin()
    }
}
