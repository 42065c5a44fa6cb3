//! The bookkeeping CPR needs: the claim of the checkpoint/growth machinery, the updates
//! waiting for the disk (and whether anyone drives them), the session registry and each
//! session's book, and the commit points recovery installed.
//!
//! It sits behind mutexes: it is not part of the latch-free index or log. No operation takes
//! one on its way, except a session's operation that crosses a version boundary (once per
//! checkpoint) or goes to disk (already paying for a device read).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::core::checkpoint::{CommitPoint, SessionCommit};
use crate::core::status::{Error, Result};

/// Checkpoint bookkeeping of one store.
pub(crate) struct Cpr {
    /// A checkpoint or an index growth is running.
    pub(super) busy: AtomicBool,
    /// Whether the claim is held by an index growth: its claimers wait for it (a growth is
    /// bounded work), where a checkpoint's make them `Busy`. Changed only under the mutex,
    /// together with `busy` for a growth, so a waiter cannot miss the end of a growth.
    growing: Mutex<bool>,
    growth_done: Condvar,
    /// Updates of a version (by its parity) that went to disk and are being driven to their
    /// end: `WaitPending` waits for these. A session's pending update is counted only while
    /// the session drives it (`complete_pending`), an async one only while it is polled, a
    /// blocking one throughout: a pending update nobody drives never holds up a checkpoint.
    pub(super) driven: [StdAtomicU64; 2],
    pub(super) sessions: Mutex<Vec<Arc<SessionBook>>>,
    pub(super) next_session: StdAtomicU64,
    /// 0 until the checkpoint directory was scanned.
    pub(super) next_token: StdAtomicU64,
    /// Commit points of the sessions of the checkpoint this store was recovered from.
    pub(super) recovered: Mutex<HashMap<u64, CommitPoint>>,
    /// What the next checkpoint records beside its own files (R2Kv's cold tier).
    pub(crate) attachment: Mutex<Attachment>,
}

/// A file a checkpoint writes before its `log.meta` on behalf of its owner: R2Kv checkpoints
/// its cold tier first, then hands its state here, so that the hot tier's checkpoint is only
/// complete with it (one token for both).
#[derive(Debug, Default)]
pub(crate) struct Attachment {
    /// Every checkpoint must carry one: the store is a tier of an R2Kv, whose checkpoint is
    /// the only one that prepares it.
    pub(crate) required: bool,
    /// The next checkpoint's file: its name and contents.
    pub(crate) next: Option<(&'static str, Vec<u8>)>,
}

impl Default for Cpr {
    fn default() -> Self {
        Self {
            busy: AtomicBool::new(false),
            growing: Mutex::new(false),
            growth_done: Condvar::new(),
            driven: [StdAtomicU64::new(0), StdAtomicU64::new(0)],
            sessions: Mutex::new(Vec::new()),
            next_session: StdAtomicU64::new(1),
            next_token: StdAtomicU64::new(0),
            recovered: Mutex::new(HashMap::new()),
            attachment: Mutex::new(Attachment::default()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The bookkeeping stays consistent even if a holder panicked (every update is one step).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The exclusive claim of the checkpoint/growth machinery; released on drop.
pub(crate) struct Claim<'a>(pub(super) &'a AtomicBool);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.store(false, StdOrdering::Release);
    }
}

/// An update waiting for the disk: counted in [`Cpr::driven`] for the version it started in,
/// except while parked, until dropped. Whoever holds it says when nobody drives the update.
pub(crate) struct PendingUpdate<'a> {
    cpr: &'a Cpr,
    version: u64,
    parked: bool,
}

impl PendingUpdate<'_> {
    /// The version the update started in.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    fn counter(&self) -> &StdAtomicU64 {
        &self.cpr.driven[(self.version & 1) as usize]
    }

    /// Nobody drives the update until [`PendingUpdate::unpark`]: checkpoints do not wait for it
    /// (it may land in a later version, and is then excluded from the commit point).
    pub(crate) fn park(&mut self) {
        if !self.parked {
            self.parked = true;
            self.counter().fetch_sub(1, StdOrdering::AcqRel);
        }
    }

    /// Its owner drives the update again.
    pub(crate) fn unpark(&mut self) {
        if self.parked {
            self.parked = false;
            self.counter().fetch_add(1, StdOrdering::AcqRel);
        }
    }

    /// Runs `fut` (the update's continuation), parked whenever it is not being polled: for a
    /// future handed to the caller's executor, which may hold it without polling it.
    pub(crate) async fn parked_between_polls<F: std::future::Future>(
        mut self,
        fut: F,
    ) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            self.unpark();
            let polled = fut.as_mut().poll(cx);
            if polled.is_pending() {
                self.park();
            }
            polled
        })
        .await
    }
}

impl Drop for PendingUpdate<'_> {
    fn drop(&mut self) {
        self.park();
    }
}

/// The claim held by an index growth; released on drop, waking the claimers that wait for it.
pub(crate) struct GrowthClaim<'a>(&'a Cpr);

impl Drop for GrowthClaim<'_> {
    fn drop(&mut self) {
        let mut growing = lock(&self.0.growing);
        self.0.busy.store(false, StdOrdering::Release);
        *growing = false;
        drop(growing);
        self.0.growth_done.notify_all();
    }
}

impl Cpr {
    fn try_claim(&self) -> bool {
        self.busy
            .compare_exchange(false, true, StdOrdering::AcqRel, StdOrdering::Acquire)
            .is_ok()
    }

    /// Claims, waiting while an index growth holds the claim if `may_wait` (the caller is not
    /// epoch protected, so the growth does not wait for it). `Err` with `what` if a
    /// checkpoint holds it. A growth takes the claim and marks itself under the mutex, so with
    /// the mutex held, a taken claim that is not marked is a checkpoint's.
    fn claim_as(&self, what: &'static str, may_wait: bool, growth: bool) -> Result<()> {
        if !growth && self.try_claim() {
            return Ok(());
        }
        let mut growing = lock(&self.growing);
        loop {
            if self.try_claim() {
                *growing |= growth;
                return Ok(());
            }
            if !*growing || !may_wait {
                return Err(Error::Busy(what));
            }
            growing = self
                .growth_done
                .wait(growing)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Claims the machinery for one checkpoint (or a checkpoint's removal), waiting for a
    /// running index growth if `may_wait`.
    pub(crate) fn claim(&self, what: &'static str, may_wait: bool) -> Result<Claim<'_>> {
        self.claim_as(what, may_wait, false)?;
        Ok(Claim(&self.busy))
    }

    /// Claims the machinery for an index growth, waiting for another growth if `may_wait`.
    pub(crate) fn claim_growth(
        &self,
        what: &'static str,
        may_wait: bool,
    ) -> Result<GrowthClaim<'_>> {
        self.claim_as(what, may_wait, true)?;
        Ok(GrowthClaim(self))
    }

    /// Counts an update of `version` that goes to disk (driven by the caller until parked).
    pub(crate) fn pending_update(&self, version: u64) -> PendingUpdate<'_> {
        self.driven[(version & 1) as usize].fetch_add(1, StdOrdering::AcqRel);
        PendingUpdate {
            cpr: self,
            version,
            parked: false,
        }
    }

    /// Updates of `version` that went to disk and are being driven now.
    pub(crate) fn driven_updates(&self, version: u64) -> u64 {
        self.driven[(version & 1) as usize].load(StdOrdering::Acquire)
    }

    /// Registers a session (a new id, or a recovered one).
    pub(crate) fn register(&self, id: Option<u64>) -> Result<Arc<SessionBook>> {
        let mut sessions = lock(&self.sessions);
        let (id, serial) = match id {
            Some(id) => {
                if sessions.iter().any(|s| s.id == id) {
                    return Err(Error::Busy("that session id is already in use"));
                }
                let point =
                    lock(&self.recovered)
                        .get(&id)
                        .cloned()
                        .ok_or_else(|| Error::Config {
                            field: "session id",
                            reason: format!("session {id} is not in the recovered checkpoint"),
                        })?;
                (id, point.until)
            }
            None => (self.next_session.fetch_add(1, StdOrdering::Relaxed), 0),
        };
        let book = Arc::new(SessionBook {
            id,
            serial: StdAtomicU64::new(serial),
            book: Mutex::new(Book::default()),
        });
        sessions.push(book.clone());
        Ok(book)
    }

    /// Forgets session `id` (it ended).
    pub(crate) fn unregister(&self, id: u64) {
        lock(&self.sessions).retain(|s| s.id != id);
        lock(&self.recovered).remove(&id);
    }

    /// The recovered commit point of session `id`.
    pub(crate) fn recovered_point(&self, id: u64) -> Option<CommitPoint> {
        lock(&self.recovered).get(&id).cloned()
    }

    /// Installs what recovery read.
    pub(crate) fn set_recovered(&self, sessions: &[SessionCommit], next_session: u64) {
        let mut r = lock(&self.recovered);
        for s in sessions {
            r.insert(s.id, s.commit.clone());
        }
        self.next_session
            .fetch_max(next_session, StdOrdering::AcqRel);
    }

    pub(super) fn collect(&self, version: u64) -> (Vec<SessionCommit>, u64) {
        let sessions = lock(&self.sessions);
        let mut out: Vec<SessionCommit> = sessions
            .iter()
            .map(|s| SessionCommit {
                id: s.id,
                commit: s.commit_point(version),
            })
            .collect();
        // Recovered sessions nobody continued keep their commit point.
        for (id, point) in lock(&self.recovered).iter() {
            if !out.iter().any(|s| s.id == *id) {
                out.push(SessionCommit {
                    id: *id,
                    commit: point.clone(),
                });
            }
        }
        out.sort_by_key(|s| s.id);
        (out, self.next_session.load(StdOrdering::Acquire))
    }
}

/// What a checkpoint needs to know of one session; shared between the session and the driver.
pub(crate) struct SessionBook {
    pub(crate) id: u64,
    /// Serial number of the last operation recorded.
    serial: StdAtomicU64,
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// For each version the session left: the last serial number issued in it.
    until: BTreeMap<u64, u64>,
    /// Updates waiting for the disk: serial -> version started in.
    outstanding: BTreeMap<u64, u64>,
    /// Updates that waited for the disk and finished in a later version:
    /// (serial, started in, finished in).
    late: Vec<(u64, u64, u64)>,
}

impl SessionBook {
    fn transition(&self, serial: u64, local: &mut u64, now: u64) {
        if now > *local {
            let mut b = lock(&self.book);
            for w in *local..now {
                b.until.entry(w).or_insert(serial - 1);
            }
            *local = now;
        }
    }

    /// Records operation `serial`, finished in version `version` (call while still epoch
    /// protected; `local` is the session's own current version).
    pub(crate) fn finished(&self, serial: u64, local: &mut u64, version: u64) {
        self.transition(serial, local, version);
        self.serial.store(serial, StdOrdering::Release);
    }

    /// Serial number of the last operation recorded (a continued session's commit point at
    /// first).
    pub(crate) fn last_serial(&self) -> u64 {
        self.serial.load(StdOrdering::Acquire)
    }

    /// Records a read (versionless: it changes no state).
    pub(crate) fn read(&self, serial: u64) {
        self.serial.store(serial, StdOrdering::Release);
    }

    /// Records update `serial` going to disk after an attempt in `version` (while protected).
    pub(crate) fn went_pending(&self, serial: u64, local: &mut u64, version: u64) {
        self.transition(serial, local, version);
        lock(&self.book).outstanding.insert(serial, version);
        self.serial.store(serial, StdOrdering::Release);
    }

    /// Records that pending update `serial` landed in `version` (while protected).
    pub(crate) fn pending_finished(&self, serial: u64, version: u64) {
        let mut b = lock(&self.book);
        if let Some(start) = b.outstanding.remove(&serial) {
            if version != start {
                b.late.push((serial, start, version));
            }
        }
    }

    fn commit_point(&self, v: u64) -> CommitPoint {
        let mut b = lock(&self.book);
        let until = b
            .until
            .get(&v)
            .copied()
            .unwrap_or_else(|| self.serial.load(StdOrdering::Acquire));
        let mut excluded: Vec<u64> = b
            .outstanding
            .keys()
            .copied()
            .filter(|s| *s <= until)
            .chain(
                b.late
                    .iter()
                    .filter(|(s, start, end)| *s <= until && *start <= v && v < *end)
                    .map(|(s, _, _)| *s),
            )
            .collect();
        excluded.sort_unstable();
        excluded.dedup();
        b.until.retain(|w, _| *w > v);
        b.late.retain(|(_, _, end)| *end > v + 1);
        CommitPoint { until, excluded }
    }
}
