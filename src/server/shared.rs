//! What every session shares: the topology handle, the metrics, the limits, the drain switch
//! and the client count. Nothing in here is locked on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, LimitsConfig};
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::topology::{TopologyError, TopologyHandle};

/// State shared by the listener and every session.
pub struct Shared {
    /// The current topology.
    pub topology: Arc<TopologyHandle>,
    /// Every metric of this proxy.
    pub metrics: Arc<Metrics>,
    /// Limits applied to client input.
    pub(crate) limits: Limits,
    /// Limits on each client connection.
    pub(crate) client_limits: LimitsConfig,
    /// Whether Keyway drains (SIGTERM): sessions answer what they received, then close.
    pub(crate) drain: Arc<Drain>,
    /// When this process started (INFO uptime).
    pub(crate) started: Instant,
    /// Source of client ids.
    next_client_id: AtomicU64,
    /// Clients currently connected.
    pub clients: AtomicU64,
    /// The clients connected (CLIENT LIST, CLIENT KILL).
    pub(crate) registry: Arc<super::registry::Registry>,
    /// The client port, once listening (INFO's `tcp_port`).
    pub(crate) port: std::sync::OnceLock<u16>,
    /// Server connections clients may hold (`limits.max_transactions`).
    pub(crate) leases: Arc<tokio::sync::Semaphore>,
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
            drain: Arc::new(Drain::new(metrics.draining.clone())),
            metrics,
            limits,
            client_limits: config.limits.clone(),
            started: Instant::now(),
            next_client_id: AtomicU64::new(1),
            clients: AtomicU64::new(0),
            registry: Arc::default(),
            port: std::sync::OnceLock::new(),
            leases: Arc::new(tokio::sync::Semaphore::new(config.limits.max_transactions)),
        }))
    }

    /// Starts draining: stop accepting, fail readiness, let each session answer what it has
    /// received and close.
    pub fn begin_drain(&self) {
        self.drain.begin();
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
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

    /// A new client's id.
    pub(crate) fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}
