//! Routing scenarios: Redis Cluster's slot function, the pinned key -> server mapping, and the
//! movement, weight and balance guarantees of the rendezvous slot table (`docs/routing.md`).
//!
//! The figures quoted in `docs/routing.md` come from
//! `cargo test --test routing -- --nocapture`, which prints them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::BTreeMap;

use keyway::routing::{key_slot, primary_moves, score, HashTag, Slot, SlotTable, HRW_SEED, SLOTS};
use proptest::prelude::*;

const TAG: Option<HashTag> = Some(HashTag::REDIS);

fn slot(key: &str) -> u16 {
    key_slot(key.as_bytes(), TAG).0
}

/// Names of `n` servers `s0..s{n-1}`.
fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("s{i}")).collect()
}

fn equal(names: &[String]) -> Vec<(&str, f64)> {
    names.iter().map(|n| (n.as_str(), 1.0)).collect()
}

fn build(servers: &[(&str, f64)], depth: usize) -> SlotTable {
    SlotTable::build(servers, depth).unwrap()
}

/// The server names of `slot`'s ranking in `table`.
fn ranked_names<'a>(table: &SlotTable, servers: &[(&'a str, f64)], slot: Slot) -> Vec<&'a str> {
    table
        .ranked(slot)
        .iter()
        .map(|&i| servers[i as usize].0)
        .collect()
}

/// Primaries per server name.
fn primary_counts<'a>(table: &SlotTable, servers: &[(&'a str, f64)]) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for s in Slot::all() {
        *counts
            .entry(servers[table.primary(s) as usize].0)
            .or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// Key -> slot: Redis Cluster's function.

#[test]
fn key_slot_matches_known_redis_cluster_values() {
    // Values from `CLUSTER KEYSLOT` on redis-server 7.0 (also checked live below).
    assert_eq!(slot("foo"), 12182);
    assert_eq!(slot("bar"), 5061);
    assert_eq!(slot("123456789"), 0x31C3 & 0x3FFF); // CRC16-XMODEM check value 0x31C3 = 12739
    assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
    assert_eq!(slot("{user1000}.following"), slot("user1000"));
    // An empty tag does not count: the whole key is hashed.
    assert_eq!(key_slot(b"foo{}{bar}", TAG), key_slot(b"foo{}{bar}", None));
    assert_ne!(slot("foo{}{bar}"), slot("bar"));
    // First `{`, then the first `}` after it: the tag is "{bar".
    assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
    assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
    assert_eq!(slot(""), 0);
}

#[test]
fn tags_disabled_hash_whole_key() {
    assert_eq!(HashTag::parse("").unwrap(), None);
    // The whole key is hashed: CRC16-XMODEM("{user1000}.following") mod 16384, not "user1000".
    assert_eq!(
        key_slot(b"{user1000}.following", None).0,
        crc16::State::<crc16::XMODEM>::calculate(b"{user1000}.following") & 0x3FFF
    );
    assert_ne!(
        key_slot(b"{user1000}.following", None),
        key_slot(b"user1000", None)
    );
    assert_ne!(
        key_slot(b"{user1000}.following", None),
        key_slot(b"{user1000}.followers", None)
    );
}

#[test]
fn custom_tag_delimiters() {
    let angle = HashTag::parse("<>").unwrap();
    assert_eq!(
        key_slot(b"<user1000>.following", angle),
        key_slot(b"user1000", None)
    );
    assert_eq!(
        key_slot(b"<user1000>.following", angle),
        key_slot(b"x<user1000>", angle)
    );
    // With "<>", braces are ordinary bytes.
    assert_eq!(
        key_slot(b"{user1000}.x", angle),
        key_slot(b"{user1000}.x", None)
    );
    assert!(HashTag::parse("{").is_err());
}

/// Every key of a corpus (tag edge cases, binary keys, pseudo-random keys) against a real
/// cluster-enabled `redis-server`'s `CLUSTER KEYSLOT`.
#[test]
fn key_slot_agrees_with_live_redis_cluster_keyslot() {
    let server = support::RedisServer::start_with(&["--cluster-enabled", "yes"]);
    let mut conn = server.client();
    let mut keys: Vec<Vec<u8>> = [
        "foo",
        "bar",
        "123456789",
        "{user1000}.following",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{",
        "}",
        "{}",
        "}{",
        "{a",
        "a}",
        "{{}}",
        "",
        "é{ü}",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    keys.push(vec![0, 255, b'{', 1, b'}', 0]);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..500 {
        // xorshift keys of varied length and content, some with braces.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut k: Vec<u8> = x.to_le_bytes()[..(i % 8) + 1].to_vec();
        if i % 3 == 0 {
            k.insert((i / 3) % k.len(), b'{');
            k.push(b'}');
        }
        keys.push(k);
    }
    for key in &keys {
        let want: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .unwrap();
        assert_eq!(i64::from(key_slot(key, TAG).0), want, "key {key:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Golden mapping. CHANGING ANY LITERAL BELOW MOVES USERS' KEYS TO OTHER SERVERS: every deployed
// Keyway would route existing keys somewhere they are not. If these tests fail after a refactor,
// the refactor is wrong (hash, seed, encoding, score formula or tie-break changed): fix it, do not
// update the values.

/// (key, slot, primary among a,b,c (weight 1), [primary, replica] among the 5-server config).
const GOLDEN: &[(&str, u16, &str, [&str; 2])] = &[
    ("foo", 12182, "a", ["redis-0", "redis-3"]),
    ("bar", 5061, "c", ["redis-2", "redis-0"]),
    ("baz", 4813, "c", ["redis-1", "redis-3"]),
    ("user:1", 10778, "c", ["redis-2", "redis-3"]),
    ("user:2", 6777, "c", ["redis-2", "redis-1"]),
    ("user:3", 2648, "a", ["redis-3", "redis-1"]),
    ("user:1000", 1649, "a", ["redis-2", "redis-4"]),
    ("session:abc", 14788, "c", ["redis-1", "redis-2"]),
    ("session:xyz", 14503, "a", ["redis-1", "redis-2"]),
    ("cart:42", 15749, "c", ["redis-1", "redis-2"]),
    ("{user1000}.following", 3443, "a", ["redis-4", "redis-1"]),
    ("{user1000}.followers", 3443, "a", ["redis-4", "redis-1"]),
    ("a", 15495, "b", ["redis-2", "redis-3"]),
    ("b", 3300, "b", ["redis-2", "redis-4"]),
    ("c", 7365, "c", ["redis-3", "redis-0"]),
    ("", 0, "a", ["redis-1", "redis-2"]),
    ("hello world", 15332, "b", ["redis-4", "redis-0"]),
    ("0", 13907, "c", ["redis-4", "redis-0"]),
    ("12345", 5228, "c", ["redis-4", "redis-3"]),
    ("été", 10087, "b", ["redis-3", "redis-4"]),
    ("kÿ", 16041, "c", ["redis-3", "redis-2"]),
];

const THREE: [(&str, f64); 3] = [("a", 1.0), ("b", 1.0), ("c", 1.0)];
const FIVE: [(&str, f64); 5] = [
    ("redis-0", 1.0),
    ("redis-1", 1.0),
    ("redis-2", 2.0),
    ("redis-3", 1.0),
    ("redis-4", 1.0),
];

#[test]
fn golden_key_to_server_mapping() {
    let three = build(&THREE, 1);
    let five = build(&FIVE, 2);
    for &(key, want_slot, want_three, want_five) in GOLDEN {
        let s = key_slot(key.as_bytes(), TAG);
        assert_eq!(s.0, want_slot, "slot of {key:?}");
        assert_eq!(
            THREE[three.primary(s) as usize].0,
            want_three,
            "3-server primary of {key:?}"
        );
        assert_eq!(
            ranked_names(&five, &FIVE, s),
            want_five,
            "5-server ranking of {key:?}"
        );
    }
}

#[test]
fn golden_is_independent_of_server_list_order() {
    // Servers are identified by name: listing them in another order routes every slot the same.
    let mut reversed = FIVE;
    reversed.reverse();
    let (a, b) = (build(&FIVE, 5), build(&reversed, 5));
    for s in Slot::all() {
        assert_eq!(ranked_names(&a, &FIVE, s), ranked_names(&b, &reversed, s));
    }
}

#[test]
fn golden_scores() {
    // The score function itself, pinned: seed and encoding are part of the format. Compared to
    // 1e-12 relative rather than bit for bit: `f64::ln` comes from the platform's libm, which may
    // differ in the last bit (see docs/routing.md, "Stability").
    assert_eq!(HRW_SEED, 0x6B65_7977_6179_0001);
    for (name, weight, slot, want) in [
        ("a", 1.0, 0, 6.205379542774646),
        ("redis-2", 2.0, 16383, 16.860847398828717),
    ] {
        let got = score(name, weight, Slot(slot));
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "score({name:?}, {weight}, {slot}) = {got}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Movement.

#[test]
fn removing_one_of_five_moves_only_its_slots() {
    let five_names = names(5);
    let five = equal(&five_names);
    let four: Vec<(&str, f64)> = five.iter().copied().filter(|(n, _)| *n != "s2").collect();
    let (old, new) = (build(&five, 1), build(&four, 1));
    let old_names: Vec<&str> = five.iter().map(|s| s.0).collect();
    let new_names: Vec<&str> = four.iter().map(|s| s.0).collect();

    let moves = primary_moves(&old, &old_names, &new, &new_names);
    let owned_by_removed = primary_counts(&old, &five)["s2"];
    let moved: usize = moves.values().sum();
    println!(
        "remove s2 of 5: {moved} slots moved ({:.2}%), {moves:?}",
        pct(moved)
    );
    assert!(moves.keys().all(|(from, _)| from == "s2"), "{moves:?}");
    assert_eq!(moved, owned_by_removed);
    // Its slots spread over the remaining four (each gets some).
    assert_eq!(moves.len(), 4);
}

#[test]
fn adding_a_sixth_moves_about_one_sixth_all_to_it() {
    let six_names = names(6);
    let six = equal(&six_names);
    let five = &six[..5];
    let (old, new) = (build(five, 1), build(&six, 1));
    let five_names: Vec<&str> = five.iter().map(|s| s.0).collect();
    let all_names: Vec<&str> = six.iter().map(|s| s.0).collect();

    let moves = primary_moves(&old, &five_names, &new, &all_names);
    let moved: usize = moves.values().sum();
    let share = moved as f64 / SLOTS as f64;
    println!(
        "add s5 to 5: {moved} slots moved ({:.2}%, ideal 16.67%), {moves:?}",
        pct(moved)
    );
    assert!(moves.keys().all(|(_, to)| to == "s5"), "{moves:?}");
    // Tolerance: 1/6 ± 2 percentage points (binomial sd over 16384 slots is 0.29 pp).
    assert!((share - 1.0 / 6.0).abs() <= 0.02, "moved share {share}");
}

#[test]
fn replicas_removing_a_server_changes_only_rankings_that_held_it() {
    let five_names = names(5);
    let five = equal(&five_names);
    let four: Vec<(&str, f64)> = five.iter().copied().filter(|(n, _)| *n != "s3").collect();
    let old = build(&five, 2);
    let old_deep = build(&five, 3);
    let new = build(&four, 2);
    let mut changed = 0;
    for s in Slot::all() {
        let before = ranked_names(&old, &five, s);
        let after = ranked_names(&new, &four, s);
        if before.contains(&"s3") {
            changed += 1;
            // The survivors keep their order and the next server of the old ranking moves up.
            let expected: Vec<&str> = ranked_names(&old_deep, &five, s)
                .into_iter()
                .filter(|n| *n != "s3")
                .collect();
            assert_eq!(after, expected, "slot {s:?}");
        } else {
            assert_eq!(after, before, "slot {s:?} did not hold s3 but changed");
        }
    }
    println!(
        "depth 2, remove s3 of 5: {changed} replica sets changed ({:.2}%, ideal 40%)",
        pct(changed)
    );
}

#[test]
fn replicas_adding_a_server_only_inserts_it() {
    let six_names = names(6);
    let six = equal(&six_names);
    let (old, new) = (build(&six[..5], 2), build(&six, 2));
    let mut changed = 0;
    for s in Slot::all() {
        let before = ranked_names(&old, &six[..5], s);
        let after = ranked_names(&new, &six, s);
        if after.contains(&"s5") {
            changed += 1;
            let survivors: Vec<&str> = after.iter().copied().filter(|n| *n != "s5").collect();
            assert_eq!(survivors, before[..1], "slot {s:?}");
        } else {
            assert_eq!(after, before, "slot {s:?}");
        }
    }
    println!(
        "depth 2, add s5 to 5: {changed} replica sets changed ({:.2}%, ideal 33.33%)",
        pct(changed)
    );
}

// ---------------------------------------------------------------------------------------------
// Distribution.

#[test]
fn weights_one_one_two_share_25_25_50() {
    let servers = [("a", 1.0), ("b", 1.0), ("c", 2.0)];
    let counts = primary_counts(&build(&servers, 1), &servers);
    println!(
        "weights 1,1,2: {counts:?} = {:.2}% / {:.2}% / {:.2}%",
        pct(counts["a"]),
        pct(counts["b"]),
        pct(counts["c"])
    );
    // Tolerance: ± 2 percentage points of the ideal share.
    for (name, ideal) in [("a", 25.0), ("b", 25.0), ("c", 50.0)] {
        assert!(
            (pct(counts[name]) - ideal).abs() <= 2.0,
            "{name}: {counts:?}"
        );
    }
}

#[test]
fn three_equal_servers_balance_within_3_percent() {
    let counts = primary_counts(&build(&THREE, 1), &THREE);
    println!(
        "3 equal: {counts:?} = {:.2}% / {:.2}% / {:.2}%",
        pct(counts["a"]),
        pct(counts["b"]),
        pct(counts["c"])
    );
    // Tolerance: each count within ±3% (relative) of the ideal 16384 / 3 = 5461.3.
    let ideal = SLOTS as f64 / 3.0;
    for (name, &count) in &counts {
        assert!(
            (count as f64 - ideal).abs() <= 0.03 * ideal,
            "{name}: {counts:?}"
        );
    }
}

#[test]
fn lookup_is_independent_of_depth_and_server_count() {
    // The table is a flat array: 300 servers ranked to depth 3 still give a 3-entry slice.
    let many_names = names(300);
    let many = equal(&many_names);
    let table = build(&many, 3);
    assert_eq!(table.depth(), 3);
    assert!(Slot::all().all(|s| table.ranked(s).len() == 3));
    let counts = primary_counts(&table, &many);
    println!(
        "300 equal: primaries per server min {} max {} (ideal 54.6)",
        counts.values().min().unwrap(),
        counts.values().max().unwrap()
    );
    assert_eq!(counts.len(), 300, "every server is primary somewhere");
}

/// Our ranking is the same HRW ranking the `rendezvous_hash` crate computes (its weighted
/// "logarithmic method") when it is fed our stable hash: a cross-check of the score formula.
#[test]
fn ranking_agrees_with_rendezvous_hash_crate() {
    use rendezvous_hash::{Capacity, NodeHasher, RendezvousNodes, WeightedNode};
    use std::hash::{Hash, Hasher};

    /// The slot, fed as its documented little-endian bytes (not std's `Hash` for u16).
    struct SlotBytes(u16);
    impl Hash for SlotBytes {
        fn hash<H: Hasher>(&self, state: &mut H) {
            state.write(&self.0.to_le_bytes());
        }
    }
    /// Collects the bytes written into it.
    #[derive(Default)]
    struct Bytes(Vec<u8>);
    impl Hasher for Bytes {
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    struct Xxh3Hrw;
    impl NodeHasher<&str> for Xxh3Hrw {
        fn hash<T: Hash>(&self, node: &&str, item: &T) -> u64 {
            let mut input = Bytes(node.as_bytes().to_vec());
            input.0.push(0xFF);
            item.hash(&mut input);
            xxhash_rust::xxh3::xxh3_64_with_seed(&input.0, HRW_SEED)
        }
    }

    let mut nodes = RendezvousNodes::new(Xxh3Hrw);
    for (name, weight) in FIVE {
        nodes.insert(WeightedNode::new(name, Capacity::new(weight).unwrap()));
    }
    let table = build(&FIVE, 5);
    for s in Slot::all() {
        let theirs: Vec<&str> = nodes
            .calc_candidates(&SlotBytes(s.0))
            .map(|n| n.node)
            .collect();
        assert_eq!(ranked_names(&table, &FIVE, s), theirs, "slot {s:?}");
    }
}

fn pct(count: usize) -> f64 {
    count as f64 * 100.0 / SLOTS as f64
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn server_list() -> impl Strategy<Value = Vec<(String, f64)>> {
    prop::collection::btree_map("[a-z0-9-]{1,12}", 0.1f64..10.0, 1..9)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn ranked_is_a_deterministic_permutation_prefix(
        servers in server_list(),
        depth in 0usize..12,
        probe in prop::collection::vec(0u16..16384, 64),
    ) {
        let list: Vec<(&str, f64)> = servers.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        let table = build(&list, depth);
        let again = build(&list, depth);
        prop_assert_eq!(&table, &again);
        prop_assert_eq!(table.depth(), depth.clamp(1, list.len()));
        let full = build(&list, list.len());
        for s in probe.into_iter().map(Slot) {
            let ranked = table.ranked(s);
            prop_assert_eq!(ranked.len(), table.depth());
            let mut seen = ranked.to_vec();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), ranked.len(), "duplicates in {:?}", ranked);
            prop_assert!(ranked.iter().all(|&i| (i as usize) < list.len()));
            prop_assert_eq!(ranked, &full.ranked(s)[..table.depth()]);
            prop_assert_eq!(table.primary(s), ranked[0]);
        }
    }

    #[test]
    fn adding_a_server_keeps_the_relative_order_of_the_others(
        servers in server_list(),
        newcomer in "[A-Z]{1,8}",
        weight in 0.1f64..10.0,
        probe in prop::collection::vec(0u16..16384, 64),
    ) {
        let old: Vec<(&str, f64)> = servers.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        let mut new = old.clone();
        new.insert(0, (newcomer.as_str(), weight)); // uppercase: never an existing name
        let (before, after) = (build(&old, old.len()), build(&new, new.len()));
        for s in probe.into_iter().map(Slot) {
            let kept: Vec<&str> = ranked_names(&after, &new, s)
                .into_iter()
                .filter(|n| *n != newcomer.as_str())
                .collect();
            prop_assert_eq!(kept, ranked_names(&before, &old, s));
        }
    }
}
