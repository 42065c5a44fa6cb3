//! Finishing operations whose records are on disk.
//!
//! The continuation of each operation after its first in-memory attempt is written once, as an
//! `async fn` that awaits device reads (`Engine::fetch`). Three drivers run it:
//! - the blocking API (`RsKv::read`, `RsKv::get`, ...) drives it with `block_on` on the calling
//!   thread, so the caller gets the final status;
//! - the async API awaits it;
//! - a [`Session`](crate::Session) keeps it, with the context it owns, and polls it in
//!   `complete_pending`.
//!
//! No epoch protection is held across an `.await` (`EpochGuard` is not `Send`, and the futures
//! must be), so a thread waiting for the disk never holds back flushing or eviction.
//!
//! A walk through records of other keys on disk does not wait for its future to be polled:
//! [`Engine::fetch_chain`] lets the device's completion callback follow the chain
//! (`HybridLog::read_chain_async` with `ops::read::follow_other_keys`), and hands back the
//! first record the operation must decide itself. The loops below treat that record exactly
//! as if they had fetched every record before it one by one, so the truncation rule of
//! `DiskWalk` and the checksum of every record hold unchanged (docs/DESIGN.md, "Reads in
//! flight and sector reads").
//!
//! Every blocking wait goes through [`block_on`], which may nest: an update's function can call
//! a blocking operation of the store that itself waits for the disk (`futures_executor`'s
//! `block_on` refuses to nest and panics).

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::record::ValueBuf;
use crate::core::status::{Error, Result, Status};
use crate::device::Disk;
use crate::hlog::{ChainStep, HybridLog, RecordBytes};
use crate::index::hash_bucket::HashBucketEntry;
use crate::index::KeyHash;
use crate::ops::counters::Count;
use crate::ops::cpr::book::PendingUpdate;
use crate::ops::read::{follow_other_keys, DiskWalk, Found, ReadStep};
use crate::ops::rmw::{Decision, DiskTrace, Latest, UpdateStep};
use crate::ops::Engine;

/// [`Engine::fetch_chain`] in any log (R2Kv's cold log too).
pub(crate) async fn fetch_chain<D: Disk>(
    log: &HybridLog<D>,
    address: Address,
    follow: Option<ChainStep>,
) -> (Address, Result<RecordBytes>) {
    let (tx, rx) = futures_channel::oneshot::channel();
    log.read_chain_async(
        address,
        follow,
        Box::new(move |at, r| {
            let _ = tx.send((at, r));
        }),
    );
    let (at, read) = rx.await.unwrap_or_else(|_| {
        let e = std::io::Error::other("device dropped the read callback");
        (address, Err(Error::io("waiting for a device read", e)))
    });
    if let Err(e) = &read {
        tracing::warn!(address = at.raw(), error = %e, "device read failed");
    }
    (at, read)
}

impl<D: Disk> Engine<D> {
    /// Reads the record at `address` from the device.
    pub(crate) async fn fetch(&self, address: Address) -> Result<RecordBytes> {
        self.fetch_chain(address, None).await.1
    }

    /// Reads the record at `address` and, inside the device's completion callbacks, the
    /// records `follow` leads to (`HybridLog::read_chain_async`): a walk through other keys'
    /// records on disk goes on without this future being polled. Returns the address of the
    /// last record read, and it.
    pub(crate) async fn fetch_chain(
        &self,
        address: Address,
        follow: Option<ChainStep>,
    ) -> (Address, Result<RecordBytes>) {
        fetch_chain(&self.hlog, address, follow).await
    }

    /// Continues a read on disk until it resolves. A walk whose next record was truncated
    /// after the walk began (before its fetch, or under it: the device then reads zeros or
    /// nothing) starts over from the index; see [`DiskWalk`].
    pub(crate) async fn read_pending(
        &self,
        key: &Encoded,
        hash: KeyHash,
        mut walk: DiskWalk,
        out: &mut ValueBuf,
    ) -> Result<Found> {
        loop {
            if walk.at >= self.hlog.begin() {
                // Records of other keys are skipped inside the device callbacks; the record
                // handed back is decided here exactly as if this loop had fetched each one.
                let follow = follow_other_keys(key, walk.begin);
                let (at, fetched) = self.fetch_chain(walk.at, Some(follow)).await;
                walk.at = at;
                let fetched = fetched.and_then(|bytes| self.read_disk(key, walk, &bytes, out));
                match fetched {
                    Ok(ReadStep::Found) => {
                        self.counters.bump(Count::ReadOnDisk);
                        if self.read_cache.is_some() {
                            self.cache_read(key, hash, walk.seen, walk.at, out.bytes());
                        } else if self.copy_reads {
                            self.copy_read_to_tail(key, hash, walk.at, out.bytes());
                        }
                        return Ok(Found::Live);
                    }
                    Ok(ReadStep::NotFound) => {
                        self.counters.bump(Count::ReadNotFound);
                        return Ok(Found::Absent);
                    }
                    Ok(ReadStep::Deleted) => {
                        self.counters.bump(Count::ReadNotFound);
                        return Ok(Found::Deleted);
                    }
                    Ok(ReadStep::Disk(next)) => {
                        walk = next;
                        continue;
                    }
                    Err(e) if walk.at >= self.hlog.begin() => return Err(e),
                    Err(_) => {} // truncated under the fetch
                }
            }
            let g = self.protect()?;
            match self.read_mem(&g, key, hash, out)? {
                ReadStep::Disk(w) => walk = w,
                done => return Ok(done.found()),
            }
        }
    }

    /// Copies the value a read found on disk at `address` to the tail, unless a newer record of
    /// the key exists (a conditional insert above `address`). Only the in-memory attempt runs:
    /// when making sure nothing newer exists would take another device read, or anything else
    /// stands in the way (a full log, an error), the copy is skipped: it only fills the cache,
    /// the read's result does not depend on it, and a device error shows in the next
    /// operation that needs the device.
    fn copy_read_to_tail(&self, key: &Encoded, hash: KeyHash, address: Address, value: &[u8]) {
        let Ok(g) = self.protect() else {
            return;
        };
        let value = Encoded::from_bytes(value);
        let floor = Address::new(address.raw() + 1);
        let _ = self.update_mem(&g, key, hash, floor, false, &mut None, &mut |latest| {
            Ok(match latest {
                Latest::Absent => Decision::Write(value.clone()),
                Latest::Deleted | Latest::Value(_) => Decision::Abort,
            })
        });
    }

    /// A whole read: in memory, then on disk if needed.
    pub(crate) async fn read_async(
        &self,
        key: &Encoded,
        hash: KeyHash,
        out: &mut ValueBuf,
    ) -> Result<Found> {
        let step = {
            let g = self.protect()?;
            self.read_mem(&g, key, hash, out)?
        };
        match step {
            ReadStep::Disk(w) => self.read_pending(key, hash, w, out).await,
            done => Ok(done.found()),
        }
    }

    /// A whole read, blocking the calling thread while the disk works.
    pub(crate) fn read_blocking(
        &self,
        key: &Encoded,
        hash: KeyHash,
        out: &mut ValueBuf,
    ) -> Result<Found> {
        let step = {
            let g = self.protect()?;
            self.read_mem(&g, key, hash, out)?
        };
        match step {
            ReadStep::Disk(w) => block_on(self.read_pending(key, hash, w, out)),
            done => Ok(done.found()),
        }
    }

    /// Continues an update that went to disk at `address` having seen index entry `seen`, in
    /// an attempt of version `started_in`. `on_commit` runs with the version the update landed
    /// in, while the thread is still epoch protected (so a checkpoint collecting commit points
    /// after every thread acknowledged its last phase sees it; see `core::checkpoint`).
    #[allow(clippy::too_many_arguments)] // the operation's whole state; a struct would only rename it
    pub(crate) async fn update_pending(
        &self,
        key: &Encoded,
        hash: KeyHash,
        floor: Address,
        in_place: bool,
        mut address: Address,
        mut seen: HashBucketEntry,
        started_in: u64,
        decide: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
        on_commit: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Status> {
        let mut pin = Some(started_in);
        loop {
            let found = loop {
                // Below `begin` the chain ends: the CAS against `seen` in `update_after_disk`
                // catches a truncation that moved a live record (its copy swung the entry).
                if address < self.hlog.begin() {
                    break DiskTrace::Absent;
                }
                let follow = follow_other_keys(key, floor);
                let (at, fetched) = self.fetch_chain(address, Some(follow)).await;
                address = at;
                let fetched =
                    fetched.and_then(|bytes| self.update_disk(key, address, &bytes, floor));
                match fetched {
                    Ok(DiskTrace::Next(next)) => address = next,
                    Ok(done) => break done,
                    Err(_) if address < self.hlog.begin() => break DiskTrace::Absent,
                    Err(e) => return Err(e),
                }
            };
            // An RMW's miss: its key is remembered as one (`read_cache`, invariant 8), so its
            // new record is kept in the cache when it leaves memory (invariant 9).
            if let (DiskTrace::Found(Some(v)), Some(cache), true) =
                (&found, &self.read_cache, floor.is_invalid())
            {
                cache.note_miss(hash, key.bytes().len(), v.len());
            }
            let step = {
                let g = self.protect()?;
                if let (Some(status), v) =
                    self.update_after_disk(&g, key, hash, seen, &found, &mut pin, decide)?
                {
                    on_commit(v);
                    self.counters.bump(Count::Rmw);
                    return Ok(status);
                }
                // The entry changed while we were on disk: start over from memory.
                let (step, v) =
                    self.update_mem(&g, key, hash, floor, in_place, &mut pin, decide)?;
                if let UpdateStep::Done(s) = step {
                    on_commit(v);
                    self.counters.bump(Count::Rmw);
                    return Ok(s);
                }
                step
            };
            if let UpdateStep::Disk {
                address: a,
                seen: s,
            } = step
            {
                address = a;
                seen = s;
            }
        }
    }

    /// A whole update (RMW or conditional insert), async.
    pub(crate) async fn update_async(
        &self,
        key: &Encoded,
        hash: KeyHash,
        floor: Address,
        in_place: bool,
        decide: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
    ) -> Result<Status> {
        match self.update_start(key, hash, floor, in_place, decide, &mut |_, _| {})? {
            Started::Done(s) => Ok(s),
            Started::Disk(address, seen, pending) => {
                // The caller's executor may hold this future without polling it.
                let (v, mut nothing) = (pending.version(), |_| {});
                let rest = self.update_pending(
                    key,
                    hash,
                    floor,
                    in_place,
                    address,
                    seen,
                    v,
                    decide,
                    &mut nothing,
                );
                pending.parked_between_polls(rest).await
            }
        }
    }

    /// The rest of an update after [`Engine::update_start`], driven by the caller throughout
    /// (it blocks on it).
    pub(crate) async fn update_rest(
        &self,
        key: &Encoded,
        hash: KeyHash,
        floor: Address,
        in_place: bool,
        started: Started<'_>,
        decide: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
    ) -> Result<Status> {
        match started {
            Started::Done(s) => Ok(s),
            Started::Disk(address, seen, pending) => {
                let (a, v) = (address, pending.version());
                let done = self
                    .update_pending(key, hash, floor, in_place, a, seen, v, decide, &mut |_| {})
                    .await;
                // Counted as driven until it landed.
                drop(pending);
                done
            }
        }
    }

    /// The first, in-memory attempt of an update, under its own epoch protection. `on_commit`
    /// runs (protected) with the attempt's version and whether the update goes to disk; an
    /// update that goes to disk is counted as pending in its version before the protection ends.
    pub(crate) fn update_start(
        &self,
        key: &Encoded,
        hash: KeyHash,
        floor: Address,
        in_place: bool,
        decide: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
        on_commit: &mut dyn FnMut(u64, bool),
    ) -> Result<Started<'_>> {
        let g = self.protect()?;
        Ok(
            match self.update_mem(&g, key, hash, floor, in_place, &mut None, decide)? {
                (UpdateStep::Done(s), v) => {
                    on_commit(v, false);
                    self.counters.bump(Count::Rmw);
                    Started::Done(s)
                }
                (UpdateStep::Disk { address, seen }, v) => {
                    on_commit(v, true);
                    self.counters.bump(Count::Pending);
                    Started::Disk(address, seen, self.cpr.pending_update(v))
                }
            },
        )
    }

    /// A whole update, blocking while the disk works.
    pub(crate) fn update_blocking(
        &self,
        key: &Encoded,
        hash: KeyHash,
        floor: Address,
        in_place: bool,
        decide: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
    ) -> Result<Status> {
        match self.update_start(key, hash, floor, in_place, decide, &mut |_, _| {})? {
            Started::Done(s) => Ok(s),
            disk => block_on(self.update_rest(key, hash, floor, in_place, disk, decide)),
        }
    }
}

/// How the first attempt of an update ended.
pub(crate) enum Started<'a> {
    /// Finished in memory.
    Done(Status),
    /// Continue on disk at this address, having seen this entry; counted as pending.
    Disk(Address, HashBucketEntry, PendingUpdate<'a>),
}

/// A waker that unparks the thread that made it, and the flag its wakes set.
struct Unpark {
    thread: std::thread::Thread,
    woken: std::sync::atomic::AtomicBool,
}

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.thread.unpark();
    }
}

impl Unpark {
    fn current() -> std::sync::Arc<Unpark> {
        std::sync::Arc::new(Unpark {
            thread: std::thread::current(),
            woken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts a round of polls: wakes from here on are not lost.
    fn arm(&self) {
        self.woken
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Parks until a wake since the last [`Unpark::arm`]. A wake between the polls and here
    /// set `woken`; park returns at once on an unpark token too, so no wake is lost.
    fn wait(&self) {
        while !self.woken.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::park();
        }
    }
}

/// Runs `fut` to its end on the calling thread, parking it while nothing is ready. Unlike
/// `futures_executor::block_on` it may be called from inside another `block_on` (a nested
/// store operation inside an update's function): the inner wait simply blocks the thread,
/// which the outer one was doing anyway.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Waker};

    let unpark = Unpark::current();
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        unpark.arm();
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        unpark.wait();
    }
}

/// Runs the futures `items` yields on the calling thread, at most `width` at once, and hands
/// each output to `done` as it finishes. The futures are taken from `items` in order, one
/// when a slot is free, and a future that finishes at its first poll frees its slot at once
/// (compaction's moves mostly finish in memory). Unlike `buffer_unordered`, which allocates a
/// task per future, it keeps `width` boxed slots and reuses them: a compaction pass moves
/// millions of records through it. After a wake it polls every waiting future again (at most
/// `width`; a poll of a future that is still waiting is cheap).
pub(crate) fn run_window<F: std::future::Future>(
    items: impl IntoIterator<Item = F>,
    width: usize,
    mut done: impl FnMut(F::Output),
) {
    use std::task::{Context, Poll, Waker};

    let mut items = items.into_iter();
    let unpark = Unpark::current();
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut slots: Vec<std::pin::Pin<Box<Option<F>>>> = Vec::new();
    let mut exhausted = false;
    loop {
        unpark.arm();
        let mut waiting = 0;
        for i in 0..width.max(1) {
            if i == slots.len() {
                if exhausted {
                    break;
                }
                slots.push(Box::pin(None));
            }
            let slot = &mut slots[i];
            loop {
                if slot.is_none() {
                    match items.next() {
                        Some(f) => slot.set(Some(f)),
                        None => {
                            exhausted = true;
                            break;
                        }
                    }
                }
                let Some(fut) = slot.as_mut().as_pin_mut() else {
                    break;
                };
                match fut.poll(&mut cx) {
                    Poll::Ready(out) => {
                        slot.set(None);
                        done(out);
                    }
                    Poll::Pending => {
                        waiting += 1;
                        break;
                    }
                }
            }
        }
        if waiting == 0 && exhausted {
            return;
        }
        unpark.wait();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::run_window;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    /// Ready at its first poll, or (every third) woken later by another thread.
    struct Job {
        id: usize,
        later: bool,
        state: Option<Arc<(AtomicBool, Mutex<Option<Waker>>)>>,
        live: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Future for Job {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            if !self.later {
                return Poll::Ready(self.id);
            }
            let state = match &self.state {
                Some(s) => s.clone(),
                None => {
                    let now = self.live.fetch_add(1, Ordering::SeqCst) + 1;
                    self.most.fetch_max(now, Ordering::SeqCst);
                    let s = Arc::new((AtomicBool::new(false), Mutex::new(None)));
                    self.state = Some(s.clone());
                    let t = s.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                        t.0.store(true, Ordering::SeqCst);
                        if let Some(w) = t.1.lock().unwrap().take() {
                            w.wake();
                        }
                    });
                    s
                }
            };
            // Register before checking, so a wake between the two is not lost.
            *state.1.lock().unwrap() = Some(cx.waker().clone());
            if state.0.load(Ordering::SeqCst) {
                self.live.fetch_sub(1, Ordering::SeqCst);
                Poll::Ready(self.id)
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn every_future_finishes_once_and_at_most_width_wait_together() {
        for width in [1, 3, 16] {
            let live = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let jobs = (0..600).map(|id| Job {
                id,
                later: id % 3 != 0,
                state: None,
                live: live.clone(),
                most: most.clone(),
            });
            let mut out = Vec::new();
            run_window(jobs, width, |id| out.push(id));
            out.sort_unstable();
            assert_eq!(out, (0..600).collect::<Vec<_>>(), "width {width}");
            assert_eq!(live.load(Ordering::SeqCst), 0);
            let most = most.load(Ordering::SeqCst);
            assert!(most <= width, "width {width}: {most} waited together");
            if width > 1 {
                assert!(most > 1, "width {width}: the waits never overlapped");
            }
        }
    }

    #[test]
    fn no_futures_and_zero_width_are_fine() {
        let mut n = 0;
        run_window(std::iter::empty::<std::future::Ready<()>>(), 4, |()| n += 1);
        assert_eq!(n, 0);
        run_window((0..5).map(std::future::ready), 0, |_| n += 1);
        assert_eq!(n, 5);
    }
}
