//! What a run produces: the figures of one run, sent by the child process to the parent as one
//! JSON line (the field order is that line's), and printed by `report`.
//!
//! Plain data near the bottom of the crate: this module imports only `spec`. `runner` and the
//! checkpoint scenario fill these types in; `sysinfo` reads [`ProcIo`] from the kernel.

use serde::{Deserialize, Serialize};

use crate::spec::{MemoryPlan, RunSpec};

/// One run's result: printed as a table and as one JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub bench: String,
    pub index: usize,
    pub status: String,
    pub failure: Option<String>,
    pub store: String,
    pub workload: String,
    pub mix: String,
    pub distribution: String,
    pub threads: usize,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub store_info: StoreInfo,
    pub memory_budget: u64,
    pub memory_budget_explicit: bool,
    /// RsKv's memory plan, or R2Kv's (its hot tier, and the rest in `r2`).
    pub rskv_plan: Option<MemoryPlan>,
    pub generate_secs: f64,
    pub load_secs: f64,
    pub load_mops: f64,
    /// What the store waited for after the load (compactions), untimed.
    pub settle_note: Option<String>,
    pub settle_secs: f64,
    pub warmup_secs: f64,
    pub warmup_ops: u64,
    pub run_secs: f64,
    pub run_ops: u64,
    pub mops: f64,
    pub latency: Latency,
    pub rss: Rss,
    pub io: Io,
    pub verify: Verify,
    pub extra: serde_json::Value,
    /// Checkpoint runs: the checkpoint, the throughput around it, and recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointResult>,
    /// RsKv's log-compaction budget (`--log-budget`), if compaction was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_budget: Option<u64>,
    /// RsKv's log and compaction totals at the end of the measured phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_state: Option<LogState>,
    /// --timeline runs: the samples, the compaction passes and their summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineResult>,
}

impl RunResult {
    /// The fields known before running (so a failed run still says what it was).
    pub fn skeleton(spec: &RunSpec) -> RunResult {
        RunResult {
            bench: "rskv-bench".into(),
            index: spec.index,
            status: "FAILED".into(),
            store: spec.store.name().into(),
            workload: spec.workload.name.clone(),
            mix: spec.workload.mix.label(),
            distribution: spec.distribution.label(),
            threads: spec.threads,
            keys: spec.keys,
            key_size: spec.key_size,
            value_size: spec.value_size,
            memory_budget: spec.memory.unwrap_or(0),
            memory_budget_explicit: spec.memory.is_some(),
            log_budget: spec.log_budget,
            ..RunResult::default()
        }
    }

    pub fn failed(spec: &RunSpec, why: String) -> RunResult {
        RunResult {
            failure: Some(why),
            ..RunResult::skeleton(spec)
        }
    }

    pub fn ok(&self) -> bool {
        self.status == "OK"
    }

    /// Sets the status from the verification counts.
    pub fn settle(&mut self) {
        let failures = self.verify.failures();
        if failures > 0 && self.failure.is_none() {
            self.failure =
                Some(format!(
                "{failures} verification failure(s): {} wrong, {} missing{}, {} errors; first: {}",
                self.verify.wrong,
                self.verify.missing,
                if self.verify.missing_allowed { " (allowed: deletes)" } else { "" },
                self.verify.errors,
                self.verify.first_problem.as_deref().unwrap_or("-")
            ));
        }
        self.status = if self.failure.is_none() {
            "OK"
        } else {
            "FAILED"
        }
        .into();
    }
}

/// How a store is set up, for the output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreInfo {
    /// Engine, device and durability settings.
    pub description: String,
    /// Which knob got the memory budget, and how much.
    pub memory_knob: String,
    pub key_type: String,
    pub value_type: String,
}

/// Latency percentiles of the sampled operations, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub sample_every: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Resident memory of the run's process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rss {
    /// Before the store was opened (operation streams already generated).
    pub before_store: u64,
    pub after_load: u64,
    pub after_run: u64,
    /// VmHWM: the process's peak (includes the operation streams, and in --in-process mode
    /// every earlier run).
    pub peak: u64,
    /// after_run - before_store: what the store itself holds at the end.
    pub store_growth: i64,
    /// How the process's allocator was set up (`malloc::setup`).
    #[serde(default)]
    pub allocator: String,
}

/// Bytes read from and written to the storage device.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Io {
    /// /proc/self/io during the load phase.
    pub load: ProcIo,
    /// /proc/self/io during warm-up and the measured phase.
    pub run: ProcIo,
    /// The store's own counters (RsKv's stats), load phase: (written, read).
    pub store_load: Option<(u64, u64)>,
    /// The store's own counters, warm-up and measured phase: (written, read).
    pub store_run: Option<(u64, u64)>,
    /// Bytes the data directory occupies at the end.
    pub disk_usage: u64,
}

/// Bytes this process made the storage layer read and write (/proc/self/io), which counts
/// O_DIRECT and write-back alike but not page-cache hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcIo {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// What the reads found, over load, warm-up, measured phase and --verify-all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verify {
    pub reads_ok: u64,
    /// Reads (and RMWs) that found no value.
    pub missing: u64,
    /// Reads (and RMWs) that found a value that does not verify.
    pub wrong: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Whether missing values are expected (the mix deletes keys).
    pub missing_allowed: bool,
    /// Keys checked by --verify-all (0 if not asked).
    pub verify_all_checked: u64,
    pub first_problem: Option<String>,
}

impl Verify {
    pub fn failures(&self) -> u64 {
        self.wrong
            + self.errors
            + if self.missing_allowed {
                0
            } else {
                self.missing
            }
    }
}

/// The checkpoint part of a run's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckpointResult {
    pub kind: String,
    pub mode: String,
    pub token: Option<u64>,
    /// Into the measured phase: when the checkpoint started and how long it took.
    pub start_secs: f64,
    pub secs: f64,
    /// When `index.meta` appeared, since the checkpoint started (to within 5 ms): the index
    /// dump and the phases before it.
    pub index_done_secs: Option<f64>,
    /// When `snapshot.dat` appeared, since the checkpoint started (snapshot mode).
    pub snapshot_started_secs: Option<f64>,
    /// Bytes of the checkpoint's files, by name.
    pub files: Vec<(String, u64)>,
    /// Their sum.
    pub dir_bytes: u64,
    /// Bytes the store wrote to its log device while the checkpoint ran.
    pub log_written_bytes: u64,
    /// (dir_bytes + log_written_bytes) / secs, in MB/s (10^6).
    pub write_mb_s: f64,
    /// Log tail when the checkpoint started, ended, and at the end of the run.
    pub log_tail_start: u64,
    pub log_tail_end: u64,
    pub log_tail_run_end: u64,
    pub dip: Dip,
    pub interval_secs: f64,
    pub intervals: Vec<Interval>,
    /// Cores' worth of CPU other processes used during the measured phase (from /proc/stat
    /// less this process): above ~0.1 on a small machine, the numbers are disturbed.
    pub other_cpu_cores: f64,
    /// Reference: buffered sequential write + fsync of the checkpoint's size (64 MiB to 1 GiB)
    /// into the same directory, after recovery, in MB/s.
    pub disk_seq_write_mb_s: Option<f64>,
    pub recovery: Option<RecoveryResult>,
}

/// Throughput around the checkpoint, from the intervals and the checkpoint's own counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dip {
    /// Operations / seconds of the intervals that ended before the checkpoint started.
    pub baseline_mops: f64,
    /// Operations completed while the checkpoint ran / its wall time.
    pub during_mops: f64,
    /// during / baseline.
    pub during_ratio: f64,
    /// Operations / seconds of the intervals that started after the checkpoint ended.
    pub after_mops: f64,
    /// The slowest interval, and when it ended.
    pub min_interval_mops: f64,
    pub min_interval_end_secs: f64,
}

/// One throughput sample: the interval ending at `end_secs` (into the measured phase).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub end_secs: f64,
    pub ops: u64,
}

/// What recovery found when keys were read back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecoveryResult {
    #[serde(flatten)]
    pub recovered: Recovered,
    /// Keys read back after recovery (a sample, or every key with --verify-all).
    pub verify_keys: u64,
    pub verify_all: bool,
    pub verify_secs: f64,
    /// Threads that read them back.
    pub threads: usize,
    pub reads_ok: u64,
    pub missing: u64,
    pub wrong: u64,
    pub errors: u64,
    pub first_problem: Option<String>,
}

/// What recovery did, as the store tells it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recovered {
    /// Opening the device (part of `secs`).
    pub disk_open_secs: f64,
    /// Opening the device and recovering the store.
    pub secs: f64,
    pub replayed_bytes: u64,
    pub replayed_records: u64,
    /// Whether an index checkpoint was loaded (else the whole log was replayed).
    pub index_loaded: bool,
    /// The checkpointed version.
    pub version: u64,
}

/// RsKv's log and its compaction at one moment (`RsKv::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// Bytes of log from its begin to its tail (what the budget counts).
    pub log_bytes: u64,
    /// Bytes of the log's segment files on the device.
    pub disk_bytes: u64,
    /// Compaction totals since the store was opened (`CompactionTotals`).
    pub passes: u64,
    pub scanned_bytes: u64,
    pub copied: u64,
    pub bytes_freed: u64,
    pub wasted_passes: u64,
    /// The store's device counters since it was opened.
    pub bytes_written: u64,
    pub bytes_read: u64,
}

/// One sample of a --timeline run, taken at the end of its interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds into the measured phase.
    pub t_secs: f64,
    /// Operations completed in the interval ending here.
    pub ops: u64,
    /// Seconds the interval lasted.
    pub secs: f64,
    /// Seconds of the interval during which a compaction pass ran.
    pub compacting_secs: f64,
    /// Bytes the data directory occupies (allocated blocks).
    pub dir_bytes: u64,
    /// The process's resident set.
    pub rss: u64,
    /// RsKv's log and compaction totals (None for peers).
    pub log: Option<LogState>,
}

impl Sample {
    /// Bytes the store keeps on disk: RsKv's segment files, else the data directory.
    pub fn footprint(&self) -> u64 {
        self.log.map_or(self.dir_bytes, |l| l.disk_bytes)
    }

    pub fn mops(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9) / 1e6
    }
}

/// One compaction pass, as the store's `compact` tracing span showed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pass {
    /// Seconds into the measured phase (negative: during the load or the warm-up).
    pub start_secs: f64,
    /// Its wall time (to the end of the run for a pass still running then).
    pub secs: f64,
    /// Whether it finished (its "compaction done" event came); else it failed or was still
    /// running at the end of the run, and its counts are 0.
    pub done: bool,
    pub scanned_bytes: u64,
    pub copied: u64,
    pub superseded: u64,
    pub tombstones: u64,
    /// Segment bytes its truncation deleted.
    pub freed_bytes: u64,
}

/// The device's sequential read rate, measured on the store's own files after the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceRead {
    /// What was read: how many files, how much, O_DIRECT or buffered.
    pub what: String,
    pub direct: bool,
    /// One reader, one 4 MiB request at a time.
    pub bytes_1: u64,
    pub mb_s_1: f64,
    /// `threads` readers taking 4 MiB requests from one queue (as compaction's workers do).
    pub threads: usize,
    pub bytes_n: u64,
    pub mb_s_n: f64,
}

/// A --timeline run: what was sampled and what it adds up to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TimelineResult {
    pub interval_secs: f64,
    /// RsKv's log budget, if compaction was on.
    pub log_budget: Option<u64>,
    /// The samples (emptied by the parent once they are written to the CSV file).
    pub samples: Vec<Sample>,
    /// Every compaction pass seen since the store was opened (emptied likewise).
    pub passes: Vec<Pass>,
    /// Whether this process observed compaction passes at all (a tracing subscriber was
    /// installed; without one, pass times are unknown).
    pub observing_passes: bool,
    /// Throughput of the measured phase while a pass ran, and while none ran.
    pub during_pass_secs: f64,
    pub during_pass_mops: f64,
    pub outside_pass_secs: f64,
    pub outside_pass_mops: f64,
    /// Passes that ended in the measured phase, the log they scanned and their wall time.
    pub run_passes: u64,
    pub run_pass_scanned: u64,
    pub run_pass_secs: f64,
    /// Log scanned in the measured phase by the store's totals (passes that ended in it).
    pub run_scanned_bytes: u64,
    /// Disk footprint (RsKv: segment files; peers: data directory): at the start of the
    /// measured phase, largest, last, and the least and largest over its second half.
    pub footprint_first: u64,
    pub footprint_max: u64,
    pub footprint_last: u64,
    pub footprint_late_min: u64,
    pub footprint_late_max: u64,
    pub rss_first: u64,
    pub rss_max: u64,
    pub rss_last: u64,
    /// Cores' worth of CPU other processes used during the measured phase.
    pub other_cpu_cores: f64,
    pub device_read: Option<DeviceRead>,
    /// Why the device read was not measured.
    pub device_read_error: Option<String>,
    /// The files written by the parent.
    pub csv: Option<String>,
    pub passes_csv: Option<String>,
    pub svg: Option<String>,
    /// Why a file could not be written (the run still counts).
    pub file_error: Option<String>,
}

impl TimelineResult {
    /// Compaction speed: log scanned per second of pass (passes that ended in the run).
    pub fn compaction_mb_s(&self) -> Option<f64> {
        (self.run_pass_secs > 0.0).then(|| self.run_pass_scanned as f64 / self.run_pass_secs / 1e6)
    }

    /// Throughput while passes ran over throughput while none ran.
    pub fn during_ratio(&self) -> Option<f64> {
        (self.during_pass_secs > 0.0 && self.outside_pass_mops > 0.0)
            .then(|| self.during_pass_mops / self.outside_pass_mops)
    }
}
