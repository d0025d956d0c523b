//! RESP2 and RESP3 frames: incremental, bounded, zero-copy decoding, and encoding. Bytes only.
//!
//! This layer knows nothing about commands. It turns client bytes into [`Request`]s, splits
//! whole reply frames off server bytes with [`ReplyDecoder`], parses the few replies the proxy
//! must merge into a [`Value`], and encodes replies and commands into a `BytesMut`.
//!
//! # Why it looks like this
//!
//! - **Zero-copy.** A decoded frame is cut off the read buffer with
//!   `BytesMut::split_to(..).freeze()`; arguments are `Bytes::slice`s of it. The proxy forwards
//!   [`Request::frame`] and reply frames as the bytes that came in: no re-encoding on the hot path.
//! - **Resumable.** Both decoders keep where they stopped (byte offset, arguments already found,
//!   the open arrays of a nested reply, how far a line was searched for its newline). A frame that
//!   arrives in many reads (a pipeline, an `MSET` with 100k arguments, a large `LRANGE` reply) is
//!   scanned once in total, not once per read. The offsets are relative to the start of the
//!   buffer, so the caller must pass the same buffer each time and only append to it between
//!   calls (as the session and the server connections do); it may reallocate freely.
//! - **Bounded.** [`Limits`] caps bulk length, element count, inline line length and reply
//!   nesting. A header only ever *claims* a size: nothing is reserved or allocated because of it
//!   (a `$10000000000` header costs nothing until the bytes actually arrive). Number lines are at
//!   most 20 characters (`-9223372036854775808`); longer ones are refused at once instead of
//!   waiting for a `\r` that may never come.
//! - **Compatible with redis-server.** Requests are accepted as `networking.c` accepts them:
//!   multibulk of bulk strings, `*0`/`*-1` (any count <= 0) and blank inline lines skipped
//!   silently, inline commands split like `sdssplitargs` (quotes, escapes, a NUL ends the line),
//!   numbers parsed like `string2ll` (no `+`, no leading zeros). Error texts are redis-server's,
//!   so the session can answer `-ERR Protocol error: {err}` and close, as Redis does.
//!   Deliberate differences, all stricter and all independent of how the input was split:
//!   the `\r\n` after every line and bulk is checked ("expected CRLF"; Redis skips two bytes
//!   unchecked); an inline line is refused once longer than `max_inline_len` even when its
//!   newline arrived in the same read (Redis only checks while the newline is missing); the first
//!   byte of a bulk header is checked as soon as it arrives; a NUL byte in an inline line is
//!   refused at once (Redis's `strchr` stops at it and the line never completes).
//! - **No panics from input.** Every access to input bytes goes through `.get()`; the decoders
//!   stay usable only until their first error (they repeat it), as the session closes then.

mod decode;
mod encode;
mod inline;
mod number;

pub(crate) use inline::split_args;
pub(crate) use number::parse_i64;
mod reply;
mod value;

pub use decode::{Args, Request, RequestDecoder};
pub(crate) use encode::NumberLine;
pub use encode::{
    write_array_header, write_bulk, write_command, write_error, write_integer, write_map_header,
    write_nil, write_null, write_null_array, write_set_header, write_simple, write_verbatim, Proto,
};
pub use reply::ReplyDecoder;
pub use value::{is_error_reply, is_null_reply, Value};

use std::fmt;

/// Caps on what one frame may claim. Checked against headers before any byte of the body is
/// awaited; nothing is ever allocated from a claimed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string, in bytes. Default 512 MiB, redis-server's `proto-max-bulk-len`.
    pub max_bulk_len: usize,
    /// Most elements in one array (arguments of one command). Default 1 Mi (1,048,576).
    /// redis-server accepts up to `INT_MAX`; a proxy has no use for more than a million
    /// arguments in one command (an `MSET` of 500k pairs) and a smaller cap keeps the decoder's
    /// per-argument bookkeeping bounded. Use [`Limits::for_replies`] for server replies, where
    /// `KEYS`/`SMEMBERS` may legitimately return more.
    pub max_array_len: usize,
    /// Longest inline command line, in bytes. Default 64 KiB, redis-server's
    /// `PROTO_INLINE_MAX_SIZE`.
    pub max_inline_len: usize,
    /// Deepest nesting of arrays in a reply (a top-level array is depth 1). Default 32.
    /// Requests are never nested.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_depth: 32,
        }
    }
}

impl Limits {
    /// Limits for decoding replies from trusted servers: as [`Limits::default`] but arrays up to
    /// `i32::MAX` elements like redis-server itself. Splitting a reply never allocates per
    /// element, and [`Value::parse`] only allocates for elements actually present, so a large
    /// count costs nothing.
    pub fn for_replies() -> Self {
        Limits {
            max_array_len: i32::MAX as usize,
            ..Limits::default()
        }
    }
}

/// Why a byte stream is not valid RESP. The texts are redis-server's (without its
/// `Protocol error: ` prefix), so a session can answer `-ERR Protocol error: {err}\r\n` and close.
///
/// A request error is the client's fault; a reply error is the server's (or a desynchronised
/// connection's): the caller knows which decoder it asked.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A `*` count that is not a number, or above [`Limits::max_array_len`].
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$` length that is not a number, negative (other than a reply's `$-1`), or above
    /// [`Limits::max_bulk_len`].
    #[error("invalid bulk length")]
    InvalidBulkLength,
    /// Something other than a bulk string inside a request's multibulk.
    #[error("expected '$', got '{}'", Shown(*.0))]
    ExpectedDollar(u8),
    /// An inline command with an open quote, or a closing quote not followed by a space.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// An inline line longer than [`Limits::max_inline_len`].
    #[error("too big inline request")]
    TooBigInline,
    /// A NUL byte before the end of an inline line. redis-server looks for the newline with
    /// `strchr`, which stops at the NUL, so it never sees the line end: it waits until 64 KiB
    /// arrived and answers "too big inline request". Refusing at once is kinder.
    #[error("NUL byte in inline request")]
    NulInInline,
    /// A `*` count line longer than any number.
    #[error("too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `$` length line longer than any number.
    #[error("too big bulk count string")]
    TooBigBulkCount,
    /// A reply nested deeper than [`Limits::max_depth`].
    #[error("nesting too deep")]
    NestingTooDeep,
    /// A `:` reply that is not an `i64`.
    #[error("invalid integer")]
    InvalidInteger,
    /// A line or bulk string not ended by `\r\n`.
    #[error("expected CRLF")]
    ExpectedCrlf,
    /// A reply starting with a byte that is not a RESP2 type (`+ - : $ *`).
    #[error("unknown reply type byte '{}'", Shown(*.0))]
    UnknownReplyType(u8),
    /// A `+` or `-` reply line longer than [`Limits::max_bulk_len`].
    #[error("too big reply line")]
    TooBigReplyLine,
    /// [`Value::parse`] was given less than one whole frame.
    #[error("incomplete frame")]
    Incomplete,
    /// [`Value::parse`] was given more than one whole frame.
    #[error("trailing bytes after frame")]
    TrailingBytes,
}

/// A byte as it may appear inside a one-line error: printable ASCII as itself, anything else
/// (notably `\r` and `\n`, which would break the reply line) as `\xHH`.
struct Shown(u8);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() || self.0 == b' ' {
            write!(f, "{}", char::from(self.0))
        } else {
            write!(f, "\\x{:02x}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_match_redis_server() {
        assert_eq!(
            ProtocolError::ExpectedDollar(b'x').to_string(),
            "expected '$', got 'x'"
        );
        assert_eq!(
            ProtocolError::ExpectedDollar(b'\r').to_string(),
            "expected '$', got '\\x0d'"
        );
        assert_eq!(
            ProtocolError::UnknownReplyType(b'%').to_string(),
            "unknown reply type byte '%'"
        );
        assert_eq!(
            ProtocolError::InvalidMultibulkLength.to_string(),
            "invalid multibulk length"
        );
        assert_eq!(
            ProtocolError::UnbalancedQuotes.to_string(),
            "unbalanced quotes in request"
        );
    }

    #[test]
    fn default_limits_are_redis_like() {
        let l = Limits::default();
        assert_eq!(l.max_bulk_len, 512 << 20);
        assert_eq!(l.max_inline_len, 64 << 10);
        assert_eq!(l.max_array_len, 1 << 20);
        assert_eq!(l.max_depth, 32);
        assert_eq!(Limits::for_replies().max_array_len, i32::MAX as usize);
    }
}
