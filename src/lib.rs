//! RsKv: Microsoft FASTER rewritten in Rust.
#![warn(unsafe_op_in_unsafe_fn)]

pub mod core;
pub mod device;
pub mod environment;
pub mod index;
pub(crate) mod sync;

pub use crate::core::status::{Error, Result, Status};
