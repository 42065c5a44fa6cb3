//! The stores under test, behind one small interface that speaks key ids and versions, so
//! every store writes and checks exactly the same bytes (see `values`).

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::cli::RunSpec;
use crate::report::RunResult;
use crate::sizing::MemoryPlan;

#[cfg(feature = "dashmap")]
mod dashmap_store;
#[cfg(feature = "fjall")]
mod fjall_store;
#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "rocksdb")]
mod rocksdb_store;
mod rskv_store;

/// A store the binary knows of; peers exist only when built with their cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Rskv,
    Rocksdb,
    Fjall,
    Redb,
    Dashmap,
}

impl StoreKind {
    pub fn parse(s: &str) -> anyhow::Result<StoreKind> {
        let kind = match s.trim().to_ascii_lowercase().as_str() {
            "rskv" => StoreKind::Rskv,
            "rocksdb" => StoreKind::Rocksdb,
            "fjall" => StoreKind::Fjall,
            "redb" => StoreKind::Redb,
            "dashmap" | "map" => StoreKind::Dashmap,
            other => bail!("unknown store `{other}` (rskv, rocksdb, fjall, redb, dashmap)"),
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
            StoreKind::Rskv => true,
            StoreKind::Rocksdb => cfg!(feature = "rocksdb"),
            StoreKind::Fjall => cfg!(feature = "fjall"),
            StoreKind::Redb => cfg!(feature = "redb"),
            StoreKind::Dashmap => cfg!(feature = "dashmap"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Rskv => "rskv",
            StoreKind::Rocksdb => "rocksdb",
            StoreKind::Fjall => "fjall",
            StoreKind::Redb => "redb",
            StoreKind::Dashmap => "dashmap",
        }
    }
}

/// What a read (or the read half of an RMW) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCheck {
    /// A value that verifies against its key.
    Ok,
    /// No value.
    Missing,
    /// A value that does not verify: another key's, torn, or garbage.
    Wrong,
    /// Not looked at (RocksDB's merge-operator RMW never returns the old value; later reads
    /// check what it wrote).
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    Unchecked,
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

/// A store under test. Keys are ids in `0..keys`; each store turns them into its own key and
/// value encodings with `values`.
pub trait Store: Send + Sync {
    /// Writes the value of `key` at `version`.
    fn upsert(&self, key: u64, version: u64) -> anyhow::Result<()>;
    /// Reads `key` and checks what came back.
    fn read(&self, key: u64) -> anyhow::Result<ReadCheck>;
    /// Bumps the version of `key`'s value (creating it at version 1 if absent) and tells what
    /// the old value was.
    fn rmw(&self, key: u64) -> anyhow::Result<ReadCheck>;
    fn delete(&self, key: u64) -> anyhow::Result<()>;
    /// The thread is about to operate on `keys` (a hint; `--batch`). Default: nothing.
    fn prefetch(&self, _keys: &[u64]) {}
    /// Reads `keys` together (`--batch-reads`). Default: one by one; the first error ends it.
    fn read_many(&self, keys: &[u64]) -> anyhow::Result<Vec<ReadCheck>> {
        keys.iter().map(|&k| self.read(k)).collect()
    }
    /// RMWs of `keys` together (`--batch-rmw`). Default: one by one; the first error ends it.
    fn rmw_many(&self, keys: &[u64]) -> anyhow::Result<Vec<ReadCheck>> {
        keys.iter().map(|&k| self.rmw(k)).collect()
    }
    fn info(&self) -> StoreInfo;
    /// Waits, after the load and before the warm-up, until background work the load left
    /// behind (LSM compactions) is done, so the run does not measure the load's debt.
    /// Returns what was waited for, if anything.
    fn settle(&self) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
    /// `(written, read)` bytes of the store's device, as the store counts them.
    fn store_io(&self) -> Option<(u64, u64)> {
        None
    }
    /// Store-specific numbers for the JSON line.
    fn extra(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Opens the store of `spec` and runs it.
pub fn run(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<RunResult> {
    match spec.store {
        StoreKind::Rskv => rskv_store::run(spec, plan),
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
}
