//! Sequential scans of the log on the device: large reads of whole pages (O_DIRECT when the
//! device uses it, never through the in-memory ring), parsed into records. Compaction and
//! iteration read the log this way.
#![forbid(unsafe_code)]

use crate::core::address::{Address, PageGeometry};
use crate::core::alloc::AlignedBuf;
use crate::core::record::{first_record_offset, DiskRecord, HEADER_BYTES};
use crate::core::status::{Error, Result};
use crate::device::Disk;
use crate::ops::Engine;

/// Bytes one scan read fetches (whole pages; at least one page).
pub(crate) const SCAN_READ: usize = 4 << 20;

impl<D: Disk> Engine<D> {
    /// Pages one scan read covers.
    pub(crate) fn scan_pages_per_read(&self) -> u64 {
        (SCAN_READ / self.hlog.page_size()).max(1) as u64
    }

    /// Reads pages `first..first + count` from the device in one request. Every one of them
    /// must be below `safe_head` (flushed, and read nowhere in memory).
    ///
    /// # Errors
    /// Device errors.
    pub(crate) fn read_pages(&self, first: u64, count: u64) -> Result<AlignedBuf> {
        let geo = self.hlog.geometry();
        self.hlog.read_sync(
            geo.page_start(first).raw(),
            count as usize * self.hlog.page_size(),
        )
    }
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
pub(crate) fn for_each_record(
    geo: PageGeometry,
    page: u64,
    bytes: &[u8],
    from: Address,
    mut f: impl FnMut(Address, DiskRecord<'_>) -> Result<()>,
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
