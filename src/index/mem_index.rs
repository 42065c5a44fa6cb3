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
//!    has started it, waiting if somebody is on it). Splitting old bucket `i` puts each of its
//!    entries into new bucket `i`, `i + old_size`, or both, as the [`SplitChains`] sorter
//!    (the engine, which reads the keys in the log) says; without one, or where the sorter
//!    cannot tell, into both: the chain behind an entry may hold keys of either new bucket, and
//!    lookups compare full keys, so both copies are correct. Each new bucket keeps at most one
//!    entry per tag because the old chain did. Whoever splits is protected on the epoch (the
//!    grower takes a protection per chunk), so the sorter can read the log.
//! 4. When every chunk is split, the state becomes `REST(1-v)` and an epoch action frees table `v`
//!    and its overflow buckets once no thread can still be reading them.
//! 5. The next growth publishes nothing before that action has run. An operation that read
//!    `IN_PROGRESS(v)` loads the table slots and the grow state after that read; the next
//!    growth's `PREPARE` stores new ones into the same slots, so an operation still between
//!    the two would mix two growths' tables and split state (clearing buckets of the live table
//!    as the "new" half of a chunk it believed unsplit). The action waits for every such
//!    operation, so waiting for it (`Accounts::retiring`) rules this out.
//!
//! Operations call the index once per attempt, inside one epoch protection, and never refresh in
//! the middle of an attempt, so the table an attempt uses cannot be retired under it.
//!
//! # Memory accounting
//! The index counts the bytes of its live tables (the new one from its allocation, the old one
//! until its epoch action frees it) and the overflow buckets of retired tables not yet freed,
//! so that growth decisions and a memory budget see what is really held. With a budget
//! ([`MemIndex::set_memory_limit`]), operations allocate no overflow page past the index's
//! share (they get `IndexBusy::Full`); a split may (the growth's budget check paid for it).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering as StdOrdering};
use std::sync::{Arc, OnceLock};

use crate::core::light_epoch::{LightEpoch, Protected};
use crate::index::definitions::{EntrySlot, HashIndex, IndexBusy, KeyHash};
use crate::index::hash_bucket::{HashBucket, HashBucketEntry};
use crate::index::hash_table::{HashTable, OverflowPool};
use crate::index::split::{Split, SplitChains};
use crate::sync::{AtomicU64, Ordering};

const REST: u64 = 0;
const PREPARE: u64 = 1;
const IN_PROGRESS: u64 = 2;
/// Old buckets split together as one unit of growth work.
const CHUNK_BUCKETS: usize = 1024;

const TODO: u8 = 0;
const BUSY: u8 = 1;
const DONE: u8 = 2;

/// The state word: phase (bits 0..8), version `v` (bit 8: table `v` is current, or the old one
/// while growing) and log2 of table `v`'s bucket count (bits 16..). The sizes live in the word so
/// that figures such as [`MemIndex::bits`] need no table, hence no epoch protection.
fn state(phase: u64, version: u64, bits: u32) -> u64 {
    phase | (version & 1) << 8 | u64::from(bits) << 16
}

fn phase_of(s: u64) -> u64 {
    s & 0xff
}

fn version_of(s: u64) -> u64 {
    (s >> 8) & 1
}

fn bits_of(s: u64) -> u32 {
    (s >> 16) as u32
}

/// Bytes of a table of `2^bits` buckets.
fn table_bytes(bits: u32) -> u64 {
    (std::mem::size_of::<HashBucket>() as u64) << bits
}

struct Grow {
    chunks: Box<[AtomicU8]>,
    done: AtomicU64,
    /// Overflow buckets of the old table, counted by the splits.
    old_overflow: AtomicU64,
}

/// What the index holds, shared with the epoch actions that free retired tables.
struct Accounts {
    /// Bytes of the live tables: the current one and, from a growth's start until its action
    /// frees the old one, both.
    table_bytes: AtomicU64,
    /// Overflow buckets of retired tables that their actions have not freed yet.
    retired_overflow: AtomicU64,
    /// Bytes the index may hold (its share of a memory budget); `u64::MAX` for no limit.
    limit: AtomicU64,
    /// A growth's retiring action (freeing its old table and grow state) has not run yet.
    retiring: std::sync::atomic::AtomicBool,
}

impl Accounts {
    /// Tells the pool how many overflow pages operations may hold besides the tables.
    fn update_pool_limit(&self, pool: &OverflowPool) {
        let limit = self.limit.load(Ordering::Acquire);
        let pages = if limit == u64::MAX {
            u64::MAX
        } else {
            limit.saturating_sub(self.table_bytes.load(Ordering::Acquire))
                / OverflowPool::PAGE_BYTES as u64
        };
        pool.set_page_limit(pages);
    }
}

/// A borrowed protection as a sized value, so that any `&G` (sized or not) can be passed on to
/// a [`SplitChains`] as `&dyn Protected`.
struct Under<'a, G: ?Sized>(&'a G, PhantomData<*const ()>);

// SAFETY: an `Under` borrows a `G`, a protection of the calling thread on `g.epoch()`, for its
// whole life and reaches nothing that could end it; like every `Protected` it is neither `Send`
// nor `Sync` (the raw-pointer marker).
unsafe impl<G: Protected + ?Sized> Protected for Under<'_, G> {
    fn epoch(&self) -> &LightEpoch {
        self.0.epoch()
    }
}

/// The in-memory index: a hash table that doubles online.
///
/// The tables are freed by epoch actions, so everything that reads them takes a guard of the
/// index's epoch (`&impl Protected`) and returns references that borrow from it (see
/// [`HashIndex`]); recovery, which builds an index before any other thread can see it, uses the
/// `&mut self` methods instead (exclusive access is the proof there).
pub struct MemIndex {
    tables: [AtomicPtr<HashTable>; 2],
    state: AtomicU64,
    grow: AtomicPtr<Grow>,
    pool: Arc<OverflowPool>,
    epoch: Arc<LightEpoch>,
    accounts: Arc<Accounts>,
    /// Overflow buckets of the current table right after the growth that made it (0 for the
    /// first table): what growth could not remove, so not a reason to grow again.
    baseline: AtomicU64,
    /// Sorts chains between the halves of a split (set once by the engine).
    splitter: OnceLock<Box<dyn SplitChains>>,
}

impl MemIndex {
    /// An index of `2^bits` buckets, retiring memory through `epoch`.
    #[must_use]
    pub fn new(bits: u32, epoch: Arc<LightEpoch>) -> Self {
        let t = Box::into_raw(Box::new(HashTable::new(bits)));
        Self {
            tables: [AtomicPtr::new(t), AtomicPtr::new(std::ptr::null_mut())],
            state: AtomicU64::new(state(REST, 0, bits)),
            grow: AtomicPtr::new(std::ptr::null_mut()),
            pool: Arc::new(OverflowPool::new()),
            epoch,
            accounts: Arc::new(Accounts {
                table_bytes: AtomicU64::new(table_bytes(bits)),
                retired_overflow: AtomicU64::new(0),
                limit: AtomicU64::new(u64::MAX),
                retiring: std::sync::atomic::AtomicBool::new(false),
            }),
            baseline: AtomicU64::new(0),
            splitter: OnceLock::new(),
        }
    }

    /// Installs the sorter growth splits chains with (once; later calls are ignored).
    pub fn set_splitter(&self, splitter: Box<dyn SplitChains>) {
        let _ = self.splitter.set(splitter);
    }

    /// Bounds the index's memory (tables and overflow buckets) to `bytes`, `None` for no
    /// bound: operations then get `IndexBusy::Full` rather than allocate an overflow page past
    /// it. Growth does not check it; its caller does, before growing.
    pub fn set_memory_limit(&self, bytes: Option<u64>) {
        self.accounts
            .limit
            .store(bytes.unwrap_or(u64::MAX), Ordering::Release);
        self.accounts.update_pool_limit(&self.pool);
    }

    /// Table `version`, without a witness.
    ///
    /// # Safety
    /// For as long as the reference is used, the table must not be retired: the caller is epoch
    /// protected on `self.epoch` and read a state naming `version` under that protection, or is
    /// the grower (which alone retires tables), or has `&mut self`.
    #[inline(always)]
    unsafe fn table_unguarded(&self, version: u64) -> &HashTable {
        // SAFETY: both pointers a visible state names are non-null; the caller keeps the table
        // from being retired (see above), and a retired table is freed only by an epoch action.
        unsafe { &*self.tables[version as usize & 1].load(StdOrdering::Acquire) }
    }

    /// Panics unless `g` protects this index's epoch (a guard of another epoch would not keep
    /// this index's tables alive).
    #[inline(always)]
    fn check<G: Protected + ?Sized>(&self, g: &G) {
        assert!(
            std::ptr::eq(g.epoch(), Arc::as_ptr(&self.epoch)),
            "an index read under a guard of another epoch"
        );
    }

    /// Table `version` of a state read under `g`.
    #[inline(always)]
    fn table<'g, G: Protected + ?Sized>(&'g self, g: &'g G, version: u64) -> &'g HashTable {
        self.check(g);
        // SAFETY: the caller read the state naming `version` while protected by `g`, which
        // lives for 'g: the action that retires the table waits for it (growth step 4).
        unsafe { self.table_unguarded(version) }
    }

    #[inline(always)]
    fn table_for<'g, G: Protected + ?Sized>(
        &'g self,
        g: &'g G,
        hash: KeyHash,
    ) -> Result<&'g HashTable, IndexBusy> {
        let s = self.state.load(Ordering::Acquire);
        if phase_of(s) == REST {
            return Ok(self.table(g, version_of(s)));
        }
        self.table_while_growing(g, s, hash)
    }

    /// [`MemIndex::table_for`] outside REST (out of line: operations rarely meet growth).
    #[cold]
    #[inline(never)]
    fn table_while_growing<'g, G: Protected + ?Sized>(
        &'g self,
        g: &'g G,
        s: u64,
        hash: KeyHash,
    ) -> Result<&'g HashTable, IndexBusy> {
        let (phase, v) = (phase_of(s), version_of(s));
        match phase {
            REST => Ok(self.table(g, v)),
            PREPARE => Err(IndexBusy::RetryLater),
            _ => {
                let old = self.table(g, v);
                let new = self.table(g, 1 - v);
                // SAFETY: IN_PROGRESS was read under `g`; the grow state is freed with the old
                // table, by the same action, which waits for `g`.
                let grow = unsafe { self.grow_unguarded() };
                let chunk = hash.bucket(old.bits()) / CHUNK_BUCKETS;
                let under = Under(g, PhantomData);
                self.ensure_split(grow, old, new, chunk, Some(&under))?;
                Ok(new)
            }
        }
    }

    /// The grow state.
    ///
    /// # Safety
    /// As [`MemIndex::table_unguarded`], for a state that is `IN_PROGRESS`.
    unsafe fn grow_unguarded(&self) -> &Grow {
        // SAFETY: non-null while IN_PROGRESS is visible; freed by an epoch action after REST,
        // which the caller's protection (or role as the grower) holds off.
        unsafe { &*self.grow.load(StdOrdering::Acquire) }
    }

    fn ensure_split(
        &self,
        grow: &Grow,
        old: &HashTable,
        new: &HashTable,
        chunk: usize,
        g: Option<&dyn Protected>,
    ) -> Result<(), IndexBusy> {
        let c = &grow.chunks[chunk];
        let mut round = 0;
        loop {
            match c.load(StdOrdering::Acquire) {
                DONE => return Ok(()),
                TODO if c
                    .compare_exchange(TODO, BUSY, StdOrdering::AcqRel, StdOrdering::Acquire)
                    .is_ok() =>
                {
                    // Back to TODO unless the split completes: after an error, and also if the
                    // split unwinds, so that no other thread spins forever on a BUSY chunk.
                    let claim = Unclaim(c);
                    let first = chunk * CHUNK_BUCKETS;
                    let last = (first + CHUNK_BUCKETS).min(old.len());
                    let mut old_overflow = 0;
                    let result = (first..last).try_for_each(|i| {
                        old_overflow += old.overflow_count(i, &self.pool);
                        self.split_bucket(old, new, i, g)
                    });
                    result?;
                    std::mem::forget(claim);
                    grow.old_overflow.fetch_add(old_overflow, Ordering::Relaxed);
                    c.store(DONE, StdOrdering::Release);
                    grow.done.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
                _ => crate::sync::backoff(&mut round),
            }
        }
    }

    /// Splits old bucket `i` into new buckets `i` and `i + old.len()`, sorting chains when a
    /// sorter is installed and the caller is protected (`g`).
    fn split_bucket(
        &self,
        old: &HashTable,
        new: &HashTable,
        i: usize,
        g: Option<&dyn Protected>,
    ) -> Result<(), IndexBusy> {
        let mut entries = Vec::with_capacity(crate::index::hash_bucket::ENTRIES);
        let splitter = self.splitter.get();
        old.for_each_entry(i, &self.pool, |e| {
            let e = match splitter {
                Some(s) if e.is_cached() => s.uncache(e),
                _ => e,
            };
            entries.push(Split::both(e));
        });
        if let (Some(g), Some(sorter)) = (g, splitter) {
            sorter.sort(g, i, old.bits(), &mut entries);
        }
        // Clear first so a retried split (after Full) does not duplicate entries.
        for j in [i, i + old.len()] {
            new.clear_exclusive(j, &self.pool);
        }
        for split in entries {
            for (half, to) in split.to.into_iter().enumerate() {
                if let Some(address) = to {
                    let entry = HashBucketEntry::new(address, split.entry.tag(), false);
                    new.insert_exclusive(i + half * old.len(), entry, &self.pool)?;
                }
            }
        }
        Ok(())
    }

    /// Doubles the table while other threads keep operating. Returns `false` if another growth
    /// was already running (this call then waits for it). The calling thread must not be
    /// protected on the index's epoch: the growth waits for every protected thread (the store's
    /// `grow_index` refuses such a call).
    ///
    /// # Errors
    /// [`IndexBusy::Full`] if overflow buckets run out while splitting (the growth is then
    /// finished by later operations that touch the unsplit chunks).
    pub fn grow(&self) -> Result<bool, IndexBusy> {
        let s = self.state.load(Ordering::Acquire);
        let (phase, v, bits) = (phase_of(s), version_of(s), bits_of(s));
        if phase != REST {
            self.wait_rest();
            return Ok(false);
        }
        // Claim the growth first: in PREPARE no operation reads the second table slot or the
        // grow state, so they can be published after the claim.
        if self
            .state
            .compare_exchange(
                s,
                state(PREPARE, v, bits),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            self.wait_rest();
            return Ok(false);
        }
        // An operation that read the previous growth's IN_PROGRESS may still be about to load
        // its tables and grow state, which the stores below would replace under it: wait
        // until that growth's retiring action ran, i.e. until every such operation is gone.
        let mut round = 0;
        while self.accounts.retiring.load(StdOrdering::Acquire) {
            self.epoch.drain();
            crate::sync::backoff(&mut round);
        }
        // SAFETY: this thread is the grower, and only the grower retires a table (step 4).
        let old = unsafe { self.table_unguarded(v) };
        let new = Box::into_raw(Box::new(HashTable::new(bits + 1)));
        self.accounts
            .table_bytes
            .fetch_add(table_bytes(bits + 1), Ordering::AcqRel);
        self.accounts.update_pool_limit(&self.pool);
        let chunks = old.len().div_ceil(CHUNK_BUCKETS);
        let g = Box::into_raw(Box::new(Grow {
            chunks: (0..chunks).map(|_| AtomicU8::new(TODO)).collect(),
            done: AtomicU64::new(0),
            old_overflow: AtomicU64::new(0),
        }));
        self.tables[1 - v as usize].store(new, StdOrdering::Release);
        self.grow.store(g, StdOrdering::Release);
        let me = self as *const Self as usize;
        self.epoch.bump_epoch(move || {
            // SAFETY: `grow` holds `&self` until this action has run: the loop below spins
            // (draining the epoch) until the IN_PROGRESS it stores is visible, and only this
            // action stores it; so `me` is valid when this runs.
            let this = unsafe { &*(me as *const MemIndex) };
            this.state
                .store(state(IN_PROGRESS, v, bits), Ordering::Release);
        });
        round = 0;
        while phase_of(self.state.load(Ordering::Acquire)) != IN_PROGRESS {
            self.epoch.drain();
            crate::sync::backoff(&mut round);
        }
        // SAFETY: `new` is published and stays alive until a later growth retires it.
        let new_ref = unsafe { &*new };
        // SAFETY: the grower frees the grow state itself, below.
        let g_ref = unsafe { self.grow_unguarded() };
        for c in 0..chunks {
            // A protection per chunk, so the sorter may read the log (without one, which only
            // a full epoch table refuses, the chunk is split by copying).
            let guard = self.epoch.protect().ok();
            let under = guard.as_ref().map(|g| g as &dyn Protected);
            self.ensure_split(g_ref, old, new_ref, c, under)?;
        }
        while g_ref.done.load(Ordering::Acquire) < chunks as u64 {
            crate::sync::backoff(&mut round);
        }
        // The old table's overflow buckets stay allocated until the action below frees them;
        // what is allocated beyond them belongs to the new table.
        let old_overflow = g_ref.old_overflow.load(Ordering::Acquire);
        let retired = self
            .accounts
            .retired_overflow
            .fetch_add(old_overflow, Ordering::AcqRel)
            + old_overflow;
        self.state
            .store(state(REST, 1 - v, bits + 1), Ordering::Release);
        self.baseline.store(
            self.pool.allocated().saturating_sub(retired),
            Ordering::Release,
        );
        let old_ptr = self.tables[v as usize].load(StdOrdering::Acquire) as usize;
        let pool = self.pool.clone();
        let accounts = self.accounts.clone();
        let g = g as usize;
        self.accounts.retiring.store(true, StdOrdering::Release);
        self.epoch.bump_epoch(move || {
            // SAFETY: no thread can reach the old table or the grow state any more: REST(1-v)
            // was published before this bump, and every thread that might have read the older
            // state held the previous epoch, which this action waits out.
            let old = unsafe { Box::from_raw(old_ptr as *mut HashTable) };
            for i in 0..old.len() {
                // Collected first: freeing a bucket may reuse its link.
                let chain: Vec<u64> = old.overflow_chain(i, &pool).collect();
                for o in chain {
                    pool.free(o);
                }
            }
            accounts
                .retired_overflow
                .fetch_sub(old_overflow, Ordering::AcqRel);
            accounts
                .table_bytes
                .fetch_sub(table_bytes(bits), Ordering::AcqRel);
            accounts.update_pool_limit(&pool);
            drop(old);
            // SAFETY: as above, the grow state is unreachable.
            drop(unsafe { Box::from_raw(g as *mut Grow) });
            accounts.retiring.store(false, StdOrdering::Release);
        });
        self.epoch.drain();
        Ok(true)
    }

    fn wait_rest(&self) {
        let mut round = 0;
        while phase_of(self.state.load(Ordering::Acquire)) != REST {
            self.epoch.drain();
            crate::sync::backoff(&mut round);
        }
    }

    /// log2 of the current bucket count (the old table's while growing). Reads no table, so it
    /// needs no protection.
    #[must_use]
    pub fn bits(&self) -> u32 {
        bits_of(self.state.load(Ordering::Acquire))
    }

    /// Bytes of index memory: the tables and the overflow buckets. Reads no table (the sizes
    /// are counted), so it needs no protection.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.table_bytes() as usize + self.overflow_bytes() as usize
    }

    /// Bytes of the live tables: the current one, and while growing (until the old one is
    /// freed) both.
    #[must_use]
    pub fn table_bytes(&self) -> u64 {
        self.accounts.table_bytes.load(Ordering::Acquire)
    }

    /// [`MemIndex::bits`] and [`MemIndex::table_bytes`] as of one moment: the table bytes are
    /// between one and three times the size of a table of the bits returned.
    #[must_use]
    pub fn sizes(&self) -> (u32, u64) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            let bytes = self.table_bytes();
            if self.state.load(Ordering::Acquire) == s {
                return (bits_of(s), bytes);
            }
        }
    }

    /// Bytes of overflow bucket memory held (its pages are kept until the index is dropped,
    /// and reused).
    #[must_use]
    pub fn overflow_bytes(&self) -> u64 {
        self.pool.memory_bytes() as u64
    }

    /// Overflow buckets in use (including a retired table's, until they are freed).
    #[must_use]
    pub fn overflow_buckets(&self) -> u64 {
        self.pool.allocated()
    }

    /// Overflow buckets the current table gained since the growth that made it. A growth
    /// cannot remove every overflow bucket (entries whose chains it cannot sort are copied to
    /// both halves), so automatic growth counts only these.
    #[must_use]
    pub fn overflow_since_growth(&self) -> u64 {
        let current = self
            .pool
            .allocated()
            .saturating_sub(self.accounts.retired_overflow.load(Ordering::Acquire));
        current.saturating_sub(self.baseline.load(Ordering::Acquire))
    }

    /// Unparks `thread` when an operation's allocation makes [`MemIndex::overflow_since_growth`]
    /// exceed `limit` (from the counts as they are now; a growth or a freed table makes the
    /// watch stale, so the watcher must also look by itself now and then). `None` turns it off.
    pub fn watch_overflow(&self, limit: Option<u64>, thread: &std::thread::Thread) {
        let at = limit.map_or(u64::MAX, |limit| {
            self.accounts
                .retired_overflow
                .load(Ordering::Acquire)
                .saturating_add(self.baseline.load(Ordering::Acquire))
                .saturating_add(limit)
                .saturating_add(1)
        });
        self.pool.watch(at, thread);
    }

    /// A fuzzy dump of the current table (checkpoint): hands `out` the bucket image in chunks
    /// (each bucket's 7 entries as little-endian words, tentative entries cleared, and a zero
    /// overflow word), then returns the overflow-chain entries as `(bucket, entry)` pairs. Each
    /// chunk is read under an epoch protection of its own, taken here (none is held while `out`
    /// runs); the index must not be growing (the caller excludes growth). Every entry passes
    /// through `resolve` under that protection (the engine writes a read-cache entry as its
    /// log address).
    ///
    /// # Errors
    /// The first error of `out`; [`Error::TooManyThreads`](crate::core::status::Error) if the
    /// thread cannot be protected.
    pub fn dump<E: From<crate::core::status::Error>>(
        &self,
        resolve: impl Fn(HashBucketEntry) -> Result<HashBucketEntry, E>,
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
                let g = self.epoch.protect()?;
                let s = self.state.load(Ordering::Acquire);
                debug_assert!(
                    phase_of(s) == REST && bits_of(s) == bits,
                    "dump while growing"
                );
                let table = self.table(&g, version_of(s));
                for i in first..first + count {
                    let b = table.bucket(i);
                    let at = (i - first) * 64;
                    for (k, slot) in b.entries.iter().enumerate() {
                        let e = HashBucketEntry::from_raw(slot.load(Ordering::Acquire));
                        let w = if e.tentative() || e.is_empty() {
                            0
                        } else {
                            resolve(e)?.raw()
                        };
                        image[at + k * 8..at + k * 8 + 8].copy_from_slice(&w.to_le_bytes());
                    }
                    image[at + 56..at + 64].fill(0);
                    if b.overflow.load(Ordering::Acquire) != 0 {
                        for o in table.overflow_chain(i, &self.pool) {
                            for slot in &self.pool.get(o).entries {
                                let e = HashBucketEntry::from_raw(slot.load(Ordering::Acquire));
                                if !e.is_empty() && !e.tentative() {
                                    overflow.push((i as u64, resolve(e)?.raw()));
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

    /// Frees every entry `dead` says leads nowhere (R2Kv: a chain wholly below the hot log's
    /// `begin`, moved to the cold tier), so that the index holds the hot set rather than every
    /// key ever written (FASTER cleans its index after moving the log's begin the same way).
    /// Each entry is freed by a CAS from the value judged, so an operation that installed
    /// something else meanwhile wins; one that found the entry before and CASes it later fails
    /// its CAS and looks again. Tentative entries are left alone (an insertion owns them).
    /// Stops early, without error, when the index starts growing. Returns the entries freed.
    ///
    /// # Errors
    /// [`crate::Error`] when the epoch table is full.
    pub fn sweep(
        &self,
        dead: impl Fn(HashBucketEntry) -> bool,
    ) -> crate::core::status::Result<u64> {
        const CHUNK: usize = 16 * 1024;
        let bits = self.bits();
        let n = 1usize << bits;
        let mut freed = 0;
        let mut first = 0;
        let free = |slot: &AtomicU64, freed: &mut u64| {
            let e = HashBucketEntry::from_raw(slot.load(Ordering::Acquire));
            if !e.is_empty()
                && !e.tentative()
                && dead(e)
                && slot
                    .compare_exchange(e.raw(), 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                *freed += 1;
            }
        };
        while first < n {
            let count = CHUNK.min(n - first);
            let g = self.epoch.protect()?;
            let s = self.state.load(Ordering::Acquire);
            if phase_of(s) != REST || bits_of(s) != bits {
                break;
            }
            let table = self.table(&g, version_of(s));
            for i in first..first + count {
                let b = table.bucket(i);
                for slot in &b.entries {
                    free(slot, &mut freed);
                }
                if b.overflow.load(Ordering::Acquire) != 0 {
                    for o in table.overflow_chain(i, &self.pool) {
                        for slot in &self.pool.get(o).entries {
                            free(slot, &mut freed);
                        }
                    }
                }
            }
            first += count;
        }
        Ok(freed)
    }

    /// Checks an entry read from a dump (see [`check_dumped`]).
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn check_dumped_entry(raw: u64) -> Result<(), &'static str> {
        check_dumped(raw)
    }

    /// The current table of an index this thread has to itself.
    fn table_mut(&mut self) -> &HashTable {
        let v = version_of(self.state.load(Ordering::Acquire));
        // SAFETY: `&mut self` for the reference's lifetime: no growth can start, hence no
        // retirement of the current table.
        unsafe { self.table_unguarded(v) }
    }

    /// Loads buckets `first..` of a fresh index (recovery, before any other thread can use it)
    /// from a dump image chunk.
    ///
    /// # Errors
    /// If an entry is one a dump never writes (tentative, or naming the read cache).
    pub fn restore_buckets(&mut self, first: usize, image: &[u8]) -> Result<(), &'static str> {
        let table = self.table_mut();
        for (n, bucket) in image.chunks_exact(64).enumerate() {
            let b = table.bucket(first + n);
            for (k, slot) in b.entries.iter().enumerate() {
                let w = u64::from_le_bytes(bucket[k * 8..k * 8 + 8].try_into().unwrap_or_default());
                check_dumped(w)?;
                slot.store(w, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Adds a dumped overflow entry to bucket `i` of a fresh index (recovery).
    ///
    /// # Errors
    /// [`IndexBusy::Full`] when no overflow bucket can be allocated.
    pub fn restore_overflow(&mut self, i: usize, entry: u64) -> Result<(), IndexBusy> {
        debug_assert!(check_dumped(entry).is_ok(), "checked by the caller");
        let pool = self.pool.clone();
        self.table_mut()
            .insert_exclusive(i, HashBucketEntry::from_raw(entry), &pool)
    }

    /// [`HashIndex::find_or_create_entry`] for an index this thread has to itself (recovery's
    /// replay): `&mut self` is the proof that no table can be retired meanwhile.
    ///
    /// # Errors
    /// [`IndexBusy::Full`] when no overflow bucket can be allocated.
    pub fn find_or_create_entry_exclusive(
        &mut self,
        hash: KeyHash,
    ) -> Result<EntrySlot<'_>, IndexBusy> {
        let v = version_of(self.state.load(Ordering::Acquire));
        // SAFETY: `&mut self` for the entry's lifetime: no growth can start, hence no
        // retirement of the current table.
        let table = unsafe { self.table_unguarded(v) };
        table.find_or_create_entry(hash, &self.pool)
    }

    /// Starts loading `hash`'s bucket into the cache (a hint; skipped while growing).
    #[inline]
    pub fn prefetch<G: Protected + ?Sized>(&self, g: &G, hash: KeyHash) {
        let s = self.state.load(Ordering::Acquire);
        if phase_of(s) == REST {
            self.table(g, version_of(s)).prefetch(hash);
        }
    }

    /// Whether the index is in the middle of growing.
    #[must_use]
    pub fn is_growing(&self) -> bool {
        phase_of(self.state.load(Ordering::Acquire)) != REST
    }
}

impl HashIndex for MemIndex {
    #[inline(always)]
    fn find_entry<'g, G: Protected + ?Sized>(
        &'g self,
        g: &'g G,
        hash: KeyHash,
    ) -> Result<Option<EntrySlot<'g>>, IndexBusy> {
        Ok(self.table_for(g, hash)?.find_entry(hash, &self.pool))
    }

    fn find_or_create_entry<'g, G: Protected + ?Sized>(
        &'g self,
        g: &'g G,
        hash: KeyHash,
    ) -> Result<EntrySlot<'g>, IndexBusy> {
        self.table_for(g, hash)?
            .find_or_create_entry(hash, &self.pool)
    }
}

impl Drop for MemIndex {
    fn drop(&mut self) {
        // Pending retire actions hold raw pointers to tables; run them first.
        self.epoch.drain();
        let s = self.state.load(Ordering::Acquire);
        let v = version_of(s) as usize;
        for (i, t) in self.tables.iter().enumerate() {
            let p = t.load(StdOrdering::Acquire);
            if !p.is_null() && (i == v || phase_of(s) != REST) {
                // SAFETY: &mut self: nobody else can reach the tables; each is dropped once.
                drop(unsafe { Box::from_raw(p) });
            }
        }
        let g = self.grow.load(StdOrdering::Acquire);
        if !g.is_null() && phase_of(s) != REST {
            // SAFETY: as above; in REST the grow state was already freed by its action.
            drop(unsafe { Box::from_raw(g) });
        }
    }
}

/// A claimed split chunk, put back to TODO when dropped (the split failed or unwound).
struct Unclaim<'a>(&'a AtomicU8);

impl Drop for Unclaim<'_> {
    fn drop(&mut self) {
        self.0.store(TODO, StdOrdering::Release);
    }
}

/// A dumped entry is empty or a log entry: never tentative, never naming the read cache.
fn check_dumped(raw: u64) -> Result<(), &'static str> {
    let e = HashBucketEntry::from_raw(raw);
    if e.tentative() || e.is_cached() {
        return Err("an index entry no checkpoint writes (tentative or read-cache)");
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::core::address::Address;

    #[test]
    #[should_panic(expected = "another epoch")]
    fn a_guard_of_another_epoch_is_refused() {
        let index = MemIndex::new(4, Arc::new(LightEpoch::new()));
        let other = LightEpoch::new();
        let g = other.protect().unwrap();
        let _ = index.find_entry(&g, KeyHash::new(1));
    }

    #[test]
    fn sizes_come_from_the_state_word() {
        let epoch = Arc::new(LightEpoch::new());
        let mut index = MemIndex::new(3, epoch.clone());
        assert_eq!((index.bits(), index.memory_bytes()), (3, 8 * 64));
        let mut e = index
            .find_or_create_entry_exclusive(KeyHash::new(9))
            .unwrap();
        e.try_update(Address::new(64)).unwrap();
        assert!(index.grow().unwrap());
        assert_eq!((index.bits(), index.memory_bytes()), (4, 16 * 64));
        let g = epoch.protect().unwrap();
        let e = index.find_entry(&g, KeyHash::new(9)).unwrap().unwrap();
        assert_eq!(e.entry.address(), Address::new(64));
    }

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
                        let mut g = epoch.protect().unwrap();
                        match index.find_or_create_entry(&g, KeyHash::new(key)) {
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
        let g = epoch.protect().unwrap();
        for (t, &n) in counts.iter().enumerate() {
            for i in 0..n {
                let key = (t as u64) << 32 | i;
                let e = index.find_entry(&g, KeyHash::new(key)).unwrap();
                // Same-tag keys share an entry, so only presence is certain, not the address.
                assert!(e.is_some(), "key {key} lost by growth");
            }
        }
    }
}
