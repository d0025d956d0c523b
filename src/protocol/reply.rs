//! Splitting server replies into whole frames without building values.
//!
//! The proxy forwards reply bytes as they came, so on the hot path it only needs to know where a
//! reply ends. [`ReplyDecoder`] walks the frame once, keeping:
//!
//! - `pos`: the next unread byte (relative to the start of the buffer, the frame's first byte);
//! - `stack`: for each open array, how many of its elements are still to come (its length is
//!   the nesting depth, capped by [`Limits::max_depth`]);
//! - `bulk`: the body length of a bulk string whose header was read;
//! - `scanned`: how far a `+`/`-` line has been searched for its `\r`.
//!
//! An element completes when its last byte arrived; it then counts against the innermost open
//! array, closing it (and perhaps its parents) when that reaches zero. When no array is open the
//! frame is complete and is split off the buffer. A large `LRANGE` reply arriving in many reads is
//! therefore scanned once. A whole `+OK` at the start of the buffer, the most common reply, is
//! consumed and passed on as a static frame without the walk.

use bytes::{Buf, Bytes, BytesMut};

use super::number::{number_line, NumberError};
use super::{Limits, ProtocolError};

/// A whole `+OK` reply.
const OK: &[u8] = b"+OK\r\n";

/// Splits whole reply frames off a buffer without building values. Resumable: pass the same
/// buffer on every call and only append to it in between. After an error it returns that error
/// again: the connection cannot be resynchronised.
#[derive(Debug)]
pub struct ReplyDecoder {
    limits: Limits,
    /// Next unread byte of the frame in progress.
    pos: usize,
    /// Elements still expected by each open array, outermost first.
    stack: Vec<usize>,
    /// Body length of a bulk string whose header ends just before `pos`.
    bulk: Option<usize>,
    /// Bytes from `pos + 1` of a `+`/`-` line known to hold no `\r`.
    scanned: usize,
    failed: Option<ProtocolError>,
}

impl ReplyDecoder {
    /// A decoder enforcing `limits` (usually [`Limits::for_replies`]).
    pub fn new(limits: Limits) -> Self {
        ReplyDecoder {
            limits,
            pos: 0,
            stack: Vec::new(),
            bulk: None,
            scanned: 0,
            failed: None,
        }
    }

    /// Splits the next whole reply frame off the start of `buf`, or `Ok(None)` if it has not all
    /// arrived yet.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when the server's bytes are not RESP2 or exceed the limits; the
    /// connection must then be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pos == 0 && buf.starts_with(OK) {
            // The most common reply of all (SET, MSET's parts): passed on as a static frame,
            // with no walk and no share of the buffer to count and free.
            // A `+OK` that came in pieces may have been scanned in part already.
            self.scanned = 0;
            buf.advance(OK.len());
            return Ok(Some(Bytes::from_static(OK)));
        }
        match self.walk(buf) {
            Ok(true) => {
                let frame = buf.split_to(self.pos).freeze();
                self.pos = 0;
                Ok(Some(frame))
            }
            Ok(false) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Advances over as much of the frame as has arrived; `true` when it is complete.
    fn walk(&mut self, buf: &[u8]) -> Result<bool, ProtocolError> {
        loop {
            if let Some(len) = self.bulk {
                let end = self
                    .pos
                    .checked_add(len)
                    .ok_or(ProtocolError::InvalidBulkLength)?;
                let Some(crlf) = buf.get(end..end.saturating_add(2)) else {
                    return Ok(false);
                };
                if crlf != b"\r\n" {
                    return Err(ProtocolError::ExpectedCrlf);
                }
                self.pos = end + 2;
                self.bulk = None;
            } else {
                let Some(&kind) = buf.get(self.pos) else {
                    return Ok(false);
                };
                match kind {
                    // RESP2's simple string and error; RESP3's null, boolean, double and big
                    // number are lines too.
                    b'+' | b'-' | b'_' | b'#' | b',' | b'(' => match self.line(buf)? {
                        Some(next) => {
                            // A null is empty, a boolean `t` or `f`.
                            let text = buf.get(self.pos + 1..next - 2).unwrap_or_default();
                            let valid = match kind {
                                b'_' => text.is_empty(),
                                b'#' => text == b"t" || text == b"f",
                                _ => true,
                            };
                            if !valid {
                                return Err(ProtocolError::UnknownReplyType(kind));
                            }
                            self.pos = next;
                        }
                        None => return Ok(false),
                    },
                    b':' => match number(buf, self.pos, ProtocolError::InvalidInteger)? {
                        Some((_, next)) => self.pos = next,
                        None => return Ok(false),
                    },
                    // Bulk string; RESP3's blob error and verbatim string have its shape.
                    b'$' | b'!' | b'=' => {
                        let Some((len, next)) =
                            number(buf, self.pos, ProtocolError::InvalidBulkLength)?
                        else {
                            return Ok(false);
                        };
                        self.pos = next;
                        // Only a bulk string has a null form (`$-1`).
                        if len == -1 && kind != b'$' {
                            return Err(ProtocolError::InvalidBulkLength);
                        }
                        if len != -1 {
                            let len = usize::try_from(len)
                                .ok()
                                .filter(|&n| n <= self.limits.max_bulk_len)
                                .ok_or(ProtocolError::InvalidBulkLength)?;
                            self.bulk = Some(len);
                            continue;
                        }
                    }
                    // Array; RESP3's set and push hold `count` elements, a map `2 * count`,
                    // and an attribute `2 * count` followed by the element it describes.
                    b'*' | b'~' | b'>' | b'%' | b'|' => {
                        let Some((count, next)) =
                            number(buf, self.pos, ProtocolError::InvalidMultibulkLength)?
                        else {
                            return Ok(false);
                        };
                        // Only an array has a null form (`*-1`).
                        if count < -1 || (count == -1 && kind != b'*') {
                            return Err(ProtocolError::InvalidMultibulkLength);
                        }
                        self.pos = next;
                        // `*-1` holds nothing.
                        let count = usize::try_from(count).unwrap_or(0);
                        if count > self.limits.max_array_len {
                            return Err(ProtocolError::InvalidMultibulkLength);
                        }
                        // Within the cap, so doubling cannot overflow.
                        let elements = match kind {
                            b'%' => count * 2,
                            b'|' => count * 2 + 1,
                            _ => count,
                        };
                        if elements > 0 {
                            if self.stack.len() >= self.limits.max_depth {
                                return Err(ProtocolError::NestingTooDeep);
                            }
                            // An aggregate opens: its elements follow; it completes with the
                            // last.
                            self.stack.push(elements);
                            continue;
                        }
                        // `*0`, `*-1`, `%0`, `~0` are complete elements by themselves.
                    }
                    other => return Err(ProtocolError::UnknownReplyType(other)),
                }
            }
            // One element completed: count it against the open arrays.
            loop {
                match self.stack.last_mut() {
                    None => return Ok(true),
                    Some(left) if *left > 1 => {
                        *left -= 1;
                        break;
                    }
                    // That was the array's last element: the array itself completes, and
                    // counts as one element of its parent.
                    Some(_) => {
                        self.stack.pop();
                    }
                }
            }
        }
    }

    /// Continues a `+`/`-` line at `pos`; the offset after its `\r\n` once it is complete.
    fn line(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let text = self.pos + 1;
        let max = self.limits.max_bulk_len;
        let window_end = buf.len().min(text.saturating_add(max).saturating_add(1));
        let from = text + self.scanned;
        let found = buf
            .get(from..window_end)
            .and_then(|w| w.iter().position(|&b| b == b'\r'));
        let Some(i) = found else {
            if window_end.saturating_sub(text) > max {
                return Err(ProtocolError::TooBigReplyLine);
            }
            self.scanned = window_end.saturating_sub(text);
            return Ok(None);
        };
        let cr = from + i;
        self.scanned = cr - text;
        match buf.get(cr + 1) {
            None => Ok(None),
            Some(b'\n') => {
                self.scanned = 0;
                Ok(Some(cr + 2))
            }
            Some(_) => Err(ProtocolError::ExpectedCrlf),
        }
    }
}

/// A number line at `pos`, with `invalid` as the error for a malformed or overlong number.
fn number(
    buf: &[u8],
    pos: usize,
    invalid: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    number_line(buf, pos).map_err(|e| match e {
        NumberError::Invalid | NumberError::TooLong => invalid,
        NumberError::Crlf => ProtocolError::ExpectedCrlf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(input: &[u8], limits: Limits) -> (Vec<Bytes>, Option<ProtocolError>, BytesMut) {
        let mut d = ReplyDecoder::new(limits);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return (out, None, buf),
                Err(e) => return (out, Some(e), buf),
            }
        }
    }

    fn error_of(input: &[u8]) -> ProtocolError {
        let (_, err, _) = split_all(input, Limits::for_replies());
        err.unwrap_or_else(|| panic!("no error for {:?}", String::from_utf8_lossy(input)))
    }

    const STREAM: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR wrong\r\n",
        b":-42\r\n",
        b"$5\r\nhe\r\nl\r\n",
        b"$-1\r\n",
        b"$0\r\n\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n*0\r\n$-1\r\n",
        b"*2\r\n*1\r\n*1\r\n+deep\r\n-ERR x\r\n",
        // RESP3: null, boolean, double, big number, blob error, verbatim string, map, set,
        // push, an attribute with the element it describes, empty aggregates.
        b"_\r\n",
        b"#t\r\n",
        b",3.14\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"!9\r\nERR x\r\nyz\r\n",
        b"=8\r\ntxt:ab\r\n\r\n",
        b"%2\r\n$1\r\na\r\n:1\r\n+b\r\n~2\r\n,inf\r\n_\r\n",
        b"~0\r\n",
        b"%0\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nm\r\n",
        b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        b"|0\r\n#f\r\n",
        b"*2\r\n%1\r\n+k\r\n~1\r\n#t\r\n_\r\n",
    ];

    #[test]
    fn splits_every_reply_type() {
        let input = STREAM.concat();
        let (frames, err, rest) = split_all(&input, Limits::for_replies());
        assert_eq!(err, None);
        assert!(rest.is_empty());
        let frames: Vec<&[u8]> = frames.iter().map(|f| f.as_ref()).collect();
        assert_eq!(frames, STREAM);
    }

    #[test]
    fn resp3_aggregates_have_no_null_form_and_respect_the_cap() {
        for bad in [
            &b"~-1\r\n"[..],
            b"%-1\r\n",
            b">-1\r\n",
            b"|-1\r\n",
            b"*-2\r\n",
        ] {
            assert_eq!(error_of(bad), ProtocolError::InvalidMultibulkLength);
        }
        let limits = Limits {
            max_array_len: 2,
            ..Limits::for_replies()
        };
        // A map of 2 pairs holds 4 elements but claims 2: within a cap of 2.
        let (frames, err, _) = split_all(b"%2\r\n:1\r\n:2\r\n:3\r\n:4\r\n", limits);
        assert_eq!((frames.len(), err), (1, None));
        let (_, err, _) = split_all(b"%3\r\n", limits);
        assert_eq!(err, Some(ProtocolError::InvalidMultibulkLength));
    }

    #[test]
    fn resumes_byte_by_byte() {
        let input = STREAM.concat();
        let mut d = ReplyDecoder::new(Limits::for_replies());
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for &b in &input {
            buf.extend_from_slice(&[b]);
            while let Some(f) = d.decode(&mut buf).expect("valid") {
                frames.push(f);
            }
        }
        let frames: Vec<&[u8]> = frames.iter().map(|f| f.as_ref()).collect();
        assert_eq!(frames, STREAM);
    }

    #[test]
    fn ok_replies_split_anywhere_leave_no_state_behind() {
        // `+OK` takes a shortcut; a `+OK` that arrived in pieces, and lines after it that are
        // shorter or only start like it, must frame as the walk frames them.
        const OKS: &[&[u8]] = &[
            b"+OK\r\n",
            b"+\r\n",
            b"+OK\r\n",
            b"+OKAY\r\n",
            b"*2\r\n+OK\r\n+OK\r\n",
            b"+OK\r\n",
            b"-OK\r\n",
            b"$3\r\n+OK\r\n",
            b"+OK\r\n",
        ];
        let input = OKS.concat();
        for cut in 0..=input.len() {
            let mut d = ReplyDecoder::new(Limits::for_replies());
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for piece in [&input[..cut], &input[cut..]] {
                buf.extend_from_slice(piece);
                while let Some(f) = d.decode(&mut buf).expect("valid") {
                    frames.push(f);
                }
            }
            let frames: Vec<&[u8]> = frames.iter().map(|f| f.as_ref()).collect();
            assert_eq!(frames, OKS, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_array_state_is_kept() {
        let mut d = ReplyDecoder::new(Limits::for_replies());
        let mut buf = BytesMut::from(&b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(d.stack, [2, 1]);
        assert_eq!(d.pos, buf.len());
        buf.extend_from_slice(b"+long line");
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(d.scanned, 9);
        buf.extend_from_slice(b"\r\n$-1\r\n+next\r\n");
        let f = d.decode(&mut buf).expect("valid").expect("whole");
        assert_eq!(
            f.as_ref(),
            b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n+long line\r\n$-1\r\n"
        );
        assert_eq!(buf.as_ref(), b"+next\r\n");
        assert!(d.stack.is_empty());
    }

    #[test]
    fn reply_errors() {
        assert_eq!(error_of(b"@1\r\n"), ProtocolError::UnknownReplyType(b'@'));
        assert_eq!(
            error_of(b"\r\n").to_string(),
            "unknown reply type byte '\\x0d'"
        );
        assert_eq!(error_of(b":x\r\n"), ProtocolError::InvalidInteger);
        assert_eq!(error_of(b":1.5\r\n"), ProtocolError::InvalidInteger);
        assert_eq!(
            error_of(b":123456789012345678901"),
            ProtocolError::InvalidInteger
        );
        assert_eq!(error_of(b"$-2\r\n"), ProtocolError::InvalidBulkLength);
        assert_eq!(error_of(b"$a\r\n"), ProtocolError::InvalidBulkLength);
        assert_eq!(
            error_of(b"$536870913\r\n"),
            ProtocolError::InvalidBulkLength
        );
        assert_eq!(error_of(b"*-2\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error_of(b"*z\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error_of(b"$1\r\nab\r\n"), ProtocolError::ExpectedCrlf);
        assert_eq!(error_of(b"+OK\rX"), ProtocolError::ExpectedCrlf);
        assert_eq!(error_of(b":1\rX"), ProtocolError::ExpectedCrlf);
        let small = Limits {
            max_bulk_len: 4,
            max_array_len: 2,
            max_depth: 2,
            ..Limits::default()
        };
        let err = |input: &[u8]| split_all(input, small).1;
        assert_eq!(err(b"+hello"), Some(ProtocolError::TooBigReplyLine));
        assert_eq!(err(b"+hell"), None);
        assert_eq!(err(b"+hell\r\n"), None);
        assert_eq!(err(b"$5\r\n"), Some(ProtocolError::InvalidBulkLength));
        assert_eq!(err(b"*3\r\n"), Some(ProtocolError::InvalidMultibulkLength));
        assert_eq!(err(b"*1\r\n*1\r\n:1\r\n"), None);
        assert_eq!(
            err(b"*1\r\n*1\r\n*1\r\n"),
            Some(ProtocolError::NestingTooDeep)
        );
    }

    #[test]
    fn huge_headers_allocate_nothing() {
        let limits = Limits {
            max_bulk_len: usize::MAX,
            max_array_len: usize::MAX,
            ..Limits::default()
        };
        for input in [&b"$10000000000\r\nab"[..], b"*2000000000\r\n:1\r\n"] {
            let mut d = ReplyDecoder::new(limits);
            let mut buf = BytesMut::from(input);
            assert_eq!(d.decode(&mut buf), Ok(None));
            assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
            assert!(d.stack.capacity() < 1024);
        }
        let mut buf = BytesMut::from(&b"$10000000000\r\n"[..]);
        assert_eq!(
            ReplyDecoder::new(Limits::for_replies()).decode(&mut buf),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ReplyDecoder::new(Limits::for_replies());
        let mut buf = BytesMut::from(&b"?"[..]);
        let e = d.decode(&mut buf).expect_err("bad");
        let mut buf = BytesMut::from(&b"+OK\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Err(e));
    }
}
