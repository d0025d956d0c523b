//! Routing cost: key -> slot -> ranked servers per key, and `SlotTable::build`, for 3 and 300
//! servers. The per-key cost must not grow with the number of servers (the table is an array).
//!
//! Run: `cargo bench --bench routing`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keyway::routing::{key_slot, HashTag, SlotTable};

const SERVER_COUNTS: [usize; 2] = [3, 300];
/// Replicas + spare: the ranking depth a table keeps per slot.
const DEPTH: usize = 3;

fn server_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("redis-{i}")).collect()
}

fn servers(names: &[String]) -> Vec<(&str, f64)> {
    names.iter().map(|n| (n.as_str(), 1.0)).collect()
}

/// Keys like applications use: prefixes, ids, some with hash tags.
fn keys() -> Vec<Vec<u8>> {
    (0..1024)
        .map(|i| match i % 4 {
            0 => format!("user:{i}:profile"),
            1 => format!("{{user{i}}}.followers"),
            2 => format!(
                "session:{:016x}",
                (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ),
            _ => format!("cache:page:/articles/{i}"),
        })
        .map(String::into_bytes)
        .collect()
}

fn route(c: &mut Criterion) {
    let keys = keys();
    let tag = Some(HashTag::REDIS);
    let mut group = c.benchmark_group("route_key");
    group.throughput(Throughput::Elements(keys.len() as u64));
    // Build every table before measuring any, so each measurement sees the same heap state.
    let tables: Vec<(usize, SlotTable)> = SERVER_COUNTS
        .iter()
        .filter_map(|&n| Some((n, SlotTable::build(&servers(&server_names(n)), DEPTH).ok()?)))
        .collect();
    for (n, table) in &tables {
        group.bench_with_input(BenchmarkId::from_parameter(n), table, |b, table| {
            b.iter(|| {
                let mut acc = 0u32;
                for key in &keys {
                    let ranked = table.ranked(key_slot(black_box(key), tag));
                    acc = acc.wrapping_add(u32::from(ranked[0]));
                }
                acc
            });
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("slot_table_build");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for n in SERVER_COUNTS {
        let names = server_names(n);
        let list = servers(&names);
        group.bench_with_input(BenchmarkId::from_parameter(n), &list, |b, list| {
            b.iter(|| SlotTable::build(black_box(list), DEPTH));
        });
    }
    group.finish();
}

criterion_group!(benches, route, build);
criterion_main!(benches);
