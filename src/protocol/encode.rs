//! Encoding helpers: each appends one RESP2 item to a `BytesMut`.
//!
//! Replies are encoded synchronously into the session's output buffer and written with one
//! syscall per batch, so these are small, allocation-free (beyond growing `out`) and format
//! integers on the stack instead of through `format!`.

use bytes::{BufMut, BytesMut};

/// A number line `{kind}{n}\r\n` (`*3\r\n`, `$64\r\n`, `:-1\r\n`) built on the stack: the
/// headers of every array, bulk string and integer are made here and copied with one call.
pub(crate) struct NumberLine {
    /// Kind, sign, 20 digits, CRLF; the line fills the end.
    buf: [u8; 24],
    start: usize,
}

impl NumberLine {
    #[inline]
    pub(crate) fn new(kind: u8, n: i64) -> NumberLine {
        let mut buf = [0u8; 24];
        let [.., cr, lf] = &mut buf;
        (*cr, *lf) = (b'\r', b'\n');
        let mut start = buf.len() - 2;
        let mut m = n.unsigned_abs();
        for slot in buf.iter_mut().rev().skip(2) {
            *slot = b'0' + (m % 10) as u8;
            start -= 1;
            m /= 10;
            if m == 0 {
                break;
            }
        }
        // At most 20 digits were written, so two places remain before them.
        if n < 0 {
            start = start.saturating_sub(1);
            if let Some(sign) = buf.get_mut(start) {
                *sign = b'-';
            }
        }
        start = start.saturating_sub(1);
        if let Some(k) = buf.get_mut(start) {
            *k = kind;
        }
        NumberLine { buf, start }
    }

    /// The array header `*n\r\n`.
    #[inline]
    pub(crate) fn array(n: usize) -> NumberLine {
        // An array of n elements holds n values in memory: n is far below i64::MAX.
        NumberLine::new(b'*', n as i64)
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }
}

/// Decimal digits of `n`.
pub(crate) fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// Appends a line's text with every `\r` and `\n` turned into a space, so it cannot end the
/// line early and desynchronise the peer.
fn put_line_text(out: &mut BytesMut, text: &[u8]) {
    if !text.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend_from_slice(text);
        return;
    }
    out.reserve(text.len());
    for &b in text {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
}

/// Appends a line reply (`+` or `-`) with `\r`/`\n` in `text` replaced by spaces.
pub(crate) fn put_line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(kind);
    put_line_text(out, text);
    out.extend_from_slice(b"\r\n");
}

/// The protocol a client speaks: RESP2 (the default) or RESP3 (after `HELLO 3`). Replies Keyway
/// builds itself are encoded for it; replies servers send come over connections of the same
/// protocol and pass through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Proto {
    /// RESP2: `$-1`/`*-1` nulls, maps and sets as flat arrays, text as bulk strings.
    #[default]
    Resp2,
    /// RESP3: `_` null, `%` maps, `~` sets, `=` verbatim text.
    Resp3,
}

impl Proto {
    /// The number `HELLO` and `CLIENT INFO` report (2 or 3).
    pub fn version(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

/// Appends a null bulk string: `$-1` in RESP2, `_` in RESP3.
pub fn write_null(out: &mut BytesMut, proto: Proto) {
    match proto {
        Proto::Resp2 => out.extend_from_slice(b"$-1\r\n"),
        Proto::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

/// Appends a null array: `*-1` in RESP2, `_` in RESP3.
pub fn write_null_array(out: &mut BytesMut, proto: Proto) {
    match proto {
        Proto::Resp2 => out.extend_from_slice(b"*-1\r\n"),
        Proto::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

/// Appends the header of a map of `pairs` key-value pairs: `%pairs` in RESP3, an array of
/// `2 * pairs` elements in RESP2. The keys and values follow, alternating.
pub fn write_map_header(out: &mut BytesMut, pairs: usize, proto: Proto) {
    match proto {
        Proto::Resp2 => write_array_header(out, pairs * 2),
        // A map of n pairs holds them in memory: n is far below i64::MAX.
        Proto::Resp3 => out.extend_from_slice(NumberLine::new(b'%', pairs as i64).as_bytes()),
    }
}

/// Appends the header of a set of `n` elements: `~n` in RESP3, `*n` in RESP2.
pub fn write_set_header(out: &mut BytesMut, n: usize, proto: Proto) {
    match proto {
        Proto::Resp2 => write_array_header(out, n),
        Proto::Resp3 => out.extend_from_slice(NumberLine::new(b'~', n as i64).as_bytes()),
    }
}

/// Appends text as redis-server sends INFO and CLIENT LIST: a bulk string in RESP2, a verbatim
/// string of format `txt` in RESP3.
pub fn write_verbatim(out: &mut BytesMut, text: &[u8], proto: Proto) {
    match proto {
        Proto::Resp2 => write_bulk(out, text),
        Proto::Resp3 => {
            out.extend_from_slice(NumberLine::new(b'=', text.len() as i64 + 4).as_bytes());
            out.extend_from_slice(b"txt:");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends `+s\r\n`; any `\r` or `\n` in `s` becomes a space.
pub fn write_simple(out: &mut BytesMut, s: &str) {
    put_line(out, b'+', s.as_bytes());
}

/// Appends `-msg\r\n`. `msg` is given without the leading `-` (e.g. `"ERR unknown command"`);
/// any `\r` or `\n` in it becomes a space.
pub fn write_error(out: &mut BytesMut, msg: &str) {
    put_line(out, b'-', msg.as_bytes());
}

/// Appends `:n\r\n`.
pub fn write_integer(out: &mut BytesMut, n: i64) {
    out.extend_from_slice(NumberLine::new(b':', n).as_bytes());
}

/// Appends `$len\r\nb\r\n`.
pub fn write_bulk(out: &mut BytesMut, b: &[u8]) {
    out.reserve(bulk_encoded_len(b.len()));
    // A slice is at most isize::MAX bytes long.
    out.extend_from_slice(NumberLine::new(b'$', b.len() as i64).as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Appends the nil bulk string `$-1\r\n`.
pub fn write_nil(out: &mut BytesMut) {
    out.extend_from_slice(b"$-1\r\n");
}

/// Appends `*n\r\n`; the caller then appends the `n` elements.
pub fn write_array_header(out: &mut BytesMut, n: usize) {
    out.extend_from_slice(NumberLine::array(n).as_bytes());
}

/// Appends a command: a RESP array of bulk strings, the form every server accepts.
pub fn write_command<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    out.reserve(command_encoded_len(args));
    write_array_header(out, args.len());
    for a in args {
        write_bulk(out, a.as_ref());
    }
}

/// Bytes `write_bulk` appends for a body of `len` bytes.
pub(crate) fn bulk_encoded_len(len: usize) -> usize {
    1 + decimal_len(len as u64) + 2 + len + 2
}

/// Bytes `write_command(args)` appends.
pub(crate) fn command_encoded_len<A: AsRef<[u8]>>(args: &[A]) -> usize {
    let header = 1 + decimal_len(args.len() as u64) + 2;
    args.iter()
        .fold(header, |n, a| n + bulk_encoded_len(a.as_ref().len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut out);
        out.to_vec()
    }

    #[test]
    fn integers_are_formatted_without_format() {
        assert_eq!(enc(|o| write_integer(o, 0)), b":0\r\n");
        assert_eq!(enc(|o| write_integer(o, 42)), b":42\r\n");
        assert_eq!(enc(|o| write_integer(o, -7)), b":-7\r\n");
        assert_eq!(
            enc(|o| write_integer(o, i64::MIN)),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(
            enc(|o| write_integer(o, i64::MAX)),
            b":9223372036854775807\r\n"
        );
        for n in [0u64, 9, 10, 99, 100, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len());
        }
    }

    #[test]
    fn lines_cannot_break_the_stream() {
        assert_eq!(enc(|o| write_simple(o, "OK")), b"+OK\r\n");
        assert_eq!(
            enc(|o| write_error(o, "ERR bad\r\nthing\n")),
            b"-ERR bad  thing \r\n"
        );
    }

    #[test]
    fn bulks_nil_arrays_and_commands() {
        assert_eq!(enc(|o| write_bulk(o, b"a\r\nb")), b"$4\r\na\r\nb\r\n");
        assert_eq!(enc(|o| write_bulk(o, b"")), b"$0\r\n\r\n");
        assert_eq!(enc(write_nil), b"$-1\r\n");
        assert_eq!(enc(|o| write_array_header(o, 12)), b"*12\r\n");
        let cmd = enc(|o| write_command(o, &["SET", "k", "v"]));
        assert_eq!(cmd, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        assert_eq!(command_encoded_len(&["SET", "k", "v"]), cmd.len());
        assert_eq!(enc(|o| write_command::<&[u8]>(o, &[])), b"*0\r\n");
    }
}
