//! Server health: one up/down state machine per server, fed by active probes and by what live
//! traffic sees.
//!
//! ```text
//!            failure (streak < fall)          success (streak < rise)
//!           +-------+                        +-------+
//!           v       |                        v       |
//!        +--------------+  fall failures  +--------------+
//!  ----->|      Up      |---------------->|     Down     |
//!        +--------------+  in a row       +--------------+
//!           ^     | success resets        |   ^ failure resets
//!           |     +-- the streak          |   +-- the streak
//!           +-----------------------------+
//!                 rise successes in a row
//! ```
//!
//! - **Active**: every `interval`, a PING over a control connection of its own (redis-rs), with
//!   `timeout`. PONG is a success, and so is `-BUSY` (a script runs past the server's
//!   busy-reply-threshold: the server is alive, and `SCRIPT KILL` through Keyway reaches it);
//!   anything else (an error such as `-LOADING`, a timeout, a refused connection, a refused
//!   `AUTH`) is a failure. The control connection authenticates
//!   with the server's credentials, the password file read again at each new connection.
//! - **Passive**: the data connections report a failure when a socket fails, a request times
//!   out, a connect fails, or a server answers `-LOADING`, `-MASTERDOWN` or `-READONLY` (it
//!   cannot serve as a primary). One broken connection is one failure, however many requests
//!   it failed.
//!
//! A server starts Up, so that a proxy serves at once after a restart; a dead server is found
//! by its first failed connects and probes.
//!
//! **Recovering** is a flag beside the state machine, not a state of it: a server that is up
//! but may hold less than its peers (it restarted, or came back empty) takes writes and serves
//! no reads until `crate::resync` has copied its slots from a healthy replica. The prober reads
//! the server's identity at each new control connection (a restart always breaks the old one):
//! `run_id` from `INFO server`, and whether its keyspace holds any key that is not Keyway's own
//! bookkeeping (`__keyway:*`). A `run_id` other than the one seen before is a restart: the
//! flag is set at once, before the probe's success can bring the server back Up.
//!
//! The state lives with the server's connection pool, which is keyed by name and address and
//! reused across topology versions, so a swap does not forget that a server is down.
//! Routing reads it with one atomic load.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::credentials::{Auth, Credentials};
use crate::metrics::ServerMetrics;
use crate::tls::ServerTls;

/// Settings of the state machine and of the prober.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthOptions {
    /// Time between active probes.
    pub interval: Duration,
    /// Deadline of one probe (connect and PING).
    pub timeout: Duration,
    /// Consecutive failures that take an Up server Down.
    pub fall: u32,
    /// Consecutive successes that bring a Down server Up.
    pub rise: u32,
}

#[derive(Debug)]
enum State {
    /// Serving; `failures` in a row so far.
    Up { failures: u32 },
    /// Not serving; `successes` in a row so far.
    Down { successes: u32 },
}

/// One server's health.
pub struct Health {
    name: Arc<str>,
    options: HealthOptions,
    up: AtomicBool,
    state: Mutex<State>,
    metrics: ServerMetrics,
    /// `redis_version` from the server's `INFO server`, read by the prober at each new
    /// connection (Keyway reports the pool's lowest as its own version).
    version: Mutex<Option<Arc<str>>>,
    /// The server's clock minus this process's, in ms, as a lower bound (TIME after each PING:
    /// the server read its clock before the reply arrived); [`NO_OFFSET`] until measured.
    clock_offset_ms: AtomicI64,
    /// What the prober last learnt of the server's identity.
    identity: Mutex<Identity>,
    /// Up but possibly behind its peers: no reads until a resync ends (see the module docs).
    recovering: AtomicBool,
    /// Restarts seen (a `run_id` that changed); a resync started before the latest one is stale.
    restarts: AtomicU64,
}

/// The server's identity as the prober last read it (at each new control connection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// `run_id` from `INFO server`; a new one means the process restarted.
    pub run_id: Option<Arc<str>>,
    /// Whether it holds keys other than Keyway's own (`__keyway:*`); `None` until read.
    pub has_data: Option<bool>,
    /// Identities read so far (0: never reached).
    pub reads: u64,
}

/// [`Health::clock_offset_ms`] before the first measure.
const NO_OFFSET: i64 = i64::MIN;

/// A clock offset is measured only from a TIME answered within this (the bound's error).
const OFFSET_RTT: Duration = Duration::from_millis(50);

/// Milliseconds since the Unix epoch on this process's clock.
pub fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("name", &self.name)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Health {
    /// A server in the Up state.
    pub fn new(name: Arc<str>, options: HealthOptions, metrics: ServerMetrics) -> Health {
        metrics.up.set(1);
        Health {
            name,
            options,
            up: AtomicBool::new(true),
            state: Mutex::new(State::Up { failures: 0 }),
            metrics,
            version: Mutex::new(None),
            clock_offset_ms: AtomicI64::new(NO_OFFSET),
            identity: Mutex::new(Identity::default()),
            recovering: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
        }
    }

    /// Whether reads may go to this server: up, and not recovering.
    #[inline]
    pub fn is_readable(&self) -> bool {
        self.is_up() && !self.recovering.load(Ordering::Relaxed)
    }

    /// Whether the server is recovering (up or not): it takes writes, serves no reads.
    #[inline]
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::Relaxed)
    }

    /// Marks the server recovering (a resync is due) or done recovering.
    pub fn set_recovering(&self, recovering: bool) {
        if self.recovering.swap(recovering, Ordering::Relaxed) != recovering {
            self.metrics.recovering.set(i64::from(recovering));
        }
    }

    /// Restarts seen so far (see [`Health::set_identity`]).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// What the prober last read of the server's identity.
    pub fn identity(&self) -> Identity {
        self.identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The prober read the server's identity on a new connection. A `run_id` other than the
    /// one seen before is a restart: the server is marked recovering at once (before this
    /// probe's success may bring it Up), and the restart is counted.
    pub fn set_identity(&self, run_id: Option<Arc<str>>, has_data: Option<bool>) {
        let mut identity = self
            .identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let restarted = matches!((&identity.run_id, &run_id), (Some(old), Some(new)) if old != new);
        if restarted {
            self.restarts.fetch_add(1, Ordering::Relaxed);
            self.set_recovering(true);
            tracing::warn!(server = %self.name, has_data = ?has_data, "server restarted (new run_id): it serves no reads until it is resynced");
        }
        if run_id.is_some() {
            identity.run_id = run_id;
        }
        if has_data.is_some() {
            identity.has_data = has_data;
        }
        identity.reads += 1;
    }

    /// Whether routing should send this server traffic.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The server's Redis version, once the prober has read it.
    pub fn version(&self) -> Option<Arc<str>> {
        self.version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_version(&self, version: Arc<str>) {
        *self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(version);
    }

    /// A lower bound of the server's clock minus this process's, in milliseconds, once the
    /// prober has measured it: a time `t` here is at least `t + offset` on the server.
    pub fn clock_offset_ms(&self) -> Option<i64> {
        Some(self.clock_offset_ms.load(Ordering::Relaxed)).filter(|&o| o != NO_OFFSET)
    }

    /// The prober's settings.
    pub fn options(&self) -> &HealthOptions {
        &self.options
    }

    /// A probe succeeded.
    pub fn success(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = match *state {
            // Up: a success clears the failure streak.
            State::Up { .. } => State::Up { failures: 0 },
            // Down: `rise` successes in a row bring it back.
            State::Down { successes } if successes + 1 >= self.options.rise => {
                self.up.store(true, Ordering::Relaxed);
                self.metrics.up.set(1);
                self.metrics.went_up.inc();
                tracing::info!(server = %self.name, rise = self.options.rise, "server is up");
                State::Up { failures: 0 }
            }
            State::Down { successes } => State::Down {
                successes: successes + 1,
            },
        };
    }

    /// A probe or live traffic failed; `why` says how (for the log line of a state change).
    pub fn failure(&self, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = match *state {
            // Up: `fall` failures in a row take it down.
            State::Up { failures } if failures + 1 >= self.options.fall => {
                self.up.store(false, Ordering::Relaxed);
                self.metrics.up.set(0);
                self.metrics.went_down.inc();
                tracing::warn!(server = %self.name, fall = self.options.fall, reason = why, "server is down");
                State::Down { successes: 0 }
            }
            State::Up { failures } => State::Up {
                failures: failures + 1,
            },
            // Down: a failure restarts the count of successes.
            State::Down { .. } => State::Down { successes: 0 },
        };
    }

    /// Whether a reply frame says the server cannot serve (passive failure signals).
    #[inline]
    pub fn is_failure_reply(frame: &[u8]) -> bool {
        frame.first() == Some(&b'-')
            && (frame.starts_with(b"-LOADING")
                || frame.starts_with(b"-MASTERDOWN")
                || frame.starts_with(b"-READONLY"))
    }
}

/// Why an active probe failed. The text is the failure's reason in the log line of a state
/// change.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// No control connection: a bad address, a refused or unreachable server, a failed TLS
    /// handshake (a certificate expired, not trusted or for another name).
    #[error("health probe failed: {0}")]
    Dial(String),
    /// Connected, but the connection's set-up failed.
    #[error("health probe failed: {0}")]
    Connect(redis::RedisError),
    /// The server refused the credentials (its words are redis-rs's, which never quote them).
    #[error("health probe failed: authentication failed: {0}")]
    Auth(redis::RedisError),
    /// No password to authenticate with (the password file was never readable).
    #[error("health probe failed: {0}")]
    Credentials(String),
    /// Connected, but PING failed: an error reply (`-LOADING`), a reset connection.
    #[error("health probe failed: {0}")]
    Ping(redis::RedisError),
    /// PING answered something other than PONG.
    #[error("health probe failed: unexpected PING reply {0:?}")]
    Reply(String),
    /// No answer within the probe's timeout.
    #[error("health probe timed out after {0:?}")]
    Timeout(Duration),
}

/// Probes `addr` every interval until `stop` is cancelled, feeding `health`; every control
/// connection authenticates with `credentials`.
pub async fn probe(
    health: Arc<Health>,
    addr: Arc<str>,
    credentials: Arc<Credentials>,
    tls: Option<ServerTls>,
    stop: tokio_util::sync::CancellationToken,
) {
    let options = health.options().clone();
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match probe_once(&mut con, &addr, &credentials, tls.as_ref(), &health).await {
            Ok(version) => {
                if let Some(v) = version {
                    health.set_version(v);
                }
                health.success()
            }
            Err(e) => {
                // A failed probe's connection is not trusted again: the next one dials anew.
                con = None;
                if let ProbeError::Auth(_) = e {
                    health.metrics.auth_failures.inc();
                    tracing::warn!(server = %health.name, %addr, error = %e, "authentication failed: the server refused the health probe's credentials");
                }
                health.failure(&credentials.redact(&e.to_string()));
            }
        }
    }
}

/// One probe: PING over `con` (dialled first if there is none), within the probe's timeout.
async fn probe_once(
    con: &mut Option<redis::aio::MultiplexedConnection>,
    addr: &str,
    credentials: &Credentials,
    tls: Option<&ServerTls>,
    health: &Health,
) -> Result<Option<Arc<str>>, ProbeError> {
    let options = &health.options;
    let ping = ping(con, addr, credentials, tls, health);
    match tokio::time::timeout(options.timeout, ping).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(options.timeout)),
    }
}

/// PINGs the server; on a new connection it first reads the server's Redis version (returned).
async fn ping(
    con: &mut Option<redis::aio::MultiplexedConnection>,
    addr: &str,
    credentials: &Credentials,
    tls: Option<&ServerTls>,
    health: &Health,
) -> Result<Option<Arc<str>>, ProbeError> {
    let mut version = None;
    let c = match con {
        Some(c) => c,
        None => {
            let auth = credentials
                .current(&health.name)
                .map_err(ProbeError::Credentials)?;
            let c = con.insert(connect(addr, auth, tls, &health.options).await?);
            let info: Result<String, _> = redis::cmd("INFO").arg("server").query_async(c).await;
            match info {
                Ok(info) => {
                    version = redis_version(&info);
                    let has_data = has_data(c).await;
                    health.set_identity(info_field(&info, "run_id"), has_data);
                }
                // Busy running a script: alive; the version is read at the next connection.
                Err(e) if is_busy(&e) => {}
                Err(e) if e.code() == Some("NOAUTH") => return Err(ProbeError::Auth(e)),
                Err(e) => return Err(ProbeError::Ping(e)),
            }
            c
        }
    };
    let pong: String = match redis::cmd("PING").query_async(c).await {
        Ok(pong) => pong,
        // A script or function runs past busy-reply-threshold: the server answers, it is up;
        // clients get its -BUSY until SCRIPT KILL or FUNCTION KILL (through Keyway too).
        Err(e) if is_busy(&e) => return Ok(version),
        // The server wants credentials Keyway does not have (or no longer accepts).
        Err(e) if e.code() == Some("NOAUTH") => return Err(ProbeError::Auth(e)),
        Err(e) => return Err(ProbeError::Ping(e)),
    };
    if pong != "PONG" {
        return Err(ProbeError::Reply(pong));
    }
    // The server's clock against this process's (two-phase prepares carry a deadline in the
    // server's time). Its failure says nothing about health: the PING answered.
    let sent = Instant::now();
    if let Ok((secs, micros)) = redis::cmd("TIME").query_async::<(i64, i64)>(c).await {
        if sent.elapsed() <= OFFSET_RTT {
            let server_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
            health
                .clock_offset_ms
                .store(server_ms.saturating_sub(epoch_ms()), Ordering::Relaxed);
        }
    }
    Ok(version)
}

/// Whether a reply is redis-server's `-BUSY Redis is busy running a script...`: a live server
/// that runs a long script, not a failure.
fn is_busy(e: &redis::RedisError) -> bool {
    e.code() == Some("BUSY")
}

/// `redis_version` of an `INFO server` text.
fn redis_version(info: &str) -> Option<Arc<str>> {
    info_field(info, "redis_version")
}

/// A field of an `INFO` text.
fn info_field(info: &str, field: &str) -> Option<Arc<str>> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| Arc::from(v.trim()))
}

/// Keys a keyspace may hold and still count as empty when they are all Keyway's own.
const FEW_KEYS: u64 = 64;

/// Whether the server holds keys other than Keyway's own bookkeeping (`__keyway:*`): DBSIZE,
/// and when it is small, a look at the keys themselves. `None` when it cannot be told.
async fn has_data(c: &mut redis::aio::MultiplexedConnection) -> Option<bool> {
    let size: u64 = redis::cmd("DBSIZE").query_async(c).await.ok()?;
    if size == 0 || size > FEW_KEYS {
        return Some(size > 0);
    }
    let mut cursor: u64 = 0;
    // Bounded: at most FEW_KEYS keys, so a few rounds; a keyspace that grows meanwhile is data.
    for _ in 0..16 {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(FEW_KEYS)
            .query_async(c)
            .await
            .ok()?;
        if keys.iter().any(|k| !k.starts_with(b"__keyway:")) {
            return Some(true);
        }
        if next == 0 {
            return Some(false);
        }
        cursor = next;
    }
    Some(true)
}

/// A control connection to server `name` at `addr` (redis-rs, authenticated with
/// `credentials`, over TLS with `tls`), for background work beside the data path (resync).
///
/// # Errors
///
/// [`ProbeError`] when it cannot connect or authenticate; its text names no secret.
pub(crate) async fn control_connection(
    name: &str,
    addr: &str,
    credentials: &Credentials,
    tls: Option<&ServerTls>,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, ProbeError> {
    let auth = credentials.current(name).map_err(ProbeError::Credentials)?;
    let options = HealthOptions {
        interval: timeout,
        timeout,
        fall: 1,
        rise: 1,
    };
    connect(addr, auth, tls, &options).await
}

/// Opens the prober's control connection to `addr` (`host:port`), authenticated with `auth`,
/// over TLS when the pool has `[pool.tls]` (dialled by [`crate::tls::dial`], as every server
/// connection is). The credentials go into redis-rs's `RedisConnectionInfo`, never into a URL
/// string (which its errors and `Debug` could show).
async fn connect(
    addr: &str,
    auth: Option<Auth>,
    tls: Option<&ServerTls>,
    options: &HealthOptions,
) -> Result<redis::aio::MultiplexedConnection, ProbeError> {
    let stream = crate::tls::dial(addr, options.timeout, tls)
        .await
        .map_err(ProbeError::Dial)?;
    let mut settings = redis::RedisConnectionInfo::default();
    if let Some(auth) = auth {
        if let Some(user) = auth.username {
            settings = settings.set_username(user);
        }
        settings = settings.set_password(auth.password.expose());
    }
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.timeout))
        .set_response_timeout(Some(options.timeout));
    let (con, driver) =
        redis::aio::MultiplexedConnection::new_with_config(&settings, stream, config)
            .await
            .map_err(|e| {
                if e.kind() == redis::ErrorKind::AuthenticationFailed {
                    ProbeError::Auth(e)
                } else {
                    ProbeError::Connect(e)
                }
            })?;
    // Ends when the connection is dropped.
    tokio::spawn(driver);
    Ok(con)
}

#[cfg(test)]
mod tests;
