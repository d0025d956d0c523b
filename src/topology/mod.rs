//! The topology: one immutable snapshot of the pool, behind one `ArcSwap`.
//!
//! A [`Topology`] holds everything the request path needs to route: the servers (with their
//! connection pools), the slot table, the pool's policies, and a version number. Sessions load
//! the current snapshot once per batch of requests and finish each request on the snapshot it
//! started with; a new snapshot replaces the old one atomically.
//!
//! Connection pools are keyed by server name and address and carried over from one snapshot to
//! the next, so a swap that keeps a server keeps its warm connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backend::{Pool, PoolOptions};
use crate::config::PoolConfig;
use crate::metrics::Metrics;
use crate::routing::{HashTag, SlotTable};

/// Servers ranked per slot beyond the replicas, so that failover can find the next server of a
/// slot's ranking without recomputing it.
const SPARE_RANKS: usize = 2;

/// One server of a snapshot.
#[derive(Debug)]
pub struct Server {
    /// Identity used for hashing.
    pub name: String,
    /// Where it listens.
    pub addr: String,
    /// Rendezvous weight.
    pub weight: f64,
    /// Its pipelined connections, shared with other snapshots that have the same name and address.
    pub pool: Arc<Pool>,
}

/// An immutable view of the pool, as routed by every request that loaded it.
#[derive(Debug)]
pub struct Topology {
    /// Increases by one at each swap; 1 for the first snapshot.
    pub version: u64,
    /// The servers, sorted by name; a slot table entry is an index into this list.
    pub servers: Vec<Server>,
    /// For each slot, its servers in rendezvous order.
    pub table: SlotTable,
    /// Copies of each slot.
    pub replicas: usize,
    /// Hash tag delimiters, `None` when tags are disabled.
    pub hash_tag: Option<HashTag>,
    /// Per-request deadline on a server.
    pub timeout: Duration,
    /// The configuration this snapshot was built from (for `/topology` and INFO).
    pub config: PoolConfig,
}

impl Topology {
    /// The server at a slot-table index. Indexes come from a table built over this very list.
    pub fn server(&self, index: u16) -> Option<&Server> {
        self.servers.get(usize::from(index))
    }
}

/// Why a topology could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The pool configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The slot table could not be built.
    #[error(transparent)]
    Routing(#[from] crate::routing::RoutingError),
}

/// The current topology and the pools that outlive any one snapshot.
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    metrics: Arc<Metrics>,
    /// Pools by (name, address): reused by the next snapshot when both match.
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
}

impl TopologyHandle {
    /// Builds the first snapshot (version 1) and opens its connections.
    ///
    /// Must run inside a tokio runtime (connection tasks are spawned).
    ///
    /// # Errors
    ///
    /// [`TopologyError`] when the pool configuration is invalid.
    pub fn new(
        config: &PoolConfig,
        metrics: Arc<Metrics>,
    ) -> Result<TopologyHandle, TopologyError> {
        let pools = Mutex::new(HashMap::new());
        let first = build(config, 1, &pools, &metrics)?;
        metrics.topology_version.set(1);
        Ok(TopologyHandle {
            current: ArcSwap::from_pointee(first),
            metrics,
            pools,
        })
    }

    /// The metrics the pools report into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The current snapshot. Load it once and use it to the end of the request.
    pub fn load(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Builds a snapshot from `config` with the next version and swaps it in. Pools of servers
    /// that keep their name and address are reused; the others close once their last snapshot
    /// is gone and their in-flight requests are answered.
    ///
    /// # Errors
    ///
    /// [`TopologyError`] when the configuration is invalid; the current snapshot stays.
    pub fn swap(&self, config: &PoolConfig) -> Result<Arc<Topology>, TopologyError> {
        let version = self.current.load().version + 1;
        let next = Arc::new(build(config, version, &self.pools, &self.metrics)?);
        self.current.store(next.clone());
        self.metrics
            .topology_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        Ok(next)
    }
}

/// Builds a snapshot, reusing pools from `pools` and forgetting the ones it does not use.
fn build(
    config: &PoolConfig,
    version: u64,
    pools: &Mutex<HashMap<(String, String), Arc<Pool>>>,
    metrics: &Metrics,
) -> Result<Topology, TopologyError> {
    config.validate(None)?;
    let hash_tag =
        HashTag::parse(&config.hash_tag).map_err(|e| crate::config::ConfigError::Invalid {
            key: "pool.hash_tag".into(),
            location: String::new(),
            message: e.to_string(),
        })?;
    let options = PoolOptions {
        connections: config.connections,
        timeout: config.timeout,
    };
    let mut specs: Vec<_> = config.servers.iter().collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));

    // A poisoned lock only means another builder panicked mid-way; the map is still usable.
    let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    let mut kept = HashMap::with_capacity(specs.len());
    let servers: Vec<Server> = specs
        .iter()
        .map(|s| {
            let key = (s.name.clone(), s.addr.clone());
            let pool = pools.get(&key).cloned().unwrap_or_else(|| {
                Arc::new(Pool::spawn(
                    &s.name,
                    &s.addr,
                    &options,
                    metrics.server(&s.name),
                ))
            });
            kept.insert(key, pool.clone());
            Server {
                name: s.name.clone(),
                addr: s.addr.clone(),
                weight: s.weight,
                pool,
            }
        })
        .collect();
    for (name, _) in pools.keys() {
        if !kept.keys().any(|(n, _)| n == name) {
            metrics.remove_server(name);
        }
    }
    *pools = kept;

    let ranked: Vec<(&str, f64)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.weight))
        .collect();
    let table = SlotTable::build(&ranked, config.replicas + SPARE_RANKS)?;
    Ok(Topology {
        version,
        servers,
        table,
        replicas: config.replicas,
        hash_tag,
        timeout: config.timeout,
        config: config.clone(),
    })
}
