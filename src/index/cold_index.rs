//! F2's cold index (`cc/src/index/cold_index.h`): a map from a key hash to the address of the
//! newest record of that hash's chain in a cold log, whose memory is bounded by its
//! configuration and not by the number of keys.
//!
//! # Two levels
//! The finalized key hash picks a *chunk* and an *entry* in it
//! ([`ChunkGeometry::locate`](super::cold_index_contexts::ChunkGeometry::locate)). The chunks
//! are the values of an inner store of their own: an [`RsKv`] keyed by chunk id, with its own
//! log on the device the index was opened over, its own small hash index and a small log
//! memory, so most chunks live on the device and a lookup may need a device read. An entry
//! holds a cold-log [`Address`] ([`Address::INVALID`]: empty); keys whose hashes meet in one
//! entry share one chain, which the cold store walks comparing keys. A chunk with no record
//! reads as all empty, so only chunks that were ever written take space.
//!
//! The cold store calls [`ColdIndex::get`] for a chain's head and [`ColdIndex::try_update`]
//! (compare-and-swap) to put a new record in front of it, or their async forms, which leave
//! the executor free while a chunk is read from the device; [`ChainIndex`] is the same
//! interface as a trait. Both try the engine's one-word fast paths first (a chunk in memory:
//! a seqlock copy, or an in-place write under the record's lock), then its general path.
//!
//! # Why an entry's compare-and-swap is atomic
//! Every change of a chunk is one RMW of its record in the inner store, and the comparison is
//! made inside the RMW's decision (`EntryCas::decide`), on the version of the chunk the
//! engine is about to replace:
//! 1. In the mutable region the decision runs under the record's lock and its write (in place)
//!    happens before the lock is released: no other update of the chunk runs in between.
//! 2. Anywhere else the new version is appended and published by a CAS of the inner index's
//!    entry from the value the decision was based on. If another update of the chunk (or a
//!    compaction copy) got in first, the CAS fails, the appended record is marked invalid and
//!    the decision runs again on the newer version; an update that went to the device starts
//!    over the same way if the entry moved while it read. So an entry is swapped only if it
//!    held `expected` in the chunk's newest version at the moment the swap is published.
//! 3. A failed comparison decides `Decision::Abort`: it writes nothing (no record, no
//!    in-place change), and neither does a swap to the value already held.
//! 4. Compaction of the inner log copies a chunk's record with a conditional insert that gives
//!    way to any newer version; a copy holds the same bytes, so it never changes an entry.
//! 5. A read copies the chunk consistently (seqlock in memory, a checksummed record from the
//!    device), so it returns a value the entry held at some moment during the call.
//!
//! Entries of one chunk are independent but their updates are serialized (one RMW of the chunk
//! at a time): contention on a chunk costs retries, never a lost update.
//!
//! # Crashes and checkpoints
//! What survives a crash is the inner store's newest checkpoint ([`ColdIndex::checkpoint`],
//! a full CPR checkpoint of the inner store), recovered with [`ColdIndex::recover`]; swaps made
//! after it are gone, so every entry reads as it was at the checkpoint. A cold store that
//! checkpoints its log and this index under one token must therefore take the index's
//! checkpoint first and, after recovery, put the cold-log records appended after it back into
//! the index (try_update from the head it reads), as FASTER's recovery replays its log into its
//! hash index. Entries may then name records below the cold log's begin (truncated by its
//! compaction); the cold store reads those as absent. [`ColdIndex::open`] refuses a device
//! that holds a completed checkpoint (that is what `recover` is for); the inner store's log
//! files left by a run without checkpoints are overwritten.
//!
//! # Memory bound
//! ```text
//! memory = 64 B × table_size                        (inner hash table, fixed: no growth)
//!        + 64 KiB × ceil(ceil(chunks / 7) / 1024)   (inner overflow buckets, at most)
//!        + log_memory                               (inner log pages, fixed)
//! ```
//! Each chunk id takes at most one entry of the inner index, and an overflow bucket (7 entries)
//! is allocated only when the buckets before it are full, in pages of 1024 buckets; with the
//! default table of `chunks / 4` buckets almost none are. Nothing else grows with the keys:
//! the chunks themselves are on the device, the log memory is a fixed ring of pages, and
//! automatic index growth is off. [`ColdIndexStats::memory_bound`] is this figure for the
//! opened index; [`ColdIndexStats::memory_bytes`] what it holds now. (Transiently, threads
//! inserting new chunk ids at once may each hold one more tentative entry.)
//!
//! # Disk bound
//! Every copy-update of a chunk appends a record of [`ColdIndexStats::record_bytes`]. The
//! inner store's background compaction keeps its log (begin to tail) near
//! [`ColdIndexConfig::log_budget`]: a pass starts at 80% of it and compacts 20% of the log (at
//! most `max_pass`), and writers are slowed while the log is over `budget + max_pass`.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::cold_index_contexts::{ChunkGeometry, EntryCas, EntryPos};
use super::cold_index_contexts::{ENTRY_BYTES, MAX_CHUNK_BITS, MAX_ENTRIES, MIN_ENTRIES};
use crate::config::Config;
use crate::core::address::Address;
use crate::core::checkpoint::Token;
use crate::core::malloc_fixed_page_size::PAGE_ITEMS;
use crate::core::record::{record_size, ValueBuf};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::index::definitions::ChainIndex;
use crate::index::KeyHash;
use crate::ops::compact::{Compaction, LogCompaction};
use crate::ops::counters::PerThread;
use crate::ops::fast::Fast;
use crate::ops::rmw::{Decision, Latest};
use crate::ops::truncate::CompactionTotals;
use crate::rskv_core::RsKv;

/// Bytes of a hash bucket of the inner index.
const BUCKET_BYTES: u64 = 64;
/// Entries of a hash bucket of the inner index.
const BUCKET_ENTRIES: u64 = 7;
const MIB: u64 = 1 << 20;

/// Configuration of a [`ColdIndex`]: a plain struct with defaults and builder setters;
/// [`ColdIndex::open`] and [`ColdIndex::recover`] validate it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ColdIndexConfig {
    /// log2 of the number of chunks, 0 to 32. Default 16 (65,536 chunks, 2M entries of 32
    /// per chunk). Fixed for the life of the index: a checkpoint records it and recovery with
    /// another value is refused.
    pub chunk_bits: u32,
    /// Entries per chunk, a power of two from 8 to 512. Default 32 (a chunk of 192 bytes:
    /// entries are 6-byte addresses). Fixed for the life of the index, like `chunk_bits`.
    pub entries_per_chunk: u32,
    /// Buckets of the inner store's hash index (64 bytes each, 7 entries), rounded up to a power
    /// of two. Default `None`: a quarter of the chunks (16 bytes of memory per chunk; few
    /// overflow buckets). It never grows. Recovery takes it from the checkpoint.
    pub table_size: Option<u64>,
    /// Bytes of the inner store's log memory (its in-memory pages; at least 4 pages). Default
    /// 2 MiB. The chunks written most recently live there; the rest are read from the device.
    pub log_memory: u64,
    /// Bytes of an inner log page (a power of two from 4 KiB). Default `None`: a sixteenth of
    /// `log_memory`, at least 4 KiB.
    pub page_size: Option<u64>,
    /// Fraction of the inner log memory that is updated in place. Default 0.9.
    pub mutable_fraction: f64,
    /// Bytes of inner log (begin to tail) the background compaction keeps it near. Default
    /// `None`: four times (the chunks' records + log memory), at least 4 MiB. At least twice
    /// that sum, and at least 1 MiB.
    pub log_budget: Option<u64>,
    /// Worker threads of a background compaction pass. Default 1.
    pub compaction_threads: usize,
    /// How often the inner store's maintenance thread checks the log against its budget.
    /// Default 250 ms (F2's).
    pub maintenance_interval: Duration,
}

impl Default for ColdIndexConfig {
    fn default() -> Self {
        Self {
            chunk_bits: 16,
            entries_per_chunk: 32,
            table_size: None,
            log_memory: 2 * MIB,
            page_size: None,
            mutable_fraction: 0.9,
            log_budget: None,
            compaction_threads: 1,
            maintenance_interval: Duration::from_millis(250),
        }
    }
}

impl ColdIndexConfig {
    /// The defaults.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`ColdIndexConfig::chunk_bits`] (log2 of the chunks).
    #[must_use]
    pub fn chunk_bits(mut self, bits: u32) -> Self {
        self.chunk_bits = bits;
        self
    }
    /// Sets [`ColdIndexConfig::entries_per_chunk`].
    #[must_use]
    pub fn entries_per_chunk(mut self, entries: u32) -> Self {
        self.entries_per_chunk = entries;
        self
    }
    /// Sets [`ColdIndexConfig::table_size`] (buckets).
    #[must_use]
    pub fn table_size(mut self, buckets: u64) -> Self {
        self.table_size = Some(buckets);
        self
    }
    /// Sets [`ColdIndexConfig::log_memory`] (bytes).
    #[must_use]
    pub fn log_memory(mut self, bytes: u64) -> Self {
        self.log_memory = bytes;
        self
    }
    /// Sets [`ColdIndexConfig::page_size`] (bytes).
    #[must_use]
    pub fn page_size(mut self, bytes: u64) -> Self {
        self.page_size = Some(bytes);
        self
    }
    /// Sets [`ColdIndexConfig::mutable_fraction`].
    #[must_use]
    pub fn mutable_fraction(mut self, fraction: f64) -> Self {
        self.mutable_fraction = fraction;
        self
    }
    /// Sets [`ColdIndexConfig::log_budget`] (bytes).
    #[must_use]
    pub fn log_budget(mut self, bytes: u64) -> Self {
        self.log_budget = Some(bytes);
        self
    }
    /// Sets [`ColdIndexConfig::compaction_threads`].
    #[must_use]
    pub fn compaction_threads(mut self, threads: usize) -> Self {
        self.compaction_threads = threads;
        self
    }
    /// Sets [`ColdIndexConfig::maintenance_interval`].
    #[must_use]
    pub fn maintenance_interval(mut self, every: Duration) -> Self {
        self.maintenance_interval = every;
        self
    }

    /// Checks the values and derives the inner store's configuration.
    fn plan(&self) -> Result<Plan> {
        let bad = |field: &'static str, reason: String| Err(Error::Config { field, reason });
        if self.chunk_bits > MAX_CHUNK_BITS {
            return bad(
                "cold_index.chunk_bits",
                format!("{} is not in 0..={MAX_CHUNK_BITS}", self.chunk_bits),
            );
        }
        let e = self.entries_per_chunk;
        if !e.is_power_of_two() || !(MIN_ENTRIES..=MAX_ENTRIES).contains(&e) {
            return bad(
                "cold_index.entries_per_chunk",
                format!("{e} is not a power of two from {MIN_ENTRIES} to {MAX_ENTRIES}"),
            );
        }
        let geometry = ChunkGeometry::new(self.chunk_bits, e);
        let table = match self.table_size {
            Some(t) if t == 0 || t > 1 << 36 => {
                return bad(
                    "cold_index.table_size",
                    format!("{t} buckets is not in 1..=2^36"),
                )
            }
            Some(t) => t.next_power_of_two(),
            None => (geometry.chunks() / 4).max(1),
        };
        if !(0.0..=1.0).contains(&self.mutable_fraction) || self.mutable_fraction.is_nan() {
            return bad(
                "cold_index.mutable_fraction",
                format!("{} is not in 0..=1", self.mutable_fraction),
            );
        }
        if !(1..=64).contains(&self.compaction_threads) {
            return bad(
                "cold_index.compaction_threads",
                format!("{} is not in 1..=64", self.compaction_threads),
            );
        }
        if self.maintenance_interval.is_zero() {
            return bad(
                "cold_index.maintenance_interval",
                "zero would make the maintenance thread spin".into(),
            );
        }
        let mut inner = Config::new()
            .table_size(table)
            .log_memory_size(self.log_memory)
            .mutable_fraction(self.mutable_fraction)
            .auto_grow_index(None)
            .maintenance_interval(self.maintenance_interval)
            .type_names(
                "ColdIndexChunkId",
                // The geometry is in the name, so recovery with another one is refused
                // (Error::TypeMismatch) instead of looking entries up in the wrong places.
                format!(
                    "ColdIndexChunk[2^{} chunks x {} entries x {ENTRY_BYTES} B]",
                    self.chunk_bits, e
                ),
            );
        if let Some(p) = self.page_size {
            inner = inner.page_size(p);
        }
        let resolved = inner.resolve().map_err(|e| match e {
            Error::Config { field, reason } => Error::Config {
                field: match field {
                    "page_size" => "cold_index.page_size",
                    "log_memory_size" => "cold_index.log_memory",
                    other => other,
                },
                reason,
            },
            other => other,
        })?;
        let record = record_size(8, geometry.chunk_bytes()) as u64;
        let live = geometry.chunks() * record + resolved.log_memory_size();
        let budget = match self.log_budget {
            Some(b) if b < (2 * live).max(MIB) => {
                return bad(
                    "cold_index.log_budget",
                    format!(
                        "{b} bytes is under 1 MiB or under twice the {live} bytes of every \
                         chunk's record plus the log memory: compaction could not keep the log \
                         within it"
                    ),
                )
            }
            Some(b) => b,
            None => (4 * live).max(4 * MIB),
        };
        let compaction = LogCompaction::with_budget(budget)
            .max_pass((budget / 5).max(MIB))
            .threads(self.compaction_threads);
        inner = inner.log_compaction(compaction);
        inner.resolve()?;
        Ok(Plan {
            geometry,
            inner,
            compaction,
        })
    }
}

/// What a validated configuration gives.
struct Plan {
    geometry: ChunkGeometry,
    inner: Config,
    compaction: LogCompaction,
}

/// Sizes and counters of a [`ColdIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ColdIndexStats {
    /// Chunks configured (`2^chunk_bits`).
    pub chunks: u64,
    /// Entries per chunk.
    pub entries_per_chunk: u64,
    /// Bytes of a chunk (the inner store's value).
    pub chunk_bytes: u64,
    /// Bytes of a chunk's record in the inner log (header, key, chunk).
    pub record_bytes: u64,
    /// Bytes of the inner store's hash index: its table and overflow buckets.
    pub index_memory: u64,
    /// Bytes of the inner store's log memory.
    pub log_memory: u64,
    /// `index_memory + log_memory`: the memory the index holds.
    pub memory_bytes: u64,
    /// The most `memory_bytes` may reach (the module docs' formula, for this index's table and
    /// log memory).
    pub memory_bound: u64,
    /// Device reads the inner store issued for chunk records (lookups and updates of chunks not
    /// in memory, and compaction's checks).
    pub chunk_reads: u64,
    /// Bytes of inner log from its begin to its tail (what its compaction budget counts).
    pub log_bytes: u64,
    /// Bytes the inner log's files take on the device.
    pub disk_bytes: u64,
    /// The inner log's compaction budget (bytes).
    pub log_budget: u64,
    /// Most bytes one compaction pass takes from the inner log.
    pub log_max_pass: u64,
    /// Lookups ([`ColdIndex::get`] and its async form) since the index was opened.
    pub lookups: u64,
    /// Compare-and-swaps that found the expected value (and set the entry).
    pub updates: u64,
    /// Compare-and-swaps that found another value (and wrote nothing).
    pub update_conflicts: u64,
    /// What the inner log's compactions did.
    pub compaction: CompactionTotals,
}

/// Counters of [`ColdIndexStats`] kept by the index itself.
const LOOKUPS: usize = 0;
const UPDATES: usize = 1;
const CONFLICTS: usize = 2;

/// F2's cold index over device `D`. `Send + Sync`; every operation takes `&self`.
pub struct ColdIndex<D: Disk> {
    /// The inner store: chunk id -> chunk. Its value type is never decoded (chunks go through
    /// the engine as raw bytes); the checkpoint records the names `plan` gives.
    store: RsKv<u64, Vec<u8>, D>,
    geometry: ChunkGeometry,
    compaction: LogCompaction,
    memory_bound: u64,
    counts: PerThread<3>,
}

impl<D: Disk> std::fmt::Debug for ColdIndex<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdIndex")
            .field("geometry", &self.geometry)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<D: Disk> ColdIndex<D> {
    /// An empty index whose chunks live on `disk` (its own device: a directory of its own for
    /// a [`FileSystemDisk`](crate::FileSystemDisk)).
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad field; [`Error::Checkpoint`] if `disk` holds a completed
    /// checkpoint (recover it with [`ColdIndex::recover`], or remove it); I/O errors.
    pub fn open(config: &ColdIndexConfig, disk: D) -> Result<Self> {
        let plan = config.plan()?;
        let store = RsKv::open(plan.inner.clone().error_if_exists(true), disk)?;
        Ok(Self::over(store, &plan))
    }

    /// The index as checkpoint `token` (of [`ColdIndex::checkpoint`] on `disk`) left it.
    /// `config` must have the chunk geometry the index was created with; its memory settings
    /// may differ (the inner table size comes from the checkpoint).
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad field; [`Error::Checkpoint`] when the checkpoint is
    /// missing, truncated, corrupt or foreign; [`Error::TypeMismatch`] when it was written with
    /// another chunk geometry; [`Error::Corrupt`] when the log does not match it; I/O errors.
    pub fn recover(config: &ColdIndexConfig, disk: D, token: Token) -> Result<Self> {
        let plan = config.plan()?;
        let (store, _) = RsKv::recover(plan.inner.clone(), disk, Some(token))?;
        // The inner store's own releases must not remove this checkpoint while it is the one
        // the owner's newest checkpoint names (until `remove_checkpoints_except` moves on).
        let begin = store.engine.checkpoint_dir()?.read_log_meta(token)?.begin;
        store.engine.hold_space_from(begin);
        Ok(Self::over(store, &plan))
    }

    fn over(store: RsKv<u64, Vec<u8>, D>, plan: &Plan) -> Self {
        let resolved = store.resolved();
        let overflow_buckets = plan.geometry.chunks().div_ceil(BUCKET_ENTRIES);
        let overflow_pages = overflow_buckets.div_ceil(PAGE_ITEMS as u64);
        let memory_bound = BUCKET_BYTES * resolved.table_size()
            + overflow_pages * PAGE_ITEMS as u64 * BUCKET_BYTES
            + resolved.log_memory_size();
        Self {
            store,
            geometry: plan.geometry,
            compaction: plan.compaction,
            memory_bound,
            counts: PerThread::default(),
        }
    }

    /// The map from hashes to chunks and entries.
    #[must_use]
    pub fn geometry(&self) -> ChunkGeometry {
        self.geometry
    }

    /// Takes a full checkpoint of the inner store (its index and log) and returns once it is
    /// durable. Lookups and updates of other threads keep running; an update that lands after
    /// the checkpoint's cut is not in it.
    ///
    /// # Errors
    /// [`Error::Busy`] while another checkpoint of the index runs, or when called from inside
    /// an operation of the inner store; [`Error::Config`] for a device that keeps nothing; I/O
    /// errors (no checkpoint is then recorded).
    pub fn checkpoint(&self) -> Result<Token> {
        self.store.checkpoint()
    }

    /// Removes every checkpoint of the index except those in `keep`, and holds the inner log
    /// space the kept ones need (the inner store's own releases stop below it).
    ///
    /// # Errors
    /// [`Error::Busy`] while a checkpoint runs; [`Error::Path`] if a file cannot be removed
    /// (the checkpoints before it are gone); [`Error::Config`] for a device that keeps nothing.
    pub fn remove_checkpoints_except(&self, keep: &[Token]) -> Result<()> {
        let dir = self.store.engine.checkpoint_dir()?;
        let mut floor = u64::MAX;
        for info in self.store.checkpoints()? {
            if keep.contains(&info.token) {
                floor = floor.min(dir.read_log_meta(info.token).map_or(0, |m| m.begin));
            } else {
                self.store.remove_checkpoint(info.token)?;
            }
        }
        // The inner store releases log space (and removes checkpoints needing it) only below
        // what the kept checkpoints need: its own releases follow its newest checkpoint, which
        // the owner may not have recorded yet (R2Kv takes it before the hot checkpoint that
        // names it, and a crash in between recovers the previous one).
        self.store.engine.hold_space_from(floor);
        Ok(())
    }

    /// Writes the inner log's pages whose write failed again (see
    /// [`HybridLog::retry_failed_writes`](crate::hlog::HybridLog::retry_failed_writes)); once
    /// they are written, updates that open new pages work again.
    ///
    /// # Errors
    /// [`Error::Poisoned`] when a page still fails.
    pub fn retry_failed_writes(&self) -> Result<()> {
        self.store.engine.hlog.retry_failed_writes()
    }

    /// Compacts the inner log now, up to what is only on the device (the background compaction
    /// does this by itself when the log passes its budget).
    ///
    /// # Errors
    /// [`Error::Busy`] while another compaction (the background one) runs; device errors.
    pub fn compact(&self) -> Result<Compaction> {
        let until = self.store.engine.hlog.safe_head();
        self.store.compact(until)
    }

    /// The address the entry for `hash` holds ([`Address::INVALID`] when empty). Blocks on the
    /// device when the chunk is not in memory.
    ///
    /// # Errors
    /// Device errors; [`Error::Corrupt`] or [`Error::Codec`] for a chunk record that is not
    /// one of this index.
    pub fn get(&self, hash: KeyHash) -> Result<Address> {
        let pos = self.geometry.locate(hash);
        let engine = &self.store.engine;
        let mut buf = ValueBuf::default();
        let found = match engine.read_word_key(pos.chunk.word(), pos.chunk.hash(), &mut buf) {
            Fast::Done(found) => found,
            Fast::Slow => engine
                .read_blocking(&pos.chunk.encoded(), pos.chunk.hash(), &mut buf)?
                .live(),
        };
        self.counts.bump(LOOKUPS);
        self.entry(found, &buf, pos)
    }

    /// [`ColdIndex::get`] that waits for the device without blocking the executor. The future
    /// is `Send` and holds no epoch protection while it waits.
    ///
    /// # Errors
    /// As [`ColdIndex::get`].
    pub async fn get_async(&self, hash: KeyHash) -> Result<Address> {
        let pos = self.geometry.locate(hash);
        let engine = &self.store.engine;
        let mut buf = ValueBuf::default();
        let found = match engine.read_word_key(pos.chunk.word(), pos.chunk.hash(), &mut buf) {
            Fast::Done(found) => found,
            Fast::Slow => {
                let key = pos.chunk.encoded();
                engine
                    .read_async(&key, pos.chunk.hash(), &mut buf)
                    .await?
                    .live()
            }
        };
        self.counts.bump(LOOKUPS);
        self.entry(found, &buf, pos)
    }

    fn entry(&self, found: bool, chunk: &ValueBuf, pos: EntryPos) -> Result<Address> {
        if found {
            self.geometry.entry_of(chunk.bytes(), pos.entry)
        } else {
            Ok(Address::INVALID)
        }
    }

    /// Compare-and-swap of the entry for `hash`: sets it to `new` if it holds `expected`.
    /// `Ok(Ok(()))` on success; `Ok(Err(actual))` when it held `actual` instead, and then
    /// nothing was written. Blocks on the device when the chunk is not in memory.
    ///
    /// # Errors
    /// Device errors, [`Error::Poisoned`] after a failed write of the inner log; as
    /// [`ColdIndex::get`] for a foreign chunk record.
    pub fn try_update(
        &self,
        hash: KeyHash,
        expected: Address,
        new: Address,
    ) -> Result<std::result::Result<(), Address>> {
        let pos = self.geometry.locate(hash);
        let mut cas = EntryCas::new(self.geometry, pos.entry, expected, new);
        if !self.try_update_in_place(pos, &mut cas)? {
            // Ok (written) or NotFound (aborted): the decision's outcome says which and why.
            let _status = self.store.engine.update_blocking(
                &pos.chunk.encoded(),
                pos.chunk.hash(),
                Address::INVALID,
                true,
                &mut |latest| cas.decide(latest),
            )?;
        }
        self.finished(&cas)
    }

    /// [`ColdIndex::try_update`] that waits for the device without blocking the executor. The
    /// future is `Send` and holds no epoch protection while it waits.
    ///
    /// # Errors
    /// As [`ColdIndex::try_update`].
    pub async fn try_update_async(
        &self,
        hash: KeyHash,
        expected: Address,
        new: Address,
    ) -> Result<std::result::Result<(), Address>> {
        self.swap_async(hash, new, move |current| current == expected)
            .await
    }

    /// Sets the entry for `hash` to `new` if `accept` takes what it holds; `accept` runs
    /// inside the chunk's RMW decision (once per run: the last run is the one carried out),
    /// before the new chunk is published. R2Kv's cold appends point their record at the
    /// entry's old value there, so one RMW both learns the predecessor and publishes.
    /// Returns as [`ColdIndex::try_update`].
    ///
    /// # Errors
    /// As [`ColdIndex::try_update`].
    pub(crate) async fn swap_async(
        &self,
        hash: KeyHash,
        new: Address,
        accept: impl FnMut(Address) -> bool,
    ) -> Result<std::result::Result<(), Address>> {
        let pos = self.geometry.locate(hash);
        let mut cas = EntryCas::with(self.geometry, pos.entry, accept, new);
        if !self.try_update_in_place(pos, &mut cas)? {
            let key = pos.chunk.encoded();
            let _status = self
                .store
                .engine
                .update_async(
                    &key,
                    pos.chunk.hash(),
                    Address::INVALID,
                    true,
                    &mut |latest| cas.decide(latest),
                )
                .await?;
        }
        self.finished(&cas)
    }

    /// The CAS on a chunk record in the mutable region, under its lock (the engine's one-word
    /// key fast path): `false` when the chunk is elsewhere (the general path decides then).
    fn try_update_in_place<F: FnMut(Address) -> bool>(
        &self,
        pos: EntryPos,
        cas: &mut EntryCas<F>,
    ) -> Result<bool> {
        let Some(lock) = self
            .store
            .engine
            .lock_word_key(pos.chunk.word(), pos.chunk.hash())
        else {
            return Ok(false);
        };
        if lock.value_len() == self.geometry.chunk_bytes() {
            // The entry alone: read its 6 bytes, patch them if the CAS succeeds.
            let at = cas.entry_offset();
            let mut entry = [0u8; 8];
            lock.read_at(at, &mut entry[..ENTRY_BYTES]);
            if let Some(new) = cas.decide_entry(Address::new(u64::from_le_bytes(entry))) {
                lock.patch(at, &new.raw().to_le_bytes()[..ENTRY_BYTES]);
            }
            return Ok(true);
        }
        let mut buf = ValueBuf::default();
        lock.read(&mut buf);
        // Dropping the lock without a write leaves the record exactly as it was.
        Ok(match cas.decide(Latest::Value(buf.bytes()))? {
            Decision::Abort => true,
            // Always fits (a chunk has one size); if not, the general path decides again.
            Decision::Write(chunk) => lock.write(&chunk),
        })
    }

    fn finished<F: FnMut(Address) -> bool>(
        &self,
        cas: &EntryCas<F>,
    ) -> Result<std::result::Result<(), Address>> {
        // Every update the engine finishes ran its decision at least once (the last run is
        // the one carried out): an update that stopped before deciding returned an error.
        let outcome = cas.outcome.ok_or(Error::Internal(
            "an update of a chunk finished without running its decision",
        ))?;
        self.counts
            .bump(if outcome.is_ok() { UPDATES } else { CONFLICTS });
        Ok(outcome)
    }

    /// [`crate::ops::compact::Mover::prefetch`] of what an update of `hash`'s entry touches
    /// first: its chunk's bucket in the inner index, or the chunk's record.
    pub(crate) fn prefetch(&self, hash: KeyHash, stage: crate::ops::compact::Prefetch) {
        let chunk = self.geometry.locate(hash).chunk;
        let bytes = crate::core::record::record_size(8, self.geometry.chunk_bytes());
        self.store
            .engine
            .prefetch_hash(Some(chunk.hash()), stage, bytes);
    }

    /// Sizes and counters.
    #[must_use]
    pub fn stats(&self) -> ColdIndexStats {
        let s = self.store.stats();
        let index_memory = s.index_memory as u64;
        let log_memory = s.log_memory as u64;
        ColdIndexStats {
            chunks: self.geometry.chunks(),
            entries_per_chunk: self.geometry.entries() as u64,
            chunk_bytes: self.geometry.chunk_bytes() as u64,
            record_bytes: record_size(8, self.geometry.chunk_bytes()) as u64,
            index_memory,
            log_memory,
            memory_bytes: index_memory + log_memory,
            memory_bound: self.memory_bound,
            chunk_reads: s.device_reads,
            log_bytes: s.log_bytes,
            disk_bytes: s.disk_bytes,
            log_budget: self.compaction.budget,
            log_max_pass: self.compaction.max_pass,
            lookups: self.counts.total(LOOKUPS),
            updates: self.counts.total(UPDATES),
            update_conflicts: self.counts.total(CONFLICTS),
            compaction: s.compaction,
        }
    }
}

impl<D: Disk> ChainIndex for ColdIndex<D> {
    fn get(&self, hash: KeyHash) -> Result<Address> {
        ColdIndex::get(self, hash)
    }

    fn get_async(
        &self,
        hash: KeyHash,
    ) -> impl std::future::Future<Output = Result<Address>> + Send {
        ColdIndex::get_async(self, hash)
    }

    fn try_update(
        &self,
        hash: KeyHash,
        expected: Address,
        new: Address,
    ) -> Result<std::result::Result<(), Address>> {
        ColdIndex::try_update(self, hash, expected, new)
    }

    fn try_update_async(
        &self,
        hash: KeyHash,
        expected: Address,
        new: Address,
    ) -> impl std::future::Future<Output = Result<std::result::Result<(), Address>>> + Send {
        ColdIndex::try_update_async(self, hash, expected, new)
    }
}
