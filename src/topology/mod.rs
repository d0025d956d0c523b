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

pub mod reload;

use crate::backend::{Pool, PoolOptions};
use crate::config::{Failover, PoolConfig, ReadPolicy, WriteMode};
use crate::credentials::Credentials;
use crate::health::HealthOptions;
use crate::metrics::Metrics;
use crate::routing::{HashTag, Slot, SlotTable};
use crate::tls::ServerTls;

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
    /// How reads pick a replica.
    pub read: ReadPolicy,
    /// Where writes go.
    pub write: WriteMode,
    /// What a down server's slots do when `replicas = 1`.
    pub failover: Failover,
    /// Warm-up after a swap: per slot, the server that was its primary before, when it moved
    /// (`NO_SERVER` otherwise); `None` when warm-up is off.
    warm_from: Option<Box<[u16]>>,
    /// End of the warm-up period.
    warm_until: tokio::time::Instant,
    /// The configuration this snapshot was built from (for `/topology` and INFO).
    pub config: PoolConfig,
}

/// Where a slot's requests go, given the servers' health now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement<'t> {
    /// One server (`replicas = 1`: the primary, or its stand-in under `failover = next`).
    One(u16),
    /// The slot's replica set, primary first (`replicas > 1`): reads pick one healthy member,
    /// writes go to the members the write mode asks for.
    Replicas(&'t [u16]),
}

/// Why a slot cannot be served now.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// `replicas = 1`, `failover = none`, and the slot's server is down.
    /// (A `TRYAGAIN` error for the client: see `server::plan`.)
    #[error("server '{0}' is down and keyway is configured with failover = none; its keys are unavailable until it is back")]
    Down(String),
}

impl Topology {
    /// The server at a slot-table index. Indexes come from a table built over this very list.
    pub fn server(&self, index: u16) -> Option<&Server> {
        self.servers.get(usize::from(index))
    }

    /// Whether the server at `index` is up by its health state.
    #[inline]
    pub fn is_up(&self, index: u16) -> bool {
        self.server(index).is_some_and(|s| s.pool.health().is_up())
    }

    /// Whether reads may go to the server at `index`: up, and not recovering (see
    /// [`crate::health`]).
    #[inline]
    pub fn is_readable(&self, index: u16) -> bool {
        self.server(index)
            .is_some_and(|s| s.pool.health().is_readable())
    }

    /// The slot's replica set, primary first: fixed by the topology, never by health, so that
    /// proxies that disagree about health never disagree about where data lives.
    #[inline]
    pub fn replica_set(&self, slot: Slot) -> &[u16] {
        let ranked = self.table.ranked(slot);
        ranked.get(..self.replicas).unwrap_or(ranked)
    }

    /// Where `slot`'s requests go now.
    ///
    /// The guard against a health view gone wrong: when every candidate of a slot is down, the
    /// slot's primary is used anyway. Its requests then fail fast with an error naming the
    /// server if it really is down, and work if only the health checks were wrong (a checker
    /// partitioned from a healthy pool must not take the whole pool out of service).
    ///
    /// # Errors
    ///
    /// [`PlacementError::Down`] under `replicas = 1` and `failover = none` while the slot's
    /// server is down.
    pub fn placement(&self, slot: Slot) -> Result<Placement<'_>, PlacementError> {
        if self.replicas > 1 {
            return Ok(Placement::Replicas(self.replica_set(slot)));
        }
        let primary = self.table.primary(slot);
        if self.is_up(primary) {
            return Ok(Placement::One(primary));
        }
        let ranked = self.table.ranked(slot);
        match self.failover {
            Failover::Next => Ok(Placement::One(
                ranked
                    .iter()
                    .copied()
                    .find(|&i| self.is_up(i))
                    .unwrap_or(primary),
            )),
            Failover::None => {
                if ranked.iter().all(|&i| !self.is_up(i)) {
                    // The guard: nothing up at all; try the primary.
                    return Ok(Placement::One(primary));
                }
                let name = self.server(primary).map_or("?", |s| s.name.as_str());
                Err(PlacementError::Down(name.to_string()))
            }
        }
    }

    /// During the warm-up period after a swap, the server that was `slot`'s primary before it
    /// moved, where a read that misses may find the value.
    pub fn warm_from(&self, slot: Slot) -> Option<u16> {
        let from = self.warm_from.as_ref()?;
        if tokio::time::Instant::now() >= self.warm_until {
            return None;
        }
        from.get(usize::from(slot.0))
            .copied()
            .filter(|&i| i != NO_SERVER)
    }

    /// The server whose copy of `slot` a whole-pool listing (KEYS, SCAN) reports: the first
    /// readable member of its replica set (else the first up), so that each key is listed once.
    pub fn owner(&self, slot: Slot) -> u16 {
        let set = self.replica_set(slot);
        set.iter()
            .copied()
            .find(|&i| self.is_readable(i))
            .or_else(|| set.iter().copied().find(|&i| self.is_up(i)))
            .unwrap_or_else(|| self.table.primary(slot))
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

/// Pools are shared across snapshots when their server keeps its name, its address and the
/// settings its connections were opened with (credentials included: a new user or password
/// file opens new connections; the password itself shows in no key).
type PoolKey = (String, String, String);

/// The current topology and the pools that outlive any one snapshot.
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    metrics: Arc<Metrics>,
    /// Pools by (name, address, connection settings): reused by the next snapshot when all match.
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// One swap at a time, so that versions increase by exactly one.
    swapping: tokio::sync::Mutex<()>,
    /// The version of the snapshot last swapped in, for whoever must act on a swap (the pub/sub
    /// hub moves channel subscriptions whose slot changed server).
    swapped: tokio::sync::watch::Sender<u64>,
    /// The client users (`[[users]]`), swapped by a config reload with the topology.
    pub users: crate::acl::UsersHandle,
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
        let (first, _) = build(config, 1, None, &pools, &metrics)?;
        metrics.topology_version.set(1);
        Ok(TopologyHandle {
            current: ArcSwap::from_pointee(first),
            metrics,
            pools,
            swapping: tokio::sync::Mutex::new(()),
            swapped: tokio::sync::watch::Sender::new(1),
            users: crate::acl::UsersHandle::default(),
        })
    }

    /// The metrics the pools report into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Notified after each swap, with the new snapshot's version.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    /// The current snapshot. Load it once and use it to the end of the request.
    pub fn load(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Builds a snapshot from `config` with the next version and swaps it in.
    ///
    /// - The new snapshot is fully built (slot table included) before anything changes.
    /// - Servers new to the pool are connected before the snapshot takes traffic (waiting at
    ///   most the pool's `timeout`; a server that cannot be reached then is swapped in anyway
    ///   and handled by health checks and failover like any down server).
    /// - Pools of servers that keep their name, address and connection settings are reused;
    ///   the others close once the last snapshot that uses them is gone and their in-flight
    ///   requests are answered.
    ///
    /// # Errors
    ///
    /// [`TopologyError`] when the configuration is invalid; the current snapshot stays.
    pub async fn swap(&self, config: &PoolConfig) -> Result<Arc<Topology>, TopologyError> {
        let _one_at_a_time = self.swapping.lock().await;
        let previous = self.load();
        let version = previous.version + 1;
        let (next, opened) = build(config, version, Some(&previous), &self.pools, &self.metrics)?;
        let deadline = tokio::time::Instant::now() + config.timeout;
        for pool in &opened {
            while pool.open_connections() == 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        self.swapped.send_replace(version);
        self.metrics
            .topology_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        Ok(next)
    }
}

/// Sentinel of [`Topology::warm_from`]: no previous owner to warm from.
const NO_SERVER: u16 = u16::MAX;

/// Builds a snapshot, reusing pools from `pools` and forgetting the ones it does not use.
/// Returns the snapshot and the pools it opened.
fn build(
    config: &PoolConfig,
    version: u64,
    previous: Option<&Topology>,
    pools: &Mutex<HashMap<PoolKey, Arc<Pool>>>,
    metrics: &Metrics,
) -> Result<(Topology, Vec<Arc<Pool>>), TopologyError> {
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
    let health = HealthOptions {
        interval: config.health.interval,
        timeout: config.health.timeout,
        fall: config.health.fall,
        rise: config.health.rise,
    };
    let settings = format!("{options:?}/{health:?}");
    // One connector for the pool (its files re-read when they change); each server checks
    // its own name.
    let connector = config.tls_connector()?;
    if connector.as_ref().is_some_and(|c| c.insecure()) {
        tracing::warn!("pool.tls.insecure_skip_verify = true: the servers' certificates are NOT verified; anyone between Keyway and the servers can read and change the traffic");
    }
    let mut specs: Vec<_> = config.servers.iter().collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));

    let ranked: Vec<(&str, f64)> = specs.iter().map(|s| (s.name.as_str(), s.weight)).collect();
    let table = SlotTable::build(&ranked, config.replicas + SPARE_RANKS)?;

    let mut tls_of = HashMap::with_capacity(specs.len());
    for s in &specs {
        let tls = match &connector {
            Some(c) => Some(ServerTls::new(c.clone(), config.tls_server_name(s)?)),
            None => None,
        };
        tls_of.insert(s.name.clone(), tls);
    }

    // A poisoned lock only means another builder panicked mid-way; the map is still usable.
    let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    let mut kept = HashMap::with_capacity(specs.len());
    let mut opened = Vec::new();
    let servers: Vec<Server> = specs
        .iter()
        .map(|s| {
            let credentials = Credentials::new(
                config.username(s).map(str::to_string),
                config.password_source(s),
            );
            let tls = tls_of.remove(&s.name).flatten();
            // `Credentials`' Debug shows the user and the file, and a password as <redacted>;
            // the TLS settings show files and names.
            let key = (
                s.name.clone(),
                s.addr.clone(),
                format!("{settings}/{credentials:?}/{tls:?}"),
            );
            let pool = match pools.get(&key) {
                Some(pool) => pool.clone(),
                None => {
                    let pool = Arc::new(Pool::spawn(
                        &s.name,
                        &s.addr,
                        &options,
                        health.clone(),
                        metrics.server(&s.name),
                        Arc::new(credentials),
                        tls,
                    ));
                    opened.push(pool.clone());
                    pool
                }
            };
            kept.insert(key, pool.clone());
            Server {
                name: s.name.clone(),
                addr: s.addr.clone(),
                weight: s.weight,
                pool,
            }
        })
        .collect();
    for (name, _, _) in pools.keys() {
        if !kept.keys().any(|(n, _, _)| n == name) {
            metrics.remove_server(name);
        }
    }
    *pools = kept;
    drop(pools);

    // Warm-up: for each slot whose primary changed, its previous primary (if still here).
    let warm_from = match previous {
        Some(old) if !config.warmup.is_zero() => {
            let index_of = |name: &str| servers.iter().position(|s| s.name == name);
            let mut from = vec![NO_SERVER; crate::routing::SLOTS].into_boxed_slice();
            for slot in Slot::all() {
                let old_name = old.server(old.table.primary(slot)).map(|s| s.name.as_str());
                let new_primary = table.primary(slot);
                if let Some(old_index) = old_name.and_then(index_of) {
                    if old_index != usize::from(new_primary) {
                        if let Some(f) = from.get_mut(usize::from(slot.0)) {
                            *f = u16::try_from(old_index).unwrap_or(NO_SERVER);
                        }
                    }
                }
            }
            Some(from)
        }
        _ => None,
    };

    Ok((
        Topology {
            version,
            servers,
            table,
            replicas: config.replicas,
            hash_tag,
            read: config.read,
            write: config.write,
            failover: config.health.failover,
            warm_from,
            warm_until: tokio::time::Instant::now() + config.warmup,
            config: config.clone(),
        },
        opened,
    ))
}
