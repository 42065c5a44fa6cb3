//! How keys and values become log bytes.
//!
//! Nothing that owns heap memory is ever written raw into a log page: every key and value is
//! encoded with serde into a compact binary form (postcard: varints, length-prefixed strings) and
//! decoded on the way out. Any `Serialize + DeserializeOwned` type works, including the seed's
//! `UserData`, `String`, tuples and `Vec<u8>`; any `bytemuck::Pod` type is stored as its raw
//! bytes through [`Raw`]. A primitive integer that is a whole key or value (`u64`, `i32`, ...)
//! is stored as its fixed-width little-endian bytes instead (see [`fast`]): FASTER's fixed-size
//! keys and values, with no encoding work and in-place updates of constant width.
//!
//! Keys are compared in encoded form, so an encoding must be canonical: equal keys must encode to
//! equal bytes (true for every type serde derives, not for hash maps with random order).
#![forbid(unsafe_code)]

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::status::{Error, Result};

/// A type RsKv can store as a key or value.
/// The name a checkpoint records for type `T`: [`std::any::type_name`] with every module path
/// left out (`alloc::string::String` is `String`, `alloc::vec::Vec<u8>` is `Vec<u8>`,
/// `my_app::model::UserData` is `UserData`). Module paths change when code moves, and the
/// compiler does not promise to print them the same way in every release; the names
/// themselves are what tells `RsKv<u64, String>` from `RsKv<String, u64>`. A renamed type keeps
/// its old name through `Config::type_names`.
#[must_use]
pub fn type_identity<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    // Where the identifier being copied starts in `out`: a `::` after it drops it.
    let mut segment = 0;
    let mut rest = full;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("::") {
            out.truncate(segment);
            rest = after;
            continue;
        }
        out.push(c);
        if !(c.is_alphanumeric() || c == '_') {
            segment = out.len();
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

pub trait Codec: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Codec for T {}

/// Words of inline scratch space before an encoding spills to the heap.
const INLINE_WORDS: usize = 32;

/// An encoded key or value in 8-byte words (so it can be copied into the log word by word),
/// inline up to 256 bytes (values of a few hundred bytes, common in YCSB-style stores, then
/// encode without allocating). Bytes past `len` up to the next word boundary are zero.
#[derive(Clone)]
pub struct Encoded {
    inline: [u64; INLINE_WORDS],
    heap: Vec<u64>,
    len: usize,
}

impl Encoded {
    /// Encodes `v`. Primitive integers are their own fixed-width bytes, without serde (see
    /// [`fast`]).
    ///
    /// # Errors
    /// [`Error::Codec`] when serde refuses the value.
    #[inline]
    pub fn new<T: Serialize + 'static>(v: &T) -> Result<Self> {
        if let Some((word, len)) = fast::encode(v) {
            let mut inline = [0; INLINE_WORDS];
            inline[0] = word;
            return Ok(Encoded {
                inline,
                heap: Vec::new(),
                len,
            });
        }
        Self::with_serde(v)
    }

    /// An encoding from its bytes (a value copied out of the log).
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut e = Encoded {
            inline: [0; INLINE_WORDS],
            heap: Vec::new(),
            len: bytes.len(),
        };
        let words: &mut [u64] = if bytes.len() <= INLINE_WORDS * 8 {
            &mut e.inline
        } else {
            e.heap = vec![0u64; bytes.len().div_ceil(8)];
            &mut e.heap
        };
        bytemuck::cast_slice_mut::<u64, u8>(words)[..bytes.len()].copy_from_slice(bytes);
        e
    }

    /// `len` zero bytes (a fixed-size value built in place, as the cold index's chunks are).
    #[must_use]
    pub(crate) fn zeroed(len: usize) -> Self {
        Encoded {
            inline: [0; INLINE_WORDS],
            heap: if len <= INLINE_WORDS * 8 {
                Vec::new()
            } else {
                vec![0u64; len.div_ceil(8)]
            },
            len,
        }
    }

    /// The encoding's bytes, to change in place (its length stays).
    #[must_use]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.len.div_ceil(8);
        let words = if self.heap.is_empty() {
            &mut self.inline[..n]
        } else {
            &mut self.heap[..n]
        };
        &mut bytemuck::cast_slice_mut::<u64, u8>(words)[..self.len]
    }

    /// Encodes `v` through serde.
    fn with_serde<T: Serialize + ?Sized>(v: &T) -> Result<Self> {
        let mut e = Encoded {
            inline: [0; INLINE_WORDS],
            heap: Vec::new(),
            len: 0,
        };
        // Encode straight into the word buffer, viewed as bytes.
        let bytes: &mut [u8; INLINE_WORDS * 8] = bytemuck::cast_mut(&mut e.inline);
        match postcard::to_slice(v, bytes) {
            Ok(out) => e.len = out.len(),
            Err(postcard::Error::SerializeBufferFull) => {
                let v = postcard::to_allocvec(v).map_err(|err| Error::Codec(err.to_string()))?;
                e.len = v.len();
                e.heap = vec![0u64; v.len().div_ceil(8)];
                bytemuck::cast_slice_mut::<u64, u8>(&mut e.heap)[..v.len()].copy_from_slice(&v);
            }
            Err(err) => return Err(Error::Codec(err.to_string())),
        }
        Ok(e)
    }

    /// The first word of the encoding (zero-padded): the whole encoding when it is at most 8
    /// bytes long.
    #[must_use]
    #[inline]
    pub fn first_word(&self) -> u64 {
        if self.heap.is_empty() {
            self.inline[0]
        } else {
            self.heap[0]
        }
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the encoding is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoding, zero-padded to whole words.
    #[must_use]
    #[inline]
    pub fn words(&self) -> &[u64] {
        let n = self.len.div_ceil(8);
        if self.heap.is_empty() {
            &self.inline[..n]
        } else {
            &self.heap[..n]
        }
    }

    /// The encoding.
    #[must_use]
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(self.words())[..self.len]
    }
}

/// Decodes a value from its bytes (primitive integers without serde, see [`fast`]).
///
/// # Errors
/// [`Error::Codec`] when the bytes are not a valid encoding of `T`.
#[inline]
pub fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T> {
    if let Some(v) = fast::decode(bytes) {
        return v;
    }
    postcard::from_bytes(bytes).map_err(|e| Error::Codec(e.to_string()))
}

/// Decodes a value from the `len` (1 to 8) low bytes of `word` (a one-word value copied out of
/// the log by a fast path).
///
/// # Errors
/// As [`decode`].
#[inline(always)]
pub fn decode_word<T: DeserializeOwned + 'static>(word: u64, len: usize) -> Result<T> {
    match fast::decode_exact(word, len) {
        Some(v) => Ok(v),
        None => decode_word_slow(word, len),
    }
}

/// [`decode_word`] of anything but an integer of its width (out of line: the fast paths stay
/// short): a width error, or serde.
#[inline(never)]
fn decode_word_slow<T: DeserializeOwned + 'static>(word: u64, len: usize) -> Result<T> {
    decode(&word.to_le_bytes()[..len.min(8)])
}

/// Primitive integers stored as themselves: the fixed-size keys and values of the common case.
///
/// A primitive integer that is a whole key or value is stored as its fixed-width little-endian
/// bytes, never through serde: a `u64` key is one word used as it is (no encoding work on the
/// hot path), and a value keeps its width on every update, so it is always updated in place.
/// ([`Encoded::new`], [`decode`] and [`decode_word`] ask this module first, so no other encoding
/// of a top-level integer ever reaches a log; integers inside serde types stay postcard
/// varints.) Decoding bytes of the wrong width is [`Error::Codec`]. Supported: `u8` to `u64`,
/// `i8` to `i64` and `usize` (stored as 8 bytes).
pub mod fast {
    use std::any::{Any, TypeId};

    use crate::core::status::{Error, Result};

    /// Calls `$m!(type, width)` for every supported integer.
    macro_rules! for_each_int {
        ($m:ident) => {
            $m!(u64, 8);
            $m!(u32, 4);
            $m!(u16, 2);
            $m!(u8, 1);
            $m!(usize, 8);
            $m!(i64, 8);
            $m!(i32, 4);
            $m!(i16, 2);
            $m!(i8, 1);
        };
    }

    /// Whether `T` is one of the integers stored as themselves.
    #[inline(always)]
    pub fn is_int<T: 'static>() -> bool {
        let t = TypeId::of::<T>();
        macro_rules! check {
            ($t:ty, $w:expr) => {
                if t == TypeId::of::<$t>() {
                    return true;
                }
            };
        }
        for_each_int!(check);
        false
    }

    /// The bytes of `v`, zero-padded in a word, and their count, if `v` is a supported integer.
    #[inline(always)]
    pub fn encode<T: 'static>(v: &T) -> Option<(u64, usize)> {
        let v: &dyn Any = v;
        macro_rules! try_encode {
            ($t:ty, $w:expr) => {
                if let Some(&x) = v.downcast_ref::<$t>() {
                    let mut word = [0u8; 8];
                    word[..$w].copy_from_slice(&x.to_le_bytes()[..$w]);
                    return Some((u64::from_le_bytes(word), $w));
                }
            };
        }
        // usize is 8 bytes on every target the crate builds for (64-bit little-endian).
        const _: () = assert!(usize::BITS == 64);
        for_each_int!(try_encode);
        None
    }

    /// `T` from the `len` low bytes of `word` if `T` is a supported integer `len` bytes wide.
    #[inline(always)]
    pub fn decode_exact<T: 'static>(word: u64, len: usize) -> Option<T> {
        let mut out: Option<T> = None;
        let slot: &mut dyn Any = &mut out;
        macro_rules! try_decode {
            ($t:ty, $w:expr) => {
                if let Some(o) = slot.downcast_mut::<Option<$t>>() {
                    if len == $w {
                        let mut b = [0u8; $w];
                        b.copy_from_slice(&word.to_le_bytes()[..$w]);
                        *o = Some(<$t>::from_le_bytes(b));
                    }
                    return out;
                }
            };
        }
        for_each_int!(try_decode);
        out
    }

    /// `T` from the `len` low bytes of `word`: `None` if `T` is not a supported integer, else
    /// the value or the width error.
    #[inline(always)]
    pub fn decode_word<T: 'static>(word: u64, len: usize) -> Option<Result<T>> {
        if !is_int::<T>() {
            return None;
        }
        Some(
            decode_exact(word, len).ok_or_else(|| {
                width_error(std::any::type_name::<T>(), std::mem::size_of::<T>(), len)
            }),
        )
    }

    /// [`decode_word`] of plain bytes.
    #[inline(always)]
    pub fn decode<T: 'static>(bytes: &[u8]) -> Option<Result<T>> {
        if !is_int::<T>() {
            return None;
        }
        if bytes.len() > 8 {
            return decode_word(0, bytes.len()); // the width error
        }
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        decode_word(u64::from_le_bytes(word), bytes.len())
    }

    #[cold]
    fn width_error(ty: &str, want: usize, got: usize) -> Error {
        Error::Codec(format!("a stored {ty} is {want} bytes, found {got}"))
    }
}

/// Stores any `bytemuck::Pod` type as its raw bytes (fixed size, updated in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Raw<T>(pub T);

impl<T: bytemuck::Pod> Serialize for Raw<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(bytemuck::bytes_of(&self.0))
    }
}

impl<'de, T: bytemuck::Pod> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: bytemuck::Pod> serde::de::Visitor<'_> for V<T> {
            type Value = Raw<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} bytes", std::mem::size_of::<T>())
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> std::result::Result<Raw<T>, E> {
                if b.len() == std::mem::size_of::<T>() {
                    Ok(Raw(bytemuck::pod_read_unaligned(b)))
                } else {
                    Err(E::invalid_length(b.len(), &self))
                }
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_identity_drops_module_paths() {
        assert_eq!(type_identity::<u64>(), "u64");
        assert_eq!(type_identity::<String>(), "String");
        assert_eq!(type_identity::<Vec<u8>>(), "Vec<u8>");
        assert_eq!(
            type_identity::<(u64, Option<String>)>(),
            "(u64, Option<String>)"
        );
        assert_eq!(
            type_identity::<std::collections::HashMap<String, Vec<u32>>>(),
            "HashMap<String, Vec<u32>>"
        );
        assert_eq!(type_identity::<Raw<[u8; 4]>>(), "Raw<[u8; 4]>");
        assert_ne!(type_identity::<u32>(), type_identity::<u64>());
    }

    #[test]
    fn round_trips_inline_and_heap() {
        let small = Encoded::new(&(7u64, "abc")).unwrap();
        assert_eq!(
            decode::<(u64, String)>(small.bytes()).unwrap(),
            (7, "abc".to_string())
        );
        let big = vec![9u8; 1000];
        let e = Encoded::new(&big).unwrap();
        assert!(e.len() > 1000);
        assert_eq!(decode::<Vec<u8>>(e.bytes()).unwrap(), big);
        assert_eq!(e.words().len(), e.len().div_ceil(8));
        for enc in [&small, &e] {
            let copy = Encoded::from_bytes(enc.bytes());
            assert_eq!(copy.bytes(), enc.bytes());
            assert_eq!(copy.words(), enc.words());
        }
    }

    /// An integer is stored as its fixed-width little-endian bytes and reads back.
    fn fixed_width<T>(v: T, bytes: &[u8])
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Copy + 'static,
    {
        let (word, len) = fast::encode(&v).expect("a fast-path type");
        assert_eq!(&word.to_le_bytes()[..len], bytes, "{v:?}");
        assert!(
            len == 8 || word >> (8 * len) == 0,
            "{v:?}: bytes past the width"
        );
        assert_eq!(Encoded::new(&v).unwrap().bytes(), bytes);
        assert_eq!(decode::<T>(bytes).unwrap(), v);
        assert_eq!(decode_word::<T>(word, len).unwrap(), v);
        // Garbage above the width does not leak into the value.
        if len < 8 {
            assert_eq!(decode_word::<T>(word | !0 << (8 * len), len).unwrap(), v);
        }
        assert!(fast::is_int::<T>());
    }

    #[test]
    fn integers_are_fixed_width_little_endian() {
        let mut xs: Vec<u64> = vec![0, 1, 0x7f, 0x80, u64::MAX, u64::MAX - 1];
        for b in 0..64 {
            xs.extend([1u64 << b, (1u64 << b) - 1, (1u64 << b) + 1]);
        }
        for &x in &xs {
            fixed_width(x, &x.to_le_bytes());
            fixed_width(x as u32, &(x as u32).to_le_bytes());
            fixed_width(x as u16, &(x as u16).to_le_bytes());
            fixed_width(x as u8, &[x as u8]);
            fixed_width(x as usize, &x.to_le_bytes());
            fixed_width(x as i64, &(x as i64).to_le_bytes());
            fixed_width(
                (x as i32).wrapping_neg(),
                &(x as i32).wrapping_neg().to_le_bytes(),
            );
            fixed_width(x as i16, &(x as i16).to_le_bytes());
            fixed_width(x as i8, &(x as i8).to_le_bytes());
        }
    }

    #[test]
    fn integers_of_the_wrong_width_are_errors() {
        for bad in [&[][..], &[1], &[1, 2, 3, 4, 5, 6, 7], &[0; 9], &[0xff; 11]] {
            let e = decode::<u64>(bad).unwrap_err();
            assert!(
                matches!(e, Error::Codec(ref m) if m.contains("u64")),
                "{bad:?}: {e}"
            );
        }
        assert!(decode::<u32>(&[1, 2, 3, 4, 5]).is_err());
        assert!(decode::<i8>(&[1, 2]).is_err());
        assert!(decode_word::<u16>(7, 3).is_err());
        // Not an integer: left to serde.
        assert_eq!(fast::encode(&"x".to_string()), None);
        assert!(fast::decode::<String>(&[1, b'x']).is_none());
        assert!(!fast::is_int::<(u64, u64)>());
        assert_eq!(decode::<String>(&[1, b'x']).unwrap(), "x");
        // Integers inside serde types stay postcard varints.
        let e = Encoded::new(&(300u64, 1u8)).unwrap();
        assert_eq!(e.bytes(), &[0xac, 0x02, 1]);
    }

    proptest::proptest! {
        #[test]
        fn integers_round_trip(x in proptest::num::u64::ANY) {
            fixed_width(x, &x.to_le_bytes());
            fixed_width(x as i64, &(x as i64).to_le_bytes());
            fixed_width(x as u32, &(x as u32).to_le_bytes());
            fixed_width(x as i32, &(x as i32).to_le_bytes());
        }
    }

    #[test]
    fn raw_pod_is_raw_bytes() {
        let v = Raw([1u32, 2, 3, 4]);
        let e = Encoded::new(&v).unwrap();
        assert_eq!(e.len(), 1 + 16);
        assert_eq!(decode::<Raw<[u32; 4]>>(e.bytes()).unwrap(), v);
        assert!(decode::<Raw<[u32; 4]>>(&e.bytes()[..5]).is_err());
    }
}
