//! rskv-bench: YCSB-style workloads over RsKv, its two-tier store R2Kv (`--store r2kv`) and,
//! with cargo features, its peers.
//!
//! The parent process expands the command line into runs and starts each in a fresh child
//! process of this binary (`--child SPEC`), so every run's peak RSS is its own and no run
//! inherits another's heap, page cache pressure or background threads. The child prints one
//! tagged JSON line with its result; the parent prints the tables.
//!
//! # The long log-maintenance run (issue 13)
//!
//! A long update-heavy, larger-than-memory run with background compaction, sampled over time:
//!
//! ```sh
//! cargo run -p rskv-bench --release -- --store rskv --keys 2M --value-size 100 \
//!     --memory 128MiB --workload a --threads 2 --duration 10m --warmup 10s \
//!     --log-budget 768MiB --segment-size 64MiB --timeline 1s --json maintenance.jsonl
//! ```
//!
//! (2M keys of 136-byte records are 272 MB of live data, the budget about 3x that; the log
//! grows by about 2 MB/s on the 2-core development VM, so the first pass comes about 3 minutes
//! in. See rskv-bench/README.md, "Log-maintenance runs".)
//!
//! `--log-budget` turns on `LogCompaction::with_budget` (F2's defaults; `--compaction-threads`
//! sets its workers), `--timeline 1s` samples throughput, disk footprint, log size, RSS and the
//! compaction totals every second of the measured phase (module `timeline`). Each run writes
//! `timeline-<what ran>.csv`, `...-passes.csv` (one row per compaction pass, timed by the
//! store's `compact` tracing span: module `passes`) and `...svg` (module `plot`) into
//! `--timeline-dir` (default: beside `--json`, else the current directory), and its table
//! reports compaction speed (MB/s of log scanned per second of pass) next to the device's
//! sequential read rate, measured on the store's own files after the run (module `devread`),
//! and throughput while passes ran over throughput while none ran. `--log-budget 0,3GiB` runs
//! the same spec without and with compaction, and the footer prints the ratio.
// The JSON of an R2Kv run's tier statistics (`serde_json::json!`) nests past the default 128.
#![recursion_limit = "256"]

mod checkpoint;
mod cli;
mod devread;
mod malloc;
mod passes;
mod plot;
mod probe;
mod report;
mod results;
mod runner;
mod sizing;
mod spec;
mod store;
mod stores;
mod sysinfo;
mod timeline;
mod values;
mod workload;

use std::io::{Read as _, Write as _};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::cli::Args;
use crate::results::RunResult;
use crate::spec::{RunLength, RunSpec, Warmup};
use crate::sysinfo::human_bytes;

/// Marks the child's result line on its stdout.
const RESULT_TAG: &str = "RSKV_BENCH_RESULT ";

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(bytes) = args.probe_memory {
        probe::run(bytes);
        return ExitCode::SUCCESS;
    }
    if let Some(spec) = &args.child {
        return child_main(spec);
    }
    match parent_main(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("rskv-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A child: runs one spec and prints its result.
fn child_main(spec_json: &str) -> ExitCode {
    let spec: RunSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rskv-bench: bad --child spec: {e}");
            return ExitCode::from(2);
        }
    };
    malloc::setup(spec.glibc_malloc_defaults);
    let result = run_one(&spec);
    match serde_json::to_string(&result) {
        Ok(json) => println!("{RESULT_TAG}{json}"),
        Err(e) => {
            eprintln!("rskv-bench: cannot encode the result: {e}");
            return ExitCode::from(2);
        }
    }
    if result.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs one spec in this process, in a fresh data directory that is removed afterwards.
fn run_one(spec: &RunSpec) -> RunResult {
    let outcome = (|| {
        let plan = sizing::plan(spec)?;
        if spec.data_dir.exists() {
            std::fs::remove_dir_all(&spec.data_dir)
                .with_context(|| format!("clearing {}", spec.data_dir.display()))?;
        }
        std::fs::create_dir_all(&spec.data_dir)
            .with_context(|| format!("creating {}", spec.data_dir.display()))?;
        stores::run(spec, &plan)
    })();
    if !spec.keep_data {
        // Best effort: a leftover directory is only disk space.
        let _ = std::fs::remove_dir_all(&spec.data_dir);
    }
    match outcome {
        Ok(r) => r,
        Err(e) => RunResult::failed(spec, format!("{e:#}")),
    }
}

/// Runs one spec in a child process and collects its result; kills the child after
/// `timeout`.
fn run_child(spec: &RunSpec, timeout: Duration) -> anyhow::Result<RunResult> {
    let exe = std::env::current_exe().context("finding this binary to start a child")?;
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a child process")?;
    // Read stdout on a thread so the child never blocks on a full pipe while we poll.
    let mut stdout = child.stdout.take().context("the child has no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            // Only our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader.join().unwrap_or_default();
    let line = stdout.lines().find_map(|l| l.strip_prefix(RESULT_TAG));
    Ok(match (status, line) {
        (None, _) => RunResult::failed(
            spec,
            format!("killed after --run-timeout {timeout:?}: the run did not finish (a hang?)"),
        ),
        (Some(_), Some(json)) => {
            serde_json::from_str(json).context("reading the child's result")?
        }
        (Some(status), None) => RunResult::failed(
            spec,
            format!("the child process ended without a result ({status})"),
        ),
    })
}

fn parent_main(args: &Args) -> anyhow::Result<bool> {
    let runs = args.runs()?;
    // Refuse a budget that cannot be split before starting anything.
    if let Some(first) = runs.first() {
        sizing::plan(first)?;
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating --dir {}", args.dir.display()))?;
    print_header(args, &runs)?;
    let mut json_file = match &args.json {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening --json {}", p.display()))?,
        ),
        None => None,
    };
    let mut results = Vec::new();
    for spec in &runs {
        let mut result = if args.in_process {
            malloc::setup(spec.glibc_malloc_defaults);
            run_one(spec)
        } else {
            run_child(spec, args.run_timeout)?
        };
        if result.timeline.is_some() {
            plot::write_files(&mut result, &args.timeline_dir());
        }
        let json = serde_json::to_string(&result)?;
        let mut out = std::io::stdout().lock();
        write!(out, "{}", report::run_table(&result))?;
        writeln!(out, "{json}")?;
        out.flush()?;
        if let Some(f) = json_file.as_mut() {
            writeln!(f, "{json}")?;
        }
        results.push(result);
    }
    // Only removes the directory if it is empty (ours, with nothing kept).
    let _ = std::fs::remove_dir(&args.dir);
    print_footer(&results);
    Ok(results.iter().all(RunResult::ok))
}

fn print_header(args: &Args, runs: &[RunSpec]) -> anyhow::Result<()> {
    let Some(first) = runs.first() else {
        anyhow::bail!("nothing to run");
    };
    let length = match first.length {
        RunLength::Ops(n) => format!("{n} ops"),
        RunLength::Seconds(s) => format!(
            "{s} s (streams of {} ops per thread, replayed cyclically)",
            first.op_buffer
        ),
    };
    let warmup = match first.warmup {
        Warmup::Fraction(f) => format!("{}% of the run", f * 100.0),
        Warmup::Seconds(s) => format!("{s} s"),
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "rskv-bench: {} run(s), {} cores, {}",
        runs.len(),
        cores,
        if args.in_process {
            "in this process"
        } else {
            "each in a fresh child process"
        }
    );
    println!("  keys        {} loaded in shuffled order (seed {}), key {} B as {}, value {} B as {} (in RsKv)",
        first.keys, first.seed, first.key_size, values::key_type_name(first.key_size), first.value_size, values::value_type_name(first.value_size));
    println!(
        "  run         {length}; warm-up {warmup}; latency sampled on 1 op in {}",
        first.sample_every
    );
    // RsKv's split (the peers' budget); an R2Kv-only invocation has only R2Kv's, below.
    let rskv_plan = match runs.iter().find(|r| r.store != spec::StoreKind::R2kv) {
        Some(r) => Some(sizing::plan(r)?),
        None => None,
    };
    if let Some(plan) = rskv_plan.filter(|p| p.explicit) {
        println!("  memory      budget {} per store; RsKv: index {} ({} buckets) + ~{} of overflow buckets + log {} (pages of {}); record ~{} B; no index growth",
            human_bytes(plan.budget), human_bytes(plan.index_bytes), plan.table_size, human_bytes(plan.overflow_bytes), human_bytes(plan.log_bytes), human_bytes(plan.page_size), plan.record_bytes);
        if plan.read_cache_bytes > 0 {
            println!(
                "              + read cache {}",
                human_bytes(plan.read_cache_bytes)
            );
        }
    } else if let Some(plan) = rskv_plan {
        println!("  memory      in-memory: RsKv index {} ({} buckets) + log {} (2x the ~{} B records, pages of {}); peers get the same {}",
            human_bytes(plan.index_bytes), plan.table_size, human_bytes(plan.log_bytes), plan.record_bytes, human_bytes(plan.page_size), human_bytes(plan.budget));
    }
    if let Some(r2) = runs.iter().find(|r| r.store == spec::StoreKind::R2kv) {
        print_r2_plan(&sizing::plan(r2)?);
    }
    if let Some(c) = first.checkpoint {
        let modes: Vec<&str> = runs
            .iter()
            .filter_map(|r| r.checkpoint.map(|c| c.mode.name()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        println!("  checkpoint  one full checkpoint per run ({}) started {:.2} s into the measured phase (which runs on until it is done); throughput sampled every {:.0} ms; then the store is dropped, recovered from it, and {} read back",
            modes.join(", "), c.at_secs, c.interval_secs * 1000.0,
            if args.verify_all { "every key".to_string() } else { format!("{} sampled keys", checkpoint::VERIFY_SAMPLE.min(first.keys)) });
    }
    let budgets: Vec<String> = runs
        .iter()
        .map(|r| r.log_budget.map_or("off".into(), human_bytes))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if runs.iter().any(|r| r.log_budget.is_some()) {
        println!(
            "  compaction  RsKv log budget {} (LogCompaction::with_budget, F2's defaults{}){}",
            budgets.join(" / "),
            first
                .compaction_threads
                .map_or(String::new(), |t| format!(", {t} threads")),
            if budgets.len() > 1 {
                "; the footer compares each budget's throughput with no compaction's"
            } else {
                ""
            }
        );
    }
    if let Some(s) = first.segment_size {
        println!("  segments    RsKv log segment files of {}", human_bytes(s));
    }
    if let Some(t) = first.timeline_secs {
        println!(
            "  timeline    sampled every {:.3} s of the measured phase; CSV and SVG files into {}",
            t,
            args.timeline_dir().display()
        );
    }
    println!("  data dir    {}", args.dir.display());
    Ok(())
}

/// R2Kv's split of the memory (see `sizing::r2`).
fn print_r2_plan(p: &spec::MemoryPlan) {
    let Some(r2) = p.r2 else { return };
    println!(
        "  r2kv        {}: hot index {} ({} buckets, ~{} of overflow) + hot log {} (pages of {}) + read cache {} + cold index {} (2^{} chunks x {} entries: table {}, overflow bound {}, inner log {} for {} of chunks) + cold log {}",
        if p.explicit { "budget" } else { "in memory" },
        human_bytes(p.index_bytes),
        p.table_size,
        human_bytes(p.overflow_bytes),
        human_bytes(p.log_bytes),
        human_bytes(p.page_size),
        human_bytes(p.read_cache_bytes),
        human_bytes(r2.cold_index_memory),
        r2.cold_chunk_bits,
        r2.cold_entries_per_chunk,
        human_bytes(r2.cold_index_table_bytes),
        human_bytes(r2.cold_index_overflow_bytes),
        human_bytes(r2.cold_index_log_bytes),
        human_bytes(r2.cold_index_chunk_bytes),
        human_bytes(r2.cold_log_bytes),
    );
    println!(
        "              disk budgets: hot log {} (passes to the cold tier from 80% of it), cold log {}",
        human_bytes(r2.hot_budget),
        human_bytes(r2.cold_budget)
    );
}

fn print_footer(results: &[RunResult]) {
    println!("{}", "=".repeat(100));
    println!("summary (latencies sampled; disk W/R: the store's own counters where it has them, else /proc/self/io, warm-up + run)");
    print!("{}", report::summary_table(results));
    if let Some(table) = report::checkpoint_table(results) {
        println!("\ncheckpoints (ratio = throughput during the checkpoint / before it; MB/s = (checkpoint files + log written) / checkpoint time)");
        print!("{table}");
    }
    if let Some(table) = report::maintenance_table(results) {
        println!("\nlog maintenance (vs off = throughput / the same spec's without --log-budget; in/out = throughput while a compaction pass ran / while none ran; scan = MB/s of log scanned per second of pass; dev read = the device's O_DIRECT sequential read, 1 reader / compaction's workers)");
        print!("{table}");
    }
    if let Some(ratios) = report::ratio_table(results) {
        println!("\nthroughput of each peer relative to RsKv (same workload, distribution, threads, key stream)");
        print!("{ratios}");
    }
    let failed = results.iter().filter(|r| !r.ok()).count();
    if failed > 0 {
        println!("\n{failed} run(s) FAILED");
    }
}
