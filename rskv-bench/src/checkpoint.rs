//! The checkpoint scenario (RsKv only): a full CPR checkpoint taken while the workload runs,
//! its time, size and throughput dip, then recovery from it.
//!
//! One run: load, warm up, and start the measured phase as usual. The coordinating thread
//! samples the threads' operation counters every `--interval`; at `--checkpoint-at` a thread of
//! its own takes one full checkpoint (index and log, fold-over or snapshot) and notes its wall
//! time, the operations completed meanwhile and the store's bytes written meanwhile. The
//! measured phase lasts `--duration`, or until the checkpoint is done if that is later. Then
//! the store is dropped, recovered from that checkpoint over the same directory with the same
//! `Config`, and keys are read back.
//!
//! What recovery is checked for: every key read back (10,000 sampled keys, or all with
//! `--verify-all`) is present and its value verifies against its key. The value's version is
//! not checked: which upserts made it into the checkpoint depends on thread timing.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::results::{CheckpointResult, Dip, Interval, Recovered, RecoveryResult, RunResult};
use crate::runner::{progress_bar, verify_keys, Probe, Scenario};
use crate::spec::{CheckpointMode, CheckpointSpec, MemoryPlan, RunSpec};
use crate::store::Store;
use crate::sysinfo::CpuTicks;
use crate::workload::splitmix64;

/// Keys read back after recovery without --verify-all.
pub const VERIFY_SAMPLE: u64 = 10_000;
/// How often the coordinator looks at the checkpoint's files while it runs.
const FILE_POLL: Duration = Duration::from_millis(5);

/// A store that can checkpoint and recover (RsKv).
pub trait Checkpointable: Store + Sized {
    /// Takes a full checkpoint whose log part is written by `mode`; returns its token once it
    /// is durable.
    fn checkpoint(&self, mode: CheckpointMode, background: bool) -> anyhow::Result<u64>;
    /// The log's tail address (bytes appended since the store began).
    fn log_tail(&self) -> u64;
    /// Where checkpoint `token` keeps its files.
    fn checkpoint_path(spec: &RunSpec, token: u64) -> PathBuf;
    /// Recovers the store of `spec` from checkpoint `token`.
    fn recover(spec: &RunSpec, plan: &MemoryPlan, token: u64) -> anyhow::Result<(Self, Recovered)>;
}

/// Computes the dip; `start`/`end` are the checkpoint's, `during_ops` the operations between.
pub fn dip(intervals: &[Interval], start: f64, end: f64, during_ops: u64) -> Dip {
    let (mut base, mut after) = ((0u64, 0f64), (0u64, 0f64));
    let mut min = (f64::INFINITY, 0.0);
    let mut prev = 0.0;
    for i in intervals {
        let secs = i.end_secs - prev;
        if secs > 0.0 {
            let mops = i.ops as f64 / secs / 1e6;
            if mops < min.0 {
                min = (mops, i.end_secs);
            }
            if i.end_secs <= start {
                base = (base.0 + i.ops, base.1 + secs);
            } else if prev >= end {
                after = (after.0 + i.ops, after.1 + secs);
            }
        }
        prev = i.end_secs;
    }
    let rate = |(ops, secs): (u64, f64)| {
        if secs > 0.0 {
            ops as f64 / secs / 1e6
        } else {
            0.0
        }
    };
    let baseline = rate(base);
    let during = rate((during_ops, end - start));
    Dip {
        baseline_mops: baseline,
        during_mops: during,
        during_ratio: if baseline > 0.0 {
            during / baseline
        } else {
            0.0
        },
        after_mops: rate(after),
        min_interval_mops: if min.0.is_finite() { min.0 } else { 0.0 },
        min_interval_end_secs: min.1,
    }
}

/// Runs a checkpoint run of `spec` on the store `open` makes.
pub fn execute<S: Checkpointable>(
    spec: &RunSpec,
    plan: &MemoryPlan,
    open: impl FnOnce() -> anyhow::Result<S>,
) -> anyhow::Result<RunResult> {
    let Some(c) = spec.checkpoint else {
        bail!("not a checkpoint run");
    };
    let scenario = CheckpointRun {
        spec,
        plan,
        c,
        out: CheckpointResult {
            kind: if c.background {
                "full (background thread, low priority)".into()
            } else {
                "full".into()
            },
            mode: c.mode.name().into(),
            interval_secs: c.interval_secs,
            ..CheckpointResult::default()
        },
        error: None,
    };
    crate::runner::execute_with(spec, plan, open, scenario)
}

struct CheckpointRun<'a> {
    spec: &'a RunSpec,
    plan: &'a MemoryPlan,
    c: CheckpointSpec,
    out: CheckpointResult,
    error: Option<String>,
}

/// What the checkpoint thread saw.
struct Taken {
    token: anyhow::Result<u64>,
    start: f64,
    end: f64,
    ops: u64,
    written: u64,
    tail_start: u64,
    tail_end: u64,
}

/// A file named `name` in any checkpoint directory under `root`.
fn any_checkpoint_has(root: &Path, name: &str) -> bool {
    std::fs::read_dir(root)
        .is_ok_and(|entries| entries.flatten().any(|e| e.path().join(name).exists()))
}

/// The files of a checkpoint directory and their sizes.
fn checkpoint_files(dir: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_file() {
            files.push((e.file_name().to_string_lossy().into_owned(), m.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// Buffered sequential write + fsync of `bytes` into `dir`; MB/s.
fn seq_write_reference(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let path = dir.join("seq-write-reference.tmp");
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in block.chunks_exact_mut(8) {
        x = splitmix64(x);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let start = Instant::now();
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    })();
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes as f64 / secs.max(1e-9) / 1e6)
}

impl<S: Checkpointable> Scenario<S> for CheckpointRun<'_> {
    fn measure(&mut self, store: &S, probe: &Probe<'_>) {
        let spec = probe.spec();
        let run = probe.run_secs();
        let interval = self.c.interval_secs;
        let wanted = (run / interval).round().max(1.0) as usize;
        let root = S::checkpoint_path(spec, 0)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let bar = progress_bar(spec, (run * 1000.0) as u64, "run ms");
        let (mode, background) = (self.c.mode, self.c.background);
        let mut intervals = Vec::with_capacity(wanted + 16);
        let cpu0 = CpuTicks::now();
        let (mut index_done, mut snapshot_started) = (None, None);
        let taken = thread::scope(|s| {
            let mut handle = None;
            let mut last_ops = 0;
            loop {
                let now = probe.elapsed();
                let next = (intervals.len() + 1) as f64 * interval;
                if now >= next {
                    let ops = probe.ops();
                    intervals.push(Interval {
                        end_secs: now,
                        ops: ops - last_ops,
                    });
                    last_ops = ops;
                    bar.set_position((now * 1000.0) as u64);
                    bar.set_message(format!("{ops} ops"));
                    let done = handle
                        .as_ref()
                        .is_some_and(|h: &thread::ScopedJoinHandle<'_, Taken>| h.is_finished());
                    if intervals.len() >= wanted && done {
                        break;
                    }
                    continue;
                }
                if handle.is_none() && now >= self.c.at_secs {
                    handle = Some(s.spawn(move || {
                        let written = || store.store_io().map_or(0, |(w, _)| w);
                        let (w0, tail_start) = (written(), store.log_tail());
                        let (ops0, start) = (probe.ops(), probe.elapsed());
                        let token = store.checkpoint(mode, background);
                        let (end, ops1) = (probe.elapsed(), probe.ops());
                        Taken {
                            token,
                            start,
                            end,
                            ops: ops1 - ops0,
                            written: written() - w0,
                            tail_start,
                            tail_end: store.log_tail(),
                        }
                    }));
                }
                let mut nap = (next - now).max(0.0);
                if handle.as_ref().is_some_and(|h| !h.is_finished()) {
                    let since = now - self.c.at_secs;
                    if index_done.is_none() && any_checkpoint_has(&root, "index.meta") {
                        index_done = Some(since);
                    }
                    if snapshot_started.is_none() && any_checkpoint_has(&root, "snapshot.dat") {
                        snapshot_started = Some(since);
                    }
                    nap = nap.min(FILE_POLL.as_secs_f64());
                }
                thread::sleep(Duration::from_secs_f64(nap));
            }
            handle.map(|h| h.join())
        });
        bar.finish_and_clear();
        self.out.other_cpu_cores = CpuTicks::now().others_since(cpu0, probe.elapsed());
        self.out.intervals = intervals;
        let taken = match taken {
            None => {
                self.error = Some("the checkpoint never started".into());
                return;
            }
            Some(Err(_)) => {
                self.error = Some("the checkpoint thread panicked".into());
                return;
            }
            Some(Ok(t)) => t,
        };
        let o = &mut self.out;
        o.start_secs = taken.start;
        o.secs = taken.end - taken.start;
        // The file polls are relative to the planned start; the thread's own start is exact.
        let shift = taken.start - self.c.at_secs;
        o.index_done_secs = index_done.map(|t| (t - shift).max(0.0));
        o.snapshot_started_secs = snapshot_started.map(|t| (t - shift).max(0.0));
        o.log_written_bytes = taken.written;
        o.log_tail_start = taken.tail_start;
        o.log_tail_end = taken.tail_end;
        o.log_tail_run_end = store.log_tail();
        o.dip = dip(&o.intervals, taken.start, taken.end, taken.ops);
        match taken.token {
            Ok(t) => o.token = Some(t),
            Err(e) => self.error = Some(format!("the checkpoint failed: {e:#}")),
        }
    }

    fn verify_all_after_run(&self) -> bool {
        false
    }

    fn finish(mut self, store: S, result: &mut RunResult) -> anyhow::Result<()> {
        let spec = self.spec;
        let token = match (self.out.token, self.error.take()) {
            (Some(t), None) => t,
            (_, e) => {
                result.checkpoint = Some(self.out);
                bail!(e.unwrap_or_else(|| "no checkpoint was taken".into()));
            }
        };
        let dir = S::checkpoint_path(spec, token);
        let files = checkpoint_files(&dir);
        drop(store);
        let o = &mut self.out;
        o.files = files?;
        o.dir_bytes = o.files.iter().map(|(_, b)| b).sum();
        o.write_mb_s = (o.dir_bytes + o.log_written_bytes) as f64 / o.secs.max(1e-9) / 1e6;
        result.checkpoint = Some(o.clone());

        let (store, recovered) = S::recover(spec, self.plan, token)
            .with_context(|| format!("recovering from checkpoint {}", dir.display()))?;
        let missing_allowed = spec.workload.mix.delete > 0;
        let (count, seed) = if spec.verify_all {
            (spec.keys, 0)
        } else {
            (
                VERIFY_SAMPLE.min(spec.keys),
                splitmix64(spec.seed ^ 0xC4EC_0000),
            )
        };
        let keys = spec.keys;
        let key_at = move |i: u64| {
            if count == keys {
                i
            } else {
                splitmix64(seed ^ i) % keys
            }
        };
        let start = Instant::now();
        let c = verify_keys(
            &store,
            spec,
            missing_allowed,
            count,
            &key_at,
            "read after recovery",
        );
        let verify_secs = start.elapsed().as_secs_f64();
        drop(store);
        let r = RecoveryResult {
            recovered,
            verify_keys: count,
            verify_all: spec.verify_all,
            verify_secs,
            threads: spec.threads,
            reads_ok: c.reads_ok,
            missing: c.missing,
            wrong: c.wrong,
            errors: c.errors,
            first_problem: c.first_problem.clone(),
        };
        let failures = c.wrong + c.errors + if missing_allowed { 0 } else { c.missing };
        o.recovery = Some(r);
        let reference = (o.dir_bytes + o.log_written_bytes).clamp(64 << 20, 1 << 30);
        o.disk_seq_write_mb_s = seq_write_reference(&spec.data_dir, reference).ok();
        result.checkpoint = Some(o.clone());
        if failures > 0 {
            bail!(
                "after recovery, {failures} of {count} keys read back failed: {} missing, {} wrong, {} errors; first: {}",
                c.missing,
                c.wrong,
                c.errors,
                c.first_problem.as_deref().unwrap_or("-")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(end_secs: f64, ops: u64) -> Interval {
        Interval { end_secs, ops }
    }

    #[test]
    fn dip_splits_intervals_around_the_checkpoint() {
        // 1 Mops/s before, 0.5 during (1.0..2.0), 0.8 after.
        let intervals = [
            iv(0.5, 500_000),
            iv(1.0, 500_000),
            iv(1.5, 250_000),
            iv(2.0, 250_000),
            iv(2.5, 400_000),
            iv(3.0, 400_000),
        ];
        let d = dip(&intervals, 1.0, 2.0, 500_000);
        assert!((d.baseline_mops - 1.0).abs() < 1e-9, "{d:?}");
        assert!((d.during_mops - 0.5).abs() < 1e-9, "{d:?}");
        assert!((d.during_ratio - 0.5).abs() < 1e-9, "{d:?}");
        assert!((d.after_mops - 0.8).abs() < 1e-9, "{d:?}");
        assert!((d.min_interval_mops - 0.5).abs() < 1e-9, "{d:?}");
        assert_eq!(d.min_interval_end_secs, 1.5);
    }

    #[test]
    fn dip_without_intervals_is_zero() {
        let d = dip(&[], 0.0, 1.0, 0);
        assert_eq!(d, Dip::default());
    }
}
