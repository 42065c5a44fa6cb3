//! [`RsKv`]: the single-tier store, with the seed's context API and a plain Rust facade.
//!
//! Two ways in, over one engine:
//! - **Contexts** (FASTER's model, as the seed uses them): [`RsKv::upsert`], [`RsKv::read`],
//!   [`RsKv::rmw_context`], [`RsKv::delete`] take a context that names the key, its hash and
//!   what to do with values. They return the final [`Status`], waiting for the disk when a
//!   record is not in memory; only a [`Session`] returns [`Status::Pending`].
//! - **Facade**: [`RsKv::get`], [`RsKv::insert`], [`RsKv::rmw`], [`RsKv::remove`],
//!   [`RsKv::conditional_insert`], each returning a [`Result`], plus `async` forms.
//!
//! One key must always get one hash: a context's `key_hash()` (default [`hash_key`]) and the
//! facade (always [`hash_key`]) agree unless a context overrides `key_hash`, as the seed's do
//! (identity hash of a `u64`). Such a store should be used through contexts only.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::config::{Config, MemoryBudget, MemorySplit, Resolved};
use crate::core::checkpoint::{
    CheckpointDir, CheckpointInfo, CheckpointKind, CommitPoint, LogMode, Token, TypeNames,
};
use crate::core::codec::{decode, Codec};
use crate::core::light_epoch::LightEpoch;
use crate::core::status::{Error, Result};
use crate::device::file_system_disk::FileSystemDisk;
use crate::device::Disk;
use crate::hlog::{HybridLog, LogMarkers};
use crate::maintenance::{lower_thread_priority, Maintainer, Settings};
use crate::ops::counters::OpStats;
use crate::ops::recover::{Layout, RecoveryInfo};
use crate::ops::Engine;
use crate::session::{Session, SessionId};

mod facade;
mod maintenance;
pub use maintenance::Iter;

pub use crate::contexts::{DeleteContext, ReadContext, RmwContext, UpsertContext};
pub use crate::index::key_hash::hash_key;
use crate::index::key_hash::{hash_bytes, HashFn, KeyHasher};

/// Sizes and counters of a store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stats {
    /// The log markers.
    pub markers: LogMarkers,
    /// Buckets of the index.
    pub index_buckets: u64,
    /// Overflow buckets in use.
    pub overflow_buckets: u64,
    /// Bytes of index memory: `index_table_bytes + overflow_bytes`.
    pub index_memory: usize,
    /// Bytes of the index's tables: the current one, and while the index grows (until the old
    /// one is freed) both.
    pub index_table_bytes: u64,
    /// Bytes of overflow bucket memory held (kept and reused once allocated).
    pub overflow_bytes: u64,
    /// Bytes of log memory.
    pub log_memory: usize,
    /// The memory budget and how it is split, if one is set ([`Config::memory_budget`]).
    pub memory_budget: Option<MemoryBudget>,
    /// Index growths since the store was opened, automatic or by hand.
    pub index_growths: u64,
    /// The index needed to grow but the memory budget did not allow it (cleared by a growth).
    pub growth_refused_by_budget: bool,
    /// Passes of the maintenance thread since the store was opened (0 without one).
    pub maintenance_passes: u64,
    /// Background tasks (index growth, log compaction, writing pages whose write failed
    /// again) that failed since the store was opened, e.g. on a full or failing disk. Each is
    /// logged too, and the next pass tries again.
    pub maintenance_failures: u64,
    /// The error of the last background task that failed, until a later one succeeds with the
    /// log no longer poisoned.
    pub maintenance_error: Option<String>,
    /// Bytes written to the device.
    pub bytes_written: u64,
    /// Bytes read from the device.
    pub bytes_read: u64,
    /// Device reads issued to fetch records (reads, updates and iteration that go to disk;
    /// a record longer than its first read counts twice). Not the scans of compaction and
    /// recovery.
    pub device_reads: u64,
    /// Of [`Stats::device_reads`], those the device has completed (their callbacks ran; the
    /// operation may still wait to be polled). The difference is the reads in flight.
    pub device_reads_completed: u64,
    /// Second reads of records longer than what the first read covered.
    pub device_rereads: u64,
    /// Bytes of a record fetch's alignment unit: the device's logical block size under
    /// O_DIRECT (e.g. 512), 4096 when unknown, 8 with buffered I/O. A fetch reads the units
    /// that cover the record's first 256 bytes, and the rest in a second read.
    pub read_granularity: u64,
    /// Operation counts since the store was opened.
    pub ops: OpStats,
    /// Bytes of log from its begin to its tail (what a log-compaction budget counts).
    pub log_bytes: u64,
    /// Bytes the log's segment files take on the device now (more than `log_bytes` while
    /// truncated space waits for a checkpoint; read from the file system on each call).
    pub disk_bytes: u64,
    /// What compactions did since the store was opened.
    pub compaction: crate::ops::truncate::CompactionTotals,
    /// What the read cache did, if it is on ([`Config::read_cache_size`]).
    pub read_cache: Option<crate::hlog::read_cache::ReadCacheStats>,
    /// How the log's memory and the read cache's are split, if the split moves
    /// ([`Config::memory_split`]).
    pub memory_split: Option<crate::ops::split::SplitStats>,
}

/// The single-tier store: a latch-free hash index over a HybridLog on device `D`.
///
/// `RsKv` is `Send + Sync`; share it with `Arc`. Every operation takes `&self`.
pub struct RsKv<K, V, D: Disk = FileSystemDisk> {
    pub(crate) engine: Arc<Engine<D>>,
    /// The maintenance thread (automatic index growth), if a task is enabled. Stopped before
    /// anything else of the store goes away.
    maintainer: Option<Maintainer>,
    resolved: Resolved,
    /// What `open` or `recover` recovered, if anything.
    recovered: Option<RecoveryInfo>,
    /// `Config::checkpoint_on_close`; cleared once `close` ran.
    checkpoint_on_close: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Codec, V: Codec, D: Disk> RsKv<K, V, D> {
    /// The seed's constructor: `table_size` hash buckets and `log_size` bytes of log memory.
    /// Sizes are rounded (see [`Config::resolve`]); [`RsKv::resolved`] tells what was used.
    ///
    /// # Errors
    /// [`Error::Config`] for sizes out of range.
    pub fn new(table_size: u64, log_size: u64, disk: D) -> Result<Self> {
        Self::open(
            Config::new()
                .table_size(table_size)
                .log_memory_size(log_size),
            disk,
        )
    }

    /// Opens the store over `disk`: recovers the newest completed checkpoint the device holds
    /// (as [`RsKv::recover`] with no token; [`RsKv::recovered`] tells what it found), or starts
    /// an empty store if it holds none.
    ///
    /// What survives: the state of the newest checkpoint. Updates after it are gone after a
    /// crash or a drop, unless [`Config::checkpoint_on_close`] checkpoints on a clean close.
    /// Stores whose contexts override `key_hash` recover with [`RsKv::recover_with_hash`]
    /// instead (recovery rehashes keys, and only the contexts know their hash).
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad field; with [`Config::error_if_exists`],
    /// [`Error::Checkpoint`] if the device holds a completed checkpoint; the errors of
    /// [`RsKv::recover`] when it recovers.
    pub fn open(config: Config, disk: D) -> Result<Self> {
        Self::open_inner(config, disk, None)
    }

    /// [`RsKv::open`] for a store whose contexts override `key_hash`: recovery rebuilds the
    /// index by hashing every replayed key, and compaction files each copy under its key's
    /// hash, so both must use the hash the operations do. The facade (`get`, `insert`, `rmw`,
    /// the batches and async forms) hashes its keys with it too, so a key reads the same
    /// through both APIs; the facade's one-word fast paths, which hash with RsKv's own, are
    /// off in such a store.
    ///
    /// # Errors
    /// As [`RsKv::open`]; [`Error::Codec`] if a logged key does not decode as `K`.
    pub fn open_with_hash(
        config: Config,
        disk: D,
        key_hash: impl Fn(&K) -> u64 + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::open_inner(config, disk, Some(hash_fn(key_hash)))
    }

    fn open_inner(config: Config, disk: D, hash: Option<HashFn>) -> Result<Self> {
        let resolved = config.resolve()?;
        if let Some(root) = disk.checkpoint_root().filter(|_| disk.is_persistent()) {
            let dir = CheckpointDir::new(root.clone());
            let tokens = dir.tokens()?;
            let completed = tokens.iter().filter(|t| dir.has_log_meta(**t)).count();
            if completed > 0 {
                if config.error_if_exists {
                    return Err(Error::Checkpoint {
                        path: root,
                        reason: format!(
                            "the device holds {completed} checkpoint(s) and the configuration \
                             says error_if_exists"
                        ),
                    });
                }
                return Self::recover_inner(config, disk, None, hash).map(|(kv, _)| kv);
            }
            // No completed log checkpoint: the new store overwrites the log, which index-only
            // checkpoints describe (moved aside, never paired with a later log checkpoint);
            // directories of checkpoints that never completed are removed.
            crate::ops::recover::set_aside_newer(&dir, &tokens, Token(0))?;
        }
        let epoch = Arc::new(LightEpoch::new());
        if config.memory_split != MemorySplit::Fixed && !disk.is_persistent() {
            return Err(Error::Config {
                field: "memory_split",
                reason: "a log over a device that keeps nothing never leaves memory, so its \
                         memory cannot move"
                    .into(),
            });
        }
        let hlog = HybridLog::new(
            disk,
            epoch.clone(),
            resolved.page_bits,
            if config.memory_split == MemorySplit::Fixed {
                resolved.frames
            } else {
                resolved.pool_frames()
            },
            config.mutable_fraction,
        )?;
        let mut engine = Engine::new(epoch, resolved.index_bits, hlog);
        engine.copy_reads = config.copy_reads_to_tail;
        engine.set_read_cache(resolved.read_cache_bytes, resolved.frames, &config);
        engine.pending_depth = config.pending_depth;
        engine.types = TypeNames::of::<K, V>(&config);
        if let Some(hash) = hash {
            engine.hasher = KeyHasher::custom(hash);
        }
        engine.set_budget(resolved.budget);
        let engine = engine.into_shared();
        Ok(Self {
            maintainer: start_maintainer(&engine, &config)?,
            engine,
            resolved,
            recovered: None,
            checkpoint_on_close: config.checkpoint_on_close,
            _types: PhantomData,
        })
    }

    /// What `open` (or `recover`) recovered: `None` for a store that started empty.
    #[must_use]
    pub fn recovered(&self) -> Option<&RecoveryInfo> {
        self.recovered.as_ref()
    }

    /// Closes the store: with [`Config::checkpoint_on_close`], takes a full checkpoint first
    /// and returns its token. Sessions borrow the store, so none is left. Dropping the store
    /// does the same but can only log a failure.
    ///
    /// # Errors
    /// The checkpoint's errors (the store is closed all the same).
    pub fn close(mut self) -> Result<Option<Token>> {
        drop(self.maintainer.take());
        let on_close = std::mem::take(&mut self.checkpoint_on_close);
        if on_close && self.engine.hlog.disk().is_persistent() {
            return self.checkpoint().map(Some);
        }
        Ok(None)
    }

    /// The geometry the store resolved its configuration to.
    #[must_use]
    pub fn resolved(&self) -> Resolved {
        self.resolved
    }

    /// Gives the read cache `bytes` of the memory it shares with the log and the log the rest
    /// ([`Config::memory_split`] other than `Fixed`), each rounded to its pages and kept at
    /// least an eighth of the two; returns the shares now (log, cache). Memory leaving a share
    /// is given back to the kernel as soon as nothing uses it (the log's pages once flushed,
    /// the cache's once their copies are evicted). Nothing waits: operations in flight go on.
    ///
    /// # Errors
    /// [`Error::Config`] (`memory_split`) if the store's split does not move;
    /// [`Error::Busy`] while another move (another caller's, or the adaptive split's) is
    /// setting the shares: nobody waits for it, so this can be called from inside an
    /// operation's function.
    pub fn set_read_cache_share(&self, bytes: u64) -> Result<(u64, u64)> {
        self.engine.set_cache_share(bytes)
    }

    /// Sizes and counters. Callable from any thread, inside an operation or not.
    #[must_use]
    pub fn stats(&self) -> Stats {
        // The index figures come from its state word and allocator counters, never from its
        // tables (which growth frees under epoch protection), so no protection is needed.
        let (w, r) = self.engine.hlog.io_bytes();
        let reads = self.engine.hlog.record_reads();
        let growth = &self.engine.growth;
        let index = &self.engine.index;
        let ((bits, tables), overflow) = (index.sizes(), index.overflow_bytes());
        Stats {
            markers: self.engine.hlog.markers(),
            index_buckets: 1 << bits,
            overflow_buckets: index.overflow_buckets(),
            index_memory: (tables + overflow) as usize,
            index_table_bytes: tables,
            overflow_bytes: overflow,
            log_memory: self.engine.hlog.live_bytes(),
            memory_budget: self.engine.budget,
            index_growths: growth.growths.load(std::sync::atomic::Ordering::Relaxed),
            growth_refused_by_budget: growth
                .refused_by_budget
                .load(std::sync::atomic::Ordering::Acquire),
            maintenance_passes: growth
                .maintenance_passes
                .load(std::sync::atomic::Ordering::Relaxed),
            maintenance_failures: growth.health.failures(),
            maintenance_error: growth.health.last_error(),
            bytes_written: w,
            bytes_read: r,
            device_reads: reads.submitted,
            device_reads_completed: reads.completed,
            device_rereads: reads.rereads,
            read_granularity: self.engine.hlog.read_unit(),
            ops: self.engine.counters.totals(),
            log_bytes: self.engine.log_bytes(),
            disk_bytes: self.engine.hlog.disk().storage_bytes().unwrap_or(0),
            compaction: self.engine.retention.totals.snapshot(),
            read_cache: self.engine.read_cache.as_ref().map(|c| c.stats()),
            memory_split: self.engine.split_stats(),
        }
    }

    /// The device's description (backend, direct I/O).
    #[must_use]
    pub fn device_description(&self) -> String {
        self.engine.hlog.disk().describe()
    }

    /// Starts an explicit session (serial numbers, pending operations owned by the session).
    #[must_use]
    pub fn start_session(&self) -> Session<'_, K, V, D> {
        Session::new(&self.engine, None)
    }

    /// Doubles the hash index while other threads keep operating (the index also grows by
    /// itself, see [`Config::auto_grow_index`]). Call from a thread that is not inside an
    /// operation of this store. Waits for an automatic growth that is running, then doubles
    /// again.
    ///
    /// # Errors
    /// [`Error::IndexFull`] if overflow buckets ran out during the split; [`Error::Busy`] while a
    /// checkpoint runs, or when called from inside an operation of this store (an RMW
    /// function): the growth waits for every thread inside an operation, this one included;
    /// [`Error::Config`] (`memory_budget`) if the budget's index share cannot hold the growth.
    pub fn grow_index(&self) -> Result<()> {
        let grown = self.engine.grow_index().map_err(Error::from);
        if let Err(e) = &grown {
            tracing::warn!(error = %e, "index growth failed");
        }
        grown
    }

    // ---- checkpoints and recovery (CPR) -----------------------------------------------------

    /// Takes a full checkpoint (index and log, fold-over) and returns once it is durable.
    /// Operations of other threads keep running. Call from a thread that is not inside an
    /// operation of this store (a session's pending operations may stay pending). An index
    /// growth that is running (automatic or by hand) is waited for first.
    ///
    /// # Errors
    /// [`Error::Busy`] if another checkpoint runs, or when called from inside
    /// an operation of this store (an RMW function: the checkpoint would wait for its own
    /// thread); [`Error::Config`] for a device that keeps nothing; I/O errors (no checkpoint is
    /// then recorded); [`Error::Poisoned`] when log pages whose write failed earlier still fail
    /// (a checkpoint writes them again first, and once they succeed the store is no longer
    /// poisoned).
    pub fn checkpoint(&self) -> Result<Token> {
        self.checkpoint_with(CheckpointKind::Full, LogMode::FoldOver)
    }

    /// Takes a checkpoint of `kind`, writing the log by `mode`; blocks until durable.
    ///
    /// # Errors
    /// As [`RsKv::checkpoint`].
    pub fn checkpoint_with(&self, kind: CheckpointKind, mode: LogMode) -> Result<Token> {
        self.engine.checkpoint(kind, mode)
    }

    /// Starts a checkpoint on a thread of its own and returns at once with its token (after
    /// waiting for an index growth that is running); the returned [`CheckpointHandle`] is a
    /// `Future` that resolves once the checkpoint is durable (or can be waited on).
    ///
    /// # Errors
    /// Those known at once: [`Error::Busy`], [`Error::Config`] for a device without storage,
    /// and failure to create the checkpoint's directory or thread.
    pub fn checkpoint_async(
        &self,
        kind: CheckpointKind,
        mode: LogMode,
    ) -> Result<CheckpointHandle> {
        let started = self.engine.begin_checkpoint()?;
        let token = started.token();
        let engine = self.engine.clone();
        let (tx, rx) = futures_channel::oneshot::channel();
        let slot = Arc::new(std::sync::Mutex::new(Some(started)));
        let in_thread = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("rskv-checkpoint".into())
            .spawn(move || {
                lower_thread_priority();
                let started = in_thread.lock().ok().and_then(|mut s| s.take());
                if let Some(started) = started {
                    let _ = tx.send(engine.run_started(started, kind, mode));
                }
            });
        if let Err(e) = spawned {
            // The thread never ran: release the claim by running nothing.
            if let Some(started) = slot.lock().ok().and_then(|mut s| s.take()) {
                self.engine.abandon_started(started);
            }
            return Err(Error::io("starting the checkpoint thread", e));
        }
        Ok(CheckpointHandle { token, rx })
    }

    /// The checkpoints on the device, oldest first, with any problem their files have.
    ///
    /// # Errors
    /// [`Error::Config`] for a device without storage; [`Error::Path`] if the directory cannot
    /// be listed.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>> {
        list_checkpoints(&self.engine.checkpoint_dir()?)
    }

    /// Removes checkpoint `token`.
    ///
    /// # Errors
    /// [`Error::Busy`] while a checkpoint runs (a running index growth is waited for);
    /// [`Error::Path`] if a file cannot be removed.
    pub fn remove_checkpoint(&self, token: Token) -> Result<()> {
        let may_wait = !self.engine.epoch.is_protected_here();
        let _claim = self.engine.cpr.claim("a checkpoint is running", may_wait)?;
        self.engine.checkpoint_dir()?.remove(token)
    }

    /// Recovers a store over `disk` (the device a checkpointed store wrote) from checkpoint
    /// `token`, or from the newest completed one. The index size and page size come from the
    /// checkpoint; `config` gives the memory (`log_memory_size`, or `memory_budget` split again
    /// for the recovered index and page size) and automatic growth. Checkpoints newer than the one recovered
    /// are moved to `checkpoints/set-aside/` (the recovered store will overwrite the log they
    /// describe), never deleted; [`RecoveryInfo::set_aside`] lists them.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file and the problem when the newest completed
    /// checkpoint cannot be recovered (unless [`Config::recovery_fallback`] lets recovery fall
    /// back to an older one), when none exists, or when `token`'s files are missing, truncated,
    /// corrupt or from another format; [`Error::TypeMismatch`] when the checkpoint was written
    /// with other key or value types; [`Error::Corrupt`] when the log does not match the
    /// checkpoint; I/O errors.
    pub fn recover(config: Config, disk: D, token: Option<Token>) -> Result<(Self, RecoveryInfo)> {
        Self::recover_inner(config, disk, token, None)
    }

    /// [`RsKv::recover`] for a store whose contexts override `key_hash`: recovery rebuilds the
    /// index by hashing every replayed key, and must use the same hash as the operations did
    /// (a different one would file keys where lookups never look). The store keeps the hash
    /// for compaction.
    ///
    /// # Errors
    /// As [`RsKv::recover`]; [`Error::Codec`] if a logged key does not decode as `K`.
    pub fn recover_with_hash(
        config: Config,
        disk: D,
        token: Option<Token>,
        key_hash: impl Fn(&K) -> u64 + Send + Sync + 'static,
    ) -> Result<(Self, RecoveryInfo)> {
        Self::recover_inner(config, disk, token, Some(hash_fn(key_hash)))
    }

    fn recover_inner(
        config: Config,
        disk: D,
        token: Option<Token>,
        custom: Option<HashFn>,
    ) -> Result<(Self, RecoveryInfo)> {
        let resolved = config.resolve()?;
        let types = TypeNames::of::<K, V>(&config);
        let own = |bytes: &[u8]| Ok(hash_bytes(bytes));
        let layout = Layout {
            hash: custom.as_deref().unwrap_or(&own),
            index_bits: resolved.index_bits,
            log_memory: config.log_memory_size,
            budget: config
                .memory_budget
                .map(|total| total - resolved.read_cache_bytes),
            mutable_fraction: config.mutable_fraction,
            pool_extra: if config.memory_split == MemorySplit::Fixed {
                0
            } else {
                resolved.read_cache_bytes
            },
            fallback: config.recovery_fallback,
            types: &types,
            custom_hash: custom.is_some(),
        };
        let (mut engine, info) = Engine::recover(disk, &layout, token)?;
        engine.copy_reads = config.copy_reads_to_tail;
        let log_pages = engine.hlog.live_pages();
        engine.set_read_cache(resolved.read_cache_bytes, log_pages, &config);
        engine.budget = engine
            .budget
            .map(|b| b.with_read_cache(resolved.read_cache_bytes));
        engine.pending_depth = config.pending_depth;
        engine.types = types;
        if let Some(hash) = custom {
            engine.hasher = KeyHasher::custom(hash);
        }
        let geo = engine.hlog.geometry();
        let resolved = Resolved {
            index_bits: engine.index.bits(),
            page_bits: geo.page_bits,
            frames: log_pages,
            budget: engine.budget,
            read_cache_bytes: resolved.read_cache_bytes,
        };
        let engine = engine.into_shared();
        Ok((
            Self {
                maintainer: start_maintainer(&engine, &config)?,
                engine,
                resolved,
                recovered: Some(info.clone()),
                checkpoint_on_close: config.checkpoint_on_close,
                _types: PhantomData,
            },
            info,
        ))
    }

    /// Continues session `id` of the recovered checkpoint: returns the session, positioned
    /// after its commit point, and the commit point (FASTER's `ContinueSession`).
    ///
    /// # Errors
    /// [`Error::Config`] if the checkpoint has no such session; [`Error::Busy`] if it is
    /// already continued.
    pub fn continue_session(&self, id: SessionId) -> Result<(Session<'_, K, V, D>, CommitPoint)> {
        let point = self
            .engine
            .cpr
            .recovered_point(id.0)
            .ok_or_else(|| Error::Config {
                field: "session id",
                reason: format!("session {} is not in the recovered checkpoint", id.0),
            })?;
        Ok((Session::continued(&self.engine, None, id)?, point))
    }
}

impl<K, V, D: Disk> std::fmt::Debug for RsKv<K, V, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsKv")
            .field("types", &self.engine.types)
            .field("resolved", &self.resolved)
            .field("markers", &self.engine.hlog.markers())
            .field("state", &self.engine.system_state())
            .field("device", &self.engine.hlog.disk().describe())
            .finish_non_exhaustive()
    }
}

impl<K, V, D: Disk> Drop for RsKv<K, V, D> {
    fn drop(&mut self) {
        // First: the thread may be growing the index, which the checkpoint below would wait
        // for, and it holds the engine.
        drop(self.maintainer.take());
        // `Config::checkpoint_on_close`, unless `close` already ran (or this thread is
        // unwinding from a panic: the store's state is then not known to be one to keep).
        if self.checkpoint_on_close
            && self.engine.hlog.disk().is_persistent()
            && !std::thread::panicking()
        {
            if let Err(e) = self
                .engine
                .checkpoint(CheckpointKind::Full, LogMode::FoldOver)
            {
                tracing::error!(error = %e, "checkpoint on close failed; the newest checkpoint is what survives");
            }
        }
    }
}

/// Starts the store's maintenance thread if `config` enables one of its tasks.
fn start_maintainer<D: Disk>(
    engine: &Arc<Engine<D>>,
    config: &Config,
) -> Result<Option<Maintainer>> {
    let settings = Settings::of(config);
    if let Some(c) = &config.log_compaction {
        // Past the budget plus one pass, compaction is not keeping up: slow writers down.
        engine
            .hlog
            .set_size_limit(c.budget.saturating_add(c.max_pass));
    }
    engine.start_ghosts();
    if settings.any() {
        Maintainer::start(engine.clone(), settings).map(Some)
    } else {
        Ok(None)
    }
}

/// A checkpoint running on its own thread: a `Future` of its token.
pub struct CheckpointHandle {
    token: Token,
    rx: futures_channel::oneshot::Receiver<Result<Token>>,
}

impl std::fmt::Debug for CheckpointHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointHandle")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl CheckpointHandle {
    /// The checkpoint's token (known before it completes).
    #[must_use]
    pub fn token(&self) -> Token {
        self.token
    }

    /// Blocks until the checkpoint is durable (or failed).
    ///
    /// # Errors
    /// The checkpoint's error.
    pub fn wait(self) -> Result<Token> {
        crate::ops::pending::block_on(self)
    }
}

impl std::future::Future for CheckpointHandle {
    type Output = Result<Token>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let gone = || {
            Error::io(
                "running a checkpoint",
                std::io::Error::other("the checkpoint thread could not run or died"),
            )
        };
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(gone())))
    }
}

/// A typed key hash as a function of the key's encoding.
fn hash_fn<K: Codec>(key_hash: impl Fn(&K) -> u64 + Send + Sync + 'static) -> HashFn {
    Arc::new(move |bytes| Ok(key_hash(&decode::<K>(bytes)?)))
}

/// Lists the checkpoints in `dir` with the problems of their files.
fn list_checkpoints(dir: &crate::core::checkpoint::CheckpointDir) -> Result<Vec<CheckpointInfo>> {
    Ok(dir
        .tokens()?
        .into_iter()
        .map(|token| {
            let index = dir.read_index_meta(token);
            let log = dir.read_log_meta(token);
            let problem = match (&index, &log) {
                (Err(a), Err(b)) => Some(format!("{a}; {b}")),
                _ => None,
            };
            CheckpointInfo {
                token,
                has_index: index.is_ok(),
                log: log.ok().map(|m| (m.version, m.mode)),
                problem,
            }
        })
        .collect())
}

#[cfg(all(test, not(loom)))]
mod session_tests {
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
