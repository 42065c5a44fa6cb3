//! R2Kv: the two-tier store (FASTER's F2). A hot [`RsKv`] (in-memory index, read cache) takes
//! every upsert and delete; a cold tier (a log almost entirely on disk behind the cold index,
//! [`cold`]) takes what the hot log's budget pushes out. Reads try hot, then cold; a hot
//! tombstone means absent. Design, invariants and interleavings: `docs/DESIGN.md`, "R2Kv".
//!
//! # Operations
//! - **Upsert, delete:** to the hot tier. A delete always writes a tombstone there (the key
//!   may live in the cold tier, which only compaction writes).
//! - **Read:** hot (its read cache included); a live value or a tombstone there is the answer
//!   (invariant 2 of [`cold`]: every hot record of a key is newer than its cold ones); absent
//!   there, the cold tier answers.
//! - **RMW:** in the hot tier, where a record of the key there is the newest. When the hot tier
//!   has none, the RMW notes the hot `begin` (`b0`), reads the cold tier, and retries in the hot
//!   tier with the cold value as the old one, written only if the hot tier still has no record
//!   of the key (the CAS on its entry) *and* `begin` is still `b0`. A hot record created after
//!   the cold read either is still in the hot tier (the retry sees it) or was moved to the
//!   cold tier and truncated, which moved `begin` (the retry starts over). So no update is lost
//!   and totals of concurrent increments are exact. `rmw_many` runs one such RMW per key, all
//!   in flight at once; `conditional_insert` is one with the decision "write if the key has no
//!   live value" (so it is atomic across the tiers too).
//! - **Iteration:** the hot tier's live pairs, then the cold tier's whose key has no hot record
//!   below the hot tail the iteration started at (`r2::iter` has the invariants). It holds the
//!   hot log's maintenance claim, which every pass holds, so no pass moves a record between
//!   the two phases.
//! - **Hot-to-cold compaction:** the oldest part of the hot log is scanned; a record that is
//!   still its key's newest in the hot tier (tombstones too) is appended to the cold tier, then
//!   the hot log is truncated. A read that found the hot record before the truncation returns
//!   it; one after finds the cold copy, appended before.
//! - **Cold-to-cold compaction:** the oldest part of the cold log is scanned, live records that
//!   are still newest are copied to the cold tail, tombstones dropped, the cold log truncated.
//! - **Checkpoint:** one token. The maintenance lock stops both compactions; the cold log is
//!   flushed and the cold index checkpointed; their state goes into the hot tier's checkpoint
//!   (`cold.meta`, written before its `log.meta`, so a completed hot checkpoint always has it).
//!   Recovery opens the newest completed hot checkpoint and the cold state it names.
//! - **A failing device.** A page write of the cold log or of the cold index's log that fails
//!   (a full disk) poisons that log: appends to it that need a new page fail with
//!   [`Error::Poisoned`], so a migration pass fails before it truncates anything (every key
//!   still reads from the tier it was in) and checkpoints refuse. Reads keep working. Every
//!   pass and every checkpoint first writes the failed pages again, so once the device takes
//!   them migration and checkpoints work on; reopening recovers the last checkpoint. A
//!   background pass has no caller to return its error to: it is logged, counted in
//!   [`R2Stats::maintenance_failures`] and kept in [`R2Stats::maintenance_error`] until a
//!   pass succeeds, and the next interval tries again.

pub(crate) mod cold;
mod iter;
mod stats;

use stats::PassCounters;
pub use stats::{PassTotals, R2Stats};

use crate::maintenance::MaintenanceHealth;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Config;
use crate::contexts::{
    decode_latest, rmw_decider, DeleteContext, ReadContext, RmwContext, UpsertContext,
};
use crate::core::address::Address;
use crate::core::checkpoint::{CheckpointDir, CommitPoint, Token};
use crate::core::codec::{decode, decode_word, Codec, Encoded};
use crate::core::record::ValueBuf;
use crate::core::status::{Error, Result, Status};
use crate::device::file_system_disk::FileSystemDisk;
use crate::device::{Disk, SubDevice};
use crate::index::cold_index::ColdIndexConfig;
use crate::index::key_hash::{encode_key, hash_encoded, KeyHasher};
use crate::index::KeyHash;
use crate::ops::compact::{Compaction, LogCompaction, Mover, Pace, Prefetch};
use crate::ops::fast::{Fast, Word};
use crate::ops::read::Found;
use crate::ops::rmw::{Decision, Latest};
use crate::ops::tiered::{self, Lower, Tiered};
use crate::ops::truncate::MaintenanceClaim;
use crate::ops::Engine;
use crate::rskv_core::RsKv;
use crate::session::{Session, SessionId};
use cold::{ColdLogShape, ColdMeta, ColdStore, COLD_META};

/// The sub-device of the cold log.
const COLD_LOG: &str = "cold";
/// The sub-device of the cold index's store.
const COLD_INDEX: &str = "cold-index";

/// How an [`R2Kv`] is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct R2Config {
    /// The hot tier (memory, index, read cache, ...). Its own `log_compaction` and
    /// `checkpoint_on_close` are not used: the hot log's budget is `hot_to_cold`'s.
    pub hot: Config,
    /// Hot-to-cold compaction: the hot log's disk budget and how passes run.
    pub hot_to_cold: LogCompaction,
    /// Cold-to-cold compaction: the cold log's disk budget and how passes run.
    pub cold_to_cold: LogCompaction,
    /// Memory of the cold log (its newest pages; at least 4 pages).
    pub cold_log_memory: u64,
    /// Page size of the cold log (a power of two).
    pub cold_page_size: u64,
    /// The cold index.
    pub cold_index: ColdIndexConfig,
    /// Time between checks of the two budgets (longer than zero: `R2Kv::open` refuses zero).
    pub maintenance_interval: Duration,
    /// Bytes below a cold record that a cold read fetches with it (within its page). Cold-to-cold
    /// compaction lays each chain out together, oldest first below its head, so a read brings
    /// the records of its chain that lie within this window without reading them one by one
    /// (`r2::cold`, invariant 6); the default 1 KiB holds the chains of the usual 1-3 keys of
    /// 100-byte values with room to spare. 0: reads fetch only their record, and cold-to-cold
    /// compaction moves records one at a time. At most 64 KiB.
    pub cold_chain_window: u64,
}

impl Default for R2Config {
    fn default() -> Self {
        Self {
            hot: Config::new(),
            hot_to_cold: LogCompaction::with_budget(256 << 20),
            cold_to_cold: LogCompaction::with_budget(4 << 30),
            cold_log_memory: 8 << 20,
            cold_page_size: 1 << 20,
            cold_index: ColdIndexConfig::default(),
            maintenance_interval: Duration::from_millis(250),
            cold_chain_window: 1024,
        }
    }
}

impl R2Config {
    /// F2's defaults: a hot log of 256 MiB on disk, a cold log of 4 GiB.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
    /// The hot tier's configuration.
    #[must_use]
    pub fn hot(mut self, config: Config) -> Self {
        self.hot = config;
        self
    }
    /// Hot-to-cold compaction (the hot log's budget).
    #[must_use]
    pub fn hot_to_cold(mut self, c: LogCompaction) -> Self {
        self.hot_to_cold = c;
        self
    }
    /// Cold-to-cold compaction (the cold log's budget).
    #[must_use]
    pub fn cold_to_cold(mut self, c: LogCompaction) -> Self {
        self.cold_to_cold = c;
        self
    }
    /// Memory of the cold log.
    #[must_use]
    pub fn cold_log_memory(mut self, bytes: u64) -> Self {
        self.cold_log_memory = bytes;
        self
    }
    /// Page size of the cold log.
    #[must_use]
    pub fn cold_page_size(mut self, bytes: u64) -> Self {
        self.cold_page_size = bytes;
        self
    }
    /// The cold index.
    #[must_use]
    pub fn cold_index(mut self, c: ColdIndexConfig) -> Self {
        self.cold_index = c;
        self
    }
    /// Time between checks of the two budgets.
    #[must_use]
    pub fn maintenance_interval(mut self, d: Duration) -> Self {
        self.maintenance_interval = d;
        self
    }

    /// Bytes below a cold record that a cold read fetches with it ([`R2Config::cold_chain_window`]).
    #[must_use]
    pub fn cold_chain_window(mut self, bytes: u64) -> Self {
        self.cold_chain_window = bytes;
        self
    }

    fn cold_shape(&self) -> Result<ColdLogShape> {
        let page = self.cold_page_size;
        if !page.is_power_of_two()
            || !(crate::hlog::persistent_memory_malloc::MIN_PAGE_BITS
                ..=crate::hlog::persistent_memory_malloc::MAX_PAGE_BITS)
                .contains(&page.trailing_zeros())
        {
            return Err(Error::Config {
                field: "cold_page_size",
                reason: format!("{page} is not a power of two between 4 KiB and 256 MiB"),
            });
        }
        let frames = self.cold_log_memory / page;
        if frames < crate::hlog::persistent_memory_malloc::MIN_FRAMES {
            return Err(Error::Config {
                field: "cold_log_memory",
                reason: format!(
                    "{} bytes hold fewer than {} pages of {page} bytes",
                    self.cold_log_memory,
                    crate::hlog::persistent_memory_malloc::MIN_FRAMES
                ),
            });
        }
        self.hot_to_cold.validate()?;
        self.cold_to_cold.validate()?;
        if self.cold_chain_window > 64 << 10 {
            return Err(Error::Config {
                field: "cold_chain_window",
                reason: format!("{} bytes is more than 64 KiB", self.cold_chain_window),
            });
        }
        Ok(ColdLogShape {
            page_bits: page.trailing_zeros(),
            frames,
            chain_window: self.cold_chain_window,
        })
    }
}

/// What the store and its maintenance thread share.
struct Shared<D: Disk> {
    hot: Arc<Engine<D>>,
    cold: ColdStore<D>,
    /// Held by a compaction pass or a checkpoint: they exclude each other. A pass also holds
    /// the hot log's maintenance claim, which an iterator holds for its life instead (it must
    /// exclude passes but not checkpoints, and never waits).
    maintenance: Mutex<()>,
    hot_to_cold: LogCompaction,
    cold_to_cold: LogCompaction,
    hot_entries_freed: AtomicU64,
    hot_passes: PassCounters,
    cold_passes: PassCounters,
    /// What became of the background passes ([`R2Stats::maintenance_failures`]).
    maintenance_health: MaintenanceHealth,
    stop: AtomicBool,
}

/// Records the outcome of a background pass in `health` (`Ok(false)`: none was due or
/// possible), logging a failure once per distinct error (a full disk fails every interval).
fn record_pass(health: &MaintenanceHealth, outcome: &Result<bool>) {
    match outcome {
        Ok(false) => {}
        Ok(true) => {
            if health.succeeded() {
                tracing::info!("R2Kv maintenance pass succeeded again");
            }
        }
        Err(e) => {
            if health.failed(e) {
                tracing::debug!(error = %e, "R2Kv maintenance pass failed again");
            } else {
                tracing::warn!(error = %e, "R2Kv maintenance pass failed; retrying at the next interval");
            }
        }
    }
}

/// Hot-to-cold: a hot record that is still its key's newest in the hot tier moves to the cold
/// tier (tombstones too).
struct HotToCold<'a, D: Disk> {
    hot: &'a Engine<D>,
    cold: &'a ColdStore<D>,
}

impl<D: Disk> Mover for HotToCold<'_, D> {
    const MOVES_TOMBSTONES: bool = true;

    async fn move_record(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        address: Address,
    ) -> Result<bool> {
        let hash = KeyHash::new(self.hot.hasher.rehash(key)?);
        let key = Encoded::from_bytes(key);
        // Newest if its chain starts here; else an update that writes nothing tells whether
        // a record of the key lies above it (walking the chain, on the device too).
        if !self.hot.heads_chain(hash, address) {
            let floor = Address::new(address.raw() + 1);
            let mut newest = false;
            let _ = self
                .hot
                .update_async(&key, hash, floor, false, &mut |latest| {
                    newest = matches!(latest, Latest::Absent);
                    Ok(Decision::Abort)
                })
                .await?;
            if !newest {
                return Ok(false);
            }
        }
        let value = value.map(Encoded::from_bytes);
        self.cold.append_newest(&key, value.as_ref(), hash).await?;
        Ok(true)
    }

    fn prefetch(&self, key: &[u8], stage: Prefetch) {
        // The hot entry (its bucket; the move compares the entry, not the record), and the
        // cold index's chunk.
        let Ok(hash) = self.hot.hasher.rehash(key).map(KeyHash::new) else {
            return;
        };
        if stage == Prefetch::Buckets {
            self.hot.prefetch_hash(Some(hash), stage, 0);
        }
        self.cold.index.prefetch(hash, stage);
    }
}

impl<D: Disk> Shared<D> {
    /// The `begin` of the cold log each retained hot checkpoint recorded.
    fn retained_cold_begins(&self) -> Result<Vec<u64>> {
        let Ok(dir) = self.hot.checkpoint_dir() else {
            return Ok(Vec::new());
        };
        let mut begins = Vec::new();
        for t in dir.tokens()? {
            if dir.has_log_meta(t) {
                // Unreadable: keep everything.
                begins.push(read_cold_meta(&dir, t).map_or(0, |m| m.begin));
            }
        }
        Ok(begins)
    }

    /// Hot-to-cold pass below `until` (the caller holds the maintenance lock and `claim`).
    fn hot_to_cold_until(
        &self,
        claim: &MaintenanceClaim<'_>,
        until: Address,
        pace: Pace,
    ) -> Result<Compaction> {
        // A device that refused the cold tier's pages may take them now (it had no room).
        self.cold.retry_failed_writes()?;
        let mover = HotToCold {
            hot: &self.hot,
            cold: &self.cold,
        };
        let c = self
            .hot
            .compact_into(claim, until, self.hot_to_cold.threads, pace, &mover)?;
        self.hot_passes.add(&c);
        // Entries whose whole chain is now below begin lead only to the cold tier: free
        // them, so the hot index holds the hot set (invariant 9).
        let begin = self.hot.hlog.begin();
        let freed = self.hot.index.sweep(
            |e| matches!(e.target(), crate::index::hash_bucket::Target::Log(a) if a < begin),
        )?;
        self.hot_entries_freed.fetch_add(freed, Ordering::Relaxed);
        Ok(c)
    }

    /// Cold-to-cold pass below `until` (the caller holds the maintenance lock and the hot
    /// log's claim, which keeps iterators out).
    fn cold_to_cold_until(
        &self,
        _claim: &MaintenanceClaim<'_>,
        until: Address,
    ) -> Result<Compaction> {
        self.cold.retry_failed_writes()?;
        let begins = self.retained_cold_begins()?;
        let c = self.cold.compact(
            until,
            self.cold_to_cold.threads,
            // Its moves read chains from the device: at least 16 in flight per worker.
            self.cold_to_cold.lookups_in_flight.max(16),
            &begins,
        )?;
        self.cold_passes.add(&c);
        Ok(c)
    }

    /// One maintenance pass: each compaction whose log passed its trigger. None while an
    /// iterator holds the hot log's claim (the next interval tries again); the claim is taken
    /// only when a pass is due, so a check that finds nothing to do never makes `iter` busy.
    /// Returns whether a compaction ran.
    fn pass(&self) -> Result<bool> {
        let _m = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let hot_due = due(
            &self.hot_to_cold,
            self.hot.log_bytes(),
            &self.hot.hlog.markers(),
        );
        // After a hot-to-cold pass, which grows the cold log.
        let cold_due = || {
            due(
                &self.cold_to_cold,
                self.cold.log_bytes(),
                &self.cold.hlog.markers(),
            )
        };
        if hot_due.is_none() && cold_due().is_none() {
            return Ok(false);
        }
        let Ok(claim) = self.hot.claim_maintenance() else {
            return Ok(false);
        };
        if let Some(until) = hot_due {
            let pace = Pace {
                lookups: self.hot_to_cold.lookups_in_flight,
                budget: self.hot_to_cold.budget,
            };
            self.hot_to_cold_until(&claim, until, pace)?;
        }
        if let Some(until) = cold_due() {
            self.cold_to_cold_until(&claim, until)?;
        }
        Ok(true)
    }
}

/// Where a pass of `p` over a log of `size` bytes with `m` markers should end, if one is due.
fn due(p: &LogCompaction, size: u64, m: &crate::hlog::LogMarkers) -> Option<Address> {
    if (size as f64) < p.trigger * p.budget as f64 {
        return None;
    }
    let span = ((size as f64 * p.fraction) as u64).clamp(1, p.max_pass.max(1));
    let until = (m.begin.raw() + span).min(m.safe_head.raw());
    (until > m.begin.raw()).then(|| Address::new(until))
}

fn read_cold_meta(dir: &CheckpointDir, token: Token) -> Result<ColdMeta> {
    let bytes = dir.read_attached(token, COLD_META)?;
    postcard::from_bytes(&bytes).map_err(|e| Error::Checkpoint {
        path: dir.dir(token).join(COLD_META),
        reason: format!("cold tier state does not decode: {e}"),
    })
}

/// The two-tier store: a hot [`RsKv`] and a cold tier on disk behind the cold index. Same
/// operations as [`RsKv`]; see the module docs for how each uses the tiers.
pub struct R2Kv<K, V, D: SubDevice = FileSystemDisk> {
    hot: RsKv<K, V, D>,
    shared: Arc<Shared<D>>,
    maintainer: Option<JoinHandle<()>>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Codec, V: Codec, D: SubDevice> R2Kv<K, V, D> {
    /// Opens the store over `disk` (the cold log and the cold index's store go into its
    /// sub-devices `cold` and `cold-index`): recovers the newest completed checkpoint, or
    /// starts empty.
    ///
    /// # Errors
    /// [`Error::Config`] for bad settings; the errors of [`RsKv::open`]; [`Error::Checkpoint`]
    /// when the newest checkpoint has no cold tier state (it was not written by an R2Kv).
    pub fn open(config: R2Config, disk: D) -> Result<Self> {
        let shape = config.cold_shape()?;
        if config.maintenance_interval.is_zero() {
            // The maintenance thread would spin on a core (RsKv's `Config` refuses it too).
            return Err(Error::Config {
                field: "maintenance_interval",
                reason: "must be longer than zero".into(),
            });
        }
        let hot_memory = config.hot.resolve()?.log_memory_size();
        let h = &config.hot_to_cold;
        if h.trigger * h.budget as f64 <= hot_memory as f64 {
            // Passes move only what is on the device: the log's memory never leaves.
            return Err(Error::Config {
                field: "hot_to_cold.budget",
                reason: format!(
                    "{} bytes at a trigger of {} start passes before the hot log is past its \
                     {hot_memory} bytes of memory, which never move to the cold tier",
                    h.budget, h.trigger
                ),
            });
        }
        let mut hot_config = config.hot.clone();
        hot_config.log_compaction = None;
        hot_config.checkpoint_on_close = false;
        let hot = RsKv::<K, V, D>::open(hot_config, disk)?;
        let engine = hot.engine.clone();
        if let Some(pool) = &engine.pool {
            // A split that moves keeps the hot log's memory well below where hot-to-cold
            // passes start (they move only what is on the device).
            let cap =
                (h.trigger * h.budget as f64 * 0.75) as u64 >> engine.hlog.geometry().page_bits;
            pool.log_cap
                .store(cap, std::sync::atomic::Ordering::Relaxed);
        }
        // Hot truncation follows hot-to-cold, which moved every newest record (DESIGN.md,
        // "Kept copies outlive hot truncation"): a linked copy stays its key's newest value.
        engine
            .copies_outlive_truncation
            .store(true, std::sync::atomic::Ordering::Relaxed);
        engine
            .cpr
            .attachment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .required = true;
        let subs = |fresh: bool| -> Result<(D, D)> {
            let d = engine.hlog.disk();
            if fresh {
                // Nothing in them is reachable without a completed hot checkpoint.
                d.remove_sub_device(COLD_LOG)?;
                d.remove_sub_device(COLD_INDEX)?;
            }
            Ok((d.sub_device(COLD_LOG)?, d.sub_device(COLD_INDEX)?))
        };
        let hasher = KeyHasher::default();
        let cold = match hot.recovered() {
            Some(info) => {
                let dir = engine.checkpoint_dir()?;
                let meta = read_cold_meta(&dir, info.token)?;
                let (log, index) = subs(false)?;
                ColdStore::recover(log, index, shape, &config.cold_index, hasher, &meta)?
            }
            None => {
                let (log, index) = subs(true)?;
                ColdStore::open(log, index, shape, &config.cold_index, hasher)?
            }
        };
        // Past budget + one pass, operations pause before they start until migration
        // catches up (as single-tier compaction does).
        engine
            .hlog
            .set_size_limit(config.hot_to_cold.budget + config.hot_to_cold.max_pass);
        let shared = Arc::new(Shared {
            hot: engine,
            cold,
            maintenance: Mutex::new(()),
            hot_to_cold: config.hot_to_cold,
            cold_to_cold: config.cold_to_cold,
            hot_entries_freed: AtomicU64::new(0),
            hot_passes: PassCounters::default(),
            cold_passes: PassCounters::default(),
            maintenance_health: MaintenanceHealth::default(),
            stop: AtomicBool::new(false),
        });
        let maintainer = {
            let shared = shared.clone();
            let interval = config.maintenance_interval;
            std::thread::Builder::new()
                .name("r2kv-maintenance".into())
                .spawn(move || {
                    crate::maintenance::lower_thread_priority();
                    while !shared.stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(interval);
                        if shared.stop.load(Ordering::Acquire) {
                            break;
                        }
                        record_pass(&shared.maintenance_health, &shared.pass());
                    }
                })
                .map_err(|e| Error::io("starting the R2Kv maintenance thread", e))?
        };
        Ok(Self {
            hot,
            shared,
            maintainer: Some(maintainer),
            _types: PhantomData,
        })
    }

    /// The hot tier's engine.
    fn engine(&self) -> &Engine<D> {
        &self.shared.hot
    }

    /// Takes one checkpoint of both tiers; returns its token. Blocks until it is durable;
    /// operations of other threads keep running, compactions wait.
    ///
    /// # Errors
    /// As [`RsKv::checkpoint`]; device errors of the cold tier.
    pub fn checkpoint(&self) -> Result<Token> {
        let s = &*self.shared;
        let _m = self.maintenance("checkpoint called from inside an operation of this store")?;
        let meta = s.cold.checkpoint()?;
        let bytes = postcard::to_stdvec(&meta)
            .map_err(|e| Error::Codec(format!("encoding the cold tier state: {e}")))?;
        s.hot
            .cpr
            .attachment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next = Some((COLD_META, bytes));
        let token = self.hot.checkpoint();
        s.hot
            .cpr
            .attachment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next = None;
        let token = token?;
        // Retained checkpoints name cold index checkpoints and cold log space; drop the rest.
        let dir = s.hot.checkpoint_dir()?;
        let mut keep = Vec::new();
        let mut begins = Vec::new();
        for t in dir.tokens()? {
            if dir.has_log_meta(t) {
                match read_cold_meta(&dir, t) {
                    Ok(m) => {
                        keep.push(Token(m.index_token));
                        begins.push(m.begin);
                    }
                    Err(_) => begins.push(0),
                }
            }
        }
        if let Err(e) = s
            .cold
            .index
            .remove_checkpoints_except(&keep)
            .and_then(|()| s.cold.release(&begins).map(|_| ()))
        {
            tracing::warn!(error = %e, "releasing cold tier space after a checkpoint failed");
        }
        Ok(token)
    }

    /// A session: FASTER's API with serial numbers, operations that go pending instead of
    /// waiting for either tier's device (finish them with `complete_pending`), and exact
    /// commit points across both tiers (only the hot tier takes user writes; the cold tier
    /// changes only by compaction, which a checkpoint excludes).
    #[must_use]
    pub fn start_session(&self) -> Session<'_, K, V, D> {
        Session::new(self.engine(), Some(&self.shared.cold))
    }

    /// Continues session `id` of the recovered checkpoint (as [`RsKv::continue_session`]).
    ///
    /// # Errors
    /// As [`RsKv::continue_session`].
    pub fn continue_session(&self, id: SessionId) -> Result<(Session<'_, K, V, D>, CommitPoint)> {
        let point = self
            .engine()
            .cpr
            .recovered_point(id.0)
            .ok_or_else(|| Error::Config {
                field: "session id",
                reason: format!("session {} is not in the recovered checkpoint", id.0),
            })?;
        Ok((
            Session::continued(self.engine(), Some(&self.shared.cold), id)?,
            point,
        ))
    }

    /// Moves the hot log below `until` (a hot log address on the device) to the cold tier,
    /// then truncates the hot log there; what background migration does when the hot log
    /// passes its budget.
    ///
    /// # Errors
    /// As [`RsKv::compact`]: [`Error::Busy`] also while an iterator ([`R2Kv::iter`]) is open.
    pub fn compact_hot(&self, until: Address) -> Result<Compaction> {
        let _m = self.maintenance("compact_hot called from inside an operation of this store")?;
        let claim = self.shared.hot.claim_maintenance()?;
        self.shared.hot_to_cold_until(&claim, until, Pace::FULL)
    }

    /// Compacts the cold log below `until` (a cold log address): copies live records to its
    /// tail, drops the rest, truncates. With [`R2Config::cold_chain_window`] (the default),
    /// it copies whole chains, laid out so that a later cold read costs about one device read
    /// instead of one per record of its chain (about 1.9 when hot-to-cold moves have
    /// scattered them): after a bulk load, one pass up to `cold_markers().safe_head` is worth
    /// its cost for a read-mostly store (BENCHMARKS.md, session 14).
    ///
    /// # Errors
    /// [`Error::Busy`] while an iterator ([`R2Kv::iter`]) is open, or when called from inside
    /// an operation of this store; device and corruption errors.
    pub fn compact_cold(&self, until: Address) -> Result<Compaction> {
        let _m = self.maintenance("compact_cold called from inside an operation of this store")?;
        let claim = self.shared.hot.claim_maintenance()?;
        self.shared.cold_to_cold_until(&claim, until)
    }

    /// Iterates over the live key-value pairs of both tiers: first the hot tier's (streamed
    /// from its log as [`RsKv::iter`] does), then the cold tier's whose key has no record in
    /// the hot tier. Every key that is live when the iterator is created is yielded exactly
    /// once, with a value it held while the iteration ran (a hot value wins over a cold one, a
    /// hot tombstone hides the cold value); keys with no live value then are not yielded.
    /// Other operations and checkpoints run meanwhile; while the iterator lives no record
    /// moves between or within the tiers: hot-to-cold and cold-to-cold passes wait
    /// ([`R2Kv::compact_hot`] and [`R2Kv::compact_cold`] return [`Error::Busy`], background
    /// passes are skipped) until it is dropped, so an iterator kept open stops migration (and
    /// writers slow down once the hot log passes its budget plus one pass). Order: hot pairs by
    /// log address, then cold pairs by cold log address, not by key.
    ///
    /// Each hot pair costs a lookup of its key's hot chain; each cold record a hot lookup and
    /// a walk of its key's cold chain (those of one scan read in flight together).
    ///
    /// # Errors
    /// [`Error::Busy`] while a pass or another iteration runs, or when called from inside an
    /// operation of this store. Device, corruption and codec errors come as items (the
    /// iteration ends after one).
    pub fn iter(&self) -> Result<crate::Iter<'_, K, V, D>> {
        Ok(crate::Iter::new(iter::two_tiers(
            self.engine(),
            &self.shared.cold,
        )?))
    }

    /// The maintenance lock, for a caller that is not inside an operation of this store: a
    /// pass may wait for the record lock or the epoch such a caller holds, so waiting for the
    /// lock there could wait for itself (`Busy` with `why` instead).
    fn maintenance(&self, why: &'static str) -> Result<std::sync::MutexGuard<'_, ()>> {
        if self.shared.hot.epoch.is_protected_here() {
            return Err(Error::Busy(why));
        }
        Ok(self
            .shared
            .maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner()))
    }

    /// The hot log's markers (`safe_head`: where [`R2Kv::compact_hot`] may end).
    #[must_use]
    pub fn hot_markers(&self) -> crate::hlog::LogMarkers {
        self.engine().hlog.markers()
    }

    /// The cold log's markers.
    #[must_use]
    pub fn cold_markers(&self) -> crate::hlog::LogMarkers {
        self.shared.cold.hlog.markers()
    }

    /// Live statistics of both tiers.
    #[must_use]
    pub fn stats(&self) -> R2Stats {
        let s = &*self.shared;
        let c = &s.cold.counters;
        let cold_log = &s.cold.hlog;
        let reads = cold_log.record_reads();
        R2Stats {
            hot: self.hot.stats(),
            hot_hits: c.hot_hits.load(Ordering::Relaxed),
            cold_reads: c.reads.load(Ordering::Relaxed),
            cold_hits: c.found.load(Ordering::Relaxed),
            cold_rmws: c.rmws.load(Ordering::Relaxed),
            hot_entries_freed: s.hot_entries_freed.load(Ordering::Relaxed),
            hot_to_cold: s.hot_passes.totals(),
            cold_to_cold: s.cold_passes.totals(),
            cold_log_bytes: s.cold.log_bytes(),
            cold_disk_bytes: cold_log.disk().storage_bytes().unwrap_or(0),
            cold_log_memory: cold_log.memory_bytes() as u64,
            cold_device_reads: reads.submitted,
            cold_records_in_buffer: reads.in_buffer,
            cold_chains_laid_out: c.chains_laid_out.load(Ordering::Relaxed),
            cold_chain_records_laid_out: c.chain_records_laid_out.load(Ordering::Relaxed),
            cold_index: s.cold.index_stats(),
            maintenance_failures: s.maintenance_health.failures(),
            maintenance_error: s.maintenance_health.last_error(),
        }
    }

    // ---- operations ---------------------------------------------------------------------------

    /// The value of `key`, if any.
    ///
    /// # Errors
    /// Device, codec or corruption errors.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let engine = self.engine();
        if let Some(k) = Word::encode(key).filter(|_| Word::is_word_type::<V>()) {
            // A hot hit is the answer; anything else may need the cold tier.
            if let Fast::Done(Some(v)) = engine.read_word(k, k.hash()) {
                self.shared.cold.upper_answered();
                return decode_word(v.word, v.len).map(Some);
            }
        }
        let (key, hash) = encode_key(key)?;
        let mut buf = ValueBuf::default();
        let found = crate::ops::pending::block_on(self.read_tiers(&key, hash, &mut buf))?;
        if found.live() {
            decode(buf.bytes()).map(Some)
        } else {
            Ok(None)
        }
    }

    /// [`R2Kv::get`], awaiting the device instead of blocking.
    ///
    /// # Errors
    /// As [`R2Kv::get`].
    pub async fn get_async(&self, key: &K) -> Result<Option<V>> {
        let (key, hash) = encode_key(key)?;
        let mut buf = ValueBuf::default();
        if self.read_tiers(&key, hash, &mut buf).await?.live() {
            decode(buf.bytes()).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Whether `key` has a live value.
    ///
    /// # Errors
    /// As [`R2Kv::get`].
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        let (key, hash) = encode_key(key)?;
        let mut buf = ValueBuf::default();
        crate::ops::pending::block_on(self.read_tiers(&key, hash, &mut buf)).map(Found::live)
    }

    /// The values of `keys`, in order; the hot misses' cold reads are all in flight at once.
    ///
    /// # Errors
    /// The first error of a [`R2Kv::get`].
    pub fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        let enc: Vec<(Encoded, KeyHash)> = keys.iter().map(encode_key).collect::<Result<_>>()?;
        let reads = enc.iter().map(|(key, hash)| async move {
            let mut buf = ValueBuf::default();
            let found = self.read_tiers(key, *hash, &mut buf).await?;
            Ok::<_, Error>(found.live().then_some(buf))
        });
        crate::ops::pending::block_on(futures_util::future::join_all(reads))
            .into_iter()
            .map(|r| r.and_then(|b| b.map(|b| decode(b.bytes())).transpose()))
            .collect()
    }

    /// Hot, then cold.
    async fn read_tiers(&self, key: &Encoded, hash: KeyHash, out: &mut ValueBuf) -> Result<Found> {
        let engine = self.engine();
        let seen = tiered::entry_before_read(engine, hash);
        match engine.read_async(key, hash, out).await? {
            Found::Absent => {
                tiered::read_below(engine, &self.shared.cold, key, hash, seen, out).await
            }
            hot => {
                self.shared.cold.upper_answered();
                Ok(hot)
            }
        }
    }

    /// Sets `key` to `value` (in the hot tier).
    ///
    /// # Errors
    /// Codec, size and device errors.
    pub fn insert(&self, key: &K, value: &V) -> Result<()> {
        self.hot.insert(key, value)
    }

    /// Sets every pair (in the hot tier).
    ///
    /// # Errors
    /// As [`R2Kv::insert`].
    pub fn insert_many(&self, pairs: &[(K, V)]) -> Result<()> {
        self.hot.insert_many(pairs)
    }

    /// Deletes `key`: a tombstone in the hot tier, whether or not a tier holds the key.
    ///
    /// # Errors
    /// Codec and device errors.
    pub fn remove(&self, key: &K) -> Result<()> {
        let (key, hash) = encode_key(key)?;
        let engine = self.engine();
        let g = engine.protect()?;
        engine.delete(&g, &key, hash, true).map(|_| ())
    }

    /// Replaces the value of `key` with `f(old)` atomically (across both tiers) and returns
    /// the new value. `f` may run more than once: keep it pure.
    ///
    /// # Errors
    /// Device, codec or size errors.
    pub fn rmw(&self, key: &K, mut f: impl FnMut(Option<V>) -> V) -> Result<V> {
        if let Some(k) = Word::encode(key).filter(|_| Word::is_word_type::<V>()) {
            // A hot record in the mutable region is the key's newest.
            if let Some(lock) = self.engine().lock_word(k, k.hash()) {
                let old = lock.old();
                if let Ok(old) = decode_word(old.word, old.len) {
                    let v = f(Some(old));
                    if let Some(w) = Word::encode(&v) {
                        lock.write(w);
                        return Ok(v);
                    }
                }
            }
        }
        let (key, hash) = encode_key(key)?;
        crate::ops::pending::block_on(self.rmw_tiers(&key, hash, &mut f))
    }

    /// [`R2Kv::rmw`], awaiting the device instead of blocking.
    ///
    /// # Errors
    /// As [`R2Kv::rmw`].
    pub async fn rmw_async(&self, key: &K, mut f: impl FnMut(Option<V>) -> V + Send) -> Result<V> {
        let (key, hash) = encode_key(key)?;
        self.rmw_tiers(&key, hash, &mut f).await
    }

    /// [`R2Kv::rmw`] of several keys with one function; returns the new values, by position.
    /// Each key runs the tiered RMW of the module docs, all at once on the calling thread: the
    /// cold reads (and hot device reads) of the keys that need them are in flight together.
    ///
    /// `f` gets the key (a reference into `keys`) and its current value. It may run more than
    /// once for a key (retries) and not in key order. A key that appears twice is updated
    /// twice, each update seeing the other's result or being seen by it, as for two threads.
    ///
    /// # Errors
    /// The first error of an [`R2Kv::rmw`], by position. Every other key's update has run to
    /// its end (written, or failed) when it is returned.
    pub fn rmw_many(&self, keys: &[K], f: impl FnMut(&K, Option<V>) -> V) -> Result<Vec<V>> {
        let enc: Vec<(Encoded, KeyHash)> = keys.iter().map(encode_key).collect::<Result<_>>()?;
        // The updates share `f`; none of them holds it across an await (it runs inside an
        // attempt's decision).
        let f = std::cell::RefCell::new(f);
        let updates = enc.iter().zip(keys).map(|((key, hash), k)| {
            let f = &f;
            async move {
                let mut g = |old: Option<V>| (f.borrow_mut())(k, old);
                self.rmw_tiers(key, *hash, &mut g).await
            }
        });
        crate::ops::pending::block_on(futures_util::future::join_all(updates))
            .into_iter()
            .collect()
    }

    /// Writes `key = value` only if `key` has no live value in either tier: no record of it in
    /// the hot tier and none (or a tombstone) in the cold tier, or a hot tombstone (which hides
    /// whatever the cold tier holds). Returns whether it wrote. Atomic against every other
    /// update of the key and against migration: it is the tiered RMW of the module docs with
    /// the decision "write if absent" (when the hot tier has no record, the cold tier is read
    /// and the write lands only if the hot tier still has none and its `begin` did not move).
    ///
    /// Not [`RsKv::conditional_insert`]'s signature: that one takes a `floor`, a hot log
    /// address, and writes if no record of the key lies at or above it. R2Kv has no such
    /// floor: cold records carry no hot address, and a hot-to-cold pass may move records from
    /// above a floor into the cold tier while the call runs. Its meaning is that of RsKv's with
    /// a floor of 0 ("the key is absent"), except for tombstones: here a deleted key counts as
    /// absent (RsKv's counts the tombstone as a record), because R2Kv's compactions drop
    /// tombstones at times the caller does not choose, so "a record exists" would change under
    /// it while "a live value exists" does not.
    ///
    /// # Errors
    /// Device, codec or size errors.
    pub fn conditional_insert(&self, key: &K, value: &V) -> Result<bool> {
        let (key, hash) = encode_key(key)?;
        let value = Encoded::new(value)?;
        let status = crate::ops::pending::block_on(self.update_tiers(&key, hash, &mut |latest| {
            Ok(match latest {
                Latest::Absent | Latest::Deleted => Decision::Write(value.clone()),
                Latest::Value(_) => Decision::Abort,
            })
        }))?;
        Ok(status == Status::Ok)
    }

    /// The RMW protocol of the module docs, around the decision `base` (which sees the cold
    /// value as the old one when the hot tier has none).
    async fn update_tiers(
        &self,
        key: &Encoded,
        hash: KeyHash,
        base: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
    ) -> Result<Status> {
        let mut t = Tiered::default();
        tiered::update_tiered(
            self.engine(),
            &self.shared.cold,
            key,
            hash,
            &mut t,
            None,
            base,
            &mut |_| {},
        )
        .await
    }

    /// A facade RMW: `f` on the decoded old value; the value written is returned.
    async fn rmw_tiers(
        &self,
        key: &Encoded,
        hash: KeyHash,
        f: &mut impl FnMut(Option<V>) -> V,
    ) -> Result<V> {
        let mut last = None;
        let _written = self
            .update_tiers(key, hash, &mut |latest| {
                let new = f(decode_latest(latest)?);
                let enc = Encoded::new(&new)?;
                last = Some(new);
                Ok(Decision::Write(enc))
            })
            .await?;
        last.ok_or(Error::Internal("an RMW finished without computing a value"))
    }

    // ---- FASTER's context API ------------------------------------------------------------------

    /// The key and hash of a context; R2Kv files keys under RsKv's own hash only (its
    /// compactions rehash logged keys).
    fn context_key(key: &K, given: u64) -> Result<(Encoded, KeyHash)> {
        let key = Encoded::new(key)?;
        if given != hash_encoded(&key) {
            return Err(Error::Config {
                field: "key_hash",
                reason: "R2Kv contexts must use RsKv's key hash (the default key_hash): \
                         compaction between the tiers rehashes logged keys"
                    .into(),
            });
        }
        Ok((key, KeyHash::new(given)))
    }

    /// Upserts through a context (to the hot tier).
    ///
    /// # Errors
    /// Codec, size and device errors; [`Error::Config`] for a context with its own key hash.
    pub fn upsert<C: UpsertContext<Key = K, Value = V>>(&self, ctx: &C) -> Result<Status> {
        Self::context_key(ctx.key(), ctx.key_hash())?;
        crate::contexts::upsert_ctx(self.engine(), ctx, &mut |_| {}).map(|()| Status::Ok)
    }

    /// Reads through a context: `ctx.get` receives the value.
    ///
    /// # Errors
    /// As [`R2Kv::get`]; [`Error::Config`] for a context with its own key hash.
    pub fn read<C: ReadContext<Key = K, Value = V>>(&self, ctx: &mut C) -> Result<Status> {
        let (key, hash) = Self::context_key(ctx.key(), ctx.key_hash())?;
        let mut buf = ValueBuf::default();
        if crate::ops::pending::block_on(self.read_tiers(&key, hash, &mut buf))?.live() {
            ctx.get(&decode(buf.bytes())?);
            Ok(Status::Ok)
        } else {
            Ok(Status::NotFound)
        }
    }

    /// Read-modify-write through a context, across both tiers.
    ///
    /// # Errors
    /// As [`R2Kv::rmw`]; [`Error::Config`] for a context with its own key hash.
    pub fn rmw_context<C: RmwContext<Key = K, Value = V>>(&self, ctx: &C) -> Result<Status> {
        let (key, hash) = Self::context_key(ctx.key(), ctx.key_hash())?;
        crate::ops::pending::block_on(self.update_tiers(&key, hash, &mut rmw_decider(ctx)))
    }

    /// Deletes through a context: a tombstone in the hot tier.
    ///
    /// # Errors
    /// Codec and device errors; [`Error::Config`] for a context with its own key hash.
    pub fn delete<C: DeleteContext<Key = K, Value = V>>(&self, ctx: &C) -> Result<Status> {
        Self::context_key(ctx.key(), ctx.key_hash())?;
        crate::contexts::delete_ctx(self.engine(), ctx, true, &mut |_| {})
    }
}

impl<K, V, D: SubDevice> std::fmt::Debug for R2Kv<K, V, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("R2Kv")
            .field("hot_log", &self.shared.hot.hlog.markers())
            .field("cold_log", &self.shared.cold.hlog.markers())
            .finish_non_exhaustive()
    }
}

impl<K, V, D: SubDevice> Drop for R2Kv<K, V, D> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.maintainer.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
