//! One client connection: decode frames, dispatch them, write replies back in request order.
//!
//! The session is one task. While the client has work, an *active* loop runs: each dispatched
//! command leaves a [`Pending`] at the back of a FIFO queue; the loop waits on whichever comes
//! first, more client bytes or the reply at the front of the queue, and when the front is ready
//! it takes every reply that is ready behind it too and writes them with one syscall. Replies
//! therefore leave in request order however the servers interleave, and a pipelining client
//! gets batched writes. When everything received is answered, the session *parks*: buffers and
//! queue go back to the worker thread's kept kits (or are dropped) and the task waits for the
//! client with little memory.
//!
//! Backpressure: once `max_pipeline` replies are pending, the session stops reading from the
//! client until they drain, so a client cannot make Keyway queue unbounded work; replies the
//! client's socket does not take count against `max_client_output`.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::merge;
use super::plan::{ClientState, Planner};
use super::Shared;
use crate::backend::{Gather, Reply};
use crate::command::Merge;
use crate::metrics::Metrics;
use crate::protocol::{write_error, RequestDecoder};

/// Replies up to this size wait for the rest of the replies to the same read before they are
/// written (see `hold` in [`active`]).
const COALESCE_MAX: usize = 64 * 1024;

/// Pending replies an active stretch has room for before its queue grows.
const PENDING_START: usize = 8;

/// Bytes read from a client at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Kits each worker thread keeps for the next active stretches (see [`Kit`]).
const KITS_KEPT: usize = 64;

/// Room a kept kit's write buffer starts with.
const OUT_KEPT: usize = 4 * 1024;

/// What an active stretch works with and a parked session does without: the read and write
/// buffers, the queue of pending replies and the planner's key list. Each worker thread keeps
/// up to [`KITS_KEPT`] of them between stretches, so that a client with one request at a time
/// (a new stretch per request) does not allocate and free them for every request, while a
/// parked session still holds none. Only empty ones on allocations of at most 16 KiB each are
/// kept: at most about 2 MiB per thread.
struct Kit {
    inbuf: BytesMut,
    out: BytesMut,
    pending: VecDeque<Entry>,
    keys: Vec<usize>,
}

thread_local! {
    static KITS: std::cell::RefCell<Vec<Kit>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Kit {
    /// A kept kit, or a new one: buffers empty (the first read takes exactly what came), room
    /// for a small pipeline.
    fn take() -> Kit {
        KITS.with(|kits| kits.borrow_mut().pop())
            .unwrap_or_else(|| Kit {
                inbuf: BytesMut::new(),
                out: BytesMut::new(),
                pending: VecDeque::with_capacity(PENDING_START),
                keys: Vec::new(),
            })
    }

    /// Keeps the kit for a later stretch on this thread, if there is room and it is fit.
    fn give_back(mut self) {
        if !self.pending.is_empty() {
            return;
        }
        KITS.with(|kits| {
            let mut kits = kits.borrow_mut();
            if kits.len() >= KITS_KEPT {
                return;
            }
            if self.pending.capacity() > PENDING_START * 8 {
                self.pending = VecDeque::with_capacity(PENDING_START);
            }
            // Replies are copied into `out` until it is written. `out` is never shared, so a
            // reclaim finds its whole allocation: one larger than READ_CHUNK (a large reply
            // went through) or smaller than OUT_KEPT is replaced.
            self.out.clear();
            if self.out.try_reclaim(READ_CHUNK + 1) || !self.out.try_reclaim(OUT_KEPT) {
                self.out = BytesMut::with_capacity(OUT_KEPT);
            }
            // Reads go straight into `inbuf` while it has room, and requests are split off it
            // (sharing it). `active` empties it when it is not the kit's own READ_CHUNK
            // allocation (grown or replaced during the stretch). Once too little room is left,
            // it is taken back whole if nothing shares it any more, or replaced.
            if self.inbuf.capacity() < READ_CHUNK / 4 {
                self.inbuf.clear();
                if !self.inbuf.try_reclaim(READ_CHUNK) {
                    self.inbuf = BytesMut::with_capacity(READ_CHUNK);
                }
            }
            self.keys.clear();
            if self.keys.capacity() > 64 {
                self.keys = Vec::new();
            }
            kits.push(self);
        });
    }
}

/// A reply in the making, in its client's request order.
pub(crate) enum Pending {
    /// Known already (local commands, errors).
    Ready(Bytes),
    /// The raw reply of one server, forwarded as it comes.
    Forward(oneshot::Receiver<Reply>),
    /// The parts of a split command (MSET, MGET, DEL, ... over several servers), gathered in
    /// one place and merged once all are in.
    Gather {
        gather: Arc<Gather>,
        how: Merge,
        /// See [`merge::split_frames`].
        owner: Vec<u32>,
    },
    /// Replies of several servers, merged (DBSIZE, SCAN, a split over replica sets, ...).
    Merge(Pin<Box<dyn Future<Output = Bytes> + Send>>),
    /// A two-phase transaction, running as a task of its own from the moment it is dispatched,
    /// so that it finishes even if the client goes away. The session dispatches nothing after
    /// it until it is answered: a client's later commands must not overtake its write.
    Task(tokio::task::JoinHandle<Bytes>),
}

impl Pending {
    pub(crate) fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        match self {
            Pending::Ready(b) => Poll::Ready(std::mem::take(b)),
            Pending::Forward(rx) => Pin::new(rx).poll(cx).map(reply_bytes),
            Pending::Gather { gather, how, owner } => gather.poll_replies(cx).map(|replies| {
                // Pushed, not collected: a collect would reuse the replies' larger allocation
                // and shrink it with a `realloc`.
                let mut frames = Vec::with_capacity(replies.len());
                for reply in replies {
                    frames.push(part_bytes(reply));
                }
                merge::split_frames(*how, frames, owner)
            }),
            Pending::Merge(f) => f.as_mut().poll(cx),
            Pending::Task(t) => Pin::new(t).poll(cx).map(|r| {
                r.unwrap_or_else(|_| {
                    error_bytes("keyway: the transaction task ended without a reply")
                })
            }),
        }
    }
}

/// The bytes to send a client for a server's reply or its failure.
pub(crate) fn reply_bytes(reply: Result<Reply, oneshot::error::RecvError>) -> Bytes {
    match reply {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => error_bytes(&e.to_string()),
        Err(_) => error_bytes(ENDED_BEFORE_REPLYING),
    }
}

/// The bytes to send a client for one part of a split command (see [`reply_bytes`]).
fn part_bytes(reply: Option<Reply>) -> Bytes {
    match reply {
        Some(Ok(frame)) => frame,
        Some(Err(e)) => error_bytes(&e.to_string()),
        None => error_bytes(ENDED_BEFORE_REPLYING),
    }
}

const ENDED_BEFORE_REPLYING: &str = "keyway: the server connection ended before replying";

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

/// A pending reply with what its metrics need.
pub(crate) struct Entry {
    reply: Pending,
    /// See [`crate::metrics::Metrics::command_index`].
    command: u16,
    started: Instant,
    /// Nothing is dispatched after this entry until it is answered (see [`Pending::Task`]).
    barrier: bool,
}

/// Why a session ended on Keyway's initiative (a metric label).
#[derive(Clone, Copy)]
enum Disconnect {
    ProtocolError,
    OutputLimit,
    IdleTimeout,
    Drain,
}

impl Disconnect {
    fn label(self) -> &'static str {
        match self {
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::OutputLimit => "output_limit",
            Disconnect::IdleTimeout => "idle_timeout",
            Disconnect::Drain => "drain",
        }
    }
}

/// How an active stretch of a session ended.
enum Stretch {
    /// Everything received was answered and nothing is buffered: park until the client
    /// speaks again, keeping what the client set (and giving the kit back).
    Parked(ClientState, Kit),
    /// The connection is finished.
    Closed,
}

/// Serves one client until it quits, disconnects, breaks the protocol, or Keyway drains.
///
/// A session alternates between two states, so that an idle client costs little memory:
///
/// - **Parked** (this function): nothing pending, nothing buffered, no topology snapshot. The
///   task holds the socket, the client's settings ([`ClientState`]) and the drain waiter, and
///   waits for the client to speak (or for a drain, or the idle timeout).
/// - **Active** ([`active`], boxed): planner, buffers, the queue of pending replies; it returns
///   to parked as soon as everything received has been answered.
///
/// # Errors
///
/// The I/O error that ended the connection, if any.
pub(crate) async fn run(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    id: u64,
) -> std::io::Result<()> {
    let mut client = ClientState::new(id);
    let idle = shared.client_limits.idle_timeout;
    // The drain waiter, created before the flag is first checked so that a drain starting in
    // between still wakes it. Its first poll registers this task's waker, which stays the same
    // for the task's life, so it is polled once: from then on a drain wakes the task and the
    // flag (one atomic load) says why. The active stretch waits on it only while nothing else
    // can wake it (a partial frame).
    let drain = shared.drain.cancelled();
    let mut drain = std::pin::pin!(drain);
    let mut registered = false;
    loop {
        // Parked. The idle timer exists only when one is configured, and only while parked.
        let woke = {
            let mut idle_timer = (!idle.is_zero()).then(|| Box::pin(tokio::time::sleep(idle)));
            poll_fn(|cx| {
                if shared.is_draining() {
                    return Poll::Ready(Woke::Drain);
                }
                if !registered {
                    if drain.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Drain);
                    }
                    registered = true;
                }
                if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                    return Poll::Ready(Woke::Readable(ready));
                }
                poll_timer(&mut idle_timer, cx).map(|()| Woke::Idle)
            })
            .await
        };
        match woke {
            Woke::Readable(ready) => ready?,
            Woke::Drain => {
                count_disconnect(&shared.metrics, Disconnect::Drain);
                let _ = stream.shutdown().await;
                return Ok(());
            }
            Woke::Idle => {
                tracing::debug!(client = id, "idle timeout; closing");
                count_disconnect(&shared.metrics, Disconnect::IdleTimeout);
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
        // In a block of its own: the kit must not outlive it in this task's state (a local in
        // scope across the await below would take room in every parked session).
        let stretch = {
            let mut kit = Kit::take();
            let planner = Planner::new(shared.clone(), id, client, std::mem::take(&mut kit.keys));
            Box::pin(active(
                &mut stream,
                &shared,
                planner,
                kit,
                drain.as_mut(),
                id,
            ))
        };
        match stretch.await? {
            Stretch::Parked(kept, kit) => {
                client = kept;
                kit.give_back();
            }
            Stretch::Closed => return Ok(()),
        }
    }
}

/// What woke a parked session.
enum Woke {
    Readable(std::io::Result<()>),
    Drain,
    Idle,
}

fn count_disconnect(metrics: &Metrics, why: Disconnect) {
    metrics
        .client_disconnects
        .with_label_values(&[why.label()])
        .inc();
}

/// The active state of a session: reads, dispatches, writes replies in request order.
///
/// The loop, in order of preference: write what the client's socket takes, collect replies
/// that are ready (in request order), read more requests. Reading stops while `max_pipeline`
/// replies are pending; a client whose untaken replies would pass `max_client_output` bytes is
/// disconnected.
async fn active(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    mut planner: Planner,
    kit: Kit,
    mut drain: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    id: u64,
) -> std::io::Result<Stretch> {
    let (mut rd, mut wr) = stream.split();
    let (rd, wr) = (&mut rd, &mut wr);
    // A parked session has no partial frame, so the decoder starts afresh each stretch.
    let mut decoder = RequestDecoder::new(shared.limits);
    let decoder = &mut decoder;
    let metrics = &shared.metrics;
    // Request durations go straight to the shared histogram: a local one, flushed per batch,
    // cost more to set up per active stretch (one per request at -P 1) than it saved.
    let durations = &metrics.request_duration;
    let limits = &shared.client_limits;
    let Kit {
        mut inbuf,
        mut out,
        mut pending,
        keys: _,
    } = kit;
    // Ends the stretch parked, the kit's parts gathered back.
    // Set once a partial frame made the read buffer grow: it may now sit on an allocation of
    // any size, which the kit must not keep.
    let mut grew = false;
    macro_rules! parked {
        () => {{
            let (client, keys) = planner.into_client();
            let kit = Kit {
                inbuf: if grew { BytesMut::new() } else { inbuf },
                out,
                pending,
                keys,
            };
            return Ok(Stretch::Parked(client, kit));
        }};
    }
    // Until the first wait: the planner's snapshot was taken as this stretch began.
    let mut fresh = true;
    // Pending entries that hold back dispatch (two-phase transactions).
    let mut barriers = 0usize;
    // Replies in `out` wait for the other replies to the requests of the same read (a pipeline
    // split over several servers answers in pieces), so that the client gets one write per
    // batch, as redis-server answers a read's commands together (the writes/batch column of
    // scripts/bench/profile.sh). Up to COALESCE_MAX bytes; a later read's replies never hold
    // back an earlier read's.
    let mut hold = false;
    // Set once the client sent EOF, QUIT or a malformed frame, or Keyway drains: answer what
    // is pending, then close.
    let mut closing: Option<Option<Disconnect>> = None;
    let mut draining = shared.is_draining();
    let idle = limits.idle_timeout;
    // Armed only while a partial frame waits for the rest (with nothing pending, the session
    // parks instead), so that a busy session touches no timer per request.
    let mut idle_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;

    // The client spoke (the socket turned readable): take what it sent.
    // One poll: readiness may be stale (nothing to read after all), and then the session
    // parks again rather than wait here with its buffers.
    let first = poll_read_some(
        rd,
        &mut inbuf,
        &mut grew,
        &mut Context::from_waker(Waker::noop()),
    );
    match first {
        Poll::Ready(Ok(0)) => closing = Some(None),
        Poll::Ready(Ok(_)) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => parked!(),
    }

    loop {
        // Dispatch every whole frame already buffered, up to the pipeline limit. Frames that
        // arrived in one read share one start time (one clock read per batch, not per frame).
        let mut now: Option<Instant> = None;
        while closing.is_none()
            && pending.len() < limits.max_pipeline
            && barriers == 0
            && !inbuf.is_empty()
        {
            match decoder.decode(&mut inbuf) {
                Ok(Some(request)) => {
                    if now.is_none() && !std::mem::take(&mut fresh) {
                        // A batch of frames starts: on the topology current now (a swap may
                        // have come while earlier replies were awaited). The stretch's first
                        // batch has the snapshot the planner was just made with.
                        planner.refresh();
                    }
                    let started = *now.get_or_insert_with(Instant::now);
                    let (reply, spec, quit) = planner.dispatch(request);
                    let command = metrics.command_index(spec);
                    let barrier = matches!(reply, Pending::Task(_));
                    barriers += usize::from(barrier);
                    pending.push_back(Entry {
                        reply,
                        command,
                        started,
                        barrier,
                    });
                    if quit {
                        closing = Some(None);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(client = id, error = %e, "protocol error from client; closing");
                    let msg = format!("Protocol error: {e}");
                    pending.push_back(Entry {
                        reply: Pending::Ready(error_bytes(&msg)),
                        command: metrics.command_index(None),
                        started: Instant::now(),
                        barrier: false,
                    });
                    closing = Some(Some(Disconnect::ProtocolError));
                }
            }
        }
        if inbuf.is_empty() && inbuf.capacity() > 0 && inbuf.capacity() < READ_CHUNK / 4 {
            // Every frame was split off and too little room is left to read into: the remainder
            // would only keep their allocation alive.
            inbuf = BytesMut::new();
        }
        let quiet = pending.is_empty() && out.is_empty();
        if draining && closing.is_none() && quiet {
            // Draining: everything received is answered; close between requests.
            closing = Some(Some(Disconnect::Drain));
        }
        if let Some(why) = closing {
            if quiet {
                if let Some(why) = why {
                    count_disconnect(metrics, why);
                }
                let _ = wr.shutdown().await;
                return Ok(Stretch::Closed);
            }
        } else if quiet && inbuf.is_empty() {
            parked!();
        }
        let can_read = closing.is_none() && pending.len() < limits.max_pipeline;
        let idle_armed =
            !idle.is_zero() && closing.is_none() && pending.is_empty() && out.is_empty();
        if !idle_armed {
            idle_timer = None;
        } else if idle_timer.is_none() {
            idle_timer = Some(Box::pin(tokio::time::sleep(idle)));
        }
        tokio::select! {
            biased;
            // Writing comes first: `out` holds only what the client's socket did not take yet,
            // which is what the output limit bounds.
            written = wr.write(&out), if !out.is_empty() && !hold => {
                let n = written?;
                if n == 0 {
                    return Ok(Stretch::Closed);
                }
                out.advance(n);
                if out.is_empty() && pending.is_empty() && !inbuf.is_empty() {
                    // Nothing more to write while the rest of a frame is awaited: give the
                    // buffer back (an emptied BytesMut still holds its allocation), so that a
                    // client that stalls halfway holds no write buffer. (Otherwise the stretch
                    // parks now and the buffer goes back with its kit.)
                    out = BytesMut::new();
                }
            }
            first = poll_fn(|cx| front(&mut pending, cx)), if !pending.is_empty() => {
                let (within, batch) = collect(first, &mut pending, &mut out, metrics, durations, &mut barriers, limits.max_client_output);
                // Frames of one read share their start time (see the dispatch loop above).
                hold = within
                    && out.len() < COALESCE_MAX
                    && pending.front().is_some_and(|next| next.started == batch);
                if !within {
                    tracing::info!(
                        client = id,
                        bytes = out.len(),
                        "client does not read its replies; disconnecting at the output limit"
                    );
                    count_disconnect(metrics, Disconnect::OutputLimit);
                    return Ok(Stretch::Closed);
                }
            }
            read = poll_fn(|cx| poll_read_some(rd, &mut inbuf, &mut grew, cx)), if can_read => {
                if read? == 0 {
                    closing = Some(None);
                } else {
                    idle_timer = None;
                }
            }
            // Waiting for the rest of a frame, nothing pending: only a drain can come first.
            // (With replies pending, the next reply wakes the loop, which checks the flag.)
            () = &mut drain, if !draining && pending.is_empty() && out.is_empty() => {
                draining = true;
            }
            () = poll_fn(|cx| poll_timer(&mut idle_timer, cx)), if idle_armed => {
                tracing::debug!(client = id, "idle timeout; closing");
                closing = Some(Some(Disconnect::IdleTimeout));
            }
        }
        // Time passed: the next batch takes the topology current then.
        fresh = false;
        // Draining is checked between events (an atomic load), not waited on: an active
        // session has its next event coming anyway (a reply, a read), and a parked one waits
        // for it. A topology swap reaches the planner at the next read (`refresh`).
        if !draining && shared.is_draining() {
            draining = true;
        }
    }
}

/// Polls an optional timer; without one, never ready.
fn poll_timer(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, cx: &mut Context<'_>) -> Poll<()> {
    match timer {
        Some(t) => t.as_mut().poll(cx),
        None => Poll::Pending,
    }
}

/// Reads what the client sent, through `poll_read`: on Linux a short read tells tokio that the
/// socket is drained, which saves the extra read that would only return `WouldBlock`.
///
/// With nothing buffered and no room (a new kit), the bytes land in the worker thread's scratch
/// buffer first and `inbuf` takes exactly their size, so that a burst of new clients allocates
/// no more than they send; with room (a kept kit's buffer) or a partial frame buffered, reads go
/// straight into `inbuf`, grown by `READ_CHUNK` (and `grew` set).
fn poll_read_some(
    rd: &mut tokio::net::tcp::ReadHalf<'_>,
    inbuf: &mut BytesMut,
    grew: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    use tokio::io::AsyncRead;
    if inbuf.is_empty() && inbuf.capacity() < READ_CHUNK / 4 {
        thread_local! {
            // One read buffer per worker thread, zeroed once, not per read.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
        }
        return SCRATCH.with(|scratch| {
            let mut chunk = scratch.borrow_mut();
            let mut buf = tokio::io::ReadBuf::new(&mut chunk);
            match Pin::new(&mut *rd).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    inbuf.extend_from_slice(buf.filled());
                    Poll::Ready(Ok(buf.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        });
    }
    if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
        inbuf.reserve(READ_CHUNK);
        *grew = true;
    }
    tokio_util::io::poll_read_buf(Pin::new(rd), cx, inbuf)
}

/// Counts a finished request.
fn account(
    metrics: &Metrics,
    durations: &prometheus::Histogram,
    (entry, reply): &(EntryDone, Bytes),
    now: Instant,
) {
    let m = metrics.command_at(entry.command);
    if reply.first() == Some(&b'-') {
        m.error.inc();
    } else {
        m.ok.inc();
    }
    durations.observe(now.saturating_duration_since(entry.started).as_secs_f64());
}

/// What is left of an [`Entry`] once its reply is out.
pub(crate) struct EntryDone {
    command: u16,
    started: Instant,
    barrier: bool,
}

/// Appends `first` and every reply behind it that is ready now to `out`, so that they go out
/// in one write. Returns false when unwritten output would pass `limit`: bytes the client has
/// not taken are already waiting, and more would exceed what it may make Keyway hold. (A
/// single reply larger than the limit still goes out when nothing else is waiting.) Also
/// returns the start time of the last reply taken, which names its read's batch.
fn collect(
    first: (EntryDone, Bytes),
    pending: &mut VecDeque<Entry>,
    out: &mut BytesMut,
    metrics: &Metrics,
    durations: &prometheus::Histogram,
    barriers: &mut usize,
    limit: usize,
) -> (bool, Instant) {
    let mut cx = Context::from_waker(Waker::noop());
    let now = Instant::now();
    let mut batch = first.0.started;
    let mut next = Some(first);
    while let Some(done) = next.take() {
        account(metrics, durations, &done, now);
        batch = done.0.started;
        if done.0.barrier {
            *barriers = barriers.saturating_sub(1);
        }
        if !out.is_empty() && out.len() + done.1.len() > limit {
            return (false, batch);
        }
        out.extend_from_slice(&done.1);
        if let Poll::Ready(more) = front(pending, &mut cx) {
            next = Some(more);
        }
    }
    (true, batch)
}

/// Polls the reply at the front of the queue; pops it when ready. The queue is never empty
/// here (both callers check), and an empty queue stays pending rather than panicking.
fn front(pending: &mut VecDeque<Entry>, cx: &mut Context<'_>) -> Poll<(EntryDone, Bytes)> {
    let Some(head) = pending.front_mut() else {
        return Poll::Pending;
    };
    let Poll::Ready(reply) = head.reply.poll_bytes(cx) else {
        return Poll::Pending;
    };
    let done = EntryDone {
        command: head.command,
        started: head.started,
        barrier: head.barrier,
    };
    pending.pop_front();
    Poll::Ready((done, reply))
}
