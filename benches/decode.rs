//! Decode throughput of the RESP layer, the first cost on every request and reply.
//!
//! - `decode_bytes` / `decode_commands`: a realistic client pipeline of 1000 commands (SET with
//!   64-byte values, GET, MGET of 10 keys), decoded whole and as it arrives in 1460-byte TCP
//!   segments (which exercises the resumable state), in bytes/s and commands/s.
//! - `decode_big_mset`: one MSET with 100k arguments arriving in 1460-byte segments: must stay
//!   linear (a decoder that rescans from byte 0 on every read is quadratic here).
//! - `split_replies`: the replies to that pipeline (+OK, bulk, arrays of bulks and nils) split
//!   into frames, as the backend connection does, in bytes/s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keyway::protocol::{
    write_array_header, write_bulk, write_command, write_nil, write_simple, Limits, ReplyDecoder,
    RequestDecoder,
};

const COMMANDS: usize = 1000;
const SEGMENT: usize = 1460;

/// 1000 commands: 50% SET key:NNNN <64 bytes>, 40% GET, 10% MGET of 10 keys.
fn pipeline() -> Vec<u8> {
    let value = [b'v'; 64];
    let mut out = BytesMut::new();
    for i in 0..COMMANDS {
        let key = format!("key:{:04}", i % 10_000);
        match i % 10 {
            0..=4 => write_command(&mut out, &[&b"SET"[..], key.as_bytes(), &value]),
            5..=8 => write_command(&mut out, &[&b"GET"[..], key.as_bytes()]),
            _ => {
                let mut args = vec![b"MGET".to_vec()];
                args.extend((0..10).map(|k| format!("key:{:04}", (i + k) % 10_000).into_bytes()));
                write_command(&mut out, &args);
            }
        }
    }
    out.to_vec()
}

/// The replies redis would send to `pipeline()`.
fn replies() -> Vec<u8> {
    let value = [b'v'; 64];
    let mut out = BytesMut::new();
    for i in 0..COMMANDS {
        match i % 10 {
            0..=4 => write_simple(&mut out, "OK"),
            5..=8 => write_bulk(&mut out, &value),
            _ => {
                write_array_header(&mut out, 10);
                for k in 0..10 {
                    if k % 3 == 0 {
                        write_nil(&mut out);
                    } else {
                        write_bulk(&mut out, &value);
                    }
                }
            }
        }
    }
    out.to_vec()
}

fn big_mset() -> Vec<u8> {
    let mut args = vec![b"MSET".to_vec()];
    for i in 0..50_000 {
        args.push(format!("key:{i:06}").into_bytes());
        args.push(vec![b'v'; 16]);
    }
    let mut out = BytesMut::new();
    write_command(&mut out, &args);
    out.to_vec()
}

/// Decodes all of `input` at once; returns the number of requests.
fn decode_whole(input: &[u8]) -> usize {
    let mut d = RequestDecoder::new(Limits::default());
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while let Ok(Some(r)) = d.decode(&mut buf) {
        black_box(&r);
        n += 1;
    }
    n
}

/// Decodes `input` as it would arrive in TCP segments; returns the number of requests.
fn decode_segments(input: &[u8]) -> usize {
    let mut d = RequestDecoder::new(Limits::default());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut n = 0;
    for seg in input.chunks(SEGMENT) {
        buf.extend_from_slice(seg);
        while let Ok(Some(r)) = d.decode(&mut buf) {
            black_box(&r);
            n += 1;
        }
    }
    n
}

fn split_whole(input: &[u8]) -> usize {
    let mut d = ReplyDecoder::new(Limits::for_replies());
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while let Ok(Some(f)) = d.decode(&mut buf) {
        black_box(&f);
        n += 1;
    }
    n
}

fn bench_requests(c: &mut Criterion) {
    let input = pipeline();
    assert_eq!(decode_whole(&input), COMMANDS);
    assert_eq!(decode_segments(&input), COMMANDS);

    let mut g = c.benchmark_group("decode_bytes");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("pipeline_whole", |b| {
        b.iter(|| decode_whole(black_box(&input)))
    });
    g.bench_function("pipeline_segments", |b| {
        b.iter(|| decode_segments(black_box(&input)))
    });
    g.finish();

    let mut g = c.benchmark_group("decode_commands");
    g.throughput(Throughput::Elements(COMMANDS as u64));
    g.bench_function("pipeline_whole", |b| {
        b.iter(|| decode_whole(black_box(&input)))
    });
    g.bench_function("pipeline_segments", |b| {
        b.iter(|| decode_segments(black_box(&input)))
    });
    g.finish();

    let mset = big_mset();
    assert_eq!(decode_segments(&mset), 1);
    let mut g = c.benchmark_group("decode_big_mset");
    g.throughput(Throughput::Bytes(mset.len() as u64));
    g.bench_function("100k_args_segments", |b| {
        b.iter(|| decode_segments(black_box(&mset)))
    });
    g.finish();
}

fn bench_replies(c: &mut Criterion) {
    let input = replies();
    assert_eq!(split_whole(&input), COMMANDS);
    let mut g = c.benchmark_group("split_replies");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("pipeline_whole", |b| {
        b.iter_batched(
            || BytesMut::from(&input[..]),
            |mut buf| {
                let mut d = ReplyDecoder::new(Limits::for_replies());
                while let Ok(Some(f)) = d.decode(&mut buf) {
                    black_box(&f);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_requests, bench_replies);
criterion_main!(benches);
