//! Parsed replies, for the few places that merge them (MGET over servers, DEL sums, SCAN, KEYS).
//!
//! Parsing is off the hot path and works on a frame [`super::ReplyDecoder`] already split off, so
//! it is a plain recursive descent (depth capped by [`Limits::max_depth`]) that slices strings
//! out of the frame instead of copying them. An array's `Vec` is sized by the smaller of its
//! claimed count and the number of elements the remaining bytes could hold, never by the claim
//! alone.

use bytes::{Bytes, BytesMut};

use super::encode::{put_line, write_array_header, write_bulk, write_integer, write_nil};
use super::number::{number_line, NumberError};
use super::{Limits, ProtocolError};

/// A parsed RESP2 reply.
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
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }
}

/// Whether a reply frame is an error reply (its first byte is `-`).
pub fn is_error_reply(frame: &[u8]) -> bool {
    frame.first() == Some(&b'-')
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
        b'+' | b'-' => {
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
            Ok(if kind == b'+' {
                Value::Simple(s)
            } else {
                Value::Error(s)
            })
        }
        b':' => {
            let (n, next) = number(frame, *pos, ProtocolError::InvalidInteger)?;
            *pos = next;
            Ok(Value::Integer(n))
        }
        b'$' => {
            let (len, next) = number(frame, *pos, ProtocolError::InvalidBulkLength)?;
            *pos = next;
            if len == -1 {
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
            Ok(Value::Bulk(frame.slice(next..end)))
        }
        b'*' => {
            let (count, next) = number(frame, *pos, ProtocolError::InvalidMultibulkLength)?;
            *pos = next;
            if count == -1 {
                return Ok(Value::NilArray);
            }
            let count = usize::try_from(count)
                .ok()
                .filter(|&n| n <= limits.max_array_len)
                .ok_or(ProtocolError::InvalidMultibulkLength)?;
            if count > 0 && depth >= limits.max_depth {
                return Err(ProtocolError::NestingTooDeep);
            }
            let room = frame.len().saturating_sub(next) / MIN_ELEMENT_LEN;
            let mut items = Vec::with_capacity(count.min(room));
            for _ in 0..count {
                items.push(parse_at(frame, pos, depth + 1, limits)?);
            }
            Ok(Value::Array(items))
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
        assert_eq!(parse(b"~1\r\n"), Err(ProtocolError::UnknownReplyType(b'~')));
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
