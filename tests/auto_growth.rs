//! Automatic index growth (issue 13, item 5): the store's maintenance thread doubles the index
//! by itself, while operations run, when its overflow buckets pass half its buckets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::device::null_disk::NullDisk;
use rskv::{CheckpointKind, Codec, Config, Disk, LogMode, RsKv, Stats};

fn value(k: u64) -> u64 {
    k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Waits until the maintenance thread made a whole pass without growing the index: with no
/// more inserts, the index then stays as it is. Fails when the index passes `max_buckets` (a
/// runaway would otherwise eat the machine's memory) or after two minutes (a hang guard, not
/// a timing measure).
fn settled<K: Codec, V: Codec, D: Disk>(kv: &RsKv<K, V, D>, max_buckets: u64) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let before = kv.stats();
        while kv.stats().maintenance_passes < before.maintenance_passes + 2 {
            assert!(
                Instant::now() < deadline,
                "the maintenance thread makes no passes"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = kv.stats();
        assert!(
            after.index_buckets <= max_buckets,
            "the index grew far beyond its keys: {after:?}"
        );
        if after.index_growths == before.index_growths {
            return after;
        }
        assert!(
            Instant::now() < deadline,
            "the index keeps growing: {after:?}"
        );
    }
}

/// The test: 4M keys into a table sized for 64k entries (8192 buckets of 7) while two
/// threads read keys already inserted. The index grows, and no read misses.
#[test]
fn four_million_keys_grow_the_index_while_two_threads_read() {
    const KEYS: u64 = 4 << 20;
    const START: u64 = 1 << 13;
    let kv: Arc<RsKv<u64, u64, NullDisk>> = Arc::new(
        RsKv::open(
            Config::new().table_size(START).log_memory_size(256 << 20),
            NullDisk::new(),
        )
        .expect("open"),
    );
    let inserted = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let (kv, inserted, done) = (kv.clone(), inserted.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut reads, mut failures) = (0u64, Vec::new());
                let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ t;
                while !done.load(Ordering::Acquire) {
                    let n = inserted.load(Ordering::Acquire);
                    if n == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    // xorshift: keys spread over everything inserted so far.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % n;
                    match kv.get(&k) {
                        Ok(Some(v)) if v == value(k) => {}
                        other => {
                            if failures.len() < 10 {
                                failures.push(format!("key {k} of {n}: {other:?}"));
                            }
                        }
                    }
                    reads += 1;
                }
                (reads, failures)
            })
        })
        .collect();
    for k in 0..KEYS {
        kv.insert(&k, &value(k)).expect("insert");
        if k % 1024 == 1023 {
            inserted.store(k + 1, Ordering::Release);
        }
    }
    inserted.store(KEYS, Ordering::Release);
    done.store(true, Ordering::Release);
    let mut total_reads = 0;
    for r in readers {
        let (reads, failures) = r.join().expect("reader panicked");
        assert!(failures.is_empty(), "reads failed: {failures:?}");
        total_reads += reads;
    }
    assert!(total_reads > 0, "the readers never read");
    // 4M keys fill 2^19 buckets to about 8 entries each.
    let stats = settled(&kv, 1 << 21);
    assert!(
        stats.index_buckets > START && stats.index_growths > 0,
        "the index did not grow: {stats:?}"
    );
    // Growth sorts chains between the halves (all records are in memory here), so overflow
    // buckets do not pile up: the rule keeps them under half the buckets since the last growth.
    assert!(
        stats.overflow_buckets < stats.index_buckets,
        "overflow buckets did not shrink with growth: {stats:?}"
    );
    for k in 0..KEYS {
        assert_eq!(kv.get(&k).expect("get"), Some(value(k)), "key {k}");
    }
}

/// A checkpoint records the grown index; recovery restores it, with every key.
#[test]
fn recovery_after_automatic_growth_restores_the_grown_index() {
    const KEYS: u64 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::new()
        .table_size(1 << 8)
        .log_memory_size(4 << 20)
        .page_size(64 << 10);
    let (buckets, token) = {
        let kv: RsKv<u64, u64, FileSystemDisk> = RsKv::open(
            config.clone(),
            FileSystemDisk::new(dir.path()).expect("disk"),
        )
        .expect("open");
        for k in 0..KEYS {
            kv.insert(&k, &value(k)).expect("insert");
        }
        let stats = settled(&kv, 1 << 17);
        assert!(stats.index_growths > 0, "no automatic growth: {stats:?}");
        let token = kv.checkpoint().expect("checkpoint");
        (stats.index_buckets, token)
    };
    // Recovered without automatic growth, so the size seen is the checkpoint's.
    let (kv, info) = RsKv::<u64, u64, FileSystemDisk>::recover(
        config.auto_grow_index(None),
        FileSystemDisk::new(dir.path()).expect("disk"),
        None,
    )
    .expect("recover");
    assert_eq!(info.token, token);
    assert_eq!(kv.stats().index_buckets, buckets);
    assert_eq!(kv.resolved().table_size(), buckets);
    for k in 0..KEYS {
        assert_eq!(kv.get(&k).expect("get"), Some(value(k)), "key {k}");
    }
}

/// A log checkpoint taken after growths, with no index checkpoint or with one from before them:
/// the log's chains were built in the grown table, so recovery must rebuild an index at least
/// that large (in a smaller one, keys of several chains share an entry and some are lost).
#[test]
fn log_checkpoints_after_growth_recover_every_key() {
    const KEYS: u64 = 3000;
    for index_first in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::new()
            .table_size(1 << 8)
            .log_memory_size(64 << 10)
            .page_size(4096)
            .auto_grow_index(None);
        let open = || {
            RsKv::<u64, u64, FileSystemDisk>::open(
                config.clone(),
                FileSystemDisk::new(dir.path()).expect("disk"),
            )
            .expect("open")
        };
        {
            let kv = open();
            for k in 0..KEYS {
                kv.insert(&k, &value(k)).expect("insert");
                if k == 100 && index_first {
                    kv.checkpoint_with(CheckpointKind::IndexOnly, LogMode::FoldOver)
                        .expect("index checkpoint");
                }
                if k % 1000 == 999 {
                    kv.grow_index().expect("grow");
                }
            }
            assert_eq!(kv.stats().index_buckets, 1 << 11);
            kv.checkpoint_with(CheckpointKind::LogOnly, LogMode::FoldOver)
                .expect("log checkpoint");
        }
        let kv = open();
        let info = kv.recovered().expect("recovered");
        assert_eq!(info.index_token.is_some(), index_first);
        for k in 0..KEYS {
            assert_eq!(
                kv.get(&k).expect("get"),
                Some(value(k)),
                "key {k} (index checkpoint first: {index_first})"
            );
        }
        assert!(kv.stats().index_buckets >= 1 << 11);
    }
}

/// When chains are on disk a growth cannot sort them and copies their entries to both halves,
/// so overflow buckets double with the table. Growth counts only the overflow gained since the
/// last one; counting all of it would grow again at once, every pass, without end.
#[test]
fn growth_that_cannot_sort_chains_does_not_run_away() {
    const KEYS: u64 = 200_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let kv: RsKv<u64, u64, FileSystemDisk> = RsKv::open(
        Config::new()
            .table_size(1 << 8)
            .log_memory_size(256 << 10)
            .page_size(16 << 10),
        FileSystemDisk::new(dir.path()).expect("disk"),
    )
    .expect("open");
    // 200k keys fill 2^15 buckets to about 6 entries each; a runaway would double on (and
    // take all memory if not stopped here).
    const MAX_BUCKETS: u64 = 1 << 17;
    for k in 0..KEYS {
        kv.insert(&k, &value(k)).expect("insert");
        if k % 4096 == 0 {
            let stats = kv.stats();
            assert!(
                stats.index_buckets <= MAX_BUCKETS,
                "the index grew far beyond its keys: {stats:?}"
            );
        }
    }
    let stats = settled(&kv, MAX_BUCKETS);
    assert!(stats.index_growths > 0, "no automatic growth: {stats:?}");
    for k in (0..KEYS).step_by(97) {
        assert_eq!(kv.get(&k).expect("get"), Some(value(k)), "key {k}");
    }
}

/// Contexts that hash keys their own way (the identity, as the seed's do): growth cannot sort
/// chains by RsKv's hash, so it copies entries to both halves, and every key still reads back.
#[test]
fn stores_with_their_own_key_hash_grow_correctly() {
    struct Put(u64);
    impl rskv::UpsertContext for Put {
        type Key = u64;
        type Value = u64;
        fn key(&self) -> &u64 {
            &self.0
        }
        fn value(&self) -> &u64 {
            &self.0
        }
        fn key_hash(&self) -> u64 {
            self.0
        }
    }
    struct Get(u64, Option<u64>);
    impl rskv::ReadContext for Get {
        type Key = u64;
        type Value = u64;
        fn key(&self) -> &u64 {
            &self.0
        }
        fn key_hash(&self) -> u64 {
            self.0
        }
        fn get(&mut self, value: &u64) {
            self.1 = Some(*value);
        }
    }
    const KEYS: u64 = 50_000;
    let kv: RsKv<u64, u64, NullDisk> = RsKv::open(
        Config::new().table_size(1 << 6).log_memory_size(16 << 20),
        NullDisk::new(),
    )
    .expect("open");
    for k in 0..KEYS {
        assert_eq!(kv.upsert(&Put(k)).expect("upsert"), rskv::Status::Ok);
    }
    let stats = settled(&kv, 1 << 16);
    assert!(stats.index_growths > 0, "no automatic growth: {stats:?}");
    for k in 0..KEYS {
        let mut get = Get(k, None);
        assert_eq!(
            kv.read(&mut get).expect("read"),
            rskv::Status::Ok,
            "key {k}"
        );
        assert_eq!(get.1, Some(k), "key {k}");
    }
}
