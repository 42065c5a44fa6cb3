//! An update's function that updates its own key: the nested update would wait for the record
//! lock its own thread holds (the outer update runs the function under that lock). It must fail
//! with `Error::Busy` instead of hanging, on the one-word fast paths (`u64 -> u64`), the
//! one-word-key paths (`u64 -> String`), the general path (`String -> String`) and the context
//! API; a nested read of the own key sees the value being updated; nested operations on other
//! keys still work; and the outer update and the store carry on.
//!
//! Every case runs in its own thread with a time limit, so a regression fails (naming the case)
//! instead of hanging the suite.

mod common;

use std::cell::RefCell;
use std::fmt::Debug;
use std::sync::mpsc;
use std::time::Duration;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Codec, Error, RsKv};

type Store<K, V> = RsKv<K, V, FileSystemDisk>;

/// Runs `case` on a new thread and returns its result, or fails the test if it does not finish
/// within a generous limit (the thread of a hung case is left behind; the test binary ends it).
fn within<T: Send + 'static>(what: &str, case: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(case));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: hung (an update's nested operation waits for its own lock)"),
    }
}

fn store<K: Codec, V: Codec>() -> (tempfile::TempDir, Store<K, V>) {
    common::small_store(1 << 20)
}

fn assert_busy<T: Debug>(what: &str, results: &[rskv::Result<T>]) {
    assert!(!results.is_empty(), "{what}: the function never ran");
    for r in results {
        assert!(
            matches!(r, Err(Error::Busy(_))),
            "{what}: expected Busy, got {r:?}"
        );
    }
}

/// The nested operations on the own key an RMW function may try.
#[derive(Debug, Clone, Copy)]
enum Nested {
    Rmw,
    Insert,
    Remove,
}

/// `kv.rmw(key)` whose function applies `nested` to `key` itself: the inner call is `Busy`, the
/// outer one completes, and the key stays usable.
fn own_key_update_is_busy<K, V>(
    what: &'static str,
    nested: Nested,
    key: K,
    value: impl Fn(u64) -> V + Send + 'static,
) where
    K: Codec + Clone + Send + 'static,
    V: Codec + Clone + PartialEq + Debug + Send + 'static,
{
    within(what, move || {
        let (_dir, kv) = store::<K, V>();
        kv.insert(&key, &value(1)).unwrap();
        // The key's record is in the mutable region: the outer update locks it.
        let inner = RefCell::new(Vec::new());
        let got = kv
            .rmw(&key, |old| {
                assert_eq!(old, Some(value(1)), "{what}");
                inner.borrow_mut().push(match nested {
                    Nested::Rmw => kv.rmw(&key, |_| value(99)).map(|_| ()),
                    Nested::Insert => kv.insert(&key, &value(98)),
                    Nested::Remove => kv.remove(&key),
                });
                value(2)
            })
            .unwrap();
        assert_eq!(got, value(2), "{what}");
        assert_busy(what, &inner.into_inner());
        // The outer update landed, the lock is gone, the key works as before.
        assert_eq!(kv.get(&key).unwrap(), Some(value(2)), "{what}");
        assert_eq!(kv.rmw(&key, |_| value(3)).unwrap(), value(3), "{what}");
        kv.insert(&key, &value(4)).unwrap();
        assert_eq!(kv.get(&key).unwrap(), Some(value(4)), "{what}");
        kv.remove(&key).unwrap();
        assert_eq!(kv.get(&key).unwrap(), None, "{what}");
    });
}

fn all_nested_own_key_updates_are_busy<K, V>(
    types: &'static str,
    key: K,
    value: impl Fn(u64) -> V + Clone + Send + 'static,
) where
    K: Codec + Clone + Send + 'static,
    V: Codec + Clone + PartialEq + Debug + Send + 'static,
{
    let what = |n: Nested| -> &'static str {
        Box::leak(format!("{types}: rmw whose function does {n:?} on its own key").into_boxed_str())
    };
    for n in [Nested::Rmw, Nested::Insert, Nested::Remove] {
        own_key_update_is_busy(what(n), n, key.clone(), value.clone());
    }
}

#[test]
fn u64_to_u64_fast_path_rmw_updating_its_own_key_is_busy() {
    all_nested_own_key_updates_are_busy("u64 -> u64", 7u64, |v| v);
}

#[test]
fn u64_to_string_rmw_updating_its_own_key_is_busy() {
    // Values longer than a word: the one-word-key path (`lock_word_key`), in place.
    all_nested_own_key_updates_are_busy("u64 -> String", 7u64, |v| format!("value {v:>20}"));
}

#[test]
fn string_to_string_general_rmw_updating_its_own_key_is_busy() {
    all_nested_own_key_updates_are_busy("String -> String", "a key".to_string(), |v| {
        format!("value {v:>20}")
    });
}

/// A context RMW (general path, `rmw_atomic` under the lock) whose function updates, inserts
/// or deletes its own key through the context API.
#[test]
fn context_rmw_updating_its_own_key_is_busy() {
    struct SelfRmw<'a> {
        kv: &'a Store<u64, u64>,
        nested: Nested,
        inner: RefCell<Vec<rskv::Result<rskv::Status>>>,
    }
    impl rskv::RmwContext for SelfRmw<'_> {
        type Key = u64;
        type Value = u64;
        fn key(&self) -> &u64 {
            &7
        }
        fn rmw_initial(&self) -> u64 {
            1
        }
        fn rmw_copy(&self, old: &u64) -> u64 {
            let r = match self.nested {
                Nested::Rmw => self.kv.rmw_context(&common::Add(7, 100)),
                Nested::Insert => self.kv.upsert(&common::Put(7, 100)),
                Nested::Remove => self.kv.delete(&Del(7)),
            };
            self.inner.borrow_mut().push(r);
            old + 1
        }
    }
    struct Del(u64);
    impl rskv::DeleteContext for Del {
        type Key = u64;
        type Value = u64;
        fn key(&self) -> &u64 {
            &self.0
        }
    }

    for nested in [Nested::Rmw, Nested::Insert, Nested::Remove] {
        within("context rmw updating its own key", move || {
            let (_dir, kv) = store::<u64, u64>();
            kv.insert(&7, &10).unwrap();
            let ctx = SelfRmw {
                kv: &kv,
                nested,
                inner: RefCell::new(Vec::new()),
            };
            assert_eq!(kv.rmw_context(&ctx).unwrap(), rskv::Status::Ok);
            assert_busy(&format!("context rmw, {nested:?}"), &ctx.inner.into_inner());
            assert_eq!(kv.get(&7).unwrap(), Some(11));
            assert_eq!(
                kv.rmw_context(&common::Add(7, 5)).unwrap(),
                rskv::Status::Ok
            );
            assert_eq!(kv.get(&7).unwrap(), Some(16));
        });
    }
}

/// An upsert context's `put_atomic` runs under the record lock too: a nested update of the own
/// key from there is `Busy`.
#[test]
fn put_atomic_updating_its_own_key_is_busy() {
    struct SelfPut<'a> {
        kv: &'a Store<u64, u64>,
        inner: RefCell<Vec<rskv::Result<()>>>,
    }
    impl rskv::UpsertContext for SelfPut<'_> {
        type Key = u64;
        type Value = u64;
        fn key(&self) -> &u64 {
            &7
        }
        fn value(&self) -> &u64 {
            &50
        }
        fn put_atomic(&self, value: &mut u64) -> bool {
            self.inner.borrow_mut().push(self.kv.insert(&7, &60));
            *value += 1;
            true
        }
    }
    within("put_atomic updating its own key", || {
        let (_dir, kv) = store::<u64, u64>();
        kv.insert(&7, &10).unwrap();
        let ctx = SelfPut {
            kv: &kv,
            inner: RefCell::new(Vec::new()),
        };
        assert_eq!(kv.upsert(&ctx).unwrap(), rskv::Status::Ok);
        assert_busy("put_atomic", &ctx.inner.into_inner());
        assert_eq!(kv.get(&7).unwrap(), Some(11));
        kv.insert(&7, &12).unwrap();
        assert_eq!(kv.get(&7).unwrap(), Some(12));
    });
}

/// The async RMW locks the record as the blocking one does.
#[test]
fn async_rmw_updating_its_own_key_is_busy() {
    within("rmw_async updating its own key", || {
        let (_dir, kv) = store::<String, String>();
        let key = "k".to_string();
        kv.insert(&key, &"a".to_string()).unwrap();
        let mut inner = Vec::new();
        let got = futures_executor::block_on(kv.rmw_async(&key, |old| {
            inner.push(kv.rmw(&key, |_| "nested".to_string()).map(|_| ()));
            old.unwrap_or_default() + "b"
        }))
        .unwrap();
        assert_eq!(got, "ab");
        assert_busy("rmw_async", &inner);
        assert_eq!(kv.get(&key).unwrap().as_deref(), Some("ab"));
    });
}

/// A nested read of the own key does not wait for the lock its thread holds: it sees the value
/// the function is updating (the update has not happened yet).
#[test]
fn a_nested_read_of_the_own_key_sees_the_old_value() {
    fn case<K, V>(what: &'static str, key: K, value: impl Fn(u64) -> V + Send + 'static)
    where
        K: Codec + Clone + Send + 'static,
        V: Codec + Clone + PartialEq + Debug + Send + 'static,
    {
        within(what, move || {
            let (_dir, kv) = store::<K, V>();
            kv.insert(&key, &value(1)).unwrap();
            let mut seen = Vec::new();
            let got = kv
                .rmw(&key, |old| {
                    seen.push(kv.get(&key).unwrap());
                    assert!(kv.contains_key(&key).unwrap(), "{what}");
                    old.map_or(value(0), |_| value(2))
                })
                .unwrap();
            assert_eq!(got, value(2));
            assert!(!seen.is_empty(), "{what}");
            assert!(
                seen.iter().all(|v| *v == Some(value(1))),
                "{what}: {seen:?}"
            );
            assert_eq!(kv.get(&key).unwrap(), Some(value(2)), "{what}");
        });
    }
    case("u64 -> u64 nested read", 7u64, |v| v);
    case("u64 -> String nested read", 7u64, |v| {
        format!("value {v:>20}")
    });
    case("String -> String nested read", "key".to_string(), |v| {
        format!("value {v:>20}")
    });
}

/// Nested operations on other keys inside an update's function keep working, on every path.
#[test]
fn nested_updates_of_other_keys_still_work() {
    within("nested updates of other keys", || {
        let (_dir, kv) = store::<u64, u64>();
        kv.insert(&1, &10).unwrap();
        kv.insert(&2, &20).unwrap();
        let got = kv
            .rmw(&1, |old| {
                let two = kv.rmw(&2, |v| v.unwrap_or(0) + 1).unwrap();
                kv.insert(&3, &30).unwrap();
                kv.remove(&4).unwrap();
                old.unwrap() + two + kv.get(&3).unwrap().unwrap()
            })
            .unwrap();
        assert_eq!(got, 10 + 21 + 30);
        assert_eq!(kv.get(&2).unwrap(), Some(21));

        let (_dir, kv) = store::<String, String>();
        let (a, b) = ("a".to_string(), "b".to_string());
        kv.insert(&a, &"x".to_string()).unwrap();
        kv.insert(&b, &"y".to_string()).unwrap();
        let got = kv
            .rmw(&a, |old| {
                let nested = kv.rmw(&b, |v| v.unwrap_or_default() + "z").unwrap();
                kv.insert(&"c".to_string(), &"w".to_string()).unwrap();
                old.unwrap_or_default() + &nested
            })
            .unwrap();
        assert_eq!(got, "xyz");
        assert_eq!(kv.get(&b).unwrap().as_deref(), Some("yz"));
        assert_eq!(kv.get(&"c".to_string()).unwrap().as_deref(), Some("w"));
    });
}

/// A function that panics while its update holds the record lock releases the lock: the key
/// is usable afterwards, from this thread and from another.
#[test]
fn a_panicking_function_releases_the_lock() {
    within("a panicking rmw function", || {
        let (_dir, kv) = store::<u64, u64>();
        kv.insert(&7, &1).unwrap();
        kv.insert(&8, &7).unwrap();
        for key in [7u64, 8] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                kv.rmw(&key, |_| panic!("the function fails")).unwrap()
            }));
            assert!(r.is_err());
        }
        assert_eq!(kv.rmw(&7, |v| v.unwrap() + 1).unwrap(), 2);
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(kv.rmw(&8, |v| v.unwrap() + 1).unwrap(), 8));
        });
        let (_dir, kv) = store::<String, String>();
        let key = "k".to_string();
        kv.insert(&key, &"a".to_string()).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kv.rmw(&key, |_| panic!("the function fails")).unwrap()
        }));
        assert!(r.is_err());
        std::thread::scope(|s| {
            s.spawn(|| kv.insert(&key, &"b".to_string()).unwrap());
        });
        assert_eq!(kv.rmw(&key, |v| v.unwrap() + "c").unwrap(), "bc");
    });
}

/// What a thread's update function does to the next thread's key in [`cycle`].
#[derive(Debug, Clone, Copy)]
enum Reach {
    Update,
    Read,
}

/// `reach.len()` threads; thread `i` runs an in-place RMW of key `i` and, once every thread
/// holds its record lock, applies `reach[i]` to key `i + 1` (wrapping): each nested call waits for
/// the next thread's lock, a cycle. Exactly one nested call must fail with `Busy` (the cycle's
/// breaker), the others must succeed once the breaker's update releases its lock, and every
/// update that succeeded must be the key's final value.
fn cycle<K, V>(what: &'static str, reach: Vec<Reach>, key: fn(u64) -> K, value: fn(u64) -> V)
where
    K: Codec + Send + Sync + 'static,
    V: Codec + Clone + PartialEq + Debug + Send + Sync + 'static,
{
    within(what, move || {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (_dir, kv) = store::<K, V>();
        let n = reach.len() as u64;
        for i in 0..n {
            kv.insert(&key(i), &value(i)).unwrap();
        }
        let all_locked = std::sync::Barrier::new(reach.len());
        let nested: Vec<rskv::Result<()>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..n)
                .map(|i| {
                    let (kv, all_locked, reach) = (&kv, &all_locked, reach[i as usize]);
                    s.spawn(move || {
                        let first = AtomicBool::new(true);
                        let mut result = None;
                        let outer = kv.rmw(&key(i), |_| {
                            if first.swap(false, Ordering::SeqCst) {
                                all_locked.wait();
                                let next = key((i + 1) % n);
                                result = Some(match reach {
                                    Reach::Update => kv.rmw(&next, |_| value(100 + i)).map(drop),
                                    Reach::Read => kv.get(&next).map(drop),
                                });
                            }
                            value(10 + i)
                        });
                        assert_eq!(outer.unwrap(), value(10 + i), "{what}: outer update {i}");
                        result.expect("the function ran")
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let busy = nested
            .iter()
            .filter(|r| matches!(r, Err(Error::Busy(_))))
            .count();
        assert_eq!(
            busy, 1,
            "{what}: one nested call breaks the cycle: {nested:?}"
        );
        for (i, r) in nested.iter().enumerate() {
            let i = i as u64;
            let target = (i + 1) % n;
            let expect = match (r, reach[i as usize]) {
                (Ok(()), Reach::Update) => value(100 + i),
                (Err(Error::Busy(_)), _) | (Ok(()), Reach::Read) => value(10 + target),
                (Err(e), _) => panic!("{what}: nested call {i} failed with {e}"),
            };
            // A nested update that ran waited for the key's outer update to finish, so it is last.
            assert_eq!(
                kv.get(&key(target)).unwrap(),
                Some(expect),
                "{what}: key {target}"
            );
        }
    });
}

#[test]
fn two_threads_updating_each_others_locked_key_do_not_hang() {
    cycle("u64 update cycle", vec![Reach::Update; 2], |k| k, |v| v);
    cycle(
        "String update cycle",
        vec![Reach::Update; 2],
        |k| format!("key-{k}"),
        |v| format!("value-{v}"),
    );
}

#[test]
fn a_read_inside_an_update_function_does_not_close_a_cycle_for_ever() {
    cycle("u64 read cycle", vec![Reach::Read; 2], |k| k, |v| v);
    cycle(
        "u64 read and update cycle",
        vec![Reach::Read, Reach::Update],
        |k| k,
        |v| v,
    );
    cycle(
        "String read cycle",
        vec![Reach::Update, Reach::Read],
        |k| format!("key-{k}"),
        |v| format!("value-{v}"),
    );
}

#[test]
fn a_cycle_of_three_threads_is_broken_once() {
    cycle(
        "u64 three-thread cycle",
        vec![Reach::Update; 3],
        |k| k,
        |v| v,
    );
    cycle(
        "String three-thread cycle",
        vec![Reach::Update, Reach::Read, Reach::Update],
        |k| format!("key-{k}"),
        |v| format!("value-{v}"),
    );
}
