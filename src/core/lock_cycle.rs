//! Lock cycles between threads: which record locks the calling thread holds, which lock each
//! holder waits for, and who gives up when the waits form a cycle.
//!
//! An update runs its user's function while it holds the record's lock, and the function may call
//! the store (module docs of `core::record`, *Record locks*). Thread 1's function, holding key a,
//! updates or reads b while thread 2's, holding b, updates or reads a: each waits for the other's
//! lock. Without help, both wait for ever.
//!
//! # Invariants
//! 1. `HELD` (thread-local) is the number of record locks the thread holds, in every store. The
//!    lock types keep it: taking a lock adds one, dropping it takes one away, so no exit path (a
//!    panic in the function included) can leave it wrong. Lock types are not `Send`, so the drop
//!    runs on the thread that counted.
//! 2. `WAITS_FOR[s]` is non-zero only while the thread in slot `s` holds at least one record lock
//!    *and* waits for a record lock held by another thread; then it is that owner's slot plus one.
//!    The waiter publishes it before it looks for a cycle and clears it before it takes the lock
//!    or gives up ([`Wait`]'s drop). A thread holding no lock publishes nothing: it cannot be in a
//!    cycle, since nobody can be waiting for it.
//! 3. Each thread waits for at most one lock at a time, so the published edges form a graph in
//!    which every node has at most one successor: a walk from any node meets a cycle within
//!    `MAX_THREADS` steps or ends.
//! 4. In a cycle, every member holds a lock (2) and waits (2), so every member's edge stays
//!    published until one of them gives up: every member's walk finds the same cycle. Exactly one
//!    gives up, the member with the smallest slot; it fails its operation with `Error::Busy`,
//!    its function goes on and returns, its update releases its lock, and the others proceed.
//!
//! # Interleavings
//! - *Edges published one after the other.* Thread 1 publishes 1 -> 2 and walks before 2 -> 1
//!   exists: no cycle yet. Each waiter walks again on every round of its wait, so once both edges
//!   exist both walks see them.
//! - *A stale edge.* Thread 2 published 2 -> 1, thread 1 released that lock, and thread 2 has not
//!   noticed yet. If thread 1 now holds another lock and waits for thread 2, its walk may see a
//!   cycle that is about to dissolve and give up needlessly. The cost is an `Error::Busy` for a
//!   nested operation, which the API already allows there. An operation that holds no lock (every
//!   operation not nested in an update's function) never walks, so it never gives up.
//! - *A chain into a cycle.* Thread 3 waits for a member of the cycle 1 <-> 2. Its walk circles
//!   the cycle without meeting 3 and ends after `MAX_THREADS` steps: 3 keeps waiting, and
//!   proceeds once the cycle is broken.
//! - *Slot reuse.* A slot is freed only when its thread exits, and a thread holding a lock is
//!   alive, so an edge names a live thread while it is published.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::core::light_epoch::{cached_slot, MAX_THREADS};
use crate::core::status::Error;

thread_local! {
    /// Record locks the calling thread holds (invariant 1).
    static HELD: Cell<u32> = const { Cell::new(0) };
}

/// Per thread slot: the slot + 1 of the thread whose lock it waits for while holding one itself;
/// 0 when it does not (invariant 2).
static WAITS_FOR: [AtomicU32; MAX_THREADS] = [const { AtomicU32::new(0) }; MAX_THREADS];

/// Counts a record lock just taken by the calling thread (invariant 1).
#[inline(always)]
pub(crate) fn count_taken() {
    HELD.with(|h| h.set(h.get() + 1));
}

/// Counts a record lock the calling thread just released (invariant 1).
#[inline(always)]
pub(crate) fn count_released() {
    HELD.with(|h| h.set(h.get() - 1));
}

/// Whether the calling thread holds a record lock.
fn holds_any() -> bool {
    HELD.with(Cell::get) != 0
}

/// The waiter gives up: its wait closes a cycle of lock holders, and it is the member chosen to
/// break it (invariant 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle;

impl From<Cycle> for Error {
    fn from(Cycle: Cycle) -> Self {
        Error::Busy(
            "an operation inside an update's function waited for a record locked by another \
             thread whose own update waits for this thread: this operation fails to break the \
             cycle",
        )
    }
}

/// One wait for a record lock held by another thread: publishes the edge while the waiter holds a
/// lock itself, and clears it on drop (invariant 2).
#[derive(Default)]
pub(crate) struct Wait {
    round: u32,
    /// The waiter's slot once it published an edge.
    published: Option<usize>,
}

impl Wait {
    /// One round of waiting for a lock held by the thread in slot `owner`: backs off, or fails
    /// with [`Cycle`] if the caller must give up.
    #[cold]
    pub(crate) fn round(&mut self, owner: usize) -> Result<(), Cycle> {
        if self.published.is_some() || holds_any() {
            // A lock holder has a slot: it took one to lock.
            if let Some(me) = cached_slot() {
                WAITS_FOR[me].store(owner as u32 + 1, Ordering::SeqCst);
                self.published = Some(me);
                if breaks_cycle(me) {
                    return Err(Cycle);
                }
            }
        }
        crate::sync::backoff(&mut self.round);
        Ok(())
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(me) = self.published {
            WAITS_FOR[me].store(0, Ordering::SeqCst);
        }
    }
}

/// Whether `me` is on a cycle of published edges and has the smallest slot on it (invariant 4).
fn breaks_cycle(me: usize) -> bool {
    let mut at = me;
    let mut smallest = me;
    for _ in 0..MAX_THREADS {
        let next = WAITS_FOR[at].load(Ordering::SeqCst);
        if next == 0 {
            return false;
        }
        at = next as usize - 1;
        if at == me {
            return smallest == me;
        }
        smallest = smallest.min(at);
    }
    false
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Slots far above any the test threads take, so these edges meet nobody else's.
    const A: usize = MAX_THREADS - 3;
    const B: usize = MAX_THREADS - 2;
    const C: usize = MAX_THREADS - 1;

    fn edge(from: usize, to: usize) {
        WAITS_FOR[from].store(to as u32 + 1, Ordering::SeqCst);
    }

    #[test]
    fn only_the_smallest_member_of_a_cycle_breaks_it() {
        edge(A, B);
        edge(B, C);
        assert!(!breaks_cycle(A), "an open chain is no cycle");
        edge(C, A);
        assert!(breaks_cycle(A));
        assert!(!breaks_cycle(B));
        assert!(!breaks_cycle(C));
        WAITS_FOR[C].store(0, Ordering::SeqCst);
        assert!(!breaks_cycle(A), "a cleared edge opens the cycle");
        for s in [A, B] {
            WAITS_FOR[s].store(0, Ordering::SeqCst);
        }
    }
}
