//! Upsert: a blind write. In the mutable region the newest record of the key is overwritten in
//! place when the new value fits its capacity; otherwise a new record goes to the tail and the
//! index entry is swung to it. Upserts never need the disk: older records are not read.
#![forbid(unsafe_code)]

use crate::core::codec::Encoded;
use crate::core::light_epoch::EpochGuard;
use crate::core::record::RecordLock;
use crate::core::status::Result;
use crate::device::Disk;
use crate::index::KeyHash;
use crate::ops::counters::Count;
use crate::ops::Engine;

impl<D: Disk> Engine<D> {
    /// Writes `value` for `key`. `in_place` may rewrite the locked newest record itself (the
    /// context API's `put_atomic`); it returns the value to write in place, or `None` to write
    /// `value`. Returns the checkpoint version the write landed in.
    pub(crate) fn upsert(
        &self,
        g: &EpochGuard<'_>,
        key: &Encoded,
        hash: KeyHash,
        value: &Encoded,
        in_place: &mut dyn FnMut(&RecordLock<'_>) -> Result<Option<Encoded>>,
    ) -> Result<u64> {
        let (_, version) = self.retry(g, &mut None, |g, ov| {
            let mut entry = self.entry_for_update(g, hash)?;
            let log = self.log_head(&entry)?;
            self.check_shift(ov, log)?;
            let read_only = self.hlog.read_only();
            if let (a, Some(rec)) = self.trace(log, key, read_only)? {
                // Sealed: retry; held by this thread (an update's function writing its own
                // key): Busy.
                let mut lock = rec.lock(g.lock_owner())?;
                if !self.may_update_in_place(ov, a, &rec) {
                    // A record of the version being checkpointed: copy, and seal the old one.
                    self.append_and_swing(ov, &mut entry, key, Some(value))?;
                    lock.seal();
                    return Ok(());
                }
                let own = in_place(&lock)?;
                let v = own.as_ref().unwrap_or(value);
                if lock.fits(v.len()) {
                    lock.write_value(v);
                    return Ok(());
                }
                // Grows past its capacity: copy to the tail, then seal the old record while
                // still holding its lock, so no in-place writer can land in it afterwards.
                self.append_and_swing(ov, &mut entry, key, Some(v))?;
                lock.seal();
                return Ok(());
            }
            self.append_and_swing(ov, &mut entry, key, Some(value))
        })?;
        self.counters.bump(Count::Upsert);
        Ok(version)
    }
}
