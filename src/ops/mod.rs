//! The untyped engine: FASTER's operations over encoded keys and values.
//!
//! One file per operation: [`read`], [`upsert`], [`rmw`] (read-modify-write and conditional
//! insert share the "find the latest record, decide, append with CAS" core), [`delete`], and
//! [`pending`] (finishing operations whose records are on disk: blocking, async, sessions).
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

pub mod delete;
pub mod pending;
pub mod read;
pub mod rmw;
pub mod upsert;

use std::sync::Arc;

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::light_epoch::{EpochGuard, LightEpoch};
use crate::core::record::{record_size, RecordInfo, RecordRef, Version};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::hlog::{AllocError, HybridLog};
use crate::index::{EntrySlot, HashIndex, IndexBusy, KeyHash, MemIndex};
use crate::sync::{AtomicU64, Ordering};

/// The store without types: epoch, index and log.
pub struct Engine<D: Disk> {
    pub(crate) epoch: Arc<LightEpoch>,
    pub(crate) index: MemIndex,
    pub(crate) hlog: HybridLog<D>,
    version: AtomicU64,
}

/// Why an attempt stopped without a result.
pub(crate) enum Stop {
    /// Refresh the epoch and try again.
    Retry,
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
            AllocError::RetryLater => Stop::Retry,
            AllocError::Fatal(e) => Stop::Fail(e),
        }
    }
}

impl From<IndexBusy> for Stop {
    fn from(e: IndexBusy) -> Self {
        match e {
            IndexBusy::RetryLater => Stop::Retry,
            IndexBusy::Full => Stop::Fail(Error::IndexFull),
        }
    }
}

impl<D: Disk> Engine<D> {
    /// An engine over an index of `2^index_bits` buckets and a log.
    pub(crate) fn new(epoch: Arc<LightEpoch>, index_bits: u32, hlog: HybridLog<D>) -> Self {
        Self {
            index: MemIndex::new(index_bits, epoch.clone()),
            epoch,
            hlog,
            version: AtomicU64::new(u64::from(Version::FIRST.0)),
        }
    }

    /// The version new records are written in.
    pub(crate) fn version(&self) -> Version {
        Version(self.version.load(Ordering::Acquire) as u16)
    }

    /// Protects the calling thread.
    pub(crate) fn protect(&self) -> Result<EpochGuard<'_>> {
        self.epoch.protect()
    }

    /// Runs `attempt` until it stops with something other than [`Stop::Retry`], refreshing the
    /// epoch between attempts.
    pub(crate) fn retry<T>(
        &self,
        g: &EpochGuard<'_>,
        mut attempt: impl FnMut() -> Result<T, Stop>,
    ) -> Result<T> {
        let mut round = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Stop::Fail(e)) => return Err(e),
                Err(Stop::Retry) => {
                    g.refresh();
                    crate::sync::backoff(&mut round);
                }
            }
        }
    }

    /// The index entry for `hash`, created if absent.
    pub(crate) fn entry_for_update(&self, hash: KeyHash) -> Result<EntrySlot<'_>, Stop> {
        Ok(self.index.find_or_create_entry(hash)?)
    }

    /// Walks the chain from `from` while addresses are `>= floor` (and in memory: the caller
    /// passes a floor at or above head), returning the key's record if met, and where the walk
    /// stopped.
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
        let info = RecordInfo::new(prev, self.version());
        let rec = RecordRef::write_new(self.hlog.space(address, size), info, key, value);
        Ok((address, rec))
    }

    /// Appends a record and swings `entry` to it; on a lost CAS the record is marked invalid
    /// and the attempt retries.
    pub(crate) fn append_and_swing(
        &self,
        entry: &mut EntrySlot<'_>,
        key: &Encoded,
        value: Option<&Encoded>,
    ) -> Result<(), Stop> {
        let (address, rec) = self.append(entry.address(), key, value)?;
        if entry.try_update(address).is_ok() {
            Ok(())
        } else {
            rec.set_invalid();
            Err(Stop::Retry)
        }
    }

    /// Whether a chain continues on disk at `a` (below head, inside the log).
    pub(crate) fn on_disk(&self, a: Address) -> bool {
        !a.is_invalid() && a >= self.hlog.begin()
    }
}
