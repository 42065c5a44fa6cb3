//! Recovery: rebuilds an engine from a log checkpoint, an optional index checkpoint and the log
//! on the device (see [`crate::ops::cpr`] for the guarantees and [`crate::core::checkpoint`] for the files).
//!
//! Phase 1 reads only, so a checkpoint that fails anywhere in it is skipped and the next older
//! one is tried:
//! 1. Read and verify `log.meta` (and the snapshot file's length and page-sum list).
//! 2. Load the newest index checkpoint that predates the log checkpoint's version change
//!    (`end <= newer_from`), checking its hash while reading it; a bad one gives way to the next;
//!    with none, the index starts empty.
//! 3. Read every page below the checkpoint's end once (the snapshot file for the pages it holds),
//!    check it against its sum, and replay from the index checkpoint's start (or the log's
//!    beginning): every valid record of a version up to the checkpointed one moves its index
//!    entry forward; records of the next version (only at or above `newer_from`) are noted.
//!
//! Phase 2 writes: the snapshot's pages go back to their log addresses, the noted records get
//! their invalid bit on disk (so a later checkpoint of this log never counts them), the device
//! is synced, and the newest pages are read back into memory (warm start).
//!
//! Replay keeps one batch of pages in memory; the data is never loaded whole.
#![forbid(unsafe_code)]

use std::io::Read;
use std::sync::Arc;

use crate::core::address::{Address, PageGeometry};
use crate::core::checkpoint::{
    CheckpointDir, IndexMeta, LogMeta, LogMode, Token, TypeNames, INDEX_DATA, SNAPSHOT_DATA,
};
use crate::core::light_epoch::LightEpoch;
use crate::core::record::{DiskRecord, Version, HEADER_BYTES};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::hlog::persistent_memory_malloc::read_device;
use crate::hlog::HybridLog;
use crate::index::{KeyHash, MemIndex};
use crate::ops::cpr::{Phase, SystemState};
use crate::ops::Engine;

/// Bytes of log read per replay batch (at least one page).
const REPLAY_BATCH: usize = 8 << 20;

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The checkpoint recovered.
    pub token: Token,
    /// The index checkpoint used, if any (else the log was replayed from its beginning).
    pub index_token: Option<Token>,
    /// The checkpointed version.
    pub version: u64,
    /// Bytes of log replayed.
    pub replayed_bytes: u64,
    /// Records that moved an index entry during replay.
    pub replayed_records: u64,
    /// Newer completed checkpoints that failed verification and were skipped, with the reason
    /// (only with `Config::recovery_fallback`; without it recovery fails instead).
    pub skipped: Vec<(Token, String)>,
    /// Checkpoints newer than the one recovered, moved to `checkpoints/set-aside/` (the
    /// recovered store's log will overwrite what they describe): skipped ones, index-only ones,
    /// and any newer ones when an older token was recovered on purpose. Never deleted.
    pub set_aside: Vec<(Token, std::path::PathBuf)>,
}

/// How the engine is to be laid out in memory.
pub(crate) struct Layout<'h> {
    /// The store's key hash from a key's encoded bytes (what its operations pass to the index
    /// before finalizing).
    pub(crate) hash: &'h dyn Fn(&[u8]) -> Result<u64>,
    pub(crate) index_bits: u32,
    pub(crate) log_memory: u64,
    /// `Config::memory_budget`: when set, it decides the log memory (split again for the
    /// recovered index's size and the checkpoint's page size).
    pub(crate) budget: Option<u64>,
    pub(crate) mutable_fraction: f64,
    /// Bytes of read cache that share a pool with the log memory (`Config::memory_split`
    /// moves): the log gets frames for both and keeps its own share live. 0 otherwise.
    pub(crate) pool_extra: u64,
    /// `Config::recovery_fallback`.
    pub(crate) fallback: bool,
    /// The recovering store's key and value types.
    pub(crate) types: &'h TypeNames,
    /// Whether `hash` is a function the store was given (`recover_with_hash`), not RsKv's.
    pub(crate) custom_hash: bool,
}

fn checkpoint_error(path: std::path::PathBuf, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path,
        reason: reason.into(),
    }
}

/// A verified plan: which files to use.
struct Plan {
    token: Token,
    log: LogMeta,
    /// Usable index checkpoints, newest first.
    indexes: Vec<(Token, IndexMeta)>,
}

fn plan(dir: &CheckpointDir, token: Token, layout: &Layout<'_>) -> Result<Plan> {
    let log = dir.read_log_meta(token)?;
    let meta_path = || dir.dir(token).join(crate::core::checkpoint::LOG_META);
    crate::index::key_hash::check_identity(
        &log.hash,
        layout.hash,
        layout.custom_hash,
        &meta_path(),
    )?;
    let types = layout.types;
    for (what, stored, expected) in [
        ("key", &log.types.key, &types.key),
        ("value", &log.types.value, &types.value),
    ] {
        if stored != expected {
            return Err(Error::TypeMismatch {
                path: dir.dir(token).join(crate::core::checkpoint::LOG_META),
                what,
                stored: stored.clone(),
                expected: expected.clone(),
            });
        }
    }
    let page = 1u64 << log.page_bits;
    if !(12..=28).contains(&log.page_bits)
        || log.end % page != 0
        || log.end < page
        || log.begin > log.end
        || log.snapshot_start > log.end
        || log.snapshot_start % page != 0
    {
        return Err(checkpoint_error(
            dir.dir(token).join(crate::core::checkpoint::LOG_META),
            "inconsistent addresses",
        ));
    }
    if log.mode == LogMode::Snapshot {
        // Its pages are verified one by one against their sums during the scan.
        let path = dir.dir(token).join(SNAPSHOT_DATA);
        let want = log.end - log.snapshot_start;
        let pages = (want >> log.page_bits) as usize;
        let sums_from = (log.snapshot_start >> log.page_bits) - (log.begin >> log.page_bits);
        let sums = log.page_sums.get(sums_from as usize..).unwrap_or(&[]);
        if sums.len() != pages || crate::ops::cpr::driver::sums_hash(sums) != log.snapshot_hash {
            return Err(checkpoint_error(
                dir.dir(token).join(crate::core::checkpoint::LOG_META),
                "snapshot page sums do not match the snapshot",
            ));
        }
        let len = std::fs::metadata(&path)
            .map_err(|e| checkpoint_error(path.clone(), format!("cannot open: {e}")))?
            .len();
        if len != want {
            return Err(checkpoint_error(
                path,
                format!("{len} bytes, expected {want} (truncated or extended)"),
            ));
        }
    }
    // Index checkpoints that predate the version change, newest first; their data is verified
    // while it is loaded (one read), and a bad one gives way to the next.
    let indexes = dir
        .tokens()?
        .into_iter()
        .rev()
        .filter(|t| *t <= token)
        .filter_map(|t| dir.read_index_meta(t).ok().map(|m| (t, m)))
        .filter(|(_, m)| {
            m.end <= log.newer_from
                && m.version <= log.version
                && m.table_bits <= 40
                && m.data_len == (64u64 << m.table_bits) + 16 * m.overflow_entries
        })
        .collect();
    Ok(Plan {
        token,
        log,
        indexes,
    })
}

impl<D: Disk> Engine<D> {
    /// Recovers an engine over `disk` from checkpoint `token`, or from the newest completed
    /// log checkpoint. A completed checkpoint that fails verification is an error unless
    /// `layout.fallback` allows falling back to an older one. Nothing is ever deleted: once a
    /// checkpoint is recovered, the newer ones (which describe a log about to be overwritten)
    /// are moved aside, except directories of checkpoints that never completed (no metadata).
    pub(crate) fn recover(
        disk: D,
        layout: &Layout,
        token: Option<Token>,
    ) -> Result<(Engine<D>, RecoveryInfo)> {
        let root = disk
            .checkpoint_root()
            .filter(|_| disk.is_persistent())
            .ok_or_else(|| Error::Config {
                field: "device",
                reason: "the device keeps nothing, so there is nothing to recover".into(),
            })?;
        let _span = tracing::info_span!("recover", root = %root.display()).entered();
        let dir = CheckpointDir::new(root.clone());
        let tokens = dir.tokens()?;
        let candidates: Vec<Token> = match token {
            Some(t) => vec![t],
            // Only completed log checkpoints: an index-only checkpoint or one that never
            // finished cannot be recovered, and was never acknowledged as making data durable.
            None => tokens
                .iter()
                .rev()
                .copied()
                .filter(|t| dir.has_log_meta(*t))
                .collect(),
        };
        let mut skipped = Vec::new();
        for t in candidates {
            // Phase 1 reads only, so a failure here leaves the device as it was.
            let attempt = plan(&dir, t, layout).and_then(|p| {
                let rebuilt = Rebuild::run(&disk, layout, &dir, &p)?;
                Ok((p, rebuilt))
            });
            match attempt {
                Ok((p, rebuilt)) => {
                    let set_aside = set_aside_newer(&dir, &tokens, t)?;
                    for (t, path) in &set_aside {
                        tracing::warn!(token = %t, path = %path.display(), "newer checkpoint set aside");
                    }
                    return Self::finish_recovery(disk, layout, &dir, p, rebuilt, skipped)
                        .map(|(engine, info)| (engine, RecoveryInfo { set_aside, ..info }));
                }
                Err(e) if token.is_some() => return Err(e),
                Err(e @ (Error::Checkpoint { .. } | Error::Corrupt { .. })) => {
                    if !layout.fallback {
                        return Err(checkpoint_error(
                            dir.dir(t),
                            format!(
                                "this completed checkpoint cannot be recovered ({e}); recovery \
                                 does not fall back to an older checkpoint on its own, as that \
                                 would lose what this one made durable: recover an older token \
                                 explicitly or set Config::recovery_fallback (nothing was \
                                 changed on disk)"
                            ),
                        ));
                    }
                    tracing::warn!(token = %t, error = %e, "checkpoint skipped (recovery_fallback)");
                    skipped.push((t, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        let why = skipped
            .iter()
            .map(|(t, e)| format!("{t}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(checkpoint_error(
            root,
            if why.is_empty() {
                "no checkpoint to recover from".to_string()
            } else {
                format!("no usable checkpoint ({why})")
            },
        ))
    }

    /// Phase 2: builds the engine around the rebuilt index and makes the device match the
    /// checkpoint.
    fn finish_recovery(
        disk: D,
        layout: &Layout,
        dir: &CheckpointDir,
        plan: Plan,
        rebuilt: Rebuild,
        skipped: Vec<(Token, String)>,
    ) -> Result<(Engine<D>, RecoveryInfo)> {
        let log = &plan.log;
        let (frames, budget) = match layout.budget {
            Some(total) => {
                let (budget, _) = crate::config::MemoryBudget::split(
                    total,
                    rebuilt.index.bits(),
                    Some(log.page_bits),
                )?;
                (budget.log >> log.page_bits, Some(budget))
            }
            None => (
                (layout.log_memory >> log.page_bits)
                    .max(crate::hlog::persistent_memory_malloc::MIN_FRAMES),
                None,
            ),
        };
        let pool_frames = (frames + (layout.pool_extra >> log.page_bits)).min(1 << 20);
        let hlog = HybridLog::recovered(
            disk,
            rebuilt.epoch.clone(),
            log.page_bits,
            pool_frames,
            layout.mutable_fraction,
            Address::new(log.begin),
            Address::new(log.end),
        )?;
        let geo = hlog.geometry();
        for (page, sum) in &rebuilt.sums {
            hlog.set_page_sum(*page, *sum);
        }
        let mut hlog = hlog;
        if log.mode == LogMode::Snapshot {
            restore_snapshot(&hlog, &dir.dir(plan.token).join(SNAPSHOT_DATA), log)?;
        }
        invalidate(&hlog, geo, &rebuilt.newer)?;
        hlog.disk()
            .flush()
            .map_err(|e| Error::io("syncing the log after recovery", e))?;
        // Warm start: the newest pages come back into memory (read-only), as they were: as
        // many as the log's share holds.
        hlog.set_live_pages(frames);
        hlog.load_tail()?;
        let mut engine = Engine::with_index(rebuilt.epoch, rebuilt.index, hlog);
        engine.set_budget(budget);
        engine.set_system_state(SystemState {
            phase: Phase::Rest,
            version: log.version + 1,
        });
        engine.cpr.set_recovered(&log.sessions, log.next_session_id);
        tracing::info!(
            token = %plan.token,
            version = log.version,
            replayed_bytes = log.end.saturating_sub(rebuilt.replay_from),
            replayed_records = rebuilt.moved,
            "recovered"
        );
        let info = RecoveryInfo {
            token: plan.token,
            index_token: rebuilt.index_token,
            version: log.version,
            replayed_bytes: log.end.saturating_sub(rebuilt.replay_from),
            replayed_records: rebuilt.moved,
            skipped,
            set_aside: Vec::new(),
        };
        Ok((engine, info))
    }
}

/// Phase 1 of recovery: the index rebuilt in memory from the device, read only.
struct Rebuild {
    epoch: Arc<LightEpoch>,
    index: MemIndex,
    /// The index checkpoint loaded, if any.
    index_token: Option<Token>,
    replay_from: u64,
    /// Records that moved an index entry.
    moved: u64,
    /// Addresses of records of the version after the checkpoint's, in address order.
    newer: Vec<u64>,
    /// The verified hash of every page below the checkpoint's end.
    sums: Vec<(u64, u64)>,
}

impl Rebuild {
    fn run<D: Disk>(
        disk: &D,
        layout: &Layout<'_>,
        dir: &CheckpointDir,
        plan: &Plan,
    ) -> Result<Self> {
        let log = &plan.log;
        let epoch = Arc::new(LightEpoch::new());
        // The log's chains were built in tables of up to `log.table_bits` (see its docs).
        let mut r = Rebuild {
            index: MemIndex::new(layout.index_bits.max(log.table_bits), epoch.clone()),
            epoch,
            index_token: None,
            replay_from: log.begin.max(Address::FIRST_VALID.raw()),
            moved: 0,
            newer: Vec::new(),
            sums: Vec::new(),
        };
        for (t, meta) in &plan.indexes {
            let mut index = MemIndex::new(meta.table_bits, r.epoch.clone());
            if load_index(&mut index, &dir.dir(*t).join(INDEX_DATA), meta).is_ok() {
                r.index = index;
                r.index_token = Some(*t);
                r.replay_from = meta.start.max(log.begin);
                break;
            }
        }
        // An index checkpoint taken before the index last grew is smaller than the log's
        // chains need: grow it first (this index has no sorter, so entries are copied to both
        // halves, which is always correct).
        while r.index.bits() < log.table_bits {
            r.index.grow().map_err(|_| Error::IndexFull)?;
        }
        let geo = PageGeometry::new(
            log.page_bits,
            crate::hlog::persistent_memory_malloc::MIN_FRAMES,
        );
        r.scan(
            disk,
            geo,
            log,
            &dir.dir(plan.token).join(SNAPSHOT_DATA),
            layout.hash,
        )?;
        Ok(r)
    }

    /// Reads every page of the checkpoint (from the snapshot file where it holds them),
    /// verifies each against the checkpoint's page sums, seeds the log's sums, and replays
    /// `[from, log.end)` into the index. Writes nothing.
    fn scan<D: Disk>(
        &mut self,
        disk: &D,
        geo: PageGeometry,
        log: &LogMeta,
        snapshot: &std::path::Path,
        hash: &dyn Fn(&[u8]) -> Result<u64>,
    ) -> Result<()> {
        let from = Address::new(self.replay_from);
        let page_size = 1usize << geo.page_bits;
        let pages_per_batch = (REPLAY_BATCH / page_size).max(1) as u64;
        let first_page = geo.page(Address::new(log.begin));
        let end_page = geo.page(Address::new(log.end));
        let snap_page = if log.mode == LogMode::Snapshot {
            geo.page(Address::new(log.snapshot_start))
        } else {
            end_page
        };
        let mut snap_file = if snap_page < end_page {
            Some(std::fs::File::open(snapshot).map_err(|e| {
                checkpoint_error(snapshot.to_path_buf(), format!("cannot open: {e}"))
            })?)
        } else {
            None
        };
        let newer = Version::of(log.version + 1);
        let mut page = first_page;
        while page < end_page {
            let limit = if page < snap_page {
                snap_page
            } else {
                end_page
            };
            let count = pages_per_batch.min(limit - page);
            let mut buf = crate::core::alloc::AlignedBuf::zeroed(count as usize * page_size, 4096);
            if page < snap_page {
                buf = read_device(disk, geo.page_start(page).raw(), count as usize * page_size)?;
            } else if let Some(f) = snap_file.as_mut() {
                f.read_exact(buf.as_mut_slice()).map_err(|e| {
                    checkpoint_error(snapshot.to_path_buf(), format!("cannot read: {e}"))
                })?;
            }
            for k in 0..count {
                let p = page + k;
                let bytes = &buf.as_slice()[k as usize * page_size..(k as usize + 1) * page_size];
                let sum = crate::hlog::persistent_memory_malloc::page_hash(p, bytes);
                let want = log
                    .page_sums
                    .get((p - first_page) as usize)
                    .copied()
                    .unwrap_or(0);
                if want != 0 && want != sum {
                    return Err(Error::Corrupt {
                        address: geo.page_start(p).raw(),
                        reason: "log page does not match its checksum in the checkpoint \
                                 (damaged or overwritten log segment)"
                            .into(),
                    });
                }
                self.sums.push((p, sum));
                if p >= geo.page(from) {
                    let off = if p == geo.page(from) {
                        geo.offset(from) as usize
                    } else {
                        0
                    };
                    self.replay_page(geo, p, off, bytes, log, newer, hash)?;
                }
            }
            page += count;
        }
        Ok(())
    }

    /// Replays one page into the index; collects the records of the next version.
    #[allow(clippy::too_many_arguments)] // one page's whole context
    fn replay_page(
        &mut self,
        geo: PageGeometry,
        page: u64,
        mut off: usize,
        bytes: &[u8],
        log: &LogMeta,
        newer: Version,
        hash: &dyn Fn(&[u8]) -> Result<u64>,
    ) -> Result<()> {
        let base = geo.page_start(page).raw();
        let corrupt = |off: usize, reason: String| Error::Corrupt {
            address: base + off as u64,
            reason,
        };
        if off == 0 && u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) == 0 {
            // Every page below the end starts with a record: a zero start means missing data.
            return Err(corrupt(
                0,
                "log page below the checkpoint's end is empty (truncated or missing segment)"
                    .into(),
            ));
        }
        while off + HEADER_BYTES <= bytes.len() {
            let rec = match DiskRecord::parse(&bytes[off..]) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(reason) => return Err(corrupt(off, reason.into())),
            };
            let size = rec.size();
            let info = rec.info();
            let address = base + off as u64;
            if info.prev().raw() >= address {
                return Err(corrupt(off, "chain does not go backwards".into()));
            }
            if !info.invalid() {
                if address >= log.newer_from && info.version() == newer {
                    self.newer.push(address);
                } else {
                    let hash = KeyHash::new(hash(rec.key())?);
                    let mut entry = self
                        .index
                        .find_or_create_entry_exclusive(hash)
                        .map_err(|_| Error::IndexFull)?;
                    // A fresh index: no entry names a read-cache copy.
                    if entry.entry.address().raw() < address {
                        let _ = entry.try_update(Address::new(address));
                        self.moved += 1;
                    }
                }
            }
            off += size;
        }
        Ok(())
    }
}

/// Moves every checkpoint newer than `recovered` out of the way (the recovered store will
/// overwrite the log they describe, and a later checkpoint must never pair with their index
/// dumps). Directories with no metadata at all are what a checkpoint that never completed left
/// behind: they held nothing acknowledged and are removed.
pub(crate) fn set_aside_newer(
    dir: &CheckpointDir,
    tokens: &[Token],
    recovered: Token,
) -> Result<Vec<(Token, std::path::PathBuf)>> {
    let mut moved = Vec::new();
    for newer in tokens.iter().copied().filter(|n| *n > recovered) {
        if dir.has_any_meta(newer) {
            moved.push((newer, dir.set_aside(newer)?));
        } else {
            dir.remove(newer)?;
        }
    }
    Ok(moved)
}

/// Marks the records at `addresses` (of the version after the checkpoint's) invalid on the
/// device, so that no later checkpoint of this log counts them.
fn invalidate<D: Disk>(hlog: &HybridLog<D>, geo: PageGeometry, addresses: &[u64]) -> Result<()> {
    let page_size = 1usize << geo.page_bits;
    let mut i = 0;
    while i < addresses.len() {
        let page = geo.page(Address::new(addresses[i]));
        let start = geo.page_start(page).raw();
        let mut buf = hlog.read_sync(start, page_size)?;
        while i < addresses.len() && geo.page(Address::new(addresses[i])) == page {
            let off = (addresses[i] - start) as usize;
            // The record was verified by the scan; its checksum covers the bit, so it is
            // re-stamped in the same write.
            crate::core::record::invalidate_in(buf.as_mut_slice(), off).map_err(|reason| {
                Error::Corrupt {
                    address: addresses[i],
                    reason: reason.into(),
                }
            })?;
            i += 1;
        }
        hlog.write_sync(start, &buf)?;
        hlog.set_page_sum(
            page,
            crate::hlog::persistent_memory_malloc::page_hash(page, buf.as_slice()),
        );
    }
    Ok(())
}

/// Loads an index checkpoint into a fresh `index`, checking its length and hash on the way.
fn load_index(index: &mut MemIndex, path: &std::path::Path, meta: &IndexMeta) -> Result<()> {
    let err = |e: std::io::Error| checkpoint_error(path.to_path_buf(), format!("cannot read: {e}"));
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(err)?);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let buckets = 1usize << meta.table_bits;
    let chunk = 16 * 1024;
    let mut buf = vec![0u8; chunk * 64];
    let mut first = 0;
    while first < buckets {
        let n = chunk.min(buckets - first);
        f.read_exact(&mut buf[..n * 64]).map_err(err)?;
        hasher.update(&buf[..n * 64]);
        index
            .restore_buckets(first, &buf[..n * 64])
            .map_err(|reason| checkpoint_error(path.to_path_buf(), reason))?;
        first += n;
    }
    let mut pairs = vec![0u8; meta.overflow_entries as usize * 16];
    f.read_exact(&mut pairs).map_err(err)?;
    hasher.update(&pairs);
    if f.read(&mut [0u8; 1]).map_err(err)? != 0 {
        return Err(checkpoint_error(
            path.to_path_buf(),
            "longer than its metadata says",
        ));
    }
    if hasher.digest() != meta.data_hash {
        return Err(checkpoint_error(path.to_path_buf(), "checksum mismatch"));
    }
    for pair in pairs.chunks_exact(16) {
        let bucket = u64::from_le_bytes(pair[..8].try_into().unwrap_or_default());
        let entry = u64::from_le_bytes(pair[8..].try_into().unwrap_or_default());
        if bucket >= buckets as u64 {
            return Err(checkpoint_error(
                path.to_path_buf(),
                "overflow entry out of range",
            ));
        }
        MemIndex::check_dumped_entry(entry)
            .map_err(|reason| checkpoint_error(path.to_path_buf(), reason))?;
        index
            .restore_overflow(bucket as usize, entry)
            .map_err(|_| Error::IndexFull)?;
    }
    Ok(())
}

fn restore_snapshot<D: Disk>(
    hlog: &HybridLog<D>,
    path: &std::path::Path,
    log: &LogMeta,
) -> Result<()> {
    let page_size = 1usize << log.page_bits;
    let err = |e: std::io::Error| checkpoint_error(path.to_path_buf(), format!("cannot read: {e}"));
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut at = log.snapshot_start;
    let mut buf = crate::core::alloc::AlignedBuf::zeroed(page_size, 4096);
    while at < log.end {
        f.read_exact(buf.as_mut_slice()).map_err(err)?;
        hlog.write_sync(at, &buf)?;
        at += page_size as u64;
    }
    Ok(())
}
