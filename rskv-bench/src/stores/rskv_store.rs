//! RsKv through its plain facade (`get`, `insert`, `rmw`, `remove`), as a user would call it.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use rskv::device::file_system_disk::{DiskOptions, FileSystemDisk};
use rskv::device::null_disk::NullDisk;
use rskv::{CheckpointKind, Config, LogCompaction, LogMode, RsKv, Token};

use super::rskv_session::RsKvSession;
use crate::checkpoint::Checkpointable;
use crate::results::{LogState, Recovered, RunResult, StoreInfo};
use crate::spec::{CheckpointMode, DiskKind, MemoryPlan, RunSpec};
use crate::store::{BenchSession, ReadCheck, Store};
use crate::sysinfo::human_bytes;
use crate::values::{BenchKey, BenchValue, TypedVisitor};

/// One store, over either device (a `match` per operation is cheaper than compiling the whole
/// benchmark loop twice).
enum Kv<K, V> {
    File(RsKv<K, V, FileSystemDisk>),
    Null(RsKv<K, V, NullDisk>),
}

macro_rules! with_kv {
    ($self:expr, $kv:ident => $body:expr) => {
        match &$self.kv {
            Kv::File($kv) => $body,
            Kv::Null($kv) => $body,
        }
    };
}

pub struct RsKvStore<K, V> {
    kv: Kv<K, V>,
    key_size: usize,
    value_size: usize,
    plan: MemoryPlan,
    /// `Config::log_compaction`, for the description.
    compaction: Option<LogCompaction>,
    _types: PhantomData<fn() -> (K, V)>,
}

/// The store's configuration (recovery reuses it).
fn config(spec: &RunSpec, plan: &MemoryPlan) -> Config {
    let config = Config::new()
        .table_size(plan.table_size)
        .log_memory_size(plan.log_bytes)
        .page_size(plan.page_size)
        .copy_reads_to_tail(spec.copy_reads_to_tail);
    // A budget would not survive a doubling of the index (`sizing::plan`).
    let config = if spec.no_auto_grow || plan.explicit {
        config.auto_grow_index(None)
    } else {
        config
    };
    let config = match plan.read_cache_bytes {
        0 => config,
        bytes => config
            .read_cache(bytes)
            .read_cache_admission(crate::stores::admission(spec))
            .memory_split(crate::stores::memory_split(spec)),
    };
    match spec.log_budget {
        Some(budget) => {
            let mut c = LogCompaction::with_budget(budget);
            if let Some(t) = spec.compaction_threads {
                c = c.threads(t);
            }
            if let Some(n) = spec.compaction_lookups {
                c = c.lookups_in_flight(n);
            }
            config.log_compaction(c)
        }
        None => config,
    }
}

/// The device of `--disk file` (recovery reuses it).
pub(super) fn file_disk(spec: &RunSpec) -> anyhow::Result<FileSystemDisk> {
    let mut options = DiskOptions::default();
    if let Some(s) = spec.segment_size {
        options = options.with_segment_size(s);
    }
    FileSystemDisk::with_options(&spec.data_dir, options)
        .with_context(|| format!("opening FileSystemDisk in {}", spec.data_dir.display()))
}

/// What a read of `key` found.
#[inline]
pub(super) fn checked<V: BenchValue>(key: u64, size: usize, got: Option<V>) -> ReadCheck {
    match got {
        None => ReadCheck::Missing,
        Some(v) if v.ok(key, size) => ReadCheck::Ok,
        Some(_) => ReadCheck::Wrong,
    }
}

/// An RMW's update of `key`: the next version of a value that verifies, else version 1; and
/// what the old value was.
#[inline]
pub(super) fn bumped<V: BenchValue>(key: u64, size: usize, old: Option<V>) -> (ReadCheck, V) {
    match old {
        Some(v) if v.ok(key, size) => (ReadCheck::Ok, v.bumped()),
        Some(_) => (ReadCheck::Wrong, V::make(key, 1, size)),
        None => (ReadCheck::Missing, V::make(key, 1, size)),
    }
}

impl<K: BenchKey, V: BenchValue> RsKvStore<K, V> {
    pub fn open(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<Self> {
        let config = config(spec, plan);
        let compaction = config.log_compaction;
        let kv = match spec.disk {
            DiskKind::File => {
                Kv::File(RsKv::open(config, file_disk(spec)?).context("opening RsKv")?)
            }
            DiskKind::Null => {
                Kv::Null(RsKv::open(config, NullDisk::new()).context("opening RsKv")?)
            }
        };
        Ok(RsKvStore {
            kv,
            key_size: spec.key_size,
            value_size: spec.value_size,
            plan: *plan,
            compaction,
            _types: PhantomData,
        })
    }

    #[inline]
    fn key(&self, id: u64) -> K {
        K::make(id, self.key_size)
    }
}

// The single operations are inlined into the benchmark loop: one operation's instructions
// decide whether the CPU overlaps consecutive operations (see rskv's ops::fast), so the adapter
// adds no call.
impl<K: BenchKey, V: BenchValue> Store for RsKvStore<K, V> {
    #[inline(always)]
    fn upsert(&self, key: u64, version: u64) -> anyhow::Result<()> {
        let k = self.key(key);
        let v = V::make(key, version, self.value_size);
        with_kv!(self, kv => kv.insert(&k, &v))?;
        Ok(())
    }

    #[inline(always)]
    fn read(&self, key: u64) -> anyhow::Result<ReadCheck> {
        let k = self.key(key);
        let got = with_kv!(self, kv => kv.get(&k))?;
        Ok(checked(key, self.value_size, got))
    }

    #[inline(always)]
    fn rmw(&self, key: u64) -> anyhow::Result<ReadCheck> {
        let k = self.key(key);
        let size = self.value_size;
        // The closure may run more than once (retries): the last run's observation counts.
        let mut seen = ReadCheck::Missing;
        let update = |old: Option<V>| {
            let (found, new) = bumped(key, size, old);
            seen = found;
            new
        };
        with_kv!(self, kv => kv.rmw(&k, update))?;
        Ok(seen)
    }

    fn read_many(&self, keys: &[u64]) -> anyhow::Result<Vec<ReadCheck>> {
        let ks: Vec<K> = keys.iter().map(|&id| self.key(id)).collect();
        let got = with_kv!(self, kv => kv.get_many(&ks))?;
        Ok(keys
            .iter()
            .zip(got)
            .map(|(&key, v)| checked(key, self.value_size, v))
            .collect())
    }

    fn rmw_many(&self, keys: &[u64]) -> anyhow::Result<Vec<ReadCheck>> {
        let ks: Vec<K> = keys.iter().map(|&id| self.key(id)).collect();
        let size = self.value_size;
        // As in `rmw`: the last run of the function for a position is what it observed.
        let mut seen = vec![ReadCheck::Missing; keys.len()];
        let update = |k: &K, old: Option<V>| {
            // rmw_many hands out references into `ks`: the position is the key's identity.
            let i = ks.iter().position(|x| std::ptr::eq(x, k)).unwrap_or(0);
            let (found, new) = bumped(keys[i], size, old);
            seen[i] = found;
            new
        };
        with_kv!(self, kv => kv.rmw_many(&ks, update))?;
        Ok(seen)
    }

    fn prefetch(&self, keys: &[u64]) {
        with_kv!(self, kv => kv.prefetch(keys.iter().map(|&id| self.key(id))));
    }

    fn session(&self) -> Option<Box<dyn BenchSession + '_>> {
        Some(with_kv!(self, kv => Box::new(RsKvSession {
            session: kv.start_session(),
            key_size: self.key_size,
            value_size: self.value_size,
            done: Default::default(),
        })))
    }

    #[inline]
    fn delete(&self, key: u64) -> anyhow::Result<()> {
        let k = self.key(key);
        with_kv!(self, kv => kv.remove(&k))?;
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        let r = with_kv!(self, kv => kv.resolved());
        let device = with_kv!(self, kv => kv.device_description());
        let kind = match self.kv {
            Kv::File(_) => "FileSystemDisk",
            Kv::Null(_) => "NullDisk",
        };
        let compaction = match &self.compaction {
            Some(c) => format!(
                "log compaction: budget {}, a pass of {:.0}% of the log (at most {}) from {:.0}% of the budget, {} thread{}",
                human_bytes(c.budget),
                c.fraction * 100.0,
                human_bytes(c.max_pass),
                c.trigger * 100.0,
                c.threads,
                if c.threads == 1 { "" } else { "s" }
            ),
            None => "no log compaction".to_string(),
        };
        StoreInfo {
            description: format!("RsKv facade over {kind}: {device}; {compaction}"),
            memory_knob: format!(
                "Config::log_memory_size {} ({} pages of {}) + index {} ({} buckets){}{}{}",
                human_bytes(r.log_memory_size()),
                r.frames,
                human_bytes(r.page_size()),
                human_bytes(r.table_size() * 64),
                r.table_size(),
                if self.plan.overflow_bytes > 0 {
                    format!(
                        " + ~{} of overflow buckets for the keys",
                        human_bytes(self.plan.overflow_bytes)
                    )
                } else {
                    String::new()
                },
                if self.plan.read_cache_bytes > 0 {
                    format!(" + read cache {}", human_bytes(self.plan.read_cache_bytes))
                } else {
                    String::new()
                },
                if self.plan.explicit {
                    format!(" = budget {}", human_bytes(self.plan.budget))
                } else {
                    " (sized to fit the data)".to_string()
                }
            ),
            key_type: K::TYPE.to_string(),
            value_type: V::TYPE.to_string(),
        }
    }

    fn store_io(&self) -> Option<(u64, u64)> {
        let s = with_kv!(self, kv => kv.stats());
        Some((s.bytes_written, s.bytes_read))
    }

    fn log_state(&self) -> Option<LogState> {
        let s = with_kv!(self, kv => kv.stats());
        let c = s.compaction;
        Some(LogState {
            log_bytes: s.log_bytes,
            disk_bytes: s.disk_bytes,
            passes: c.passes,
            scanned_bytes: c.scanned_bytes,
            copied: c.copied,
            bytes_freed: c.bytes_freed,
            wasted_passes: c.wasted_passes,
            bytes_written: s.bytes_written,
            bytes_read: s.bytes_read,
        })
    }

    fn extra(&self) -> serde_json::Value {
        let s = with_kv!(self, kv => kv.stats());
        let m = s.markers;
        let cache = s.read_cache;
        let split = s.memory_split;
        let extra = serde_json::json!({
            "read_cache_hits": cache.map_or(0, |c| c.hits),
            "read_cache_misses": cache.map_or(0, |c| c.misses),
            "read_cache_inserted": cache.map_or(0, |c| c.inserted),
            "read_cache_not_admitted": cache.map_or(0, |c| c.not_admitted),
            "read_cache_kept": cache.map_or(0, |c| c.kept),
            "index_buckets": s.index_buckets,
            "overflow_buckets": s.overflow_buckets,
            "index_memory": s.index_memory,
            "log_memory": s.log_memory,
            "bytes_written": s.bytes_written,
            "bytes_read": s.bytes_read,
            "log_begin": m.begin.raw(),
            "log_head": m.head.raw(),
            "log_read_only": m.read_only.raw(),
            "log_tail": m.tail.raw(),
            "log_flushed_until": m.flushed_until.raw(),
        });
        crate::stores::with_split(extra, split)
    }
}

impl<K: BenchKey, V: BenchValue> Checkpointable for RsKvStore<K, V> {
    fn checkpoint(&self, mode: CheckpointMode, background: bool) -> anyhow::Result<u64> {
        let Kv::File(kv) = &self.kv else {
            bail!("checkpoints need --disk file");
        };
        let mode = match mode {
            CheckpointMode::FoldOver => LogMode::FoldOver,
            CheckpointMode::Snapshot => LogMode::Snapshot,
        };
        let token = if background {
            // The asynchronous call (its own low-priority thread), waited on here.
            kv.checkpoint_async(CheckpointKind::Full, mode)
                .context("starting an RsKv checkpoint")?
                .wait()
                .context("RsKv checkpoint")?
        } else {
            // The blocking call, on the benchmark's checkpoint thread.
            kv.checkpoint_with(CheckpointKind::Full, mode)
                .context("RsKv checkpoint")?
        };
        Ok(token.0)
    }

    fn log_tail(&self) -> u64 {
        with_kv!(self, kv => kv.stats()).markers.tail.raw()
    }

    fn checkpoint_path(spec: &RunSpec, token: u64) -> PathBuf {
        // FileSystemDisk keeps checkpoints in `<dir>/checkpoints/<token>`.
        spec.data_dir
            .join("checkpoints")
            .join(Token(token).to_string())
    }

    fn recover(spec: &RunSpec, plan: &MemoryPlan, token: u64) -> anyhow::Result<(Self, Recovered)> {
        let start = Instant::now();
        let disk = file_disk(spec)?;
        let disk_open_secs = start.elapsed().as_secs_f64();
        let (kv, info) =
            RsKv::recover(config(spec, plan), disk, Some(Token(token))).context("RsKv::recover")?;
        let secs = start.elapsed().as_secs_f64();
        let store = RsKvStore {
            kv: Kv::File(kv),
            key_size: spec.key_size,
            value_size: spec.value_size,
            plan: *plan,
            compaction: config(spec, plan).log_compaction,
            _types: PhantomData,
        };
        Ok((
            store,
            Recovered {
                disk_open_secs,
                secs,
                replayed_bytes: info.replayed_bytes,
                replayed_records: info.replayed_records,
                index_loaded: info.index_token.is_some(),
                version: info.version,
            },
        ))
    }
}

struct Visit<'a> {
    spec: &'a RunSpec,
    plan: &'a MemoryPlan,
}

impl TypedVisitor for Visit<'_> {
    type Out = anyhow::Result<RunResult>;
    fn visit<K: BenchKey, V: BenchValue>(self) -> Self::Out {
        let open = || RsKvStore::<K, V>::open(self.spec, self.plan);
        if self.spec.checkpoint.is_some() {
            crate::checkpoint::execute(self.spec, self.plan, open)
        } else {
            crate::runner::execute(self.spec, self.plan, open)
        }
    }
}

/// Runs RsKv with the key and value types that fit the sizes asked.
pub fn run(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<RunResult> {
    crate::values::with_types(spec.key_size, spec.value_size, Visit { spec, plan })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::VERIFY_SAMPLE;

    /// A whole checkpoint run on RsKv over FileSystemDisk, in both modes: the checkpoint is
    /// taken during the run, recovery finds every sampled key.
    #[test]
    fn checkpoint_runs_recover_every_sampled_key() {
        use clap::Parser;
        let dir = std::env::temp_dir().join(format!("rskv-bench-ckpt-test-{}", std::process::id()));
        let args = crate::cli::Args::try_parse_from([
            "rskv-bench",
            "--keys",
            "20k",
            "--threads",
            "2",
            "--duration",
            "400ms",
            "--warmup",
            "0",
            "--op-buffer",
            "20000",
            "--checkpoint",
            "fold-over,snapshot",
            "--interval",
            "50ms",
            "--no-progress",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .unwrap();
        let runs = args.runs().unwrap();
        assert_eq!(runs.len(), 2);
        for spec in &runs {
            std::fs::create_dir_all(&spec.data_dir).unwrap();
            let plan = crate::sizing::plan(spec).unwrap();
            let r = run(spec, &plan).unwrap();
            let _ = std::fs::remove_dir_all(&spec.data_dir);
            assert!(r.ok(), "{:?}", r.failure);
            let c = r.checkpoint.expect("a checkpoint result");
            assert!(
                c.token.is_some() && c.secs > 0.0 && c.dir_bytes > 0,
                "{c:?}"
            );
            assert!(
                c.files.iter().any(|(n, _)| n == "index.dat"),
                "{:?}",
                c.files
            );
            assert_eq!(
                c.files.iter().any(|(n, _)| n == "snapshot.dat"),
                spec.checkpoint.unwrap().mode == CheckpointMode::Snapshot
            );
            assert!(c.intervals.len() >= 8, "{}", c.intervals.len());
            assert!(c.dip.baseline_mops > 0.0, "{:?}", c.dip);
            let rec = c.recovery.expect("recovered");
            assert_eq!(rec.verify_keys, VERIFY_SAMPLE);
            assert_eq!(rec.reads_ok, VERIFY_SAMPLE);
            assert!(rec.recovered.index_loaded);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// --sessions on a store larger than its memory: reads go pending, complete in
    /// `complete_pending`, and every one is verified (all found, none wrong).
    #[test]
    fn session_runs_verify_every_read() {
        use clap::Parser;
        let dir =
            std::env::temp_dir().join(format!("rskv-bench-session-test-{}", std::process::id()));
        for workload in ["c", "a"] {
            let args = crate::cli::Args::try_parse_from([
                "rskv-bench",
                "--keys",
                "40k",
                "--value-size",
                "100",
                "--memory",
                "2MiB",
                "--threads",
                "2",
                "--ops",
                "40k",
                "--workload",
                workload,
                "--sessions",
                "--complete-every",
                "500",
                "--no-progress",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .unwrap();
            let spec = args.runs().unwrap().remove(0);
            assert!(spec.sessions && spec.complete_every == 500);
            std::fs::create_dir_all(&spec.data_dir).unwrap();
            let plan = crate::sizing::plan(&spec).unwrap();
            let r = run(&spec, &plan).unwrap();
            let _ = std::fs::remove_dir_all(&spec.data_dir);
            assert!(r.ok(), "{:?}", r.failure);
            assert_eq!(r.run_ops, 40_000);
            assert!(r.verify.reads_ok >= 19_000, "{:?}", r.verify);
            assert_eq!(r.verify.missing + r.verify.wrong + r.verify.errors, 0);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
