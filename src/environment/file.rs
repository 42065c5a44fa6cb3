//! A file opened for positional I/O, with O_DIRECT when the file system accepts it, and atomic
//! replacement of small files (checkpoint metadata).
//!
//! Invariants:
//! - [`File::is_direct`] tells how the file really was opened: a request for O_DIRECT that the file
//!   system refuses with `EINVAL` (tmpfs, some FUSE and network file systems) silently degrades to
//!   buffered I/O, and the caller learns it from the flag [`File::open`] returns. With O_DIRECT,
//!   offsets, lengths and buffer addresses must be multiples of the logical block size (4096 is
//!   always enough); the kernel rejects anything else with `EINVAL`. [`File::direct_block`] is
//!   the block size the owner reads in (4096 unless it learned a smaller one of the device, see
//!   [`File::with_direct_block`]): a direct read that returns a count that is not a multiple of
//!   it has met the end of the file, and a shorter multiple is continued at an offset aligned to
//!   it.
//! - [`File::read_at`] and [`File::write_at`] never report a partial transfer as complete: reads
//!   stop only at end of file (returning the count read), writes either write every byte or fail.
//!   `EINTR` is retried; it is not an error.
//! - [`write_atomic`] leaves either the old or the new contents at `path`, never a mix, even after a
//!   crash: the data is made durable before the rename, and the rename before it returns.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Block size that satisfies O_DIRECT on every file system we run on: the default
/// [`File::direct_block`].
const DIRECT_BLOCK: usize = 4096;

/// A file for positional reads and writes; several threads may use it at once (`&self` methods).
#[derive(Debug)]
pub struct File {
    inner: std::fs::File,
    direct: bool,
    /// The O_DIRECT block size reads are aligned to (a power of two, at most 4096).
    block: usize,
}

impl File {
    /// Opens `path` for reading and writing, creating it if `create`.
    ///
    /// With `direct`, tries O_DIRECT first and falls back to buffered I/O if the file system refuses
    /// it (`EINVAL`). Returns the file and whether O_DIRECT is in effect.
    ///
    /// # Errors
    /// The error of `open(2)`, e.g. `NotFound` when `!create` and the file does not exist.
    pub fn open(path: &Path, direct: bool, create: bool) -> io::Result<(File, bool)> {
        let direct_open = match (direct, o_direct_flag()) {
            (true, Some(flag)) => Some(move || Self::open_with(path, create, flag)),
            _ => None,
        };
        let (inner, direct) = open_with_fallback(direct_open, || Self::open_with(path, create, 0))?;
        Ok((
            File {
                inner,
                direct,
                block: DIRECT_BLOCK,
            },
            direct,
        ))
    }

    /// Sets [`File::direct_block`]: the device's logical block size, which the owner aligns its
    /// direct reads to. Ignored unless it is a power of two of at most 4096.
    #[must_use]
    pub fn with_direct_block(mut self, block: usize) -> Self {
        if block.is_power_of_two() && block <= DIRECT_BLOCK {
            self.block = block;
        }
        self
    }

    /// The block size direct reads of this file are aligned to (default 4096). A direct read
    /// returning a count that is not a multiple of it has met the end of the file.
    #[must_use]
    pub fn direct_block(&self) -> usize {
        self.block
    }

    fn open_with(path: &Path, create: bool, custom_flags: i32) -> io::Result<std::fs::File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(custom_flags)
            .open(path)
    }

    /// Whether the file was opened with O_DIRECT.
    #[must_use]
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Reads into `buf` from `offset` until `buf` is full or the end of the file. Returns the count
    /// read: less than `buf.len()` only at end of file.
    ///
    /// # Errors
    /// The error of `pread(2)` (never `EINTR`, which is retried).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    // With O_DIRECT a block-misaligned count can only come from the end of the
                    // file, and asking again at a misaligned offset would fail with EINVAL.
                    if self.direct && n % self.block != 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    /// The error of `pwrite(2)` (never `EINTR`, which is retried), or `WriteZero` if the kernel
    /// accepts no bytes. Some bytes may have been written when an error is returned.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // write_all_at already retries EINTR and short writes, and fails with WriteZero on a
        // zero-byte write instead of looping forever.
        self.inner.write_all_at(buf, offset)
    }

    /// Makes the file's data (and the metadata needed to read it back, such as its length) durable:
    /// `fdatasync(2)`.
    ///
    /// # Errors
    /// The error of `fdatasync(2)`. After a failure the state of the written data is unknown (the
    /// kernel may have dropped the dirty pages); do not expect a retry to repair it.
    pub fn sync(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// Opens with `direct_open` if given, falling back to `buffered_open` if that is refused with
/// `EINVAL` (the file system does not do O_DIRECT). Returns the file and whether it is direct.
fn open_with_fallback<D, B>(
    direct_open: Option<D>,
    buffered_open: B,
) -> io::Result<(std::fs::File, bool)>
where
    D: FnOnce() -> io::Result<std::fs::File>,
    B: FnOnce() -> io::Result<std::fs::File>,
{
    if let Some(direct_open) = direct_open {
        match direct_open() {
            Ok(file) => return Ok((file, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((buffered_open()?, false))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn o_direct_flag() -> Option<i32> {
    Some(libc::O_DIRECT)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn o_direct_flag() -> Option<i32> {
    None
}

/// Replaces the contents of `path` with `bytes` atomically and durably: writes a temporary file in
/// the same directory, syncs it, renames it over `path` and syncs the directory.
///
/// # Errors
/// The first failing step's error; the temporary file is removed on failure (best effort), and
/// `path` then still holds its old contents (or does not exist, if it did not).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Unique per process and call, so concurrent writers of different files (or of the same file)
    // never share a temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all_at(bytes, 0)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir)
}

/// Makes the directory's entries (created, renamed, removed files) durable: `fsync(2)` of the
/// directory.
///
/// # Errors
/// The error of opening or syncing the directory.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::AlignedBuf;

    #[test]
    fn buffered_roundtrip_and_short_read_at_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let (f, direct) = File::open(&path, false, true).unwrap();
        assert!(!direct);
        assert!(!f.is_direct());
        let len = || std::fs::metadata(&path).unwrap().len();
        assert_eq!(len(), 0);
        f.write_at(b"hello world", 3).unwrap();
        assert_eq!(len(), 14);
        let mut buf = [0xffu8; 32];
        let n = f.read_at(&mut buf, 0).unwrap();
        assert_eq!(n, 14);
        assert_eq!(&buf[..3], &[0, 0, 0]);
        assert_eq!(&buf[3..14], b"hello world");
        // Past the end: nothing, not an error.
        assert_eq!(f.read_at(&mut buf, 100).unwrap(), 0);
        f.sync().unwrap();
    }

    #[test]
    fn open_without_create_of_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = File::open(&dir.path().join("missing"), true, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn direct_roundtrip_or_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let (f, direct) = File::open(&path, true, true).unwrap();
        assert_eq!(direct, f.is_direct());
        println!("O_DIRECT in {}: {direct}", dir.path().display());
        let mut w = AlignedBuf::zeroed(3 * 4096, 4096);
        for (i, b) in w.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        f.write_at(w.as_slice(), 4096).unwrap();
        f.sync().unwrap();
        let mut r = AlignedBuf::zeroed(4 * 4096, 4096);
        // Reading past the end returns what exists (the aligned file end).
        let n = f.read_at(r.as_mut_slice(), 4096).unwrap();
        assert_eq!(n, 3 * 4096);
        assert_eq!(&r.as_slice()[..n], w.as_slice());
        // The hole before the written range reads as zeros.
        let mut h = AlignedBuf::zeroed(4096, 4096);
        h.as_mut_slice().fill(9);
        assert_eq!(f.read_at(h.as_mut_slice(), 0).unwrap(), 4096);
        assert!(h.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn direct_read_of_misaligned_file_end_stops_at_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let (f, _) = File::open(&path, true, false).unwrap();
        let mut r = AlignedBuf::zeroed(8192, 4096);
        let n = f.read_at(r.as_mut_slice(), 0).unwrap();
        assert_eq!(n, 5000);
        assert!(r.as_slice()[..5000].iter().all(|&b| b == 7));
    }

    #[test]
    fn o_direct_refusal_falls_back_to_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let buffered = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        let refused = || Err(io::Error::from_raw_os_error(libc::EINVAL));
        let (_, direct) = open_with_fallback(Some(refused), buffered).unwrap();
        assert!(!direct);
        // Other errors are not "O_DIRECT unsupported": they are reported, not papered over.
        let denied = || Err(io::Error::from_raw_os_error(libc::EACCES));
        let err = open_with_fallback(Some(denied), buffered).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        let (_, direct) = open_with_fallback(Some(buffered), buffered).unwrap();
        assert!(direct);
        let (_, direct) =
            open_with_fallback(None::<fn() -> io::Result<std::fs::File>>, buffered).unwrap();
        assert!(!direct);
    }

    #[test]
    fn direct_on_tmpfs_works_either_way() {
        // tmpfs refused O_DIRECT before Linux 6.6; either way the file must be usable.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            println!("skipping: no /dev/shm");
            return;
        }
        let Ok(dir) = tempfile::tempdir_in(shm) else {
            println!("skipping: /dev/shm not writable");
            return;
        };
        let (f, direct) = File::open(&dir.path().join("t"), true, true).unwrap();
        println!("O_DIRECT on tmpfs: {direct}");
        let mut buf = AlignedBuf::zeroed(4096, 4096);
        buf.as_mut_slice().fill(5);
        f.write_at(buf.as_slice(), 0).unwrap();
        let mut back = AlignedBuf::zeroed(4096, 4096);
        assert_eq!(f.read_at(back.as_mut_slice(), 0).unwrap(), 4096);
        assert_eq!(back.as_slice(), buf.as_slice());
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        write_atomic(&path, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("meta")]);
        sync_dir(dir.path()).unwrap();
    }

    #[test]
    fn write_atomic_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("meta");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
