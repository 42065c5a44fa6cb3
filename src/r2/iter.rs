//! R2Kv's iteration: every live pair of both tiers once, the hot tier's answer first
//! (docs/DESIGN.md, "R2Kv", "Iteration"). A hot phase (the hot tier's own [`LiveScan`]), then
//! a cold phase over the cold log ([`Pages`] with [`ColdOnly`]).
//!
//! # Invariants
//! 1. **Nothing moves.** The iterator holds the hot log's maintenance claim from its creation
//!    until it is dropped (the hot scan's, kept after the hot phase ends). Every R2Kv pass,
//!    hot-to-cold and cold-to-cold, holds that claim, and only passes write the cold tier or
//!    truncate either log: while the iterator lives, no record moves between or within the
//!    tiers, and the cold log does not change at all.
//! 2. **Hot phase.** `end` is the hot tail at creation (every record below it written). A key
//!    whose newest hot record below `end` holds a value is yielded with it; one whose newest
//!    hot record below `end` is a tombstone is not yielded at all (it hides the cold value).
//! 3. **Cold phase.** A cold record is yielded iff it holds a value, is its key's newest cold
//!    record, and its key has no hot record below `end` (by 1 the hot records below `end`
//!    stay where they are, so a key with one was decided by the hot phase and only by it).
//!    Hot records at `end` or above (writes during the iteration) do not hide the cold value:
//!    the key held it when the iterator was created, as a key the hot phase meets may have
//!    been updated after `end` too.
//!
//! So each key live at creation is yielded exactly once, with a value it held while the
//! iteration ran; keys that had no live value at creation are not yielded.
#![forbid(unsafe_code)]

use crate::core::address::Address;
use crate::core::codec::Encoded;
use crate::core::status::Result;
use crate::device::Disk;
use crate::index::KeyHash;
use crate::ops::scan::{Candidate, LiveScan, Pages, Pair, Scan, Select};
use crate::ops::Engine;

use super::cold::ColdStore;

/// The cold records a two-tier iteration yields (invariant 3).
struct ColdOnly<'a, D: Disk> {
    hot: &'a Engine<D>,
    cold: &'a ColdStore<D>,
    /// Where the hot phase ends.
    hot_end: Address,
}

impl<D: Disk> Select for ColdOnly<'_, D> {
    fn select(&mut self, read: Vec<Candidate>) -> Result<Vec<Pair>> {
        // Hot first, then cold: with nothing moving (invariant 1) the order does not matter,
        // but it is the one that would stay right if a hot-to-cold pass ran after the hot
        // phase (docs/DESIGN.md, "Iteration").
        let mut cold_only = Vec::new();
        for c in read {
            let key = Encoded::from_bytes(&c.key);
            let hash = KeyHash::new(self.hot.hasher.rehash(&c.key)?);
            if self.hot.newest_below(&key, hash, self.hot_end)?.is_none() {
                cold_only.push((key, hash, c));
            }
        }
        // The cold chain walks of one read in flight together.
        let newest = cold_only
            .iter()
            .map(|(key, hash, c)| self.cold.newest_at(key, *hash, c.address));
        let newest = crate::ops::pending::block_on(futures_util::future::join_all(newest));
        cold_only
            .into_iter()
            .zip(newest)
            .filter_map(|((_, _, c), newest)| match newest {
                Ok(Some(_)) => Some(Ok((c.key, c.value))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
            .collect()
    }
}

/// Which phase an iteration is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hot,
    Cold,
    /// After an error.
    Done,
}

/// The live pairs of both tiers (the module's invariants). Not `Iterator::chain`: that drops
/// the hot scan, and with it the claim, when the hot phase ends, and a pass could then move
/// records between the phases.
pub(crate) struct TwoTiers<'a, D: Disk> {
    hot: LiveScan<'a, D>,
    cold: Scan<'a, D, ColdOnly<'a, D>>,
    phase: Phase,
}

/// Starts an iteration over `hot` and the `cold` tier beneath it.
///
/// # Errors
/// As [`Engine::live_scan`]: [`crate::Error::Busy`] while a pass runs (or another iteration),
/// or when called from inside an operation of the store.
pub(crate) fn two_tiers<'a, D: Disk>(
    hot: &'a Engine<D>,
    cold: &'a ColdStore<D>,
) -> Result<TwoTiers<'a, D>> {
    // Claims first: from here the cold log does not change (invariant 1).
    let hot_scan = hot.live_scan()?;
    let select = ColdOnly {
        hot,
        cold,
        hot_end: hot_scan.end(),
    };
    let pages = Pages::new(&cold.hlog, cold.hlog.tail_address());
    Ok(TwoTiers {
        hot: hot_scan,
        cold: Scan::new(pages, select),
        phase: Phase::Hot,
    })
}

impl<D: Disk> Iterator for TwoTiers<'_, D> {
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = match self.phase {
            Phase::Hot => match self.hot.next() {
                None => {
                    self.phase = Phase::Cold;
                    self.cold.next()
                }
                hot => hot,
            },
            Phase::Cold => self.cold.next(),
            Phase::Done => None,
        };
        if matches!(next, Some(Err(_))) {
            self.phase = Phase::Done;
        }
        next
    }
}
