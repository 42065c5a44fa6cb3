//! R2Kv's live statistics ([`R2Stats`]) and their export in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::index::cold_index::ColdIndexStats;
use crate::ops::compact::Compaction;
use crate::rskv_core::Stats;

/// What the tiers did and hold ([`R2Kv::stats`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct R2Stats {
    /// The hot tier's statistics (its read cache included).
    pub hot: Stats,
    /// Reads answered by the hot tier (a value or a tombstone there).
    pub hot_hits: u64,
    /// Reads that went to the cold tier.
    pub cold_reads: u64,
    /// Cold reads that found a live value.
    pub cold_hits: u64,
    /// RMWs whose old value came from the cold tier.
    pub cold_rmws: u64,
    /// Hot index entries freed after hot-to-cold passes (their chains had moved to cold).
    pub hot_entries_freed: u64,
    /// Hot-to-cold passes, and what they did in total.
    pub hot_to_cold: PassTotals,
    /// Cold-to-cold passes, and what they did in total.
    pub cold_to_cold: PassTotals,
    /// Bytes of cold log between its begin and tail.
    pub cold_log_bytes: u64,
    /// Bytes of cold log segment files on the device.
    pub cold_disk_bytes: u64,
    /// Memory of the cold log's pages.
    pub cold_log_memory: u64,
    /// Device reads of the cold log (records).
    pub cold_device_reads: u64,
    /// Cold records that reads (and compaction's walks) took from the buffer of an earlier
    /// device read instead of reading them: chains that cold-to-cold compaction laid out
    /// together ([`R2Config::cold_chain_window`](crate::r2::R2Config::cold_chain_window)).
    pub cold_records_in_buffer: u64,
    /// Chains cold-to-cold compaction laid out together, and the records they held.
    pub cold_chains_laid_out: u64,
    /// See [`R2Stats::cold_chains_laid_out`].
    pub cold_chain_records_laid_out: u64,
    /// The cold index.
    pub cold_index: ColdIndexStats,
    /// Background maintenance passes (hot-to-cold and cold-to-cold migration past their
    /// budgets) that failed, e.g. on a full or failing device. Each is logged too, and the
    /// next interval tries again.
    pub maintenance_failures: u64,
    /// The error of the last background pass that failed, until a later pass succeeds.
    pub maintenance_error: Option<String>,
}

/// Totals of one kind of compaction pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PassTotals {
    /// Passes that ran.
    pub passes: u64,
    /// Bytes of log scanned.
    pub scanned_bytes: u64,
    /// Records moved (hot-to-cold) or copied (cold-to-cold; where chains are laid out
    /// together, the records whose move laid out their chain: the chains' records are
    /// [`R2Stats::cold_chain_records_laid_out`]).
    pub moved: u64,
    /// Records dropped as superseded (or tombstones, cold-to-cold), or already copied with
    /// their chain.
    pub dropped: u64,
}

#[derive(Debug, Default)]
pub(super) struct PassCounters {
    passes: AtomicU64,
    scanned_bytes: AtomicU64,
    moved: AtomicU64,
    dropped: AtomicU64,
}

impl PassCounters {
    pub(super) fn add(&self, c: &Compaction) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.scanned_bytes
            .fetch_add(c.scanned_bytes, Ordering::Relaxed);
        self.moved.fetch_add(c.copied, Ordering::Relaxed);
        self.dropped
            .fetch_add(c.superseded + c.tombstones, Ordering::Relaxed);
    }
    pub(super) fn totals(&self) -> PassTotals {
        PassTotals {
            passes: self.passes.load(Ordering::Relaxed),
            scanned_bytes: self.scanned_bytes.load(Ordering::Relaxed),
            moved: self.moved.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

impl R2Stats {
    /// The statistics in the Prometheus text exposition format (version 0.0.4): one gauge or
    /// counter per figure, named `rskv_r2_*`, with `tier` and `pass` labels where they apply.
    #[must_use]
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP rskv_r2_{name} {help}");
            let _ = writeln!(out, "# TYPE rskv_r2_{name} {kind}");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "rskv_r2_{name} {v}");
                } else {
                    let _ = writeln!(out, "rskv_r2_{name}{{{labels}}} {v}");
                }
            }
        };
        let ops = &self.hot.ops;
        metric(
            "operations_total",
            "counter",
            "Operations of the hot tier by kind.",
            &[
                ("kind=\"read\"", ops.reads()),
                ("kind=\"upsert\"", ops.upserts),
                ("kind=\"rmw\"", ops.rmws),
                ("kind=\"delete\"", ops.deletes),
            ],
        );
        let cache = self.hot.read_cache.map_or(0, |c| c.hits);
        metric(
            "read_hits_total",
            "counter",
            "Reads answered by each tier (hot includes its read cache).",
            &[
                ("tier=\"hot\"", self.hot_hits),
                ("tier=\"read_cache\"", cache),
                ("tier=\"cold\"", self.cold_hits),
            ],
        );
        let c = self.hot.read_cache.unwrap_or_default();
        metric(
            "read_cache_copies_total",
            "counter",
            "Copies offered to the hot read cache by reads that found their value on a device, \
             by what became of them.",
            &[
                ("copy=\"inserted\"", c.inserted),
                ("copy=\"not_admitted\"", c.not_admitted),
                ("copy=\"skipped\"", c.skipped),
            ],
        );
        metric(
            "read_cache_kept_total",
            "counter",
            "Copies of hot log records made as they left memory because their key missed \
             recently (also counted in read_cache_copies_total{copy=\"inserted\"}).",
            &[("", c.kept)],
        );
        metric(
            "cold_reads_total",
            "counter",
            "Reads that went to the cold tier.",
            &[("", self.cold_reads)],
        );
        metric(
            "cold_rmws_total",
            "counter",
            "RMWs whose old value came from the cold tier.",
            &[("", self.cold_rmws)],
        );
        metric(
            "device_reads_total",
            "counter",
            "Record reads from each tier's device.",
            &[
                ("tier=\"hot\"", self.hot.device_reads),
                ("tier=\"cold\"", self.cold_device_reads),
                ("tier=\"cold_index\"", self.cold_index.chunk_reads),
            ],
        );
        metric(
            "cold_records_in_buffer_total",
            "counter",
            "Cold records taken from an earlier device read's buffer (chains laid out together).",
            &[("", self.cold_records_in_buffer)],
        );
        metric(
            "cold_chains_laid_out_total",
            "counter",
            "Chains cold-to-cold compaction wrote out together.",
            &[("", self.cold_chains_laid_out)],
        );
        for (pass, t) in [
            ("hot_to_cold", &self.hot_to_cold),
            ("cold_to_cold", &self.cold_to_cold),
        ] {
            let label = format!("pass=\"{pass}\"");
            metric(
                &format!("{pass}_passes_total"),
                "counter",
                "Compaction passes.",
                &[("", t.passes)],
            );
            metric(
                &format!("{pass}_scanned_bytes_total"),
                "counter",
                "Bytes of log the passes scanned.",
                &[(label.as_str(), t.scanned_bytes)],
            );
            metric(
                &format!("{pass}_moved_records_total"),
                "counter",
                "Records the passes moved or copied.",
                &[(label.as_str(), t.moved)],
            );
        }
        metric(
            "maintenance_failures_total",
            "counter",
            "Background maintenance passes that failed.",
            &[("", self.maintenance_failures)],
        );
        metric(
            "log_bytes",
            "gauge",
            "Bytes of log between begin and tail.",
            &[
                ("tier=\"hot\"", self.hot.log_bytes),
                ("tier=\"cold\"", self.cold_log_bytes),
            ],
        );
        metric(
            "disk_bytes",
            "gauge",
            "Bytes of log segment files on each device.",
            &[
                ("tier=\"hot\"", self.hot.disk_bytes),
                ("tier=\"cold\"", self.cold_disk_bytes),
                ("tier=\"cold_index\"", self.cold_index.disk_bytes),
            ],
        );
        metric(
            "memory_bytes",
            "gauge",
            "Memory by part.",
            &[
                ("part=\"hot_index\"", self.hot.index_memory as u64),
                ("part=\"hot_log\"", self.hot.log_memory as u64),
                (
                    "part=\"read_cache\"",
                    self.hot.read_cache.map_or(0, |c| c.memory_bytes),
                ),
                ("part=\"cold_log\"", self.cold_log_memory),
                ("part=\"cold_index\"", self.cold_index.memory_bytes),
            ],
        );
        out
    }
}
