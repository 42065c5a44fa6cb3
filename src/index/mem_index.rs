//! The in-memory hash index of RsKv, with online growth (doubling) while operations run.
//!
//! # Growth state machine
//! The index is `REST(v)` (table `v` current), `PREPARE(v)` or `IN_PROGRESS(v)`:
//! 1. The grower allocates table `1-v` of twice the size, publishes it and the per-chunk split
//!    state, sets `PREPARE(v)` and bumps the epoch with an action that sets `IN_PROGRESS(v)`.
//! 2. In `PREPARE` operations do not touch the index; they get `RetryLater`, refresh their epoch
//!    and retry. Operations that read `REST(v)` before the bump still hold the old epoch, so the
//!    action — and with it any split — waits for them: table `v` is frozen once `IN_PROGRESS`
//!    is visible.
//! 3. In `IN_PROGRESS` operations use table `1-v`. Before touching new bucket `b` they make sure
//!    the chunk of old buckets holding `b mod old_size` is split (doing it themselves if nobody
//!    has started it, waiting if somebody is on it). Splitting copies every entry of old bucket
//!    `i` into new buckets `i` and `i + old_size`: the chain behind an entry may hold keys of
//!    either new bucket, and lookups compare full keys, so both copies are correct; each keeps
//!    at most one entry per tag because the old chain did.
//! 4. When every chunk is split, the state becomes `REST(1-v)` and an epoch action frees table `v`
//!    and its overflow buckets once no thread can still be reading them.
//!
//! Operations call the index once per attempt, inside one epoch protection, and never refresh in
//! the middle of an attempt, so the table an attempt uses cannot be retired under it.

use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering as StdOrdering};
use std::sync::Arc;

use crate::core::light_epoch::LightEpoch;
use crate::index::definitions::{EntrySlot, HashIndex, IndexBusy, KeyHash};
use crate::index::hash_bucket::HashBucketEntry;
use crate::index::hash_table::{HashTable, OverflowPool};
use crate::sync::{AtomicU64, Ordering};

const REST: u64 = 0;
const PREPARE: u64 = 1;
const IN_PROGRESS: u64 = 2;
/// Old buckets split together as one unit of growth work.
const CHUNK_BUCKETS: usize = 1024;

const TODO: u8 = 0;
const BUSY: u8 = 1;
const DONE: u8 = 2;

fn state(phase: u64, version: u64) -> u64 {
    phase | version << 8
}

struct Grow {
    chunks: Box<[AtomicU8]>,
    done: AtomicU64,
}

/// The in-memory index: a hash table that doubles online.
pub struct MemIndex {
    tables: [AtomicPtr<HashTable>; 2],
    state: AtomicU64,
    grow: AtomicPtr<Grow>,
    pool: Arc<OverflowPool>,
    epoch: Arc<LightEpoch>,
}

impl MemIndex {
    /// An index of `2^bits` buckets, retiring memory through `epoch`.
    #[must_use]
    pub fn new(bits: u32, epoch: Arc<LightEpoch>) -> Self {
        let t = Box::into_raw(Box::new(HashTable::new(bits)));
        Self {
            tables: [AtomicPtr::new(t), AtomicPtr::new(std::ptr::null_mut())],
            state: AtomicU64::new(state(REST, 0)),
            grow: AtomicPtr::new(std::ptr::null_mut()),
            pool: Arc::new(OverflowPool::new()),
            epoch,
        }
    }

    #[inline]
    fn table(&self, version: u64) -> &HashTable {
        // SAFETY: a table pointer read under epoch protection stays valid until an epoch action
        // frees it, which waits for every protected thread (see growth step 4). Both pointers a
        // state names are non-null while that state is visible.
        unsafe { &*self.tables[version as usize & 1].load(StdOrdering::Acquire) }
    }

    #[inline(always)]
    fn table_for(&self, hash: KeyHash) -> Result<&HashTable, IndexBusy> {
        let s = self.state.load(Ordering::Acquire);
        if s & 0xff == REST {
            return Ok(self.table(s >> 8));
        }
        self.table_while_growing(s, hash)
    }

    /// [`MemIndex::table_for`] outside REST (out of line: operations rarely meet growth).
    #[cold]
    #[inline(never)]
    fn table_while_growing(&self, s: u64, hash: KeyHash) -> Result<&HashTable, IndexBusy> {
        let (phase, v) = (s & 0xff, s >> 8);
        match phase {
            REST => Ok(self.table(v)),
            PREPARE => Err(IndexBusy::RetryLater),
            _ => {
                let old = self.table(v);
                let new = self.table(1 - v);
                self.ensure_split(old, new, hash.bucket(old.bits()) / CHUNK_BUCKETS)?;
                Ok(new)
            }
        }
    }

    fn grow_state(&self) -> &Grow {
        // SAFETY: non-null while IN_PROGRESS is visible; freed by an epoch action after REST.
        unsafe { &*self.grow.load(StdOrdering::Acquire) }
    }

    fn ensure_split(
        &self,
        old: &HashTable,
        new: &HashTable,
        chunk: usize,
    ) -> Result<(), IndexBusy> {
        let g = self.grow_state();
        let c = &g.chunks[chunk];
        let mut round = 0;
        loop {
            match c.load(StdOrdering::Acquire) {
                DONE => return Ok(()),
                TODO if c
                    .compare_exchange(TODO, BUSY, StdOrdering::AcqRel, StdOrdering::Acquire)
                    .is_ok() =>
                {
                    let first = chunk * CHUNK_BUCKETS;
                    let last = (first + CHUNK_BUCKETS).min(old.len());
                    let result = (first..last).try_for_each(|i| self.split_bucket(old, new, i));
                    if result.is_err() {
                        c.store(TODO, StdOrdering::Release);
                        return result;
                    }
                    c.store(DONE, StdOrdering::Release);
                    g.done.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
                _ => crate::sync::backoff(&mut round),
            }
        }
    }

    fn split_bucket(&self, old: &HashTable, new: &HashTable, i: usize) -> Result<(), IndexBusy> {
        let mut entries = Vec::new();
        old.for_each_entry(i, &self.pool, |e| entries.push(e));
        // Clear first so a retried split (after Full) does not duplicate entries.
        for j in [i, i + old.len()] {
            for slot in &new.bucket(j).entries {
                slot.store(0, Ordering::Relaxed);
            }
        }
        for e in entries {
            new.insert_exclusive(i, e, &self.pool)?;
            new.insert_exclusive(i + old.len(), e, &self.pool)?;
        }
        Ok(())
    }

    /// Doubles the table while other threads keep operating. Returns `false` if another growth
    /// was already running (this call then waits for it). The calling thread must not be
    /// epoch-protected.
    ///
    /// # Errors
    /// [`IndexBusy::Full`] if overflow buckets run out while splitting (the growth is then
    /// finished by later operations that touch the unsplit chunks).
    pub fn grow(&self) -> Result<bool, IndexBusy> {
        let s = self.state.load(Ordering::Acquire);
        let (phase, v) = (s & 0xff, s >> 8);
        if phase != REST {
            self.wait_rest();
            return Ok(false);
        }
        // Claim the growth first: in PREPARE no operation reads the second table slot or the
        // grow state, so they can be published after the claim.
        if self
            .state
            .compare_exchange(s, state(PREPARE, v), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.wait_rest();
            return Ok(false);
        }
        let old = self.table(v);
        let new = Box::into_raw(Box::new(HashTable::new(old.bits() + 1)));
        let chunks = old.len().div_ceil(CHUNK_BUCKETS);
        let g = Box::into_raw(Box::new(Grow {
            chunks: (0..chunks).map(|_| AtomicU8::new(TODO)).collect(),
            done: AtomicU64::new(0),
        }));
        self.tables[1 - v as usize].store(new, StdOrdering::Release);
        self.grow.store(g, StdOrdering::Release);
        let me = self as *const Self as usize;
        self.epoch.bump_epoch(move || {
            // SAFETY: the index outlives its epoch's actions: the store drains its epoch before
            // dropping the index (RsKv::drop), so `me` is valid when this runs.
            let this = unsafe { &*(me as *const MemIndex) };
            this.state.store(state(IN_PROGRESS, v), Ordering::Release);
        });
        let mut round = 0;
        while self.state.load(Ordering::Acquire) & 0xff != IN_PROGRESS {
            self.epoch.drain();
            crate::sync::backoff(&mut round);
        }
        // SAFETY: `new` is published and stays alive until a later growth retires it.
        let new_ref = unsafe { &*new };
        for c in 0..chunks {
            self.ensure_split(old, new_ref, c)?;
        }
        let g_ref = self.grow_state();
        while g_ref.done.load(Ordering::Acquire) < chunks as u64 {
            crate::sync::backoff(&mut round);
        }
        self.state.store(state(REST, 1 - v), Ordering::Release);
        let old_ptr = self.tables[v as usize].load(StdOrdering::Acquire) as usize;
        let pool = self.pool.clone();
        let g = g as usize;
        self.epoch.bump_epoch(move || {
            // SAFETY: no thread can reach the old table or the grow state any more: REST(1-v)
            // was published before this bump, and every thread that might have read the older
            // state held the previous epoch, which this action waits out.
            let old = unsafe { Box::from_raw(old_ptr as *mut HashTable) };
            for i in 0..old.len() {
                for o in old.overflow_chain(i, &pool) {
                    pool.free(o);
                }
            }
            drop(old);
            // SAFETY: as above, the grow state is unreachable.
            drop(unsafe { Box::from_raw(g as *mut Grow) });
        });
        self.epoch.drain();
        Ok(true)
    }

    fn wait_rest(&self) {
        let mut round = 0;
        while self.state.load(Ordering::Acquire) & 0xff != REST {
            self.epoch.drain();
            crate::sync::backoff(&mut round);
        }
    }

    /// log2 of the current bucket count.
    #[must_use]
    pub fn bits(&self) -> u32 {
        let s = self.state.load(Ordering::Acquire);
        self.table(s >> 8).bits()
    }

    /// Bytes of index memory: the tables and the overflow buckets.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let s = self.state.load(Ordering::Acquire);
        let mut n = self.table(s >> 8).memory_bytes() + self.pool.memory_bytes();
        if s & 0xff != REST {
            n += self.table(1 - (s >> 8)).memory_bytes();
        }
        n
    }

    /// Overflow buckets in use.
    #[must_use]
    pub fn overflow_buckets(&self) -> u64 {
        self.pool.allocated()
    }

    /// A fuzzy dump of the current table (checkpoint): hands `out` the bucket image in chunks
    /// (each bucket's 7 entries as little-endian words, tentative entries cleared, and a zero
    /// overflow word), then returns the overflow-chain entries as `(bucket, entry)` pairs. The
    /// caller is epoch protected per chunk by this function, and the index must not be growing.
    ///
    /// # Errors
    /// The first error of `out`.
    pub fn dump<E>(
        &self,
        mut out: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(u32, Vec<(u64, u64)>), E> {
        const CHUNK: usize = 16 * 1024;
        let bits = self.bits();
        let mut overflow = Vec::new();
        let mut image = vec![0u8; CHUNK * 64];
        let n = 1usize << bits;
        let mut first = 0;
        while first < n {
            let count = CHUNK.min(n - first);
            {
                // Protection keeps the table alive (growth is excluded by the caller anyway).
                let _g = self.epoch.protect();
                let table = self.table(self.state.load(Ordering::Acquire) >> 8);
                for i in first..first + count {
                    let b = table.bucket(i);
                    let at = (i - first) * 64;
                    for (k, slot) in b.entries.iter().enumerate() {
                        let e = HashBucketEntry::from_raw(slot.load(Ordering::Acquire));
                        let w = if e.tentative() { 0 } else { e.raw() };
                        image[at + k * 8..at + k * 8 + 8].copy_from_slice(&w.to_le_bytes());
                    }
                    image[at + 56..at + 64].fill(0);
                    if b.overflow.load(Ordering::Acquire) != 0 {
                        for o in table.overflow_chain(i, &self.pool) {
                            for slot in &self.pool.get(o).entries {
                                let e = HashBucketEntry::from_raw(slot.load(Ordering::Acquire));
                                if !e.is_empty() && !e.tentative() {
                                    overflow.push((i as u64, e.raw()));
                                }
                            }
                        }
                    }
                }
            }
            out(&image[..count * 64])?;
            first += count;
        }
        Ok((bits, overflow))
    }

    /// Loads buckets `first..` of a fresh index (recovery, before any other thread uses it) from
    /// a dump image chunk.
    pub fn restore_buckets(&self, first: usize, image: &[u8]) {
        let table = self.table(self.state.load(Ordering::Acquire) >> 8);
        for (n, bucket) in image.chunks_exact(64).enumerate() {
            let b = table.bucket(first + n);
            for (k, slot) in b.entries.iter().enumerate() {
                let w = u64::from_le_bytes(bucket[k * 8..k * 8 + 8].try_into().unwrap_or_default());
                slot.store(w, Ordering::Relaxed);
            }
        }
    }

    /// Adds a dumped overflow entry to bucket `i` of a fresh index (recovery).
    ///
    /// # Errors
    /// [`IndexBusy::Full`] when no overflow bucket can be allocated.
    pub fn restore_overflow(&self, i: usize, entry: u64) -> Result<(), IndexBusy> {
        let table = self.table(self.state.load(Ordering::Acquire) >> 8);
        table.insert_exclusive(i, HashBucketEntry::from_raw(entry), &self.pool)
    }

    /// Starts loading `hash`'s bucket into the cache (a hint; skipped while growing).
    #[inline]
    pub fn prefetch(&self, hash: KeyHash) {
        let s = self.state.load(Ordering::Acquire);
        if s & 0xff == REST {
            self.table(s >> 8).prefetch(hash);
        }
    }

    /// Whether the index is in the middle of growing.
    #[must_use]
    pub fn is_growing(&self) -> bool {
        self.state.load(Ordering::Acquire) & 0xff != REST
    }
}

impl HashIndex for MemIndex {
    #[inline(always)]
    fn find_entry(&self, hash: KeyHash) -> Result<Option<EntrySlot<'_>>, IndexBusy> {
        Ok(self.table_for(hash)?.find_entry(hash, &self.pool))
    }

    fn find_or_create_entry(&self, hash: KeyHash) -> Result<EntrySlot<'_>, IndexBusy> {
        self.table_for(hash)?.find_or_create_entry(hash, &self.pool)
    }
}

impl Drop for MemIndex {
    fn drop(&mut self) {
        // Pending retire actions hold raw pointers to tables; run them first.
        self.epoch.drain();
        let s = self.state.load(Ordering::Acquire);
        let v = (s >> 8) as usize & 1;
        for (i, t) in self.tables.iter().enumerate() {
            let p = t.load(StdOrdering::Acquire);
            if !p.is_null() && (i == v || s & 0xff != REST) {
                // SAFETY: &mut self: nobody else can reach the tables; each is dropped once.
                drop(unsafe { Box::from_raw(p) });
            }
        }
        let g = self.grow.load(StdOrdering::Acquire);
        if !g.is_null() && s & 0xff != REST {
            // SAFETY: as above; in REST the grow state was already freed by its action.
            drop(unsafe { Box::from_raw(g) });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::core::address::Address;

    #[test]
    fn growth_keeps_every_entry_while_threads_insert() {
        let epoch = Arc::new(LightEpoch::new());
        let index = Arc::new(MemIndex::new(4, epoch.clone()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let (index, epoch, stop) = (index.clone(), epoch.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(StdOrdering::Relaxed) || n < 5_000 {
                        let key = t << 32 | n;
                        let g = epoch.protect().unwrap();
                        match index.find_or_create_entry(KeyHash::new(key)) {
                            Ok(mut e) => {
                                let _ = e.try_update(Address::new(64 + key % (1 << 40)));
                                n += 1;
                            }
                            Err(IndexBusy::RetryLater) => g.refresh(),
                            Err(IndexBusy::Full) => panic!("index full"),
                        }
                    }
                    n
                })
            })
            .collect();
        assert!(index.grow().unwrap());
        assert!(index.grow().unwrap());
        stop.store(true, StdOrdering::Relaxed);
        let counts: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(index.bits(), 6);
        let _g = epoch.protect().unwrap();
        for (t, &n) in counts.iter().enumerate() {
            for i in 0..n {
                let key = (t as u64) << 32 | i;
                let e = index.find_entry(KeyHash::new(key)).unwrap();
                // Same-tag keys share an entry, so only presence is certain, not the address.
                assert!(e.is_some(), "key {key} lost by growth");
            }
        }
    }
}
