//! R2Kv's cold tier: a log almost entirely on disk, indexed by the cold index
//! ([`crate::index::cold_index`]), whose memory is bounded by configuration rather than by the
//! number of keys.
//!
//! Only compaction writes here: hot-to-cold moves a hot record that is still its key's newest
//! (tombstones included), cold-to-cold copies a cold record that is still its key's newest to
//! the cold tail. Users only read (and an RMW of a cold-only key reads here, then writes the hot
//! tier). So a record is never updated in place: the cold log is append-only, and a record's
//! bytes are complete before any chain leads to it.
//!
//! # Invariants
//! 1. **Chains.** The cold index maps a key hash to the newest record of its chain; each
//!    record's `prev` points below it. An append writes its record (prev = the entry it saw)
//!    under the cold epoch's protection, then compare-and-swaps the entry from what it saw to
//!    the record. A lost CAS leaves an *orphan*: a record no chain leads to. It is marked
//!    invalid if it is still in the mutable region (below it its page may be being flushed,
//!    with the record's checksum stamped: a later change would make the device copy fail
//!    verification, and every scan of that page with it), and is harmless if not: reads only
//!    follow chains, and cold-to-cold compaction moves a record only if the walk from its
//!    entry reaches it (invariant 3).
//! 2. **Order.** For a key, every cold record is older than every hot record at or above the
//!    hot `begin`: hot-to-cold moves only records below the hot truncation point, each only if
//!    it is its key's newest in the hot tier at the time, and appends it at the cold tail
//!    (above every older cold record of the key). One hot-to-cold pass runs at a time, so two
//!    versions of a key never race into the cold tier.
//! 3. **Cold-to-cold.** A record at `x` in `[begin, until)` moves iff the walk from its
//!    entry meets no record of its key above `x` and meets `x` itself; the copy is appended
//!    with the entry seen by that walk as `prev` and swung in by CAS (a lost CAS walks again).
//!    A tombstone is dropped: every older record of its key lies below it, so below `until`,
//!    and goes with the truncation.
//! 4. **Truncation.** A read loads `begin` before the index entry and treats addresses below
//!    it as the end of the chain; a fetch that fails or reads garbage below the current
//!    `begin` starts the read over (the copy was swung in before `begin` moved). Device space
//!    below `begin` is released only below the `begin` every retained checkpoint recorded.
//! 5. **Checkpoints.** The R2Kv checkpoint holds the maintenance lock, so no compaction writes
//!    here while it flushes this log to its tail and checkpoints the cold index: the two are
//!    consistent without any version machinery, and the hot tier's checkpoint records both
//!    (its `cold.meta`).
//! 6. **Chains laid out together.** Entries carry no tag, so about two keys share a chain and
//!    a read of one walks through the others' records: scattered, each is a device read of
//!    its own. Cold-to-cold compaction therefore moves a chain, not a record: the walk that
//!    decides whether the record at `x` moves (invariant 3) reads the whole chain (up to
//!    [`MAX_LAID_OUT`] records), takes each key's newest record, drops the keys whose newest
//!    is a tombstone, and writes the rest in one allocation, oldest first, each chained to
//!    the one just below it and the oldest to nothing; then it swings the entry from the head
//!    the walk started at to the last (newest) of them. A read from the new head fetches the
//!    `chain_window` bytes below it too (`HybridLog::set_read_lookback`), so the whole chain
//!    comes in one device read. Why the chain may be cut below the copies: every record it
//!    leaves behind is a superseded version, a key's deleted history (its newest record is a
//!    tombstone, and nothing below the cold tier can bring an older version back), or the
//!    records the copies replace; the swap succeeds only if the entry still holds the head
//!    the walk read, so no record appended meanwhile (a hot-to-cold move) is cut off: a lost
//!    swap orphans the copies (invariant 1) and walks again. A record the walk finds
//!    superseded by copies a concurrent move laid out is not moved again (invariant 3).
//!    Chains longer than [`MAX_LAID_OUT`] records, or larger than a quarter page, move one
//!    record at a time as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::address::Address;
use crate::core::checkpoint::Token;
use crate::core::codec::Encoded;
use crate::core::light_epoch::LightEpoch;
use crate::core::record::{record_size, RecordInfo, RecordRef, ValueBuf, ValueRead, Version};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::hlog::ChainStep;
use crate::hlog::{AllocError, HybridLog};
use crate::index::cold_index::{ColdIndex, ColdIndexConfig, ColdIndexStats};
use crate::index::key_hash::KeyHasher;
use crate::index::KeyHash;
use crate::ops::compact::{scan_and_move, Compaction, Mover};
use crate::ops::engine::{backwards, trace};
use crate::ops::pending::fetch_chain;
use crate::ops::read::{disk_match, follow_other_keys, DiskMatch, Found};
use crate::ops::truncate::Truncation;

/// How the cold log is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ColdLogShape {
    pub(crate) page_bits: u32,
    pub(crate) frames: u64,
    /// [`R2Config::cold_chain_window`](crate::r2::R2Config::cold_chain_window): bytes a cold
    /// read also fetches below its record (invariant 6). 0: none, and cold-to-cold moves
    /// records one at a time instead of laying chains out.
    pub(crate) chain_window: u64,
}

/// What a checkpoint records of the cold tier (`cold.meta` in the hot tier's checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ColdMeta {
    pub(crate) page_bits: u32,
    pub(crate) begin: u64,
    /// Everything below is on the device; the recovered log continues here.
    pub(crate) end: u64,
    /// The cold index's checkpoint.
    pub(crate) index_token: u64,
}

/// Most records a cold-to-cold move lays out as one chain (invariant 6); a longer chain moves
/// record by record.
pub(crate) const MAX_LAID_OUT: usize = 64;

/// A record of a chain, as a walk for laying it out read it.
struct ChainRecord {
    at: Address,
    key: Vec<u8>,
    /// `None`: a tombstone.
    value: Option<Vec<u8>>,
}

impl ChainRecord {
    /// Bytes of its copy in the log.
    fn size(&self) -> usize {
        record_size(
            self.key.len(),
            self.value.as_ref().map_or(0, Vec::len).next_multiple_of(8),
        )
    }
}

/// What a walk of a whole chain found.
enum Chain {
    /// Its valid records, newest first.
    Records(Vec<ChainRecord>),
    /// More than [`MAX_LAID_OUT`] records.
    TooLong,
    /// A record was truncated under the walk: start over from the index.
    Truncated,
}

/// The name of the cold tier's file in a hot checkpoint.
pub(crate) const COLD_META: &str = "cold.meta";

/// Where a walk of a cold chain stopped.
enum Met {
    /// The key's newest record at or above the floor, at this address.
    Key { at: Address, tombstone: bool },
    /// No record of the key at or above the floor.
    End,
    /// The walk's next record was truncated under it: start over from the index.
    Truncated,
}

/// Live counters of the cold tier.
#[derive(Debug, Default)]
pub(crate) struct ColdCounters {
    pub(crate) reads: AtomicU64,
    pub(crate) found: AtomicU64,
    pub(crate) appended: AtomicU64,
    pub(crate) orphans: AtomicU64,
    /// Chains cold-to-cold compaction wrote out together (invariant 6), and their records.
    pub(crate) chains_laid_out: AtomicU64,
    pub(crate) chain_records_laid_out: AtomicU64,
    /// Reads the hot tier answered (a value or a tombstone there).
    pub(crate) hot_hits: AtomicU64,
    /// RMWs whose old value came from here.
    pub(crate) rmws: AtomicU64,
}

/// The cold tier.
pub(crate) struct ColdStore<D: Disk> {
    epoch: Arc<LightEpoch>,
    pub(crate) hlog: HybridLog<D>,
    pub(crate) index: ColdIndex<D>,
    hasher: KeyHasher,
    pub(crate) counters: ColdCounters,
    /// Device space is released below here.
    released: AtomicU64,
}

impl<D: Disk> ColdStore<D> {
    /// An empty cold tier over `log_disk`, its index over `index_disk`.
    pub(crate) fn open(
        log_disk: D,
        index_disk: D,
        shape: ColdLogShape,
        index: &ColdIndexConfig,
        hasher: KeyHasher,
    ) -> Result<Self> {
        let epoch = Arc::new(LightEpoch::new());
        let hlog = HybridLog::new(log_disk, epoch.clone(), shape.page_bits, shape.frames, 0.5)?;
        hlog.set_read_lookback(shape.chain_window);
        Ok(Self {
            epoch,
            hlog,
            index: ColdIndex::open(index, index_disk)?,
            hasher,
            counters: ColdCounters::default(),
            released: AtomicU64::new(0),
        })
    }

    /// The cold tier as checkpoint `meta` recorded it.
    pub(crate) fn recover(
        log_disk: D,
        index_disk: D,
        shape: ColdLogShape,
        index: &ColdIndexConfig,
        hasher: KeyHasher,
        meta: &ColdMeta,
    ) -> Result<Self> {
        if meta.page_bits != shape.page_bits {
            return Err(Error::Config {
                field: "cold_page_size",
                reason: format!(
                    "the checkpoint's cold log has pages of 2^{} bytes, the configuration 2^{}",
                    meta.page_bits, shape.page_bits
                ),
            });
        }
        let epoch = Arc::new(LightEpoch::new());
        let (begin, end) = (Address::new(meta.begin), Address::new(meta.end));
        let mut hlog = HybridLog::recovered(
            log_disk,
            epoch.clone(),
            shape.page_bits,
            shape.frames,
            0.5,
            begin,
            end,
        )?;
        hlog.load_tail()?;
        hlog.set_read_lookback(shape.chain_window);
        Ok(Self {
            epoch,
            hlog,
            index: ColdIndex::recover(index, index_disk, Token(meta.index_token))?,
            hasher,
            counters: ColdCounters::default(),
            released: AtomicU64::new(0),
        })
    }

    /// Whether cold-to-cold lays chains out (invariant 6): reads look back over them.
    fn lays_out_chains(&self) -> bool {
        self.hlog.read_lookback() > 0
    }

    /// Bytes of cold log between `begin` and the tail.
    pub(crate) fn log_bytes(&self) -> u64 {
        let m = self.hlog.markers();
        m.tail.raw().saturating_sub(m.begin.raw())
    }

    /// The cold index's statistics.
    pub(crate) fn index_stats(&self) -> ColdIndexStats {
        self.index.stats()
    }

    /// Reads `key`: its newest cold value goes to `out`.
    pub(crate) async fn read(
        &self,
        key: &Encoded,
        hash: KeyHash,
        out: &mut ValueBuf,
    ) -> Result<Found> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        loop {
            // Before the entry (invariant 4).
            let begin = self.hlog.begin();
            let head = self.index.get_async(hash).await?;
            match self.find(head, key, begin, Some(out)).await? {
                Met::Key { tombstone, .. } => {
                    if tombstone {
                        return Ok(Found::Deleted);
                    }
                    self.counters.found.fetch_add(1, Ordering::Relaxed);
                    return Ok(Found::Live);
                }
                Met::End => return Ok(Found::Absent),
                Met::Truncated => {}
            }
        }
    }

    /// Whether the record at `address` is `key`'s newest here: the walk from the key's entry
    /// meets no record of the key above `address` and meets `address` itself (a superseded
    /// record or an orphan is not). Returns the entry the walk started from (invariant 3).
    pub(crate) async fn newest_at(
        &self,
        key: &Encoded,
        hash: KeyHash,
        address: Address,
    ) -> Result<Option<Address>> {
        loop {
            let head = self.index.get_async(hash).await?;
            match self.find(head, key, address, None).await? {
                Met::Key { at, .. } if at == address => return Ok(Some(head)),
                Met::Key { .. } | Met::End => return Ok(None),
                Met::Truncated => {}
            }
        }
    }

    /// Walks the chain from `from` for `key` down to `floor` (the value, if wanted and live,
    /// goes to `out`).
    async fn find(
        &self,
        from: Address,
        key: &Encoded,
        floor: Address,
        mut out: Option<&mut ValueBuf>,
    ) -> Result<Met> {
        let mut a = from;
        loop {
            if a.is_invalid() || a < floor {
                return Ok(Met::End);
            }
            {
                let _g = self.epoch.protect()?;
                let head = self.hlog.head();
                if a >= head {
                    let (stop, rec) = trace(&self.hlog, a, key, head.max(floor))?;
                    if let Some(rec) = rec {
                        let tombstone = match out.as_deref_mut() {
                            Some(out) => matches!(rec.read_value(out)?, ValueRead::Tombstone),
                            None => rec.state().tombstone(),
                        };
                        return Ok(Met::Key {
                            at: stop,
                            tombstone,
                        });
                    }
                    a = stop;
                    continue;
                }
            }
            let (at, fetched) =
                fetch_chain(&self.hlog, a, Some(follow_other_keys(key, floor))).await;
            let matched = fetched.and_then(|bytes| {
                Ok(match disk_match(key, at, &bytes, floor)? {
                    DiskMatch::Value(v) => {
                        if let Some(out) = out.as_deref_mut() {
                            out.fill_from_bytes(v);
                        }
                        Some(Met::Key {
                            at,
                            tombstone: false,
                        })
                    }
                    DiskMatch::Tombstone => Some(Met::Key {
                        at,
                        tombstone: true,
                    }),
                    DiskMatch::End => Some(Met::End),
                    DiskMatch::Next(prev) => {
                        a = prev;
                        None
                    }
                })
            });
            match matched {
                Ok(Some(met)) => return Ok(met),
                Ok(None) => {}
                Err(_) if at < self.hlog.begin() => return Ok(Met::Truncated),
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `key -> value` (`None`: a tombstone) at the cold tail, chained to `prev`; not
    /// yet reachable.
    fn write(&self, key: &Encoded, value: Option<&Encoded>, prev: Address) -> Result<Address> {
        let size = record_size(key.len(), value.map_or(0, |v| v.len().next_multiple_of(8)));
        if size > self.hlog.page_size() {
            return Err(Error::RecordTooLarge {
                size,
                page_size: self.hlog.page_size(),
            });
        }
        let (_g, address) = self.allocate(size)?;
        let info = RecordInfo::new(prev, Version::of(1));
        let _ = RecordRef::write_new(self.hlog.space(address, size), info, key, value);
        Ok(address)
    }

    /// `size` bytes at the cold tail, and the protection the caller writes them under.
    fn allocate(&self, size: usize) -> Result<(crate::core::light_epoch::EpochGuard<'_>, Address)> {
        let mut g = self.epoch.protect()?;
        let mut round = 0;
        loop {
            match self.hlog.allocate(size) {
                Ok(a) => return Ok((g, a)),
                Err(AllocError::RetryLater) => {
                    g.refresh();
                    crate::sync::backoff(&mut round);
                }
                Err(AllocError::Fatal(e)) => return Err(e),
            }
        }
    }

    /// After a lost swap of the entry: the record at `address` is an orphan (invariant 1).
    fn orphan(&self, address: Address) -> Result<()> {
        self.counters.orphans.fetch_add(1, Ordering::Relaxed);
        // Protected, so the flush of a page at or above read-only cannot start before the
        // bit is set (the flush runs in the epoch action of safe read-only).
        let _g = self.epoch.protect()?;
        if address >= self.hlog.read_only() {
            self.hlog.record(address)?.set_invalid();
        }
        Ok(())
    }

    /// Appends `key -> value` chained to `expected` and swings the key's entry from `expected`
    /// to it. Returns the entry found instead when the CAS lost.
    async fn append(
        &self,
        key: &Encoded,
        value: Option<&Encoded>,
        hash: KeyHash,
        expected: Address,
    ) -> Result<std::result::Result<Address, Address>> {
        let address = self.write(key, value, expected)?;
        match self.index.try_update_async(hash, expected, address).await? {
            Ok(()) => {
                self.counters.appended.fetch_add(1, Ordering::Relaxed);
                Ok(Ok(address))
            }
            Err(actual) => {
                self.orphan(address)?;
                Ok(Err(actual))
            }
        }
    }

    /// Appends `key -> value` as the key's newest cold record (hot-to-cold: invariant 2), in
    /// one RMW of its chunk: the record is written first, and pointed at the entry's old
    /// value inside the RMW's decision, before the chunk that names it is published. That
    /// needs the record still in the mutable region (not yet being flushed, so the patch
    /// reaches the device); if it left it, the swap is refused and the append starts over.
    /// So is a swap that finds a record above ours in the entry (another key's move, whose
    /// chunk update finished first): chains only go backwards in the log (invariant 1).
    pub(crate) async fn append_newest(
        &self,
        key: &Encoded,
        value: Option<&Encoded>,
        hash: KeyHash,
    ) -> Result<()> {
        loop {
            let address = self.write(key, value, Address::INVALID)?;
            let patch = |old: Address| {
                // A move of another key of this entry whose record was written after ours
                // (its chunk update did not wait for the device, ours did) got in first:
                // linking ours in front of it would make the chain go forward. Ours becomes an
                // orphan and the retry writes a record above it.
                if old >= address {
                    return false;
                }
                let Ok(_g) = self.epoch.protect() else {
                    return false;
                };
                match self.hlog.record(address) {
                    Ok(rec) if address >= self.hlog.read_only() => {
                        rec.set_prev(old);
                        true
                    }
                    _ => false,
                }
            };
            match self.index.swap_async(hash, address, patch).await? {
                Ok(()) => {
                    self.counters.appended.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(_) => self.orphan(address)?,
            }
        }
    }

    /// Reads the chain from `from` down to `floor`: every valid record, newest first, at most
    /// [`MAX_LAID_OUT`] of them (invariant 6). Records on the device are collected inside
    /// the device's callbacks, so a chain laid out together costs one read.
    async fn read_chain(&self, from: Address, floor: Address) -> Result<Chain> {
        let mut records = Vec::new();
        let mut a = from;
        loop {
            if a.is_invalid() || a < floor {
                return Ok(Chain::Records(records));
            }
            if records.len() >= MAX_LAID_OUT {
                return Ok(Chain::TooLong);
            }
            {
                let _g = self.epoch.protect()?;
                if a >= self.hlog.head() {
                    let rec = self.hlog.record(a)?;
                    let info = rec.info();
                    if !info.invalid() {
                        let mut v = ValueBuf::default();
                        let live = matches!(rec.read_value(&mut v)?, ValueRead::Live);
                        records.push(ChainRecord {
                            at: a,
                            key: rec.key_bytes(),
                            value: live.then(|| v.bytes().to_vec()),
                        });
                    }
                    a = backwards(a, info.prev())?;
                    continue;
                }
            }
            // Every record the device's callbacks look at is sent here; the walk goes on
            // while the next one is in the chain and the walk is not too long.
            let (tx, rx) = std::sync::mpsc::channel();
            let room = MAX_LAID_OUT - records.len();
            let mut sent = 0;
            let collect: ChainStep = Box::new(move |at, bytes| {
                let rec = bytes.record(at).ok()?;
                let info = rec.info();
                if !info.invalid() {
                    let value = (!rec.state().tombstone()).then(|| rec.value().to_vec());
                    let _ = tx.send(ChainRecord {
                        at,
                        key: rec.key().to_vec(),
                        value,
                    });
                    sent += 1;
                }
                let prev = backwards(at, info.prev()).ok()?;
                (!prev.is_invalid() && prev >= floor && sent < room).then_some(prev)
            });
            let (at, fetched) = fetch_chain(&self.hlog, a, Some(collect)).await;
            records.extend(rx.try_iter());
            match fetched.and_then(|bytes| Ok(bytes.record(at)?.info())) {
                Ok(info) => a = backwards(at, info.prev())?,
                Err(_) if at < self.hlog.begin() => return Ok(Chain::Truncated),
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `records` (oldest first) together at the cold tail, each chained to the one
    /// before it and the first to nothing; returns their addresses. Not yet reachable.
    fn write_chain(&self, records: &[&ChainRecord]) -> Result<Vec<Address>> {
        let total = records.iter().map(|r| r.size()).sum();
        let (_g, base) = self.allocate(total)?;
        let (mut at, mut prev) = (base, Address::INVALID);
        let mut addresses = Vec::with_capacity(records.len());
        for r in records {
            let size = r.size();
            let value = r.value.as_deref().map(Encoded::from_bytes);
            let info = RecordInfo::new(prev, Version::of(1));
            let key = Encoded::from_bytes(&r.key);
            let _ = RecordRef::write_new(self.hlog.space(at, size), info, &key, value.as_ref());
            addresses.push(at);
            prev = at;
            at = Address::new(at.raw() + size as u64);
        }
        Ok(addresses)
    }

    /// Cold-to-cold's move of the record at `address` with its whole chain (invariant 6).
    /// `None`: the chain is too long or too large to lay out; move the record alone.
    async fn move_chain(
        &self,
        key: &Encoded,
        hash: KeyHash,
        address: Address,
    ) -> Result<Option<bool>> {
        let limit = self.hlog.page_size() / 4;
        loop {
            let begin = self.hlog.begin();
            let head = self.index.get_async(hash).await?;
            let records = match self.read_chain(head, begin).await? {
                Chain::Records(r) => r,
                Chain::TooLong => return Ok(None),
                Chain::Truncated => continue,
            };
            // Each key's newest record; the keys whose newest is a tombstone are dropped.
            let mut newest: Vec<&ChainRecord> = Vec::new();
            let mut seen: Vec<&[u8]> = Vec::new();
            for r in &records {
                if seen.contains(&r.key.as_slice()) {
                    continue;
                }
                seen.push(&r.key);
                if r.key == key.bytes() && r.at != address {
                    return Ok(Some(false)); // superseded, or an orphan (invariant 3)
                }
                if r.value.is_some() {
                    newest.push(r);
                }
            }
            if !newest.iter().any(|r| r.at == address) {
                return Ok(Some(false)); // not in the chain: an orphan
            }
            let size: usize = newest.iter().map(|r| r.size()).sum();
            if size > limit {
                return Ok(None);
            }
            newest.reverse();
            let written = self.write_chain(&newest)?;
            let last = *written.last().expect("the moved record is among them");
            match self.index.try_update_async(hash, head, last).await? {
                Ok(()) => {
                    let n = written.len() as u64;
                    self.counters.appended.fetch_add(n, Ordering::Relaxed);
                    self.counters
                        .chains_laid_out
                        .fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .chain_records_laid_out
                        .fetch_add(n, Ordering::Relaxed);
                    return Ok(Some(true));
                }
                Err(_) => {
                    for a in written {
                        self.orphan(a)?;
                    }
                }
            }
        }
    }

    /// Compacts the cold log below `until` (rounded down to its page) with `threads`
    /// workers of `lookups` moves in flight each, then truncates it there and releases what no retained checkpoint needs
    /// (`retained_begins`: the cold `begin` each one recorded). The caller holds R2Kv's
    /// maintenance lock.
    pub(crate) fn compact(
        &self,
        until: Address,
        threads: usize,
        lookups: usize,
        retained_begins: &[u64],
    ) -> Result<Compaction> {
        let begin = self.hlog.begin();
        let safe_head = self.hlog.safe_head();
        let geo = self.hlog.geometry();
        let until = geo.page_start(geo.page(until.min(safe_head))).max(begin);
        if until == begin {
            return Ok(Compaction::default());
        }
        self.hlog.check_poison()?;
        let lookups = || lookups;
        let pass = ColdToCold {
            store: self,
            laid_out: self
                .lays_out_chains()
                .then(|| LaidOut::new(self.index.geometry()))
                .flatten(),
        };
        let mut total = scan_and_move(&self.hlog, begin, until, threads, &lookups, &pass)?;
        let begin_before = self.hlog.shift_begin(until)?;
        let bytes_freed = self.release(retained_begins)?;
        total.truncation = Some(Truncation {
            begin_before,
            begin: self.hlog.begin(),
            released_until: Address::new(self.released.load(Ordering::Acquire)),
            bytes_freed,
        });
        Ok(total)
    }

    /// Releases device space below `begin` and every retained checkpoint's cold `begin`.
    /// Returns the bytes of segment files deleted.
    pub(crate) fn release(&self, retained_begins: &[u64]) -> Result<u64> {
        let geo = self.hlog.geometry();
        let keep = retained_begins
            .iter()
            .copied()
            .fold(self.hlog.begin().raw(), u64::min);
        let keep = geo.page_start(geo.page(Address::new(keep))).raw();
        if keep <= self.released.load(Ordering::Acquire) {
            return Ok(0);
        }
        let disk = self.hlog.disk();
        let before = disk.storage_bytes().unwrap_or(0);
        disk.truncate_before(keep)
            .map_err(|e| Error::io("releasing cold log segments", e))?;
        self.released.fetch_max(keep, Ordering::AcqRel);
        Ok(before.saturating_sub(disk.storage_bytes().unwrap_or(before)))
    }

    /// Writes the pages of the cold log and of the cold index's log whose write failed again
    /// (a full device that has room again); once they are written the tier takes appends
    /// again. The caller holds R2Kv's maintenance lock.
    ///
    /// # Errors
    /// [`Error::Poisoned`] when a page still fails.
    pub(crate) fn retry_failed_writes(&self) -> Result<()> {
        self.hlog.retry_failed_writes()?;
        self.index.retry_failed_writes()
    }

    /// Makes the whole cold log durable and checkpoints the cold index; returns what the
    /// checkpoint records. Nothing may write here meanwhile (invariant 5).
    pub(crate) fn checkpoint(&self) -> Result<ColdMeta> {
        // The cold index's checkpoint retries its own log's failed pages.
        self.hlog.retry_failed_writes()?;
        let end = self.hlog.close_page();
        // Writers of records below `end` have finished: none runs (invariant 5), and the
        // flush below waits for the epoch anyway.
        self.hlog.shift_read_only(end);
        let mut round = 0u32;
        while self.hlog.flushed_until() < end {
            self.hlog.check_poison()?;
            self.epoch.drain();
            crate::sync::backoff(&mut round);
        }
        self.hlog.check_poison()?;
        self.hlog
            .disk()
            .flush()
            .map_err(|e| Error::io("syncing the cold log", e))?;
        let index_token = self.index.checkpoint()?;
        Ok(ColdMeta {
            page_bits: self.hlog.geometry().page_bits,
            begin: self.hlog.begin().raw(),
            end: end.raw(),
            index_token: index_token.0,
        })
    }
}

/// The hot tier's engine reads here when it has no record of a key.
impl<D: Disk> crate::ops::tiered::Lower for ColdStore<D> {
    fn read_lower<'f>(
        &'f self,
        key: &'f Encoded,
        hash: KeyHash,
        out: &'f mut ValueBuf,
    ) -> crate::ops::tiered::LowerFuture<'f> {
        Box::pin(self.read(key, hash, out))
    }

    fn upper_answered(&self) {
        self.counters.hot_hits.fetch_add(1, Ordering::Relaxed);
    }

    fn lower_gave_old_value(&self) {
        self.counters.rmws.fetch_add(1, Ordering::Relaxed);
    }
}

/// The chains one cold-to-cold pass laid out, one bit per cold index entry (invariant 6):
/// a record in the pass's range whose entry is marked was copied with its chain or was
/// already superseded when the chain was read (chains only grow at the head, and the copies
/// hold every key's newest record the walk met), so its move returns at once instead of
/// walking the chain again. Exact: one bit per entry, never shared, so the bitmap exists only
/// for indexes of at most [`MAX_MARKED_ENTRIES`] entries (8 MiB of bits; 512 KiB for 4M
/// entries), for the pass's duration.
struct LaidOut {
    bits: Box<[AtomicU64]>,
    geometry: crate::index::cold_index_contexts::ChunkGeometry,
}

/// The most cold index entries a pass marks (see [`LaidOut`]).
const MAX_MARKED_ENTRIES: u64 = 1 << 26;

impl LaidOut {
    fn new(geometry: crate::index::cold_index_contexts::ChunkGeometry) -> Option<Self> {
        let entries = geometry.chunks() * geometry.entries() as u64;
        (entries <= MAX_MARKED_ENTRIES).then(|| Self {
            bits: (0..entries.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            geometry,
        })
    }

    fn bit(&self, hash: KeyHash) -> (usize, u64) {
        let p = self.geometry.locate(hash);
        let i = p.chunk.0 as usize * self.geometry.entries() + p.entry;
        (i / 64, 1 << (i % 64))
    }

    fn mark(&self, hash: KeyHash) {
        let (w, b) = self.bit(hash);
        self.bits[w].fetch_or(b, Ordering::AcqRel);
    }

    fn marked(&self, hash: KeyHash) -> bool {
        let (w, b) = self.bit(hash);
        self.bits[w].load(Ordering::Acquire) & b != 0
    }
}

/// One cold-to-cold pass (invariant 3; invariant 6 with a chain window).
struct ColdToCold<'a, D: Disk> {
    store: &'a ColdStore<D>,
    laid_out: Option<LaidOut>,
}

impl<D: Disk> Mover for ColdToCold<'_, D> {
    const MOVES_TOMBSTONES: bool = false;

    async fn move_record(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        address: Address,
    ) -> Result<bool> {
        let Some(value) = value else {
            return Ok(false);
        };
        let store = self.store;
        let hash = KeyHash::new(store.hasher.rehash(key)?);
        let key = Encoded::from_bytes(key);
        if store.lays_out_chains() {
            if self.laid_out.as_ref().is_some_and(|l| l.marked(hash)) {
                return Ok(false);
            }
            if let Some(moved) = store.move_chain(&key, hash, address).await? {
                // Only a move that laid the chain out (its swap succeeded) marks it: one that
                // found its record superseded laid nothing out.
                if let (true, Some(l)) = (moved, &self.laid_out) {
                    l.mark(hash);
                }
                return Ok(moved);
            }
        }
        let value = Encoded::from_bytes(value);
        loop {
            let Some(head) = store.newest_at(&key, hash, address).await? else {
                return Ok(false);
            };
            if store.append(&key, Some(&value), hash, head).await?.is_ok() {
                return Ok(true);
            }
        }
    }
}
