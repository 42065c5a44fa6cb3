//! Devices: where log pages go when they leave memory.
//!
//! All I/O of the store goes through the [`Disk`] trait; it is the seam for fault injection
//! ([`faulty_disk::FaultyDisk`]) and for the purely in-memory [`null_disk::NullDisk`].
//!
//! Contract every implementation keeps:
//! - Offsets are logical log offsets (bytes from log address 0). The device maps them to its own
//!   storage (segment files for [`file_system_disk::FileSystemDisk`]).
//! - Offsets, lengths and buffer addresses passed to writes are multiples of
//!   [`Disk::alignment`], those passed to reads multiples of [`Disk::read_alignment`] (which
//!   divides it: a device may read in smaller units, its sectors, than the store writes pages
//!   in); the store guarantees it, a device may reject anything else with `InvalidInput`.
//! - Each callback runs exactly once, on any thread, after the I/O finished or failed. It may run
//!   before the call returns. It must not block for long (it runs on the device's I/O threads).
//! - A read of a range never written returns zeros (or a short count); it is not an error.
//! - [`Disk::flush`] returns only once every write whose callback has already run is durable.

use std::io;

pub mod faulty_disk;
pub mod file_system_disk;
pub mod null_disk;
mod sector;
mod segment;
mod thread_pool;
#[cfg(target_os = "linux")]
mod uring;

/// Completion of an asynchronous I/O: the byte count, or the error.
pub type IoCallback = Box<dyn FnOnce(io::Result<usize>) + Send + 'static>;

/// A block device under the hybrid log.
pub trait Disk: Send + Sync + 'static {
    /// Required alignment (bytes, a power of two) of offsets, lengths and buffer addresses.
    fn alignment(&self) -> usize;

    /// Required alignment (bytes, a power of two dividing [`Disk::alignment`]) of the offsets,
    /// lengths and buffer addresses of reads: the granularity of a record fetch, which reads
    /// the aligned units covering the record. Default: [`Disk::alignment`].
    fn read_alignment(&self) -> usize {
        self.alignment()
    }

    /// Writes `len` bytes from `buf` at log offset `offset`, then calls `callback`.
    ///
    /// # Safety
    /// `buf` must be valid for reads of `len` bytes, and those bytes must stay allocated and
    /// unmodified until `callback` has been called. `offset`, `len` and `buf` must be multiples of
    /// [`Disk::alignment`].
    unsafe fn write_async(&self, offset: u64, buf: *const u8, len: usize, callback: IoCallback);

    /// Reads `len` bytes at log offset `offset` into `buf`, then calls `callback`.
    ///
    /// # Safety
    /// `buf` must be valid for writes of `len` bytes and not accessed by anyone else until
    /// `callback` has been called. `offset`, `len` and `buf` must be multiples of
    /// [`Disk::read_alignment`].
    unsafe fn read_async(&self, offset: u64, buf: *mut u8, len: usize, callback: IoCallback);

    /// Makes every write that has completed so far durable (fsync of the files written).
    ///
    /// # Errors
    /// The error of the underlying sync.
    fn flush(&self) -> io::Result<()>;

    /// Releases storage wholly below log offset `offset` (deletes whole segment files). Reads
    /// below it afterwards return zeros.
    ///
    /// # Errors
    /// The error of removing a file.
    fn truncate_before(&self, offset: u64) -> io::Result<()>;

    /// Bytes the log occupies on the device now (the segment files' sizes); 0 for a device that
    /// keeps nothing.
    ///
    /// # Errors
    /// The error of listing the storage.
    fn storage_bytes(&self) -> io::Result<u64> {
        Ok(0)
    }

    /// Whether pages written here really leave memory (false for [`null_disk::NullDisk`], which
    /// keeps nothing: a store over it must never evict).
    fn is_persistent(&self) -> bool {
        true
    }

    /// A short description of the backend for reports, e.g. `"io_uring, O_DIRECT"`.
    fn describe(&self) -> String;

    /// Where checkpoints of a log on this device live (`None`: the device keeps nothing, so
    /// there is nothing to checkpoint).
    fn checkpoint_root(&self) -> Option<std::path::PathBuf> {
        None
    }
}

/// A device that opens devices of its own kind for the other logs of one store: R2Kv keeps
/// its cold log and its cold index's store in sub-devices of the device it is given.
pub trait SubDevice: Disk + Sized {
    /// The sub-device `name` (a plain name, no path separators), created if needed; opening it
    /// again later finds what was written to it.
    ///
    /// # Errors
    /// As the device's constructor.
    fn sub_device(&self, name: &str) -> crate::core::status::Result<Self>;

    /// Removes the sub-device `name` and everything in it (nothing if it does not exist).
    ///
    /// # Errors
    /// The error of removing it.
    fn remove_sub_device(&self, name: &str) -> crate::core::status::Result<()>;
}

impl<D: SubDevice> SubDevice for std::sync::Arc<D> {
    fn sub_device(&self, name: &str) -> crate::core::status::Result<Self> {
        (**self).sub_device(name).map(std::sync::Arc::new)
    }
    fn remove_sub_device(&self, name: &str) -> crate::core::status::Result<()> {
        (**self).remove_sub_device(name)
    }
}

impl<D: Disk + ?Sized> Disk for std::sync::Arc<D> {
    fn alignment(&self) -> usize {
        (**self).alignment()
    }
    fn read_alignment(&self) -> usize {
        (**self).read_alignment()
    }
    unsafe fn write_async(&self, offset: u64, buf: *const u8, len: usize, callback: IoCallback) {
        // SAFETY: forwarded with the caller's contract unchanged.
        unsafe { (**self).write_async(offset, buf, len, callback) }
    }
    unsafe fn read_async(&self, offset: u64, buf: *mut u8, len: usize, callback: IoCallback) {
        // SAFETY: forwarded with the caller's contract unchanged.
        unsafe { (**self).read_async(offset, buf, len, callback) }
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn truncate_before(&self, offset: u64) -> io::Result<()> {
        (**self).truncate_before(offset)
    }
    fn storage_bytes(&self) -> io::Result<u64> {
        (**self).storage_bytes()
    }
    fn is_persistent(&self) -> bool {
        (**self).is_persistent()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn checkpoint_root(&self) -> Option<std::path::PathBuf> {
        (**self).checkpoint_root()
    }
}
