//! Read: find the key's newest record; in memory copy the value out, on disk fetch and follow
//! the chain.
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::light_epoch::EpochGuard;
use crate::core::record::{ValueBuf, ValueRead};
use crate::core::status::Result;
use crate::device::Disk;
use crate::hlog::{ChainStep, RecordBytes};
use crate::index::hash_bucket::HashBucketEntry;
use crate::index::{HashIndex, KeyHash};
use crate::ops::counters::Count;
use crate::ops::{Engine, Stop};

/// What a finished read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// A live value (in the caller's buffer).
    Live,
    /// The newest record is a deletion.
    Deleted,
    /// No record of the key.
    Absent,
}

impl Found {
    /// Whether a value was found.
    pub(crate) fn live(self) -> bool {
        self == Found::Live
    }
}

/// Where a read stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStep {
    /// The value is in the buffer.
    Found,
    /// The key's newest record is a deletion (R2Kv stops there instead of asking the cold
    /// tier).
    Deleted,
    /// The key has no record.
    NotFound,
    /// Continue on disk.
    Disk(DiskWalk),
}

/// Where a read continues on disk, and the `begin` marker it started under.
///
/// A read decides "absent below begin" against the `begin` it loaded *before* the index entry
/// (see `ops::truncate`): a record truncated before that load had its live copy appended (and
/// the entry swung) before `begin` moved, so the walk from the entry meets the copy first. A
/// chain pointer below the walk's `begin` ends it; one at or above it whose page was truncated
/// since makes the read start over from the index, without touching the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskWalk {
    /// The record to fetch next.
    pub at: Address,
    /// `begin` as loaded before the index entry.
    pub begin: Address,
    /// The index entry as the walk found it (a read-cache copy of what it finds replaces
    /// exactly this entry: `hlog::read_cache`, invariant 1).
    pub seen: HashBucketEntry,
}

impl ReadStep {
    /// What a read that stopped here found (`Disk`: not finished, reads as absent).
    pub(crate) fn found(self) -> Found {
        match self {
            ReadStep::Found => Found::Live,
            ReadStep::Deleted => Found::Deleted,
            ReadStep::NotFound | ReadStep::Disk(_) => Found::Absent,
        }
    }
}

impl<D: Disk> Engine<D> {
    /// The in-memory part of a read.
    pub(crate) fn read_mem(
        &self,
        g: &EpochGuard<'_>,
        key: &Encoded,
        hash: KeyHash,
        out: &mut ValueBuf,
    ) -> Result<ReadStep> {
        let (step, _) = self.retry(g, &mut None, |g, _| {
            // Before the entry: see `DiskWalk`.
            let begin = self.hlog.begin();
            let Some(mut entry) = self.index.find_entry(g, hash).map_err(Stop::from)? else {
                return Ok(ReadStep::NotFound);
            };
            let chain = self.chain(&entry)?;
            if let Some(copy) = &chain.cached {
                if let Some(found) = self.read_copy(copy, key, begin, out)? {
                    if found {
                        self.refresh_copy(g, &mut entry, copy, key, out.bytes());
                        return Ok(ReadStep::Found);
                    }
                    return Ok(ReadStep::Deleted);
                }
            }
            let head = self.hlog.head();
            let (a, rec) = self.trace(chain.log, key, head)?;
            if let Some(rec) = rec {
                return Ok(match rec.read_value(out)? {
                    ValueRead::Live => ReadStep::Found,
                    ValueRead::Tombstone => ReadStep::Deleted,
                });
            }
            Ok(if !a.is_invalid() && a >= begin {
                ReadStep::Disk(DiskWalk {
                    at: a,
                    begin,
                    seen: entry.entry,
                })
            } else {
                ReadStep::NotFound
            })
        })?;
        self.counters.bump(match step {
            ReadStep::Found => Count::ReadInMemory,
            ReadStep::NotFound | ReadStep::Deleted => Count::ReadNotFound,
            ReadStep::Disk(_) => Count::Pending,
        });
        Ok(step)
    }

    /// Continues a read with the record fetched from `walk.at`.
    pub(crate) fn read_disk(
        &self,
        key: &Encoded,
        walk: DiskWalk,
        bytes: &RecordBytes,
        out: &mut ValueBuf,
    ) -> Result<ReadStep> {
        match disk_match(key, walk.at, bytes, walk.begin)? {
            DiskMatch::Value(v) => {
                out.fill_from_bytes(v);
                Ok(ReadStep::Found)
            }
            DiskMatch::Tombstone => Ok(ReadStep::Deleted),
            DiskMatch::End => Ok(ReadStep::NotFound),
            DiskMatch::Next(prev) => Ok(ReadStep::Disk(DiskWalk { at: prev, ..walk })),
        }
    }
}

/// Checks a fetched record against `key`; the chain ends below `begin`.
pub(crate) fn disk_match<'b>(
    key: &Encoded,
    address: Address,
    bytes: &'b RecordBytes,
    begin: Address,
) -> Result<DiskMatch<'b>> {
    let rec = bytes.record(address)?;
    let info = rec.info();
    if !info.invalid() && rec.key() == key.bytes() {
        let state = rec.state();
        return Ok(if state.tombstone() {
            DiskMatch::Tombstone
        } else {
            DiskMatch::Value(rec.value())
        });
    }
    let prev = crate::ops::engine::backwards(address, info.prev())?;
    Ok(if !prev.is_invalid() && prev >= begin {
        DiskMatch::Next(prev)
    } else {
        DiskMatch::End
    })
}

/// The part of a disk walk for `key` that runs inside device completion callbacks
/// (`HybridLog::read_chain_async`): a record that verifies and is another key's (or an invalid
/// one) is skipped to its predecessor, if that is a valid address at or above `floor`. This is
/// exactly the `Next` case of [`disk_match`] with `floor` as its `begin` (for a read,
/// the `begin` of its [`DiskWalk`]; an update passes its floor, and the log adds the current
/// `begin` for both). Everything else (the key's record, the end of the chain, a record that
/// does not verify, a predecessor below the current `begin`) goes back to the operation,
/// which decides it as if it had fetched that record itself: so the truncation rule of
/// [`DiskWalk`] and the checksum of every record hold unchanged. Takes no epoch protection:
/// it looks only at the fetched bytes and the key.
pub(crate) fn follow_other_keys(key: &Encoded, floor: Address) -> ChainStep {
    let key = key.clone();
    Box::new(move |at, bytes| {
        let rec = bytes.record(at).ok()?;
        let info = rec.info();
        if !info.invalid() && rec.key() == key.bytes() {
            return None;
        }
        let prev = crate::ops::engine::backwards(at, info.prev()).ok()?;
        (!prev.is_invalid() && prev >= floor).then_some(prev)
    })
}

/// What a fetched record says about a key.
pub(crate) enum DiskMatch<'b> {
    /// The key's newest value.
    Value(&'b [u8]),
    /// The key's newest record is a deletion.
    Tombstone,
    /// Another key: follow the chain to this address.
    Next(Address),
    /// The chain ends: the key has no record.
    End,
}
