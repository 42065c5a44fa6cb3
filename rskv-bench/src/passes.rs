//! Watches RsKv's compaction passes from outside the store, through its tracing
//! instrumentation: `Engine::compact` runs each pass inside an `info_span!("compact")` (target
//! `rskv::ops::compact`) and ends a successful one with an event whose fields are `scanned`,
//! `copied`, `superseded`, `tombstones` and `freed`. A pass starts when its span is created and
//! ends when the span closes, so a failed pass (no event) is seen too.
//!
//! This process's global tracing subscriber is [`Tracker`]: it says `never` to every other
//! callsite, so the store's hot paths pay nothing for it (tracing caches that answer per
//! callsite), and only the one span and its event reach it, a few times per pass. If the store
//! renames the span or its fields, no pass is seen: `--timeline` then says pass times are
//! unknown instead of guessing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// The module whose span and event mark a pass.
const TARGET: &str = "rskv::ops::compact";
/// The span of one pass.
const SPAN: &str = "compact";

/// One pass: its span's lifetime and what its closing event reported.
#[derive(Debug, Clone, Copy)]
pub struct PassRecord {
    pub start: Instant,
    /// `None` while it runs.
    pub end: Option<Instant>,
    /// The "compaction done" event's counts, if it came.
    pub done: Option<PassCounts>,
}

/// The fields of a pass's closing event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassCounts {
    pub scanned: u64,
    pub copied: u64,
    pub superseded: u64,
    pub tombstones: u64,
    pub freed: u64,
}

/// The passes seen so far, and whether one runs now.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Whether this tracker is the process's subscriber (else it sees nothing).
    installed: AtomicBool,
    /// Passes started so far.
    started: AtomicU64,
    /// Passes running now (compactions of one log exclude each other, but R2Kv compacts its
    /// hot log and its cold index's inner log side by side).
    running: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Open spans: their pass and reference count.
    open: BTreeMap<u64, (PassRecord, usize)>,
    finished: Vec<PassRecord>,
}

/// What the sampler reads on every tick: cheap, no lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassState {
    pub running: bool,
    pub started: u64,
}

static TRACKER: OnceLock<Tracker> = OnceLock::new();
/// Whether installing the tracker worked (set once; later callers wait for the first).
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// The process's tracker, installed as the global tracing subscriber on first use. If another
/// subscriber was installed first, the tracker sees nothing ([`Tracker::observing`] is false).
pub fn tracker() -> &'static Tracker {
    let t = TRACKER.get_or_init(Tracker::default);
    let ok = *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(Handle(t)).is_ok());
    t.installed.store(ok, Ordering::Release);
    t
}

impl Tracker {
    /// Whether passes can be seen at all.
    pub fn observing(&self) -> bool {
        self.installed.load(Ordering::Acquire)
    }

    pub fn state(&self) -> PassState {
        PassState {
            running: self.running.load(Ordering::Acquire) > 0,
            started: self.started.load(Ordering::Acquire),
        }
    }

    /// Every pass that started after `since` or was still running then, in start order; those
    /// still running have no end.
    pub fn passes_since(&self, since: Instant) -> Vec<PassRecord> {
        let inner = self.lock();
        let mut v: Vec<PassRecord> = inner
            .finished
            .iter()
            .chain(inner.open.values().map(|(p, _)| p))
            .filter(|p| !matches!(p.end, Some(e) if e < since))
            .copied()
            .collect();
        v.sort_by_key(|p| p.start);
        v
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    /// The pass spans this thread is inside, innermost last (only pass spans reach the
    /// tracker), so an event is credited to its own pass when passes of several logs overlap.
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `meta` is the pass span or an event of the compaction module.
fn wanted(meta: &Metadata<'_>) -> bool {
    meta.target() == TARGET && (meta.is_event() || meta.name() == SPAN)
}

/// The subscriber: a `'static` reference to the tracker.
struct Handle(&'static Tracker);

impl Subscriber for Handle {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        wanted(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }

    fn new_span(&self, _attrs: &Attributes<'_>) -> Id {
        let t = self.0;
        let mut inner = t.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let pass = PassRecord {
            start: Instant::now(),
            end: None,
            done: None,
        };
        inner.open.insert(id, (pass, 1));
        t.started.fetch_add(1, Ordering::AcqRel);
        t.running.fetch_add(1, Ordering::AcqRel);
        Id::from_u64(id)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut counts = Fields::default();
        event.record(&mut counts);
        if !counts.any {
            return;
        }
        // The store emits the event inside its pass's span, on the thread that entered it:
        // that span's pass, else (an event outside any span) the newest open one.
        let current = ENTERED.with(|e| e.borrow().last().copied());
        let mut inner = self.0.lock();
        let key = current
            .filter(|id| inner.open.contains_key(id))
            .or_else(|| inner.open.keys().next_back().copied());
        if let Some((pass, _)) = key.and_then(|k| inner.open.get_mut(&k)) {
            pass.done = Some(counts.counts);
        }
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        let id = span.into_u64();
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(i) = e.iter().rposition(|&x| x == id) {
                e.remove(i);
            }
        });
    }

    fn clone_span(&self, id: &Id) -> Id {
        if let Some((_, refs)) = self.0.lock().open.get_mut(&id.into_u64()) {
            *refs += 1;
        }
        id.clone()
    }

    fn try_close(&self, id: Id) -> bool {
        let t = self.0;
        let mut inner = t.lock();
        let key = id.into_u64();
        let Some((_, refs)) = inner.open.get_mut(&key) else {
            return false;
        };
        *refs -= 1;
        if *refs > 0 {
            return false;
        }
        if let Some((mut pass, _)) = inner.open.remove(&key) {
            pass.end = Some(Instant::now());
            inner.finished.push(pass);
            t.running.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }
}

/// Collects the counts of a "compaction done" event.
#[derive(Default)]
struct Fields {
    counts: PassCounts,
    /// Whether the event had `scanned` (else it is another event of the module).
    any: bool,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        let c = &mut self.counts;
        match field.name() {
            "scanned" => {
                c.scanned = value;
                self.any = true;
            }
            "copied" => c.copied = value,
            "superseded" => c.superseded = value,
            "tombstones" => c.tombstones = value,
            "freed" => c.freed = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, u64::try_from(value).unwrap_or(0));
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span and event shaped like RsKv's make one finished pass with the event's counts.
    #[test]
    fn a_pass_shaped_span_is_seen() {
        let t = tracker();
        assert!(t.observing());
        let since = Instant::now();
        let before = t.state();
        {
            // The same target, name and fields as `Engine::compact`.
            let span = tracing::info_span!(target: "rskv::ops::compact", "compact", begin = 1u64);
            let _in = span.enter();
            assert!(t.state().running);
            tracing::info!(
                target: "rskv::ops::compact",
                scanned = 4096u64,
                copied = 3u64,
                superseded = 2u64,
                tombstones = 1u64,
                freed = 0u64,
                "compaction done"
            );
        }
        // (Other tests of this binary may compact real stores meanwhile: look for this one.)
        assert!(t.state().started > before.started);
        let passes = t.passes_since(since);
        let p = passes
            .iter()
            .find(|p| p.done.is_some_and(|c| c.scanned == 4096))
            .expect("the pass");
        assert!(p.end.is_some());
        let c = p.done.unwrap_or_default();
        assert_eq!((c.copied, c.superseded, c.tombstones), (3, 2, 1));
    }

    /// The contract with the store: a real compaction of RsKv is seen, with the bytes it
    /// reports. Fails if RsKv renames its `compact` span or the event's fields.
    #[test]
    fn a_real_compaction_is_seen() {
        use rskv::device::file_system_disk::FileSystemDisk;
        use rskv::{Config, RsKv};
        let t = tracker();
        let dir = std::env::temp_dir().join(format!("rskv-bench-passes-{}", std::process::id()));
        let kv: RsKv<u64, u64, FileSystemDisk> = RsKv::open(
            Config::new()
                .table_size(1 << 12)
                .log_memory_size(1 << 20)
                .page_size(64 << 10),
            FileSystemDisk::new(&dir).unwrap(),
        )
        .unwrap();
        // Two rounds over 4 MB of records with 1 MiB of log memory: the first round's records
        // are on disk, superseded by the second's.
        for round in 0..2u64 {
            for k in 0..100_000u64 {
                kv.insert(&k, &(k + round)).unwrap();
            }
        }
        let since = Instant::now();
        let until = kv.stats().markers.safe_head;
        let c = kv.compact(until).unwrap();
        let passes = t.passes_since(since);
        drop(kv);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(c.scanned_bytes > 0, "{c:?}");
        let p = passes
            .iter()
            .find(|p| p.done.is_some_and(|d| d.scanned == c.scanned_bytes))
            .unwrap_or_else(|| panic!("no pass scanned {} bytes: {passes:?}", c.scanned_bytes));
        let d = p.done.unwrap_or_default();
        assert_eq!((d.copied, d.superseded), (c.copied, c.superseded));
        assert!(p.end.is_some_and(|e| e > p.start));
    }
}
