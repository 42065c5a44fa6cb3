//! redb (a copy-on-write B-tree in Rust): one transaction per operation, as a user without
//! batching would write. Writes commit with `Durability::None` (no fsync) and every
//! `DURABLE_EVERY`-th with `Durability::Immediate`, since redb keeps the pages of non-durable
//! commits until a durable one and would otherwise grow without bound.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::results::StoreInfo;
use crate::spec::{MemoryPlan, RunSpec};
use crate::store::{ReadCheck, Store};
use crate::sysinfo::human_bytes;
use crate::values::{bump_value, key_bytes, value_bytes, value_ok};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");
const DURABLE_EVERY: u64 = 1 << 14;

pub struct RedbStore {
    db: Database,
    writes: AtomicU64,
    key_size: usize,
    value_size: usize,
    knob: String,
}

impl RedbStore {
    pub fn open(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<RedbStore> {
        let path = spec.data_dir.join("bench.redb");
        let db = Database::builder()
            .set_cache_size(plan.budget as usize)
            .create(&path)
            .with_context(|| format!("creating redb {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(TABLE)?;
        txn.commit()?;
        Ok(RedbStore {
            db,
            writes: AtomicU64::new(0),
            key_size: spec.key_size,
            value_size: spec.value_size,
            knob: format!("set_cache_size {} = budget", human_bytes(plan.budget)),
        })
    }

    /// Runs `f` on the table in one write transaction and commits it.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut txn = self.db.begin_write()?;
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        let durability = if n % DURABLE_EVERY == DURABLE_EVERY - 1 {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)?;
        let out = {
            let mut table = txn.open_table(TABLE)?;
            f(&mut table)?
        };
        txn.commit()?;
        Ok(out)
    }
}

impl Store for RedbStore {
    fn upsert(&self, key: u64, version: u64) -> anyhow::Result<()> {
        let k = key_bytes(key, self.key_size);
        let v = value_bytes(key, version, self.value_size);
        self.write(|t| {
            t.insert(k.as_slice(), v.as_slice())?;
            Ok(())
        })
    }

    fn read(&self, key: u64) -> anyhow::Result<ReadCheck> {
        let k = key_bytes(key, self.key_size);
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let found = table.get(k.as_slice())?;
        Ok(match found {
            None => ReadCheck::Missing,
            Some(v) if value_ok(v.value(), key, self.value_size) => ReadCheck::Ok,
            Some(_) => ReadCheck::Wrong,
        })
    }

    fn rmw(&self, key: u64) -> anyhow::Result<ReadCheck> {
        let k = key_bytes(key, self.key_size);
        let size = self.value_size;
        self.write(|t| {
            let (found, new) = match t.get(k.as_slice())? {
                Some(v) if value_ok(v.value(), key, size) => {
                    let mut v = v.value().to_vec();
                    bump_value(&mut v);
                    (ReadCheck::Ok, v)
                }
                Some(_) => (ReadCheck::Wrong, value_bytes(key, 1, size)),
                None => (ReadCheck::Missing, value_bytes(key, 1, size)),
            };
            t.insert(k.as_slice(), new.as_slice())?;
            Ok(found)
        })
    }

    fn delete(&self, key: u64) -> anyhow::Result<()> {
        let k = key_bytes(key, self.key_size);
        self.write(|t| {
            t.remove(k.as_slice())?;
            Ok(())
        })
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            description: format!(
                "redb 4: one transaction per operation, Durability::None (no fsync) with a durable commit every {DURABLE_EVERY} writes, buffered I/O (page cache), single writer"
            ),
            memory_knob: self.knob.clone(),
            key_type: format!("{} bytes (big-endian id + filler)", self.key_size),
            value_type: format!("{} bytes", self.value_size),
        }
    }
}
