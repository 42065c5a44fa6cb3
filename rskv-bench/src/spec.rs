//! What a run is: the specification the parent expands the command line into and hands each
//! child process as JSON, its parts (store, workload, key distribution, length, checkpoint
//! scenario), and the memory plan derived from it.
//!
//! Plain data at the bottom of the crate: this module imports nothing from the rest of it. `cli`
//! parses into these types, `sizing` derives the plan, `runner` and `stores` execute them.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Everything one run needs; the parent hands it to a child process as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub index: usize,
    pub store: StoreKind,
    pub workload: Workload,
    pub distribution: Distribution,
    pub threads: usize,
    pub keys: u64,
    pub length: RunLength,
    pub warmup: Warmup,
    pub key_size: usize,
    pub value_size: usize,
    pub memory: Option<u64>,
    pub data_dir: PathBuf,
    pub disk: DiskKind,
    pub table_size: Option<u64>,
    pub page_size: Option<u64>,
    pub seed: u64,
    pub sample_every: u64,
    pub op_buffer: u64,
    /// Operations announced together (see `--batch`); 0 in old specs means 1.
    #[serde(default)]
    pub batch: usize,
    /// Reads of a batch go through one multi-get (see `--batch-reads`).
    #[serde(default)]
    pub batch_reads: bool,
    /// RMWs of a batch go through one multi-RMW (see `--batch-rmw`).
    #[serde(default)]
    pub batch_rmw: bool,
    /// A session per thread, operations issued without waiting (see `--sessions`).
    #[serde(default)]
    pub sessions: bool,
    /// With `sessions`: operations between two `complete_pending(false)`; 0 in old specs
    /// means 1600.
    #[serde(default)]
    pub complete_every: u64,
    /// RsKv copies reads from disk to the tail (see `--copy-reads-to-tail`).
    #[serde(default)]
    pub copy_reads_to_tail: bool,
    /// RsKv read cache bytes (see `--read-cache`).
    #[serde(default)]
    pub read_cache: Option<u64>,
    /// The read cache copies every miss (see `--read-cache-every`).
    #[serde(default)]
    pub read_cache_every: bool,
    /// The log's and the read cache's memory trade bytes (see `--adaptive-split`).
    #[serde(default)]
    pub adaptive_split: bool,
    /// RsKv without automatic index growth (see `--no-auto-grow`).
    #[serde(default)]
    pub no_auto_grow: bool,
    /// Leave glibc's malloc thresholds dynamic (see `--glibc-malloc-defaults`).
    #[serde(default)]
    pub glibc_malloc_defaults: bool,
    pub verify_all: bool,
    pub keep_data: bool,
    pub progress: bool,
    /// The checkpoint scenario, if this is a checkpoint run.
    #[serde(default)]
    pub checkpoint: Option<CheckpointSpec>,
    /// RsKv: background log compaction within this many bytes of log
    /// (`LogCompaction::with_budget`); `None` = off (see `--log-budget`).
    #[serde(default)]
    pub log_budget: Option<u64>,
    /// RsKv: worker threads of each compaction pass (`LogCompaction::threads`).
    #[serde(default)]
    pub compaction_threads: Option<usize>,
    /// RsKv: lookups in flight per compaction worker (`LogCompaction::lookups_in_flight`).
    #[serde(default)]
    pub compaction_lookups: Option<usize>,
    /// RsKv over `--disk file`: bytes per segment file (`DiskOptions::segment_size`).
    #[serde(default)]
    pub segment_size: Option<u64>,
    /// Sample throughput, disk footprint, RSS and compaction every this many seconds of the
    /// measured phase (see `--timeline`).
    #[serde(default)]
    pub timeline_secs: Option<f64>,
    /// R2Kv: the hot log's disk budget (`R2Config::hot_to_cold`), instead of the plan's.
    #[serde(default)]
    pub r2_hot_budget: Option<u64>,
    /// R2Kv: the cold index's inner log memory, instead of the plan's.
    #[serde(default)]
    pub r2_cold_index_memory: Option<u64>,
    /// R2Kv: `R2Config::cold_chain_window`, instead of R2Kv's default.
    #[serde(default)]
    pub r2_cold_chain_window: Option<u64>,
    /// R2Kv: one cold-to-cold pass over the whole cold log after the load's migration.
    #[serde(default)]
    pub r2_lay_out_chains: bool,
}

/// How long the measured phase lasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RunLength {
    Ops(u64),
    Seconds(f64),
}

/// How long the warm-up lasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Warmup {
    /// A share of the measured phase (of its ops or its duration).
    Fraction(f64),
    Seconds(f64),
}

/// RsKv's device (`--disk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum DiskKind {
    File,
    Null,
}

/// A store the binary knows of; peers exist only when built with their cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Rskv,
    /// RsKv's two-tier store (`rskv::R2Kv`, FASTER's F2); always built (it is RsKv's own).
    R2kv,
    Rocksdb,
    Fjall,
    Redb,
    Dashmap,
}

impl StoreKind {
    pub fn parse(s: &str) -> anyhow::Result<StoreKind> {
        let kind = match s.trim().to_ascii_lowercase().as_str() {
            "rskv" => StoreKind::Rskv,
            "r2kv" | "r2" | "f2" => StoreKind::R2kv,
            "rocksdb" => StoreKind::Rocksdb,
            "fjall" => StoreKind::Fjall,
            "redb" => StoreKind::Redb,
            "dashmap" | "map" => StoreKind::Dashmap,
            other => bail!("unknown store `{other}` (rskv, r2kv, rocksdb, fjall, redb, dashmap)"),
        };
        if !kind.compiled() {
            let f = kind.name();
            bail!(
                "store `{f}` is not built into this binary: it needs the cargo feature `{f}` (or `peers` for all peers), e.g.\n  cargo run -p rskv-bench --release --features {f} -- --store rskv,{f} ..."
            );
        }
        Ok(kind)
    }

    pub fn compiled(self) -> bool {
        match self {
            StoreKind::Rskv | StoreKind::R2kv => true,
            StoreKind::Rocksdb => cfg!(feature = "rocksdb"),
            StoreKind::Fjall => cfg!(feature = "fjall"),
            StoreKind::Redb => cfg!(feature = "redb"),
            StoreKind::Dashmap => cfg!(feature = "dashmap"),
        }
    }

    /// RsKv or R2Kv: our own stores, which take RsKv's knobs (`--read-cache`, `--table-size`,
    /// `--page-size`, `--segment-size`, ...).
    pub fn is_ours(self) -> bool {
        matches!(self, StoreKind::Rskv | StoreKind::R2kv)
    }

    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Rskv => "rskv",
            StoreKind::R2kv => "r2kv",
            StoreKind::Rocksdb => "rocksdb",
            StoreKind::Fjall => "fjall",
            StoreKind::Redb => "redb",
            StoreKind::Dashmap => "dashmap",
        }
    }
}

/// A named workload and its mix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub mix: Mix,
}

impl Workload {
    /// Resolves a workload name; `custom` takes its mix from `--mix`.
    pub fn parse(name: &str, custom: Option<&Mix>) -> anyhow::Result<Workload> {
        let mix = |read, upsert, rmw| Mix {
            read,
            upsert,
            rmw,
            delete: 0,
        };
        let (name, mix) = match name.to_ascii_lowercase().as_str() {
            "a" => ("A", mix(50, 50, 0)),
            "b" => ("B", mix(95, 5, 0)),
            "c" => ("C", mix(100, 0, 0)),
            "f" => ("F", mix(50, 0, 50)),
            "rmw" => ("RMW", mix(0, 0, 100)),
            "custom" => match custom {
                Some(m) => ("custom", *m),
                None => bail!(
                    "workload `custom` needs --mix, e.g. --mix read=50,upsert=30,rmw=10,delete=10"
                ),
            },
            other => bail!("unknown workload `{other}` (a, b, c, f, rmw, custom)"),
        };
        Ok(Workload {
            name: name.to_string(),
            mix,
        })
    }
}

/// Percentages of each operation kind in the run phase; they add up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    pub read: u32,
    pub upsert: u32,
    pub rmw: u32,
    pub delete: u32,
}

impl Mix {
    /// Parses `read=50,upsert=30,rmw=10,delete=10` (missing kinds are 0).
    pub fn parse(s: &str) -> anyhow::Result<Mix> {
        let mut mix = Mix {
            read: 0,
            upsert: 0,
            rmw: 0,
            delete: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, pct) = part
                .split_once('=')
                .with_context(|| format!("mix entry `{part}` is not NAME=PERCENT"))?;
            let pct: u32 = pct
                .trim()
                .parse()
                .with_context(|| format!("mix entry `{part}`: bad percentage"))?;
            match name.trim() {
                "read" | "r" => mix.read = pct,
                "upsert" | "u" | "update" => mix.upsert = pct,
                "rmw" | "m" => mix.rmw = pct,
                "delete" | "d" => mix.delete = pct,
                other => bail!(
                    "mix entry `{part}`: unknown operation `{other}` (read, upsert, rmw, delete)"
                ),
            }
        }
        let total = mix.read + mix.upsert + mix.rmw + mix.delete;
        if total != 100 {
            bail!("mix `{s}` adds up to {total}%, not 100%");
        }
        Ok(mix)
    }

    /// Short label such as `r50/u50`.
    pub fn label(&self) -> String {
        let parts = [
            ("r", self.read),
            ("u", self.upsert),
            ("m", self.rmw),
            ("d", self.delete),
        ];
        parts
            .iter()
            .filter(|(_, p)| *p > 0)
            .map(|(n, p)| format!("{n}{p}"))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// How run-phase keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Distribution {
    Uniform,
    /// YCSB's scrambled zipfian: a zipfian rank, then FNV-1a of the rank modulo #keys.
    Zipf {
        theta: f64,
    },
    /// YCSB's "latest": zipfian over recency, so the most recently loaded keys are hottest.
    Latest {
        theta: f64,
    },
}

impl Distribution {
    pub fn parse(s: &str, theta: f64) -> anyhow::Result<Distribution> {
        if !(theta > 0.0 && theta < 1.0) {
            bail!("--theta {theta} must be in (0, 1) (YCSB's zipfian formula needs theta != 1)");
        }
        match s.to_ascii_lowercase().as_str() {
            "uniform" | "u" => Ok(Distribution::Uniform),
            "zipf" | "zipfian" | "z" => Ok(Distribution::Zipf { theta }),
            "latest" | "l" => Ok(Distribution::Latest { theta }),
            other => bail!("unknown distribution `{other}` (uniform, zipf, latest)"),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Distribution::Uniform => "uniform".into(),
            Distribution::Zipf { theta } => format!("zipf {theta}"),
            Distribution::Latest { theta } => format!("latest {theta}"),
        }
    }
}

/// The checkpoint scenario of one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSpec {
    pub mode: CheckpointMode,
    /// Seconds into the measured phase at which the checkpoint starts.
    pub at_secs: f64,
    /// Throughput sampling interval.
    pub interval_secs: f64,
    /// Use the store's background (low priority) checkpoint call.
    #[serde(default)]
    pub background: bool,
}

/// How the checkpoint writes the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointMode {
    /// Flush the log to its tail (the whole in-memory log becomes read-only).
    FoldOver,
    /// Copy the in-memory pages to `snapshot.dat`.
    Snapshot,
}

impl CheckpointMode {
    pub fn parse(s: &str) -> anyhow::Result<CheckpointMode> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "fold-over" | "foldover" | "fold_over" => CheckpointMode::FoldOver,
            "snapshot" => CheckpointMode::Snapshot,
            other => bail!("unknown --checkpoint mode `{other}` (fold-over, snapshot)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            CheckpointMode::FoldOver => "fold-over",
            CheckpointMode::Snapshot => "snapshot",
        }
    }
}

/// RsKv's sizes for one run, and the budget every store gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// Bytes every store may use: `--memory`, or (in-memory runs) RsKv's index + log.
    pub budget: u64,
    /// Whether the budget was given (a larger-than-memory run) or sized to fit the data.
    pub explicit: bool,
    /// RsKv hash buckets.
    pub table_size: u64,
    /// The table's bytes.
    pub index_bytes: u64,
    /// The overflow buckets the budget sets aside for the keys (0 without `--memory`).
    #[serde(default)]
    pub overflow_bytes: u64,
    /// RsKv log memory (a whole number of pages).
    pub log_bytes: u64,
    /// RsKv read cache (0: none), out of the budget.
    pub read_cache_bytes: u64,
    pub page_size: u64,
    /// Estimated bytes of one RsKv record.
    pub record_bytes: u64,
    /// R2Kv runs: the rest of the two-tier split (the fields above are then its hot tier's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2: Option<R2Plan>,
}

/// R2Kv's share of a run's memory beside its hot tier's (`MemoryPlan`'s `table_size`,
/// `index_bytes`, `log_bytes`, `read_cache_bytes`, `page_size`), and its disk budgets. What
/// counts against the budget: hot index + hot log + read cache + `cold_index_memory` +
/// `cold_log_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct R2Plan {
    /// log2 of the cold index's chunks (`ColdIndexConfig::chunk_bits`).
    pub cold_chunk_bits: u32,
    /// Entries per chunk (`ColdIndexConfig::entries_per_chunk`).
    pub cold_entries_per_chunk: u32,
    /// Buckets of the cold index's inner hash table (`ColdIndexConfig::table_size`).
    pub cold_index_table_size: u64,
    /// Bytes of that table.
    pub cold_index_table_bytes: u64,
    /// Most bytes of inner overflow buckets (the cold index's memory bound formula).
    pub cold_index_overflow_bytes: u64,
    /// The cold index's inner log memory (`ColdIndexConfig::log_memory`).
    pub cold_index_log_bytes: u64,
    /// Its memory bound: table + overflow + log memory.
    pub cold_index_memory: u64,
    /// Bytes of every chunk's record (what the inner log holds when every chunk was written).
    pub cold_index_chunk_bytes: u64,
    /// The cold log's memory (`R2Config::cold_log_memory`) and page size.
    pub cold_log_bytes: u64,
    pub cold_page_size: u64,
    /// The hot log's disk budget (`R2Config::hot_to_cold`): past 80% of it, passes move its
    /// oldest part to the cold tier; past `hot_budget + hot_max_pass`, writers wait.
    pub hot_budget: u64,
    pub hot_max_pass: u64,
    /// The cold log's disk budget (`R2Config::cold_to_cold`).
    pub cold_budget: u64,
    /// `R2Config::maintenance_interval`, in milliseconds.
    pub maintenance_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(feature = "rocksdb"))]
    fn a_store_without_its_feature_names_the_feature() {
        let e = StoreKind::parse("rocksdb").unwrap_err().to_string();
        assert!(e.contains("cargo feature `rocksdb`"), "{e}");
    }

    #[test]
    fn unknown_stores_are_refused() {
        assert!(StoreKind::parse("leveldb").is_err());
        assert_eq!(StoreKind::parse(" RsKv ").unwrap(), StoreKind::Rskv);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            CheckpointMode::parse("Fold-Over").unwrap(),
            CheckpointMode::FoldOver
        );
        assert_eq!(
            CheckpointMode::parse("snapshot").unwrap(),
            CheckpointMode::Snapshot
        );
        assert!(CheckpointMode::parse("delta").is_err());
    }
}
