//! The atomics and cells the concurrent core uses, routed through one place.
//!
//! [`modeled`] holds what the loom model of the epoch (`RUSTFLAGS="--cfg loom"`,
//! `tests/loom_epoch.rs`) substitutes with loom's checked versions. Everything else uses std's
//! atomics even under loom: log frames and hash buckets are memory reinterpreted as `AtomicU64`,
//! which only std's atomics (same layout as `u64`) allow.
#![forbid(unsafe_code)]

pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Atomics and cells that loom replaces in the epoch model.
pub(crate) mod modeled {
    #[cfg(loom)]
    pub(crate) use loom::cell::UnsafeCell;
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

    /// An `UnsafeCell` with loom's closure API, so the same code runs under both.
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

    /// Spin politely: a few `spin_loop` hints, then yield the core (2-core machines
    /// oversubscribe easily).
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
}

pub(crate) use modeled::backoff;
