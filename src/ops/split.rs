//! Moving memory between the log and the read cache ([`MemorySplit`](crate::MemorySplit)).
//!
//! # Shape
//! The log's memory and the read cache's form one *pool*. The log allocates frames for the
//! whole pool and keeps `live_pages` of them in memory (`hlog`, invariants 10-11); the cache
//! allocates 64 frames of a 64th of the pool and keeps copies in `live` of them (`read_cache`,
//! invariant 10). Memory leaving a side is given back to the kernel, so the store's resident
//! memory follows `live_pages × page + live × cache page`, which the split keeps within the
//! pool.
//!
//! # Invariants
//! 1. *Within the pool.* A move lowers the giving side's share first and raises the taking
//!    side's only once the giver's resident memory is down to its new share (checked at each
//!    maintenance pass; `Engine::adapt_split`). Between the two the store holds less than the pool,
//!    never more (up to a page of rounding).
//! 2. *Floors.* Each side keeps at least an eighth of the pool (the log at least
//!    [`MIN_FRAMES`] + 2 pages, the cache [`MIN_LIVE`] frames).
//! 3. *Only sizes move.* A move changes two numbers; what each side does with its number is
//!    the side's own business (its invariants say why a shrink is safe beside operations in
//!    flight, keep walks, evictions and checkpoints). So a move never waits for an operation
//!    and an operation never waits for a move.
//! 4. *The signal is advice.* Ghost counts decide only which way the next move goes; a wrong
//!    guess costs device reads, never correctness.
//! 5. *One move at a time.* Whoever reads and sets the two shares (a user's
//!    [`RsKv::set_read_cache_share`](crate::rskv_core::RsKv::set_read_cache_share), the
//!    controller) holds a claim, so two moves never leave shares from different decisions
//!    that add up to more than the pool. Nobody waits for it: a user's call made meanwhile
//!    gets `Error::Busy`, the controller skips its pass. (Waiting could deadlock: a call
//!    made from inside an operation holds epoch protection, which the holder's eviction may
//!    wait on.)
//!
//! # The signal
//! Each side counts the misses that a probe of an eighth of the pool more on its side would
//! have saved: the log, device reads of records at most a probe below `head` (they left
//! memory within that many bytes of appends); the cache, misses of keys whose copies it
//! evicted within its last probe of pages (its ghost filter). At each pass of the maintenance
//! thread, when one side's count since the last pass beats the other's by a quarter (and the
//! two add up to at least [`MIN_EVENTS`]), a sixteenth of the pool moves to that side.
#![forbid(unsafe_code)]

use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::hlog::persistent_memory_malloc::MIN_FRAMES;
use crate::hlog::read_cache::{ReadCache, FRAMES, MIN_LIVE};
use crate::ops::Engine;

/// Ghost misses (both sides together) a pass needs before it moves anything.
pub(crate) const MIN_EVENTS: u64 = 32;

/// The pool's shape, fixed when the store opens.
#[derive(Debug)]
pub(crate) struct Pool {
    /// Bytes of the pool.
    pub(crate) bytes: u64,
    /// The most pages the log may keep (its frames, or less when a user of the store caps it:
    /// R2Kv keeps the hot log's memory under its hot-to-cold trigger).
    pub(crate) log_cap: std::sync::atomic::AtomicU64,
    /// Moves the adaptive split finished.
    pub(crate) moves: std::sync::atomic::AtomicU64,
    /// Held while one caller reads and sets the two shares (invariant 5).
    pub(crate) moving: std::sync::atomic::AtomicBool,
}

/// The claim on [`Pool::moving`]; released when dropped.
struct Moving<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> Moving<'a> {
    /// The claim, unless another caller holds it (nobody waits for it). The guard is made
    /// only when the swap won: a guard made and dropped on a lost swap would release the
    /// holder's claim.
    fn try_claim(pool: &'a Pool) -> Option<Self> {
        if pool.moving.swap(true, std::sync::atomic::Ordering::AcqRel) {
            None
        } else {
            Some(Moving(&pool.moving))
        }
    }
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Where the split stands ([`crate::Stats::memory_split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SplitStats {
    /// Bytes of the pool (log memory and read cache together).
    pub pool_bytes: u64,
    /// The log's share now.
    pub log_bytes: u64,
    /// The read cache's share now (its copies' pages; its filters are not counted).
    pub cache_bytes: u64,
    /// Bytes of log frames whose memory is not given back.
    pub log_resident_bytes: u64,
    /// Bytes of cache frames whose memory is not given back.
    pub cache_resident_bytes: u64,
    /// Device reads of records that had left the log's memory within an eighth of the pool.
    pub log_ghosts: u64,
    /// Misses of keys whose copies the cache evicted within an eighth of the pool.
    pub cache_ghosts: u64,
    /// Moves the adaptive split finished.
    pub moves: u64,
}

/// A move in progress: the giver shrank, the taker grows once the giver is down to size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// The cache shrank to this many frames; the log grows to `log` pages next.
    ToLog { frames: u64, log: u64 },
    /// The log shrank to this many pages; the cache grows to `frames` next.
    ToCache { pages: u64, frames: u64 },
}

/// The maintenance thread's state for the adaptive split.
#[derive(Debug, Default)]
pub(crate) struct Split {
    last_log: u64,
    last_cache: u64,
    pending: Option<Pending>,
}

impl<D: Disk> Engine<D> {
    /// Pages and frames of a share: the log's pages and the cache's frames for `cache_bytes`
    /// of the pool going to the cache, each clamped to its floor and cap (invariant 2).
    fn shares(&self, pool: &Pool, cache: &ReadCache, cache_bytes: u64) -> (u64, u64) {
        let page_bits = self.hlog.geometry().page_bits;
        let cache_page = cache.page_bytes().max(1);
        let eighth = pool.bytes / 8;
        let log_floor = (eighth >> page_bits).max(MIN_FRAMES + 2);
        let frames_floor = (eighth / cache_page).max(MIN_LIVE);
        // The two shares never add up to more than the pool.
        let frames_cap = (pool.bytes.saturating_sub(log_floor << page_bits) / cache_page)
            .min(FRAMES)
            .max(frames_floor);
        let frames = (cache_bytes / cache_page).clamp(frames_floor, frames_cap);
        let pages = ((pool.bytes.saturating_sub(frames * cache_page)) >> page_bits).clamp(
            log_floor,
            pool.log_cap
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(log_floor),
        );
        // What a capped log leaves goes to the cache.
        let frames = frames
            .max(pool.bytes.saturating_sub(pages << page_bits) / cache_page)
            .min(frames_cap);
        (pages, frames)
    }

    /// Gives the read cache `bytes` of the pool and the log the rest (rounded to their pages,
    /// within their floors); returns the bytes each side now has (log, cache). Lowers the
    /// shrinking side first; the growing side's share is raised at once (a user's call, not
    /// the adaptive controller, which waits: invariant 1).
    ///
    /// # Errors
    /// [`Error::Config`] without a split that moves; [`Error::Busy`] while another move sets
    /// the shares (invariant 5).
    pub(crate) fn set_cache_share(&self, bytes: u64) -> Result<(u64, u64)> {
        let (Some(pool), Some(cache)) = (&self.pool, &self.read_cache) else {
            return Err(Error::Config {
                field: "memory_split",
                reason: "the store was opened with a fixed split (or no read cache)".into(),
            });
        };
        let Some(claim) = Moving::try_claim(pool) else {
            return Err(Error::Busy(
                "another move of the memory split is setting the shares",
            ));
        };
        let (pages, frames) = self.shares(pool, cache, bytes);
        if frames < cache.live_frames() {
            cache.set_live_frames(frames);
            self.set_log_pages(pages);
        } else {
            self.set_log_pages(pages);
            cache.set_live_frames(frames);
        }
        let shares = (
            self.hlog.live_bytes() as u64,
            cache.live_frames() * cache.page_bytes(),
        );
        drop(claim);
        self.evict_ahead();
        Ok(shares)
    }

    /// A shrunk cache evicts ahead of its tail, and released frames are given back by the
    /// evicting thread (`read_cache`, invariant 10): done here too, for when no insertion
    /// comes to do it.
    fn evict_ahead(&self) {
        if self
            .read_cache
            .as_ref()
            .is_some_and(|c| c.needs_unlinking())
        {
            if let Ok(mut g) = self.epoch.protect() {
                self.unlink_cache_pages(&mut g);
            }
        }
    }

    fn set_log_pages(&self, pages: u64) {
        let pages = self.hlog.set_live_pages(pages);
        if let Some(cache) = &self.read_cache {
            cache.set_log_pages(pages);
        }
    }

    /// Where the split stands, if it moves.
    pub(crate) fn split_stats(&self) -> Option<SplitStats> {
        let (Some(pool), Some(cache)) = (&self.pool, &self.read_cache) else {
            return None;
        };
        let page_bits = self.hlog.geometry().page_bits;
        Some(SplitStats {
            pool_bytes: pool.bytes,
            log_bytes: self.hlog.live_bytes() as u64,
            cache_bytes: cache.live_frames() * cache.page_bytes(),
            log_resident_bytes: self.hlog.resident_frames() << page_bits,
            cache_resident_bytes: cache.resident_frames() * cache.page_bytes(),
            log_ghosts: self.hlog.ghost_reads(),
            cache_ghosts: cache.ghost_hits(),
            moves: pool.moves.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Starts counting both sides' ghosts with a probe of an eighth of the pool.
    pub(crate) fn start_ghosts(&self) {
        if let (Some(pool), Some(_)) = (&self.pool, &self.read_cache) {
            self.hlog.set_ghost_probe(pool.bytes / 8);
        }
    }

    /// One pass of the adaptive split (module docs): finishes a move in progress once its
    /// giver is down to size, or starts the next one if the ghosts say so.
    pub(crate) fn adapt_split(&self, split: &mut Split) {
        let (Some(pool), Some(cache)) = (&self.pool, &self.read_cache) else {
            return;
        };
        let log_ghosts = self.hlog.ghost_reads();
        let cache_ghosts = cache.ghost_hits();
        let (log, rc) = (log_ghosts - split.last_log, cache_ghosts - split.last_cache);
        (split.last_log, split.last_cache) = (log_ghosts, cache_ghosts);
        self.evict_ahead();
        let Some(_claim) = Moving::try_claim(pool) else {
            return;
        };
        if let Some(pending) = split.pending {
            // Invariant 1: the taker grows only once the giver gave its memory back.
            let done = match pending {
                Pending::ToLog { frames, log } => {
                    let ready = cache.resident_frames() <= frames;
                    if ready {
                        self.set_log_pages(log);
                    }
                    ready
                }
                Pending::ToCache { pages, frames } => {
                    let ready = self.hlog.resident_frames() <= pages + 1;
                    if ready {
                        cache.set_live_frames(frames);
                    }
                    ready
                }
            };
            if done {
                split.pending = None;
                pool.moves
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
        if log + rc < MIN_EVENTS {
            return;
        }
        let step = pool.bytes / 16;
        let cache_now = cache.live_frames() * cache.page_bytes();
        let target = if log * 4 > rc * 5 {
            cache_now.saturating_sub(step)
        } else if rc * 4 > log * 5 {
            cache_now + step
        } else {
            return;
        };
        let (pages, frames) = self.shares(pool, cache, target);
        let (live_pages, live_frames) = (self.hlog.live_pages(), cache.live_frames());
        if frames < live_frames {
            cache.set_live_frames(frames);
            split.pending = Some(Pending::ToLog { frames, log: pages });
        } else if pages < live_pages {
            self.set_log_pages(pages);
            split.pending = Some(Pending::ToCache { pages, frames });
        } else if frames > live_frames || pages > live_pages {
            // Memory of the pool neither side holds (a capped log left it): no giver to wait
            // for.
            self.set_log_pages(pages);
            cache.set_live_frames(frames);
            pool.moves
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
