//! Pipelined, multiplexed connections to the redis-servers.
//!
//! Each server has a [`Pool`] of `connections` TCP connections shared by every client session.
//! A connection is one task that owns its socket. Sessions hand it requests through its
//! queue: the request bytes are appended to the queue's buffer and, in the same order, a
//! one-shot reply slot to its list (unbounded: what bounds it is upstream, the clients'
//! pipeline limits). The task swaps the whole buffer out and writes it (one syscall when the
//! socket takes it all, as it usually does), and matches replies to slots in FIFO order, the
//! order Redis answers a connection's requests in. A request is copied once, by its session,
//! into the buffer that goes to the socket; the queue wakes the task only when it turns
//! non-empty.
//!
//! The connection task is a small state machine:
//!
//! - **Connecting** (`dial`): dial with the request timeout as connect timeout. After a
//!   failure, requests that arrive while the connect runs fail at once, as in Backoff: a dial
//!   or a handshake to a hung server takes the whole timeout, and nobody waits for it.
//! - **Handshake** (`handshake`): the commands a connection sends before it serves, pipelined,
//!   each reply checked: `AUTH [username] password` when the server has credentials (the
//!   password file is read again here, so a rotated password applies at the next connection),
//!   `HELLO 3` for RESP3, else `PING`: the server has answered on a connection before it takes
//!   requests (the kernel of a SIGSTOPped server still accepts connections).
//!   A refused `AUTH` is an authentication failure naming the server: counted, logged, one
//!   health failure, and Backoff like any failed connect.
//! - **Connected** (`Connection`, a method per event: replies readable, jobs queued, the oldest
//!   job's deadline): forward jobs, match replies. If the oldest job waits longer than the
//!   timeout (a hung or SIGSTOPped server), or longer than the health probe's timeout while the
//!   health checks mark the server down, or the socket fails, every job in flight fails with
//!   an error naming the server, and the connection is dropped: once a reply is missing, FIFO
//!   matching can no longer be trusted, so the socket must go. Those jobs were written: their
//!   errors say that the server may have run them ([`BackendError::may_have_run`]).
//! - **Backoff** (`refuse_until` a timer): wait before redialling (doubling from 20 ms up to
//!   1 s); jobs arriving meanwhile fail at once with "unavailable", so a dead server never makes
//!   a client wait.
//!
//! Nothing here parses commands: a job is opaque bytes (its sender says whether it calls a
//! script, [`Pool::send_script`]), and a reply is the raw frame the server sent, forwarded as it
//! came.

use std::collections::VecDeque;
use std::fmt;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus::local::LocalHistogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::futures::Notified;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::credentials::Credentials;
use crate::health::{Health, HealthOptions};
use crate::metrics::ServerMetrics;
use crate::protocol::{write_command, Limits, Proto, ReplyDecoder};
use crate::tls::{Conn, ConnRead, ConnWrite, ServerTls};

/// Requests written and not yet answered on one connection past which it takes no more from its
/// queue until replies come. A soft limit: a take moves everything queued, which is bounded
/// upstream (clients' pipeline limits).
const MAX_IN_FLIGHT: usize = 16 * 1024;
/// Queued requests from which a connection writes at once, without waiting a scheduler turn
/// for company; also the reply-slot list's starting size, and twice it the most that list keeps
/// once a burst has passed.
const BATCH: usize = 256;
/// Starting size of a connection's read and write buffers.
const BUF_START: usize = 16 * 1024;
/// A buffer grown past this by a burst of large frames is replaced once empty, so that a
/// heavy run does not leave every server connection holding its peak.
const BUF_KEEP: usize = 256 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a request to a server got no reply. Every variant names the server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The server could not be reached (refused, reset, in backoff after a failure).
    #[error("server '{server}' ({addr}) is unavailable: {reason}")]
    Unavailable {
        server: Arc<str>,
        addr: Arc<str>,
        reason: Arc<str>,
    },
    /// No reply within the timeout; the connection was dropped.
    #[error("server '{server}' ({addr}) did not answer within {timeout:?}")]
    Timeout {
        server: Arc<str>,
        addr: Arc<str>,
        timeout: Duration,
    },
    /// No reply yet after `waited`, and the health checks mark the server down: the
    /// connection was dropped without waiting for the full timeout.
    #[error("server '{server}' ({addr}) is down by the health checks and did not answer within {waited:?}")]
    Down {
        server: Arc<str>,
        addr: Arc<str>,
        waited: Duration,
    },
    /// The connection failed (reset, closed by the server) after the request was written and
    /// before its reply came: the server may have run it.
    #[error("server '{server}' ({addr}) lost the connection before replying: {reason}")]
    Lost {
        server: Arc<str>,
        addr: Arc<str>,
        reason: Arc<str>,
    },
    /// The server sent bytes that are not RESP.
    #[error("server '{server}' ({addr}) sent a malformed reply: {reason}")]
    Protocol {
        server: Arc<str>,
        addr: Arc<str>,
        reason: Arc<str>,
    },
}

impl BackendError {
    /// Whether the request may have reached the server and run there: it was written, and no
    /// reply came (a timeout, a connection lost meanwhile, a reply that was not RESP). False
    /// only when it was never sent (the server was unreachable, in backoff, reconnecting).
    pub fn may_have_run(&self) -> bool {
        !matches!(self, BackendError::Unavailable { .. })
    }

    /// What happened, without the server's name and address (for a message that names the
    /// server already): "did not answer within 500ms", "unavailable: connection refused".
    pub fn detail(&self) -> String {
        match self {
            BackendError::Unavailable { reason, .. } => format!("unavailable: {reason}"),
            BackendError::Timeout { timeout, .. } => format!("did not answer within {timeout:?}"),
            BackendError::Down { waited, .. } => {
                format!("down by the health checks, no answer within {waited:?}")
            }
            BackendError::Lost { reason, .. } => {
                format!("connection lost before the reply: {reason}")
            }
            BackendError::Protocol { reason, .. } => format!("malformed reply: {reason}"),
        }
    }
}

/// The result of one request: the raw reply frame, or why there is none.
pub type Reply = Result<Bytes, BackendError>;

mod gather;
pub use gather::{Gather, GatherPart};
pub use lease::{BlockError, BlockedLease, Lease, IDLE_BLOCKING_KEPT};

mod lease;

/// Where a server's reply goes.
enum ReplyTo {
    /// A request's own one-shot channel. A dropped receiver (client gone) is fine: the reply
    /// is discarded.
    One(oneshot::Sender<Reply>),
    /// One part of a split command, gathered with the others.
    Part(GatherPart),
}

impl ReplyTo {
    fn send(self, reply: Reply) {
        match self {
            ReplyTo::One(tx) => {
                let _ = tx.send(reply);
            }
            ReplyTo::Part(part) => part.complete(reply),
        }
    }
}

/// A request queued for a connection task: where its reply goes, and whether an error reply to
/// it may say something about the server's health (not for scripts, whose error text a client
/// chooses: `redis.error_reply('LOADING')`).
struct Queued {
    reply: ReplyTo,
    signals: bool,
}

/// What sessions hand one connection task: request bytes back to back, and in the same order
/// their reply slots.
struct Queue {
    state: std::sync::Mutex<QueueState>,
    /// Wakes the task when the queue turns non-empty, or closes.
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct QueueState {
    bytes: BytesMut,
    jobs: Vec<Queued>,
    /// The pool is gone: no more requests will come.
    closed: bool,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            state: std::sync::Mutex::new(QueueState::default()),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// The state, locked. Whatever runs under this lock leaves it consistent even if it panics
    /// (see `Pool::enqueue`), so a poisoned lock is used as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes every queued request: their bytes and slots are swapped into `bytes` and `jobs`,
    /// which must be empty (the queue keeps their allocations for the next requests, so that a
    /// burst's large buffers come back to the task, which lets them go). Returns whether the
    /// queue is closed.
    fn take(&self, bytes: &mut BytesMut, jobs: &mut Vec<Queued>) -> bool {
        let mut q = self.lock();
        std::mem::swap(&mut q.bytes, bytes);
        std::mem::swap(&mut q.jobs, jobs);
        q.closed
    }

    /// Requests queued now.
    fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }
}

/// Cuts the queue's bytes back to `len` when dropped: armed while a caller's `write` runs, so
/// that a panic halfway leaves no bytes without a reply slot (they would shift every later
/// reply onto the wrong request).
struct Truncate<'a> {
    bytes: &'a mut BytesMut,
    len: usize,
}

impl Drop for Truncate<'_> {
    fn drop(&mut self) {
        self.bytes.truncate(self.len);
    }
}

/// Closes a connection's queue when its task ends, however it ends (a panic, the runtime
/// shutting down): what is queued is answered with an error, and later requests fail at once
/// instead of waiting for a task that is gone.
struct CloseOnExit<'a> {
    queue: &'a Queue,
    shared: &'a Shared,
}

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        let jobs = {
            let mut q = self.queue.lock();
            q.closed = true;
            q.bytes.clear();
            std::mem::take(&mut q.jobs)
        };
        for job in jobs {
            job.reply
                .send(Err(self.shared.unavailable("connection task stopped")));
        }
    }
}

/// How a pool reaches and times its server.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Pipelined connections to open.
    pub connections: usize,
    /// Per-request deadline and connect timeout.
    pub timeout: Duration,
}

/// Identity and liveness shared between a pool and its connection tasks.
struct Shared {
    name: Arc<str>,
    addr: Arc<str>,
    timeout: Duration,
    /// Connections currently established (for INFO and readiness).
    open: AtomicU64,
    metrics: ServerMetrics,
    health: Arc<Health>,
    /// What the handshake authenticates with (shared with the prober).
    credentials: Arc<Credentials>,
    /// TLS towards this server (`[pool.tls]`), or plain TCP.
    tls: Option<ServerTls>,
    /// Why the last connection attempt or connection failed, until one is established again
    /// (for `/readyz` and `/topology`). Never holds a secret.
    last_failure: std::sync::Mutex<Option<Arc<str>>>,
    /// When each dial began (tests check the backoff between them).
    #[cfg(test)]
    dials: std::sync::Mutex<Vec<Instant>>,
}

impl Shared {
    /// Notes a dial beginning now.
    #[cfg(test)]
    fn record_dial(&self) {
        self.dials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Instant::now());
    }

    /// The server could not be reached, for `reason`.
    fn unavailable(&self, reason: &str) -> BackendError {
        BackendError::Unavailable {
            server: self.name.clone(),
            addr: self.addr.clone(),
            reason: Arc::from(reason),
        }
    }

    /// The connection failed with requests in flight, for `reason`.
    fn lost(&self, reason: &str) -> BackendError {
        BackendError::Lost {
            server: self.name.clone(),
            addr: self.addr.clone(),
            reason: Arc::from(reason),
        }
    }

    /// No reply after `waited`, and the health checks mark the server down.
    fn down(&self, waited: Duration) -> BackendError {
        BackendError::Down {
            server: self.name.clone(),
            addr: self.addr.clone(),
            waited,
        }
    }

    /// How long a request may wait for its reply while the health checks mark the server
    /// down: the probe's own deadline (a probe that waited that long failed), at most the
    /// request timeout.
    fn down_wait(&self) -> Duration {
        self.health.options().timeout.min(self.timeout)
    }

    /// No reply within the timeout.
    fn timed_out(&self) -> BackendError {
        BackendError::Timeout {
            server: self.name.clone(),
            addr: self.addr.clone(),
            timeout: self.timeout,
        }
    }

    /// Notes why the server cannot be used now (`None`: a connection is established).
    fn set_last_failure(&self, reason: Option<&str>) {
        *self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason.map(Arc::from);
    }

    /// The server broke the protocol.
    fn protocol(&self, reason: &str) -> BackendError {
        BackendError::Protocol {
            server: self.name.clone(),
            addr: self.addr.clone(),
            reason: Arc::from(reason),
        }
    }
}

/// Which connection of a pool a request takes: the client's number (its id, so that one
/// client's requests stay on one connection and in order) and the protocol its replies must be
/// in. A plain number is a RESP2 pick (Keyway's own requests, which it parses itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Any number: the connection is `conn % connections`.
    pub conn: usize,
    /// The protocol of the connection, so that the server's reply is already in the client's.
    pub proto: Proto,
}

impl From<usize> for Pick {
    fn from(conn: usize) -> Pick {
        Pick {
            conn,
            proto: Proto::Resp2,
        }
    }
}

/// The connections to one server.
///
/// Two sets, one per protocol: RESP2 connections open with the pool; RESP3 ones (each starting
/// with `HELLO 3`) open the first time a RESP3 client sends to this server, so that a pool whose
/// clients all speak RESP2 holds no RESP3 connection, and the reverse costs idle RESP2 ones only.
/// A server's reply thus always comes in its client's protocol and is forwarded untouched.
pub struct Pool {
    shared: Arc<Shared>,
    conns: Box<[Arc<Queue>]>,
    /// The RESP3 set, once opened.
    conns3: std::sync::OnceLock<Box<[Arc<Queue>]>>,
    /// Connections for blocking commands (see [`Pool::block`]).
    blocking: lease::Blocking,
    /// Stops the health prober when the pool goes.
    _prober: tokio_util::sync::DropGuard,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.name)
            .field("addr", &self.shared.addr)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Drop for Pool {
    /// The pool left the topology: its connection tasks answer what is in flight and end.
    fn drop(&mut self) {
        for queue in self
            .conns
            .iter()
            .chain(self.conns3.get().into_iter().flatten())
        {
            queue.close();
        }
        self.blocking.close();
    }
}

impl Pool {
    /// Opens `options.connections` connection tasks to `addr` on the current tokio runtime.
    ///
    /// Also starts the server's health prober (see [`crate::health`]). Every connection, the
    /// prober's too, authenticates with `credentials`, and speaks TLS with `tls` when set.
    pub fn spawn(
        name: &str,
        addr: &str,
        options: &PoolOptions,
        health: HealthOptions,
        metrics: ServerMetrics,
        credentials: Arc<Credentials>,
        tls: Option<ServerTls>,
    ) -> Pool {
        let name: Arc<str> = Arc::from(name);
        let addr: Arc<str> = Arc::from(addr);
        let health = Arc::new(Health::new(name.clone(), health, metrics.clone()));
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::health::probe(
            health.clone(),
            addr.clone(),
            credentials.clone(),
            tls.clone(),
            stop.clone(),
        ));
        let shared = Arc::new(Shared {
            name,
            addr,
            timeout: options.timeout,
            open: AtomicU64::new(0),
            metrics,
            health,
            credentials,
            tls,
            last_failure: std::sync::Mutex::new(None),
            #[cfg(test)]
            dials: std::sync::Mutex::default(),
        });
        let conns = open(&shared, options.connections, Proto::Resp2);
        Pool {
            shared,
            conns,
            conns3: std::sync::OnceLock::new(),
            blocking: lease::Blocking::default(),
            _prober: stop.drop_guard(),
        }
    }

    /// The connections of `proto`, the RESP3 ones opened now if this is their first use.
    fn queues(&self, proto: Proto) -> &[Arc<Queue>] {
        match proto {
            Proto::Resp2 => &self.conns,
            Proto::Resp3 => self
                .conns3
                .get_or_init(|| open(&self.shared, self.conns.len(), Proto::Resp3)),
        }
    }

    /// The server's health.
    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// Requests written to the server and not answered yet, over all its connections.
    pub fn in_flight(&self) -> i64 {
        self.shared.metrics.in_flight.get()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.shared.metrics
    }

    /// What the pool's connections authenticate with.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.shared.credentials
    }

    /// TLS towards this server (`[pool.tls]`), if any.
    pub(crate) fn tls(&self) -> Option<&ServerTls> {
        self.shared.tls.as_ref()
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Connections currently established.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Why the last connection to the server failed (a refused connect, an authentication
    /// failure, a timeout), until one is established again. Holds no secret.
    pub fn last_failure(&self) -> Option<Arc<str>> {
        self.shared
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `frame` on connection `pick % connections` and returns where its reply will come.
    ///
    /// Sessions pass a number of their own (their id) so that one session's requests stay on
    /// one connection without any shared counter on the request path.
    ///
    /// Never waits: the queue is unbounded, because what bounds it is upstream (each client
    /// has at most `max_pipeline` requests pending, and Keyway at most `max_clients` clients),
    /// and a synchronous send keeps the request path free of await points.
    ///
    /// For a plain command: an error reply such as `-LOADING` counts against the server's
    /// health. Scripts go through [`Pool::send_script`].
    pub fn send(&self, pick: impl Into<Pick>, frame: Bytes) -> oneshot::Receiver<Reply> {
        self.send_as(pick.into(), frame, true)
    }

    /// As [`Pool::send`], for a script or function call (`EVAL*`, `FCALL*`, Keyway's own
    /// two-phase scripts): its error replies are the script's words
    /// (`redis.error_reply('LOADING')`), not the server's, and never count against its health.
    /// The caller knows what it sends (the command table's `Traits::SCRIPT`); nothing here
    /// reads the frame.
    pub fn send_script(&self, pick: impl Into<Pick>, frame: Bytes) -> oneshot::Receiver<Reply> {
        self.send_as(pick.into(), frame, false)
    }

    fn send_as(&self, pick: Pick, frame: Bytes, signals: bool) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(pick, signals, ReplyTo::One(tx), |out| {
            out.extend_from_slice(&frame)
        });
        rx
    }

    /// Sends a MULTI/EXEC transaction written out whole (`MULTI`, the commands, `EXEC`), which
    /// gets `replies` replies: they are matched and dropped but the last, EXEC's, which is
    /// returned. The bytes go into the queue at once, so no other request comes between.
    pub fn send_transaction(
        &self,
        pick: Pick,
        frame: Bytes,
        replies: usize,
    ) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.enqueue_many(pick, replies, ReplyTo::One(tx), |out| {
            out.extend_from_slice(&frame)
        });
        rx
    }

    /// Sends one part of a split command, which `write` appends, whole, to the connection's
    /// outgoing bytes (straight from the client's frame); its reply goes to `part`. The parts
    /// are plain data commands (MSET, MGET, DEL, ...), so an error reply may count against the
    /// server's health.
    pub fn send_part(&self, pick: Pick, part: GatherPart, write: impl FnOnce(&mut BytesMut)) {
        self.enqueue(pick, true, ReplyTo::Part(part), write);
    }

    /// Appends a request's bytes (`write`) and its reply slot to connection `pick`'s queue,
    /// under one lock, and wakes the connection task if the queue was empty. `signals`:
    /// whether an error reply may count against the server's health (false for scripts and
    /// functions).
    fn enqueue(
        &self,
        pick: Pick,
        signals: bool,
        reply: ReplyTo,
        write: impl FnOnce(&mut BytesMut),
    ) {
        self.enqueue_jobs(pick, signals, 1, reply, write);
    }

    /// [`Pool::enqueue`] of bytes that get `replies` replies, all but the last dropped.
    fn enqueue_many(
        &self,
        pick: Pick,
        replies: usize,
        reply: ReplyTo,
        write: impl FnOnce(&mut BytesMut),
    ) {
        self.enqueue_jobs(pick, true, replies, reply, write);
    }

    fn enqueue_jobs(
        &self,
        pick: Pick,
        signals: bool,
        replies: usize,
        reply: ReplyTo,
        write: impl FnOnce(&mut BytesMut),
    ) {
        // A set is never empty (`open` opens at least one); `get` keeps this panic-free anyway.
        let queues = self.queues(pick.proto);
        let Some(queue) = queues.get(pick.conn % queues.len().max(1)) else {
            reply.send(Err(self.unavailable("no connection")));
            return;
        };
        let wake = {
            let mut q = queue.lock();
            if q.closed {
                drop(q);
                reply.send(Err(self.unavailable("connection task stopped")));
                return;
            }
            let guard = Truncate {
                len: q.bytes.len(),
                bytes: &mut q.bytes,
            };
            write(&mut *guard.bytes);
            std::mem::forget(guard);
            let was_empty = q.jobs.is_empty();
            for _ in 1..replies {
                // A slot whose receiver is gone: its reply is matched, then dropped.
                let (tx, _) = oneshot::channel();
                q.jobs.push(Queued {
                    reply: ReplyTo::One(tx),
                    signals,
                });
            }
            q.jobs.push(Queued { reply, signals });
            was_empty
        };
        if wake {
            queue.notify.notify_one();
        }
    }

    fn unavailable(&self, reason: &str) -> BackendError {
        self.shared.unavailable(reason)
    }
}

/// A job written to the server and waiting for its reply.
struct InFlight {
    reply: ReplyTo,
    sent: Instant,
    /// Whether an error reply to this request may say something about the server's health:
    /// not for scripts, whose error text a client chooses (`redis.error_reply('LOADING')`).
    signals: bool,
}

/// Starts `n` (at least one) connection tasks of `proto`, and returns their queues.
fn open(shared: &Arc<Shared>, n: usize, proto: Proto) -> Box<[Arc<Queue>]> {
    (0..n.max(1))
        .map(|_| {
            let queue = Arc::new(Queue::new());
            tokio::spawn(connection_task(shared.clone(), queue.clone(), proto));
            queue
        })
        .collect()
}

/// Runs one connection for its whole life: connect, serve, back off, repeat. It ends when the
/// pool is dropped (the server left the topology): the queue closes, in-flight jobs are
/// answered, and the socket is closed.
async fn connection_task(shared: Arc<Shared>, queue: Arc<Queue>, proto: Proto) {
    let _exit = CloseOnExit {
        queue: &queue,
        shared: &shared,
    };
    let mut backoff = Backoff::default();
    // Why the last connection or connect failed: once one has, requests that arrive while the
    // next connect runs fail at once, as during the backoff (a connect or a handshake to a hung
    // server takes the whole timeout). The first connect holds them: a server starts up.
    let mut failed: Option<String> = None;
    loop {
        // Connecting -> Handshake -> Connected, or -> Backoff when the dial or the handshake
        // fails.
        let connected = match &failed {
            None => connect(&shared, proto).await,
            Some(reason) => {
                let why = format!("reconnecting after: {reason}");
                match refuse_until(&shared, &queue, &why, connect(&shared, proto)).await {
                    ControlFlow::Continue(connected) => connected,
                    ControlFlow::Break(()) => return,
                }
            }
        };
        let reason = match connected {
            Ok(stream) => {
                let connection = Connection::new(&shared, &queue, &mut backoff, stream);
                match connection.serve().await {
                    // Connected -> end: the pool is gone and nothing is left to answer.
                    End::Closed => return,
                    // Connected -> Backoff: the socket failed or a request timed out.
                    End::Failed(reason) => reason,
                }
            }
            Err(reason) => reason,
        };
        // Passive health: a failed connect or handshake, a reset or a timed-out request is one
        // failure.
        shared.health.failure(&reason);
        shared.set_last_failure(Some(&reason));
        let wait = backoff.next_wait();
        tracing::warn!(server = %shared.name, addr = %shared.addr, %reason, retry_in = ?wait, "server connection failed");
        // Backoff -> Connecting once the wait is over; Backoff -> end if the pool goes first.
        let sleep = tokio::time::sleep_until(Instant::now() + wait);
        if refuse_until(&shared, &queue, &reason, sleep)
            .await
            .is_break()
        {
            return;
        }
        failed = Some(reason);
    }
}

/// The Connecting state: dials the server (TCP, then TLS when the pool has `[pool.tls]`),
/// with the request timeout as connect timeout. On failure, why (for the health failure and
/// the log line).
async fn dial(shared: &Shared) -> Result<Conn, String> {
    #[cfg(test)]
    shared.record_dial();
    crate::tls::dial(&shared.addr, shared.timeout, shared.tls.as_ref()).await
}

/// Dials the server and readies the connection for `proto` (see [`handshake`]).
async fn connect(shared: &Shared, proto: Proto) -> Result<Conn, String> {
    let stream = dial(shared).await?;
    handshake(stream, shared, proto).await
}

/// A handshake step: a command the connection sent before serving, whose reply is checked.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// `AUTH [username] password`: `+OK`, or the server refused the credentials.
    Auth,
    /// `HELLO 3` (a connection for RESP3 clients): a map, or the server does not speak RESP3.
    Hello3,
    /// `PING`, when no other step is needed: a connection serves only once the server has
    /// answered on it (a hung server's kernel still accepts connections).
    Ping,
}

/// The Handshake state: sends the commands a connection needs before it serves (`AUTH`, when
/// the server has credentials; `HELLO 3` for a RESP3 connection; else `PING`, so that the
/// server has answered before the connection takes requests), pipelined in one write, and
/// checks each reply in order, all within the request timeout. Adding a step (`HELLO 3`, `CLIENT SETNAME`) is one more
/// command written and one more [`Step`] checked.
///
/// On failure, why (for the health failure, the log line and the errors clients get): names
/// no secret. A refused `AUTH` is counted in `keyway_server_auth_failures_total`.
async fn handshake(mut stream: Conn, shared: &Shared, proto: Proto) -> Result<Conn, String> {
    let mut out = BytesMut::new();
    let mut steps = Vec::new();
    if let Some(auth) = shared.credentials.current(&shared.name)? {
        let password = auth.password.expose().as_bytes();
        match auth.username.as_deref() {
            Some(user) => write_command(&mut out, &[b"AUTH", user.as_bytes(), password]),
            None => write_command(&mut out, &[&b"AUTH"[..], password]),
        }
        steps.push(Step::Auth);
    }
    if proto == Proto::Resp3 {
        write_command(&mut out, &[&b"HELLO"[..], b"3"]);
        steps.push(Step::Hello3);
    }
    if steps.is_empty() {
        write_command(&mut out, &[&b"PING"[..]]);
        steps.push(Step::Ping);
    }
    let exchange = async {
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut decoder = ReplyDecoder::new(Limits::for_replies());
        let mut inbuf = BytesMut::with_capacity(512);
        for step in steps {
            let reply = loop {
                match decoder.decode(&mut inbuf) {
                    Ok(Some(frame)) => break frame,
                    Ok(None) => {}
                    Err(e) => return Err(format!("malformed reply to the handshake: {e}")),
                }
                match stream.read_buf(&mut inbuf).await {
                    Ok(0) => return Err("connection closed by server during the handshake".into()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            };
            check_step(step, &reply, shared)?;
        }
        Ok(())
    };
    match tokio::time::timeout(shared.timeout, exchange).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(format!(
            "no answer to the handshake within {:?}",
            shared.timeout
        )),
    }
}

/// Checks the reply to one handshake step.
fn check_step(step: Step, reply: &[u8], shared: &Shared) -> Result<(), String> {
    match step {
        Step::Auth if reply == b"+OK\r\n" => Ok(()),
        Step::Auth => {
            // Any error is a refusal: -WRONGPASS (Redis 6+), -ERR invalid password (Redis < 6),
            // -ERR AUTH ... called without any password configured (no password on the server:
            // a configuration that does not match), -NOAUTH. The server's words are kept,
            // with the password taken out should a server quote its arguments.
            let said = String::from_utf8_lossy(reply);
            let said = said.trim_end().trim_start_matches(['-', '+']);
            let said: String = shared.credentials.redact(said).chars().take(200).collect();
            shared.metrics.auth_failures.inc();
            tracing::warn!(server = %shared.name, addr = %shared.addr, user = shared.credentials.username().unwrap_or("default"), answer = %said, "authentication failed: the server refused Keyway's credentials");
            Err(format!(
                "authentication failed: the server answered AUTH with \"{said}\""
            ))
        }
        // -BUSY: a script runs past busy-reply-threshold; the server lives, and its clients
        // get its -BUSY until SCRIPT KILL (see the health prober).
        Step::Ping if reply == b"+PONG\r\n" || reply.starts_with(b"-BUSY") => Ok(()),
        Step::Ping => {
            let said = String::from_utf8_lossy(reply);
            let said: String = said
                .trim_end()
                .trim_start_matches('-')
                .chars()
                .take(200)
                .collect();
            Err(format!("the server answered PING with \"{said}\""))
        }
        Step::Hello3 if reply.first() == Some(&b'%') => Ok(()),
        Step::Hello3 => {
            let said = String::from_utf8_lossy(reply);
            let said: String = said.trim_end().chars().take(200).collect();
            Err(format!(
                "the server does not speak RESP3 for RESP3 clients: HELLO 3 answered {said}"
            ))
        }
    }
}

/// The Backoff state, and Connecting after a failure: until `until` completes, every queued
/// request, and every one that arrives, fails at once with "unavailable" and `reason`, so that
/// a dead or hung server never makes a client wait. Breaks if the pool goes meanwhile;
/// continues with `until`'s output.
async fn refuse_until<T>(
    shared: &Shared,
    queue: &Queue,
    reason: &str,
    until: impl std::future::Future<Output = T>,
) -> ControlFlow<(), T> {
    let mut bytes = BytesMut::new();
    let mut jobs = Vec::new();
    tokio::pin!(until);
    loop {
        let closed = queue.take(&mut bytes, &mut jobs);
        if bytes.capacity() > BUF_KEEP {
            bytes = BytesMut::new();
        } else {
            bytes.clear();
        }
        shared.metrics.unavailable.inc_by(jobs.len() as u64);
        for job in jobs.drain(..) {
            job.reply.send(Err(shared.unavailable(reason)));
        }
        if closed {
            return ControlFlow::Break(());
        }
        tokio::select! {
            out = &mut until => return ControlFlow::Continue(out),
            () = queue.notify.notified() => {}
        }
    }
}

/// The wait of the Backoff state: doubling from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`] with
/// every failure in a row, back to the minimum once a server answers.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The wait before the next dial; the one after it is twice as long, up to the maximum.
    fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(BACKOFF_MAX);
        wait
    }

    /// The server answered: the next failure waits the minimum again.
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// How the Connected state ended.
enum End {
    /// The pool is gone and nothing is left to answer.
    Closed,
    /// The connection failed; reconnect after backoff.
    Failed(String),
}

/// A connection that can no longer be used, and why (for the health failure and the log line).
/// Whatever was in flight on it has been answered with an error.
struct Broken(String);

/// The Connected state: one socket, and the requests written on it waiting for their replies,
/// oldest first.
struct Connection<'a> {
    shared: &'a Shared,
    queue: &'a Queue,
    /// Reset by every reply: a server that answers is back.
    backoff: &'a mut Backoff,
    rd: ConnRead,
    wr: ConnWrite,
    in_flight: VecDeque<InFlight>,
    decoder: ReplyDecoder,
    inbuf: BytesMut,
    outbuf: BytesMut,
    /// Reply slots taken from the queue with their bytes.
    taken: Vec<Queued>,
    /// Whether the queue may bring more requests: false once the pool closed it.
    queue_open: bool,
    /// Whether the timer is set for a request in flight (see [`Connection::serve`]).
    armed: bool,
    /// Jobs in the previous batch: a connection whose batches are single jobs (one client at a
    /// time) gains nothing by waiting for company, and skips the yield in
    /// [`Connection::on_queued`].
    last_batch: usize,
    /// Reply latencies are counted locally and published once per read, not with atomic
    /// updates per reply.
    latencies: LocalHistogram,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.connections.dec();
    }
}

impl<'a> Connection<'a> {
    /// Enters the Connected state on a freshly dialled `stream`.
    fn new(
        shared: &'a Shared,
        queue: &'a Queue,
        backoff: &'a mut Backoff,
        stream: Conn,
    ) -> Connection<'a> {
        shared.open.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connections.inc();
        shared.set_last_failure(None);
        tracing::debug!(server = %shared.name, addr = %shared.addr, "connected");
        let (rd, wr) = stream.into_split();
        Connection {
            shared,
            queue,
            backoff,
            rd,
            wr,
            in_flight: VecDeque::new(),
            decoder: ReplyDecoder::new(Limits::for_replies()),
            inbuf: BytesMut::with_capacity(BUF_START),
            outbuf: BytesMut::with_capacity(BUF_START),
            taken: Vec::with_capacity(BATCH),
            queue_open: true,
            armed: false,
            last_batch: 0,
            latencies: shared.metrics.latency.local(),
        }
    }

    /// Forwards jobs and matches replies until the socket fails, a request times out, or the
    /// pool is gone and every request in flight is answered.
    async fn serve(mut self) -> End {
        let queue = self.queue;
        // One wait for the queue at a time, kept across loop turns (a notification is never
        // lost with a dropped waiter), renewed once it fires.
        let notified = queue.notify.notified();
        tokio::pin!(notified);
        // Requests may have been queued while connecting: look once without waiting for news.
        queue.notify.notify_one();
        // The oldest request's deadline. The timer is re-armed lazily: it may fire for a
        // request that has been answered since, and then it is set to the new oldest one's
        // deadline. So it is touched about once per timeout period, not once per request.
        let timer = tokio::time::sleep(self.shared.timeout);
        tokio::pin!(timer);
        loop {
            if !self.queue_open && self.in_flight.is_empty() {
                return End::Closed;
            }
            self.arm(timer.as_mut());
            let step = tokio::select! {
                biased;
                read = self.rd.read_buf(&mut self.inbuf) => self.on_readable(read),
                () = &mut timer, if self.armed => self.on_deadline(timer.as_mut()),
                () = &mut notified, if self.takes_more() => self.on_queued(notified.as_mut()).await,
            };
            if let Err(Broken(reason)) = step {
                return End::Failed(reason);
            }
        }
    }

    /// Sets `timer` for the oldest request, unless it is set already: at the time it has
    /// waited [`Shared::down_wait`] (when the server may turn out to be down), which is its
    /// deadline when the health checks' timeout is not shorter than the request timeout.
    fn arm(&mut self, timer: Pin<&mut Sleep>) {
        if self.armed {
            return;
        }
        if let Some(front) = self.in_flight.front() {
            timer.reset(front.sent + self.shared.down_wait());
            self.armed = true;
        }
    }

    /// Whether to take more requests from the queue now: not once it is closed, nor while
    /// [`MAX_IN_FLIGHT`] requests wait for replies.
    fn takes_more(&self) -> bool {
        self.queue_open && self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// A read returned: zero bytes (the server closed the connection) or an error breaks the
    /// connection; otherwise the replies that came are matched to their requests.
    fn on_readable(&mut self, read: std::io::Result<usize>) -> Result<(), Broken> {
        match read {
            Ok(0) => Err(self.broken("connection closed by server".to_string())),
            Ok(_) => self.on_replies(),
            Err(e) => Err(self.broken(e.to_string())),
        }
    }

    /// Decodes every complete reply in the read buffer and hands each to the oldest request,
    /// in FIFO order. A reply that is not RESP, or one with no request, breaks the connection.
    fn on_replies(&mut self) -> Result<(), Broken> {
        // One clock read for every reply this read brought.
        let now = Instant::now();
        // Requests written together share `sent`: one duration for them all.
        let mut last: Option<(Instant, f64)> = None;
        loop {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(frame)) => self.answer(frame, now, &mut last)?,
                Ok(None) => break,
                Err(e) => {
                    let reason = e.to_string();
                    self.fail_all(self.shared.protocol(&reason));
                    return Err(Broken(reason));
                }
            }
        }
        self.after_read();
        Ok(())
    }

    /// Hands `frame` to the oldest request in flight, which `now` answered; `last` caches the
    /// latency of the batch the previous reply belonged to.
    fn answer(
        &mut self,
        frame: Bytes,
        now: Instant,
        last: &mut Option<(Instant, f64)>,
    ) -> Result<(), Broken> {
        let Some(f) = self.in_flight.pop_front() else {
            return Err(Broken("reply without a request".into()));
        };
        self.backoff.reset();
        self.shared.metrics.in_flight.dec();
        let secs = match *last {
            Some((sent, secs)) if sent == f.sent => secs,
            _ => {
                let secs = now.saturating_duration_since(f.sent).as_secs_f64();
                *last = Some((f.sent, secs));
                secs
            }
        };
        self.latencies.observe(secs);
        if f.signals && Health::is_failure_reply(&frame) {
            self.shared
                .health
                .failure("server answered that it cannot serve");
        }
        f.reply.send(Ok(frame));
        Ok(())
    }

    /// Every complete reply is out: publishes their latencies, and lets go of what a burst of
    /// large replies or of many requests grew.
    fn after_read(&mut self) {
        self.latencies.flush();
        if self.inbuf.is_empty() && self.inbuf.capacity() > BUF_KEEP {
            self.inbuf = BytesMut::with_capacity(BUF_START);
        }
        if self.in_flight.is_empty() && self.in_flight.capacity() > BATCH * 4 {
            self.in_flight = VecDeque::new();
        }
    }

    /// The timer fired. If the oldest request is past its deadline (a hung or SIGSTOPped
    /// server), the connection breaks; so it does, sooner, once the oldest request has waited
    /// [`Shared::down_wait`] while the health checks mark the server down: no request waits the
    /// whole timeout on a server known to be down. If the oldest request has not waited that
    /// long, it is a newer one (the one the timer was set for was answered): the loop re-arms
    /// the timer for it. Otherwise (waiting, the server up) the timer is set again one
    /// `down_wait` later, at most at the deadline.
    fn on_deadline(&mut self, timer: Pin<&mut Sleep>) -> Result<(), Broken> {
        self.armed = false;
        let Some(sent) = self.in_flight.front().map(|f| f.sent) else {
            return Ok(());
        };
        let now = Instant::now();
        let (timeout, down_wait) = (self.shared.timeout, self.shared.down_wait());
        if sent + timeout <= now {
            tracing::warn!(server = %self.shared.name, addr = %self.shared.addr, in_flight = self.in_flight.len(), "server request timed out; dropping the connection");
            self.fail_all(self.shared.timed_out());
            return Err(Broken(format!("request timed out after {timeout:?}")));
        }
        if sent + down_wait > now {
            return Ok(());
        }
        if !self.shared.health.is_up() {
            let waited = now.saturating_duration_since(sent);
            tracing::warn!(server = %self.shared.name, addr = %self.shared.addr, in_flight = self.in_flight.len(), ?waited, "server is down and a request waits; dropping the connection");
            self.fail_all(self.shared.down(waited));
            return Err(Broken(format!(
                "no reply within {waited:?} while the server is down"
            )));
        }
        timer.reset((now + down_wait).min(sent + timeout));
        self.armed = true;
        Ok(())
    }

    /// The queue has requests, or closed (`notified` fired, and waits again from here): takes
    /// them all and writes them as one batch.
    async fn on_queued(&mut self, mut notified: Pin<&mut Notified<'a>>) -> Result<(), Broken> {
        notified.set(self.queue.notify.notified());
        if self.waits_for_company() {
            // Let the sessions that run in this scheduler tick, and those whose clients the
            // next I/O poll finds ready, add their requests, so that they share one write (and
            // the server one read) instead of one each. Measured: fewer syscalls and more
            // throughput per CPU than writing at once, on both runtime flavors
            // (docs/benchmarks.md).
            tokio::task::yield_now().await;
        }
        // `outbuf` is empty here (cleared after every write): the queue gets it back for the
        // requests that come next.
        if self.queue.take(&mut self.outbuf, &mut self.taken) {
            self.queue_open = false;
        }
        if self.taken.is_empty() {
            return Ok(());
        }
        let sent = Instant::now();
        self.start_batch(sent);
        self.write_batch(sent).await?;
        self.after_write();
        Ok(())
    }

    /// Whether a batch this small is worth a scheduler turn's wait for more requests.
    fn waits_for_company(&self) -> bool {
        let waiting = self.queue.len();
        waiting > 0 && waiting < BATCH && (waiting > 1 || self.last_batch > 1)
    }

    /// Moves the taken reply slots in flight, all sent at `sent`.
    fn start_batch(&mut self, sent: Instant) {
        let n = self.taken.len();
        self.last_batch = n;
        self.shared.metrics.requests.inc_by(n as u64);
        self.shared.metrics.in_flight.add(n as i64);
        for job in self.taken.drain(..) {
            self.in_flight.push_back(InFlight {
                reply: job.reply,
                sent,
                signals: job.signals,
            });
        }
    }

    /// Writes the batch in `outbuf`. Usually the socket takes it whole at once; otherwise the
    /// rest goes out bounded by the oldest job's deadline, so that a server that stopped
    /// reading cannot hold this task.
    async fn write_batch(&mut self, sent: Instant) -> Result<(), Broken> {
        let written = match self.wr.try_write(&self.outbuf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(self.broken(e.to_string())),
        };
        if written >= self.outbuf.len() {
            return Ok(());
        }
        let oldest = self.in_flight.front().map_or(sent, |f| f.sent) + self.shared.timeout;
        let rest = self.outbuf.get(written..).unwrap_or_default();
        let result = tokio::time::timeout_at(oldest, self.wr.write_all(rest)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.broken(e.to_string())),
            Err(_) => {
                self.fail_all(self.shared.timed_out());
                Err(Broken("write timed out".into()))
            }
        }
    }

    /// The batch is written: the write buffer is emptied for the queue, or let go if a burst
    /// of large requests grew it, and so is a reply-slot list that a burst grew.
    fn after_write(&mut self) {
        if self.outbuf.capacity() > BUF_KEEP {
            self.outbuf = BytesMut::with_capacity(BUF_START);
        } else {
            self.outbuf.clear();
        }
        if self.taken.capacity() > BATCH * 2 {
            self.taken = Vec::with_capacity(BATCH);
        }
    }

    /// The socket failed (`reason`): every request in flight fails as lost (it may have run).
    fn broken(&mut self, reason: String) -> Broken {
        self.fail_all(self.shared.lost(&reason));
        Broken(reason)
    }

    /// Answers every request in flight with `err`, counted by its kind: once a reply is
    /// missing, FIFO matching can no longer be trusted, so none of them will get one.
    fn fail_all(&mut self, err: BackendError) {
        let m = &self.shared.metrics;
        let n = self.in_flight.len() as u64;
        match err {
            BackendError::Unavailable { .. } | BackendError::Lost { .. } => m.unavailable.inc_by(n),
            BackendError::Timeout { .. } | BackendError::Down { .. } => m.timeouts.inc_by(n),
            BackendError::Protocol { .. } => m.protocol_errors.inc_by(n),
        }
        m.in_flight.sub(n as i64);
        for f in self.in_flight.drain(..) {
            f.reply.send(Err(err.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
