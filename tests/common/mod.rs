//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Codec, Config, RsKv};

/// The configuration of [`small_store`].
pub fn small_config(log_memory: u64) -> Config {
    Config::new()
        .table_size(1 << 8)
        .log_memory_size(log_memory)
        .page_size(4096)
}

/// A store in a fresh temporary directory with `log_memory` bytes of log memory and small
/// 4 KiB pages, so that records leave memory quickly.
pub fn small_store<K: Codec, V: Codec>(
    log_memory: u64,
) -> (tempfile::TempDir, RsKv<K, V, FileSystemDisk>) {
    small_store_with(small_config(log_memory))
}

/// A store over `config` in a fresh temporary directory.
pub fn small_store_with<K: Codec, V: Codec>(
    config: Config,
) -> (tempfile::TempDir, RsKv<K, V, FileSystemDisk>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = FileSystemDisk::new(dir.path()).expect("disk");
    let kv = RsKv::open(config, disk).expect("open");
    (dir, kv)
}

/// Upsert context: key `.0` gets value `.1`.
pub struct Put(pub u64, pub u64);

impl rskv::UpsertContext for Put {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn value(&self) -> &u64 {
        &self.1
    }
}

/// RMW context: adds `.1` to key `.0` (starting from 0).
pub struct Add(pub u64, pub u64);

impl rskv::RmwContext for Add {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn rmw_initial(&self) -> u64 {
        self.1
    }
    fn rmw_copy(&self, old: &u64) -> u64 {
        old + self.1
    }
}

/// Upsert context filing key `.0` (value `.1`) under the hash `.2` gives it instead of RsKv's.
pub struct HashedPut(pub u64, pub u64, pub fn(&u64) -> u64);

impl rskv::UpsertContext for HashedPut {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn value(&self) -> &u64 {
        &self.1
    }
    fn key_hash(&self) -> u64 {
        (self.2)(&self.0)
    }
}

/// Read context looking key `.0` up under the hash `.2` gives it; the value lands in `.1`
/// (shared, so a session's pending read can report it after the context was handed over).
pub struct HashedGet(
    pub u64,
    pub std::sync::Arc<std::sync::Mutex<Option<u64>>>,
    pub fn(&u64) -> u64,
);

impl rskv::ReadContext for HashedGet {
    type Key = u64;
    type Value = u64;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn get(&mut self, v: &u64) {
        *self.1.lock().unwrap() = Some(*v);
    }
    fn key_hash(&self) -> u64 {
        (self.2)(&self.0)
    }
}

/// The counter at the front of an incremented value (8 bytes, little-endian).
pub fn counter_of(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[..8].try_into().expect("an 8-byte counter"))
}

/// Two threads that each increment every key of `0..keys` once per round by RMW (the counter
/// of [`counter_of`]; `value(c)` is the value holding counter `c`), in orders that overlap, and
/// upsert `filler(thread, i)` after each RMW so that records leave the log's memory. After
/// they are joined, every key's counter is `2 * rounds` more than before.
pub fn spawn_incrementers(
    kv: &std::sync::Arc<RsKv<u64, Vec<u8>, FileSystemDisk>>,
    keys: u64,
    rounds: u64,
    value: fn(u64) -> Vec<u8>,
    filler: fn(u64, u64) -> (u64, Vec<u8>),
) -> Vec<std::thread::JoinHandle<()>> {
    (0..2u64)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for r in 0..rounds {
                    for i in 0..keys {
                        let k = (i * 17 + t * 7 + r * 3) % keys;
                        kv.rmw(&k, |old| value(counter_of(&old.expect("present")) + 1))
                            .unwrap();
                        let (key, v) = filler(t, i);
                        kv.insert(&key, &v).unwrap();
                    }
                }
            })
        })
        .collect()
}
