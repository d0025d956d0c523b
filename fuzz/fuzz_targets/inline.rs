//! The inline-command parser (redis-server's `sdssplitargs`), alone and through the decoder.
//!
//! Invariants: no panic; arguments re-quoted split back to themselves; a line the decoder
//! reads as inline (no `\n`, no NUL, not starting with `*`, within the length cap) gives it the
//! same arguments or the same error.
#![no_main]

use bytes::BytesMut;
use keyway::fuzzing::split_inline;
use keyway::protocol::{Limits, RequestDecoder};
use libfuzzer_sys::fuzz_target;

/// A line `split_inline` reads as `args`: every argument double-quoted, bytes escaped.
fn quote(args: &[Vec<u8>]) -> Vec<u8> {
    let mut line = Vec::new();
    for a in args {
        line.extend_from_slice(b" \"");
        for &b in a {
            match b {
                b'"' => line.extend_from_slice(b"\\\""),
                b'\\' => line.extend_from_slice(b"\\\\"),
                b' '..=b'~' => line.push(b),
                _ => line.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            }
        }
        line.push(b'"');
    }
    line
}

fuzz_target!(|data: &[u8]| {
    let split = split_inline(data);
    if let Ok(args) = &split {
        assert_eq!(
            split_inline(&quote(args)).as_ref(),
            Ok(args),
            "re-quoted args differ"
        );
    }

    let limits = Limits::default();
    let inline = data.first() != Some(&b'*')
        && !data.contains(&b'\n')
        && !data.contains(&0)
        && data.len() < limits.max_inline_len;
    if !inline {
        return;
    }
    let mut buf = BytesMut::from(data);
    buf.extend_from_slice(b"\r\n");
    let decoded = RequestDecoder::new(limits).decode(&mut buf);
    match (split, decoded) {
        (Err(e), decoded) => assert_eq!(decoded, Err(e)),
        (Ok(args), Ok(None)) => assert!(args.is_empty() && buf.is_empty()),
        (Ok(args), Ok(Some(r))) => {
            let got: Vec<Vec<u8>> = r.args().iter().map(<[u8]>::to_vec).collect();
            assert_eq!(got, args);
            assert!(buf.is_empty());
        }
        (Ok(args), Err(e)) => panic!("decoder refused {args:?}: {e}"),
    }
});
