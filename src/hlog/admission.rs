//! The read cache's admission filter: a record a read fetched from the device is copied into
//! the cache only on its key's *second* miss within a recent window
//! ([`CacheAdmission::SecondMiss`](crate::config::CacheAdmission)).
//!
//! # Why
//! FASTER's read cache copies every record a read fetches. Under skew most of those are keys
//! read once in a long while: each copy pushes a hotter one towards eviction. Remembering which
//! keys missed recently and copying only a key that misses again keeps one-off reads out.
//! Simulated on rskv-bench's zipf 0.99 over 8M keys (FIFO with the cache's second chance), the
//! hit rate of a cache of 320K records rises from 73.6% to 78.2%, of 107K records from 63.6% to
//! 70.4%: a fifth fewer device reads. A uniform workload, which the cache cannot help, copies
//! almost nothing instead of copying every miss.
//!
//! # Shape
//! Two Bloom filters over key hashes, the *current* and the *previous* generation, each of
//! `bits` bits probed [`PROBES`] times. A miss asks whether its key is in either generation
//! (then it is admitted) and adds it to the current one. The current generation also counts the
//! bytes the copies of its misses would take; once those reach a quarter of the cache, the
//! thread whose miss crossed that mark clears the previous generation and makes it current. So
//! a key is remembered for the misses that would fill between a quarter and half of the cache
//! (the simulation's best window: 0.1 of the cache lost 2.5 points, the whole cache 1.3).
//! The cache asks only once it has filled (`read_cache`'s invariant 8): before, every miss is
//! copied and only noted here, so an empty cache warms up as fast as FASTER's.
//!
//! # Invariants
//! 1. *Approximate by design.* A false positive admits a key on its first miss (FASTER's
//!    behaviour), a false negative delays a copy by one miss. Neither affects what a read
//!    returns: the filter only decides whether [`crate::ops::Engine`] offers the cache a copy,
//!    and every copy is linked by the cache's own rules (`read_cache`'s invariants).
//! 2. *No locks, no waiting.* Bits are set with `fetch_or` and cleared with plain atomic
//!    stores. Exactly one thread flips a generation per crossing of the mark (the one whose
//!    `fetch_add` crossed it); misses racing with its clearing may lose their bit or see a
//!    stale one, which invariant 1 allows. Bytes counted by racing misses before the flip's
//!    reset are forgotten (the window is a little longer then).
//! 3. *Bounded memory.* `2 * bits / 8` bytes, taken out of the cache's own bytes
//!    ([`ReadCache::new`](super::read_cache::ReadCache::new)): a 48 MiB cache spends 256 KiB.
//!
//! # The keep filter
//! [`KeepFilter`] answers a different question with the same two generations: whether a
//! record leaving the log's memory is worth a copy (`read_cache`, invariant 9). Its key must
//! have been *used beyond the log's memory* recently: it missed (a read or an update found it
//! on the device or in the lower tier), or an update replaced its cached copy (the key came
//! back while its copy was in the cache). Such a note is taken just before the update writes
//! the record that later leaves memory, so the filter must remember it for as long as that
//! record stays in memory: a log-memory's worth of appends, whatever the misses did
//! meanwhile. The admission filter's window (a quarter of the cache in misses) is the wrong
//! clock for that: with a 16 MiB cache beside a 25 MiB log it forgot a key within about a
//! second, before its record crossed the log, and kept almost nothing (session 15).
//!
//! So the keep filter's clock is the log itself:
//! 4. *A generation lasts one log memory.* The walk of invariant 9 ticks the filter with each
//!    page it claims; the claim of a page `period` (the log's frames) past the page at which
//!    the current generation began clears the previous generation and makes it current. Take
//!    a note while the walk stands at page `w` and the tail at page `t`: operations claim due
//!    pages before they start, so the walk stays within the log's memory and `t < w + period`;
//!    the note's generation began at some `b` with `w - period <= b <= w` (a later claim would
//!    have retired it). The update that took the note appends its record right after, on page
//!    `t` (or just above, if the tail moved), and the walk reaches that page before it claims
//!    page `b + 2 * period`, the claim that clears the note: the key is still remembered when
//!    its record is walked. Invariant 1 allows what races lose.
//! 5. *Bounded saturation.* A generation also retires once it holds `bits / 8` notes (the
//!    point past which false positives pass ~5%), so a long phase of misses without appends
//!    (a read-only workload) cannot fill it with ones and make every key look kept.
//! 6. *Memory.* `bits` is the log memory over 16 bytes, at most a quarter of the cache's bytes
//!    and at least [`MIN_BITS`]: the filter takes at most 1/16 of the cache (a 25 MiB log
//!    beside a 16 MiB cache: 256 KiB of the cache for 1M bits per generation).
#![forbid(unsafe_code)]

use crate::index::KeyHash;
use crate::sync::{AtomicU64, Ordering};

/// Bit positions probed per key.
const PROBES: u64 = 3;
/// Cache bytes per filter bit (per generation), before rounding down to a power of two.
const BYTES_PER_BIT: u64 = 32;
/// Log memory bytes per keep-filter bit (per generation).
const LOG_BYTES_PER_KEEP_BIT: u64 = 16;
/// Fewest bits per generation.
/// Cache bytes of the ghost's probe per bit of each of its generations: copies are at least
/// ~40 bytes, so a generation holds ~5 bits per evicted copy or more.
const GHOST_BYTES_PER_BIT: u64 = 8;
const MIN_BITS: u64 = 1 << 9;

/// Two Bloom filters over key hashes, one current (notes go there) and one previous: what both
/// filters are made of.
struct Generations {
    /// The two generations, `bits / 64` words each.
    words: [Box<[AtomicU64]>; 2],
    /// `bits - 1` (`bits` is a power of two).
    mask: u64,
    /// Which generation is current (0 or 1).
    current: AtomicU64,
}

impl Generations {
    /// Generations of the power of two at or below `bits` (at least [`MIN_BITS`]).
    fn new(bits: u64) -> Self {
        let bits = 1 << bits.max(MIN_BITS).ilog2();
        let generation = || (0..bits / 64).map(|_| AtomicU64::new(0)).collect();
        Self {
            words: [generation(), generation()],
            mask: bits - 1,
            current: AtomicU64::new(0),
        }
    }

    fn bits(&self) -> u64 {
        self.mask + 1
    }

    fn memory_bytes(&self) -> u64 {
        2 * self.bits() / 8
    }

    fn current(&self) -> usize {
        (self.current.load(Ordering::Relaxed) & 1) as usize
    }

    /// The bit positions of `hash` (double hashing over a remix of the hash, whose low bits
    /// pick index buckets and whose high bits are index tags).
    fn positions(&self, hash: KeyHash) -> impl Iterator<Item = (usize, u64)> + '_ {
        let x = hash.value().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (h1, h2) = (x >> 32 ^ x << 7, (x.rotate_left(21) >> 1) | 1);
        (0..PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            ((bit / 64) as usize, 1 << (bit % 64))
        })
    }

    fn contains(&self, generation: usize, hash: KeyHash) -> bool {
        let words = &self.words[generation];
        self.positions(hash)
            .all(|(w, b)| words[w].load(Ordering::Relaxed) & b != 0)
    }

    fn seen(&self, hash: KeyHash) -> bool {
        self.contains(0, hash) || self.contains(1, hash)
    }

    fn insert(&self, generation: usize, hash: KeyHash) {
        let words = &self.words[generation];
        for (w, b) in self.positions(hash) {
            words[w].fetch_or(b, Ordering::Relaxed);
        }
    }

    /// Clears the generation after `current` and makes it current. The caller is the one
    /// thread that decided to retire `current` (each filter says how).
    fn retire(&self, current: usize) {
        for w in self.words[current ^ 1].iter() {
            w.store(0, Ordering::Relaxed);
        }
        self.current.store((current ^ 1) as u64, Ordering::Relaxed);
    }
}

/// The admission filter (module docs).
pub struct MissFilter {
    generations: Generations,
    /// Bytes of copies the current generation's misses would take.
    counted: AtomicU64,
    /// The mark at which a generation is retired: a quarter of the cache's bytes.
    window: u64,
}

impl MissFilter {
    /// A filter for a cache of `cache_bytes` ([`MissFilter::memory_bytes`] of them its own,
    /// the rest for copies).
    #[must_use]
    pub fn new(cache_bytes: u64) -> Self {
        let generations = Generations::new(cache_bytes / BYTES_PER_BIT);
        let copies = cache_bytes.saturating_sub(generations.memory_bytes());
        Self {
            generations,
            counted: AtomicU64::new(0),
            window: (copies / 4).max(1),
        }
    }

    /// Bytes of memory the filter holds.
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        self.generations.memory_bytes()
    }

    /// Records a miss of `hash` whose copy would take `copy_bytes`; returns whether the key
    /// missed before within the window (then its copy is admitted).
    pub fn admit(&self, hash: KeyHash, copy_bytes: u64) -> bool {
        let g = &self.generations;
        let current = g.current();
        if g.contains(current, hash) {
            return true;
        }
        let seen = g.contains(current ^ 1, hash);
        g.insert(current, hash);
        let before = self.counted.fetch_add(copy_bytes, Ordering::Relaxed);
        if before < self.window && before + copy_bytes >= self.window {
            // Invariant 2: only the thread whose miss crossed the window gets here.
            g.retire(current);
            self.counted.store(0, Ordering::Relaxed);
        }
        seen
    }
}

/// The keep filter (module docs, invariants 4-6).
pub struct KeepFilter {
    generations: Generations,
    /// The log page at which the current generation began (as ticked by the walk).
    began: AtomicU64,
    /// Log pages a generation lasts: the pages the log keeps in memory.
    period: AtomicU64,
    /// Notes taken into the current generation.
    notes: AtomicU64,
}

impl KeepFilter {
    fn bits(log_memory: u64, cache_bytes: u64) -> u64 {
        (log_memory / LOG_BYTES_PER_KEEP_BIT).min(cache_bytes / 4)
    }

    /// A keep filter for a log of `frames` pages holding `log_memory` bytes, beside a cache of
    /// `cache_bytes` (invariant 6).
    #[must_use]
    pub fn new(log_memory: u64, frames: u64, cache_bytes: u64) -> Self {
        Self {
            generations: Generations::new(Self::bits(log_memory, cache_bytes)),
            began: AtomicU64::new(0),
            period: AtomicU64::new(frames.max(1)),
            notes: AtomicU64::new(0),
        }
    }

    /// The log now keeps `pages` pages in memory (`hlog`, invariant 10): a generation lasts
    /// that many walked pages from now on.
    pub fn set_period(&self, pages: u64) {
        self.period.store(pages.max(1), Ordering::Relaxed);
    }

    /// Bytes of memory the filter holds.
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        self.generations.memory_bytes()
    }

    /// Notes that `hash` was used beyond the log's memory (module docs).
    pub fn note(&self, hash: KeyHash) {
        let g = &self.generations;
        let current = g.current();
        if g.contains(current, hash) {
            return;
        }
        g.insert(current, hash);
        // Invariant 5: the note that reaches the mark retires the generation (exactly one).
        if self.notes.fetch_add(1, Ordering::Relaxed) + 1 == g.bits() / 8 {
            self.retire(current);
        }
    }

    /// Whether `hash` was noted within the last one or two log memories.
    #[must_use]
    pub fn seen(&self, hash: KeyHash) -> bool {
        self.generations.seen(hash)
    }

    /// The walk of invariant 9 claimed log page `page`: retires the current generation once
    /// `page` is a period past where it began (invariant 4). One thread wins the CAS per
    /// period.
    pub fn tick(&self, page: u64) {
        let began = self.began.load(Ordering::Relaxed);
        if page >= began + self.period.load(Ordering::Relaxed)
            && self
                .began
                .compare_exchange(began, page, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.retire(self.generations.current());
        }
    }

    fn retire(&self, current: usize) {
        self.generations.retire(current);
        self.notes.store(0, Ordering::Relaxed);
    }
}

/// The cache's ghost filter (`read_cache`, invariant 10): keys whose copies the cache evicted
/// within its last *probe* bytes of pages, so that a miss of one of them can be counted as a
/// miss that that much more cache would have saved. Noted by the eviction walk, clocked by
/// evicted pages: a generation lasts two thirds of the probe's pages, so a key is remembered
/// for two thirds to four thirds of the probe, about the probe on average (as far as the
/// log's side of the signal looks). Approximate like the other filters (a false positive
/// counts a miss the cache would not have saved); it decides nothing but a counter.
pub struct GhostFilter {
    generations: Generations,
    began: AtomicU64,
    period: u64,
    notes: AtomicU64,
}

impl GhostFilter {
    /// A ghost of `probe_pages` cache pages holding `probe_bytes`.
    #[must_use]
    pub fn new(probe_bytes: u64, probe_pages: u64) -> Self {
        Self {
            generations: Generations::new(probe_bytes / GHOST_BYTES_PER_BIT),
            began: AtomicU64::new(0),
            period: (probe_pages * 2 / 3).max(1),
            notes: AtomicU64::new(0),
        }
    }

    /// Bytes of memory the filter holds.
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        self.generations.memory_bytes()
    }

    /// The copy of `hash` was evicted.
    pub fn note(&self, hash: KeyHash) {
        let g = &self.generations;
        let current = g.current();
        g.insert(current, hash);
        if self.notes.fetch_add(1, Ordering::Relaxed) + 1 == g.bits() / 8 {
            g.retire(current);
            self.notes.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a copy of `hash` was evicted within the probe.
    #[must_use]
    pub fn seen(&self, hash: KeyHash) -> bool {
        self.generations.seen(hash)
    }

    /// The eviction walk finished cache page `page` (one thread at a time).
    pub fn tick(&self, page: u64) {
        if page >= self.began.load(Ordering::Relaxed) + self.period {
            self.began.store(page, Ordering::Relaxed);
            self.generations.retire(self.generations.current());
            self.notes.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(k: u64) -> KeyHash {
        KeyHash::new(crate::index::key_hash::hash_word(k, 8))
    }

    #[test]
    fn a_key_is_admitted_on_its_second_miss_only() {
        let f = MissFilter::new(1 << 20);
        for k in 0..1000 {
            assert!(!f.admit(hash(k), 128), "key {k} admitted on its first miss");
        }
        for k in 0..1000 {
            assert!(
                f.admit(hash(k), 128),
                "key {k} not admitted on its second miss"
            );
        }
    }

    #[test]
    fn keys_are_forgotten_two_windows_later() {
        // Window: a quarter of 1 MiB less the filter's 8 KiB, 2032 misses of 128 bytes (keys
        // already in the current generation do not count, so a few more with false positives).
        let f = MissFilter::new(1 << 20);
        assert!(!f.admit(hash(u64::MAX), 128));
        let (mut k, mut retired, mut current) = (0, 0, f.generations.current());
        while retired < 2 {
            f.admit(hash(k), 128);
            k += 1;
            let now = f.generations.current();
            if now != current {
                (retired, current) = (retired + 1, now);
                assert!(
                    (2031 * retired..2032 * retired + 64).contains(&k),
                    "{k} misses"
                );
            }
        }
        assert!(
            !f.admit(hash(u64::MAX), 128),
            "remembered after two generations were retired"
        );
        // Within the window it is still remembered (the generation after the retirement).
        assert!(f.admit(hash(u64::MAX), 128));
    }

    #[test]
    fn false_positives_stay_rare_at_the_window() {
        // A window's worth of keys in each generation, then as many never seen.
        let f = MissFilter::new(48 << 20);
        let per_window = (48 << 20) / 4 / 152;
        for k in 0..per_window {
            f.admit(hash(k), 1);
        }
        let fresh = (1u64 << 40..(1 << 40) + 100_000)
            .filter(|&k| f.generations.seen(hash(k)))
            .count();
        assert!(fresh < 2_000, "{fresh} of 100000 unseen keys admitted");
        assert_eq!(f.memory_bytes(), 256 << 10);
    }

    #[test]
    fn a_keep_note_lasts_until_the_walk_is_two_log_memories_past_its_generation() {
        // A log of 16 frames; the generation current at page 0 began there.
        let f = KeepFilter::new(1 << 20, 16, 1 << 20);
        f.tick(0);
        f.tick(5);
        f.note(hash(7));
        // Its record lands at most 16 pages above the walk: still remembered there.
        for page in 6..32 {
            f.tick(page);
            assert!(f.seen(hash(7)), "forgotten at page {page}");
        }
        f.tick(32);
        assert!(!f.seen(hash(7)), "remembered for a third log memory");
        // Pages skipped by the walk count too: the next claim past a period retires.
        f.note(hash(8));
        f.tick(80);
        assert!(f.seen(hash(8)));
        f.tick(81);
        assert!(f.seen(hash(8)));
        f.tick(96);
        assert!(!f.seen(hash(8)));
    }

    #[test]
    fn a_keep_generation_full_of_notes_retires_without_the_log_moving() {
        let f = KeepFilter::new(1 << 20, 16, 1 << 20);
        let bits = f.generations.bits();
        assert_eq!(bits, (1 << 20) / LOG_BYTES_PER_KEEP_BIT);
        assert_eq!(f.memory_bytes(), 2 * bits / 8);
        f.note(hash(u64::MAX));
        // A read-only phase: misses, no appends, no ticks.
        let full = bits / 8;
        for k in 0..full {
            f.note(hash(k));
        }
        assert!(f.seen(hash(u64::MAX)), "gone after one generation");
        let fresh = (1u64 << 40..(1 << 40) + 100_000)
            .filter(|&k| f.seen(hash(k)))
            .count();
        assert!(fresh < 5_000, "{fresh} of 100000 unseen keys look kept");
        for k in full..3 * full {
            f.note(hash(k));
        }
        assert!(!f.seen(hash(u64::MAX)), "kept after two full generations");
        // At most a quarter of a small cache: 1 MiB of log beside a 64 KiB cache.
        assert_eq!(
            KeepFilter::new(1 << 20, 16, 64 << 10).generations.bits(),
            16 << 10
        );
    }

    #[test]
    fn an_evicted_key_is_a_ghost_for_about_the_probe_and_then_forgotten() {
        // A probe of 9 pages: generations of 6 pages.
        let g = GhostFilter::new(9 << 16, 9);
        let mut page = 0;
        for k in 0..100 {
            g.note(hash(k));
        }
        g.tick(page);
        // Remembered while the eviction walks the next 6 pages (the first generation) ...
        for _ in 0..6 {
            page += 1;
            g.tick(page);
            assert!((0..100).all(|k| g.seen(hash(k))), "page {page}");
        }
        // ... and the 6 after (now the previous generation), then forgotten.
        for _ in 0..5 {
            page += 1;
            g.tick(page);
            assert!((0..100).all(|k| g.seen(hash(k))), "page {page}");
        }
        page += 1;
        g.tick(page);
        let left = (0..100).filter(|&k| g.seen(hash(k))).count();
        assert!(left < 5, "{left} of 100 still ghosts two generations later");
        assert!(!g.seen(hash(1_000)), "a key never evicted");
    }
}
