//! Sequential scans of the log on the device: large reads of whole pages (O_DIRECT when the
//! device uses it, never through the in-memory ring), parsed into records. Compaction and
//! iteration read the log this way.
//!
//! Iteration walks any log (RsKv's, and both of R2Kv's tiers) with [`Pages`]: the device part
//! in scan reads, the part in memory page by page; a [`Select`] decides which of a read's
//! records are yielded (for one log: each key's newest record below the scan's end,
//! [`LiveScan`]; R2Kv adds its own for the cold tier, `r2::iter`).
#![forbid(unsafe_code)]

use crate::core::address::{Address, PageGeometry};
use crate::core::alloc::AlignedBuf;
use crate::core::codec::Encoded;
use crate::core::record::{first_record_offset, DiskRecord, HEADER_BYTES};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::hlog::HybridLog;
use crate::index::{HashIndex, KeyHash};
use crate::ops::engine::backwards;
use crate::ops::truncate::MaintenanceClaim;
use crate::ops::Engine;
use crate::ops::Stop;

/// Bytes one scan read fetches at most (whole pages; at least one page).
pub(crate) const SCAN_READ: usize = 4 << 20;
/// A scan read takes at most this share of the log's memory. Each compaction worker and
/// iterator holds one read's pages (and a list of their records) outside the log's memory,
/// which no budget counts: with 4 MiB reads two workers of a 16 MiB hot log held 11 MiB more
/// than R2Kv's budget during a load.
const SCAN_SHARE: usize = 16;

/// Pages one scan read of `log` covers.
pub(crate) fn pages_per_read<D: Disk>(log: &HybridLog<D>) -> u64 {
    let bytes = SCAN_READ.min(log.live_bytes() / SCAN_SHARE);
    (bytes / log.page_size()).max(1) as u64
}

/// Reads pages `first..first + count` of `log` from the device in one request. Every one of
/// them must be below `safe_head` (flushed, and read nowhere in memory).
///
/// # Errors
/// Device errors.
pub(crate) fn read_pages<D: Disk>(
    log: &HybridLog<D>,
    first: u64,
    count: u64,
) -> Result<AlignedBuf> {
    let geo = log.geometry();
    log.read_sync(
        geo.page_start(first).raw(),
        count as usize * log.page_size(),
    )
}

/// Calls `f` with every record of `page` (its bytes `bytes`) that starts at or above `from`, in
/// address order, invalid ones included (the caller skips them). Every page but the first
/// starts with a record (the allocation that opens a page writes one, invalid if its
/// operation gave up), and a page's records follow one another up to its unused end.
///
/// # Errors
/// [`Error::Corrupt`] for a page other than the first that holds no record (a missing or
/// zeroed segment: scanning on would take its records for absent) or a record that fails its
/// checksum; `f`'s errors.
pub(crate) fn for_each_record<'b>(
    geo: PageGeometry,
    page: u64,
    bytes: &'b [u8],
    from: Address,
    mut f: impl FnMut(Address, DiskRecord<'b>) -> Result<()>,
) -> Result<()> {
    let base = geo.page_start(page);
    let first = first_record_offset(page);
    let corrupt = |off: usize, reason: &str| Error::Corrupt {
        address: base.raw() + off as u64,
        reason: reason.into(),
    };
    if bytes.len() < first + HEADER_BYTES {
        return Err(corrupt(first, "log page cut short"));
    }
    if bytes[first..first + 8] == [0; 8] {
        if page == 0 {
            // The first page opens with the log and may be closed empty by a checkpoint.
            return Ok(());
        }
        return Err(corrupt(
            first,
            "log page on the device holds no record (missing or zeroed segment)",
        ));
    }
    let mut off = first;
    while off + HEADER_BYTES <= bytes.len() {
        let rec = match DiskRecord::parse(&bytes[off..]) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(reason) => return Err(corrupt(off, reason)),
        };
        let size = rec.size();
        let address = Address::new(base.raw() + off as u64);
        if address >= from {
            f(address, rec)?;
        }
        off += size;
    }
    Ok(())
}

/// A live key and its value, as encoded bytes.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// A record holding a value, met by [`Pages`] (invalid records and tombstones are not met).
pub(crate) struct Candidate {
    pub(crate) address: Address,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
}

/// The records holding a value in a log's pages from its `begin` up to `end`, one read's worth
/// at a time: pages below `head` from the device in scan reads, the others page by page from
/// memory under the log's epoch protection (a page that left memory meanwhile is read from the
/// device, where it is by then). Only records below `end` are met. The caller makes sure every
/// record below `end` is written and that nothing truncates the log while it walks.
pub(crate) struct Pages<'l, D: Disk> {
    log: &'l HybridLog<D>,
    end: Address,
    next_page: u64,
    end_page: u64,
}

impl<'l, D: Disk> Pages<'l, D> {
    pub(crate) fn new(log: &'l HybridLog<D>, end: Address) -> Self {
        let geo = log.geometry();
        Self {
            log,
            end,
            next_page: geo.page(log.begin()),
            end_page: geo.page(end) + u64::from(geo.offset(end) != 0),
        }
    }

    /// The next read's records; `None` once every page was read (and after an error).
    fn next_read(&mut self) -> Option<Result<Vec<Candidate>>> {
        if self.next_page >= self.end_page {
            return None;
        }
        let read = self.read();
        if read.is_err() {
            self.stop();
        }
        Some(read)
    }

    /// Ends the walk: [`Pages::next_read`] returns `None` from now on.
    fn stop(&mut self) {
        self.next_page = self.end_page;
    }

    fn read(&mut self) -> Result<Vec<Candidate>> {
        let geo = self.log.geometry();
        let mut found = Vec::new();
        let head_page = geo.page(self.log.head());
        let first = self.next_page;
        if first < head_page {
            let count = pages_per_read(self.log)
                .min(head_page - first)
                .min(self.end_page - first);
            self.read_device(first, count, &mut found)?;
            self.next_page += count;
        } else {
            if !self.read_memory(first, &mut found)? {
                self.read_device(first, 1, &mut found)?;
            }
            self.next_page += 1;
        }
        Ok(found)
    }

    /// The records of pages `first..first + count` (all below head when read: from the
    /// device).
    fn read_device(&self, first: u64, count: u64, out: &mut Vec<Candidate>) -> Result<()> {
        let geo = self.log.geometry();
        let page_size = self.log.page_size();
        let buf = read_pages(self.log, first, count)?;
        let begin = self.log.begin();
        for (k, bytes) in buf.as_slice().chunks_exact(page_size).enumerate() {
            for_each_record(geo, first + k as u64, bytes, begin, |address, rec| {
                if address < self.end && !rec.info().invalid() && !rec.state().tombstone() {
                    out.push(Candidate {
                        address,
                        key: rec.key().to_vec(),
                        value: rec.value().to_vec(),
                    });
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The records of page `page` from memory; `false` if the page has left memory (read it
    /// from the device then).
    fn read_memory(&self, page: u64, out: &mut Vec<Candidate>) -> Result<bool> {
        let geo = self.log.geometry();
        let g = self.log.epoch().protect()?;
        if page < geo.page(self.log.head()) {
            return Ok(false);
        }
        // Under `g`, the page stays in memory (head may move, its frame is not reused).
        let start = geo.page_start(page).raw() + first_record_offset(page) as u64;
        let mut a = Address::new(start);
        let page_end = geo.page_start(page + 1);
        let mut buf = crate::core::record::ValueBuf::default();
        while a < self.end && a < page_end {
            let Some(rec) = self.log.record_in_page(a)? else {
                break;
            };
            if !rec.info().invalid() {
                if let crate::core::record::ValueRead::Live = rec.read_value(&mut buf)? {
                    out.push(Candidate {
                        address: a,
                        key: rec.key_bytes(),
                        value: buf.bytes().to_vec(),
                    });
                }
            }
            a = Address::new(a.raw() + rec.size() as u64);
        }
        drop(g);
        Ok(true)
    }
}

/// Which of one read's records a [`Scan`] yields.
pub(crate) trait Select {
    /// The pairs to yield of `read` (records of one read, in address order).
    ///
    /// # Errors
    /// Device and corruption errors of the lookups it makes.
    fn select(&mut self, read: Vec<Candidate>) -> Result<Vec<Pair>>;
}

/// A stream of pairs: the records [`Pages`] meets that `S` selects. Ends after an error.
pub(crate) struct Scan<'l, D: Disk, S> {
    pages: Pages<'l, D>,
    select: S,
    ready: std::collections::VecDeque<Pair>,
}

impl<'l, D: Disk, S: Select> Scan<'l, D, S> {
    pub(crate) fn new(pages: Pages<'l, D>, select: S) -> Self {
        Self {
            pages,
            select,
            ready: std::collections::VecDeque::new(),
        }
    }
}

impl<D: Disk, S: Select> Iterator for Scan<'_, D, S> {
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(Ok(p));
            }
            let selected = self
                .pages
                .next_read()?
                .and_then(|read| self.select.select(read));
            match selected {
                Ok(pairs) => self.ready.extend(pairs),
                Err(e) => {
                    self.pages.stop();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The records of an engine's log that are their key's newest below `end` ([`LiveScan`]).
pub(crate) struct NewestBelow<'e, D: Disk> {
    engine: &'e Engine<D>,
    end: Address,
}

impl<D: Disk> Select for NewestBelow<'_, D> {
    fn select(&mut self, read: Vec<Candidate>) -> Result<Vec<Pair>> {
        let e = self.engine;
        let mut pairs = Vec::new();
        for c in read {
            let key = Encoded::from_bytes(&c.key);
            let hash = KeyHash::new(e.hasher.rehash(&c.key)?);
            if e.newest_below(&key, hash, self.end)? == Some(c.address) {
                pairs.push((c.key, c.value));
            }
        }
        Ok(pairs)
    }
}

/// Streams the live pairs of the log as of its creation (`end`: the tail then): each key that
/// had a live value then is yielded once, with a value it held during the scan. A record at
/// `x` is yielded iff it is its key's newest record below `end` (records at `end` and above
/// were written after the scan began and are not visited) and not a deletion. That record can
/// only change while the scan runs by an in-place update (the value read is then one the key
/// held during the scan), or by compaction and truncation, which the scan excludes by holding
/// their claim until it is dropped (also once it has ended). Memory: one scan read (or one
/// page) of records at a time.
pub(crate) struct LiveScan<'e, D: Disk> {
    _claim: MaintenanceClaim<'e>,
    scan: Scan<'e, D, NewestBelow<'e, D>>,
}

impl<D: Disk> LiveScan<'_, D> {
    /// Where the scan ends: the log's tail when it was created.
    pub(crate) fn end(&self) -> Address {
        self.scan.select.end
    }
}

impl<D: Disk> Engine<D> {
    /// Starts a [`LiveScan`].
    ///
    /// # Errors
    /// [`Error::Busy`] while a compaction or truncation runs, or when called from inside an
    /// operation of this store; [`Error::Config`] for a store with an unknown context hash.
    pub(crate) fn live_scan(&self) -> Result<LiveScan<'_, D>> {
        if self.epoch.is_protected_here() {
            return Err(Error::Busy(
                "a scan cannot start inside an operation of this store: it waits for every \
                 operation in flight",
            ));
        }
        let claim = self.claim_maintenance()?;
        self.hasher.check()?;
        let end = self.hlog.tail_address();
        // Every record below `end` was allocated by an operation in flight now or earlier:
        // once those have left, every one of them is written.
        self.wait_epoch_safe();
        let select = NewestBelow { engine: self, end };
        Ok(LiveScan {
            _claim: claim,
            scan: Scan::new(Pages::new(&self.hlog, end), select),
        })
    }

    /// The address of `key`'s newest record below `end`, if any (records below `begin`
    /// excluded). For scans, which hold the maintenance claim.
    pub(crate) fn newest_below(
        &self,
        key: &Encoded,
        hash: KeyHash,
        end: Address,
    ) -> Result<Option<Address>> {
        let begin = self.hlog.begin();
        let found = {
            // Not `Engine::protect`: a scan is not slowed down while the log is past its
            // limit, since it holds off the compaction that would bring the log back.
            let g = self.epoch.protect()?;
            let (found, _) = self.retry(&g, &mut None, |g, _| {
                let Some(entry) = self.index.find_entry(g, hash).map_err(Stop::from)? else {
                    return Ok(Err(None));
                };
                let head = self.hlog.head();
                let mut a = self.log_head(&entry)?;
                while !a.is_invalid() && a >= head {
                    let rec = self.hlog.record(a)?;
                    if a < end && !rec.info().invalid() && rec.key_is(key) {
                        return Ok(Err(Some(a)));
                    }
                    a = backwards(a, rec.info().prev())?;
                }
                // Ok: continue on the device at `a`.
                Ok(if !a.is_invalid() && a >= begin {
                    Ok(a)
                } else {
                    Err(None)
                })
            })?;
            found
        };
        let mut a = match found {
            Err(done) => return Ok(done),
            Ok(a) => a,
        };
        loop {
            let bytes = crate::ops::pending::block_on(self.fetch(a))?;
            let rec = bytes.record(a)?;
            if a < end && !rec.info().invalid() && rec.key() == key.bytes() {
                return Ok(Some(a));
            }
            a = backwards(a, rec.info().prev())?;
            if a.is_invalid() || a < begin {
                return Ok(None);
            }
        }
    }
}

impl<D: Disk> Iterator for LiveScan<'_, D> {
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        self.scan.next()
    }
}
