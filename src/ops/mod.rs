//! The untyped engine: FASTER's operations over encoded keys and values.
//!
//! One file per operation: [`read`], [`upsert`], [`rmw`] (read-modify-write and conditional
//! insert share the "find the latest record, decide, append with CAS" core), [`delete`], and
//! [`pending`] (finishing operations whose records are on disk: blocking, async, sessions).
//! [`fast`] finishes the common in-memory case of one-word keys and values in far fewer
//! instructions, or hands it to the general path unchanged.
//!
//! # How an operation runs
//! - An *attempt* runs inside one epoch protection and never refreshes in the middle, so the
//!   log markers and index table it read stay meaningful for the whole attempt.
//! - Where FASTER would return RETRY_NOW/RETRY_LATER (index switching tables, next page not
//!   open yet, record in the fuzzy region, lost CAS), the attempt is abandoned, the epoch
//!   refreshed (which runs the flush/evict actions that unblock it), and a new attempt starts.
//! - Where FASTER would go PENDING, the attempt returns the disk address to fetch, with what it
//!   saw of the index. The caller drops its protection while the I/O runs, then continues; an
//!   update that finds the index entry changed meanwhile starts over.
//! - Index lookups take the attempt's guard and what they return borrows from it
//!   ([`crate::index::HashIndex`]), so an entry cannot be used outside its protection.
//! - Nested operations (an RMW function that calls the store) share the thread's epoch slot.
//!   A nested attempt never moves that slot to a newer epoch: the outer attempt still holds its
//!   index entry and record, which a refresh would let the log evict or the index free. It
//!   retries in place (a lost CAS resolves so, within [`NESTED_RETRIES`] rounds); when what it
//!   waits for needs the epoch to move on ([`Stop::Wait`]: a page to be evicted for the log to
//!   roll, an index growth to finish), which the outer protection prevents, it fails at once
//!   with [`Error::Busy`].

pub mod checkpoint;
pub mod counters;
pub mod delete;
pub mod fast;
pub mod pending;
pub mod read;
pub mod recover;
pub mod rmw;
pub mod upsert;

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::core::address::Address;
use crate::core::checkpoint::{Phase, SystemState};
use crate::core::codec::Encoded;
use crate::core::light_epoch::{EpochGuard, LightEpoch, ShortGuard};
use crate::core::record::{record_size, RecordInfo, RecordRef, Version};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::hlog::{AllocError, HybridLog};
use crate::index::{EntrySlot, HashIndex, IndexBusy, KeyHash, MemIndex};
use crate::ops::checkpoint::Cpr;
use crate::sync::{AtomicU64, Ordering};

/// The store without types: epoch, index and log.
pub struct Engine<D: Disk> {
    pub(crate) epoch: Arc<LightEpoch>,
    pub(crate) index: MemIndex,
    pub(crate) hlog: HybridLog<D>,
    /// The `(phase, version)` word of the checkpoint state machine.
    state: CachePadded<AtomicU64>,
    /// Records of the version after the one being checkpointed lie at or above this address
    /// (`u64::MAX` while none can exist yet).
    newer_from: AtomicU64,
    /// Checkpoint bookkeeping: sessions, pending updates, the driver's claim.
    pub(crate) cpr: Cpr,
    /// Copy records that reads fetch from disk to the tail (`Config::copy_reads_to_tail`).
    pub(crate) copy_reads: bool,
    /// The key and value types, recorded by log checkpoints.
    pub(crate) types: crate::core::checkpoint::TypeNames,
    /// Operation counts, per thread.
    pub(crate) counters: counters::Counters,
}

/// Attempts a nested operation makes without moving the epoch (after lost races, records
/// locked by other writers) before it fails with [`Error::Busy`]; each after a backoff, mostly a
/// yield.
pub(crate) const NESTED_RETRIES: u32 = 1024;

/// Which rule of the checkpoint state machine an attempt runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// No checkpoint between versions: update in place freely.
    Free,
    /// Version v is ending (Prepare, or an update pinned to v): meeting a record of v+1 means
    /// the operation must restart in v+1.
    ShiftOnNewer,
    /// Version v+1 while v is being checkpointed: records of older versions are copied, never
    /// updated in place.
    CopyOlder,
}

impl Rule {
    /// The rule of a fresh attempt in `phase`.
    #[inline(always)]
    fn of(phase: Phase) -> Rule {
        match phase {
            Phase::Rest | Phase::PrepIndexChkpt | Phase::IndexChkpt => Rule::Free,
            Phase::Prepare => Rule::ShiftOnNewer,
            _ => Rule::CopyOlder,
        }
    }
}

/// The version an attempt writes in, and its rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpVersion {
    pub(crate) version: u64,
    pub(crate) rule: Rule,
}

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
            types: crate::core::checkpoint::TypeNames::default(),
            counters: counters::Counters::default(),
        }
    }

    /// The current state of the checkpoint state machine.
    pub(crate) fn system_state(&self) -> SystemState {
        SystemState::from_word(self.state.load(Ordering::Acquire))
    }

    /// Publishes a new state (the checkpoint driver only). SeqCst, then a fence: the Dekker
    /// handshake with `protect` + `op_version`, so a thread either reads the new state or is
    /// seen protected with an older acknowledgement by [`LightEpoch::all_acked`].
    pub(crate) fn set_system_state(&self, s: SystemState) {
        self.state.store(s.word(), Ordering::SeqCst);
        crate::sync::fence(Ordering::SeqCst);
    }

    /// Sets where records of the next version may start (the checkpoint driver only).
    pub(crate) fn set_newer_from(&self, a: u64) {
        self.newer_from.store(a, Ordering::SeqCst);
    }

    /// Protects the calling thread. The checkpoint state is read (and acknowledged) per
    /// attempt by [`Engine::op_version`], which every operation runs first; a protection that
    /// runs no attempt holds back a phase change only until it ends.
    pub(crate) fn protect(&self) -> Result<EpochGuard<'_>> {
        self.epoch.protect()
    }

    /// Reads (and acknowledges) the state for one attempt. `pin`: the version an update that
    /// went to disk started in; it finishes there while the checkpoint still waits for it.
    pub(crate) fn op_version(&self, g: &EpochGuard<'_>, pin: Option<u64>) -> OpVersion {
        let word = self.state.load(Ordering::Acquire);
        self.epoch.ack_phase(g.slot(), word);
        let s = SystemState::from_word(word);
        if let Some(p) = pin {
            if p + 1 == s.version && matches!(s.phase, Phase::InProgress | Phase::WaitPending) {
                return OpVersion {
                    version: p,
                    rule: Rule::ShiftOnNewer,
                };
            }
        }
        OpVersion {
            version: s.version,
            rule: Rule::of(s.phase),
        }
    }

    /// Reads and acknowledges the state word for one fast update (see [`fast`]); whether its
    /// rule is [`Rule::Free`].
    #[inline(always)]
    pub(crate) fn acked_rule_is_free(&self, g: &ShortGuard<'_>) -> bool {
        let word = self.state.load(Ordering::Acquire);
        g.ack_phase(word);
        Rule::of(SystemState::from_word(word).phase) == Rule::Free
    }

    /// Whether an attempt under `ov` must shift to the next version because the chain it is
    /// about to extend (head `head_addr`) already holds a record of the next version
    /// (invariant 1 of [`crate::core::checkpoint`]).
    pub(crate) fn check_shift(&self, ov: OpVersion, head_addr: Address) -> Result<(), Stop> {
        if ov.rule != Rule::ShiftOnNewer
            || head_addr.is_invalid()
            || head_addr.raw() < self.newer_from.load(Ordering::Acquire)
        {
            return Ok(());
        }
        if head_addr < self.hlog.head() {
            // On disk and possibly newer: shifting is always allowed once newer records exist.
            return Err(Stop::Shift);
        }
        if self.hlog.record(head_addr)?.info().version() == Version::of(ov.version + 1) {
            return Err(Stop::Shift);
        }
        Ok(())
    }

    /// Whether a record at `a` (in the mutable region) may be updated in place under `ov`.
    pub(crate) fn may_update_in_place(
        &self,
        ov: OpVersion,
        a: Address,
        rec: &RecordRef<'_>,
    ) -> bool {
        match ov.rule {
            Rule::Free | Rule::ShiftOnNewer => true,
            Rule::CopyOlder => {
                a.raw() >= self.newer_from.load(Ordering::Acquire)
                    && rec.info().version() == Version::of(ov.version)
            }
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
        let mut a = from;
        while !a.is_invalid() && a >= floor {
            let rec = self.hlog.record(a)?;
            if rec.key_is(key) {
                return Ok((a, Some(rec)));
            }
            let prev = rec.info().prev();
            if prev >= a {
                return Err(Error::Corrupt {
                    address: a.raw(),
                    reason: "chain does not go backwards".into(),
                });
            }
            a = prev;
        }
        Ok((a, None))
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
        self.check_shift(ov, prev)?;
        let info = RecordInfo::new(prev, Version::of(ov.version));
        let rec = RecordRef::write_new(self.hlog.space(address, size), info, key, value);
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
        let (address, rec) = self.append(ov, entry.address(), key, value)?;
        if entry.try_update(address).is_ok() {
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
            self.index.prefetch(g, h);
        }
        for h in hashes {
            if let Ok(Some(e)) = self.index.find_entry(g, h) {
                self.hlog.prefetch(e.address());
            }
        }
    }

    /// Whether a chain continues on disk at `a` (below head, inside the log).
    pub(crate) fn on_disk(&self, a: Address) -> bool {
        !a.is_invalid() && a >= self.hlog.begin()
    }
}
