//! Operations of a two-tier store (R2Kv) that an engine runs with a *lower tier* beneath it:
//! the read that asks the lower tier when the engine has no record of the key, and the update
//! whose old value may come from the lower tier (docs/DESIGN.md, "R2Kv: two tiers",
//! invariants 3 and 5). Both the store's own operations and its sessions run these, so the
//! protocol is written once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::record::ValueBuf;
use crate::core::status::{Result, Status};
use crate::device::Disk;
use crate::index::hash_bucket::HashBucketEntry;
use crate::index::KeyHash;
use crate::ops::pending::Started;
use crate::ops::read::Found;
use crate::ops::rmw::{Decision, Latest};
use crate::ops::Engine;

/// A future a lower tier returns.
pub(crate) type LowerFuture<'f> = Pin<Box<dyn Future<Output = Result<Found>> + Send + 'f>>;

/// What an engine asks the tier beneath it.
pub(crate) trait Lower: Sync {
    /// Reads `key`: its newest value in this tier goes to `out`.
    fn read_lower<'f>(
        &'f self,
        key: &'f Encoded,
        hash: KeyHash,
        out: &'f mut ValueBuf,
    ) -> LowerFuture<'f>;

    /// Counts a read the upper tier answered (a value or a tombstone there).
    fn upper_answered(&self) {}

    /// Counts an update whose old value the lower tier gave.
    fn lower_gave_old_value(&self) {}
}

/// The index entry of `hash` before a read of the upper tier, when a value found below may be
/// cached in front of it ([`Engine::cache_cold`]); `None` when nothing will be cached.
pub(crate) fn entry_before_read<D: Disk>(
    engine: &Engine<D>,
    hash: KeyHash,
) -> Option<Option<HashBucketEntry>> {
    engine
        .read_cache
        .as_ref()
        .and_then(|_| engine.entry_now(hash).ok())
}

/// After the upper tier found no record of `key`: the lower tier answers, and a live value
/// goes into the upper tier's read cache if its entry is still `seen`.
pub(crate) async fn read_below<D: Disk>(
    engine: &Engine<D>,
    lower: &dyn Lower,
    key: &Encoded,
    hash: KeyHash,
    seen: Option<Option<HashBucketEntry>>,
    out: &mut ValueBuf,
) -> Result<Found> {
    let found = lower.read_lower(key, hash, out).await?;
    if let (Found::Live, Some(seen)) = (found, seen) {
        engine.cache_cold(key, hash, seen, out.bytes());
    }
    Ok(found)
}

/// The state of one update across its attempts: the lower tier's value once read, with the
/// upper tier's `begin` loaded before reading it, and whether the last attempt stopped to
/// read it.
#[derive(Default)]
pub(crate) struct Tiered {
    below: Option<(Address, Option<Encoded>)>,
    reads: u32,
    /// Written and read by the one thread running the attempt (atomic only so the state is
    /// `Sync` and the futures holding it `Send`).
    needs_lower: AtomicBool,
}

impl Tiered {
    /// Whether the last attempt stopped to read the lower tier (it wrote nothing).
    pub(crate) fn needs_lower(&self) -> bool {
        self.needs_lower.load(Ordering::Relaxed)
    }

    /// `base` as one attempt decides it: where the engine has no record of the key, the lower
    /// tier's value is the old one, if it was read since `begin` last moved; otherwise the
    /// attempt stops without writing (and [`Tiered::needs_lower`] says so).
    pub(crate) fn decide<'s, D: Disk>(
        &'s self,
        engine: &'s Engine<D>,
        base: &'s mut impl FnMut(Latest<'_>) -> Result<Decision>,
    ) -> impl FnMut(Latest<'_>) -> Result<Decision> + 's {
        move |latest| {
            self.needs_lower.store(false, Ordering::Relaxed);
            if matches!(latest, Latest::Absent) {
                match &self.below {
                    Some((b0, v)) if engine.hlog.begin() == *b0 => {
                        return base(
                            v.as_ref()
                                .map_or(Latest::Absent, |v| Latest::Value(v.bytes())),
                        );
                    }
                    _ => {
                        self.needs_lower.store(true, Ordering::Relaxed);
                        return Ok(Decision::Abort);
                    }
                }
            }
            base(latest)
        }
    }

    /// Reads the lower tier, having loaded the engine's `begin` first.
    async fn read_lower<D: Disk>(
        &mut self,
        engine: &Engine<D>,
        lower: &dyn Lower,
        key: &Encoded,
        hash: KeyHash,
    ) -> Result<()> {
        let b0 = engine.hlog.begin();
        let mut buf = ValueBuf::default();
        let value = match lower.read_lower(key, hash, &mut buf).await? {
            Found::Live => Some(Encoded::from_bytes(buf.bytes())),
            Found::Deleted | Found::Absent => None,
        };
        // A miss of the upper tier, as an RMW that read its own device notes it.
        if let (Some(v), Some(cache)) = (&value, &engine.read_cache) {
            cache.note_miss(hash, key.bytes().len(), v.bytes().len());
        }
        self.below = Some((b0, value));
        if self.reads == 0 {
            lower.lower_gave_old_value();
        }
        self.reads += 1;
        Ok(())
    }
}

/// Where a tiered update resumes: the first attempt went to disk at this address, having seen
/// this entry, in this version.
pub(crate) type Resume = (Address, HashBucketEntry, u64);

/// Runs a tiered update to its end: from scratch (a fresh `tiered`, no `resume`), or after a
/// first attempt the caller made that stopped to read the lower tier (`tiered` says so) or
/// went to disk (`resume`; the caller holds its pending count). `landed(v)` runs with the
/// version the update landed in, still epoch protected.
#[allow(clippy::too_many_arguments)] // the update's whole state
pub(crate) async fn update_tiered<D: Disk>(
    engine: &Engine<D>,
    lower: &dyn Lower,
    key: &Encoded,
    hash: KeyHash,
    tiered: &mut Tiered,
    mut resume: Option<Resume>,
    base: &mut impl FnMut(Latest<'_>) -> Result<Decision>,
    landed: &mut (dyn FnMut(u64) + Send),
) -> Result<Status> {
    loop {
        let status = match resume.take() {
            Some((address, seen, started_in)) => {
                let t = &*tiered;
                engine
                    .update_pending(
                        key,
                        hash,
                        Address::INVALID,
                        true,
                        address,
                        seen,
                        started_in,
                        &mut t.decide(engine, base),
                        &mut |v| {
                            if !t.needs_lower() {
                                landed(v);
                            }
                        },
                    )
                    .await?
            }
            None => {
                if tiered.needs_lower() {
                    tiered.read_lower(engine, lower, key, hash).await?;
                }
                let t = &*tiered;
                let started = engine.update_start(
                    key,
                    hash,
                    Address::INVALID,
                    true,
                    &mut t.decide(engine, base),
                    &mut |v, pending| {
                        if !pending && !t.needs_lower() {
                            landed(v);
                        }
                    },
                )?;
                match started {
                    Started::Done(s) => s,
                    Started::Disk(address, seen, pending) => {
                        // Counted as driven only while polled (a session may hold this
                        // future without polling it; a checkpoint must not wait for it).
                        let v = pending.version();
                        let mut decide = t.decide(engine, base);
                        let mut on_commit = |v| {
                            if !t.needs_lower() {
                                landed(v);
                            }
                        };
                        let rest = engine.update_pending(
                            key,
                            hash,
                            Address::INVALID,
                            true,
                            address,
                            seen,
                            v,
                            &mut decide,
                            &mut on_commit,
                        );
                        pending.parked_between_polls(rest).await?
                    }
                }
            }
        };
        if !tiered.needs_lower() {
            return Ok(status);
        }
    }
}
