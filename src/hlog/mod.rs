//! The hybrid log.
pub mod persistent_memory_malloc;

pub use persistent_memory_malloc::{AllocError, ChainStep, HybridLog, LogMarkers, RecordBytes};
