//! Core mechanisms: addresses, records, epochs, allocation, encoding, status.
pub mod address;
pub mod alloc;
pub mod checkpoint;
pub mod codec;
pub mod light_epoch;
pub mod malloc_fixed_page_size;
pub mod record;
pub mod status;
