//! Read-modify-write and conditional insert: find the key's newest record, decide the new value
//! from it, write.
//!
//! Where the newest record is decides how (FASTER's RMW):
//! - mutable region: under the record's lock, in place if the new value fits, else copied to
//!   the tail and the old record sealed before the lock is released;
//! - fuzzy region `[safe_read_only, read_only)`: another thread may still update it in place,
//!   so the attempt retries after a refresh (by then the record is safely read-only);
//! - read-only region: copy-update to the tail with a CAS on the index entry;
//! - on disk: the caller fetches it (the operation goes pending), then the update is appended
//!   with a CAS against the entry seen *before* the fetch; if the entry changed meanwhile, the
//!   whole operation starts over, since a newer record may now exist.
//!
//! Conditional insert (used by compaction and the two-tier store) is the same walk with a
//! floor: it writes only if no record of the key exists above the floor address.
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::light_epoch::EpochGuard;
use crate::core::record::{ValueBuf, ValueRead};
use crate::core::status::{Result, Status};
use crate::device::Disk;
use crate::hlog::RecordBytes;
use crate::index::hash_bucket::HashBucketEntry;
use crate::index::KeyHash;
use crate::ops::cpr::OpVersion;
use crate::ops::read::DiskMatch;
use crate::ops::{Engine, Stop};

/// The key's newest value as an update sees it.
#[derive(Debug, Clone, Copy)]
pub enum Latest<'a> {
    /// No record (or the newest is below the floor).
    Absent,
    /// The newest record is a deletion.
    Deleted,
    /// The newest value's bytes.
    Value(&'a [u8]),
}

/// What an update decided.
#[allow(clippy::large_enum_variant)] // lives on the stack for one attempt; boxing would allocate
pub enum Decision {
    /// Write this value.
    Write(Encoded),
    /// Write nothing (conditional insert found a newer record).
    Abort,
}

/// Where an update stands.
pub enum UpdateStep {
    /// Finished: `Ok` (written) or `NotFound` (aborted).
    Done(Status),
    /// The newest record may be on disk: fetch `address`; `seen` is the index entry observed.
    Disk {
        /// Record to fetch.
        address: Address,
        /// Entry seen before going to disk.
        seen: HashBucketEntry,
    },
}

/// The result of following a chain on disk.
pub enum DiskTrace {
    /// Found the key's newest record (value bytes, or `None` for a tombstone).
    Found(Option<Vec<u8>>),
    /// The chain ended (or went below the floor) without the key.
    Absent,
    /// Fetch this address next.
    Next(Address),
}

impl<D: Disk> Engine<D> {
    /// The in-memory part of an update. `floor`: only records at or above it count
    /// (`Address::INVALID` for RMW: all of them). `in_place`: whether a mutable record may be
    /// rewritten. `pin`: the version an update that went to disk started in (see
    /// [`Engine::op_version`]). Returns the step and the version the attempt ran in.
    #[allow(clippy::too_many_arguments)] // the operation's whole state
    pub(crate) fn update_mem(
        &self,
        g: &EpochGuard<'_>,
        key: &Encoded,
        hash: KeyHash,
        floor: Address,
        in_place: bool,
        pin: &mut Option<u64>,
        decide: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
    ) -> Result<(UpdateStep, u64)> {
        let mut buf = ValueBuf::default();
        self.retry(g, pin, |g, ov| {
            // Before the entry, as a read loads it (`hlog::read_cache`, invariant 3).
            let begin = self.hlog.begin();
            let mut entry = self.entry_for_update(g, hash)?;
            let chain = self.chain(&entry)?;
            let log = chain.log;
            self.check_shift(ov, log)?;
            // A cached copy of the key is its newest value (invariant 2 of the read cache):
            // an update with no floor takes it as the old value instead of walking the log
            // to the device, and its write swings the entry away from the copy (from the
            // entry as loaded here: a copy unlinked meanwhile fails the swing, which retries).
            if let (true, Some(copy)) = (floor.is_invalid(), &chain.cached) {
                if let Some(live) = self.read_copy(copy, key, begin, &mut buf)? {
                    let latest = if live {
                        Latest::Value(buf.bytes())
                    } else {
                        Latest::Deleted
                    };
                    let decision = decide(latest)?;
                    return Ok(UpdateStep::Done(
                        self.write_decided(ov, &mut entry, key, decision)?,
                    ));
                }
            }
            let head = self.hlog.head();
            let (a, rec) = self.trace(log, key, floor.max(head))?;
            let Some(rec) = rec else {
                if a >= floor && self.on_disk(a) {
                    return Ok(UpdateStep::Disk {
                        address: a,
                        seen: entry.entry,
                    });
                }
                return Ok(UpdateStep::Done(self.write_decided(
                    ov,
                    &mut entry,
                    key,
                    decide(Latest::Absent)?,
                )?));
            };
            if in_place && a >= self.hlog.read_only() {
                // Sealed: retry; held by this thread (`decide` updating its own key): Busy.
                let mut lock = rec.lock(g.lock_owner())?;
                lock.read_value(&mut buf);
                let latest = if lock.state().tombstone() {
                    Latest::Deleted
                } else {
                    Latest::Value(buf.bytes())
                };
                let Decision::Write(v) = decide(latest)? else {
                    return Ok(UpdateStep::Done(Status::NotFound));
                };
                if self.may_update_in_place(ov, a, &rec) && lock.fits(v.len()) {
                    lock.write_value(&v);
                } else {
                    // Too big, or a record of the version being checkpointed: copy, then seal
                    // the old record under its lock so no in-place writer lands in it later.
                    self.append_and_swing(ov, &mut entry, key, Some(&v))?;
                    lock.seal();
                }
                return Ok(UpdateStep::Done(Status::Ok));
            }
            if in_place && a >= self.hlog.safe_read_only() {
                // Fuzzy region: a thread that saw the old read-only marker may be updating it.
                return Err(Stop::Retry);
            }
            let latest = match rec.read_value(&mut buf)? {
                ValueRead::Live => Latest::Value(buf.bytes()),
                ValueRead::Tombstone => Latest::Deleted,
            };
            let decision = decide(latest)?;
            Ok(UpdateStep::Done(
                self.write_decided(ov, &mut entry, key, decision)?,
            ))
        })
    }

    fn write_decided(
        &self,
        ov: OpVersion,
        entry: &mut crate::index::EntrySlot<'_>,
        key: &Encoded,
        decision: Decision,
    ) -> Result<Status, Stop> {
        match decision {
            Decision::Abort => Ok(Status::NotFound),
            Decision::Write(v) => {
                self.append_and_swing(ov, entry, key, Some(&v))?;
                Ok(Status::Ok)
            }
        }
    }

    /// Follows an update's chain on disk one record at a time.
    pub(crate) fn update_disk(
        &self,
        key: &Encoded,
        address: Address,
        bytes: &RecordBytes,
        floor: Address,
    ) -> Result<DiskTrace> {
        // The current begin: an update decides "absent" by its CAS on the entry it saw (a
        // truncation past a live record swung that entry first), not by where the chain ends.
        Ok(
            match crate::ops::read::disk_match(key, address, bytes, self.hlog.begin())? {
                DiskMatch::Value(v) => DiskTrace::Found(Some(v.to_vec())),
                DiskMatch::Tombstone => DiskTrace::Found(None),
                DiskMatch::Next(prev) if prev >= floor => DiskTrace::Next(prev),
                DiskMatch::Next(_) | DiskMatch::End => DiskTrace::Absent,
            },
        )
    }

    /// Finishes an update after its disk trace: writes the decision if the index entry is
    /// still the one seen; `None` means it changed and the update must start over.
    #[allow(clippy::too_many_arguments)] // the operation's whole state
    pub(crate) fn update_after_disk(
        &self,
        g: &EpochGuard<'_>,
        key: &Encoded,
        hash: KeyHash,
        seen: HashBucketEntry,
        found: &DiskTrace,
        pin: &mut Option<u64>,
        decide: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
    ) -> Result<(Option<Status>, u64)> {
        self.retry(g, pin, |g, ov| {
            let mut entry = self.entry_for_update(g, hash)?;
            if entry.entry != seen {
                return Ok(None);
            }
            self.check_shift(ov, self.log_head(&entry)?)?;
            let latest = match found {
                DiskTrace::Found(Some(v)) => Latest::Value(v),
                DiskTrace::Found(None) => Latest::Deleted,
                DiskTrace::Absent | DiskTrace::Next(_) => Latest::Absent,
            };
            match self.write_decided(ov, &mut entry, key, decide(latest)?) {
                Ok(s) => Ok(Some(s)),
                // The entry moved under us: the newest record may have changed, start over.
                Err(Stop::Retry | Stop::Wait) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}
