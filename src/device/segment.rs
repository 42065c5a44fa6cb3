//! What the I/O engines of [`FileSystemDisk`](super::file_system_disk::FileSystemDisk) work on:
//! open segment files and single-segment I/O requests.
//!
//! Invariants:
//! - An [`IoRequest`] lies inside one segment file and owns an `Arc` of it, so the file descriptor
//!   stays open until the request is completed, even if the segment is truncated meanwhile.
//! - [`IoRequest::complete`] is the only way a request ends; it consumes the request, so its
//!   callback runs exactly once. A completed write marks its segment dirty *before* the callback
//!   runs, which is what lets `flush` promise durability for every write whose callback has run.
//! - A read that meets the end of the segment file fills the rest of the buffer with zeros and
//!   reports the full length: the log never distinguishes "not written" from "written zeros".

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use super::IoCallback;
use crate::environment::file::File;

/// One open segment file `log.<index>`.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: File,
    pub(crate) index: u64,
    /// A write completed since the last successful sync.
    pub(crate) dirty: AtomicBool,
    /// A sync failed: the kernel may have dropped written pages, so no later sync can vouch for
    /// them. Sticky until the segment is truncated away.
    pub(crate) sync_failed: AtomicBool,
}

impl Segment {
    pub(crate) fn new(file: File, index: u64) -> Self {
        Self {
            file,
            index,
            dirty: AtomicBool::new(false),
            sync_failed: AtomicBool::new(false),
        }
    }
}

/// Direction of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoKind {
    Read,
    Write,
}

/// A read or write of `len` bytes at `file_offset` of one segment file.
pub(crate) struct IoRequest {
    pub(crate) kind: IoKind,
    pub(crate) segment: std::sync::Arc<Segment>,
    pub(crate) file_offset: u64,
    /// For writes the engines only read through it; it is `*mut` so one type serves both.
    pub(crate) buf: *mut u8,
    pub(crate) len: usize,
    /// For a read: bytes at the start of `buf` to zero after a successful read (the part below
    /// the truncation point, which must read as zeros although the file still holds it).
    zero_prefix: usize,
    callback: IoCallback,
}

// SAFETY: the raw buffer pointer is the only non-Send part. The callers of `Disk::read_async` /
// `Disk::write_async` promise that the buffer stays valid, and (for reads) is not accessed by anyone
// else, until the callback has run; the request is handed to exactly one I/O thread, which is then
// the only user of the pointer until it completes the request.
unsafe impl Send for IoRequest {}

impl IoRequest {
    /// # Safety
    /// `buf` must be valid for `len` bytes (reads of it for a write, writes for a read) until
    /// `callback` has run, and for a read nobody else may access it meanwhile.
    pub(crate) unsafe fn new(
        kind: IoKind,
        segment: std::sync::Arc<Segment>,
        file_offset: u64,
        buf: *mut u8,
        len: usize,
        callback: IoCallback,
    ) -> Self {
        Self {
            kind,
            segment,
            file_offset,
            buf,
            len,
            zero_prefix: 0,
            callback,
        }
    }

    /// Makes a successful read zero its first `n` bytes.
    pub(crate) fn with_zero_prefix(mut self, n: usize) -> Self {
        self.zero_prefix = n.min(self.len);
        self
    }

    /// Fills `buf[from..len]` with zeros: the part of a read beyond the end of the file.
    pub(crate) fn zero_tail(&mut self, from: usize) {
        if from < self.len && self.kind == IoKind::Read {
            // SAFETY: by the request's contract `buf` is valid for writes of `len` bytes and owned
            // by this request until completion; `from < len`.
            unsafe { std::ptr::write_bytes(self.buf.add(from), 0, self.len - from) }
        }
    }

    /// Ends the request: marks the segment dirty for a write, then runs the callback.
    pub(crate) fn complete(self, result: io::Result<usize>) {
        match self.kind {
            IoKind::Write => {
                // Even a failed write may have changed the file, so flush must not skip it.
                self.segment.dirty.store(true, Ordering::Release);
            }
            IoKind::Read if result.is_ok() && self.zero_prefix > 0 => {
                // SAFETY: `zero_prefix <= len` and `buf` is valid for writes of `len` bytes and
                // ours until the callback below runs.
                unsafe { std::ptr::write_bytes(self.buf, 0, self.zero_prefix) }
            }
            IoKind::Read => {}
        }
        run_callback(self.callback, result);
    }
}

/// Runs a completion callback so that a panicking callback cannot kill the I/O thread that runs it
/// (which would strand every other request queued there). The panic message is still printed by
/// the panic hook.
pub(crate) fn run_callback(callback: IoCallback, result: io::Result<usize>) {
    let _ = catch_unwind(AssertUnwindSafe(move || callback(result)));
}
