//! Parsed replies, for the few places that merge them (MGET over servers, DEL sums, SCAN, KEYS).
//!
//! Parsing is off the hot path and works on a frame [`super::ReplyDecoder`] already split off, so
//! it is a plain recursive descent (depth capped by [`Limits::max_depth`]) that slices strings
//! out of the frame instead of copying them. An array's `Vec` is sized by the smaller of its
//! claimed count and the number of elements the remaining bytes could hold, never by the claim
//! alone.

use bytes::{Bytes, BytesMut};

use super::encode::{
    put_line, write_array_header, write_bulk, write_integer, write_nil, NumberLine,
};
use super::number::{number_line, NumberError};
use super::{Limits, ProtocolError};

/// A parsed reply, RESP2 or RESP3. RESP3's types are kept as they came (a double as its text),
/// so that [`Value::encode`] writes back the bytes a server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+text`
    Simple(Bytes),
    /// `-text` (e.g. `ERR unknown command`), without the `-`.
    Error(Bytes),
    /// `:n`
    Integer(i64),
    /// `$len` and its bytes.
    Bulk(Bytes),
    /// `$-1`
    Nil,
    /// `*n` and its elements.
    Array(Vec<Value>),
    /// `*-1`
    NilArray,
    /// RESP3 `_`
    Null,
    /// RESP3 `#t` / `#f`
    Boolean(bool),
    /// RESP3 `,text` (`3.14`, `inf`, `nan`), as the server wrote it.
    Double(Bytes),
    /// RESP3 `(digits`
    BigNumber(Bytes),
    /// RESP3 `!len`, an error with a binary-safe text.
    BlobError(Bytes),
    /// RESP3 `=len`: the format (`txt`, `mkd`), a `:`, then the text, as one string.
    Verbatim(Bytes),
    /// RESP3 `%n`: keys and values alternating (`2n` elements).
    Map(Vec<Value>),
    /// RESP3 `~n`
    Set(Vec<Value>),
    /// RESP3 `>n`: an out-of-band message (pub/sub, client tracking).
    Push(Vec<Value>),
}

/// The smallest encoded element (`+\r\n`), to bound how many elements a frame can hold.
const MIN_ELEMENT_LEN: usize = 3;

impl Value {
    /// Parses one complete frame with [`Limits::for_replies`]. Strings are zero-copy slices of
    /// `frame`.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Incomplete`] if `frame` holds less than one reply,
    /// [`ProtocolError::TrailingBytes`] if it holds more, or the error of the malformed part.
    pub fn parse(frame: &Bytes) -> Result<Value, ProtocolError> {
        Value::parse_with(frame, &Limits::for_replies())
    }

    /// [`Value::parse`] with explicit limits.
    ///
    /// # Errors
    ///
    /// As [`Value::parse`].
    pub fn parse_with(frame: &Bytes, limits: &Limits) -> Result<Value, ProtocolError> {
        let mut pos = 0;
        let v = parse_at(frame, &mut pos, 0, limits)?;
        if pos != frame.len() {
            return Err(ProtocolError::TrailingBytes);
        }
        Ok(v)
    }

    /// Appends the RESP2 encoding. `\r` and `\n` inside `Simple` and `Error` text are written as
    /// spaces so the output is always a valid frame.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Value::Simple(s) => put_line(out, b'+', s),
            Value::Error(s) => put_line(out, b'-', s),
            Value::Integer(n) => write_integer(out, *n),
            Value::Bulk(b) => write_bulk(out, b),
            Value::Nil => write_nil(out),
            Value::Array(items) => {
                write_array_header(out, items.len());
                for v in items {
                    v.encode(out);
                }
            }
            Value::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Value::Null => out.extend_from_slice(b"_\r\n"),
            Value::Boolean(true) => out.extend_from_slice(b"#t\r\n"),
            Value::Boolean(false) => out.extend_from_slice(b"#f\r\n"),
            Value::Double(s) => put_line(out, b',', s),
            Value::BigNumber(s) => put_line(out, b'(', s),
            Value::BlobError(s) => put_blob(out, b'!', s),
            Value::Verbatim(s) => put_blob(out, b'=', s),
            Value::Map(items) => put_aggregate(out, b'%', items.len() / 2, items),
            Value::Set(items) => put_aggregate(out, b'~', items.len(), items),
            Value::Push(items) => put_aggregate(out, b'>', items.len(), items),
        }
    }

    /// Whether this is an error reply (`-` or RESP3's `!`).
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_) | Value::BlobError(_))
    }

    /// Whether this is a null (`$-1`, `*-1`, RESP3's `_`).
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Nil | Value::NilArray | Value::Null)
    }
}

/// A blob with the `$` shape under another type byte (`!`, `=`).
fn put_blob(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.extend_from_slice(NumberLine::new(kind, body.len() as i64).as_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// An aggregate header claiming `count`, then `items`.
fn put_aggregate(out: &mut BytesMut, kind: u8, count: usize, items: &[Value]) {
    out.extend_from_slice(NumberLine::new(kind, count as i64).as_bytes());
    for v in items {
        v.encode(out);
    }
}

/// Whether a reply frame is an error reply (its first byte is `-`, or RESP3's `!`).
pub fn is_error_reply(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-' | b'!'))
}

/// Whether a reply frame is a null (`$-1`, `*-1`, RESP3's `_`).
pub fn is_null_reply(frame: &[u8]) -> bool {
    matches!(frame, b"$-1\r\n" | b"*-1\r\n" | b"_\r\n")
}

fn number(frame: &[u8], pos: usize, invalid: ProtocolError) -> Result<(i64, usize), ProtocolError> {
    match number_line(frame, pos) {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(ProtocolError::Incomplete),
        Err(NumberError::Crlf) => Err(ProtocolError::ExpectedCrlf),
        Err(NumberError::Invalid | NumberError::TooLong) => Err(invalid),
    }
}

/// Parses the value at `*pos` (an array at `depth` open arrays) and moves `*pos` past it.
fn parse_at(
    frame: &Bytes,
    pos: &mut usize,
    depth: usize,
    limits: &Limits,
) -> Result<Value, ProtocolError> {
    let kind = *frame.get(*pos).ok_or(ProtocolError::Incomplete)?;
    match kind {
        b'+' | b'-' | b'_' | b'#' | b',' | b'(' => {
            let text = *pos + 1;
            let cr = frame
                .get(text..)
                .and_then(|rest| rest.iter().position(|&b| b == b'\r'))
                .map(|i| text + i)
                .ok_or(ProtocolError::Incomplete)?;
            match frame.get(cr + 1) {
                None => return Err(ProtocolError::Incomplete),
                Some(b'\n') => {}
                Some(_) => return Err(ProtocolError::ExpectedCrlf),
            }
            *pos = cr + 2;
            // In range: text <= cr < frame.len(), both just checked.
            let s = frame.slice(text..cr);
            match kind {
                b'+' => Ok(Value::Simple(s)),
                b'-' => Ok(Value::Error(s)),
                b',' => Ok(Value::Double(s)),
                b'(' => Ok(Value::BigNumber(s)),
                b'_' if s.is_empty() => Ok(Value::Null),
                b'#' if s.as_ref() == b"t" => Ok(Value::Boolean(true)),
                b'#' if s.as_ref() == b"f" => Ok(Value::Boolean(false)),
                _ => Err(ProtocolError::UnknownReplyType(kind)),
            }
        }
        b':' => {
            let (n, next) = number(frame, *pos, ProtocolError::InvalidInteger)?;
            *pos = next;
            Ok(Value::Integer(n))
        }
        b'$' | b'!' | b'=' => {
            let (len, next) = number(frame, *pos, ProtocolError::InvalidBulkLength)?;
            *pos = next;
            if len == -1 && kind == b'$' {
                return Ok(Value::Nil);
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&n| n <= limits.max_bulk_len)
                .ok_or(ProtocolError::InvalidBulkLength)?;
            let end = next
                .checked_add(len)
                .ok_or(ProtocolError::InvalidBulkLength)?;
            match frame.get(end..end.saturating_add(2)) {
                None => return Err(ProtocolError::Incomplete),
                Some(b"\r\n") => {}
                Some(_) => return Err(ProtocolError::ExpectedCrlf),
            }
            *pos = end + 2;
            // In range: end + 2 <= frame.len(), just checked.
            let body = frame.slice(next..end);
            Ok(match kind {
                b'!' => Value::BlobError(body),
                b'=' => Value::Verbatim(body),
                _ => Value::Bulk(body),
            })
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let (count, next) = number(frame, *pos, ProtocolError::InvalidMultibulkLength)?;
            *pos = next;
            if count == -1 && kind == b'*' {
                return Ok(Value::NilArray);
            }
            let count = usize::try_from(count)
                .ok()
                .filter(|&n| n <= limits.max_array_len)
                .ok_or(ProtocolError::InvalidMultibulkLength)?;
            // Within the cap, so doubling cannot overflow.
            let elements = if matches!(kind, b'%' | b'|') {
                count * 2
            } else {
                count
            };
            if elements > 0 && depth >= limits.max_depth {
                return Err(ProtocolError::NestingTooDeep);
            }
            let room = frame.len().saturating_sub(next) / MIN_ELEMENT_LEN;
            let mut items = Vec::with_capacity(elements.min(room));
            for _ in 0..elements {
                items.push(parse_at(frame, pos, depth + 1, limits)?);
            }
            Ok(match kind {
                b'~' => Value::Set(items),
                b'>' => Value::Push(items),
                b'%' => Value::Map(items),
                // An attribute describes the element after it; merges have no use for it.
                b'|' => return parse_at(frame, pos, depth, limits),
                _ => Value::Array(items),
            })
        }
        other => Err(ProtocolError::UnknownReplyType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    fn parse(s: &'static [u8]) -> Result<Value, ProtocolError> {
        Value::parse(&b(s))
    }

    #[test]
    fn parses_and_reencodes_resp3() {
        let cases: &[(&'static [u8], Value)] = &[
            (b"_\r\n", Value::Null),
            (b"#t\r\n", Value::Boolean(true)),
            (b"#f\r\n", Value::Boolean(false)),
            (b",-inf\r\n", Value::Double(b(b"-inf"))),
            (
                b"(12345678901234567890123\r\n",
                Value::BigNumber(b(b"12345678901234567890123")),
            ),
            (b"!5\r\nERR x\r\n", Value::BlobError(b(b"ERR x"))),
            (b"=6\r\ntxt:ab\r\n", Value::Verbatim(b(b"txt:ab"))),
            (
                b"%1\r\n$1\r\nk\r\n~2\r\n:1\r\n_\r\n",
                Value::Map(vec![
                    Value::Bulk(b(b"k")),
                    Value::Set(vec![Value::Integer(1), Value::Null]),
                ]),
            ),
            (b">1\r\n+m\r\n", Value::Push(vec![Value::Simple(b(b"m"))])),
            (b"%0\r\n", Value::Map(vec![])),
        ];
        for (frame, want) in cases {
            let got = parse(frame).expect("valid");
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(frame));
            let mut out = BytesMut::new();
            got.encode(&mut out);
            assert_eq!(out.as_ref(), *frame);
        }
        // An attribute is dropped: the value is the element it describes.
        assert_eq!(parse(b"|1\r\n+a\r\n:1\r\n:7\r\n"), Ok(Value::Integer(7)));
        assert!(parse(b"!3\r\nERR\r\n").expect("valid").is_error());
        assert!(parse(b"_\r\n").expect("valid").is_null());
        for bad in [&b"_x\r\n"[..], b"#x\r\n", b"~-1\r\n", b"!-1\r\n"] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(parse(b"+OK\r\n"), Ok(Value::Simple(b(b"OK"))));
        assert_eq!(parse(b"-ERR x\r\n"), Ok(Value::Error(b(b"ERR x"))));
        assert_eq!(parse(b":-3\r\n"), Ok(Value::Integer(-3)));
        assert_eq!(parse(b"$3\r\na\r\n\r\n"), Ok(Value::Bulk(b(b"a\r\n"))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Value::Nil));
        assert_eq!(parse(b"*-1\r\n"), Ok(Value::NilArray));
        assert_eq!(parse(b"*0\r\n"), Ok(Value::Array(vec![])));
        assert_eq!(
            parse(b"*2\r\n*1\r\n:1\r\n$-1\r\n"),
            Ok(Value::Array(vec![
                Value::Array(vec![Value::Integer(1)]),
                Value::Nil
            ]))
        );
    }

    #[test]
    fn strings_are_slices_of_the_frame() {
        let frame = b(b"*1\r\n$5\r\nhello\r\n");
        let Ok(Value::Array(items)) = Value::parse(&frame) else {
            panic!("not an array");
        };
        let Some(Value::Bulk(s)) = items.first() else {
            panic!("not a bulk");
        };
        assert!(frame.as_ptr_range().contains(&s.as_ptr()));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse(b""), Err(ProtocolError::Incomplete));
        assert_eq!(parse(b"+OK"), Err(ProtocolError::Incomplete));
        assert_eq!(parse(b"+OK\r"), Err(ProtocolError::Incomplete));
        assert_eq!(parse(b"$3\r\nab"), Err(ProtocolError::Incomplete));
        assert_eq!(parse(b"*2\r\n:1\r\n"), Err(ProtocolError::Incomplete));
        assert_eq!(parse(b"+OK\r\n+OK\r\n"), Err(ProtocolError::TrailingBytes));
        assert_eq!(parse(b"+OK\rx"), Err(ProtocolError::ExpectedCrlf));
        assert_eq!(parse(b"$1\r\nab\r\n"), Err(ProtocolError::ExpectedCrlf));
        assert_eq!(parse(b":x\r\n"), Err(ProtocolError::InvalidInteger));
        assert_eq!(parse(b"$-2\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(
            parse(b"*-2\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(parse(b"@1\r\n"), Err(ProtocolError::UnknownReplyType(b'@')));
        let limits = Limits {
            max_depth: 1,
            ..Limits::default()
        };
        assert!(Value::parse_with(&b(b"*1\r\n*0\r\n"), &limits).is_ok());
        assert_eq!(
            Value::parse_with(&b(b"*1\r\n*1\r\n:1\r\n"), &limits),
            Err(ProtocolError::NestingTooDeep)
        );
    }

    #[test]
    fn huge_array_claim_allocates_by_bytes_present() {
        // Claims two billion elements but holds one: fails as incomplete without reserving.
        assert_eq!(
            parse(b"*2000000000\r\n:1\r\n"),
            Err(ProtocolError::Incomplete)
        );
        assert_eq!(
            parse(b"$10000000000\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn encode_round_trips_and_sanitises_lines() {
        let v = Value::Array(vec![
            Value::Simple(b(b"OK")),
            Value::Error(b(b"ERR x")),
            Value::Integer(i64::MIN),
            Value::Bulk(b(b"\r\n")),
            Value::Nil,
            Value::NilArray,
            Value::Array(vec![]),
        ]);
        let mut out = BytesMut::new();
        v.encode(&mut out);
        assert_eq!(Value::parse(&out.freeze()), Ok(v));
        let mut out = BytesMut::new();
        Value::Error(b(b"ERR a\r\nb")).encode(&mut out);
        assert_eq!(out.as_ref(), b"-ERR a  b\r\n");
    }

    #[test]
    fn error_detection() {
        assert!(is_error_reply(b"-ERR x\r\n"));
        assert!(!is_error_reply(b"+OK\r\n"));
        assert!(!is_error_reply(b""));
        assert!(Value::Error(Bytes::new()).is_error());
        assert!(!Value::Nil.is_error());
    }
}
