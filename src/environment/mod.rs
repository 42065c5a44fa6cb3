//! Operating-system files: opening with O_DIRECT where possible, aligned positional I/O, and
//! atomic replacement of small metadata files.
#![forbid(unsafe_code)]
pub mod file;
