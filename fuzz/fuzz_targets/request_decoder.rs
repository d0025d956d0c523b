//! The client request decoder, fed the stream whole and in the chunks the input chooses.
//!
//! Invariants: no panic; whole and chunked give the same requests and the same error; an error
//! is repeated whatever comes next; a request has arguments and its frame is their multibulk
//! encoding; `Ok(None)` with no new bytes changes nothing.
#![no_main]

mod common;

use bytes::BytesMut;
use common::{feed, Input};
use keyway::protocol::{write_command, Limits, RequestDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let limits = input.limits(Limits::default());

    let mut whole_decoder = RequestDecoder::new(limits);
    let (whole, whole_err, whole_rest) = feed(&[input.stream], |b| whole_decoder.decode(b));
    let mut chunked_decoder = RequestDecoder::new(limits);
    let (chunked, chunked_err, mut chunked_rest) =
        feed(&input.chunks, |b| chunked_decoder.decode(b));

    assert_eq!(whole, chunked, "requests differ with the chunking");
    assert_eq!(whole_err, chunked_err, "error differs with the chunking");

    for r in &whole {
        assert!(!r.args().is_empty(), "a request without arguments");
        let mut encoded = BytesMut::new();
        write_command(&mut encoded, &r.args().to_vec());
        assert_eq!(
            r.frame().as_ref(),
            encoded.as_ref(),
            "frame is not its arguments"
        );
    }

    match whole_err {
        Some(e) => {
            // Sticky: a valid request afterwards still gets the error.
            chunked_rest.extend_from_slice(b"*1\r\n$4\r\nPING\r\nPING\r\n");
            assert_eq!(chunked_decoder.decode(&mut chunked_rest), Err(e.clone()));
            assert_eq!(chunked_decoder.decode(&mut BytesMut::new()), Err(e));
        }
        None => {
            assert_eq!(whole_rest, chunked_rest, "undecoded bytes differ");
            let before = chunked_rest.clone();
            assert_eq!(chunked_decoder.decode(&mut chunked_rest), Ok(None));
            assert_eq!(
                chunked_rest, before,
                "a call with no new bytes consumed some"
            );
        }
    }
});
