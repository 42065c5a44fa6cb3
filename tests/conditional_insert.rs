//! ConditionalInsert writes only when no record of the key is newer than the floor, whether
//! the newer record is in memory or on disk; rmw_async matches rmw.
mod common;

#[test]
fn conditional_insert_respects_the_floor_in_memory_and_on_disk() {
    let (_dir, kv) = common::small_store::<u64, u64>(16 << 10);
    // A key never written: inserted.
    assert!(kv.conditional_insert(&1, &10, kv.tail_address()).unwrap());
    assert_eq!(kv.get(&1).unwrap(), Some(10));

    // A key written after the floor: refused, and the newer value stays.
    let floor = kv.tail_address();
    kv.insert(&2, &20).unwrap();
    assert!(!kv.conditional_insert(&2, &99, floor).unwrap());
    assert_eq!(kv.get(&2).unwrap(), Some(20));

    // A key written only before the floor: inserted over it.
    kv.insert(&3, &30).unwrap();
    let floor = kv.tail_address();
    assert!(kv.conditional_insert(&3, &31, floor).unwrap());
    assert_eq!(kv.get(&3).unwrap(), Some(31));

    // Same checks with the newer record pushed to disk.
    let floor = kv.tail_address();
    kv.insert(&4, &40).unwrap();
    kv.remove(&5).unwrap();
    kv.insert(&6, &60).unwrap();
    let floor_after = kv.tail_address();
    for k in 1_000..4_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    assert!(
        kv.stats().markers.head > floor_after,
        "records must be on disk for this test"
    );
    assert!(
        !kv.conditional_insert(&4, &99, floor).unwrap(),
        "newer record on disk"
    );
    assert_eq!(kv.get(&4).unwrap(), Some(40));
    assert!(
        kv.conditional_insert(&6, &61, floor_after).unwrap(),
        "older record on disk"
    );
    assert_eq!(kv.get(&6).unwrap(), Some(61));
    assert!(kv.conditional_insert(&7, &70, floor).unwrap(), "absent key");
    assert_eq!(kv.get(&7).unwrap(), Some(70));
}

#[test]
fn rmw_async_follows_chains_on_disk() {
    let (_dir, kv) = common::small_store::<u64, u64>(16 << 10);
    for k in 0..3_000u64 {
        kv.insert(&k, &k).unwrap();
    }
    let got = futures_executor::block_on(async {
        let mut out = Vec::new();
        for k in [0u64, 1, 2_999, 5_000] {
            out.push(
                kv.rmw_async(&k, |old| old.unwrap_or(100) * 2)
                    .await
                    .unwrap(),
            );
        }
        out
    });
    assert_eq!(got, vec![0, 2, 5_998, 200]);
    assert_eq!(kv.get(&1).unwrap(), Some(2));
}
