//! Record layout in the hybrid log.
//!
//! A record is a run of 8-byte words inside one log page (records never straddle pages):
//!
//! | word | content |
//! |------|---------|
//! | 0 | [`RecordInfo`]: previous address (48 bits), version (13), invalid bit |
//! | 1 | key length in bytes (low 32 bits), value capacity in bytes (high 32 bits) |
//! | 2 | [`ValueState`]: value length (32), sequence or checksum (29), tombstone, sealed, locked |
//! | 3.. | key bytes, zero-padded to a word |
//! | .. | value bytes, zero-padded to the capacity (a multiple of 8) |
//!
//! # Invariants
//! - Word 0 of a written record is never 0 (versions start at 1), so a zero word marks the unused
//!   end of a page.
//! - Words 0 and 1 are written once, before the record is published by the index CAS (Release);
//!   afterwards only the invalid bit of word 0 may be set, by the record's creator, before it
//!   leaves the mutable region.
//! - The key never changes. The value and word 2 change only under the record's lock bit
//!   (in-place updates in the mutable region); readers copy optimistically and retry if word 2
//!   changed meanwhile (a seqlock), so they never see a torn value and never block a writer.
//! - A *sealed* record has been superseded by a copy at the tail; in-place writers that find it
//!   sealed retry from the index, so no update can land in a record nobody will read again.
//! - *Checksums.* Every record on the device carries a 29-bit checksum in word 2's sequence
//!   field ([`record_checksum`]: every word, with the bits that may still legitimately change
//!   masked out: word 2's sequence, sealed and locked bits, none of which a reader of the
//!   device looks at). The invalid bit is covered: a flipped one would silently hide a live
//!   record (or revive an abandoned one). Its one legitimate change after the stamp, recovery
//!   invalidating records of a version that missed the checkpoint, re-stamps the record in the
//!   same write ([`invalidate_in`]). A page is
//!   stamped when it is flushed, when its records no longer change (it is below the safe
//!   read-only marker: no in-place writer remains, so the sequence has done its job), and a
//!   snapshot checkpoint stamps its copy of a page before writing it. Every record read from the
//!   device or a snapshot is verified before anything in it is trusted (key, chain pointer,
//!   value); a mismatch is [`crate::core::status::Error::Corrupt`], never a wrong value or a
//!   silently shortened chain. An in-memory reader that copies a value while the flush stamps
//!   its record sees word 2 change and retries once, as with any seqlock writer. Stamping is
//!   idempotent (the checksum does not cover the field it is stored in).
//! - All log memory is accessed through `AtomicU64`, so concurrent in-place updates and reads are
//!   not data races in Rust's model. The byte order is little-endian (the crate only builds there).
//!
//! # Record locks
//! An in-place writer sets word 2's lock bit with a CAS ([`RecordRef::lock`]) and clears it on
//! drop by storing the state it saved when it locked (with the next sequence number if it wrote).
//! So while the bit is set the sequence field means nothing to anyone, and the lock puts its
//! *owner* there: the epoch slot of the thread that took it, plus one ([`LockOwner`]; slots are
//! process-wide, one per live thread, so the tag names the thread in every store). Readers
//! never accept a locked state as consistent, and the flush only meets unlocked records (a
//! lock is taken at or above read-only, the flush stays below safe read-only). A snapshot's
//! copy of a mutable page may catch a record locked: stamping replaces the field with the
//! checksum (which masks it) and recovery clears the lock bit, while the length, tombstone and
//! sealed bits it keeps are the record's own; that is why the tag replaces only the sequence
//! field. So the tag is invisible to everyone but waiters.
//!
//! Why: an update runs its user's function while holding the lock (an RMW's function, an upsert's
//! `put_atomic`, the codec). If that function updates *the same key* on the same store, the nested
//! operation would wait for a lock its own thread holds: a hang. A writer that finds the lock taken
//! (only then: the uncontended path is still one load and one CAS; the tag is a plain load from the
//! thread's epoch-table entry, which its protection has just written; no thread-local, no atomic,
//! no store) compares the tag with its own and, if it holds the lock itself, returns
//! [`LockRefused::HeldHere`], which operations turn into `Error::Busy`. A reader in the same spot
//! ([`RecordRef::read_value`], one thread-local load once it met a lock) reads through its own lock
//! instead: the holder is suspended in the function, which always runs before the holder writes
//! anything, so the value is the committed one and cannot change meanwhile. Nothing needs undoing
//! on any exit, a panic included: the tag lives and dies with the lock bit, which the lock's `Drop`
//! clears.
//!
//! Two threads whose functions each reach for the other's locked key wait in a cycle; the lock
//! types count the locks their thread holds, and a waiter that holds one takes part in the cycle
//! detection of [`crate::core::lock_cycle`] ([`LockRefused::Cycle`], and [`RecordRef::read_value`]'s
//! error).
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::lock_cycle::{self, Cycle, Wait};
use crate::sync::{fence, AtomicU64, Ordering};

#[cfg(target_endian = "big")]
compile_error!("RsKv's log format is little-endian; big-endian targets are not supported");

/// Words before the key.
pub const HEADER_WORDS: usize = 3;
/// Bytes before the key.
pub const HEADER_BYTES: usize = HEADER_WORDS * 8;

/// A record's version: the checkpoint version it was written in (13 bits, never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Version(pub u16);

impl Version {
    /// Number of version bits in a record header.
    pub const BITS: u32 = 13;
    /// The first version of a new store.
    #[cfg(test)]
    pub const FIRST: Version = Version(1);
    /// The record version of the store's (unbounded, starting at 1) checkpoint version `v`:
    /// wraps inside 13 bits, skipping 0. Only versions next to each other are ever compared.
    #[must_use]
    pub const fn of(v: u64) -> Version {
        Version(((v.saturating_sub(1)) % ((1 << Self::BITS) - 1)) as u16 + 1)
    }
}

/// Word 0 of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct RecordInfo(u64);

impl RecordInfo {
    const VERSION_SHIFT: u32 = 48;
    const VERSION_MASK: u64 = (1 << Version::BITS) - 1;
    const INVALID: u64 = 1 << 61;
    /// The invalid bit in the raw word.
    pub const INVALID_BIT: u64 = Self::INVALID;

    /// A header pointing at `prev`, written in `version`.
    #[must_use]
    pub fn new(prev: Address, version: Version) -> Self {
        RecordInfo(prev.raw() | (u64::from(version.0) & Self::VERSION_MASK) << Self::VERSION_SHIFT)
    }
    /// The previous record in the hash chain.
    #[must_use]
    pub const fn prev(self) -> Address {
        Address::new(self.0)
    }
    /// The version the record was written in.
    #[must_use]
    pub const fn version(self) -> Version {
        Version(((self.0 >> Self::VERSION_SHIFT) & Self::VERSION_MASK) as u16)
    }
    /// Whether the record was abandoned (its index CAS failed) and must be skipped.
    #[must_use]
    pub const fn invalid(self) -> bool {
        self.0 & Self::INVALID != 0
    }
}

/// Word 2 of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct ValueState(u64);

impl ValueState {
    const LEN_MASK: u64 = 0xffff_ffff;
    const SEQ_ONE: u64 = 1 << 32;
    const SEQ_MASK: u64 = ((1 << 29) - 1) << 32;
    /// The field that holds the sequence number in memory and the record checksum on disk.
    pub const STAMP_MASK: u64 = Self::SEQ_MASK;
    const TOMBSTONE: u64 = 1 << 61;
    const SEALED: u64 = 1 << 62;
    const LOCKED: u64 = 1 << 63;

    /// A fresh state: live value of `len` bytes, or a tombstone.
    #[must_use]
    pub fn new(len: usize, tombstone: bool) -> Self {
        ValueState(len as u64 | if tombstone { Self::TOMBSTONE } else { 0 })
    }
    /// Length of the value in bytes.
    #[must_use]
    pub const fn len(self) -> usize {
        (self.0 & Self::LEN_MASK) as usize
    }
    /// Whether the record marks a deletion.
    #[must_use]
    pub const fn tombstone(self) -> bool {
        self.0 & Self::TOMBSTONE != 0
    }
    /// Whether a newer copy of the record exists at the tail.
    #[must_use]
    pub const fn sealed(self) -> bool {
        self.0 & Self::SEALED != 0
    }
    /// Whether an in-place writer holds the record.
    #[must_use]
    pub const fn locked(self) -> bool {
        self.0 & Self::LOCKED != 0
    }
    /// The raw word `state` with its sequence field replaced by the checksum `sum`.
    const fn with_checksum(state: u64, sum: u64) -> u64 {
        (state & !Self::SEQ_MASK) | (sum << 32 & Self::SEQ_MASK)
    }
    /// The state after a write: next sequence number, new length and tombstone, unlocked.
    fn after_write(self, len: usize, tombstone: bool, sealed: bool) -> Self {
        let seq = (self.0 & Self::SEQ_MASK).wrapping_add(Self::SEQ_ONE) & Self::SEQ_MASK;
        ValueState(
            seq | len as u64
                | if tombstone { Self::TOMBSTONE } else { 0 }
                | if sealed { Self::SEALED } else { 0 },
        )
    }
}

/// Bits of a record checksum (it lives in word 2's sequence field).
const CHECKSUM_BITS: u32 = 29;

/// The checksum of a record of `len` words, read through `word(i)`: the bits that may change
/// after the record reached the device without changing what a reader of it sees (word 2's
/// sequence/checksum, sealed and locked bits) are masked out. A multiply-xorshift chain over
/// the words: every step is a bijection of the running state for a fixed word, so a change in
/// any one word always changes the 64-bit state, and the reported 29 bits miss it with
/// probability about 2^-29.
#[must_use]
pub fn record_checksum(len: usize, word: impl Fn(usize) -> u64) -> u64 {
    const K: u64 = 0x9fb2_1c65_1e98_df25;
    let mut h = (len as u64).wrapping_mul(K) ^ 0x2545_f491_4f6c_dd1d;
    for i in 0..len {
        let w = match i {
            2 => word(2) & (ValueState::LEN_MASK | ValueState::TOMBSTONE),
            _ => word(i),
        };
        h = (h ^ w).wrapping_mul(K);
        h ^= h >> 32;
    }
    h = h.wrapping_mul(K);
    (h ^ h >> 29) & ((1 << CHECKSUM_BITS) - 1)
}

/// Bytes a record with these key and value sizes occupies.
#[must_use]
pub const fn record_size(key_len: usize, value_cap: usize) -> usize {
    HEADER_BYTES + key_len.next_multiple_of(8) + value_cap.next_multiple_of(8)
}

/// A record in log memory. The slice covers exactly the record's words.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    words: &'a [AtomicU64],
    key_len: usize,
    value_cap: usize,
}

/// What an optimistic value read saw.
pub enum ValueRead {
    /// A live value (its bytes are in the buffer).
    Live,
    /// A deletion marker.
    Tombstone,
}

impl<'a> RecordRef<'a> {
    /// Parses the record at the start of `rest` (the words from the record to the page end).
    /// `None` for unused page space; `Err` if the lengths do not fit the page.
    ///
    /// # Errors
    /// A description of the corruption.
    #[inline]
    pub fn parse(rest: &'a [AtomicU64]) -> Result<Option<Self>, &'static str> {
        if rest.len() < HEADER_WORDS {
            return Ok(None);
        }
        if rest[0].load(Ordering::Acquire) == 0 {
            return Ok(None);
        }
        let lens = rest[1].load(Ordering::Relaxed);
        let key_len = (lens & 0xffff_ffff) as usize;
        let value_cap = (lens >> 32) as usize;
        let size = record_size(key_len, value_cap) / 8;
        if size > rest.len() {
            return Err("record lengths run past the end of its page");
        }
        Ok(Some(RecordRef {
            words: &rest[..size],
            key_len,
            value_cap,
        }))
    }

    /// Writes a new record into `words` (exactly [`record_size`] words of fresh tail space that
    /// this thread alone owns until it publishes the address).
    #[must_use]
    pub fn write_new(
        words: &'a [AtomicU64],
        info: RecordInfo,
        key: &Encoded,
        value: Option<&Encoded>,
    ) -> Self {
        let value_len = value.map_or(0, Encoded::len);
        let value_cap = value_len.next_multiple_of(8);
        debug_assert_eq!(words.len() * 8, record_size(key.len(), value_cap));
        words[1].store(
            key.len() as u64 | (value_cap as u64) << 32,
            Ordering::Relaxed,
        );
        words[2].store(
            ValueState::new(value_len, value.is_none()).0,
            Ordering::Relaxed,
        );
        let key_words = key.words();
        for (w, k) in words[HEADER_WORDS..].iter().zip(key_words) {
            w.store(*k, Ordering::Relaxed);
        }
        if let Some(v) = value {
            for (w, x) in words[HEADER_WORDS + key_words.len()..]
                .iter()
                .zip(v.words())
            {
                w.store(*x, Ordering::Relaxed);
            }
        }
        // Header last: a non-zero word 0 is what makes the space a record.
        words[0].store(info.0, Ordering::Release);
        RecordRef {
            words,
            key_len: key.len(),
            value_cap,
        }
    }

    /// Writes a new record as [`RecordRef::write_new`] does, with a value capacity of `cap`
    /// bytes (a multiple of 8, at least the value's length rounded up plus `trailer`'s words)
    /// whose last words hold `trailer` (the read cache's copies; see `hlog::read_cache`).
    #[must_use]
    pub fn write_with_capacity(
        words: &'a [AtomicU64],
        info: RecordInfo,
        key: &Encoded,
        value: &Encoded,
        cap: usize,
        trailer: &[u64],
    ) -> Self {
        debug_assert!(cap % 8 == 0 && cap >= value.len().next_multiple_of(8) + trailer.len() * 8);
        debug_assert_eq!(words.len() * 8, record_size(key.len(), cap));
        words[1].store(key.len() as u64 | (cap as u64) << 32, Ordering::Relaxed);
        words[2].store(ValueState::new(value.len(), false).0, Ordering::Relaxed);
        let key_words = key.words();
        for (w, k) in words[HEADER_WORDS..].iter().zip(key_words) {
            w.store(*k, Ordering::Relaxed);
        }
        for (w, x) in words[HEADER_WORDS + key_words.len()..]
            .iter()
            .zip(value.words())
        {
            w.store(*x, Ordering::Relaxed);
        }
        for (w, x) in words[words.len() - trailer.len()..].iter().zip(trailer) {
            w.store(*x, Ordering::Relaxed);
        }
        // Header last, as in `write_new`.
        words[0].store(info.0, Ordering::Release);
        RecordRef {
            words,
            key_len: key.len(),
            value_cap: cap,
        }
    }

    /// The record's words.
    #[must_use]
    pub fn words(&self) -> &'a [AtomicU64] {
        self.words
    }

    /// The value capacity in bytes.
    #[must_use]
    pub fn value_capacity(&self) -> usize {
        self.value_cap
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.words.len() * 8
    }

    /// Word 0.
    #[must_use]
    #[inline]
    pub fn info(&self) -> RecordInfo {
        RecordInfo(self.words[0].load(Ordering::Acquire))
    }

    /// Replaces the sequence field with the record's checksum (the page flush, once the record
    /// can no longer change; see the module docs).
    pub fn stamp_checksum(&self) {
        let sum = record_checksum(self.words.len(), |i| self.words[i].load(Ordering::Acquire));
        let state = self.words[2].load(Ordering::Acquire);
        self.words[2].store(ValueState::with_checksum(state, sum), Ordering::Release);
    }

    /// Points the record at `prev` (creator only, before any chain leads to it and before it
    /// leaves the mutable region: R2Kv's cold appends learn their predecessor inside the CAS
    /// that publishes them).
    pub fn set_prev(&self, prev: Address) {
        let flags = self.words[0].load(Ordering::Acquire) & !Address::MASK;
        self.words[0].store(flags | prev.raw(), Ordering::Release);
    }

    /// Marks an abandoned record (creator only, before it leaves the mutable region).
    pub fn set_invalid(&self) {
        self.words[0].fetch_or(RecordInfo::INVALID, Ordering::Release);
    }

    /// Word 2.
    #[must_use]
    #[inline]
    pub fn state(&self) -> ValueState {
        ValueState(self.words[2].load(Ordering::Acquire))
    }

    /// A copy of the key's bytes (keys never change once written).
    #[must_use]
    pub fn key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.key_len.next_multiple_of(8));
        self.key_bytes_into(&mut out);
        out
    }

    /// The key's bytes into `out` (cleared first): [`RecordRef::key_bytes`] into a buffer the
    /// caller reuses, for walks over many records.
    pub fn key_bytes_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend(
            self.key_words()
                .iter()
                .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()),
        );
        out.truncate(self.key_len);
    }

    /// The key's words (its encoding, zero-padded to whole words; never changed once the
    /// record is published).
    #[inline]
    pub(crate) fn key_words(&self) -> &'a [AtomicU64] {
        &self.words[HEADER_WORDS..HEADER_WORDS + self.key_len.div_ceil(8)]
    }

    #[inline]
    fn value_words(&self) -> &'a [AtomicU64] {
        &self.words[HEADER_WORDS + self.key_len.div_ceil(8)..]
    }

    /// Length of the key's encoding in bytes.
    #[must_use]
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// Whether the record's key is `key` (compared in encoded form).
    #[must_use]
    #[inline]
    pub fn key_is(&self, key: &Encoded) -> bool {
        if key.len() <= 8 {
            // The common short key: one word (the lengths are compared first, so the record
            // has that word).
            return self.key_len == key.len()
                && (key.is_empty()
                    || self.words[HEADER_WORDS].load(Ordering::Relaxed) == key.first_word());
        }
        self.key_len == key.len()
            && self
                .key_words()
                .iter()
                .zip(key.words())
                .all(|(w, k)| w.load(Ordering::Relaxed) == *k)
    }

    /// Whether the key is the one-word encoding `word` of `len` bytes (1 to 8).
    #[must_use]
    #[inline(always)]
    pub fn key_is_word(&self, word: u64, len: usize) -> bool {
        self.key_len == len && self.words[HEADER_WORDS].load(Ordering::Relaxed) == word
    }

    /// As [`RecordRef::read_value`], giving up (`None`) after `attempts` copies that a writer
    /// disturbed.
    #[inline(always)]
    pub fn try_read_value(&self, out: &mut ValueBuf, attempts: usize) -> Option<ValueRead> {
        for _ in 0..attempts {
            let s1 = self.state();
            if !s1.locked() {
                let len = s1.len().min(self.value_cap);
                out.fill_from(&self.value_words()[..len.div_ceil(8)], len);
                fence(Ordering::Acquire);
                if s1 == ValueState(self.words[2].load(Ordering::Relaxed)) {
                    return Some(if s1.tombstone() {
                        ValueRead::Tombstone
                    } else {
                        ValueRead::Live
                    });
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Copies the value into `out` consistently (seqlock read: retries while a writer is inside
    /// and if one came and went during the copy). A lock the calling thread holds does not
    /// stop it: that writer is suspended in its update's function, before any write (module
    /// docs, *Record locks*), so the value is the committed one and cannot change meanwhile.
    ///
    /// # Errors
    /// [`Cycle`] if the calling thread holds a record lock (it reads from inside an update's
    /// function) and waiting for this record's holder would close a cycle of waits between
    /// threads ([`crate::core::lock_cycle`]).
    #[inline]
    pub fn read_value(&self, out: &mut ValueBuf) -> Result<ValueRead, Cycle> {
        let mut wait = None;
        loop {
            let s1 = self.state();
            if s1.locked() && !LockOwner::current().is_some_and(|me| me.holds(s1)) {
                wait.get_or_insert_with(Wait::default)
                    .round(LockOwner::slot_of(s1))?;
                continue;
            }
            let len = s1.len().min(self.value_cap);
            out.fill_from(&self.value_words()[..len.div_ceil(8)], len);
            fence(Ordering::Acquire);
            let s2 = ValueState(self.words[2].load(Ordering::Relaxed));
            if s1 == s2 {
                return Ok(if s1.tombstone() {
                    ValueRead::Tombstone
                } else {
                    ValueRead::Live
                });
            }
        }
    }

    /// Takes the record's write lock for `owner` (waiting while another thread holds it).
    ///
    /// # Errors
    /// [`LockRefused::Sealed`] if a newer copy exists; [`LockRefused::HeldHere`] if the calling
    /// thread itself holds the lock (an update's function updating its own key).
    #[inline(always)]
    pub fn lock(&self, owner: LockOwner) -> Result<RecordLock<'a>, LockRefused> {
        lock_state(&self.words[2], owner).map(|state| RecordLock {
            rec: *self,
            state,
            new_state: None,
            _counted: Counted::new(),
        })
    }
}

/// The thread that takes a record lock, as it is written into the state word while locked (see
/// the module docs, *Record locks*): the thread's epoch slot plus one in the sequence field,
/// and the lock bit. Lockers get it from their protection (`EpochGuard::lock_owner`,
/// `ShortGuard::lock_owner`), whose slot is the calling thread's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOwner(u64);

// A slot plus one fits the sequence field, and 0 there never names an owner.
const _: () = assert!((crate::core::light_epoch::MAX_THREADS as u64) < (1 << 29) - 1);

impl LockOwner {
    /// The owner tag of the thread in epoch slot `slot` (the epoch table keeps one per slot:
    /// `EpochGuard::lock_owner`, `ShortGuard::lock_owner`).
    #[inline(always)]
    #[must_use]
    pub(crate) const fn of_slot(slot: usize) -> LockOwner {
        LockOwner((((slot as u64) + 1) << 32 & ValueState::SEQ_MASK) | ValueState::LOCKED)
    }

    /// The calling thread, if it holds an epoch slot (one thread-local load). Only waiters
    /// ask, and only once they found a record locked.
    #[cold]
    #[must_use]
    pub fn current() -> Option<LockOwner> {
        crate::core::light_epoch::cached_slot().map(LockOwner::of_slot)
    }

    /// The epoch slot of the thread holding locked state `s`.
    #[inline]
    fn slot_of(s: ValueState) -> usize {
        (((s.0 & ValueState::SEQ_MASK) >> 32) as usize).wrapping_sub(1)
    }

    /// Whether `s` is locked by this owner.
    #[inline(always)]
    const fn holds(self, s: ValueState) -> bool {
        s.0 & (ValueState::SEQ_MASK | ValueState::LOCKED) == self.0
    }
}

/// Why a record lock was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRefused {
    /// The record is sealed: a newer copy exists at the tail (retry from the index).
    Sealed,
    /// The calling thread holds the lock already: an operation nested in the function of the
    /// update that holds it. Waiting would never end.
    HeldHere,
    /// Waiting would close a cycle of threads each waiting for the next one's lock, and this
    /// thread is the one that gives up ([`crate::core::lock_cycle`]).
    Cycle,
}

/// Sets the lock bit of state word `w` with `owner`'s tag in the sequence field (waiting while
/// another thread holds it) and returns the state it replaced. The uncontended path is one load
/// and one CAS, as without owners. Only a waiter looks at the tag.
#[inline(always)]
fn lock_state(w: &AtomicU64, owner: LockOwner) -> Result<ValueState, LockRefused> {
    let mut wait = None;
    loop {
        let s = ValueState(w.load(Ordering::Acquire));
        if s.sealed() {
            return Err(LockRefused::Sealed);
        }
        if s.locked() {
            if owner.holds(s) {
                return Err(LockRefused::HeldHere);
            }
            wait.get_or_insert_with(Wait::default)
                .round(LockOwner::slot_of(s))
                .map_err(|Cycle| LockRefused::Cycle)?;
            continue;
        }
        if w.compare_exchange_weak(
            s.0,
            (s.0 & !ValueState::SEQ_MASK) | owner.0,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_ok()
        {
            // Seqlock writer side: the lock bit is visible before any value store.
            fence(Ordering::Release);
            return Ok(s);
        }
    }
}

/// Words of a record whose key is 1 to 8 bytes and whose value capacity is one word: the
/// records the one-word fast paths (`ops::fast`) read and update.
pub const WORD_RECORD_WORDS: usize = HEADER_WORDS + 2;

/// A record with a one-word key and a one-word value capacity, seen through its exact words.
#[derive(Clone, Copy)]
pub struct WordRecord<'a> {
    words: &'a [AtomicU64; WORD_RECORD_WORDS],
}

impl<'a> WordRecord<'a> {
    /// The record in `words` if its word 1 says a key of `key_len` bytes (1 to 8) and a value
    /// capacity of 8 bytes; `None` for any other shape.
    #[must_use]
    #[inline(always)]
    pub fn of(words: &'a [AtomicU64; WORD_RECORD_WORDS], key_len: usize) -> Option<Self> {
        debug_assert!((1..=8).contains(&key_len));
        (words[1].load(Ordering::Relaxed) == key_len as u64 | 8 << 32)
            .then_some(WordRecord { words })
    }

    /// Whether the key's (zero-padded) word is `key`.
    #[must_use]
    #[inline(always)]
    pub fn key_is(&self, key: u64) -> bool {
        self.words[HEADER_WORDS].load(Ordering::Relaxed) == key
    }

    /// One optimistic copy of the value word and the state it belongs to; `None` if a writer was
    /// inside or came and went during the copy (the seqlock of [`RecordRef::read_value`]).
    #[must_use]
    #[inline(always)]
    pub fn read(&self) -> Option<(u64, ValueState)> {
        let s1 = self.words[2].load(Ordering::Acquire);
        let v = self.words[HEADER_WORDS + 1].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let s2 = self.words[2].load(Ordering::Relaxed);
        (s1 == s2 && s1 & ValueState::LOCKED == 0).then_some((v, ValueState(s1)))
    }

    /// Takes the record's write lock for `owner` (as [`RecordRef::lock`]); `None` if the
    /// record is sealed or the calling thread holds the lock (the general path then decides).
    #[must_use]
    #[inline(always)]
    pub fn lock(&self, owner: LockOwner) -> Option<WordRecordLock<'a>> {
        let state = lock_state(&self.words[2], owner).ok()?;
        Some(WordRecordLock {
            words: self.words,
            state,
            unlock_to: state.0,
            _counted: Counted::new(),
        })
    }
}

/// The write lock of a [`WordRecord`]: [`RecordLock`] for a one-word value, holding only what
/// the fast paths need. Unlocks on drop, to the state it was taken in unless a value was written.
pub struct WordRecordLock<'a> {
    words: &'a [AtomicU64; WORD_RECORD_WORDS],
    state: ValueState,
    /// The state word to store (without the lock bit) on unlock.
    unlock_to: u64,
    _counted: Counted,
}

impl WordRecordLock<'_> {
    /// The state when the lock was taken.
    #[must_use]
    #[inline(always)]
    pub fn state(&self) -> ValueState {
        self.state
    }

    /// The value word.
    #[must_use]
    #[inline(always)]
    pub fn value_word(&self) -> u64 {
        self.words[HEADER_WORDS + 1].load(Ordering::Relaxed)
    }

    /// Replaces the value with the `len`-byte (1 to 8) encoding in `word`.
    #[inline(always)]
    pub fn write_word(&mut self, word: u64, len: usize) {
        debug_assert!((1..=8).contains(&len));
        self.words[HEADER_WORDS + 1].store(word, Ordering::Relaxed);
        self.unlock_to = self.state.after_write(len, false, false).0;
    }
}

impl Drop for WordRecordLock<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.words[2].store(self.unlock_to & !ValueState::LOCKED, Ordering::Release);
    }
}

/// A lock's entry in the calling thread's count of the record locks it holds
/// ([`crate::core::lock_cycle`], invariant 1): counted when made, uncounted when dropped (after
/// the lock's own `Drop` released the word). Not `Send`, so the drop runs on the counting thread.
struct Counted(std::marker::PhantomData<*const ()>);

impl Counted {
    #[inline(always)]
    fn new() -> Self {
        lock_cycle::count_taken();
        Counted(std::marker::PhantomData)
    }
}

impl Drop for Counted {
    #[inline(always)]
    fn drop(&mut self) {
        lock_cycle::count_released();
    }
}

/// The write lock of one record, for an in-place update. Unlocks on drop.
pub struct RecordLock<'a> {
    rec: RecordRef<'a>,
    state: ValueState,
    new_state: Option<ValueState>,
    _counted: Counted,
}

impl RecordLock<'_> {
    /// The state when the lock was taken.
    #[must_use]
    pub fn state(&self) -> ValueState {
        self.state
    }

    /// Copies the current value (no other writer can be inside).
    #[inline]
    pub fn read_value(&self, out: &mut ValueBuf) {
        let len = self.state.len().min(self.rec.value_cap);
        out.fill_from(&self.rec.value_words()[..len.div_ceil(8)], len);
    }

    /// Whether a value of `len` bytes fits in place.
    #[must_use]
    #[inline]
    pub fn fits(&self, len: usize) -> bool {
        len <= self.rec.value_cap
    }

    /// Replaces the value in place; the caller checked [`RecordLock::fits`].
    #[inline]
    pub fn write_value(&mut self, v: &Encoded) {
        debug_assert!(self.fits(v.len()));
        if let [x] = v.words() {
            self.rec.value_words()[0].store(*x, Ordering::Relaxed);
        } else {
            for (w, x) in self.rec.value_words().iter().zip(v.words()) {
                w.store(*x, Ordering::Relaxed);
            }
        }
        self.new_state = Some(self.state.after_write(v.len(), false, false));
    }

    /// The value's length in bytes.
    #[must_use]
    pub fn value_len(&self) -> usize {
        self.state.len()
    }

    /// Copies `out.len()` bytes of the value from byte `at` (no other writer can be inside);
    /// the caller keeps `at + out.len()` within [`RecordLock::value_len`].
    pub fn read_bytes_at(&self, at: usize, out: &mut [u8]) {
        let words = self.rec.value_words();
        for (i, b) in out.iter_mut().enumerate() {
            let p = at + i;
            *b = words[p / 8].load(Ordering::Relaxed).to_ne_bytes()[p % 8];
        }
    }

    /// Overwrites `bytes.len()` bytes of the value from byte `at`, its length unchanged (a
    /// patch: only the words the bytes fall in are stored); the caller keeps `at + bytes.len()`
    /// within [`RecordLock::value_len`]. Readers see the whole patch or none of it (the seqlock).
    pub fn write_bytes_at(&mut self, at: usize, bytes: &[u8]) {
        debug_assert!(at + bytes.len() <= self.state.len());
        let Some(last) = (at + bytes.len()).checked_sub(1) else {
            return;
        };
        let words = self.rec.value_words();
        for (w, word) in words.iter().enumerate().take(last / 8 + 1).skip(at / 8) {
            let mut b = word.load(Ordering::Relaxed).to_ne_bytes();
            for (k, byte) in b.iter_mut().enumerate() {
                if let Some(&new) = (w * 8 + k).checked_sub(at).and_then(|i| bytes.get(i)) {
                    *byte = new;
                }
            }
            word.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        self.new_state = Some(self.state.after_write(self.state.len(), false, false));
    }

    /// Marks the record deleted in place.
    pub fn write_tombstone(&mut self) {
        self.new_state = Some(self.state.after_write(0, true, false));
    }

    /// Seals the record: a newer copy has been published at the tail.
    pub fn seal(&mut self) {
        let s = self.new_state.unwrap_or(self.state);
        self.new_state = Some(s.after_write(s.len(), s.tombstone(), true));
    }
}

impl Drop for RecordLock<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        let s = self.new_state.unwrap_or(self.state);
        self.rec.words[2].store(s.0 & !ValueState::LOCKED, Ordering::Release);
    }
}

/// Scratch space for a value copied out of the log: inline up to 256 bytes (so reading a value
/// of that size allocates nothing).
#[derive(Default)]
pub struct ValueBuf {
    inline: [u64; 32],
    heap: Vec<u64>,
    len: usize,
}

impl ValueBuf {
    #[inline]
    fn fill_from(&mut self, words: &[AtomicU64], len: usize) {
        if let [w] = words {
            self.inline[0] = w.load(Ordering::Relaxed);
            self.len = len;
            return;
        }
        let dst: &mut [u64] = if words.len() <= self.inline.len() {
            &mut self.inline[..words.len()]
        } else {
            self.heap.resize(words.len(), 0);
            &mut self.heap[..]
        };
        for (d, w) in dst.iter_mut().zip(words) {
            *d = w.load(Ordering::Relaxed);
        }
        self.len = len;
    }

    /// Fills from plain bytes (a record read from disk).
    pub fn fill_from_bytes(&mut self, bytes: &[u8]) {
        let n = bytes.len().div_ceil(8);
        let dst: &mut [u64] = if n <= self.inline.len() {
            &mut self.inline[..n]
        } else {
            self.heap.resize(n, 0);
            &mut self.heap[..]
        };
        bytemuck::cast_slice_mut::<u64, u8>(dst)[..bytes.len()].copy_from_slice(bytes);
        self.len = bytes.len();
    }

    /// The copied bytes.
    #[must_use]
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        let n = self.len.div_ceil(8);
        let words = if n <= self.inline.len() {
            &self.inline[..n]
        } else {
            &self.heap[..n]
        };
        &bytemuck::cast_slice::<u64, u8>(words)[..self.len]
    }
}

/// The offset of the first record in log page `page`: the log starts at
/// [`Address::FIRST_VALID`], inside page 0.
#[must_use]
pub const fn first_record_offset(page: u64) -> usize {
    if page == 0 {
        Address::FIRST_VALID.raw() as usize
    } else {
        0
    }
}

/// Replaces word 2 of every record in a page image (from byte `first`, up to the first unused
/// or unparsable space) with `state(record's words)`.
fn rewrite_states(
    page: &mut [u8],
    first: usize,
    state: impl Fn(usize, &dyn Fn(usize) -> u64) -> u64,
) {
    let mut off = first;
    while off + HEADER_BYTES <= page.len() {
        let rec = &page[off..];
        if rec[..8] == [0; 8] {
            return;
        }
        let size = DiskRecord::size_from_prefix(rec).unwrap_or(0);
        if size < HEADER_BYTES || off + size > page.len() {
            return;
        }
        let w = |i: usize| u64::from_le_bytes(rec[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let new = state(size / 8, &w);
        page[off + 16..off + 24].copy_from_slice(&new.to_le_bytes());
        off += size;
    }
}

/// Stamps every record of a page image (from byte `first`) with its checksum: a snapshot
/// checkpoint's copy of an in-memory page, before it is written (see the module docs).
pub fn stamp_checksums_in(page: &mut [u8], first: usize) {
    rewrite_states(page, first, |words, w| {
        ValueState::with_checksum(w(2), record_checksum(words, w))
    });
}

/// Marks the record at byte `off` of a page image invalid and re-stamps its checksum, which
/// covers the invalid bit (recovery, for records of a version that missed the checkpoint). A
/// record that is already invalid is left as it is.
///
/// # Errors
/// A description of the problem if no whole record starts at `off`.
pub fn invalidate_in(page: &mut [u8], off: usize) -> Result<(), &'static str> {
    let rec = page.get(off..).ok_or("record offset past the page")?;
    let size = match DiskRecord::parse(rec)? {
        Some(r) if r.info().invalid() => return Ok(()),
        Some(r) => r.size(),
        None => return Err("no record at this offset"),
    };
    let rec = &mut page[off..off + size];
    let w0 = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default()) | RecordInfo::INVALID;
    rec[..8].copy_from_slice(&w0.to_le_bytes());
    let w = |i: usize| u64::from_le_bytes(rec[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let state = ValueState::with_checksum(w(2), record_checksum(size / 8, w));
    rec[16..24].copy_from_slice(&state.to_le_bytes());
    Ok(())
}

/// Clears the lock and seal bits of every record in a page image (from byte `first`) that is
/// about to become log memory again (warm recovery). A page copied while a record was locked or
/// being superseded keeps those bits on disk; in memory they would make readers and writers wait
/// or retry forever, and after recovery no copy or lock holder exists.
pub fn clear_transient_bits(page: &mut [u8], first: usize) {
    rewrite_states(page, first, |_, w| {
        w(2) & !(ValueState::SEALED | ValueState::LOCKED)
    });
}

/// A record read from disk: a plain byte copy, parsed with the same layout.
pub struct DiskRecord<'a> {
    bytes: &'a [u8],
    key_len: usize,
}

impl<'a> DiskRecord<'a> {
    /// Parses the record at the start of `bytes`; `Ok(None)` for unused page space.
    ///
    /// # Errors
    /// A description of the corruption (lengths past the buffer).
    pub fn parse(bytes: &'a [u8]) -> Result<Option<Self>, &'static str> {
        if bytes.len() < HEADER_BYTES {
            return Err("record header cut short");
        }
        let w =
            |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        if w(0) == 0 {
            return Ok(None);
        }
        let lens = w(1);
        let key_len = (lens & 0xffff_ffff) as usize;
        let value_cap = (lens >> 32) as usize;
        let size = record_size(key_len, value_cap);
        if size > bytes.len() {
            return Err("record runs past the bytes read");
        }
        let state = ValueState(w(2));
        if state.len() > value_cap {
            return Err("value length exceeds its capacity");
        }
        if record_checksum(size / 8, w) != (state.0 & ValueState::SEQ_MASK) >> 32 {
            return Err("record checksum mismatch");
        }
        Ok(Some(DiskRecord {
            bytes: &bytes[..size],
            key_len,
        }))
    }

    /// Size the record needs, from its first 16 bytes (to know how much to read).
    #[must_use]
    pub fn size_from_prefix(prefix: &[u8]) -> Option<usize> {
        let lens = u64::from_le_bytes(prefix.get(8..16)?.try_into().ok()?);
        Some(record_size(
            (lens & 0xffff_ffff) as usize,
            (lens >> 32) as usize,
        ))
    }

    /// Word 0.
    #[must_use]
    pub fn info(&self) -> RecordInfo {
        RecordInfo(u64::from_le_bytes(
            self.bytes[0..8].try_into().unwrap_or_default(),
        ))
    }

    /// Word 2.
    #[must_use]
    pub fn state(&self) -> ValueState {
        ValueState(u64::from_le_bytes(
            self.bytes[16..24].try_into().unwrap_or_default(),
        ))
    }

    /// The key bytes.
    #[must_use]
    pub fn key(&self) -> &'a [u8] {
        &self.bytes[HEADER_BYTES..HEADER_BYTES + self.key_len]
    }

    /// The value bytes (empty for a tombstone).
    #[must_use]
    pub fn value(&self) -> &'a [u8] {
        let start = HEADER_BYTES + self.key_len.next_multiple_of(8);
        &self.bytes[start..start + self.state().len()]
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const OWNER: LockOwner = LockOwner::of_slot(3);

    fn page(words: usize) -> Vec<AtomicU64> {
        (0..words).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn write_parse_update_and_disk_view_agree() {
        let mem = page(64);
        let key = Encoded::new(&42u64).unwrap();
        let val = Encoded::new(&"hello world".to_string()).unwrap();
        let size = record_size(key.len(), val.len().next_multiple_of(8)) / 8;
        let info = RecordInfo::new(Address::new(4096), Version::FIRST);
        let r = RecordRef::write_new(&mem[..size], info, &key, Some(&val));
        let p = RecordRef::parse(&mem).unwrap().unwrap();
        assert!(p.key_is(&key));
        assert!(!p.key_is(&Encoded::new(&43u64).unwrap()));
        assert_eq!(p.info().prev(), Address::new(4096));
        assert_eq!(p.info().version(), Version::FIRST);
        let mut buf = ValueBuf::default();
        assert!(matches!(p.read_value(&mut buf), Ok(ValueRead::Live)));
        assert_eq!(buf.bytes(), val.bytes());

        let mut l = r.lock(OWNER).unwrap();
        let short = Encoded::new(&"bye".to_string()).unwrap();
        assert!(l.fits(short.len()));
        l.write_value(&short);
        drop(l);
        assert!(matches!(p.read_value(&mut buf), Ok(ValueRead::Live)));
        assert_eq!(buf.bytes(), short.bytes());

        let mut bytes = to_bytes(&mem);
        stamp_checksums_in(&mut bytes, 0);
        let d = DiskRecord::parse(&bytes).unwrap().unwrap();
        assert_eq!(d.key(), key.bytes());
        assert_eq!(d.value(), short.bytes());
        assert_eq!(d.size(), p.size());

        let mut l = r.lock(OWNER).unwrap();
        l.write_tombstone();
        l.seal();
        drop(l);
        assert!(matches!(p.read_value(&mut buf), Ok(ValueRead::Tombstone)));
        assert_eq!(
            r.lock(OWNER).err(),
            Some(LockRefused::Sealed),
            "sealed record must refuse writers"
        );
    }

    #[test]
    fn a_patch_changes_only_its_bytes_and_moves_the_sequence() {
        let mem = page(64);
        let key = Encoded::new(&42u64).unwrap();
        let val = Encoded::from_bytes(&(0u8..24).collect::<Vec<_>>());
        let size = record_size(key.len(), val.len()) / 8;
        let info = RecordInfo::new(Address::new(4096), Version::FIRST);
        let r = RecordRef::write_new(&mem[..size], info, &key, Some(&val));
        let before = r.state();
        let mut l = r.lock(OWNER).unwrap();
        assert_eq!(l.value_len(), 24);
        let mut got = [0u8; 6];
        l.read_bytes_at(5, &mut got);
        assert_eq!(got, [5, 6, 7, 8, 9, 10]);
        // Across a word boundary (bytes 5..11 span words 0 and 1).
        l.write_bytes_at(5, &[0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
        drop(l);
        assert_ne!(r.state(), before, "a reader's seqlock must see the patch");
        assert_eq!(r.state().len(), 24);
        let mut buf = ValueBuf::default();
        assert!(matches!(r.read_value(&mut buf), Ok(ValueRead::Live)));
        let mut expect: Vec<u8> = (0u8..24).collect();
        expect[5..11].copy_from_slice(&[0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
        assert_eq!(buf.bytes(), &expect[..]);
    }

    #[test]
    fn a_lock_names_its_owner_until_it_is_released() {
        let mem = page(16);
        let key = Encoded::new(&7u64).unwrap();
        let val = Encoded::new(&"old".to_string()).unwrap();
        let size = record_size(key.len(), val.len().next_multiple_of(8)) / 8;
        let info = RecordInfo::new(Address::new(4096), Version::FIRST);
        let r = RecordRef::write_new(&mem[..size], info, &key, Some(&val));
        let before = r.state();
        let slot = crate::core::light_epoch::thread_slot().unwrap();
        let me = LockOwner::of_slot(slot);
        let word = WordRecord::of((&mem[..WORD_RECORD_WORDS]).try_into().unwrap(), key.len())
            .expect("a one-word record");
        let mut l = r.lock(me).unwrap();
        assert!(r.state().locked());
        assert!(me.holds(r.state()));
        assert!(!LockOwner::of_slot(slot + 1).holds(r.state()));
        // The holder's own thread: refused at once (no wait), and a read sees the committed
        // value through the lock.
        assert_eq!(r.lock(me).err(), Some(LockRefused::HeldHere));
        assert!(word.lock(me).is_none());
        let mut buf = ValueBuf::default();
        assert!(matches!(r.read_value(&mut buf), Ok(ValueRead::Live)));
        assert_eq!(buf.bytes(), val.bytes());
        // Released unchanged: the word is exactly what it was (the tag is gone).
        drop(l);
        assert_eq!(r.state(), before);
        // Released after a write: the next sequence number, no tag.
        l = r.lock(me).unwrap();
        let new = Encoded::new(&"new".to_string()).unwrap();
        l.write_value(&new);
        drop(l);
        assert_eq!(r.state(), before.after_write(new.len(), false, false));
        assert!(matches!(r.read_value(&mut buf), Ok(ValueRead::Live)));
        assert_eq!(buf.bytes(), new.bytes());
    }

    fn to_bytes(mem: &[AtomicU64]) -> Vec<u8> {
        mem.iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .collect()
    }

    #[test]
    fn stamped_records_verify_and_any_flipped_bit_is_refused() {
        let mem = page(16);
        let key = Encoded::new(&"key".to_string()).unwrap();
        let val = Encoded::new(&"a value of some length".to_string()).unwrap();
        let size = record_size(key.len(), val.len().next_multiple_of(8)) / 8;
        let info = RecordInfo::new(Address::new(4096), Version::FIRST);
        let r = RecordRef::write_new(&mem[..size], info, &key, Some(&val));
        // An in-place write moves the sequence; stamping replaces it.
        r.lock(OWNER).unwrap().write_value(&val);
        assert!(
            DiskRecord::parse(&to_bytes(&mem)).is_err(),
            "unstamped record accepted"
        );
        let mut image = to_bytes(&mem);
        stamp_checksums_in(&mut image, 0);
        r.stamp_checksum();
        let stamped = to_bytes(&mem);
        assert_eq!(image, stamped, "stamping a copy and stamping memory differ");
        let d = DiskRecord::parse(&stamped).unwrap().unwrap();
        assert_eq!((d.key(), d.value()), (key.bytes(), val.bytes()));
        // Readers in memory still see the same value.
        let mut buf = ValueBuf::default();
        assert!(matches!(r.read_value(&mut buf), Ok(ValueRead::Live)));
        assert_eq!(buf.bytes(), val.bytes());
        // Stamping again (a page flushed twice after recovery) gives the same bytes.
        r.stamp_checksum();
        assert_eq!(to_bytes(&mem), stamped);

        let checked = |b: &[u8]| DiskRecord::parse(b).map(|r| r.is_some());
        for bit in 0..size * 64 {
            let mut b = stamped.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let word = bit / 64;
            let in_word = bit % 64;
            let may_change = word == 2 && (in_word == 62 || in_word == 63);
            if may_change {
                // Sealed and locked bits may change after the flush; no reader of the device
                // looks at them, and recovery clears them before a page is log memory again.
                assert_eq!(checked(&b), Ok(true), "bit {bit}");
            } else if word == 0 && b[..8] == [0; 8] {
                continue;
            } else {
                assert!(checked(&b).is_err(), "flipped bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn invalidating_a_stamped_record_keeps_it_verifiable() {
        let mem = page(16);
        let key = Encoded::new(&7u64).unwrap();
        let val = Encoded::new(&"v".to_string()).unwrap();
        let size = record_size(key.len(), val.len().next_multiple_of(8)) / 8;
        let info = RecordInfo::new(Address::new(4096), Version::FIRST);
        let _ = RecordRef::write_new(&mem[..size], info, &key, Some(&val));
        let mut image = to_bytes(&mem);
        stamp_checksums_in(&mut image, 0);
        let stamped = image.clone();
        invalidate_in(&mut image, 0).unwrap();
        let d = DiskRecord::parse(&image).unwrap().unwrap();
        assert!(d.info().invalid());
        assert_eq!(d.key(), key.bytes());
        // Idempotent, and the bit alone (without the re-stamp) is refused.
        let once = image.clone();
        invalidate_in(&mut image, 0).unwrap();
        assert_eq!(image, once);
        let mut flipped = stamped;
        flipped[7] ^= 0x20; // bit 61 of word 0
        assert!(DiskRecord::parse(&flipped).is_err());
        assert!(invalidate_in(&mut [0u8; 64], 0).is_err());
    }

    #[test]
    fn corrupt_lengths_are_refused() {
        let mut bytes = vec![0u8; 64];
        bytes[0] = 1;
        bytes[8..16].copy_from_slice(&(1000u64).to_le_bytes());
        assert!(DiskRecord::parse(&bytes).is_err());
        assert!(DiskRecord::parse(&bytes[..10]).is_err());
        assert!(DiskRecord::parse(&[0u8; 64]).unwrap().is_none());
    }
}
