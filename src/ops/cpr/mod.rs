//! CPR, FASTER's concurrent prefix recovery: the checkpoint state machine in one place. This
//! module holds its states and the rules every operation attempt follows in each; [`driver`]
//! moves it through a checkpoint, [`book`] keeps what it needs to know of sessions and pending
//! updates. The files it writes are [`crate::core::checkpoint`].
//!
//! # The state machine
//! One global word holds `(phase, version)`. Every operation attempt reads it under epoch
//! protection and acknowledges it in its epoch slot; the checkpoint driver moves to the next
//! phase only once every protected thread has acknowledged the current one
//! ([`LightEpoch::all_acked`](crate::core::light_epoch::LightEpoch::all_acked)). With `v` the
//! version being checkpointed:
//!
//! | phase | what operations do | driver |
//! |-------|--------------------|--------|
//! | `Rest` (v) | write records of version v, update in place | - |
//! | `PrepIndexChkpt`, `IndexChkpt` (v) | as in Rest | fuzzy dump of the hash table (index and full kinds) |
//! | `Prepare` (v) | as in Rest, but an operation that meets a record of version v+1 (the chain head, or a disk chain head written after v+1 began) *shifts*: it restarts in v+1 | waits for all acks |
//! | `InProgress` (v+1) | write v+1 records; a record of an older version is never updated in place, it is copied to the tail (and sealed) | records where v+1 starts, waits for acks |
//! | `WaitPending` (v+1) | as InProgress; updates that went to disk in v may still finish in v | waits for those being driven (a blocking call, a session inside `complete_pending`, an async update while polled), never for one nobody drives |
//! | `WaitFlush` (v+1) | as InProgress | closes the tail page: its end `E` is the checkpoint's end; fold-over flushes the log up to E, snapshot copies the in-memory pages below E to a file; then fsync |
//! | `PersistenceCallback` (v+1) | as InProgress | collects each session's commit point, writes the metadata atomically |
//! | `Rest` (v+1) | - | - |
//!
//! # Invariants
//! 1. Along every hash chain, record versions never decrease toward the head: a v operation
//!    that would append after (or update in place) a v+1 record shifts to v+1 instead.
//! 2. No v+1 operation changes a record of version <= v in place while a checkpoint of v runs,
//!    so the log below `E`, read with "version <= v", is exactly the state of version v.
//! 3. Records of version v+1 can only lie at or above `newer_from` (the tail read before
//!    InProgress was published); recovery invalidates those below `E` on disk, so a later
//!    checkpoint of the same log never mistakes them for its own.
//! 4. A session's commit point is `until`: every operation with a serial number `<= until` except
//!    `excluded` (updates that were waiting for the disk and finished in a later version) is in
//!    the checkpoint, and none after it. An operation records its session's progress while it is
//!    still epoch protected, so the driver, which collects after everybody acknowledged the
//!    final phase, never sees an operation that finished in v but is not yet recorded.

pub mod book;
pub mod driver;

use crate::core::address::Address;
use crate::core::light_epoch::{EpochGuard, ShortGuard};
use crate::core::record::{RecordRef, Version};
use crate::device::Disk;
use crate::ops::{Engine, Stop};
use crate::sync::Ordering;

/// Phases of the checkpoint state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// No checkpoint running.
    Rest = 0,
    /// An index checkpoint is about to start.
    PrepIndexChkpt = 1,
    /// The hash table is being dumped.
    IndexChkpt = 2,
    /// Threads learn that version v is ending.
    Prepare = 3,
    /// New operations run in v+1.
    InProgress = 4,
    /// Updates of v that went to disk are finishing.
    WaitPending = 5,
    /// The log up to the checkpoint's end is being made durable.
    WaitFlush = 6,
    /// The metadata is being written.
    PersistenceCallback = 7,
}

impl Phase {
    fn from_u8(p: u8) -> Phase {
        match p {
            1 => Phase::PrepIndexChkpt,
            2 => Phase::IndexChkpt,
            3 => Phase::Prepare,
            4 => Phase::InProgress,
            5 => Phase::WaitPending,
            6 => Phase::WaitFlush,
            7 => Phase::PersistenceCallback,
            _ => Phase::Rest,
        }
    }
}

/// The global `(phase, version)` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemState {
    /// Current phase.
    pub phase: Phase,
    /// Version new operations run in (v+1 from InProgress on).
    pub version: u64,
}

impl SystemState {
    const VERSION_MASK: u64 = (1 << 56) - 1;

    /// Packs into one word.
    #[must_use]
    pub fn word(self) -> u64 {
        (self.phase as u64) << 56 | (self.version & Self::VERSION_MASK)
    }

    /// Unpacks a word.
    #[must_use]
    pub fn from_word(w: u64) -> Self {
        SystemState {
            phase: Phase::from_u8((w >> 56) as u8),
            version: w & Self::VERSION_MASK,
        }
    }
}

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

impl<D: Disk> Engine<D> {
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
    /// (invariant 1 of [`crate::ops::cpr`]).
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
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn state_word_roundtrip() {
        for phase in [Phase::Rest, Phase::Prepare, Phase::PersistenceCallback] {
            let s = SystemState { phase, version: 77 };
            assert_eq!(SystemState::from_word(s.word()), s);
        }
    }
}
