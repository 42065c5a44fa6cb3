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
//! - [`MallocFixedPageSize::allocate`] allocates no page past the page limit (the index's share
//!   of a memory budget); racing allocators may overshoot it by a page each.
//!   [`MallocFixedPageSize::allocate_beyond_limit`] ignores it (a growth's split, which the
//!   budget check before the growth already paid for).

use std::sync::atomic::{AtomicPtr, Ordering as StdOrdering};
use std::sync::OnceLock;

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
/// Items per page.
pub const PAGE_ITEMS: usize = 1 << PAGE_BITS;
const MAX_PAGES: usize = 1 << 16;
const IDX_BITS: u32 = 40;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;

/// Allocator of `T`s addressed by a 40-bit index (0 = none).
pub struct MallocFixedPageSize<T: FixedItem> {
    pages: Box<[AtomicPtr<T>]>,
    next: AtomicU64,
    free_head: AtomicU64,
    allocated: AtomicU64,
    /// Pages allocated (they are never returned before drop).
    pages_in_use: AtomicU64,
    /// Pages [`MallocFixedPageSize::allocate`] may hold; `u64::MAX` for no limit.
    page_limit: AtomicU64,
    /// When `allocated` reaches this count, `allocate` unparks the watcher (`u64::MAX`: never).
    watch_at: AtomicU64,
    watcher: OnceLock<std::thread::Thread>,
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
            pages_in_use: AtomicU64::new(0),
            page_limit: AtomicU64::new(u64::MAX),
            watch_at: AtomicU64::new(u64::MAX),
            watcher: OnceLock::new(),
        }
    }

    /// Allocates a zeroed item; `None` when all `2^26` items are in use, or when it would need
    /// a page past the page limit.
    pub fn allocate(&self) -> Option<u64> {
        self.allocate_with(true)
    }

    /// [`MallocFixedPageSize::allocate`] regardless of the page limit.
    pub fn allocate_beyond_limit(&self) -> Option<u64> {
        self.allocate_with(false)
    }

    fn allocate_with(&self, limited: bool) -> Option<u64> {
        let i = self.take(limited)?;
        let n = self.allocated.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.watch_at.load(Ordering::Relaxed) {
            if let Some(t) = self.watcher.get() {
                t.unpark();
            }
        }
        Some(i)
    }

    fn take(&self, limited: bool) -> Option<u64> {
        if let Some(i) = self.pop_free() {
            self.get(i).clear();
            return Some(i);
        }
        if limited {
            // Checked before taking an index, so a refusal does not use up the index space.
            let page = self.next.load(Ordering::Acquire) >> PAGE_BITS;
            if page >= self.page_limit.load(Ordering::Relaxed)
                && self
                    .pages
                    .get(page as usize)
                    .map_or(true, |p| p.load(StdOrdering::Acquire).is_null())
            {
                return None;
            }
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
            } else {
                self.pages_in_use.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(i)
    }

    /// Sets how many pages [`MallocFixedPageSize::allocate`] may hold (`u64::MAX`: no limit).
    pub fn set_page_limit(&self, pages: u64) {
        self.page_limit.store(pages, Ordering::Relaxed);
    }

    /// Unparks `thread` when an allocation brings the count of items in use to `count` (one
    /// thread for the allocator's life; later calls keep the first). `u64::MAX` turns it off.
    pub fn watch(&self, count: u64, thread: &std::thread::Thread) {
        let _ = self.watcher.set(thread.clone());
        self.watch_at.store(count, Ordering::Relaxed);
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
        self.pages_in_use.load(Ordering::Relaxed) as usize * Self::PAGE_BYTES
    }

    /// Bytes of one page of items.
    pub const PAGE_BYTES: usize = PAGE_ITEMS * std::mem::size_of::<T>();
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

    #[test]
    fn the_page_limit_bounds_allocate_but_not_allocate_beyond_limit_or_reuse() {
        let a = MallocFixedPageSize::<Item>::new();
        a.set_page_limit(2);
        let got: Vec<u64> = std::iter::from_fn(|| a.allocate()).take(5000).collect();
        // Item 0 is reserved: two pages hold 2 * PAGE_ITEMS - 1 items.
        assert_eq!(got.len(), 2 * PAGE_ITEMS - 1);
        assert_eq!(
            a.memory_bytes(),
            2 * MallocFixedPageSize::<Item>::PAGE_BYTES
        );
        a.free(got[7]);
        assert_eq!(
            a.allocate(),
            Some(got[7]),
            "a freed item is reused under the limit"
        );
        assert!(a.allocate().is_none());
        assert!(a.allocate_beyond_limit().is_some());
        assert_eq!(
            a.memory_bytes(),
            3 * MallocFixedPageSize::<Item>::PAGE_BYTES
        );
        a.set_page_limit(u64::MAX);
        assert!(a.allocate().is_some());
    }

    #[test]
    fn reaching_the_watched_count_unparks_the_watcher() {
        use std::sync::atomic::AtomicBool;
        let a = std::sync::Arc::new(MallocFixedPageSize::<Item>::new());
        let registered = std::sync::Arc::new(AtomicBool::new(false));
        let allocated = std::sync::Arc::new(AtomicBool::new(false));
        let watcher = {
            let (a, registered, allocated) = (a.clone(), registered.clone(), allocated.clone());
            std::thread::spawn(move || {
                a.watch(10, &std::thread::current());
                registered.store(true, Ordering::Release);
                // Spin, not block: a blocking wait (a channel) may park and eat the token.
                while !allocated.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                // The unpark came before this park, so it returns at once; without one it
                // would sleep the whole timeout (a hang detector, not a timing measure).
                let start = std::time::Instant::now();
                std::thread::park_timeout(std::time::Duration::from_secs(30));
                start.elapsed()
            })
        };
        while !registered.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        for _ in 0..10 {
            a.allocate().unwrap();
        }
        allocated.store(true, Ordering::Release);
        let slept = watcher.join().unwrap();
        assert!(
            slept < std::time::Duration::from_secs(30),
            "the 10th allocation did not unpark the watcher"
        );
    }
}
