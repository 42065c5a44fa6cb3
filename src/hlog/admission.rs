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
#![forbid(unsafe_code)]

use crate::index::KeyHash;
use crate::sync::{AtomicU64, Ordering};

/// Bit positions probed per key.
const PROBES: u64 = 3;
/// Cache bytes per filter bit (per generation), before rounding down to a power of two.
const BYTES_PER_BIT: u64 = 32;
/// Fewest bits per generation.
const MIN_BITS: u64 = 1 << 9;

/// The filter (module docs).
pub struct MissFilter {
    /// The two generations, `bits / 64` words each.
    generations: [Box<[AtomicU64]>; 2],
    /// `bits - 1` (`bits` is a power of two).
    mask: u64,
    /// Which generation is current (0 or 1).
    current: AtomicU64,
    /// Bytes of copies the current generation's misses would take.
    counted: AtomicU64,
    /// The mark at which a generation is retired: a quarter of the cache's bytes.
    window: u64,
}

impl MissFilter {
    /// Bytes of a filter for a cache of `cache_bytes`.
    #[must_use]
    pub fn bytes_for(cache_bytes: u64) -> u64 {
        2 * Self::bits_for(cache_bytes) / 8
    }

    fn bits_for(cache_bytes: u64) -> u64 {
        let bits = (cache_bytes / BYTES_PER_BIT).max(MIN_BITS);
        1 << bits.ilog2()
    }

    /// A filter for a cache of `cache_bytes` ([`MissFilter::bytes_for`] of them its own, the
    /// rest for copies).
    #[must_use]
    pub fn new(cache_bytes: u64) -> Self {
        let bits = Self::bits_for(cache_bytes);
        let generation = || (0..bits / 64).map(|_| AtomicU64::new(0)).collect();
        let copies = cache_bytes.saturating_sub(Self::bytes_for(cache_bytes));
        Self {
            generations: [generation(), generation()],
            mask: bits - 1,
            current: AtomicU64::new(0),
            counted: AtomicU64::new(0),
            window: (copies / 4).max(1),
        }
    }

    /// Bytes of memory the filter holds.
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        2 * (self.mask + 1) / 8
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
        let words = &self.generations[generation];
        self.positions(hash)
            .all(|(w, b)| words[w].load(Ordering::Relaxed) & b != 0)
    }

    /// Whether `hash` missed within the window (either generation holds it), without noting
    /// anything: what a record leaving the log's memory asks (`read_cache`, invariant 9).
    pub fn seen(&self, hash: KeyHash) -> bool {
        self.contains(0, hash) || self.contains(1, hash)
    }

    /// Records a miss of `hash` whose copy would take `copy_bytes`; returns whether the key
    /// missed before within the window (then its copy is admitted).
    pub fn admit(&self, hash: KeyHash, copy_bytes: u64) -> bool {
        let current = (self.current.load(Ordering::Relaxed) & 1) as usize;
        if self.contains(current, hash) {
            return true;
        }
        let seen = self.contains(current ^ 1, hash);
        let words = &self.generations[current];
        for (w, b) in self.positions(hash) {
            words[w].fetch_or(b, Ordering::Relaxed);
        }
        let before = self.counted.fetch_add(copy_bytes, Ordering::Relaxed);
        if before < self.window && before + copy_bytes >= self.window {
            self.retire(current);
        }
        seen
    }

    /// Clears the previous generation and makes it current (invariant 2: only the thread
    /// whose miss crossed the window runs this).
    fn retire(&self, current: usize) {
        for w in self.generations[current ^ 1].iter() {
            w.store(0, Ordering::Relaxed);
        }
        self.current.store((current ^ 1) as u64, Ordering::Relaxed);
        self.counted.store(0, Ordering::Relaxed);
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
        let (mut k, mut retired, mut current) = (0, 0, f.current.load(Ordering::Relaxed));
        while retired < 2 {
            f.admit(hash(k), 128);
            k += 1;
            let now = f.current.load(Ordering::Relaxed);
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
            .filter(|&k| f.contains(0, hash(k)) || f.contains(1, hash(k)))
            .count();
        assert!(fresh < 2_000, "{fresh} of 100000 unseen keys admitted");
        assert_eq!(f.memory_bytes(), MissFilter::bytes_for(48 << 20));
        assert_eq!(f.memory_bytes(), 256 << 10);
    }
}
