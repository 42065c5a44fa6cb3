//! The HybridLog: one logical address space whose tail lives in memory and whose past lives on
//! the device (FASTER's `PersistentMemoryMalloc`).
//!
//! ```text
//!  begin        head   safe_ro   read_only              tail
//!    |  on disk   |  read-only |   fuzzy   |   mutable    |
//! ```
//!
//! # Invariants
//! 1. Markers only move forward (CAS-max). `begin <= head <= safe_head`... precisely:
//!    `begin <= safe_head <= head <= flushed_until <= safe_read_only <= read_only <= tail`.
//! 2. Moving `read_only` or `head` is "move the marker, then bump the epoch with an action that
//!    moves its safe twin". So once the safe twin has moved, no thread that saw the old marker is
//!    still inside an operation: nobody updates in place below `safe_read_only`, nobody reads
//!    memory below `safe_head`.
//! 3. Pages are flushed only below `safe_read_only` (the safe-read-only action issues the
//!    writes), so their bytes no longer change while the device reads them.
//! 4. `head` never passes `flushed_until`: a record below `head` is on the device.
//! 5. Page `p` lives in frame `p % frames`. The frame is zeroed (unless it was released,
//!    which zeroed it: 11) and reused for `p` only after `safe_head` has passed page
//!    `p - frames` (so it was flushed and nobody reads it).
//! 6. Records never straddle pages. The tail word is `page << 32 | offset`; an offset past the
//!    page size means the page is closed and the next one not yet open. Exactly one thread (the
//!    one that wins the `opening` claim) zeroes the frame and opens the next page.
//! 7. An allocation never waits inside an operation: when the next page cannot be opened yet it
//!    returns `RetryLater`, and the operation refreshes its epoch (which runs the actions that
//!    flush and evict) and starts over.
//! 8. Epoch actions and I/O callbacks reach the log through a raw pointer. The log is heap-pinned
//!    (it lives inside the store's `Arc`), and its `Drop` drains the epoch and waits until no I/O
//!    is in flight before any field is freed.
//! 9. **Failed writes.** A page whose write failed (or was short) is *failed* until a write of
//!    it succeeds, and the log is *poisoned* while any page is failed: no page opens (allocations
//!    past the open page fail with `Error::Poisoned`) and checkpoints refuse, so nothing that
//!    depends on the page reaching the device goes ahead. Its frame keeps its bytes meanwhile:
//!    `flushed_until` cannot pass it, so neither can `head` (4) nor a reuse of its frame (5).
//!    [`HybridLog::retry_failed_writes`] writes every failed page again from its frame; retries
//!    run one call at a time and only for pages whose last write has called back, so a page
//!    never has two writes in flight. When the last failed page is written the poison lifts and
//!    the log is as it would be after a slow device: `flushed_until` and `head` move on.
//! 10. **Live pages.** The log keeps at most `live_pages` (at most `frames`) pages in memory:
//!     `head` trails the tail page by `live_pages - 2` and read-only by at most `live_pages - 2`
//!     (`- 3` with a read-only page kept), and page `p` opens only once `safe_head` passed
//!     page `p - live_pages` (which implies 5's condition), so slow flushes cannot let the tail
//!     run ahead into free frames. So a store can move memory between its log and its
//!     read cache while running ([`HybridLog::set_live_pages`]). Lowering it moves `head` up at
//!     the next page opening (once the pages below are flushed, 4); raising it lets `head` lag
//!     further as the tail moves on. Frame reuse (5) is unchanged: page `p` still lives in frame
//!     `p % frames`.
//! 11. **Released frames.** While `live_pages < frames`, a frame whose page `safe_head`
//!     passed is *released*: its memory goes back to the kernel (`AlignedBuf::discard`) and
//!     reads as zeros, so it costs no RSS until its next page opens (which then skips zeroing
//!     it). Each frame has a state word `page << 2 | tag`: the releaser claims a frame by CAS
//!     from (`p`, LIVE) to (`p`, RELEASING) only for a page `p` below `safe_head` (no reader,
//!     no I/O: 2, 4, 5), discards it and stores (`p`, RELEASED); the thread that opens page `q`
//!     claims the frame by CAS from its old state to (`q`, OPENING) *before* it claims
//!     `opening`, and backs off with `RetryLater` while the frame is RELEASING (7). So a
//!     release and a reuse of the same frame never overlap, and each frame is released at most
//!     once per page. A frame starts RELEASED (fresh memory is zero and costs nothing) and
//!     becomes LIVE when its first page opens, a recovered page is loaded into it, or the tail
//!     starts in it (page 0 of a new log, the first page of a recovered one: open without
//!     `open_page`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_utils::CachePadded;

use crate::core::address::{Address, PageGeometry};
use crate::core::alloc::{align_down, align_up, AlignedBuf};
use crate::core::light_epoch::LightEpoch;
use crate::core::record::{
    first_record_offset, DiskRecord, RecordInfo, RecordRef, ValueState, HEADER_BYTES,
};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::sync::{AtomicU64, Ordering};

/// Smallest page: one 4 KiB sector (O_DIRECT granularity).
pub const MIN_PAGE_BITS: u32 = 12;
/// Largest page: 256 MiB (the tail word's 32-bit offset must absorb concurrent overshoot).
pub const MAX_PAGE_BITS: u32 = 28;
/// Bytes of a record the first device read tries to cover (from the record's start, rounded
/// up to the read unit): a record longer than that takes a second read.
const FIRST_READ_GUESS: u64 = 256;
/// Records a chain walk follows inside completion callbacks before it hands one to its
/// operation (which issues the next read itself and starts counting again).
pub const CHAIN_HOPS: u32 = 64;

/// Decides, inside a completion callback, whether a chain walk goes on: given a fetched record
/// and its address, `Some(earlier address)` to read that record next, `None` to hand this one
/// to the operation.
pub type ChainStep = Box<dyn FnMut(Address, &RecordBytes) -> Option<Address> + Send>;

/// Completion of a record fetch: the address of the last record read, and it (or the error).
pub type FetchDone = Box<dyn FnOnce(Address, Result<RecordBytes>) + Send>;

/// A record fetch in progress (one or more device reads).
struct Fetch {
    address: Address,
    follow: Option<ChainStep>,
    done: FetchDone,
    /// Records followed inside callbacks so far.
    hops: u32,
}

/// Counts of record reads (see [`HybridLog::record_reads`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordReads {
    /// Device reads issued for records (first and second reads).
    pub submitted: u64,
    /// Of those, the ones the device completed.
    pub completed: u64,
    /// Second reads: records longer than the first read covered.
    pub rereads: u64,
    /// Records a chain walk took from a buffer an earlier read had already brought (the
    /// read's look-back, [`HybridLog::set_read_lookback`]), with no device read of their own.
    pub in_buffer: u64,
}
/// Fewest in-memory frames a log may have.
pub const MIN_FRAMES: u64 = 4;

/// Frame state tags (invariant 11), in the low two bits of `page << 2 | tag`.
const FRAME_TAG: u64 = 3;
const FRAME_LIVE: u64 = 0;
const FRAME_RELEASING: u64 = 1;
const FRAME_RELEASED: u64 = 2;
const FRAME_OPENING: u64 = 3;

/// Why an allocation did not succeed now.
#[derive(Debug)]
pub enum AllocError {
    /// The next page is not open yet (its frame is still being flushed/evicted): refresh the
    /// epoch and retry the operation.
    RetryLater,
    /// A hard failure.
    Fatal(Error),
}

/// A page frame: aligned, zero-initialised memory accessed only through atomics (and by the
/// device, which reads it only under invariant 3).
struct Frame {
    buf: AlignedBuf,
}

impl Frame {
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the buffer is 4096-aligned, its length a multiple of 8, zero-initialised, and
        // AtomicU64 has the size and alignment of u64 with every bit pattern valid. After
        // construction the memory is only touched through these atomics, by `zero` while no
        // thread can reach it (invariant 5), and by device I/O under invariant 3.
        unsafe {
            std::slice::from_raw_parts(self.buf.as_ptr().cast::<AtomicU64>(), self.buf.len() / 8)
        }
    }
}

/// The hybrid log over device `D`.
pub struct HybridLog<D: Disk> {
    disk: D,
    epoch: Arc<LightEpoch>,
    geo: PageGeometry,
    frames: Box<[Frame]>,
    /// Fraction of the live pages that is mutable.
    mutable_fraction: f64,
    /// Whether at least one read-only page is kept ([`HybridLog::keep_read_only_page`]).
    keeps_read_only_page: bool,
    /// Pages kept in memory (invariant 10), at most `frames`.
    live_pages: AtomicU64,
    /// Per frame: `page << 2 | tag` (invariant 11).
    frame_state: Box<[AtomicU64]>,
    /// Device reads of records within this many bytes below `head` are counted in
    /// `ghost_reads` (0: not counted): reads that this much more log memory would have saved.
    ghost_probe: StdAtomicU64,
    ghost_reads: StdAtomicU64,
    tail: CachePadded<AtomicU64>,
    opening: CachePadded<AtomicU64>,
    begin: CachePadded<AtomicU64>,
    head: CachePadded<AtomicU64>,
    safe_head: CachePadded<AtomicU64>,
    read_only: CachePadded<AtomicU64>,
    safe_read_only: CachePadded<AtomicU64>,
    flushed_until: CachePadded<AtomicU64>,
    head_target: AtomicU64,
    /// For each frame: 1 + the highest page whose flush from this frame completed.
    frame_flushed: Box<[AtomicU64]>,
    inflight: StdAtomicU64,
    /// The failed pages and why their last write failed (invariant 9).
    failed: Mutex<BTreeMap<u64, String>>,
    /// Whether `failed` is not empty (set and cleared under its lock).
    poisoned: AtomicBool,
    /// Held by [`HybridLog::retry_failed_writes`]: one retry of the failed pages at a time.
    retrying: Mutex<()>,
    /// xxh3 of each page as written to the device (0: unknown), from the first page that a
    /// checkpoint may still need. Kept so that checkpoints can tell recovery what every page
    /// below their end must hash to; [`HybridLog::forget_sums_below`] drops truncated pages.
    page_sums: std::sync::Mutex<PageSums>,
    bytes_written: StdAtomicU64,
    bytes_read: StdAtomicU64,
    /// The read granularity of record fetches: the device's read alignment, at least 8.
    read_unit: u64,
    reads_submitted: StdAtomicU64,
    reads_completed: StdAtomicU64,
    rereads: StdAtomicU64,
    in_buffer: StdAtomicU64,
    /// Bytes before a record that its first read also covers (within its page), so that a
    /// chain walk finds predecessors written just below it in the same buffer.
    read_lookback: StdAtomicU64,
    /// Bytes of log (`tail - begin`) past which writers are slowed (`u64::MAX`: never).
    size_limit: StdAtomicU64,
    /// The log was past `size_limit` when a page last opened or `begin` last moved. Read
    /// before every general-path operation: on a line of its own, away from the I/O counters.
    over_limit: CachePadded<AtomicBool>,
}

/// Page hashes from page `first` on.
#[derive(Debug, Default)]
struct PageSums {
    first: u64,
    sums: std::collections::VecDeque<u64>,
}

/// Snapshot of the markers, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMarkers {
    /// First address still in the log.
    pub begin: Address,
    /// Below this, no thread reads records in memory any more: the most that compaction and
    /// truncation may take.
    pub safe_head: Address,
    /// Below this, records are on disk only.
    pub head: Address,
    /// Flushed to the device up to here.
    pub flushed_until: Address,
    /// Below this (and above head), records are copied on update.
    pub safe_read_only: Address,
    /// Below this, no new in-place update starts.
    pub read_only: Address,
    /// Next address to allocate.
    pub tail: Address,
}

fn tail_word(page: u64, offset: u64) -> u64 {
    page << 32 | offset
}

impl<D: Disk> HybridLog<D> {
    /// A log of `frames` pages of `2^page_bits` bytes over `disk`, with `mutable_fraction` of
    /// the in-memory pages mutable.
    ///
    /// # Errors
    /// [`Error::Config`] for a page size or frame count out of range.
    pub fn new(
        disk: D,
        epoch: Arc<LightEpoch>,
        page_bits: u32,
        frames: u64,
        mutable_fraction: f64,
    ) -> Result<Self> {
        if !(MIN_PAGE_BITS..=MAX_PAGE_BITS).contains(&page_bits) {
            return Err(Error::Config {
                field: "page_size",
                reason: format!(
                    "must be 2^{MIN_PAGE_BITS}..=2^{MAX_PAGE_BITS} bytes, got 2^{page_bits}"
                ),
            });
        }
        if frames < MIN_FRAMES {
            return Err(Error::Config {
                field: "log_memory_size",
                reason: format!("needs at least {MIN_FRAMES} pages"),
            });
        }
        if !(0.0..=1.0).contains(&mutable_fraction) {
            return Err(Error::Config {
                field: "mutable_fraction",
                reason: format!("{mutable_fraction} is not in 0..=1"),
            });
        }
        if (1u64 << page_bits) % disk.alignment() as u64 != 0 {
            return Err(Error::Config {
                field: "page_size",
                reason: format!(
                    "must be a multiple of the device alignment {}",
                    disk.alignment()
                ),
            });
        }
        let read_unit = disk.read_alignment();
        if !read_unit.is_power_of_two() || disk.alignment() % read_unit != 0 {
            return Err(Error::Config {
                field: "disk",
                reason: format!(
                    "read alignment {read_unit} does not divide the write alignment {}",
                    disk.alignment()
                ),
            });
        }
        let read_unit = read_unit.max(8) as u64;
        let geo = PageGeometry::new(page_bits, frames);
        let frames_vec: Box<[Frame]> = (0..frames)
            .map(|_| Frame {
                buf: AlignedBuf::zeroed_lazy(1 << page_bits),
            })
            .collect();
        let first = Address::FIRST_VALID.raw();
        Ok(Self {
            disk,
            epoch,
            geo,
            frames: frames_vec,
            mutable_fraction,
            keeps_read_only_page: false,
            live_pages: AtomicU64::new(frames),
            // Page 0 is open from the start (the tail is in it); the other frames are fresh.
            frame_state: (0..frames)
                .map(|f| AtomicU64::new(f << 2 | if f == 0 { FRAME_LIVE } else { FRAME_RELEASED }))
                .collect(),
            ghost_probe: StdAtomicU64::new(0),
            ghost_reads: StdAtomicU64::new(0),
            tail: CachePadded::new(AtomicU64::new(tail_word(0, first))),
            opening: CachePadded::new(AtomicU64::new(0)),
            begin: CachePadded::new(AtomicU64::new(first)),
            head: CachePadded::new(AtomicU64::new(first)),
            safe_head: CachePadded::new(AtomicU64::new(first)),
            read_only: CachePadded::new(AtomicU64::new(first)),
            safe_read_only: CachePadded::new(AtomicU64::new(first)),
            flushed_until: CachePadded::new(AtomicU64::new(0)),
            head_target: AtomicU64::new(first),
            frame_flushed: (0..frames).map(|_| AtomicU64::new(0)).collect(),
            inflight: StdAtomicU64::new(0),
            failed: Mutex::new(BTreeMap::new()),
            poisoned: AtomicBool::new(false),
            retrying: Mutex::new(()),
            page_sums: std::sync::Mutex::new(PageSums::default()),
            bytes_written: StdAtomicU64::new(0),
            bytes_read: StdAtomicU64::new(0),
            read_unit,
            reads_submitted: StdAtomicU64::new(0),
            reads_completed: StdAtomicU64::new(0),
            rereads: StdAtomicU64::new(0),
            in_buffer: StdAtomicU64::new(0),
            read_lookback: StdAtomicU64::new(0),
            size_limit: StdAtomicU64::new(u64::MAX),
            over_limit: CachePadded::new(AtomicBool::new(false)),
        })
    }

    /// Keeps at least one page between `head` and `read_only` (the read-only region), fewer
    /// mutable pages if need be: the read cache walks each page there before it leaves memory
    /// (`read_cache`, invariant 9). With the default mutable fraction (0.9) and 16 frames,
    /// `head` and `read_only` would otherwise sit on the same page, and a page would go from
    /// mutable to the device with no moment at which it is both immutable and in memory.
    pub fn keep_read_only_page(&mut self) {
        self.keeps_read_only_page = true;
    }

    /// Mutable pages when `live` pages are kept in memory: the mutable fraction of them, at
    /// least one; head keeps one frame free ahead of the tail, so read-only sits at most
    /// `live - 2` pages behind the tail page (`live - 3` with a read-only page kept).
    fn mutable_pages(&self, live: u64) -> u64 {
        let keep = if self.keeps_read_only_page { 3 } else { 2 };
        ((live as f64 * self.mutable_fraction).floor() as u64)
            .min(live.saturating_sub(keep))
            .max(1)
    }

    /// Pages the log keeps in memory (invariant 10).
    #[must_use]
    pub fn live_pages(&self) -> u64 {
        self.live_pages.load(Ordering::Relaxed)
    }

    /// Keeps `pages` pages in memory from now on, clamped to [`MIN_FRAMES`]..=frames
    /// (invariant 10); returns the value set. Lowering it moves `head` up as soon as the
    /// pages below are flushed, and the frames it passes are released (invariant 11).
    pub fn set_live_pages(&self, pages: u64) -> u64 {
        let pages = pages.clamp(MIN_FRAMES, self.geo.frames);
        self.live_pages.store(pages, Ordering::Relaxed);
        let tail_page = self.tail.load(Ordering::Acquire) >> 32;
        self.shift_markers(tail_page);
        pages
    }

    /// Bytes of the pages the log keeps in memory (invariant 10).
    #[must_use]
    pub fn live_bytes(&self) -> usize {
        (self.live_pages() as usize) << self.geo.page_bits
    }

    /// Frames whose memory is not released (a page in memory, or one that left it while all
    /// frames were live): what the log's memory costs in RSS, in frames.
    #[must_use]
    pub fn resident_frames(&self) -> u64 {
        let released = self
            .frame_state
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) & FRAME_TAG == FRAME_RELEASED)
            .count() as u64;
        self.geo.frames - released
    }

    /// Counts device reads of records within `bytes` below `head` from now on (0: stops).
    pub fn set_ghost_probe(&self, bytes: u64) {
        self.ghost_probe.store(bytes, StdOrdering::Relaxed);
    }

    /// Device reads of records within the ghost probe below `head` so far.
    #[must_use]
    pub fn ghost_reads(&self) -> u64 {
        self.ghost_reads.load(StdOrdering::Relaxed)
    }

    /// A log over `disk` whose records up to `start` (a page boundary) are on the device and
    /// whose first address is `begin`: what recovery opens. Memory starts empty; the tail
    /// opens page `start`.
    ///
    /// # Errors
    /// As [`HybridLog::new`]; [`Error::Config`] if `start` is not a page boundary.
    pub fn recovered(
        disk: D,
        epoch: Arc<LightEpoch>,
        page_bits: u32,
        frames: u64,
        mutable_fraction: f64,
        begin: Address,
        start: Address,
    ) -> Result<Self> {
        let log = Self::new(disk, epoch, page_bits, frames, mutable_fraction)?;
        let page = log.geo.page(start);
        if log.geo.page_start(page) != start || page == 0 {
            return Err(Error::Config {
                field: "page_size",
                reason: format!("recovery point {start} is not a page boundary of this log"),
            });
        }
        for m in [
            &log.head,
            &log.safe_head,
            &log.read_only,
            &log.safe_read_only,
        ] {
            m.store(start.raw(), Ordering::Release);
        }
        log.flushed_until.store(start.raw(), Ordering::Release);
        log.head_target.store(start.raw(), Ordering::Release);
        log.begin.store(begin.raw(), Ordering::Release);
        log.opening.store(page, Ordering::Release);
        log.tail.store(tail_word(page, 0), Ordering::Release);
        // The tail's page is open without `open_page`: its frame is in use (invariant 11).
        log.frame_state[0].store(FRAME_RELEASED, Ordering::Relaxed);
        log.frame_state[log.geo.frame(page)].store(page << 2 | FRAME_LIVE, Ordering::Release);
        Ok(log)
    }

    /// Reads the newest pages below the tail of a [`HybridLog::recovered`] log back into memory
    /// (as many as fit with one frame kept free: the pages they were before the crash, read-only
    /// now) and moves head down to the first of them, so the recovered store starts warm.
    /// `&mut self`: only before the log is shared.
    ///
    /// Readers of memory trust what they find there, while every record read from the device
    /// is verified first (see `core::record`). So a page is loaded only if each of its records
    /// verifies, reading from the newest page down; the first that does not (bit rot, a torn
    /// write) and every page below it stay on the device only, where a read of a damaged
    /// record reports [`Error::Corrupt`] instead of a wrong value.
    ///
    /// # Errors
    /// [`Error::Io`] from the device.
    pub fn load_tail(&mut self) -> Result<()> {
        let tail_page = self.geo.page(self.tail_address());
        let first_page = self.geo.page(self.begin());
        let first = tail_page
            .saturating_sub(self.live_pages() - 2)
            .max(first_page);
        let mut loaded = tail_page;
        for page in (first..tail_page).rev() {
            let offset = self.geo.page_start(page).raw();
            let buf = read_device(&self.disk, offset, self.page_size())?;
            if let Err(reason) = verify_page(page, buf.as_slice()) {
                tracing::warn!(
                    page,
                    reason,
                    "a recovered log page does not verify: it and the pages below it stay on \
                     the device, where reading a damaged record reports it"
                );
                break;
            }
            let frame = self.frames[self.geo.frame(page)].buf.as_mut_slice();
            frame.copy_from_slice(buf.as_slice());
            crate::core::record::clear_transient_bits(frame, first_record_offset(page));
            self.frame_state[self.geo.frame(page)].store(page << 2 | FRAME_LIVE, Ordering::Release);
            loaded = page;
        }
        let head = self.geo.page_start(loaded).max(self.begin()).raw();
        for m in [&self.head, &self.safe_head, &self.head_target] {
            m.store(head, Ordering::Release);
        }
        Ok(())
    }

    /// The epoch this log's memory is protected by.
    pub(crate) fn epoch(&self) -> &LightEpoch {
        &self.epoch
    }

    /// Page geometry.
    #[must_use]
    pub fn geometry(&self) -> PageGeometry {
        self.geo
    }

    /// Bytes of one page (the largest record).
    #[must_use]
    pub fn page_size(&self) -> usize {
        1 << self.geo.page_bits
    }

    /// The device.
    #[must_use]
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// Bytes of in-memory frames.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.frames.len() << self.geo.page_bits
    }

    /// Bytes written to and read from the device so far.
    #[must_use]
    pub fn io_bytes(&self) -> (u64, u64) {
        (
            self.bytes_written.load(StdOrdering::Relaxed),
            self.bytes_read.load(StdOrdering::Relaxed),
        )
    }

    /// The error that poisoned the log, if any (invariant 9).
    ///
    /// # Errors
    /// [`Error::Poisoned`] while a page whose write failed has not been written since.
    pub fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(StdOrdering::Acquire) {
            let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, why)) = failed.first_key_value() {
                return Err(Error::Poisoned(why.clone()));
            }
        }
        Ok(())
    }

    /// The write of `page` failed: the log is poisoned until a write of it succeeds.
    fn set_failed(&self, page: u64, why: String) {
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        // Once per page: a retry on a device that is still full fails again.
        if failed.contains_key(&page) {
            tracing::debug!(reason = %why, "a failed log page failed again");
        } else {
            tracing::error!(reason = %why, "log device write failed: the store is poisoned (no new page opens until the failed pages are written again or the store is reopened)");
        }
        failed.insert(page, why);
        self.poisoned.store(true, StdOrdering::Release);
    }

    /// A write of `page` succeeded: it is no longer failed, and the poison lifts with the last
    /// failed page.
    fn clear_failed(&self, page: u64) {
        if !self.poisoned.load(StdOrdering::Acquire) {
            return;
        }
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        if failed.remove(&page).is_some() && failed.is_empty() {
            self.poisoned.store(false, StdOrdering::Release);
            tracing::info!(
                page,
                "failed log pages written again: the store is no longer poisoned"
            );
        }
    }

    /// Writes every page whose write failed again (invariant 9) and waits for those writes;
    /// when all succeed, the poison lifts. Returns at once when the log is not poisoned. The
    /// caller must not be epoch protected (it waits for the device).
    ///
    /// # Errors
    /// [`Error::Poisoned`] when a page still fails (the device still refuses it).
    pub fn retry_failed_writes(&self) -> Result<()> {
        if !self.poisoned.load(StdOrdering::Acquire) {
            return Ok(());
        }
        let _one = self.retrying.lock().unwrap_or_else(PoisonError::into_inner);
        let pages: Vec<u64> = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        let (done, finished) = crossbeam_channel::bounded::<()>(0);
        for page in pages {
            tracing::debug!(page, "writing a failed log page again");
            self.write_page(page, Some(done.clone()));
        }
        drop(done);
        // Each write's callback drops its sender when it has finished: this returns once
        // every one has (a device calls back exactly once).
        while finished.recv().is_ok() {}
        self.check_poison()
    }

    /// Current marker values.
    #[must_use]
    pub fn markers(&self) -> LogMarkers {
        LogMarkers {
            begin: Address::new(self.begin.load(Ordering::Acquire)),
            safe_head: self.safe_head_address(),
            head: Address::new(self.head.load(Ordering::Acquire)),
            flushed_until: Address::new(self.flushed_until.load(Ordering::Acquire)),
            safe_read_only: Address::new(self.safe_read_only.load(Ordering::Acquire)),
            read_only: Address::new(self.read_only.load(Ordering::Acquire)),
            tail: self.tail_address(),
        }
    }

    /// First address still in the log.
    #[inline]
    #[must_use]
    pub fn begin(&self) -> Address {
        Address::new(self.begin.load(Ordering::Acquire))
    }

    /// Below this address records are on the device only.
    #[inline]
    #[must_use]
    pub fn head(&self) -> Address {
        Address::new(self.head.load(Ordering::Acquire))
    }

    /// Below this address (and at or above head) records are immutable.
    #[inline]
    #[must_use]
    pub fn safe_read_only(&self) -> Address {
        Address::new(self.safe_read_only.load(Ordering::Acquire))
    }

    /// At or above this address records may be updated in place.
    #[inline]
    #[must_use]
    pub fn read_only(&self) -> Address {
        Address::new(self.read_only.load(Ordering::Acquire))
    }

    /// The next address to be allocated.
    #[must_use]
    pub fn tail_address(&self) -> Address {
        let t = self.tail.load(Ordering::Acquire);
        let offset = (t & 0xffff_ffff).min(self.page_size() as u64);
        Address::new(((t >> 32) << self.geo.page_bits) + offset)
    }

    /// The record at `address`, which the caller (epoch-protected) saw at or above `head`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the bytes there are not a record.
    #[inline]
    pub fn record(&self, address: Address) -> Result<RecordRef<'_>> {
        let frame = &self.frames[self.geo.frame(self.geo.page(address))];
        let off = (self.geo.offset(address) / 8) as usize;
        match RecordRef::parse(&frame.words()[off..]) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Error::Corrupt {
                address: address.raw(),
                reason: "no record at this address".into(),
            }),
            Err(reason) => Err(Error::Corrupt {
                address: address.raw(),
                reason: reason.into(),
            }),
        }
    }

    /// The `N` words at `address` (which the caller, epoch-protected, saw at or above `head`),
    /// or `None` if they would run past the end of the page. The fast paths read word 1 before
    /// trusting the shape; only a corrupt record could claim words past its page, and the
    /// general path reports that.
    #[inline(always)]
    pub fn words_at<const N: usize>(&self, address: Address) -> Option<&[AtomicU64; N]> {
        let frame = self.frames.get(self.geo.frame(self.geo.page(address)))?;
        let off = (self.geo.offset(address) / 8) as usize;
        frame.words().get(off..off + N)?.try_into().ok()
    }

    /// The record at `address` of an in-memory page, or `None` where the page's records end;
    /// the caller is epoch protected and saw the page at or above `head`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the words there do not parse as a record.
    pub fn record_in_page(&self, address: Address) -> Result<Option<RecordRef<'_>>> {
        let frame = &self.frames[self.geo.frame(self.geo.page(address))];
        let off = (self.geo.offset(address) / 8) as usize;
        let words = frame.words().get(off..).unwrap_or(&[]);
        if words.len() * 8 < HEADER_BYTES {
            return Ok(None);
        }
        RecordRef::parse(words).map_err(|reason| Error::Corrupt {
            address: address.raw(),
            reason: reason.into(),
        })
    }

    /// Starts loading every cache line of the `bytes` from `address` that lie in its page, if
    /// the record is in memory (a hint; the caller is epoch protected).
    #[inline]
    pub fn prefetch_span(&self, address: Address, bytes: usize) {
        if address >= self.head() && address < self.tail_address() {
            let frame = &self.frames[self.geo.frame(self.geo.page(address))];
            let off = self.geo.offset(address) as usize;
            let end = (off + bytes).min(frame.buf.len());
            let base = frame.buf.as_ptr();
            for line in (off & !63..end).step_by(64) {
                crate::core::alloc::prefetch(base.wrapping_add(line));
            }
        }
    }

    /// The words of freshly allocated space at `address` (the caller owns them until it
    /// publishes the record).
    #[must_use]
    pub fn space(&self, address: Address, size: usize) -> &[AtomicU64] {
        let frame = &self.frames[self.geo.frame(self.geo.page(address))];
        let off = (self.geo.offset(address) / 8) as usize;
        &frame.words()[off..off + size / 8]
    }

    /// Allocates `size` bytes (a multiple of 8, at most a page) at the tail.
    ///
    /// # Errors
    /// [`AllocError::RetryLater`] when the next page is not ready (invariant 7);
    /// [`AllocError::Fatal`] when the log is poisoned or cannot evict.
    pub fn allocate(&self, size: usize) -> Result<Address, AllocError> {
        debug_assert!(size % 8 == 0 && size <= self.page_size());
        let page_size = self.page_size() as u64;
        let size = size as u64;
        loop {
            let cur = self.tail.load(Ordering::Acquire);
            let (page, offset) = (cur >> 32, cur & 0xffff_ffff);
            if offset > page_size {
                self.open_page(page + 1)?;
                continue;
            }
            let old = self.tail.fetch_add(size, Ordering::AcqRel);
            let (page, offset) = (old >> 32, old & 0xffff_ffff);
            if offset + size <= page_size {
                return Ok(Address::new((page << self.geo.page_bits) + offset));
            }
            // The page is full: this or a later round opens the next one.
        }
    }

    /// Opens page `page` once its frame is free (invariants 5 and 6).
    fn open_page(&self, page: u64) -> Result<(), AllocError> {
        self.check_poison().map_err(AllocError::Fatal)?;
        if self.tail.load(Ordering::Acquire) >> 32 >= page {
            return Ok(());
        }
        let frames = self.geo.frames;
        // At most `live_pages` pages in memory (invariant 10), whatever the flushes' pace;
        // with all frames live this is invariant 5's condition for reusing the frame.
        let live = self.live_pages();
        if page >= live {
            let must_be_gone = self.geo.page_start(page - live + 1).raw();
            if self.safe_head.load(Ordering::Acquire) < must_be_gone {
                if !self.disk.is_persistent() {
                    return Err(AllocError::Fatal(Error::LogFull {
                        memory: self.memory_bytes(),
                    }));
                }
                self.shift_markers(page - 1);
                return Err(AllocError::RetryLater);
            }
        }
        // Invariant 11: claim the frame before `opening`, so that no release overlaps its reuse.
        let claimed = if page >= frames {
            let state = &self.frame_state[self.geo.frame(page)];
            let s = state.load(Ordering::Acquire);
            if s & FRAME_TAG == FRAME_RELEASING || s >> 2 >= page {
                return Err(AllocError::RetryLater);
            }
            if state
                .compare_exchange(
                    s,
                    page << 2 | FRAME_OPENING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                return Err(AllocError::RetryLater);
            }
            Some((state, s))
        } else {
            None
        };
        if self
            .opening
            .compare_exchange(page - 1, page, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            if let Some((state, s)) = claimed {
                state.store(s, Ordering::Release);
            }
            return Err(AllocError::RetryLater);
        }
        if let Some((state, s)) = claimed {
            if s & FRAME_TAG != FRAME_RELEASED {
                let frame = &self.frames[self.geo.frame(page)];
                // SAFETY: invariant 5: safe_head passed the frame's old page, so no thread can
                // read it, and it was flushed (head <= flushed_until), so the device no longer
                // reads it. Only this thread (winner of the frame's claim and of `opening`)
                // writes the frame until the tail opens it; no release runs on it (11).
                unsafe {
                    std::ptr::write_bytes(frame.buf.as_ptr().cast_mut(), 0, frame.buf.len());
                }
            }
            state.store(page << 2 | FRAME_LIVE, Ordering::Release);
        } else {
            // First use of a fresh frame (zeroed by the kernel): no release can target it
            // before this (its state names no live page), so a plain store claims it.
            self.frame_state[self.geo.frame(page)].store(page << 2 | FRAME_LIVE, Ordering::Release);
        }
        self.tail.store(tail_word(page, 0), Ordering::Release);
        self.shift_markers(page);
        self.check_size(self.geo.page_start(page));
        Ok(())
    }

    /// Sets the log size (`tail - begin`) past which [`HybridLog::over_limit`] says so.
    pub fn set_size_limit(&self, bytes: u64) {
        self.size_limit.store(bytes, StdOrdering::Relaxed);
        self.check_size(self.tail_address());
    }

    /// Whether the log was past its size limit when a page last opened or `begin` last moved
    /// (one relaxed load: what operations check before they start).
    #[inline]
    pub fn over_limit(&self) -> bool {
        self.over_limit.load(StdOrdering::Relaxed)
    }

    fn check_size(&self, tail: Address) {
        let size = tail
            .raw()
            .saturating_sub(self.begin.load(Ordering::Acquire));
        let over = size > self.size_limit.load(StdOrdering::Relaxed);
        if over != self.over_limit.load(StdOrdering::Relaxed) {
            self.over_limit.store(over, StdOrdering::Relaxed);
        }
    }

    /// Moves read-only and the head target for a tail now in page `tail_page`.
    fn shift_markers(&self, tail_page: u64) {
        // Over a device that keeps nothing (NullDisk) nothing is ever flushed or evicted, so the
        // whole log stays mutable: every update in place, and a full log reports LogFull.
        if !self.disk.is_persistent() {
            return;
        }
        let live = self.live_pages();
        let mutable = self.mutable_pages(live);
        if tail_page >= mutable {
            self.shift_read_only(self.geo.page_start(tail_page - mutable));
        }
        if tail_page + 2 > live {
            let target = self.geo.page_start(tail_page + 2 - live).raw();
            self.head_target.fetch_max(target, Ordering::AcqRel);
            self.try_shift_head();
        }
    }

    /// Moves read-only forward to `to` (page aligned) and schedules the flush.
    pub fn shift_read_only(&self, to: Address) {
        let prev = self.read_only.fetch_max(to.raw(), Ordering::AcqRel);
        if prev >= to.raw() {
            return;
        }
        let me = self as *const Self as usize;
        self.epoch.bump_epoch(move || {
            // SAFETY: invariant 8: the log outlives every action of its epoch.
            let this = unsafe { &*(me as *const Self) };
            this.on_safe_read_only(to);
        });
    }

    fn on_safe_read_only(&self, to: Address) {
        let old = self.safe_read_only.fetch_max(to.raw(), Ordering::AcqRel);
        if old >= to.raw() {
            return;
        }
        let first = self.geo.page(Address::new(old));
        let last = self.geo.page(to); // exclusive: `to` is page aligned
        for page in first..last {
            self.flush_page(page);
        }
    }

    fn flush_page(&self, page: u64) {
        self.write_page(page, None);
    }

    /// Writes page `page` from its frame (a flush, or a retry of a failed one, which
    /// `done` is dropped after: see [`HybridLog::retry_failed_writes`]).
    fn write_page(&self, page: u64, done: Option<crossbeam_channel::Sender<()>>) {
        let frame = &self.frames[self.geo.frame(page)];
        let me = self as *const Self as usize;
        let len = frame.buf.len();
        // Invariant 3: the page no longer changes, so its records get their checksums (see
        // `core::record`) and this is the hash of what gets written.
        stamp_checksums(page, frame.words());
        let sum = page_hash(page, frame.buf.as_slice());
        self.inflight.fetch_add(1, StdOrdering::AcqRel);
        let callback = Box::new(move |r: std::io::Result<usize>| {
            // SAFETY: invariant 8: Drop waits for `inflight` to reach zero, and this callback
            // touches the log only before its decrement below.
            let this = unsafe { &*(me as *const Self) };
            match r {
                Ok(n) if n == len => {
                    this.bytes_written.fetch_add(n as u64, StdOrdering::Relaxed);
                    this.set_page_sum(page, sum);
                    this.frame_flushed[this.geo.frame(page)].fetch_max(page + 1, Ordering::AcqRel);
                    this.advance_flushed_until();
                    this.clear_failed(page);
                    this.try_shift_head();
                }
                Ok(n) => this.set_failed(
                    page,
                    format!("short write of page {page}: {n} of {len} bytes"),
                ),
                Err(e) => this.set_failed(page, format!("write of page {page} failed: {e}")),
            }
            this.inflight.fetch_sub(1, StdOrdering::AcqRel);
            // Not the log: the retry waiting for it holds the log alive anyway.
            drop(done);
        });
        // SAFETY: invariant 3: the page is below safe_read_only, so its bytes stay unchanged,
        // and its frame is not reused before this flush completes (invariants 4 and 5; a
        // failed page's frame is not reused before a retry of it succeeds, 9); offset,
        // length and address are page aligned, and pages are multiples of the device alignment.
        unsafe {
            self.disk.write_async(
                self.geo.page_start(page).raw(),
                frame.buf.as_ptr(),
                len,
                callback,
            );
        }
    }

    fn advance_flushed_until(&self) {
        loop {
            let f = self.flushed_until.load(Ordering::Acquire);
            let page = self.geo.page(Address::new(f));
            if self.frame_flushed[self.geo.frame(page)].load(Ordering::Acquire) < page + 1 {
                return;
            }
            let next = self.geo.page_start(page + 1).raw();
            let _ =
                self.flushed_until
                    .compare_exchange(f, next, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn try_shift_head(&self) {
        let target = self
            .head_target
            .load(Ordering::Acquire)
            .min(self.flushed_until.load(Ordering::Acquire));
        let prev = self.head.fetch_max(target, Ordering::AcqRel);
        if prev >= target {
            return;
        }
        let me = self as *const Self as usize;
        self.epoch.bump_epoch(move || {
            // SAFETY: invariant 8.
            let this = unsafe { &*(me as *const Self) };
            let old = this.safe_head.fetch_max(target, Ordering::AcqRel);
            if old < target && this.live_pages() < this.geo.frames {
                let to = this.geo.page(Address::new(target));
                let from = this
                    .geo
                    .page(Address::new(old))
                    .max(to.saturating_sub(this.geo.frames));
                this.release_frames(from, to);
            }
        });
    }

    /// Releases the frames of pages `from..to`, which `safe_head` passed (invariant 11).
    fn release_frames(&self, from: u64, to: u64) {
        for page in from..to {
            let f = self.geo.frame(page);
            let state = &self.frame_state[f];
            let live = page << 2 | FRAME_LIVE;
            if state
                .compare_exchange(
                    live,
                    page << 2 | FRAME_RELEASING,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            // SAFETY: invariant 11: the frame holds page `page`, below `safe_head`, so no
            // thread reads it (2) and its flush completed (4: head <= flushed_until); the
            // RELEASING claim keeps every opener out until the store below.
            unsafe { self.frames[f].buf.discard() };
            state.store(page << 2 | FRAME_RELEASED, Ordering::Release);
        }
    }

    /// Reads the record at `address` (below head) from the device; then, while `follow` says
    /// the record is not the one wanted and names an earlier record at or above `begin`,
    /// reads that one, all from inside the device's completion callbacks; then calls `done`
    /// with the address of the last record read and the record (or the error).
    ///
    /// This is how a chain walk on disk keeps going without its operation being polled (see
    /// `ops::pending`). In a callback the walk holds no epoch protection and needs none: it
    /// only reads the device below head, where records never change (invariant 4; `prev`
    /// pointers go backwards, so every record it reaches is below head too). It never follows
    /// a pointer below the current `begin`: such a record may have been truncated, and the
    /// operation decides what that means (restart from the index, or absent). A callback
    /// checks one record and issues one read; after [`CHAIN_HOPS`] hops in a row it hands the
    /// record to `done` anyway, which bounds the stack of a device that calls back inline.
    pub fn read_chain_async(&self, address: Address, follow: Option<ChainStep>, done: FetchDone) {
        let probe = self.ghost_probe.load(StdOrdering::Relaxed);
        if probe > 0 && address.raw().saturating_add(probe) >= self.head.load(Ordering::Relaxed) {
            self.ghost_reads.fetch_add(1, StdOrdering::Relaxed);
        }
        // Held across the whole chain: invariant 8.
        self.inflight.fetch_add(1, StdOrdering::AcqRel);
        self.read_part(
            Fetch {
                address,
                follow,
                done,
                hops: 0,
            },
            None,
        );
    }

    /// The read granularity: the device's read alignment (see [`Disk::read_alignment`]),
    /// at least 8.
    #[must_use]
    pub fn read_unit(&self) -> u64 {
        self.read_unit
    }

    /// Record reads issued to the device, completed by it, and second reads of records longer
    /// than their first read.
    #[must_use]
    pub fn record_reads(&self) -> RecordReads {
        RecordReads {
            submitted: self.reads_submitted.load(StdOrdering::Relaxed),
            completed: self.reads_completed.load(StdOrdering::Acquire),
            rereads: self.rereads.load(StdOrdering::Relaxed),
            in_buffer: self.in_buffer.load(StdOrdering::Relaxed),
        }
    }

    /// Bytes before a record that a record's first read also fetches, within the record's
    /// page: a chain walk whose next record lies in the buffer a read brought takes it from
    /// there, with no device read of its own ([`RecordReads::in_buffer`]). 0 (the default)
    /// reads from the record's own first unit. R2Kv's cold log sets it: its cold-to-cold
    /// compaction writes a chain's records next to each other, oldest first, so one read
    /// that looks back from the chain's head brings the whole chain.
    pub fn set_read_lookback(&self, bytes: u64) {
        self.read_lookback.store(bytes, StdOrdering::Relaxed);
    }

    /// See [`HybridLog::set_read_lookback`].
    #[must_use]
    pub fn read_lookback(&self) -> u64 {
        self.read_lookback.load(StdOrdering::Relaxed)
    }

    /// Issues one device read for `fetch`: the aligned units covering the record's first
    /// [`FIRST_READ_GUESS`] bytes and the look-back before it (`end: None`), or, for a record
    /// found longer than that, the units from the record's start up to `end` (a second read).
    fn read_part(&self, fetch: Fetch, end: Option<u64>) {
        let address = fetch.address.raw();
        let unit = self.read_unit;
        let page = self.geo.page(fetch.address);
        let (page_start, page_end) = (
            self.geo.page_start(page).raw(),
            self.geo.page_start(page + 1).raw(),
        );
        // Page bounds are multiples of every read unit (pages are multiples of the write
        // alignment, which the read unit divides), so start and length stay aligned.
        let second = end.is_some();
        let start = if second {
            align_down(address, unit)
        } else {
            let back = self.read_lookback.load(StdOrdering::Relaxed);
            align_down(address.saturating_sub(back).max(page_start), unit)
        };
        let end = end.unwrap_or_else(|| align_up(address + FIRST_READ_GUESS, unit).min(page_end));
        let len = (end - start) as usize;
        let mut buf = AlignedBuf::zeroed(len, unit as usize);
        let ptr = buf.as_mut_ptr();
        let me = self as *const Self as usize;
        if second {
            self.rereads.fetch_add(1, StdOrdering::Relaxed);
        }
        self.reads_submitted.fetch_add(1, StdOrdering::Relaxed);
        let callback = Box::new(move |r: std::io::Result<usize>| {
            // SAFETY: invariant 8 (see flush_page): the chain's `inflight` count is held
            // until `done` has run, so the log outlives this callback.
            let this = unsafe { &*(me as *const Self) };
            this.reads_completed.fetch_add(1, StdOrdering::AcqRel);
            let read = r.map(|n| {
                this.bytes_read.fetch_add(n as u64, StdOrdering::Relaxed);
                buf
            });
            this.on_read(fetch, start, read, !second);
        });
        // SAFETY: `buf` is moved into the callback, so its heap memory stays allocated and is
        // touched by nobody else until the device calls back. `start` and `end` are multiples
        // of the read unit (the page bounds are), and so is the buffer's address (allocated
        // with that alignment); the read unit is a multiple of the device's read alignment.
        unsafe { self.disk.read_async(start, ptr, len, callback) };
    }

    /// A device read of `fetch` finished (`read`: the buffer of the units from `start`): read
    /// the rest of a longer record, follow the chain (from this buffer while the next record
    /// lies whole in it, else with another read), or hand the record to `done`.
    ///
    /// A record taken from the buffer is exactly what its own read would have returned: it
    /// lies below head, where the device's bytes never change (invariant 4), and it is
    /// parsed and checksum-verified by whoever looks at it, like any fetched record.
    fn on_read(
        &self,
        mut fetch: Fetch,
        start: u64,
        mut read: std::io::Result<AlignedBuf>,
        first: bool,
    ) {
        loop {
            let address = fetch.address;
            let offset = (address.raw() - start) as usize;
            let result = match read {
                Err(e) => Err(Error::io(
                    format!("reading the record at log address {address}"),
                    e,
                )),
                Ok(buf) => match DiskRecord::size_from_prefix(&buf.as_slice()[offset..]) {
                    Some(size) if first && offset + size > buf.len() => {
                        let end = align_up(address.raw() + size as u64, self.read_unit);
                        let page_end = self.geo.page_start(self.geo.page(address) + 1).raw();
                        if size > self.page_size() || end > page_end {
                            Err(Error::Corrupt {
                                address: address.raw(),
                                reason: format!("record size {size} runs past its page"),
                            })
                        } else {
                            return self.read_part(fetch, Some(end));
                        }
                    }
                    _ => Ok(RecordBytes { buf, offset }),
                },
            };
            if let (Ok(bytes), Some(follow)) = (&result, fetch.follow.as_mut()) {
                if fetch.hops < CHAIN_HOPS {
                    if let Some(next) = follow(address, bytes).filter(|n| *n >= self.begin()) {
                        fetch.address = next;
                        fetch.hops += 1;
                        let Ok(RecordBytes { buf, .. }) = result else {
                            unreachable!("matched Ok above")
                        };
                        if Self::holds_whole(&buf, start, next) {
                            self.in_buffer.fetch_add(1, StdOrdering::Relaxed);
                            read = Ok(buf);
                            continue;
                        }
                        return self.read_part(fetch, None);
                    }
                }
            }
            (fetch.done)(address, result);
            self.inflight.fetch_sub(1, StdOrdering::AcqRel);
            return;
        }
    }

    /// Whether `buf` (the device's bytes from `start`) holds the whole record at `address`,
    /// as far as its size prefix says.
    fn holds_whole(buf: &AlignedBuf, start: u64, address: Address) -> bool {
        let Some(offset) = address.raw().checked_sub(start) else {
            return false;
        };
        let offset = offset as usize;
        offset < buf.len()
            && DiskRecord::size_from_prefix(&buf.as_slice()[offset..])
                .is_some_and(|size| offset + size <= buf.len())
    }

    /// Ends the tail page early so that everything allocated so far lies below a page boundary,
    /// which it returns (the end of a checkpoint). Allocations after this go to later pages. An
    /// empty open page is not closed: its start is returned.
    pub fn close_page(&self) -> Address {
        let page_size = self.page_size() as u64;
        loop {
            let cur = self.tail.load(Ordering::Acquire);
            let (page, offset) = (cur >> 32, cur & 0xffff_ffff);
            if offset == 0 {
                return self.geo.page_start(page);
            }
            if offset >= page_size {
                return self.geo.page_start(page + 1);
            }
            if self
                .tail
                .compare_exchange(
                    cur,
                    tail_word(page, page_size + 1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return self.geo.page_start(page + 1);
            }
        }
    }

    /// Records the hash of page `page` as it is on the device.
    pub fn set_page_sum(&self, page: u64, sum: u64) {
        let mut sums = self
            .page_sums
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if page < sums.first {
            return; // truncated away
        }
        let i = (page - sums.first) as usize;
        if sums.sums.len() <= i {
            sums.sums.resize(i + 1, 0);
        }
        sums.sums[i] = sum;
    }

    /// Hashes of pages `first..end` as on the device (0 where unknown or forgotten).
    #[must_use]
    pub fn page_sums(&self, first: u64, end: u64) -> Vec<u64> {
        let sums = self
            .page_sums
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (first..end)
            .map(|p| {
                p.checked_sub(sums.first)
                    .and_then(|i| sums.sums.get(i as usize).copied())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Drops the hashes of pages below `page` (their segments are gone), so the table stays as
    /// long as the live log, not as the log ever written.
    pub fn forget_sums_below(&self, page: u64) {
        let mut sums = self
            .page_sums
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if page <= sums.first {
            return;
        }
        let n = ((page - sums.first) as usize).min(sums.sums.len());
        sums.sums.drain(..n);
        sums.first = page;
    }

    /// Moves `begin` forward to `to` (never back): from then on addresses below it are not in
    /// the log. `to` must not pass `safe_head` (nothing truncated may still be in memory, or be
    /// read there by a thread that saw an older head). Sequentially consistent, for the
    /// checkpoint's pin of `begin` (see `ops::truncate`). Returns the begin before the call.
    ///
    /// # Errors
    /// [`Error::Config`] naming `to` when it is beyond `safe_head`.
    pub fn shift_begin(&self, to: Address) -> Result<Address> {
        let safe_head = self.safe_head_address();
        if to > safe_head {
            return Err(Error::Config {
                field: "truncate address",
                reason: format!(
                    "{to} is beyond the part of the log that is only on the device (safe head \
                     {safe_head})"
                ),
            });
        }
        let before = Address::new(self.begin.fetch_max(to.raw(), Ordering::SeqCst));
        self.check_size(self.tail_address());
        Ok(before)
    }

    /// `begin`, read sequentially consistent (the checkpoint's pin, see `ops::truncate`).
    #[must_use]
    pub fn begin_seq_cst(&self) -> Address {
        Address::new(self.begin.load(Ordering::SeqCst))
    }

    /// The first address that no thread may still read in memory.
    #[must_use]
    pub fn safe_head(&self) -> Address {
        self.safe_head_address()
    }

    /// Flushed to the device up to here.
    #[must_use]
    pub fn flushed_until(&self) -> Address {
        Address::new(self.flushed_until.load(Ordering::Acquire))
    }

    /// Copies page `page` into `out` (one page long) if it is still in memory. The caller must
    /// be epoch protected (so the frame cannot be reused while it is copied) and must know that
    /// the page's records below its own bound are complete and not changing in ways it cares
    /// about.
    #[must_use]
    pub fn copy_page(&self, page: u64, out: &mut AlignedBuf) -> bool {
        // Head is page aligned except at the very start (the first valid address of page 0).
        if page < self.geo.page(self.head()) {
            return false;
        }
        let words = self.frames[self.geo.frame(page)].words();
        for (dst, w) in out.as_mut_slice().chunks_exact_mut(8).zip(words) {
            dst.copy_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
        }
        // The frame may have been recycled while we copied if head moved past it.
        page >= self.geo.page(self.safe_head_address())
    }

    fn safe_head_address(&self) -> Address {
        Address::new(self.safe_head.load(Ordering::Acquire))
    }

    /// Reads `len` bytes at `offset` from the device, waiting for them (recovery, snapshots).
    ///
    /// # Errors
    /// [`Error::Io`] from the device.
    pub fn read_sync(&self, offset: u64, len: usize) -> Result<AlignedBuf> {
        read_device(&self.disk, offset, len)
    }

    /// Writes `buf` at `offset` on the device, waiting for it (recovery).
    ///
    /// # Errors
    /// [`Error::Io`] from the device.
    pub fn write_sync(&self, offset: u64, buf: &AlignedBuf) -> Result<()> {
        let len = buf.len();
        let n = wait_io(
            format!("writing {len} bytes at log offset {offset}"),
            |done| {
                // SAFETY: `buf` is borrowed until wait_io has the callback's result; the caller
                // passes aligned page multiples.
                unsafe { self.disk.write_async(offset, buf.as_ptr(), len, done) }
            },
        )?;
        if n != len {
            return Err(Error::io(
                format!("writing {len} bytes at log offset {offset}"),
                std::io::Error::other(format!("short write of {n} bytes")),
            ));
        }
        Ok(())
    }

    /// Waits until every flush issued so far has completed (for shutdown and tests). The caller
    /// must not be epoch-protected.
    pub fn wait_for_io(&self) {
        let mut round = 0;
        while self.inflight.load(StdOrdering::Acquire) > 0 {
            self.epoch.drain();
            crate::sync::backoff(&mut round);
        }
    }
}

impl<D: Disk> Drop for HybridLog<D> {
    fn drop(&mut self) {
        // Invariant 8: nothing may reach the log after this returns. No thread is protected
        // (nobody can hold a reference to a store being dropped), so every action is ready.
        self.epoch.drain();
        self.wait_for_io();
        self.epoch.drain();
    }
}

/// Reads `len` bytes at `offset` (aligned) from `disk`, waiting for them.
///
/// # Errors
/// [`Error::Io`] from the device.
pub fn read_device<D: Disk>(disk: &D, offset: u64, len: usize) -> Result<AlignedBuf> {
    let mut buf = AlignedBuf::zeroed(len, disk.alignment().max(4096));
    let ptr = buf.as_mut_ptr();
    wait_io(
        format!("reading {len} bytes at log offset {offset}"),
        |done| {
            // SAFETY: `buf` outlives the I/O (wait_io returns after the callback) and nobody else
            // touches it meanwhile; the caller passes aligned offset and length.
            unsafe { disk.read_async(offset, ptr, len, done) }
        },
    )?;
    Ok(buf)
}

/// Issues one device I/O through `issue` and waits for its callback; returns its byte count.
fn wait_io(context: String, issue: impl FnOnce(crate::device::IoCallback)) -> Result<usize> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    issue(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    match rx.recv() {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(Error::io(context, e)),
        Err(_) => Err(Error::io(
            context,
            std::io::Error::other("callback dropped"),
        )),
    }
}

/// Whether every record of the device image `bytes` of page `page` (up to the first unused
/// word) parses and carries its checksum; the reason if not.
fn verify_page(page: u64, bytes: &[u8]) -> std::result::Result<(), &'static str> {
    let mut off = first_record_offset(page);
    while off + HEADER_BYTES <= bytes.len() {
        match DiskRecord::parse(&bytes[off..])? {
            Some(rec) => off += rec.size(),
            None => break,
        }
    }
    Ok(())
}

/// Stamps every record of `page` (its frame's words) with its checksum, up to the first
/// unused or unparsable word.
fn stamp_checksums(page: u64, words: &[AtomicU64]) {
    let mut off = first_record_offset(page) / 8;
    while let Some(Ok(Some(rec))) = words.get(off..).map(RecordRef::parse) {
        rec.stamp_checksum();
        off += rec.size() / 8;
    }
}

/// The checksum of log page `page` (xxh3; never 0, which means "unknown"). Each record's
/// invalid bit and its record checksum (word 2's stamp field) are left out: recovery sets the
/// bit on records of a version that did not make the checkpoint, re-stamping them, and the page
/// must still verify when recovery runs again. Both stay covered by the record checksum, which
/// every reader of the record verifies.
#[must_use]
pub fn page_hash(page: u64, bytes: &[u8]) -> u64 {
    // Streamed in 64 KiB chunks through a small copy whose masked words are patched: hashing
    // record by record would cost a call per (often 40-byte) record.
    const CHUNK: usize = 64 << 10;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut scratch = [0u8; CHUNK];
    // The next record header, or None once the records end.
    let mut next = Some(first_record_offset(page).min(bytes.len()));
    // Word 2 of the last header, when it lies in a later chunk than its word 0.
    let mut carry: Option<usize> = None;
    for (c, chunk) in bytes.chunks(CHUNK).enumerate() {
        let base = c * CHUNK;
        let end = base + chunk.len();
        let copy = &mut scratch[..chunk.len()];
        copy.copy_from_slice(chunk);
        // Words are 8-aligned and chunks are multiples of 8: a word never straddles.
        let patch = |copy: &mut [u8], at: usize, mask: u64| {
            let w = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
            copy[at - base..at - base + 8].copy_from_slice(&(w & !mask).to_le_bytes());
        };
        if let Some(at) = carry.take() {
            patch(copy, at, ValueState::STAMP_MASK);
        }
        while let Some(off) = next.filter(|off| *off < end) {
            next = None;
            if off + HEADER_BYTES > bytes.len() {
                break;
            }
            let word0 = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap_or_default());
            let size = DiskRecord::size_from_prefix(&bytes[off..]).unwrap_or(0);
            if word0 == 0 || size < HEADER_BYTES || off + size > bytes.len() {
                break;
            }
            patch(copy, off, RecordInfo::INVALID_BIT);
            if off + 16 < end {
                patch(copy, off + 16, ValueState::STAMP_MASK);
            } else {
                carry = Some(off + 16);
            }
            next = Some(off + size);
        }
        h.update(copy);
    }
    h.digest().max(1)
}

/// A record read from the device: the buffer and the record's offset in it.
pub struct RecordBytes {
    buf: AlignedBuf,
    offset: usize,
}

impl RecordBytes {
    /// Parses the record.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the bytes are not a record.
    pub fn record(&self, address: Address) -> Result<DiskRecord<'_>> {
        match DiskRecord::parse(&self.buf.as_slice()[self.offset..]) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Error::Corrupt {
                address: address.raw(),
                reason: "no record on disk at this address".into(),
            }),
            Err(reason) => Err(Error::Corrupt {
                address: address.raw(),
                reason: reason.into(),
            }),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod page_hash_tests {
    use super::*;
    use crate::core::record::{invalidate_in, record_size, stamp_checksums_in};

    /// A page image of records of many sizes, stamped, and the offsets of their headers.
    fn page_of_records(len: usize) -> (Vec<u8>, Vec<usize>) {
        let mut page = vec![0u8; len];
        let (mut off, mut i) = (0usize, 0u64);
        let mut headers = Vec::new();
        loop {
            let cap = 8 * (1 + (i as usize * 7) % 13);
            let size = record_size(8, cap);
            if off + size > len {
                break;
            }
            let words = [
                (1u64 << 48) | (off as u64 + 64), // version 1, a previous address
                8 | (cap as u64) << 32,
                cap as u64,
            ];
            for (w, word) in words.iter().enumerate() {
                page[off + 8 * w..off + 8 * w + 8].copy_from_slice(&word.to_le_bytes());
            }
            page[off + 24..off + 32].copy_from_slice(&i.to_le_bytes());
            page[off + 32..off + size].fill(i as u8 | 1);
            headers.push(off);
            off += size;
            i += 1;
        }
        stamp_checksums_in(&mut page, 0);
        (page, headers)
    }

    /// Recovery's invalidation (invalid bit plus a new record checksum) leaves a page's sum
    /// unchanged, including for headers whose word 2 lies in the next 64 KiB chunk of the hash's
    /// stream; any other change of the page changes it.
    #[test]
    fn invalidation_keeps_the_page_sum_across_chunk_boundaries() {
        const CHUNK: usize = 64 << 10;
        let (mut page, headers) = page_of_records(256 << 10);
        assert!(
            headers.iter().any(|h| h / CHUNK != (h + 16) / CHUNK),
            "no header with word 2 in the next chunk: the carry is not covered"
        );
        let before = page_hash(1, &page);
        for h in &headers {
            invalidate_in(&mut page, *h).unwrap();
        }
        assert_eq!(page_hash(1, &page), before);
        for h in &headers {
            assert!(DiskRecord::parse(&page[*h..])
                .unwrap()
                .unwrap()
                .info()
                .invalid());
        }
        page[headers[3] + 40] ^= 1;
        assert_ne!(page_hash(1, &page), before);
    }
}
