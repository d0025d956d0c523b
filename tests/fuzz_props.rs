//! Bounded versions of the fuzz targets (`fuzz/`, docs/fuzzing.md) that run under `cargo test`
//! on stable: the inline splitter, the request and reply decoders fed arbitrary bytes in
//! arbitrary reads, and the configuration loader fed TOML-ish text.
//!
//! `tests/protocol.rs` already checks that generated streams decode the same however they are
//! split and that generated values round-trip; these add what the fuzz targets assert beyond
//! that: the inline splitter alone and against the decoder, errors that stay, reads that bring
//! nothing, frames that re-encode to their own bytes, and a config loader that never panics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

use std::path::Path;

use bytes::{Bytes, BytesMut};
use keyway::config::Config;
use keyway::fuzzing::split_inline;
use keyway::protocol::{write_command, Limits, ProtocolError, ReplyDecoder, RequestDecoder, Value};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Feeding a decoder
// ---------------------------------------------------------------------------------------------

/// `input` cut into reads of the given lengths (0 is a read that brought nothing), then the rest.
fn reads(input: &[u8], lengths: &[usize]) -> Vec<Vec<u8>> {
    let mut left = input;
    let mut out = Vec::new();
    for &len in lengths {
        let (read, after) = left.split_at(len.min(left.len()));
        out.push(read.to_vec());
        left = after;
    }
    out.push(left.to_vec());
    out
}

/// Every result a decoder gives for `reads` appended one by one to one buffer, the error that
/// ended them if any, and the bytes left.
fn feed<T>(
    reads: &[Vec<u8>],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>,
) -> (Vec<T>, Option<ProtocolError>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
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

fn small_limits() -> Limits {
    Limits {
        max_bulk_len: 8,
        max_array_len: 4,
        max_inline_len: 16,
        max_depth: 2,
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Bytes biased towards what RESP framing and inline quoting care about.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => b'a'..=b'f',
        2 => prop::sample::select(b"*$:+-0123456789".to_vec()),
        2 => prop::sample::select(b"\r\n \t\"'\\x".to_vec()),
        1 => Just(0u8),
        2 => any::<u8>(),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(byte(), 0..max)
}

fn read_lengths() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..48, 0..12)
}

/// A line the decoder reads as inline: no `\n`, no NUL, not starting with `*`.
fn inline_line() -> impl Strategy<Value = Vec<u8>> {
    bytes(40).prop_map(|mut l| {
        l.retain(|&b| b != b'\n' && b != 0);
        if l.first() == Some(&b'*') {
            l.insert(0, b' ');
        }
        l
    })
}

/// Arguments double-quoted with escapes: a line [`split_inline`] reads back as `args`.
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

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        bytes(12).prop_map(|s| Value::Simple(Bytes::from(s))),
        bytes(12).prop_map(|s| Value::Error(Bytes::from(s))),
        any::<i64>().prop_map(Value::Integer),
        bytes(16).prop_map(|b| Value::Bulk(Bytes::from(b))),
        Just(Value::Nil),
        Just(Value::NilArray),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(Value::Array)
    })
}

/// `v` as [`Value::encode`] writes it: `\r` and `\n` in a status or error line become spaces
/// (documented there); whether anything changed.
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
            let (s, c) = line(s);
            (Value::Simple(s), c)
        }
        Value::Error(s) => {
            let (s, c) = line(s);
            (Value::Error(s), c)
        }
        Value::Array(items) => {
            let mut changed = false;
            let items = items
                .iter()
                .map(|i| {
                    let (i, c) = as_encoded(i);
                    changed |= c;
                    i
                })
                .collect();
            (Value::Array(items), changed)
        }
        other => (other.clone(), false),
    }
}

const CONFIG_KEYS: &[&str] = &[
    "listen",
    "admin",
    "drain_timeout",
    "threads",
    "replicas",
    "hash_tag",
    "connections",
    "timeout",
    "warmup",
    "read",
    "write",
    "interval",
    "fall",
    "rise",
    "failover",
    "lock_timeout",
    "sweep_interval",
    "retries",
    "name",
    "addr",
    "weight",
    "max_bulk_len",
    "max_args",
    "max_inline_len",
    "max_pipeline",
    "max_clients",
    "max_client_output",
    "idle_timeout",
    "unknown",
];

const CONFIG_TABLES: &[&str] = &[
    "[pool]",
    "[pool.health]",
    "[pool.two_phase]",
    "[[pool.servers]]",
    "[limits]",
    "[pool.servers]",
    "[other]",
];

const CONFIG_STRINGS: &[&str] = &[
    "127.0.0.1:6380",
    "127.0.0.1:7001",
    "redis-b:6379",
    "127.0.0.1:0",
    "host",
    ":1",
    "a:99999",
    "redis://user:secret@host:6379",
    "a",
    "b",
    "",
    "{}",
    "{",
    "1s",
    "0s",
    "1ms",
    "250ms",
    "1h 2m",
    "-1s",
    "soon",
    "primary",
    "all",
    "quorum",
    "two_phase",
    "round_robin",
    "random",
    "least_outstanding",
    "next",
    "none",
];

/// A TOML value: numbers of every kind, strings a key might want or not, and the odd shape.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(CONFIG_STRINGS).prop_map(|s| format!("{s:?}")),
        2 => (0u64..5).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => Just("[1, \"a\"]".to_string()),
        1 => Just("{ name = \"a\" }".to_string()),
        1 => "[ -~]{0,12}",
    ]
}

/// One line of a TOML-ish file: a table header, a `key = value`, or printable garbage.
fn toml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(CONFIG_TABLES).prop_map(str::to_string),
        6 => (prop::sample::select(CONFIG_KEYS), toml_value())
            .prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,24}",
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any line splits without panicking; what it splits into, quoted again, splits back to the
    /// same arguments; and the decoder reads the line as the same arguments or the same error.
    #[test]
    fn inline_lines_split_like_the_decoder_and_requote(line in inline_line()) {
        let split = split_inline(&line);
        if let Ok(args) = &split {
            prop_assert_eq!(&split_inline(&quote(args)), &Ok(args.clone()));
        }
        let mut buf = BytesMut::from(&line[..]);
        buf.extend_from_slice(b"\r\n");
        match (split, RequestDecoder::new(Limits::default()).decode(&mut buf)) {
            (Err(e), decoded) => prop_assert_eq!(decoded, Err(e)),
            (Ok(args), Ok(None)) => prop_assert!(args.is_empty() && buf.is_empty()),
            (Ok(args), Ok(Some(r))) => {
                let got: Vec<Vec<u8>> = r.args().iter().map(<[u8]>::to_vec).collect();
                prop_assert_eq!(got, args);
                prop_assert!(buf.is_empty());
            }
            (Ok(args), Err(e)) => prop_assert!(false, "decoder refused {:?}: {}", args, e),
        }
    }

    /// Any bytes, including NUL, never panic the splitter.
    #[test]
    fn inline_splitter_takes_any_bytes(line in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = split_inline(&line);
    }

    /// A stream of inline lines gives, however it is read, the requests each line splits into
    /// (blank ones skipped) up to the first line that fails, and that line's error.
    #[test]
    fn inline_streams_decode_line_by_line_however_read(
        lines in prop::collection::vec(inline_line(), 1..6),
        crlf in any::<bool>(),
        lengths in read_lengths(),
    ) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        let mut expected_err = None;
        for line in &lines {
            input.extend_from_slice(line);
            input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            if expected_err.is_some() {
                continue;
            }
            match split_inline(line) {
                Ok(args) if args.is_empty() => {}
                Ok(args) => expected.push(args),
                Err(e) => expected_err = Some(e),
            }
        }
        for pieces in [reads(&input, &[]), reads(&input, &lengths)] {
            let mut d = RequestDecoder::new(Limits::default());
            let (got, err, _) = feed(&pieces, |b| d.decode(b));
            let got: Vec<Vec<Vec<u8>>> = got
                .iter()
                .map(|r| r.args().iter().map(<[u8]>::to_vec).collect())
                .collect();
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(&err, &expected_err);
        }
    }

    /// Arbitrary bytes in arbitrary reads (empty ones too): the same requests and error as in
    /// one read; every request is its arguments' multibulk; an error stays whatever follows; a
    /// call with nothing new changes nothing.
    #[test]
    fn request_decoder_takes_any_bytes_in_any_reads(
        input in bytes(256),
        lengths in read_lengths(),
        small in any::<bool>(),
    ) {
        let limits = if small { small_limits() } else { Limits::default() };
        let mut whole = RequestDecoder::new(limits);
        let (a, ea, ra) = feed(&reads(&input, &[]), |b| whole.decode(b));
        let mut chunked = RequestDecoder::new(limits);
        let (b, eb, mut rb) = feed(&reads(&input, &lengths), |b| chunked.decode(b));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&ea, &eb);
        for r in &a {
            prop_assert!(!r.args().is_empty());
            let mut encoded = BytesMut::new();
            write_command(&mut encoded, &r.args().to_vec());
            prop_assert_eq!(r.frame().as_ref(), encoded.as_ref());
        }
        match eb {
            Some(e) => {
                rb.extend_from_slice(b"*1\r\n$4\r\nPING\r\nPING\r\n");
                prop_assert_eq!(chunked.decode(&mut rb), Err(e.clone()));
                prop_assert_eq!(whole.decode(&mut BytesMut::new()), Err(e));
            }
            None => {
                prop_assert_eq!(&ra, &rb);
                let before = rb.clone();
                prop_assert_eq!(chunked.decode(&mut rb), Ok(None));
                prop_assert_eq!(rb, before);
            }
        }
    }

    /// Replies, some damaged, in arbitrary reads: the same frames and error as in one read, an
    /// error that stays, and every frame parses into a value that re-encodes to the frame's own
    /// bytes (but for a `\n` in a status line, which encoding writes as a space) and parses back.
    #[test]
    fn split_replies_parse_and_reencode_to_their_own_bytes(
        values in prop::collection::vec(value(), 0..6),
        edits in prop::collection::vec((any::<usize>(), byte()), 0..3),
        noise in bytes(16),
        lengths in read_lengths(),
        small in any::<bool>(),
    ) {
        let mut input = BytesMut::new();
        for v in &values {
            v.encode(&mut input);
        }
        let mut input = input.to_vec();
        for (at, b) in edits {
            if !input.is_empty() {
                let i = at % input.len();
                input[i] = b;
            }
        }
        input.extend_from_slice(&noise);
        let limits = if small { small_limits() } else { Limits::for_replies() };
        let mut whole = ReplyDecoder::new(limits);
        let (a, ea, ra) = feed(&reads(&input, &[]), |b| whole.decode(b));
        let mut chunked = ReplyDecoder::new(limits);
        let (b, eb, mut rb) = feed(&reads(&input, &lengths), |b| chunked.decode(b));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&ea, &eb);
        match eb {
            Some(e) => {
                rb.extend_from_slice(b"+OK\r\n");
                prop_assert_eq!(chunked.decode(&mut rb), Err(e));
            }
            None => prop_assert_eq!(ra, rb),
        }
        for frame in &a {
            let v = Value::parse_with(frame, &limits)?;
            let mut encoded = BytesMut::new();
            v.encode(&mut encoded);
            let encoded = encoded.freeze();
            let (expected, changed) = as_encoded(&v);
            prop_assert_eq!(Value::parse_with(&encoded, &limits), Ok(expected));
            if !changed {
                prop_assert_eq!(&encoded, frame);
            }
        }
    }
}

/// What the config loader must do with any text: return, never panic; and a config it accepts
/// passes its own validation again.
fn load_never_panics(text: &str) -> Result<(), TestCaseError> {
    if let Ok(config) = Config::from_toml_with_env(text, Path::new("props.toml")) {
        prop_assert!(config.validate(Some(text)).is_ok());
        prop_assert!((1..=1024).contains(&config.threads));
        let _ = config.warnings();
    }
    Ok(())
}

const EXAMPLE_CONFIG: &str = include_str!("../config/keyway.toml");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// TOML-ish files built from Keyway's own tables, keys and the values they take (and some
    /// they do not) load or fail with an error.
    #[test]
    fn config_text_never_panics(lines in prop::collection::vec(toml_line(), 0..24)) {
        load_never_panics(&lines.join("\n"))?;
    }

    /// The annotated example with lines replaced, removed or cut short loads or fails with an
    /// error.
    #[test]
    fn damaged_example_config_never_panics(
        edits in prop::collection::vec((any::<usize>(), 0u8..3, toml_line()), 1..4),
    ) {
        let mut lines: Vec<String> = EXAMPLE_CONFIG.lines().map(str::to_string).collect();
        for (at, op, replacement) in edits {
            let i = at % lines.len();
            match op {
                0 => lines[i] = replacement,
                1 => {
                    lines.remove(i);
                }
                _ => {
                    let cut = at % (lines[i].len() + 1);
                    lines[i].truncate(cut);
                }
            }
        }
        load_never_panics(&lines.join("\n"))?;
    }
}

/// The example itself loads: the damaged-example property starts from a valid file.
#[test]
fn example_config_loads() {
    Config::from_toml_with_env(EXAMPLE_CONFIG, Path::new("keyway.toml")).unwrap();
}

// ---------------------------------------------------------------------------------------------
// ACL rules (the `acl_rules` fuzz target, bounded)
// ---------------------------------------------------------------------------------------------

/// A rule, from what Redis's ACL syntax is made of, often malformed.
fn acl_rule() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "on",
        "off",
        "nopass",
        "resetpass",
        "allkeys",
        "resetkeys",
        "allchannels",
        "resetchannels",
        "allcommands",
        "nocommands",
        "reset",
        "+@all",
        "-@all",
        "+@read",
        "-@dangerous",
        "+@nosuch",
        "+get",
        "-get",
        "+config|get",
        "+config|nosub",
        "+get|x",
        "+config",
        "~app:*",
        "%R~ro:*",
        "%W~w*",
        "%X~bad",
        "&chan*",
        ">clear",
        "#abc",
        "(~x)",
        "",
        "~",
        "%",
        "+",
        "-@",
    ]);
    prop_oneof![
        words.prop_map(str::to_string),
        "[~%&+#!-]?[a-zA-Z*?\\[\\]^|@:-]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any rules compile or fail with an error naming a rule; a compiled user checks any
    /// command without panicking; the all-allowing user allows it; glob matching never panics,
    /// `*` matches anything and a plain pattern matches itself.
    #[test]
    fn acl_rules_compile_and_check_without_panicking(
        rules in prop::collection::vec(acl_rule(), 0..8),
        args in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec!["GET", "SET", "MSET", "PUBLISH", "SUBSCRIBE",
                    "PSUBSCRIBE", "EVAL", "CONFIG", "BITFIELD", "SORT", "2", "GET", "STORE"])
                    .prop_map(|s| s.as_bytes().to_vec()),
                prop::collection::vec(any::<u8>(), 0..12),
            ],
            1..8,
        ),
    ) {
        use keyway::acl::{glob_match, User};
        let text = rules.join(" ");
        let mut keys = Vec::new();
        match User::compile("p", &text, &[], None, &[]) {
            Ok(user) => {
                let request = keyway::protocol::Request::from_args(&args);
                if let Ok(spec) = keyway::command::resolve(request.args()) {
                    let _ = user.check(spec, request.args(), &mut keys);
                    let all = User::compile("a", "on nopass ~* &* +@all", &[], None, &[]).unwrap();
                    prop_assert!(all.check(spec, request.args(), &mut keys).is_ok());
                }
            }
            Err(e) => prop_assert!(rules.contains(&e.rule), "{e}"),
        }
        for arg in &args {
            let _ = glob_match(text.as_bytes(), arg);
            prop_assert_eq!(glob_match(b"*", arg), !arg.is_empty());
            if !arg.iter().any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\')) {
                prop_assert!(glob_match(arg, arg));
            }
        }
    }
}
