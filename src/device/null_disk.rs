//! A device that keeps nothing: for purely in-memory stores and tests.
//!
//! Invariants: writes complete at once (on the calling thread) with the full count and are
//! discarded; reads complete at once with zeros and the full count. Requests are checked like on a
//! real device (multiples of [`NullDisk::ALIGNMENT`]), so alignment bugs show up in memory-only
//! tests too. [`Disk::is_persistent`] is false: a store over it must never evict a page, since it
//! could not read it back.

use std::io;

use super::{Disk, IoCallback};

/// The in-memory-only device.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullDisk;

impl NullDisk {
    /// Alignment demanded of requests: the same as a file-system disk, so a store behaves the same
    /// over either.
    pub const ALIGNMENT: usize = 4096;

    /// A new null device.
    #[must_use]
    pub fn new() -> Self {
        Self
    }

    fn check(offset: u64, buf: *const u8, len: usize) -> io::Result<()> {
        let align = Self::ALIGNMENT;
        if offset % align as u64 != 0 || len % align != 0 || (buf as usize) % align != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("I/O of {len} bytes at offset {offset:#x} from {buf:p} is not aligned to {align}"),
            ));
        }
        if len > 0 && buf.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "I/O into a null buffer",
            ));
        }
        Ok(())
    }
}

impl Disk for NullDisk {
    fn alignment(&self) -> usize {
        Self::ALIGNMENT
    }

    unsafe fn write_async(&self, offset: u64, buf: *const u8, len: usize, callback: IoCallback) {
        callback(Self::check(offset, buf, len).map(|()| len));
    }

    unsafe fn read_async(&self, offset: u64, buf: *mut u8, len: usize, callback: IoCallback) {
        let result = Self::check(offset, buf, len).map(|()| {
            if len > 0 {
                // SAFETY: the caller guarantees `buf` is valid for writes of `len` bytes and not
                // accessed by anyone else until the callback has run; it is non-null (checked).
                unsafe { std::ptr::write_bytes(buf, 0, len) };
            }
            len
        });
        callback(result);
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn truncate_before(&self, _offset: u64) -> io::Result<()> {
        Ok(())
    }

    fn is_persistent(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "null (in memory only)".into()
    }
}

/// Keeps nothing, like itself.
impl super::SubDevice for NullDisk {
    fn sub_device(&self, _name: &str) -> crate::core::status::Result<Self> {
        Ok(NullDisk)
    }
    fn remove_sub_device(&self, _name: &str) -> crate::core::status::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::AlignedBuf;
    use std::sync::{Arc, Mutex};

    fn capture() -> (Arc<Mutex<Option<io::Result<usize>>>>, IoCallback) {
        let slot = Arc::new(Mutex::new(None));
        let s = Arc::clone(&slot);
        (slot, Box::new(move |r| *s.lock().unwrap() = Some(r)))
    }

    #[test]
    fn writes_vanish_and_reads_are_zeros() {
        let disk = NullDisk::new();
        assert!(!disk.is_persistent());
        assert_eq!(disk.describe(), "null (in memory only)");
        assert_eq!(disk.alignment(), 4096);
        let mut buf = AlignedBuf::zeroed(8192, 4096);
        buf.as_mut_slice().fill(0xAB);
        let (slot, cb) = capture();
        // SAFETY: buf is valid and outlives the synchronous call.
        unsafe { disk.write_async(4096, buf.as_ptr(), 8192, cb) };
        assert_eq!(slot.lock().unwrap().take().unwrap().unwrap(), 8192);

        let (slot, cb) = capture();
        // SAFETY: as above; the callback runs before the call returns.
        unsafe { disk.read_async(4096, buf.as_mut_ptr(), 8192, cb) };
        assert_eq!(slot.lock().unwrap().take().unwrap().unwrap(), 8192);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        disk.flush().unwrap();
        disk.truncate_before(1 << 20).unwrap();
    }

    #[test]
    fn misaligned_requests_are_refused() {
        let disk = NullDisk::new();
        let mut buf = AlignedBuf::zeroed(8192, 4096);
        buf.as_mut_slice().fill(1);
        let (slot, cb) = capture();
        // SAFETY: buf is valid for the range; the request is refused before touching it.
        unsafe { disk.read_async(100, buf.as_mut_ptr(), 4096, cb) };
        let err = slot.lock().unwrap().take().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            buf.as_slice().iter().all(|&b| b == 1),
            "refused read must not write"
        );
        let (slot, cb) = capture();
        // SAFETY: as above.
        unsafe { disk.write_async(0, buf.as_ptr(), 10, cb) };
        assert!(slot.lock().unwrap().take().unwrap().is_err());
    }
}
