//! Operation counters for [`crate::Stats`]: one cache line per thread slot, written only by the
//! thread that holds the slot, with a plain load and store (no atomic read-modify-write, no line
//! shared between threads), and summed when read. Counting costs an operation a thread-local
//! load and an add on a line of its own; totals read while operations run may lag by the
//! operations in flight.
//!
//! A slot passes to a new thread only after its old thread exited (the slot registry's Release
//! and Acquire order the two), so each line has one writer at a time.
#![forbid(unsafe_code)]

use crossbeam_utils::CachePadded;

use crate::core::light_epoch::{cached_slot, MAX_THREADS};
use crate::sync::{AtomicU64, Ordering};

/// What is counted.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub(crate) enum Count {
    /// A read that found its key in memory.
    ReadInMemory,
    /// A read that found its key on the device.
    ReadOnDisk,
    /// A read that found no live value.
    ReadNotFound,
    /// An upsert (insert).
    Upsert,
    /// A read-modify-write or conditional insert that finished.
    Rmw,
    /// A delete.
    Delete,
    /// An operation that had to wait for the device.
    Pending,
}

const KINDS: usize = 7;

/// Per-thread operation counters of one store.
#[derive(Default)]
pub(crate) struct Counters {
    table: PerThread<KINDS>,
}

/// `N` counters per thread slot, one cache line per slot, written only by the slot's thread
/// (see the module docs). [`Counters`] is the engine's; other parts count their own events
/// with one (the cold index's lookups and updates).
pub(crate) struct PerThread<const N: usize> {
    slots: Box<[CachePadded<[AtomicU64; N]>]>,
}

impl<const N: usize> Default for PerThread<N> {
    fn default() -> Self {
        Self {
            slots: (0..MAX_THREADS)
                .map(|_| CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl<const N: usize> PerThread<N> {
    /// Counts one event `i` (< `N`) for the calling thread (which has a slot once it protected
    /// itself in any store; a thread without one is not counted).
    #[inline(always)]
    pub(crate) fn bump(&self, i: usize) {
        if let Some(line) = cached_slot().and_then(|s| self.slots.get(s)) {
            let c = &line[i];
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// The total of counter `i` over every thread.
    pub(crate) fn total(&self, i: usize) -> u64 {
        self.slots
            .iter()
            .map(|line| line[i].load(Ordering::Relaxed))
            .sum()
    }
}

/// Operation counts since the store was opened (recovery starts from zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpStats {
    /// Reads that found their key's value in memory.
    pub reads_in_memory: u64,
    /// Reads that found their key's value on the device.
    pub reads_on_disk: u64,
    /// Reads that found no live value (never written or deleted).
    pub reads_not_found: u64,
    /// Upserts (inserts), one-word fast path included.
    pub upserts: u64,
    /// Read-modify-writes and conditional inserts.
    pub rmws: u64,
    /// Deletes.
    pub deletes: u64,
    /// Operations that had to wait for the device (reads and updates).
    pub pending: u64,
}

impl OpStats {
    /// Every read.
    #[must_use]
    pub fn reads(&self) -> u64 {
        self.reads_in_memory + self.reads_on_disk + self.reads_not_found
    }
}

impl Counters {
    /// Counts one `what` for the calling thread (which has a slot once it protected itself;
    /// a thread without one is not counted).
    #[inline(always)]
    pub(crate) fn bump(&self, what: Count) {
        self.table.bump(what as usize);
    }

    /// The totals over every thread.
    pub(crate) fn totals(&self) -> OpStats {
        let sum = |what: Count| self.table.total(what as usize);
        OpStats {
            reads_in_memory: sum(Count::ReadInMemory),
            reads_on_disk: sum(Count::ReadOnDisk),
            reads_not_found: sum(Count::ReadNotFound),
            upserts: sum(Count::Upsert),
            rmws: sum(Count::Rmw),
            deletes: sum(Count::Delete),
            pending: sum(Count::Pending),
        }
    }
}
