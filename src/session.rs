//! Explicit sessions: FASTER's model of a thread's stream of operations.
//!
//! A session numbers its operations with a monotonic serial number (checkpoints will record,
//! per session, the serial number they cover). Its operations take *owned* contexts. An
//! operation that needs the disk returns [`Status::Pending`]; the session keeps the context and
//! the operation's continuation, and [`Session::complete_pending`] finishes it. Every operation
//! ends with one call of its context's `complete(status)`: before the operation returns when it
//! finished in memory, inside `complete_pending` when it went to disk.
//!
//! Invariants: a pending continuation holds no epoch protection (it is a `Send` future), so a
//! session that never calls `complete_pending` delays only its own operations, never the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use crate::core::address::Address;
use crate::core::codec::{decode, Codec, Encoded};
use crate::core::record::ValueBuf;
use crate::core::status::{Error, Result, Status};
use crate::device::Disk;
use crate::index::KeyHash;
use crate::ops::checkpoint::{PendingUpdate, SessionBook};
use crate::ops::pending::Started;
use crate::ops::read::ReadStep;
use crate::rskv_core::{rmw_decider, DeleteContext, ReadContext, RmwContext, RsKv, UpsertContext};

/// A session's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// An operation's serial number within its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SerialNum(pub u64);

type PendingOp<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A pending operation and, for an update, its count in the checkpoint's `WaitPending` (parked
/// while the session is not driving it: see [`Session::complete_pending`]). A finished update's
/// count ends when the entry is dropped, after the update landed.
struct Pending<'a> {
    op: PendingOp<'a>,
    update: Option<PendingUpdate<'a>>,
}

impl Pending<'_> {
    fn set_driven(&mut self, driven: bool) {
        if let Some(u) = self.update.as_mut() {
            if driven {
                u.unpark();
            } else {
                u.park();
            }
        }
    }
}

impl Future for Pending<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.op.as_mut().poll(cx)
    }
}

/// A session on a store. Not shared between threads; `Send`, so it may move between them.
pub struct Session<'a, K, V, D: Disk> {
    kv: &'a RsKv<K, V, D>,
    id: SessionId,
    serial: SerialNum,
    /// The checkpoint version this session's operations currently run in.
    version: u64,
    book: Arc<SessionBook>,
    pending: FuturesUnordered<Pending<'a>>,
}

impl<'a, K: Codec, V: Codec, D: Disk> Session<'a, K, V, D> {
    pub(crate) fn new(kv: &'a RsKv<K, V, D>) -> Self {
        let book = kv
            .engine
            .cpr
            .register(None)
            .expect("registering a new session id cannot fail");
        Self::with_book(kv, book)
    }

    /// Continues a recovered session: serial numbers go on after its commit point.
    pub(crate) fn continued(kv: &'a RsKv<K, V, D>, id: SessionId) -> Result<Self> {
        Ok(Self::with_book(kv, kv.engine.cpr.register(Some(id.0))?))
    }

    fn with_book(kv: &'a RsKv<K, V, D>, book: Arc<SessionBook>) -> Self {
        let serial = book.last_serial();
        Self {
            kv,
            id: SessionId(book.id),
            serial: SerialNum(serial),
            version: kv.engine.system_state().version,
            book,
            pending: FuturesUnordered::new(),
        }
    }

    /// This session's identity.
    #[must_use]
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Serial number of the last operation issued.
    #[must_use]
    pub fn serial_num(&self) -> SerialNum {
        self.serial
    }

    /// Operations waiting for the disk.
    #[must_use]
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    fn next_serial(&mut self) -> SerialNum {
        self.serial.0 += 1;
        self.serial
    }

    /// Upserts (never pending: upserts do not read the disk).
    ///
    /// # Errors
    /// As [`RsKv::upsert`]; the context's `complete` sees the same result.
    pub fn upsert<C: UpsertContext<Key = K, Value = V>>(&mut self, ctx: C) -> Result<Status> {
        let serial = self.next_serial().0;
        let (book, version) = (&self.book, &mut self.version);
        let r = self
            .kv
            .upsert_ctx(&ctx, &mut |v| book.finished(serial, version, v))
            .map(|()| Status::Ok);
        completed(r, |r| ctx.complete(r))
    }

    /// Deletes (never pending).
    ///
    /// # Errors
    /// As [`RsKv::delete`]; the context's `complete` sees the same result.
    pub fn delete<C: DeleteContext<Key = K, Value = V>>(&mut self, ctx: C) -> Result<Status> {
        let serial = self.next_serial().0;
        let (book, version) = (&self.book, &mut self.version);
        let r = self
            .kv
            .delete_ctx(&ctx, &mut |v| book.finished(serial, version, v));
        completed(r, |r| ctx.complete(r))
    }

    /// Reads; `Pending` if the record is on disk (finish with [`Session::complete_pending`]).
    /// A pending operation's device read is issued before this returns, so reads issued
    /// back to back are in flight together; its context's `complete` runs at the latest in
    /// the `complete_pending` call that finishes it (earlier, if the device was that fast).
    ///
    /// # Errors
    /// As [`RsKv::read`], for a read that finished at once; a pending read's error goes to its
    /// context's `complete`.
    pub fn read<C: ReadContext<Key = K, Value = V> + Send + 'a>(
        &mut self,
        ctx: C,
    ) -> Result<Status> {
        let serial = self.next_serial().0;
        self.book.read(serial);
        let engine = &*self.kv.engine;
        let hash = KeyHash::new(ctx.key_hash());
        let started = (|| -> Result<(Encoded, ReadStep, ValueBuf)> {
            let key = Encoded::new(ctx.key())?;
            let mut buf = ValueBuf::default();
            let g = engine.protect()?;
            let step = engine.read_mem(&g, &key, hash, &mut buf)?;
            Ok((key, step, buf))
        })();
        let (key, step, mut buf) = match started {
            Ok(s) => s,
            Err(e) => return finish_read(ctx, Err(e), &ValueBuf::default()),
        };
        match step {
            ReadStep::Found => finish_read(ctx, Ok(true), &buf),
            ReadStep::NotFound => finish_read(ctx, Ok(false), &buf),
            ReadStep::Disk(address) => {
                self.start_pending(Pending {
                    op: Box::pin(async move {
                        let found = engine.read_pending(&key, hash, address, &mut buf).await;
                        let _ = finish_read(ctx, found, &buf);
                    }),
                    update: None,
                });
                Ok(Status::Pending)
            }
        }
    }

    /// Read-modify-write; `Pending` if the newest record may be on disk.
    ///
    /// # Errors
    /// As [`RsKv::rmw_context`], for an update that finished at once; a pending update's error
    /// goes to its context's `complete`.
    pub fn rmw<C: RmwContext<Key = K, Value = V> + Send + Sync + 'a>(
        &mut self,
        ctx: C,
    ) -> Result<Status> {
        let serial = self.next_serial().0;
        let engine = &*self.kv.engine;
        let (book, version) = (&self.book, &mut self.version);
        let started = (|| -> Result<(Encoded, KeyHash, Started<'a>)> {
            let key = Encoded::new(ctx.key())?;
            let hash = KeyHash::new(ctx.key_hash());
            let step = engine.update_start(
                &key,
                hash,
                Address::INVALID,
                true,
                &mut rmw_decider(&ctx),
                &mut |v, pending| {
                    if pending {
                        book.went_pending(serial, version, v);
                    } else {
                        book.finished(serial, version, v);
                    }
                },
            )?;
            Ok((key, hash, step))
        })();
        match started {
            Err(e) => completed(Err(e), |r| ctx.complete(r)),
            Ok((_, _, Started::Done(status))) => completed(Ok(status), |r| ctx.complete(r)),
            Ok((key, hash, Started::Disk(address, seen, pending))) => {
                let book = self.book.clone();
                let started_in = pending.version();
                self.start_pending(Pending {
                    op: Box::pin(async move {
                        let r = engine
                            .update_pending(
                                &key,
                                hash,
                                Address::INVALID,
                                true,
                                address,
                                seen,
                                started_in,
                                &mut rmw_decider(&ctx),
                                &mut |v| book.pending_finished(serial, v),
                            )
                            .await;
                        if r.is_err() {
                            // It wrote nothing: no checkpoint contains it.
                            book.pending_finished(serial, u64::MAX);
                        }
                        let _ = completed(r, |r| ctx.complete(r));
                    }),
                    update: Some(pending),
                });
                Ok(Status::Pending)
            }
        }
    }

    /// Takes a disk-bound continuation and polls it once at once, so its device read is issued
    /// now (as FASTER issues the I/O of an operation that goes pending) rather than at the next
    /// `complete_pending`; later polls there see it done. Once this returns, nobody drives the
    /// operation until `complete_pending`, so an update is parked: a checkpoint does not wait
    /// for a session that is busy elsewhere or idle.
    fn start_pending(&mut self, mut op: Pending<'a>) {
        if Pin::new(&mut op).now_or_never().is_none() {
            op.set_driven(false);
            self.pending.push(op);
        }
    }

    /// Drives pending operations. With `wait`, returns only when none is left; without, polls
    /// once. Returns whether none is left. While it runs, the session's pending updates count
    /// as driven, so a checkpoint's `WaitPending` lets them land in the version they started in.
    pub fn complete_pending(&mut self, wait: bool) -> bool {
        self.drive(wait);
        self.pending.is_empty()
    }
}

impl<K, V, D: Disk> Session<'_, K, V, D> {
    /// Polls the pending operations until none is left (`wait`) or once.
    fn drive(&mut self, wait: bool) {
        for p in self.pending.iter_mut() {
            p.set_driven(true);
        }
        if wait {
            crate::ops::pending::block_on(async { while self.pending.next().await.is_some() {} });
        } else {
            // Every operation that is ready finishes; `next` yields one per call.
            while let Some(Some(())) = self.pending.next().now_or_never() {}
        }
        for p in self.pending.iter_mut() {
            p.set_driven(false);
        }
    }
}

fn finish_read<C: ReadContext>(mut ctx: C, found: Result<bool>, buf: &ValueBuf) -> Result<Status> {
    let r = found.and_then(|found| {
        if found {
            ctx.get(&decode::<C::Value>(buf.bytes())?);
            Ok(Status::Ok)
        } else {
            Ok(Status::NotFound)
        }
    });
    completed(r, |r| ctx.complete(r))
}

/// Hands an operation's result to its context's `complete` (the error by reference) and
/// returns it.
fn completed(r: Result<Status>, complete: impl FnOnce(Result<Status, &Error>)) -> Result<Status> {
    complete(r.as_ref().copied());
    r
}

impl<K, V, D: Disk> std::fmt::Debug for Session<'_, K, V, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .field("version", &self.version)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<K, V, D: Disk> Drop for Session<'_, K, V, D> {
    fn drop(&mut self) {
        // Pending operations still own their contexts; finish them so every context completes.
        self.drive(true);
        // An ended session is not listed by later checkpoints (it cannot be continued from
        // them); the registry does not grow with every session ever started.
        self.kv.engine.cpr.unregister(self.book.id);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::device::file_system_disk::FileSystemDisk;
    use crate::{Config, RmwContext, RsKv, Status};
    use std::future::Future;

    struct Add(u64);

    impl RmwContext for Add {
        type Key = u64;
        type Value = u64;
        fn key(&self) -> &u64 {
            &self.0
        }
        fn rmw_initial(&self) -> u64 {
            1
        }
        fn rmw_copy(&self, old: &u64) -> u64 {
            old + 1
        }
    }

    /// A checkpoint's `WaitPending` waits only for updates someone drives: an idle session's
    /// pending update is not counted, one inside `complete_pending` is (until it lands).
    #[test]
    fn an_idle_sessions_pending_update_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new()
            .table_size(1 << 8)
            .log_memory_size(64 << 10)
            .page_size(4096);
        let kv: RsKv<u64, u64, _> =
            RsKv::open(config, FileSystemDisk::new(dir.path()).unwrap()).unwrap();
        for k in 0..5000u64 {
            kv.insert(&k, &k).unwrap();
        }
        let v = kv.engine.system_state().version;
        let mut s = kv.start_session();
        assert_eq!(s.rmw(Add(0)), Status::Pending);
        assert_eq!(s.pending_count(), 1);
        assert_eq!(
            kv.engine.cpr.driven_updates(v),
            0,
            "an idle session holds up checkpoints"
        );
        assert!(s.complete_pending(true));
        assert_eq!(kv.engine.cpr.driven_updates(v), 0);
        assert_eq!(kv.get(&0).unwrap(), Some(1));
        // An async update counts only while polled.
        let mut fut = Box::pin(kv.rmw_async(&1, |old| old.unwrap_or(0) + 1));
        let waker = futures_util::task::noop_waker();
        let polled = fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        if polled.is_pending() {
            assert_eq!(
                kv.engine.cpr.driven_updates(v),
                0,
                "an unpolled future holds up checkpoints"
            );
        }
        drop(fut);
        assert_eq!(kv.engine.cpr.driven_updates(v), 0);
    }
}
