//! Client requests: [`Request`] and its incremental decoder.
//!
//! # State machine
//!
//! The decoder never consumes bytes until a whole frame is there, so every offset it keeps is
//! relative to the start of the buffer (the first byte of the frame being decoded):
//!
//! ```text
//! Idle ──'*'──> Multibulk { pos, remaining, bulk } ──remaining == 0──> split frame, Idle
//!   │  (count <= 0: consume the header, stay Idle)
//!   └──other──> Inline { scanned } ──'\n' found──> split line, Idle
//!                                    (no arguments: consume the line, stay Idle)
//! ```
//!
//! `Multibulk` remembers the offset of the next unread byte, the arguments still expected, the
//! length of a bulk whose header was read but whose body has not arrived, and (in
//! `RequestDecoder::ranges`) where each argument already read lies. `Inline` remembers how many
//! bytes are known to hold no `\n`. So each byte is looked at once however the frame is split
//! into reads; only a number line cut by a read boundary (at most 22 bytes) is read again.

use bytes::{Buf, Bytes, BytesMut};

use super::encode::{command_encoded_len, decimal_len, write_command};
use super::inline::split_args;
use super::number::{number_line, short_length, NumberError};
use super::{Limits, ProtocolError};

/// A client command: always a valid RESP multibulk frame plus where each argument lies in it.
///
/// The arguments are kept as offsets, not as `Bytes` handles: a handle per argument would cost
/// a reference-count increment and decrement each (21 of each for a 10-key MSET), while most
/// arguments are only ever read. [`Args::bytes`] makes a zero-copy handle where one is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The bytes to forward: as received for multibulk input, re-encoded for inline input.
    frame: Bytes,
    /// Each argument's body as `start..end` in `frame`. Each body sits right after its
    /// `$len\r\n` header and is followed by `\r\n`.
    spans: Vec<(usize, usize)>,
}

impl Request {
    /// The arguments, command name first. Never empty for a decoded request.
    pub fn args(&self) -> Args<'_> {
        Args {
            frame: &self.frame,
            spans: &self.spans,
        }
    }

    /// The bytes to forward to a server: the original bytes for multibulk input, a RESP
    /// re-encoding for inline input.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The command name as sent (any case): `args[0]`, or `b""` if there are no arguments.
    pub fn name(&self) -> &[u8] {
        self.args().first().unwrap_or_default()
    }

    /// Builds a request by encoding `args` (used when the proxy builds or rewrites a command).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let mut out = BytesMut::with_capacity(command_encoded_len(args));
        write_command(&mut out, args);
        // Each body sits after its `$len\r\n` header: walk the frame the way it was written.
        let mut pos = 1 + decimal_len(args.len() as u64) + 2;
        let spans = args
            .iter()
            .map(|a| {
                let len = a.as_ref().len();
                let start = pos + 1 + decimal_len(len as u64) + 2;
                pos = start + len + 2;
                (start, start + len)
            })
            .collect();
        Request {
            frame: out.freeze(),
            spans,
        }
    }
}

/// A request's arguments: a view that reads them out of the frame.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    frame: &'a Bytes,
    spans: &'a [(usize, usize)],
}

impl<'a> Args<'a> {
    /// How many arguments there are, the command name included.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none (never, for a decoded request).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Argument `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        let &(start, end) = self.spans.get(i)?;
        self.frame.get(start..end)
    }

    /// The arguments after the first `n` (`ACL DRYRUN user cmd ...`'s command).
    pub fn skip(&self, n: usize) -> Args<'a> {
        Args {
            frame: self.frame,
            spans: self.spans.get(n..).unwrap_or_default(),
        }
    }

    /// The first argument (the command name).
    pub fn first(&self) -> Option<&'a [u8]> {
        self.get(0)
    }

    /// Every argument in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &'a [u8]> + ExactSizeIterator + 'a {
        let frame: &'a [u8] = self.frame;
        self.spans
            .iter()
            .map(move |&(start, end)| frame.get(start..end).unwrap_or_default())
    }

    /// Argument `i` as a zero-copy handle on the frame, for keeping it past the request.
    pub fn bytes(&self, i: usize) -> Option<Bytes> {
        let &(start, end) = self.spans.get(i)?;
        (end <= self.frame.len()).then(|| self.frame.slice(start..end))
    }

    /// Every argument as a zero-copy handle.
    pub fn to_vec(&self) -> Vec<Bytes> {
        (0..self.len()).filter_map(|i| self.bytes(i)).collect()
    }

    /// The bytes that encode the arguments in `range` (`$len\r\nbody\r\n` each, back to
    /// back), for copying a run of arguments into another command with one copy. `None` for an
    /// empty or out-of-bounds range.
    ///
    /// Every frame holds its arguments in order, each under the one header the decoder accepts
    /// for its length (no sign, no leading zeros), so the run is one contiguous span.
    pub fn encoded(&self, range: std::ops::Range<usize>) -> Option<&'a [u8]> {
        if range.start >= range.end {
            return None;
        }
        let &(_, last_end) = self.spans.get(range.end - 1)?;
        let head = match range.start.checked_sub(1) {
            // Back to back: the run starts right after the previous argument's `\r\n`.
            Some(previous) => self.spans.get(previous)?.1 + 2,
            None => {
                let &(first, first_end) = self.spans.first()?;
                first.checked_sub(3 + decimal_len((first_end - first) as u64))?
            }
        };
        let span = self.frame.get(head..last_end + 2)?;
        (span.first() == Some(&b'$')).then_some(span)
    }
}

/// Where the decoder is inside the frame at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing of the next frame has been looked at.
    Idle,
    /// An inline line whose first `scanned` bytes hold no `\n`.
    Inline { scanned: usize },
    /// A multibulk frame: `pos` is the next unread byte, `remaining` the arguments still
    /// expected, `bulk` the body length of an argument whose header was read.
    Multibulk {
        pos: usize,
        remaining: usize,
        bulk: Option<usize>,
    },
}

/// Incremental request decoder. See the module docs for its states.
///
/// Pass the same buffer on every call and only append to it in between; `Ok(None)` means more
/// bytes are needed (normal, not an error). After an error the decoder returns that error again:
/// the stream cannot be resynchronised.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    state: State,
    /// Arguments of the frame in progress, as ranges of the buffer (multibulk) or of `scratch`
    /// (inline). A finished multibulk frame's list goes to its `Request` (the next header
    /// reserves a new one); an inline line's is reused.
    ranges: Vec<(usize, usize)>,
    /// Unescaped inline arguments. Reused across frames.
    scratch: Vec<u8>,
    failed: Option<ProtocolError>,
}

/// Ranges reserved up front for a frame, at most (its header says how many it will need).
const RESERVE_RANGES: usize = 64;

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            state: State::Idle,
            ranges: Vec::new(),
            scratch: Vec::new(),
            failed: None,
        }
    }

    /// Decodes the next request at the start of `buf`, consuming exactly its bytes (and any
    /// empty frames before it: `*0`, `*-1`, blank inline lines, which redis-server skips).
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] whose text is redis-server's; the caller answers
    /// `-ERR Protocol error: {err}` and closes the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.decode_frame(buf) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.state = State::Idle;
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            match self.state {
                State::Idle => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        self.state = State::Inline { scanned: 0 };
                        continue;
                    }
                    let header = match short_length(buf, 1) {
                        Some(line) => Ok(Some(line)),
                        None => number_line(buf, 0),
                    };
                    let (count, next) = match header {
                        Ok(Some(line)) => line,
                        Ok(None) => return Ok(None),
                        Err(NumberError::Invalid) => {
                            return Err(ProtocolError::InvalidMultibulkLength)
                        }
                        Err(NumberError::TooLong) => {
                            return Err(ProtocolError::TooBigMultibulkCount)
                        }
                        Err(NumberError::Crlf) => return Err(ProtocolError::ExpectedCrlf),
                    };
                    if count <= 0 {
                        // redis-server ignores empty (and negative) multibulks.
                        buf.advance(next);
                        continue;
                    }
                    let remaining = usize::try_from(count)
                        .ok()
                        .filter(|&n| n <= self.limits.max_array_len)
                        .ok_or(ProtocolError::InvalidMultibulkLength)?;
                    self.ranges.clear();
                    // One allocation for the argument list, not one per doubling; a header
                    // alone does not get more than a small command's worth.
                    self.ranges.reserve(remaining.min(RESERVE_RANGES));
                    self.state = State::Multibulk {
                        pos: next,
                        remaining,
                        bulk: None,
                    };
                }
                State::Inline { scanned } => match self.inline(buf, scanned)? {
                    Some(r) => return Ok(Some(r)),
                    None if self.state == State::Idle => continue,
                    None => return Ok(None),
                },
                State::Multibulk {
                    pos,
                    remaining,
                    bulk,
                } => return self.multibulk(buf, pos, remaining, bulk),
            }
        }
    }

    /// Continues an inline line. Leaves the state `Idle` after a line without arguments.
    fn inline(
        &mut self,
        buf: &mut BytesMut,
        scanned: usize,
    ) -> Result<Option<Request>, ProtocolError> {
        let max = self.limits.max_inline_len;
        // A line may hold at most `max` bytes before its '\n'.
        let window_end = buf.len().min(max.saturating_add(1));
        let found = buf
            .get(scanned..window_end)
            .and_then(|w| w.iter().position(|&b| b == b'\n' || b == 0));
        let Some(i) = found else {
            if buf.len() > max {
                return Err(ProtocolError::TooBigInline);
            }
            self.state = State::Inline {
                scanned: window_end,
            };
            return Ok(None);
        };
        let newline = scanned + i;
        if buf.get(newline) == Some(&0) {
            return Err(ProtocolError::NulInInline);
        }
        let end = if newline > 0 && buf.get(newline - 1) == Some(&b'\r') {
            newline - 1
        } else {
            newline
        };
        self.scratch.clear();
        self.ranges.clear();
        split_args(
            buf.get(..end).unwrap_or_default(),
            &mut self.scratch,
            &mut self.ranges,
        )?;
        buf.advance(newline + 1);
        self.state = State::Idle;
        if self.ranges.is_empty() {
            return Ok(None);
        }
        let args: Vec<&[u8]> = self
            .ranges
            .iter()
            .map(|&(s, e)| self.scratch.get(s..e).unwrap_or_default())
            .collect();
        Ok(Some(Request::from_args(&args)))
    }

    /// Reads the `$len\r\n` line at `pos`: the body length and the offset after the line, or
    /// `None` until the line is complete.
    #[inline]
    fn bulk_header(&self, buf: &[u8], pos: usize) -> Result<Option<(usize, usize)>, ProtocolError> {
        let (len, next) = match short_length(buf, pos + 1) {
            Some(line) => line,
            None => match number_line(buf, pos) {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(NumberError::Invalid) => return Err(ProtocolError::InvalidBulkLength),
                Err(NumberError::TooLong) => return Err(ProtocolError::TooBigBulkCount),
                Err(NumberError::Crlf) => return Err(ProtocolError::ExpectedCrlf),
            },
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.limits.max_bulk_len)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        Ok(Some((len, next)))
    }

    /// Continues a multibulk frame whose header was read.
    fn multibulk(
        &mut self,
        buf: &mut BytesMut,
        mut pos: usize,
        mut remaining: usize,
        mut bulk: Option<usize>,
    ) -> Result<Option<Request>, ProtocolError> {
        while remaining > 0 {
            let len = match bulk.take() {
                Some(len) => len,
                None => {
                    let Some(&first) = buf.get(pos) else {
                        break;
                    };
                    if first != b'$' {
                        return Err(ProtocolError::ExpectedDollar(first));
                    }
                    let Some((len, next)) = self.bulk_header(buf, pos)? else {
                        break;
                    };
                    pos = next;
                    len
                }
            };
            // Cannot overflow: len <= max_bulk_len and pos <= buf.len(), but be safe.
            let end = pos
                .checked_add(len)
                .ok_or(ProtocolError::InvalidBulkLength)?;
            let Some(crlf) = buf.get(end..end.saturating_add(2)) else {
                bulk = Some(len);
                break;
            };
            if crlf != b"\r\n" {
                return Err(ProtocolError::ExpectedCrlf);
            }
            self.ranges.push((pos, end));
            pos = end + 2;
            remaining -= 1;
        }
        if remaining > 0 {
            self.state = State::Multibulk {
                pos,
                remaining,
                bulk,
            };
            return Ok(None);
        }
        let request = Request {
            frame: buf.split_to(pos).freeze(),
            // The request takes the list; the next frame's header reserves a new one.
            spans: std::mem::take(&mut self.ranges),
        };
        self.state = State::Idle;
        Ok(Some(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> RequestDecoder {
        RequestDecoder::new(Limits::default())
    }

    fn args_of(r: &Request) -> Vec<&[u8]> {
        r.args().iter().collect()
    }

    /// Decodes every request in `input`; the error, if any, ends the list.
    fn decode_all(input: &[u8]) -> (Vec<Request>, Option<ProtocolError>, BytesMut) {
        let mut d = decoder();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => return (out, None, buf),
                Err(e) => return (out, Some(e), buf),
            }
        }
    }

    fn error_of(input: &[u8]) -> ProtocolError {
        let (_, err, _) = decode_all(input);
        err.unwrap_or_else(|| panic!("no error for {:?}", String::from_utf8_lossy(input)))
    }

    #[test]
    fn multibulk_keeps_original_bytes_and_slices_args() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n";
        let (reqs, err, rest) = decode_all(input);
        assert_eq!(err, None);
        assert!(rest.is_empty());
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.frame().as_ref(), input);
        assert_eq!(args_of(r), [&b"SET"[..], b"k", b"a\r\nb"]);
        assert_eq!(r.name(), b"SET");
        // Zero-copy: the arguments point into the frame.
        let frame = r.frame().as_ptr_range();
        assert!(r.args().iter().all(|a| frame.contains(&a.as_ptr())));
    }

    #[test]
    fn empty_bulk_argument() {
        let (reqs, err, _) = decode_all(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n");
        assert_eq!(err, None);
        assert_eq!(args_of(&reqs[0]), [&b"ECHO"[..], b""]);
    }

    #[test]
    fn empty_multibulks_and_blank_lines_are_skipped() {
        let input = b"*0\r\n*-1\r\n*-5\r\n\r\n\n   \r\n*1\r\n$4\r\nPING\r\n";
        let (reqs, err, rest) = decode_all(input);
        assert_eq!(err, None);
        assert!(rest.is_empty());
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].frame().as_ref(), b"*1\r\n$4\r\nPING\r\n");
        // Only skippable frames: all consumed, nothing returned.
        let (reqs, err, rest) = decode_all(b"*0\r\n\r\n*-1\r\n");
        assert!(reqs.is_empty() && err.is_none() && rest.is_empty());
    }

    #[test]
    fn inline_commands_are_reencoded() {
        let (reqs, err, rest) = decode_all(b"SET k \"a b\\x41\"\r\nGET 'k'\nPING\r\n");
        assert_eq!(err, None);
        assert!(rest.is_empty());
        assert_eq!(reqs.len(), 3);
        assert_eq!(args_of(&reqs[0]), [&b"SET"[..], b"k", b"a bA"]);
        assert_eq!(
            reqs[0].frame().as_ref(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na bA\r\n"
        );
        assert_eq!(args_of(&reqs[1]), [&b"GET"[..], b"k"]);
        assert_eq!(reqs[2].frame().as_ref(), b"*1\r\n$4\r\nPING\r\n");
        let frame = reqs[0].frame().as_ptr_range();
        assert!(reqs[0].args().iter().all(|a| frame.contains(&a.as_ptr())));
        assert_eq!(reqs[0], Request::from_args(&reqs[0].args().to_vec()));
    }

    #[test]
    fn inline_without_newline_waits() {
        let (reqs, err, rest) = decode_all(b"PING");
        assert!(reqs.is_empty() && err.is_none());
        assert_eq!(rest.as_ref(), b"PING");
    }

    #[test]
    fn mixed_stream_in_order() {
        let mut input = Vec::new();
        input.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n");
        input.extend_from_slice(b"PING\r\n");
        input.extend_from_slice(b"*0\r\n");
        input.extend_from_slice(b"*3\r\n$4\r\nMSET\r\n$1\r\nb\r\n$0\r\n\r\n");
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(b"ECHO \"x y\"\r\n");
        input.extend_from_slice(b"*1\r\n$4\r\nQU"); // incomplete tail
        let (reqs, err, rest) = decode_all(&input);
        assert_eq!(err, None);
        let names: Vec<&[u8]> = reqs.iter().map(|r| r.name()).collect();
        assert_eq!(names, [&b"GET"[..], b"PING", b"MSET", b"ECHO"]);
        assert_eq!(args_of(&reqs[3]), [&b"ECHO"[..], b"x y"]);
        assert_eq!(rest.as_ref(), b"*1\r\n$4\r\nQU");
    }

    #[test]
    fn resumes_byte_by_byte() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\nGET \"key\"\r\n";
        let mut d = decoder();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(r) = d.decode(&mut buf).expect("valid input") {
                got.push(r);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(args_of(&got[0]), [&b"SET"[..], b"key", b"value"]);
        assert_eq!(args_of(&got[1]), [&b"GET"[..], b"key"]);
    }

    #[test]
    fn partial_frame_state_is_kept_not_rescanned() {
        // After the first half of a frame, the decoder has recorded the arguments it saw.
        let mut d = decoder();
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(d.ranges.len(), 2);
        assert!(matches!(
            d.state,
            State::Multibulk {
                remaining: 1,
                bulk: Some(5),
                ..
            }
        ));
        buf.extend_from_slice(b"lue\r\n");
        let r = d.decode(&mut buf).expect("valid").expect("complete");
        assert_eq!(args_of(&r), [&b"SET"[..], b"k", b"value"]);
        // Inline: the scanned prefix is remembered.
        let mut buf = BytesMut::from(&b"PING aaaa"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(d.state, State::Inline { scanned: 9 });
    }

    #[test]
    fn multibulk_header_errors() {
        assert_eq!(error_of(b"*x\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error_of(b"*\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error_of(b"*01\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error_of(b"*1 \r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(
            error_of(b"*1048577\r\n"),
            ProtocolError::InvalidMultibulkLength
        );
        assert_eq!(
            error_of(b"*99999999999999999999\r\n"),
            ProtocolError::InvalidMultibulkLength
        );
        assert_eq!(
            error_of(b"*123456789012345678901"),
            ProtocolError::TooBigMultibulkCount
        );
        assert_eq!(error_of(b"*1\rX"), ProtocolError::ExpectedCrlf);
    }

    #[test]
    fn bulk_errors() {
        assert_eq!(
            error_of(b"*1\r\nPING\r\n"),
            ProtocolError::ExpectedDollar(b'P')
        );
        assert_eq!(
            error_of(b"*1\r\n:1\r\n").to_string(),
            "expected '$', got ':'"
        );
        assert_eq!(error_of(b"*1\r\n$-1\r\n"), ProtocolError::InvalidBulkLength);
        assert_eq!(error_of(b"*1\r\n$x\r\n"), ProtocolError::InvalidBulkLength);
        assert_eq!(error_of(b"*1\r\n$+1\r\n"), ProtocolError::InvalidBulkLength);
        assert_eq!(
            error_of(b"*1\r\n$536870913\r\n"),
            ProtocolError::InvalidBulkLength
        );
        assert_eq!(
            error_of(b"*1\r\n$123456789012345678901"),
            ProtocolError::TooBigBulkCount
        );
        assert_eq!(error_of(b"*1\r\n$1\ra"), ProtocolError::ExpectedCrlf);
        assert_eq!(error_of(b"*1\r\n$1\r\nab\r\n"), ProtocolError::ExpectedCrlf);
        assert_eq!(error_of(b"*1\r\n$1\r\na\rX"), ProtocolError::ExpectedCrlf);
        // A good request before the bad one is still returned.
        let (reqs, err, _) = decode_all(b"PING\r\n*1\r\n?");
        assert_eq!(reqs.len(), 1);
        assert_eq!(err, Some(ProtocolError::ExpectedDollar(b'?')));
    }

    #[test]
    fn inline_errors() {
        assert_eq!(error_of(b"SET \"k\r\n"), ProtocolError::UnbalancedQuotes);
        assert_eq!(error_of(b"SET 'k'v\r\n"), ProtocolError::UnbalancedQuotes);
        assert_eq!(error_of(b"GET a\x00b\r\n"), ProtocolError::NulInInline);
        assert_eq!(error_of(b"GET a\x00"), ProtocolError::NulInInline);
        let long = vec![b'a'; 64 * 1024 + 1];
        assert_eq!(error_of(&long), ProtocolError::TooBigInline);
        let mut line = vec![b'a'; 64 * 1024 + 1];
        line.extend_from_slice(b"\r\n");
        assert_eq!(error_of(&line), ProtocolError::TooBigInline);
        // Exactly at the limit (the '\r' counts) is fine.
        let mut line = vec![b'a'; 64 * 1024 - 1];
        line.extend_from_slice(b"\r\n");
        let (reqs, err, _) = decode_all(&line);
        assert_eq!((reqs.len(), err), (1, None));
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = decoder();
        let mut buf = BytesMut::from(&b"*1\r\n!"[..]);
        let e = d.decode(&mut buf).expect_err("bad");
        buf.clear();
        buf.extend_from_slice(b"PING\r\n");
        assert_eq!(d.decode(&mut buf), Err(e));
    }

    #[test]
    fn huge_bulk_header_allocates_nothing() {
        // Over the limit: refused at the header.
        let mut buf = BytesMut::from(&b"*1\r\n$10000000000\r\n"[..]);
        let cap = buf.capacity();
        assert_eq!(
            decoder().decode(&mut buf),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(buf.capacity(), cap);
        // Allowed by the limits: waits for the body without reserving room for it.
        let limits = Limits {
            max_bulk_len: usize::MAX,
            ..Limits::default()
        };
        let mut d = RequestDecoder::new(limits);
        let mut buf = BytesMut::from(&b"*1\r\n$10000000000\r\nabc"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
        assert!(d.ranges.capacity() < 1024);
        assert!(d.scratch.capacity() < 1024);
    }

    #[test]
    fn huge_multibulk_header_allocates_nothing() {
        let mut buf = BytesMut::from(&b"*2000000000\r\n"[..]);
        assert_eq!(
            decoder().decode(&mut buf),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        let limits = Limits {
            max_array_len: usize::MAX,
            ..Limits::default()
        };
        let mut d = RequestDecoder::new(limits);
        let mut buf = BytesMut::from(&b"*2000000000\r\n$1\r\na\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
        assert!(d.ranges.capacity() < 1024, "ranges {}", d.ranges.capacity());
    }

    #[test]
    fn from_args_encodes_and_slices() {
        let r = Request::from_args(&[
            Bytes::from_static(b"MGET"),
            Bytes::from_static(b"a"),
            Bytes::from_static(b""),
        ]);
        assert_eq!(
            r.frame().as_ref(),
            b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$0\r\n\r\n"
        );
        assert_eq!(args_of(&r), [&b"MGET"[..], b"a", b""]);
        let frame = r.frame().as_ptr_range();
        assert!(r.args().iter().take(2).all(|a| frame.contains(&a.as_ptr())));
        let empty = Request::from_args::<&[u8]>(&[]);
        assert_eq!(empty.name(), b"");
        assert_eq!(empty.frame().as_ref(), b"*0\r\n");
    }
}
