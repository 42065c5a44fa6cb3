//! Keys and values that verify themselves.
//!
//! A value is a pure function of its key plus a version (bumped by upserts and RMWs), and a
//! read checks the key-derived part, so a store that returns another key's value, a torn value
//! or garbage is caught. The version part is not checked: concurrent upserts and RMWs make it
//! unpredictable, while the key-derived part stays verifiable forever.
//!
//! Layouts (the same bytes for every store):
//! - 8-byte values: one word, `check32(key)` in the low 32 bits and a 24-bit version above,
//!   so the top byte is always zero (RsKv stores a `u64` as its 8 bytes; the zero top byte
//!   kept the record at 5 words when integers were varints).
//! - values of 16 bytes or more: `[key ^ SALT: 8 LE][version: 8 LE][pseudo-random bytes
//!   seeded by the key]`. The tail is random so compressing peers gain nothing.

use rskv::Raw;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::workload::splitmix64;

const SALT: u64 = 0x6B65_795F_7361_6C74;
const VERSION_BITS_WORD: u32 = 24;

/// Checks a value size: 8, or at least 16 bytes.
pub fn validate_value_size(size: usize) -> anyhow::Result<()> {
    if size == 8 || size >= 16 {
        Ok(())
    } else {
        anyhow::bail!("--value-size {size}: use 8 or at least 16 bytes (a value carries its key and a version)")
    }
}

/// Checks a key size: at least 8 bytes (a key embeds its 64-bit id).
pub fn validate_key_size(size: usize) -> anyhow::Result<()> {
    if size >= 8 {
        Ok(())
    } else {
        anyhow::bail!("--key-size {size}: use at least 8 bytes")
    }
}

fn check32(key: u64) -> u32 {
    (splitmix64(key ^ SALT) >> 32) as u32
}

/// The 8-byte value of `key` at `version`.
#[inline]
pub fn word_value(key: u64, version: u64) -> u64 {
    u64::from(check32(key)) | (version & ((1 << VERSION_BITS_WORD) - 1)) << 32
}

#[inline]
pub fn word_ok(v: u64, key: u64) -> bool {
    v as u32 == check32(key) && v >> (32 + VERSION_BITS_WORD) == 0
}

/// The next version of an 8-byte value (the counter wraps inside its 24 bits).
#[inline]
pub fn word_bump(v: u64) -> u64 {
    let version = ((v >> 32) + 1) & ((1 << VERSION_BITS_WORD) - 1);
    (v & 0xFFFF_FFFF) | version << 32
}

/// Fills the pseudo-random tail seeded by `key`.
fn fill_tail(tail: &mut [u8], key: u64) {
    let mut x = key ^ SALT.rotate_left(17);
    for chunk in tail.chunks_mut(8) {
        x = splitmix64(x);
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn tail_ok(tail: &[u8], key: u64) -> bool {
    let mut x = key ^ SALT.rotate_left(17);
    tail.chunks(8).all(|chunk| {
        x = splitmix64(x);
        chunk == &x.to_le_bytes()[..chunk.len()]
    })
}

/// Writes the value of `key` at `version` into `buf` (its length is the value size).
pub fn fill_value(buf: &mut [u8], key: u64, version: u64) {
    if buf.len() == 8 {
        buf.copy_from_slice(&word_value(key, version).to_le_bytes());
        return;
    }
    buf[..8].copy_from_slice(&(key ^ SALT).to_le_bytes());
    buf[8..16].copy_from_slice(&version.to_le_bytes());
    fill_tail(&mut buf[16..], key);
}

/// Whether `buf` is a valid value of `key` (any version) of `size` bytes.
pub fn value_ok(buf: &[u8], key: u64, size: usize) -> bool {
    if buf.len() != size {
        return false;
    }
    if size == 8 {
        let mut w = [0; 8];
        w.copy_from_slice(buf);
        return word_ok(u64::from_le_bytes(w), key);
    }
    buf[..8] == (key ^ SALT).to_le_bytes() && tail_ok(&buf[16..], key)
}

/// Bumps the version of a valid value in place (the RMW of every store).
pub fn bump_value(buf: &mut [u8]) {
    if buf.len() == 8 {
        let mut w = [0; 8];
        w.copy_from_slice(buf);
        buf.copy_from_slice(&word_bump(u64::from_le_bytes(w)).to_le_bytes());
        return;
    }
    let mut v = [0; 8];
    v.copy_from_slice(&buf[8..16]);
    buf[8..16].copy_from_slice(&u64::from_le_bytes(v).wrapping_add(1).to_le_bytes());
}

/// The key bytes of key `id` for byte-oriented stores: big-endian id (so ordered stores see
/// keys spread over the key space the way the load order spreads them), then filler.
pub fn key_bytes(id: u64, size: usize) -> Vec<u8> {
    let mut k = vec![0u8; size];
    k[..8].copy_from_slice(&id.to_be_bytes());
    fill_tail(&mut k[8..], id);
    k
}

/// The value of `key` at `version` as bytes (byte-oriented stores).
#[cfg_attr(
    not(any(feature = "rocksdb", feature = "fjall", feature = "redb")),
    allow(dead_code)
)]
pub fn value_bytes(key: u64, version: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    fill_value(&mut v, key, version);
    v
}

/// The key id inside key bytes made by [`key_bytes`].
#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
pub fn key_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

/// A typed key of a typed store (RsKv, the in-memory map).
pub trait BenchKey:
    Serialize + DeserializeOwned + Send + Sync + Clone + Eq + std::hash::Hash + 'static
{
    /// What the output calls this key type.
    const TYPE: &'static str;
    fn make(id: u64, size: usize) -> Self;
}

impl BenchKey for u64 {
    const TYPE: &'static str = "u64 (8 bytes LE)";
    #[inline]
    fn make(id: u64, _size: usize) -> Self {
        id
    }
}

impl BenchKey for ByteBuf {
    const TYPE: &'static str = "serde_bytes::ByteBuf";
    fn make(id: u64, size: usize) -> Self {
        ByteBuf::from(key_bytes(id, size))
    }
}

/// A typed value of a typed store.
pub trait BenchValue: Serialize + DeserializeOwned + Send + Sync + Clone + 'static {
    /// What the output calls this value type.
    const TYPE: &'static str;
    fn make(key: u64, version: u64, size: usize) -> Self;
    fn ok(&self, key: u64, size: usize) -> bool;
    fn bumped(self) -> Self;
}

impl BenchValue for u64 {
    const TYPE: &'static str = "u64 (8 bytes LE)";
    #[inline]
    fn make(key: u64, version: u64, _size: usize) -> Self {
        word_value(key, version)
    }
    #[inline]
    fn ok(&self, key: u64, _size: usize) -> bool {
        word_ok(*self, key)
    }
    #[inline]
    fn bumped(self) -> Self {
        word_bump(self)
    }
}

impl<const N: usize> BenchValue for Raw<[u8; N]>
where
    [u8; N]: bytemuck::Pod,
{
    const TYPE: &'static str = "rskv::Raw<[u8; N]>";
    #[inline]
    fn make(key: u64, version: u64, _size: usize) -> Self {
        let mut a = [0u8; N];
        fill_value(&mut a, key, version);
        Raw(a)
    }
    #[inline]
    fn ok(&self, key: u64, size: usize) -> bool {
        value_ok(&self.0, key, size)
    }
    #[inline]
    fn bumped(mut self) -> Self {
        bump_value(&mut self.0);
        self
    }
}

impl BenchValue for ByteBuf {
    const TYPE: &'static str = "serde_bytes::ByteBuf";
    fn make(key: u64, version: u64, size: usize) -> Self {
        let mut v = vec![0u8; size];
        fill_value(&mut v, key, version);
        ByteBuf::from(v)
    }
    fn ok(&self, key: u64, size: usize) -> bool {
        value_ok(self, key, size)
    }
    fn bumped(mut self) -> Self {
        bump_value(&mut self);
        self
    }
}

/// Calls back with the typed key and value for the sizes asked: `u64` for 8 bytes, fixed
/// arrays for common sizes (no allocation on decode), `ByteBuf` for the rest.
pub trait TypedVisitor {
    type Out;
    fn visit<K: BenchKey, V: BenchValue>(self) -> Self::Out;
}

pub fn with_types<T: TypedVisitor>(key_size: usize, value_size: usize, t: T) -> T::Out {
    if key_size == 8 {
        with_value::<u64, T>(value_size, t)
    } else {
        with_value::<ByteBuf, T>(value_size, t)
    }
}

fn with_value<K: BenchKey, T: TypedVisitor>(value_size: usize, t: T) -> T::Out {
    match value_size {
        8 => t.visit::<K, u64>(),
        16 => t.visit::<K, Raw<[u8; 16]>>(),
        24 => t.visit::<K, Raw<[u8; 24]>>(),
        32 => t.visit::<K, Raw<[u8; 32]>>(),
        64 => t.visit::<K, Raw<[u8; 64]>>(),
        100 => t.visit::<K, Raw<[u8; 100]>>(),
        128 => t.visit::<K, Raw<[u8; 128]>>(),
        256 => t.visit::<K, Raw<[u8; 256]>>(),
        _ => t.visit::<K, ByteBuf>(),
    }
}

/// The name of the typed value for a size (for the output), matching [`with_types`].
pub fn value_type_name(value_size: usize) -> String {
    match value_size {
        8 => <u64 as BenchValue>::TYPE.to_string(),
        16 | 24 | 32 | 64 | 100 | 128 | 256 => format!("rskv::Raw<[u8; {value_size}]>"),
        _ => <ByteBuf as BenchValue>::TYPE.to_string(),
    }
}

pub fn key_type_name(key_size: usize) -> &'static str {
    if key_size == 8 {
        <u64 as BenchKey>::TYPE
    } else {
        <ByteBuf as BenchKey>::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_verify_for_their_key_only() {
        for size in [8usize, 16, 100, 1000] {
            let mut v = vec![0u8; size];
            fill_value(&mut v, 42, 7);
            assert!(value_ok(&v, 42, size));
            assert!(!value_ok(&v, 43, size));
            bump_value(&mut v);
            assert!(value_ok(&v, 42, size), "bumped value still verifies");
            let mut bad = v.clone();
            bad[0] ^= 1;
            assert!(!value_ok(&bad, 42, size), "key part of {size}");
            if size > 16 {
                // The tail is checked too (the version in bytes 8..16 is not, by design).
                let mut bad = v.clone();
                bad[size - 1] ^= 1;
                assert!(!value_ok(&bad, 42, size), "tail of {size}");
            }
            assert!(!value_ok(&v[..size - 1], 42, size));
        }
    }

    #[test]
    fn word_values_stay_small_and_verify() {
        let mut v = word_value(5, (1 << 24) - 1);
        assert!(word_ok(v, 5));
        v = word_bump(v);
        assert!(word_ok(v, 5), "counter wraps, value still verifies");
        assert_eq!(v >> 56, 0);
        assert!(!word_ok(v, 6));
    }

    #[test]
    fn typed_values_agree_with_bytes() {
        let r = <Raw<[u8; 100]> as BenchValue>::make(9, 1, 100);
        assert!(r.ok(9, 100));
        assert!(r.bumped().ok(9, 100));
        let b = <ByteBuf as BenchValue>::make(9, 1, 300);
        assert!(b.ok(9, 300) && !b.ok(8, 300));
    }
}
