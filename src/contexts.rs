//! FASTER's context API: the four context traits the seed uses (re-exported by
//! [`crate::rskv_core`], where the seed names them), and how a context drives the engine. Both
//! the store's context methods and sessions go through here, so neither depends on the other
//! for it.
#![forbid(unsafe_code)]

use crate::core::codec::{decode, Codec, Encoded};
use crate::core::record::ValueBuf;
use crate::core::status::{Error, Result, Status};
use crate::device::Disk;
use crate::index::key_hash::hash_key;
use crate::ops::rmw::{Decision, Latest};
use crate::ops::Engine;

/// An upsert: write `value()` for `key()`.
pub trait UpsertContext {
    /// Key type.
    type Key: Codec;
    /// Value type.
    type Value: Codec;
    /// The key.
    fn key(&self) -> &Self::Key;
    /// The value to write.
    fn value(&self) -> &Self::Value;
    /// The key's 64-bit hash (finalized by RsKv, so an identity hash is fine).
    fn key_hash(&self) -> u64 {
        hash_key(self.key())
    }
    /// In-place hook, called with the current value when the key's newest record is in the
    /// mutable region. Return `true` after changing `value` to what should be stored; the
    /// default `false` lets RsKv store `self.value()` (in place when its encoding fits).
    fn put_atomic(&self, _value: &mut Self::Value) -> bool {
        false
    }
    /// Called once when a [`Session`](crate::Session) operation finishes, with what the operation returned
    /// (or, for one that went pending, what it would have returned).
    fn complete(self, _result: Result<Status, &Error>)
    where
        Self: Sized,
    {
    }
}

/// A read: `get` receives the value.
pub trait ReadContext {
    /// Key type.
    type Key: Codec;
    /// Value type.
    type Value: Codec;
    /// The key.
    fn key(&self) -> &Self::Key;
    /// The key's 64-bit hash.
    fn key_hash(&self) -> u64 {
        hash_key(self.key())
    }
    /// Receives the value when the key is found.
    fn get(&mut self, value: &Self::Value);
    /// Called once when a [`Session`](crate::Session) operation finishes (after `get`, if found), with what the
    /// operation returned (or, for one that went pending, what it would have returned).
    fn complete(self, _result: Result<Status, &Error>)
    where
        Self: Sized,
    {
    }
}

/// A read-modify-write.
pub trait RmwContext {
    /// Key type.
    type Key: Codec;
    /// Value type.
    type Value: Codec;
    /// The key.
    fn key(&self) -> &Self::Key;
    /// The key's 64-bit hash.
    fn key_hash(&self) -> u64 {
        hash_key(self.key())
    }
    /// The value for a key that has none.
    fn rmw_initial(&self) -> Self::Value;
    /// The new value computed from the old (copy-update to a new record).
    fn rmw_copy(&self, old: &Self::Value) -> Self::Value;
    /// Updates `value` in place (mutable region); `false` falls back to [`RmwContext::rmw_copy`].
    /// May run more than once per operation (retries), so it must be a pure function of `value`.
    fn rmw_atomic(&self, value: &mut Self::Value) -> bool {
        *value = self.rmw_copy(value);
        true
    }
    /// Called once when a [`Session`](crate::Session) operation finishes, with what the operation returned
    /// (or, for one that went pending, what it would have returned).
    fn complete(self, _result: Result<Status, &Error>)
    where
        Self: Sized,
    {
    }
}

/// A delete.
pub trait DeleteContext {
    /// Key type.
    type Key: Codec;
    /// Value type.
    type Value: Codec;
    /// The key.
    fn key(&self) -> &Self::Key;
    /// The key's 64-bit hash.
    fn key_hash(&self) -> u64 {
        hash_key(self.key())
    }
    /// Called once when a [`Session`](crate::Session) operation finishes, with what the operation returned
    /// (or, for one that went pending, what it would have returned).
    fn complete(self, _result: Result<Status, &Error>)
    where
        Self: Sized,
    {
    }
}

/// Decodes a value handed to an update into what the typed closure wants.
pub(crate) fn decode_latest<V: Codec>(latest: Latest<'_>) -> Result<Option<V>> {
    match latest {
        Latest::Value(bytes) => decode(bytes).map(Some),
        Latest::Absent | Latest::Deleted => Ok(None),
    }
}

/// The decision function of a context RMW.
pub(crate) fn rmw_decider<C: RmwContext>(
    ctx: &C,
) -> impl FnMut(Latest<'_>) -> Result<Decision> + '_ {
    move |latest| {
        let new = match decode_latest::<C::Value>(latest)? {
            None => ctx.rmw_initial(),
            Some(mut v) => {
                if ctx.rmw_atomic(&mut v) {
                    v
                } else {
                    ctx.rmw_copy(&v)
                }
            }
        };
        Ok(Decision::Write(Encoded::new(&new)?))
    }
}

/// Upserts; `on_commit` runs with the version written in, still epoch protected.
pub(crate) fn upsert_ctx<C: UpsertContext, D: Disk>(
    engine: &Engine<D>,
    ctx: &C,
    on_commit: &mut dyn FnMut(u64),
) -> Result<()> {
    let key = Encoded::new(ctx.key())?;
    let value = Encoded::new(ctx.value())?;
    let hash = engine.hasher.of_context(&key, ctx.key_hash());
    let g = engine.protect()?;
    let mut buf = ValueBuf::default();
    let version = engine.upsert(&g, &key, hash, &value, &mut |lock| {
        if lock.state().tombstone() {
            return Ok(None);
        }
        lock.read_value(&mut buf);
        let mut current: C::Value = decode(buf.bytes())?;
        Ok(if ctx.put_atomic(&mut current) {
            Some(Encoded::new(&current)?)
        } else {
            None
        })
    })?;
    on_commit(version);
    Ok(())
}

/// Deletes (`always`: see [`Engine::delete`]); `on_commit` runs with the version, still epoch
/// protected.
pub(crate) fn delete_ctx<C: DeleteContext, D: Disk>(
    engine: &Engine<D>,
    ctx: &C,
    always: bool,
    on_commit: &mut dyn FnMut(u64),
) -> Result<Status> {
    let key = Encoded::new(ctx.key())?;
    let g = engine.protect()?;
    let hash = engine.hasher.of_context(&key, ctx.key_hash());
    let (status, version) = engine.delete(&g, &key, hash, always)?;
    on_commit(version);
    Ok(status)
}
