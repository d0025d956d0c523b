//! The RESP layer against itself (property tests: any split of a stream decodes the same, values
//! round-trip, garbage never panics) and against a real redis-server (its reply bytes split into
//! exactly the frames it sent; its reading of inline commands matches ours).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keyway::protocol::{
    write_bulk, write_command, Limits, ProtocolError, ReplyDecoder, Request, RequestDecoder, Value,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// One item of a client stream: a real command (multibulk or inline) or a frame redis skips.
#[derive(Debug, Clone)]
enum Item {
    Multibulk(Vec<Vec<u8>>),
    Inline(Vec<Vec<u8>>),
    Skipped(&'static [u8]),
}

/// Arbitrary bytes, biased towards the ones that matter to RESP and to inline quoting.
fn arg() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => b'a'..=b'z',
        1 => Just(b'\r'),
        1 => Just(b'\n'),
        1 => Just(b' '),
        1 => Just(b'"'),
        1 => Just(b'\''),
        1 => Just(b'\\'),
        1 => Just(b'$'),
        1 => Just(0u8),
        2 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..24)
}

fn item() -> impl Strategy<Value = Item> {
    let args = || prop::collection::vec(arg(), 1..6);
    prop_oneof![
        6 => args().prop_map(Item::Multibulk),
        3 => args().prop_map(Item::Inline),
        1 => prop::sample::select(vec![&b"*0\r\n"[..], b"*-1\r\n", b"\r\n", b"\n", b" \t \r\n"])
            .prop_map(Item::Skipped),
    ]
}

/// An inline line for `args`: plain words where possible, else double quotes with escapes.
fn inline_line(args: &[Vec<u8>]) -> Vec<u8> {
    let mut line = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        if !a.is_empty() && a.iter().all(u8::is_ascii_alphanumeric) {
            line.extend_from_slice(a);
            continue;
        }
        line.push(b'"');
        for &b in a {
            match b {
                b'"' => line.extend_from_slice(b"\\\""),
                b'\\' => line.extend_from_slice(b"\\\\"),
                b'\n' => line.extend_from_slice(b"\\n"),
                b' '..=b'~' => line.push(b),
                _ => line.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            }
        }
        line.push(b'"');
    }
    line.extend_from_slice(b"\r\n");
    line
}

/// The stream's bytes and the arguments of the requests it holds, in order.
fn stream_of(items: &[Item]) -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
    let mut bytes = BytesMut::new();
    let mut expected = Vec::new();
    for item in items {
        match item {
            Item::Multibulk(args) => {
                write_command(&mut bytes, args);
                expected.push(args.clone());
            }
            Item::Inline(args) => {
                bytes.extend_from_slice(&inline_line(args));
                expected.push(args.clone());
            }
            Item::Skipped(raw) => bytes.extend_from_slice(raw),
        }
    }
    (bytes.to_vec(), expected)
}

fn value() -> impl Strategy<Value = Value> {
    let line = prop::collection::vec(
        any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..16,
    )
    .prop_map(Bytes::from);
    let leaf = prop_oneof![
        line.clone().prop_map(Value::Simple),
        line.prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        arg().prop_map(|a| Value::Bulk(Bytes::from(a))),
        Just(Value::Nil),
        Just(Value::NilArray),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop::collection::vec(inner, 0..8).prop_map(Value::Array)
    })
}

/// Cut points turning `len` bytes into pieces.
fn pieces(len: usize, cuts: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    cuts.push(0);
    cuts.push(len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers
// ---------------------------------------------------------------------------------------------

/// Every result a decoder gives for `input` fed in `ranges`, ending with the error if any.
fn feed<T>(
    input: &[u8],
    ranges: &[std::ops::Range<usize>],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>,
) -> (Vec<T>, Option<ProtocolError>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for r in ranges {
        buf.extend_from_slice(&input[r.clone()]);
        loop {
            match decode(&mut buf) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => break,
                Err(e) => return (out, Some(e), buf),
            }
        }
    }
    (out, None, buf)
}

fn requests(
    input: &[u8],
    ranges: &[std::ops::Range<usize>],
    limits: Limits,
) -> (Vec<Request>, Option<ProtocolError>, BytesMut) {
    let mut d = RequestDecoder::new(limits);
    feed(input, ranges, |b| d.decode(b))
}

fn replies(
    input: &[u8],
    ranges: &[std::ops::Range<usize>],
    limits: Limits,
) -> (Vec<Bytes>, Option<ProtocolError>, BytesMut) {
    let mut d = ReplyDecoder::new(limits);
    feed(input, ranges, |b| d.decode(b))
}

fn args_of(r: &Request) -> Vec<Vec<u8>> {
    r.args().iter().map(|a| a.to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any split of a stream of requests decodes to the same requests as the whole stream,
    /// and those are the requests that were written.
    #[test]
    fn request_stream_decodes_the_same_however_split(
        items in prop::collection::vec(item(), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let (input, expected) = stream_of(&items);
        let whole = pieces(input.len(), &[]);
        let (all, err, rest) = requests(&input, &whole, Limits::default());
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty());
        let got: Vec<_> = all.iter().map(args_of).collect();
        prop_assert_eq!(&got, &expected);
        for (r, item) in all.iter().zip(items.iter().filter(|i| !matches!(i, Item::Skipped(_)))) {
            // Multibulk is forwarded as received; inline as its encoding.
            let mut encoded = BytesMut::new();
            write_command(&mut encoded, &r.args().to_vec());
            prop_assert_eq!(r.frame().as_ref(), encoded.as_ref());
            if let Item::Inline(_) = item {
                prop_assert_eq!(r, &Request::from_args(&r.args().to_vec()));
            }
            // Any run of arguments is found encoded in the frame, as a split copies it.
            let n = r.args().len();
            for i in 0..n {
                prop_assert_eq!(r.args().encoded(i..i), None);
                for j in i + 1..=n {
                    let mut run = BytesMut::new();
                    for a in r.args().iter().skip(i).take(j - i) {
                        write_bulk(&mut run, a);
                    }
                    prop_assert_eq!(r.args().encoded(i..j), Some(run.as_ref()));
                }
            }
            prop_assert_eq!(r.args().encoded(n..n + 1), None);
        }
        let (split, err, rest) = requests(&input, &pieces(input.len(), &cuts), Limits::default());
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(split, all);
    }

    /// Any split of a stream of replies gives back exactly the frames that were encoded, and
    /// each parses to its value.
    #[test]
    fn reply_stream_splits_the_same_however_split(
        values in prop::collection::vec(value(), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let mut input = BytesMut::new();
        let mut frames = Vec::new();
        for v in &values {
            let mut one = BytesMut::new();
            v.encode(&mut one);
            input.extend_from_slice(&one);
            frames.push(one.freeze());
        }
        let (whole, err, rest) = replies(&input, &pieces(input.len(), &[]), Limits::for_replies());
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&whole, &frames);
        let (split, err, rest) = replies(&input, &pieces(input.len(), &cuts), Limits::for_replies());
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&split, &frames);
        for (f, v) in split.iter().zip(&values) {
            prop_assert_eq!(&Value::parse(f)?, v);
        }
    }

    /// Encoding then parsing gives the value back.
    #[test]
    fn value_round_trips(v in value()) {
        let mut out = BytesMut::new();
        v.encode(&mut out);
        prop_assert_eq!(Value::parse(&out.freeze()), Ok(v));
    }

    /// Garbage, or a valid stream with a few bytes changed, never panics, and gives the same
    /// results (including the same error) however it is split. Small limits reach every cap.
    #[test]
    fn garbage_never_panics_and_does_not_depend_on_splits(
        items in prop::collection::vec(item(), 0..6),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        raw in any::<bool>(),
        small in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut input = if raw { noise.clone() } else { stream_of(&items).0 };
        if !raw {
            input.extend_from_slice(&noise[..noise.len() / 8]);
        }
        for (at, b) in edits {
            if !input.is_empty() {
                let i = at % input.len();
                input[i] = b;
            }
        }
        let limits = if small {
            Limits { max_bulk_len: 8, max_array_len: 4, max_inline_len: 16, max_depth: 2 }
        } else {
            Limits::default()
        };
        let whole = pieces(input.len(), &[]);
        let split = pieces(input.len(), &cuts);
        let (a, ea, ra) = requests(&input, &whole, limits);
        let (b, eb, rb) = requests(&input, &split, limits);
        prop_assert_eq!((a, ea), (b, eb.clone()));
        if eb.is_none() {
            prop_assert_eq!(ra, rb);
        }
        let (a, ea, _) = replies(&input, &whole, limits);
        let (b, eb, _) = replies(&input, &split, limits);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(ea, eb);
        for f in &a {
            prop_assert!(Value::parse_with(f, &limits).is_ok());
        }
        let _ = Value::parse(&Bytes::from(input));
    }
}

// ---------------------------------------------------------------------------------------------
// Against a real redis-server
// ---------------------------------------------------------------------------------------------

fn connect(server: &support::RedisServer) -> TcpStream {
    let s = TcpStream::connect(server.addr()).expect("connect to redis-server");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s
}

/// Reads from `stream` until `n` reply frames were split off; returns them and what is left.
fn read_replies(stream: &mut TcpStream, n: usize) -> (Vec<Bytes>, BytesMut) {
    let mut decoder = ReplyDecoder::new(Limits::for_replies());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 7]; // small reads: frames arrive in pieces
    while frames.len() < n {
        while let Some(f) = decoder.decode(&mut buf).expect("redis sends valid RESP") {
            frames.push(f);
        }
        if frames.len() >= n {
            break;
        }
        let k = stream.read(&mut chunk).expect("read replies");
        assert!(k > 0, "redis closed after {} frames", frames.len());
        buf.extend_from_slice(&chunk[..k]);
    }
    (frames, buf)
}

fn bulk(s: &'static str) -> Value {
    Value::Bulk(Bytes::from_static(s.as_bytes()))
}

#[test]
fn real_redis_replies_split_into_exactly_the_frames_sent() {
    let server = support::RedisServer::start();
    let mut stream = connect(&server);
    let commands: &[&[&str]] = &[
        &["RPUSH", "list", "a", "", "c\r\nd"],
        &["LRANGE", "list", "0", "-1"],
        &["HSET", "h", "f", "v"],
        &["HGETALL", "h"],
        &["GET", "missing"],
        &["INCR", "list"],
        &["EVAL", "return {1, {2, 'x', {}}, {}}", "0"],
        &["SET", "k", "v"],
        &["MGET", "k", "missing"],
        &["PING"],
    ];
    let mut out = BytesMut::new();
    for c in commands {
        write_command(&mut out, c);
    }
    stream.write_all(&out).expect("send pipeline");
    let (frames, rest) = read_replies(&mut stream, commands.len());
    assert_eq!(frames.len(), commands.len());
    assert!(
        rest.is_empty(),
        "extra bytes after the last reply: {rest:?}"
    );
    let values: Vec<Value> = frames
        .iter()
        .map(|f| Value::parse(f).expect("parse a real reply"))
        .collect();
    assert_eq!(values[0], Value::Integer(3));
    assert_eq!(
        values[1],
        Value::Array(vec![bulk("a"), bulk(""), bulk("c\r\nd")])
    );
    assert_eq!(values[2], Value::Integer(1));
    assert_eq!(values[3], Value::Array(vec![bulk("f"), bulk("v")]));
    assert_eq!(values[4], Value::Nil);
    assert!(values[5].is_error(), "{:?}", values[5]);
    assert!(keyway::protocol::is_error_reply(&frames[5]));
    assert!(frames[5].starts_with(b"-WRONGTYPE"));
    assert_eq!(
        values[6],
        Value::Array(vec![
            Value::Integer(1),
            Value::Array(vec![Value::Integer(2), bulk("x"), Value::Array(vec![])]),
            Value::Array(vec![]),
        ])
    );
    assert_eq!(values[7], Value::Simple(Bytes::from_static(b"OK")));
    assert_eq!(values[8], Value::Array(vec![bulk("v"), Value::Nil]));
    assert_eq!(values[9], Value::Simple(Bytes::from_static(b"PONG")));
    // Re-encoding a parsed reply gives back the server's very bytes.
    for (f, v) in frames.iter().zip(&values) {
        let mut again = BytesMut::new();
        v.encode(&mut again);
        assert_eq!(&again[..], &f[..]);
    }
}

#[test]
fn real_redis_reads_inline_commands_as_we_do() {
    let server = support::RedisServer::start();
    let lines: &[&[u8]] = &[
        b"ECHO plain\r\n",
        b"ECHO \"a b\\x41\\n\\t\\\\\\\"\"\r\n",
        b"ECHO 'it\\'s'\n",
        b"  ECHO\t\"\"  \r\n",
        b"ECHO a\"b c\"\r\n",
    ];
    // What redis answers to the raw inline lines.
    let mut raw = connect(&server);
    raw.write_all(&lines.concat()).expect("send inline");
    let (theirs, _) = read_replies(&mut raw, lines.len());
    // What it answers to our re-encoding of them.
    let mut decoder = RequestDecoder::new(Limits::default());
    let mut buf = BytesMut::from(&lines.concat()[..]);
    let mut ours = BytesMut::new();
    let mut n = 0;
    while let Some(r) = decoder.decode(&mut buf).expect("valid inline") {
        ours.extend_from_slice(r.frame());
        n += 1;
    }
    assert_eq!(n, lines.len());
    let mut encoded = connect(&server);
    encoded.write_all(&ours).expect("send encoded");
    let (mine, _) = read_replies(&mut encoded, lines.len());
    assert_eq!(theirs, mine);
    assert_eq!(mine[1].as_ref(), b"$8\r\na bA\n\t\\\"\r\n");
    // And redis refuses unbalanced quotes with our text.
    let mut bad = connect(&server);
    bad.write_all(b"ECHO \"open\r\n").expect("send bad");
    let (reply, _) = read_replies(&mut bad, 1);
    let err = RequestDecoder::new(Limits::default())
        .decode(&mut BytesMut::from(&b"ECHO \"open\r\n"[..]))
        .expect_err("unbalanced");
    assert_eq!(
        reply[0].as_ref(),
        format!("-ERR Protocol error: {err}\r\n").as_bytes()
    );
}

#[test]
fn real_redis_protocol_errors_have_our_texts() {
    let server = support::RedisServer::start();
    let cases: &[&[u8]] = &[
        b"*1\r\n:5\r\n",
        b"*x\r\n",
        b"*1\r\n$x\r\n",
        b"*1\r\n$-3\r\n",
        b"*1\r\n$536870913\r\n",
    ];
    for &case in cases {
        let mut s = connect(&server);
        s.write_all(case).expect("send");
        let (reply, _) = read_replies(&mut s, 1);
        let err = RequestDecoder::new(Limits::default())
            .decode(&mut BytesMut::from(case))
            .expect_err("malformed");
        assert_eq!(
            String::from_utf8_lossy(&reply[0]),
            format!("-ERR Protocol error: {err}\r\n"),
            "for {:?}",
            String::from_utf8_lossy(case)
        );
    }
}

/// HTTP sent to the client port (a forged cross-protocol request, an SSRF): redis-server closes
/// the connection at a `POST` request line or a `Host:` header without running what follows;
/// so does Keyway, with the same bytes before the close.
#[test]
fn http_sent_to_the_client_port_closes_it_without_running_the_body() {
    let server = support::RedisServer::start();
    let proxy = support::Proxy::start(&[&server]);
    let post =
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 19\r\n\r\nSET http-body ran\r\n";
    let get = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nSET http-body ran\r\n";
    for request in [&post[..], &get[..]] {
        let mut theirs = support::RawClient::connect(server.addr());
        theirs.send(request);
        let theirs = theirs.read_to_close();
        let mut ours = support::RawClient::connect(proxy.addr);
        ours.send(request);
        let ours = ours.read_to_close();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    let mut con = server.client();
    let ran: Option<String> = redis::cmd("GET").arg("http-body").query(&mut con).unwrap();
    assert_eq!(ran, None, "the body of the HTTP request ran");
    let closed = support::metric(
        &proxy.metrics(),
        "keyway_client_disconnects_total{reason=\"cross_protocol\"}",
    )
    .expect("series keyway_client_disconnects_total{reason=\"cross_protocol\"} exists");
    assert_eq!(closed, 2.0);
}
