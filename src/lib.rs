//! RsKv: Microsoft FASTER rewritten in Rust.
//!
//! A concurrent key-value store for point lookups and heavy updates over data larger than
//! memory: a latch-free hash index of 64-byte buckets over a HybridLog whose mutable tail is
//! updated in place, whose read-only part is copied on update, and whose past lives on disk.
//!
//! ```
//! use rskv::{Config, RsKv};
//! use rskv::device::file_system_disk::FileSystemDisk;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let disk = FileSystemDisk::new(dir.path()).unwrap();
//! let kv: RsKv<u64, String, _> = RsKv::open(Config::new().log_memory_size(1 << 20), disk).unwrap();
//! kv.insert(&1, &"one".to_string()).unwrap();
//! assert_eq!(kv.get(&1).unwrap().as_deref(), Some("one"));
//! assert_eq!(kv.rmw(&7, |old: Option<String>| old.unwrap_or_default() + "x").unwrap(), "x");
//! kv.remove(&1).unwrap();
//! assert_eq!(kv.get(&1).unwrap(), None);
//! ```
#![warn(unsafe_op_in_unsafe_fn)]

//!
//! # Public surface
//! The store ([`RsKv`], [`rskv_core`] with FASTER's context traits), its [`Config`], [`Error`]
//! and [`Status`], sessions, checkpoints, and the devices ([`device`]: `FileSystemDisk`,
//! `NullDisk`, `FaultyDisk` for tests). The engine (epoch, index, hybrid log, operations) is
//! internal; `core::light_epoch`, `core::alloc` and `index` are public only for the loom model,
//! the benchmark's memory probe, the compile-fail examples of the index's guard rule and the
//! cold index's tests (`tests/cold_index.rs`; R2Kv will use it from inside the crate), and
//! hidden from the docs.

pub(crate) mod config;
pub(crate) mod contexts;
pub mod core;
pub mod device;
pub(crate) mod environment;
pub(crate) mod hlog;
#[doc(hidden)]
pub mod index;
pub(crate) mod maintenance;
pub(crate) mod ops;
pub mod r2;
pub mod rskv_core;
pub(crate) mod session;
pub(crate) mod sync;

pub use crate::config::{
    CacheAdmission, Config, MemoryBudget, MemorySplit, Resolved, MEMORY_BUDGET_SLACK,
};
pub use crate::core::address::Address;
pub use crate::core::checkpoint::{CheckpointInfo, CheckpointKind, CommitPoint, LogMode, Token};
pub use crate::core::codec::{Codec, Raw};
pub use crate::core::status::{Error, Result, Status};
pub use crate::device::file_system_disk::FileSystemDisk;
pub use crate::device::null_disk::NullDisk;
pub use crate::device::Disk;
pub use crate::hlog::read_cache::ReadCacheStats;
pub use crate::hlog::LogMarkers;
pub use crate::index::cold_index::{ColdIndexConfig, ColdIndexStats};
pub use crate::ops::compact::{Compaction, LogCompaction};
pub use crate::ops::counters::OpStats;
pub use crate::ops::recover::RecoveryInfo;
pub use crate::ops::split::SplitStats;
pub use crate::ops::truncate::{CompactionTotals, Truncation};
pub use crate::r2::{PassTotals, R2Config, R2Kv, R2Stats};
pub use crate::rskv_core::{
    hash_key, CheckpointHandle, DeleteContext, Iter, ReadContext, RmwContext, RsKv, Stats,
    UpsertContext,
};
pub use crate::session::{SerialNum, Session, SessionId};
