//! What the cold index does with one hash chunk: where a key hash's entry lives, how a chunk's
//! bytes hold its entries, and the two operations on a chunk (read an entry; compare-and-swap
//! an entry, decided inside an RMW of the inner store). FASTER keeps the same pieces in
//! `cold_index_contexts.h` (the chunk key and position, the read and RMW contexts); the store
//! around them is [`super::cold_index`].
//!
//! # A chunk
//! A chunk is the value of one record of the inner store, keyed by its chunk id (a `u64`,
//! stored as its 8 little-endian bytes like any integer key). Its value is `entries` entries of
//! [`ENTRY_BYTES`] bytes each, entry `i` at byte `i * ENTRY_BYTES`, each a 48-bit cold-log
//! [`Address`] in little-endian order; [`Address::INVALID`] (all zero bytes) is an empty entry.
//! A chunk that has no record is all empty, so a zeroed chunk and an absent one read the same.
//!
//! Entries are 6 bytes, not FASTER's 8 (an address and a tag): the map is entry -> address,
//! with no tag to keep, and an address has 48 bits. The default chunk of 32 entries is then 192
//! bytes and its record (24-byte header, 8-byte key) 224 bytes, which the engine's first device
//! read of a record (256 bytes from its start, `hlog::persistent_memory_malloc`) always covers;
//! a 256-byte chunk would make a 288-byte record, and a second device read for every chunk
//! fetched through a device whose read unit is smaller than the overhang (buffered I/O: always).
//!
//! # Which bits of the hash
//! The chunk is the top `chunk_bits` bits of the finalized hash, the entry the low
//! `log2(entries)` bits: two disjoint fields (at most 32 + 9 of the 64 bits), so the entries of
//! one chunk are used evenly. The inner store hashes the chunk id again with its own finalizer
//! (an integer key's hash), so its buckets are not correlated with either field.
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::status::{Error, Result};
use crate::index::KeyHash;
use crate::ops::fast::Word;
use crate::ops::rmw::{Decision, Latest};

/// Bytes of one entry of a chunk: a 48-bit address.
pub const ENTRY_BYTES: usize = 6;
const _: () = assert!(crate::core::address::ADDRESS_BITS as usize == 8 * ENTRY_BYTES);

/// Most chunks: `2^MAX_CHUNK_BITS` (the chunk id field must stay clear of the entry field).
pub const MAX_CHUNK_BITS: u32 = 32;
/// Fewest entries per chunk.
pub const MIN_ENTRIES: u32 = 8;
/// Most entries per chunk (a chunk of 3 KiB).
pub const MAX_ENTRIES: u32 = 512;

/// How many chunks of how many entries: the map from a hash to its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkGeometry {
    chunk_bits: u32,
    entry_bits: u32,
}

/// The place of a hash's entry: chunk and entry in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPos {
    /// The chunk (the inner store's key).
    pub chunk: ChunkId,
    /// The entry in the chunk.
    pub entry: usize,
}

/// A chunk's id: its key in the inner store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct ChunkId(pub u64);

impl ChunkId {
    /// The key as the engine's one-word fast paths take it (8 bytes).
    #[inline]
    pub(crate) fn word(self) -> Word {
        Word {
            word: self.0,
            len: 8,
        }
    }

    /// The key encoded as the general path takes it: the same 8 bytes.
    #[inline]
    pub(crate) fn encoded(self) -> Encoded {
        Encoded::from_bytes(&self.0.to_le_bytes())
    }

    /// The key's hash in the inner store: an integer key's (what recovery derives from the
    /// logged key again).
    #[inline]
    pub(crate) fn hash(self) -> KeyHash {
        self.word().hash()
    }
}

impl ChunkGeometry {
    /// `2^chunk_bits` chunks of `entries` entries (a power of two). The caller validated both.
    pub(crate) fn new(chunk_bits: u32, entries: u32) -> Self {
        debug_assert!(chunk_bits <= MAX_CHUNK_BITS && entries.is_power_of_two());
        Self {
            chunk_bits,
            entry_bits: entries.trailing_zeros(),
        }
    }

    /// Chunks.
    #[must_use]
    pub fn chunks(self) -> u64 {
        1 << self.chunk_bits
    }

    /// log2 of the chunks.
    #[must_use]
    pub fn chunk_bits(self) -> u32 {
        self.chunk_bits
    }

    /// Entries per chunk.
    #[must_use]
    pub fn entries(self) -> usize {
        1 << self.entry_bits
    }

    /// Bytes of a chunk (the inner store's value).
    #[must_use]
    pub fn chunk_bytes(self) -> usize {
        self.entries() * ENTRY_BYTES
    }

    /// Where `hash`'s entry lives (see the module docs for the bits).
    #[inline]
    #[must_use]
    pub fn locate(self, hash: KeyHash) -> EntryPos {
        let h = hash.value();
        // `checked_shr`: 64 - 0 = 64 would overflow a plain shift; one chunk then.
        let chunk = h.checked_shr(64 - self.chunk_bits).unwrap_or(0);
        EntryPos {
            chunk: ChunkId(chunk),
            entry: (h & ((1 << self.entry_bits) - 1)) as usize,
        }
    }

    /// The address entry `entry` of `chunk` holds.
    ///
    /// # Errors
    /// [`Error::Codec`] when `chunk` is not a chunk of this geometry (a record of another
    /// length: the inner log is not a cold index of this shape).
    #[inline]
    pub(crate) fn entry_of(self, chunk: &[u8], entry: usize) -> Result<Address> {
        if chunk.len() != self.chunk_bytes() {
            return Err(self.wrong_length(chunk.len()));
        }
        let at = entry * ENTRY_BYTES;
        let mut word = [0u8; 8];
        word[..ENTRY_BYTES].copy_from_slice(&chunk[at..at + ENTRY_BYTES]);
        Ok(Address::new(u64::from_le_bytes(word)))
    }

    /// The address an update sees in entry `entry` of the chunk `latest`.
    fn entry_in(self, latest: Latest<'_>, entry: usize) -> Result<Address> {
        match latest {
            // No tombstone is ever written; compaction drops them. Either way: all empty.
            Latest::Absent | Latest::Deleted => Ok(Address::INVALID),
            Latest::Value(chunk) => self.entry_of(chunk, entry),
        }
    }

    #[cold]
    fn wrong_length(self, len: usize) -> Error {
        Error::Codec(format!(
            "a cold index chunk of {len} bytes; this index's chunks have {} entries of {} bytes",
            self.entries(),
            ENTRY_BYTES
        ))
    }
}

/// Writes `address` into entry `entry` of `chunk` (a chunk's bytes, checked by the caller).
fn set_entry(chunk: &mut [u8], entry: usize, address: Address) {
    let at = entry * ENTRY_BYTES;
    chunk[at..at + ENTRY_BYTES].copy_from_slice(&address.raw().to_le_bytes()[..ENTRY_BYTES]);
}

/// One compare-and-swap of an entry: "set entry `pos` to `new` if it holds `expected`", as
/// the inner store's RMW of the chunk decides it (FASTER's `ColdIndexRmwContext`).
///
/// [`EntryCas::decide`] may run several times for one CAS (the engine retries an update whose
/// index CAS it lost, or that went to the device and found the chunk's entry moved): each run
/// decides afresh from the chunk it is given and overwrites [`EntryCas::outcome`], so the
/// outcome is that of the run whose decision the engine carried out.
pub(crate) struct EntryCas<F: FnMut(Address) -> bool> {
    geometry: ChunkGeometry,
    entry: usize,
    /// Whether the entry may be swapped from what it holds (a CAS: it holds `expected`).
    accept: F,
    new: Address,
    /// The last run's outcome: `Ok` (the entry held `expected`; it holds `new` once the
    /// decision is carried out), or `Err` with what it held.
    pub(crate) outcome: Option<std::result::Result<(), Address>>,
}

impl EntryCas<fn(Address) -> bool> {
    /// A compare-and-swap from `expected` to `new`.
    pub(crate) fn new(
        geometry: ChunkGeometry,
        entry: usize,
        expected: Address,
        new: Address,
    ) -> EntryCas<impl FnMut(Address) -> bool> {
        EntryCas::with(geometry, entry, move |current| current == expected, new)
    }
}

impl<F: FnMut(Address) -> bool> EntryCas<F> {
    /// A swap to `new` from whatever the entry holds that `accept` accepts (it runs inside the
    /// decision, before the new chunk is published, once per run).
    pub(crate) fn with(geometry: ChunkGeometry, entry: usize, accept: F, new: Address) -> Self {
        Self {
            geometry,
            entry,
            accept,
            new,
            outcome: None,
        }
    }

    /// Decides the RMW of the chunk from its newest version: writes the chunk with the entry
    /// swapped if `accept` takes what it held and `new` differs, else writes nothing
    /// ([`Decision::Abort`]): a failed CAS leaves no record behind, and neither does a CAS to
    /// the value already held.
    ///
    /// # Errors
    /// As [`ChunkGeometry::entry_of`].
    pub(crate) fn decide(&mut self, latest: Latest<'_>) -> Result<Decision> {
        let current = self.geometry.entry_in(latest, self.entry)?;
        Ok(match self.decide_entry(current) {
            Some(_) => Decision::Write(self.updated(latest)),
            None => Decision::Abort,
        })
    }

    /// [`EntryCas::decide`] from the entry alone: `Some(new)` if the entry must be set to it,
    /// `None` if nothing is to be written.
    pub(crate) fn decide_entry(&mut self, current: Address) -> Option<Address> {
        if !(self.accept)(current) {
            self.outcome = Some(Err(current));
            return None;
        }
        self.outcome = Some(Ok(()));
        (current != self.new).then_some(self.new)
    }

    /// Byte offset of this CAS's entry in its chunk.
    pub(crate) fn entry_offset(&self) -> usize {
        self.entry * ENTRY_BYTES
    }

    /// The chunk `latest` with the entry set to `new` (checked by [`EntryCas::decide`]).
    fn updated(&self, latest: Latest<'_>) -> Encoded {
        let mut chunk = match latest {
            Latest::Value(bytes) => Encoded::from_bytes(bytes),
            Latest::Absent | Latest::Deleted => Encoded::zeroed(self.geometry.chunk_bytes()),
        };
        set_entry(chunk.bytes_mut(), self.entry, self.new);
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_and_entry_come_from_disjoint_bits() {
        let g = ChunkGeometry::new(12, 32);
        let h = KeyHash::from_finalized(0xabc0_0000_0000_0013);
        assert_eq!(
            g.locate(h),
            EntryPos {
                chunk: ChunkId(0xabc),
                entry: 0x13
            }
        );
        // One chunk: every hash in chunk 0.
        let one = ChunkGeometry::new(0, 8);
        assert_eq!(
            one.locate(KeyHash::from_finalized(u64::MAX)).chunk,
            ChunkId(0)
        );
        let most = ChunkGeometry::new(MAX_CHUNK_BITS, MAX_ENTRIES);
        let p = most.locate(KeyHash::from_finalized(u64::MAX));
        assert_eq!((p.chunk.0, p.entry), (u64::from(u32::MAX), 511));
    }

    #[test]
    fn a_cas_writes_only_when_it_swaps() {
        let g = ChunkGeometry::new(4, 8);
        let a = Address::new(0x1234_5678_9abc);
        // Absent chunk: empty entries.
        let mut cas = EntryCas::new(g, 3, Address::INVALID, a);
        let Decision::Write(chunk) = cas.decide(Latest::Absent).unwrap() else {
            panic!("expected a write");
        };
        assert_eq!(cas.outcome, Some(Ok(())));
        assert_eq!(chunk.len(), 48);
        assert_eq!(g.entry_of(chunk.bytes(), 3).unwrap(), a);
        for i in (0..8).filter(|&i| i != 3) {
            assert_eq!(g.entry_of(chunk.bytes(), i).unwrap(), Address::INVALID);
        }
        // Wrong expectation: no write, the entry's value reported.
        let mut cas = EntryCas::new(g, 3, Address::INVALID, Address::new(64));
        assert!(matches!(
            cas.decide(Latest::Value(chunk.bytes())).unwrap(),
            Decision::Abort
        ));
        assert_eq!(cas.outcome, Some(Err(a)));
        // A swap to the value held: success, nothing written.
        let mut cas = EntryCas::new(g, 3, a, a);
        assert!(matches!(
            cas.decide(Latest::Value(chunk.bytes())).unwrap(),
            Decision::Abort
        ));
        assert_eq!(cas.outcome, Some(Ok(())));
        // Back to empty.
        let mut cas = EntryCas::new(g, 3, a, Address::INVALID);
        let Decision::Write(empty) = cas.decide(Latest::Value(chunk.bytes())).unwrap() else {
            panic!("expected a write");
        };
        assert!(empty.bytes().iter().all(|&b| b == 0));
        // A chunk of the wrong length is an error, not a panic.
        let mut cas = EntryCas::new(g, 0, Address::INVALID, a);
        assert!(matches!(
            cas.decide(Latest::Value(&[0; 47])),
            Err(Error::Codec(_))
        ));
    }
}
