//! The engine's side of the read cache ([`crate::hlog::read_cache`], whose module docs hold
//! the invariants): resolving an entry to its chain's log head, answering reads from copies,
//! inserting copies after device reads, and unlinking evicted pages from the index.
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::light_epoch::EpochGuard;
use crate::core::lock_cycle::Cycle;
use crate::core::record::first_record_offset;
use crate::core::record::{ValueBuf, ValueRead};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::hlog::read_cache::{CacheAddress, CachedRecord, ReadCache};
use crate::index::hash_bucket::{HashBucketEntry, Target};
use crate::index::{EntrySlot, HashIndex, IndexBusy, KeyHash};
use crate::ops::Engine;
use crate::sync::Ordering;

/// The source of a copy of a cold record (R2Kv): above every hot log address, so the
/// truncation rule of a copy (its source below `begin` reads as absent) never applies to it;
/// a cold record's copy stays valid until the hot tier writes the key (which replaces it).
pub(crate) const COLD_SOURCE: Address = Address::MAX;

/// Where an entry leads: an optional cache copy in front of the chain's log head.
pub(crate) struct Chain<'g> {
    /// The copy the entry points at, if any (its key may be another of the entry's keys).
    pub(crate) cached: Option<CachedRecord<'g>>,
    /// The chain's newest record in the log.
    pub(crate) log: Address,
}

impl<D: Disk> Engine<D> {
    /// The copy at `address`, for an entry loaded under a protection that `'g` borrows from
    /// (an [`EntrySlot<'g>`] exists only while its guard lives, so the copy's frame cannot be
    /// released meanwhile: invariant 6).
    fn copy_at<'g>(&'g self, address: CacheAddress) -> Result<CachedRecord<'g>> {
        self.read_cache
            .as_ref()
            .and_then(|c| c.record_unguarded(address))
            .ok_or_else(|| Error::Corrupt {
                address: address.raw(),
                reason: "an index entry points into the read cache at no copy".into(),
            })
    }

    /// Where `slot`'s chain leads.
    #[inline(always)]
    pub(crate) fn chain<'g>(&'g self, slot: &EntrySlot<'g>) -> Result<Chain<'g>> {
        match slot.target() {
            Target::Log(log) => Ok(Chain { cached: None, log }),
            Target::Cache(c) => {
                let copy = self.copy_at(c)?;
                Ok(Chain {
                    log: copy.next(),
                    cached: Some(copy),
                })
            }
        }
    }

    /// The newest record of `slot`'s chain in the log (through its cache copy, if any): where
    /// an update's walk starts and what its new record points back at.
    #[inline(always)]
    pub(crate) fn log_head(&self, slot: &EntrySlot<'_>) -> Result<Address> {
        match slot.target() {
            Target::Log(log) => Ok(log),
            Target::Cache(c) => Ok(self.copy_at(c)?.next()),
        }
    }

    /// An entry as an index checkpoint or a split writes it: a cached entry becomes its log
    /// address. The caller holds off the copy's eviction (a protection for the checkpoint's
    /// dump; the split's claim on its chunk, see `hlog::read_cache`).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the entry names no copy.
    pub(crate) fn uncached(&self, e: HashBucketEntry) -> Result<HashBucketEntry> {
        Ok(match e.target() {
            Target::Log(_) => e,
            Target::Cache(c) => {
                HashBucketEntry::new(self.copy_at(c)?.next(), e.tag(), e.tentative())
            }
        })
    }

    /// Answers a read from `copy` if it holds `key`'s value: `Some(found)` then (the value is
    /// in `out`). Fails only as [`RecordRef::read_value`]. `begin` is the one the read loaded before the entry (invariant 3).
    pub(crate) fn read_copy(
        &self,
        copy: &CachedRecord<'_>,
        key: &Encoded,
        begin: Address,
        out: &mut ValueBuf,
    ) -> std::result::Result<Option<bool>, Cycle> {
        let rec = &copy.record;
        if rec.info().invalid()
            || !rec.key_is(key)
            || (copy.source() < begin
                && !self
                    .copies_outlive_truncation
                    .load(std::sync::atomic::Ordering::Relaxed))
        {
            return Ok(None);
        }
        // Copies are never locked, so this never waits; the type does not know that.
        let found = matches!(rec.read_value(out)?, ValueRead::Live);
        if let Some(cache) = &self.read_cache {
            cache.counters.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(found))
    }

    /// After an update swung an entry away from the copy at `at` (under the protection it
    /// loaded the entry with): if the copy was `key`'s, notes that the key came back while it
    /// was only in the cache, so its new record is kept when it leaves the log's memory
    /// (invariant 9).
    pub(crate) fn note_replaced_copy(&self, at: CacheAddress, key: &Encoded) {
        if let (Some(cache), Ok(copy)) = (&self.read_cache, self.copy_at(at)) {
            if copy.record.key_is(key) {
                cache.note_use(copy.hash());
            }
        }
    }

    /// After a hit on a copy about to be evicted: copies it to the cache's tail (invariant 7),
    /// from `slot`, the entry the read found it through.
    pub(crate) fn refresh_copy(
        &self,
        g: &EpochGuard<'_>,
        slot: &mut EntrySlot<'_>,
        copy: &CachedRecord<'_>,
        key: &Encoded,
        value: &[u8],
    ) {
        let Some(cache) = &self.read_cache else {
            return;
        };
        if !cache.is_cold(copy.address) {
            return;
        }
        if self.link_copy(g, slot, copy.hash(), key, value, copy.source()) {
            cache.counters.refreshed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// After a read found `key -> value` on the device at `source`, having seen entry `seen`
    /// when it started: puts a copy in front of the chain if the cache admits it (invariant 8)
    /// and the entry is still `seen` (invariant 1). Best effort: anything in the way skips it.
    pub(crate) fn cache_read(
        &self,
        key: &Encoded,
        hash: KeyHash,
        seen: HashBucketEntry,
        source: Address,
        value: &[u8],
    ) {
        let Some(cache) = &self.read_cache else {
            return;
        };
        cache.counters.misses.fetch_add(1, Ordering::Relaxed);
        if !cache.admits(hash, key.bytes().len(), value.len()) {
            return;
        }
        let Ok(mut g) = self.epoch.protect() else {
            return;
        };
        let linked = match self.index.find_entry(&g, hash) {
            Ok(Some(mut slot)) if slot.entry == seen => {
                self.link_copy(&g, &mut slot, hash, key, value, source)
            }
            Ok(Some(_)) => {
                cache.counters.skipped.fetch_add(1, Ordering::Relaxed);
                false
            }
            _ => false,
        };
        if linked {
            cache.counters.inserted.fetch_add(1, Ordering::Relaxed);
        }
        if cache.needs_unlinking() {
            self.unlink_cache_pages(&mut g);
        }
    }

    /// The index entry of `hash` as it is now (`None`: there is none), for
    /// [`Engine::cache_cold`]: R2Kv loads it before its hot read. `Err` when the index is
    /// between tables (no copy is made then).
    pub(crate) fn entry_now(
        &self,
        hash: KeyHash,
    ) -> std::result::Result<Option<HashBucketEntry>, ()> {
        let g = self.epoch.protect().map_err(|_| ())?;
        match self.index.find_entry(&g, hash) {
            Ok(e) => Ok(e.map(|s| s.entry)),
            Err(_) => Err(()),
        }
    }

    /// Whether `hash`'s chain starts at `address` in the log (through its cache copy, if any):
    /// then no record of any key of the chain, `address`'s own key included, lies above it,
    /// so the record there is its key's newest. `false` when it does not, or when that cannot
    /// be told without a walk (no entry; the index between tables): the caller walks then.
    /// R2Kv's hot-to-cold move asks this first: during a load almost every record it scans
    /// heads its chain, and the answer takes one index lookup instead of an update's.
    pub(crate) fn heads_chain(&self, hash: KeyHash, address: Address) -> bool {
        let Ok(g) = self.epoch.protect() else {
            return false;
        };
        match self.index.find_entry(&g, hash) {
            Ok(Some(slot)) => self.log_head(&slot).is_ok_and(|head| head == address),
            _ => false,
        }
    }

    /// After R2Kv's cold tier answered a read of `key` with `value`, the hot tier having no
    /// record of it: puts a copy in front of the hot chain if its entry is still `seen` (loaded
    /// before the hot read, `None` when it had no entry): then no hot record of the key was
    /// added since, and the cold value is still the key's newest (F2's insertion of a cold
    /// record into the read cache). The copy's source is [`COLD_SOURCE`], never below the hot
    /// `begin`. Best effort, as [`Engine::cache_read`].
    pub(crate) fn cache_cold(
        &self,
        key: &Encoded,
        hash: KeyHash,
        seen: Option<HashBucketEntry>,
        value: &[u8],
    ) {
        let Some(cache) = &self.read_cache else {
            return;
        };
        cache.counters.misses.fetch_add(1, Ordering::Relaxed);
        if !cache.admits(hash, key.bytes().len(), value.len()) {
            return;
        }
        let Ok(mut g) = self.epoch.protect() else {
            return;
        };
        let slot = match seen {
            Some(seen) => match self.index.find_entry(&g, hash) {
                Ok(Some(slot)) if slot.entry == seen => Some(slot),
                _ => None,
            },
            // A new entry (or one another thread just created, still empty) has no chain.
            None => match self.index.find_or_create_entry(&g, hash) {
                Ok(slot) if slot.entry.address().is_invalid() && !slot.entry.tentative() => {
                    Some(slot)
                }
                _ => None,
            },
        };
        let linked = match slot {
            Some(mut slot) => self.link_copy(&g, &mut slot, hash, key, value, COLD_SOURCE),
            None => {
                cache.counters.skipped.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        if linked {
            cache.counters.inserted.fetch_add(1, Ordering::Relaxed);
        }
        if cache.needs_unlinking() {
            self.unlink_cache_pages(&mut g);
        }
    }

    /// Copies the records of the log page about to leave memory that `cache` keeps (its
    /// invariant 9), if this thread claims the page. Called before an operation protects
    /// itself, so never inside another operation's protection (a nested one does nothing).
    #[cold]
    #[inline(never)]
    pub(crate) fn keep_evicted(&self, cache: &ReadCache) {
        let Ok(mut g) = self.epoch.protect() else {
            return;
        };
        if g.is_nested() {
            return;
        }
        // Loaded under `g`: the page is in memory now, so its frame is not reused before `g`
        // ends, wherever `head` goes meanwhile (`hlog`, invariant 5).
        let geo = self.hlog.geometry();
        let head_page = geo.page(self.hlog.head());
        let read_only_page = geo.page(self.hlog.safe_read_only());
        let Some(page) = cache.claim_kept_page(head_page, read_only_page) else {
            return;
        };
        let mut a = Address::new(geo.page_start(page).raw() + first_record_offset(page) as u64);
        let end = geo.page_start(page + 1);
        let mut buf = ValueBuf::default();
        let mut key = Vec::new();
        while a < end {
            let Ok(Some(rec)) = self.hlog.record_in_page(a) else {
                break;
            };
            let next = Address::new(a.raw() + rec.size() as u64);
            if !rec.info().invalid() {
                rec.key_bytes_into(&mut key);
                // A store whose hash cannot rehash logged keys keeps nothing.
                let Ok(hash) = self.hasher.rehash(&key).map(KeyHash::new) else {
                    return;
                };
                if cache.keeps(hash) {
                    if let Ok(Some(mut slot)) = self.index.find_entry(&g, hash) {
                        let live = matches!(rec.read_value(&mut buf), Ok(ValueRead::Live));
                        if live
                            && slot.target() == Target::Log(a)
                            && self.link_copy(
                                &g,
                                &mut slot,
                                hash,
                                &Encoded::from_bytes(&key),
                                buf.bytes(),
                                a,
                            )
                        {
                            cache.counters.inserted.fetch_add(1, Ordering::Relaxed);
                            cache.counters.kept.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            a = next;
        }
        if cache.needs_unlinking() {
            self.unlink_cache_pages(&mut g);
        }
    }

    /// Writes a copy of `key -> value` (read from `source`) whose chain continues at the log
    /// head of `slot` as seen, and CASes the entry from that to it; marks it invalid if the
    /// CAS fails. Returns whether it is linked. `slot` was found under `g`.
    fn link_copy(
        &self,
        g: &EpochGuard<'_>,
        slot: &mut EntrySlot<'_>,
        hash: KeyHash,
        key: &Encoded,
        value: &[u8],
        source: Address,
    ) -> bool {
        let Some(cache) = &self.read_cache else {
            return false;
        };
        let Ok(next) = self.log_head(slot) else {
            return false;
        };
        let Some(copy) = cache.insert(g, key.bytes(), value, hash, source, next) else {
            cache.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if slot.try_update_cached(copy.address).is_err() {
            copy.record.set_invalid();
            cache.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Unlinks the cache pages the tail is about to need (invariant 5), under `g`, which it
    /// refreshes while the index switches tables. Not from a nested protection (the
    /// switch would wait for the outer one): the pages are left to a later insertion.
    pub(crate) fn unlink_cache_pages(&self, g: &mut EpochGuard<'_>) {
        let Some(cache) = &self.read_cache else {
            return;
        };
        if g.is_nested() {
            return;
        }
        let mut round = 0;
        cache.unlink_pages(|copy| loop {
            let entry = HashBucketEntry::cached(copy.address, copy.hash().tag());
            match self.index.find_entry(&*g, copy.hash()) {
                Ok(Some(mut slot)) => {
                    if slot.entry == entry && slot.try_update(copy.next()).is_ok() {
                        cache.counters.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    return true;
                }
                Ok(None) => return true,
                // A split could not finish: the entry may still name the copy, so the page
                // must stay (a later insertion goes on from here).
                Err(IndexBusy::Full) => return false,
                Err(IndexBusy::RetryLater) => {
                    // The index is about to switch tables: let the switch happen.
                    g.refresh();
                    crate::sync::backoff(&mut round);
                }
            }
        });
    }
}
