//! Delete: a tombstone. In the mutable region the newest record is marked deleted in place;
//! otherwise a tombstone record goes to the tail. Reads that meet a tombstone stop with
//! NotFound; compaction (later) drops it with the records it hides.
#![forbid(unsafe_code)]

use crate::core::codec::Encoded;
use crate::core::light_epoch::EpochGuard;
use crate::core::status::{Result, Status};
use crate::device::Disk;
use crate::index::{HashIndex, KeyHash};
use crate::ops::counters::Count;
use crate::ops::{Engine, Stop};

impl<D: Disk> Engine<D> {
    /// Deletes `key`. `NotFound` when the index has no entry for it (nothing to delete),
    /// unless `always`: then a tombstone goes to the tail even for a key this log never held
    /// (R2Kv's hot tier, where the key may live in the cold one).
    pub(crate) fn delete(
        &self,
        g: &EpochGuard<'_>,
        key: &Encoded,
        hash: KeyHash,
        always: bool,
    ) -> Result<(Status, u64)> {
        self.counters.bump(Count::Delete);
        self.retry(g, &mut None, |g, ov| {
            let entry = if always {
                Some(self.entry_for_update(g, hash)?)
            } else {
                self.index.find_entry(g, hash).map_err(Stop::from)?
            };
            let Some(mut entry) = entry else {
                return Ok(Status::NotFound);
            };
            let log = self.log_head(&entry)?;
            self.check_shift(ov, log)?;
            let read_only = self.hlog.read_only();
            if let (a, Some(rec)) = self.trace(log, key, read_only)? {
                // Sealed: retry; held by this thread (an update's function deleting its own
                // key): Busy.
                let mut lock = rec.lock(g.lock_owner())?;
                if lock.state().tombstone() {
                    return Ok(Status::NotFound);
                }
                if !self.may_update_in_place(ov, a, &rec) {
                    self.append_and_swing(ov, &mut entry, key, None)?;
                    lock.seal();
                    return Ok(Status::Ok);
                }
                lock.write_tombstone();
                return Ok(Status::Ok);
            }
            self.append_and_swing(ov, &mut entry, key, None)?;
            Ok(Status::Ok)
        })
    }
}
