//! Crash test of R2Kv: a child process (this test binary, re-executed) applies a deterministic
//! stream of upserts, RMWs and deletes on one thread, checkpointing every few hundred
//! operations, while a second thread runs hot-to-cold and cold-to-cold compactions back to
//! back; the supervisor kills it with SIGKILL at a random moment (every third round right after
//! a pass began), recovers the store, and checks every key against the stream replayed up to
//! the recovered checkpoint. The stream position is itself a key of the store, written just
//! before each checkpoint by the thread that takes it, so the checkpoint covers exactly the
//! operations up to it. 1 MiB segments in both tiers, so truncations delete files while kills
//! land.
//!
//! `RSKV_CRASH_ROUNDS` sets the number of kills (default 10).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rskv::device::file_system_disk::{DiskOptions, FileSystemDisk};
use rskv::{CacheAdmission, ColdIndexConfig, Config, LogCompaction, R2Config, R2Kv};

type Kv = R2Kv<u64, u64, FileSystemDisk>;

const CHILD_ENV: &str = "RSKV_CRASH_R2_CHILD_DIR";
const KEYS: u64 = 3000;
/// Where the stream position lives.
const POSITION: u64 = u64::MAX;
const CHECKPOINT_EVERY: u64 = 400;

fn disk(dir: &Path) -> FileSystemDisk {
    FileSystemDisk::with_options(dir, DiskOptions::default().with_segment_size(1 << 20)).unwrap()
}

fn config() -> R2Config {
    R2Config::new()
        .hot(
            Config::new()
                .table_size(1 << 10)
                .page_size(4 << 10)
                .log_memory_size(64 << 10)
                .read_cache(64 << 10)
                .read_cache_admission(CacheAdmission::Every),
        )
        .hot_to_cold(LogCompaction::with_budget(1 << 40))
        .cold_to_cold(LogCompaction::with_budget(1 << 40))
        .cold_page_size(4 << 10)
        .cold_log_memory(32 << 10)
        .cold_index(
            ColdIndexConfig::new()
                .chunk_bits(6)
                .log_memory(64 << 10)
                .page_size(4 << 10)
                .log_budget(4 << 20),
        )
        .maintenance_interval(Duration::from_secs(3600))
}

/// Operation `n` (from 1) of the stream.
enum Op {
    Put(u64, u64),
    Add(u64, u64),
    Delete(u64),
}

fn op(n: u64) -> Op {
    let key = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % KEYS;
    match n % 8 {
        0 | 1 => Op::Add(key, n),
        2 => Op::Delete(key),
        _ => Op::Put(key, n),
    }
}

/// The state after operations `1..=n`.
fn model(n: u64) -> Vec<Option<u64>> {
    let mut m = vec![None; KEYS as usize];
    for i in 1..=n {
        match op(i) {
            Op::Put(k, v) => m[k as usize] = Some(v),
            Op::Add(k, d) => m[k as usize] = Some(m[k as usize].unwrap_or(0).wrapping_add(d)),
            Op::Delete(k) => m[k as usize] = None,
        }
    }
    m
}

/// A session RMW adding `.1` (wrapping) to key `.0`.
struct Wrapping(u64, u64);
impl rskv::RmwContext for Wrapping {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn rmw_initial(&self) -> u64 {
        self.1
    }
    fn rmw_copy(&self, old: &u64) -> u64 {
        old.wrapping_add(self.1)
    }
    fn complete(self, r: rskv::Result<rskv::Status, &rskv::Error>) {
        if let Err(e) = r {
            panic!("session rmw of key {} failed: {e}", self.0);
        }
    }
}

fn file(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.parent().unwrap().join(name)
}

fn read_count(dir: &Path, name: &str) -> u64 {
    std::fs::read_to_string(file(dir, name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Replaces a counter file by a rename, so a kill never leaves half of one.
fn write_count(dir: &Path, name: &str, v: u64) {
    let tmp = file(dir, &format!("{name}.tmp"));
    std::fs::write(&tmp, v.to_string()).unwrap();
    std::fs::rename(tmp, file(dir, name)).unwrap();
}

fn child(dir: &Path) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(3);
        }
    });
    let kv = std::sync::Arc::new(Kv::open(config(), disk(dir)).unwrap());
    let start = kv.get(&POSITION).unwrap().unwrap_or(0);
    write_count(dir, "checkpoints", 0);
    {
        let (kv, dir) = (kv.clone(), dir.to_path_buf());
        std::thread::spawn(move || {
            let mut passes = 0;
            loop {
                write_count(&dir, "pass-running", 1);
                let hot = kv.hot_markers();
                if hot.safe_head > hot.begin {
                    kv.compact_hot(hot.safe_head).unwrap();
                }
                let cold = kv.cold_markers();
                if cold.safe_head > cold.begin {
                    kv.compact_cold(cold.safe_head).unwrap();
                }
                passes += 1;
                write_count(&dir, "pass-running", 0);
                write_count(&dir, "passes", passes);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
    }
    let mut checkpoints = 0;
    // Half the rounds run the stream's RMWs through a session (they go pending on either
    // tier's device), the others through the blocking facade.
    let mut session = (start / CHECKPOINT_EVERY % 2 == 1).then(|| kv.start_session());
    for n in start + 1.. {
        match (op(n), session.as_mut()) {
            (Op::Put(k, v), _) => kv.insert(&k, &v).unwrap(),
            (Op::Add(k, d), Some(s)) => {
                // Completed before the next operation: a later upsert of the same key must
                // not overtake it (the model applies the stream in order).
                let _status = s.rmw(Wrapping(k, d)).unwrap();
                assert!(s.complete_pending(true));
            }
            (Op::Add(k, d), None) => {
                kv.rmw(&k, |old| old.unwrap_or(0).wrapping_add(d)).unwrap();
            }
            (Op::Delete(k), _) => kv.remove(&k).unwrap(),
        }
        if n % CHECKPOINT_EVERY == 0 {
            if let Some(s) = session.as_mut() {
                // The stream is ordered: pending RMWs land before the position is written.
                assert!(s.complete_pending(true));
            }
            kv.insert(&POSITION, &n).unwrap();
            kv.checkpoint().unwrap();
            checkpoints += 1;
            write_count(dir, "checkpoints", checkpoints);
        }
    }
}

#[test]
fn killed_r2kv_recovers_the_checkpointed_stream() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let rounds: usize = std::env::var("RSKV_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (mut last, mut advanced, mut in_pass, mut passes) = (0u64, 0, 0, 0);
    let started = Instant::now();
    for round in 0..rounds {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        for f in ["checkpoints", "passes", "pass-running"] {
            let _ = std::fs::remove_file(file(&store, f));
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "killed_r2kv_recovers_the_checkpointed_stream",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while read_count(&store, "checkpoints") < 2 && child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "round {round}: no checkpoint in 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if round % 3 == 1 {
            // Right after a pass began.
            while read_count(&store, "pass-running") == 0 && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "round {round}: no pass in 60 s");
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_micros(rng % 3000));
        } else {
            std::thread::sleep(Duration::from_millis(rng % 300));
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "round {round}: child exited on its own ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if read_count(&store, "pass-running") == 1 {
            in_pass += 1;
        }
        passes += read_count(&store, "passes");
        let kv = Kv::open(config(), disk(&store)).unwrap();
        let n = kv.get(&POSITION).unwrap().unwrap_or(0);
        assert!(
            n >= last,
            "round {round}: recovered position {n} went back from {last}"
        );
        if n > last {
            advanced += 1;
        }
        last = n;
        let want = model(n);
        for k in 0..KEYS {
            assert_eq!(
                kv.get(&k).unwrap(),
                want[k as usize],
                "round {round}: key {k} after recovering position {n}"
            );
        }
    }
    assert!(passes > 0, "no compaction pass finished in any round");
    assert!(
        advanced * 2 >= rounds,
        "the stream advanced in only {advanced} of {rounds} rounds"
    );
    eprintln!(
        "R2Kv crash test: {rounds} kills in {:?}, {in_pass} during a pass, {passes} passes, \
         position {last}",
        started.elapsed()
    );
}
