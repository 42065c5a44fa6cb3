//! Sorting chains between the two halves of a growing index (FASTER's
//! `TraceBackForOtherChainStart`).
//!
//! When table `v` of `2^bits` buckets doubles, the keys of old bucket `i` belong to new bucket
//! `i` or `i + 2^bits`, by bit `bits` of their hash. The index knows only each entry's tag and
//! address; the keys are in the log. Without help, a split copies every entry into both new
//! buckets (always correct: lookups compare full keys), but then growth shortens no chain and
//! frees no overflow bucket. A [`SplitChains`] (the engine, which can read the log) walks each
//! chain while it is in memory and tells, for each half, the newest record a key of that half
//! can have, or that the half has none.
//!
//! # What a sorter must return
//! For an entry whose chain starts at `a`, half `h` may get:
//! - `None` only if no record of the chain (down to its end) belongs to a key of half `h`;
//! - `Some(b)`, where every record of the chain above `b` belongs to a key of the other half or
//!   to a key of neither (a key of another old bucket, left in this chain by an earlier split
//!   that could not sort it).
//!
//! Whenever it cannot tell (the record is on disk, unreadable, or its key does not hash to this
//! entry's tag), it stops there and gives every half it has not placed yet the address it
//! stopped at. Both halves getting `Some(a)` is the copy-everything split.
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::light_epoch::Protected;
use crate::index::hash_bucket::HashBucketEntry;

/// One entry of an old bucket and where its copies go: `to[0]` into new bucket `i`, `to[1]` into
/// new bucket `i + 2^bits` (`None`: no copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// The old entry (tag and chain head).
    pub entry: HashBucketEntry,
    /// The address each half's copy holds.
    pub to: [Option<Address>; 2],
}

impl Split {
    /// The copy-everything split of `entry`.
    #[must_use]
    pub fn both(entry: HashBucketEntry) -> Self {
        Split {
            entry,
            to: [Some(entry.address()); 2],
        }
    }
}

/// Decides where the entries of a bucket being split go (see the module docs).
pub trait SplitChains: Send + Sync {
    /// Sorts the entries of old bucket `bucket` of a table of `2^bits` buckets: each arrives
    /// as [`Split::both`] and may be narrowed. Runs under `g`, a protection of the index's
    /// epoch, so records at or above the log's head stay readable. Must not panic or wait: a
    /// chunk of the split is held for it.
    fn sort(&self, g: &dyn Protected, bucket: usize, bits: u32, entries: &mut [Split]);

    /// The entry a split writes for `entry`, which names a read-cache copy: the copy's log
    /// address (a copy must not be named by two entries, since its eviction unlinks only the
    /// one its key hashes to). Called with or without a protection: the split holds the
    /// entry's chunk, so the copy's eviction, which must first look the entry up through that
    /// chunk, cannot release it meanwhile.
    fn uncache(&self, entry: HashBucketEntry) -> HashBucketEntry;
}
