//! The hybrid log.
pub mod admission;
pub mod persistent_memory_malloc;
pub mod read_cache;

pub use persistent_memory_malloc::{AllocError, ChainStep, HybridLog, LogMarkers, RecordBytes};
