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

pub mod config;
pub mod core;
pub mod device;
pub mod environment;
pub mod hlog;
pub mod index;
pub mod ops;
pub mod rskv_core;
pub mod session;
pub(crate) mod sync;

pub use crate::config::{Config, Resolved};
pub use crate::core::address::Address;
pub use crate::core::checkpoint::{CheckpointInfo, CheckpointKind, CommitPoint, LogMode, Token};
pub use crate::core::codec::{Codec, Raw};
pub use crate::core::status::{Error, Result, Status};
pub use crate::ops::counters::OpStats;
pub use crate::ops::recover::RecoveryInfo;
pub use crate::rskv_core::{
    hash_key, CheckpointHandle, DeleteContext, ReadContext, RmwContext, RsKv, Stats, UpsertContext,
};
pub use crate::session::{SerialNum, Session, SessionId};
