//! Loom model of LightEpoch: protect / bump with a trigger action / drain.
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --test loom_epoch`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rskv::core::light_epoch::LightEpoch;

const OLD: usize = 1;
const NEW: usize = 2;

/// A reader that sees the old object while protected must never find it reclaimed; the action
/// that reclaims it runs exactly once, at the latest when nobody is protected any more.
#[test]
fn action_never_runs_under_a_protected_reader() {
    loom::model(|| {
        let epoch = Arc::new(LightEpoch::with_capacity(2, 2));
        let published = Arc::new(AtomicUsize::new(OLD));
        let reclaimed = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicUsize::new(0));

        let reader = {
            let (epoch, published, reclaimed) =
                (epoch.clone(), published.clone(), reclaimed.clone());
            thread::spawn(move || {
                // SAFETY: slot 0 belongs to this model thread alone, and no guard owns it.
                unsafe { epoch.protect_at(0) };
                if published.load(Ordering::SeqCst) == OLD {
                    assert!(
                        !reclaimed.load(Ordering::SeqCst),
                        "old object reclaimed under a protected reader"
                    );
                }
                // SAFETY: as above; nothing read under the protection is used after it.
                unsafe { epoch.unprotect_at(0) };
            })
        };

        published.store(NEW, Ordering::SeqCst);
        let (r, n) = (reclaimed.clone(), runs.clone());
        epoch.bump_epoch(move || {
            r.store(true, Ordering::SeqCst);
            n.fetch_add(1, Ordering::SeqCst);
        });
        epoch.drain();
        reader.join().unwrap();
        epoch.drain();
        assert!(
            reclaimed.load(Ordering::SeqCst),
            "action never ran with nobody protected"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    });
}

/// Two bumpers racing for the drain list with one slot: both actions run, once each.
#[test]
fn racing_bumps_share_a_full_drain_list() {
    loom::model(|| {
        let epoch = Arc::new(LightEpoch::with_capacity(2, 1));
        let runs = Arc::new(AtomicUsize::new(0));
        let other = {
            let (epoch, runs) = (epoch.clone(), runs.clone());
            thread::spawn(move || {
                epoch.bump_epoch(move || {
                    runs.fetch_add(1, Ordering::SeqCst);
                });
            })
        };
        let r = runs.clone();
        epoch.bump_epoch(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        other.join().unwrap();
        epoch.drain();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    });
}
