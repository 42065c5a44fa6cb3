//! A device wrapper that injects failures, for testing how the store copes with a failing disk.
//!
//! # Knobs, and who shares them
//! The knobs (full disk, failing reads and flushes, a torn write, held read completions) and the
//! counters of one device live in a [`Faults`]: a cheap handle to state shared by every clone.
//! A [`FaultyDisk`] has one ([`FaultyDisk::faults`]); its own methods of the same names act on
//! it. Each sub-device ([`SubDevice::sub_device`]) gets the knobs its parent keeps for its
//! name, so a test can reach the devices a store opens for itself (R2Kv's `cold` and
//! `cold-index`, see `crate::r2`) with [`FaultyDisk::sub_device_faults`], before or after the
//! store opened them.
//!
//! # Invariants
//! - Every knob is an atomic, so tests may flip them from any thread while I/O runs.
//! - One [`Faults`] per name and parent: every sub-device opened under a name, and every handle
//!   [`FaultyDisk::sub_device_faults`] returns for it, share its knobs and counters for as long
//!   as the parent (or any of them) lives, also across `remove_sub_device` and a reopen of the
//!   sub-device. Names nest: a sub-device of a sub-device has knobs of its own under that one.
//! - A device's knobs act on its own I/O only: a fault set on the parent does not reach its
//!   sub-devices, and [`Faults::heal`] heals one device (heal each one a test broke).
//! - An injected failure never reaches the inner device (except the first half of a torn
//!   write), and every callback still runs exactly once. The counters count calls (failed ones
//!   included), not bytes. Held read completions ([`Faults::hold_reads_until`]) run when enough
//!   reads are in flight together or on [`Faults::release_reads`], never twice and never lost.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Disk, IoCallback, SubDevice};
use crate::core::alloc::align_down;

/// Write budget meaning "no limit".
const UNLIMITED: u64 = u64::MAX;

/// Wraps a [`Disk`] and fails its operations on demand.
#[derive(Debug)]
pub struct FaultyDisk<D: Disk> {
    inner: D,
    faults: Faults,
}

/// The fault knobs and counters of one device (a [`FaultyDisk`] or a sub-device of one).
/// Clones share them (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Knobs>);

/// What a [`Faults`] shares.
#[derive(Debug)]
struct Knobs {
    /// Writes still allowed before they start failing ([`UNLIMITED`]: no limit).
    write_budget: AtomicU64,
    fail_reads: AtomicBool,
    fail_flush: AtomicBool,
    tear_next: AtomicBool,
    writes: AtomicU64,
    reads: AtomicU64,
    flight: Arc<ReadFlight>,
    /// The knobs of the sub-devices, by name.
    subs: Mutex<HashMap<String, Faults>>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            write_budget: AtomicU64::new(UNLIMITED),
            fail_reads: AtomicBool::default(),
            fail_flush: AtomicBool::default(),
            tear_next: AtomicBool::default(),
            writes: AtomicU64::default(),
            reads: AtomicU64::default(),
            flight: Arc::default(),
            subs: Mutex::default(),
        }
    }
}

/// Reads issued and not yet completed, shared with their callbacks.
#[derive(Default)]
struct ReadFlight {
    /// Reads issued whose callback has not run yet.
    now: AtomicU64,
    /// The most reads that were ever in flight together.
    max: AtomicU64,
    /// Completions are held until this many reads are in flight (0: none are held).
    hold_until: AtomicU64,
    held: Mutex<Vec<(IoCallback, io::Result<usize>)>>,
}

impl std::fmt::Debug for ReadFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFlight")
            .field("now", &self.now)
            .field("max", &self.max)
            .field("hold_until", &self.hold_until)
            .finish_non_exhaustive()
    }
}

impl ReadFlight {
    /// Runs every held completion and stops holding.
    fn release(&self) {
        self.hold_until.store(0, Ordering::SeqCst);
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        for (callback, result) in held {
            self.now.fetch_sub(1, Ordering::SeqCst);
            callback(result);
        }
    }

    /// A read's completion: held, or run now.
    fn complete(&self, callback: IoCallback, result: io::Result<usize>) {
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if self.hold_until.load(Ordering::SeqCst) != 0 {
                held.push((callback, result));
                return;
            }
        }
        self.now.fetch_sub(1, Ordering::SeqCst);
        callback(result);
    }
}

/// A sub-device of the inner device, with the knobs this device keeps for `name` (none set
/// until a test sets them).
impl<D: SubDevice> SubDevice for FaultyDisk<D> {
    fn sub_device(&self, name: &str) -> crate::core::status::Result<Self> {
        let inner = self.inner.sub_device(name)?;
        Ok(Self {
            inner,
            faults: self.faults.sub(name),
        })
    }
    fn remove_sub_device(&self, name: &str) -> crate::core::status::Result<()> {
        self.inner.remove_sub_device(name)
    }
}

impl Faults {
    /// The knobs of the sub-device `name` of this device (created, without faults, on first
    /// use; the same ones every later time).
    #[must_use]
    pub fn sub(&self, name: &str) -> Faults {
        self.0
            .subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Lets the next `n` writes through, counted from this call; the (n+1)-th and every later
    /// write fails (with an `ENOSPC`-kind error saying it was injected) without reaching the inner
    /// device. `fail_writes_after(0)` fails every write from now on; `u64::MAX` lifts the limit.
    pub fn fail_writes_after(&self, n: u64) {
        self.0.write_budget.store(n, Ordering::SeqCst);
    }

    /// Makes every read fail (`true`) or pass through again (`false`).
    pub fn fail_reads(&self, fail: bool) {
        self.0.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// Makes every flush fail (`true`) or pass through again (`false`).
    pub fn fail_flush(&self, fail: bool) {
        self.0.fail_flush.store(fail, Ordering::SeqCst);
    }

    /// The next write that is not failed outright writes only its first half (rounded down to the
    /// alignment, so possibly nothing) and then reports an error.
    pub fn tear_next_write(&self) {
        self.0.tear_next.store(true, Ordering::SeqCst);
    }

    /// Removes every fault of this device (not of its sub-devices): unlimited writes, reads and
    /// flushes pass, no pending tear.
    pub fn heal(&self) {
        self.fail_writes_after(UNLIMITED);
        self.fail_reads(false);
        self.fail_flush(false);
        self.0.tear_next.store(false, Ordering::SeqCst);
    }

    /// Write calls so far, including failed ones.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.0.writes.load(Ordering::SeqCst)
    }

    /// Read calls so far, including failed ones.
    #[must_use]
    pub fn reads(&self) -> u64 {
        self.0.reads.load(Ordering::SeqCst)
    }

    /// Holds back read completions until `n` reads are in flight together (then runs them all
    /// and stops holding), or until [`Faults::release_reads`]. A test of whether the store
    /// keeps reads in flight together: a store that waits for each read before issuing the next
    /// waits until the release.
    pub fn hold_reads_until(&self, n: u64) {
        self.0.flight.hold_until.store(n, Ordering::SeqCst);
    }

    /// Runs every held read completion and stops holding.
    pub fn release_reads(&self) {
        self.0.flight.release();
    }

    /// The most reads that have been in flight together.
    #[must_use]
    pub fn max_reads_in_flight(&self) -> u64 {
        self.0.flight.max.load(Ordering::SeqCst)
    }

    /// Takes one write from the budget; false if it is exhausted.
    fn take_write(&self) -> bool {
        self.0
            .write_budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| match b {
                UNLIMITED => Some(b),
                0 => None,
                _ => Some(b - 1),
            })
            .is_ok()
    }
}

impl<D: Disk> FaultyDisk<D> {
    /// Wraps `inner`, initially without any faults.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            faults: Faults::default(),
        }
    }

    /// This device's knobs and counters (shared with the returned handle).
    #[must_use]
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// The knobs of the sub-device `name` ([`SubDevice::sub_device`]), whether or not it was
    /// opened yet: faults set here reach every sub-device opened under that name.
    #[must_use]
    pub fn sub_device_faults(&self, name: &str) -> Faults {
        self.faults.sub(name)
    }

    /// Holds back read completions until `n` reads are in flight together: see
    /// [`Faults::hold_reads_until`].
    pub fn hold_reads_until(&self, n: u64) {
        self.faults.hold_reads_until(n);
    }

    /// Runs every held read completion and stops holding.
    pub fn release_reads(&self) {
        self.faults.release_reads();
    }

    /// The most reads that have been in flight together.
    pub fn max_reads_in_flight(&self) -> u64 {
        self.faults.max_reads_in_flight()
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Fails writes after the next `n`: see [`Faults::fail_writes_after`].
    pub fn fail_writes_after(&self, n: u64) {
        self.faults.fail_writes_after(n);
    }

    /// Makes every read fail (`true`) or pass through again (`false`).
    pub fn fail_reads(&self, fail: bool) {
        self.faults.fail_reads(fail);
    }

    /// Makes every flush fail (`true`) or pass through again (`false`).
    pub fn fail_flush(&self, fail: bool) {
        self.faults.fail_flush(fail);
    }

    /// Tears the next write: see [`Faults::tear_next_write`].
    pub fn tear_next_write(&self) {
        self.faults.tear_next_write();
    }

    /// Removes every fault of this device (its sub-devices keep theirs): see [`Faults::heal`].
    pub fn heal(&self) {
        self.faults.heal();
    }

    /// Write calls so far, including failed ones.
    pub fn writes(&self) -> u64 {
        self.faults.writes()
    }

    /// Read calls so far, including failed ones.
    pub fn reads(&self) -> u64 {
        self.faults.reads()
    }
}

fn injected_write_failure() -> io::Error {
    io::Error::new(
        io::Error::from_raw_os_error(libc::ENOSPC).kind(),
        "injected write failure (FaultyDisk): no space left on device",
    )
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure (FaultyDisk)"))
}

impl<D: Disk> Disk for FaultyDisk<D> {
    fn alignment(&self) -> usize {
        self.inner.alignment()
    }

    fn read_alignment(&self) -> usize {
        self.inner.read_alignment()
    }

    unsafe fn write_async(&self, offset: u64, buf: *const u8, len: usize, callback: IoCallback) {
        let f = &self.faults.0;
        f.writes.fetch_add(1, Ordering::SeqCst);
        if !self.faults.take_write() {
            return callback(Err(injected_write_failure()));
        }
        if !f.tear_next.swap(false, Ordering::SeqCst) {
            // SAFETY: forwarded with the caller's contract unchanged.
            return unsafe { self.inner.write_async(offset, buf, len, callback) };
        }
        let half = align_down(len as u64 / 2, self.inner.alignment() as u64) as usize;
        if half == 0 {
            return callback(Err(injected("torn write")));
        }
        // SAFETY: the first `half` bytes are a prefix of the caller's buffer, whose contract lasts
        // until `callback` runs, which is after the inner write completed.
        unsafe {
            self.inner.write_async(
                offset,
                buf,
                half,
                Box::new(move |_| callback(Err(injected("torn write")))),
            );
        }
    }

    unsafe fn read_async(&self, offset: u64, buf: *mut u8, len: usize, callback: IoCallback) {
        let f = &self.faults.0;
        f.reads.fetch_add(1, Ordering::SeqCst);
        if f.fail_reads.load(Ordering::SeqCst) {
            return callback(Err(injected("read")));
        }
        let flight = f.flight.clone();
        let now = flight.now.fetch_add(1, Ordering::SeqCst) + 1;
        flight.max.fetch_max(now, Ordering::SeqCst);
        let hold = flight.hold_until.load(Ordering::SeqCst);
        let callback: IoCallback = Box::new(move |r| flight.complete(callback, r));
        // SAFETY: forwarded with the caller's contract unchanged: the caller keeps `buf` until
        // its callback runs, and a held callback still runs exactly once, only later.
        unsafe { self.inner.read_async(offset, buf, len, callback) }
        if hold != 0 && now >= hold {
            f.flight.release();
        }
    }

    fn flush(&self) -> io::Result<()> {
        if self.faults.0.fail_flush.load(Ordering::SeqCst) {
            return Err(injected("flush"));
        }
        self.inner.flush()
    }

    fn truncate_before(&self, offset: u64) -> io::Result<()> {
        self.inner.truncate_before(offset)
    }

    fn storage_bytes(&self) -> io::Result<u64> {
        self.inner.storage_bytes()
    }

    fn is_persistent(&self) -> bool {
        self.inner.is_persistent()
    }

    fn describe(&self) -> String {
        format!("faulty ({})", self.inner.describe())
    }

    fn checkpoint_root(&self) -> Option<std::path::PathBuf> {
        self.inner.checkpoint_root()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::AlignedBuf;
    use crate::device::file_system_disk::{Backend, DiskOptions, FileSystemDisk};
    use crate::device::null_disk::NullDisk;
    use std::time::Duration;

    const PAGE: usize = 4096;

    fn write(disk: &dyn Disk, offset: u64, buf: &AlignedBuf) -> io::Result<usize> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        // SAFETY: `buf` outlives the call, which waits for the callback.
        unsafe {
            disk.write_async(
                offset,
                buf.as_ptr(),
                buf.len(),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
        }
        rx.recv_timeout(Duration::from_secs(60)).unwrap()
    }

    fn read(disk: &dyn Disk, offset: u64, len: usize) -> (io::Result<usize>, AlignedBuf) {
        let mut buf = AlignedBuf::zeroed(len, PAGE);
        let (tx, rx) = crossbeam_channel::bounded(1);
        // SAFETY: `buf` outlives the call, which waits for the callback.
        unsafe {
            disk.read_async(
                offset,
                buf.as_mut_ptr(),
                len,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
        }
        let r = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        (r, buf)
    }

    fn filled(len: usize, byte: u8) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(len, PAGE);
        b.as_mut_slice().fill(byte);
        b
    }

    #[test]
    fn writes_fail_exactly_after_the_budget() {
        let disk = FaultyDisk::new(NullDisk::new());
        let page = filled(PAGE, 1);
        write(&disk, 0, &page).unwrap(); // no budget set yet: passes
        disk.fail_writes_after(3);
        for i in 0..3 {
            assert_eq!(
                write(&disk, i * PAGE as u64, &page).unwrap(),
                PAGE,
                "write {i}"
            );
        }
        for _ in 0..2 {
            let err = write(&disk, 0, &page).unwrap_err();
            assert!(err.to_string().contains("injected"), "{err}");
            assert_eq!(
                err.kind(),
                io::Error::from_raw_os_error(libc::ENOSPC).kind()
            );
        }
        assert_eq!(disk.writes(), 6);
        disk.fail_writes_after(u64::MAX);
        write(&disk, 0, &page).unwrap();
        disk.fail_writes_after(0);
        assert!(write(&disk, 0, &page).is_err());
        disk.heal();
        write(&disk, 0, &page).unwrap();
        assert_eq!(disk.writes(), 9);
    }

    #[test]
    fn failed_write_does_not_reach_the_inner_disk() {
        let dir = tempfile::tempdir().unwrap();
        let inner = FileSystemDisk::with_options(
            dir.path(),
            DiskOptions::default()
                .with_segment_size(1 << 20)
                .with_backend(Backend::ThreadPool),
        )
        .unwrap();
        let disk = FaultyDisk::new(inner);
        disk.fail_writes_after(0);
        assert!(write(&disk, 0, &filled(PAGE, 7)).is_err());
        assert!(!disk.inner().segment_path(0).exists());
    }

    #[test]
    fn reads_and_flush_fail_while_told() {
        let disk = FaultyDisk::new(NullDisk::new());
        assert!(read(&disk, 0, PAGE).0.is_ok());
        disk.fail_reads(true);
        assert!(read(&disk, 0, PAGE)
            .0
            .unwrap_err()
            .to_string()
            .contains("injected"));
        disk.fail_reads(false);
        assert!(read(&disk, 0, PAGE).0.is_ok());
        assert_eq!(disk.reads(), 3);
        disk.flush().unwrap();
        disk.fail_flush(true);
        assert!(disk.flush().is_err());
        disk.fail_flush(false);
        disk.flush().unwrap();
        assert!(!disk.is_persistent());
        assert_eq!(disk.describe(), "faulty (null (in memory only))");
    }

    #[test]
    fn torn_write_writes_the_first_half_only() {
        let dir = tempfile::tempdir().unwrap();
        let inner = FileSystemDisk::with_options(
            dir.path(),
            DiskOptions::default().with_segment_size(1 << 20),
        )
        .unwrap();
        let disk = FaultyDisk::new(inner);
        assert_eq!(write(&disk, 0, &filled(4 * PAGE, 1)).unwrap(), 4 * PAGE);
        disk.tear_next_write();
        assert!(write(&disk, 0, &filled(4 * PAGE, 2)).is_err());
        let (r, got) = read(&disk, 0, 4 * PAGE);
        assert_eq!(r.unwrap(), 4 * PAGE);
        assert!(got.as_slice()[..2 * PAGE].iter().all(|&b| b == 2));
        assert!(got.as_slice()[2 * PAGE..].iter().all(|&b| b == 1));
        // Only the next write was torn.
        assert_eq!(write(&disk, 0, &filled(4 * PAGE, 3)).unwrap(), 4 * PAGE);
        let (_, got) = read(&disk, 0, 4 * PAGE);
        assert!(got.as_slice().iter().all(|&b| b == 3));
        // A single page cannot be split at an aligned point: nothing is written, error reported.
        disk.tear_next_write();
        assert!(write(&disk, 0, &filled(PAGE, 4)).is_err());
        let (_, got) = read(&disk, 0, PAGE);
        assert!(got.as_slice().iter().all(|&b| b == 3));
        disk.flush().unwrap();
    }

    #[test]
    fn sub_devices_share_the_knobs_their_parent_keeps_for_their_name() {
        use crate::device::SubDevice;
        let dir = tempfile::tempdir().unwrap();
        let disk = FaultyDisk::new(FileSystemDisk::new(dir.path()).unwrap());
        let page = filled(PAGE, 5);
        // Armed before the sub-device exists.
        let cold = disk.sub_device_faults("cold");
        cold.fail_writes_after(0);
        let sub = disk.sub_device("cold").unwrap();
        assert!(write(&sub, 0, &page).is_err());
        assert!(!sub.inner().segment_path(0).exists());
        // The parent and the other names are not affected, and their counters are their own.
        write(&disk, 0, &page).unwrap();
        let other = disk.sub_device("other").unwrap();
        write(&other, 0, &page).unwrap();
        assert_eq!(
            (disk.writes(), cold.writes(), other.faults().writes()),
            (1, 1, 1)
        );
        // A fault set on the parent stays on the parent.
        disk.fail_reads(true);
        assert!(read(&sub, 0, PAGE).0.is_ok());
        assert!(read(&disk, 0, PAGE).0.is_err());
        disk.heal();
        // A second opening of the name and the handles share one set of knobs.
        let again = disk.sub_device("cold").unwrap();
        assert!(write(&again, 0, &page).is_err());
        assert_eq!(sub.writes(), 2);
        again.faults().fail_reads(true);
        assert!(read(&sub, 0, PAGE).0.is_err());
        // Healing the parent left the sub-device broken; healing the handle heals both.
        cold.heal();
        write(&sub, 0, &page).unwrap();
        let (r, got) = read(&again, 0, PAGE);
        assert_eq!(r.unwrap(), PAGE);
        assert!(got.as_slice().iter().all(|&b| b == 5));
        // Through an `Arc` too, and names nest.
        let shared = std::sync::Arc::new(FaultyDisk::new(NullDisk::new()));
        shared.sub_device_faults("a").sub("b").fail_writes_after(0);
        let b = shared.sub_device("a").unwrap().sub_device("b").unwrap();
        assert!(write(&*b, 0, &page).is_err());
        let a = shared.sub_device("a").unwrap();
        write(&*a, 0, &page).unwrap();
    }

    #[test]
    fn knobs_work_under_concurrent_writers() {
        let disk = std::sync::Arc::new(FaultyDisk::new(NullDisk::new()));
        disk.fail_writes_after(100);
        let ok = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let disk = std::sync::Arc::clone(&disk);
                let ok = &ok;
                s.spawn(move || {
                    let page = filled(PAGE, 9);
                    for _ in 0..50 {
                        if write(&*disk, 0, &page).is_ok() {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::SeqCst), 100);
        assert_eq!(disk.writes(), 200);
    }
}
