//! Command line, and the list of runs (`spec::RunSpec`) it expands to.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use crate::spec::{
    CheckpointMode, CheckpointSpec, DiskKind, Distribution, Mix, RunLength, RunSpec, StoreKind,
    Warmup, Workload,
};
use crate::values::{validate_key_size, validate_value_size};

/// YCSB-style benchmark of RsKv (and, with cargo features, of peers on the same key streams).
///
/// Every combination of --store, --threads, --workload and --distribution is one run: a fresh
/// store (in a fresh child process unless --in-process) is loaded with --keys keys in shuffled
/// order, warmed up, then measured. Reads are verified; any wrong or missing value marks the
/// run FAILED and makes the exit code non-zero.
#[derive(Parser, Debug)]
#[command(name = "rskv-bench", version, about, long_about = None)]
pub struct Args {
    /// Stores to run, in order: rskv, r2kv (RsKv's two-tier store, `rskv::R2Kv`), and with
    /// their cargo features rocksdb, fjall, redb, dashmap (feature `peers` enables all).
    #[arg(long, value_delimiter = ',', default_value = "rskv")]
    pub store: Vec<String>,

    /// Keys loaded before the run phase (suffixes k, M, G = 10^3, 10^6, 10^9; Ki, Mi, Gi = 2^10..).
    #[arg(long, value_parser = parse_count, default_value = "1M")]
    pub keys: u64,

    /// Measured operations per run (all threads together). Conflicts with --duration.
    #[arg(long, value_parser = parse_count, conflicts_with = "duration")]
    pub ops: Option<u64>,

    /// Measured duration per run (e.g. 10s, 500ms, 1m). Default 10s when --ops is not given.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Warm-up before measuring: a share of the run (`10%`) or a duration (`1s`, `0`).
    #[arg(long, default_value = "10%")]
    pub warmup: String,

    /// Thread counts to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub threads: Vec<usize>,

    /// Workloads: a (50% read, 50% upsert), b (95/5), c (100% read), f (50% read, 50% RMW),
    /// rmw (100% RMW), custom (see --mix).
    #[arg(long, value_delimiter = ',', default_value = "a")]
    pub workload: Vec<String>,

    /// Mix of workload `custom`, e.g. read=50,upsert=30,rmw=10,delete=10 (percentages).
    #[arg(long)]
    pub mix: Option<String>,

    /// Key distributions: uniform, zipf (scrambled zipfian), latest (recently loaded keys hot).
    #[arg(long, value_delimiter = ',', default_value = "uniform")]
    pub distribution: Vec<String>,

    /// Zipfian constant of zipf and latest, in (0, 1).
    #[arg(long, default_value_t = 0.99)]
    pub theta: f64,

    /// Key size in bytes (8 = u64 keys; more = byte-string keys).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,

    /// Value size in bytes (8, or 16 and more).
    #[arg(long, default_value_t = 8)]
    pub value_size: usize,

    /// Memory budget of each store (e.g. 128MiB): a larger-than-memory run. Default: enough
    /// to keep everything in memory (RsKv's log sized to twice the data), and the same for peers.
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,

    /// Directory for the stores' data (a fresh subdirectory per run, removed afterwards).
    #[arg(long, default_value = "rskv-bench-data")]
    pub dir: PathBuf,

    /// RsKv's device: file (FileSystemDisk: O_DIRECT and io_uring when available) or null
    /// (NullDisk: in memory only; the log must fit in memory).
    #[arg(long, value_enum, default_value_t = DiskKind::File)]
    pub disk: DiskKind,

    /// RsKv hash buckets (64 bytes, 7 entries each). Default: #keys / 8 rounded up to a power of two.
    #[arg(long, value_parser = parse_count)]
    pub table_size: Option<u64>,

    /// RsKv log page size (e.g. 4MiB). Default: log memory / 16, from 4 KiB to 32 MiB.
    #[arg(long, value_parser = parse_bytes)]
    pub page_size: Option<u64>,

    /// Seed of the load order and the operation streams.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Time one operation in this many (a power of two) for the latency histogram.
    #[arg(long, default_value_t = 64)]
    pub sample_every: u64,

    /// Operations pre-generated per thread for --duration runs (replayed cyclically).
    #[arg(long, value_parser = parse_count, default_value = "16M")]
    pub op_buffer: u64,

    /// Announce each thread's next N operations to the store before running them one by one
    /// (RsKv prefetches their index buckets and records, so their cache misses overlap; peers
    /// ignore it). 1 = no batching.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// With --batch N: issue the reads of each batch together through the store's multi-get
    /// (RsKv `get_many`, whose device reads are in flight at once; RocksDB `multi_get`; other
    /// peers read one by one), before the batch's other operations. A read's sampled latency
    /// is then its whole multi-get's.
    #[arg(long)]
    pub batch_reads: bool,

    /// With --batch N: issue the RMWs of each batch together through the store's multi-RMW
    /// (RsKv `rmw_many`, whose device reads are in flight at once; peers one by one), before
    /// the batch's other operations. An RMW's sampled latency is then its whole batch's.
    #[arg(long)]
    pub batch_rmw: bool,

    /// Drive each thread as FASTER's benchmark drives FASTER: RsKv gets a `Session` per
    /// thread and issues every operation at once (reads of records on disk go pending, with
    /// their device reads in flight together, up to `Config::pending_depth` = 128), calls
    /// `complete_pending(false)` every --complete-every operations and
    /// `complete_pending(true)` at the end of each phase. Every read is verified when it
    /// completes. A sampled operation's latency is the time to issue it (a pending read's
    /// wait shows in throughput only). Peers run one by one. Not with --batch.
    #[arg(long)]
    pub sessions: bool,

    /// With --sessions: operations between two `complete_pending(false)` calls (FASTER's
    /// benchmark: 1600).
    #[arg(long, value_parser = parse_count, default_value = "1600")]
    pub complete_every: u64,

    /// RsKv: copy records that reads fetch from disk to the log's tail
    /// (`Config::copy_reads_to_tail`), so skewed reads of a larger-than-memory data set come
    /// back into memory. Peers ignore it (their caches do this on their own).
    #[arg(long)]
    pub copy_reads_to_tail: bool,

    /// RsKv: no automatic index growth (`Config::auto_grow_index(None)`), so the index stays at
    /// its starting table plus overflow buckets, as FASTER's does. Implied by --memory (RsKv
    /// and R2Kv are held to the budget, their overflow buckets counted).
    #[arg(long)]
    pub no_auto_grow: bool,

    /// Leave glibc's malloc with its dynamic mmap and trim thresholds. By default each run's
    /// process fixes both at 128 KiB (`mallopt`), so memory freed by the stores' worker threads
    /// goes back to the kernel and RSS shows what the stores hold: with the dynamic thresholds,
    /// glibc kept 6-12 MiB of freed memory in those threads' arenas in R2Kv runs (BENCHMARKS.md,
    /// "Memory held by the allocator").
    #[arg(long)]
    pub glibc_malloc_defaults: bool,

    /// RsKv: a read cache of BYTES (`Config::read_cache`), taken out of --memory (the log
    /// gets what the index and the cache leave). Peers ignore it.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub read_cache: Option<u64>,

    /// RsKv and R2Kv: the read cache copies every record a read fetches from the device
    /// (FASTER's behaviour, `CacheAdmission::Every`) instead of only a key's second recent
    /// miss (the default).
    #[arg(long)]
    pub read_cache_every: bool,

    /// RsKv and R2Kv with a read cache: the log's memory and the read cache's trade bytes
    /// while the store runs (`MemorySplit::Adaptive`; their sum stays what --read-cache and
    /// the budget gave them).
    #[arg(long)]
    pub adaptive_split: bool,

    /// After the run, read every key once more and verify it (slow on disk-bound runs). In
    /// checkpoint runs: read every key after recovery instead of a sample.
    #[arg(long)]
    pub verify_all: bool,

    /// Checkpoint runs (RsKv over --disk file, --duration only), one per log mode: fold-over,
    /// snapshot. A full checkpoint starts --checkpoint-at into the measured phase while the
    /// workload runs, throughput is sampled every --interval, and after the run the store is
    /// dropped and recovered from that checkpoint and a sample of keys is read back.
    #[arg(long, value_delimiter = ',')]
    pub checkpoint: Vec<String>,

    /// When the checkpoint starts: a share of the measured phase (`33%`) or a time into it (`3s`).
    #[arg(long, default_value = "33%")]
    pub checkpoint_at: String,

    /// Throughput sampling interval of checkpoint runs.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub interval: Duration,

    /// Run the checkpoint with `RsKv::checkpoint_with` on a thread of normal priority
    /// (`normal`), or with `RsKv::checkpoint_async`, whose thread runs at low CPU priority
    /// (`background`).
    #[arg(long, default_value = "normal", value_parser = ["normal", "background"])]
    pub checkpoint_thread: String,

    /// RsKv: compact the log in the background to keep it (from its begin to its tail) within
    /// this many bytes: `Config::log_compaction(LogCompaction::with_budget(..))` with F2's
    /// settings (a pass starts once the log passes 80% of the budget and compacts its oldest
    /// 20%, at most 256 MiB). `0` or `off`: no compaction (the default). Several values, e.g.
    /// `0,3GiB`, run every spec once per value, and the footer prints each budget's throughput
    /// over the throughput without compaction. Peers ignore it (they compact on their own).
    #[arg(long, value_name = "BYTES", value_delimiter = ',', value_parser = parse_budget)]
    pub log_budget: Vec<u64>,

    /// RsKv with --log-budget, and R2Kv (both kinds of pass): worker threads of each
    /// compaction pass (`LogCompaction::threads`, default 1).
    #[arg(long, value_name = "N")]
    pub compaction_threads: Option<usize>,

    /// RsKv with --log-budget, and R2Kv (both kinds of pass): lookups each compaction worker
    /// keeps in flight while the log is within its budget (`LogCompaction::lookups_in_flight`,
    /// default 4; R2Kv's cold-to-cold keeps at least 16).
    #[arg(long, value_name = "N")]
    pub compaction_lookups: Option<usize>,

    /// RsKv over --disk file: bytes per segment file (`DiskOptions::segment_size`: a power of
    /// two, at least 1 MiB; default RsKv's 1 GiB). Truncation deletes whole segments, so the
    /// disk footprint of a compacting store moves in steps of this size.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub segment_size: Option<u64>,

    /// Long-run sampling (--duration runs): every INTERVAL (e.g. 1s) of the measured phase,
    /// note the throughput over the interval, the store's disk footprint (RsKv: its segment
    /// files; peers: the data directory), RsKv's log size and compaction totals, and the
    /// process's RSS. Writes the samples and the compaction passes as CSV and a plot as SVG
    /// into --timeline-dir, and reports compaction speed (MB/s of log scanned per second of
    /// pass) next to the device's sequential read rate, measured after the run on the
    /// store's own files (O_DIRECT, 4 MiB requests).
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration)]
    pub timeline: Option<Duration>,

    /// Where --timeline writes its files. Default: the directory of --json, else the current
    /// directory.
    #[arg(long, value_name = "DIR")]
    pub timeline_dir: Option<PathBuf>,

    /// R2Kv: the hot log's disk budget (`R2Config::hot_to_cold`; past 80% of it, background
    /// passes move its oldest part to the cold tier). Default: 4x the hot log's memory (with
    /// --memory), 2x (without).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub r2_hot_budget: Option<u64>,

    /// R2Kv: the cold index's inner log memory (`ColdIndexConfig::log_memory`: the chunks
    /// held in memory), counted against --memory. Default: every chunk's record plus a
    /// quarter (28 MiB of chunks for 8M keys), at most 3/8 of --memory.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub r2_cold_index_memory: Option<u64>,

    /// R2Kv: bytes below a cold record that a cold read also fetches, and so how much of a
    /// chain cold-to-cold compaction lays out below its head (`R2Config::cold_chain_window`;
    /// 0: neither). Default: R2Kv's (1 KiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub r2_cold_chain_window: Option<u64>,

    /// R2Kv: after the load's migration, run one cold-to-cold pass over the whole cold log
    /// (`R2Kv::compact_cold`), which lays every chain out together so that a cold read costs
    /// about one device read (what a user does after a bulk load). Its time and device reads
    /// are reported with the settling, not in the load's throughput.
    #[arg(long)]
    pub r2_lay_out_chains: bool,

    /// Also append each run's JSON line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Run every store in this process instead of a fresh child process per run (peak RSS
    /// then covers all runs so far; the RSS growth of each run is still reported).
    #[arg(long)]
    pub in_process: bool,

    /// Kill a run's child process after this long (e.g. 10m) and mark the run FAILED: a hang
    /// shows up as a failure instead of a stuck benchmark. Not used with --in-process.
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    pub run_timeout: Duration,

    /// Keep each run's data directory.
    #[arg(long)]
    pub keep_data: bool,

    /// No progress bars (they are off anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// Instead of benchmarking, time two dependent random memory accesses (an operation's
    /// index bucket, then its record) over two buffers of this size each, chained,
    /// independent and independent with padding, and exit.
    #[arg(long, value_parser = parse_bytes)]
    pub probe_memory: Option<u64>,

    /// Internal: run one spec (JSON) and print its result; used by the parent process.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

// With the command line rather than in `spec`: it reads durations as the other options do.
impl Warmup {
    /// `--warmup` and `--checkpoint-at`: a share of the measured phase (`10%`) or a duration.
    fn parse(s: &str) -> anyhow::Result<Warmup> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let pct: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("--warmup `{s}`"))?;
            if !(0.0..=1000.0).contains(&pct) {
                bail!("--warmup {pct}% is out of range");
            }
            return Ok(Warmup::Fraction(pct / 100.0));
        }
        if s == "0" {
            return Ok(Warmup::Seconds(0.0));
        }
        Ok(Warmup::Seconds(parse_duration(s)?.as_secs_f64()))
    }
}

impl Args {
    /// Checks the arguments and expands them into runs: stores outermost (so peers' runs
    /// follow RsKv's), then threads, workloads, distributions.
    pub fn runs(&self) -> anyhow::Result<Vec<RunSpec>> {
        let stores = self
            .store
            .iter()
            .map(|s| StoreKind::parse(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let custom = self.mix.as_deref().map(Mix::parse).transpose()?;
        let workloads = self
            .workload
            .iter()
            .map(|w| Workload::parse(w, custom.as_ref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dists = self
            .distribution
            .iter()
            .map(|d| Distribution::parse(d, self.theta))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.validate()?;
        let length = match (self.ops, self.duration) {
            (Some(ops), _) => RunLength::Ops(ops),
            (None, Some(d)) => RunLength::Seconds(d.as_secs_f64()),
            (None, None) => RunLength::Seconds(10.0),
        };
        let warmup = Warmup::parse(&self.warmup)?;
        let checkpoints = self.checkpoint_specs(length)?;
        let timeline_secs = self.timeline_secs(length)?;
        // `0` is "off"; each budget once, in the order given.
        let mut budgets: Vec<Option<u64>> = Vec::new();
        for b in self.log_budget.iter().map(|&b| (b > 0).then_some(b)) {
            if !budgets.contains(&b) {
                budgets.push(b);
            }
        }
        if budgets.is_empty() {
            budgets.push(None);
        }
        let progress = !self.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut runs = Vec::new();
        for &store in &stores {
            for &threads in &self.threads {
                for workload in &workloads {
                    // Peers have no log budget: one run each.
                    let budgets = if store == StoreKind::Rskv {
                        &budgets[..]
                    } else {
                        &[None][..]
                    };
                    for ((&distribution, &checkpoint), &log_budget) in dists
                        .iter()
                        .flat_map(|d| checkpoints.iter().map(move |c| (d, c)))
                        .flat_map(|dc| budgets.iter().map(move |b| (dc, b)))
                    {
                        let index = runs.len();
                        runs.push(RunSpec {
                            index,
                            store,
                            workload: workload.clone(),
                            distribution,
                            threads,
                            keys: self.keys,
                            length,
                            warmup,
                            key_size: self.key_size,
                            value_size: self.value_size,
                            memory: self.memory,
                            data_dir: self.dir.join(format!(
                                "{}-{}-{index}",
                                store.name(),
                                std::process::id()
                            )),
                            disk: self.disk,
                            table_size: self.table_size,
                            page_size: self.page_size,
                            seed: self.seed,
                            sample_every: self.sample_every,
                            op_buffer: self.op_buffer,
                            batch: self.batch.max(1),
                            batch_reads: self.batch_reads && self.batch > 1,
                            batch_rmw: self.batch_rmw && self.batch > 1,
                            sessions: self.sessions,
                            complete_every: self.complete_every.max(1),
                            copy_reads_to_tail: self.copy_reads_to_tail,
                            read_cache: self.read_cache,
                            read_cache_every: self.read_cache_every,
                            adaptive_split: self.adaptive_split,
                            no_auto_grow: self.no_auto_grow,
                            glibc_malloc_defaults: self.glibc_malloc_defaults,
                            verify_all: self.verify_all,
                            keep_data: self.keep_data,
                            progress,
                            checkpoint,
                            log_budget,
                            compaction_threads: self.compaction_threads,
                            compaction_lookups: self.compaction_lookups,
                            segment_size: self.segment_size,
                            timeline_secs,
                            r2_hot_budget: self.r2_hot_budget,
                            r2_cold_chain_window: self.r2_cold_chain_window,
                            r2_lay_out_chains: self.r2_lay_out_chains,
                            r2_cold_index_memory: self.r2_cold_index_memory,
                        });
                    }
                }
            }
        }
        Ok(runs)
    }

    /// The checkpoint scenarios to run (`[None]` without --checkpoint).
    fn checkpoint_specs(&self, length: RunLength) -> anyhow::Result<Vec<Option<CheckpointSpec>>> {
        if self.checkpoint.is_empty() {
            return Ok(vec![None]);
        }
        let RunLength::Seconds(run) = length else {
            bail!(
                "--checkpoint needs a --duration run (the checkpoint starts at a time), not --ops"
            );
        };
        if self
            .store
            .iter()
            .any(|s| !s.trim().eq_ignore_ascii_case("rskv"))
        {
            bail!("--checkpoint is RsKv's only (peers have no CPR checkpoints): use --store rskv");
        }
        if self.disk != DiskKind::File {
            bail!("--checkpoint needs --disk file: NullDisk keeps nothing to checkpoint to");
        }
        let at = match Warmup::parse(&self.checkpoint_at)
            .with_context(|| format!("--checkpoint-at `{}`", self.checkpoint_at))?
        {
            Warmup::Fraction(f) => f * run,
            Warmup::Seconds(s) => s,
        };
        if at >= run {
            bail!("--checkpoint-at must fall inside the measured phase ({at} s >= --duration {run} s)");
        }
        let interval = self.interval.as_secs_f64();
        if interval < 0.001 || interval > run {
            bail!("--interval must be from 1ms to --duration");
        }
        let mut specs = Vec::new();
        for m in &self.checkpoint {
            let mode = CheckpointMode::parse(m)?;
            if specs
                .iter()
                .any(|s: &Option<CheckpointSpec>| s.is_some_and(|s| s.mode == mode))
            {
                continue;
            }
            specs.push(Some(CheckpointSpec {
                mode,
                at_secs: at,
                interval_secs: interval,
                background: self.checkpoint_thread == "background",
            }));
        }
        Ok(specs)
    }

    /// The --timeline interval in seconds, checked against the run.
    fn timeline_secs(&self, length: RunLength) -> anyhow::Result<Option<f64>> {
        let Some(interval) = self.timeline else {
            return Ok(None);
        };
        let RunLength::Seconds(run) = length else {
            bail!("--timeline needs a --duration run, not --ops");
        };
        if !self.checkpoint.is_empty() {
            bail!("--timeline and --checkpoint are separate scenarios: run them separately");
        }
        let secs = interval.as_secs_f64();
        if secs < 0.01 || secs > run {
            bail!("--timeline must be from 10ms to --duration");
        }
        Ok(Some(secs))
    }

    /// Where --timeline writes its files.
    pub fn timeline_dir(&self) -> PathBuf {
        match (&self.timeline_dir, &self.json) {
            (Some(d), _) => d.clone(),
            (None, Some(json)) => json
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf),
            (None, None) => PathBuf::from("."),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.keys == 0 || self.keys >= 1 << 62 {
            bail!("--keys {} must be in 1..2^62", self.keys);
        }
        if self.threads.is_empty() || self.threads.iter().any(|&t| t == 0 || t > 1024) {
            bail!("--threads must be between 1 and 1024");
        }
        if self.ops == Some(0) {
            bail!("--ops must be positive");
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            bail!("--duration must be positive");
        }
        if !self.sample_every.is_power_of_two() {
            bail!(
                "--sample-every {} must be a power of two",
                self.sample_every
            );
        }
        if self.op_buffer == 0 {
            bail!("--op-buffer must be positive");
        }
        validate_key_size(self.key_size)?;
        validate_value_size(self.value_size)?;
        if self.disk == DiskKind::Null && self.memory.is_some() {
            bail!("--disk null keeps everything in memory and cannot honour --memory; use --disk file");
        }
        // R2Kv always compacts (hot-to-cold): the compaction knobs apply to its passes.
        let compacting = self.log_budget.iter().any(|&b| b > 0) || self.has_r2();
        if let Some(&b) = self.log_budget.iter().find(|&&b| b > 0 && b < 1 << 20) {
            bail!("--log-budget {b} is under 1 MiB (RsKv's least); use 0 or off for no compaction");
        }
        if compacting && self.disk == DiskKind::Null {
            bail!("--log-budget needs --disk file: compaction reads the log back from the device");
        }
        if let Some(t) = self.compaction_threads {
            if !compacting {
                bail!("--compaction-threads needs a --log-budget (or --store r2kv)");
            }
            if !(1..=64).contains(&t) {
                bail!("--compaction-threads {t} is not in 1..=64");
            }
        }
        if let Some(n) = self.compaction_lookups {
            if !compacting {
                bail!("--compaction-lookups needs a --log-budget (or --store r2kv)");
            }
            if !(1..=64).contains(&n) {
                bail!("--compaction-lookups {n} is not in 1..=64");
            }
        }
        self.validate_r2()?;
        if self.sessions && (self.batch > 1 || self.batch_reads || self.batch_rmw) {
            bail!("--sessions issues every operation at once already; it does not combine with --batch");
        }
        if self.complete_every == 0 {
            bail!("--complete-every must be positive");
        }
        if let Some(s) = self.segment_size {
            if self.disk == DiskKind::Null {
                bail!("--segment-size needs --disk file");
            }
            if !s.is_power_of_two() || s < 1 << 20 {
                bail!("--segment-size {s} must be a power of two of at least 1 MiB");
            }
        }
        Ok(())
    }

    /// Whether R2Kv is among the stores.
    fn has_r2(&self) -> bool {
        self.store
            .iter()
            .any(|s| StoreKind::parse(s).is_ok_and(|k| k == StoreKind::R2kv))
    }

    /// What R2Kv cannot do, refused before anything runs.
    fn validate_r2(&self) -> anyhow::Result<()> {
        if !self.has_r2() {
            if self.r2_hot_budget.is_some()
                || self.r2_cold_index_memory.is_some()
                || self.r2_cold_chain_window.is_some()
                || self.r2_lay_out_chains
            {
                bail!(
                    "--r2-hot-budget, --r2-cold-index-memory, --r2-cold-chain-window and \
                     --r2-lay-out-chains are R2Kv's: add --store r2kv"
                );
            }
            return Ok(());
        }
        if self.disk == DiskKind::Null {
            bail!("--disk null: R2Kv's cold tier lives on the device; use --disk file");
        }
        if let Some(b) = self.r2_hot_budget {
            if b < 1 << 20 {
                bail!("--r2-hot-budget {b} is under 1 MiB");
            }
        }
        Ok(())
    }
}

/// `8M` = 8,000,000; `8Mi` = 8 × 2^20; plain numbers may use `_` separators.
pub fn parse_count(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().replace('_', "");
    let (digits, mult) = split_suffix(
        &t,
        &[
            ("Ki", 1 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("k", 1_000),
            ("K", 1_000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
        ],
    );
    scaled(digits, mult).with_context(|| format!("`{s}` is not a count (e.g. 100000, 8M, 1Mi)"))
}

/// `128MiB`, `128M` (binary), `100MB` (decimal), `4096`.
pub fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().replace('_', "");
    let (digits, mult) = split_suffix(
        &t,
        &[
            ("KiB", 1 << 10),
            ("MiB", 1 << 20),
            ("GiB", 1 << 30),
            ("TiB", 1 << 40),
            ("KB", 1_000),
            ("MB", 1_000_000),
            ("GB", 1_000_000_000),
            ("K", 1 << 10),
            ("M", 1 << 20),
            ("G", 1 << 30),
            ("B", 1),
        ],
    );
    scaled(digits, mult).with_context(|| format!("`{s}` is not a size (e.g. 128MiB, 1GiB, 4096)"))
}

fn split_suffix<'a>(s: &'a str, suffixes: &[(&str, u64)]) -> (&'a str, u64) {
    for (suffix, mult) in suffixes {
        if let Some(d) = s.strip_suffix(suffix) {
            return (d.trim(), *mult);
        }
    }
    (s, 1)
}

fn scaled(digits: &str, mult: u64) -> anyhow::Result<u64> {
    if let Ok(n) = digits.parse::<u64>() {
        return n.checked_mul(mult).context("too large");
    }
    let f: f64 = digits.parse()?;
    if f.is_nan() || f < 0.0 || f * mult as f64 > u64::MAX as f64 {
        bail!("out of range");
    }
    Ok((f * mult as f64).round() as u64)
}

/// A --log-budget: `0` or `off` (no compaction), else a size as `parse_bytes` reads it.
pub fn parse_budget(s: &str) -> anyhow::Result<u64> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    parse_bytes(s)
}

/// `10s`, `1.5s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let (digits, secs_per_unit) = if let Some(d) = t.strip_suffix("ms") {
        (d, 0.001)
    } else if let Some(d) = t.strip_suffix("us") {
        (d, 0.000_001)
    } else if let Some(d) = t.strip_suffix('s') {
        (d, 1.0)
    } else if let Some(d) = t.strip_suffix('m') {
        (d, 60.0)
    } else if let Some(d) = t.strip_suffix('h') {
        (d, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = digits
        .trim()
        .parse()
        .with_context(|| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    if !(v >= 0.0 && v * secs_per_unit < 1e9) {
        bail!("duration `{s}` is out of range");
    }
    Ok(Duration::from_secs_f64(v * secs_per_unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sizes_durations() {
        assert_eq!(parse_count("8M").unwrap(), 8_000_000);
        assert_eq!(parse_count("1Mi").unwrap(), 1 << 20);
        assert_eq!(parse_count("100_000").unwrap(), 100_000);
        assert_eq!(parse_count("1.5k").unwrap(), 1500);
        assert!(parse_count("lots").is_err());
        assert_eq!(parse_bytes("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_bytes("128M").unwrap(), 128 << 20);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(
            matches!(Warmup::parse("10%").unwrap(), Warmup::Fraction(f) if (f - 0.1).abs() < 1e-9)
        );
        assert!(matches!(Warmup::parse("1s").unwrap(), Warmup::Seconds(s) if s == 1.0));
    }

    fn runs(argv: &[&str]) -> anyhow::Result<Vec<RunSpec>> {
        let mut all = vec!["rskv-bench", "--no-progress"];
        all.extend_from_slice(argv);
        Args::try_parse_from(all)?.runs()
    }

    #[test]
    fn checkpoint_runs_expand_and_check() {
        let r = runs(&[
            "--duration",
            "9s",
            "--checkpoint",
            "fold-over,snapshot",
            "--workload",
            "a,b",
        ])
        .unwrap();
        assert_eq!(r.len(), 4);
        let c = r[1].checkpoint.unwrap();
        assert_eq!(c.mode, CheckpointMode::Snapshot);
        assert!((c.at_secs - 2.97).abs() < 1e-9 && (c.interval_secs - 0.1).abs() < 1e-9);
        let c = runs(&["--checkpoint", "snapshot", "--checkpoint-at", "2s"]).unwrap()[0]
            .checkpoint
            .unwrap();
        assert_eq!(c.at_secs, 2.0);
        assert!(runs(&["--duration", "1s"]).unwrap()[0].checkpoint.is_none());
        // Refused: --ops runs, no disk, a start after the end, unknown modes.
        assert!(runs(&["--ops", "1M", "--checkpoint", "snapshot"]).is_err());
        assert!(runs(&["--disk", "null", "--checkpoint", "snapshot"]).is_err());
        assert!(runs(&[
            "--duration",
            "1s",
            "--checkpoint-at",
            "2s",
            "--checkpoint",
            "snapshot"
        ])
        .is_err());
        assert!(runs(&["--checkpoint", "delta"]).is_err());
    }

    #[test]
    fn log_budgets_expand_and_check() {
        let r = runs(&[
            "--duration",
            "2s",
            "--log-budget",
            "0,64MiB,off",
            "--workload",
            "a,b",
        ])
        .unwrap();
        let budgets: Vec<_> = r.iter().map(|s| s.log_budget).collect();
        assert_eq!(
            budgets,
            [None, Some(64 << 20), None, Some(64 << 20)],
            "innermost, each once"
        );
        let r = runs(&[
            "--duration",
            "2s",
            "--log-budget",
            "1GiB",
            "--compaction-threads",
            "3",
            "--segment-size",
            "64MiB",
            "--timeline",
            "250ms",
        ])
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].compaction_threads, Some(3));
        assert_eq!(r[0].segment_size, Some(64 << 20));
        assert_eq!(r[0].timeline_secs, Some(0.25));
        assert_eq!(runs(&["--duration", "1s"]).unwrap()[0].log_budget, None);
        // Refused: a tiny budget, threads without a budget, no device, odd segments,
        // a timeline on an --ops run or longer than the run, beside a checkpoint.
        assert!(runs(&["--log-budget", "1000"]).is_err());
        assert!(runs(&["--compaction-threads", "2"]).is_err());
        assert!(runs(&["--disk", "null", "--log-budget", "64MiB"]).is_err());
        assert!(runs(&["--segment-size", "3MiB"]).is_err());
        assert!(runs(&["--ops", "1M", "--timeline", "1s"]).is_err());
        assert!(runs(&["--duration", "1s", "--timeline", "2s"]).is_err());
        assert!(runs(&["--timeline", "1s", "--checkpoint", "snapshot"]).is_err());
    }

    #[test]
    fn r2kv_runs_expand_and_check() {
        let r = runs(&[
            "--store",
            "rskv,r2kv",
            "--workload",
            "b,c",
            "--r2-hot-budget",
            "64MiB",
        ])
        .unwrap();
        let stores: Vec<_> = r.iter().map(|s| s.store).collect();
        assert_eq!(
            stores,
            [
                StoreKind::Rskv,
                StoreKind::Rskv,
                StoreKind::R2kv,
                StoreKind::R2kv
            ]
        );
        assert_eq!(r[3].r2_hot_budget, Some(64 << 20));
        // Compaction knobs apply to R2Kv's passes without a --log-budget.
        assert!(runs(&["--store", "r2kv", "--compaction-threads", "2"]).is_ok());
        // Refused: a null device, R2Kv's flags without R2Kv, a tiny hot budget.
        assert!(runs(&["--store", "r2kv", "--sessions"]).is_ok());
        assert!(runs(&["--store", "rskv,r2kv", "--disk", "null"]).is_err());
        assert!(runs(&["--r2-cold-index-memory", "1MiB"]).is_err());
        assert!(runs(&["--store", "r2kv", "--r2-hot-budget", "1000"]).is_err());
        assert!(runs(&["--store", "r2kv", "--checkpoint", "snapshot"]).is_err());
    }
}
