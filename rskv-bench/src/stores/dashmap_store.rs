//! DashMap: a sharded, locked in-memory hash map, the ceiling for an in-memory store (no
//! log, no epochs, no encoding; keys and values are kept as the same Rust types RsKv gets).

use std::marker::PhantomData;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::results::{RunResult, StoreInfo};
use crate::spec::{MemoryPlan, RunSpec};
use crate::store::{ReadCheck, Store};
use crate::values::{BenchKey, BenchValue, TypedVisitor};

pub struct DashStore<K: BenchKey, V> {
    map: DashMap<K, V>,
    key_size: usize,
    value_size: usize,
    explicit_budget: bool,
    _types: PhantomData<fn() -> V>,
}

impl<K: BenchKey, V: BenchValue> DashStore<K, V> {
    fn open(spec: &RunSpec, plan: &MemoryPlan) -> DashStore<K, V> {
        DashStore {
            // Presized, as RsKv's index is: no rehashing during the load.
            map: DashMap::with_capacity(spec.keys as usize),
            key_size: spec.key_size,
            value_size: spec.value_size,
            explicit_budget: plan.explicit,
            _types: PhantomData,
        }
    }
}

impl<K: BenchKey, V: BenchValue> Store for DashStore<K, V> {
    #[inline]
    fn upsert(&self, key: u64, version: u64) -> anyhow::Result<()> {
        self.map.insert(
            K::make(key, self.key_size),
            V::make(key, version, self.value_size),
        );
        Ok(())
    }

    #[inline]
    fn read(&self, key: u64) -> anyhow::Result<ReadCheck> {
        Ok(match self.map.get(&K::make(key, self.key_size)) {
            None => ReadCheck::Missing,
            Some(v) if v.ok(key, self.value_size) => ReadCheck::Ok,
            Some(_) => ReadCheck::Wrong,
        })
    }

    #[inline]
    fn rmw(&self, key: u64) -> anyhow::Result<ReadCheck> {
        Ok(match self.map.entry(K::make(key, self.key_size)) {
            Entry::Occupied(mut o) => {
                if o.get().ok(key, self.value_size) {
                    let v = o.get().clone().bumped();
                    o.insert(v);
                    ReadCheck::Ok
                } else {
                    o.insert(V::make(key, 1, self.value_size));
                    ReadCheck::Wrong
                }
            }
            Entry::Vacant(v) => {
                v.insert(V::make(key, 1, self.value_size));
                ReadCheck::Missing
            }
        })
    }

    #[inline]
    fn delete(&self, key: u64) -> anyhow::Result<()> {
        self.map.remove(&K::make(key, self.key_size));
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            description: "dashmap 6 DashMap<K, V> (default shards: 4 x cores), presized to #keys; in memory only".into(),
            memory_knob: if self.explicit_budget {
                "none: an in-memory map ignores the budget (everything stays resident)".into()
            } else {
                "none (everything resident)".into()
            },
            key_type: K::TYPE.to_string(),
            value_type: V::TYPE.to_string(),
        }
    }
}

struct Visit<'a> {
    spec: &'a RunSpec,
    plan: &'a MemoryPlan,
}

impl TypedVisitor for Visit<'_> {
    type Out = anyhow::Result<RunResult>;
    fn visit<K: BenchKey, V: BenchValue>(self) -> Self::Out {
        crate::runner::execute(self.spec, self.plan, || {
            Ok(DashStore::<K, V>::open(self.spec, self.plan))
        })
    }
}

pub fn run(spec: &RunSpec, plan: &MemoryPlan) -> anyhow::Result<RunResult> {
    crate::values::with_types(spec.key_size, spec.value_size, Visit { spec, plan })
}
