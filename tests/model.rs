//! Model test: random operation sequences against a `HashMap` oracle, on a store whose log
//! memory is four 4 KiB pages, so most records live on disk.
mod common;

use std::collections::HashMap;

use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Upsert(u16, Vec<u8>),
    Read(u16),
    Rmw(u16, u8),
    Delete(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u16..48;
    prop_oneof![
        3 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(k, v)| Op::Upsert(k, v)),
        3 => key.clone().prop_map(Op::Read),
        2 => (key.clone(), any::<u8>()).prop_map(|(k, d)| Op::Rmw(k, d)),
        1 => key.prop_map(Op::Delete),
    ]
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let (_dir, kv) = common::small_store::<u16, Vec<u8>>(16 << 10);
    let mut model: HashMap<u16, Vec<u8>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Upsert(k, v) => {
                kv.insert(k, v).unwrap();
                model.insert(*k, v.clone());
            }
            Op::Read(k) => {
                prop_assert_eq!(
                    kv.get(k).unwrap(),
                    model.get(k).cloned(),
                    "op {} read {}",
                    i,
                    k
                );
            }
            Op::Rmw(k, d) => {
                let f = |old: Option<Vec<u8>>| {
                    let mut v = old.unwrap_or_default();
                    v.push(*d);
                    v
                };
                let new = kv.rmw(k, f).unwrap();
                let want = f(model.get(k).cloned());
                prop_assert_eq!(&new, &want, "op {} rmw {}", i, k);
                model.insert(*k, want);
            }
            Op::Delete(k) => {
                kv.remove(k).unwrap();
                model.remove(k);
            }
        }
    }
    for (k, v) in &model {
        let got = kv.get(k).unwrap();
        prop_assert_eq!(got.as_ref(), Some(v), "final read {}", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matches_hashmap_oracle(ops in proptest::collection::vec(op(), 1..400)) {
        run(&ops)?;
    }
}
