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
    /// Clients from addresses other than loopback are refused (`protected_mode`), unless
    /// clients must authenticate.
    pub(crate) protected_mode: bool,
    /// Whether Keyway drains (SIGTERM): sessions answer what they received, then close.
    pub(crate) drain: Arc<Drain>,
    /// When this process started (INFO uptime).
    pub(crate) started: Instant,
    /// This process's random identity, 40 hex digits (INFO's `run_id`, as redis-server's).
    pub(crate) run_id: String,
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
    /// Scripts and libraries clients loaded, loaded again where a server lost them.
    pub(crate) scripts: super::scripts::ScriptCache,
    /// Every pub/sub subscription of this Keyway's clients, and the subscriber connections.
    pub(crate) hub: Arc<super::pubsub::Hub>,
    /// `limits.max_memory`: what all clients' buffers may hold together.
    pub(crate) memory: super::memory::Budget,
}

/// 40 random hex digits. Not a secret: an identity that differs between processes and restarts,
/// from the standard library's per-process random hash keys.
fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut id = String::with_capacity(48);
    for i in 0..3u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        id.push_str(&format!("{:016x}", h.finish()));
    }
    id.truncate(40);
    id
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
        let users = config.users(None)?;
        let topology = Arc::new(TopologyHandle::new(&config.pool, metrics.clone())?);
        topology.users.store(users);
        let hub = super::pubsub::Hub::new(
            topology.clone(),
            config.limits.max_client_output,
            metrics.clone(),
        );
        Ok(Arc::new(Shared {
            topology,
            hub,
            drain: Arc::new(Drain::new(metrics.draining.clone())),
            metrics,
            limits,
            client_limits: config.limits.clone(),
            protected_mode: config.protected_mode,
            started: Instant::now(),
            run_id: run_id(),
            next_client_id: AtomicU64::new(1),
            clients: AtomicU64::new(0),
            registry: Arc::default(),
            port: std::sync::OnceLock::new(),
            leases: Arc::new(tokio::sync::Semaphore::new(config.limits.max_transactions)),
            scripts: super::scripts::ScriptCache::default(),
            memory: super::memory::Budget::new(config.limits.max_memory),
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
