//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Codec, Config, RsKv};

/// A store in a fresh temporary directory with `log_memory` bytes of log memory and small
/// 4 KiB pages, so that records leave memory quickly.
pub fn small_store<K: Codec, V: Codec>(
    log_memory: u64,
) -> (tempfile::TempDir, RsKv<K, V, FileSystemDisk>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = FileSystemDisk::new(dir.path()).expect("disk");
    let kv = RsKv::open(
        Config::new()
            .table_size(1 << 8)
            .log_memory_size(log_memory)
            .page_size(4096),
        disk,
    )
    .expect("open");
    (dir, kv)
}
