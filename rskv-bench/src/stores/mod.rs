//! The stores under test: one adapter per store, each implementing `store::Store` over its own
//! key and value encodings (see `values`), and the dispatch from a spec's store to its adapter.

use anyhow::bail;

use crate::results::RunResult;
use crate::spec::{MemoryPlan, RunSpec, StoreKind};

#[cfg(feature = "dashmap")]
mod dashmap_store;
#[cfg(feature = "fjall")]
mod fjall_store;
mod r2kv_store;
#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "rocksdb")]
mod rocksdb_store;
mod rskv_session;
mod rskv_store;

/// Opens the store of `spec` and runs it.
pub fn run(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<RunResult> {
    match spec.store {
        StoreKind::Rskv => rskv_store::run(spec, plan),
        StoreKind::R2kv => r2kv_store::run(spec, plan),
        #[cfg(feature = "dashmap")]
        StoreKind::Dashmap => dashmap_store::run(spec, plan),
        #[cfg(feature = "rocksdb")]
        StoreKind::Rocksdb => {
            crate::runner::execute(spec, plan, || rocksdb_store::RocksStore::open(spec, plan))
        }
        #[cfg(feature = "fjall")]
        StoreKind::Fjall => {
            crate::runner::execute(spec, plan, || fjall_store::FjallStore::open(spec, plan))
        }
        #[cfg(feature = "redb")]
        StoreKind::Redb => {
            crate::runner::execute(spec, plan, || redb_store::RedbStore::open(spec, plan))
        }
        #[allow(unreachable_patterns)]
        other => bail!("store `{}` is not built into this binary", other.name()),
    }
}

/// How RsKv and R2Kv split memory between the log and the read cache (`--adaptive-split`).
fn memory_split(spec: &RunSpec) -> rskv::MemorySplit {
    if spec.adaptive_split {
        rskv::MemorySplit::Adaptive
    } else {
        rskv::MemorySplit::Fixed
    }
}

/// Adds the split's figures to a JSON line's `extra` (zeros for a fixed split).
fn with_split(mut extra: serde_json::Value, s: Option<rskv::SplitStats>) -> serde_json::Value {
    let split = serde_json::json!({
        "split_log_bytes": s.map_or(0, |s| s.log_bytes),
        "split_cache_bytes": s.map_or(0, |s| s.cache_bytes),
        "split_log_resident_bytes": s.map_or(0, |s| s.log_resident_bytes),
        "split_cache_resident_bytes": s.map_or(0, |s| s.cache_resident_bytes),
        "split_log_ghosts": s.map_or(0, |s| s.log_ghosts),
        "split_cache_ghosts": s.map_or(0, |s| s.cache_ghosts),
        "split_moves": s.map_or(0, |s| s.moves),
    });
    if let (Some(extra), serde_json::Value::Object(split)) = (extra.as_object_mut(), split) {
        extra.extend(split);
    }
    extra
}

/// The read cache's admission of RsKv and R2Kv runs (`--read-cache-every`).
fn admission(spec: &RunSpec) -> rskv::CacheAdmission {
    if spec.read_cache_every {
        rskv::CacheAdmission::Every
    } else {
        rskv::CacheAdmission::SecondMiss
    }
}
