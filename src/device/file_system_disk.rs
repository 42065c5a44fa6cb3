//! The log on a local file system: segment files `<dir>/log.<n>` driven by io_uring or a thread
//! pool.
//!
//! Invariants:
//! - Log offset `o` lives in segment `o / segment_size`, at `o % segment_size` in file `log.<n>`.
//!   `segment_size` is a power of two of at least 1 MiB. A request spanning segments is split into
//!   one request per segment and reports once, when all parts are done (the first error, if any).
//! - Segment files are opened on first use and kept open; a write creates its file, a read of a
//!   missing file (or of a region past its end) yields zeros and the full count.
//! - Offsets, lengths and buffer addresses must be multiples of [`Disk::alignment`] (4096,
//!   enough for O_DIRECT on any file system) for writes and of [`Disk::read_alignment`] for
//!   reads (the device's logical block size under O_DIRECT, learned at open: see
//!   [`super::sector`]; 8 bytes with buffered I/O); anything else fails with `InvalidInput`
//!   through the callback.
//! - Durability: a completed write marks its segment dirty before its callback runs, and creating a
//!   segment marks the directory dirty; [`Disk::flush`] (serialised by a mutex, so a flush never
//!   returns while an earlier one is still syncing what it relies on) syncs exactly those. A failed
//!   sync is sticky: every later flush fails too until the segment is truncated away, because the
//!   kernel may have dropped the unsynced pages and a retry could falsely succeed.
//! - Truncation: `begin` only grows. Reads wholly below it return zeros (partly below: the part
//!   below is zeroed); writes into a deleted segment are dropped (the region is dead, and
//!   recreating the file would resurrect it). The segment map is only changed under its write
//!   lock, and both the reopen check and the truncation's removal happen under it, so a truncated
//!   segment is never reopened.
//! - Dropping the disk stops the I/O threads only after every queued or in-flight request has
//!   completed and its callback has run.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::sector::BUFFERED_READ_ALIGNMENT;
use super::segment::{run_callback, IoKind, IoRequest, Segment};
use super::thread_pool::ThreadPool;
#[cfg(target_os = "linux")]
use super::uring::UringEngine;
use super::{Disk, IoCallback};
use crate::core::alloc::AlignedBuf;
use crate::environment::file::{sync_dir, File};
use crate::{Error, Result};

/// Alignment of offsets, lengths and buffers: the largest logical block size O_DIRECT may demand.
const ALIGNMENT: usize = 4096;

/// Submission queue entries of the io_uring (in-flight operations at most).
const URING_ENTRIES: u32 = 256;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Whether to bypass the page cache (O_DIRECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// O_DIRECT if the file system accepts it, buffered I/O otherwise.
    #[default]
    Auto,
    /// Always buffered I/O.
    Off,
    /// O_DIRECT, or fail to open the device if the file system refuses it.
    On,
}

/// Which engine performs the asynchronous I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring if the kernel (and sandbox) allows it, the thread pool otherwise.
    #[default]
    Auto,
    /// io_uring, or fail to open the device if it is unavailable (Linux only).
    IoUring,
    /// Blocking `pread`/`pwrite` on [`DiskOptions::io_threads`] threads.
    ThreadPool,
}

/// Options of a [`FileSystemDisk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    /// Bytes per segment file: a power of two, at least 1 MiB. Default 1 GiB.
    pub segment_size: u64,
    /// O_DIRECT or buffered I/O. Default [`IoMode::Auto`].
    pub direct_io: IoMode,
    /// I/O engine. Default [`Backend::Auto`].
    pub backend: Backend,
    /// Threads of the thread-pool engine (1 to 1024). Default 2.
    pub io_threads: usize,
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            segment_size: GIB,
            direct_io: IoMode::Auto,
            backend: Backend::Auto,
            io_threads: 2,
        }
    }
}

impl DiskOptions {
    /// Sets [`DiskOptions::segment_size`].
    #[must_use]
    pub fn with_segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets [`DiskOptions::direct_io`].
    #[must_use]
    pub fn with_direct_io(mut self, mode: IoMode) -> Self {
        self.direct_io = mode;
        self
    }

    /// Sets [`DiskOptions::backend`].
    #[must_use]
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets [`DiskOptions::io_threads`].
    #[must_use]
    pub fn with_io_threads(mut self, threads: usize) -> Self {
        self.io_threads = threads;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        if !self.segment_size.is_power_of_two() || self.segment_size < MIB {
            return Err(Error::Config {
                field: "segment_size",
                reason: format!(
                    "{} is not a power of two of at least 1 MiB",
                    self.segment_size
                ),
            });
        }
        if !(1..=1024).contains(&self.io_threads) {
            return Err(Error::Config {
                field: "io_threads",
                reason: format!("{} is not between 1 and 1024", self.io_threads),
            });
        }
        Ok(())
    }
}

/// The engine actually running.
enum Engine {
    #[cfg(target_os = "linux")]
    Uring(UringEngine),
    Pool(ThreadPool),
}

impl Engine {
    fn submit(&self, req: IoRequest) {
        match self {
            #[cfg(target_os = "linux")]
            Engine::Uring(e) => e.submit(req),
            Engine::Pool(p) => p.submit(req),
        }
    }
}

/// A [`Disk`] over segment files in a directory.
pub struct FileSystemDisk {
    // Declared first so it is dropped first: the I/O threads finish every request (which may
    // still use the segments) before anything else goes.
    engine: Engine,
    dir: PathBuf,
    segment_size: u64,
    segment_shift: u32,
    direct: bool,
    /// Alignment of reads ([`Disk::read_alignment`]): the device's logical block size under
    /// O_DIRECT (see [`super::sector`]), [`BUFFERED_READ_ALIGNMENT`] without.
    read_align: usize,
    backend: Backend,
    description: String,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    /// Truncation point: reads below it return zeros.
    begin: AtomicU64,
    /// A segment file was created since the directory was last synced.
    dir_dirty: AtomicBool,
    flush_lock: Mutex<()>,
    /// What it was opened with: sub-devices open with the same.
    options: DiskOptions,
}

/// A sub-device is a subdirectory, opened with the same options.
impl super::SubDevice for FileSystemDisk {
    fn sub_device(&self, name: &str) -> Result<Self> {
        Self::with_options(self.dir.join(name), self.options.clone())
    }

    fn remove_sub_device(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Path { path, source }),
        }
    }
}

impl fmt::Debug for FileSystemDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSystemDisk")
            .field("description", &self.description)
            .field("begin", &self.begin.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl FileSystemDisk {
    /// Opens (creating it if needed) a log directory with default [`DiskOptions`].
    ///
    /// # Errors
    /// See [`FileSystemDisk::with_options`].
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        Self::with_options(dir, DiskOptions::default())
    }

    /// Opens (creating it if needed) a log directory.
    ///
    /// # Errors
    /// - [`Error::Config`] for option values out of range.
    /// - [`Error::Path`] if the directory cannot be created or written (the O_DIRECT probe file).
    /// - [`Error::Io`] if [`IoMode::On`] or [`Backend::IoUring`] was demanded but is unavailable,
    ///   or the I/O threads cannot be started.
    pub fn with_options(dir: impl AsRef<Path>, options: DiskOptions) -> Result<Self> {
        options.validate()?;
        let kept = options.clone();
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Path {
            path: dir.clone(),
            source,
        })?;

        let buffered = (false, BUFFERED_READ_ALIGNMENT);
        let ((direct, read_align), io_note) = match options.direct_io {
            IoMode::Off => (buffered, "buffered I/O".to_string()),
            IoMode::Auto | IoMode::On => match probe_direct_io(&dir)? {
                Ok(sector) => ((true, sector), format!("O_DIRECT, {sector}-byte reads")),
                Err(refusal) if options.direct_io == IoMode::On => {
                    return Err(Error::io(
                        format!("enabling O_DIRECT in {} (IoMode::On)", dir.display()),
                        refusal,
                    ))
                }
                Err(refusal) => (
                    buffered,
                    format!("buffered I/O (O_DIRECT refused by file system: {refusal})"),
                ),
            },
        };

        let (engine, backend, engine_note) = start_engine(&options, start_uring)?;
        let description = format!(
            "{engine_note}, {io_note}, segments of {} in {}",
            human_size(options.segment_size),
            dir.display()
        );
        Ok(Self {
            engine,
            dir,
            segment_size: options.segment_size,
            segment_shift: options.segment_size.trailing_zeros(),
            direct,
            read_align,
            backend,
            description,
            segments: RwLock::new(BTreeMap::new()),
            begin: AtomicU64::new(0),
            dir_dirty: AtomicBool::new(false),
            flush_lock: Mutex::new(()),
            options: kept,
        })
    }

    /// The log directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes per segment file.
    #[must_use]
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Whether segment files are opened with O_DIRECT.
    #[must_use]
    pub fn uses_direct_io(&self) -> bool {
        self.direct
    }

    /// The engine in use: [`Backend::IoUring`] or [`Backend::ThreadPool`], never `Auto`.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The truncation point: the highest offset passed to [`Disk::truncate_before`].
    #[must_use]
    pub fn begin(&self) -> u64 {
        self.begin.load(Ordering::Acquire)
    }

    /// Path of segment file `index`.
    #[must_use]
    pub fn segment_path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("log.{index}"))
    }

    fn first_live_segment(&self) -> u64 {
        self.begin() >> self.segment_shift
    }

    /// The open segment `index`, opening (with `create`: creating) its file if needed. `None` if
    /// the file does not exist (and `!create`) or the segment has been truncated away.
    fn segment(&self, index: u64, create: bool) -> io::Result<Option<Arc<Segment>>> {
        {
            let map = self.segments.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(seg) = map.get(&index) {
                return Ok(Some(Arc::clone(seg)));
            }
        }
        let mut map = self
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(seg) = map.get(&index) {
            return Ok(Some(Arc::clone(seg)));
        }
        if index < self.first_live_segment() {
            return Ok(None);
        }
        let path = self.segment_path(index);
        match File::open(&path, self.direct, create) {
            Ok((file, _)) => {
                let file = file.with_direct_block(self.read_align);
                if create {
                    self.dir_dirty.store(true, Ordering::Release);
                }
                let seg = Arc::new(Segment::new(file, index));
                map.insert(index, Arc::clone(&seg));
                Ok(Some(seg))
            }
            Err(e) if !create && e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("opening segment file {}: {e}", path.display()),
            )),
        }
    }

    /// Validates a request, splits it at segment boundaries and hands the parts to the engine.
    ///
    /// # Safety
    /// As [`Disk::read_async`] (for a read) or [`Disk::write_async`] (for a write).
    unsafe fn submit(
        &self,
        kind: IoKind,
        offset: u64,
        buf: *mut u8,
        len: usize,
        callback: IoCallback,
    ) {
        let align = match kind {
            IoKind::Read => self.read_align,
            IoKind::Write => ALIGNMENT,
        };
        let end = match check_request(offset, buf, len, align) {
            Ok(end) => end,
            Err(e) => return run_callback(callback, Err(e)),
        };
        if len == 0 {
            return run_callback(callback, Ok(0));
        }
        let first = offset >> self.segment_shift;
        let last = (end - 1) >> self.segment_shift;
        if first == last {
            // SAFETY: the caller's contract, for the whole request.
            return unsafe { self.submit_part(kind, offset, buf, len, callback) };
        }
        let join = Arc::new(Join {
            remaining: AtomicU64::new(last - first + 1),
            len,
            error: Mutex::new(None),
            callback: Mutex::new(Some(callback)),
        });
        let mut pos = offset;
        while pos < end {
            // Last byte of this segment + 1; saturates only in the very last segment of the
            // address space, which then also holds `end`.
            let segment_end = (pos | (self.segment_size - 1)).saturating_add(1);
            let part = (segment_end.min(end) - pos) as usize;
            let join = Arc::clone(&join);
            // SAFETY: `pos - offset < len`, so the pointer stays inside the caller's buffer.
            let part_buf = unsafe { buf.add((pos - offset) as usize) };
            // SAFETY: the part is a sub-range of the caller's buffer, covered by its contract,
            // which lasts until the joint callback runs, i.e. after every part has completed.
            unsafe {
                self.submit_part(
                    kind,
                    pos,
                    part_buf,
                    part,
                    Box::new(move |r| join.part_done(r)),
                );
            }
            pos += part as u64;
        }
    }

    /// Submits a request that lies within one segment.
    ///
    /// # Safety
    /// As [`FileSystemDisk::submit`].
    unsafe fn submit_part(
        &self,
        kind: IoKind,
        offset: u64,
        buf: *mut u8,
        len: usize,
        callback: IoCallback,
    ) {
        let index = offset >> self.segment_shift;
        let file_offset = offset & (self.segment_size - 1);
        let begin = self.begin();
        let zeros = |callback: IoCallback| {
            // SAFETY: the caller's contract: `buf` is valid for writes of `len` bytes (this is a
            // read) and nobody else uses it until the callback runs.
            unsafe { std::ptr::write_bytes(buf, 0, len) };
            run_callback(callback, Ok(len));
        };
        let segment = match kind {
            IoKind::Write => {
                if index < begin >> self.segment_shift {
                    // Truncated away: the data is dead, the file must not come back.
                    return run_callback(callback, Ok(len));
                }
                match self.segment(index, true) {
                    Ok(Some(seg)) => seg,
                    Ok(None) => return run_callback(callback, Ok(len)),
                    Err(e) => return run_callback(callback, Err(e)),
                }
            }
            IoKind::Read => {
                if offset + len as u64 <= begin {
                    return zeros(callback);
                }
                match self.segment(index, false) {
                    Ok(Some(seg)) => seg,
                    Ok(None) => return zeros(callback),
                    Err(e) => return run_callback(callback, Err(e)),
                }
            }
        };
        let zero_prefix = if kind == IoKind::Read && offset < begin {
            (begin - offset) as usize
        } else {
            0
        };
        // SAFETY: the caller's contract covers `buf` for `len` bytes until the callback runs.
        let req = unsafe { IoRequest::new(kind, segment, file_offset, buf, len, callback) };
        self.engine.submit(req.with_zero_prefix(zero_prefix));
    }
}

/// Checks the alignment (to `align`) and range of a request; returns its end offset.
fn check_request(offset: u64, buf: *const u8, len: usize, align: usize) -> io::Result<u64> {
    let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    if offset % align as u64 != 0 || len % align != 0 || (buf as usize) % align != 0 {
        return invalid(format!(
            "I/O of {len} bytes at offset {offset:#x} from buffer {buf:p} is not aligned to {align}"
        ));
    }
    if len > 0 && buf.is_null() {
        return invalid("I/O into a null buffer".into());
    }
    if isize::try_from(len).is_err() {
        return invalid(format!("I/O of {len} bytes is too large"));
    }
    match offset.checked_add(len as u64) {
        Some(end) => Ok(end),
        None => invalid(format!(
            "I/O of {len} bytes at offset {offset:#x} overflows"
        )),
    }
}

/// Completion of a request split into several parts.
struct Join {
    remaining: AtomicU64,
    len: usize,
    error: Mutex<Option<io::Error>>,
    callback: Mutex<Option<IoCallback>>,
}

impl Join {
    fn part_done(&self, result: io::Result<usize>) {
        if let Err(e) = result {
            let mut error = self.error.lock().unwrap_or_else(PoisonError::into_inner);
            error.get_or_insert(e);
        }
        // AcqRel: the last part must see the errors recorded by the others.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let error = self
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let callback = self
            .callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(callback) = callback {
            run_callback(callback, error.map_or(Ok(self.len), Err));
        }
    }
}

/// Tries O_DIRECT in `dir` with a probe file (a real aligned write and read: some file systems
/// accept the open flag and refuse the I/O). `Ok` with the device's read granularity (see
/// [`super::sector`]) if it works, else the refusal.
///
/// # Errors
/// [`Error::Path`] if the probe file cannot be created or used for reasons other than O_DIRECT.
fn probe_direct_io(dir: &Path) -> Result<std::result::Result<usize, io::Error>> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        ".rskv-direct-probe.{}.{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    let refused = || io::Error::from_raw_os_error(libc::EINVAL);
    let (file, direct) = File::open(&path, true, true).map_err(|source| Error::Path {
        path: path.clone(),
        source,
    })?;
    let outcome = if direct {
        // Two blocks, so the granularity probe can read the second one.
        let mut buf = AlignedBuf::zeroed(2 * ALIGNMENT, ALIGNMENT);
        match file
            .write_at(buf.as_slice(), 0)
            .and_then(|()| file.read_at(buf.as_mut_slice(), 0))
        {
            Ok(_) => Ok(Ok(super::sector::direct_read_alignment(&file))),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Err(e)),
            Err(source) => Err(Error::Path {
                path: path.clone(),
                source,
            }),
        }
    } else {
        Ok(Err(refused()))
    };
    drop(file);
    let _ = std::fs::remove_file(&path);
    outcome
}

/// Starts the engine `options` ask for, using `start_uring` for io_uring. Returns it, which it
/// is, and its description.
fn start_engine(
    options: &DiskOptions,
    start_uring: impl FnOnce() -> io::Result<Engine>,
) -> Result<(Engine, Backend, String)> {
    let pool = |note: String| -> Result<(Engine, Backend, String)> {
        let pool = ThreadPool::start(options.io_threads)
            .map_err(|e| Error::io("starting the device I/O threads", e))?;
        Ok((Engine::Pool(pool), Backend::ThreadPool, note))
    };
    let threads = options.io_threads;
    match options.backend {
        Backend::ThreadPool => pool(format!("thread pool ({threads} threads)")),
        Backend::IoUring => match start_uring() {
            Ok(engine) => Ok((engine, Backend::IoUring, "io_uring".into())),
            Err(e) => Err(Error::io("starting io_uring (Backend::IoUring)", e)),
        },
        Backend::Auto => match start_uring() {
            Ok(engine) => Ok((engine, Backend::IoUring, "io_uring".into())),
            Err(e) => pool(format!(
                "thread pool ({threads} threads; io_uring unavailable: {e})"
            )),
        },
    }
}

#[cfg(target_os = "linux")]
fn start_uring() -> io::Result<Engine> {
    UringEngine::start(URING_ENTRIES).map(Engine::Uring)
}

#[cfg(not(target_os = "linux"))]
fn start_uring() -> io::Result<Engine> {
    let _ = URING_ENTRIES;
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "io_uring exists only on Linux",
    ))
}

fn human_size(bytes: u64) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The segment number of a file named `log.<n>` (canonical decimal digits only).
fn parse_segment_name(name: &std::ffi::OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_prefix("log.")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Disk for FileSystemDisk {
    fn alignment(&self) -> usize {
        ALIGNMENT
    }

    fn read_alignment(&self) -> usize {
        self.read_align
    }

    unsafe fn write_async(&self, offset: u64, buf: *const u8, len: usize, callback: IoCallback) {
        // SAFETY: the caller's contract for a write; the engines only read through the pointer.
        unsafe { self.submit(IoKind::Write, offset, buf.cast_mut(), len, callback) }
    }

    unsafe fn read_async(&self, offset: u64, buf: *mut u8, len: usize, callback: IoCallback) {
        // SAFETY: the caller's contract for a read.
        unsafe { self.submit(IoKind::Read, offset, buf, len, callback) }
    }

    fn flush(&self) -> io::Result<()> {
        let _serial = self
            .flush_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let segments: Vec<Arc<Segment>> = self
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut first_error = None;
        for seg in &segments {
            if seg.sync_failed.load(Ordering::Acquire) {
                first_error.get_or_insert_with(|| {
                    io::Error::other(format!(
                        "an earlier sync of {} failed; its writes may be lost",
                        self.segment_path(seg.index).display()
                    ))
                });
                continue;
            }
            if seg.dirty.swap(false, Ordering::AcqRel) {
                if let Err(e) = seg.file.sync() {
                    seg.sync_failed.store(true, Ordering::Release);
                    first_error.get_or_insert_with(|| {
                        io::Error::new(
                            e.kind(),
                            format!("syncing {}: {e}", self.segment_path(seg.index).display()),
                        )
                    });
                }
            }
        }
        // New segment files need their directory entries to be durable too.
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = sync_dir(&self.dir) {
                self.dir_dirty.store(true, Ordering::Release);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn truncate_before(&self, offset: u64) -> io::Result<()> {
        self.begin.fetch_max(offset, Ordering::AcqRel);
        let first_live = self.first_live_segment();
        {
            // Close our handles (requests in flight keep theirs until they finish).
            let mut map = self
                .segments
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let live = map.split_off(&first_live);
            *map = live;
        }
        // Delete by listing the directory, which also catches files from earlier runs that were
        // never opened by this one.
        let mut removed = false;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            match parse_segment_name(&entry.file_name()) {
                Some(index) if index < first_live => match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("removing {}: {e}", entry.path().display()),
                        ))
                    }
                },
                _ => {}
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn storage_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if parse_segment_name(&entry.file_name()).is_some() {
                match entry.metadata() {
                    Ok(m) => total += m.len(),
                    // Removed by a truncation while we listed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(total)
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn checkpoint_root(&self) -> Option<PathBuf> {
        Some(self.dir.join("checkpoints"))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crossbeam_channel::{bounded, Receiver};
    use std::time::Duration;

    const PAGE: usize = 4096;

    /// What a device test does when this machine lacks what it tests (io_uring, O_DIRECT):
    /// under `CI=true` it fails, since CI runs where both work and a skip there would hide a
    /// regression; elsewhere it prints the reason and returns, and the caller skips.
    pub(in crate::device) fn skip_unless_ci(reason: impl std::fmt::Display) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{reason} (CI=true, where this test must run, not skip)"
        );
        println!("skipping: {reason}");
    }

    /// Runs an I/O and returns its callback's result (waiting at most a minute).
    fn wait(rx: &Receiver<io::Result<usize>>) -> io::Result<usize> {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("callback did not run")
    }

    fn write(disk: &dyn Disk, offset: u64, buf: &AlignedBuf) -> io::Result<usize> {
        let (tx, rx) = bounded(1);
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
        wait(&rx)
    }

    fn read(disk: &dyn Disk, offset: u64, len: usize) -> (io::Result<usize>, AlignedBuf) {
        let mut buf = AlignedBuf::zeroed(len, PAGE);
        buf.as_mut_slice().fill(0xEE);
        let (tx, rx) = bounded(1);
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
        let r = wait(&rx);
        (r, buf)
    }

    fn pattern(len: usize, seed: u64) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(len, PAGE);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for b in buf.as_mut_slice() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        buf
    }

    fn small(backend: Backend) -> DiskOptions {
        DiskOptions::default()
            .with_segment_size(MIB)
            .with_backend(backend)
    }

    /// Opens a disk with `backend`, or `None` (the caller skips; the reason is printed) if
    /// io_uring is forced but unavailable here; under `CI=true` that fails instead
    /// ([`skip_unless_ci`]).
    fn open(dir: &Path, options: DiskOptions) -> Option<FileSystemDisk> {
        match FileSystemDisk::with_options(dir, options.clone()) {
            Ok(d) => {
                println!("{}", d.describe());
                Some(d)
            }
            Err(e) if options.backend == Backend::IoUring => {
                skip_unless_ci(format_args!("io_uring unavailable: {e}"));
                None
            }
            Err(e) => panic!("opening {}: {e}", dir.display()),
        }
    }

    fn roundtrip(backend: Backend, mode: IoMode) {
        let dir = tempfile::tempdir().unwrap();
        let Some(disk) = open(dir.path(), small(backend).with_direct_io(mode)) else {
            return;
        };
        if backend != Backend::Auto {
            assert_eq!(disk.backend(), backend);
        }
        assert_eq!(disk.alignment(), PAGE);
        let pages: Vec<(u64, AlignedBuf)> = (0..8u64)
            .map(|i| (i * 3 * PAGE as u64, pattern(2 * PAGE, i)))
            .collect();
        for (off, buf) in &pages {
            assert_eq!(write(&disk, *off, buf).unwrap(), buf.len());
        }
        disk.flush().unwrap();
        for (off, buf) in &pages {
            let (r, got) = read(&disk, *off, buf.len());
            assert_eq!(r.unwrap(), buf.len());
            assert_eq!(got.as_slice(), buf.as_slice(), "page at {off:#x}");
        }
        // The gap page between two writes was never written: zeros.
        let (r, got) = read(&disk, 2 * PAGE as u64, PAGE);
        assert_eq!(r.unwrap(), PAGE);
        assert!(got.as_slice().iter().all(|&b| b == 0));
        // Beyond the end of the segment file: zeros too.
        let (r, got) = read(&disk, 256 * PAGE as u64, 2 * PAGE);
        assert_eq!(r.unwrap(), 2 * PAGE);
        assert!(got.as_slice().iter().all(|&b| b == 0));
        // A segment that was never created: zeros.
        let (r, got) = read(&disk, 40 * MIB, PAGE);
        assert_eq!(r.unwrap(), PAGE);
        assert!(got.as_slice().iter().all(|&b| b == 0));
        assert!(!disk.segment_path(40).exists());
        drop(disk);

        // Reopen: the data is on disk.
        let disk = open(dir.path(), small(backend).with_direct_io(mode)).unwrap();
        for (off, buf) in &pages {
            let (r, got) = read(&disk, *off, buf.len());
            assert_eq!(r.unwrap(), buf.len());
            assert_eq!(got.as_slice(), buf.as_slice());
        }
    }

    #[test]
    fn roundtrip_io_uring() {
        roundtrip(Backend::IoUring, IoMode::Auto);
    }

    #[test]
    fn roundtrip_io_uring_buffered() {
        roundtrip(Backend::IoUring, IoMode::Off);
    }

    #[test]
    fn roundtrip_thread_pool() {
        roundtrip(Backend::ThreadPool, IoMode::Auto);
    }

    #[test]
    fn roundtrip_thread_pool_buffered() {
        roundtrip(Backend::ThreadPool, IoMode::Off);
    }

    #[test]
    fn roundtrip_auto() {
        roundtrip(Backend::Auto, IoMode::Auto);
    }

    #[test]
    fn detection_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FileSystemDisk::new(dir.path()).unwrap();
        let d = disk.describe();
        println!("detected on this machine: {d}");
        assert!(d.contains("segments of 1 GiB"), "{d}");
        assert!(d.contains(&dir.path().display().to_string()), "{d}");
        match disk.backend() {
            Backend::IoUring => assert!(d.starts_with("io_uring"), "{d}"),
            Backend::ThreadPool => assert!(d.starts_with("thread pool (2 threads"), "{d}"),
            Backend::Auto => panic!("backend() must say which engine runs"),
        }
        assert_eq!(d.contains("O_DIRECT,"), disk.uses_direct_io(), "{d}");
        // No probe file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn direct_io_on_is_honoured_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        match FileSystemDisk::with_options(
            dir.path(),
            small(Backend::ThreadPool).with_direct_io(IoMode::On),
        ) {
            Ok(d) => assert!(d.uses_direct_io()),
            Err(Error::Io { context, .. }) => {
                println!("O_DIRECT unavailable: {context}");
                assert!(context.contains("O_DIRECT"));
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        let d = FileSystemDisk::with_options(
            dir.path(),
            small(Backend::ThreadPool).with_direct_io(IoMode::Off),
        )
        .unwrap();
        assert!(!d.uses_direct_io());
        assert!(d.describe().contains("buffered I/O"));
    }

    fn across_segments(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let Some(disk) = open(dir.path(), small(backend)) else {
            return;
        };
        // 3 pages before the first boundary, 3 after: one write spanning log.0 and log.1.
        let start = MIB - 3 * PAGE as u64;
        let data = pattern(6 * PAGE, 7);
        assert_eq!(write(&disk, start, &data).unwrap(), data.len());
        assert!(disk.segment_path(0).exists());
        assert!(disk.segment_path(1).exists());
        assert_eq!(std::fs::metadata(disk.segment_path(0)).unwrap().len(), MIB);
        assert_eq!(
            std::fs::metadata(disk.segment_path(1)).unwrap().len(),
            3 * PAGE as u64
        );
        let (r, got) = read(&disk, start, data.len());
        assert_eq!(r.unwrap(), data.len());
        assert_eq!(got.as_slice(), data.as_slice());

        // A read spanning three segments, the middle part of which was never written past its
        // first pages: written bytes come back, the rest is zeros.
        let far = pattern(PAGE, 9);
        assert_eq!(write(&disk, 2 * MIB, &far).unwrap(), PAGE);
        let (r, got) = read(&disk, start, (2 * MIB - start) as usize + PAGE);
        assert_eq!(r.unwrap(), (2 * MIB - start) as usize + PAGE);
        let got = got.as_slice();
        assert_eq!(&got[..data.len()], data.as_slice());
        assert!(got[data.len()..got.len() - PAGE].iter().all(|&b| b == 0));
        assert_eq!(&got[got.len() - PAGE..], far.as_slice());
    }

    #[test]
    fn across_segments_io_uring() {
        across_segments(Backend::IoUring);
    }

    #[test]
    fn across_segments_thread_pool() {
        across_segments(Backend::ThreadPool);
    }

    #[test]
    fn misaligned_requests_fail_with_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let disk = open(dir.path(), small(Backend::ThreadPool)).unwrap();
        let buf = AlignedBuf::zeroed(2 * PAGE, PAGE);
        let (tx, rx) = bounded(4);
        for (off, ptr_off, len) in [(1u64, 0usize, PAGE), (0, 512, PAGE), (0, 0, 100)] {
            let tx = tx.clone();
            // SAFETY: the buffer is valid for the requested range and outlives the call; the
            // request is rejected before any I/O anyway.
            unsafe {
                disk.write_async(
                    off,
                    buf.as_ptr().add(ptr_off),
                    len,
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
            }
            assert_eq!(wait(&rx).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
        // Overflowing the offset space.
        let (r, _) = read(&disk, u64::MAX - (PAGE as u64 - 1), PAGE);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        // Zero length is fine.
        let (r, _) = read(&disk, 0, 0);
        assert_eq!(r.unwrap(), 0);
        assert!(!disk.segment_path(0).exists());
    }

    /// Reads at the device's read granularity (a sector under O_DIRECT) return the bytes
    /// written by page writes, with the buffer, offset and length all aligned to it and to
    /// nothing larger; reads aligned to less are refused before any I/O.
    fn sector_reads(backend: Backend, mode: IoMode) {
        let dir = tempfile::tempdir().unwrap();
        let Some(disk) = open(dir.path(), small(backend).with_direct_io(mode)) else {
            return;
        };
        let unit = disk.read_alignment();
        assert!(unit.is_power_of_two() && PAGE % unit == 0, "{unit}");
        if disk.uses_direct_io() {
            assert!(unit >= 512, "{unit}");
            assert!(disk.describe().contains(&format!("{unit}-byte reads")));
        } else {
            assert_eq!(unit, BUFFERED_READ_ALIGNMENT);
        }
        let data = pattern(2 * PAGE, 7);
        write(&disk, 0, &data).unwrap();
        // A unit-sized read at an odd multiple of the unit, into a buffer at an odd multiple.
        for at in [unit, PAGE - unit, PAGE + unit, 2 * PAGE - unit] {
            let mut buf = AlignedBuf::zeroed(2 * PAGE, PAGE);
            let (tx, rx) = bounded(1);
            // SAFETY: `buf[unit..2 * unit]` is valid and waited for below.
            unsafe {
                disk.read_async(
                    at as u64,
                    buf.as_mut_ptr().add(unit),
                    unit,
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
            }
            assert_eq!(wait(&rx).unwrap(), unit);
            assert_eq!(
                &buf.as_slice()[unit..2 * unit],
                &data.as_slice()[at..at + unit]
            );
        }
        if unit > 8 {
            let mut buf = AlignedBuf::zeroed(PAGE, PAGE);
            let (tx, rx) = bounded(1);
            // SAFETY: as above; the request is rejected before any I/O.
            unsafe {
                disk.read_async(
                    (unit / 2) as u64,
                    buf.as_mut_ptr(),
                    unit,
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
            }
            assert_eq!(wait(&rx).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn sector_reads_all_backends() {
        for backend in [Backend::IoUring, Backend::ThreadPool] {
            for mode in [IoMode::Auto, IoMode::Off] {
                sector_reads(backend, mode);
            }
        }
    }

    fn truncate(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let Some(disk) = open(dir.path(), small(backend)) else {
            return;
        };
        let page = pattern(PAGE, 1);
        for seg in 1..4u64 {
            write(&disk, seg * MIB + PAGE as u64, &page).unwrap();
        }
        // A stale segment file from an earlier run, never opened by this disk.
        std::fs::write(dir.path().join("log.0"), b"old").unwrap();
        std::fs::write(dir.path().join("log.x"), b"not a segment").unwrap();
        disk.flush().unwrap();

        // Into segment 2: segments 0 and 1 go, 2 stays (partly dead).
        let cut = 2 * MIB + 2 * PAGE as u64;
        disk.truncate_before(cut).unwrap();
        assert_eq!(disk.begin(), cut);
        assert!(!disk.segment_path(0).exists());
        assert!(!disk.segment_path(1).exists());
        assert!(disk.segment_path(2).exists());
        assert!(disk.segment_path(3).exists());
        assert!(dir.path().join("log.x").exists());

        // Below the cut: zeros, even where segment 2 still holds data.
        for off in [PAGE as u64, MIB + PAGE as u64, 2 * MIB + PAGE as u64] {
            let (r, got) = read(&disk, off, PAGE);
            assert_eq!(r.unwrap(), PAGE);
            assert!(got.as_slice().iter().all(|&b| b == 0), "at {off:#x}");
        }
        // Straddling the cut: the part below is zeroed, the rest read.
        write(&disk, 2 * MIB + 2 * PAGE as u64, &page).unwrap();
        let (r, got) = read(&disk, 2 * MIB + PAGE as u64, 2 * PAGE);
        assert_eq!(r.unwrap(), 2 * PAGE);
        assert!(got.as_slice()[..PAGE].iter().all(|&b| b == 0));
        assert_eq!(&got.as_slice()[PAGE..], page.as_slice());
        // Above: intact.
        let (r, got) = read(&disk, 3 * MIB + PAGE as u64, PAGE);
        assert_eq!(r.unwrap(), PAGE);
        assert_eq!(got.as_slice(), page.as_slice());
        // A late write into a deleted segment is dropped; the file does not come back.
        assert_eq!(write(&disk, PAGE as u64, &page).unwrap(), PAGE);
        assert!(!disk.segment_path(0).exists());
        // The truncation point never moves back.
        disk.truncate_before(MIB).unwrap();
        assert_eq!(disk.begin(), cut);
        disk.flush().unwrap();
    }

    #[test]
    fn truncate_before_io_uring() {
        truncate(Backend::IoUring);
    }

    #[test]
    fn truncate_before_thread_pool() {
        truncate(Backend::ThreadPool);
    }

    #[test]
    fn flush_syncs_and_clears_dirty_segments() {
        let dir = tempfile::tempdir().unwrap();
        let disk = open(dir.path(), small(Backend::Auto)).unwrap();
        disk.flush().unwrap(); // nothing written: fine
        write(&disk, 0, &pattern(PAGE, 3)).unwrap();
        write(&disk, 5 * MIB, &pattern(PAGE, 4)).unwrap();
        assert!(disk.dir_dirty.load(Ordering::Acquire));
        {
            let map = disk.segments.read().unwrap();
            assert!(map.values().all(|s| s.dirty.load(Ordering::Acquire)));
        }
        disk.flush().unwrap();
        assert!(!disk.dir_dirty.load(Ordering::Acquire));
        let map = disk.segments.read().unwrap();
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![0, 5]);
        assert!(map.values().all(|s| !s.dirty.load(Ordering::Acquire)));
    }

    #[test]
    fn uncreatable_directory_is_a_path_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let target = file.join("log-dir");
        match FileSystemDisk::new(&target) {
            Err(Error::Path { path, .. }) => assert_eq!(path, target),
            other => panic!("expected Error::Path, got {other:?}"),
        }
    }

    #[test]
    fn bad_options_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (options, field) in [
            (
                DiskOptions::default().with_segment_size(3 * MIB),
                "segment_size",
            ),
            (
                DiskOptions::default().with_segment_size(MIB / 2),
                "segment_size",
            ),
            (DiskOptions::default().with_segment_size(0), "segment_size"),
            (DiskOptions::default().with_io_threads(0), "io_threads"),
        ] {
            match FileSystemDisk::with_options(dir.path(), options) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected Error::Config for {field}, got {other:?}"),
            }
        }
        assert_eq!(human_size(GIB), "1 GiB");
        assert_eq!(human_size(64 * MIB), "64 MiB");
    }

    #[test]
    fn auto_backend_falls_back_to_thread_pool() {
        let denied = || Err(io::Error::from_raw_os_error(libc::EPERM));
        let (engine, backend, note) = start_engine(&DiskOptions::default(), denied).unwrap();
        assert!(matches!(engine, Engine::Pool(_)));
        assert_eq!(backend, Backend::ThreadPool);
        assert!(
            note.starts_with("thread pool (2 threads; io_uring unavailable:"),
            "{note}"
        );
        let forced = DiskOptions::default().with_backend(Backend::IoUring);
        match start_engine(&forced, denied) {
            Err(Error::Io { context, source }) => {
                assert!(context.contains("io_uring"));
                assert_eq!(source.raw_os_error(), Some(libc::EPERM));
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("forced io_uring must fail when unavailable"),
        }
        // Forcing the thread pool never even tries io_uring.
        let pool = DiskOptions::default().with_backend(Backend::ThreadPool);
        let (_, backend, _) = start_engine(&pool, || panic!("io_uring tried")).unwrap();
        assert_eq!(backend, Backend::ThreadPool);
    }

    fn short_files(backend: Backend, mode: IoMode) {
        let dir = tempfile::tempdir().unwrap();
        let Some(disk) = open(dir.path(), small(backend).with_direct_io(mode)) else {
            return;
        };
        // A segment file whose end is not aligned (not written by us): the read stops at its end
        // and the rest is zeros, whether the kernel reports the end with a short count or not.
        std::fs::write(dir.path().join("log.0"), vec![7u8; 5000]).unwrap();
        let (r, got) = read(&disk, 0, 4 * PAGE);
        assert_eq!(r.unwrap(), 4 * PAGE);
        assert!(got.as_slice()[..5000].iter().all(|&b| b == 7));
        assert!(got.as_slice()[5000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn short_files_all_backends() {
        for backend in [Backend::IoUring, Backend::ThreadPool] {
            for mode in [IoMode::Auto, IoMode::Off] {
                short_files(backend, mode);
            }
        }
    }

    fn unusable_segment(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let Some(disk) = open(dir.path(), small(backend)) else {
            return;
        };
        // log.1 is a directory: opening it fails, and the failure reaches the callback.
        std::fs::create_dir(dir.path().join("log.1")).unwrap();
        let page = pattern(PAGE, 1);
        let err = write(&disk, MIB, &page).unwrap_err();
        assert!(err.to_string().contains("log.1"), "{err}");
        assert!(read(&disk, MIB, PAGE).0.is_err());
        // A request spanning log.0 and log.1 reports once, with the error, although its log.0
        // part succeeded.
        let two = pattern(2 * PAGE, 2);
        let (tx, rx) = crossbeam_channel::unbounded();
        // SAFETY: `two` outlives the wait for the callback (and the disk's drop below).
        unsafe {
            disk.write_async(
                MIB - PAGE as u64,
                two.as_ptr(),
                two.len(),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
        }
        assert!(wait(&rx).is_err());
        drop(disk);
        assert!(rx.try_recv().is_err(), "callback ran more than once");
    }

    #[test]
    fn unusable_segment_errors_reach_the_callback() {
        unusable_segment(Backend::IoUring);
        unusable_segment(Backend::ThreadPool);
    }

    #[test]
    fn segment_names() {
        use std::ffi::OsStr;
        assert_eq!(parse_segment_name(OsStr::new("log.0")), Some(0));
        assert_eq!(parse_segment_name(OsStr::new("log.17")), Some(17));
        assert_eq!(parse_segment_name(OsStr::new("log.")), None);
        assert_eq!(parse_segment_name(OsStr::new("log.+1")), None);
        assert_eq!(parse_segment_name(OsStr::new("log.1.tmp")), None);
        assert_eq!(parse_segment_name(OsStr::new("xlog.1")), None);
    }

    fn concurrent(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let Some(disk) = open(dir.path(), small(backend)) else {
            return;
        };
        let disk = Arc::new(disk);
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 96;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let disk = Arc::clone(&disk);
                s.spawn(move || {
                    // Many writes in flight at once (more than the ring has entries in total),
                    // interleaved across segments by page number.
                    let bufs: Vec<AlignedBuf> = (0..PER_THREAD)
                        .map(|i| pattern(PAGE, t * 1000 + i))
                        .collect();
                    let (tx, rx) = crossbeam_channel::unbounded();
                    for (i, buf) in bufs.iter().enumerate() {
                        let page = i as u64 * THREADS + t;
                        let tx = tx.clone();
                        // SAFETY: `bufs` lives until every callback has reported below.
                        unsafe {
                            disk.write_async(
                                page * 64 * PAGE as u64,
                                buf.as_ptr(),
                                PAGE,
                                Box::new(move |r| {
                                    let _ = tx.send(r);
                                }),
                            );
                        }
                    }
                    for _ in 0..PER_THREAD {
                        assert_eq!(wait(&rx).unwrap(), PAGE);
                    }
                    disk.flush().unwrap();
                    for (i, buf) in bufs.iter().enumerate() {
                        let page = i as u64 * THREADS + t;
                        let (r, got) = read(&*disk, page * 64 * PAGE as u64, PAGE);
                        assert_eq!(r.unwrap(), PAGE);
                        assert_eq!(got.as_slice(), buf.as_slice());
                    }
                });
            }
        });
        // 384 pages, 256 KiB apart: four per segment of 1 MiB.
        assert_eq!(disk.segments.read().unwrap().len(), 96);
    }

    #[test]
    fn concurrent_io_uring() {
        concurrent(Backend::IoUring);
    }

    #[test]
    fn concurrent_thread_pool() {
        concurrent(Backend::ThreadPool);
    }

    #[test]
    fn drop_completes_in_flight_io() {
        for backend in [Backend::IoUring, Backend::ThreadPool] {
            let dir = tempfile::tempdir().unwrap();
            let Some(disk) = open(dir.path(), small(backend)) else {
                continue;
            };
            let bufs: Vec<AlignedBuf> = (0..64).map(|i| pattern(4 * PAGE, i)).collect();
            let done = Arc::new(AtomicU64::new(0));
            for (i, buf) in bufs.iter().enumerate() {
                let done = Arc::clone(&done);
                // SAFETY: `bufs` outlives the disk, whose drop waits for every callback.
                unsafe {
                    disk.write_async(
                        (i * 4 * PAGE) as u64,
                        buf.as_ptr(),
                        buf.len(),
                        Box::new(move |r| {
                            assert!(r.is_ok());
                            done.fetch_add(1, Ordering::SeqCst);
                        }),
                    );
                }
            }
            drop(disk);
            assert_eq!(done.load(Ordering::SeqCst), 64, "{backend:?}");
        }
    }

    #[test]
    fn callback_may_drop_the_last_handle() {
        for backend in [Backend::IoUring, Backend::ThreadPool] {
            let dir = tempfile::tempdir().unwrap();
            let Some(disk) = open(dir.path(), small(backend)) else {
                continue;
            };
            let disk = Arc::new(disk);
            let buf = pattern(PAGE, 5);
            let (tx, rx) = bounded(1);
            let held = Arc::clone(&disk);
            // SAFETY: `buf` outlives the wait for the callback below.
            unsafe {
                disk.write_async(
                    0,
                    buf.as_ptr(),
                    PAGE,
                    Box::new(move |r| {
                        drop(held); // may be the last handle: drop runs on the I/O thread
                        let _ = tx.send(r);
                    }),
                );
            }
            drop(disk);
            assert_eq!(wait(&rx).unwrap(), PAGE);
        }
    }

    #[test]
    fn large_request_spanning_many_segments() {
        let dir = tempfile::tempdir().unwrap();
        let disk = open(dir.path(), small(Backend::Auto)).unwrap();
        let data = pattern(3 * MIB as usize + 2 * PAGE, 11);
        let off = MIB / 2;
        assert_eq!(write(&disk, off, &data).unwrap(), data.len());
        let (r, got) = read(&disk, off, data.len());
        assert_eq!(r.unwrap(), data.len());
        assert_eq!(got.as_slice(), data.as_slice());
        assert!(disk.segment_path(3).exists());
    }
}
