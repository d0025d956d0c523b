//! A reply in the making: what a session keeps, in request order, for each request it has
//! dispatched. A leaf of `server/`: `dispatch` makes these, the session polls them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::merge;
use crate::backend::{self, BackendError, Gather};
use crate::command::Merge;
use crate::error::{ErrorKind, Reply, ReplyError};

/// A reply in the making, in its client's request order.
pub(crate) enum Pending {
    /// Known already (local commands, refusals).
    Ready(Reply),
    /// The raw reply of one server, forwarded as it comes.
    Forward(oneshot::Receiver<backend::Reply>),
    /// The parts of a split command (MSET, MGET, DEL, ... over several servers), gathered in
    /// one place and merged once all are in.
    Gather {
        gather: Arc<Gather>,
        how: Merge,
        /// See [`merge::split`].
        owner: Vec<u32>,
    },
    /// Replies of several servers, merged (DBSIZE, SCAN, a split over replica sets, ...).
    Merge(Pin<Box<dyn Future<Output = Reply> + Send>>),
    /// A blocking command (`BLPOP`, `XREAD ... BLOCK`, ...) on a server connection of its own
    /// (see `blocking`). A barrier, as redis-server runs nothing of a blocked client until it is
    /// unblocked; dropping it closes that connection.
    Blocked(Pin<Box<dyn Future<Output = Reply> + Send>>),
    /// A two-phase transaction, running as a task of its own from the moment it is dispatched,
    /// so that it finishes even if the client goes away. The session dispatches nothing after
    /// it until it is answered: a client's later commands must not overtake its write.
    Task(tokio::task::JoinHandle<Reply>),
}

impl Pending {
    /// Polls for the reply. Once it returned `Ready`, the reply has been taken.
    pub(crate) fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Reply> {
        match self {
            Pending::Ready(r) => Poll::Ready(std::mem::replace(r, Ok(Bytes::new()))),
            Pending::Forward(rx) => Pin::new(rx).poll(cx).map(forwarded),
            Pending::Gather { gather, how, owner } => gather.poll_replies(cx).map(|replies| {
                // Pushed, not collected: a collect would reuse the replies' larger allocation
                // and shrink it with a `realloc`.
                let mut parts = Vec::with_capacity(replies.len());
                for reply in replies {
                    parts.push(part(reply));
                }
                merge::split(*how, parts, owner)
            }),
            Pending::Merge(f) | Pending::Blocked(f) => f.as_mut().poll(cx),
            Pending::Task(t) => Pin::new(t).poll(cx).map(|r| {
                r.unwrap_or_else(|_| {
                    Err(ReplyError::new(
                        ErrorKind::Internal,
                        "keyway: the transaction task ended without a reply",
                    ))
                })
            }),
        }
    }

    /// Whether the session must dispatch nothing after this reply until it is answered.
    pub(crate) fn is_barrier(&self) -> bool {
        matches!(self, Pending::Task(_) | Pending::Blocked(_))
    }

    /// Whether this is a blocking command's reply (see [`Pending::Blocked`]).
    pub(crate) fn is_blocking(&self) -> bool {
        matches!(self, Pending::Blocked(_))
    }
}

/// Awaits a pending reply.
pub(crate) async fn resolve(mut p: Pending) -> Reply {
    std::future::poll_fn(|cx| p.poll_reply(cx)).await
}

impl From<BackendError> for ReplyError {
    fn from(e: BackendError) -> ReplyError {
        let kind = match e {
            BackendError::Unavailable { .. } | BackendError::Lost { .. } => ErrorKind::Unavailable,
            BackendError::Timeout { .. } | BackendError::Down { .. } => ErrorKind::Timeout,
            BackendError::Protocol { .. } => ErrorKind::BadReply,
        };
        ReplyError::new(kind, e.to_string())
    }
}

fn ended() -> ReplyError {
    ReplyError::new(
        ErrorKind::Unavailable,
        "keyway: the server connection ended before replying",
    )
}

/// The reply for a server's answer to one request, or its failure.
pub(crate) fn forwarded(reply: Result<backend::Reply, oneshot::error::RecvError>) -> Reply {
    match reply {
        Ok(reply) => reply.map_err(ReplyError::from),
        Err(_) => Err(ended()),
    }
}

/// The reply for one part of a split command (see [`forwarded`]).
fn part(reply: Option<backend::Reply>) -> Reply {
    match reply {
        Some(reply) => reply.map_err(ReplyError::from),
        None => Err(ended()),
    }
}
