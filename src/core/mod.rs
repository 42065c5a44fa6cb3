//! Core mechanisms: addresses, records, epochs, allocation, status.
pub mod alloc;
pub mod status;
