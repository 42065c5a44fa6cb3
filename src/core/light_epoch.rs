//! LightEpoch: FASTER's epoch protection with trigger actions.
//!
//! A thread *protects* itself before touching shared log memory or the index and *unprotects*
//! after. A writer that changes shared state (moves a log marker, retires a bucket) then calls
//! [`LightEpoch::bump_epoch`] with an *action*; the action runs once every thread that could
//! have seen the old state has moved past the old epoch.
//!
//! # Invariants
//! 1. `current` only grows; it starts at 1. An entry's `local` is 0 (unprotected) or an epoch
//!    value read from `current`.
//! 2. `safe_to_reclaim` only grows and is always `< min(local of protected entries)` at the time
//!    it was computed, and `< current`.
//! 3. An action bumped at epoch `e` (the value of `current` before the bump) runs exactly once,
//!    and only after `safe_to_reclaim >= e`, i.e. after every thread protected at `<= e` has
//!    refreshed or unprotected.
//! 4. Protect is a Dekker handshake with bumpers: the protecting thread stores its `local` and
//!    then issues a SeqCst fence before reading shared state; a bumper changes shared state,
//!    bumps (SeqCst RMW) and fences before scanning the table. So either the scan sees the
//!    thread's epoch (and its action waits), or the thread sees the new shared state.
//! 5. A drain slot is `FREE`, `LOCKED` (being filled or emptied by one thread) or holds the
//!    epoch of its action; only the thread that CASed it to `LOCKED` touches the action cell.
//! 6. When every drain slot is taken, an action goes onto an overflow stack (a Treiber stack
//!    that is only pushed to, or taken whole with a swap, so it has no ABA problem); draining
//!    takes the whole stack, runs what is ready and pushes the rest back. A bumper therefore
//!    never waits for a slot: waiting would deadlock when every bumper is itself protected at
//!    an old epoch (the threads that would have to refresh are the ones waiting).
//!
//! Per-thread *phase acknowledgement* (`ack_phase`, `all_acked`) is the hook the checkpoint and
//! index-growth state machines use: a global phase moves on only after every protected thread has
//! acknowledged the current one. A thread that waits for such a phase change must therefore not
//! be protected itself ([`LightEpoch::is_protected_here`] tells).
//!
//! # Guards carry the rule
//! Memory that an epoch action may free (the index's tables) is only reachable through functions
//! that take a [`Protected`] witness (`&EpochGuard` or `&ShortGuard`) and return references that
//! borrow from it, as crossbeam-epoch's `Atomic::load(&self, ord, &'g Guard) -> Shared<'g, T>`:
//! reading without protection, or keeping what was read past the guard, does not compile.
//! Moving a protection to a newer epoch needs `&mut` on its guard ([`EpochGuard::refresh`]); the
//! explicit-slot functions (`protect_at`, `unprotect_at`, `refresh_at`), which could end or move
//! another guard's protection, are `unsafe`.

use crossbeam_utils::CachePadded;

use crate::core::record::LockOwner;
use crate::core::status::{Error, Result};
use crate::sync::modeled::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering, UnsafeCell};

/// Maximum number of threads that may be inside one store at once (the table's size).
pub const MAX_THREADS: usize = 128;
/// Number of trigger actions that may wait at once before a bumper has to drain first.
const DRAIN_SLOTS: usize = 256;

const FREE: u64 = u64::MAX;
const LOCKED: u64 = u64::MAX - 1;
const UNPROTECTED: u64 = 0;

/// An epoch number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Epoch(pub u64);

type Action = Box<dyn FnOnce() + Send + 'static>;

struct Entry {
    /// The epoch this thread is protected at, or 0.
    local: AtomicU64,
    /// Nesting depth of protect calls; touched only by the owning thread.
    depth: AtomicU64,
    /// The last global phase word this thread acknowledged.
    phase: AtomicU64,
    /// What the slot's thread writes into the record locks it takes (never changes): kept
    /// here, in the line a short protection has just written, so a fast path gets it with one
    /// plain load instead of computing it from the slot number.
    lock_owner: LockOwner,
}

impl Entry {
    fn new(slot: usize) -> Self {
        Self {
            local: AtomicU64::new(UNPROTECTED),
            depth: AtomicU64::new(0),
            phase: AtomicU64::new(0),
            lock_owner: LockOwner::of_slot(slot),
        }
    }
}

struct DrainSlot {
    epoch: AtomicU64,
    action: UnsafeCell<Option<Action>>,
}

/// An action that found every drain slot taken (invariant 6).
struct Deferred {
    epoch: u64,
    action: Action,
    next: *mut Deferred,
}

/// The epoch framework of one store.
pub struct LightEpoch {
    table: Box<[CachePadded<Entry>]>,
    current: CachePadded<AtomicU64>,
    safe_to_reclaim: CachePadded<AtomicU64>,
    drain: Box<[DrainSlot]>,
    overflow: AtomicPtr<Deferred>,
    drain_count: CachePadded<AtomicUsize>,
}

// SAFETY: all shared state is atomic except the action cells, which are only accessed by the
// single thread that owns the slot's LOCKED state (invariant 5), and the deferred nodes, which
// only the thread that took them off the stack touches (invariant 6); actions are `Send`.
unsafe impl Sync for LightEpoch {}
// SAFETY: as above; the actions moved across threads are `Send`.
unsafe impl Send for LightEpoch {}

impl Default for LightEpoch {
    fn default() -> Self {
        Self::new()
    }
}

impl LightEpoch {
    /// An epoch table of [`MAX_THREADS`] entries.
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(MAX_THREADS, DRAIN_SLOTS)
    }

    /// An epoch table with `threads` entries and `drain_slots` action slots (loom models use
    /// tiny ones).
    #[must_use]
    pub fn with_capacity(threads: usize, drain_slots: usize) -> Self {
        Self {
            table: (0..threads)
                .map(|slot| CachePadded::new(Entry::new(slot)))
                .collect(),
            current: CachePadded::new(AtomicU64::new(1)),
            safe_to_reclaim: CachePadded::new(AtomicU64::new(0)),
            drain: (0..drain_slots.max(1))
                .map(|_| DrainSlot {
                    epoch: AtomicU64::new(FREE),
                    action: UnsafeCell::new(None),
                })
                .collect(),
            overflow: AtomicPtr::new(std::ptr::null_mut()),
            drain_count: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Number of thread slots.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.table.len()
    }

    /// The current epoch.
    #[must_use]
    pub fn current(&self) -> Epoch {
        Epoch(self.current.load(Ordering::Acquire))
    }

    /// The newest epoch all of whose actions may run.
    #[must_use]
    pub fn safe_to_reclaim(&self) -> Epoch {
        Epoch(self.safe_to_reclaim.load(Ordering::Acquire))
    }

    /// Protects the calling thread (its slot from [`thread_slot`]); returns a guard that
    /// unprotects on drop. Nested guards are allowed.
    ///
    /// # Errors
    /// [`Error::TooManyThreads`] when more threads than the table holds use the store at once.
    pub fn protect(&self) -> Result<EpochGuard<'_>> {
        let slot = thread_slot()?;
        if slot >= self.table.len() {
            return Err(Error::TooManyThreads(self.table.len()));
        }
        // SAFETY: `slot` is the calling thread's own (thread_slot), and the guard is not `Send`,
        // so only this thread touches the slot's nesting counter.
        unsafe { self.protect_at(slot) };
        Ok(EpochGuard {
            epoch: self,
            slot,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Protects the calling thread for one short operation (the one-word fast paths of
    /// `ops::fast`) with less bookkeeping than [`LightEpoch::protect`]. `None` where the
    /// general protect must be used instead: the thread has no slot yet (its first operation
    /// takes one), or it is already protected (a nested call keeps the outer protection's
    /// bookkeeping).
    ///
    /// The same handshake as `protect` (invariant 4), with the nesting counter set to 1 and
    /// back to 0 by plain stores (it was 0), so a protection nested inside (an RMW function
    /// that calls the store) nests as usual.
    #[inline(always)]
    #[must_use]
    pub fn protect_short(&self) -> Option<ShortGuard<'_>> {
        let slot = slots::cached()?;
        let entry = self.table.get(slot)?;
        if entry.depth.load(Ordering::Relaxed) != 0 {
            return None;
        }
        entry.depth.store(1, Ordering::Relaxed);
        entry
            .local
            .store(self.current.load(Ordering::Acquire), Ordering::Relaxed);
        // Invariant 4: publish `local` before reading any shared state.
        fence(Ordering::SeqCst);
        Some(ShortGuard {
            epoch: self,
            entry,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Protects slot `slot` (explicit-slot form, for models and tests).
    ///
    /// # Safety
    /// No other thread uses `slot` meanwhile (it is the caller's own, from [`thread_slot`], or a
    /// model hands out slots itself): the nesting counter is the owning thread's alone, and a
    /// racing update of it could end the protection a guard of that thread relies on.
    ///
    /// # Panics
    /// If `slot >= capacity()`.
    pub unsafe fn protect_at(&self, slot: usize) -> Epoch {
        let entry = &self.table[slot];
        let depth = entry.depth.load(Ordering::Relaxed);
        entry.depth.store(depth + 1, Ordering::Relaxed);
        if depth > 0 {
            return Epoch(entry.local.load(Ordering::Relaxed));
        }
        let e = self.current.load(Ordering::Acquire);
        entry.local.store(e, Ordering::Relaxed);
        // Invariant 4: publish `local` before reading any shared state.
        fence(Ordering::SeqCst);
        Epoch(e)
    }

    /// Unprotects slot `slot` (the outermost of nested protections clears it).
    ///
    /// # Safety
    /// As for [`LightEpoch::protect_at`], and the call matches an earlier `protect_at` of the
    /// caller that no [`EpochGuard`] or [`ShortGuard`] owns: ending a guard's protection would
    /// leave what was read under it dangling.
    pub unsafe fn unprotect_at(&self, slot: usize) {
        let entry = &self.table[slot];
        let depth = entry.depth.load(Ordering::Relaxed);
        debug_assert!(depth > 0, "unprotect without protect");
        entry
            .depth
            .store(depth.saturating_sub(1), Ordering::Relaxed);
        if depth <= 1 {
            entry.local.store(UNPROTECTED, Ordering::Release);
        }
    }

    /// Whether `slot` is protected.
    #[must_use]
    pub fn is_protected_at(&self, slot: usize) -> bool {
        self.table[slot].local.load(Ordering::Relaxed) != UNPROTECTED
    }

    /// Whether the calling thread is protected on this epoch (inside an operation of its store,
    /// e.g. in an RMW function). Such a thread must not wait for a phase change or an epoch
    /// action: they wait for it. A thread without a slot yet is not protected (no slot is taken
    /// here).
    #[must_use]
    pub fn is_protected_here(&self) -> bool {
        slots::cached().is_some_and(|s| s < self.table.len() && self.is_protected_at(s))
    }

    /// Moves a protected slot to the current epoch and runs the actions that became ready.
    ///
    /// # Safety
    /// As for [`LightEpoch::protect_at`], and nothing read under the slot's current protection
    /// (by any of its nested guards) is used afterwards: actions bumped since may free it.
    pub unsafe fn refresh_at(&self, slot: usize) {
        let entry = &self.table[slot];
        if entry.local.load(Ordering::Relaxed) != UNPROTECTED {
            let e = self.current.load(Ordering::Acquire);
            entry.local.store(e, Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
        if self.drain_count.load(Ordering::Acquire) > 0 {
            self.drain();
        }
    }

    /// Increments the epoch and queues `action` to run once every thread has left the old one.
    /// The action may run inside this call (when no thread holds the old epoch) or later, on
    /// whichever thread refreshes, unprotects through a guard or drains.
    pub fn bump_epoch(&self, action: impl FnOnce() + Send + 'static) {
        let prior = self.current.fetch_add(1, Ordering::SeqCst);
        let mut action: Option<Action> = Some(Box::new(action));
        for slot in self.drain.iter() {
            if slot
                .epoch
                .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // SAFETY: this thread moved the slot FREE -> LOCKED, so it alone owns the cell
                // until it publishes the epoch below (invariant 5).
                slot.action
                    .with_mut(|cell| unsafe { *cell = action.take() });
                self.drain_count.fetch_add(1, Ordering::AcqRel);
                slot.epoch.store(prior, Ordering::Release);
                break;
            }
        }
        if let Some(action) = action {
            // Every slot is taken (invariant 6).
            self.drain_count.fetch_add(1, Ordering::AcqRel);
            self.push_deferred(Box::new(Deferred {
                epoch: prior,
                action,
                next: std::ptr::null_mut(),
            }));
        }
        self.drain();
    }

    fn push_deferred(&self, node: Box<Deferred>) {
        let node = Box::into_raw(node);
        let mut head = self.overflow.load(Ordering::Acquire);
        loop {
            // SAFETY: `node` is ours until the CAS publishes it.
            unsafe { (*node).next = head };
            match self.overflow.compare_exchange_weak(
                head,
                node,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Runs the deferred actions that are ready (`epoch <= safe`), pushing the others back.
    fn drain_deferred(&self, safe: u64) {
        if self.overflow.load(Ordering::Acquire).is_null() {
            return;
        }
        let mut list = self.overflow.swap(std::ptr::null_mut(), Ordering::AcqRel);
        while !list.is_null() {
            // SAFETY: the swap took the whole stack, so this thread alone owns its nodes; each
            // was made by Box::into_raw in push_deferred.
            let mut node = unsafe { Box::from_raw(list) };
            list = node.next;
            node.next = std::ptr::null_mut();
            if node.epoch <= safe {
                self.drain_count.fetch_sub(1, Ordering::AcqRel);
                (node.action)();
            } else {
                self.push_deferred(node);
            }
        }
    }

    /// Increments the epoch without an action.
    pub fn bump(&self) -> Epoch {
        Epoch(self.current.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Recomputes the safe-to-reclaim epoch and runs every action it makes ready.
    pub fn drain(&self) {
        let safe = self.compute_safe_to_reclaim();
        for slot in self.drain.iter() {
            let e = slot.epoch.load(Ordering::Acquire);
            if e >= LOCKED || e > safe {
                continue;
            }
            if slot
                .epoch
                .compare_exchange(e, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // SAFETY: this thread moved the slot to LOCKED, so it alone owns the cell.
                let action = slot.action.with_mut(|cell| unsafe { (*cell).take() });
                slot.epoch.store(FREE, Ordering::Release);
                self.drain_count.fetch_sub(1, Ordering::AcqRel);
                if let Some(action) = action {
                    action();
                }
            }
        }
        self.drain_deferred(safe);
    }

    /// Number of actions waiting.
    #[must_use]
    pub fn pending_actions(&self) -> usize {
        self.drain_count.load(Ordering::Acquire)
    }

    fn compute_safe_to_reclaim(&self) -> u64 {
        // Invariant 4, bumper side: the shared-state change and the bump precede this scan.
        fence(Ordering::SeqCst);
        let mut oldest = self.current.load(Ordering::Acquire);
        for entry in self.table.iter() {
            let local = entry.local.load(Ordering::Acquire);
            if local != UNPROTECTED && local < oldest {
                oldest = local;
            }
        }
        let safe = oldest - 1;
        self.safe_to_reclaim
            .fetch_max(safe, Ordering::AcqRel)
            .max(safe)
    }

    /// Records that `slot` has acknowledged global phase word `phase`.
    pub fn ack_phase(&self, slot: usize, phase: u64) {
        self.table[slot].phase.store(phase, Ordering::Release);
    }

    /// Whether every protected thread has acknowledged `phase` (unprotected threads pick up the
    /// new phase when they next protect, so they count as acknowledged).
    #[must_use]
    pub fn all_acked(&self, phase: u64) -> bool {
        self.table.iter().all(|e| {
            e.local.load(Ordering::Acquire) == UNPROTECTED
                || e.phase.load(Ordering::Acquire) == phase
        })
    }
}

impl Drop for LightEpoch {
    fn drop(&mut self) {
        // Whatever is still queued runs now: no thread can be protected any more.
        for slot in self.drain.iter() {
            // SAFETY: &mut self: no other thread can access the cells.
            let action = slot.action.with_mut(|cell| unsafe { (*cell).take() });
            if let Some(action) = action {
                action();
            }
        }
        self.drain_deferred(u64::MAX);
    }
}

/// Proof that the calling thread is protected on [`Protected::epoch`] (crossbeam-epoch's
/// `&Guard`). Functions that read memory an epoch action may free take `&'g impl Protected` and
/// return references that borrow `'g`: such a read cannot happen without protection, and what
/// it returns cannot outlive the protection. The function checks that the epoch is its own.
///
/// # Safety
/// While a value of the implementing type exists, the thread that made it must be protected on
/// `epoch()`, and nothing reachable through `&self` may end that protection or move it to a
/// newer epoch. The type must not be `Send` or `Sync` (the protection is the thread's).
pub unsafe trait Protected {
    /// The epoch the thread is protected on.
    fn epoch(&self) -> &LightEpoch;
}

/// An epoch protection of the calling thread; unprotects (and drains ready actions) on drop.
/// Not `Send`: the protection belongs to the thread's slot, so it must not cross an `.await`
/// onto another thread.
pub struct EpochGuard<'a> {
    epoch: &'a LightEpoch,
    slot: usize,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl EpochGuard<'_> {
    /// The calling thread as the owner of the record locks it takes (see `core::record`,
    /// *Record locks*).
    #[must_use]
    pub fn lock_owner(&self) -> LockOwner {
        self.epoch.table[self.slot].lock_owner
    }

    /// The thread's slot in the epoch table.
    #[must_use]
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Whether another protection of this thread encloses this one (an operation nested in an
    /// RMW function): the slot's epoch must then stay where the outer one put it.
    #[must_use]
    pub fn is_nested(&self) -> bool {
        self.epoch.table[self.slot].depth.load(Ordering::Relaxed) > 1
    }

    /// Moves to the current epoch and runs ready actions (call in long loops and while waiting).
    /// Takes `&mut self`, so nothing borrowed from the guard survives it. Inside a nested
    /// protection (another guard of this thread is alive, and may have lent out references) it
    /// only runs ready actions and keeps the epoch, as crossbeam-epoch's `Guard::repin` does.
    pub fn refresh(&mut self) {
        let entry = &self.epoch.table[self.slot];
        if entry.depth.load(Ordering::Relaxed) == 1 {
            // SAFETY: the slot is this thread's (the guard is not `Send`); `&mut self` ends
            // every borrow of this guard, and it is the only protection of the slot (depth 1).
            unsafe { self.epoch.refresh_at(self.slot) };
        } else if self.epoch.drain_count.load(Ordering::Acquire) > 0 {
            self.epoch.drain();
        }
    }
}

// SAFETY: an EpochGuard protects its thread's slot from `protect` until it drops; it is not
// `Send`, and the only method that moves the protection (`refresh`) takes `&mut self`.
unsafe impl Protected for EpochGuard<'_> {
    #[inline(always)]
    fn epoch(&self) -> &LightEpoch {
        self.epoch
    }
}

impl Drop for EpochGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the slot is this thread's, and this is the guard's own protection ending.
        unsafe { self.epoch.unprotect_at(self.slot) };
        if self.epoch.drain_count.load(Ordering::Acquire) > 0 {
            self.epoch.drain();
        }
    }
}

/// A protection from [`LightEpoch::protect_short`]: unprotects (and drains ready actions) on
/// drop.
pub struct ShortGuard<'a> {
    epoch: &'a LightEpoch,
    entry: &'a Entry,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl ShortGuard<'_> {
    /// The calling thread as the owner of the record locks it takes (see `core::record`,
    /// *Record locks*).
    #[must_use]
    #[inline(always)]
    pub fn lock_owner(&self) -> LockOwner {
        self.entry.lock_owner
    }

    /// Records that this thread acknowledged global phase word `phase` (see
    /// [`LightEpoch::ack_phase`]).
    #[inline(always)]
    pub fn ack_phase(&self, phase: u64) {
        self.entry.phase.store(phase, Ordering::Release);
    }
}

// SAFETY: a ShortGuard protects its thread's slot from `protect_short` until it drops (a nested
// guard that outlives it keeps the protection: see its `Drop`); it is not `Send` and has no
// method that moves the protection.
unsafe impl Protected for ShortGuard<'_> {
    #[inline(always)]
    fn epoch(&self) -> &LightEpoch {
        self.epoch
    }
}

impl Drop for ShortGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // Normally no nested protection is left (depth 1). One that is (a nested guard kept
        // past this one) keeps the slot protected, so what it lent out stays valid.
        let depth = self.entry.depth.load(Ordering::Relaxed);
        self.entry
            .depth
            .store(depth.saturating_sub(1), Ordering::Relaxed);
        if depth <= 1 {
            self.entry.local.store(UNPROTECTED, Ordering::Release);
        }
        if self.epoch.drain_count.load(Ordering::Acquire) > 0 {
            self.epoch.drain();
        }
    }
}

// ---- thread slots --------------------------------------------------------------------------
//
// One process-wide registry maps live threads to slot numbers `0..MAX_THREADS`, shared by every
// store's epoch table. A thread takes the lowest free slot on first use and returns it when it
// exits, so short-lived threads do not exhaust the table.

mod slots {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::MAX_THREADS;

    static TAKEN: [AtomicBool; MAX_THREADS] = [const { AtomicBool::new(false) }; MAX_THREADS];

    struct Slot(Cell<usize>);

    impl Drop for Slot {
        fn drop(&mut self) {
            let s = self.0.get();
            if s < MAX_THREADS {
                // Forget the copy first: nothing may use the slot once it is free again.
                let _ = CACHED.try_with(|c| c.set(usize::MAX));
                TAKEN[s].store(false, Ordering::Release);
            }
        }
    }

    thread_local! {
        static SLOT: Slot = const { Slot(Cell::new(usize::MAX)) };
        /// A copy of the slot number in a variable without a destructor, so reading it is one
        /// thread-local load (no registration or liveness check); `usize::MAX` until the thread
        /// takes a slot and again once it gave it back.
        static CACHED: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    /// The calling thread's slot if it already holds one.
    #[inline(always)]
    pub(super) fn cached() -> Option<usize> {
        let s = CACHED.with(Cell::get);
        (s != usize::MAX).then_some(s)
    }

    pub(super) fn get() -> Option<usize> {
        SLOT.try_with(|slot| {
            let s = slot.0.get();
            if s != usize::MAX {
                return Some(s);
            }
            let s = TAKEN.iter().position(|t| {
                t.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })?;
            slot.0.set(s);
            CACHED.with(|c| c.set(s));
            Some(s)
        })
        .ok()
        .flatten()
    }
}

/// The calling thread's slot number if it already holds one (one thread-local load).
#[inline(always)]
pub(crate) fn cached_slot() -> Option<usize> {
    slots::cached()
}

/// The calling thread's slot number, shared by every store's epoch table.
///
/// # Errors
/// [`Error::TooManyThreads`] when [`MAX_THREADS`] threads already hold slots.
pub fn thread_slot() -> Result<usize> {
    slots::get().ok_or(Error::TooManyThreads(MAX_THREADS))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn action_waits_for_protected_thread() {
        let epoch = LightEpoch::with_capacity(4, 4);
        let ran = Arc::new(AtomicBool::new(false));
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.protect_at(1) };
        let r = ran.clone();
        epoch.bump_epoch(move || r.store(true, std::sync::atomic::Ordering::SeqCst));
        epoch.drain();
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "ran while slot 1 held the old epoch"
        );
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.refresh_at(1) };
        assert!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            "did not run after slot 1 refreshed"
        );
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.unprotect_at(1) };
    }

    #[test]
    fn nested_protection_keeps_epoch_until_outermost() {
        let epoch = LightEpoch::with_capacity(2, 2);
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.protect_at(0) };
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.protect_at(0) };
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.unprotect_at(0) };
        assert!(epoch.is_protected_at(0));
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.unprotect_at(0) };
        assert!(!epoch.is_protected_at(0));
    }

    #[test]
    fn full_drain_list_does_not_lose_actions() {
        let epoch = LightEpoch::with_capacity(2, 2);
        let count = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            let c = count.clone();
            epoch.bump_epoch(move || {
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
        epoch.drain();
        assert_eq!(count.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn phases_need_every_protected_thread() {
        let epoch = LightEpoch::with_capacity(3, 2);
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.protect_at(0) };
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.protect_at(2) };
        epoch.ack_phase(0, 7);
        assert!(!epoch.all_acked(7));
        epoch.ack_phase(2, 7);
        assert!(epoch.all_acked(7));
    }

    #[test]
    fn a_protected_bumper_never_waits_for_a_free_slot() {
        // One thread, protected at an old epoch, bumps far more actions than there are slots:
        // none can run while it stays protected, and the bumps must still return.
        let epoch = LightEpoch::with_capacity(4, 4);
        let count = Arc::new(AtomicUsize::new(0));
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.protect_at(0) };
        for _ in 0..1000 {
            let c = count.clone();
            epoch.bump_epoch(move || {
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert_eq!(epoch.pending_actions(), 1000);
        // SAFETY: the test thread alone uses the slots; no guard owns them.
        unsafe { epoch.unprotect_at(0) };
        epoch.drain();
        assert_eq!(count.load(Ordering::SeqCst), 1000);
        assert_eq!(epoch.pending_actions(), 0);
    }

    #[test]
    fn concurrent_bumps_and_protection() {
        let epoch = Arc::new(LightEpoch::new());
        let count = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let epoch = epoch.clone();
                let count = count.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let mut g = epoch.protect().unwrap();
                        if i % 10 == 0 {
                            let c = count.clone();
                            epoch.bump_epoch(move || {
                                c.fetch_add(1, Ordering::SeqCst);
                            });
                        }
                        g.refresh();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        epoch.drain();
        assert_eq!(count.load(Ordering::SeqCst), 4 * 200);
        assert_eq!(epoch.pending_actions(), 0);
    }
}
