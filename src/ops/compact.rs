//! Lookup compaction (FASTER's `CompactWithLookup`): copy the records of `[begin, until)` that
//! are still the newest of their key to the tail, then truncate. Design, invariants and the
//! interleavings with live operations: `docs/DESIGN.md`, "Log maintenance".
//!
//! In short: workers read the range from the device in large sequential reads
//! ([`crate::ops::scan`]). A live record at `x` is copied by a conditional insert with floor
//! `x + 1`: it appends a copy and swings the index entry only if no record of the key exists
//! at `x + 1` or above, checked and swung with the same CAS as any update, so a concurrent
//! update always wins. Tombstones are dropped: in one log every older record of the key lies
//! below them and goes with the truncation. Only when every worker finished does `begin` move
//! (`ops::truncate`); a failed pass moves nothing, and the copies it made are ordinary records
//! holding the key's current value.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::status::{Error, Result, Status};
use crate::device::Disk;
use crate::hlog::HybridLog;
use crate::index::KeyHash;
use crate::ops::rmw::{Decision, Latest};
use crate::ops::scan::{for_each_record, pages_per_read, read_pages};
use crate::ops::truncate::{MaintenanceClaim, Truncation};
use crate::ops::Engine;

/// Conditional inserts a compaction worker keeps going at once (each may wait for a device
/// read of its key's chain) when nothing holds it back: a pass asked for by hand, and a
/// background pass while the log is over its budget.
const COPIES_IN_FLIGHT: usize = 64;

/// How many conditional inserts each worker of a pass keeps in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// In flight while the log is within `budget`.
    pub(crate) lookups: usize,
    /// Above this many bytes of log, [`COPIES_IN_FLIGHT`].
    pub(crate) budget: u64,
}

impl Pace {
    /// No holding back.
    pub(crate) const FULL: Pace = Pace {
        lookups: COPIES_IN_FLIGHT,
        budget: 0,
    };
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compaction {
    /// Bytes of log read from the device.
    pub scanned_bytes: u64,
    /// Valid records met in the range (tombstones included).
    pub records: u64,
    /// Records that were still their key's newest and were copied to the tail.
    pub copied: u64,
    /// Records that a newer record of their key superseded: left to the truncation.
    pub superseded: u64,
    /// Tombstones dropped (every older record of their key goes with the truncation).
    pub tombstones: u64,
    /// The truncation that ended the pass (`None` when the range was empty).
    pub truncation: Option<Truncation>,
}

impl Compaction {
    fn add(&mut self, o: &Compaction) {
        self.scanned_bytes += o.scanned_bytes;
        self.records += o.records;
        self.copied += o.copied;
        self.superseded += o.superseded;
        self.tombstones += o.tombstones;
    }

    /// Bytes of segment files the pass deleted (0 until a checkpoint no longer needs them,
    /// when the store has checkpoints).
    #[must_use]
    pub fn bytes_freed(&self) -> u64 {
        self.truncation.map_or(0, |t| t.bytes_freed)
    }
}

impl<D: Disk> Engine<D> {
    /// Compacts the log below `until` (rounded down to its page) with `threads` workers.
    ///
    /// # Errors
    /// [`Error::Busy`] while another compaction or truncation runs, or when called from
    /// inside an operation of this store; [`Error::Config`] for `until` below `begin` or beyond
    /// `safe_head`, or a store whose contexts use a hash it was not told about; device and
    /// corruption errors (nothing is truncated then).
    pub(crate) fn compact(&self, until: Address, threads: usize, pace: Pace) -> Result<Compaction> {
        let claim = self.claim_maintenance()?;
        self.compact_into(&claim, until, threads, pace, self)
    }

    /// [`Engine::compact`] under the maintenance claim the caller holds, with the records that
    /// may still be newest going to `mover` (R2Kv moves them to its cold tier) instead of this
    /// log's tail.
    ///
    /// # Errors
    /// As [`Engine::compact`] (but for the claim), and the mover's.
    pub(crate) fn compact_into<M: Mover>(
        &self,
        _claim: &MaintenanceClaim<'_>,
        until: Address,
        threads: usize,
        pace: Pace,
        mover: &M,
    ) -> Result<Compaction> {
        if self.epoch.is_protected_here() {
            return Err(Error::Busy(
                "compact called from inside an operation of this store; its copies would \
                 wait for the operation that calls it",
            ));
        }
        let begin = self.hlog.begin();
        let safe_head = self.hlog.safe_head();
        if until < begin || until > safe_head {
            return Err(Error::Config {
                field: "compact address",
                reason: format!(
                    "{until} is outside the part of the log that is only on the device \
                     [{begin}, {safe_head}]"
                ),
            });
        }
        self.hasher.check()?;
        let geo = self.hlog.geometry();
        let until = geo.page_start(geo.page(until)).max(begin);
        if until == begin {
            return Ok(Compaction::default());
        }
        let span = tracing::info_span!("compact", begin = begin.raw(), until = until.raw());
        let _entered = span.enter();
        let lookups = || self.lookups_in_flight(pace);
        let mut total = scan_and_move(&self.hlog, begin, until, threads, &lookups, mover)?;
        total.truncation = Some(self.truncate_claimed(until)?);
        let t = &self.retention.totals;
        t.passes.fetch_add(1, Ordering::Relaxed);
        t.scanned_bytes
            .fetch_add(total.scanned_bytes, Ordering::Relaxed);
        t.copied.fetch_add(total.copied, Ordering::Relaxed);
        tracing::info!(
            scanned = total.scanned_bytes,
            copied = total.copied,
            superseded = total.superseded,
            tombstones = total.tombstones,
            freed = total.bytes_freed(),
            "compaction done"
        );
        Ok(total)
    }

    /// Conditional inserts to keep in flight for the next read's records.
    fn lookups_in_flight(&self, pace: Pace) -> usize {
        if self.log_bytes() > pace.budget {
            COPIES_IN_FLIGHT.max(pace.lookups)
        } else {
            pace.lookups
        }
    }
}

thread_local! {
    /// Whether this thread is a compaction worker (never throttled).
    static COMPACTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a compaction worker.
pub(crate) fn compacting_here() -> bool {
    COMPACTING.with(std::cell::Cell::get)
}

/// Where a pass sends the records it scans that may still be their key's newest.
pub(crate) trait Mover: Sync {
    /// Whether tombstones move too (hot to cold: a delete must stay a delete in the tier
    /// below) or are dropped (within one log every older record of the key lies below them
    /// and goes with the truncation).
    const MOVES_TOMBSTONES: bool;

    /// Moves `key -> value` (`None`: a tombstone), logged at `address`, unless a newer record
    /// of the key exists; returns whether it did.
    fn move_record(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        address: Address,
    ) -> impl std::future::Future<Output = Result<bool>> + Send;

    /// A hint, given [`PREFETCH_AHEAD`] records before `key`'s move starts (its index
    /// buckets) and again half as far ahead (what those buckets lead to, by then cached): start
    /// loading what the move will touch first, so that the cache misses of a read's moves overlap
    /// instead of following one another. Never fails and changes nothing.
    fn prefetch(&self, _key: &[u8], _stage: Prefetch) {}
}

/// What [`Mover::prefetch`] loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefetch {
    /// The index buckets of the key.
    Buckets,
    /// The records the (by then cached) buckets lead to.
    Records,
}

/// How many records ahead of its move a record's buckets are prefetched (its records half as
/// far ahead).
pub(crate) const PREFETCH_AHEAD: usize = 16;

/// Within one log: a conditional insert at the tail.
impl<D: Disk> Mover for Engine<D> {
    const MOVES_TOMBSTONES: bool = false;

    async fn move_record(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        address: Address,
    ) -> Result<bool> {
        let Some(value) = value else {
            return Ok(false);
        };
        let hash = KeyHash::new(self.hasher.rehash(key)?);
        let (key, value) = (Encoded::from_bytes(key), Encoded::from_bytes(value));
        let floor = Address::new(address.raw() + 1);
        let mut decide = |latest: Latest<'_>| {
            Ok(match latest {
                Latest::Absent => Decision::Write(value.clone()),
                Latest::Deleted | Latest::Value(_) => Decision::Abort,
            })
        };
        let status = self
            .update_async(&key, hash, floor, false, &mut decide)
            .await?;
        Ok(status == Status::Ok)
    }

    fn prefetch(&self, key: &[u8], stage: Prefetch) {
        self.prefetch_key(key, stage);
    }
}

/// Reads `[begin, until)` of `log` (whole pages, all on the device) with `threads` workers and
/// hands every valid record to `mover`, keeping `lookups()` moves in flight per worker. Moves
/// nothing itself: the caller truncates once this returned without error.
///
/// # Errors
/// Device and corruption errors, and the mover's (the other workers stop at their next read).
pub(crate) fn scan_and_move<D: Disk, M: Mover>(
    log: &HybridLog<D>,
    begin: Address,
    until: Address,
    threads: usize,
    lookups: &(dyn Fn() -> usize + Sync),
    mover: &M,
) -> Result<Compaction> {
    let geo = log.geometry();
    let work = Work {
        next: AtomicU64::new(geo.page(begin)),
        end: geo.page(until),
        begin,
        failed: AtomicBool::new(false),
    };
    let results: Vec<Result<Compaction>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    COMPACTING.with(|c| c.set(true));
                    let result = move_chunks(log, &work, lookups, mover);
                    if result.is_err() {
                        work.failed.store(true, Ordering::Release);
                    }
                    result
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(Error::io(
                        "compacting the log",
                        std::io::Error::other("a compaction worker panicked"),
                    ))
                })
            })
            .collect()
    });
    let mut total = Compaction::default();
    for r in results {
        total.add(&r?);
    }
    Ok(total)
}

/// One worker of [`scan_and_move`]: takes a read's pages at a time until none are left.
fn move_chunks<D: Disk, M: Mover>(
    log: &HybridLog<D>,
    work: &Work,
    lookups: &(dyn Fn() -> usize + Sync),
    mover: &M,
) -> Result<Compaction> {
    let geo = log.geometry();
    let per_read = pages_per_read(log);
    let page_size = log.page_size();
    let mut c = Compaction::default();
    loop {
        if work.failed.load(Ordering::Acquire) {
            return Ok(c);
        }
        let first = work.next.fetch_add(per_read, Ordering::AcqRel);
        if first >= work.end {
            return Ok(c);
        }
        let count = per_read.min(work.end - first);
        let buf = read_pages(log, first, count)?;
        c.scanned_bytes += buf.len() as u64;
        let mut live = Vec::new();
        for (k, bytes) in buf.as_slice().chunks_exact(page_size).enumerate() {
            let page = first + k as u64;
            for_each_record(geo, page, bytes, work.begin, |address, rec| {
                if rec.info().invalid() {
                    return Ok(());
                }
                c.records += 1;
                if rec.state().tombstone() {
                    c.tombstones += 1;
                    if M::MOVES_TOMBSTONES {
                        live.push((address, rec.key(), None));
                    }
                } else {
                    live.push((address, rec.key(), Some(rec.value())));
                }
                Ok(())
            })?;
        }
        // The lookups of a read's records run together: those whose chain continues on the
        // device keep their reads in flight at once.
        let hint = |i: usize, stage: Prefetch| {
            if let Some(&(_, key, _)) = live.get(i) {
                mover.prefetch(key, stage);
            }
        };
        for i in 0..PREFETCH_AHEAD {
            hint(i, Prefetch::Buckets);
            hint(i / 2, Prefetch::Records);
        }
        let moves = live.iter().enumerate().map(|(i, &(address, key, value))| {
            hint(i + PREFETCH_AHEAD, Prefetch::Buckets);
            hint(i + PREFETCH_AHEAD / 2, Prefetch::Records);
            mover.move_record(key, value, address)
        });
        // Every move runs to its end (as before: none is dropped half-way); the first error
        // is returned after them.
        let mut first_error = None;
        crate::ops::pending::run_window(moves, lookups(), |moved| match moved {
            Ok(true) => c.copied += 1,
            Ok(false) => c.superseded += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        });
        if let Some(e) = first_error {
            return Err(e);
        }
    }
}

/// The pages of one pass, handed out to workers a read at a time.
struct Work {
    next: AtomicU64,
    end: u64,
    begin: Address,
    failed: AtomicBool,
}

/// Background log compaction: keep the log (from its begin to its tail) within a disk
/// budget, as F2 does. Set with [`Config::log_compaction`](crate::Config::log_compaction);
/// off by default. The store's maintenance thread checks every `Config::maintenance_interval`
/// whether the log passed `trigger * budget` and then compacts `fraction` of it (at most
/// `max_pass` bytes) from its begin with `threads` workers. A pass that gives back less than a
/// tenth of what it scanned doubles the wait before the next one (up to 64 intervals), so a log
/// of live data is not rewritten over and over. While the log is past `budget + max_pass`,
/// operations of other threads pause 100 µs before they start, so compaction catches up instead
/// of the disk filling.
///
/// Space comes back at once for a store without checkpoints; with checkpoints, when the next
/// checkpoint records the new begin (see [`RsKv::truncate_until`](crate::RsKv::truncate_until)).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LogCompaction {
    /// Bytes of log the store may keep.
    pub budget: u64,
    /// Compact once the log passes this fraction of the budget (F2: 0.8).
    pub trigger: f64,
    /// Fraction of the log a pass compacts, from its begin (F2: 0.2).
    pub fraction: f64,
    /// Most bytes one pass scans (F2: 256 MiB).
    pub max_pass: u64,
    /// Worker threads of a pass (default 1: with two, a pass took more of a 2-core machine
    /// from the foreground; see `LogCompaction::lookups_in_flight`).
    pub threads: usize,
    /// Lookups each worker keeps in flight while the log is within its budget (default 4).
    /// Each may wait for a device read, and the foreground's reads queue behind them: a few
    /// suffice to keep pace with the appends, and the log is back within budget long before
    /// `budget + max_pass`. Over the budget a pass goes full speed (64 per worker).
    pub lookups_in_flight: usize,
}

impl LogCompaction {
    /// F2's settings with a budget of `bytes`.
    #[must_use]
    pub fn with_budget(bytes: u64) -> Self {
        Self {
            budget: bytes,
            trigger: 0.8,
            fraction: 0.2,
            max_pass: 256 << 20,
            threads: 1,
            lookups_in_flight: DEFAULT_LOOKUPS,
        }
    }

    /// Sets the trigger fraction.
    #[must_use]
    pub fn trigger(mut self, fraction: f64) -> Self {
        self.trigger = fraction;
        self
    }

    /// Sets the fraction compacted per pass.
    #[must_use]
    pub fn fraction(mut self, fraction: f64) -> Self {
        self.fraction = fraction;
        self
    }

    /// Sets the most bytes scanned per pass.
    #[must_use]
    pub fn max_pass(mut self, bytes: u64) -> Self {
        self.max_pass = bytes;
        self
    }

    /// Sets the worker threads of a pass.
    #[must_use]
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Sets the lookups each worker keeps in flight while the log is within its budget.
    #[must_use]
    pub fn lookups_in_flight(mut self, lookups: usize) -> Self {
        self.lookups_in_flight = lookups;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Err(Error::Config { field, reason });
        if self.budget < 1 << 20 {
            return bad(
                "log_compaction.budget",
                format!("{} bytes is under 1 MiB", self.budget),
            );
        }
        for (field, f) in [
            ("log_compaction.trigger", self.trigger),
            ("log_compaction.fraction", self.fraction),
        ] {
            if !(f > 0.0 && f <= 1.0) {
                return bad(field, format!("{f} is not in (0, 1]"));
            }
        }
        if self.max_pass < 1 << 20 {
            return bad(
                "log_compaction.max_pass",
                format!("{} bytes is under 1 MiB", self.max_pass),
            );
        }
        if !(1..=64).contains(&self.threads) {
            return bad(
                "log_compaction.threads",
                format!("{} is not in 1..=64", self.threads),
            );
        }
        if !(1..=COPIES_IN_FLIGHT).contains(&self.lookups_in_flight) {
            return bad(
                "log_compaction.lookups_in_flight",
                format!(
                    "{} is not in 1..={COPIES_IN_FLIGHT}",
                    self.lookups_in_flight
                ),
            );
        }
        Ok(())
    }
}

/// [`LogCompaction::lookups_in_flight`] by default.
const DEFAULT_LOOKUPS: usize = 4;

/// A pass that gives back less than this fraction of what it scanned counts as wasted: the
/// next one waits longer.
pub(crate) const WASTED_PASS: f64 = 0.1;

impl<D: Disk> Engine<D> {
    /// Bytes of log between `begin` and the tail.
    pub(crate) fn log_bytes(&self) -> u64 {
        let m = self.hlog.markers();
        m.tail.raw().saturating_sub(m.begin.raw())
    }

    /// One pass of the background maintenance: compacts the oldest part of the log if it has
    /// passed the trigger. Returns the pass, or `None` when none was due (or possible: the part
    /// to compact must be on the device only).
    ///
    /// # Errors
    /// As [`Engine::compact`]; `Busy` when a compaction, truncation or scan runs.
    pub(crate) fn compact_if_due(&self, p: &LogCompaction) -> Result<Option<Compaction>> {
        let size = self.log_bytes();
        if (size as f64) < p.trigger * p.budget as f64 {
            return Ok(None);
        }
        let m = self.hlog.markers();
        let span = ((size as f64 * p.fraction) as u64).clamp(1, p.max_pass.max(1));
        let until = Address::new((m.begin.raw() + span).min(m.safe_head.raw()));
        let geo = self.hlog.geometry();
        if geo.page(until) <= geo.page(m.begin) {
            return Ok(None);
        }
        let pace = Pace {
            lookups: p.lookups_in_flight,
            budget: p.budget,
        };
        self.compact(until, p.threads, pace).map(Some)
    }
}

impl Compaction {
    /// Whether the pass gave back less than [`WASTED_PASS`] of what it scanned (estimated by
    /// records: the log holds mostly live data, so rewriting it again soon would be wasted).
    #[must_use]
    pub(crate) fn wasted(&self) -> bool {
        self.records > 0 && (self.copied as f64) > (1.0 - WASTED_PASS) * self.records as f64
    }
}
