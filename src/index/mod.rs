//! The hash index: 64-byte buckets of tagged entries pointing into the log.
pub mod definitions;
pub mod hash_bucket;
pub mod hash_table;
pub(crate) mod key_hash;
pub mod mem_index;
pub mod split;

pub use definitions::{EntrySlot, HashIndex, IndexBusy, KeyHash};
pub use mem_index::MemIndex;
pub use split::{Split, SplitChains};
