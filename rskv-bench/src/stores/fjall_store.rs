//! fjall (an LSM-tree in Rust): journal flushed to the OS per write (its default), no fsync;
//! RMW is get + insert (fjall's plain keyspace has no atomic RMW; its transactional
//! database would serialise all writers).

use anyhow::Context;
use fjall::config::CompressionPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::results::StoreInfo;
use crate::spec::{MemoryPlan, RunSpec};
use crate::store::{ReadCheck, Store};
use crate::sysinfo::human_bytes;
use crate::values::{bump_value, key_bytes, value_bytes, value_ok};

pub struct FjallStore {
    // Dropped after the keyspace (field order), as fjall expects.
    items: Keyspace,
    _db: Database,
    key_size: usize,
    value_size: usize,
    knob: String,
}

impl FjallStore {
    pub fn open(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<FjallStore> {
        // Budget: the memtable (at most fjall's default 64 MiB, at most a quarter of the
        // budget), the rest to the block cache.
        let memtable = (plan.budget / 4).clamp(1 << 20, 64 << 20);
        let cache = plan.budget.saturating_sub(memtable).max(1 << 20);
        let db = Database::builder(&spec.data_dir)
            .cache_size(cache)
            .open()
            .with_context(|| format!("opening fjall in {}", spec.data_dir.display()))?;
        let items = db
            .keyspace("bench", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable)
                    .data_block_compression_policy(CompressionPolicy::disabled())
            })
            .context("opening the fjall keyspace")?;
        Ok(FjallStore {
            items,
            _db: db,
            key_size: spec.key_size,
            value_size: spec.value_size,
            knob: format!(
                "cache_size {} + max_memtable_size {} = budget {}",
                human_bytes(cache),
                human_bytes(memtable),
                human_bytes(plan.budget)
            ),
        })
    }
}

impl Store for FjallStore {
    fn upsert(&self, key: u64, version: u64) -> anyhow::Result<()> {
        self.items.insert(
            key_bytes(key, self.key_size),
            value_bytes(key, version, self.value_size),
        )?;
        Ok(())
    }

    fn read(&self, key: u64) -> anyhow::Result<ReadCheck> {
        Ok(match self.items.get(key_bytes(key, self.key_size))? {
            None => ReadCheck::Missing,
            Some(v) if value_ok(&v, key, self.value_size) => ReadCheck::Ok,
            Some(_) => ReadCheck::Wrong,
        })
    }

    fn rmw(&self, key: u64) -> anyhow::Result<ReadCheck> {
        let k = key_bytes(key, self.key_size);
        let (found, new) = match self.items.get(&k)? {
            Some(v) if value_ok(&v, key, self.value_size) => {
                let mut v = v.to_vec();
                bump_value(&mut v);
                (ReadCheck::Ok, v)
            }
            Some(_) => (ReadCheck::Wrong, value_bytes(key, 1, self.value_size)),
            None => (ReadCheck::Missing, value_bytes(key, 1, self.value_size)),
        };
        self.items.insert(k, new)?;
        Ok(found)
    }

    fn delete(&self, key: u64) -> anyhow::Result<()> {
        self.items.remove(key_bytes(key, self.key_size))?;
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            description: "fjall 3: journal flushed to the OS per write, no fsync, buffered I/O (page cache), no compression, RMW = get + insert (not atomic)".into(),
            memory_knob: self.knob.clone(),
            key_type: format!("{} bytes (big-endian id + filler)", self.key_size),
            value_type: format!("{} bytes", self.value_size),
        }
    }
}
