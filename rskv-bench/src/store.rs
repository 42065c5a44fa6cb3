//! The interface every store under test implements (the adapters are in `stores`). It speaks
//! key ids and versions, so every store writes and checks exactly the same bytes (see
//! `values`).

use crate::results::{LogState, StoreInfo};

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
    /// The log's size, its disk footprint and compaction totals (RsKv). Default: none.
    fn log_state(&self) -> Option<LogState> {
        None
    }
    /// Store-specific numbers for the JSON line.
    fn extra(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// A session for one thread (`--sessions`), if the store has them. Default: none (the
    /// thread runs its operations one by one).
    fn session(&self) -> Option<Box<dyn BenchSession + '_>> {
        None
    }
}

/// One thread's session (`--sessions`, RsKv): operations are issued without waiting for the
/// device, as FASTER's benchmark drives FASTER. Reads and RMWs that need the disk go pending
/// and finish in [`BenchSession::complete`]; what every read and RMW found (at once or
/// later) is reported there.
pub trait BenchSession {
    fn upsert(&mut self, key: u64, version: u64) -> anyhow::Result<()>;
    fn read(&mut self, key: u64) -> anyhow::Result<()>;
    fn rmw(&mut self, key: u64) -> anyhow::Result<()>;
    fn delete(&mut self, key: u64) -> anyhow::Result<()>;
    /// Finishes the pending operations that are done (with `wait`: all of them), and moves
    /// what every read and RMW finished since the last call found into `out`.
    fn complete(&mut self, wait: bool, out: &mut Vec<Finished>);
}

/// What a read or RMW issued through a [`BenchSession`] found.
#[derive(Debug)]
pub struct Finished {
    /// `"read"` or `"rmw"`.
    pub op: &'static str,
    pub key: u64,
    /// What it found, or the store's error.
    pub found: Result<ReadCheck, String>,
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
