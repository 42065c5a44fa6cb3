//! The hash indexes: the in-memory index (64-byte buckets of tagged entries pointing into the
//! log) and R2Kv's cold index (hash chunks in a store of their own, mostly on the device).
pub mod cold_index;
pub mod cold_index_contexts;
pub mod definitions;
pub mod hash_bucket;
pub mod hash_table;
pub(crate) mod key_hash;
pub mod mem_index;
pub mod split;

pub use cold_index::{ColdIndex, ColdIndexConfig, ColdIndexStats};
pub use definitions::{ChainIndex, EntrySlot, HashIndex, IndexBusy, KeyHash};
pub use mem_index::MemIndex;
pub use split::{Split, SplitChains};
