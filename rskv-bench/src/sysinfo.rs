//! What the kernel tells about this process: resident memory and storage I/O.

use std::path::Path;

use crate::results::ProcIo;

/// A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Current resident set size.
pub fn rss() -> u64 {
    status_bytes("VmRSS").unwrap_or(0)
}

/// Peak resident set size of this process so far.
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM").unwrap_or(0)
}

// The type is a figure of the run's result (`results`); reading it from the kernel is here.
impl ProcIo {
    pub fn now() -> ProcIo {
        let Ok(io) = std::fs::read_to_string("/proc/self/io") else {
            return ProcIo::default();
        };
        let field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        ProcIo {
            read_bytes: field("read_bytes:"),
            write_bytes: field("write_bytes:"),
        }
    }

    pub fn since(self, earlier: ProcIo) -> ProcIo {
        ProcIo {
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

/// CPU time, in clock ticks: busy time of the whole machine (/proc/stat, all CPUs, idle and
/// iowait excluded) and of this process (/proc/self/stat utime + stime).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    pub machine_busy: u64,
    pub this_process: u64,
}

impl CpuTicks {
    pub fn now() -> CpuTicks {
        let machine_busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.strip_prefix("cpu ")?.to_string();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal ...
                Some(v.iter().sum::<u64>() - v.get(3)? - v.get(4)?)
            })
            .unwrap_or(0);
        let this_process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        CpuTicks {
            machine_busy,
            this_process,
        }
    }

    /// CPUs' worth of time (e.g. 0.5 = half a core) other processes kept busy since
    /// `earlier`, over `secs` seconds (USER_HZ is 100 on Linux).
    pub fn others_since(self, earlier: CpuTicks, secs: f64) -> f64 {
        let machine = self.machine_busy.saturating_sub(earlier.machine_busy);
        let mine = self.this_process.saturating_sub(earlier.this_process);
        machine.saturating_sub(mine) as f64 / 100.0 / secs.max(1e-9)
    }
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, so sparse files count what
/// they use).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// `1.50 GiB`-style size.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}
