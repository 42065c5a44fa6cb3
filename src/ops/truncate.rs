//! Truncation: moving the log's `begin` forward, and giving the device space back once no
//! checkpoint needs it (FASTER's `ShiftBeginAddress` + `Truncate`, with RsKv's recovery rules).
//!
//! # Invariants
//! 1. `begin` only moves forward, and never past `safe_head`: nothing truncated is in memory or
//!    read there ([`HybridLog::shift_begin`](crate::hlog::HybridLog::shift_begin)).
//! 2. A read decides "absent below begin" against the `begin` it loaded *before* the index entry
//!    ([`DiskWalk`](crate::ops::read::DiskWalk)). Compaction appends a live record's copy and
//!    swings its entry before `begin` passes the record, so a walk that loaded the newer
//!    `begin` also sees the copy; a walk that loaded the older one and later finds its next
//!    record truncated starts over. An update decides by its CAS on the entry it saw, which the
//!    copy changed.
//! 3. Device space below address `a` is released (segment files deleted) only when no
//!    checkpoint that recovery may use needs it: `a <= begin`, `a <=` the `begin` of the newest
//!    completed log checkpoint, and `a <=` the `begin` a running checkpoint recorded (the pin
//!    below), and `a <=` the floor the store's owner holds (`Engine::hold_space_from`: an
//!    R2Kv keeps the inner checkpoints its own checkpoints name, whatever the inner store's
//!    newest is). Older checkpoints that need space below `a` are removed first (their log part;
//!    an index checkpoint the newest one may start from is kept), so a crash in between never
//!    leaves a checkpoint offered whose log is gone. Recovery itself never deletes anything.
//! 4. The pin: a checkpoint stores `0` in `pinned`, then loads `begin`, then stores that value;
//!    a release loads `begin`, then `pinned`, all sequentially consistent. Either the release's
//!    load of `pinned` comes first in that order, and then the checkpoint's load of `begin`
//!    comes after the release's, so the checkpoint records a `begin` at least the release's
//!    bound; or the release sees `0` or the recorded value and stays below it.
//!
//! Durability: a truncation is durable with the next checkpoint (which records the new
//! `begin`). Until then the old segments and checkpoints stay, so a crash brings the truncated
//! records back, which is consistent: they were the state of that checkpoint. Without any
//! checkpoint nothing is recoverable anyway, and space is released at once.
//!
//! No epoch action is needed to move `begin`: nothing below `safe_head` is read in memory, and
//! device reads that race with a segment's deletion are resolved by invariant 2 (an open file
//! outlives its unlink; a read issued after it returns zeros or fails, and the walk starts over).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::core::address::Address;
use crate::core::checkpoint::{CheckpointDir, Token};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::ops::Engine;

/// Truncation and space bookkeeping of an engine.
#[derive(Debug)]
pub(crate) struct Retention {
    /// Held by a compaction or truncation (they exclude each other, not checkpoints).
    busy: AtomicBool,
    /// Held by a release of device space.
    releasing: AtomicBool,
    /// The `begin` the running checkpoint records (`0` while it loads it, `u64::MAX` when
    /// none runs): invariant 4.
    pinned: AtomicU64,
    /// Device space is released below here.
    released: AtomicU64,
    /// A floor set by the store's owner: nothing at or above it is released, and no
    /// checkpoint needing it is removed (`u64::MAX`: none). R2Kv's cold index holds the log
    /// of every inner checkpoint a retained R2Kv checkpoint names (invariant 3).
    held: AtomicU64,
    /// What compactions did since the store was opened.
    pub(crate) totals: CompactionCounters,
}

/// Running totals of compactions (relaxed counters, for `Stats`).
#[derive(Debug, Default)]
pub(crate) struct CompactionCounters {
    pub(crate) passes: AtomicU64,
    pub(crate) scanned_bytes: AtomicU64,
    pub(crate) copied: AtomicU64,
    pub(crate) bytes_freed: AtomicU64,
    pub(crate) wasted_passes: AtomicU64,
}

/// What compactions did since the store was opened ([`crate::Stats::compaction`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionTotals {
    /// Passes that truncated the log.
    pub passes: u64,
    /// Bytes of log scanned.
    pub scanned_bytes: u64,
    /// Records copied to the tail.
    pub copied: u64,
    /// Bytes of segment files deleted (by compactions, truncations and the checkpoints that
    /// released their space).
    pub bytes_freed: u64,
    /// Background passes that gave back less than a tenth of what they scanned.
    pub wasted_passes: u64,
}

impl CompactionCounters {
    pub(crate) fn snapshot(&self) -> CompactionTotals {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CompactionTotals {
            passes: l(&self.passes),
            scanned_bytes: l(&self.scanned_bytes),
            copied: l(&self.copied),
            bytes_freed: l(&self.bytes_freed),
            wasted_passes: l(&self.wasted_passes),
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            busy: AtomicBool::new(false),
            releasing: AtomicBool::new(false),
            pinned: AtomicU64::new(u64::MAX),
            held: AtomicU64::new(u64::MAX),
            released: AtomicU64::new(0),
            totals: CompactionCounters::default(),
        }
    }
}

/// A held maintenance claim (compaction or truncation); released on drop.
pub(crate) struct MaintenanceClaim<'a>(&'a AtomicBool);

impl Drop for MaintenanceClaim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The checkpoint's pin of `begin`; unpinned on drop.
pub(crate) struct BeginPin<'a> {
    retention: &'a Retention,
    /// The `begin` the checkpoint records.
    pub(crate) begin: Address,
}

impl Drop for BeginPin<'_> {
    fn drop(&mut self) {
        self.retention.pinned.store(u64::MAX, Ordering::SeqCst);
    }
}

/// What a truncation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Truncation {
    /// `begin` before the call.
    pub begin_before: Address,
    /// `begin` after it.
    pub begin: Address,
    /// Device space is now released below this address: what no retained checkpoint needs
    /// (it lags `begin` until a checkpoint records the new `begin`).
    pub released_until: Address,
    /// Bytes of segment files deleted by this call.
    pub bytes_freed: u64,
}

impl<D: Disk> Engine<D> {
    /// Keeps device space from `address` on (and the checkpoints that need it) until a later
    /// call moves the floor (`u64::MAX`: no floor). See invariant 3.
    pub(crate) fn hold_space_from(&self, address: u64) {
        self.retention.held.store(address, Ordering::SeqCst);
    }

    /// Claims the log maintenance (compaction, truncation; an iteration holds it so that no
    /// record moves under it, and R2Kv's passes of either tier hold the hot log's).
    ///
    /// # Errors
    /// [`Error::Busy`] if another compaction, truncation or iteration holds it.
    pub(crate) fn claim_maintenance(&self) -> Result<MaintenanceClaim<'_>> {
        let busy = &self.retention.busy;
        busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| Error::Busy("a compaction, truncation or iteration is running"))?;
        Ok(MaintenanceClaim(busy))
    }

    /// Pins the `begin` a checkpoint records (invariant 4).
    pub(crate) fn pin_begin(&self) -> BeginPin<'_> {
        let r = &self.retention;
        r.pinned.store(0, Ordering::SeqCst);
        let begin = self.hlog.begin_seq_cst();
        r.pinned.store(begin.raw(), Ordering::SeqCst);
        BeginPin {
            retention: r,
            begin,
        }
    }

    /// Moves `begin` to the start of `until`'s page (records never straddle pages, so a page
    /// start is always a record boundary, where recovery and compaction can parse from) and
    /// releases what no checkpoint needs any more.
    ///
    /// # Errors
    /// [`Error::Busy`] while a compaction or truncation runs; [`Error::Config`] for `until`
    /// below `begin` or beyond the part of the log that is only on the device (`safe_head`);
    /// I/O errors of deleting files (the truncation itself has then happened).
    pub(crate) fn truncate_until(&self, until: Address) -> Result<Truncation> {
        let _claim = self.claim_maintenance()?;
        self.truncate_claimed(until)
    }

    /// [`Engine::truncate_until`] under a held claim.
    pub(crate) fn truncate_claimed(&self, until: Address) -> Result<Truncation> {
        let begin_before = self.hlog.begin();
        if until < begin_before {
            return Err(Error::Config {
                field: "truncate address",
                reason: format!("{until} is below the log's begin {begin_before}"),
            });
        }
        self.hlog.check_poison()?;
        let geo = self.hlog.geometry();
        let to = geo.page_start(geo.page(until)).max(begin_before);
        self.hlog.shift_begin(to)?;
        let bytes_freed = self.release_space()?;
        let t = Truncation {
            begin_before,
            begin: self.hlog.begin(),
            released_until: Address::new(self.retention.released.load(Ordering::Acquire)),
            bytes_freed,
        };
        tracing::info!(
            begin = t.begin.raw(),
            released_until = t.released_until.raw(),
            bytes_freed,
            "log truncated"
        );
        Ok(t)
    }

    /// Releases device space below the highest address no retained or running checkpoint
    /// needs (invariant 3). Returns the bytes of segment files deleted. Another release running
    /// at the same time makes this one return 0.
    ///
    /// # Errors
    /// I/O errors of listing checkpoints or deleting files.
    pub(crate) fn release_space(&self) -> Result<u64> {
        let r = &self.retention;
        if r.releasing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(0);
        }
        let _release = MaintenanceClaim(&r.releasing);
        // Invariant 4: begin first, then the pin.
        let mut keep = self.hlog.begin_seq_cst().raw();
        keep = keep.min(r.pinned.load(Ordering::SeqCst));
        keep = keep.min(r.held.load(Ordering::SeqCst));
        let dir = self.checkpoint_dir().ok();
        let mut retained: Vec<(Token, u64)> = Vec::new();
        if let Some(dir) = &dir {
            for t in dir.tokens()? {
                if !dir.has_log_meta(t) {
                    continue;
                }
                // An unreadable log meta keeps everything: recovery would report it, and the
                // log it describes must still be there when it does.
                let begin = dir.read_log_meta(t).map_or(0, |m| m.begin);
                retained.push((t, begin));
            }
        }
        if let Some((_, newest)) = retained.last() {
            keep = keep.min(*newest);
        }
        // Whole pages only: the device zeroes reads below its truncation point, and a page's
        // records can only be found from its start.
        let geo = self.hlog.geometry();
        keep = geo.page_start(geo.page(Address::new(keep))).raw();
        if keep <= r.released.load(Ordering::Acquire) {
            return Ok(0);
        }
        if let Some(dir) = &dir {
            remove_needing_below(dir, &retained, keep)?;
        }
        let disk = self.hlog.disk();
        let before = disk.storage_bytes().unwrap_or(0);
        disk.truncate_before(keep)
            .map_err(|e| Error::io("deleting truncated log segments", e))?;
        let after = disk.storage_bytes().unwrap_or(before);
        self.hlog
            .forget_sums_below(self.hlog.geometry().page(Address::new(keep)));
        r.released.fetch_max(keep, Ordering::AcqRel);
        let freed = before.saturating_sub(after);
        r.totals.bytes_freed.fetch_add(freed, Ordering::Relaxed);
        Ok(freed)
    }
}

/// Removes the checkpoints of `retained` (token, begin; oldest first) whose log starts below
/// `keep`. The newest one never does (the caller bounds `keep` by its begin). The index part
/// of the newest index checkpoint older than the newest log checkpoint stays: recovery of the
/// newest may start from it.
fn remove_needing_below(dir: &CheckpointDir, retained: &[(Token, u64)], keep: u64) -> Result<()> {
    let Some((newest, _)) = retained.last() else {
        return Ok(());
    };
    let index_kept = dir
        .tokens()?
        .into_iter()
        .rev()
        .filter(|t| t <= newest)
        .find(|t| dir.read_index_meta(*t).is_ok());
    for (t, begin) in retained {
        if *begin >= keep {
            continue;
        }
        tracing::info!(token = %t, "removing a checkpoint whose log was truncated away");
        if Some(*t) == index_kept {
            dir.remove_log(*t)?;
        } else {
            dir.remove(*t)?;
        }
    }
    Ok(())
}
