//! Linux io_uring engine: one thread owns a ring and drives every request through it.
//!
//! Invariants:
//! - Only the engine thread touches the ring. Requests reach it over a channel; it keeps at most
//!   `sq_entries` of them in the kernel at once (one slot each, the slot number is the SQE's
//!   `user_data`) and queues the rest.
//! - A request stays in its slot, owning its segment `Arc` (hence its file descriptor), from the
//!   moment its SQE is pushed until its CQE is reaped. Its callback runs only after that, so the
//!   kernel never touches a buffer whose owner has been told the I/O is over.
//! - Partial transfers are continued (resubmitted from where they stopped), never reported as
//!   success; a read that meets the end of the file is zero-filled (see [`super::segment`]).
//! - The thread does not spin: it blocks on the channel when nothing is in flight, and in
//!   `io_uring_enter` (waiting for one completion) when it has nothing more to submit. While it
//!   waits there with room for more requests, an eventfd poll sits in the ring and submitters
//!   write the eventfd when they see it waiting, so a new request (say, a read behind a long page
//!   write) never waits for an unrelated completion. (Only a ring broken for good, see
//!   `Driver::fail`, leaves it retrying, yielding the CPU each round.)
//! - Shutdown (dropping the engine) closes the channel; the thread finishes everything queued or
//!   in flight, running all callbacks, before it exits and is joined.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use io_uring::{opcode, types, IoUring, Probe};

use super::segment::{IoKind, IoRequest};

/// Largest transfer put into one SQE. Linux caps a single read/write at a little under 2 GiB
/// anyway; larger requests simply take several rounds.
const MAX_CHUNK: usize = 1 << 30;

/// `user_data` of the eventfd poll (request slots are numbered from 0, far below).
const WAKE_TAG: u64 = u64::MAX;

/// Lets submitters wake the engine thread while it waits in `io_uring_enter`.
struct Waker {
    eventfd: OwnedFd,
    /// The engine thread is (about to be) waiting in the kernel with an eventfd poll armed.
    sleeping: AtomicBool,
}

impl Waker {
    fn new() -> io::Result<Self> {
        // SAFETY: a plain system call without pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// Called after a request was queued. The fence pairs with the one in
    /// `Driver::prepare_wait`: either the driver sees the request in the channel, or we see it
    /// sleeping and wake it.
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local to our eventfd. It can only fail if the
            // counter is near overflow, impossible as the driver resets it on every wake-up.
            let _ =
                unsafe { libc::write(self.eventfd.as_raw_fd(), std::ptr::addr_of!(one).cast(), 8) };
        }
    }

    /// Resets the eventfd counter after a wake-up.
    fn drain(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local; the eventfd is non-blocking, so this
        // returns EAGAIN at once if there is nothing to read.
        let _ = unsafe {
            libc::read(
                self.eventfd.as_raw_fd(),
                std::ptr::addr_of_mut!(count).cast(),
                8,
            )
        };
    }
}

/// Handle of the engine thread.
pub(crate) struct UringEngine {
    tx: Option<Sender<IoRequest>>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl UringEngine {
    /// Creates a ring of `entries` submission entries on a new thread and checks that it really
    /// works (read/write opcodes supported, a no-op round trip succeeds).
    ///
    /// # Errors
    /// Why io_uring cannot be used: `ENOSYS`/`EPERM` under seccomp or `io_uring_disabled`, an old
    /// kernel, or a failure to spawn the thread.
    pub(crate) fn start(entries: u32) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<IoRequest>();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<io::Result<()>>(1);
        let waker = Arc::new(Waker::new()?);
        let driver_waker = Arc::clone(&waker);
        let thread = std::thread::Builder::new()
            .name("rskv-uring".into())
            .spawn(move || match setup(entries) {
                Ok(ring) => {
                    let _ = ready_tx.send(Ok(()));
                    Driver::new(ring, driver_waker).run(&rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })?;
        let outcome = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("io_uring thread exited during setup")));
        match outcome {
            Ok(()) => Ok(Self {
                tx: Some(tx),
                waker,
                thread: Some(thread),
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// Queues a request; if the engine thread is gone, fails the request at once.
    pub(crate) fn submit(&self, req: IoRequest) {
        let Some(tx) = &self.tx else {
            req.complete(Err(stopped()));
            return;
        };
        match tx.send(req) {
            Ok(()) => self.waker.notify(),
            Err(crossbeam_channel::SendError(req)) => req.complete(Err(stopped())),
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            // If a callback dropped the last handle of the disk, we are on the engine thread
            // itself: it exits by itself once the queue is drained, joining would deadlock.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("device io_uring thread has stopped")
}

fn setup(entries: u32) -> io::Result<IoUring> {
    let mut ring = IoUring::new(entries)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if [
        opcode::Read::CODE,
        opcode::Write::CODE,
        opcode::PollAdd::CODE,
    ]
    .iter()
    .any(|&code| !probe.is_supported(code))
    {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's io_uring lacks the READ, WRITE or POLL_ADD opcode",
        ));
    }
    // Some sandboxes let io_uring_setup through but not io_uring_enter; find out now rather than
    // on the first page flush.
    let nop = opcode::Nop::new().build().user_data(0);
    // SAFETY: a NOP references no memory or file.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| io::Error::other("fresh io_uring has a full submission queue"))?;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let result = ring.completion().next().map(|cqe| cqe.result());
    match result {
        Some(res) if res >= 0 => Ok(ring),
        Some(res) => Err(io::Error::from_raw_os_error(-res)),
        None => Err(io::Error::other("io_uring NOP produced no completion")),
    }
}

/// A request and how much of it is done.
struct Op {
    req: IoRequest,
    done: usize,
}

/// State of the engine thread.
struct Driver {
    ring: IoUring,
    waker: Arc<Waker>,
    /// The eventfd poll is in the ring.
    poll_armed: bool,
    /// False once the eventfd poll failed: then the driver just waits for completions.
    poll_works: bool,
    /// Requests in the kernel, by slot (= SQE user_data). One SQ entry fewer than the ring has,
    /// leaving room for the eventfd poll.
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Requests waiting for a slot: new ones, and partial ones to continue.
    ready: VecDeque<Op>,
    /// Reaped (user_data, result) pairs, reused between rounds.
    reaped: Vec<(u64, i32)>,
    /// Set when `io_uring_enter` failed in a way that is not transient: the ring cannot be trusted
    /// to take new work, so new requests fail at once.
    broken: Option<String>,
}

impl Driver {
    fn new(ring: IoUring, waker: Arc<Waker>) -> Self {
        let cap = (ring.params().sq_entries() as usize)
            .saturating_sub(1)
            .max(1);
        Self {
            ring,
            waker,
            poll_armed: false,
            poll_works: true,
            slots: (0..cap).map(|_| None).collect(),
            free: (0..cap).rev().collect(),
            ready: VecDeque::new(),
            reaped: Vec::with_capacity(2 * cap + 2),
            broken: None,
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn accept(&mut self, req: IoRequest) {
        match &self.broken {
            None => self.ready.push_back(Op { req, done: 0 }),
            Some(why) => req.complete(Err(io::Error::other(why.clone()))),
        }
    }

    fn run(mut self, rx: &Receiver<IoRequest>) {
        let mut open = true;
        loop {
            if self.in_flight() == 0 && self.ready.is_empty() {
                if !open {
                    break;
                }
                match rx.recv() {
                    Ok(req) => self.accept(req),
                    Err(_) => open = false,
                }
                continue;
            }
            // Take more work without blocking, but only as much as can go into the ring now.
            while open && self.ready.len() < self.free.len() {
                match rx.try_recv() {
                    Ok(req) => self.accept(req),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.push_ready();
            if self.in_flight() == 0 {
                continue;
            }
            let want = self.prepare_wait(rx, open);
            let result = self.ring.submit_and_wait(want);
            self.waker.sleeping.store(false, Ordering::Relaxed);
            match result {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => self.fail(&e),
            }
            self.reap();
        }
    }

    /// How many completions `io_uring_enter` should wait for: none if more can be submitted right
    /// away, else one. When waiting with free slots, arms the eventfd poll and announces the
    /// sleep, so that a new request wakes the thread.
    fn prepare_wait(&mut self, rx: &Receiver<IoRequest>, open: bool) -> usize {
        if self.free.is_empty() || self.broken.is_some() {
            // No room for more requests: only a completion can let us make progress.
            return 1;
        }
        if !self.ready.is_empty() {
            return 0;
        }
        if !open || !self.poll_works {
            // No new requests can come (or no way to hear of them): wait for completions.
            return 1;
        }
        if !self.poll_armed {
            let poll = opcode::PollAdd::new(
                types::Fd(self.waker.eventfd.as_raw_fd()),
                libc::POLLIN as u32,
            )
            .build()
            .user_data(WAKE_TAG);
            // SAFETY: a poll references no memory, only the eventfd, which the kernel holds a
            // reference to while the poll is pending (and `self.waker` keeps open anyway).
            if unsafe { self.ring.submission().push(&poll) }.is_err() {
                return 1;
            }
            self.poll_armed = true;
        }
        self.waker.sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `Waker::notify`.
        fence(Ordering::SeqCst);
        if rx.is_empty() {
            1
        } else {
            self.waker.sleeping.store(false, Ordering::Relaxed);
            0
        }
    }

    /// Moves waiting requests into free slots and the submission queue.
    fn push_ready(&mut self) {
        let mut sq = self.ring.submission();
        while let Some(&slot) = self.free.last() {
            let Some(op) = self.ready.pop_front() else {
                break;
            };
            let entry = sqe(&op, slot);
            // SAFETY: the SQE points into the request's buffer, which its contract keeps valid
            // (and exclusively ours, for a read) until the request is completed, and at its
            // segment's fd, kept open by the Arc the request owns. The request moves into
            // `slots[slot]` and is completed only after the kernel's CQE for this SQE is reaped.
            if unsafe { sq.push(&entry) }.is_err() {
                self.ready.push_front(op);
                break;
            }
            self.free.pop();
            self.slots[slot] = Some(op);
        }
    }

    fn reap(&mut self) {
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        for &(user_data, result) in &reaped {
            if user_data == WAKE_TAG {
                self.poll_armed = false;
                if result < 0 {
                    // Re-arming a failing poll would turn every wait into a busy loop.
                    self.poll_works = false;
                }
                self.waker.drain();
                continue;
            }
            let Some(slot) = usize::try_from(user_data).ok() else {
                continue;
            };
            let Some(op) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            if let Some(op) = advance(op, result) {
                if let Some(why) = &self.broken {
                    op.req.complete(Err(io::Error::other(why.clone())));
                } else {
                    // Continue partial requests before starting new ones.
                    self.ready.push_front(op);
                }
            }
        }
        reaped.clear();
        self.reaped = reaped;
    }

    /// The ring refused `io_uring_enter` for good. Requests not yet given to the kernel fail now;
    /// those already in slots keep their buffers until their completions are reaped, since the
    /// kernel may still be using them.
    fn fail(&mut self, e: &io::Error) {
        let why = format!("io_uring submission failed: {e}");
        for op in self.ready.drain(..) {
            op.req.complete(Err(io::Error::other(why.clone())));
        }
        if self.broken.is_none() {
            self.broken = Some(why);
        } else {
            // Still failing while we wait for earlier completions: let other threads run rather
            // than retrying in a tight loop.
            std::thread::yield_now();
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ENOMEM)
    )
}

/// The SQE for the rest of `op`, tagged with `slot`.
fn sqe(op: &Op, slot: usize) -> io_uring::squeue::Entry {
    let req = &op.req;
    let chunk = (req.len - op.done).min(MAX_CHUNK) as u32;
    let fd = types::Fd(req.segment.file.as_raw_fd());
    let offset = req.file_offset + op.done as u64;
    // SAFETY: done < len, so the pointer stays inside the request's buffer.
    let ptr = unsafe { req.buf.add(op.done) };
    let entry = match req.kind {
        IoKind::Read => opcode::Read::new(fd, ptr, chunk).offset(offset).build(),
        IoKind::Write => opcode::Write::new(fd, ptr.cast_const(), chunk)
            .offset(offset)
            .build(),
    };
    entry.user_data(slot as u64)
}

/// Applies a completion to `op`: completes it, or returns it if it must be resubmitted.
fn advance(mut op: Op, result: i32) -> Option<Op> {
    if result < 0 {
        let errno = -result;
        if errno == libc::EINTR || errno == libc::EAGAIN {
            return Some(op);
        }
        op.req.complete(Err(io::Error::from_raw_os_error(errno)));
        return None;
    }
    // The kernel never reports more than asked; the clamp keeps a bogus value from overrunning.
    let n = (result as usize).min(op.req.len - op.done);
    let eof = match op.req.kind {
        IoKind::Read => {
            n == 0
                || (op.req.segment.file.is_direct() && n % op.req.segment.file.direct_block() != 0)
        }
        IoKind::Write => {
            if n == 0 {
                op.req.complete(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the file accepted no bytes",
                )));
                return None;
            }
            false
        }
    };
    op.done += n;
    if eof {
        op.req.zero_tail(op.done);
    }
    if eof || op.done == op.req.len {
        let len = op.req.len;
        op.req.complete(Ok(len));
        None
    } else {
        Some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::AlignedBuf;
    use crate::device::file_system_disk::tests::skip_unless_ci;
    use crate::device::segment::Segment;
    use crate::environment::file::File;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    type Slot = Arc<Mutex<Vec<io::Result<usize>>>>;

    fn op(kind: IoKind, direct: bool, buf: &mut AlignedBuf) -> (Op, Slot, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = File::open(&dir.path().join("log.0"), direct, true).unwrap();
        let segment = Arc::new(Segment::new(file, 0));
        let slot: Slot = Arc::default();
        let s = Arc::clone(&slot);
        // SAFETY: `buf` outlives the request in every test below, which completes it in place.
        let req = unsafe {
            IoRequest::new(
                kind,
                segment,
                0,
                buf.as_mut_ptr(),
                buf.len(),
                Box::new(move |r| s.lock().unwrap().push(r)),
            )
        };
        (Op { req, done: 0 }, slot, dir)
    }

    fn results(slot: &Slot) -> Vec<Result<usize, Option<i32>>> {
        slot.lock()
            .unwrap()
            .iter()
            .map(|r| r.as_ref().map(|n| *n).map_err(io::Error::raw_os_error))
            .collect()
    }

    #[test]
    fn errors_complete_with_the_errno() {
        let mut buf = AlignedBuf::zeroed(8192, 4096);
        let (o, slot, _dir) = op(IoKind::Write, false, &mut buf);
        assert!(advance(o, -libc::EIO).is_none());
        assert_eq!(results(&slot), vec![Err(Some(libc::EIO))]);
    }

    #[test]
    fn interrupted_ops_are_resubmitted() {
        let mut buf = AlignedBuf::zeroed(8192, 4096);
        let (o, slot, _dir) = op(IoKind::Read, false, &mut buf);
        let o = advance(o, -libc::EINTR).expect("resubmitted");
        assert_eq!(o.done, 0);
        let o = advance(o, -libc::EAGAIN).expect("resubmitted");
        assert!(results(&slot).is_empty());
        drop(o);
    }

    #[test]
    fn short_write_continues_and_zero_write_fails() {
        let mut buf = AlignedBuf::zeroed(8192, 4096);
        let (o, slot, _dir) = op(IoKind::Write, false, &mut buf);
        let o = advance(o, 4096).expect("the rest is resubmitted");
        assert_eq!(o.done, 4096);
        assert!(results(&slot).is_empty(), "partial write reported");
        assert!(advance(o, 0).is_none());
        let r = slot.lock().unwrap().pop().unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WriteZero);
        // Dirty even though it failed: some bytes did reach the file.
    }

    #[test]
    fn write_completes_when_all_is_written() {
        let mut buf = AlignedBuf::zeroed(8192, 4096);
        let (o, slot, _dir) = op(IoKind::Write, false, &mut buf);
        let seg = Arc::clone(&o.req.segment);
        let o = advance(o, 100).unwrap();
        assert!(advance(o, 8092).is_none());
        assert_eq!(results(&slot), vec![Ok(8192)]);
        assert!(seg.dirty.load(std::sync::atomic::Ordering::Acquire));
    }

    #[test]
    fn read_at_eof_zero_fills() {
        let mut buf = AlignedBuf::zeroed(8192, 4096);
        buf.as_mut_slice().fill(0xAA);
        let (o, slot, _dir) = op(IoKind::Read, false, &mut buf);
        // Buffered: a short count is followed by a retry, and 0 marks the end.
        let o = advance(o, 100).expect("continued");
        assert!(advance(o, 0).is_none());
        assert_eq!(results(&slot), vec![Ok(8192)]);
        assert!(buf.as_slice()[..100].iter().all(|&b| b == 0xAA));
        assert!(buf.as_slice()[100..].iter().all(|&b| b == 0));
    }

    #[test]
    fn direct_read_with_misaligned_count_is_eof() {
        let mut buf = AlignedBuf::zeroed(8192, 4096);
        buf.as_mut_slice().fill(0xAA);
        let (o, slot, _dir) = op(IoKind::Read, true, &mut buf);
        if !o.req.segment.file.is_direct() {
            skip_unless_ci("no O_DIRECT here");
            return;
        }
        assert!(advance(o, 1000).is_none());
        assert_eq!(results(&slot), vec![Ok(8192)]);
        assert!(buf.as_slice()[1000..].iter().all(|&b| b == 0));
    }

    /// A request that stays in the kernel (a read of an empty FIFO) must not hold up requests
    /// submitted after it: the eventfd wakes the thread out of its wait.
    #[test]
    fn new_requests_are_not_stuck_behind_a_pending_one() {
        let engine = match UringEngine::start(8) {
            Ok(e) => e,
            Err(e) => {
                skip_unless_ci(format_args!("io_uring unavailable: {e}"));
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // O_RDWR on a FIFO does not block on Linux.
        let (fifo_file, _) = File::open(&fifo, false, false).unwrap();
        let fifo_seg = Arc::new(Segment::new(fifo_file, 0));

        let mut stuck_buf = AlignedBuf::zeroed(4096, 4096);
        let (stuck_tx, stuck_rx) = crossbeam_channel::bounded(1);
        // SAFETY: `stuck_buf` outlives the request: we wait for its callback below.
        let stuck = unsafe {
            IoRequest::new(
                IoKind::Read,
                fifo_seg,
                0,
                stuck_buf.as_mut_ptr(),
                4096,
                Box::new(move |r| {
                    let _ = stuck_tx.send(r);
                }),
            )
        };
        engine.submit(stuck);
        // Give the engine time to put the FIFO read into the kernel and go to sleep waiting on
        // it (only the test waits; without the wake-up the next read would hang).
        std::thread::sleep(std::time::Duration::from_millis(50));

        let (file, _) = File::open(&dir.path().join("log.0"), false, true).unwrap();
        file.write_at(&[3u8; 4096], 0).unwrap();
        let seg = Arc::new(Segment::new(file, 0));
        let mut buf = AlignedBuf::zeroed(4096, 4096);
        let (tx, rx) = crossbeam_channel::bounded(1);
        // SAFETY: `buf` outlives the request: we wait for its callback below.
        let req = unsafe {
            IoRequest::new(
                IoKind::Read,
                seg,
                0,
                buf.as_mut_ptr(),
                4096,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
        };
        engine.submit(req);
        let r = rx.recv_timeout(std::time::Duration::from_secs(10));
        let stuck_early = stuck_rx.try_recv().is_ok();

        // Release the FIFO read before asserting anything: the engine's drop waits for it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .unwrap()
            .write_all(&[9u8; 4096])
            .unwrap();
        let stuck_result = stuck_rx.recv_timeout(std::time::Duration::from_secs(10));

        assert_eq!(r.expect("read stuck behind the FIFO read").unwrap(), 4096);
        assert!(buf.as_slice().iter().all(|&b| b == 3));
        assert!(!stuck_early, "FIFO read finished without data");
        assert_eq!(stuck_result.unwrap().unwrap(), 4096);
        assert!(stuck_buf.as_slice().iter().all(|&b| b == 9));
        drop(engine);
    }

    #[test]
    fn bogus_oversized_count_is_clamped() {
        let mut buf = AlignedBuf::zeroed(4096, 4096);
        let (o, slot, _dir) = op(IoKind::Read, false, &mut buf);
        assert!(advance(o, 1 << 20).is_none());
        assert_eq!(results(&slot), vec![Ok(4096)]);
    }
}
