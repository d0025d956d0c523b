//! The server reply splitter, fed the stream whole and in the chunks the input chooses, and
//! `Value::parse` on every frame it splits off.
//!
//! Invariants: no panic; whole and chunked give the same frames and the same error; an error is
//! repeated; every frame parses; a parsed value re-encoded parses back to itself (with the `\n`
//! that `Value::encode` writes as a space in a status or error line, which it documents) and,
//! when it has no such `\n` (nor a RESP3 attribute, which the parser drops), re-encodes to the
//! very bytes of the frame. RESP3's types are split and parsed as RESP2's are.
#![no_main]

mod common;

use bytes::{Bytes, BytesMut};
use common::{feed, Input};
use keyway::protocol::{Limits, ReplyDecoder, Value};
use libfuzzer_sys::fuzz_target;

/// `v` as `Value::encode` writes it: `\r` and `\n` in a status or error line become spaces.
fn as_encoded(v: &Value) -> (Value, bool) {
    let line = |s: &Bytes| {
        let changed = s.iter().any(|&b| b == b'\r' || b == b'\n');
        let text: Vec<u8> = s
            .iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
            .collect();
        (Bytes::from(text), changed)
    };
    match v {
        Value::Simple(s) => {
            let (s, changed) = line(s);
            (Value::Simple(s), changed)
        }
        Value::Error(s) => {
            let (s, changed) = line(s);
            (Value::Error(s), changed)
        }
        Value::Double(s) => {
            let (s, changed) = line(s);
            (Value::Double(s), changed)
        }
        Value::BigNumber(s) => {
            let (s, changed) = line(s);
            (Value::BigNumber(s), changed)
        }
        Value::Array(items) => {
            let (items, changed) = all_encoded(items);
            (Value::Array(items), changed)
        }
        Value::Map(items) => {
            let (items, changed) = all_encoded(items);
            (Value::Map(items), changed)
        }
        Value::Set(items) => {
            let (items, changed) = all_encoded(items);
            (Value::Set(items), changed)
        }
        Value::Push(items) => {
            let (items, changed) = all_encoded(items);
            (Value::Push(items), changed)
        }
        other => (other.clone(), false),
    }
}

/// [`as_encoded`] of each item, and whether any changed.
fn all_encoded(items: &[Value]) -> (Vec<Value>, bool) {
    let mut changed = false;
    let items = items
        .iter()
        .map(|i| {
            let (i, c) = as_encoded(i);
            changed |= c;
            i
        })
        .collect();
    (items, changed)
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let limits = input.limits(Limits::for_replies());

    let mut whole_decoder = ReplyDecoder::new(limits);
    let (whole, whole_err, whole_rest) = feed(&[input.stream], |b| whole_decoder.decode(b));
    let mut chunked_decoder = ReplyDecoder::new(limits);
    let (chunked, chunked_err, mut chunked_rest) =
        feed(&input.chunks, |b| chunked_decoder.decode(b));

    assert_eq!(whole, chunked, "frames differ with the chunking");
    assert_eq!(whole_err, chunked_err, "error differs with the chunking");
    match whole_err {
        Some(e) => {
            chunked_rest.extend_from_slice(b"+OK\r\n:1\r\n");
            assert_eq!(chunked_decoder.decode(&mut chunked_rest), Err(e));
        }
        None => assert_eq!(whole_rest, chunked_rest, "undecoded bytes differ"),
    }

    for frame in &whole {
        let v = match Value::parse_with(frame, &limits) {
            Ok(v) => v,
            Err(e) => panic!("split frame {frame:?} does not parse: {e}"),
        };
        let mut encoded = BytesMut::new();
        v.encode(&mut encoded);
        let encoded = encoded.freeze();
        let (expected, changed) = as_encoded(&v);
        assert_eq!(Value::parse_with(&encoded, &limits), Ok(expected));
        // RESP3 attributes (`|`) are dropped by the parser (documented): such a frame does not
        // re-encode to its bytes. A `|` byte anywhere skips the check, conservatively.
        if !changed && !frame.contains(&b'|') {
            assert_eq!(&encoded, frame, "re-encoding changed the frame");
        }
    }

    // Value::parse on the raw stream: anything but a panic.
    let _ = Value::parse(&Bytes::copy_from_slice(input.stream));
});
