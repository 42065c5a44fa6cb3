//! What every index of RsKv provides: the in-memory [`MemIndex`](super::mem_index::MemIndex)
//! now, the cold index of R2Kv later.

use crate::core::address::Address;
use crate::index::hash_bucket::HashBucketEntry;
use crate::sync::{AtomicU64, Ordering};

/// A finalized key hash: the user's (or RsKv's) 64-bit hash passed through a mixing finalizer,
/// so that identity hashes of integer keys still spread over buckets and tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct KeyHash(u64);

impl KeyHash {
    /// Finalizes a raw 64-bit hash (the murmur3 `fmix64` avalanche).
    #[must_use]
    pub const fn new(raw: u64) -> Self {
        let mut h = raw;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        KeyHash(h)
    }
    /// The finalized value.
    #[must_use]
    pub const fn value(self) -> u64 {
        self.0
    }
    /// The bucket in a table of `2^bits` buckets (low bits).
    #[must_use]
    pub const fn bucket(self, bits: u32) -> usize {
        (self.0 & ((1u64 << bits) - 1)) as usize
    }
    /// The 14-bit tag (high bits), never 0 so that a tag-only entry is never mistaken for free.
    #[must_use]
    pub const fn tag(self) -> u16 {
        let t = ((self.0 >> 48) & 0x3fff) as u16;
        if t == 0 {
            1
        } else {
            t
        }
    }
}

/// Why an index operation could not proceed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexBusy {
    /// The index is between two tables (growth is preparing); refresh the epoch and retry.
    RetryLater,
    /// No more overflow buckets can be allocated.
    Full,
}

/// A located index entry: the slot and the value seen in it.
#[derive(Clone, Copy)]
pub struct EntrySlot<'a> {
    pub(crate) slot: &'a AtomicU64,
    /// The entry as read.
    pub entry: HashBucketEntry,
}

impl EntrySlot<'_> {
    /// The chain's newest record as seen.
    #[must_use]
    pub fn address(&self) -> Address {
        self.entry.address()
    }

    /// Swings the entry to `new` if it still holds what was seen; on failure, returns the
    /// entry found and leaves `self` updated to it.
    ///
    /// # Errors
    /// The entry now in the slot.
    pub fn try_update(&mut self, new: Address) -> Result<(), HashBucketEntry> {
        let desired = HashBucketEntry::new(new, self.entry.tag(), false);
        match self.slot.compare_exchange(
            self.entry.raw(),
            desired.raw(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.entry = desired;
                Ok(())
            }
            Err(now) => {
                self.entry = HashBucketEntry::from_raw(now);
                Err(self.entry)
            }
        }
    }
}

/// The operations the store needs from an index. Callers hold epoch protection for as long as
/// they use a returned [`EntrySlot`].
pub trait HashIndex: Send + Sync {
    /// The entry for `hash`'s (bucket, tag), if one exists.
    ///
    /// # Errors
    /// [`IndexBusy::RetryLater`] while the index is switching tables.
    fn find_entry(&self, hash: KeyHash) -> Result<Option<EntrySlot<'_>>, IndexBusy>;

    /// The entry for `hash`'s (bucket, tag), created (pointing at no record) if absent.
    ///
    /// # Errors
    /// [`IndexBusy`] as for `find_entry`, or `Full` when no overflow bucket is left.
    fn find_or_create_entry(&self, hash: KeyHash) -> Result<EntrySlot<'_>, IndexBusy>;
}
