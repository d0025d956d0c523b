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
use crate::protocol::Limits;
use crate::topology::{TopologyError, TopologyHandle};

/// What every session shares: the topology handle and the settings that do not change per
/// request. Nothing in here is locked on the request path.
pub struct Shared {
    /// The current topology.
    pub topology: TopologyHandle,
    /// Limits applied to client input.
    pub limits: Limits,
    /// Most requests of one client waiting for replies before Keyway stops reading from it.
    pub max_pipeline: usize,
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
        let limits = Limits {
            max_bulk_len: config.limits.max_bulk_len,
            max_array_len: config.limits.max_args,
            max_inline_len: config.limits.max_inline_len,
            ..Limits::default()
        };
        Ok(Arc::new(Shared {
            topology: TopologyHandle::new(&config.pool)?,
            limits,
            max_pipeline: config.limits.max_pipeline,
            started: Instant::now(),
            next_client_id: AtomicU64::new(1),
            clients: AtomicU64::new(0),
        }))
    }
}

/// Accepts clients on `listener` forever, one session task each.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                tokio::spawn(async move {
                    shared.clients.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = session::run(stream, shared.clone(), id).await {
                        tracing::debug!(client = id, %peer, error = %e, "client connection ended with an error");
                    }
                    shared.clients.fetch_sub(1, Ordering::Relaxed);
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

/// A proxy started by [`start`]: its bound address, its shared state, its accept loop.
pub struct Running {
    /// The address clients connect to (resolved, so port 0 in the config becomes the real port).
    pub addr: std::net::SocketAddr,
    /// State shared by the sessions (topology, limits, counters).
    pub shared: Arc<Shared>,
    /// The accept loop.
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

/// Binds `config.listen`, connects to the pool, and starts accepting clients.
///
/// # Errors
///
/// [`StartError`] when the pool is invalid or the address cannot be bound.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let shared = Shared::new(config)?;
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen.clone(),
                source,
            })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    let task = tokio::spawn(serve(listener, shared.clone()));
    Ok(Running { addr, shared, task })
}
