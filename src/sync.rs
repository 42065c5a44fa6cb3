//! The atomics and cells the concurrent core uses, routed through one place so that loom models
//! (`RUSTFLAGS="--cfg loom"`) can substitute its checked versions.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

/// An `UnsafeCell` with loom's closure API, so the same code runs under both.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(v: T) -> Self {
        Self(std::cell::UnsafeCell::new(v))
    }
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Spin politely: a few `spin_loop` hints, then yield the core (2-core machines oversubscribe).
pub(crate) fn backoff(round: &mut u32) {
    if *round < 6 {
        for _ in 0..(1u32 << *round) {
            std::hint::spin_loop();
        }
    } else {
        #[cfg(loom)]
        loom::thread::yield_now();
        #[cfg(not(loom))]
        std::thread::yield_now();
    }
    *round = round.saturating_add(1);
}
