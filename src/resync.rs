//! Resync: a replica that restarted, or came back empty, is copied its slots from healthy
//! replicas before it serves reads again.
//!
//! ```text
//!  restart seen (new run_id), or first seen empty while a peer has data
//!        |
//!        v
//!  +------------+  resync task: wipe stale keys, copy, check  +---------+
//!  | recovering |------------------------------------------->| serving |
//!  +------------+          completed                          +---------+
//!     ^      |
//!     |      | the server goes down, restarts again, a source goes down, the topology
//!     +------+ changes: the task is stopped; the next one starts when the server is up
//! ```
//!
//! While a server is **recovering** it takes writes as its write mode says (so that it does
//! not fall further behind) and serves no reads (`Topology::is_readable`). Under `write =
//! primary` a slot's other replicas never get its writes, so they are no source: as with
//! `replicas = 1`, nothing is copied. With `replicas = 1`
//! there is nothing to copy from: a restart is logged and the server serves as before.
//!
//! A **resync** of server T, one task per recovering server, at most
//! `pool.resync_keys_per_second` keys copied per second:
//!
//! 1. For each slot T replicates, the source is the first other member of its replica set that
//!    is readable (up, not recovering). A slot without one (every replica of it recovers: the
//!    whole pool restarted) is kept as T holds it when T holds data, and logged; an empty T
//!    stops there and tries again later, when a peer holding data has finished (else every
//!    replica would wait for another forever).
//! 2. **Wipe**: T's keys of those slots that their source does not hold (deleted while T was
//!    away, when T came back with its data) are synced (below), which removes them.
//! 3. **Copy**: each source is SCANned (`COUNT 100`); each key of a slot it is the source of,
//!    except Keyway's own `__keyway:*`, is synced: `DUMP` and `PTTL` in one `MULTI` on the
//!    source, then `RESTORE key ttl payload REPLACE` on T (`UNLINK` when the source no longer
//!    has it). The TTL is relative: the servers' clocks need not agree.
//! 4. **Check**: every synced key is checked again once `pool.timeout` has passed since its
//!    sync: `DUMP` on both servers; a difference is synced again and checked again, up to
//!    [`ROUNDS`] times.
//! 5. Under `write = two_phase`, a key locked by a transaction (`__keyway:lock:<key>` on the
//!    source or on T) is neither copied nor judged, but looked at again after the next settle:
//!    a transaction committed on the source and rolled forward on T later would otherwise be
//!    applied twice on T.
//!
//! Why the check: writes go on to both servers during the copy, each in its own time. A write
//! the source applied before the DUMP and T after the RESTORE is applied twice on T (an INCR
//! counts twice); one the source applied after the DUMP and T before the RESTORE is lost on T.
//! Either leaves the two DUMPs different once the write has reached both servers, which it
//! has within `pool.timeout` (or it failed with a timeout, its outcome unknown), so the check
//! finds it and syncs again. Equal DUMPs mean the key is the same on both, whatever writes are
//! still on their way to both. This needs no help from the write path, and it covers writes
//! sent by other Keyways (each of which resyncs the server too: the copies agree, they are all
//! of the sources). What remains: a key still different after [`ROUNDS`] checks (written
//! without pause, or whose encoding differs between servers of different Redis versions) is
//! counted as unsettled and logged; a write that reaches T later than `pool.timeout` after it
//! reached the source (a stopped process resumed) can still be lost or doubled on T.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::WriteMode;
use crate::health::Health;
use crate::routing::{key_slot, Slot, SLOTS};
use crate::topology::{Topology, TopologyHandle};

/// Times a key is synced again after a check found it different, before it is given up on.
pub const ROUNDS: u32 = 5;

/// Keys asked of a source per SCAN.
const SCAN_COUNT: u64 = 100;

/// Keyway's own keys (two-phase locks, intents, decisions): never copied, never wiped.
const RESERVED_PREFIX: &[u8] = b"__keyway:";

/// Watches the servers' health and runs a resync for each recovering server, until `stop`.
pub async fn run(handle: Arc<TopologyHandle>, stop: tokio_util::sync::CancellationToken) {
    let mut manager = Manager::default();
    loop {
        let interval = handle.load().config.health.interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => break,
        }
        manager.tick(&handle);
    }
    for (_, task) in manager.tasks.drain() {
        task.handle.abort();
    }
}

/// A resync under way.
struct Task {
    handle: JoinHandle<()>,
    /// The server's restarts when it began: another restart makes it stale.
    restarts: u64,
    /// The topology it copies by.
    version: u64,
}

/// What the manager remembers between ticks, by server name.
#[derive(Default)]
struct Manager {
    tasks: HashMap<String, Task>,
    /// Servers whose restart was logged under `replicas = 1`.
    warned: HashSet<String>,
    /// Servers whose first identity this process has looked at.
    seen: HashSet<String>,
    /// Servers first seen empty, waiting to learn whether a peer has data.
    pending_empty: HashSet<String>,
    /// Servers whose last resync was interrupted: not before then is the next one started.
    retry_at: HashMap<String, Instant>,
}

/// Pause after an interrupted resync before the next one.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Manager {
    fn tick(&mut self, handle: &Arc<TopologyHandle>) {
        let topo = handle.load();
        let retry_at = &mut self.retry_at;
        self.tasks.retain(|name, task| {
            let finished = task.handle.is_finished();
            let keep = topo.servers.iter().any(|s| &s.name == name) && !finished;
            if !keep {
                task.handle.abort();
            }
            if finished {
                retry_at.insert(name.clone(), Instant::now() + RETRY_AFTER);
            }
            keep
        });
        for (index, server) in topo.servers.iter().enumerate() {
            let Ok(index) = u16::try_from(index) else {
                break;
            };
            let health = server.pool.health();
            self.first_sight(&topo, index, health);
            if !health.is_recovering() {
                continue;
            }
            if topo.replicas == 1 || topo.write == WriteMode::Primary {
                // Nothing to copy from (under `write = primary` only the primary holds a slot's
                // writes: its other replicas are no copy of it): serve as before, and say so
                // once.
                if self.warned.insert(server.name.clone()) {
                    tracing::warn!(server = %server.name, "server restarted or came back empty; with replicas = 1 or write = primary there is no other copy of its keys to resync it from: it serves as it is");
                }
                health.set_recovering(false);
                continue;
            }
            if let Some(task) = self.tasks.get(&server.name) {
                if task.restarts == health.restarts() && task.version == topo.version {
                    continue;
                }
                // Restarted again, or the slots moved: start over.
                task.handle.abort();
                server.pool.metrics().resyncs_interrupted.inc();
                tracing::warn!(server = %server.name, "resync interrupted (the server restarted again, or the topology changed); it starts over");
                self.tasks.remove(&server.name);
            }
            let waiting = self
                .retry_at
                .get(&server.name)
                .is_some_and(|&at| Instant::now() < at);
            if !health.is_up() || waiting {
                continue;
            }
            let task = Task {
                handle: tokio::spawn(resync_task(topo.clone(), handle.clone(), index)),
                restarts: health.restarts(),
                version: topo.version,
            };
            self.tasks.insert(server.name.clone(), task);
        }
    }

    /// A server this process first learns about while it is empty, and a peer has data, is a
    /// server that restarted before this process saw it: it recovers too. (Peers: the other
    /// servers of the pool, which share slots with it when `replicas > 1`.)
    fn first_sight(&mut self, topo: &Topology, index: u16, health: &Health) {
        let Some(server) = topo.server(index) else {
            return;
        };
        let identity = health.identity();
        if identity.reads == 0 {
            return;
        }
        if self.seen.insert(server.name.clone()) && identity.has_data == Some(false) {
            self.pending_empty.insert(server.name.clone());
        }
        if !self.pending_empty.contains(&server.name) {
            return;
        }
        let peers: Vec<Option<bool>> = topo
            .servers
            .iter()
            .filter(|s| s.name != server.name)
            .map(|s| s.pool.health().identity().has_data)
            .collect();
        if peers.contains(&Some(true)) {
            self.pending_empty.remove(&server.name);
            if topo.replicas > 1
                && topo.write != WriteMode::Primary
                && identity.has_data == Some(false)
            {
                tracing::warn!(server = %server.name, "server is empty while its peers hold data: it serves no reads until it is resynced");
                health.set_recovering(true);
            }
        } else if peers.iter().all(Option::is_some) {
            // Every peer is empty too: a new pool, nothing to copy.
            self.pending_empty.remove(&server.name);
        }
    }
}

/// Runs one resync of server `target` and records its outcome.
async fn resync_task(topo: Arc<Topology>, handle: Arc<TopologyHandle>, target: u16) {
    let Some(server) = topo.server(target) else {
        return;
    };
    let health = server.pool.health();
    let metrics = server.pool.metrics();
    let restarts = health.restarts();
    let started = Instant::now();
    tracing::info!(server = %server.name, rate = topo.config.resync_keys_per_second, "resync started: copying this server's slots from healthy replicas");
    let mut resync = Resync {
        topo: &topo,
        handle: &handle,
        target,
        restarts,
        counts: Counts::default(),
        checks: VecDeque::new(),
        budget: Budget::new(topo.config.resync_keys_per_second),
        sources: Vec::new(),
    };
    match resync.run().await {
        Ok(()) => {
            let counts = &resync.counts;
            // A restart during the last steps: the next resync serves it, not this one.
            if health.restarts() == restarts {
                health.set_recovering(false);
            }
            metrics.resyncs_completed.inc();
            let elapsed = started.elapsed();
            tracing::info!(
                server = %server.name,
                copied = counts.copied,
                removed = counts.removed,
                checked = counts.checked,
                recopied = counts.recopied,
                deferred = counts.deferred,
                unsettled = counts.unsettled,
                seconds = elapsed.as_secs_f64(),
                "resync completed: the server serves reads again"
            );
            if counts.kept_slots > 0 {
                tracing::warn!(server = %server.name, slots = counts.kept_slots, "resync: every replica of these slots was recovering too (the whole pool restarted): this server kept its own data for them");
            }
            if counts.unsettled > 0 {
                tracing::warn!(server = %server.name, unsettled = counts.unsettled, rounds = ROUNDS, "resync: keys still differ from their source after every check (written without pause, or servers of different Redis versions)");
            }
        }
        Err(e) => {
            metrics.resyncs_interrupted.inc();
            let counts = &resync.counts;
            tracing::warn!(server = %server.name, error = %e, copied = counts.copied, "resync interrupted; it starts over once the server and a source are up");
        }
    }
}

/// Why a resync stopped before the end.
#[derive(Debug, thiserror::Error)]
enum ResyncError {
    #[error("server '{0}' went down")]
    Down(String),
    #[error("server '{0}' restarted again")]
    Restarted(String),
    #[error("the topology changed")]
    TopologyChanged,
    #[error("source server '{0}' went down or is recovering itself")]
    SourceLost(String),
    #[error("no readable replica to copy slot {0} from")]
    NoSource(u16),
    #[error("server '{server}': {message}")]
    Server { server: String, message: String },
    #[error("server '{server}': no answer within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
}

/// What a resync did.
#[derive(Debug, Default)]
struct Counts {
    /// Keys restored on the target (first copies and copies after a check).
    copied: u64,
    /// Keys removed from the target (its source did not hold them).
    removed: u64,
    /// Keys compared after their sync.
    checked: u64,
    /// Keys synced again because a check found them different.
    recopied: u64,
    /// Keys put off because a two-phase transaction held them (`write = two_phase`).
    deferred: u64,
    /// Keys still different (or still locked) after [`ROUNDS`] checks.
    unsettled: u64,
    /// Slots kept as they were: no other replica of theirs was readable.
    kept_slots: u64,
}

/// A key to check once its sync has settled.
struct Check {
    key: Vec<u8>,
    source: u16,
    round: u32,
}

/// The copy rate: waits so that keys go out no faster than `per_second`.
struct Budget {
    per_second: f64,
    next: Instant,
}

impl Budget {
    fn new(per_second: u32) -> Budget {
        Budget {
            per_second: f64::from(per_second.max(1)),
            next: Instant::now(),
        }
    }

    /// Waits for the turn of a batch of `keys`; the next batch's turn comes `keys / rate`
    /// later (a batch late by more than its own cost does not earn a burst).
    async fn spend(&mut self, keys: usize) {
        tokio::time::sleep_until(self.next).await;
        // Key counts of a batch are small: the cast is exact.
        let cost = Duration::from_secs_f64(keys as f64 / self.per_second);
        let now = Instant::now();
        self.next = self.next.max(now.checked_sub(cost).unwrap_or(now)) + cost;
    }
}

/// One resync of one server.
struct Resync<'a> {
    topo: &'a Arc<Topology>,
    handle: &'a TopologyHandle,
    target: u16,
    restarts: u64,
    counts: Counts,
    /// Synced keys waiting for their check, oldest first, with when they were synced.
    checks: VecDeque<(Instant, Vec<Check>)>,
    budget: Budget,
    /// The servers copied from: each must stay readable (a source that restarted is no source).
    sources: Vec<u16>,
}

/// Connections by server index.
type Connections = HashMap<u16, MultiplexedConnection>;

impl Resync<'_> {
    async fn run(&mut self) -> Result<(), ResyncError> {
        let sources = self.slot_sources()?;
        let mut cons = Connections::new();
        cons.insert(self.target, self.connect(self.target).await?);
        let mut by_source: Vec<u16> = sources.iter().flatten().copied().collect();
        by_source.sort_unstable();
        by_source.dedup();
        for &s in &by_source {
            cons.insert(s, self.connect(s).await?);
        }
        self.sources = by_source.clone();
        self.wipe(&sources, &mut cons).await?;
        for &source in &by_source {
            let mut cursor: u64 = 0;
            loop {
                self.still_valid()?;
                let (next, keys) = self.scan(&mut cons, source, cursor).await?;
                let keys: Vec<Vec<u8>> = keys
                    .into_iter()
                    .filter(|k| {
                        !k.starts_with(RESERVED_PREFIX)
                            && self.source_of(&sources, k) == Some(source)
                    })
                    .collect();
                self.sync(&mut cons, source, keys, 0).await?;
                self.check_settled(&mut cons, false).await?;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        while !self.checks.is_empty() {
            self.still_valid()?;
            self.check_settled(&mut cons, true).await?;
        }
        Ok(())
    }

    /// Per slot, the server the target copies it from: `None` for slots it does not replicate.
    fn slot_sources(&mut self) -> Result<Vec<Option<u16>>, ResyncError> {
        let topo = self.topo;
        let mut sources = vec![None; SLOTS];
        for slot in Slot::all() {
            let set = topo.replica_set(slot);
            if !set.contains(&self.target) {
                continue;
            }
            let source = set
                .iter()
                .copied()
                .find(|&i| i != self.target && topo.is_readable(i));
            match source {
                Some(source) => {
                    if let Some(s) = sources.get_mut(usize::from(slot.0)) {
                        *s = Some(source);
                    }
                }
                // Every replica of the slot recovers (the whole pool restarted): none is a
                // better copy than the target's own data, which it keeps. An empty target
                // waits for a peer that holds data to finish first.
                None if self.target_has_data() => self.counts.kept_slots += 1,
                None => return Err(ResyncError::NoSource(slot.0)),
            }
        }
        Ok(sources)
    }

    /// Whether the target held keys when the prober last looked.
    fn target_has_data(&self) -> bool {
        self.topo
            .server(self.target)
            .is_some_and(|s| s.pool.health().identity().has_data == Some(true))
    }

    fn source_of(&self, sources: &[Option<u16>], key: &[u8]) -> Option<u16> {
        let slot = key_slot(key, self.topo.hash_tag);
        sources.get(usize::from(slot.0)).copied().flatten()
    }

    fn name(&self, index: u16) -> String {
        self.topo
            .server(index)
            .map_or_else(|| "?".to_string(), |s| s.name.clone())
    }

    /// Stops the resync when it no longer copies what it should.
    fn still_valid(&self) -> Result<(), ResyncError> {
        let Some(target) = self.topo.server(self.target) else {
            return Err(ResyncError::TopologyChanged);
        };
        if self.handle.load().version != self.topo.version {
            return Err(ResyncError::TopologyChanged);
        }
        let health = target.pool.health();
        if health.restarts() != self.restarts {
            return Err(ResyncError::Restarted(target.name.clone()));
        }
        if !health.is_up() {
            return Err(ResyncError::Down(target.name.clone()));
        }
        if let Some(&gone) = self.sources.iter().find(|&&s| !self.topo.is_readable(s)) {
            return Err(ResyncError::SourceLost(self.name(gone)));
        }
        Ok(())
    }

    fn deadline(&self) -> Duration {
        self.topo.config.timeout.max(Duration::from_secs(5))
    }

    async fn connect(&self, index: u16) -> Result<MultiplexedConnection, ResyncError> {
        let server = self
            .topo
            .server(index)
            .ok_or(ResyncError::TopologyChanged)?;
        let pool = &server.pool;
        crate::health::control_connection(
            &server.name,
            pool.addr(),
            pool.credentials(),
            pool.tls(),
            self.deadline(),
        )
        .await
        .map_err(|e| ResyncError::Server {
            server: server.name.clone(),
            message: pool.credentials().redact(&e.to_string()),
        })
    }

    /// Runs `pipe` on server `index` within the deadline.
    async fn query(
        &self,
        cons: &mut Connections,
        index: u16,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>, ResyncError> {
        let server = self.name(index);
        let timeout = self.deadline();
        let con = cons.get_mut(&index).ok_or(ResyncError::TopologyChanged)?;
        match tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(con)).await {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(e)) => Err(ResyncError::Server {
                server,
                message: e.to_string(),
            }),
            Err(_) => Err(ResyncError::Timeout { server, timeout }),
        }
    }

    async fn scan(
        &self,
        cons: &mut Connections,
        index: u16,
        cursor: u64,
    ) -> Result<(u64, Vec<Vec<u8>>), ResyncError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCAN").arg(cursor).arg("COUNT").arg(SCAN_COUNT);
        let values = self.query(cons, index, &pipe).await?;
        let bad = || ResyncError::Server {
            server: self.name(index),
            message: "unexpected SCAN reply".into(),
        };
        let Some(Value::Array(reply)) = values.into_iter().next() else {
            return Err(bad());
        };
        let mut reply = reply.into_iter();
        let next = match reply.next() {
            Some(Value::BulkString(c)) => std::str::from_utf8(&c)
                .ok()
                .and_then(|c| c.parse::<u64>().ok())
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        let keys = match reply.next() {
            Some(Value::Array(keys)) => keys
                .into_iter()
                .filter_map(|k| match k {
                    Value::BulkString(k) => Some(k),
                    _ => None,
                })
                .collect(),
            _ => return Err(bad()),
        };
        Ok((next, keys))
    }

    /// The target's keys of the slots it replicates that their source does not hold are synced
    /// (removed), and checked like the others.
    async fn wipe(
        &mut self,
        sources: &[Option<u16>],
        cons: &mut Connections,
    ) -> Result<(), ResyncError> {
        let mut cursor: u64 = 0;
        loop {
            self.still_valid()?;
            let (next, keys) = self.scan(cons, self.target, cursor).await?;
            let mut by_source: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
            for key in keys {
                if key.starts_with(RESERVED_PREFIX) {
                    continue;
                }
                if let Some(source) = self.source_of(sources, &key) {
                    by_source.entry(source).or_default().push(key);
                }
            }
            for (source, keys) in by_source {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("EXISTS").arg(k);
                }
                let exists = self.query(cons, source, &pipe).await?;
                let absent: Vec<Vec<u8>> = keys
                    .into_iter()
                    .zip(exists)
                    .filter(|(_, e)| matches!(e, Value::Int(0)))
                    .map(|(k, _)| k)
                    .collect();
                self.sync(cons, source, absent, 0).await?;
            }
            self.check_settled(cons, false).await?;
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Copies `keys` from `source` to the target as they are now (see the module docs), then
    /// queues them for their check.
    async fn sync(
        &mut self,
        cons: &mut Connections,
        source: u16,
        keys: Vec<Vec<u8>>,
        round: u32,
    ) -> Result<(), ResyncError> {
        if keys.is_empty() {
            return Ok(());
        }
        let (keys, locked) = self.split_locked(cons, source, keys).await?;
        self.defer(source, locked, round);
        if keys.is_empty() {
            return Ok(());
        }
        self.budget.spend(keys.len()).await;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in &keys {
            pipe.cmd("DUMP").arg(k).cmd("PTTL").arg(k);
        }
        let dumped = self.query(cons, source, &pipe).await?;
        let mut restore = redis::pipe();
        let (mut copied, mut removed) = (0, 0);
        let mut replies = dumped.into_iter();
        for k in &keys {
            match (replies.next(), replies.next()) {
                (Some(Value::BulkString(payload)), Some(Value::Int(pttl))) => {
                    restore
                        .cmd("RESTORE")
                        .arg(k)
                        .arg(pttl.max(0))
                        .arg(payload)
                        .arg("REPLACE")
                        .ignore();
                    copied += 1;
                }
                // Gone from the source: gone from the target too.
                _ => {
                    restore.cmd("UNLINK").arg(k).ignore();
                    removed += 1;
                }
            }
        }
        self.query(cons, self.target, &restore).await?;
        self.counts.copied += copied;
        self.counts.removed += removed;
        if round > 0 {
            self.counts.recopied += copied + removed;
        }
        if let Some(server) = self.topo.server(self.target) {
            server.pool.metrics().resync_keys.inc_by(copied);
        }
        let checks = keys
            .into_iter()
            .map(|key| Check { key, source, round })
            .collect();
        self.checks.push_back((Instant::now(), checks));
        Ok(())
    }

    /// Under `write = two_phase`, splits `keys` into those no open transaction holds and those
    /// locked (`__keyway:lock:<key>`) on the source or the target. A locked key is not copied
    /// nor judged: a transaction committed on the source and still to be rolled forward on the
    /// target would be applied there on top of the source's value (twice); it is looked at
    /// again after the next settle, once recovery or its coordinator has finished it.
    async fn split_locked(
        &self,
        cons: &mut Connections,
        source: u16,
        keys: Vec<Vec<u8>>,
    ) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>), ResyncError> {
        if self.topo.write != WriteMode::TwoPhase {
            return Ok((keys, Vec::new()));
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("EXISTS").arg(crate::txn::lock_key(k).as_ref());
        }
        let on_source = self.query(cons, source, &pipe).await?;
        let on_target = self.query(cons, self.target, &pipe).await?;
        let mut free = Vec::with_capacity(keys.len());
        let mut locked = Vec::new();
        for ((k, s), t) in keys.into_iter().zip(on_source).zip(on_target) {
            if matches!((s, t), (Value::Int(0), Value::Int(0))) {
                free.push(k);
            } else {
                locked.push(k);
            }
        }
        Ok((free, locked))
    }

    /// Queues locked keys for another look after the next settle (a round spent), or gives up
    /// on those out of rounds.
    fn defer(&mut self, source: u16, keys: Vec<Vec<u8>>, round: u32) {
        if keys.is_empty() {
            return;
        }
        let mut checks = Vec::with_capacity(keys.len());
        for key in keys {
            if round + 1 >= ROUNDS {
                self.counts.unsettled += 1;
            } else {
                checks.push(Check {
                    key,
                    source,
                    round: round + 1,
                });
            }
        }
        self.counts.deferred += checks.len() as u64;
        self.checks.push_back((Instant::now(), checks));
    }

    /// Checks the synced keys whose sync has settled (`pool.timeout` ago); with `wait`, waits
    /// for the oldest to settle first.
    async fn check_settled(
        &mut self,
        cons: &mut Connections,
        wait: bool,
    ) -> Result<(), ResyncError> {
        let settle = self.topo.config.timeout;
        if wait {
            if let Some((at, _)) = self.checks.front() {
                tokio::time::sleep_until(*at + settle).await;
            }
        }
        while let Some((at, _)) = self.checks.front() {
            if at.elapsed() < settle {
                return Ok(());
            }
            let Some((_, batch)) = self.checks.pop_front() else {
                return Ok(());
            };
            self.check(cons, batch).await?;
        }
        Ok(())
    }

    /// Compares the DUMP of each key on its source and on the target; syncs again those that
    /// differ.
    async fn check(
        &mut self,
        cons: &mut Connections,
        batch: Vec<Check>,
    ) -> Result<(), ResyncError> {
        let mut by_source: HashMap<u16, Vec<Check>> = HashMap::new();
        for c in batch {
            by_source.entry(c.source).or_default().push(c);
        }
        for (source, checks) in by_source {
            let checks = if self.topo.write == WriteMode::TwoPhase {
                let rounds: HashMap<Vec<u8>, u32> =
                    checks.iter().map(|c| (c.key.clone(), c.round)).collect();
                let keys = checks.into_iter().map(|c| c.key).collect();
                let (free, locked) = self.split_locked(cons, source, keys).await?;
                for key in locked {
                    let round = rounds.get(&key).copied().unwrap_or(0);
                    self.defer(source, vec![key], round);
                }
                free.into_iter()
                    .map(|key| Check {
                        round: rounds.get(&key).copied().unwrap_or(0),
                        key,
                        source,
                    })
                    .collect()
            } else {
                checks
            };
            if checks.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for c in &checks {
                pipe.cmd("DUMP").arg(&c.key);
            }
            // Both servers are asked at about the same time.
            let target = self.target;
            let mut con_s = cons
                .get(&source)
                .cloned()
                .ok_or(ResyncError::TopologyChanged)?;
            let mut con_t = cons
                .get(&target)
                .cloned()
                .ok_or(ResyncError::TopologyChanged)?;
            let timeout = self.deadline();
            let (s, t) = tokio::join!(
                tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(&mut con_s)),
                tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(&mut con_t)),
            );
            let s = self.answered(source, s)?;
            let t = self.answered(target, t)?;
            self.counts.checked += checks.len() as u64;
            let mut again: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
            for ((c, s), t) in checks.into_iter().zip(s).zip(t) {
                if s == t {
                    continue;
                }
                if c.round + 1 >= ROUNDS {
                    self.counts.unsettled += 1;
                    continue;
                }
                again.entry(c.round + 1).or_default().push(c.key);
            }
            for (round, keys) in again {
                self.sync(cons, source, keys, round).await?;
            }
        }
        Ok(())
    }

    fn answered(
        &self,
        index: u16,
        result: Result<redis::RedisResult<Vec<Value>>, tokio::time::error::Elapsed>,
    ) -> Result<Vec<Value>, ResyncError> {
        match result {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(e)) => Err(ResyncError::Server {
                server: self.name(index),
                message: e.to_string(),
            }),
            Err(_) => Err(ResyncError::Timeout {
                server: self.name(index),
                timeout: self.deadline(),
            }),
        }
    }
}
