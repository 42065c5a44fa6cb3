//! Hash buckets: one 64-byte cache line of 7 entries and an overflow link.
//!
//! | bits of an entry | meaning |
//! |------------------|---------|
//! | 0..48  | log address of the newest record of the chain |
//! | 48..62 | tag: 14 high bits of the key hash (never 0) |
//! | 62     | read cache: bits 0..48 are a [`CacheAddress`], not a log address |
//! | 63     | tentative: the entry is being inserted and is invisible to lookups |
//!
//! The eighth word holds the index of an overflow bucket in the fixed-page allocator (0 = none).
//! An all-zero entry is free. Keys are never stored in the index: records with the same
//! (bucket, tag) form a chain through their previous-address fields.
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::malloc_fixed_page_size::FixedItem;
use crate::hlog::read_cache::CacheAddress;
use crate::sync::{AtomicU64, Ordering};

/// Entries per bucket (the eighth word is the overflow link).
pub const ENTRIES: usize = 7;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct HashBucketEntry(u64);

impl HashBucketEntry {
    const TAG_SHIFT: u32 = 48;
    const TAG_MASK: u64 = 0x3fff;
    const TENTATIVE: u64 = 1 << 63;
    const CACHED: u64 = 1 << 62;

    /// A free slot.
    pub const EMPTY: HashBucketEntry = HashBucketEntry(0);

    /// An entry for `tag` pointing at `address`.
    #[must_use]
    pub const fn new(address: Address, tag: u16, tentative: bool) -> Self {
        HashBucketEntry(
            address.raw()
                | ((tag as u64) & Self::TAG_MASK) << Self::TAG_SHIFT
                | if tentative { Self::TENTATIVE } else { 0 },
        )
    }
    /// An entry for `tag` pointing at a read-cache record.
    #[must_use]
    pub const fn cached(address: CacheAddress, tag: u16) -> Self {
        HashBucketEntry(
            address.raw() | ((tag as u64) & Self::TAG_MASK) << Self::TAG_SHIFT | Self::CACHED,
        )
    }
    /// Where the entry points: the log, or a read-cache record (whose header holds the log
    /// address the chain continues at).
    #[must_use]
    pub const fn target(self) -> Target {
        if self.0 & Self::CACHED != 0 {
            Target::Cache(CacheAddress::new(self.0 & Address::MASK))
        } else {
            Target::Log(Address::new(self.0 & Address::MASK))
        }
    }
    /// Whether the entry points at a read-cache record.
    #[must_use]
    pub const fn is_cached(self) -> bool {
        self.0 & Self::CACHED != 0
    }
    /// From the raw word.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        HashBucketEntry(raw)
    }
    /// The raw word.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// Whether the slot is free.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The chain's newest record, for an entry that does not point into the read cache (the
    /// index's own bookkeeping, recovery); operations use [`HashBucketEntry::target`].
    #[must_use]
    pub const fn address(self) -> Address {
        Address::new(self.0 & Address::MASK)
    }
    /// The tag.
    #[must_use]
    pub const fn tag(self) -> u16 {
        ((self.0 >> Self::TAG_SHIFT) & Self::TAG_MASK) as u16
    }
    /// Whether the entry is still being inserted.
    #[must_use]
    pub const fn tentative(self) -> bool {
        self.0 & Self::TENTATIVE != 0
    }
}

/// Where an entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest record of the chain in the log.
    Log(Address),
    /// A read-cache copy in front of the chain.
    Cache(CacheAddress),
}

/// A bucket: exactly one cache line.
#[repr(C, align(64))]
#[derive(Default)]
pub struct HashBucket {
    /// The entries.
    pub entries: [AtomicU64; ENTRIES],
    /// Index of the overflow bucket, 0 if none.
    pub overflow: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<HashBucket>() == 64);
const _: () = assert!(std::mem::align_of::<HashBucket>() == 64);

impl HashBucket {
    /// The entry in slot `i`.
    #[must_use]
    pub fn entry(&self, i: usize) -> HashBucketEntry {
        HashBucketEntry(self.entries[i].load(Ordering::Acquire))
    }
}

impl FixedItem for HashBucket {
    fn zeroed() -> Self {
        HashBucket::default()
    }
    fn link(&self) -> &AtomicU64 {
        &self.overflow
    }
    fn clear(&self) {
        for e in &self.entries {
            e.store(0, Ordering::Relaxed);
        }
        self.overflow.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_fields_round_trip() {
        let e = HashBucketEntry::new(Address::new(0xABCD_EF01_2345), 0x3fff, true);
        assert_eq!(e.address(), Address::new(0xABCD_EF01_2345));
        assert_eq!(e.tag(), 0x3fff);
        assert!(e.tentative());
        let f = HashBucketEntry::new(Address::new(64), 1, false);
        assert!(!f.tentative() && !f.is_empty());
        assert!(HashBucketEntry::EMPTY.is_empty());
        assert_eq!(f.target(), Target::Log(Address::new(64)));
        let c = HashBucketEntry::cached(CacheAddress::new(0x1234), 7);
        assert_eq!(c.target(), Target::Cache(CacheAddress::new(0x1234)));
        assert!(c.is_cached() && !c.tentative() && c.tag() == 7 && !f.is_cached());
    }
}
