//! How keys and values become log bytes.
//!
//! Nothing that owns heap memory is ever written raw into a log page: every key and value is
//! encoded with serde into a compact binary form (postcard: varints, length-prefixed strings) and
//! decoded on the way out. Any `Serialize + DeserializeOwned` type works, including the seed's
//! `UserData`, `u64`, `String`, tuples and `Vec<u8>`; any `bytemuck::Pod` type is stored as its
//! raw bytes through [`Raw`].
//!
//! Keys are compared in encoded form, so an encoding must be canonical: equal keys must encode to
//! equal bytes (true for every type serde derives, not for hash maps with random order).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::status::{Error, Result};

/// A type RsKv can store as a key or value.
pub trait Codec: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Codec for T {}

/// Words of inline scratch space before an encoding spills to the heap.
const INLINE_WORDS: usize = 8;

/// An encoded key or value in 8-byte words (so it can be copied into the log word by word),
/// inline up to 64 bytes. Bytes past `len` up to the next word boundary are zero.
#[derive(Clone)]
pub struct Encoded {
    inline: [u64; INLINE_WORDS],
    heap: Vec<u64>,
    len: usize,
}

impl Encoded {
    /// Encodes `v`. Primitive integers take a fast path that writes postcard's bytes without
    /// going through serde (see [`fast`]).
    ///
    /// # Errors
    /// [`Error::Codec`] when serde refuses the value.
    #[inline]
    pub fn new<T: Serialize + 'static>(v: &T) -> Result<Self> {
        if let Some((words, len)) = fast::encode(v) {
            let mut inline = [0; INLINE_WORDS];
            inline[0] = words as u64;
            inline[1] = (words >> 64) as u64;
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
        return Ok(v);
    }
    postcard::from_bytes(bytes).map_err(|e| Error::Codec(e.to_string()))
}

/// Postcard's encoding of the primitive integers, written by hand: the keys and values of the
/// common fixed-size case skip serde's machinery (and postcard's byte-at-a-time slice writer).
///
/// The bytes are exactly postcard's (unit tests compare them over every width and edge value),
/// so records written either way compare equal and decode either way. postcard writes `u8`/`i8`
/// as one raw byte, wider unsigned integers as LEB128 varints and wider signed ones zigzagged
/// first. Decoding falls back to postcard for anything the fast path does not accept (too
/// long, overflowing, not canonical), so errors stay postcard's.
pub mod fast {
    use std::any::Any;

    /// The continuation bits of an `n`-byte varint (`1 <= n <= 8`): bit 7 of every byte but the
    /// last.
    #[inline]
    fn continuation_bits(n: usize) -> u64 {
        0x8080_8080_8080_8080 & ((1u64 << (8 * (n - 1))) - 1)
    }

    /// LEB128 of `x`, packed little-endian into a `u128` (at most 10 bytes), and its length.
    /// Values below 2^56 (at most 8 bytes) spread their 7-bit groups into bytes with three
    /// shift-and-mask steps instead of a loop.
    #[inline]
    fn varint(x: u64) -> (u128, usize) {
        if x < 1 << 56 {
            let n = (64 - (x | 1).leading_zeros()).div_ceil(7) as usize;
            let mut s = (x & 0x0fff_ffff) | (x & 0x00ff_ffff_f000_0000) << 4;
            s = (s & 0x0000_3fff_0000_3fff) | (s & 0x0fff_c000_0fff_c000) << 2;
            s = (s & 0x007f_007f_007f_007f) | (s & 0x3f80_3f80_3f80_3f80) << 1;
            return (u128::from(s | continuation_bits(n)), n);
        }
        let (mut x, mut out, mut shift) = (x, 0u128, 0);
        while x >= 0x80 {
            out |= u128::from((x as u8 & 0x7f) | 0x80) << shift;
            x >>= 7;
            shift += 8;
        }
        (out | u128::from(x) << shift, shift / 8 + 1)
    }

    /// The 1 to 8 bytes of `bytes` as a little-endian word, without a variable-length copy.
    #[inline]
    fn load_short(bytes: &[u8]) -> u64 {
        let n = bytes.len();
        debug_assert!((1..=8).contains(&n));
        if n >= 4 {
            let lo = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            let hi = u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]);
            u64::from(lo) | u64::from(hi) << (8 * (n - 4))
        } else {
            u64::from(bytes[0])
                | u64::from(bytes[n / 2]) << (8 * (n / 2))
                | u64::from(bytes[n - 1]) << (8 * (n - 1))
        }
    }

    /// Reads a canonical LEB128 varint that fills `bytes` exactly and fits in `max_bits`.
    #[inline]
    fn read_varint(bytes: &[u8], max_bits: u32) -> Option<u64> {
        let max_len = max_bits.div_ceil(7) as usize;
        let n = bytes.len();
        if n == 0 || n > max_len {
            return None;
        }
        // A canonical varint's last byte is non-zero unless it is the only one.
        let canonical = n == 1 || bytes[n - 1] != 0;
        if n <= 8 {
            let w = load_short(bytes);
            // A continuation bit on every byte but the last, and none on the last.
            if w & 0x8080_8080_8080_8080 != continuation_bits(n) || !canonical {
                return None;
            }
            let mut s = w & 0x7f7f_7f7f_7f7f_7f7f;
            s = (s & 0x007f_007f_007f_007f) | (s & 0x7f00_7f00_7f00_7f00) >> 1;
            s = (s & 0x0000_3fff_0000_3fff) | (s & 0x3fff_0000_3fff_0000) >> 2;
            s = (s & 0x0000_0000_0fff_ffff) | (s & 0x0fff_ffff_0000_0000) >> 4;
            return (max_bits >= 64 || s >> max_bits == 0).then_some(s);
        }
        let mut x = 0u64;
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == n;
            if last == (b & 0x80 != 0) {
                return None; // a continuation bit on the last byte, or none before it
            }
            x |= u64::from(b & 0x7f) << (7 * i);
        }
        let fits =
            max_bits == 64 && (n < 10 || bytes[9] <= 1) || max_bits < 64 && x >> max_bits == 0;
        (canonical && fits).then_some(x)
    }

    fn zigzag(n: i64) -> u64 {
        ((n << 1) ^ (n >> 63)) as u64
    }

    fn unzigzag(x: u64) -> i64 {
        (x >> 1) as i64 ^ -((x & 1) as i64)
    }

    /// Postcard's bytes of `v` if it is a primitive integer.
    #[inline]
    pub fn encode<T: 'static>(v: &T) -> Option<(u128, usize)> {
        let v: &dyn Any = v;
        if let Some(&x) = v.downcast_ref::<u64>() {
            Some(varint(x))
        } else if let Some(&x) = v.downcast_ref::<u32>() {
            Some(varint(u64::from(x)))
        } else if let Some(&x) = v.downcast_ref::<u16>() {
            Some(varint(u64::from(x)))
        } else if let Some(&x) = v.downcast_ref::<usize>() {
            Some(varint(x as u64))
        } else if let Some(&x) = v.downcast_ref::<i64>() {
            Some(varint(zigzag(x)))
        } else if let Some(&x) = v.downcast_ref::<i32>() {
            Some(varint(zigzag(i64::from(x))))
        } else if let Some(&x) = v.downcast_ref::<u8>() {
            Some((u128::from(x), 1))
        } else {
            None
        }
    }

    /// A primitive integer `T` from postcard's bytes, or `None` (another type, or bytes the
    /// fast path leaves to postcard).
    #[inline]
    pub fn decode<T: 'static>(bytes: &[u8]) -> Option<T> {
        let mut out: Option<T> = None;
        let slot: &mut dyn Any = &mut out;
        if let Some(o) = slot.downcast_mut::<Option<u64>>() {
            *o = read_varint(bytes, 64);
        } else if let Some(o) = slot.downcast_mut::<Option<u32>>() {
            *o = read_varint(bytes, 32).map(|x| x as u32);
        } else if let Some(o) = slot.downcast_mut::<Option<u16>>() {
            *o = read_varint(bytes, 16).map(|x| x as u16);
        } else if let Some(o) = slot.downcast_mut::<Option<usize>>() {
            *o = read_varint(bytes, usize::BITS).map(|x| x as usize);
        } else if let Some(o) = slot.downcast_mut::<Option<i64>>() {
            *o = read_varint(bytes, 64).map(unzigzag);
        } else if let Some(o) = slot.downcast_mut::<Option<i32>>() {
            *o = read_varint(bytes, 32).map(|x| unzigzag(x) as i32);
        } else if let Some(o) = slot.downcast_mut::<Option<u8>>() {
            *o = (bytes.len() == 1).then(|| bytes[0]);
        }
        out
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

    /// The fast path writes postcard's exact bytes and reads them back.
    fn same_as_postcard<T>(v: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Copy + 'static,
    {
        let want = postcard::to_allocvec(&v).unwrap();
        let (words, len) = fast::encode(&v).expect("a fast-path type");
        assert_eq!(&words.to_le_bytes()[..len], &want[..], "{v:?}");
        assert!(words >> (8 * len) == 0, "{v:?}: bytes past the length");
        assert_eq!(Encoded::new(&v).unwrap().bytes(), &want[..]);
        assert_eq!(fast::decode::<T>(&want), Some(v));
        assert_eq!(decode::<T>(&want).unwrap(), v);
    }

    #[test]
    fn fast_path_matches_postcard() {
        let mut xs: Vec<u64> = vec![0, 1, 0x7f, 0x80, 0x3fff, 0x4000, u64::MAX, u64::MAX - 1];
        for b in 0..64 {
            xs.extend([1u64 << b, (1u64 << b) - 1, (1u64 << b) + 1]);
        }
        for &x in &xs {
            same_as_postcard(x);
            same_as_postcard(x as u32);
            same_as_postcard(x as u16);
            same_as_postcard(x as u8);
            same_as_postcard(x as usize);
            same_as_postcard(x as i64);
            same_as_postcard((x as i64).wrapping_neg());
            same_as_postcard(x as i32);
            same_as_postcard((x as i32).wrapping_neg());
        }
    }

    #[test]
    fn fast_decode_leaves_bad_bytes_to_postcard() {
        // Too long, overflowing, unterminated, trailing zero byte (not canonical), empty.
        let bad: [&[u8]; 6] = [
            &[0xff; 11],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            &[0x80],
            &[0x80, 0x00],
            &[],
            &[0x01, 0x02],
        ];
        for b in bad {
            assert_eq!(fast::decode::<u64>(b), None, "{b:?}");
        }
        assert!(decode::<u64>(&[0xff; 11]).is_err());
        assert!(decode::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
        assert_eq!(
            fast::decode::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Some(u32::MAX)
        );
        assert_eq!(fast::decode::<u8>(&[1, 2]), None);
        // Not a fast-path type: left to serde.
        assert_eq!(fast::encode(&"x".to_string()), None);
        assert_eq!(fast::decode::<String>(&[1, b'x']), None);
    }

    /// Whatever bytes the fast reader accepts, postcard reads as the same value.
    fn fast_agrees_with_postcard<T>(bytes: &[u8])
    where
        T: DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
    {
        if let Some(v) = fast::decode::<T>(bytes) {
            assert_eq!(postcard::from_bytes::<T>(bytes).ok(), Some(v), "{bytes:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_decode_never_disagrees(bytes in proptest::collection::vec(
            proptest::prop_oneof![proptest::num::u8::ANY, 0x80u8..=0xff, 0u8..=2], 0..12)) {
            fast_agrees_with_postcard::<u64>(&bytes);
            fast_agrees_with_postcard::<u32>(&bytes);
            fast_agrees_with_postcard::<u16>(&bytes);
            fast_agrees_with_postcard::<u8>(&bytes);
            fast_agrees_with_postcard::<usize>(&bytes);
            fast_agrees_with_postcard::<i64>(&bytes);
            fast_agrees_with_postcard::<i32>(&bytes);
        }

        #[test]
        fn fast_encode_is_postcard(x in proptest::num::u64::ANY) {
            same_as_postcard(x);
            same_as_postcard(x as i64);
            same_as_postcard(x as u32);
            same_as_postcard(x as i32);
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
