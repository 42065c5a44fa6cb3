//! Store configuration: a plain struct with `Default`, builder-style setters, and validation
//! that names the bad field.

use crate::core::status::{Error, Result};
use crate::hlog::persistent_memory_malloc::{MAX_PAGE_BITS, MIN_FRAMES, MIN_PAGE_BITS};

/// Configuration of an [`RsKv`](crate::RsKv) store.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Hash buckets (64 bytes each, 7 entries); rounded up to a power of two.
    /// Default `1 << 16` (4 MiB of index). FASTER sizes it at about #keys / 2 entries.
    pub table_size: u64,
    /// Bytes of log memory (the in-memory pages of the hybrid log). Default 256 MiB.
    pub log_memory_size: u64,
    /// Bytes of one log page, a power of two from 4 KiB to 256 MiB; also the largest record.
    /// Default: `log_memory_size / 16` rounded down to a power of two, clamped to 4 KiB..32 MiB.
    pub page_size: Option<u64>,
    /// Fraction of in-memory pages that are mutable (updated in place). Default 0.9.
    pub mutable_fraction: f64,
    /// Copy a record that a read fetched from disk to the tail of the log, so the next read of
    /// the key finds it in memory (FASTER's "copy reads to tail"): for skewed reads of a data
    /// set larger than memory, at the cost of log growth. The copy is a conditional insert
    /// that gives way to any newer record of the key, and is skipped when checking that would
    /// itself need the disk. Default off.
    pub copy_reads_to_tail: bool,
    /// When recovery picks the newest checkpoint by itself and finds that a completed (once
    /// acknowledged) log checkpoint cannot be recovered (a damaged file, a log page that no
    /// longer matches it), fall back to the newest older checkpoint that can. Default off:
    /// recovery then fails with [`Error::Checkpoint`] naming the checkpoint and the problem,
    /// because falling back silently loses every update the newer checkpoint had made
    /// durable. Either way nothing is deleted: a checkpoint skipped by a fallback (and any
    /// newer than the one recovered) is moved to `checkpoints/set-aside/` for the user to
    /// inspect or remove, since the recovered store's log will overwrite what it described.
    /// Recovering an older checkpoint on purpose (`RsKv::recover` with its token) needs no
    /// fallback.
    pub recovery_fallback: bool,
    /// The name recorded for the key type in checkpoints and checked when recovering
    /// (default: the type's name without module paths, e.g. `u64`, `String`, `Vec<u8>`,
    /// `UserData`). Set it to keep recovering after renaming the type, or to tell apart two
    /// types of the same name whose encodings differ.
    pub key_type_name: Option<String>,
    /// As [`Config::key_type_name`], for the value type.
    pub value_type_name: Option<String>,
    /// Refuse to open a device that holds a completed checkpoint ([`Error::Checkpoint`])
    /// instead of recovering it (RocksDB's `error_if_exists`). Default off: `open` recovers the
    /// newest checkpoint, as every Rust store does.
    pub error_if_exists: bool,
    /// Take a full checkpoint when the store is closed ([`crate::RsKv::close`], or dropped),
    /// so that a clean shutdown keeps every update. Default off, as in FASTER: what survives a
    /// drop or a crash is what the last checkpoint holds, and a drop costs nothing. A failure
    /// in `close` is returned; in a drop it is only logged.
    pub checkpoint_on_close: bool,
    /// Compact the log in the background to keep it within a disk budget
    /// ([`LogCompaction`](crate::LogCompaction), F2's settings). Default off: the log grows
    /// until the user compacts or truncates it.
    pub log_compaction: Option<crate::ops::compact::LogCompaction>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            table_size: 1 << 16,
            log_memory_size: 256 << 20,
            page_size: None,
            mutable_fraction: 0.9,
            copy_reads_to_tail: false,
            recovery_fallback: false,
            key_type_name: None,
            value_type_name: None,
            error_if_exists: false,
            checkpoint_on_close: false,
            log_compaction: None,
        }
    }
}

/// The geometry a [`Config`] resolves to (after rounding), as the store uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// log2 of the bucket count.
    pub index_bits: u32,
    /// log2 of the page size.
    pub page_bits: u32,
    /// In-memory page frames.
    pub frames: u64,
}

impl Resolved {
    /// Bytes of log memory actually used (frames × page size).
    #[must_use]
    pub fn log_memory_size(&self) -> u64 {
        self.frames << self.page_bits
    }
    /// Bytes of one page.
    #[must_use]
    pub fn page_size(&self) -> u64 {
        1 << self.page_bits
    }
    /// Buckets in the index.
    #[must_use]
    pub fn table_size(&self) -> u64 {
        1 << self.index_bits
    }
}

impl Config {
    /// The defaults.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`Config::table_size`] (buckets).
    #[must_use]
    pub fn table_size(mut self, buckets: u64) -> Self {
        self.table_size = buckets;
        self
    }
    /// Sets [`Config::log_memory_size`] (bytes).
    #[must_use]
    pub fn log_memory_size(mut self, bytes: u64) -> Self {
        self.log_memory_size = bytes;
        self
    }
    /// Sets [`Config::page_size`] (bytes).
    #[must_use]
    pub fn page_size(mut self, bytes: u64) -> Self {
        self.page_size = Some(bytes);
        self
    }
    /// Sets [`Config::mutable_fraction`].
    #[must_use]
    pub fn mutable_fraction(mut self, fraction: f64) -> Self {
        self.mutable_fraction = fraction;
        self
    }

    /// Sets [`Config::copy_reads_to_tail`].
    #[must_use]
    pub fn copy_reads_to_tail(mut self, on: bool) -> Self {
        self.copy_reads_to_tail = on;
        self
    }

    /// Sets [`Config::recovery_fallback`].
    #[must_use]
    pub fn recovery_fallback(mut self, on: bool) -> Self {
        self.recovery_fallback = on;
        self
    }

    /// Sets [`Config::key_type_name`] and [`Config::value_type_name`].
    #[must_use]
    pub fn type_names(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.key_type_name = Some(key.into());
        self.value_type_name = Some(value.into());
        self
    }

    /// Sets [`Config::error_if_exists`].
    #[must_use]
    pub fn error_if_exists(mut self, on: bool) -> Self {
        self.error_if_exists = on;
        self
    }

    /// Sets [`Config::checkpoint_on_close`].
    #[must_use]
    pub fn checkpoint_on_close(mut self, on: bool) -> Self {
        self.checkpoint_on_close = on;
        self
    }

    /// Compacts the log in the background by `settings` (see [`Config::log_compaction`]).
    #[must_use]
    pub fn log_compaction(mut self, settings: crate::ops::compact::LogCompaction) -> Self {
        self.log_compaction = Some(settings);
        self
    }

    /// Checks the values and rounds them to what the store will use. Too small a log memory is
    /// rounded up to the minimum of 4 pages of 4 KiB; `Resolved` reports the result.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field that is out of range.
    pub fn resolve(&self) -> Result<Resolved> {
        if self.table_size == 0 || self.table_size > 1 << 36 {
            return Err(Error::Config {
                field: "table_size",
                reason: format!("{} buckets is not in 1..=2^36", self.table_size),
            });
        }
        let index_bits = self.table_size.next_power_of_two().trailing_zeros();
        if let Some(c) = &self.log_compaction {
            c.validate()?;
        }
        if !(0.0..=1.0).contains(&self.mutable_fraction) || self.mutable_fraction.is_nan() {
            return Err(Error::Config {
                field: "mutable_fraction",
                reason: format!("{} is not in 0..=1", self.mutable_fraction),
            });
        }
        let page_bits = match self.page_size {
            Some(p) => {
                if !p.is_power_of_two()
                    || !(MIN_PAGE_BITS..=MAX_PAGE_BITS).contains(&p.trailing_zeros())
                {
                    return Err(Error::Config {
                        field: "page_size",
                        reason: format!("{p} is not a power of two from 4 KiB to 256 MiB"),
                    });
                }
                p.trailing_zeros()
            }
            None => {
                let per_page = (self.log_memory_size / 16).max(1);
                (63 - per_page.leading_zeros()).clamp(MIN_PAGE_BITS, 25)
            }
        };
        let frames = self
            .log_memory_size
            .div_ceil(1 << page_bits)
            .max(MIN_FRAMES);
        if frames > 1 << 20 {
            return Err(Error::Config {
                field: "log_memory_size",
                reason: format!("{frames} pages is too many; raise page_size"),
            });
        }
        Ok(Resolved {
            index_bits,
            page_bits,
            frames,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_sizes_resolve() {
        let r = Config::new()
            .table_size(1 << 20)
            .log_memory_size(1 << 16)
            .resolve()
            .unwrap();
        assert_eq!((r.index_bits, r.page_bits, r.frames), (20, 12, 16));
        let tiny = Config::new().log_memory_size(100).resolve().unwrap();
        assert_eq!(tiny.log_memory_size(), 4 * 4096);
        let big = Config::new().log_memory_size(1 << 30).resolve().unwrap();
        assert_eq!(big.page_size(), 32 << 20);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Config::new().page_size(5000).resolve().unwrap_err();
        assert!(matches!(
            e,
            Error::Config {
                field: "page_size",
                ..
            }
        ));
        let e = Config::new().mutable_fraction(1.5).resolve().unwrap_err();
        assert!(matches!(
            e,
            Error::Config {
                field: "mutable_fraction",
                ..
            }
        ));
        let e = Config::new().table_size(0).resolve().unwrap_err();
        assert!(matches!(
            e,
            Error::Config {
                field: "table_size",
                ..
            }
        ));
    }
}
