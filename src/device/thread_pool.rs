//! Portable I/O engine: a few threads doing blocking `pread`/`pwrite` for queued requests.
//!
//! Invariants:
//! - Every request sent to the pool is completed exactly once, also during shutdown: dropping the
//!   pool closes the queue, and each worker drains what is left before it exits.
//! - Workers never block on anything but the queue and the file system.

use std::io;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::segment::{IoKind, IoRequest};

/// A fixed set of I/O threads fed by one queue.
pub(crate) struct ThreadPool {
    tx: Option<Sender<IoRequest>>,
    threads: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// Starts `threads` (at least one) workers.
    ///
    /// # Errors
    /// The error of spawning a thread; the workers already started are stopped again.
    pub(crate) fn start(threads: usize) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<IoRequest>();
        let mut pool = ThreadPool {
            tx: Some(tx),
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rskv-io-{i}"))
                .spawn(move || worker(&rx))?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Queues a request; if the workers are gone (only possible after a panic outside a callback),
    /// fails it at once instead of losing it.
    pub(crate) fn submit(&self, req: IoRequest) {
        let Some(tx) = &self.tx else {
            req.complete(Err(stopped()));
            return;
        };
        if let Err(crossbeam_channel::SendError(req)) = tx.send(req) {
            req.complete(Err(stopped()));
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // Closing the queue lets the workers finish what is queued, then exit.
        self.tx = None;
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // A callback may drop the last handle of the disk on a worker; joining ourselves would
            // deadlock, so that worker is left to exit on its own once the queue is drained.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("device I/O threads have stopped")
}

fn worker(rx: &Receiver<IoRequest>) {
    while let Ok(req) = rx.recv() {
        execute(req);
    }
}

fn execute(mut req: IoRequest) {
    let result = match req.kind {
        IoKind::Read => {
            // SAFETY: the request's contract: `buf` is valid for writes of `len` bytes and nobody
            // else touches it until the request is completed; `len <= isize::MAX` and `buf` is
            // non-null (checked when the request was made).
            let buf = unsafe { std::slice::from_raw_parts_mut(req.buf, req.len) };
            match req.segment.file.read_at(buf, req.file_offset) {
                Ok(n) => {
                    req.zero_tail(n);
                    Ok(req.len)
                }
                Err(e) => Err(e),
            }
        }
        IoKind::Write => {
            // SAFETY: the request's contract: `buf` is valid for reads of `len` bytes and not
            // modified until the request is completed; non-null and `len <= isize::MAX` as above.
            let buf = unsafe { std::slice::from_raw_parts(req.buf.cast_const(), req.len) };
            req.segment
                .file
                .write_at(buf, req.file_offset)
                .map(|()| req.len)
        }
    };
    req.complete(result);
}
