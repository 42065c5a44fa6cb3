//! Ten times more data than log memory: every key reads back correctly, through every API.
mod common;

use rskv::{ReadContext, Status};

fn value(k: u64) -> Vec<u8> {
    (0..100)
        .map(|i| (k.wrapping_mul(31) as u8).wrapping_add(i))
        .collect()
}

struct Read {
    key: u64,
    got: Option<Vec<u8>>,
}

impl ReadContext for Read {
    type Key = u64;
    type Value = Vec<u8>;
    fn key(&self) -> &u64 {
        &self.key
    }
    fn get(&mut self, value: &Vec<u8>) {
        self.got = Some(value.clone());
    }
}

#[test]
fn ten_times_memory_reads_back() {
    let memory = 256 << 10;
    let (_dir, kv) = common::small_store::<u64, Vec<u8>>(memory);
    // ~136 bytes per record: 25k records are ~3.4 MB, over ten times the log memory.
    let n = 25_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k)).unwrap();
    }
    let stats = kv.stats();
    assert!(
        stats.bytes_written >= 10 * memory,
        "only {} bytes reached the disk",
        stats.bytes_written
    );
    for k in 0..n {
        assert_eq!(kv.get(&k).unwrap(), Some(value(k)), "get {k}");
    }
    for k in (0..n).step_by(97) {
        let mut ctx = Read { key: k, got: None };
        assert_eq!(kv.read(&mut ctx), Status::Ok);
        assert_eq!(ctx.got, Some(value(k)));
    }
    let v = futures_executor::block_on(kv.get_async(&5)).unwrap();
    assert_eq!(v, Some(value(5)));
    assert!(kv.stats().bytes_read > 0);
}

#[test]
fn sessions_finish_pending_reads_and_rmws() {
    use std::sync::{Arc, Mutex};

    type Completions = Arc<Mutex<Vec<(u64, Status, Option<Vec<u8>>)>>>;
    struct SessionRead {
        key: u64,
        out: Completions,
        got: Option<Vec<u8>>,
    }
    impl ReadContext for SessionRead {
        type Key = u64;
        type Value = Vec<u8>;
        fn key(&self) -> &u64 {
            &self.key
        }
        fn get(&mut self, value: &Vec<u8>) {
            self.got = Some(value.clone());
        }
        fn complete(self, result: rskv::Result<Status, &rskv::Error>) {
            let status = result.expect("read failed");
            self.out.lock().unwrap().push((self.key, status, self.got));
        }
    }

    let (_dir, kv) = common::small_store::<u64, Vec<u8>>(64 << 10);
    let n = 5_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k)).unwrap();
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut session = kv.start_session();
    let read_before = kv.stats().bytes_read;
    let mut pending = 0;
    for k in 0..200u64 {
        let s = session.read(SessionRead {
            key: k,
            out: out.clone(),
            got: None,
        });
        if s == Status::Pending {
            pending += 1;
        }
    }
    assert!(pending > 0, "early keys must be on disk");
    // Their device reads were issued when they went pending, before any complete_pending: the
    // device finishes them on its own (bounded wait, not a timing assertion).
    let issued = std::time::Instant::now();
    while kv.stats().bytes_read < read_before + pending * 512 {
        assert!(
            issued.elapsed() < std::time::Duration::from_secs(30),
            "pending reads were not issued before complete_pending"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(session.serial_num().0, 200);
    assert!(session.complete_pending(true));
    let out = out.lock().unwrap();
    assert_eq!(out.len(), 200, "every context completes exactly once");
    for (k, status, got) in out.iter() {
        assert_eq!(*status, Status::Ok);
        assert_eq!(got.as_ref(), Some(&value(*k)));
    }
}

/// `rmw_many` keeps the device reads of its on-disk keys in flight together, and every key
/// (a repeated one too) ends with exactly its updates applied. The device holds read
/// completions back until 8 reads are in flight, so an implementation that waits for each
/// read before issuing the next only gets them when the watchdog releases them, and fails.
#[test]
fn rmw_many_keeps_disk_reads_in_flight_together() {
    use rskv::device::faulty_disk::FaultyDisk;
    use rskv::device::file_system_disk::FileSystemDisk;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(FileSystemDisk::new(dir.path()).unwrap()));
    let kv: rskv::RsKv<u64, Vec<u8>, _> = rskv::RsKv::open(
        rskv::Config::new()
            .table_size(1 << 8)
            .log_memory_size(64 << 10)
            .page_size(4096),
        disk.clone(),
    )
    .unwrap();
    let n = 5_000u64;
    for k in 0..n {
        kv.insert(&k, &value(k)).unwrap();
    }
    // Early keys are on disk; key 7 comes twice.
    let keys: Vec<u64> = (0..24u64).chain([7]).collect();
    disk.hold_reads_until(8);
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let disk = disk.clone();
        std::thread::spawn(move || {
            // Releases the held reads after 10 s unless rmw_many finished first.
            let _ = finished.recv_timeout(std::time::Duration::from_secs(10));
            disk.release_reads();
        })
    };
    let bump = |v: Option<Vec<u8>>| {
        let mut v = v.expect("every key exists");
        v[0] = v[0].wrapping_add(1);
        v
    };
    let new = kv.rmw_many(&keys, |_, old| bump(old)).unwrap();
    let _ = done.send(());
    assert!(
        disk.max_reads_in_flight() >= 8,
        "device reads were not in flight together ({} at most)",
        disk.max_reads_in_flight()
    );
    let once = |k: u64| bump(Some(value(k)));
    for (i, k) in keys.iter().enumerate().take(24) {
        if *k != 7 {
            assert_eq!(new[i], once(*k), "key {k}");
        }
    }
    let twice = bump(Some(once(7)));
    assert!(new[7] == once(7) || new[7] == twice, "key 7, first");
    assert!(new[24] == once(7) || new[24] == twice, "key 7, second");
    assert_ne!(
        new[7], new[24],
        "each update of key 7 saw the other or was seen by it"
    );
    assert_eq!(kv.get(&7).unwrap(), Some(twice));
    assert_eq!(kv.get(&3).unwrap(), Some(once(3)));
    assert_eq!(kv.get(&(n - 1)).unwrap(), Some(value(n - 1)));
    drop(kv);
    watchdog.join().unwrap();
}
