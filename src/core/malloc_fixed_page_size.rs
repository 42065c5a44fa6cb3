//! A latch-free allocator of fixed-size items (overflow hash buckets), FASTER's
//! `MallocFixedPageSize`.
//!
//! Items live in pages of `2^PAGE_BITS` items that are allocated on demand and never returned to
//! the system while the allocator lives, so a stale item index always points at valid memory.
//! Item index 0 is reserved as "none".
//!
//! # Invariants
//! - `next` only grows; index `i < next` belongs to page `i >> PAGE_BITS`, which is allocated
//!   (or being allocated: a reader of a fresh index spins until the page pointer is published).
//! - Freed items form a Treiber stack threaded through each item's link word; the head carries a
//!   24-bit tag bumped on every pop, so a pop racing with pop-and-push-again (ABA) fails its CAS.
//! - Callers free an item only once no thread can still reach it: the index frees overflow
//!   buckets in an epoch action after a table is retired, never while it is reachable.

use std::sync::atomic::{AtomicPtr, Ordering as StdOrdering};

use crate::sync::{AtomicU64, Ordering};

/// An item the allocator hands out: zero-initialised, with a word it may use as a free-list link.
pub trait FixedItem: Send + Sync + 'static {
    /// A zeroed item.
    fn zeroed() -> Self;
    /// A word of the item the allocator may overwrite while the item is free.
    fn link(&self) -> &AtomicU64;
    /// Resets a freed item to zero before it is handed out again.
    fn clear(&self);
}

const PAGE_BITS: u32 = 10;
const PAGE_ITEMS: usize = 1 << PAGE_BITS;
const MAX_PAGES: usize = 1 << 16;
const IDX_BITS: u32 = 40;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;

/// Allocator of `T`s addressed by a 40-bit index (0 = none).
pub struct MallocFixedPageSize<T: FixedItem> {
    pages: Box<[AtomicPtr<T>]>,
    next: AtomicU64,
    free_head: AtomicU64,
    allocated: AtomicU64,
}

impl<T: FixedItem> Default for MallocFixedPageSize<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: FixedItem> MallocFixedPageSize<T> {
    /// An empty allocator.
    #[must_use]
    pub fn new() -> Self {
        Self {
            pages: (0..MAX_PAGES)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            next: AtomicU64::new(1),
            free_head: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
        }
    }

    /// Allocates a zeroed item; `None` when all `2^26` items are in use.
    pub fn allocate(&self) -> Option<u64> {
        if let Some(i) = self.pop_free() {
            self.get(i).clear();
            self.allocated.fetch_add(1, Ordering::Relaxed);
            return Some(i);
        }
        let i = self.next.fetch_add(1, Ordering::AcqRel);
        let page = (i >> PAGE_BITS) as usize;
        if page >= MAX_PAGES {
            return None;
        }
        if self.pages[page].load(StdOrdering::Acquire).is_null() {
            let fresh: Box<[T]> = (0..PAGE_ITEMS).map(|_| T::zeroed()).collect();
            let ptr = Box::into_raw(fresh).cast::<T>();
            if self.pages[page]
                .compare_exchange(
                    std::ptr::null_mut(),
                    ptr,
                    StdOrdering::AcqRel,
                    StdOrdering::Acquire,
                )
                .is_err()
            {
                // SAFETY: ptr came from Box::into_raw of a [T; PAGE_ITEMS] boxed slice just above
                // and was never published.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, PAGE_ITEMS)) });
            }
        }
        self.allocated.fetch_add(1, Ordering::Relaxed);
        Some(i)
    }

    /// The item at index `i` (which `allocate` returned).
    ///
    /// # Panics
    /// If `i` was never handed out (a logic error of the caller).
    #[must_use]
    pub fn get(&self, i: u64) -> &T {
        let page = (i >> PAGE_BITS) as usize;
        let mut round = 0;
        loop {
            let p = self.pages[page].load(StdOrdering::Acquire);
            if !p.is_null() {
                // SAFETY: p points at PAGE_ITEMS initialised items that live as long as self
                // (pages are only freed in Drop); the offset is < PAGE_ITEMS.
                return unsafe { &*p.add((i as usize) & (PAGE_ITEMS - 1)) };
            }
            assert!(
                i < self.next.load(Ordering::Acquire),
                "item {i} was never allocated"
            );
            // The allocating thread is publishing the page right now.
            crate::sync::backoff(&mut round);
        }
    }

    /// Returns item `i` for reuse. The caller guarantees no thread can still reach it.
    pub fn free(&self, i: u64) {
        let item = self.get(i);
        let mut head = self.free_head.load(Ordering::Acquire);
        loop {
            item.link().store(head & IDX_MASK, Ordering::Relaxed);
            let new = (head & !IDX_MASK) | i;
            match self.free_head.compare_exchange_weak(
                head,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        self.allocated.fetch_sub(1, Ordering::Relaxed);
    }

    fn pop_free(&self) -> Option<u64> {
        let mut head = self.free_head.load(Ordering::Acquire);
        loop {
            let i = head & IDX_MASK;
            if i == 0 {
                return None;
            }
            let next = self.get(i).link().load(Ordering::Relaxed) & IDX_MASK;
            let tag = (head >> IDX_BITS).wrapping_add(1) << IDX_BITS;
            match self.free_head.compare_exchange_weak(
                head,
                tag | next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(i),
                Err(h) => head = h,
            }
        }
    }

    /// Items currently allocated.
    #[must_use]
    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Bytes of item memory held (pages allocated).
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let pages = self
            .pages
            .iter()
            .filter(|p| !p.load(StdOrdering::Relaxed).is_null())
            .count();
        pages * PAGE_ITEMS * std::mem::size_of::<T>()
    }
}

impl<T: FixedItem> Drop for MallocFixedPageSize<T> {
    fn drop(&mut self) {
        for p in self.pages.iter() {
            let ptr = p.load(StdOrdering::Acquire);
            if !ptr.is_null() {
                // SAFETY: every non-null page came from Box::into_raw of a PAGE_ITEMS slice and
                // is dropped exactly once, here.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, PAGE_ITEMS)) });
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::HashSet;

    struct Item(AtomicU64, AtomicU64);
    impl FixedItem for Item {
        fn zeroed() -> Self {
            Item(AtomicU64::new(0), AtomicU64::new(0))
        }
        fn link(&self) -> &AtomicU64 {
            &self.0
        }
        fn clear(&self) {
            self.0.store(0, Ordering::Relaxed);
            self.1.store(0, Ordering::Relaxed);
        }
    }

    #[test]
    fn concurrent_allocations_are_distinct_and_reused_after_free() {
        let a = std::sync::Arc::new(MallocFixedPageSize::<Item>::new());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    (0..3000)
                        .map(|_| {
                            let i = a.allocate().unwrap();
                            a.get(i).1.store(t, Ordering::Relaxed);
                            i
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let set: HashSet<_> = all.iter().copied().collect();
        assert_eq!(set.len(), all.len());
        assert!(!set.contains(&0));
        a.free(all[5]);
        a.get(all[5]).1.store(99, Ordering::Relaxed);
        let again = a.allocate().unwrap();
        assert_eq!(again, all[5]);
        assert_eq!(
            a.get(again).1.load(Ordering::Relaxed),
            0,
            "reused item must be cleared"
        );
        assert_eq!(a.allocated(), 12_000);
    }
}
