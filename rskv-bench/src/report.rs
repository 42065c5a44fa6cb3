//! Results of runs as text: the table of each, the summary, the checkpoints and the ratios.
//! (The JSON line of each is `results::RunResult` as serde writes it.)

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::results::{CheckpointResult, LogState, RunResult, TimelineResult};
use crate::sysinfo::human_bytes;

// The heading of a run's table.
impl RunResult {
    fn title(&self) -> String {
        format!(
            "run {} | {}{} | workload {} ({}) | {} | {} thread{} | {} keys | key {} B, value {} B",
            self.index,
            self.store,
            self.checkpoint.as_ref().map_or(String::new(), |c| format!(
                " | {} checkpoint ({})",
                c.kind, c.mode
            )),
            self.workload,
            self.mix,
            self.distribution,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.keys,
            self.key_size,
            self.value_size
        )
    }
}

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.2} us")
    }
}

fn io_pair(p: Option<(u64, u64)>) -> String {
    match p {
        Some((w, r)) => format!("written {}, read {}", human_bytes(w), human_bytes(r)),
        None => "-".into(),
    }
}

/// The table of one run.
pub fn run_table(r: &RunResult) -> String {
    let mut s = String::new();
    let rule = "-".repeat(100);
    let _ = writeln!(s, "{rule}\n{}\n{rule}", r.title());
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<14} {v}");
    };
    row(
        "status",
        match &r.failure {
            None => "OK".into(),
            Some(f) => format!("FAILED: {f}"),
        },
    );
    if r.run_ops == 0 && r.failure.is_some() {
        return s;
    }
    if let Some(c) = &r.checkpoint {
        for (k, v) in checkpoint_rows(c) {
            row(k, v);
        }
    }
    row("store", r.store_info.description.clone());
    row("memory knob", r.store_info.memory_knob.clone());
    row(
        "types",
        format!(
            "key {}, value {}",
            r.store_info.key_type, r.store_info.value_type
        ),
    );
    row(
        "load",
        format!(
            "{} keys in {:.2} s = {:.3} Mops/s (streams generated in {:.2} s, not timed)",
            r.keys, r.load_secs, r.load_mops, r.generate_secs
        ),
    );
    if let Some(settle) = &r.settle_note {
        row(
            "settle",
            format!("{settle} (not timed; its I/O counts as load I/O)"),
        );
    }
    row(
        "warm-up",
        format!("{} ops in {:.2} s", r.warmup_ops, r.warmup_secs),
    );
    row(
        "THROUGHPUT",
        format!(
            "{:.3} Mops/s ({} ops in {:.2} s)",
            r.mops, r.run_ops, r.run_secs
        ),
    );
    let l = &r.latency;
    row(
        "latency",
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}  mean {} ({} samples, 1 op in {})",
            us(l.p50_us),
            us(l.p99_us),
            us(l.p999_us),
            us(l.max_us),
            us(l.mean_us),
            l.samples,
            l.sample_every
        ),
    );
    let m = &r.rss;
    row(
        "memory",
        format!(
            "peak RSS {} | RSS before store {}, after load {}, after run {} (store ~{})",
            human_bytes(m.peak),
            human_bytes(m.before_store),
            human_bytes(m.after_load),
            human_bytes(m.after_run),
            if m.store_growth >= 0 {
                human_bytes(m.store_growth as u64)
            } else {
                format!("-{}", human_bytes(m.store_growth.unsigned_abs()))
            }
        ),
    );
    if let Some(e) = rskv_stats(&r.extra) {
        row("rskv stats", e);
    }
    if let Some(rows) = r2kv_rows(&r.extra) {
        for (k, v) in rows {
            row(k, v);
        }
    } else if let Some(l) = &r.log_state {
        row("rskv log", log_row(l, r.log_budget));
    }
    if let Some(t) = &r.timeline {
        for (k, v) in timeline_rows(t, r.run_secs) {
            row(k, v);
        }
    }
    let io = &r.io;
    row(
        "disk (store)",
        format!(
            "load: {} | run: {}",
            io_pair(io.store_load),
            io_pair(io.store_run)
        ),
    );
    row(
        "disk (proc)",
        format!(
            "load: written {}, read {} | run: written {}, read {} | data dir {}",
            human_bytes(io.load.write_bytes),
            human_bytes(io.load.read_bytes),
            human_bytes(io.run.write_bytes),
            human_bytes(io.run.read_bytes),
            human_bytes(io.disk_usage)
        ),
    );
    let v = &r.verify;
    row(
        "verify",
        format!(
            "{} reads ok, {} missing{}, {} wrong, {} errors{}",
            v.reads_ok,
            v.missing,
            if v.missing_allowed {
                " (allowed: the mix deletes)"
            } else {
                ""
            },
            v.wrong,
            v.errors,
            if v.verify_all_checked > 0 {
                format!(", --verify-all checked {} keys", v.verify_all_checked)
            } else {
                String::new()
            }
        ),
    );
    s
}

fn mb(bytes: u64) -> String {
    human_bytes(bytes)
}

/// The rows of a checkpoint run: the checkpoint, the throughput around it, the intervals,
/// recovery.
fn checkpoint_rows(c: &CheckpointResult) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    let mut phases = Vec::new();
    if let Some(t) = c.index_done_secs {
        phases.push(format!("index.meta at +{t:.3} s"));
    }
    if let Some(t) = c.snapshot_started_secs {
        phases.push(format!("snapshot.dat begun at +{t:.3} s"));
    }
    rows.push((
        "CHECKPOINT",
        format!(
            "{} {} (token {}) started {:.2} s into the run, took {:.3} s{}",
            c.kind,
            c.mode,
            c.token.map_or("-".into(), |t| t.to_string()),
            c.start_secs,
            c.secs,
            if phases.is_empty() {
                String::new()
            } else {
                format!(" ({})", phases.join(", "))
            }
        ),
    ));
    if !c.files.is_empty() {
        let files: Vec<String> = c
            .files
            .iter()
            .map(|(n, b)| format!("{n} {}", mb(*b)))
            .collect();
        rows.push((
            "ckpt size",
            format!(
                "dir {} ({}) + log written {} = {:.0} MB/s{}",
                mb(c.dir_bytes),
                files.join(", "),
                mb(c.log_written_bytes),
                c.write_mb_s,
                c.disk_seq_write_mb_s.map_or(String::new(), |r| format!(
                    " (disk reference: buffered seq write + fsync {r:.0} MB/s)"
                ))
            ),
        ));
    }
    rows.push((
        "other CPU",
        format!(
            "{:.2} cores used by other processes during the measured phase{}",
            c.other_cpu_cores,
            if c.other_cpu_cores > 0.1 {
                " (DISTURBED: the throughput numbers are not clean)"
            } else {
                ""
            }
        ),
    ));
    rows.push((
        "log tail",
        format!(
            "{} at checkpoint start, {} at its end, {} at run end",
            mb(c.log_tail_start),
            mb(c.log_tail_end),
            mb(c.log_tail_run_end)
        ),
    ));
    let d = &c.dip;
    rows.push((
        "ckpt dip",
        format!(
            "baseline {:.3} Mops/s | during checkpoint {:.3} Mops/s = {:.1}% | after {:.3} Mops/s | slowest {} ms interval {:.3} Mops/s (ending {:.2} s)",
            d.baseline_mops,
            d.during_mops,
            d.during_ratio * 100.0,
            d.after_mops,
            (c.interval_secs * 1000.0).round(),
            d.min_interval_mops,
            d.min_interval_end_secs
        ),
    ));
    // Mops/s per interval, 10 a line; `*` marks intervals overlapping the checkpoint.
    let (start, end) = (c.start_secs, c.start_secs + c.secs);
    let mut prev = 0.0;
    let cells: Vec<String> = c
        .intervals
        .iter()
        .map(|i| {
            let secs = (i.end_secs - prev).max(1e-9);
            let overlaps = i.end_secs > start && prev < end;
            prev = i.end_secs;
            format!(
                "{:.2}{}",
                i.ops as f64 / secs / 1e6,
                if overlaps { "*" } else { " " }
            )
        })
        .collect();
    for (n, line) in cells.chunks(10).enumerate() {
        rows.push((
            if n == 0 { "intervals" } else { "" },
            line.iter()
                .map(|c| format!("{c:>6}"))
                .collect::<Vec<_>>()
                .join(" "),
        ));
    }
    if let Some(r) = &c.recovery {
        let rc = &r.recovered;
        rows.push((
            "RECOVERY",
            format!(
                "{:.3} s (device open {:.3} s); replayed {} ({} records moved an index entry); index from checkpoint: {}; version {}",
                rc.secs,
                rc.disk_open_secs,
                mb(rc.replayed_bytes),
                rc.replayed_records,
                if rc.index_loaded { "yes" } else { "no (whole log replayed)" },
                rc.version
            ),
        ));
        rows.push((
            "after recovery",
            format!(
                "read back {} {} in {:.3} s ({:.0} reads/s on {} threads): {} ok, {} missing, {} wrong, {} errors (checked: present, value verifies against its key)",
                r.verify_keys,
                if r.verify_all { "keys (all)" } else { "sampled keys" },
                r.verify_secs,
                r.verify_keys as f64 / r.verify_secs.max(1e-9),
                r.threads,
                r.reads_ok,
                r.missing,
                r.wrong,
                r.errors
            ),
        ));
    }
    rows
}

/// One row per checkpoint run.
pub fn checkpoint_table(results: &[RunResult]) -> Option<String> {
    let runs: Vec<_> = results
        .iter()
        .filter_map(|r| Some((r, r.checkpoint.as_ref()?)))
        .collect();
    if runs.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<4} {:<10} {:<7} {:>3} {:>8} {:>10} {:>10} {:>8} {:>9} {:>9} {:>7} {:>9} {:>8} {:>10}  status",
        "run", "mode", "wl", "thr", "ckpt s", "ckpt size", "log wr", "MB/s", "base Mops", "ckpt Mops", "ratio", "min Mops", "recov s", "replayed"
    );
    for (r, c) in runs {
        let rec = c.recovery.as_ref().map(|x| &x.recovered);
        let _ = writeln!(
            s,
            "{:<4} {:<10} {:<7} {:>3} {:>8.3} {:>10} {:>10} {:>8.0} {:>9.3} {:>9.3} {:>6.1}% {:>9.3} {:>8} {:>10}  {}",
            r.index,
            c.mode,
            r.workload,
            r.threads,
            c.secs,
            mb(c.dir_bytes),
            mb(c.log_written_bytes),
            c.write_mb_s,
            c.dip.baseline_mops,
            c.dip.during_mops,
            c.dip.during_ratio * 100.0,
            c.dip.min_interval_mops,
            rec.map_or("-".into(), |x| format!("{:.3}", x.secs)),
            rec.map_or("-".into(), |x| mb(x.replayed_bytes)),
            r.status
        );
    }
    Some(s)
}

/// RsKv's own view at the end of the run: the index as allocated (overflow buckets come on
/// top of the budgeted table) and the log markers.
fn rskv_stats(extra: &serde_json::Value) -> Option<String> {
    let n = |k: &str| extra.get(k).and_then(serde_json::Value::as_u64);
    Some(format!(
        "index memory {} ({} overflow buckets), log memory {}, log tail {}, on disk below head {}",
        human_bytes(n("index_memory")?),
        n("overflow_buckets")?,
        human_bytes(n("log_memory")?),
        human_bytes(n("log_tail")?),
        human_bytes(n("log_head")?),
    ))
}

/// R2Kv's own view at the end of the run (its `extra`): where reads were answered, what
/// migration did, memory as allocated, both tiers' logs.
fn r2kv_rows(extra: &serde_json::Value) -> Option<Vec<(&'static str, String)>> {
    let n = |k: &str| extra.get(k).and_then(serde_json::Value::as_u64);
    let per_key = extra.get("index_memory_per_key")?.as_f64()?;
    Some(vec![
        (
            "r2kv reads",
            format!(
                "hot tier answered {} (read cache hits {}, misses {}, kept as they left the hot log's memory {}), cold tier read {} (found {}); RMWs from cold {}",
                n("hot_hits")?,
                n("read_cache_hits")?,
                n("read_cache_misses")?,
                n("read_cache_kept").unwrap_or(0),
                n("cold_reads")?,
                n("cold_hits")?,
                n("cold_rmws")?,
            ),
        ),
        (
            "r2kv passes",
            format!(
                "hot->cold {} passes, scanned {}, moved {} records, dropped {} | cold->cold {} passes, scanned {}, copied {}, dropped {} | cold index: {} chunk reads, {} CAS conflicts, {} inner passes",
                n("hot_to_cold_passes")?,
                mb(n("hot_to_cold_scanned_bytes")?),
                n("hot_to_cold_moved")?,
                n("hot_to_cold_dropped")?,
                n("cold_to_cold_passes")?,
                mb(n("cold_to_cold_scanned_bytes")?),
                n("cold_to_cold_moved")?,
                n("cold_to_cold_dropped")?,
                n("cold_index_chunk_reads")?,
                n("cold_index_update_conflicts")?,
                n("cold_index_passes")?,
            ),
        ),
        (
            "r2kv memory",
            format!(
                "hot index {} ({} buckets, {} overflow, {} growths) + hot log {} + read cache {} + cold index {} (bound {}) + cold log {}; (hot + cold index) / keys = {:.1} B",
                mb(n("hot_index_memory")?),
                n("hot_index_buckets")?,
                n("hot_overflow_buckets")?,
                n("hot_index_growths")?,
                mb(n("hot_log_memory")?),
                mb(n("read_cache_memory")?),
                mb(n("cold_index_memory")?),
                mb(n("cold_index_memory_bound")?),
                mb(n("cold_log_memory")?),
                per_key,
            ),
        ),
        (
            "r2kv logs",
            format!(
                "hot {} (files {}), cold {} (files {}), cold index {} (files {}); device reads: hot {}, cold {}",
                mb(n("hot_log_bytes")?),
                mb(n("hot_disk_bytes")?),
                mb(n("cold_log_bytes")?),
                mb(n("cold_disk_bytes")?),
                mb(n("cold_index_log_bytes")?),
                mb(n("cold_index_disk_bytes")?),
                n("hot_device_reads")?,
                n("cold_device_reads")?,
            ),
        ),
    ])
}

/// The log and its compaction at the end of the measured phase.
fn log_row(l: &LogState, budget: Option<u64>) -> String {
    format!(
        "log {} ({}), segment files {} | compaction since open: {} passes ({} wasted), scanned {}, copied {} records, freed {}",
        mb(l.log_bytes),
        budget.map_or("no budget".into(), |b| format!("budget {}", mb(b))),
        mb(l.disk_bytes),
        l.passes,
        l.wasted_passes,
        mb(l.scanned_bytes),
        l.copied,
        mb(l.bytes_freed)
    )
}

/// MB/s (10^6 bytes).
fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e6
}

/// The rows of a --timeline run.
fn timeline_rows(t: &TimelineResult, run_secs: f64) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    let mut files: Vec<&str> = [&t.csv, &t.passes_csv, &t.svg]
        .into_iter()
        .filter_map(Option::as_deref)
        .collect();
    if files.is_empty() {
        files.push("none written");
    }
    rows.push((
        "TIMELINE",
        format!(
            "sampled every {:.3} s; files: {}{}",
            t.interval_secs,
            files.join(", "),
            t.file_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (NOT WRITTEN: {e})"))
        ),
    ));
    rows.push((
        "disk footprint",
        format!(
            "at start {}, largest {}, last {}; second half {} .. {}",
            mb(t.footprint_first),
            mb(t.footprint_max),
            mb(t.footprint_last),
            mb(t.footprint_late_min),
            mb(t.footprint_late_max)
        ),
    ));
    rows.push((
        "RSS",
        format!(
            "at start {}, largest {}, last {}",
            mb(t.rss_first),
            mb(t.rss_max),
            mb(t.rss_last)
        ),
    ));
    rows.push((
        "in/out pass",
        if !t.observing_passes {
            "unknown: another tracing subscriber hides the store's compaction passes".into()
        } else if t.during_pass_secs > 0.0 {
            format!(
                "{:.3} Mops/s while a compaction pass ran ({:.1} s) | {:.3} Mops/s while none ran ({:.1} s){}",
                t.during_pass_mops,
                t.during_pass_secs,
                t.outside_pass_mops,
                t.outside_pass_secs,
                t.during_ratio()
                    .map_or(String::new(), |r| format!(" = {:.1}%", r * 100.0))
            )
        } else {
            format!(
                "no compaction pass ran in the measured phase ({:.3} Mops/s throughout)",
                t.outside_pass_mops
            )
        },
    ));
    let speed = match t.compaction_mb_s() {
        Some(v) => format!(
            "{:.0} MB/s of log scanned per second of pass ({} passes ended in the run: {} in {:.1} s)",
            v,
            t.run_passes,
            mb(t.run_pass_scanned),
            t.run_pass_secs
        ),
        None if t.observing_passes => "no compaction pass ended in the measured phase".into(),
        None => "pass times unknown".into(),
    };
    rows.push((
        "COMPACTION",
        format!(
            "{speed}; the store's totals: {} scanned in the run = {:.1} MB/s over the whole run",
            mb(t.run_scanned_bytes),
            mb_s(t.run_scanned_bytes, run_secs)
        ),
    ));
    match (&t.device_read, &t.device_read_error) {
        (Some(d), _) => rows.push((
            "device read",
            format!(
                "{:.0} MB/s with 1 reader ({}), {:.0} MB/s with {} ({}): {}",
                d.mb_s_1,
                mb(d.bytes_1),
                d.mb_s_n,
                d.threads,
                mb(d.bytes_n),
                d.what
            ),
        )),
        (None, Some(e)) => rows.push(("device read", format!("not measured: {e}"))),
        (None, None) => {}
    }
    rows.push((
        "other CPU",
        format!(
            "{:.2} cores used by other processes during the measured phase{}",
            t.other_cpu_cores,
            if t.other_cpu_cores > 0.1 {
                " (DISTURBED: the throughput numbers are not clean)"
            } else {
                ""
            }
        ),
    ));
    rows
}

/// One row per run with a log budget or a timeline: throughput against the same spec without
/// compaction, during passes against outside them, compaction speed against the device.
pub fn maintenance_table(results: &[RunResult]) -> Option<String> {
    let runs: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.log_budget.is_some() || r.timeline.is_some())
        .collect();
    if runs.is_empty() {
        return None;
    }
    let key = |r: &RunResult| {
        (
            r.store.clone(),
            r.workload.clone(),
            r.distribution.clone(),
            r.threads,
            r.checkpoint.as_ref().map(|c| c.mode.clone()),
        )
    };
    let off: BTreeMap<_, f64> = results
        .iter()
        .filter(|r| r.log_budget.is_none() && r.ok())
        .map(|r| (key(r), r.mops))
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<4} {:<8} {:<7} {:<11} {:>3} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:>6} {:>9} {:>13} {:>10} {:>10}  status",
        "run", "store", "wl", "dist", "thr", "budget", "Mops/s", "vs off", "in pass", "outside", "in/out", "passes", "scan MB/s", "dev read MB/s", "disk max", "disk last"
    );
    for r in runs {
        let t = r.timeline.as_ref();
        let vs_off = match (r.log_budget, off.get(&key(r))) {
            (Some(_), Some(&b)) if b > 0.0 && r.ok() => format!("{:.1}%", r.mops / b * 100.0),
            _ => "-".into(),
        };
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
        let _ = writeln!(
            s,
            "{:<4} {:<8} {:<7} {:<11} {:>3} {:>10} {:>9.3} {:>8} {:>8} {:>8} {:>7} {:>6} {:>9} {:>13} {:>10} {:>10}  {}",
            r.index,
            r.store,
            r.workload,
            r.distribution,
            r.threads,
            r.log_budget.map_or("off".into(), mb),
            r.mops,
            vs_off,
            opt(t.filter(|t| t.during_pass_secs > 0.0).map(|t| t.during_pass_mops), &|v| format!("{v:.3}")),
            opt(t.map(|t| t.outside_pass_mops), &|v| format!("{v:.3}")),
            opt(t.and_then(TimelineResult::during_ratio), &|v| format!("{:.1}%", v * 100.0)),
            r.log_state.map_or("-".into(), |l| l.passes.to_string()),
            opt(t.and_then(TimelineResult::compaction_mb_s), &|v| format!("{v:.0}")),
            t.and_then(|t| t.device_read.as_ref())
                .map_or("-".into(), |d| format!("{:.0} / {:.0}", d.mb_s_1, d.mb_s_n)),
            t.map_or_else(
                || r.log_state.map_or("-".into(), |l| mb(l.disk_bytes)),
                |t| mb(t.footprint_max)
            ),
            t.map_or_else(
                || r.log_state.map_or("-".into(), |l| mb(l.disk_bytes)),
                |t| mb(t.footprint_last)
            ),
            r.status
        );
    }
    Some(s)
}

/// One row per run.
pub fn summary_table(results: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<4} {:<8} {:<7} {:<11} {:>3} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}  status",
        "run",
        "store",
        "wl",
        "dist",
        "thr",
        "Mops/s",
        "p50",
        "p99",
        "p99.9",
        "peak RSS",
        "disk W",
        "disk R",
        "load Mop/s",
    );
    for r in results {
        let (w, rd) =
            r.io.store_run
                .unwrap_or((r.io.run.write_bytes, r.io.run.read_bytes));
        let _ = writeln!(
            s,
            "{:<4} {:<8} {:<7} {:<11} {:>3} {:>9.3} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10.3}  {}",
            r.index,
            r.store,
            r.workload,
            r.distribution,
            r.threads,
            r.mops,
            us(r.latency.p50_us),
            us(r.latency.p99_us),
            us(r.latency.p999_us),
            human_bytes(r.rss.peak),
            human_bytes(w),
            human_bytes(rd),
            r.load_mops,
            r.status
        );
    }
    s
}

/// Throughput of each peer over RsKv's on the same workload, distribution and threads.
pub fn ratio_table(results: &[RunResult]) -> Option<String> {
    let key = |r: &RunResult| (r.workload.clone(), r.distribution.clone(), r.threads);
    let base: BTreeMap<_, f64> = results
        .iter()
        .filter(|r| r.store == "rskv" && r.ok())
        .map(|r| (key(r), r.mops))
        .collect();
    let peers: Vec<&RunResult> = results.iter().filter(|r| r.store != "rskv").collect();
    if base.is_empty() || peers.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:<7} {:<11} {:>3} {:>12} {:>12} {:>14}",
        "store", "wl", "dist", "thr", "Mops/s", "rskv Mops/s", "peer / rskv"
    );
    for p in peers {
        let Some(b) = base.get(&key(p)) else { continue };
        let ratio = if p.ok() && *b > 0.0 {
            format!("{:.3}x", p.mops / b)
        } else {
            "FAILED".into()
        };
        let _ = writeln!(
            s,
            "{:<8} {:<7} {:<11} {:>3} {:>12.3} {:>12.3} {:>14}",
            p.store, p.workload, p.distribution, p.threads, p.mops, b, ratio
        );
    }
    Some(s)
}
