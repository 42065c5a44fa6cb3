//! What a caller sees of an operation ([`Status`]) and what can go wrong ([`Error`]).
//!
//! `Status` is the public outcome of a context operation, as in FASTER's `Status`. Internal
//! outcomes of one attempt (retry now, retry later, record on disk) never leak out: they are
//! `ops::Step` values that the drivers in `ops::pending` resolve.

use std::io;
use std::path::PathBuf;

/// Outcome of a context operation (`RsKv::read`, `RsKv::upsert`, a `Session` operation, ...),
/// inside a [`Result`]: `Ok(Status::Ok)`, `Ok(Status::NotFound)`, `Ok(Status::Pending)`, or the
/// [`Error`]. A `Result<Status>` compares equal to a `Status` when it is `Ok` of it, so
/// `kv.read(&mut ctx) == Status::Ok` reads as it did when the status came alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
#[non_exhaustive]
pub enum Status {
    /// The operation completed; for a read, the value was handed to the context.
    Ok,
    /// The key has no live value (never written, or deleted).
    NotFound,
    /// The operation is waiting for the disk. Only a [`Session`](crate::Session) operation returns
    /// this; the session owns the context and finishes it in `complete_pending`.
    Pending,
}

impl PartialEq<Status> for Result<Status> {
    fn eq(&self, other: &Status) -> bool {
        matches!(self, Ok(s) if s == other)
    }
}

impl PartialEq<Result<Status>> for Status {
    fn eq(&self, other: &Result<Status>) -> bool {
        other == self
    }
}

/// Errors of RsKv. Every failure a caller can meet is one of these, never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what RsKv was doing when it happened.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What RsKv was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The data directory (or a file in it) could not be created or opened.
    #[error("cannot use path {path}: {source}")]
    Path {
        /// The path in question.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration `{field}`: {reason}")]
    Config {
        /// The field of [`Config`](crate::Config) at fault.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A record (header, key and value) does not fit into one log page.
    #[error("record of {size} bytes does not fit a log page of {page_size} bytes")]
    RecordTooLarge {
        /// Bytes the record needs.
        size: usize,
        /// Bytes of one log page.
        page_size: usize,
    },
    /// A key or value could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// Bytes read back from the disk are not a valid record.
    #[error("corrupt record at log address {address:#x}: {reason}")]
    Corrupt {
        /// Logical log address of the record.
        address: u64,
        /// What was wrong.
        reason: String,
    },
    /// An earlier write of a log page to the device failed; the store refuses work that needs
    /// that page on the device (opening a new log page, a checkpoint) instead of risking silent
    /// data loss. Reads keep working. Once the device takes writes again (a full disk has room
    /// again), the maintenance thread's next pass, the next checkpoint and, in R2Kv, the next
    /// compaction pass write the failed pages again and, when they succeed, the store works on;
    /// or reopen (recover) it.
    #[error("store is poisoned by an earlier I/O failure: {0}")]
    Poisoned(String),
    /// The log memory is full and the device cannot take pages (a `NullDisk` store).
    #[error("log memory of {memory} bytes is full and the device keeps nothing (NullDisk)")]
    LogFull {
        /// Bytes of log memory.
        memory: usize,
    },
    /// The index cannot allocate another overflow bucket: its share of
    /// [`Config::memory_budget`](crate::Config::memory_budget) is used up, or all 2^26 overflow
    /// buckets are in use.
    #[error("hash index is full: no overflow bucket left (its share of the memory budget is used up, or 2^26 are in use)")]
    IndexFull,
    /// A checkpoint file is missing, truncated, corrupt, foreign or from another format, or no
    /// usable checkpoint exists.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file (or directory) at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint was written by a store of other key or value types than the one
    /// recovering it (see `Config::type_names` for a renamed type).
    #[error(
        "checkpoint {path} holds {what} type `{stored}`, not `{expected}` (recover it with the \
         types it was written with, or name them with Config::type_names if the type was renamed)"
    )]
    TypeMismatch {
        /// The checkpoint's metadata file.
        path: PathBuf,
        /// "key" or "value".
        what: &'static str,
        /// The type name the checkpoint records.
        stored: String,
        /// The type name of the recovering store.
        expected: String,
    },
    /// A checkpoint or index growth is already running.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// More threads use the store at once than its epoch table has slots for.
    #[error("too many threads: the epoch table has {0} slots")]
    TooManyThreads(usize),
    /// An internal invariant of RsKv did not hold (a bug in RsKv), reported instead of a
    /// panic; names the invariant. Whether the operation took effect is unknown.
    #[error("internal error, a bug in RsKv: {0}")]
    Internal(&'static str),
}

/// Result type of RsKv.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
