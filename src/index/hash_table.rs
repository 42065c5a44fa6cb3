//! One table of `2^bits` hash buckets with FASTER's latch-free two-phase entry insert.
//!
//! # Invariants
//! - Within one bucket chain (bucket plus overflow buckets) at most one non-tentative entry
//!   carries a given tag. The two-phase insert keeps it: CAS a free slot to a *tentative* entry,
//!   rescan the chain for any other entry with the tag, back out if there is one, else clear the
//!   tentative bit. Two racing inserters may both back out and retry; neither can both succeed.
//! - Lookups ignore tentative entries.
//! - An overflow bucket, once linked, stays linked while the table lives; it goes back to the
//!   allocator only when the whole table is retired (see `mem_index`).

use std::ptr::NonNull;

use crate::core::address::Address;
use crate::core::alloc::AlignedBuf;
use crate::core::malloc_fixed_page_size::MallocFixedPageSize;
use crate::index::definitions::{EntrySlot, IndexBusy, KeyHash};
use crate::index::hash_bucket::{HashBucket, HashBucketEntry};
use crate::sync::{AtomicU64, Ordering};

/// Overflow buckets, shared by the tables of one index.
pub type OverflowPool = MallocFixedPageSize<HashBucket>;

/// A table of `2^bits` buckets, zero-initialised (all entries free).
pub struct HashTable {
    buckets: NonNull<HashBucket>,
    /// Owns the bucket memory `buckets` points into.
    _memory: AlignedBuf,
    bits: u32,
}

// SAFETY: the table owns its bucket array; buckets are made of atomics, so shared access from
// many threads is what they are for.
unsafe impl Send for HashTable {}
// SAFETY: as above.
unsafe impl Sync for HashTable {}

impl HashTable {
    /// A table of `2^bits` free buckets (zeroed memory: the OS hands it out lazily).
    ///
    /// # Panics
    /// On allocation failure, like `Vec`.
    #[must_use]
    pub fn new(bits: u32) -> Self {
        let bytes = std::mem::size_of::<HashBucket>() << bits;
        // All-zero bytes are a valid HashBucket (atomics), and AlignedBuf hands out zeroed,
        // lazily faulted, huge-page-advised memory for large tables.
        let memory = AlignedBuf::zeroed(bytes, std::mem::align_of::<HashBucket>());
        let buckets =
            NonNull::new(memory.as_ptr().cast::<HashBucket>().cast_mut()).expect("non-null buffer");
        Self {
            buckets,
            _memory: memory,
            bits,
        }
    }

    /// log2 of the bucket count.
    #[must_use]
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Number of buckets.
    #[must_use]
    pub fn len(&self) -> usize {
        1 << self.bits
    }

    /// Never empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes of bucket memory.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.len() * std::mem::size_of::<HashBucket>()
    }

    /// Bucket `i`.
    #[must_use]
    #[inline]
    pub fn bucket(&self, i: usize) -> &HashBucket {
        assert!(i < self.len());
        // SAFETY: i is in bounds of the 2^bits buckets this table owns for its lifetime.
        unsafe { &*self.buckets.as_ptr().add(i) }
    }

    /// Asks the CPU to start loading the bucket of `hash` (a hint; never faults).
    #[inline]
    pub fn prefetch(&self, hash: KeyHash) {
        crate::core::alloc::prefetch(
            self.bucket(hash.bucket(self.bits)) as *const HashBucket as *const u8
        );
    }

    /// Visits every slot of bucket `i`'s chain, in order, until `f` returns `Some`.
    #[inline(always)]
    fn scan<'a, R>(
        &'a self,
        i: usize,
        pool: &'a OverflowPool,
        mut f: impl FnMut(&'a AtomicU64, HashBucketEntry) -> Option<R>,
    ) -> (Option<R>, &'a HashBucket) {
        let mut b = self.bucket(i);
        loop {
            for slot in &b.entries {
                let e = HashBucketEntry::from_raw(slot.load(Ordering::Acquire));
                if let Some(r) = f(slot, e) {
                    return (Some(r), b);
                }
            }
            match b.overflow.load(Ordering::Acquire) {
                0 => return (None, b),
                next => b = pool.get(next),
            }
        }
    }

    /// The non-tentative entry for `hash`'s tag.
    #[must_use]
    #[inline(always)]
    pub fn find_entry<'a>(
        &'a self,
        hash: KeyHash,
        pool: &'a OverflowPool,
    ) -> Option<EntrySlot<'a>> {
        let tag = hash.tag();
        self.scan(hash.bucket(self.bits), pool, |slot, e| {
            (!e.is_empty() && !e.tentative() && e.tag() == tag)
                .then_some(EntrySlot { slot, entry: e })
        })
        .0
    }

    /// The entry for `hash`'s tag, inserted (pointing at no record) if absent.
    ///
    /// # Errors
    /// [`IndexBusy::Full`] when no overflow bucket can be allocated.
    pub fn find_or_create_entry<'a>(
        &'a self,
        hash: KeyHash,
        pool: &'a OverflowPool,
    ) -> Result<EntrySlot<'a>, IndexBusy> {
        let tag = hash.tag();
        let bucket = hash.bucket(self.bits);
        loop {
            let mut free: Option<&AtomicU64> = None;
            let (found, last) = self.scan(bucket, pool, |slot, e| {
                if e.is_empty() {
                    free.get_or_insert(slot);
                    None
                } else {
                    (!e.tentative() && e.tag() == tag).then_some(EntrySlot { slot, entry: e })
                }
            });
            if let Some(found) = found {
                return Ok(found);
            }
            let slot = match free {
                Some(s) => s,
                None => {
                    let new = pool.allocate().ok_or(IndexBusy::Full)?;
                    if last
                        .overflow
                        .compare_exchange(0, new, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        // Another thread linked an overflow bucket first; ours was never visible.
                        pool.free(new);
                        continue;
                    }
                    &pool.get(new).entries[0]
                }
            };
            let tentative = HashBucketEntry::new(Address::INVALID, tag, true);
            if slot
                .compare_exchange(0, tentative.raw(), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let (conflict, _) = self.scan(bucket, pool, |other, e| {
                (!std::ptr::eq(other, slot) && !e.is_empty() && e.tag() == tag).then_some(())
            });
            if conflict.is_some() {
                slot.store(0, Ordering::Release);
                std::hint::spin_loop();
                continue;
            }
            let entry = HashBucketEntry::new(Address::INVALID, tag, false);
            slot.store(entry.raw(), Ordering::Release);
            return Ok(EntrySlot { slot, entry });
        }
    }

    /// Puts `entry` into the first free slot of bucket `i`'s chain. Only for a thread that alone
    /// writes that chain (splitting during growth).
    ///
    /// # Errors
    /// [`IndexBusy::Full`] when no overflow bucket can be allocated.
    pub fn insert_exclusive(
        &self,
        i: usize,
        entry: HashBucketEntry,
        pool: &OverflowPool,
    ) -> Result<(), IndexBusy> {
        let (done, last) = self.scan(i, pool, |slot, e| {
            e.is_empty()
                .then(|| slot.store(entry.raw(), Ordering::Release))
        });
        if done.is_none() {
            // A split's buckets were paid for by the budget check before the growth.
            let new = pool.allocate_beyond_limit().ok_or(IndexBusy::Full)?;
            pool.get(new).entries[0].store(entry.raw(), Ordering::Release);
            last.overflow.store(new, Ordering::Release);
        }
        Ok(())
    }

    /// Every non-empty, non-tentative entry of bucket `i`'s chain.
    pub fn for_each_entry(
        &self,
        i: usize,
        pool: &OverflowPool,
        mut f: impl FnMut(HashBucketEntry),
    ) {
        self.scan(i, pool, |_, e| {
            if !e.is_empty() && !e.tentative() {
                f(e);
            }
            None::<()>
        });
    }

    /// Frees every slot of bucket `i`'s chain, keeping its overflow buckets linked. Only for a
    /// thread that alone writes that chain (a split starting over).
    pub fn clear_exclusive(&self, i: usize, pool: &OverflowPool) {
        self.scan(i, pool, |slot, _| {
            slot.store(0, Ordering::Relaxed);
            None::<()>
        });
    }

    /// How many overflow buckets bucket `i`'s chain holds.
    #[must_use]
    pub fn overflow_count(&self, i: usize, pool: &OverflowPool) -> u64 {
        let mut n = 0;
        let mut next = self.bucket(i).overflow.load(Ordering::Acquire);
        while next != 0 {
            n += 1;
            next = pool.get(next).overflow.load(Ordering::Acquire);
        }
        n
    }

    /// Indices of the overflow buckets linked from bucket `i`, followed as the iteration goes
    /// (no allocation: the index's sweep walks every chain of the table).
    pub fn overflow_chain<'a>(
        &self,
        i: usize,
        pool: &'a OverflowPool,
    ) -> impl Iterator<Item = u64> + 'a {
        let first = self.bucket(i).overflow.load(Ordering::Acquire);
        std::iter::successors(Some(first).filter(|&o| o != 0), move |&o| {
            Some(pool.get(o).overflow.load(Ordering::Acquire)).filter(|&n| n != 0)
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn colliding_tags_and_overflow() {
        let t = HashTable::new(1);
        let pool = OverflowPool::new();
        // 40 distinct tags in bucket 0: spills into overflow buckets.
        let hashes: Vec<KeyHash> = (0..)
            .map(KeyHash::new)
            .filter(|h| h.bucket(1) == 0)
            .scan(std::collections::HashSet::new(), |seen, h| {
                Some((seen.insert(h.tag()), h))
            })
            .filter_map(|(new, h)| new.then_some(h))
            .take(40)
            .collect();
        for (n, h) in hashes.iter().enumerate() {
            let mut e = t.find_or_create_entry(*h, &pool).unwrap();
            e.try_update(Address::new(64 * (n as u64 + 1))).unwrap();
        }
        for (n, h) in hashes.iter().enumerate() {
            assert_eq!(
                t.find_entry(*h, &pool).unwrap().entry.address(),
                Address::new(64 * (n as u64 + 1))
            );
        }
        assert!(t.overflow_chain(0, &pool).next().is_some());
    }

    #[test]
    fn racing_inserts_of_one_tag_make_one_entry() {
        for _ in 0..50 {
            let t = Arc::new(HashTable::new(2));
            let pool = Arc::new(OverflowPool::new());
            let h = KeyHash::new(12345);
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (t, pool) = (t.clone(), pool.clone());
                    std::thread::spawn(move || {
                        t.find_or_create_entry(h, &pool).unwrap().slot as *const _ as usize
                    })
                })
                .collect();
            let slots: Vec<usize> = threads.into_iter().map(|j| j.join().unwrap()).collect();
            assert!(
                slots.windows(2).all(|w| w[0] == w[1]),
                "two entries for one tag"
            );
            let mut n = 0;
            t.for_each_entry(h.bucket(2), &pool, |_| n += 1);
            assert_eq!(n, 1);
        }
    }
}
