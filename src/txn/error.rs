//! What goes wrong in a transaction, by kind: a call to one participant server
//! ([`CallError`]), recovery of a stale transaction ([`ResolveError`]), and a transaction that
//! did not commit, as its client is told ([`TxnError`]).

use crate::backend::BackendError;
use crate::error::{ErrorKind, ReplyError};
use crate::protocol::{ProtocolError, Value};

/// Why a script call to a participant server gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The topology has no server at this index.
    #[error("no such server")]
    NoSuchServer,
    /// The server was unavailable, did not answer within the timeout, or broke the protocol
    /// (the error names it).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The server's connection task ended before the reply came (its pool left the topology).
    #[error("server '{server}': connection ended")]
    ConnectionEnded { server: String },
    /// The script, or the server before running it, answered with an error reply.
    #[error("server '{server}': {message}")]
    ErrorReply { server: String, message: String },
    /// The reply frame is not one RESP value.
    #[error("server '{server}': {error}")]
    Malformed {
        server: String,
        error: ProtocolError,
    },
    /// The server ran the prepare after its deadline (it was stalled): it took no lock.
    #[error("server '{server}' ran the prepare {late_ms} ms after its deadline, and refused it")]
    Late { server: String, late_ms: i64 },
    /// A reply of a shape the script never returns.
    #[error("server '{server}': unexpected {script} reply {reply:?}")]
    Unexpected {
        server: String,
        script: &'static str,
        reply: Value,
    },
}

impl CallError {
    /// The kind of a client error caused by this failure.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            CallError::Backend(BackendError::Unavailable { .. } | BackendError::Lost { .. })
            | CallError::ConnectionEnded { .. } => ErrorKind::Unavailable,
            CallError::Backend(BackendError::Timeout { .. } | BackendError::Down { .. })
            | CallError::Late { .. } => ErrorKind::Timeout,
            CallError::Backend(BackendError::Protocol { .. })
            | CallError::ErrorReply { .. }
            | CallError::Malformed { .. }
            | CallError::Unexpected { .. } => ErrorKind::BadReply,
            CallError::NoSuchServer => ErrorKind::Internal,
        }
    }
}

/// Why recovery could not resolve a transaction now; its intent stays for a later attempt.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The transaction's primary participant, by name, is not a server of this topology.
    #[error("primary participant '{primary}' is not in the topology")]
    UnknownPrimary { primary: String },
    /// The intent of the lock's holder is gone: it was resolved meanwhile.
    #[error("the lock's intent is gone")]
    IntentGone,
    /// A participant could not be asked.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Why a transaction did not commit, or does not know whether it did: what its client is
/// told. The text follows the reply's error code ([`TxnError::code`]).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TxnError {
    /// A participant is down: refused before anything was sent.
    #[error(
        "keyway: server '{server}' holding a replica of these keys is down; write = two_phase needs every replica, so nothing was written; writes to these keys resume when it is back"
    )]
    ParticipantDown { server: String },
    /// Every attempt met keys locked by other transactions; nothing was written. The last
    /// lock met: its holder, the participant it is on, whether its coordinator lives.
    #[error(
        "keyway: keys are locked by two-phase transaction {holder} on server '{server}' (its coordinator is {}); nothing was written, retry",
        if *alive { "alive" } else { "gone: recovery is resolving it" }
    )]
    Conflict {
        holder: String,
        server: String,
        alive: bool,
    },
    /// A prepare failed; every lock was released and nothing was written.
    #[error("keyway: two-phase prepare failed, nothing was written ({0})")]
    PrepareFailed(CallError),
    /// Recovery, taking the transaction for dead, recorded `abort` before its commit point.
    #[error(
        "keyway: the transaction was aborted by recovery before its commit point; nothing was written"
    )]
    AbortedByRecovery,
    /// The primary participant had no intent left to commit.
    #[error(
        "keyway: the transaction's intent vanished on its primary participant; outcome unknown"
    )]
    IntentVanished,
    /// After the commit point, a secondary participant had no intent left to apply: it was
    /// removed, or recovery applied it already. That server's part and results are unknown.
    #[error(
        "keyway: the write passed its commit point, but server '{server}' had nothing staged left to apply (its intent was removed, or recovery applied it); the outcome on that server is unknown"
    )]
    SecondaryIntentMissing { server: String },
    /// The commit on the primary participant got no answer: it may or may not have happened.
    #[error(
        "keyway: two-phase commit outcome unknown ({0}); recovery will finish it on every replica"
    )]
    CommitUnknown(CallError),
    /// The one script of a single-participant transaction failed.
    #[error("keyway: {0}")]
    OnePhase(CallError),
    /// A plan without parts.
    #[error("keyway: empty transaction")]
    Empty,
}

impl TxnError {
    /// The kind of the client's error: `TRYAGAIN` when nothing was written and the same write
    /// may simply be sent again; an unknown outcome when the commit point may have passed.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            TxnError::ParticipantDown { .. }
            | TxnError::Conflict { .. }
            | TxnError::PrepareFailed(_)
            | TxnError::AbortedByRecovery => ErrorKind::TryAgain,
            TxnError::IntentVanished
            | TxnError::SecondaryIntentMissing { .. }
            | TxnError::CommitUnknown(_) => ErrorKind::OutcomeUnknown,
            TxnError::OnePhase(e) => e.kind(),
            TxnError::Empty => ErrorKind::Internal,
        }
    }

    /// The `outcome` label of the transaction's metric.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            TxnError::ParticipantDown { .. } => "unavailable",
            TxnError::Conflict { .. } => "conflict",
            TxnError::PrepareFailed(_)
            | TxnError::AbortedByRecovery
            | TxnError::IntentVanished
            | TxnError::SecondaryIntentMissing { .. }
            | TxnError::CommitUnknown(_)
            | TxnError::OnePhase(_)
            | TxnError::Empty => "failed",
        }
    }
}

impl From<TxnError> for ReplyError {
    fn from(e: TxnError) -> ReplyError {
        ReplyError::new(e.kind(), e.to_string())
    }
}
