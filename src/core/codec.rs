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
    /// Encodes `v`.
    ///
    /// # Errors
    /// [`Error::Codec`] when serde refuses the value.
    #[inline]
    pub fn new<T: Serialize + ?Sized>(v: &T) -> Result<Self> {
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

/// Decodes a value from its bytes.
///
/// # Errors
/// [`Error::Codec`] when the bytes are not a valid encoding of `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Codec(e.to_string()))
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
