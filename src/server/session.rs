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

use bytes::{Buf, BytesMut};
use tokio::io::AsyncRead;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::WaitForCancellationFuture;

use super::client::{ClientState, Replies};
use super::dispatch::{self, Context as DispatchContext};
use super::local::After;
use super::merge;
use super::plan;
use super::reply::Pending;
use super::scripts::Role;
use super::shared::Shared;
use super::stream::ClientStream;
use crate::command::{Local, Traits};
use crate::error::{ErrorKind, Reply, ReplyError};
use crate::metrics::Metrics;
use crate::protocol::{Request, RequestDecoder};
use crate::topology::Topology;

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

/// A pending reply with what its metrics need.
struct Entry {
    reply: Pending,
    /// See [`crate::metrics::Metrics::command_index`].
    command: u16,
    started: Instant,
    /// Nothing is dispatched after this entry until it is answered (see [`Pending::Task`]).
    barrier: bool,
    /// A pub/sub message queued behind pending replies, not a command's reply.
    push: bool,
}

/// What is left of an [`Entry`] once its reply is in.
struct Done {
    command: u16,
    started: Instant,
    barrier: bool,
    push: bool,
    reply: Reply,
}

/// Why a session ended on Keyway's initiative (a metric label).
#[derive(Clone, Copy)]
enum Disconnect {
    ProtocolError,
    OutputLimit,
    IdleTimeout,
    Drain,
    CrossProtocol,
    /// `CLIENT KILL`.
    Killed,
    /// `limits.max_memory` reached, and this client buffered the most.
    MaxMemory,
}

impl Disconnect {
    fn label(self) -> &'static str {
        match self {
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::OutputLimit => "output_limit",
            Disconnect::IdleTimeout => "idle_timeout",
            Disconnect::Drain => "drain",
            Disconnect::CrossProtocol => "cross_protocol",
            Disconnect::Killed => "killed",
            Disconnect::MaxMemory => "max_memory",
        }
    }
}

/// How an active stretch of a session ended.
enum Stretch {
    /// Everything received was answered and nothing is buffered: park until the client
    /// speaks again, keeping what the client set (and giving the kit back).
    Parked(ClientState, Kit),
    /// The one reply left is a blocking command's (BLPOP, ...), and nothing else is pending or
    /// buffered: wait for it (or the client) as parked, without the kit.
    Blocked(ClientState, Kit, Box<Entry>),
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
/// - **Active** ([`Active`], boxed): snapshot, buffers, the queue of pending replies; it returns
///   to parked as soon as everything received has been answered.
///
/// # Errors
///
/// The I/O error that ended the connection, if any.
pub(crate) async fn run<S: ClientStream>(
    mut stream: S,
    shared: Arc<Shared>,
    id: u64,
) -> std::io::Result<()> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream.tcp());
    let listed = shared.registry.add(
        id,
        stream.tcp().peer_addr().ok(),
        stream.tcp().local_addr().ok(),
        i64::from(fd),
    );
    let mut client = ClientState::new(id);
    client.entry = Some(listed.entry.clone());
    client.rebind(&shared.topology.users.load_full());
    // `CLIENT KILL`: waited on as the drain is.
    let killed = listed.entry.kill.cancelled();
    let mut killed = std::pin::pin!(killed);
    let idle = shared.client_limits.idle_timeout;
    // The drain waiter, created before the flag is first checked so that a drain starting in
    // between still wakes it. Its first poll registers this task's waker, which stays the same
    // for the task's life, so it is polled once: from then on a drain wakes the task and the
    // flag (one atomic load) says why. The active stretch waits on it only while nothing else
    // can wake it (a partial frame).
    let drain = shared.drain.cancelled();
    let mut drain = std::pin::pin!(drain);
    let mut registered = false;
    // A blocking command's reply, while the client is blocked (see `Stretch::Blocked`).
    let mut carry: Option<Box<Entry>> = None;
    loop {
        if let Some(entry) = carry.as_mut() {
            // Blocked: as parked (no kit), waiting for the reply or the client; no idle timer.
            let woke = poll_fn(|cx| {
                if shared.is_draining() {
                    return Poll::Ready(Woke::Drain);
                }
                if !registered {
                    if drain.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Drain);
                    }
                    registered = true;
                }
                if killed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Killed);
                }
                if let Poll::Ready(reply) = entry.reply.poll_reply(cx) {
                    return Poll::Ready(Woke::Answered(reply));
                }
                stream.poll_read_ready(cx).map(Woke::Readable)
            })
            .await;
            let why = match woke {
                Woke::Answered(reply) => {
                    entry.reply = Pending::Ready(reply);
                    None
                }
                Woke::Readable(ready) => {
                    ready?;
                    None
                }
                Woke::Killed => Some(Disconnect::Killed),
                Woke::Drain | Woke::Idle => Some(Disconnect::Drain),
                Woke::Mail => None,
            };
            if let Some(why) = why {
                // Dropping the entry closes the server connection: the server pops nothing
                // for a client that is gone.
                count_disconnect(&shared.metrics, why);
                let _ = stream.shutdown().await;
                return Ok(());
            }
        } else {
            // A subscribed client is never idle (as in redis-server), and wakes for messages.
            let mailbox = client.pubsub.as_deref().map(|s| s.mailbox.clone());
            let idle = if super::pubsub::subscribed(&client) {
                std::time::Duration::ZERO
            } else {
                idle
            };
            let woke = parked(
                &mut stream,
                &shared,
                idle,
                drain.as_mut(),
                &mut registered,
                killed.as_mut(),
                mailbox.as_deref(),
            )
            .await;
            match woke {
                Woke::Readable(ready) => ready?,
                Woke::Mail => {}
                Woke::Drain => {
                    count_disconnect(&shared.metrics, Disconnect::Drain);
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
                Woke::Killed => {
                    count_disconnect(&shared.metrics, Disconnect::Killed);
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
                Woke::Idle => {
                    tracing::debug!(client = id, "idle timeout; closing");
                    count_disconnect(&shared.metrics, Disconnect::IdleTimeout);
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
                Woke::Answered(_) => {}
            }
        }
        // Boxed, so that the active state takes no room in a parked session's task; the kit is
        // taken inside it.
        listed.entry.touch();
        let stretch = Box::pin(active(
            &mut stream,
            &shared,
            client,
            drain.as_mut(),
            killed.as_mut(),
            carry.take(),
        ));
        match stretch.await? {
            Stretch::Parked(kept, kit) => {
                client = kept;
                kit.give_back();
            }
            Stretch::Blocked(kept, kit, entry) => {
                client = kept;
                kit.give_back();
                carry = Some(entry);
            }
            Stretch::Closed => return Ok(()),
        }
    }
}

/// Parked: waits for the client to speak, a drain, `CLIENT KILL`, or the idle timeout (which
/// exists only when one is configured, and only while parked).
async fn parked<S: ClientStream>(
    stream: &mut S,
    shared: &Shared,
    idle: std::time::Duration,
    mut drain: Pin<&mut WaitForCancellationFuture<'_>>,
    registered: &mut bool,
    mut killed: Pin<&mut WaitForCancellationFuture<'_>>,
    mailbox: Option<&super::pubsub::Mailbox>,
) -> Woke {
    let mut idle_timer = (!idle.is_zero()).then(|| Box::pin(tokio::time::sleep(idle)));
    poll_fn(|cx| {
        if shared.is_draining() {
            return Poll::Ready(Woke::Drain);
        }
        if !*registered {
            if drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Drain);
            }
            *registered = true;
        }
        if killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woke::Killed);
        }
        if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
            return Poll::Ready(Woke::Readable(ready));
        }
        if mailbox.is_some_and(|m| m.poll_mail(cx).is_ready()) {
            return Poll::Ready(Woke::Mail);
        }
        poll_timer(&mut idle_timer, cx).map(|()| Woke::Idle)
    })
    .await
}

/// An active stretch: the [`Active`] state is made inside the (boxed) future, not moved into
/// it, since it is large and a move is a copy per stretch (one per request at -P 1).
async fn active<S: ClientStream>(
    stream: &mut S,
    shared: &Arc<Shared>,
    client: ClientState,
    drain: Pin<&mut WaitForCancellationFuture<'_>>,
    killed: Pin<&mut WaitForCancellationFuture<'_>>,
    carry: Option<Box<Entry>>,
) -> std::io::Result<Stretch> {
    let mut active = Active::new(stream, shared, client, Kit::take());
    if let Some(entry) = carry {
        active.barriers += usize::from(entry.barrier);
        active.kit.pending.push_back(*entry);
    }
    let end = active.run(drain, killed).await?;
    // Parking takes the client's state and the kit out field by field: moving the whole state
    // (or emptying it in place and dropping it) would cost a copy or a drop per stretch.
    let Active {
        client,
        mut kit,
        grew,
        ..
    } = active;
    Ok(match end {
        End::Park => {
            if grew {
                // A partial frame grew the read buffer: it may sit on an allocation of any
                // size, which the kit must not keep.
                kit.inbuf = BytesMut::new();
            }
            Stretch::Parked(client, kit)
        }
        End::Blocked => {
            if grew {
                kit.inbuf = BytesMut::new();
            }
            match kit.pending.pop_front() {
                Some(entry) => Stretch::Blocked(client, kit, Box::new(entry)),
                None => Stretch::Parked(client, kit),
            }
        }
        End::Closed => Stretch::Closed,
    })
}

/// How [`Active::run`] ended.
enum End {
    /// Everything received is answered: park.
    Park,
    /// All that is left is a blocking command's reply (see [`Stretch::Blocked`]).
    Blocked,
    /// The connection is finished.
    Closed,
}

/// What woke a parked (or blocked) session.
enum Woke {
    Readable(std::io::Result<()>),
    /// A pub/sub message is waiting for the client (or it was cut off).
    Mail,
    /// A blocked client's reply is in.
    Answered(Reply),
    Drain,
    Killed,
    Idle,
}

fn count_disconnect(metrics: &Metrics, why: Disconnect) {
    metrics
        .client_disconnects
        .with_label_values(&[why.label()])
        .inc();
}

/// What the active loop waited for.
enum Event {
    /// The client's socket took `n` bytes of `out`.
    Written(std::io::Result<usize>),
    /// The reply at the front of the queue is in.
    Reply(Done),
    /// A pub/sub message is waiting for the client (or it was cut off).
    Mail,
    /// The client sent `n` bytes (0: end of stream).
    Read(std::io::Result<usize>),
    /// Keyway started draining.
    Drain,
    /// `CLIENT KILL` named this client.
    Killed,
    /// The client stayed silent halfway through a frame for `idle_timeout`.
    Idle,
}

/// After a round of dispatching, what the session does next.
enum Next {
    /// Wait for the next event.
    Wait,
    /// Everything received is answered: park.
    Park,
    /// Only a blocking command's reply is pending: wait for it without the kit.
    Block,
    /// Everything is answered and the connection ends (for this reason, when Keyway ends it).
    Close(Option<Disconnect>),
}

/// The active state of a session: reads, plans and dispatches, collects replies in request
/// order, writes them.
///
/// Each turn of [`Active::run`]: dispatch every whole frame buffered ([`Active::dispatch`]),
/// decide whether to park or close ([`Active::next`]), then wait for one event
/// ([`Active::wait`]), in order of preference: the client's socket takes bytes
/// ([`Active::on_written`]), the reply at the front of the queue is in ([`Active::on_reply`]),
/// the client sent more ([`Active::on_read`]). Reading stops while `max_pipeline` replies are
/// pending; a client whose untaken replies would pass `max_client_output` bytes is
/// disconnected.
struct Active<'s, S: ClientStream> {
    rd: S::Rd<'s>,
    wr: S::Wr<'s>,
    shared: &'s Arc<Shared>,
    /// The snapshot requests are planned on (see `fresh`).
    topo: Arc<Topology>,
    client: ClientState,
    /// A parked session has no partial frame, so the decoder starts afresh each stretch.
    decoder: RequestDecoder,
    /// The buffers, the queue of pending replies, the planner's scratch list of key positions.
    kit: Kit,
    /// Set once a partial frame made the read buffer grow: it may now sit on an allocation of
    /// any size, which the kit must not keep.
    grew: bool,
    /// Until the first wait: the snapshot was taken as this stretch began.
    fresh: bool,
    /// Pending entries that hold back dispatch (two-phase transactions).
    barriers: usize,
    /// Replies in `out` wait for the other replies to the requests of the same read (a pipeline
    /// split over several servers answers in pieces), so that the client gets one write per
    /// batch, as redis-server answers a read's commands together (the writes/batch column of
    /// scripts/bench/profile.sh). Up to COALESCE_MAX bytes; a later read's replies never hold
    /// back an earlier read's.
    hold: bool,
    /// Set once the client sent EOF, QUIT or a malformed frame, or Keyway drains: answer what
    /// is pending, then close.
    closing: Option<Option<Disconnect>>,
    draining: bool,
    /// Armed only while a partial frame waits for the rest (with nothing pending, the session
    /// parks instead), so that a busy session touches no timer per request.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A blocking command that arrived while earlier replies were pending: it is sent once
    /// they are in, so that it runs after them on the server as in redis-server (it goes on
    /// a connection of its own, which would otherwise overtake them).
    held: Option<(Request, Instant)>,
    /// What the buffers hold, charged to `limits.max_memory`.
    charge: super::memory::Charge<'s>,
}

impl<'s, S: ClientStream> Active<'s, S> {
    fn new(
        stream: &'s mut S,
        shared: &'s Arc<Shared>,
        mut client: ClientState,
        kit: Kit,
    ) -> Active<'s, S> {
        let (rd, wr) = stream.halves();
        let users = shared.topology.users.load();
        if !Arc::ptr_eq(&users, &client.users) {
            client.rebind(&users);
        }
        let charge = super::memory::Charge::new(
            &shared.memory,
            &shared.metrics.client_buffered_bytes,
            &shared.registry,
            client.entry.as_ref(),
        );
        Active {
            rd,
            wr,
            shared,
            topo: shared.topology.load(),
            client,
            decoder: RequestDecoder::new(shared.limits),
            kit,
            grew: false,
            fresh: true,
            barriers: 0,
            hold: false,
            closing: None,
            draining: shared.is_draining(),
            idle_timer: None,
            held: None,
            charge,
        }
    }

    /// Runs the stretch until the session parks or the connection ends.
    async fn run(
        &mut self,
        mut drain: Pin<&mut WaitForCancellationFuture<'_>>,
        mut killed: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> std::io::Result<End> {
        // The client spoke (the socket turned readable): take what it sent. One poll: readiness
        // may be stale (nothing to read after all), and then the session parks again rather
        // than wait here with its buffers.
        let first = poll_read_some(
            &mut self.rd,
            &mut self.kit.inbuf,
            &mut self.grew,
            &mut Context::from_waker(Waker::noop()),
        );
        match first {
            Poll::Ready(Ok(0)) if self.blocked() => return Ok(End::Closed),
            Poll::Ready(Ok(0)) => self.closing = Some(None),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Err(e),
            // A blocked client woken by stale readiness: back to waiting for its reply.
            Poll::Pending if self.kit.pending.is_empty() && !self.has_mail() => {
                return Ok(End::Park)
            }
            Poll::Pending => {}
        }
        loop {
            if self.deliver() {
                return Ok(End::Closed);
            }
            self.dispatch();
            match self.next() {
                Next::Wait => {}
                Next::Park => return Ok(End::Park),
                Next::Block => return Ok(End::Blocked),
                Next::Close(why) => {
                    if let Some(why) = why {
                        count_disconnect(&self.shared.metrics, why);
                    }
                    let _ = self.wr.shutdown().await;
                    return Ok(End::Closed);
                }
            }
            let ended = match self.wait(drain.as_mut(), killed.as_mut()).await {
                Event::Written(n) => self.on_written(n?),
                Event::Reply(done) => self.on_reply(done),
                // Taken at the top of the loop.
                Event::Mail => false,
                Event::Read(n) => {
                    let n = n?;
                    // A client that leaves while blocked: its server connection closes now
                    // (dropped with the pending reply), as redis-server frees such a client.
                    if n == 0 && self.blocked() {
                        return Ok(End::Closed);
                    }
                    self.on_read(n);
                    false
                }
                Event::Drain => {
                    self.draining = true;
                    false
                }
                Event::Killed => true,
                Event::Idle => {
                    tracing::debug!(client = self.client.id, "idle timeout; closing");
                    self.closing = Some(Some(Disconnect::IdleTimeout));
                    false
                }
            };
            // What the buffers hold now, against `limits.max_memory` (a comparison when
            // nothing grew): past it, the client buffering the most is disconnected.
            self.charge
                .set(self.kit.inbuf.capacity() + self.kit.out.capacity());
            // `CLIENT KILL` closes at once, as redis-server does: an atomic load per event.
            let killed_now = self
                .client
                .entry
                .as_ref()
                .is_some_and(|e| e.kill.is_cancelled());
            if ended || killed_now {
                if killed_now {
                    self.killed().await;
                }
                return Ok(End::Closed);
            }
            // Time passed: the next batch takes the topology current then.
            self.fresh = false;
            // Draining is checked between events (an atomic load), not waited on: an active
            // session has its next event coming anyway (a reply, a read), and a parked one
            // waits for it. A topology swap reaches the planner at the next read (`dispatch`).
            if !self.draining && self.shared.is_draining() {
                self.draining = true;
            }
            if self.draining && self.blocked() {
                // A blocked client would hold the drain until its timeout.
                count_disconnect(&self.shared.metrics, Disconnect::Drain);
                let _ = self.wr.shutdown().await;
                return Ok(End::Closed);
            }
        }
    }

    /// Closes a session cancelled by `CLIENT KILL`, or disconnected for `limits.max_memory`
    /// (told why if its socket takes the error at once).
    #[cold]
    async fn killed(&mut self) {
        let evicted = self
            .client
            .entry
            .as_ref()
            .is_some_and(|e| e.evicted.load(std::sync::atomic::Ordering::Relaxed));
        if evicted {
            count_disconnect(&self.shared.metrics, Disconnect::MaxMemory);
            self.kit.inbuf = BytesMut::new();
            self.kit.out = BytesMut::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(10),
                self.wr.write_all(super::memory::EVICTED),
            )
            .await;
        } else {
            count_disconnect(&self.shared.metrics, Disconnect::Killed);
        }
        let _ = self.wr.shutdown().await;
    }

    /// Plans and dispatches every whole frame already buffered, up to the pipeline limit.
    /// Frames that arrived in one read share one start time (one clock read per batch, not per
    /// frame).
    fn dispatch(&mut self) {
        let max_pipeline = self.shared.client_limits.max_pipeline;
        let mut now: Option<Instant> = None;
        if self.closing.is_none() && self.kit.pending.is_empty() {
            if let Some((request, started)) = self.held.take() {
                self.request(&request, started);
            }
        }
        while self.closing.is_none()
            && self.held.is_none()
            && self.kit.pending.len() < max_pipeline
            && self.barriers == 0
            && !self.kit.inbuf.is_empty()
        {
            match self.decoder.decode(&mut self.kit.inbuf) {
                Ok(Some(request)) => {
                    if now.is_none() && !std::mem::take(&mut self.fresh) {
                        // A batch of frames starts: on the topology current now (a swap may
                        // have come while earlier replies were awaited). The stretch's first
                        // batch has the snapshot taken as it began.
                        self.refresh();
                    }
                    let started = *now.get_or_insert_with(Instant::now);
                    self.request(&request, started);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(client = self.client.id, error = %e, "protocol error from client; closing");
                    let error =
                        ReplyError::new(ErrorKind::Protocol, format!("Protocol error: {e}"));
                    self.push(Pending::Ready(Err(error)), None, Instant::now());
                    self.closing = Some(Some(Disconnect::ProtocolError));
                }
            }
        }
        if self.kit.inbuf.is_empty()
            && self.kit.inbuf.capacity() > 0
            && self.kit.inbuf.capacity() < READ_CHUNK / 4
        {
            // Every frame was split off and too little room is left to read into: the remainder
            // would only keep their allocation alive.
            self.kit.inbuf = BytesMut::new();
        }
    }

    /// Takes the current topology for the requests that follow.
    fn refresh(&mut self) {
        let current = self.shared.topology.load();
        if current.version != self.topo.version {
            self.topo = current;
        }
        self.users();
    }

    /// Binds the client to the users in force, when a reload changed them.
    fn users(&mut self) {
        let users = self.shared.topology.users.load();
        if !Arc::ptr_eq(&users, &self.client.users) {
            self.client.rebind(&users);
        }
    }

    /// Plans one request, dispatches the plan, and queues its pending reply.
    #[inline]
    fn request(&mut self, request: &Request, started: Instant) {
        let (spec, plan) = plan::plan(request, &self.topo, &mut self.client, &mut self.kit.keys);
        if let plan::Plan::CrossProtocol = plan {
            self.cross_protocol();
            return;
        }
        if let plan::Plan::Refuse(e) | plan::Plan::Multi(super::multi::Step::Dirty(e)) = &plan {
            if matches!(e.kind(), ErrorKind::NoAuth | ErrorKind::NoPerm) {
                self.denied(e, spec);
            }
        }
        if matches!(plan, plan::Plan::Block { .. }) && !self.kit.pending.is_empty() {
            self.held = Some((request.clone(), started));
            return;
        }
        // `CLIENT REPLY OFF|SKIP` (rare: one comparison otherwise).
        let replies = self.client.replies;
        let reply_command = matches!(plan, plan::Plan::Local(Local::ClientReply));
        let mut cx = DispatchContext {
            spec,
            script: spec.is_some_and(|s| s.traits.contains(Traits::SCRIPT)),
            cache: spec.map_or(Role::None, |s| Role::of(s.traits)),
            topo: &self.topo,
            client: &mut self.client,
            shared: self.shared,
        };
        let (mut reply, after) = dispatch::dispatch(plan, request, &mut cx);
        if replies != Replies::On || reply_command {
            let silent = if reply_command {
                // CLIENT REPLY ON answers; OFF and SKIP do not.
                self.client.replies != Replies::On
            } else {
                if replies == Replies::Skip {
                    self.client.replies = Replies::On;
                }
                true
            };
            if silent {
                reply = silenced(reply);
            }
        }
        self.push(reply, spec, started);
        if after == After::Close {
            self.closing = Some(None);
        }
    }

    /// A command refused for want of authentication or permission: counted, and logged at
    /// debug level with the user, the command and the peer (never an argument).
    #[cold]
    fn denied(&self, e: &ReplyError, spec: Option<&'static crate::command::CommandSpec>) {
        let reason = if e.kind() == ErrorKind::NoAuth {
            "noauth"
        } else {
            "noperm"
        };
        self.shared
            .metrics
            .auth_failures
            .with_label_values(&[reason])
            .inc();
        let peer = self.client.entry.as_ref().and_then(|e| e.addr);
        tracing::debug!(
            client = self.client.id,
            ?peer,
            user = self.client.user_name(),
            command = spec.map_or("?", |s| s.name),
            reason,
            "command refused"
        );
    }

    /// HTTP on the client port: close at once, without a reply and without the replies still
    /// unwritten (redis-server frees such a client before it writes again), log it at most once
    /// a minute (as redis-server does, so that a flood cannot fill the log), and count it.
    /// Dropping a pending two-phase transaction's handle does not stop the transaction.
    #[cold]
    fn cross_protocol(&mut self) {
        static LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = self.shared.started.elapsed().as_secs() + 1;
        let last = LOGGED.load(std::sync::atomic::Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) > 60 {
            LOGGED.store(now, std::sync::atomic::Ordering::Relaxed);
            let peer = self
                .client
                .entry
                .as_ref()
                .and_then(|e| e.addr)
                .map(|a| a.to_string())
                .unwrap_or_default();
            tracing::warn!(
                client = self.client.id,
                %peer,
                "possible security attack: HTTP (POST or Host:) sent to the client port, as a forged cross-protocol request would; connection closed"
            );
        }
        self.kit.pending.clear();
        self.kit.out.clear();
        self.barriers = 0;
        self.closing = Some(Some(Disconnect::CrossProtocol));
    }

    #[inline]
    fn push(
        &mut self,
        reply: Pending,
        spec: Option<&'static crate::command::CommandSpec>,
        started: Instant,
    ) {
        let barrier = reply.is_barrier();
        self.barriers += usize::from(barrier);
        self.kit.pending.push_back(Entry {
            reply,
            command: self.shared.metrics.command_index(spec),
            started,
            barrier,
            push: false,
        });
    }

    /// Whether a pub/sub message waits in the client's mailbox (or it was cut off).
    fn has_mail(&self) -> bool {
        self.client
            .pubsub
            .as_deref()
            .is_some_and(|s| s.mailbox.has_mail())
    }

    /// Takes the pub/sub messages waiting in the client's mailbox: straight into `out` when no
    /// reply is pending, else queued behind the pending replies (a message comes after the
    /// replies to the commands received before it, as in redis-server). Returns whether the
    /// client is disconnected at the output limit: its mailbox overflowed, or `out` passed it.
    fn deliver(&mut self) -> bool {
        let Some(subs) = self.client.pubsub.as_deref() else {
            return false;
        };
        let limit = self.shared.client_limits.max_client_output;
        let Ok(frames) = subs.mailbox.take() else {
            return self.cut_off();
        };
        if frames.is_empty() {
            return false;
        }
        let proto = self.client.proto;
        if self.kit.pending.is_empty() {
            for frame in &frames {
                super::pubsub::put_message(&mut self.kit.out, frame, proto);
            }
        } else {
            let started = Instant::now();
            for frame in frames {
                let frame = if proto == crate::protocol::Proto::Resp3 {
                    let mut push = BytesMut::with_capacity(frame.len());
                    super::pubsub::put_message(&mut push, &frame, proto);
                    push.freeze()
                } else {
                    frame
                };
                self.kit.pending.push_back(Entry {
                    reply: Pending::Ready(Ok(frame)),
                    command: 0,
                    started,
                    barrier: false,
                    push: true,
                });
            }
        }
        self.hold = false;
        if self.kit.out.len() > limit {
            return self.cut_off();
        }
        false
    }

    /// A subscriber that does not read its messages: disconnected at the output limit.
    #[cold]
    fn cut_off(&mut self) -> bool {
        tracing::info!(
            client = self.client.id,
            bytes = self.kit.out.len(),
            "subscriber does not read its messages; disconnecting at the output limit"
        );
        count_disconnect(&self.shared.metrics, Disconnect::OutputLimit);
        true
    }

    /// Whether a blocking command's reply is pending.
    fn blocked(&self) -> bool {
        self.kit.pending.iter().any(|e| e.reply.is_blocking())
    }

    /// Whether to wait for an event, park or close, now that everything buffered is dispatched.
    #[inline]
    fn next(&mut self) -> Next {
        if self.closing.is_none()
            && self.held.is_none()
            && self.kit.out.is_empty()
            && self.kit.inbuf.is_empty()
            && self.kit.pending.len() == 1
            && self
                .kit
                .pending
                .front()
                .is_some_and(|e| e.reply.is_blocking())
        {
            return Next::Block;
        }
        let quiet = self.kit.pending.is_empty() && self.kit.out.is_empty();
        if self.draining && self.closing.is_none() && quiet {
            // Draining: everything received is answered; close between requests.
            self.closing = Some(Some(Disconnect::Drain));
        }
        match self.closing {
            Some(why) if quiet => Next::Close(why),
            None if quiet && self.kit.inbuf.is_empty() => Next::Park,
            _ => Next::Wait,
        }
    }

    /// Waits for the next event, preferring writes to collecting replies to reading.
    async fn wait(
        &mut self,
        drain: Pin<&mut WaitForCancellationFuture<'_>>,
        killed: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> Event {
        let limits = &self.shared.client_limits;
        let can_read = self.closing.is_none() && self.kit.pending.len() < limits.max_pipeline;
        let quiet = self.kit.pending.is_empty() && self.kit.out.is_empty();
        let subscribed = super::pubsub::subscribed(&self.client);
        let idle_armed =
            !limits.idle_timeout.is_zero() && self.closing.is_none() && quiet && !subscribed;
        let has_mailbox = self.client.pubsub.is_some();
        if !idle_armed {
            self.idle_timer = None;
        } else if self.idle_timer.is_none() {
            self.idle_timer = Some(Box::pin(tokio::time::sleep(limits.idle_timeout)));
        }
        let can_write = !self.kit.out.is_empty() && !self.hold;
        let has_pending = !self.kit.pending.is_empty();
        // Waiting for the rest of a frame, nothing pending: only a drain can come first. (With
        // replies pending, the next reply wakes the loop, which checks the flag.)
        let blocked = self.blocked();
        let wait_drain = !self.draining && (quiet || blocked);
        tokio::select! {
            biased;
            // Writing comes first: `out` holds only what the client's socket did not take yet,
            // which is what the output limit bounds.
            n = self.wr.write(&self.kit.out), if can_write => Event::Written(n),
            done = poll_fn(|cx| front(&mut self.kit.pending, cx)), if has_pending => Event::Reply(done),
            () = poll_fn(|cx| poll_mail(&self.client, cx)), if has_mailbox => Event::Mail,
            n = poll_fn(|cx| poll_read_some(&mut self.rd, &mut self.kit.inbuf, &mut self.grew, cx)), if can_read => Event::Read(n),
            () = drain, if wait_drain => Event::Drain,
            () = killed, if quiet || blocked => Event::Killed,
            () = poll_fn(|cx| poll_timer(&mut self.idle_timer, cx)), if idle_armed => Event::Idle,
        }
    }

    /// The client's socket took `n` bytes. Returns whether the connection is gone.
    #[inline]
    fn on_written(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        self.kit.out.advance(n);
        if self.kit.out.is_empty() && self.kit.pending.is_empty() && !self.kit.inbuf.is_empty() {
            // Nothing more to write while the rest of a frame is awaited: give the buffer back
            // (an emptied BytesMut still holds its allocation), so that a client that stalls
            // halfway holds no write buffer. (Otherwise the stretch parks now and the buffer
            // goes back with its kit.)
            self.kit.out = BytesMut::new();
        }
        false
    }

    /// The reply at the front of the queue is in: take it and every reply ready behind it.
    /// Returns whether the client was disconnected at the output limit.
    fn on_reply(&mut self, first: Done) -> bool {
        let limit = self.shared.client_limits.max_client_output;
        let (within, batch) = self.collect(first, limit);
        // Frames of one read share their start time (see `dispatch`).
        self.hold = within
            && self.kit.out.len() < COALESCE_MAX
            && self
                .kit
                .pending
                .front()
                .is_some_and(|next| next.started == batch);
        if !within {
            tracing::info!(
                client = self.client.id,
                bytes = self.kit.out.len(),
                "client does not read its replies; disconnecting at the output limit"
            );
            count_disconnect(&self.shared.metrics, Disconnect::OutputLimit);
        }
        !within
    }

    /// The client sent `n` bytes (0: it closed its side).
    #[inline]
    fn on_read(&mut self, n: usize) {
        if n == 0 {
            self.closing = Some(None);
        } else {
            self.idle_timer = None;
        }
    }

    /// Appends `first` and every reply behind it that is ready now to `out`, so that they go
    /// out in one write. Returns false when unwritten output would pass `limit`: bytes the
    /// client has not taken are already waiting, and more would exceed what it may make Keyway
    /// hold. (A single reply larger than the limit still goes out when nothing else is
    /// waiting.) Also returns the start time of the last reply taken, which names its read's
    /// batch.
    fn collect(&mut self, first: Done, limit: usize) -> (bool, Instant) {
        let mut cx = Context::from_waker(Waker::noop());
        let now = Instant::now();
        let metrics = &self.shared.metrics;
        let mut batch = first.started;
        let mut next = Some(first);
        while let Some(done) = next.take() {
            if !done.push {
                account(metrics, &done, now);
            }
            batch = done.started;
            if done.barrier {
                self.barriers = self.barriers.saturating_sub(1);
            }
            let out = &mut self.kit.out;
            match &done.reply {
                Ok(frame) => {
                    if !out.is_empty() && out.len() + frame.len() > limit {
                        return (false, batch);
                    }
                    out.extend_from_slice(frame);
                }
                Err(e) => {
                    if !out.is_empty() && out.len() + e.message().len() + 16 > limit {
                        return (false, batch);
                    }
                    e.encode(out);
                }
            }
            if let Poll::Ready(more) = front(&mut self.kit.pending, &mut cx) {
                next = Some(more);
            }
        }
        (true, batch)
    }
}

/// A reply that is awaited in its turn (the command runs, and the replies after it keep their
/// order) but writes nothing: `CLIENT REPLY OFF|SKIP`.
fn silenced(reply: Pending) -> Pending {
    Pending::Merge(Box::pin(async move {
        let _ = super::reply::resolve(reply).await;
        Ok(bytes::Bytes::new())
    }))
}

/// Polls the client's pub/sub mailbox; without one, never ready.
fn poll_mail(client: &ClientState, cx: &mut Context<'_>) -> Poll<()> {
    match client.pubsub.as_deref() {
        Some(subs) => subs.mailbox.poll_mail(cx),
        None => Poll::Pending,
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
fn poll_read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    inbuf: &mut BytesMut,
    grew: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
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

/// Counts a finished request: its command's outcome and duration, and for Keyway's own errors
/// their kind. (Request durations go straight to the shared histogram: a local one, flushed per
/// batch, cost more to set up per active stretch than it saved.)
fn account(metrics: &Metrics, done: &Done, now: Instant) {
    let m = metrics.command_at(done.command);
    match &done.reply {
        Err(e) => {
            metrics.error(e.kind());
            m.error.inc();
        }
        reply if merge::is_failure(reply) => m.error.inc(),
        _ => m.ok.inc(),
    }
    metrics
        .request_duration
        .observe(now.saturating_duration_since(done.started).as_secs_f64());
}

/// Polls the reply at the front of the queue; pops it when ready. The queue is never empty
/// here (both callers check), and an empty queue stays pending rather than panicking.
fn front(pending: &mut VecDeque<Entry>, cx: &mut Context<'_>) -> Poll<Done> {
    let Some(head) = pending.front_mut() else {
        return Poll::Pending;
    };
    let Poll::Ready(reply) = head.reply.poll_reply(cx) else {
        return Poll::Pending;
    };
    let done = Done {
        command: head.command,
        started: head.started,
        barrier: head.barrier,
        push: head.push,
        reply,
    };
    pending.pop_front();
    Poll::Ready(done)
}
