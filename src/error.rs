//! Errors on the wire: what a client is told when Keyway itself, not a server, answers with an
//! error.
//!
//! Every error Keyway makes is a [`ReplyError`]: a bounded [`ErrorKind`] and a message. The kind
//! decides the RESP prefix (`ERR`, `CROSSSLOT`, `TRYAGAIN`, `NOPROTO`), whether a client may
//! retry, and the `kind` label of `keyway_errors_total`; the message is what follows the prefix.
//! Errors that servers send (`-WRONGTYPE ...`) are replies, forwarded as they came, and are not
//! this type. Each layer's own error (`CommandError`, `BackendError`, `PlacementError`, ...)
//! converts into a `ReplyError` where it is defined, so that the type is kept to the wire.
//!
//! A leaf: it imports nothing of Keyway's.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// What went wrong, from a fixed set: decides the RESP prefix, retryability and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A command or subcommand Redis does not know.
    UnknownCommand,
    /// Wrong number of arguments.
    Arity,
    /// Arguments Keyway must read are malformed (a cursor, `numkeys`, a HELLO option).
    Syntax,
    /// A command Keyway does not serve, or not under the pool's policies.
    Refused,
    /// The keys of a command that cannot be split hash to several slots.
    CrossSlot,
    /// A condition that passes by itself: keys locked by a two-phase write, a slot whose server
    /// is down under `failover = none`.
    TryAgain,
    /// `HELLO` with a protocol version Keyway does not speak.
    NoProto,
    /// Authentication with an unknown user or a wrong password.
    WrongPass,
    /// A command before authentication, where users are configured.
    NoAuth,
    /// A command, key or channel the client's user may not use.
    NoPerm,
    /// MULTI/EXEC used out of order (EXEC without MULTI, nested MULTI, WATCH inside MULTI).
    Transaction,
    /// EXEC of a transaction that had an error while queuing.
    ExecAbort,
    /// The client broke the protocol; Keyway closes the connection after this reply.
    Protocol,
    /// A server could not be reached (refused, reset, in backoff).
    Unavailable,
    /// A server did not answer within `pool.timeout`.
    Timeout,
    /// A server's reply was malformed, or not the shape the command implies.
    BadReply,
    /// A write reached fewer replicas than the write policy needs.
    Partial,
    /// A two-phase write whose commit point may or may not have passed: recovery finishes it
    /// either way.
    OutcomeUnknown,
    /// Keyway's own fault: a state that should not happen.
    Internal,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`].
    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::UnknownCommand,
        ErrorKind::Arity,
        ErrorKind::Syntax,
        ErrorKind::Refused,
        ErrorKind::CrossSlot,
        ErrorKind::TryAgain,
        ErrorKind::NoProto,
        ErrorKind::WrongPass,
        ErrorKind::NoAuth,
        ErrorKind::NoPerm,
        ErrorKind::Transaction,
        ErrorKind::ExecAbort,
        ErrorKind::Protocol,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::BadReply,
        ErrorKind::Partial,
        ErrorKind::OutcomeUnknown,
        ErrorKind::Internal,
    ];

    /// The error code the reply starts with, as Redis and Redis Cluster spell it.
    pub const fn prefix(self) -> &'static str {
        match self {
            ErrorKind::CrossSlot => "CROSSSLOT",
            ErrorKind::TryAgain => "TRYAGAIN",
            ErrorKind::NoProto => "NOPROTO",
            ErrorKind::WrongPass => "WRONGPASS",
            ErrorKind::NoAuth => "NOAUTH",
            ErrorKind::NoPerm => "NOPERM",
            ErrorKind::ExecAbort => "EXECABORT",
            ErrorKind::UnknownCommand
            | ErrorKind::Transaction
            | ErrorKind::Arity
            | ErrorKind::Syntax
            | ErrorKind::Refused
            | ErrorKind::Protocol
            | ErrorKind::Unavailable
            | ErrorKind::Timeout
            | ErrorKind::BadReply
            | ErrorKind::Partial
            | ErrorKind::OutcomeUnknown
            | ErrorKind::Internal => "ERR",
        }
    }

    /// Whether the same request may succeed if sent again later, unchanged: the condition is
    /// transient (locks, a server down or slow). A timed-out write's outcome is unknown: it may
    /// have been applied, so a retry is safe only for idempotent commands.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::TryAgain | ErrorKind::Unavailable | ErrorKind::Timeout
        )
    }

    /// The `kind` label of `keyway_errors_total`.
    pub const fn label(self) -> &'static str {
        match self {
            ErrorKind::UnknownCommand => "unknown_command",
            ErrorKind::Arity => "arity",
            ErrorKind::Syntax => "syntax",
            ErrorKind::Refused => "refused",
            ErrorKind::CrossSlot => "crossslot",
            ErrorKind::TryAgain => "tryagain",
            ErrorKind::NoProto => "noproto",
            ErrorKind::WrongPass => "wrongpass",
            ErrorKind::NoAuth => "noauth",
            ErrorKind::NoPerm => "noperm",
            ErrorKind::Transaction => "transaction",
            ErrorKind::ExecAbort => "execabort",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadReply => "bad_reply",
            ErrorKind::Partial => "partial",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::Internal => "internal",
        }
    }

    /// This kind's position in [`ErrorKind::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A reply for a client: a server's frame, forwarded as it came (a Redis error such as
/// `-WRONGTYPE` included), or Keyway's own error.
pub type Reply = Result<Bytes, ReplyError>;

/// An error reply Keyway makes: its kind and the text after the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    kind: ErrorKind,
    message: Cow<'static, str>,
}

impl ReplyError {
    /// An error of `kind` saying `message` (without the prefix, which the kind decides).
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> ReplyError {
        ReplyError {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The text after the prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Appends the RESP error frame: `-PREFIX message\r\n`, CR and LF in the message turned
    /// into spaces (an error line cannot hold them).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.kind.prefix().len() + self.message.len() + 4);
        out.put_u8(b'-');
        out.put_slice(self.kind.prefix().as_bytes());
        out.put_u8(b' ');
        out.extend(self.message.bytes().map(|b| match b {
            b'\r' | b'\n' => b' ',
            b => b,
        }));
        out.put_slice(b"\r\n");
    }

    /// The RESP error frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.prefix(), self.message)
    }
}

impl std::error::Error for ReplyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_decides_the_prefix() {
        let e = ReplyError::new(
            ErrorKind::CrossSlot,
            "Keys in request don't hash to the same slot",
        );
        assert_eq!(
            e.to_bytes().as_ref(),
            b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        );
        let e = ReplyError::new(
            ErrorKind::Arity,
            "wrong number of arguments for 'get' command",
        );
        assert_eq!(
            e.to_bytes().as_ref(),
            b"-ERR wrong number of arguments for 'get' command\r\n"
        );
        assert_eq!(
            ReplyError::new(ErrorKind::NoProto, "x").to_string(),
            "NOPROTO x"
        );
    }

    #[test]
    fn line_breaks_cannot_end_the_error_line_early() {
        let e = ReplyError::new(ErrorKind::Internal, "a\r\nb");
        assert_eq!(e.to_bytes().as_ref(), b"-ERR a  b\r\n");
    }

    #[test]
    fn kinds_are_listed_in_index_order_with_distinct_labels() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let labels: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
        assert!(ErrorKind::TryAgain.retryable());
        assert!(!ErrorKind::CrossSlot.retryable());
    }
}
