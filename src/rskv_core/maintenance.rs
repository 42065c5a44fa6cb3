//! Log maintenance on the store: truncation, lookup compaction and iteration (the engine's
//! side is [`crate::ops::truncate`], [`crate::ops::compact`] and [`crate::ops::scan`]).

use std::marker::PhantomData;

use crate::core::address::Address;
use crate::core::codec::{decode, Codec};
use crate::core::status::Result;
use crate::device::Disk;
use crate::ops::compact::Compaction;
use crate::ops::scan::Pair;
use crate::ops::truncate::Truncation;
use crate::rskv_core::RsKv;

impl<K: Codec, V: Codec, D: Disk> RsKv<K, V, D> {
    /// Drops the log below `until` (rounded down to its page): from then on the records there
    /// are gone, whatever they held (FASTER's `ShiftBeginAddress`; the cache mode of a store
    /// that may forget its oldest data). Use [`RsKv::compact`] to keep what is still live.
    ///
    /// The segment files below go as soon as no checkpoint needs them: at once for a store
    /// without checkpoints, else when the next checkpoint (which records the new begin) is
    /// durable; older checkpoints that needed them are removed then. Until that checkpoint, a
    /// crash recovers the truncated records with the rest of the older checkpoint.
    ///
    /// # Errors
    /// [`Error::Busy`](crate::Error::Busy) while a compaction or truncation runs;
    /// [`Error::Config`](crate::Error::Config) for `until` below the log's begin or beyond its
    /// safe head ([`crate::LogMarkers::safe_head`]: what is only on the device); I/O errors of
    /// deleting files (the truncation itself has then happened).
    pub fn truncate_until(&self, until: Address) -> Result<Truncation> {
        self.engine.truncate_until(until)
    }

    /// Compacts the log below `until` (rounded down to its page) with two worker threads:
    /// copies every record that is still its key's newest to the tail, drops the rest, then
    /// truncates (as [`RsKv::truncate_until`]). Runs beside every other operation and
    /// checkpoints; a concurrent update of a key always wins over its copy.
    ///
    /// # Errors
    /// As [`RsKv::compact_with_threads`].
    pub fn compact(&self, until: Address) -> Result<Compaction> {
        self.compact_with_threads(until, 2)
    }

    /// [`RsKv::compact`] with `threads` workers.
    ///
    /// # Errors
    /// [`Error::Busy`](crate::Error::Busy) while another compaction or truncation runs, or
    /// when called from inside an operation of this store;
    /// [`Error::Config`](crate::Error::Config) for `until` below the log's begin or beyond its
    /// safe head, or for a store whose contexts override `key_hash` and that was not opened
    /// with that hash ([`RsKv::open_with_hash`]); device and corruption errors. A failed
    /// compaction truncates nothing: the store stays as it was, plus copies of live records
    /// (which hold the same values).
    pub fn compact_with_threads(&self, until: Address, threads: usize) -> Result<Compaction> {
        self.engine
            .compact(until, threads, crate::ops::compact::Pace::FULL)
    }
}

/// An iterator over the live pairs of a store ([`RsKv::iter`], [`crate::R2Kv::iter`]).
pub struct Iter<'a, K, V, D: Disk> {
    /// The store's scan: encoded pairs.
    pairs: Box<dyn Iterator<Item = Result<Pair>> + Send + Sync + 'a>,
    _types: PhantomData<fn() -> (K, V)>,
    _disk: PhantomData<fn() -> D>,
}

impl<'a, K, V, D: Disk> Iter<'a, K, V, D> {
    /// Decodes the pairs of `pairs`.
    pub(crate) fn new(pairs: impl Iterator<Item = Result<Pair>> + Send + Sync + 'a) -> Self {
        Self {
            pairs: Box::new(pairs),
            _types: PhantomData,
            _disk: PhantomData,
        }
    }
}

impl<K: Codec, V: Codec, D: Disk> Iterator for Iter<'_, K, V, D> {
    type Item = Result<(K, V)>;

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = match self.pairs.next()? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        Some(decode::<K>(&k).and_then(|k| Ok((k, decode::<V>(&v)?))))
    }
}

impl<K, V, D: Disk> std::fmt::Debug for Iter<'_, K, V, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl<K: Codec, V: Codec, D: Disk> RsKv<K, V, D> {
    /// Iterates over the live key-value pairs, streaming the log from the device (one 4 MiB
    /// read at a time) and then from memory. Every key that is live when the iterator is
    /// created is yielded exactly once, with a value it held while the iteration ran; keys
    /// inserted after it was created are not. Other operations run meanwhile; compaction and
    /// truncation wait (they return [`Error::Busy`](crate::Error::Busy)) until the iterator is
    /// dropped. Order: by the address of each key's record, not by key.
    ///
    /// Each pair costs a lookup of its key's chain (a device read when the chain continues on
    /// the device), like a compaction.
    ///
    /// # Errors
    /// [`Error::Busy`](crate::Error::Busy) while a compaction or truncation runs, or when
    /// called from inside an operation of this store; [`Error::Config`](crate::Error::Config)
    /// for a store whose contexts use a hash it was not told about. Device, corruption and
    /// codec errors come as items (the iteration ends after one).
    pub fn iter(&self) -> Result<Iter<'_, K, V, D>> {
        Ok(Iter::new(self.engine.live_scan()?))
    }
}
