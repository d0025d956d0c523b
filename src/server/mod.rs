//! The client side: the listener, one session per client, and the planner that turns each
//! command into requests to servers and their replies back into one reply.
//!
//! - [`session`]: reads frames, keeps replies in request order, writes them in batches.
//! - [`plan`]: decides where a command goes (one server, split per server, every server) and
//!   how the replies merge.
//! - [`local`]: the commands Keyway answers itself (PING, HELLO, INFO, COMMAND, ...).

mod local;
mod merge;
mod plan;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::topology::{TopologyError, TopologyHandle};

/// What every session shares: the topology handle and the settings that do not change per
/// request. Nothing in here is locked on the request path.
pub struct Shared {
    /// The current topology.
    pub topology: Arc<TopologyHandle>,
    /// Every metric of this proxy.
    pub metrics: Arc<Metrics>,
    /// Limits applied to client input.
    pub limits: Limits,
    /// Limits on each client connection.
    pub client_limits: crate::config::LimitsConfig,
    /// Cancelled when Keyway starts draining (SIGTERM): sessions answer what they received,
    /// then close. Cancel it only through [`Shared::begin_drain`], which also sets `draining`.
    pub(crate) drain: tokio_util::sync::CancellationToken,
    /// Set when draining starts, before `drain` wakes its waiters: the check sessions make
    /// between events, one atomic load (the token's own check takes a lock).
    draining: std::sync::atomic::AtomicBool,
    /// When this process started (INFO uptime).
    pub started: Instant,
    /// Source of client ids.
    next_client_id: AtomicU64,
    /// Clients currently connected.
    pub clients: AtomicU64,
}

impl Shared {
    /// Builds the shared state and the first topology from a validated config. Must run inside
    /// a tokio runtime, since server connections are opened here.
    ///
    /// # Errors
    ///
    /// [`TopologyError`] when the pool is invalid.
    pub fn new(config: &Config) -> Result<Arc<Shared>, TopologyError> {
        let metrics = Arc::new(Metrics::new());
        let limits = Limits {
            max_bulk_len: config.limits.max_bulk_len,
            max_array_len: config.limits.max_args,
            max_inline_len: config.limits.max_inline_len,
            ..Limits::default()
        };
        Ok(Arc::new(Shared {
            topology: Arc::new(TopologyHandle::new(&config.pool, metrics.clone())?),
            metrics,
            limits,
            client_limits: config.limits.clone(),
            drain: tokio_util::sync::CancellationToken::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            started: Instant::now(),
            next_client_id: AtomicU64::new(1),
            clients: AtomicU64::new(0),
        }))
    }
}

impl Shared {
    /// Starts draining: stop accepting, fail readiness, let each session answer what it has
    /// received and close.
    pub fn begin_drain(&self) {
        self.metrics.draining.set(1);
        self.draining.store(true, Ordering::Release);
        self.drain.cancel();
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Waits until every client is gone or `deadline` passes; returns whether all are gone.
    pub async fn drained(&self, deadline: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if self.clients.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// Accepts clients on `listener`, one session task each, until Keyway drains.
///
/// A client over `limits.max_clients` gets `-ERR max number of clients reached` (redis-server's
/// words) and is closed at once.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let max_clients = shared.client_limits.max_clients as u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.drain.cancelled() => {
                tracing::info!("draining: no longer accepting clients");
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                if shared.clients.load(Ordering::Relaxed) >= max_clients {
                    shared.metrics.client_refused.inc();
                    tracing::warn!(%peer, max_clients, "client refused: max_clients reached");
                    tokio::spawn(refuse(stream));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
                shared.clients.fetch_add(1, Ordering::Relaxed);
                shared.metrics.client_accepted.inc();
                shared.metrics.client_connections.inc();
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = session::run(stream, shared.clone(), id).await {
                        tracing::info!(client = id, %peer, error = %e, "client connection error");
                    }
                    shared.clients.fetch_sub(1, Ordering::Relaxed);
                    shared.metrics.client_connections.dec();
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, breathe, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.shutdown().await;
}

/// A proxy started by [`start`]: its bound address, its shared state, its accept loop.
pub struct Running {
    /// The address clients connect to (resolved, so port 0 in the config becomes the real port).
    pub addr: std::net::SocketAddr,
    /// State shared by the sessions (topology, limits, counters).
    pub shared: Arc<Shared>,
    /// The admin HTTP address.
    pub admin_addr: std::net::SocketAddr,
    /// The accept loop; ends when Keyway drains.
    pub task: tokio::task::JoinHandle<()>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The topology could not be built.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The client port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Connections waiting to be accepted (the kernel caps it at `net.core.somaxconn`); a burst of
/// reconnecting clients should not be dropped and retried a second later.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listening socket with Keyway's backlog (std's default is 128).
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "address resolves to nothing",
        )
    }))
}

/// Binds `config.listen`, connects to the pool, and starts accepting clients.
///
/// # Errors
///
/// [`StartError`] when the pool is invalid or the address cannot be bound.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let shared = Shared::new(config)?;
    let listener = listen(&config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    let (admin, admin_addr) =
        crate::admin::bind(&config.admin)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.admin.clone(),
                source,
            })?;
    tokio::spawn(crate::admin::serve(admin, shared.clone()));
    tokio::spawn(crate::txn::sweep(
        shared.topology.clone(),
        shared.drain.child_token(),
    ));
    let task = tokio::spawn(serve(listener, shared.clone()));
    Ok(Running {
        addr,
        admin_addr,
        shared,
        task,
    })
}
