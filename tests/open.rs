//! `open` recovers what the device holds (as Rust stores do), `error_if_exists` refuses it, and
//! `close` / drop checkpoint when the configuration asks for it.

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{CheckpointKind, Config, Error, LogMode, RsKv};

type Kv = RsKv<u64, String, FileSystemDisk>;

fn config() -> Config {
    Config::new()
        .table_size(1 << 8)
        .log_memory_size(64 << 10)
        .page_size(4096)
}

fn open(dir: &std::path::Path, config: Config) -> rskv::Result<Kv> {
    RsKv::open(config, FileSystemDisk::new(dir).unwrap())
}

#[test]
fn open_recovers_the_newest_checkpoint_and_drops_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = open(dir.path(), config()).unwrap();
        assert!(kv.recovered().is_none());
        for k in 0..2_000u64 {
            kv.insert(&k, &format!("v{k}")).unwrap();
        }
        kv.checkpoint().unwrap();
        kv.insert(&1, &"after the checkpoint".to_string()).unwrap();
        // Dropped without close: what survives is the checkpoint.
    }
    let kv = open(dir.path(), config()).unwrap();
    let info = kv.recovered().expect("open recovered nothing");
    assert_eq!(info.version, 1);
    assert_eq!(kv.get(&1).unwrap(), Some("v1".to_string()));
    assert_eq!(kv.get(&1_999).unwrap(), Some("v1999".to_string()));
    drop(kv);
    match open(dir.path(), config().error_if_exists(true)) {
        Err(Error::Checkpoint { reason, .. }) => assert!(reason.contains("error_if_exists")),
        other => panic!("opened an existing store: {:?}", other.map(|_| ())),
    }
}

#[test]
fn close_checkpoints_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let on_close = config().checkpoint_on_close(true);
    {
        let kv = open(dir.path(), on_close.clone()).unwrap();
        kv.insert(&1, &"one".to_string()).unwrap();
        assert!(kv.close().unwrap().is_some());
    }
    {
        let kv = open(dir.path(), on_close.clone()).unwrap();
        assert_eq!(kv.get(&1).unwrap(), Some("one".to_string()));
        kv.insert(&2, &"two".to_string()).unwrap();
        // A plain drop checkpoints too.
    }
    {
        let kv = open(dir.path(), config()).unwrap();
        assert_eq!(kv.get(&2).unwrap(), Some("two".to_string()));
        kv.insert(&3, &"three".to_string()).unwrap();
        // Without the option, close takes no checkpoint.
        assert_eq!(kv.close().unwrap(), None);
    }
    let kv = open(dir.path(), config()).unwrap();
    assert_eq!(kv.get(&3).unwrap(), None);
}

#[test]
fn open_without_a_completed_checkpoint_starts_empty_and_sets_index_dumps_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = open(dir.path(), config()).unwrap();
        kv.insert(&1, &"one".to_string()).unwrap();
        kv.checkpoint_with(CheckpointKind::IndexOnly, LogMode::FoldOver)
            .unwrap();
    }
    let kv = open(dir.path(), config()).unwrap();
    assert!(kv.recovered().is_none());
    assert_eq!(kv.get(&1).unwrap(), None);
    assert!(kv.checkpoints().unwrap().is_empty());
    assert!(dir.path().join("checkpoints").join("set-aside").exists());
}
