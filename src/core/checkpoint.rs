//! Checkpoint files: what FASTER's concurrent prefix recovery (CPR) writes, and how it is read
//! back and verified. The state machine that decides what a checkpoint contains is
//! [`crate::ops::cpr`].
//!
//! # Durability of the files
//! Metadata files are written with [`crate::environment::file::write_atomic`]
//!    and carry a magic, a format number and an xxh3 checksum; data files (index dump,
//!    snapshot) are fsynced before the metadata naming them is written, and their checksums are
//!    in the metadata. A checkpoint exists once its metadata file does.
//!
//! # Files
//! `<log dir>/checkpoints/<token>/` holds `index.meta` + `index.dat` (an index checkpoint),
//! `log.meta` (a log checkpoint) and, for a snapshot, `snapshot.dat`. A full checkpoint has all
//! of them under one token.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::status::{Error, Result};
use crate::environment::file::write_atomic;

/// What a checkpoint captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointKind {
    /// Index and log under one token.
    Full,
    /// The hash table only (recovery pairs it with a later log checkpoint).
    IndexOnly,
    /// The log only (recovery uses the newest usable index checkpoint, or replays the log).
    LogOnly,
}

/// How a log checkpoint makes the in-memory part of the log durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LogMode {
    /// Flush the log up to its tail (cheap; makes the whole log read-only, so the next updates
    /// copy their records).
    #[default]
    FoldOver,
    /// Copy the in-memory pages to a separate file (in-place updates continue afterwards).
    Snapshot,
}

/// Names one checkpoint; newer checkpoints have larger tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Token(pub u64);

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ckpt-{:010}", self.0)
    }
}

impl Token {
    /// The token a directory name stands for: `ckpt-N`, or with `set_aside`, also `ckpt-N.M`
    /// (another checkpoint of that token, set aside).
    fn parse(name: &str, set_aside: bool) -> Option<Token> {
        let n = name.strip_prefix("ckpt-")?;
        let n = match n.split_once('.') {
            Some((n, _)) if set_aside => n,
            _ => n,
        };
        n.parse().ok().map(Token)
    }
}

/// Where one session stands in a checkpoint (FASTER's `CommitPoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CommitPoint {
    /// Every operation with a serial number up to this one is in the checkpoint...
    pub until: u64,
    /// ...except these (updates that waited for the disk across the version change).
    pub excluded: Vec<u64>,
}

/// A session's commit point, by session id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCommit {
    /// The session's id.
    pub id: u64,
    /// Its commit point.
    pub commit: CommitPoint,
}

/// `index.meta`: a fuzzy dump of the hash table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexMeta {
    /// The checkpoint version the dump was taken in.
    pub version: u64,
    /// log2 of the bucket count.
    pub table_bits: u32,
    /// Log tail when the dump started: replay starts here.
    pub start: u64,
    /// Log tail when the dump ended.
    pub end: u64,
    /// Entries from overflow buckets (after the bucket image in `index.dat`).
    pub overflow_entries: u64,
    /// Bytes of `index.dat`.
    pub data_len: u64,
    /// xxh3 of `index.dat`.
    pub data_hash: u64,
}

/// `log.meta`: a log checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    /// The version checkpointed: records of versions up to it, below `end`, are the state.
    pub version: u64,
    /// Fold-over or snapshot.
    pub mode: LogMode,
    /// log2 of the page size of the log that wrote it.
    pub page_bits: u32,
    /// log2 of the index's bucket count when the checkpoint was taken. The log's hash chains
    /// were built in tables at most this large (the index only grows), so recovery rebuilds
    /// the index at least this large: a smaller table would file keys of several chains under
    /// one entry, whose walk follows only one of them.
    pub table_bits: u32,
    /// First address of the log.
    pub begin: u64,
    /// Records of version v+1 start at or after this address.
    pub newer_from: u64,
    /// End of the checkpoint (page aligned): nothing at or above it belongs to it.
    pub end: u64,
    /// Snapshot: first address held by `snapshot.dat` (page aligned; below it the log device
    /// holds the state).
    pub snapshot_start: u64,
    /// xxh3 of the snapshot pages' sums (0 without a snapshot); each page of `snapshot.dat` is
    /// checked against its sum when recovery reads it.
    pub snapshot_hash: u64,
    /// xxh3 of every page from the page of `begin` up to `end` as recovery must find it (the
    /// snapshot's pages for those it holds; 0 where unknown).
    pub page_sums: Vec<u64>,
    /// Commit points of the sessions.
    pub sessions: Vec<SessionCommit>,
    /// Next session id to hand out after recovery.
    pub next_session_id: u64,
    /// The store's key and value types (recovery refuses other types).
    pub types: TypeNames,
    /// Which hash filed the store's keys (recovery refuses another).
    pub hash: HashIdentity,
}

/// Which function hashed a store's keys into its index, as its checkpoints record it: recovery
/// with another would rebuild an index whose entries lookups never reach
/// ([`crate::index::key_hash::KeyHasher::identity`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HashIdentity {
    /// Whose hash.
    pub kind: HashKind,
    /// Fixed probe keys' bytes and what the store's hash made of them (`None`: the function
    /// refused or panicked on that probe). Empty for [`HashKind::Foreign`].
    pub probes: Vec<(Vec<u8>, Option<u64>)>,
}

/// Whose hash filed a store's keys ([`HashIdentity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HashKind {
    /// RsKv's own (`RsKv::open`).
    #[default]
    Own,
    /// The function the store was opened with (`RsKv::open_with_hash`).
    Given,
    /// Contexts' `key_hash`, which the store was not given: only known to differ from RsKv's.
    Foreign,
}

/// The names of a store's key and value types, as its checkpoints record them
/// ([`crate::core::codec::type_identity`] unless the configuration names them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TypeNames {
    /// The key type.
    pub key: String,
    /// The value type.
    pub value: String,
}

impl TypeNames {
    /// The names of `K` and `V`, or those `config` gives.
    #[must_use]
    pub fn of<K, V>(config: &crate::config::Config) -> Self {
        Self {
            key: config
                .key_type_name
                .clone()
                .unwrap_or_else(crate::core::codec::type_identity::<K>),
            value: config
                .value_type_name
                .clone()
                .unwrap_or_else(crate::core::codec::type_identity::<V>),
        }
    }
}

const MAGIC: &[u8; 8] = b"RSKVCKPT";
/// Version of the checkpoint file format (and of the log it describes); another value is
/// refused. 2: every record on the device carries a checksum (`core::record`); a log written
/// by format 1 has none and would fail verification. 3: a primitive integer that is a whole key
/// or value is stored as its fixed-width bytes (`core::codec::fast`), no longer as a varint.
/// 4: the record checksum covers the invalid bit, and `log.meta` names the key and value types.
/// 5: `log.meta` records the index size (`LogMeta::table_bits`).
/// 6: `log.meta` records which hash filed the keys (`LogMeta::hash`).
pub const FORMAT: u32 = 6;
/// File names.
pub const INDEX_META: &str = "index.meta";
/// The dumped hash table.
pub const INDEX_DATA: &str = "index.dat";
/// The log checkpoint's metadata.
pub const LOG_META: &str = "log.meta";
/// A snapshot's pages.
pub const SNAPSHOT_DATA: &str = "snapshot.dat";
/// Where recovery moves checkpoints it will not use again (never deletes them).
pub const SET_ASIDE: &str = "set-aside";
const KIND_INDEX: u32 = 1;
const KIND_LOG: u32 = 2;
const KIND_ATTACHED: u32 = 3;

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn encode_meta<T: Serialize>(kind: u32, meta: &T) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(meta).map_err(|e| Error::Codec(e.to_string()))?;
    let mut out = Vec::with_capacity(payload.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

fn decode_meta<T: for<'de> Deserialize<'de>>(path: &Path, kind: u32, bytes: &[u8]) -> Result<T> {
    const HEAD: usize = 24;
    if bytes.len() < HEAD + 8 {
        return Err(corrupt(
            path,
            format!(
                "truncated: {} bytes, header needs {}",
                bytes.len(),
                HEAD + 8
            ),
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt(path, "not an RsKv checkpoint file (bad magic)"));
    }
    let word4 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
    let format = word4(8);
    if format != FORMAT {
        return Err(corrupt(
            path,
            format!("written by checkpoint format {format}; this build reads format {FORMAT}"),
        ));
    }
    if word4(12) != kind {
        return Err(corrupt(path, "wrong kind of checkpoint file"));
    }
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
    let Some(total) = (len as usize).checked_add(HEAD + 8) else {
        return Err(corrupt(path, "payload length overflows"));
    };
    if total != bytes.len() || len > bytes.len() as u64 {
        return Err(corrupt(
            path,
            format!(
                "length mismatch: header says {total} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    let body = &bytes[..bytes.len() - 8];
    let sum = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().unwrap_or_default());
    if xxhash_rust::xxh3::xxh3_64(body) != sum {
        return Err(corrupt(path, "checksum mismatch"));
    }
    postcard::from_bytes(&body[HEAD..]).map_err(|e| corrupt(path, format!("undecodable: {e}")))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    Ok(bytes)
}

/// The checkpoint directory of one store.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
}

impl CheckpointDir {
    /// Checkpoints under `root`.
    #[must_use]
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The directory of checkpoint `token`.
    #[must_use]
    pub fn dir(&self, token: Token) -> PathBuf {
        self.root.join(token.to_string())
    }

    /// Creates the directory of `token`.
    ///
    /// # Errors
    /// [`Error::Path`] if it cannot be created.
    pub fn create(&self, token: Token) -> Result<PathBuf> {
        let dir = self.dir(token);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Path {
            path: dir.clone(),
            source,
        })?;
        crate::environment::file::sync_dir(&self.root).map_err(|source| Error::Path {
            path: self.root.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Every token that has a directory, oldest first (complete or not).
    ///
    /// # Errors
    /// [`Error::Path`] if the root exists but cannot be listed.
    pub fn tokens(&self) -> Result<Vec<Token>> {
        Self::tokens_in(&self.root, false)
    }

    /// The largest token ever used here, set-aside checkpoints included (a new checkpoint's
    /// token must not repeat one of theirs).
    ///
    /// # Errors
    /// [`Error::Path`] if a directory exists but cannot be listed.
    pub fn last_token_ever(&self) -> Result<Option<Token>> {
        let here = self.tokens()?.last().copied();
        let aside = Self::tokens_in(&self.root.join(SET_ASIDE), true)?
            .last()
            .copied();
        Ok(here.max(aside))
    }

    fn tokens_in(root: &Path, set_aside: bool) -> Result<Vec<Token>> {
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Path {
                    path: root.to_path_buf(),
                    source,
                })
            }
        };
        let mut tokens: Vec<Token> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| Token::parse(n, set_aside))
            })
            .collect();
        tokens.sort();
        Ok(tokens)
    }

    /// Writes `index.meta` of `token` atomically.
    ///
    /// # Errors
    /// [`Error::Io`] if the write fails.
    pub fn write_index_meta(&self, token: Token, meta: &IndexMeta) -> Result<()> {
        let path = self.dir(token).join(INDEX_META);
        write_atomic(&path, &encode_meta(KIND_INDEX, meta)?)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Writes `log.meta` of `token` atomically.
    ///
    /// # Errors
    /// [`Error::Io`] if the write fails.
    pub fn write_log_meta(&self, token: Token, meta: &LogMeta) -> Result<()> {
        let path = self.dir(token).join(LOG_META);
        write_atomic(&path, &encode_meta(KIND_LOG, meta)?)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Reads and checks `index.meta` of `token`.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file if it is missing, truncated, corrupt or foreign.
    pub fn read_index_meta(&self, token: Token) -> Result<IndexMeta> {
        let path = self.dir(token).join(INDEX_META);
        decode_meta(&path, KIND_INDEX, &read_file(&path)?)
    }

    /// Writes `bytes` as file `name` of checkpoint `token`, atomically and framed like the
    /// metadata files (format, kind, checksum): what another part of the store (R2Kv's cold
    /// tier) records with this checkpoint.
    ///
    /// # Errors
    /// [`Error::Io`] if the write fails.
    pub fn write_attached(&self, token: Token, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir(token).join(name);
        write_atomic(&path, &encode_meta(KIND_ATTACHED, &bytes)?)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Reads and checks the file `name` that [`CheckpointDir::write_attached`] wrote.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file if it is missing, truncated, corrupt or foreign.
    pub fn read_attached(&self, token: Token, name: &str) -> Result<Vec<u8>> {
        let path = self.dir(token).join(name);
        decode_meta(&path, KIND_ATTACHED, &read_file(&path)?)
    }

    /// Reads and checks `log.meta` of `token`.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file if it is missing, truncated, corrupt or foreign.
    pub fn read_log_meta(&self, token: Token) -> Result<LogMeta> {
        let path = self.dir(token).join(LOG_META);
        decode_meta(&path, KIND_LOG, &read_file(&path)?)
    }

    /// Whether checkpoint `token` holds a log checkpoint that was completed: its `log.meta`
    /// exists (it is written last, atomically), whatever state it is in now.
    #[must_use]
    pub fn has_log_meta(&self, token: Token) -> bool {
        self.dir(token).join(LOG_META).exists()
    }

    /// Whether any metadata file of `token` exists (else the directory is what a checkpoint
    /// that never completed left behind).
    #[must_use]
    pub fn has_any_meta(&self, token: Token) -> bool {
        self.has_log_meta(token) || self.dir(token).join(INDEX_META).exists()
    }

    /// Moves checkpoint `token` under `set-aside/` (a name of its own there, never over
    /// another), where listing and recovery no longer see it; returns where it went.
    ///
    /// # Errors
    /// [`Error::Path`] if the directory cannot be created or the checkpoint moved.
    pub fn set_aside(&self, token: Token) -> Result<PathBuf> {
        let aside = self.root.join(SET_ASIDE);
        let path_err = |path: &Path, source| Error::Path {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&aside).map_err(|e| path_err(&aside, e))?;
        let mut to = aside.join(token.to_string());
        let mut n = 1;
        while to.exists() {
            to = aside.join(format!("{token}.{n}"));
            n += 1;
        }
        std::fs::rename(self.dir(token), &to).map_err(|e| path_err(&to, e))?;
        crate::environment::file::sync_dir(&aside).map_err(|e| path_err(&aside, e))?;
        crate::environment::file::sync_dir(&self.root).map_err(|e| path_err(&self.root, e))?;
        Ok(to)
    }

    /// Removes the log part of checkpoint `token` (its metadata first, then the snapshot),
    /// keeping an index checkpoint it holds: what truncation does to a checkpoint whose log
    /// range is gone but whose index a newer log checkpoint may still start from.
    ///
    /// # Errors
    /// [`Error::Path`] if a file cannot be removed.
    pub fn remove_log(&self, token: Token) -> Result<()> {
        self.remove_files(token, &[LOG_META, SNAPSHOT_DATA])
    }

    /// Removes files `names` of checkpoint `token` in order (missing ones are fine), then
    /// syncs its directory.
    fn remove_files(&self, token: Token, names: &[&str]) -> Result<()> {
        let dir = self.dir(token);
        for name in names {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Path {
                        path: dir.join(name),
                        source,
                    })
                }
            }
        }
        let _ = crate::environment::file::sync_dir(&dir);
        Ok(())
    }

    /// Removes checkpoint `token` (metadata first, so a crash midway leaves no half checkpoint
    /// that looks complete).
    ///
    /// # Errors
    /// [`Error::Path`] if a file cannot be removed.
    pub fn remove(&self, token: Token) -> Result<()> {
        self.remove_files(token, &[LOG_META, INDEX_META])?;
        let dir = self.dir(token);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Path { path: dir, source }),
        }
        let _ = crate::environment::file::sync_dir(&self.root);
        Ok(())
    }
}

/// One checkpoint as listed by `RsKv::checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its token.
    pub token: Token,
    /// Whether it holds a (valid) index checkpoint.
    pub has_index: bool,
    /// The log checkpoint's version and mode, if it holds a valid one.
    pub log: Option<(u64, LogMode)>,
    /// Why a part of it is unusable, if one is.
    pub problem: Option<String>,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn log_meta() -> LogMeta {
        LogMeta {
            version: 3,
            mode: LogMode::Snapshot,
            page_bits: 12,
            table_bits: 10,
            begin: 64,
            newer_from: 8192,
            end: 12288,
            snapshot_start: 4096,
            snapshot_hash: 7,
            page_sums: vec![1, 2, 0],
            sessions: vec![SessionCommit {
                id: 1,
                commit: CommitPoint {
                    until: 10,
                    excluded: vec![4],
                },
            }],
            next_session_id: 2,
            types: TypeNames {
                key: "u64".into(),
                value: "String".into(),
            },
            hash: HashIdentity {
                kind: HashKind::Given,
                probes: vec![(vec![1, 2], Some(9)), (vec![], None)],
            },
        }
    }

    #[test]
    fn meta_roundtrip_and_every_damage_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path().join("checkpoints"));
        let t = Token(5);
        dir.create(t).unwrap();
        dir.write_log_meta(t, &log_meta()).unwrap();
        assert_eq!(dir.read_log_meta(t).unwrap(), log_meta());
        assert_eq!(dir.tokens().unwrap(), vec![t]);
        let path = dir.dir(t).join(LOG_META);
        let good = std::fs::read(&path).unwrap();
        // Every single-byte flip and every truncation is refused with an error naming the file.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            std::fs::write(&path, &bad).unwrap();
            let e = dir.read_log_meta(t).unwrap_err().to_string();
            assert!(e.contains("log.meta"), "{e}");
        }
        for len in 0..good.len() {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(dir.read_log_meta(t).is_err());
        }
        // An index meta file is not a log meta file.
        std::fs::write(&path, encode_meta(KIND_INDEX, &log_meta()).unwrap()).unwrap();
        assert!(dir
            .read_log_meta(t)
            .unwrap_err()
            .to_string()
            .contains("wrong kind"));
        std::fs::remove_file(&path).unwrap();
        assert!(dir
            .read_log_meta(t)
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        dir.remove(t).unwrap();
        assert!(dir.tokens().unwrap().is_empty());
    }
}
