//! RsKv driven as FASTER's benchmark drives FASTER (`--sessions`): one `Session` per thread,
//! every operation issued at once through the session's context API (reads of records on disk
//! go pending with their device reads in flight, up to `Config::pending_depth`), and
//! `complete_pending(false)` every `--complete-every` operations (the runner's side).
//!
//! Every read and RMW is verified as in the other modes: its context records what it found
//! when it completes (at once, or inside `complete_pending`) into the session's list, which
//! the runner drains and checks.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rskv::device::Disk;
use rskv::{DeleteContext, ReadContext, RmwContext, Session, Status, UpsertContext};

use crate::store::{BenchSession, Finished, ReadCheck};
use crate::values::{BenchKey, BenchValue};

/// What the contexts of one session finished, until the runner drains it. Only the
/// session's thread touches it (contexts complete on the thread that drives the session), so
/// the lock is never contended.
type Done = Arc<Mutex<Vec<Finished>>>;

fn push(done: &Done, f: Finished) {
    done.lock().unwrap_or_else(PoisonError::into_inner).push(f);
}

/// A [`BenchSession`] over an RsKv `Session`.
pub struct RsKvSession<'a, K, V, D: Disk> {
    pub(super) session: Session<'a, K, V, D>,
    pub(super) key_size: usize,
    pub(super) value_size: usize,
    pub(super) done: Done,
}

struct Read<K, V> {
    key: K,
    id: u64,
    size: usize,
    got: ReadCheck,
    done: Done,
    _v: std::marker::PhantomData<fn() -> V>,
}

impl<K: BenchKey, V: BenchValue> ReadContext for Read<K, V> {
    type Key = K;
    type Value = V;
    fn key(&self) -> &K {
        &self.key
    }
    fn get(&mut self, value: &V) {
        self.got = if value.ok(self.id, self.size) {
            ReadCheck::Ok
        } else {
            ReadCheck::Wrong
        };
    }
    fn complete(self, result: rskv::Result<Status, &rskv::Error>) {
        let found = match result {
            Ok(Status::Ok) => Ok(self.got),
            Ok(_) => Ok(ReadCheck::Missing),
            Err(e) => Err(e.to_string()),
        };
        push(
            &self.done,
            Finished {
                op: "read",
                key: self.id,
                found,
            },
        );
    }
}

/// ReadCheck as a byte, so an RMW context (which must be `Sync`) can note what it saw.
fn check_code(c: ReadCheck) -> u8 {
    match c {
        ReadCheck::Ok => 0,
        ReadCheck::Missing => 1,
        ReadCheck::Wrong => 2,
        ReadCheck::Unchecked => 3,
    }
}

fn check_of(code: u8) -> ReadCheck {
    match code {
        0 => ReadCheck::Ok,
        1 => ReadCheck::Missing,
        2 => ReadCheck::Wrong,
        _ => ReadCheck::Unchecked,
    }
}

struct Rmw<K, V> {
    key: K,
    id: u64,
    size: usize,
    /// What the last run of `rmw_copy`/`rmw_initial` saw (they may run more than once).
    seen: AtomicU8,
    done: Done,
    _v: std::marker::PhantomData<fn() -> V>,
}

impl<K: BenchKey, V: BenchValue> RmwContext for Rmw<K, V> {
    type Key = K;
    type Value = V;
    fn key(&self) -> &K {
        &self.key
    }
    fn rmw_initial(&self) -> V {
        self.seen
            .store(check_code(ReadCheck::Missing), Ordering::Relaxed);
        V::make(self.id, 1, self.size)
    }
    fn rmw_copy(&self, old: &V) -> V {
        let (seen, new) = if old.ok(self.id, self.size) {
            (ReadCheck::Ok, old.clone().bumped())
        } else {
            (ReadCheck::Wrong, V::make(self.id, 1, self.size))
        };
        self.seen.store(check_code(seen), Ordering::Relaxed);
        new
    }
    fn complete(self, result: rskv::Result<Status, &rskv::Error>) {
        let found = match result {
            Ok(_) => Ok(check_of(self.seen.load(Ordering::Relaxed))),
            Err(e) => Err(e.to_string()),
        };
        push(
            &self.done,
            Finished {
                op: "rmw",
                key: self.id,
                found,
            },
        );
    }
}

struct Put<K, V>(K, V);

impl<K: BenchKey, V: BenchValue> UpsertContext for Put<K, V> {
    type Key = K;
    type Value = V;
    fn key(&self) -> &K {
        &self.0
    }
    fn value(&self) -> &V {
        &self.1
    }
}

struct Del<K, V>(K, std::marker::PhantomData<fn() -> V>);

impl<K: BenchKey, V: BenchValue> DeleteContext for Del<K, V> {
    type Key = K;
    type Value = V;
    fn key(&self) -> &K {
        &self.0
    }
}

impl<K: BenchKey, V: BenchValue, D: Disk> BenchSession for RsKvSession<'_, K, V, D> {
    fn upsert(&mut self, key: u64, version: u64) -> anyhow::Result<()> {
        let ctx = Put(
            K::make(key, self.key_size),
            V::make(key, version, self.value_size),
        );
        let _status = self.session.upsert(ctx)?;
        Ok(())
    }

    fn read(&mut self, key: u64) -> anyhow::Result<()> {
        let ctx = Read::<K, V> {
            key: K::make(key, self.key_size),
            id: key,
            size: self.value_size,
            got: ReadCheck::Missing,
            done: self.done.clone(),
            _v: std::marker::PhantomData,
        };
        // An error of a read that finished at once also went to its context.
        let _ = self.session.read(ctx);
        Ok(())
    }

    fn rmw(&mut self, key: u64) -> anyhow::Result<()> {
        let ctx = Rmw::<K, V> {
            key: K::make(key, self.key_size),
            id: key,
            size: self.value_size,
            seen: AtomicU8::new(check_code(ReadCheck::Missing)),
            done: self.done.clone(),
            _v: std::marker::PhantomData,
        };
        let _ = self.session.rmw(ctx);
        Ok(())
    }

    fn delete(&mut self, key: u64) -> anyhow::Result<()> {
        let ctx = Del::<K, V>(K::make(key, self.key_size), std::marker::PhantomData);
        let _status = self.session.delete(ctx)?;
        Ok(())
    }

    fn complete(&mut self, wait: bool, out: &mut Vec<Finished>) {
        self.session.complete_pending(wait);
        out.append(&mut self.done.lock().unwrap_or_else(PoisonError::into_inner));
    }
}
