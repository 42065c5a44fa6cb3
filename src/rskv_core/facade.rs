//! The typed store's operations: FASTER's context API and the plain facade (one key at a time,
//! batches that overlap their cache misses and device reads, async forms). The store itself
//! (opening, checkpoints, recovery, sessions) is the parent module.

use std::borrow::Borrow;
use std::cell::RefCell;

use super::RsKv;
use crate::contexts::{
    decode_latest, rmw_decider, DeleteContext, ReadContext, RmwContext, UpsertContext,
};
use crate::core::address::Address;
use crate::core::codec::{decode, decode_word, Codec, Encoded};
use crate::core::record::ValueBuf;
use crate::core::status::{Error, Result, Status};
use crate::device::Disk;
use crate::index::key_hash::hash_key;
use crate::index::KeyHash;
use crate::ops::counters::Count;
use crate::ops::fast::{Fast, Word};
use crate::ops::pending::Started;
use crate::ops::read::ReadStep;
use crate::ops::rmw::{Decision, Latest};

/// The decision function of a facade RMW: applies `f` and remembers the value it produced (the
/// last attempt's value is the one written).
fn facade_decider<'f, V: Codec>(
    f: &'f mut impl FnMut(Option<V>) -> V,
    last: &'f mut Option<V>,
) -> impl FnMut(Latest<'_>) -> Result<Decision> + 'f {
    move |latest| {
        let new = f(decode_latest(latest)?);
        let enc = Encoded::new(&new)?;
        *last = Some(new);
        Ok(Decision::Write(enc))
    }
}

/// Operations of a batch prefetched and run under one epoch protection.
const BATCH: usize = 32;

impl<K: Codec, V: Codec, D: Disk> RsKv<K, V, D> {
    // ---- context API ------------------------------------------------------------------------

    /// Upserts through a context; returns the final status.
    ///
    /// # Errors
    /// Codec, size and device errors.
    pub fn upsert<C: UpsertContext<Key = K, Value = V>>(&self, ctx: &C) -> Result<Status> {
        crate::contexts::upsert_ctx(&self.engine, ctx, &mut |_| {}).map(|()| Status::Ok)
    }

    /// Reads through a context: `ctx.get` receives the value. Waits for the disk if needed.
    ///
    /// # Errors
    /// Codec, corruption and device errors.
    pub fn read<C: ReadContext<Key = K, Value = V>>(&self, ctx: &mut C) -> Result<Status> {
        self.read_ctx(ctx)
    }

    fn read_ctx<C: ReadContext<Key = K, Value = V>>(&self, ctx: &mut C) -> Result<Status> {
        let key = Encoded::new(ctx.key())?;
        let mut buf = ValueBuf::default();
        if self
            .engine
            .read_blocking(
                &key,
                self.engine.hasher.of_context(&key, ctx.key_hash()),
                &mut buf,
            )?
            .live()
        {
            ctx.get(&decode(buf.bytes())?);
            Ok(Status::Ok)
        } else {
            Ok(Status::NotFound)
        }
    }

    /// Read-modify-write through a context. Waits for the disk if needed.
    ///
    /// # Errors
    /// Codec, size, corruption and device errors.
    pub fn rmw_context<C: RmwContext<Key = K, Value = V>>(&self, ctx: &C) -> Result<Status> {
        self.rmw_ctx(ctx)
    }

    fn rmw_ctx<C: RmwContext<Key = K, Value = V>>(&self, ctx: &C) -> Result<Status> {
        let key = Encoded::new(ctx.key())?;
        let hash = self.engine.hasher.of_context(&key, ctx.key_hash());
        self.engine
            .update_blocking(&key, hash, Address::INVALID, true, &mut rmw_decider(ctx))
    }

    /// Deletes through a context. `NotFound` if the key was not in the store.
    ///
    /// # Errors
    /// Codec and device errors.
    pub fn delete<C: DeleteContext<Key = K, Value = V>>(&self, ctx: &C) -> Result<Status> {
        crate::contexts::delete_ctx(&self.engine, ctx, false, &mut |_| {})
    }

    // ---- facade -------------------------------------------------------------------------------

    /// A facade key's encoding and hash: the store's own hash if it was opened with one
    /// ([`RsKv::open_with_hash`]), so that facade and context operations file a key alike and
    /// compaction and recovery, which rehash logged keys with it, keep it where lookups look.
    #[inline(always)]
    fn key(&self, key: &K) -> Result<(Encoded, KeyHash)> {
        let key = Encoded::new(key)?;
        let hash = self.engine.hasher.of_key(&key)?;
        Ok((key, hash))
    }

    /// A one-word key for the fast paths, which hash with RsKv's hash: `None` in a store
    /// opened with its own.
    #[inline(always)]
    fn word_key(&self, key: &K) -> Option<Word> {
        if self.engine.hasher.is_custom() {
            None
        } else {
            Word::encode(key)
        }
    }

    /// The value of `key`, if any.
    ///
    /// # Errors
    /// Device, codec or corruption errors.
    #[inline(always)]
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        if let Some(k) = self.word_key(key) {
            if Word::is_word_type::<V>() {
                match self.engine.read_word(k, k.hash()) {
                    Fast::Done(Some(v)) => {
                        self.engine.counters.bump(Count::ReadInMemory);
                        return decode_word(v.word, v.len).map(Some);
                    }
                    Fast::Done(None) => {
                        self.engine.counters.bump(Count::ReadNotFound);
                        return Ok(None);
                    }
                    Fast::Slow => {}
                }
            } else {
                // A one-word key with a value of another shape (bytes, strings, structs).
                let mut buf = ValueBuf::default();
                match self.engine.read_word_key(k, k.hash(), &mut buf) {
                    Fast::Done(true) => {
                        self.engine.counters.bump(Count::ReadInMemory);
                        return decode(buf.bytes()).map(Some);
                    }
                    Fast::Done(false) => {
                        self.engine.counters.bump(Count::ReadNotFound);
                        return Ok(None);
                    }
                    Fast::Slow => {}
                }
            }
        }
        self.get_general(key)
    }

    /// Whether `key` has a live value (a read that does not decode the value).
    ///
    /// # Errors
    /// Device, codec or corruption errors.
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        if let Some(k) = self.word_key(key) {
            match self.engine.read_word(k, k.hash()) {
                Fast::Done(found) => {
                    self.engine.counters.bump(if found.is_some() {
                        Count::ReadInMemory
                    } else {
                        Count::ReadNotFound
                    });
                    return Ok(found.is_some());
                }
                Fast::Slow => {}
            }
        }
        let (key, hash) = self.key(key)?;
        self.engine
            .read_blocking(&key, hash, &mut ValueBuf::default())
            .map(|f| f.live())
    }

    /// [`RsKv::get`] through the general path.
    #[inline(never)]
    fn get_general(&self, key: &K) -> Result<Option<V>> {
        let (key, hash) = self.key(key)?;
        let mut buf = ValueBuf::default();
        if self.engine.read_blocking(&key, hash, &mut buf)?.live() {
            Ok(Some(decode(buf.bytes())?))
        } else {
            Ok(None)
        }
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// [`Error::RecordTooLarge`], [`Error::Poisoned`], codec errors.
    #[inline(always)]
    pub fn insert(&self, key: &K, value: &V) -> Result<()> {
        if let Some(k) = self.word_key(key) {
            if Word::is_word_type::<V>() {
                if let (Some(v), Some(lock)) =
                    (Word::encode(value), self.engine.lock_word(k, k.hash()))
                {
                    lock.write(v);
                    self.engine.counters.bump(Count::Upsert);
                    return Ok(());
                }
            } else {
                // A one-word key with a value of another shape: in place when it fits.
                let encoded = Encoded::new(value)?;
                if let Some(lock) = self.engine.lock_word_key(k, k.hash()) {
                    if lock.write(&encoded) {
                        self.engine.counters.bump(Count::Upsert);
                        return Ok(());
                    }
                }
                return self.insert_encoded(key, &encoded);
            }
        }
        self.insert_general(key, value)
    }

    /// [`RsKv::insert`] through the general path.
    #[inline(never)]
    fn insert_general(&self, key: &K, value: &V) -> Result<()> {
        self.insert_encoded(key, &Encoded::new(value)?)
    }

    /// [`RsKv::insert`] of an encoded value through the general path.
    #[inline(never)]
    fn insert_encoded(&self, key: &K, value: &Encoded) -> Result<()> {
        let (key, hash) = self.key(key)?;
        let g = self.engine.protect()?;
        self.engine
            .upsert(&g, &key, hash, value, &mut |_| Ok(None))
            .map(|_| ())
    }

    /// Replaces the value of `key` with `f(old)` atomically and returns the new value. `f` may
    /// run more than once (when a concurrent update forces a retry): keep it pure.
    ///
    /// # Errors
    /// Device, codec or size errors.
    #[inline(always)]
    pub fn rmw(&self, key: &K, mut f: impl FnMut(Option<V>) -> V) -> Result<V> {
        // Only integer values can be known to fit one word before `f` runs.
        if let Some(k) = self.word_key(key).filter(|_| Word::is_word_type::<V>()) {
            if let Some(lock) = self.engine.lock_word(k, k.hash()) {
                let old = lock.old();
                if let Ok(old) = decode_word(old.word, old.len) {
                    let v = f(Some(old));
                    if let Some(w) = Word::encode(&v) {
                        lock.write(w);
                        self.engine.counters.bump(Count::Rmw);
                        return Ok(v);
                    }
                }
                // Dropping the lock leaves the record unchanged; the general path decides.
            }
        } else if let Some(k) = self.word_key(key) {
            // A one-word key with a value of another shape: in place when the new value fits.
            if let Some(lock) = self.engine.lock_word_key(k, k.hash()) {
                let mut buf = ValueBuf::default();
                lock.read(&mut buf);
                let v = f(Some(decode(buf.bytes())?));
                if lock.write(&Encoded::new(&v)?) {
                    self.engine.counters.bump(Count::Rmw);
                    return Ok(v);
                }
                // Too big: the record is unchanged; `f` runs again in the general path.
            }
        }
        self.rmw_general(key, f)
    }

    /// [`RsKv::rmw`] through the general path.
    #[inline(never)]
    fn rmw_general(&self, key: &K, mut f: impl FnMut(Option<V>) -> V) -> Result<V> {
        let (key, hash) = self.key(key)?;
        let mut last = None;
        let _written = self.engine.update_blocking(
            &key,
            hash,
            Address::INVALID,
            true,
            &mut facade_decider(&mut f, &mut last),
        )?;
        last.ok_or(Error::Internal("an RMW finished without computing a value"))
    }

    /// Deletes `key` (a no-op if it has no value).
    ///
    /// # Errors
    /// Device errors.
    pub fn remove(&self, key: &K) -> Result<()> {
        let (key, hash) = self.key(key)?;
        let g = self.engine.protect()?;
        self.engine.delete(&g, &key, hash, false).map(|_| ())
    }

    /// Writes `key = value` only if no record of `key` exists at or above log address `floor`
    /// (FASTER's ConditionalInsert). Compaction copying the record at address `a` passes
    /// `a + 1`; a caller that read the key at some moment passes the [`RsKv::tail_address`] of
    /// that moment. Returns whether it wrote.
    ///
    /// # Errors
    /// Device, codec or size errors.
    pub fn conditional_insert(&self, key: &K, value: &V, floor: Address) -> Result<bool> {
        let (key, hash) = self.key(key)?;
        let value = Encoded::new(value)?;
        let status = self
            .engine
            .update_blocking(&key, hash, floor, false, &mut |latest| {
                Ok(match latest {
                    Latest::Absent => Decision::Write(value.clone()),
                    Latest::Deleted | Latest::Value(_) => Decision::Abort,
                })
            })?;
        Ok(status == Status::Ok)
    }

    /// The log's tail address: a floor for [`RsKv::conditional_insert`] that admits only keys
    /// not written after this call.
    #[must_use]
    pub fn tail_address(&self) -> Address {
        self.engine.hlog.tail_address()
    }

    // ---- batches: the same operations, with their cache misses overlapped ---------------------

    /// A hint that the calling thread will operate on `keys` next: prefetches their index
    /// buckets, then the in-memory records those point at, so the cache misses of the coming
    /// operations overlap instead of following one another. Changes nothing; best with 8 to 32
    /// keys. (`get_many`/`insert_many`/`rmw_many` do this themselves.)
    ///
    /// Takes the keys by reference or by value (`&[K]`, `Vec<K>`, an iterator), so a caller
    /// that derives keys on the fly needs no buffer of its own.
    pub fn prefetch<Q: Borrow<K>>(&self, keys: impl IntoIterator<Item = Q>) {
        let mut hashes = [KeyHash::new(0); BATCH];
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            let mut n = 0;
            for (h, k) in hashes.iter_mut().zip(keys.by_ref()) {
                *h = if self.engine.hasher.is_custom() {
                    // A hint: a key that does not encode prefetches nothing useful, harmlessly.
                    self.key(k.borrow()).map_or(KeyHash::new(0), |(_, h)| h)
                } else {
                    KeyHash::new(hash_key(k.borrow()))
                };
                n += 1;
            }
            let Ok(g) = self.engine.protect() else {
                return;
            };
            self.engine.prefetch(&g, hashes[..n].iter().copied());
        }
    }

    /// [`RsKv::get`] of several keys, with their memory accesses overlapped (best with 8 to 32
    /// keys per call) and the device reads of the keys found below the head all in flight at
    /// once (io_uring or the thread pool works on them together), so a batch whose keys are on
    /// disk costs about one device round trip instead of one per key.
    ///
    /// # Errors
    /// The first error of a [`RsKv::get`].
    pub fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        let enc: Vec<(Encoded, KeyHash)> =
            keys.iter().map(|k| self.key(k)).collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(keys.len());
        let mut on_disk = Vec::new();
        let mut buf = ValueBuf::default();
        for (c, chunk) in enc.chunks(BATCH).enumerate() {
            // One protection per chunk, so a long batch does not hold back epoch actions.
            let g = self.engine.protect()?;
            self.engine.prefetch(&g, chunk.iter().map(|(_, h)| *h));
            for (j, (key, hash)) in chunk.iter().enumerate() {
                out.push(match self.engine.read_mem(&g, key, *hash, &mut buf)? {
                    ReadStep::Found => Some(decode(buf.bytes())?),
                    ReadStep::NotFound | ReadStep::Deleted => None,
                    ReadStep::Disk(a) => {
                        on_disk.push((c * BATCH + j, a));
                        None
                    }
                });
            }
        }
        // Every continuation issues its first read when first polled: join_all polls them all
        // before waiting, so the reads overlap.
        let reads = on_disk.into_iter().map(|(i, a)| {
            let (key, hash) = (&enc[i].0, enc[i].1);
            async move {
                let mut buf = ValueBuf::default();
                let found = self.engine.read_pending(key, hash, a, &mut buf).await?;
                Ok::<_, Error>((i, found.live().then_some(buf)))
            }
        });
        for done in crate::ops::pending::block_on(futures_util::future::join_all(reads)) {
            if let (i, Some(buf)) = done? {
                out[i] = Some(decode(buf.bytes())?);
            }
        }
        Ok(out)
    }

    /// [`RsKv::insert`] of several pairs, with their memory accesses overlapped.
    ///
    /// # Errors
    /// The first error of an [`RsKv::insert`] (the pairs before it are written).
    pub fn insert_many(&self, pairs: &[(K, V)]) -> Result<()> {
        let enc: Vec<(Encoded, KeyHash, Encoded)> = pairs
            .iter()
            .map(|(k, v)| {
                let (key, hash) = self.key(k)?;
                Ok((key, hash, Encoded::new(v)?))
            })
            .collect::<Result<_>>()?;
        for chunk in enc.chunks(BATCH) {
            let g = self.engine.protect()?;
            self.engine.prefetch(&g, chunk.iter().map(|(_, h, _)| *h));
            for (key, hash, value) in chunk {
                self.engine
                    .upsert(&g, key, *hash, value, &mut |_| Ok(None))?;
            }
        }
        Ok(())
    }

    /// [`RsKv::rmw`] of several keys with one function, with their memory accesses overlapped
    /// and the device reads of keys whose newest record is on disk in flight together (as in
    /// [`RsKv::get_many`]). Returns the new values, by position.
    ///
    /// `f` gets the key (a reference into `keys`) and its current value. It may run more than
    /// once for a key (retries) and not in key order: updates that wait for the disk run after
    /// the in-memory ones. A key that appears twice is updated twice, each update seeing the
    /// other's result or being seen by it, as for two threads.
    ///
    /// # Errors
    /// The first error of an [`RsKv::rmw`], by position. Keys that went to disk finish their
    /// updates before it is returned; keys in memory after the failing one are not updated.
    pub fn rmw_many(&self, keys: &[K], f: impl FnMut(&K, Option<V>) -> V) -> Result<Vec<V>> {
        let enc: Vec<(Encoded, KeyHash)> =
            keys.iter().map(|k| self.key(k)).collect::<Result<_>>()?;
        // The futures below share `f`; none of them holds it across an await.
        let f = RefCell::new(f);
        let mut out: Vec<Option<V>> = Vec::with_capacity(keys.len());
        let mut on_disk = Vec::new();
        let mut first_err = None;
        'chunks: for (c, (chunk, ks)) in enc.chunks(BATCH).zip(keys.chunks(BATCH)).enumerate() {
            {
                // Protected only while prefetching: each update protects itself.
                let g = self.engine.protect()?;
                self.engine.prefetch(&g, chunk.iter().map(|(_, h)| *h));
            }
            for (j, ((key, hash), k)) in chunk.iter().zip(ks).enumerate() {
                let mut last = None;
                let started = {
                    let mut g = |old: Option<V>| (f.borrow_mut())(k, old);
                    let mut decide = facade_decider(&mut g, &mut last);
                    self.engine.update_start(
                        key,
                        *hash,
                        Address::INVALID,
                        true,
                        &mut decide,
                        &mut |_, _| {},
                    )
                };
                match started {
                    Ok(Started::Done(_)) => out.push(last),
                    Ok(disk) => {
                        on_disk.push((c * BATCH + j, disk));
                        out.push(None);
                    }
                    Err(e) => {
                        first_err = Some((c * BATCH + j, e));
                        break 'chunks;
                    }
                }
            }
        }
        // Every continuation issues its first read when first polled: join_all polls them all
        // before waiting, so the reads overlap.
        let updates = on_disk.into_iter().map(|(i, started)| {
            let ((key, hash), k, f) = (&enc[i], &keys[i], &f);
            async move {
                let mut last = None;
                let done = {
                    let mut g = |old: Option<V>| (f.borrow_mut())(k, old);
                    let mut decide = facade_decider(&mut g, &mut last);
                    self.engine
                        .update_rest(key, *hash, Address::INVALID, true, started, &mut decide)
                        .await
                };
                (i, done.map(|_| last))
            }
        });
        for (i, done) in crate::ops::pending::block_on(futures_util::future::join_all(updates)) {
            match done {
                Ok(v) => out[i] = v,
                Err(e) if first_err.as_ref().map_or(true, |(at, _)| i < *at) => {
                    first_err = Some((i, e));
                }
                Err(_) => {}
            }
        }
        if let Some((_, e)) = first_err {
            return Err(e);
        }
        out.into_iter()
            .map(|v| v.ok_or(Error::Internal("an RMW finished without computing a value")))
            .collect()
    }

    /// Async [`RsKv::get`]: does not block the executor while the disk works.
    ///
    /// # Errors
    /// As [`RsKv::get`].
    pub async fn get_async(&self, key: &K) -> Result<Option<V>> {
        let (key, hash) = self.key(key)?;
        let mut buf = ValueBuf::default();
        if self.engine.read_async(&key, hash, &mut buf).await?.live() {
            Ok(Some(decode(buf.bytes())?))
        } else {
            Ok(None)
        }
    }

    /// Async [`RsKv::rmw`].
    ///
    /// # Errors
    /// As [`RsKv::rmw`].
    pub async fn rmw_async(&self, key: &K, mut f: impl FnMut(Option<V>) -> V + Send) -> Result<V> {
        let (key, hash) = self.key(key)?;
        let mut last = None;
        let _written = self
            .engine
            .update_async(
                &key,
                hash,
                Address::INVALID,
                true,
                &mut facade_decider(&mut f, &mut last),
            )
            .await?;
        last.ok_or(Error::Internal("an RMW finished without computing a value"))
    }
}
