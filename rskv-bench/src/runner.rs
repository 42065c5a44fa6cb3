//! One run: generate the streams, open the store, load, warm up, measure, verify.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::results::{Io, Latency, ProcIo, Rss, RunResult, Verify};
use crate::spec::{MemoryPlan, RunLength, RunSpec, Warmup};
use crate::store::{BenchSession, Finished, ReadCheck, Store};
use crate::sysinfo::{disk_usage, peak_rss, rss};
use crate::workload::{generate_stream, stream_seed, KeyGen, Op, OpKind, Permutation};

/// Operations between two looks at the stop flag: small, so a slow (disk-bound) store stops
/// promptly; a relaxed load of an unchanging line costs next to nothing.
const STOP_CHECK_MASK: u64 = 15;
/// Operations between two updates of the shared progress counter.
const PROGRESS_EVERY: u64 = 1 << 14;
/// Largest latency the histogram records (an hour, in nanoseconds).
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// Verification counts of one thread.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) reads_ok: u64,
    pub(crate) missing: u64,
    pub(crate) wrong: u64,
    pub(crate) errors: u64,
    pub(crate) first_problem: Option<String>,
    panicked: bool,
}

impl Counters {
    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(what());
        }
    }

    pub(crate) fn check(&mut self, op: &str, key: u64, found: ReadCheck, missing_allowed: bool) {
        match found {
            ReadCheck::Ok => self.reads_ok += 1,
            ReadCheck::Missing => {
                self.missing += 1;
                if !missing_allowed {
                    self.note(|| format!("{op} of loaded key {key} found nothing"));
                }
            }
            ReadCheck::Wrong => {
                self.wrong += 1;
                self.note(|| format!("{op} of key {key} returned a value that does not verify"));
            }
            ReadCheck::Unchecked => {}
        }
    }

    pub(crate) fn error(&mut self, op: &str, key: u64, e: &anyhow::Error) {
        self.errors += 1;
        self.note(|| format!("{op} of key {key} failed: {e:#}"));
    }

    pub(crate) fn merge(&mut self, o: Counters) {
        self.reads_ok += o.reads_ok;
        self.missing += o.missing;
        self.wrong += o.wrong;
        self.errors += o.errors;
        self.panicked |= o.panicked;
        if self.first_problem.is_none() {
            self.first_problem = o.first_problem;
        }
    }
}

/// What a run does during its measured phase and after it. A plain run sleeps through the
/// measured phase, then drops the store; the checkpoint scenario takes a checkpoint meanwhile
/// and recovers from it afterwards.
pub(crate) trait Scenario<S: Store> {
    /// Runs on the coordinating thread while the workers measure (duration runs only); the
    /// measured phase ends when this returns.
    fn measure(&mut self, _store: &S, probe: &Probe<'_>) {
        probe.sleep_run();
    }

    /// Whether --verify-all reads every key right after the run (else the scenario does).
    fn verify_all_after_run(&self) -> bool {
        true
    }

    /// After the run, with `result` filled in: takes the store. An error fails the run.
    fn finish(self, store: S, result: &mut RunResult) -> anyhow::Result<()>
    where
        Self: Sized,
    {
        drop(store);
        let _ = result;
        Ok(())
    }
}

/// The plain run.
struct Plain;

impl<S: Store> Scenario<S> for Plain {}

/// Runs `spec` on the store `open` makes: a plain run, or with `--timeline` a sampled one.
pub fn execute<S: Store>(
    spec: &RunSpec,
    plan: &MemoryPlan,
    open: impl FnOnce() -> anyhow::Result<S>,
) -> anyhow::Result<RunResult> {
    match spec.timeline_secs {
        Some(secs) => execute_with(
            spec,
            plan,
            open,
            crate::timeline::TimelineRun::new(spec, secs),
        ),
        None => execute_with(spec, plan, open, Plain),
    }
}

/// Runs `spec` on the store `open` makes, as `scenario` says.
pub(crate) fn execute_with<S: Store, X: Scenario<S>>(
    spec: &RunSpec,
    plan: &MemoryPlan,
    open: impl FnOnce() -> anyhow::Result<S>,
    mut scenario: X,
) -> anyhow::Result<RunResult> {
    let mut result = RunResult::skeleton(spec);
    result.memory_budget = plan.budget;
    result.memory_budget_explicit = plan.explicit;
    result.rskv_plan = spec.store.is_ours().then_some(*plan);

    let gen_start = Instant::now();
    let order = Permutation::new(spec.keys, spec.seed);
    let keygen = KeyGen::new(spec.distribution, spec.keys, order);
    let streams = generate_streams(spec, &keygen);
    result.generate_secs = gen_start.elapsed().as_secs_f64();

    let before_store = rss();
    let io0 = ProcIo::now();
    let store = open()?;
    result.store_info = store.info();
    let store_io0 = store.store_io();

    let mut counters = Counters::default();
    let (load_secs, load_counters) = load(&store, spec, order);
    counters.merge(load_counters);
    result.load_secs = load_secs;
    result.load_mops = spec.keys as f64 / load_secs.max(1e-9) / 1e6;
    // Outside every timed phase, and before the load's I/O is read, so it counts as load I/O.
    let settle_start = Instant::now();
    match store.settle() {
        Ok(note) => result.settle_note = note,
        Err(e) => counters.error("settle after load", 0, &e),
    }
    result.settle_secs = settle_start.elapsed().as_secs_f64();
    let io1 = ProcIo::now();
    let store_io1 = store.store_io();
    let after_load = rss();

    let missing_allowed = spec.workload.mix.delete > 0;
    let run = run_phases(&store, spec, &streams, missing_allowed, &mut |probe| {
        scenario.measure(&store, probe);
    });
    counters.merge(run.counters);
    result.warmup_secs = run.warmup_secs;
    result.warmup_ops = run.warmup_ops;
    result.run_secs = run.secs;
    result.run_ops = run.ops;
    result.mops = run.ops as f64 / run.secs.max(1e-9) / 1e6;
    result.latency = latency(&run.hist, spec.sample_every);
    let io2 = ProcIo::now();
    let store_io2 = store.store_io();
    result.log_state = store.log_state();
    // Measured while the streams are still alive, so the difference is the store's.
    let after_run = rss();
    drop(streams);

    let mut verify_all_checked = 0;
    if spec.verify_all && scenario.verify_all_after_run() {
        let (checked, c) = verify_all(&store, spec, missing_allowed);
        verify_all_checked = checked;
        counters.merge(c);
    }

    result.rss = Rss {
        before_store,
        after_load,
        after_run,
        // VmHWM is updated lazily by the kernel and can trail a fresh VmRSS reading.
        peak: peak_rss().max(after_load).max(after_run),
        store_growth: after_run as i64 - before_store as i64,
        allocator: crate::malloc::describe(spec.glibc_malloc_defaults),
    };
    result.io = Io {
        load: io1.since(io0),
        run: io2.since(io1),
        store_load: delta(store_io0, store_io1),
        store_run: delta(store_io1, store_io2),
        disk_usage: disk_usage(&spec.data_dir),
    };
    result.extra = store.extra();
    result.verify = Verify {
        reads_ok: counters.reads_ok,
        missing: counters.missing,
        wrong: counters.wrong,
        errors: counters.errors,
        missing_allowed,
        verify_all_checked,
        first_problem: counters.first_problem,
    };
    if let Err(e) = scenario.finish(store, &mut result) {
        result.failure = Some(format!("{e:#}"));
    }
    result.settle();
    Ok(result)
}

fn delta(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    Some((b?.0.saturating_sub(a?.0), b?.1.saturating_sub(a?.1)))
}

/// Operations of thread `t` in a run of `total` operations.
fn share(total: u64, threads: usize, t: usize) -> u64 {
    let threads = threads as u64;
    total / threads + u64::from((t as u64) < total % threads)
}

/// One stream per thread, generated in parallel. Ops runs get exactly their operations;
/// duration runs get `op_buffer` operations, replayed cyclically.
fn generate_streams(spec: &RunSpec, keygen: &KeyGen) -> Vec<Vec<Op>> {
    thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|t| {
                let len = match spec.length {
                    RunLength::Ops(n) => share(n, spec.threads, t).max(1),
                    RunLength::Seconds(_) => spec.op_buffer,
                } as usize;
                let seed = stream_seed(spec.seed, t, &spec.workload, spec.distribution);
                s.spawn(move || generate_stream(len, spec.workload.mix, keygen, seed))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

pub(crate) fn progress_bar(spec: &RunSpec, len: u64, what: &str) -> ProgressBar {
    if !spec.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {bar:40.cyan/blue} {pos:>12}/{len:12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("{} {what}", spec.store.name()));
    bar
}

/// Loads every key once, in the shuffled load order, each thread a contiguous slice of it.
/// Returns the seconds taken and what went wrong.
fn load<S: Store>(store: &S, spec: &RunSpec, order: Permutation) -> (f64, Counters) {
    let bar = progress_bar(spec, spec.keys, "load");
    let done = AtomicU64::new(0);
    let finished = AtomicUsize::new(0);
    let start = Instant::now();
    let counters = thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|t| {
                let (done, finished) = (&done, &finished);
                let from = spec.keys * t as u64 / spec.threads as u64;
                let to = spec.keys * (t as u64 + 1) / spec.threads as u64;
                s.spawn(move || {
                    let mut c = Counters::default();
                    // Caught so that `finished` is always counted and the progress loop ends.
                    guarded(&mut c, "load", |c| {
                        for i in from..to {
                            let key = order.at(i);
                            if let Err(e) = store.upsert(key, 0) {
                                c.error("load upsert", key, &e);
                            }
                            if (i - from) % PROGRESS_EVERY == PROGRESS_EVERY - 1 {
                                done.fetch_add(PROGRESS_EVERY, Ordering::Relaxed);
                            }
                        }
                        to - from
                    });
                    finished.fetch_add(1, Ordering::Release);
                    (c, Instant::now())
                })
            })
            .collect();
        while finished.load(Ordering::Acquire) < spec.threads {
            bar.set_position(done.load(Ordering::Relaxed));
            thread::sleep(Duration::from_millis(50));
        }
        join_all(handles, || (Counters::panicked("load"), Instant::now()))
    });
    bar.finish_and_clear();
    // The threads' own end times: the progress loop above only polls.
    let mut secs = 0f64;
    let mut all = Counters::default();
    for (c, end) in counters {
        all.merge(c);
        secs = secs.max(end.duration_since(start).as_secs_f64());
    }
    (secs, all)
}

/// Joins threads; a thread that panicked yields `on_panic()` (which counts as an error).
pub(crate) fn join_all<T>(
    handles: Vec<thread::ScopedJoinHandle<'_, T>>,
    on_panic: impl Fn() -> T,
) -> Vec<T> {
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| on_panic()))
        .collect()
}

impl Counters {
    pub(crate) fn panicked(what: &str) -> Counters {
        Counters {
            errors: 1,
            first_problem: Some(format!("a thread panicked during {what}")),
            ..Counters::default()
        }
    }
}

/// When a phase of one thread ends.
#[derive(Clone, Copy)]
enum Until<'a> {
    Count(u64),
    Flag(&'a AtomicBool),
}

/// A counter on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// Shared state of the run phases.
struct Shared<'a> {
    barrier: Barrier,
    done: AtomicU64,
    /// Operations of each thread in the measured phase so far (to within STOP_CHECK_MASK + 1).
    measured: Vec<Padded>,
    finished: AtomicUsize,
    stop_warmup: AtomicBool,
    stop_run: AtomicBool,
    missing_allowed: bool,
    sample_mask: u64,
    /// Operations announced to the store together (`--batch`).
    batch: usize,
    /// Reads of a batch go through one multi-get (`--batch-reads`).
    batch_reads: bool,
    /// RMWs of a batch go through one multi-RMW (`--batch-rmw`).
    batch_rmw: bool,
    /// A session per thread (`--sessions`), completing every `complete_every` operations.
    sessions: bool,
    complete_every: u64,
    spec: &'a RunSpec,
}

struct ThreadRun {
    warmup_ops: u64,
    ops: u64,
    /// When this thread started and ended its measured phase (the run's time is from the
    /// first start to the last end: a coordinator that is scheduled late after the barrier
    /// must not shorten it).
    start: Option<Instant>,
    end: Option<Instant>,
    hist: Option<Histogram<u64>>,
    counters: Counters,
}

impl ThreadRun {
    fn panicked() -> Self {
        ThreadRun {
            warmup_ops: 0,
            ops: 0,
            start: None,
            end: None,
            hist: None,
            counters: Counters::panicked("the run"),
        }
    }
}

struct RunOutcome {
    warmup_ops: u64,
    warmup_secs: f64,
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
    counters: Counters,
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// The coordinator's view of the measured phase, handed to [`Scenario::measure`].
pub(crate) struct Probe<'a> {
    sh: &'a Shared<'a>,
    start: Instant,
    run_secs: f64,
}

impl Probe<'_> {
    /// Operations all threads completed in the measured phase so far (each thread's count is
    /// at most 16 operations behind).
    pub(crate) fn ops(&self) -> u64 {
        self.sh
            .measured
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Seconds since the measured phase started.
    pub(crate) fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// When the measured phase started.
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// The measured phase's length as asked (--duration).
    pub(crate) fn run_secs(&self) -> f64 {
        self.run_secs
    }

    pub(crate) fn spec(&self) -> &RunSpec {
        self.sh.spec
    }

    /// A plain run's measured phase: sleeps, showing progress.
    pub(crate) fn sleep_run(&self) {
        let bar = progress_bar(self.sh.spec, (self.run_secs * 1000.0) as u64, "run ms");
        sleep_with_progress(self.run_secs, &bar, self.sh);
        bar.finish_and_clear();
    }
}

/// Warm-up, then the measured phase, on every thread at once. `measure` runs on this thread
/// during the measured phase of a duration run, and ends it by returning.
fn run_phases<S: Store>(
    store: &S,
    spec: &RunSpec,
    streams: &[Vec<Op>],
    missing_allowed: bool,
    measure: &mut dyn FnMut(&Probe<'_>),
) -> RunOutcome {
    let shared = Shared {
        barrier: Barrier::new(spec.threads + 1),
        done: AtomicU64::new(0),
        measured: (0..spec.threads).map(|_| Padded::default()).collect(),
        finished: AtomicUsize::new(0),
        stop_warmup: AtomicBool::new(false),
        stop_run: AtomicBool::new(false),
        missing_allowed,
        sample_mask: spec.sample_every - 1,
        batch: spec.batch.max(1),
        batch_reads: spec.batch_reads,
        batch_rmw: spec.batch_rmw,
        sessions: spec.sessions,
        complete_every: if spec.complete_every == 0 {
            1600
        } else {
            spec.complete_every
        },
        spec,
    };
    let (warmup_secs, start, threads) = thread::scope(|s| {
        let handles: Vec<_> = streams
            .iter()
            .enumerate()
            .map(|(t, ops)| {
                let shared = &shared;
                s.spawn(move || worker(store, ops, t, shared))
            })
            .collect();
        let (warmup_secs, start) = coordinate(&shared, measure);
        (warmup_secs, start, join_all(handles, ThreadRun::panicked))
    });
    let mut out = RunOutcome {
        warmup_ops: 0,
        warmup_secs,
        ops: 0,
        secs: 0.0,
        hist: new_histogram(),
        counters: Counters::default(),
    };
    let first_start = threads
        .iter()
        .filter_map(|t| t.start)
        .min()
        .unwrap_or(start);
    for t in threads {
        out.warmup_ops += t.warmup_ops;
        out.ops += t.ops;
        if let Some(end) = t.end {
            out.secs = out.secs.max(end.duration_since(first_start).as_secs_f64());
        }
        if let Some(h) = &t.hist {
            // Same bounds on both sides: adding cannot fail.
            let _ = out.hist.add(h);
        }
        out.counters.merge(t.counters);
    }
    out
}

/// The warm-up length of thread `t`.
fn warmup_until<'a>(spec: &RunSpec, t: usize, flag: &'a AtomicBool) -> Until<'a> {
    match (spec.warmup, spec.length) {
        (Warmup::Fraction(f), RunLength::Ops(n)) => {
            Until::Count((share(n, spec.threads, t) as f64 * f).round() as u64)
        }
        (Warmup::Seconds(0.0), _) => Until::Count(0),
        _ => Until::Flag(flag),
    }
}

fn worker<S: Store>(store: &S, ops: &[Op], t: usize, sh: &Shared<'_>) -> ThreadRun {
    let spec = sh.spec;
    let mut counters = Counters::default();
    let mut pos = 0usize;
    // --sessions: this thread's session for both phases (each phase ends by completing every
    // pending operation). Peers have none and run one by one.
    let mut session = if sh.sessions { store.session() } else { None };
    sh.barrier.wait();
    let warm = warmup_until(spec, t, &sh.stop_warmup);
    // A panic inside the store must not leave the other threads waiting at the barrier: it
    // is caught, counted as an error, and this thread sits out the rest of the run.
    let warmup_ops = guarded(&mut counters, "warm-up", |c| {
        let session = session.as_deref_mut();
        run_ops(store, ops, &mut pos, warm, None, None, session, c, sh)
    });
    sh.barrier.wait();
    let start = Instant::now();
    let measure = match spec.length {
        RunLength::Ops(n) => Until::Count(share(n, spec.threads, t)),
        RunLength::Seconds(_) => Until::Flag(&sh.stop_run),
    };
    let mut hist = new_histogram();
    let ops_done = if counters.panicked {
        0
    } else {
        guarded(&mut counters, "the measured phase", |c| {
            let counter = &sh.measured[t].0;
            run_ops(
                store,
                ops,
                &mut pos,
                measure,
                Some(&mut hist),
                Some(counter),
                session.as_deref_mut(),
                c,
                sh,
            )
        })
    };
    let end = Instant::now();
    sh.finished.fetch_add(1, Ordering::Release);
    ThreadRun {
        warmup_ops,
        ops: ops_done,
        start: Some(start),
        end: Some(end),
        hist: Some(hist),
        counters,
    }
}

/// Runs `f`, turning a panic into a counted error (and 0 operations).
fn guarded(c: &mut Counters, phase: &str, f: impl FnOnce(&mut Counters) -> u64) -> u64 {
    let mut inner = Counters::default();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut inner)));
    c.merge(inner);
    match r {
        Ok(n) => n,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            c.errors += 1;
            c.panicked = true;
            c.note(|| format!("panic during {phase}: {msg}"));
            0
        }
    }
}

/// The coordinator's side: ends the timed phases and draws progress. Returns the warm-up's
/// seconds and the start of the measured phase.
fn coordinate(sh: &Shared<'_>, measure: &mut dyn FnMut(&Probe<'_>)) -> (f64, Instant) {
    let spec = sh.spec;
    let run_secs = match spec.length {
        RunLength::Seconds(s) => Some(s),
        RunLength::Ops(_) => None,
    };
    let warm_secs = match (spec.warmup, run_secs) {
        (Warmup::Seconds(s), _) => Some(s),
        (Warmup::Fraction(f), Some(r)) => Some(f * r),
        (Warmup::Fraction(_), None) => None,
    };
    sh.barrier.wait();
    let warm_start = Instant::now();
    if let Some(w) = warm_secs {
        let bar = progress_bar(spec, (w * 1000.0) as u64, "warm-up ms");
        sleep_with_progress(w, &bar, sh);
        bar.finish_and_clear();
    }
    sh.stop_warmup.store(true, Ordering::Relaxed);
    sh.barrier.wait();
    let start = Instant::now();
    let warmup_secs = start.duration_since(warm_start).as_secs_f64();
    sh.done.store(0, Ordering::Relaxed);
    match (spec.length, run_secs) {
        (_, Some(r)) => {
            measure(&Probe {
                sh,
                start,
                run_secs: r,
            });
            sh.stop_run.store(true, Ordering::Relaxed);
        }
        (RunLength::Ops(n), None) => {
            let bar = progress_bar(spec, n, "run ops");
            while sh.finished.load(Ordering::Acquire) < spec.threads {
                bar.set_position(sh.done.load(Ordering::Relaxed));
                thread::sleep(Duration::from_millis(20));
            }
            bar.finish_and_clear();
        }
        (RunLength::Seconds(_), None) => unreachable!("run_secs is Some for duration runs"),
    }
    (warmup_secs, start)
}

/// Sleeps `secs`, showing elapsed milliseconds and operations so far.
fn sleep_with_progress(secs: f64, bar: &ProgressBar, sh: &Shared<'_>) {
    let start = Instant::now();
    let total = Duration::from_secs_f64(secs);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= total {
            break;
        }
        bar.set_position(elapsed.as_millis() as u64);
        bar.set_message(format!("{} ops", sh.done.load(Ordering::Relaxed)));
        thread::sleep((total - elapsed).min(Duration::from_millis(50)));
    }
}

/// Runs operations from the cyclic stream `ops`, starting at `pos`, until `until`. Times one
/// operation in `sample_every` into `hist` when given, and keeps `counter` (when given) at the
/// operations run so far. With a `session` (`--sessions`), issues them through it, completes
/// what is done every `complete_every` operations and everything at the end. Returns the
/// operations run.
#[allow(clippy::too_many_arguments)]
fn run_ops<S: Store>(
    store: &S,
    ops: &[Op],
    pos: &mut usize,
    until: Until<'_>,
    mut hist: Option<&mut Histogram<u64>>,
    counter: Option<&AtomicU64>,
    mut session: Option<&mut (dyn BenchSession + '_)>,
    c: &mut Counters,
    sh: &Shared<'_>,
) -> u64 {
    let limit = match until {
        Until::Count(n) => n,
        Until::Flag(_) => u64::MAX,
    };
    let flag = match until {
        Until::Flag(f) => Some(f),
        Until::Count(_) => None,
    };
    let mut n = 0u64;
    // The announced keys of a batch (one buffer for the whole run).
    let mut keys: Vec<u64> = Vec::with_capacity(sh.batch);
    // With --batch-reads/--batch-rmw: how long the current batch's multi-get and multi-RMW
    // took (the latency of each of their operations).
    let mut batch_read_ns = 0u64;
    let mut batch_rmw_ns = 0u64;
    // Whether this call issued the current batch's multi-get / multi-RMW (a call that starts
    // mid-batch runs the operations before the next batch one by one).
    let mut batch_open = false;
    let mut rmw_open = false;
    // What a session's reads and RMWs found, between two completions.
    let mut finished: Vec<Finished> = Vec::new();
    while n < limit {
        if n & STOP_CHECK_MASK == 0 {
            if let Some(counter) = counter {
                // A thread-owned line: a plain store, read now and then by the coordinator.
                counter.store(n, Ordering::Relaxed);
            }
            if flag.is_some_and(|f| f.load(Ordering::Relaxed)) {
                break;
            }
            if n.is_multiple_of(PROGRESS_EVERY) && n > 0 {
                sh.done.fetch_add(PROGRESS_EVERY, Ordering::Relaxed);
            }
        }
        if sh.batch > 1 && (*pos).is_multiple_of(sh.batch) {
            let end = (*pos + sh.batch).min(ops.len());
            keys.clear();
            // Never past the run's last operation.
            let run_end =
                end.min(pos.saturating_add(usize::try_from(limit - n).unwrap_or(usize::MAX)));
            let batch = &ops[*pos..run_end];
            if sh.batch_reads {
                batch_read_ns = run_together(batch, OpKind::Read, &mut keys, c, sh, |k| {
                    store.read_many(k)
                });
                batch_open = true;
            }
            if sh.batch_rmw {
                batch_rmw_ns =
                    run_together(batch, OpKind::Rmw, &mut keys, c, sh, |k| store.rmw_many(k));
                rmw_open = true;
            }
            if !sh.batch_reads && !sh.batch_rmw {
                keys.extend(ops[*pos..end].iter().map(|o| o.key()));
                store.prefetch(&keys);
            }
        }
        let op = ops[*pos];
        *pos += 1;
        if *pos == ops.len() {
            *pos = 0;
        }
        if let Some(sess) = session.as_deref_mut() {
            match hist.as_deref_mut() {
                Some(h) if n & sh.sample_mask == 0 => {
                    let t0 = Instant::now();
                    issue_op(sess, op, n, c);
                    h.saturating_record(t0.elapsed().as_nanos() as u64);
                }
                _ => issue_op(sess, op, n, c),
            }
            n += 1;
            if n.is_multiple_of(sh.complete_every) {
                complete_session(sess, false, &mut finished, c, sh.missing_allowed);
            }
            continue;
        }
        let batched = match op.kind() {
            OpKind::Read if batch_open => Some(batch_read_ns),
            OpKind::Rmw if rmw_open => Some(batch_rmw_ns),
            _ => None,
        };
        if let Some(ns) = batched {
            // Done by the batch's multi-get or multi-RMW above.
            if let Some(h) = hist.as_deref_mut().filter(|_| n & sh.sample_mask == 0) {
                h.saturating_record(ns);
            }
            n += 1;
            continue;
        }
        match hist.as_deref_mut() {
            Some(h) if n & sh.sample_mask == 0 => {
                let t0 = Instant::now();
                execute_op(store, op, n, c, sh.missing_allowed);
                h.saturating_record(t0.elapsed().as_nanos() as u64);
            }
            _ => execute_op(store, op, n, c, sh.missing_allowed),
        }
        n += 1;
    }
    if let Some(sess) = session {
        complete_session(sess, true, &mut finished, c, sh.missing_allowed);
    }
    if let Some(counter) = counter {
        counter.store(n, Ordering::Relaxed);
    }
    n
}

/// Issues `op` through a session (`--sessions`); reads and RMWs are checked when they finish.
fn issue_op(sess: &mut dyn BenchSession, op: Op, n: u64, c: &mut Counters) {
    let key = op.key();
    let (what, r) = match op.kind() {
        OpKind::Read => ("read", sess.read(key)),
        OpKind::Upsert => ("upsert", sess.upsert(key, n + 1)),
        OpKind::Rmw => ("rmw", sess.rmw(key)),
        OpKind::Delete => ("delete", sess.delete(key)),
    };
    if let Err(e) = r {
        c.error(what, key, &e);
    }
}

/// `complete_pending(wait)` on a session, then checks every read and RMW that finished.
fn complete_session(
    sess: &mut dyn BenchSession,
    wait: bool,
    finished: &mut Vec<Finished>,
    c: &mut Counters,
    missing_allowed: bool,
) {
    sess.complete(wait, finished);
    for f in finished.drain(..) {
        match f.found {
            Ok(found) => c.check(f.op, f.key, found, missing_allowed),
            Err(e) => c.error(f.op, f.key, &anyhow::anyhow!(e)),
        }
    }
}

/// Runs the operations of `kind` among `batch` in one call of `many` (a store's multi-get or
/// multi-RMW), checks what each found and returns how long the call took.
fn run_together(
    batch: &[Op],
    kind: OpKind,
    keys: &mut Vec<u64>,
    c: &mut Counters,
    sh: &Shared<'_>,
    many: impl FnOnce(&[u64]) -> anyhow::Result<Vec<ReadCheck>>,
) -> u64 {
    let what = if kind == OpKind::Rmw { "rmw" } else { "read" };
    keys.clear();
    keys.extend(batch.iter().filter(|o| o.kind() == kind).map(|o| o.key()));
    let t0 = Instant::now();
    match many(keys) {
        Ok(found) => {
            for (&key, f) in keys.iter().zip(found) {
                c.check(what, key, f, sh.missing_allowed);
            }
        }
        Err(e) => c.error(what, keys.first().copied().unwrap_or(0), &e),
    }
    t0.elapsed().as_nanos() as u64
}

#[inline(always)]
fn execute_op<S: Store>(store: &S, op: Op, n: u64, c: &mut Counters, missing_allowed: bool) {
    let key = op.key();
    match op.kind() {
        OpKind::Read => match store.read(key) {
            Ok(found) => c.check("read", key, found, missing_allowed),
            Err(e) => c.error("read", key, &e),
        },
        OpKind::Upsert => {
            // Any version verifies; a moving one makes each upsert write new bytes.
            if let Err(e) = store.upsert(key, n + 1) {
                c.error("upsert", key, &e);
            }
        }
        OpKind::Rmw => match store.rmw(key) {
            Ok(found) => c.check("rmw", key, found, missing_allowed),
            Err(e) => c.error("rmw", key, &e),
        },
        OpKind::Delete => {
            if let Err(e) = store.delete(key) {
                c.error("delete", key, &e);
            }
        }
    }
}

/// Reads every key once more, in key order, on the run's threads.
fn verify_all<S: Store>(store: &S, spec: &RunSpec, missing_allowed: bool) -> (u64, Counters) {
    let c = verify_keys(
        store,
        spec,
        missing_allowed,
        spec.keys,
        &|i| i,
        "verify-all read",
    );
    (spec.keys, c)
}

/// Reads keys `key_at(0..count)` on the run's threads and checks what comes back; `what` names
/// the reads in problem reports.
pub(crate) fn verify_keys<S: Store>(
    store: &S,
    spec: &RunSpec,
    missing_allowed: bool,
    count: u64,
    key_at: &(dyn Fn(u64) -> u64 + Sync),
    what: &str,
) -> Counters {
    let bar = progress_bar(spec, count, "verify");
    let done = AtomicU64::new(0);
    let counters = thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|t| {
                let done = &done;
                let bar = &bar;
                s.spawn(move || {
                    let mut c = Counters::default();
                    let from = count * t as u64 / spec.threads as u64;
                    let to = count * (t as u64 + 1) / spec.threads as u64;
                    for i in from..to {
                        let key = key_at(i);
                        match store.read(key) {
                            Ok(found) => c.check(what, key, found, missing_allowed),
                            Err(e) => c.error(what, key, &e),
                        }
                        if i % PROGRESS_EVERY == 0 {
                            let d = done.fetch_add(PROGRESS_EVERY, Ordering::Relaxed);
                            bar.set_position(d);
                        }
                    }
                    c
                })
            })
            .collect();
        join_all(handles, || Counters::panicked(what))
    });
    bar.finish_and_clear();
    let mut all = Counters::default();
    for c in counters {
        all.merge(c);
    }
    all
}

fn latency(h: &Histogram<u64>, sample_every: u64) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        samples: h.len(),
        sample_every,
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.50)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use clap::Parser;

    use super::*;
    use crate::cli::Args;
    use crate::values::{bump_value, fill_value, value_ok};

    /// A store over a locked map that can lose keys or corrupt values on purpose.
    struct MapStore {
        map: Mutex<HashMap<u64, Vec<u8>>>,
        size: usize,
        lose_key: Option<u64>,
        corrupt_key: Option<u64>,
    }

    impl MapStore {
        fn new(size: usize) -> MapStore {
            MapStore {
                map: Mutex::new(HashMap::new()),
                size,
                lose_key: None,
                corrupt_key: None,
            }
        }
        fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<u8>>> {
            self.map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl Store for MapStore {
        fn upsert(&self, key: u64, version: u64) -> anyhow::Result<()> {
            if self.lose_key == Some(key) {
                return Ok(());
            }
            let mut v = vec![0; self.size];
            fill_value(&mut v, key, version);
            if self.corrupt_key == Some(key) {
                v[0] ^= 1;
            }
            self.map().insert(key, v);
            Ok(())
        }
        fn read(&self, key: u64) -> anyhow::Result<ReadCheck> {
            Ok(match self.map().get(&key) {
                None => ReadCheck::Missing,
                Some(v) if value_ok(v, key, self.size) => ReadCheck::Ok,
                Some(_) => ReadCheck::Wrong,
            })
        }
        fn rmw(&self, key: u64) -> anyhow::Result<ReadCheck> {
            let mut map = self.map();
            Ok(match map.get_mut(&key) {
                Some(v) if value_ok(v, key, self.size) => {
                    bump_value(v);
                    ReadCheck::Ok
                }
                Some(_) => ReadCheck::Wrong,
                None => ReadCheck::Missing,
            })
        }
        fn delete(&self, key: u64) -> anyhow::Result<()> {
            self.map().remove(&key);
            Ok(())
        }
        fn info(&self) -> crate::results::StoreInfo {
            crate::results::StoreInfo::default()
        }
    }

    fn spec(extra: &[&str]) -> RunSpec {
        let mut argv = vec![
            "rskv-bench",
            "--keys",
            "2000",
            "--threads",
            "2",
            "--no-progress",
            "--dir",
            "/nonexistent-rskv-bench",
        ];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).unwrap();
        args.runs().unwrap().remove(0)
    }

    fn run(spec: &RunSpec, store: MapStore) -> RunResult {
        let plan = crate::sizing::plan(spec).unwrap();
        execute(spec, &plan, || Ok(store)).unwrap()
    }

    #[test]
    fn a_faithful_store_passes() {
        let s = spec(&[
            "--ops",
            "20000",
            "--workload",
            "f",
            "--distribution",
            "zipf",
            "--value-size",
            "100",
        ]);
        let r = run(&s, MapStore::new(100));
        assert!(r.ok(), "{:?}", r.failure);
        assert_eq!(r.run_ops, 20_000);
        assert!(r.verify.reads_ok > 0 && r.latency.samples > 0);
    }

    #[test]
    fn a_lost_key_fails_the_run() {
        let s = spec(&["--ops", "20000", "--workload", "c", "--verify-all"]);
        let mut store = MapStore::new(8);
        store.lose_key = Some(17);
        let r = run(&s, store);
        assert!(!r.ok());
        assert!(r.verify.missing > 0);
        assert!(r.failure.unwrap().contains("key 17"));
    }

    #[test]
    fn a_wrong_value_fails_the_run() {
        let s = spec(&[
            "--ops",
            "20000",
            "--workload",
            "b",
            "--distribution",
            "zipf",
            "--verify-all",
        ]);
        let mut store = MapStore::new(8);
        store.corrupt_key = Some(5);
        let r = run(&s, store);
        assert!(!r.ok());
        assert!(r.verify.wrong > 0);
    }

    #[test]
    fn deletes_make_missing_reads_expected() {
        let s = spec(&[
            "--ops",
            "20000",
            "--workload",
            "custom",
            "--mix",
            "read=50,delete=25,upsert=25",
        ]);
        let r = run(&s, MapStore::new(16));
        assert!(r.ok(), "{:?}", r.failure);
        assert!(r.verify.missing_allowed && r.verify.missing > 0);
    }

    #[test]
    fn duration_runs_stop() {
        // A duration run replays its (small) buffer until the time is up.
        let s = spec(&[
            "--duration",
            "200ms",
            "--warmup",
            "50ms",
            "--op-buffer",
            "1000",
        ]);
        let r = run(&s, MapStore::new(8));
        assert!(r.ok(), "{:?}", r.failure);
        assert!(r.run_secs >= 0.19 && r.run_secs < 1.0, "{}", r.run_secs);
        assert!(r.run_ops > 1000, "the buffer is replayed");
    }

    #[test]
    fn timeline_runs_sample_the_measured_phase() {
        let s = spec(&[
            "--duration",
            "300ms",
            "--warmup",
            "0",
            "--op-buffer",
            "1000",
            "--timeline",
            "100ms",
        ]);
        let r = run(&s, MapStore::new(8));
        assert!(r.ok(), "{:?}", r.failure);
        let t = r.timeline.expect("a timeline");
        // The state at the start, then one per interval.
        assert!((4..=6).contains(&t.samples.len()), "{:?}", t.samples);
        assert_eq!(t.samples[0].ops, 0);
        let ops: u64 = t.samples.iter().map(|x| x.ops).sum();
        assert!(ops > 0 && ops <= r.run_ops, "{ops} of {}", r.run_ops);
        assert!(t.samples.iter().all(|x| x.rss > 0 && x.log.is_none()));
        // Every tick is during a pass or outside (`passes`' tests compact meanwhile, which
        // this process's tracker counts: either may be empty).
        assert!(t.during_pass_secs + t.outside_pass_secs >= 0.3);
        assert!(t.during_pass_mops + t.outside_pass_mops > 0.0);
    }
}
