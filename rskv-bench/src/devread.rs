//! The device's sequential read rate, the reference for compaction speed: the store's own
//! files in its data directory (RsKv's log segments), read after the store was dropped, in
//! 4 MiB requests with O_DIRECT (so the page cache serves nothing), first by one reader, then
//! by as many readers as a compaction pass has workers, taking requests from one queue as
//! compaction's workers take pages. Each measurement stops after 1 GiB or 3 s.
//!
//! The files were written moments before: on a virtual disk the host's cache may still hold
//! them, which a compaction reading the same log would enjoy as well.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::results::DeviceRead;
use crate::sysinfo::human_bytes;

/// Bytes per read request: what RsKv's scans read at once.
const REQUEST: usize = 4 << 20;
/// O_DIRECT's alignment of buffers, offsets and lengths.
const ALIGN: usize = 4096;
/// Each measurement ends after this much data or this long.
const MAX_BYTES: u64 = 1 << 30;
const MAX_TIME: Duration = Duration::from_secs(3);

/// Measures reading the files under `dir` with 1 and then `threads` readers.
pub fn measure(dir: &Path, threads: usize) -> anyhow::Result<DeviceRead> {
    let mut files = Vec::new();
    list_files(dir, &mut files);
    files.sort_by_key(|f| std::cmp::Reverse(f.1));
    let total: u64 = files.iter().map(|f| f.1).sum();
    if total < REQUEST as u64 {
        bail!(
            "the data directory holds {} of files: too little to time a sequential read",
            human_bytes(total)
        );
    }
    let direct = files.iter().all(|(p, _)| open(p, true).is_ok());
    let opened: Vec<File> = files
        .iter()
        .map(|(p, _)| open(p, direct).with_context(|| format!("opening {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    // Every request of every file, largest file first.
    let requests: Vec<(usize, u64)> = files
        .iter()
        .enumerate()
        .flat_map(|(i, (_, len))| {
            (0..len.div_ceil(REQUEST as u64)).map(move |r| (i, r * REQUEST as u64))
        })
        .collect();
    let (bytes_1, secs_1, used) = timed(&opened, &requests, 1)?;
    // The second measurement reads what the first did not, when enough is left.
    let rest = if requests.len() - used >= 16 {
        &requests[used..]
    } else {
        &requests[..]
    };
    let threads = threads.max(1);
    let (bytes_n, secs_n, _) = timed(&opened, rest, threads)?;
    Ok(DeviceRead {
        what: format!(
            "{} 4 MiB reads of the store's {} file{} ({} in all), after the run",
            if direct {
                "O_DIRECT"
            } else {
                "buffered (O_DIRECT refused: the page cache may serve them)"
            },
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            human_bytes(total)
        ),
        direct,
        bytes_1,
        mb_s_1: bytes_1 as f64 / secs_1.max(1e-9) / 1e6,
        threads,
        bytes_n,
        mb_s_n: bytes_n as f64 / secs_n.max(1e-9) / 1e6,
    })
}

fn open(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// Regular files under `dir` (recursively) of at least one aligned block, with their sizes.
fn list_files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => list_files(&e.path(), out),
            Ok(m) if m.is_file() && m.len() >= ALIGN as u64 => out.push((e.path(), m.len())),
            _ => {}
        }
    }
}

/// `threads` readers take `requests` in order until they run out or a limit is reached.
/// Returns the bytes read, the seconds taken and the requests handed out.
fn timed(
    files: &[File],
    requests: &[(usize, u64)],
    threads: usize,
) -> anyhow::Result<(u64, f64, usize)> {
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    // An aligned window of a plain buffer (O_DIRECT wants aligned memory).
                    let mut raw = vec![0u8; REQUEST + ALIGN];
                    let off = raw.as_ptr().align_offset(ALIGN);
                    let buf = &mut raw[off..off + REQUEST];
                    loop {
                        if bytes.load(Ordering::Relaxed) >= MAX_BYTES || start.elapsed() >= MAX_TIME
                        {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(f, at)) = requests.get(i) else {
                            return Ok(());
                        };
                        let n = files[f].read_at(buf, at).context("reading a data file")?;
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("a reader panicked")))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    for r in results {
        r?;
    }
    Ok((
        bytes.into_inner(),
        secs,
        next.into_inner().min(requests.len()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_is_there() {
        let dir = std::env::temp_dir().join(format!("rskv-bench-devread-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), vec![7u8; 6 << 20]).unwrap();
        std::fs::write(dir.join("sub").join("b"), vec![9u8; 2 << 20]).unwrap();
        let r = measure(&dir, 2);
        let _ = std::fs::remove_dir_all(&dir);
        let r = r.unwrap();
        assert_eq!(r.bytes_1, 8 << 20, "{r:?}");
        assert!(r.mb_s_1 > 0.0 && r.mb_s_n > 0.0 && r.threads == 2, "{r:?}");
        assert!(r.what.contains("2 files"), "{}", r.what);
        // Too little to time.
        let empty =
            std::env::temp_dir().join(format!("rskv-bench-devread-e-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(measure(&empty, 1).is_err());
        let _ = std::fs::remove_dir_all(&empty);
    }
}
