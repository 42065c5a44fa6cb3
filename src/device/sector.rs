//! The device's read granularity: the smallest aligned unit an O_DIRECT read may fetch.
//!
//! Record fetches read the aligned sectors that cover a record (FASTER reads sectors, not
//! pages), so a 100-byte record costs one 512-byte read on a disk of 512-byte logical blocks
//! instead of a 4 KiB one. The granularity is learned once, when the device opens:
//! 1. `statx` with `STATX_DIO_READ_ALIGN | STATX_DIOALIGN` (Linux 6.1 and later; 6.14 for the
//!    read-only offset alignment) on an O_DIRECT file of the log's directory: the larger of
//!    the offset alignment for reads and the memory alignment;
//! 2. otherwise 512, the smallest logical block size devices have;
//! 3. either is then tried with a real direct read at an offset, length and buffer address that
//!    are multiples of it and of nothing larger; if the kernel refuses it, 4096 (what page I/O
//!    uses, and what O_DIRECT accepts on every file system we run on).
//!
//! Invariants: the result is a power of two from 512 to 4096 and divides 4096, so page writes
//! (4096-aligned) stay aligned to it and a page boundary is always a sector boundary.
//! Without O_DIRECT the page cache serves any alignment; [`BUFFERED_READ_ALIGNMENT`] is used.

use std::io;

use crate::core::alloc::AlignedBuf;
use crate::environment::file::File;

/// The largest read granularity: what page writes are aligned to.
pub(crate) const MAX_READ_ALIGNMENT: usize = 4096;

/// The smallest logical block size a block device has.
const MIN_SECTOR: usize = 512;

/// Read granularity without O_DIRECT. The page cache copies any range, so the cheapest read
/// is the smallest: record addresses are multiples of 8, so an 8-byte granularity reads exactly
/// the bytes asked for.
pub(crate) const BUFFERED_READ_ALIGNMENT: usize = 8;

/// The granularity of direct reads of `file` (opened with O_DIRECT, holding at least
/// [`MAX_READ_ALIGNMENT`] written bytes at offset 0). Never fails: anything unknown or refused
/// gives [`MAX_READ_ALIGNMENT`].
pub(crate) fn direct_read_alignment(file: &File) -> usize {
    let candidate = statx_read_alignment(file)
        .unwrap_or(MIN_SECTOR)
        .clamp(MIN_SECTOR, MAX_READ_ALIGNMENT);
    if candidate < MAX_READ_ALIGNMENT && probe_read(file, candidate).is_ok() {
        candidate
    } else {
        MAX_READ_ALIGNMENT
    }
}

/// A direct read of `unit` bytes at offset `unit`, into a buffer at an address that is a
/// multiple of `unit` but not of `2 * unit`: only a device that accepts `unit` alignment
/// serves it.
fn probe_read(file: &File, unit: usize) -> io::Result<()> {
    let mut buf = AlignedBuf::zeroed(2 * MAX_READ_ALIGNMENT, MAX_READ_ALIGNMENT);
    let n = file.read_at(&mut buf.as_mut_slice()[unit..2 * unit], unit as u64)?;
    if n == unit {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "probe file too short",
        ))
    }
}

/// What `statx` says, if it knows: the larger of the direct-read offset alignment and the
/// memory alignment, rounded up to a power of two.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn statx_read_alignment(file: &File) -> Option<usize> {
    use std::os::fd::AsRawFd;

    // SAFETY: `statx` is plain old data (integers and arrays of them), for which all zeros is a
    // valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the whole call (`file` is borrowed), the path is a
    // valid NUL-terminated empty string (with AT_EMPTY_PATH the call describes the descriptor
    // itself), and `stx` is a live, writable `statx` the kernel fills.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN | libc::STATX_DIO_READ_ALIGN,
            &mut stx,
        )
    };
    if r != 0 {
        return None;
    }
    let read_offset = if stx.stx_mask & libc::STATX_DIO_READ_ALIGN != 0 {
        stx.stx_dio_read_offset_align
    } else {
        0
    };
    // 0 means "not reported" (or, for the general one, no direct I/O at all).
    let offset = match read_offset {
        0 if stx.stx_mask & libc::STATX_DIOALIGN != 0 => stx.stx_dio_offset_align,
        0 => return None,
        o => o,
    };
    if offset == 0 {
        return None;
    }
    let unit = offset.max(stx.stx_dio_mem_align) as usize;
    Some(unit.next_power_of_two())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn statx_read_alignment(_file: &File) -> Option<usize> {
    None
}
