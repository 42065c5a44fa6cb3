//! Key hashing: one key, one hash, whichever way it comes in (a context's default `key_hash`,
//! the facade, recovery rehashing a logged key). The index finalizes every hash; these only
//! have to agree with each other.
#![forbid(unsafe_code)]

use crate::core::checkpoint::{HashIdentity, HashKind};
use crate::core::codec::Encoded;
use crate::core::status::Result;
use crate::index::KeyHash;

/// RsKv's hash of a key, from its encoding: an encoding of up to 8 bytes is taken as one
/// little-endian word with its length in the top byte (the index finalizes every hash with a
/// full-avalanche mix), a longer one goes through xxh3. The default `key_hash` of every context.
#[must_use]
#[inline]
pub fn hash_key<K: serde::Serialize + 'static>(key: &K) -> u64 {
    match Encoded::new(key) {
        Ok(e) => hash_encoded(&e),
        // Unencodable keys fail later, when the operation encodes them; any hash will do here.
        Err(_) => 0,
    }
}

/// [`hash_key`] of an encoded key.
#[inline]
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    if bytes.len() <= 8 {
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        hash_word(u64::from_le_bytes(word), bytes.len())
    } else {
        xxhash_rust::xxh3::xxh3_64(bytes)
    }
}

/// [`hash_bytes`] of an encoding of at most 8 bytes held zero-padded in `word`.
#[inline(always)]
pub(crate) fn hash_word(word: u64, len: usize) -> u64 {
    word ^ (len as u64) << 56
}

/// [`hash_bytes`] of an encoding, without copying it when it fits a word (its padding is zero).
#[inline]
pub(crate) fn hash_encoded(e: &Encoded) -> u64 {
    if e.len() <= 8 {
        hash_word(e.first_word(), e.len())
    } else {
        hash_bytes(e.bytes())
    }
}

/// [`hash_bytes`] of an encoding of `len` bytes given as its zero-padded little-endian words
/// (a record's key in the log), without copying it out.
pub(crate) fn hash_words(len: usize, mut words: impl Iterator<Item = u64>) -> u64 {
    if len <= 8 {
        return hash_word(words.next().unwrap_or(0), len);
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut left = len;
    for w in words {
        let bytes = w.to_le_bytes();
        let n = left.min(8);
        h.update(&bytes[..n]);
        left -= n;
        if left == 0 {
            break;
        }
    }
    h.digest()
}

/// Encodes a facade key and derives its hash exactly as [`hash_key`] does.
#[inline(always)]
pub(crate) fn encode_key<K: serde::Serialize + 'static>(key: &K) -> Result<(Encoded, KeyHash)> {
    let key = Encoded::new(key)?;
    let hash = KeyHash::new(hash_encoded(&key));
    Ok((key, hash))
}

/// A function from a key's encoding to its hash, for stores whose contexts override
/// `key_hash`.
pub(crate) type HashFn = std::sync::Arc<dyn Fn(&[u8]) -> Result<u64> + Send + Sync>;

/// How the engine gets a logged key's hash back from its bytes (compaction, iteration): RsKv's
/// own hash, or the one a store whose contexts override `key_hash` was opened with. Contexts'
/// hashes are checked against RsKv's own (one word compare per context operation) so that a
/// store using another hash without saying which refuses to rehash instead of filing copies
/// where lookups never look.
#[derive(Default)]
pub(crate) struct KeyHasher {
    custom: Option<HashFn>,
    foreign: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHasher")
            .field("custom", &self.custom.is_some())
            .field("foreign", &self.foreign)
            .finish()
    }
}

impl KeyHasher {
    /// A hasher using `custom`.
    pub(crate) fn custom(custom: HashFn) -> Self {
        Self {
            custom: Some(custom),
            foreign: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the store was opened with its own hash (facade operations hash with it, and
    /// the one-word fast paths, which hash by RsKv's, step aside).
    #[inline(always)]
    pub(crate) fn is_custom(&self) -> bool {
        self.custom.is_some()
    }

    /// A facade key's hash: the store's own hash if it was opened with one (so that facade and
    /// context operations file a key alike, and compaction and recovery, which rehash logged
    /// keys with it, keep it where lookups look), else RsKv's.
    ///
    /// # Errors
    /// The custom function's errors.
    #[inline(always)]
    pub(crate) fn of_key(&self, key: &Encoded) -> Result<KeyHash> {
        match &self.custom {
            None => Ok(KeyHash::new(hash_encoded(key))),
            Some(f) => f(key.bytes()).map(KeyHash::new),
        }
    }

    /// The hash a context gave for `key`; notes a hash that is not RsKv's own.
    #[inline]
    pub(crate) fn of_context(&self, key: &Encoded, given: u64) -> KeyHash {
        use std::sync::atomic::Ordering::Relaxed;
        if self.custom.is_none() && !self.foreign.load(Relaxed) && given != hash_encoded(key) {
            self.note_foreign();
        }
        KeyHash::new(given)
    }

    /// Notes that keys are hashed other than by RsKv's own hash.
    #[cold]
    pub(crate) fn note_foreign(&self) {
        if !self.foreign.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tracing::info!(
                "keys are hashed other than by RsKv's hash_key: index growth will copy entries \
                 to both halves instead of sorting their chains"
            );
        }
    }

    /// Whether keys may be hashed other than by RsKv's own hash (a custom hash was given, or
    /// a context used another): index growth cannot sort chains by RsKv's hash then.
    pub(crate) fn is_foreign(&self) -> bool {
        self.custom.is_some() || self.foreign.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Which hash files this store's keys, for its checkpoints (recovery refuses another:
    /// [`check_identity`]).
    pub(crate) fn identity(&self) -> HashIdentity {
        match &self.custom {
            Some(f) => HashIdentity {
                kind: HashKind::Given,
                probes: probe(&**f),
            },
            None if self.foreign.load(std::sync::atomic::Ordering::Acquire) => HashIdentity {
                kind: HashKind::Foreign,
                probes: Vec::new(),
            },
            None => HashIdentity {
                kind: HashKind::Own,
                probes: probe(&|b: &[u8]| Ok(hash_bytes(b))),
            },
        }
    }

    /// The hash of a logged key.
    ///
    /// # Errors
    /// As [`KeyHasher::check`]; the custom function's errors.
    pub(crate) fn rehash(&self, bytes: &[u8]) -> Result<u64> {
        self.check()?;
        match &self.custom {
            Some(f) => f(bytes),
            None => Ok(hash_bytes(bytes)),
        }
    }

    /// Whether logged keys can be rehashed.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when contexts used another hash than RsKv's and
    /// the store was not told which.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.custom {
            None if self.foreign.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(crate::core::status::Error::Config {
                    field: "key_hash",
                    reason: "this store's contexts override key_hash; compaction and \
                             iteration must rehash logged keys the same way: open the store \
                             with RsKv::open_with_hash (or recover_with_hash)"
                        .into(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Encoded keys the identity of a hash is probed with: the empty key, the words 0 and 1 (how
/// integers encode), a short string (a length byte and its bytes) and 40 bytes (longer than a
/// word run).
fn probes() -> [Vec<u8>; 5] {
    [
        Vec::new(),
        0u64.to_le_bytes().to_vec(),
        1u64.to_le_bytes().to_vec(),
        b"\x04rskv".to_vec(),
        (0u8..40).collect(),
    ]
}

/// What `hash` makes of [`probes`]: `None` where it returns an error or panics (a user's hash
/// need not accept bytes that are not one of its keys; its panic is contained here).
fn probe(hash: &dyn Fn(&[u8]) -> Result<u64>) -> Vec<(Vec<u8>, Option<u64>)> {
    probes()
        .into_iter()
        .map(|p| {
            let h = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hash(&p)));
            let h = h.ok().and_then(|r| r.ok());
            (p, h)
        })
        .collect()
}

/// Whether a store whose checkpoint recorded `stored` may be recovered with `hash` (`custom`:
/// the recovering store was given it, `RsKv::recover_with_hash`). Probes are the checkpoint's
/// own, so older probe sets stay comparable.
///
/// # Errors
/// [`Error::Config`] (field `key_hash`) naming what the store ran with, when the recovering
/// hash is not that one: the recovered index would file keys where lookups never look.
pub(crate) fn check_identity(
    stored: &HashIdentity,
    hash: &dyn Fn(&[u8]) -> Result<u64>,
    custom: bool,
    path: &std::path::Path,
) -> Result<()> {
    // The same function if it agrees on every probe both hashed. A given function may refuse
    // probes that are not its keys (it decodes them as `K`), so only probes both hashed count.
    // At least one must, unless both sides are given functions (then nothing tells them
    // apart): a given function that agrees with RsKv's on the keys it accepts is RsKv's hash
    // for this store, and RsKv's hash must agree with a given one somewhere to stand for it.
    let same = || {
        let (mut compared, mut differ) = (0, false);
        for (p, h) in &stored.probes {
            let now = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hash(p)));
            if let (Some(was), Some(now)) = (h, now.ok().and_then(|r| r.ok())) {
                compared += 1;
                differ |= *was != now;
            }
        }
        !differ && (compared > 0 || (stored.kind == HashKind::Given && custom))
    };
    let refuse = |reason: &str| {
        Err(crate::core::status::Error::Config {
            field: "key_hash",
            reason: format!("the checkpoint's keys ({}) {reason}", path.display()),
        })
    };
    match (stored.kind, custom) {
        (HashKind::Own | HashKind::Given, _) if same() => Ok(()),
        (HashKind::Own, _) => refuse(
            "were filed by RsKv's own hash, not by the function given to recover_with_hash: \
             recover with RsKv::recover",
        ),
        (HashKind::Given, false) => refuse(
            "were filed by the hash the store was opened with (open_with_hash): recover with \
             recover_with_hash and the same function",
        ),
        (HashKind::Given, true) => refuse(
            "were filed by another function than the one given to recover_with_hash (they \
             differ on probe keys)",
        ),
        (HashKind::Foreign, true) => Ok(()),
        (HashKind::Foreign, false) => refuse(
            "were filed by contexts' own key_hash, not RsKv's: recover with recover_with_hash \
             and that function",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The facade's hash (from the encoded words) is the hash recovery recomputes from a
    /// record's key bytes, for short, word-sized and long keys of every kind.
    #[test]
    fn hash_of_encoding_is_hash_of_bytes() {
        fn check<K: serde::Serialize + 'static>(k: K) {
            let e = Encoded::new(&k).unwrap();
            assert_eq!(hash_encoded(&e), hash_bytes(e.bytes()));
            assert_eq!(hash_key(&k), hash_bytes(e.bytes()));
            assert_eq!(
                hash_words(e.len(), e.words().iter().copied()),
                hash_bytes(e.bytes())
            );
        }
        for x in [0u64, 1, 127, 128, 1 << 40, u64::MAX] {
            check(x);
            check(x as i64);
            check((x, 3u8));
            check(format!("key-{x}"));
            check(vec![x; 9]);
        }
        check(());
        check(String::new());
        check("a key of exactly twenty-four".to_string());
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;
    use std::path::Path;

    fn own(b: &[u8]) -> Result<u64> {
        Ok(hash_bytes(b))
    }
    /// A given hash of 8-byte keys (it refuses every other probe).
    fn words(b: &[u8]) -> Result<u64> {
        match <[u8; 8]>::try_from(b) {
            Ok(w) => Ok(u64::from_le_bytes(w).wrapping_mul(3)),
            Err(_) => Err(crate::core::status::Error::Internal("not a word")),
        }
    }
    /// A given hash that accepts no probe, by panicking.
    fn panics(_: &[u8]) -> Result<u64> {
        panic!("a user's hash that panics on bytes that are not its keys")
    }

    fn check(stored: &HashIdentity, hash: &dyn Fn(&[u8]) -> Result<u64>, custom: bool) -> bool {
        check_identity(stored, hash, custom, Path::new("log.meta")).is_ok()
    }

    #[test]
    fn each_hash_recovers_with_itself_only() {
        let own_id = KeyHasher::default().identity();
        let words_id = KeyHasher::custom(std::sync::Arc::new(words)).identity();
        let panics_id = KeyHasher::custom(std::sync::Arc::new(panics)).identity();
        assert_eq!(own_id.kind, HashKind::Own);
        assert_eq!(words_id.kind, HashKind::Given);
        assert!(panics_id.probes.iter().all(|(_, h)| h.is_none()));

        assert!(check(&own_id, &own, false));
        assert!(
            !check(&own_id, &words, true),
            "RsKv's hash replaced by another"
        );
        assert!(
            !check(&own_id, &panics, true),
            "nothing compared against RsKv's hash"
        );
        assert!(check(&words_id, &words, true));
        assert!(
            !check(&words_id, &own, false),
            "a given hash replaced by RsKv's"
        );
        let other = |b: &[u8]| words(b).map(|h| h ^ 1);
        assert!(
            !check(&words_id, &other, true),
            "a given hash replaced by another"
        );
        // Two given functions that accept no probe cannot be told apart; RsKv's can.
        assert!(check(&panics_id, &words, true));
        assert!(!check(&panics_id, &own, false));

        let foreign = KeyHasher::default();
        foreign.note_foreign();
        let foreign_id = foreign.identity();
        assert_eq!(foreign_id.kind, HashKind::Foreign);
        assert!(!check(&foreign_id, &own, false));
        assert!(check(&foreign_id, &words, true));
    }
}
