//! Explicit sessions: FASTER's model of a thread's stream of operations.
//!
//! A session numbers its operations with a monotonic serial number (checkpoints will record,
//! per session, the serial number they cover). Its operations take *owned* contexts. An
//! operation that needs the disk returns [`Status::Pending`]; the session keeps the context and
//! the operation's continuation, and [`Session::complete_pending`] finishes it. Every operation
//! ends with one call of its context's `complete(status)`: before the operation returns when it
//! finished in memory, inside `complete_pending` when it went to disk.
//!
//! Many reads in flight per thread, as in FASTER: an operation that goes pending has issued its
//! device read before it returns, and the session keeps up to `Config::pending_depth` (128)
//! such operations; starting one more first finishes the ones that are done (or waits for
//! one). A chain walk that meets records of other keys on disk continues inside the device's
//! completion callbacks (`HybridLog::read_chain_async`), so it needs no `complete_pending` to
//! issue its next read; `complete_pending` finishes what the device delivered.
//!
//! Invariants: a pending continuation holds no epoch protection (it is a `Send` future), so a
//! session that never calls `complete_pending` delays only its own operations, never the store.
//! A session never has more than `pending_depth` operations pending.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use crate::contexts::{
    delete_ctx, rmw_decider, upsert_ctx, DeleteContext, ReadContext, RmwContext, UpsertContext,
};
use crate::core::address::Address;
use crate::core::codec::{decode, Codec, Encoded};
use crate::core::record::ValueBuf;
use crate::core::status::{Error, Result, Status};
use crate::device::Disk;
use crate::index::KeyHash;
use crate::ops::cpr::book::{PendingUpdate, SessionBook};
use crate::ops::pending::Started;
use crate::ops::read::{Found, ReadStep};
use crate::ops::tiered::{self, Lower, Tiered};
use crate::ops::Engine;

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
    engine: &'a Engine<D>,
    /// The tier beneath the engine (R2Kv's cold tier), if any: reads that find no record of
    /// their key ask it, updates may take their old value from it, deletes always write a
    /// tombstone (`ops::tiered`).
    lower: Option<&'a dyn Lower>,
    _types: std::marker::PhantomData<fn() -> (K, V)>,
    id: SessionId,
    serial: SerialNum,
    /// The checkpoint version this session's operations currently run in.
    version: u64,
    book: Arc<SessionBook>,
    pending: FuturesUnordered<Pending<'a>>,
}

impl<'a, K: Codec, V: Codec, D: Disk> Session<'a, K, V, D> {
    pub(crate) fn new(engine: &'a Engine<D>, lower: Option<&'a dyn Lower>) -> Self {
        let book = engine
            .cpr
            .register(None)
            .expect("registering a new session id cannot fail");
        Self::with_book(engine, lower, book)
    }

    /// Continues a recovered session: serial numbers go on after its commit point.
    pub(crate) fn continued(
        engine: &'a Engine<D>,
        lower: Option<&'a dyn Lower>,
        id: SessionId,
    ) -> Result<Self> {
        Ok(Self::with_book(
            engine,
            lower,
            engine.cpr.register(Some(id.0))?,
        ))
    }

    fn with_book(
        engine: &'a Engine<D>,
        lower: Option<&'a dyn Lower>,
        book: Arc<SessionBook>,
    ) -> Self {
        let serial = book.last_serial();
        Self {
            engine,
            lower,
            _types: std::marker::PhantomData,
            id: SessionId(book.id),
            serial: SerialNum(serial),
            version: engine.system_state().version,
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
    /// As [`RsKv::upsert`](crate::RsKv::upsert); the context's `complete` sees the same result.
    pub fn upsert<C: UpsertContext<Key = K, Value = V>>(&mut self, ctx: C) -> Result<Status> {
        let serial = self.next_serial().0;
        let (book, version) = (&self.book, &mut self.version);
        let r = upsert_ctx(self.engine, &ctx, &mut |v| {
            book.finished(serial, version, v)
        })
        .map(|()| Status::Ok);
        completed(r, |r| ctx.complete(r))
    }

    /// Deletes (never pending).
    ///
    /// # Errors
    /// As [`RsKv::delete`](crate::RsKv::delete); the context's `complete` sees the same result.
    pub fn delete<C: DeleteContext<Key = K, Value = V>>(&mut self, ctx: C) -> Result<Status> {
        let serial = self.next_serial().0;
        let (book, version) = (&self.book, &mut self.version);
        let r = delete_ctx(self.engine, &ctx, self.lower.is_some(), &mut |v| {
            book.finished(serial, version, v)
        });
        completed(r, |r| ctx.complete(r))
    }

    /// Reads; `Pending` if the record is on disk (finish with [`Session::complete_pending`]).
    /// A pending operation's device read is issued before this returns, so reads issued
    /// back to back are in flight together (up to [`Config::pending_depth`](crate::Config)
    /// of them: past it, this call first finishes earlier ones, see there); its context's
    /// `complete` runs at the latest in the `complete_pending` call that finishes it (earlier,
    /// if the device was that fast).
    ///
    /// # Errors
    /// As [`RsKv::read`](crate::RsKv::read), for a read that finished at once; a pending read's error goes to its
    /// context's `complete`.
    pub fn read<C: ReadContext<Key = K, Value = V> + Send + 'a>(
        &mut self,
        ctx: C,
    ) -> Result<Status> {
        let serial = self.next_serial().0;
        self.book.read(serial);
        let (engine, lower) = (self.engine, self.lower);
        let started = (|| -> Result<(Encoded, KeyHash, ReadStep, ValueBuf, _)> {
            let key = Encoded::new(ctx.key())?;
            let hash = engine.hasher.of_context(&key, ctx.key_hash());
            let seen = lower.and_then(|_| tiered::entry_before_read(engine, hash));
            let mut buf = ValueBuf::default();
            let g = engine.protect()?;
            let step = engine.read_mem(&g, &key, hash, &mut buf)?;
            Ok((key, hash, step, buf, seen))
        })();
        let (key, hash, step, mut buf, seen) = match started {
            Ok(s) => s,
            Err(e) => return finish_read(ctx, Err(e), &ValueBuf::default()),
        };
        if let (ReadStep::Found | ReadStep::Deleted, Some(lower)) = (step, lower) {
            lower.upper_answered();
        }
        match (step, lower) {
            (ReadStep::Found, _) => finish_read(ctx, Ok(true), &buf),
            (ReadStep::Deleted, _) | (ReadStep::NotFound, None) => {
                finish_read(ctx, Ok(false), &buf)
            }
            (ReadStep::NotFound, Some(lower)) => {
                self.start_pending(Pending {
                    op: Box::pin(async move {
                        let found =
                            tiered::read_below(engine, lower, &key, hash, seen, &mut buf).await;
                        let _ = finish_read(ctx, found.map(Found::live), &buf);
                    }),
                    update: None,
                });
                Ok(Status::Pending)
            }
            (ReadStep::Disk(address), lower) => {
                self.start_pending(Pending {
                    op: Box::pin(async move {
                        let mut found = engine.read_pending(&key, hash, address, &mut buf).await;
                        match (&found, lower) {
                            (Ok(Found::Absent), Some(lower)) => {
                                found =
                                    tiered::read_below(engine, lower, &key, hash, seen, &mut buf)
                                        .await;
                            }
                            (Ok(_), Some(lower)) => lower.upper_answered(),
                            _ => {}
                        }
                        let _ = finish_read(ctx, found.map(Found::live), &buf);
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
    /// As [`RsKv::rmw_context`](crate::RsKv::rmw_context), for an update that finished at once; a pending update's error
    /// goes to its context's `complete`.
    pub fn rmw<C: RmwContext<Key = K, Value = V> + Send + Sync + 'a>(
        &mut self,
        ctx: C,
    ) -> Result<Status> {
        let serial = self.next_serial().0;
        if let Some(lower) = self.lower {
            return self.rmw_tiered(serial, lower, ctx);
        }
        let engine = self.engine;
        let (book, version) = (&self.book, &mut self.version);
        let started = (|| -> Result<(Encoded, KeyHash, Started<'a>)> {
            let key = Encoded::new(ctx.key())?;
            let hash = engine.hasher.of_context(&key, ctx.key_hash());
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

    /// [`Session::rmw`] over a lower tier (`ops::tiered`): done at once when the engine holds
    /// the key in memory; pending when the old value is on disk or in the lower tier. The
    /// serial is recorded as pending from the first attempt that did not finish, and as
    /// finished in the version its write landed in.
    fn rmw_tiered<C: RmwContext<Key = K, Value = V> + Send + Sync + 'a>(
        &mut self,
        serial: u64,
        lower: &'a dyn Lower,
        ctx: C,
    ) -> Result<Status> {
        let engine = self.engine;
        let (book, version) = (&self.book, &mut self.version);
        let mut t = Tiered::default();
        let started = (|| -> Result<(Encoded, KeyHash, Started<'a>)> {
            let key = Encoded::new(ctx.key())?;
            let hash = engine.hasher.of_context(&key, ctx.key_hash());
            let mut base = rmw_decider(&ctx);
            let t = &t;
            let step = engine.update_start(
                &key,
                hash,
                Address::INVALID,
                true,
                &mut t.decide(engine, &mut base),
                &mut |v, pending| {
                    if pending || t.needs_lower() {
                        book.went_pending(serial, version, v);
                    } else {
                        book.finished(serial, version, v);
                    }
                },
            )?;
            Ok((key, hash, step))
        })();
        let (key, hash, resume, update) = match started {
            Err(e) => return completed(Err(e), |r| ctx.complete(r)),
            Ok((_, _, Started::Done(status))) if !t.needs_lower() => {
                return completed(Ok(status), |r| ctx.complete(r));
            }
            Ok((key, hash, Started::Done(_))) => (key, hash, None, None),
            Ok((key, hash, Started::Disk(address, seen, pending))) => {
                let resume = Some((address, seen, pending.version()));
                (key, hash, resume, Some(pending))
            }
        };
        let book = self.book.clone();
        self.start_pending(Pending {
            op: Box::pin(async move {
                let r = tiered::update_tiered(
                    engine,
                    lower,
                    &key,
                    hash,
                    &mut t,
                    resume,
                    &mut rmw_decider(&ctx),
                    &mut |v| book.pending_finished(serial, v),
                )
                .await;
                if r.is_err() {
                    book.pending_finished(serial, u64::MAX);
                }
                let _ = completed(r, |r| ctx.complete(r));
            }),
            update,
        });
        Ok(Status::Pending)
    }

    /// Takes a disk-bound continuation and polls it once at once, so its device read is issued
    /// now (as FASTER issues the I/O of an operation that goes pending) rather than at the next
    /// `complete_pending`; later polls there see it done. Once this returns, nobody drives the
    /// operation until `complete_pending`, so an update is parked: a checkpoint does not wait
    /// for a session that is busy elsewhere or idle.
    ///
    /// With `Config::pending_depth` operations already pending, it first makes room: finishes
    /// those that are done, else waits for one (their contexts complete here), so a session
    /// never has more than that many device reads in flight.
    fn start_pending(&mut self, mut op: Pending<'a>) {
        if self.pending.len() >= self.engine.pending_depth {
            self.drive(Until::Below(self.engine.pending_depth));
        }
        if Pin::new(&mut op).now_or_never().is_none() {
            op.set_driven(false);
            self.pending.push(op);
        }
    }

    /// Drives pending operations. With `wait`, returns only when none is left; without, polls
    /// once. Returns whether none is left. While it runs, the session's pending updates count
    /// as driven, so a checkpoint's `WaitPending` lets them land in the version they started in.
    ///
    /// Pending operations do not wait for this call to make progress on the device: each has
    /// its read in flight from the moment it went pending, and a chain walk through other
    /// keys' records on disk issues its next read from the device's completion callback. This
    /// call only finishes what the device has delivered (decodes values, runs the contexts'
    /// `complete`, continues walks that must consult the index again).
    pub fn complete_pending(&mut self, wait: bool) -> bool {
        self.drive(if wait { Until::Below(1) } else { Until::Ready });
        self.pending.is_empty()
    }
}

/// How long [`Session::drive`] drives.
#[derive(Clone, Copy)]
enum Until {
    /// Finish what is ready, never block.
    Ready,
    /// Finish what is ready, then block until fewer than this many are pending.
    Below(usize),
}

thread_local! {
    /// How many sessions this thread is driving now (`complete_pending` nested in a context's
    /// callback counts twice).
    static DRIVING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread is inside a session's `complete_pending` (in a context callback):
/// it then drives pending updates that a blocking checkpoint would wait for.
pub(crate) fn driving_here() -> bool {
    DRIVING.with(|d| d.get() > 0)
}

/// Counts the calling thread as driving a session until dropped (a panicking callback too).
struct Driving;

impl Driving {
    fn enter() -> Self {
        DRIVING.with(|d| d.set(d.get() + 1));
        Driving
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        DRIVING.with(|d| d.set(d.get() - 1));
    }
}

impl<K, V, D: Disk> Session<'_, K, V, D> {
    /// Finishes the pending operations that are ready, then (`Until::Below(n)`) waits until
    /// fewer than `n` are left.
    fn drive(&mut self, until: Until) {
        let _driving = Driving::enter();
        for p in self.pending.iter_mut() {
            p.set_driven(true);
        }
        // Every operation that is ready finishes; `next` yields one per call.
        while let Some(Some(())) = self.pending.next().now_or_never() {}
        if let Until::Below(n) = until {
            crate::ops::pending::block_on(async {
                while self.pending.len() >= n && self.pending.next().await.is_some() {}
            });
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
        self.drive(Until::Below(1));
        // An ended session is not listed by later checkpoints (it cannot be continued from
        // them); the registry does not grow with every session ever started.
        self.engine.cpr.unregister(self.book.id);
    }
}
