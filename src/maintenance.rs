//! The store's maintenance thread: background work no operation may do itself.
//!
//! Index growth waits for every epoch-protected thread, so the operation that notices the index
//! needs to grow cannot grow it (it would wait for itself). One thread per store does such
//! work instead, as F2's and Tsavorite's background tasks do. It wakes every
//! [`Config::maintenance_interval`](crate::Config::maintenance_interval), or at once when an
//! operation crosses a threshold a task set up (an overflow bucket allocation that makes the
//! index need to grow unparks it; nothing is done per operation), and runs one *pass*.
//!
//! # Tasks
//! A pass calls each task once, in order ([`Worker::pass`]). A task decides for itself whether
//! there is work, returns quickly when not, and never panics: a failure (the index is full, a
//! checkpoint holds the claim) is logged and tried again at the next pass. To add a task (log
//! compaction is next), add its setting to [`Settings`] (and to [`Settings::any`]) and one call
//! to `pass`; a task that can be woken early arranges that from its own check, as
//! [`Worker::grow_index_if_needed`] does with [`MemIndex::watch_overflow`].
//!
//! # Lifetime
//! The thread holds the engine (an `Arc`) and runs until its [`Maintainer`] is dropped, which
//! the store does first when it is closed or dropped: the drop sets the stop flag, unparks the
//! thread and joins it. A task in progress finishes first; a growth is bounded work (it waits
//! only for protected threads, and none is left once the store is being dropped: every
//! operation and session borrows the store).
//!
//! [`MemIndex::watch_overflow`]: crate::index::MemIndex::watch_overflow

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::ops::compact::LogCompaction;
use crate::ops::growth::NoGrowth;
use crate::ops::Engine;

/// What the maintenance thread does, from the store's [`Config`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Time between passes when nothing wakes the thread.
    pub(crate) interval: Duration,
    /// Grow the index when the overflow buckets it gained since its last growth pass this
    /// fraction of its buckets (`Config::auto_grow_index`).
    pub(crate) grow_at: Option<f64>,
    /// Keep the log within a disk budget (`Config::log_compaction`).
    pub(crate) compaction: Option<LogCompaction>,
    /// Move memory between the log and the read cache (`Config::memory_split`).
    pub(crate) adapt_split: bool,
}

impl Settings {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            interval: config.maintenance_interval,
            grow_at: config.auto_grow_index,
            compaction: config.log_compaction,
            adapt_split: config.memory_split == crate::MemorySplit::Adaptive
                && config.read_cache_size.is_some(),
        }
    }

    /// Whether any task is enabled (else no thread is started).
    pub(crate) fn any(&self) -> bool {
        self.grow_at.is_some() || self.compaction.is_some() || self.adapt_split
    }
}

/// The running maintenance thread of one store; stops it when dropped.
pub(crate) struct Maintainer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Maintainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintainer")
            .field(
                "running",
                &self.handle.as_ref().is_some_and(|h| !h.is_finished()),
            )
            .finish()
    }
}

impl Maintainer {
    /// Starts the thread for `engine`'s store.
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot be started.
    pub(crate) fn start<D: Disk>(engine: Arc<Engine<D>>, settings: Settings) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            engine,
            settings,
            stop: stop.clone(),
            refused_at: Cell::new(None),
            last_failure: Cell::new(None),
            backoff: Cell::new(1),
            next_compaction: Cell::new(Instant::now()),
            last_compaction_failure: Cell::new(None),
            split: std::cell::RefCell::new(crate::ops::split::Split::default()),
        };
        let handle = std::thread::Builder::new()
            .name("rskv-maintenance".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::io("starting the maintenance thread", e))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it (a pass in progress finishes first).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            if handle.join().is_err() {
                tracing::error!("the maintenance thread panicked");
            }
        }
    }
}

impl Drop for Maintainer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What became of a maintenance thread's background tasks, for the store's stats (RsKv's and
/// R2Kv's): the thread has no caller to return a failure to. Touched once per task, never by
/// operations.
#[derive(Debug, Default)]
pub(crate) struct MaintenanceHealth {
    failures: AtomicU64,
    /// The last failure, until a task succeeds.
    last_error: Mutex<Option<String>>,
}

impl MaintenanceHealth {
    /// Counts a failure and keeps it; returns whether it repeats the last one (so callers log
    /// a failure that recurs every interval, such as a full disk, once).
    pub(crate) fn failed(&self, e: &Error) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let what = e.to_string();
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        let again = last.as_deref() == Some(what.as_str());
        *last = Some(what);
        again
    }

    /// A task succeeded: the last failure is no longer current. Returns whether there was one.
    pub(crate) fn succeeded(&self) -> bool {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        last.take().is_some()
    }

    /// Failures counted since the store was opened.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The last failure, until a task succeeded.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The thread's side.
struct Worker<D: Disk> {
    engine: Arc<Engine<D>>,
    settings: Settings,
    stop: Arc<AtomicBool>,
    /// The bucket count at which the budget last refused a growth (logged once per size).
    refused_at: Cell<Option<u32>>,
    /// The last growth failure logged (logged again only when it changes).
    last_failure: Cell<Option<String>>,
    /// Intervals to wait after a wasted compaction pass (doubles up to
    /// [`MAX_COMPACTION_BACKOFF`], back to 1 after a useful one).
    backoff: Cell<u32>,
    /// No compaction pass before this.
    next_compaction: Cell<Instant>,
    /// The last compaction failure logged.
    last_compaction_failure: Cell<Option<String>>,
    /// The adaptive split's state (`ops::split`).
    split: std::cell::RefCell<crate::ops::split::Split>,
}

/// Most check intervals the thread waits after wasted compaction passes.
const MAX_COMPACTION_BACKOFF: u32 = 64;

impl<D: Disk> Worker<D> {
    fn run(self) {
        lower_thread_priority();
        while !self.stopping() {
            self.pass();
            // Returns at once if unparked meanwhile (the unpark is remembered).
            std::thread::park_timeout(self.settings.interval);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// One pass: each task once, in order. Add new tasks here.
    fn pass(&self) {
        self.rewrite_failed_pages();
        self.grow_index_if_needed();
        self.compact_if_needed();
        if self.settings.adapt_split {
            self.engine.adapt_split(&mut self.split.borrow_mut());
        }
        self.engine
            .growth
            .maintenance_passes
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the log pages whose write failed again (hlog invariant 9), so a store whose disk
    /// was full works on by itself once the disk has room, without waiting for a checkpoint.
    fn rewrite_failed_pages(&self) {
        if self.engine.hlog.check_poison().is_err() {
            match self.engine.hlog.retry_failed_writes() {
                Ok(()) => self.succeeded(),
                Err(e) => self.failed(&e),
            }
        }
    }

    /// A background task failed: counted and kept for [`crate::Stats`] (the thread has no
    /// caller to return it to).
    fn failed(&self, e: &Error) {
        self.engine.growth.health.failed(e);
    }

    /// A background task succeeded: the last failure is no longer current (unless the log is
    /// still poisoned: then rewriting its failed pages is still failing).
    fn succeeded(&self) {
        if self.engine.hlog.check_poison().is_err() {
            return;
        }
        if self.engine.growth.health.succeeded() {
            tracing::info!("background maintenance succeeded again");
        }
    }

    /// Compacts the oldest part of the log when it passed the budget's trigger
    /// ([`LogCompaction`]); slows writers while it is past the hard limit; backs off after
    /// passes that give back almost nothing.
    fn compact_if_needed(&self) {
        let Some(policy) = &self.settings.compaction else {
            return;
        };
        let e = &self.engine;
        if Instant::now() < self.next_compaction.get() {
            return;
        }
        match e.compact_if_due(policy) {
            Ok(None) => {}
            Ok(Some(c)) => {
                self.last_compaction_failure.set(None);
                self.succeeded();
                if c.wasted() {
                    e.retention
                        .totals
                        .wasted_passes
                        .fetch_add(1, Ordering::Relaxed);
                    let wait = self.backoff.get();
                    self.backoff.set((wait * 2).min(MAX_COMPACTION_BACKOFF));
                    self.next_compaction
                        .set(Instant::now() + self.settings.interval * wait);
                    tracing::debug!(
                        copied = c.copied,
                        records = c.records,
                        wait_intervals = wait,
                        "compaction pass gave back little; waiting before the next"
                    );
                } else {
                    self.backoff.set(1);
                    // Still past the trigger: go on at once rather than after an interval.
                    std::thread::current().unpark();
                }
            }
            Err(err) => {
                let what = err.to_string();
                let again = self.last_compaction_failure.replace(Some(what.clone())) == Some(what);
                if !matches!(err, Error::Busy(_)) {
                    self.failed(&err);
                }
                if matches!(err, Error::Busy(_)) || again {
                    tracing::debug!(error = %err, "background compaction deferred to the next pass");
                } else {
                    tracing::warn!(error = %err, "background compaction failed; retrying at the next pass");
                }
            }
        }
    }

    /// Doubles the index when its overflow buckets passed the threshold since its last growth
    /// (and the memory budget allows it); else asks to be woken when an allocation passes it.
    fn grow_index_if_needed(&self) {
        let Some(fraction) = self.settings.grow_at else {
            return;
        };
        let index = &self.engine.index;
        let bits = index.bits();
        // Saturating float-to-int conversion: a huge fraction means "never".
        let limit = (fraction * (1u64 << bits) as f64) as u64;
        if index.overflow_since_growth() <= limit {
            index.watch_overflow(Some(limit), &std::thread::current());
            return;
        }
        match self.engine.grow_index() {
            Ok(()) => {
                self.last_failure.set(None);
                self.succeeded();
                // Keys may have come faster than the growth: look again at once.
                std::thread::current().unpark();
            }
            Err(NoGrowth::Budget { need, share }) => {
                index.watch_overflow(None, &std::thread::current());
                if self.refused_at.replace(Some(bits)) != Some(bits) {
                    tracing::warn!(
                        buckets = 1u64 << bits,
                        need,
                        share,
                        "the index needs to grow but the memory budget does not allow it"
                    );
                }
            }
            Err(NoGrowth::Failed(e)) => {
                let what = e.to_string();
                let again = self.last_failure.replace(Some(what.clone())) == Some(what);
                if !matches!(e, Error::Busy(_)) {
                    self.failed(&e);
                }
                if matches!(e, Error::Busy(_)) || again {
                    tracing::debug!(error = %e, "automatic index growth deferred to the next pass");
                } else {
                    tracing::warn!(error = %e, "automatic index growth failed; retrying at the next pass");
                }
            }
        }
    }
}

/// Lowers the calling thread's CPU priority (nice 10 on Linux; a no-op elsewhere or when
/// refused): background threads (checkpoints, maintenance) yield to the threads serving
/// operations, as compaction threads do in LSM stores.
pub(crate) fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes its
    // nice value, and a refusal is ignored.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::sync::{Arc, Weak};
    use std::time::Duration;

    use crate::device::null_disk::NullDisk;
    use crate::ops::Engine;
    use crate::{Config, RsKv};

    type Kv = RsKv<u64, u64, NullDisk>;

    fn open(config: Config) -> (Kv, Weak<Engine<NullDisk>>) {
        let kv: Kv = RsKv::open(config.log_memory_size(16 << 20), NullDisk::new()).unwrap();
        let engine = Arc::downgrade(&kv.engine);
        (kv, engine)
    }

    /// Runs `body` on a thread of its own; fails if it has not finished within a minute (a
    /// hang guard, not a timing measure).
    fn within_a_minute(body: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            body();
            let _ = tx.send(());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => worker.join().unwrap(),
            Err(RecvTimeoutError::Timeout) => panic!("no answer after 60 s: a hang"),
            Err(RecvTimeoutError::Disconnected) => {
                if let Err(panic) = worker.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }

    #[test]
    fn dropping_or_closing_the_store_stops_the_thread() {
        let (kv, engine) = open(Config::new());
        // The store and the thread hold the engine.
        assert_eq!(engine.strong_count(), 2);
        drop(kv);
        assert!(
            engine.upgrade().is_none(),
            "the maintenance thread outlived the store"
        );
        let (kv, engine) = open(Config::new());
        kv.close().unwrap();
        assert!(
            engine.upgrade().is_none(),
            "the maintenance thread outlived close"
        );
    }

    #[test]
    fn no_thread_runs_without_a_task() {
        let (kv, engine) = open(Config::new().auto_grow_index(None));
        assert_eq!(engine.strong_count(), 1);
        assert_eq!(kv.stats().maintenance_passes, 0);
    }

    #[test]
    fn dropping_the_store_while_it_grows_does_not_hang() {
        within_a_minute(|| {
            // Drops land at every point of the growths these inserts set off.
            for round in 0..20u64 {
                let (kv, engine) = open(Config::new().table_size(1 << 4));
                for k in 0..(5_000 + 2_000 * round) {
                    kv.insert(&k, &k).unwrap();
                }
                drop(kv);
                assert!(engine.upgrade().is_none());
            }
        });
    }

    #[test]
    fn an_operation_crossing_the_threshold_wakes_the_thread() {
        // With an interval of an hour, only the wakeup makes it grow.
        let (kv, _) = open(
            Config::new()
                .table_size(1 << 4)
                .maintenance_interval(Duration::from_secs(3600)),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while kv.stats().maintenance_passes == 0 {
            assert!(std::time::Instant::now() < deadline, "no first pass");
            std::thread::yield_now();
        }
        for k in 0..2_000u64 {
            kv.insert(&k, &k).unwrap();
        }
        while kv.stats().index_growths == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread was not woken: {:?}",
                kv.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
