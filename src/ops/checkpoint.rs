//! The checkpoint driver and the per-session bookkeeping CPR needs. The state machine, its
//! invariants and the file formats are described in [`crate::core::checkpoint`].
//!
//! The driver runs on the caller's thread (or a thread of its own for the async call). It is
//! never epoch protected itself: it publishes a phase, then waits until every protected thread
//! has acknowledged it, draining the epoch's actions meanwhile (flushes and evictions run there).
//!
//! The bookkeeping here (session registry, recovered commit points, each session's book) sits
//! behind mutexes: it is not part of the latch-free index or log. No operation takes one on its
//! way, except a session's operation that crosses a version boundary (once per checkpoint) or
//! goes to disk (already paying for a device read).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::core::address::Address;
use crate::core::alloc::AlignedBuf;
use crate::core::checkpoint::{
    CheckpointDir, CheckpointKind, CommitPoint, IndexMeta, LogMeta, LogMode, Phase, SessionCommit,
    SystemState, Token, INDEX_DATA, SNAPSHOT_DATA,
};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::ops::Engine;

/// Checkpoint bookkeeping of one store.
pub(crate) struct Cpr {
    /// A checkpoint or an index growth is running.
    busy: AtomicBool,
    /// Updates of a version (by its parity) that went to disk and are being driven to their
    /// end: `WaitPending` waits for these. A session's pending update is counted only while
    /// the session drives it (`complete_pending`), an async one only while it is polled, a
    /// blocking one throughout: a pending update nobody drives never holds up a checkpoint.
    driven: [StdAtomicU64; 2],
    sessions: Mutex<Vec<Arc<SessionBook>>>,
    next_session: StdAtomicU64,
    /// 0 until the checkpoint directory was scanned.
    next_token: StdAtomicU64,
    /// Commit points of the sessions of the checkpoint this store was recovered from.
    recovered: Mutex<HashMap<u64, CommitPoint>>,
}

impl Default for Cpr {
    fn default() -> Self {
        Self {
            busy: AtomicBool::new(false),
            driven: [StdAtomicU64::new(0), StdAtomicU64::new(0)],
            sessions: Mutex::new(Vec::new()),
            next_session: StdAtomicU64::new(1),
            next_token: StdAtomicU64::new(0),
            recovered: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The bookkeeping stays consistent even if a holder panicked (every update is one step).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The exclusive claim of the checkpoint/growth machinery; released on drop.
pub(crate) struct Claim<'a>(&'a AtomicBool);

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

impl Cpr {
    /// Claims the machinery for one checkpoint or growth.
    pub(crate) fn claim(&self, what: &'static str) -> Result<Claim<'_>> {
        self.busy
            .compare_exchange(false, true, StdOrdering::AcqRel, StdOrdering::Acquire)
            .map_err(|_| Error::Busy(what))?;
        Ok(Claim(&self.busy))
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

    fn collect(&self, version: u64) -> (Vec<SessionCommit>, u64) {
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

/// A checkpoint that has been named and holds the claim, not yet run.
pub(crate) struct Started {
    dir: CheckpointDir,
    token: Token,
}

impl Started {
    /// The checkpoint's token.
    pub(crate) fn token(&self) -> Token {
        self.token
    }
}

/// Puts the state machine back to rest if a checkpoint stops half way.
struct RestOnDrop<'a, D: Disk> {
    engine: &'a Engine<D>,
    armed: bool,
}

impl<D: Disk> Drop for RestOnDrop<'_, D> {
    fn drop(&mut self) {
        if self.armed {
            let v = self.engine.system_state().version;
            self.engine.set_system_state(SystemState {
                phase: Phase::Rest,
                version: v,
            });
        }
    }
}

impl<D: Disk> Engine<D> {
    /// The checkpoint directory of this store's device.
    ///
    /// # Errors
    /// [`Error::Config`] for a device that keeps nothing (NullDisk).
    pub(crate) fn checkpoint_dir(&self) -> Result<CheckpointDir> {
        match self.hlog.disk().checkpoint_root() {
            Some(root) if self.hlog.disk().is_persistent() => Ok(CheckpointDir::new(root)),
            _ => Err(Error::Config {
                field: "device",
                reason: "the device keeps nothing, so it cannot hold checkpoints".into(),
            }),
        }
    }

    fn next_token(&self, dir: &CheckpointDir) -> Result<Token> {
        if self.cpr.next_token.load(StdOrdering::Acquire) == 0 {
            let last = dir.last_token_ever()?.map_or(0, |t| t.0);
            self.cpr.next_token.fetch_max(last + 1, StdOrdering::AcqRel);
        }
        Ok(Token(self.cpr.next_token.fetch_add(1, StdOrdering::AcqRel)))
    }

    /// Publishes `phase` (with `version`) and waits until every protected thread saw it.
    fn enter(&self, phase: Phase, version: u64) {
        let s = SystemState { phase, version };
        self.set_system_state(s);
        self.wait_for(|| self.epoch.all_acked(s.word()));
    }

    /// Waits for `done`, draining epoch actions (which flush and evict) meanwhile.
    fn wait_for(&self, mut done: impl FnMut() -> bool) {
        let mut round = 0u32;
        while !done() {
            self.epoch.drain();
            if round < 64 {
                round += 1;
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Waits until every thread protected now has left its operation.
    fn wait_epoch_safe(&self) {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        self.epoch
            .bump_epoch(move || f.store(true, StdOrdering::Release));
        self.wait_for(|| flag.load(StdOrdering::Acquire));
    }

    /// Takes a checkpoint of `kind`, blocking until it is durable. Operations of other threads
    /// keep running. The calling thread must not be inside an operation of this store.
    ///
    /// # Errors
    /// [`Error::Busy`] if a checkpoint or index growth is running; [`Error::Config`] for a
    /// device without storage; I/O errors (the checkpoint is then not written and the store
    /// keeps running).
    pub(crate) fn checkpoint(&self, kind: CheckpointKind, mode: LogMode) -> Result<Token> {
        let started = self.begin_checkpoint()?;
        self.run_started(started, kind, mode)
    }

    /// The synchronous start of a checkpoint: claims the machinery and names the checkpoint.
    /// The claim passes to [`Engine::run_started`], which must run next (on any thread).
    ///
    /// # Errors
    /// As [`Engine::checkpoint`].
    pub(crate) fn begin_checkpoint(&self) -> Result<Started> {
        if self.epoch.is_protected_here() {
            // Each phase change waits for every protected thread to acknowledge it.
            return Err(Error::Busy(
                "checkpoint called from inside an operation of this store (e.g. an rmw \
                 function); it would wait for its own thread",
            ));
        }
        let dir = self.checkpoint_dir()?;
        let claim = self.cpr.claim("a checkpoint or index growth is running")?;
        if self.index.is_growing() {
            return Err(Error::Busy("the index is growing"));
        }
        self.hlog.check_poison()?;
        let token = self.next_token(&dir)?;
        dir.create(token)?;
        std::mem::forget(claim); // released by run_started
        Ok(Started { dir, token })
    }

    /// Gives up a begun checkpoint without running it: removes its directory, releases the
    /// claim.
    pub(crate) fn abandon_started(&self, started: Started) {
        let _claim = Claim(&self.cpr.busy);
        let _ = started.dir.remove(started.token);
    }

    /// Runs a checkpoint begun by [`Engine::begin_checkpoint`] and releases its claim.
    ///
    /// # Errors
    /// As [`Engine::checkpoint`].
    pub(crate) fn run_started(
        &self,
        started: Started,
        kind: CheckpointKind,
        mode: LogMode,
    ) -> Result<Token> {
        let _claim = Claim(&self.cpr.busy);
        let Started { dir, token } = started;
        let mut rest = RestOnDrop {
            engine: self,
            armed: true,
        };
        let span = tracing::info_span!("checkpoint", %token, ?kind, ?mode);
        let _entered = span.enter();
        let began = std::time::Instant::now();
        let result = self.run_checkpoint(&dir, token, kind, mode);
        match &result {
            Ok(()) => tracing::info!(
                version = self.system_state().version - 1,
                tail = self.hlog.tail_address().raw(),
                millis = began.elapsed().as_millis() as u64,
                "checkpoint durable"
            ),
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; nothing was recorded"),
        }
        rest.armed = result.is_err();
        drop(rest);
        if result.is_err() {
            let _ = dir.remove(token);
        }
        let path = dir.dir(token);
        result.map(|()| token).map_err(|e| match e {
            Error::Io { context, source } => Error::Io {
                context: format!("{context} (checkpoint {})", path.display()),
                source,
            },
            e => e,
        })
    }

    fn run_checkpoint(
        &self,
        dir: &CheckpointDir,
        token: Token,
        kind: CheckpointKind,
        mode: LogMode,
    ) -> Result<()> {
        let v = self.system_state().version;
        if kind != CheckpointKind::LogOnly {
            self.enter(Phase::PrepIndexChkpt, v);
            self.enter(Phase::IndexChkpt, v);
            let meta = self.dump_index(dir, token, v)?;
            dir.write_index_meta(token, &meta)?;
            if kind == CheckpointKind::IndexOnly {
                self.set_system_state(SystemState {
                    phase: Phase::Rest,
                    version: v,
                });
                return Ok(());
            }
        }
        self.set_newer_from(u64::MAX);
        self.enter(Phase::Prepare, v);
        // Every thread now checks for records of v+1; read the tail before any can exist.
        let newer_from = self.hlog.tail_address().raw();
        self.set_newer_from(newer_from);
        self.enter(Phase::InProgress, v + 1);
        self.enter(Phase::WaitPending, v + 1);
        // Updates of v that are on their way back from the disk may still land in v. Only
        // driven ones are waited for (each ends with its device read), so the wait costs what
        // their I/O costs; parked ones land in v+1 and are excluded from commit points.
        self.wait_for(|| self.cpr.driven_updates(v) == 0);
        self.enter(Phase::WaitFlush, v + 1);
        let end = self.hlog.close_page();
        // Writers of records below `end` finish before anything reads those pages.
        self.wait_epoch_safe();
        let geo = self.hlog.geometry();
        let first_page = geo.page(self.hlog.begin());
        let (snapshot_start, snapshot_hash, page_sums) = match mode {
            LogMode::FoldOver => {
                self.hlog.shift_read_only(end);
                self.wait_for(|| {
                    self.hlog.flushed_until() >= end || self.hlog.check_poison().is_err()
                });
                self.hlog.check_poison()?;
                self.hlog
                    .disk()
                    .flush()
                    .map_err(|e| Error::io("syncing the log", e))?;
                let sums = self.hlog.page_sums(first_page, geo.page(end));
                (end.raw(), 0, sums)
            }
            LogMode::Snapshot => {
                let (start, hash, snap_sums) = self.write_snapshot(dir, token, end)?;
                let mut sums = self
                    .hlog
                    .page_sums(first_page, geo.page(Address::new(start)));
                sums.extend(snap_sums);
                (start, hash, sums)
            }
        };
        self.enter(Phase::PersistenceCallback, v + 1);
        let (sessions, next_session_id) = self.cpr.collect(v);
        let meta = LogMeta {
            version: v,
            mode,
            page_bits: self.hlog.geometry().page_bits,
            begin: self.hlog.begin().raw(),
            newer_from,
            end: end.raw(),
            snapshot_start,
            snapshot_hash,
            page_sums,
            sessions,
            next_session_id,
            types: self.types.clone(),
        };
        dir.write_log_meta(token, &meta)?;
        self.set_system_state(SystemState {
            phase: Phase::Rest,
            version: v + 1,
        });
        Ok(())
    }

    /// Writes `index.dat` (fsynced) and returns its metadata.
    fn dump_index(&self, dir: &CheckpointDir, token: Token, version: u64) -> Result<IndexMeta> {
        let path = dir.dir(token).join(INDEX_DATA);
        let io = |e: std::io::Error| Error::io(format!("writing {}", path.display()), e);
        let start = self.hlog.tail_address().raw();
        let mut w = HashingWriter::create(&path).map_err(io)?;
        let (table_bits, overflow) = self.index.dump(|chunk| w.write_all(chunk).map_err(io))?;
        let mut pairs = Vec::with_capacity(16 * overflow.len().min(1 << 16));
        for chunk in overflow.chunks(1 << 16) {
            pairs.clear();
            for (bucket, entry) in chunk {
                pairs.extend_from_slice(&bucket.to_le_bytes());
                pairs.extend_from_slice(&entry.to_le_bytes());
            }
            w.write_all(&pairs).map_err(io)?;
        }
        let (data_len, data_hash) = w.finish().map_err(io)?;
        Ok(IndexMeta {
            version,
            table_bits,
            start,
            end: self.hlog.tail_address().raw(),
            overflow_entries: overflow.len() as u64,
            data_len,
            data_hash,
        })
    }

    /// Copies the pages `[flushed_until, end)` to `snapshot.dat` (fsynced); returns the first
    /// address it holds, the file's hash and each page's hash.
    fn write_snapshot(
        &self,
        dir: &CheckpointDir,
        token: Token,
        end: Address,
    ) -> Result<(u64, u64, Vec<u64>)> {
        let path = dir.dir(token).join(SNAPSHOT_DATA);
        let io = |e: std::io::Error| Error::io(format!("writing {}", path.display()), e);
        let geo = self.hlog.geometry();
        let start = self.hlog.flushed_until().min(end);
        // O_DIRECT where the file system allows it: the pages are already aligned copies, and
        // going through the page cache costs a second copy (the main cost here otherwise).
        let (file, _) = crate::environment::file::File::open(&path, true, true).map_err(io)?;
        let mut at = 0u64;
        let mut sums = Vec::new();
        let mut buf = AlignedBuf::zeroed(self.hlog.page_size(), 4096);
        for page in geo.page(start)..geo.page(end) {
            let copied = {
                let _g = self.epoch.protect()?;
                self.hlog.copy_page(page, &mut buf)
            };
            if copied {
                // Every record that leaves memory carries its checksum (`core::record`).
                let first = crate::core::record::first_record_offset(page);
                crate::core::record::stamp_checksums_in(buf.as_mut_slice(), first);
            } else {
                // Evicted meanwhile: it was flushed (and stamped), and records of the
                // checkpointed version do not change in place while the checkpoint runs.
                buf = self
                    .hlog
                    .read_sync(geo.page_start(page).raw(), self.hlog.page_size())?;
            }
            sums.push(crate::hlog::persistent_memory_malloc::page_hash(
                page,
                buf.as_slice(),
            ));
            file.write_at(buf.as_slice(), at).map_err(io)?;
            at += buf.len() as u64;
        }
        file.sync().map_err(io)?;
        // Every page is verified by its sum at recovery; the file's "hash" covers the sums.
        Ok((start.raw(), sums_hash(&sums), sums))
    }
}

/// The hash a snapshot's metadata keeps of its page sums.
pub(crate) fn sums_hash(sums: &[u64]) -> u64 {
    let bytes: Vec<u8> = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// A sequential file writer that hashes what passes through it (xxh3) and writes through
/// O_DIRECT where the file system allows it, in 4 MiB aligned blocks (on this kind of VM the
/// copy into the page cache costs more than the disk write); the unaligned tail goes through a
/// buffered handle of the same file.
pub(crate) struct HashingWriter {
    path: std::path::PathBuf,
    file: crate::environment::file::File,
    buf: AlignedBuf,
    filled: usize,
    offset: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
}

impl HashingWriter {
    const BLOCK: usize = 4 << 20;

    fn create(path: &std::path::Path) -> std::io::Result<Self> {
        // A new file: the checkpoint's directory was just created.
        let (file, _) = crate::environment::file::File::open(path, true, true)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            buf: AlignedBuf::zeroed(Self::BLOCK, 4096),
            filled: 0,
            offset: 0,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
        })
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let n = bytes.len().min(Self::BLOCK - self.filled);
            self.buf.as_mut_slice()[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == Self::BLOCK {
                self.file.write_at(self.buf.as_slice(), self.offset)?;
                self.offset += Self::BLOCK as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Writes what is left, syncs, and returns the length and hash.
    fn finish(self) -> std::io::Result<(u64, u64)> {
        let aligned = self.filled & !4095;
        if aligned > 0 {
            self.file
                .write_at(&self.buf.as_slice()[..aligned], self.offset)?;
        }
        if self.filled > aligned {
            use std::os::unix::fs::FileExt;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)?
                .write_all_at(
                    &self.buf.as_slice()[aligned..self.filled],
                    self.offset + aligned as u64,
                )?;
        }
        self.file.sync()?;
        Ok((self.offset + self.filled as u64, self.hasher.digest()))
    }
}
