//! Which Raft group owns a topic.
//!
//! `group(topic) = jump_consistent_hash(xxh3_64(topic), G)`. Both halves are fixed forever:
//! every manager and every gateway must agree on the owner of a topic, including across
//! versions during a rolling upgrade, and the mapping decides where existing subscriptions live.
//! The unit tests pin known values so that an accidental change fails loudly.
//!
//! Jump consistent hash (John Lamping and Eric Veach, "A Fast, Minimal Memory, Consistent Hash
//! Algorithm", 2014, <https://arxiv.org/abs/1406.2294>) needs no ring or table, and growing the
//! number of buckets from `G` to `G + 1` moves only about `1 / (G + 1)` of the keys, all of them
//! into the new bucket. That is what lets the cluster add groups later while moving few topics.

/// The Raft group that owns `topic` in a cluster of `groups` groups:
/// `jump_consistent_hash(xxh3_64(topic bytes, seed 0), groups)`. Stable forever (a wire and
/// storage contract between managers and gateways of every version).
///
/// `groups == 0` is treated as one group (every topic in group 0), so the function is total.
pub fn group_of(topic: &str, groups: u32) -> u32 {
    jump_consistent_hash(xxhash_rust::xxh3::xxh3_64(topic.as_bytes()), groups)
}

/// Lamping & Veach's jump consistent hash: maps `key` to a bucket in `0..buckets`.
///
/// This is the algorithm exactly as published (same 64-bit linear congruential generator and
/// the same floating-point step), so its output matches other implementations, for example
/// ClickHouse's `jumpConsistentHash`. `buckets == 0` is treated as one bucket.
pub fn jump_consistent_hash(key: u64, buckets: u32) -> u32 {
    const LCG_MULTIPLIER: u64 = 2_862_933_555_777_941_757;
    const TWO_POW_31: f64 = (1u64 << 31) as f64;

    let buckets = i64::from(buckets.max(1));
    let mut key = key;
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(LCG_MULTIPLIER).wrapping_add(1);
        // `(key >> 33) + 1` is in 1..=2^31, so the quotient is in [1, 2^31] and the product
        // stays far below i64::MAX for any bucket below 2^32.
        next = ((bucket + 1) as f64 * (TWO_POW_31 / ((key >> 33) + 1) as f64)) as i64;
    }
    // `bucket` is in `0..buckets` (the loop runs at least once) and buckets <= u32::MAX.
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference values of the published algorithm (the same ones ClickHouse checks).
    #[test]
    fn jump_hash_matches_published_algorithm() {
        assert_eq!(jump_consistent_hash(1, 1), 0);
        assert_eq!(jump_consistent_hash(42, 57), 43);
        assert_eq!(jump_consistent_hash(256, 1024), 520);
        assert_eq!(jump_consistent_hash(3_735_883_980, 1), 0);
        assert_eq!(jump_consistent_hash(3_735_883_980, 666), 361);
        assert_eq!(jump_consistent_hash(16_045_690_984_833_335_023, 255), 237);
    }

    /// The topic -> group mapping is a contract: these values must never change.
    #[test]
    fn group_of_is_pinned() {
        // xxh3_64 with seed 0, as specified by xxHash (the empty input is its published value).
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"room.1"), 0xBD50_14BC_51A1_18B0);
        let pinned: [(&str, u32, u32); 8] = [
            ("room.1", 8, 3),
            ("room.2", 8, 1),
            ("chat/live/42", 8, 0),
            ("orders.user.1001", 8, 6),
            ("", 8, 0),
            ("room.1", 16, 13),
            ("room.1", 1, 0),
            ("sensor/7/cmd", 3, 0),
        ];
        for (topic, groups, group) in pinned {
            assert_eq!(
                group_of(topic, groups),
                group,
                "group_of({topic:?}, {groups})"
            );
        }
    }

    #[test]
    fn zero_buckets_is_one_bucket() {
        assert_eq!(jump_consistent_hash(u64::MAX, 0), 0);
        assert_eq!(group_of("anything", 0), 0);
    }

    #[test]
    fn growing_by_one_bucket_moves_about_one_over_g_plus_one() {
        const KEYS: u64 = 100_000;
        for groups in [1u32, 3, 7, 8, 16, 100] {
            let mut moved = 0u64;
            for i in 0..KEYS {
                let key = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
                let before = jump_consistent_hash(key, groups);
                let after = jump_consistent_hash(key, groups + 1);
                if before != after {
                    // Keys only ever move into the new bucket.
                    assert_eq!(after, groups);
                    moved += 1;
                }
            }
            let expected = KEYS as f64 / f64::from(groups + 1);
            let ratio = moved as f64 / expected;
            assert!(
                (0.9..1.1).contains(&ratio),
                "{groups} -> {} buckets moved {moved} keys, expected about {expected}",
                groups + 1
            );
        }
    }

    #[test]
    fn buckets_are_roughly_balanced() {
        const KEYS: u64 = 80_000;
        let groups = 8u32;
        let mut counts = [0u64; 8];
        for i in 0..KEYS {
            counts[group_of(&format!("topic.{i}"), groups) as usize] += 1;
        }
        let mean = KEYS / u64::from(groups);
        for c in counts {
            assert!(c.abs_diff(mean) < mean / 10, "unbalanced: {counts:?}");
        }
    }

    proptest! {
        #[test]
        fn jump_hash_is_in_range(key: u64, buckets in 1u32..100_000) {
            prop_assert!(jump_consistent_hash(key, buckets) < buckets);
        }

        #[test]
        fn jump_hash_is_monotone(key: u64, buckets in 1u32..10_000) {
            // A key either stays or moves to the newly added bucket.
            let before = jump_consistent_hash(key, buckets);
            let after = jump_consistent_hash(key, buckets + 1);
            prop_assert!(after == before || after == buckets);
        }

        #[test]
        fn group_of_is_in_range(topic in ".{0,64}", groups in 1u32..64) {
            prop_assert!(group_of(&topic, groups) < groups);
        }
    }
}
