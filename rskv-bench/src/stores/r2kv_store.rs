//! R2Kv (`rskv::R2Kv`, FASTER's F2) through its facade (`get`, `get_many`, `insert`, `rmw`,
//! `remove`), over `FileSystemDisk`, with the same keys and values as the RsKv adapter. Its
//! memory is split by `sizing::r2`. `--sessions` drives an R2Kv `Session` exactly as the RsKv
//! adapter drives its own (same `RsKvSession`). No checkpoint runs.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use anyhow::Context;
use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{ColdIndexConfig, Config, LogCompaction, R2Config, R2Kv, R2Stats};

use super::rskv_store::{bumped, checked, file_disk};
use crate::results::{LogState, RunResult, StoreInfo};
use crate::spec::{MemoryPlan, R2Plan, RunSpec};
use crate::store::{ReadCheck, Store};
use crate::sysinfo::human_bytes;
use crate::values::{BenchKey, BenchValue, TypedVisitor};

pub struct R2KvStore<K, V> {
    kv: R2Kv<K, V, FileSystemDisk>,
    key_size: usize,
    value_size: usize,
    keys: u64,
    plan: MemoryPlan,
    r2: R2Plan,
    /// Bytes of hot log from which a hot-to-cold pass starts.
    hot_trigger: u64,
    /// `--r2-lay-out-chains`: one cold-to-cold pass after the load's migration.
    lay_out_chains: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

/// The store's configuration from the plan.
fn config(spec: &RunSpec, plan: &MemoryPlan, r2: &R2Plan) -> R2Config {
    let hot = Config::new()
        .table_size(plan.table_size)
        .log_memory_size(plan.log_bytes)
        .page_size(plan.page_size);
    // A budget would not survive a doubling of the index (`sizing::plan`).
    let hot = if spec.no_auto_grow || plan.explicit {
        hot.auto_grow_index(None)
    } else {
        hot
    };
    let hot = match plan.read_cache_bytes {
        0 => hot,
        bytes => hot
            .read_cache(bytes)
            .read_cache_admission(crate::stores::admission(spec))
            .memory_split(crate::stores::memory_split(spec)),
    };
    // --compaction-threads and --compaction-lookups set both kinds of pass.
    let passes = |mut c: LogCompaction| {
        if let Some(t) = spec.compaction_threads {
            c = c.threads(t);
        }
        if let Some(n) = spec.compaction_lookups {
            c = c.lookups_in_flight(n);
        }
        c
    };
    let hot_to_cold = passes(LogCompaction::with_budget(r2.hot_budget).max_pass(r2.hot_max_pass));
    let config = R2Config::new()
        .hot(hot)
        .hot_to_cold(hot_to_cold)
        .cold_to_cold(passes(LogCompaction::with_budget(r2.cold_budget)))
        .cold_log_memory(r2.cold_log_bytes)
        .cold_page_size(r2.cold_page_size)
        .cold_index(
            ColdIndexConfig::new()
                .chunk_bits(r2.cold_chunk_bits)
                .entries_per_chunk(r2.cold_entries_per_chunk)
                .table_size(r2.cold_index_table_size)
                .log_memory(r2.cold_index_log_bytes),
        )
        .maintenance_interval(Duration::from_millis(r2.maintenance_ms));
    match spec.r2_cold_chain_window {
        Some(bytes) => config.cold_chain_window(bytes),
        None => config,
    }
}

impl<K: BenchKey, V: BenchValue> R2KvStore<K, V> {
    pub fn open(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<Self> {
        let r2 = plan.r2.context("an R2Kv run without its memory plan")?;
        let config = config(spec, plan, &r2);
        let h = &config.hot_to_cold;
        let hot_trigger = (h.budget as f64 * h.trigger) as u64;
        let kv = R2Kv::open(config, file_disk(spec)?).context("opening R2Kv")?;
        Ok(R2KvStore {
            kv,
            key_size: spec.key_size,
            value_size: spec.value_size,
            keys: spec.keys,
            plan: *plan,
            r2,
            hot_trigger,
            lay_out_chains: spec.r2_lay_out_chains,
            _types: PhantomData,
        })
    }

    #[inline]
    fn key(&self, id: u64) -> K {
        K::make(id, self.key_size)
    }
}

impl<K: BenchKey, V: BenchValue> Store for R2KvStore<K, V> {
    #[inline(always)]
    fn upsert(&self, key: u64, version: u64) -> anyhow::Result<()> {
        let v = V::make(key, version, self.value_size);
        self.kv.insert(&self.key(key), &v)?;
        Ok(())
    }

    #[inline(always)]
    fn read(&self, key: u64) -> anyhow::Result<ReadCheck> {
        let got = self.kv.get(&self.key(key))?;
        Ok(checked(key, self.value_size, got))
    }

    #[inline(always)]
    fn rmw(&self, key: u64) -> anyhow::Result<ReadCheck> {
        let size = self.value_size;
        // The closure may run more than once (retries): the last run's observation counts.
        let mut seen = ReadCheck::Missing;
        self.kv.rmw(&self.key(key), |old: Option<V>| {
            let (found, new) = bumped(key, size, old);
            seen = found;
            new
        })?;
        Ok(seen)
    }

    fn read_many(&self, keys: &[u64]) -> anyhow::Result<Vec<ReadCheck>> {
        let ks: Vec<K> = keys.iter().map(|&id| self.key(id)).collect();
        let got = self.kv.get_many(&ks)?;
        Ok(keys
            .iter()
            .zip(got)
            .map(|(&key, v)| checked(key, self.value_size, v))
            .collect())
    }

    #[inline]
    fn delete(&self, key: u64) -> anyhow::Result<()> {
        self.kv.remove(&self.key(key))?;
        Ok(())
    }

    fn session(&self) -> Option<Box<dyn crate::store::BenchSession + '_>> {
        Some(Box::new(super::rskv_session::RsKvSession {
            session: self.kv.start_session(),
            key_size: self.key_size,
            value_size: self.value_size,
            done: Default::default(),
        }))
    }

    fn info(&self) -> StoreInfo {
        let p = &self.plan;
        let r2 = &self.r2;
        StoreInfo {
            description: format!(
                "R2Kv facade over FileSystemDisk (cold log and cold index in sub-devices); hot log disk budget {} (passes of at most {}), cold log budget {}, maintenance every {} ms; cold index 2^{} chunks x {} entries ({:.2} keys per entry)",
                human_bytes(r2.hot_budget),
                human_bytes(r2.hot_max_pass),
                human_bytes(r2.cold_budget),
                r2.maintenance_ms,
                r2.cold_chunk_bits,
                r2.cold_entries_per_chunk,
                self.keys as f64
                    / ((1u64 << r2.cold_chunk_bits) * u64::from(r2.cold_entries_per_chunk)) as f64,
            ),
            memory_knob: format!(
                "hot index {} ({} buckets, ~{} of overflow) + hot log {} (pages of {}) + read cache {} + cold index {} (table {}, overflow bound {}, inner log {}; chunks take {}) + cold log {} = {}{}",
                human_bytes(p.index_bytes),
                p.table_size,
                human_bytes(p.overflow_bytes),
                human_bytes(p.log_bytes),
                human_bytes(p.page_size),
                human_bytes(p.read_cache_bytes),
                human_bytes(r2.cold_index_memory),
                human_bytes(r2.cold_index_table_bytes),
                human_bytes(r2.cold_index_overflow_bytes),
                human_bytes(r2.cold_index_log_bytes),
                human_bytes(r2.cold_index_chunk_bytes),
                human_bytes(r2.cold_log_bytes),
                human_bytes(
                    p.index_bytes
                        + p.overflow_bytes
                        + p.log_bytes
                        + p.read_cache_bytes
                        + r2.cold_index_memory
                        + r2.cold_log_bytes
                ),
                if p.explicit {
                    format!(" of budget {}", human_bytes(p.budget))
                } else {
                    " (in memory: sized to fit the data)".to_string()
                }
            ),
            key_type: K::TYPE.to_string(),
            value_type: V::TYPE.to_string(),
        }
    }

    fn settle(&self) -> anyhow::Result<Option<String>> {
        // The load's migration debt: until the hot log is back under the point where a
        // hot-to-cold pass starts (F2's 80% of its disk budget), or nothing but its memory is
        // left to move (a budget under 1.25x the hot log memory is never met), at most 10
        // minutes.
        let start = Instant::now();
        let trigger = self.hot_trigger;
        let page = self.plan.page_size;
        let owed = |s: &R2Stats| {
            let m = self.kv.hot_markers();
            s.hot.log_bytes >= trigger && m.safe_head.raw().saturating_sub(m.begin.raw()) > page
        };
        let s0 = self.kv.stats();
        let mut s = s0.clone();
        while owed(&s) && start.elapsed() < Duration::from_secs(600) {
            std::thread::sleep(Duration::from_millis(20));
            s = self.kv.stats();
        }
        let mut said = format!(
            "waited {:.2} s for hot-to-cold migration: hot log {} -> {} (passes start at {}), {} -> {} records moved",
            start.elapsed().as_secs_f64(),
            human_bytes(s0.hot.log_bytes),
            human_bytes(s.hot.log_bytes),
            human_bytes(trigger),
            s0.hot_to_cold.moved,
            s.hot_to_cold.moved
        );
        if self.lay_out_chains {
            let start = Instant::now();
            let before = self.kv.stats();
            let until = self.kv.cold_markers().safe_head;
            let c = self
                .kv
                .compact_cold(until)
                .context("laying out the cold chains")?;
            let after = self.kv.stats();
            said += &format!(
                "; then a cold-to-cold pass over {} of cold log laid out {} chains ({} records; {} copied, {} superseded) in {:.2} s with {} cold device reads",
                human_bytes(c.scanned_bytes),
                after.cold_chains_laid_out - before.cold_chains_laid_out,
                after.cold_chain_records_laid_out - before.cold_chain_records_laid_out,
                c.copied,
                c.superseded,
                start.elapsed().as_secs_f64(),
                after.cold_device_reads - before.cold_device_reads,
            );
        }
        Ok(Some(said))
    }

    // No `store_io`: R2Kv's stats count the hot tier's device bytes only, so the run's disk
    // figures come from /proc/self/io (both tiers); `extra` has the hot tier's.

    fn log_state(&self) -> Option<LogState> {
        Some(log_state(&self.kv.stats()))
    }

    fn extra(&self) -> serde_json::Value {
        let s = self.kv.stats();
        crate::stores::with_split(extra(&s, self.keys), s.hot.memory_split)
    }
}

/// Both tiers as one log: sizes and footprints added, passes of both kinds counted.
fn log_state(s: &R2Stats) -> LogState {
    let (h, c) = (&s.hot_to_cold, &s.cold_to_cold);
    LogState {
        log_bytes: s.hot.log_bytes + s.cold_log_bytes,
        disk_bytes: s.hot.disk_bytes + s.cold_disk_bytes + s.cold_index.disk_bytes,
        passes: h.passes + c.passes,
        scanned_bytes: h.scanned_bytes + c.scanned_bytes,
        copied: h.moved + c.moved,
        bytes_freed: s.hot.compaction.bytes_freed,
        wasted_passes: s.hot.compaction.wasted_passes,
        bytes_written: s.hot.bytes_written,
        bytes_read: s.hot.bytes_read,
    }
}

/// R2Kv's figures for the JSON line (and the run table's `r2kv` rows).
fn extra(s: &R2Stats, keys: u64) -> serde_json::Value {
    let ci = &s.cold_index;
    let cache = s.hot.read_cache;
    let index_memory = s.hot.index_memory as u64 + ci.memory_bytes;
    serde_json::json!({
        "hot_hits": s.hot_hits,
        "cold_reads": s.cold_reads,
        "cold_hits": s.cold_hits,
        "cold_rmws": s.cold_rmws,
        "read_cache_hits": cache.map_or(0, |c| c.hits),
        "read_cache_misses": cache.map_or(0, |c| c.misses),
        "read_cache_inserted": cache.map_or(0, |c| c.inserted),
        "read_cache_not_admitted": cache.map_or(0, |c| c.not_admitted),
        "read_cache_kept": cache.map_or(0, |c| c.kept),
        "read_cache_memory": cache.map_or(0, |c| c.memory_bytes),
        "hot_to_cold_passes": s.hot_to_cold.passes,
        "hot_to_cold_scanned_bytes": s.hot_to_cold.scanned_bytes,
        "hot_to_cold_moved": s.hot_to_cold.moved,
        "hot_to_cold_dropped": s.hot_to_cold.dropped,
        "cold_to_cold_passes": s.cold_to_cold.passes,
        "cold_to_cold_scanned_bytes": s.cold_to_cold.scanned_bytes,
        "cold_to_cold_moved": s.cold_to_cold.moved,
        "cold_to_cold_dropped": s.cold_to_cold.dropped,
        "hot_index_memory": s.hot.index_memory,
        "hot_index_buckets": s.hot.index_buckets,
        "hot_overflow_buckets": s.hot.overflow_buckets,
        "hot_index_growths": s.hot.index_growths,
        "hot_log_memory": s.hot.log_memory,
        "hot_log_bytes": s.hot.log_bytes,
        "hot_disk_bytes": s.hot.disk_bytes,
        "hot_bytes_written": s.hot.bytes_written,
        "hot_bytes_read": s.hot.bytes_read,
        "hot_device_reads": s.hot.device_reads,
        "cold_log_memory": s.cold_log_memory,
        "cold_log_bytes": s.cold_log_bytes,
        "cold_disk_bytes": s.cold_disk_bytes,
        "cold_device_reads": s.cold_device_reads,
        "cold_records_in_buffer": s.cold_records_in_buffer,
        "cold_chains_laid_out": s.cold_chains_laid_out,
        "cold_chain_records_laid_out": s.cold_chain_records_laid_out,
        "cold_index_memory": ci.memory_bytes,
        "cold_index_memory_bound": ci.memory_bound,
        "cold_index_chunks": ci.chunks,
        "cold_index_chunk_reads": ci.chunk_reads,
        "cold_index_lookups": ci.lookups,
        "cold_index_updates": ci.updates,
        "cold_index_update_conflicts": ci.update_conflicts,
        "cold_index_log_bytes": ci.log_bytes,
        "cold_index_disk_bytes": ci.disk_bytes,
        "cold_index_passes": ci.compaction.passes,
        "index_memory_per_key": index_memory as f64 / keys.max(1) as f64,
    })
}

struct Visit<'a> {
    spec: &'a RunSpec,
    plan: &'a MemoryPlan,
}

impl TypedVisitor for Visit<'_> {
    type Out = anyhow::Result<RunResult>;
    fn visit<K: BenchKey, V: BenchValue>(self) -> Self::Out {
        crate::runner::execute(self.spec, self.plan, || {
            R2KvStore::<K, V>::open(self.spec, self.plan)
        })
    }
}

/// Runs R2Kv with the key and value types the RsKv adapter uses for these sizes.
pub fn run(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<RunResult> {
    crate::values::with_types(spec.key_size, spec.value_size, Visit { spec, plan })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A larger-than-memory R2Kv run whose hot log budget pushes most keys to the cold tier:
    /// reads (and RMWs, and deletes) find what the load and the run wrote, in either tier.
    #[test]
    fn runs_read_back_from_both_tiers() {
        use clap::Parser;
        let dir = std::env::temp_dir().join(format!("rskv-bench-r2-test-{}", std::process::id()));
        for workload in ["c", "custom"] {
            let args = crate::cli::Args::try_parse_from([
                "rskv-bench",
                "--store",
                "r2kv",
                "--keys",
                "40k",
                "--value-size",
                "100",
                "--memory",
                "2MiB",
                "--r2-hot-budget",
                "1MiB",
                "--threads",
                "2",
                "--ops",
                "20k",
                "--workload",
                workload,
                "--mix",
                "read=40,upsert=30,rmw=20,delete=10",
                "--batch",
                "8",
                "--batch-reads",
                "--verify-all",
                "--no-progress",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .unwrap();
            let spec = args.runs().unwrap().remove(0);
            std::fs::create_dir_all(&spec.data_dir).unwrap();
            let plan = crate::sizing::plan(&spec).unwrap();
            let r = run(&spec, &plan).unwrap();
            let _ = std::fs::remove_dir_all(&spec.data_dir);
            assert!(r.ok(), "{:?}", r.failure);
            assert_eq!(r.run_ops, 20_000);
            assert_eq!(r.verify.verify_all_checked, 40_000);
            assert_eq!(r.verify.wrong + r.verify.errors, 0, "{:?}", r.verify);
            let n = |k: &str| r.extra[k].as_u64().unwrap();
            assert!(n("hot_to_cold_moved") > 20_000, "{}", r.extra);
            assert!(n("cold_hits") > 0, "{}", r.extra);
            assert!(r.rskv_plan.and_then(|p| p.r2).is_some());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
