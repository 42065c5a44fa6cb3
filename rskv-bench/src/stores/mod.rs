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

/// The read cache's admission of RsKv and R2Kv runs (`--read-cache-every`).
fn admission(spec: &RunSpec) -> rskv::CacheAdmission {
    if spec.read_cache_every {
        rskv::CacheAdmission::Every
    } else {
        rskv::CacheAdmission::SecondMiss
    }
}
