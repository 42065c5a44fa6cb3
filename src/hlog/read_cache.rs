//! The read cache (FASTER's): a second in-memory log, never flushed, holding copies of records
//! that reads fetched from the device, spliced in front of their hash chains.
//!
//! # Shape
//! An index entry whose read-cache bit is set points at a [`CacheAddress`] here instead of a
//! log address. The record there has the log's record layout; its header's previous address is
//! where the chain continues in the log (the entry's log address when the copy was made), and
//! two words after its value (inside its value capacity, beyond the value's length) hold the
//! log address the copy was read from (its *source*) and the key's hash. An entry carries at
//! most one cache record, as in FASTER: a cache record never points at another, and a log
//! record's previous address is never a cache address.
//!
//! Memory is [`FRAMES`] frames of `size / FRAMES` bytes. Page `p` (pages are numbered from 0
//! and never reused) lives in frame `p % FRAMES`. Records are allocated at the tail (one CAS on
//! `page << OFFSET_BITS | offset`); a record never straddles pages. A cache address holds the
//! page number modulo 2^22 and the offset, so it wraps after 2^22 pages: only pages within
//! [`FRAMES`] of the tail are ever compared, and 2^22 is a multiple of [`FRAMES`].
//!
//! # Invariants
//! 1. *Insertion.* A copy is written, then published by a CAS of its entry from the entry the
//!    read saw when it started (before its first device read) to the copy. The CAS succeeds
//!    only if no record was added to the chain since: so the source is still the key's newest
//!    record, and the copy's previous address is the chain's log head. A failed CAS marks the
//!    copy invalid. The thread stays epoch protected from the allocation to the CAS.
//! 2. *Updates write past it.* Every update finds its chain's log head through the entry's
//!    copy, gives its new record that previous address, and CASes the entry (cache address
//!    included) to its record: the copy is unlinked. So a linked copy is always its key's
//!    newest value, and an update with no floor (an RMW, a conditional insert of any record)
//!    that finds its key's copy takes the copy's value as the old one instead of walking the
//!    log to the device: its CAS is from the entry that named the copy, so an update, an
//!    eviction or a truncation that moved the entry since makes it start over.
//! 3. *Truncation.* A copy serves a read, or an update's old value, only if its source is at
//!    or above the `begin` the operation loaded before the index entry (the rule of
//!    [`crate::ops::read::DiskWalk`]): a copy of a record truncated without a newer copy in
//!    the log (the cache mode of `truncate_until`) reads as absent, as its source would.
//! 4. *Sealing.* When page `p + 1` opens, an epoch action records that page `p` is *sealed*:
//!    every thread that allocated in `p` has finished its CAS (invariant 1 keeps it protected
//!    until then).
//! 5. *Eviction.* A sealed page is *unlinked* by walking its records and CASing each entry that
//!    still points at one of them back to the record's previous address (found through the
//!    stored hash). Once its page is unlinked, no entry points into it; an epoch action then
//!    *releases* its frame, once every thread that may have loaded such an entry has moved on.
//!    Page `p` opens only after page `p - FRAMES` was released. Nothing waits for a frame: an
//!    insertion that finds none free is skipped (the cache is best effort).
//! 6. *Reading.* A reader loads the entry and reads the copy under one epoch protection, so the
//!    copy's frame cannot be released (and reused) in between (invariant 5). Copies are never
//!    written after their CAS except for the invalid bit.
//! 7. *Second chance.* A hit on a copy in the oldest [`COLD_PAGES`] pages inserts a new copy at
//!    the tail by the same CAS (from the entry naming the old copy), so hot records stay.
//! 8. *Admission.* With [`CacheAdmission::SecondMiss`] (the default), once the cache has
//!    filled (its tail reached page `FRAMES - KEEP_FREE`), a miss is offered a copy only if its
//!    key missed before within a recent window ([`super::admission`]); the filter decides
//!    nothing else, so invariants 1-7 hold for every copy that is made. Updates that read their
//!    old value from the device note their key's miss too (they make no copy). Every miss is
//!    also noted in the keep filter of invariant 9.
//! 9. *Keeping records that leave the log's memory* (with the admission filter, unless
//!    `Config::read_cache_keeps_evicted` is off). Each log page is walked once, after it
//!    passed `safe_read_only` and before it leaves memory: the first operation to start while
//!    `kept_until` is below the page of `safe_read_only` claims the oldest page in memory not
//!    yet walked (one CAS) and, under its protection, taken *before* it saw that page at or
//!    above `head` (so the frame is not reused before it is done, whatever `head` does
//!    meanwhile), walks its records.
//!    A record is copied if it is live, heads its chain (its entry names it: then it is its
//!    key's newest record, and nothing is cached in front of it), and its key is in the keep
//!    filter ([`super::admission`], invariants 4-6): it missed, or an update replaced its linked
//!    copy, within the last one or two log memories of appends (the filter's clock is this
//!    walk). The copy is linked by invariant 1's CAS from that entry, with the record as its
//!    source. Only pages below `safe_read_only` are walked, where no record changes any
//!    more; a page walked early stays in the log's memory for a while, and an update of one
//!    of its keys meanwhile simply unlinks the copy (invariant 2). Pages that left memory
//!    before anyone claimed them are skipped; a copy that finds no
//!    free frame is skipped. Such a copy is an ordinary one from then on (invariants 2-7): a
//!    key written repeatedly stays in memory across the log's eviction, in the cache's bytes,
//!    which update-heavy workloads would otherwise leave idle.
//!
//! 10. *Live frames* (a cache made [`Movable`](ReadCache::new)). The cache keeps copies in at
//!     most `live` of its frames ([`ReadCache::set_live_frames`], at least [`MIN_LIVE`]): the
//!     eviction of invariant 5 unlinks pages up to `live - KEEP_FREE` behind the tail instead
//!     of `FRAMES - KEEP_FREE`, so lowering `live` makes it evict ahead, and raising it lets
//!     the tail run further before it evicts. While `live < FRAMES`, the eviction also gives
//!     the memory of each released frame back to the kernel (`AtomicWords::discard`) before it
//!     moves `reusable` past the frame's page; a page opens only in a frame below
//!     `reusable + FRAMES`, so no discard overlaps a reuse (and nobody reads a released frame:
//!     invariant 5). Its *ghost* remembers the keys of copies evicted within the last *probe*
//!     bytes of pages ([`super::admission::GhostFilter`]); a miss of such a key counts as one
//!     that that much more cache would have saved (the split's signal, `ops::split`).
//!
//! The cache holds no state a checkpoint needs: index checkpoints write each cached entry's log
//! address, and recovery starts with an empty cache. Index growth splits write the log address
//! as well (see [`crate::index::split`]).
#![forbid(unsafe_code)]

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::admission::{GhostFilter, KeepFilter, MissFilter};
use crate::config::CacheAdmission;
use crate::core::address::Address;
use crate::core::alloc::AtomicWords;
use crate::core::codec::Encoded;
use crate::core::light_epoch::{LightEpoch, Protected};
use crate::core::record::{record_size, RecordInfo, RecordRef, Version};
use crate::index::KeyHash;
use crate::sync::{AtomicU64, Ordering};

/// Frames of the cache.
pub const FRAMES: u64 = 64;
/// Bits of the offset in a page (pages of up to 64 MiB).
const OFFSET_BITS: u32 = 26;
/// Page numbers in a cache address wrap at this mask (the rest of 48 bits).
const PAGE_MASK: u64 = (1 << (48 - OFFSET_BITS)) - 1;
/// Hits on copies in this many oldest pages copy them to the tail (invariant 7).
pub const COLD_PAGES: u64 = 8;
/// Pages the eviction keeps unlinked ahead of the tail: at most `FRAMES - KEEP_FREE` hold
/// copies.
const KEEP_FREE: u64 = 2;
/// Frames of a movable cache's ghost probe (invariant 10): an eighth of the pool, as the log's.
const PROBE_PAGES: u64 = FRAMES / 8;
/// Fewest frames a movable cache keeps live (invariant 10).
pub const MIN_LIVE: u64 = 8;
/// Words a copy carries after its value: its source address and its key's hash.
const TRAILER_WORDS: usize = 2;
/// Smallest cache: pages of 512 bytes (records longer than a page are not cached).
pub const MIN_BYTES: u64 = FRAMES * 512;
/// Largest cache: pages of 32 MiB. A page must stay below 2^OFFSET_BITS bytes: the tail word
/// holds the offset *after* an allocation, which equals the page size when a page is filled
/// exactly, and would carry into the page number at 2^OFFSET_BITS.
pub const MAX_BYTES: u64 = FRAMES << (OFFSET_BITS - 1);

/// An address in the read cache (48 bits: page number modulo 2^22, offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheAddress(u64);

impl CacheAddress {
    /// From the raw 48 bits.
    #[must_use]
    pub const fn new(raw: u64) -> Self {
        CacheAddress(raw & Address::MASK)
    }
    /// The raw 48 bits.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }
    fn of(page: u64, offset: u64) -> Self {
        CacheAddress((page & PAGE_MASK) << OFFSET_BITS | offset)
    }
    const fn wrapped_page(self) -> u64 {
        self.0 >> OFFSET_BITS
    }
    const fn offset(self) -> u64 {
        self.0 & ((1 << OFFSET_BITS) - 1)
    }
}

/// What the read cache did, for [`crate::Stats`].
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Reads answered by a copy.
    pub hits: AtomicU64,
    /// Reads that found their value on the device (each offers the cache a copy).
    pub misses: AtomicU64,
    /// Copies linked into the index.
    pub inserted: AtomicU64,
    /// Copies not linked: the chain changed meanwhile, no frame was free, or the record does
    /// not fit a page.
    pub skipped: AtomicU64,
    /// Copies made again at the tail because they were hit near eviction.
    pub refreshed: AtomicU64,
    /// Entries the eviction pointed back at the log.
    pub evicted: AtomicU64,
    /// Misses not offered a copy: their key's first miss within the admission window.
    pub not_admitted: AtomicU64,
    /// Copies of records leaving the log's memory (invariant 9).
    pub kept: AtomicU64,
}

/// What the read cache did since the store was opened ([`crate::Stats::read_cache`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadCacheStats {
    /// Bytes of cache memory.
    pub memory_bytes: u64,
    /// Reads answered by a copy.
    pub hits: u64,
    /// Reads that found their value on the device (each offers the cache a copy).
    pub misses: u64,
    /// Copies linked in front of their chains.
    pub inserted: u64,
    /// Copies not linked: the chain changed meanwhile, no page was free, or the record does
    /// not fit a page.
    pub skipped: u64,
    /// Copies made again at the front because they were hit near eviction.
    pub refreshed: u64,
    /// Index entries eviction pointed back at the log.
    pub evicted: u64,
    /// Misses not offered a copy: their key's first miss within the admission window
    /// ([`CacheAdmission::SecondMiss`](crate::config::CacheAdmission)).
    pub not_admitted: u64,
    /// Copies of records that were leaving the log's memory, made because their key missed
    /// recently ([`Config::read_cache_keeps_evicted`](crate::Config)); counted in `inserted` too.
    pub kept: u64,
}

/// A copy in the cache as a reader sees it.
#[derive(Clone, Copy)]
pub struct CachedRecord<'g> {
    /// The record (the log's layout).
    pub record: RecordRef<'g>,
    /// Where it is.
    pub address: CacheAddress,
}

impl CachedRecord<'_> {
    /// The log address the copy was read from.
    #[must_use]
    pub fn source(&self) -> Address {
        Address::new(self.trailer(0))
    }
    /// The hash of the copy's key.
    #[must_use]
    pub fn hash(&self) -> KeyHash {
        KeyHash::from_finalized(self.trailer(1))
    }
    /// Where the chain continues in the log.
    #[must_use]
    pub fn next(&self) -> Address {
        self.record.info().prev()
    }
    fn trailer(&self, i: usize) -> u64 {
        let words = self.record.words();
        words[words.len() - TRAILER_WORDS + i].load(Ordering::Relaxed)
    }
}

/// The log whose records leaving memory the cache keeps (invariant 9): its keep filter
/// remembers a key for one or two of its memories ([`super::admission`], invariant 4).
#[derive(Debug, Clone, Copy)]
pub struct LogShape {
    /// Bytes of the log's memory.
    pub memory_bytes: u64,
    /// Its frames (pages in memory).
    pub frames: u64,
}

/// The read cache's memory and markers.
pub struct ReadCache {
    frames: Box<[AtomicWords]>,
    page_bytes: u64,
    /// `page << OFFSET_BITS | offset` of the next allocation.
    tail: CachePadded<AtomicU64>,
    /// Per frame: bytes used by the page in it (set when the page closes).
    used: Box<[AtomicU64]>,
    /// Pages below this have no insertion in flight (invariant 4).
    sealed: Arc<AtomicU64>,
    /// Pages below this have no entry pointing into them (invariant 5).
    unlinked: AtomicU64,
    /// Pages below this have free frames (invariant 5).
    released: Arc<AtomicU64>,
    /// Held by the thread unlinking pages.
    unlinking: AtomicBool,
    /// Frames that may hold copies (invariant 10; `FRAMES` unless movable).
    live: AtomicU64,
    /// Movable: pages below this have free frames whose memory was given back when `live`
    /// was below `FRAMES` (invariant 10). `None`: frames are reused once released.
    reusable: Option<AtomicU64>,
    /// Keys of copies evicted within the probe (invariant 10), movable caches only.
    ghost: Option<GhostFilter>,
    /// Misses of keys in the ghost.
    ghost_hits: AtomicU64,
    epoch: Arc<LightEpoch>,
    /// Which misses are offered a copy (`None`: every one).
    admission: Option<MissFilter>,
    /// Which records leaving the log's memory are offered copies (invariant 9; `None`:
    /// none are).
    keep: Option<KeepFilter>,
    /// The next log page whose records may be kept (invariant 9): pages below it were looked
    /// at, or left memory before anyone did.
    kept_until: CachePadded<AtomicU64>,
    /// What the cache did.
    pub counters: CacheCounters,
}

impl ReadCache {
    /// A cache of `bytes` (rounded down to [`FRAMES`] pages of a multiple of 8 bytes), the
    /// filters' memory included. `keep`: with the admission filter, records leaving the
    /// memory of a log of this shape are offered copies (invariant 9).
    ///
    /// # Panics
    /// If `bytes` is outside [`MIN_BYTES`]..=[`MAX_BYTES`] (the configuration checks it).
    #[must_use]
    pub fn new(
        bytes: u64,
        epoch: Arc<LightEpoch>,
        admission: CacheAdmission,
        keep: Option<LogShape>,
        movable: Option<Movable>,
    ) -> Self {
        assert!((MIN_BYTES..=MAX_BYTES).contains(&bytes));
        let filter = match admission {
            CacheAdmission::Every => None,
            CacheAdmission::SecondMiss => Some(MissFilter::new(bytes)),
        };
        let keep = keep
            .filter(|_| filter.is_some())
            .map(|log| KeepFilter::new(log.memory_bytes, log.frames, bytes));
        // A movable cache allocates frames for the whole pool and keeps `bytes` of them live
        // (invariant 10); the filters are sized for `bytes`.
        let alloc = movable.map_or(bytes, |m| m.pool_bytes.clamp(bytes, MAX_BYTES));
        let ghost = movable.map(|_| GhostFilter::new(alloc / FRAMES * PROBE_PAGES, PROBE_PAGES));
        let filters = filter.as_ref().map_or(0, MissFilter::memory_bytes)
            + keep.as_ref().map_or(0, KeepFilter::memory_bytes)
            + ghost.as_ref().map_or(0, GhostFilter::memory_bytes);
        let page_bytes = (alloc - filters) / FRAMES / 8 * 8;
        let frames = (0..FRAMES)
            .map(|_| AtomicWords::zeroed((page_bytes / 8) as usize))
            .collect();
        let live = match movable {
            None => FRAMES,
            Some(_) => (bytes.saturating_sub(filters) / page_bytes.max(1)).clamp(MIN_LIVE, FRAMES),
        };
        Self {
            frames,
            page_bytes,
            tail: CachePadded::new(AtomicU64::new(0)),
            used: (0..FRAMES).map(|_| AtomicU64::new(0)).collect(),
            sealed: Arc::new(AtomicU64::new(0)),
            unlinked: AtomicU64::new(0),
            released: Arc::new(AtomicU64::new(0)),
            unlinking: AtomicBool::new(false),
            live: AtomicU64::new(live),
            reusable: movable.map(|_| AtomicU64::new(0)),
            ghost,
            ghost_hits: AtomicU64::new(0),
            epoch,
            keep,
            admission: filter,
            kept_until: CachePadded::new(AtomicU64::new(0)),
            counters: CacheCounters::default(),
        }
    }

    /// Frames that may hold copies (invariant 10).
    #[must_use]
    pub fn live_frames(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Bytes of one frame.
    #[must_use]
    pub fn page_bytes(&self) -> u64 {
        self.page_bytes
    }

    /// Keeps copies in at most `frames` frames from now on (invariant 10), clamped to
    /// [`MIN_LIVE`]..=[`FRAMES`]; returns the value set. Only a movable cache moves
    /// (otherwise this returns [`FRAMES`]).
    pub fn set_live_frames(&self, frames: u64) -> u64 {
        if self.reusable.is_none() {
            return FRAMES;
        }
        let frames = frames.clamp(MIN_LIVE, FRAMES);
        self.live.store(frames, Ordering::Relaxed);
        frames
    }

    /// Frames whose memory is not given back (invariant 10): from the oldest page not yet
    /// released to the tail, or every frame of a cache that is not movable.
    #[must_use]
    pub fn resident_frames(&self) -> u64 {
        let Some(reusable) = &self.reusable else {
            return FRAMES;
        };
        let tail_page = self.tail.load(Ordering::Acquire) >> OFFSET_BITS;
        let live_from = if self.live_frames() < FRAMES {
            reusable.load(Ordering::Acquire)
        } else {
            0
        };
        (tail_page + 1).saturating_sub(live_from).min(FRAMES)
    }

    /// Misses of keys whose copies were evicted within the probe (invariant 10).
    #[must_use]
    pub fn ghost_hits(&self) -> u64 {
        self.ghost_hits.load(Ordering::Relaxed)
    }

    fn count_ghost(&self, hash: KeyHash) {
        if let Some(ghost) = &self.ghost {
            if ghost.seen(hash) {
                self.ghost_hits.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The log now keeps `pages` pages in memory: the keep filter's clock follows
    /// (`admission`, invariant 4).
    pub fn set_log_pages(&self, pages: u64) {
        if let Some(keep) = &self.keep {
            keep.set_period(pages);
        }
    }

    /// Whether a log page below `read_only_page` (the page of `safe_read_only`) is still to be
    /// walked for records to keep (invariant 9): one relaxed load, what operations ask first.
    #[inline]
    pub fn keeps_below(&self, read_only_page: u64) -> bool {
        self.keep.is_some() && self.kept_until.load(Ordering::Relaxed) < read_only_page
    }

    /// Claims the log page to walk for records to keep (invariant 9): the first not yet
    /// walked at or above `head_page`, if it is below `read_only_page`. `Some` for exactly one
    /// caller per page.
    pub fn claim_kept_page(&self, head_page: u64, read_only_page: u64) -> Option<u64> {
        let at = self.kept_until.load(Ordering::Acquire);
        let page = at.max(head_page);
        if page >= read_only_page {
            // Pages below `head` left memory unwalked: skip them, so that operations stop
            // asking until a page is due again.
            if at < page {
                let _ =
                    self.kept_until
                        .compare_exchange(at, page, Ordering::AcqRel, Ordering::Relaxed);
            }
            return None;
        }
        let claimed = self
            .kept_until
            .compare_exchange(at, page + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if claimed {
            if let Some(keep) = &self.keep {
                keep.tick(page);
            }
        }
        claimed.then_some(page)
    }

    /// Whether a record of `hash` leaving the log's memory is offered a copy: its key was used
    /// beyond the log's memory within the last log memory or two (invariant 9). Notes nothing.
    #[must_use]
    pub fn keeps(&self, hash: KeyHash) -> bool {
        self.keep.as_ref().is_some_and(|f| f.seen(hash))
    }

    /// Notes a miss of `hash` that makes no copy (an update that read its old value from the
    /// device writes it to the log instead), so that its record is kept when it leaves the
    /// log's memory, and a read's next miss of the key is admitted.
    pub fn note_miss(&self, hash: KeyHash, key_len: usize, value_len: usize) {
        self.count_ghost(hash);
        if let Some(filter) = &self.admission {
            let _ = filter.admit(hash, Self::copy_size(key_len, value_len));
        }
        self.note_use(hash);
    }

    /// Notes that `hash` was used beyond the log's memory: it missed, or an update replaced its
    /// linked copy (the key came back while it was only in the cache). The record the update
    /// writes next is kept when it leaves the log's memory (invariant 9).
    pub fn note_use(&self, hash: KeyHash) {
        if let Some(keep) = &self.keep {
            keep.note(hash);
        }
    }

    /// Bytes of cache memory (the filters' included).
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        self.page_bytes * self.live_frames()
            + self.admission.as_ref().map_or(0, MissFilter::memory_bytes)
            + self.keep.as_ref().map_or(0, KeepFilter::memory_bytes)
            + self.ghost.as_ref().map_or(0, GhostFilter::memory_bytes)
    }

    /// Whether a miss of `hash` (a record of `key_len` and `value_len` bytes) is offered a copy
    /// (the admission filter, if any: [`super::admission`]); counts the ones that are not.
    /// Until the cache first fills, every miss is (the filter still notes it): a copy then
    /// evicts nothing, and a cold cache warms up as fast as FASTER's.
    pub fn admits(&self, hash: KeyHash, key_len: usize, value_len: usize) -> bool {
        self.count_ghost(hash);
        let Some(filter) = &self.admission else {
            return true;
        };
        let seen = filter.admit(hash, Self::copy_size(key_len, value_len));
        self.note_use(hash);
        let filling =
            self.tail.load(Ordering::Relaxed) >> OFFSET_BITS < self.live_frames() - KEEP_FREE;
        let admitted = seen || filling;
        if !admitted {
            self.counters.not_admitted.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Bytes of the copy of a record of `key_len` and `value_len` bytes.
    fn copy_size(key_len: usize, value_len: usize) -> u64 {
        record_size(key_len, Self::copy_capacity(value_len)) as u64
    }

    fn copy_capacity(value_len: usize) -> usize {
        value_len.next_multiple_of(8) + TRAILER_WORDS * 8
    }

    /// What the cache did.
    #[must_use]
    pub fn stats(&self) -> ReadCacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReadCacheStats {
            memory_bytes: self.memory_bytes(),
            hits: get(&c.hits),
            misses: get(&c.misses),
            inserted: get(&c.inserted),
            skipped: get(&c.skipped),
            refreshed: get(&c.refreshed),
            evicted: get(&c.evicted),
            not_admitted: get(&c.not_admitted),
            kept: get(&c.kept),
        }
    }

    /// The copy at `address`, for a caller that holds off its eviction: by an epoch protection
    /// under which it loaded the entry naming it (invariant 6), or by holding the chunk of an
    /// index split that the entry is in (the eviction must look the entry up through that
    /// chunk before it can release the copy). Memory-safe either way (frames live as long as
    /// the cache, and are only accessed through atomics); only the contents could be another
    /// page's. `None` if the words there do not parse as a copy.
    #[must_use]
    pub fn record_unguarded(&self, address: CacheAddress) -> Option<CachedRecord<'_>> {
        let frame = self.frames[(address.wrapped_page() % FRAMES) as usize].words();
        let words = frame.get((address.offset() / 8) as usize..)?;
        let record = RecordRef::parse(words).ok()??;
        (record.value_capacity() >= TRAILER_WORDS * 8).then_some(CachedRecord { record, address })
    }

    /// Whether a hit on `address` should copy it to the tail (invariant 7).
    #[must_use]
    pub fn is_cold(&self, address: CacheAddress) -> bool {
        let tail_page = self.tail.load(Ordering::Relaxed) >> OFFSET_BITS;
        let age = (tail_page & PAGE_MASK).wrapping_sub(address.wrapped_page()) & PAGE_MASK;
        let live = self.live_frames();
        age + (live * COLD_PAGES / FRAMES).max(1) >= live - KEEP_FREE
    }

    /// Writes a copy of `key -> value` read from `source`, whose chain continues at `next`,
    /// at the tail. The caller must CAS it into its entry under the same protection `g` and
    /// mark it invalid if that fails (invariant 1). `None` when the record does not fit a page
    /// or no frame is free.
    pub fn insert<'g>(
        &'g self,
        _g: &'g dyn Protected,
        key: &[u8],
        value: &[u8],
        hash: KeyHash,
        source: Address,
        next: Address,
    ) -> Option<CachedRecord<'g>> {
        let cap = Self::copy_capacity(value.len());
        let size = record_size(key.len(), cap) as u64;
        let address = self.allocate(size)?;
        let frame = self.frames[(address.wrapped_page() % FRAMES) as usize].words();
        let first = (address.offset() / 8) as usize;
        let words = &frame[first..first + (size / 8) as usize];
        let record = RecordRef::write_with_capacity(
            words,
            RecordInfo::new(next, Version(1)),
            &Encoded::from_bytes(key),
            &Encoded::from_bytes(value),
            cap,
            &[source.raw(), hash.value()],
        );
        Some(CachedRecord { record, address })
    }

    /// Allocates `size` bytes at the tail, opening the next page when this one is full.
    fn allocate(&self, size: u64) -> Option<CacheAddress> {
        if size > self.page_bytes {
            return None;
        }
        let mut t = self.tail.load(Ordering::Acquire);
        loop {
            let (page, offset) = (t >> OFFSET_BITS, t & ((1 << OFFSET_BITS) - 1));
            if offset + size <= self.page_bytes {
                match self.tail.compare_exchange_weak(
                    t,
                    t + size,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some(CacheAddress::of(page, offset)),
                    Err(now) => t = now,
                }
                continue;
            }
            let next = page + 1;
            let free_below = match &self.reusable {
                Some(reusable) => reusable.load(Ordering::Acquire),
                None => self.released.load(Ordering::Acquire),
            };
            if next >= free_below + FRAMES {
                return None;
            }
            match self.tail.compare_exchange(
                t,
                next << OFFSET_BITS | size,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.used[(page % FRAMES) as usize].store(offset, Ordering::Release);
                    let sealed = self.sealed.clone();
                    self.epoch.bump_epoch(move || {
                        sealed.fetch_max(next, Ordering::AcqRel);
                    });
                    return Some(CacheAddress::of(next, 0));
                }
                Err(now) => t = now,
            }
        }
    }

    /// Whether pages are waiting to be unlinked (the caller should call
    /// [`ReadCache::unlink_pages`] when it can).
    #[must_use]
    pub fn needs_unlinking(&self) -> bool {
        self.unlinked.load(Ordering::Acquire) < self.unlink_target()
            || self
                .reusable
                .as_ref()
                .is_some_and(|r| r.load(Ordering::Relaxed) < self.released.load(Ordering::Relaxed))
    }

    fn unlink_target(&self) -> u64 {
        let tail_page = self.tail.load(Ordering::Acquire) >> OFFSET_BITS;
        (tail_page + 1 + KEEP_FREE)
            .saturating_sub(self.live_frames())
            .min(self.sealed.load(Ordering::Acquire))
    }

    /// Unlinks the sealed pages the tail is about to need (invariant 5): `unlink` gets each
    /// live-looking copy and must CAS its entry, if it still names the copy, back to the
    /// copy's next address; it returns `false` to stop (the caller cannot go on now; the pages
    /// left are unlinked later). One thread unlinks at a time; others return at once.
    pub fn unlink_pages(&self, mut unlink: impl FnMut(CachedRecord<'_>) -> bool) {
        if self.unlinking.swap(true, Ordering::AcqRel) {
            return;
        }
        let _claim = Claim(&self.unlinking);
        self.give_back_released();
        loop {
            let page = self.unlinked.load(Ordering::Acquire);
            if page >= self.unlink_target() {
                return;
            }
            let frame = self.frames[(page % FRAMES) as usize].words();
            let used = self.used[(page % FRAMES) as usize].load(Ordering::Acquire);
            let mut at = 0;
            while at < used {
                let Ok(Some(record)) = RecordRef::parse(&frame[(at / 8) as usize..]) else {
                    break;
                };
                let copy = CachedRecord {
                    record,
                    address: CacheAddress::of(page, at),
                };
                if !record.info().invalid() && record.value_capacity() >= TRAILER_WORDS * 8 {
                    if !unlink(copy) {
                        return;
                    }
                    if let Some(ghost) = &self.ghost {
                        ghost.note(copy.hash());
                    }
                }
                at += record.size() as u64;
            }
            if let Some(ghost) = &self.ghost {
                ghost.tick(page);
            }
            self.unlinked.store(page + 1, Ordering::Release);
            let released = self.released.clone();
            self.epoch.bump_epoch(move || {
                released.fetch_max(page + 1, Ordering::AcqRel);
            });
        }
    }
}

impl ReadCache {
    /// Moves `reusable` up to `released`, giving back the memory of the frames it passes while
    /// fewer than [`FRAMES`] are live (invariant 10). Runs under the unlinking claim.
    fn give_back_released(&self) {
        let Some(reusable) = &self.reusable else {
            return;
        };
        let from = reusable.load(Ordering::Acquire);
        let to = self.released.load(Ordering::Acquire);
        if from >= to {
            return;
        }
        if self.live_frames() < FRAMES {
            for page in to.saturating_sub(FRAMES).max(from)..to {
                // Invariant 10: the page was released (nobody reads it, 5), and no page opens
                // in its frame before `reusable` passes it below.
                self.frames[(page % FRAMES) as usize].discard();
            }
        }
        reusable.store(to, Ordering::Release);
    }
}

/// How a movable cache starts (invariant 10).
#[derive(Debug, Clone, Copy)]
pub struct Movable {
    /// Bytes of the pool the cache's frames are allocated for (it keeps its own `bytes` of
    /// them live at first).
    pub pool_bytes: u64,
}

/// Resets a flag when dropped.
struct Claim<'a>(&'a AtomicBool);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
