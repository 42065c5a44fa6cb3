//! What the indexes of RsKv provide: [`HashIndex`], the in-memory
//! [`MemIndex`](super::mem_index::MemIndex) whose entries are words the caller swings under its
//! epoch protection, and [`ChainIndex`], R2Kv's cold index
//! ([`ColdIndex`](super::cold_index::ColdIndex)) whose entries may be on the device (why two
//! traits: [`ChainIndex`]'s docs).
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::light_epoch::Protected;
use crate::hlog::read_cache::CacheAddress;
use crate::index::hash_bucket::{HashBucketEntry, Target};
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
    /// A hash finalized before (as [`KeyHash::value`] returned it).
    #[must_use]
    pub const fn from_finalized(value: u64) -> Self {
        KeyHash(value)
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

/// A located index entry: the slot and the value seen in it. It borrows from the epoch guard
/// it was found under (`'a`), so it cannot be used once that protection may have ended.
#[derive(Clone, Copy)]
pub struct EntrySlot<'a> {
    pub(crate) slot: &'a AtomicU64,
    /// The entry as read.
    pub entry: HashBucketEntry,
}

impl EntrySlot<'_> {
    /// Where the entry pointed as seen: the chain's newest record, or a read-cache copy in
    /// front of it (the engine resolves it; an operation never takes a cache address for a
    /// log address).
    #[must_use]
    pub fn target(&self) -> Target {
        self.entry.target()
    }

    /// Swings the entry to `new` if it still holds what was seen; on failure, returns the
    /// entry found and leaves `self` updated to it.
    ///
    /// # Errors
    /// The entry now in the slot.
    pub fn try_update(&mut self, new: Address) -> Result<(), HashBucketEntry> {
        self.swing(HashBucketEntry::new(new, self.entry.tag(), false))
    }

    /// As [`EntrySlot::try_update`], to a read-cache record.
    ///
    /// # Errors
    /// The entry now in the slot.
    pub fn try_update_cached(&mut self, new: CacheAddress) -> Result<(), HashBucketEntry> {
        self.swing(HashBucketEntry::cached(new, self.entry.tag()))
    }

    fn swing(&mut self, desired: HashBucketEntry) -> Result<(), HashBucketEntry> {
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

/// The operations the store needs from an index. Each takes the caller's epoch protection
/// (`g`, an `&EpochGuard` or `&ShortGuard` of the index's epoch) and the [`EntrySlot`] it
/// returns borrows from it, so a lookup without protection, or an entry kept past its guard,
/// does not compile:
///
/// ```compile_fail,E0597
/// # use std::sync::Arc;
/// # use rskv::core::light_epoch::LightEpoch;
/// # use rskv::index::{HashIndex, KeyHash, MemIndex};
/// let epoch = Arc::new(LightEpoch::new());
/// let index = MemIndex::new(4, epoch.clone());
/// let entry = {
///     let g = epoch.protect().unwrap();
///     index.find_or_create_entry(&g, KeyHash::new(1)).unwrap()
/// }; // `g` dropped here while still borrowed: the table may be freed from now on
/// let _ = entry.target();
/// ```
///
/// ```compile_fail,E0061
/// # use std::sync::Arc;
/// # use rskv::core::light_epoch::LightEpoch;
/// # use rskv::index::{HashIndex, KeyHash, MemIndex};
/// let index = MemIndex::new(4, Arc::new(LightEpoch::new()));
/// let entry = index.find_entry(KeyHash::new(1)); // no guard, no lookup
/// ```
///
/// Nor does keeping an entry across [`EpochGuard::refresh`], which may let the old table go:
///
/// ```compile_fail,E0502
/// # use std::sync::Arc;
/// # use rskv::core::light_epoch::LightEpoch;
/// # use rskv::index::{HashIndex, KeyHash, MemIndex};
/// let epoch = Arc::new(LightEpoch::new());
/// let index = MemIndex::new(4, epoch.clone());
/// let mut g = epoch.protect().unwrap();
/// let entry = index.find_or_create_entry(&g, KeyHash::new(1)).unwrap();
/// g.refresh();
/// let _ = entry.target();
/// ```
///
/// What does compile: the entry used while its guard lives.
///
/// [`EpochGuard::refresh`]: crate::core::light_epoch::EpochGuard::refresh
///
/// ```
/// # use std::sync::Arc;
/// # use rskv::core::light_epoch::LightEpoch;
/// # use rskv::Address;
/// # use rskv::index::{HashIndex, KeyHash, MemIndex};
/// # use rskv::index::hash_bucket::Target;
/// let epoch = Arc::new(LightEpoch::new());
/// let index = MemIndex::new(4, epoch.clone());
/// let g = epoch.protect().unwrap();
/// let entry = index.find_or_create_entry(&g, KeyHash::new(1)).unwrap();
/// assert_eq!(entry.target(), Target::Log(Address::INVALID));
/// ```
pub trait HashIndex: Send + Sync {
    /// The entry for `hash`'s (bucket, tag), if one exists.
    ///
    /// # Errors
    /// [`IndexBusy::RetryLater`] while the index is switching tables.
    ///
    /// # Panics
    /// If `g` protects another epoch than the index's.
    fn find_entry<'g, G: Protected + ?Sized>(
        &'g self,
        g: &'g G,
        hash: KeyHash,
    ) -> Result<Option<EntrySlot<'g>>, IndexBusy>;

    /// The entry for `hash`'s (bucket, tag), created (pointing at no record) if absent.
    ///
    /// # Errors
    /// [`IndexBusy`] as for `find_entry`, or `Full` when no overflow bucket is left.
    ///
    /// # Panics
    /// As `find_entry`.
    fn find_or_create_entry<'g, G: Protected + ?Sized>(
        &'g self,
        g: &'g G,
        hash: KeyHash,
    ) -> Result<EntrySlot<'g>, IndexBusy>;
}

/// An index that maps a key hash to the address of its chain's newest record and may have to
/// read the device to do so: R2Kv's cold index
/// ([`ColdIndex`](crate::index::cold_index::ColdIndex)), whose entries live in chunks that are
/// records of a store of their own. The cold store reads a chain's head with
/// [`ChainIndex::get`] and puts a new record in front of it with [`ChainIndex::try_update`], a
/// compare-and-swap of the entry by value.
///
/// # Why this is not [`HashIndex`]
/// A [`HashIndex`] lookup returns at once an [`EntrySlot`]: a reference to the entry's word in
/// a table in memory, borrowed from the caller's epoch protection, that the caller swings with
/// its own CAS while still protected. That fits an index whose entries are words in memory.
/// Here an entry may first have to be read from the device, and no epoch protection may be held
/// across a device wait (a thread waiting for the disk would hold back flushing, eviction and
/// checkpoints; `EpochGuard` is not `Send`, so no async operation could hold one anyway). There
/// is no stable word to lend either: a chunk's newest version moves to a new record on every
/// copy-update. So this trait hands out values, not slots, and the compare-and-swap is an
/// operation of the index (an RMW of the chunk that compares inside its decision), with a
/// blocking and an async form each. A single trait over both would have to make the in-memory
/// index pay for futures and by-value CAS on its hot path, or give the cold index slots it
/// cannot keep.
pub trait ChainIndex: Send + Sync {
    /// The address the entry for `hash` holds ([`Address::INVALID`] when empty); blocks while
    /// the device reads.
    ///
    /// # Errors
    /// Device and corruption errors.
    fn get(&self, hash: KeyHash) -> crate::core::status::Result<Address>;

    /// [`ChainIndex::get`] as a `Send` future that holds no epoch protection while it waits.
    fn get_async(
        &self,
        hash: KeyHash,
    ) -> impl std::future::Future<Output = crate::core::status::Result<Address>> + Send;

    /// Sets the entry for `hash` to `new` if it holds `expected`: `Ok(Ok(()))` if it did,
    /// `Ok(Err(actual))` if it held `actual` (nothing is then written). Blocks while the device
    /// reads.
    ///
    /// # Errors
    /// Device errors, a store poisoned by a failed write, corruption.
    fn try_update(
        &self,
        hash: KeyHash,
        expected: Address,
        new: Address,
    ) -> crate::core::status::Result<Result<(), Address>>;

    /// [`ChainIndex::try_update`] as a `Send` future that holds no epoch protection while it
    /// waits.
    fn try_update_async(
        &self,
        hash: KeyHash,
        expected: Address,
        new: Address,
    ) -> impl std::future::Future<Output = crate::core::status::Result<Result<(), Address>>> + Send;
}
