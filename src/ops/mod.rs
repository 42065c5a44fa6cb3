//! The untyped engine: FASTER's operations over encoded keys and values.
//!
//! One file per operation: [`read`], [`upsert`], [`rmw`] (read-modify-write and conditional
//! insert share the "find the latest record, decide, append with CAS" core), [`delete`], and
//! [`pending`] (finishing operations whose records are on disk: blocking, async, sessions).
//! [`fast`] finishes the common in-memory case of one-word keys and values in far fewer
//! instructions, or hands it to the general path unchanged. [`growth`] runs index growth for
//! the store (the claim it shares with checkpoints, the memory budget check, and sorting chains
//! between the halves of a split by reading their keys).
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
//!   retries in place (a lost CAS resolves so, within [`engine::NESTED_RETRIES`] rounds); when what it
//!   waits for needs the epoch to move on ([`Stop::Wait`]: a page to be evicted for the log to
//!   roll, an index growth to finish), which the outer protection prevents, it fails at once
//!   with [`crate::Error::Busy`]. So does a nested update of the key whose record the outer
//!   update holds locked while its function runs: the lock names its thread
//!   (`core::record`, *Record locks*), so the nested writer sees it is waiting for itself.

pub mod cache;
pub mod compact;
pub mod counters;
pub mod cpr;
pub mod delete;
pub mod engine;
pub mod fast;
pub mod growth;
pub mod pending;
pub mod read;
pub mod recover;
pub mod rmw;
pub mod scan;
pub mod split;
pub mod tiered;
pub mod truncate;
pub mod upsert;

pub(crate) use engine::{Engine, Stop};
