//! RocksDB (the `rocksdb` crate): WAL on, no fsync per write, RMW through a merge operator
//! (RocksDB's own way to update without reading first).

use anyhow::Context;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, MergeOperands, Options,
    WriteOptions, DB,
};

use crate::results::StoreInfo;
use crate::spec::{MemoryPlan, RunSpec};
use crate::store::{ReadCheck, Store};
use crate::sysinfo::human_bytes;
use crate::values::{bump_value, fill_value, key_bytes, key_id, value_bytes, value_ok};

pub struct RocksStore {
    db: DB,
    write: WriteOptions,
    key_size: usize,
    value_size: usize,
    knob: String,
}

/// A merge operand: "bump the version once, value size N" (the size lets a merge onto a
/// missing key create the value).
fn operand(value_size: usize, count: u32) -> [u8; 8] {
    let mut o = [0u8; 8];
    o[..4].copy_from_slice(&(value_size as u32).to_le_bytes());
    o[4..].copy_from_slice(&count.to_le_bytes());
    o
}

fn parse_operand(o: &[u8]) -> Option<(usize, u32)> {
    let size = u32::from_le_bytes(o.get(..4)?.try_into().ok()?) as usize;
    let count = u32::from_le_bytes(o.get(4..8)?.try_into().ok()?);
    Some((size, count))
}

/// Applies bump operands to the existing value. A value that does not verify is kept as it
/// is, so that the next read reports it.
fn full_merge(key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let id = key_id(key)?;
    let mut bumps = 0u64;
    let mut size = existing.map(<[u8]>::len);
    for o in ops {
        let (s, c) = parse_operand(o)?;
        size.get_or_insert(s);
        bumps += u64::from(c);
    }
    let size = size?;
    let mut v = match existing {
        Some(e) if !value_ok(e, id, size) => return Some(e.to_vec()),
        Some(e) => e.to_vec(),
        None => {
            let mut v = vec![0u8; size];
            fill_value(&mut v, id, 0);
            v
        }
    };
    for _ in 0..bumps {
        bump_value(&mut v);
    }
    Some(v)
}

/// Combines operands into one (RocksDB calls this without the existing value).
fn partial_merge(_key: &[u8], _existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let mut size = 0;
    let mut count = 0u32;
    for o in ops {
        let (s, c) = parse_operand(o)?;
        size = s;
        count = count.saturating_add(c);
    }
    Some(operand(size, count).to_vec())
}

impl RocksStore {
    pub fn open(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<RocksStore> {
        // Budget: half to the block cache (index and filter blocks charged to it), a quarter
        // to each of the two write buffers (memtables).
        let cache_bytes = plan.budget / 2;
        let write_buffer = (plan.budget / 4).max(1 << 20);
        let cache = Cache::new_lru_cache(cache_bytes as usize);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        // Partitioned index and filters (RocksDB's advice for a bounded cache): a whole
        // filter block of a 64 MiB table (~750 KiB) nearly fills a 1 MiB shard of a 64 MiB
        // cache, so unpartitioned filters thrash and every get re-reads ~700 KB (measured).
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(write_buffer as usize);
        opts.set_max_write_buffer_number(2);
        opts.set_compression_type(DBCompressionType::None);
        opts.increase_parallelism(2);
        // O_DIRECT like RsKv, so the OS page cache does not extend the budget.
        opts.set_use_direct_reads(true);
        opts.set_use_direct_io_for_flush_and_compaction(true);
        opts.set_merge_operator("bump", full_merge, partial_merge);
        let db = DB::open(&opts, &spec.data_dir)
            .with_context(|| format!("opening RocksDB in {}", spec.data_dir.display()))?;
        let mut write = WriteOptions::default();
        write.set_sync(false);
        write.disable_wal(false);
        Ok(RocksStore {
            db,
            write,
            key_size: spec.key_size,
            value_size: spec.value_size,
            knob: format!(
                "block cache {} (LRU, index+filter blocks inside) + write_buffer_size {} x 2 memtables = budget {}",
                human_bytes(cache_bytes),
                human_bytes(write_buffer),
                human_bytes(plan.budget)
            ),
        })
    }
}

impl Store for RocksStore {
    fn upsert(&self, key: u64, version: u64) -> anyhow::Result<()> {
        let v = value_bytes(key, version, self.value_size);
        self.db
            .put_opt(key_bytes(key, self.key_size), v, &self.write)?;
        Ok(())
    }

    fn read(&self, key: u64) -> anyhow::Result<ReadCheck> {
        Ok(match self.db.get_pinned(key_bytes(key, self.key_size))? {
            None => ReadCheck::Missing,
            Some(v) if value_ok(&v, key, self.value_size) => ReadCheck::Ok,
            Some(_) => ReadCheck::Wrong,
        })
    }

    fn read_many(&self, keys: &[u64]) -> anyhow::Result<Vec<ReadCheck>> {
        let got = self
            .db
            .multi_get(keys.iter().map(|&k| key_bytes(k, self.key_size)));
        keys.iter()
            .zip(got)
            .map(|(&key, v)| {
                Ok(match v? {
                    None => ReadCheck::Missing,
                    Some(v) if value_ok(&v, key, self.value_size) => ReadCheck::Ok,
                    Some(_) => ReadCheck::Wrong,
                })
            })
            .collect()
    }

    fn rmw(&self, key: u64) -> anyhow::Result<ReadCheck> {
        self.db.merge_opt(
            key_bytes(key, self.key_size),
            operand(self.value_size, 1),
            &self.write,
        )?;
        Ok(ReadCheck::Unchecked)
    }

    fn delete(&self, key: u64) -> anyhow::Result<()> {
        self.db
            .delete_opt(key_bytes(key, self.key_size), &self.write)?;
        Ok(())
    }

    fn settle(&self) -> anyhow::Result<Option<String>> {
        // As db_bench's waitforcompaction: until no flush or compaction is pending or running
        // (at most 10 minutes).
        let start = std::time::Instant::now();
        let busy = |name: &str| -> anyhow::Result<bool> {
            Ok(self.db.property_int_value(name)?.unwrap_or(0) > 0)
        };
        while start.elapsed() < std::time::Duration::from_secs(600) {
            if !(busy("rocksdb.compaction-pending")?
                || busy("rocksdb.num-running-compactions")?
                || busy("rocksdb.mem-table-flush-pending")?
                || busy("rocksdb.num-running-flushes")?)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(Some(format!(
            "waited {:.1} s for pending flushes and compactions",
            start.elapsed().as_secs_f64()
        )))
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            description: format!(
                "RocksDB {}: WAL on, no fsync per write, O_DIRECT reads/flush/compaction, no compression, bloom 10 bits/key, partitioned index+filters, RMW = merge operator",
                "(rocksdb crate 0.25)"
            ),
            memory_knob: self.knob.clone(),
            key_type: format!("{} bytes (big-endian id + filler)", self.key_size),
            value_type: format!("{} bytes", self.value_size),
        }
    }
}
