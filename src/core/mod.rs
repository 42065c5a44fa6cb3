//! Core mechanisms: addresses, records, epochs, allocation, encoding, status.
//!
//! Only [`status`] is public API (the seed's `rskv::core::status::Status`); `light_epoch` and
//! `alloc` are public for the loom model and the benchmark only (hidden from the docs).
pub(crate) mod address;
#[doc(hidden)]
pub mod alloc;
pub(crate) mod checkpoint;
pub(crate) mod codec;
#[doc(hidden)]
pub mod light_epoch;
pub(crate) mod lock_cycle;
pub(crate) mod malloc_fixed_page_size;
pub(crate) mod record;
pub mod status;
