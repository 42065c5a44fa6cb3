//! One-word fast paths: read, upsert and RMW of a key whose encoding fits in one 8-byte word
//! (integer keys), when the key's newest record is in memory. For integer values the whole
//! operation is a few words ([`Engine::read_word`], [`Engine::lock_word`]); for values of any
//! other shape (byte arrays, strings, serde structs) the same checks lead to a seqlock copy of
//! the value ([`Engine::read_word_key`]) or an in-place write under the record lock when the
//! new value fits its capacity ([`Engine::lock_word_key`]), skipping the general path's key
//! encoding, retry loop and chain walk.
//!
//! # Why they exist
//! An in-memory operation on a large store costs two dependent cache misses (bucket, then
//! record). One operation at a time, a thread only goes faster than that chain if the CPU
//! overlaps consecutive operations, and it can only do so when an operation is short enough that
//! the next operation's bucket load enters the out-of-order window while this one still waits
//! (`rskv-bench --probe-memory` shows the overlap fading with every few dozen instructions
//! added; see BENCHMARKS.md). The general path handles every encoding, hash chains, the disk,
//! retries and the checkpoint rules, and is several times longer.
//!
//! # Invariants
//! 1. A fast path finishes an operation only in a state where the general path would finish it
//!    the same way. In every other state it returns [`Fast::Slow`] *before changing anything*,
//!    and the caller runs the general path from the start. The general path therefore stays the
//!    definition of every operation; the fast paths need no retry, disk or checkpoint logic.
//! 2. A fast read finishes when the index entry's record is in memory (at or above head), has
//!    the one-word shape ([`WordRecord`]), holds the key, and one seqlock copy of its value was
//!    consistent: exactly what the general read returns for that chain head.
//! 3. A fast update also needs the store outside any checkpoint that constrains updates (the
//!    phases whose rule is [`Rule::Free`], acknowledged as the general path does), the record
//!    in the mutable region (at or above read-only), live (not a tombstone), unsealed, and its
//!    lock. It then writes the new word in place and unlocks with the next sequence number:
//!    the general path's in-place update. An RMW whose new value does not fit in one word
//!    unlocks with the state unchanged (a reader that raced sees the same sequence and the same
//!    value) and goes slow; its function then runs again there (RMW functions may run more than
//!    once).
//! 4. Protection is [`LightEpoch::protect_short`](crate::core::light_epoch::LightEpoch::protect_short):
//!    the general handshake with less bookkeeping; it nests like any protection (an RMW
//!    function may call the store for other keys, as in the general path).
//! 5. A fast update locks with its thread's tag (`ShortGuard::lock_owner`: a plain load from the
//!    epoch-table line `protect_short` just wrote), as the general path does. A call nested in its
//!    function never runs a fast path (`protect_short` refuses at depth > 0), so a nested update of
//!    the *same* key runs the general path, which sees the lock is its own thread's and fails with
//!    `Error::Busy` instead of waiting forever; a nested read reads through it (`core::record`,
//!    *Record locks*).
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::codec;
use crate::core::codec::Encoded;
use crate::core::light_epoch::ShortGuard;
use crate::core::record::{
    RecordLock, ValueBuf, ValueRead, WordRecord, WordRecordLock, WORD_RECORD_WORDS,
};
use crate::device::Disk;
use crate::index::hash_bucket::Target;
use crate::index::key_hash::hash_word;
use crate::index::{HashIndex, KeyHash};
#[cfg(doc)]
use crate::ops::cpr::Rule;
use crate::ops::Engine;

/// Seqlock copies a fast read tries before going slow.
const READ_ATTEMPTS: usize = 4;

/// An encoding of 1 to 8 bytes, zero-padded into one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word {
    /// The bytes, little-endian, zero above `len`.
    pub word: u64,
    /// Length in bytes (1 to 8).
    pub len: usize,
}

impl Word {
    /// `Some` when `len` is 1 to 8.
    #[inline(always)]
    pub fn new(word: u64, len: usize) -> Option<Word> {
        (1..=8).contains(&len).then_some(Word { word, len })
    }

    /// The encoding of `v` if it is a primitive integer whose encoding fits one word (without
    /// building an [`Encoded`](codec::Encoded): the bytes are the same, see [`codec::fast`]).
    #[inline(always)]
    pub fn encode<T: 'static>(v: &T) -> Option<Word> {
        let (word, len) = codec::fast::encode(v)?;
        Word::new(word, len)
    }

    /// Whether values of `T` are primitive integers (so [`Word::encode`] may succeed).
    #[inline(always)]
    pub fn is_word_type<T: 'static>() -> bool {
        codec::fast::is_int::<T>()
    }

    /// The key hash of this encoding (as [`crate::index::key_hash::hash_key`] derives it).
    #[inline(always)]
    pub fn hash(self) -> KeyHash {
        KeyHash::new(hash_word(self.word, self.len))
    }
}

/// What a fast path did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fast<T> {
    /// Finished.
    Done(T),
    /// Nothing done: run the general path.
    Slow,
}

impl<D: Disk> Engine<D> {
    /// The record at `a` if it is in memory at or above `floor`, has the one-word shape and
    /// holds `key`. Runs inside the caller's protection.
    #[inline(always)]
    fn word_record(&self, key: Word, a: Address, floor: Address) -> Option<WordRecord<'_>> {
        if a.is_invalid() || a < floor {
            return None;
        }
        let rec = WordRecord::of(self.hlog.words_at::<WORD_RECORD_WORDS>(a)?, key.len)?;
        rec.key_is(key.word).then_some(rec)
    }

    /// The log address the index entry for `hash` names: `Some(None)` without an entry; `None`
    /// to go slow (the index is switching tables, or a read-cache copy is in front of the
    /// chain: the general path reads it, and an update's newest record is then on disk).
    #[inline(always)]
    fn entry_address(&self, g: &ShortGuard<'_>, hash: KeyHash) -> Option<Option<Address>> {
        match self.index.find_entry(g, hash) {
            Ok(Some(e)) => match e.target() {
                Target::Log(a) => Some(Some(a)),
                Target::Cache(_) => None,
            },
            Ok(None) => Some(None),
            Err(_) => None,
        }
    }

    /// Reads `key`: `Done(Some(value))`, `Done(None)` (no record, or a tombstone), or `Slow`.
    #[inline(always)]
    pub(crate) fn read_word(&self, key: Word, hash: KeyHash) -> Fast<Option<Word>> {
        let Some(g) = self.epoch.protect_short() else {
            return Fast::Slow;
        };
        let a = match self.entry_address(&g, hash) {
            Some(Some(a)) => a,
            Some(None) => return Fast::Done(None),
            None => return Fast::Slow,
        };
        let Some(rec) = self.word_record(key, a, self.hlog.head()) else {
            return Fast::Slow;
        };
        // A writer inside, or one that came and went: try the copy again a few times (hot
        // keys under concurrent updates) before handing over to the general path.
        for _ in 0..READ_ATTEMPTS {
            match rec.read() {
                Some((_, state)) if state.tombstone() => return Fast::Done(None),
                Some((v, state)) => {
                    return Word::new(v, state.len()).map_or(Fast::Slow, |w| Fast::Done(Some(w)))
                }
                None => std::hint::spin_loop(),
            }
        }
        Fast::Slow
    }

    /// Reads `key` (a one-word key) whose value may have any shape into `out`: `Done(true)`
    /// (the value is in `out`), `Done(false)` (no record, or a tombstone), or `Slow`. The
    /// same states as [`Engine::read_word`] finish here (invariant 2, for any value length):
    /// the entry's record, in memory, holding the key; one consistent seqlock copy.
    #[inline(always)]
    pub(crate) fn read_word_key(&self, key: Word, hash: KeyHash, out: &mut ValueBuf) -> Fast<bool> {
        let Some(g) = self.epoch.protect_short() else {
            return Fast::Slow;
        };
        let a = match self.entry_address(&g, hash) {
            Some(Some(a)) => a,
            Some(None) => return Fast::Done(false),
            None => return Fast::Slow,
        };
        if a.is_invalid() || a < self.hlog.head() {
            return Fast::Slow;
        }
        let Ok(rec) = self.hlog.record(a) else {
            return Fast::Slow;
        };
        if !rec.key_is_word(key.word, key.len) {
            return Fast::Slow;
        }
        match rec.try_read_value(out, READ_ATTEMPTS) {
            Some(ValueRead::Live) => Fast::Done(true),
            Some(ValueRead::Tombstone) => Fast::Done(false),
            None => Fast::Slow,
        }
    }

    /// Locks `key`'s record (a one-word key, a value of any shape) for an in-place update, or
    /// `None` (go slow): the states of [`Engine::lock_word`] (invariant 3), any value capacity.
    #[inline(always)]
    pub(crate) fn lock_word_key(&self, key: Word, hash: KeyHash) -> Option<KeyLock<'_>> {
        let guard = self.epoch.protect_short()?;
        if !self.acked_rule_is_free(&guard) {
            return None;
        }
        let a = self.entry_address(&guard, hash)??;
        if a.is_invalid() || a < self.hlog.read_only() {
            return None;
        }
        let rec = self.hlog.record(a).ok()?;
        if !rec.key_is_word(key.word, key.len) {
            return None;
        }
        // Err: sealed, or held by this thread (cannot be: it holds no lock in this store
        // outside a protection of it, and this one is its only one); the general path decides.
        let lock = rec.lock(guard.lock_owner()).ok()?;
        if lock.state().tombstone() {
            return None;
        }
        Some(KeyLock {
            lock,
            _guard: guard,
        })
    }

    /// Locks `key`'s record for an in-place update of its one-word value, or `None` (go slow).
    #[inline(always)]
    pub(crate) fn lock_word(&self, key: Word, hash: KeyHash) -> Option<WordLock<'_>> {
        let guard = self.epoch.protect_short()?;
        if !self.acked_rule_is_free(&guard) {
            return None;
        }
        let a = self.entry_address(&guard, hash)??;
        let rec = self.word_record(key, a, self.hlog.read_only())?;
        // None: sealed (a newer copy exists), or held by this thread (as in `lock_word_key`).
        let lock = rec.lock(guard.lock_owner())?;
        let s = lock.state();
        let old = Word::new(lock.value_word(), s.len()).filter(|_| !s.tombstone())?;
        Some(WordLock {
            lock,
            old,
            _guard: guard,
        })
    }
}

/// A record of a one-word key locked for a fast in-place update of a value of any shape, inside
/// a short protection. Dropped without a write, it leaves the record as it was.
pub(crate) struct KeyLock<'a> {
    // Fields drop in order: the record lock is released before the protection ends.
    lock: RecordLock<'a>,
    _guard: ShortGuard<'a>,
}

impl KeyLock<'_> {
    /// Copies the current value into `out`.
    pub(crate) fn read(&self, out: &mut ValueBuf) {
        self.lock.read_value(out);
    }

    /// The value's length in bytes.
    pub(crate) fn value_len(&self) -> usize {
        self.lock.value_len()
    }

    /// Copies `out.len()` bytes of the value from byte `at` (within [`KeyLock::value_len`]).
    pub(crate) fn read_at(&self, at: usize, out: &mut [u8]) {
        self.lock.read_bytes_at(at, out);
    }

    /// Overwrites `bytes.len()` bytes of the value from byte `at` (within
    /// [`KeyLock::value_len`]), its length unchanged.
    pub(crate) fn patch(mut self, at: usize, bytes: &[u8]) {
        self.lock.write_bytes_at(at, bytes);
    }

    /// Writes `value` in place if it fits; otherwise leaves the record as it was and returns
    /// `false` (go slow).
    pub(crate) fn write(mut self, value: &Encoded) -> bool {
        if !self.lock.fits(value.len()) {
            return false;
        }
        self.lock.write_value(value);
        true
    }
}

/// A record locked for a fast in-place update, inside a short protection. Dropped without
/// [`WordLock::write`], it leaves the record exactly as it was (the same state word, so a
/// racing reader sees no change) and the caller goes slow.
pub(crate) struct WordLock<'a> {
    // Fields drop in order: the record lock is released before the protection ends.
    lock: WordRecordLock<'a>,
    old: Word,
    _guard: ShortGuard<'a>,
}

impl WordLock<'_> {
    /// The current value.
    #[inline(always)]
    pub fn old(&self) -> Word {
        self.old
    }

    /// Writes `new` in place and unlocks with the next sequence number.
    #[inline(always)]
    pub fn write(mut self, new: Word) {
        self.lock.write_word(new.word, new.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::light_epoch::thread_slot;
    use crate::device::file_system_disk::FileSystemDisk;
    use crate::ops::cpr::{Phase, SystemState};
    use crate::rskv_core::RsKv;
    use crate::sync::Ordering;
    use crate::Config;

    fn store(dir: &std::path::Path) -> RsKv<u64, u64, FileSystemDisk> {
        let config = Config::new()
            .table_size(1 << 10)
            .log_memory_size(1 << 20)
            .page_size(64 << 10);
        RsKv::open(config, FileSystemDisk::new(dir).unwrap()).unwrap()
    }

    fn word(v: u64) -> Word {
        Word::encode(&v).unwrap()
    }

    #[test]
    fn fast_paths_finish_only_where_the_general_path_would_do_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let kv = store(dir.path());
        let e = &kv.engine;
        let k = word(7);
        // The thread takes its epoch slot on its first general-path operation.
        assert_eq!(kv.get(&7).unwrap(), None);
        assert_eq!(e.read_word(k, k.hash()), Fast::Done(None));
        assert!(e.lock_word(k, k.hash()).is_none(), "absent: append");
        kv.insert(&7, &1).unwrap();
        assert_eq!(e.read_word(k, k.hash()), Fast::Done(Some(word(1))));
        let tail = e.hlog.tail_address();
        let l = e.lock_word(k, k.hash()).unwrap();
        assert_eq!(l.old(), word(1));
        l.write(word(2));
        assert_eq!(e.hlog.tail_address(), tail, "in place");
        assert_eq!(kv.get(&7).unwrap(), Some(2));

        // A checkpoint phase with a rule other than Free: updates go slow, reads stay fast.
        let rest = e.state.load(Ordering::Acquire);
        let prepare = SystemState {
            phase: Phase::Prepare,
            version: SystemState::from_word(rest).version,
        };
        e.state.store(prepare.word(), Ordering::Release);
        assert!(e.lock_word(k, k.hash()).is_none());
        assert_eq!(e.read_word(k, k.hash()), Fast::Done(Some(word(2))));
        e.state.store(rest, Ordering::Release);

        // A fold-over checkpoint makes every record read-only: updates copy (general path).
        kv.checkpoint().unwrap();
        assert!(e.lock_word(k, k.hash()).is_none());
        assert_eq!(e.read_word(k, k.hash()), Fast::Done(Some(word(2))));
        kv.rmw(&7, |old| old.unwrap() + 1).unwrap();
        assert!(e.hlog.tail_address() > tail, "copied to the tail");
        let l = e.lock_word(k, k.hash()).unwrap();
        assert_eq!(l.old(), word(3));
        drop(l); // unlocked unchanged
        assert_eq!(kv.get(&7).unwrap(), Some(3));
        e.lock_word(k, k.hash()).unwrap().write(word(4));
        assert_eq!(kv.get(&7).unwrap(), Some(4));

        // A tombstone in the mutable region: reads see nothing, updates go slow.
        kv.remove(&7).unwrap();
        assert_eq!(e.read_word(k, k.hash()), Fast::Done(None));
        assert!(e.lock_word(k, k.hash()).is_none());
        assert_eq!(kv.rmw(&7, |old| old.unwrap_or(40) + 2).unwrap(), 42);
        assert_eq!(kv.get(&7).unwrap(), Some(42));

        // Another key in the same hash chain position is never mistaken for this one.
        let other = word(8);
        assert_eq!(e.read_word(other, k.hash()), Fast::Slow);
    }

    #[test]
    fn an_rmw_function_may_call_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let kv = store(dir.path());
        kv.insert(&1, &10).unwrap();
        kv.insert(&2, &32).unwrap();
        let slot = thread_slot().unwrap();
        let got = kv
            .rmw(&1, |old| {
                let other = kv.get(&2).unwrap().unwrap();
                // The nested read must not have ended the RMW's own protection.
                assert!(kv.engine.epoch.is_protected_at(slot));
                old.unwrap() + other
            })
            .unwrap();
        assert_eq!(got, 42);
        assert!(!kv.engine.epoch.is_protected_at(slot));
        assert_eq!(kv.get(&1).unwrap(), Some(42));
    }
}
