//! One client connection: decode frames, dispatch them, write replies back in request order.
//!
//! The session is one task with one loop. Each dispatched command leaves a [`Pending`] at the
//! back of a FIFO queue; the loop waits on whichever comes first, more client bytes or the reply
//! at the front of the queue, and when the front is ready it takes every reply that is ready
//! behind it too and writes them with one syscall. Replies therefore leave in request order
//! however the servers interleave, and a pipelining client gets batched writes.
//!
//! Backpressure: once `max_pipeline` replies are pending, the session stops reading from the
//! client until they drain, so a client cannot make Keyway queue unbounded work.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::plan::Planner;
use super::Shared;
use crate::backend::Reply;
use crate::protocol::{write_error, RequestDecoder};

/// Bytes reserved for each read from a client.
const READ_CHUNK: usize = 16 * 1024;
/// Buffers larger than this are released once drained (after a big pipeline or value).
const KEEP_BUFFER: usize = 64 * 1024;

/// A reply in the making, in its client's request order.
pub(crate) enum Pending {
    /// Known already (local commands, errors).
    Ready(Bytes),
    /// The raw reply of one server, forwarded as it comes.
    Forward(oneshot::Receiver<Reply>),
    /// Replies of several servers, merged (MGET across servers, DBSIZE, SCAN, ...).
    Merge(Pin<Box<dyn Future<Output = Bytes> + Send>>),
}

impl Pending {
    pub(crate) fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        match self {
            Pending::Ready(b) => Poll::Ready(std::mem::take(b)),
            Pending::Forward(rx) => Pin::new(rx).poll(cx).map(reply_bytes),
            Pending::Merge(f) => f.as_mut().poll(cx),
        }
    }
}

/// The bytes to send a client for a server's reply or its failure.
pub(crate) fn reply_bytes(reply: Result<Reply, oneshot::error::RecvError>) -> Bytes {
    match reply {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => error_bytes(&e.to_string()),
        Err(_) => error_bytes("keyway: the server connection ended before replying"),
    }
}

/// `-ERR <msg>` unless `msg` already starts with an error code in capitals.
pub(crate) fn error_bytes(msg: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.len() + 8);
    let has_code = msg
        .split(' ')
        .next()
        .is_some_and(|w| w.len() > 1 && w.bytes().all(|b| b.is_ascii_uppercase()));
    if has_code {
        write_error(&mut out, msg);
    } else {
        write_error(&mut out, &format!("ERR {msg}"));
    }
    out.freeze()
}

/// Serves one client until it quits, disconnects or breaks the protocol.
///
/// # Errors
///
/// The I/O error that ended the connection, if any.
pub(crate) async fn run(stream: TcpStream, shared: Arc<Shared>, id: u64) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut decoder = RequestDecoder::new(shared.limits);
    let mut planner = Planner::new(shared.clone(), id);
    let mut inbuf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    // Set once the client sent EOF, QUIT or a malformed frame: answer what is pending, then close.
    let mut closing = false;

    loop {
        // Dispatch every whole frame already buffered, up to the pipeline limit.
        while !closing && pending.len() < shared.max_pipeline {
            match decoder.decode(&mut inbuf) {
                Ok(Some(request)) => {
                    let (reply, quit) = planner.dispatch(request).await;
                    pending.push_back(reply);
                    closing = quit;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(client = id, error = %e, "protocol error from client; closing");
                    let msg = format!("Protocol error: {e}");
                    pending.push_back(Pending::Ready(error_bytes(&msg)));
                    closing = true;
                }
            }
        }
        if closing && pending.is_empty() {
            let _ = wr.shutdown().await;
            return Ok(());
        }
        let can_read = !closing && pending.len() < shared.max_pipeline;
        tokio::select! {
            biased;
            first = poll_fn(|cx| front(&mut pending, cx)), if !pending.is_empty() => {
                out.extend_from_slice(&first);
                drain_ready(&mut pending, &mut out);
                wr.write_all(&out).await?;
                out.clear();
                if pending.is_empty() && out.capacity() > KEEP_BUFFER {
                    out = BytesMut::new();
                }
                if inbuf.is_empty() && inbuf.capacity() > KEEP_BUFFER {
                    inbuf = BytesMut::new();
                }
            }
            ready = rd.readable(), if can_read => {
                ready?;
                // Buffers are taken only when bytes arrive and given back when drained, so an
                // idle client costs its socket and this task, not buffer space.
                if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
                    inbuf.reserve(READ_CHUNK);
                }
                match rd.try_read_buf(&mut inbuf) {
                    Ok(0) => closing = true,
                    Ok(_) => planner.refresh(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Appends every reply at the front of the queue that is ready now, so that they go out in the
/// same write as the one just awaited.
fn drain_ready(pending: &mut VecDeque<Pending>, out: &mut BytesMut) {
    let mut cx = Context::from_waker(Waker::noop());
    while !pending.is_empty() {
        match front(pending, &mut cx) {
            Poll::Ready(next) => out.extend_from_slice(&next),
            Poll::Pending => break,
        }
    }
}

/// Polls the reply at the front of the queue; pops it when ready. The queue is never empty
/// here (both callers check), and an empty queue stays pending rather than panicking.
fn front(pending: &mut VecDeque<Pending>, cx: &mut Context<'_>) -> Poll<Bytes> {
    let Some(head) = pending.front_mut() else {
        return Poll::Pending;
    };
    let ready = head.poll_bytes(cx);
    if ready.is_ready() {
        pending.pop_front();
    }
    ready
}
