//! The checkpoint driver: runs the state machine of [`crate::ops::cpr`] through its phases and
//! writes the files of [`crate::core::checkpoint`].
//!
//! The driver runs on the caller's thread (or a thread of its own for the async call). It is
//! never epoch protected itself: it publishes a phase, then waits until every protected thread
//! has acknowledged it, draining the epoch's actions meanwhile (flushes and evictions run there).

use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};
use std::sync::Arc;
use std::time::Duration;

use crate::core::address::Address;
use crate::core::alloc::AlignedBuf;
use crate::core::checkpoint::{
    CheckpointDir, CheckpointKind, IndexMeta, LogMeta, LogMode, Token, INDEX_DATA, SNAPSHOT_DATA,
};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::ops::cpr::book::Claim;
use crate::ops::cpr::{Phase, SystemState};
use crate::ops::Engine;

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
    pub(crate) fn wait_epoch_safe(&self) {
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
        if crate::session::driving_here() {
            // WaitPending would wait for updates that only this thread, blocked here, drives.
            return Err(Error::Busy(
                "checkpoint called from a context callback inside complete_pending; it would \
                 wait for the session's pending updates that this thread drives",
            ));
        }
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
        // Not protected (checked above), so a running index growth can be waited for.
        let claim = self.cpr.claim("a checkpoint is running", true)?;
        if self.index.is_growing() {
            return Err(Error::Busy("the index is growing"));
        }
        // Pages whose write failed are written again first: once the device takes them (it
        // was full and has room again), the checkpoint goes ahead.
        self.hlog.retry_failed_writes()?;
        {
            let a = self
                .cpr
                .attachment
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if a.required && a.next.is_none() {
                return Err(Error::Config {
                    field: "checkpoint",
                    reason: "this store is a tier of an R2Kv: checkpoint it with R2Kv::checkpoint"
                        .into(),
                });
            }
        }
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
            Ok(()) => {
                tracing::info!(
                    version = self.system_state().version - 1,
                    tail = self.hlog.tail_address().raw(),
                    millis = began.elapsed().as_millis() as u64,
                    "checkpoint durable"
                );
                // A truncation waiting for this checkpoint can give its space back now. The
                // checkpoint is durable whatever happens here.
                if let Err(e) = self.release_space() {
                    tracing::warn!(error = %e, "releasing truncated log space failed");
                }
            }
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
        // The begin this checkpoint records, pinned before any record of v+1 can exist: a
        // truncation after this point may have dropped records whose copies, or the updates
        // that superseded them, are of v+1, which this checkpoint excludes. No release deletes
        // below it while the checkpoint runs.
        let pin = self.pin_begin();
        if kind != CheckpointKind::LogOnly {
            self.enter(Phase::PrepIndexChkpt, v);
            // Replay starts here. Read before IndexChkpt is acknowledged by every thread, so
            // every operation that allocated a record below it has swung its index entry
            // before the dump reads the buckets.
            let start = self.hlog.tail_address();
            self.enter(Phase::IndexChkpt, v);
            let meta = self.dump_index(dir, token, v, start)?;
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
        let first_page = geo.page(pin.begin);
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
            // No growth runs while the checkpoint holds the claim.
            table_bits: self.index.bits(),
            begin: pin.begin.raw(),
            newer_from,
            end: end.raw(),
            snapshot_start,
            snapshot_hash,
            page_sums,
            sessions,
            next_session_id,
            types: self.types.clone(),
            hash: self.hasher.identity(),
        };
        let attached = self
            .cpr
            .attachment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
            .take();
        if let Some((name, bytes)) = attached {
            dir.write_attached(token, name, &bytes)?;
        }
        dir.write_log_meta(token, &meta)?;
        self.set_system_state(SystemState {
            phase: Phase::Rest,
            version: v + 1,
        });
        Ok(())
    }

    /// Writes `index.dat` (fsynced) and returns its metadata.
    fn dump_index(
        &self,
        dir: &CheckpointDir,
        token: Token,
        version: u64,
        start: Address,
    ) -> Result<IndexMeta> {
        let path = dir.dir(token).join(INDEX_DATA);
        let io = |e: std::io::Error| Error::io(format!("writing {}", path.display()), e);
        let mut w = HashingWriter::create(&path).map_err(io)?;
        let (table_bits, overflow) = self
            .index
            .dump(|e| self.uncached(e), |chunk| w.write_all(chunk).map_err(io))?;
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
            start: start.raw(),
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
