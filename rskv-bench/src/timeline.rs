//! The long-run scenario (`--timeline INTERVAL`): the log-maintenance benchmark of issue 13.
//!
//! During the measured phase the coordinating thread wakes every 20 ms (or every INTERVAL if
//! that is shorter) and reads the threads' operation counters and whether a compaction pass
//! runs (`passes`); each tick's operations count as "during a pass" if one ran at any moment
//! of the tick, else as "outside". Every INTERVAL it also records a [`Sample`]: the interval's
//! operations, the store's log size, disk footprint and compaction totals (RsKv's `Stats`; for
//! peers the data directory's size), and the process's RSS. A first sample, with no operations,
//! records the state as the measured phase starts.
//!
//! After the run: the passes the store made since it was opened (times from its `compact`
//! tracing span, counts from the event that ends it), compaction speed (log scanned per
//! second of pass, over the passes that ended in the measured phase), throughput during passes
//! over throughput outside them, and, once the store is dropped, the device's sequential read
//! rate on the store's own files (`devread`). The parent writes the samples and passes as CSV
//! and draws them (`plot`).

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::passes::{self, PassRecord};
use crate::results::{Pass, RunResult, Sample, TimelineResult};
use crate::runner::{progress_bar, Probe, Scenario};
use crate::spec::{DiskKind, RunSpec, StoreKind};
use crate::store::Store;
use crate::sysinfo::{disk_usage, human_bytes, rss, CpuTicks};

/// Longest wait between two looks at the counters and the pass state.
const TICK_SECS: f64 = 0.02;

/// Compaction workers RsKv uses when `--compaction-threads` is not given.
const DEFAULT_COMPACTION_THREADS: usize = 1;

pub(crate) struct TimelineRun {
    interval: f64,
    /// Made just before the store is opened: passes seen before belong to an earlier run.
    created: Instant,
    data_dir: PathBuf,
    /// Whether to time the device after the run (RsKv over files: its log segments).
    read_device: bool,
    compaction_threads: usize,
    out: TimelineResult,
}

impl TimelineRun {
    pub(crate) fn new(spec: &RunSpec, interval: f64) -> TimelineRun {
        let observing = passes::tracker().observing();
        TimelineRun {
            interval,
            created: Instant::now(),
            data_dir: spec.data_dir.clone(),
            read_device: spec.store == StoreKind::Rskv && spec.disk == DiskKind::File,
            compaction_threads: spec
                .compaction_threads
                .unwrap_or(DEFAULT_COMPACTION_THREADS),
            out: TimelineResult {
                interval_secs: interval,
                log_budget: spec.log_budget,
                observing_passes: observing,
                ..TimelineResult::default()
            },
        }
    }
}

/// Seconds from `base` to `t` (negative when `t` is earlier).
fn rel(t: Instant, base: Instant) -> f64 {
    match t.checked_duration_since(base) {
        Some(d) => d.as_secs_f64(),
        None => -base.duration_since(t).as_secs_f64(),
    }
}

impl<S: Store> Scenario<S> for TimelineRun {
    fn measure(&mut self, store: &S, probe: &Probe<'_>) {
        let tracker = passes::tracker();
        let spec = probe.spec();
        let run = probe.run_secs();
        let interval = self.interval;
        let tick = TICK_SECS.min(interval);
        let bar = progress_bar(spec, (run * 1000.0) as u64, "run ms");
        let cpu0 = CpuTicks::now();
        let log0 = store.log_state();
        let take = |t: f64, ops: u64, secs: f64, compacting_secs: f64| Sample {
            t_secs: t,
            ops,
            secs,
            compacting_secs,
            dir_bytes: disk_usage(&self.data_dir),
            rss: rss(),
            log: store.log_state(),
        };
        // The first sample is the state as the measured phase starts (no operations yet).
        let mut samples: Vec<Sample> = Vec::with_capacity((run / interval) as usize + 3);
        samples.push(take(probe.elapsed(), 0, 0.0, 0.0));
        // The last tick: time, operations, pass state.
        let (mut last_t, mut last_ops, mut last_state) = (0.0, 0u64, tracker.state());
        // The current interval: start, operations at its start, seconds with a pass running.
        let (mut iv_t, mut iv_ops, mut iv_compacting) = (0.0, 0u64, 0.0);
        let mut next_sample = interval;
        let (mut during, mut outside) = ((0u64, 0f64), (0u64, 0f64));
        loop {
            let wake = (last_t + tick).min(next_sample).min(run);
            let now = probe.elapsed();
            if wake > now {
                thread::sleep(Duration::from_secs_f64(wake - now));
            }
            let (t, ops, state) = (probe.elapsed(), probe.ops(), tracker.state());
            let (dt, dops) = (t - last_t, ops.saturating_sub(last_ops));
            // A pass ran at some moment of the tick: at its start, or one started since.
            if last_state.running || state.started != last_state.started {
                during = (during.0 + dops, during.1 + dt);
                iv_compacting += dt;
            } else {
                outside = (outside.0 + dops, outside.1 + dt);
            }
            (last_t, last_ops, last_state) = (t, ops, state);
            let end = t >= run;
            if t >= next_sample || end {
                let s = take(t, ops - iv_ops, t - iv_t, iv_compacting);
                bar.set_position((t * 1000.0) as u64);
                bar.set_message(format!(
                    "{:.3} Mops/s, disk {}, RSS {}",
                    s.mops(),
                    human_bytes(s.footprint()),
                    human_bytes(s.rss)
                ));
                samples.push(s);
                (iv_t, iv_ops, iv_compacting) = (t, ops, 0.0);
                next_sample = ((t / interval).floor() + 1.0) * interval;
            }
            if end {
                break;
            }
        }
        bar.finish_and_clear();
        let o = &mut self.out;
        o.other_cpu_cores = CpuTicks::now().others_since(cpu0, last_t);
        let rate = |(ops, secs): (u64, f64)| {
            if secs > 0.0 {
                ops as f64 / secs / 1e6
            } else {
                0.0
            }
        };
        (o.during_pass_secs, o.during_pass_mops) = (during.1, rate(during));
        (o.outside_pass_secs, o.outside_pass_mops) = (outside.1, rate(outside));

        let start = probe.start();
        let run_end = start + Duration::from_secs_f64(last_t);
        let passes = tracker.passes_since(self.created);
        for p in &passes {
            if let (Some(end), Some(c)) = (p.end, p.done) {
                if end >= start && end <= run_end {
                    o.run_passes += 1;
                    o.run_pass_scanned += c.scanned;
                    o.run_pass_secs += end.duration_since(p.start).as_secs_f64();
                }
            }
        }
        o.passes = passes.iter().map(|p| pass(p, start, run_end)).collect();
        if let (Some(a), Some(b)) = (log0, samples.last().and_then(|s| s.log)) {
            o.run_scanned_bytes = b.scanned_bytes.saturating_sub(a.scanned_bytes);
        }
        summarize(o, &samples, run);
        o.samples = samples;
    }

    fn finish(mut self, store: S, result: &mut RunResult) -> anyhow::Result<()> {
        drop(store);
        if self.read_device {
            // The store is gone: its files are quiet, and nothing competes for the device.
            match crate::devread::measure(&self.data_dir, self.compaction_threads) {
                Ok(r) => self.out.device_read = Some(r),
                Err(e) => self.out.device_read_error = Some(format!("{e:#}")),
            }
        }
        result.timeline = Some(self.out);
        Ok(())
    }
}

/// A pass as the result reports it, in seconds into the measured phase.
fn pass(p: &PassRecord, start: Instant, run_end: Instant) -> Pass {
    let end = p.end.unwrap_or(run_end).max(p.start);
    let c = p.done.unwrap_or_default();
    Pass {
        start_secs: rel(p.start, start),
        secs: end.duration_since(p.start).as_secs_f64(),
        done: p.done.is_some(),
        scanned_bytes: c.scanned,
        copied: c.copied,
        superseded: c.superseded,
        tombstones: c.tombstones,
        freed_bytes: c.freed,
    }
}

/// The footprint and RSS figures of the samples.
fn summarize(o: &mut TimelineResult, samples: &[Sample], run: f64) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return;
    };
    o.footprint_first = first.footprint();
    o.footprint_last = last.footprint();
    o.footprint_max = samples.iter().map(Sample::footprint).max().unwrap_or(0);
    let late: Vec<u64> = samples
        .iter()
        .filter(|s| s.t_secs >= run / 2.0)
        .map(Sample::footprint)
        .collect();
    o.footprint_late_min = late.iter().copied().min().unwrap_or(0);
    o.footprint_late_max = late.iter().copied().max().unwrap_or(0);
    o.rss_first = first.rss;
    o.rss_last = last.rss;
    o.rss_max = samples.iter().map(|s| s.rss).max().unwrap_or(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, footprint: u64, rss: u64) -> Sample {
        Sample {
            t_secs: t,
            dir_bytes: footprint,
            rss,
            ..Sample::default()
        }
    }

    #[test]
    fn footprint_halves() {
        let mut o = TimelineResult::default();
        let samples = [s(1.0, 10, 5), s(2.0, 40, 9), s(3.0, 30, 7), s(4.0, 35, 6)];
        summarize(&mut o, &samples, 4.0);
        assert_eq!(
            (o.footprint_first, o.footprint_max, o.footprint_last),
            (10, 40, 35)
        );
        assert_eq!((o.footprint_late_min, o.footprint_late_max), (30, 40));
        assert_eq!((o.rss_first, o.rss_max, o.rss_last), (5, 9, 6));
    }

    #[test]
    fn relative_times() {
        let base = Instant::now();
        let later = base + Duration::from_millis(1500);
        assert!((rel(later, base) - 1.5).abs() < 1e-9);
        assert!((rel(base, later) + 1.5).abs() < 1e-9);
    }
}
