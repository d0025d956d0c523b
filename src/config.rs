//! The configuration: its schema, its layering and its checks.
//!
//! Layering follows figment: built-in defaults < the TOML file < `KEYWAY_*` environment variables
//! (`KEYWAY_LISTEN`, and `__` for nesting: `KEYWAY_POOL__TIMEOUT=2s`). Unknown keys are errors at
//! every level, and every error names the key and, when it comes from the file, its line: an
//! operator who mistypes `conections` learns it from `keyway check`, not from a silent default.
//!
//! Every key is documented here and in the annotated example `config/keyway.toml`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::credentials::{PasswordSource, Secret};
use crate::routing::HashTag;

/// The environment variable a password may come from (`pool.password`); a password file wins
/// over it.
pub const PASSWORD_ENV: &str = "KEYWAY_POOL__PASSWORD";

/// Everything wrong with a configuration, as a message that names the key and where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type (the message
    /// carries the line and column).
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// An environment variable could not be applied.
    #[error("environment: {0}")]
    Env(String),
    /// The values parse but do not make a usable pool.
    #[error("{location}key `{key}`: {message}")]
    Invalid {
        key: String,
        location: String,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect (`host:port`). Default `127.0.0.1:6380`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin HTTP address (metrics, health, topology). Default `127.0.0.1:9380`.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// A file holding the bearer token that the admin API's mutating endpoints
    /// (`PUT /topology`) require; without it they are off. Read at each such request, so that
    /// a rotated Kubernetes Secret takes effect without a restart. Default none.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Protected mode, as redis-server has it: while clients need no password (no `[[users]]`,
    /// or a `default` user that is on with `nopass`), a client that connects from an address
    /// other than loopback gets `-DENIED` and is closed.
    /// Set `false` where something else decides who can connect (a Kubernetes NetworkPolicy, a
    /// firewall). Default `true`.
    #[serde(default = "default_protected_mode")]
    pub protected_mode: bool,
    /// On SIGTERM/SIGINT: how long to wait for clients to get their in-flight replies before
    /// exiting anyway. Default `10s`.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Runtime threads serving clients. `1` (the default) runs everything on one thread, as a
    /// sidecar should: no wake-up crosses threads, which measured faster and cheaper in CPU per
    /// request than 2 worker threads on a 2-core machine (docs/benchmarks.md). More threads
    /// use tokio's work-stealing scheduler.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// A second client address that speaks TLS (`host:port`), beside the plain `listen`.
    /// Needs `[tls]`. Default none.
    #[serde(default)]
    pub tls_listen: Option<String>,
    /// The TLS settings of `tls_listen` (docs/security.md). Default none.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The pool of redis-servers and how keys are spread over it.
    pub pool: PoolConfig,
    /// Limits on what clients may make Keyway hold.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[[users]]`: the users clients authenticate as (`AUTH`, `HELLO ... AUTH`), with Redis
    /// ACL rules. None (the default): clients are not authenticated.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Commands refused to every client, whatever its user's categories allow, unless the
    /// user's rules name the command itself (`+flushall`). Names as Redis 7 spells them
    /// (`flushall`, `config|get`). Default none.
    #[serde(default)]
    pub refused_commands: Vec<String>,
}

/// `[[users]]`: one client user.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name; `default` is the user of one-argument `AUTH` and of connections that
    /// have not authenticated.
    pub name: String,
    /// SHA-256 hashes of the user's passwords, as Redis writes them: `#<64 lowercase hex>`.
    #[serde(default)]
    pub passwords: Vec<String>,
    /// A file holding the password in clear (its whole content, trailing line ends stripped),
    /// or `#<hash>` lines; read at each `AUTH` of this user, the last good read kept.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Redis ACL rules, separated by spaces: `"on ~app:* +@read -@dangerous"`.
    #[serde(default)]
    pub rules: String,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("passwords", &self.passwords.len())
            .field("password_file", &self.password_file)
            .field("rules", &self.rules)
            .finish()
    }
}

impl Config {
    /// Compiles `[[users]]` and `refused_commands` into the users clients authenticate as.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the user and the rule (and the line) of the first
    /// malformed rule, an unknown refused command, or a user named twice.
    pub fn users(&self, text: Option<&str>) -> Result<crate::acl::Users, ConfigError> {
        let invalid = |key: String, needle: &str, message: String| {
            let line = text.and_then(|t| line_of(t, needle));
            ConfigError::Invalid {
                key,
                location: line.map(|l| format!("line {l}: ")).unwrap_or_default(),
                message,
            }
        };
        let mut refused = Vec::new();
        for name in &self.refused_commands {
            match crate::command::lookup(&name.to_ascii_lowercase()) {
                Some(spec) => {
                    refused.push(spec);
                    if spec.traits.contains(crate::command::Traits::SUBCOMMANDS) {
                        let prefix = format!("{}|", spec.name);
                        refused.extend(
                            crate::command::all_specs().filter(|s| s.name.starts_with(&prefix)),
                        );
                    }
                }
                None => {
                    return Err(invalid(
                        "refused_commands".into(),
                        "refused_commands",
                        format!("unknown command '{name}'"),
                    ))
                }
            }
        }
        let mut list = Vec::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty()
                || u.name
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(invalid(
                    key,
                    "name",
                    "a user name must be non-empty, without spaces or control characters".into(),
                ));
            }
            if self.users.iter().take(i).any(|o| o.name == u.name) {
                return Err(invalid(
                    key,
                    &u.name,
                    format!("user '{}' is defined twice", u.name),
                ));
            }
            let user = crate::acl::User::compile(
                &u.name,
                &u.rules,
                &u.passwords,
                u.password_file.clone(),
                &refused,
            )
            .map_err(|e| {
                let needle = if u.passwords.contains(&e.rule) {
                    e.rule.as_str()
                } else {
                    u.rules.as_str()
                };
                invalid(
                    format!("{key}.rules"),
                    if needle.is_empty() { &u.name } else { needle },
                    format!("user '{}': {e}", u.name),
                )
            })?;
            if let Some(path) = &u.password_file {
                if crate::credentials::read_secret_file(path).is_err() {
                    return Err(invalid(
                        format!("{key}.password_file"),
                        "password_file",
                        format!("user '{}': {} cannot be read", u.name, path.display()),
                    ));
                }
            }
            list.push(user);
        }
        if list.is_empty() && !refused.is_empty() {
            // No users: every client is an unauthenticated `default` user with every right but
            // the refused commands.
            let user =
                crate::acl::User::compile("default", "on nopass ~* &* +@all", &[], None, &refused)
                    .map_err(|e| {
                        invalid("refused_commands".into(), "refused_commands", e.to_string())
                    })?;
            list.push(user);
        }
        Ok(crate::acl::Users::new(list))
    }
}

/// `[pool]`: the servers and the policies applied to them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Copies of each slot: each slot lives on the first `replicas` servers of its ranking.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Hash tag delimiters, two characters (`"{}"` as Redis Cluster); `""` disables tags.
    #[serde(default = "default_hash_tag")]
    pub hash_tag: String,
    /// Pipelined connections per server, shared by all clients. Default 1: on one runtime
    /// thread a second connection adds no parallelism and halves the batches each write and
    /// read carries; with `threads > 1`, as many connections as threads let them write in
    /// parallel.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Per-request deadline on a server; also the connect timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// After a topology swap, for this long a GET that misses on a slot's new primary is tried
    /// on its previous primary, and a hit is copied over with its TTL. `0s` disables.
    #[serde(default, with = "humantime_serde")]
    pub warmup: Duration,
    /// With `replicas > 1`, the most keys per second a resync copies onto a server that
    /// restarted or came back empty (DUMP on a healthy replica, RESTORE on it; see
    /// `docs/failover.md`). Between 1 and 1,000,000. Default 5,000.
    #[serde(default = "default_resync_keys_per_second")]
    pub resync_keys_per_second: u32,
    /// How a read picks one replica of its slot.
    #[serde(default)]
    pub read: ReadPolicy,
    /// Which replicas a write goes to, and when it counts as done.
    #[serde(default)]
    pub write: WriteMode,
    /// Health checks and failover.
    #[serde(default)]
    pub health: HealthConfig,
    /// Two-phase commit settings.
    #[serde(default)]
    pub two_phase: TwoPhaseConfig,
    /// The ACL user Keyway authenticates to the servers as (`AUTH username password`).
    /// Default none: Redis's `default` user (`AUTH password`, as Redis < 6 understands it).
    /// Needs a password. Overridable per server.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password Keyway authenticates to the servers with (trailing line
    /// ends stripped, as a mounted Kubernetes Secret has them). Read at every new connection,
    /// so that a rotated Secret applies at the next reconnect; while it cannot be read the last
    /// password read stays in use. Wins over `KEYWAY_POOL__PASSWORD`. Overridable per server.
    /// Default none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password from the environment variable `KEYWAY_POOL__PASSWORD`, never from a file
    /// or a `PUT /topology` document (refused there: a config file is not a secret). Never
    /// shown: its `Debug` prints `"<redacted>"`, and it is not serialized.
    #[serde(default, skip_serializing)]
    pub password: Option<Secret>,
    /// The servers. Order does not matter: keys follow names, not positions.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    /// TLS towards the servers: every connection to them (forwarding, health probes,
    /// two-phase, sweeps, blocking and pub/sub) speaks TLS when this is set. Default none.
    #[serde(default)]
    pub tls: Option<PoolTlsConfig>,
}

/// `[tls]`: Keyway's TLS server side, on `tls_listen`. The files are re-read when they change:
/// new handshakes use the new certificate, established connections keep theirs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Keyway's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that clients' certificates must chain to: with it, a client
    /// without a valid certificate is refused during the handshake (mutual TLS), and a client
    /// with one is admitted from any address under `protected_mode`. Default none.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// A client that has not finished its handshake this long after connecting is closed.
    /// Default `10s`.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[pool.tls]`: Keyway's TLS client side towards the servers. The files are re-read when they
/// change (new connections use them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PoolTlsConfig {
    /// CA certificates (PEM) the servers' certificates must chain to. Required unless
    /// `insecure_skip_verify`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name the servers' certificates must carry. Default: the host part of each
    /// server's address (an IP address must be in the certificate's IP SANs). Overridable per
    /// server (`tls_server_name`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM) for servers that require one (`tls-auth-clients yes`).
    /// Goes with `key_file`. Default none.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM). Default none.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Verify nothing about the servers' certificates (encrypted, not authenticated: anyone in
    /// the path can read and change the traffic). Logged as a warning at start and at every
    /// reload. Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

pub use crate::routing::ReadPolicy;

/// `pool.write`: where a write goes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// The slot's primary only.
    Primary,
    /// Every replica in parallel; success only if every replica took it.
    #[default]
    All,
    /// Every replica in parallel; success once a majority took it.
    Quorum,
    /// Atomic: every replica takes the write or none does, also across servers (two-phase
    /// commit; see `docs/two-phase.md`).
    TwoPhase,
}

/// `[pool.two_phase]`: two-phase commit settings (used with `write = "two_phase"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TwoPhaseConfig {
    /// A lock older than this belongs to a transaction presumed dead, and is resolved by the
    /// next write that meets it or by the sweep. Default `5s`.
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// How often each Keyway looks for stale transactions on every server. Default `1s`.
    #[serde(default = "default_sweep_interval", with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Attempts of a write that meets locked keys before it answers `-TRYAGAIN`. Default 8.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

impl Default for TwoPhaseConfig {
    fn default() -> Self {
        TwoPhaseConfig {
            lock_timeout: default_lock_timeout(),
            sweep_interval: default_sweep_interval(),
            retries: default_retries(),
        }
    }
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_sweep_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_retries() -> u32 {
    8
}

/// `pool.failover`: what happens to a down server's slots when `replicas = 1`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Failover {
    /// Its slots go to the next server of their ranking (a cache).
    #[default]
    Next,
    /// Its slots answer an error until it is back.
    None,
}

/// `[pool.health]`: active checks and the up/down state machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between PINGs to each server. Default `1s`.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Deadline of one PING. Default `250ms`.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failures (probes or live traffic) that mark a server down. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Consecutive successful probes that mark a down server up. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// With `replicas = 1`: `next` sends a down server's slots to the next server of their
    /// ranking; `none` answers an error for them. Default `next`.
    #[serde(default)]
    pub failover: Failover,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            fall: default_fall(),
            rise: default_rise(),
            failover: Failover::default(),
        }
    }
}

fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    2
}

/// `[[pool.servers]]`: one redis-server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Identity used for hashing. Keep it when the address changes and the keys stay put.
    pub name: String,
    /// `host:port` of the redis-server.
    pub addr: String,
    /// Relative share of the slots (rendezvous weight), > 0. Default 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// This server's ACL user, instead of `pool.username`. Default: the pool's.
    #[serde(default)]
    pub username: Option<String>,
    /// This server's password file, instead of `pool.password_file` or
    /// `KEYWAY_POOL__PASSWORD`. Default: the pool's.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The name this server's certificate must carry, instead of `pool.tls.server_name`.
    /// Default: the pool's, else the host part of `addr`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// `[limits]`: protocol limits applied to client input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest bulk string a client may send, in bytes (Redis's proto-max-bulk-len). Default 512 MiB.
    #[serde(default = "default_max_bulk")]
    pub max_bulk_len: usize,
    /// Most arguments in one command. Default 1,048,576.
    #[serde(default = "default_max_args")]
    pub max_args: usize,
    /// Longest inline command line, in bytes. Default 64 KiB.
    #[serde(default = "default_max_inline")]
    pub max_inline_len: usize,
    /// Most commands of one client waiting for their replies; past it Keyway stops reading
    /// from that client until replies drain. Default 4096.
    #[serde(default = "default_max_pipeline")]
    pub max_pipeline: usize,
    /// Most client connections at once; past it a new client gets an error and is closed.
    /// Default 10000.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Most reply bytes waiting for a client that does not read them; past it the client is
    /// disconnected (like redis-server's client-output-buffer-limit). Default 64 MiB.
    #[serde(default = "default_max_client_output")]
    pub max_client_output: usize,
    /// Close a client connection idle this long (nothing pending, nothing received); `0s`
    /// disables. Default `0s`.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most server connections held for clients at once (a client's `WATCH` holds one until
    /// EXEC, DISCARD, UNWATCH or its departure); past it WATCH answers an error. Default 1024.
    #[serde(default = "default_max_transactions")]
    pub max_transactions: usize,
    /// Most clients blocked at once on one server (`BLPOP`, `XREAD ... BLOCK`, ...), each on a
    /// server connection of its own while it blocks; past it the blocking command answers an
    /// error. Default 1024.
    #[serde(default = "default_max_blocked_per_server")]
    pub max_blocked_per_server: usize,
    /// Most bytes buffered for all clients together (their read and reply buffers); past it
    /// the client buffering the most is disconnected, with an error if it takes one. `0`
    /// disables the bound. Default 1 GiB.
    #[serde(default = "default_max_memory")]
    pub max_memory: usize,
}

fn default_max_memory() -> usize {
    1024 * 1024 * 1024
}

fn default_max_transactions() -> usize {
    1024
}

fn default_max_blocked_per_server() -> usize {
    1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_bulk_len: default_max_bulk(),
            max_args: default_max_args(),
            max_inline_len: default_max_inline(),
            max_pipeline: default_max_pipeline(),
            max_clients: default_max_clients(),
            max_client_output: default_max_client_output(),
            idle_timeout: Duration::ZERO,
            max_transactions: default_max_transactions(),
            max_blocked_per_server: default_max_blocked_per_server(),
            max_memory: default_max_memory(),
        }
    }
}

fn default_protected_mode() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:6380".into()
}
fn default_admin() -> String {
    "127.0.0.1:9380".into()
}
fn default_replicas() -> usize {
    1
}
fn default_hash_tag() -> String {
    "{}".into()
}
fn default_connections() -> usize {
    1
}
fn default_resync_keys_per_second() -> u32 {
    5_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_weight() -> f64 {
    1.0
}
fn default_max_bulk() -> usize {
    512 * 1024 * 1024
}
fn default_max_args() -> usize {
    1024 * 1024
}
fn default_max_inline() -> usize {
    64 * 1024
}
fn default_max_pipeline() -> usize {
    4096
}
fn default_max_clients() -> usize {
    10_000
}
fn default_max_client_output() -> usize {
    64 * 1024 * 1024
}
fn default_threads() -> usize {
    1
}

fn default_drain() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Loads `path`, applies `KEYWAY_*` environment variables, and validates the result.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the offending key (and its line when it is in the file).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_with_env(&text, path)
    }

    /// Parses TOML text (as if read from `path`) with environment overrides, then validates.
    ///
    /// # Errors
    ///
    /// See [`Config::load`].
    pub fn from_toml_with_env(text: &str, path: &Path) -> Result<Config, ConfigError> {
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let link = name
                .strip_prefix("KEYWAY_")
                .is_some_and(|key| is_service_link(&key.to_ascii_lowercase()));
            if link {
                tracing::warn!(
                    variable = %name,
                    "ignored: a Kubernetes service link (a Service named keyway*), not a Keyway setting"
                );
            }
        }
        // The toml crate reports line and column for syntax errors, unknown keys and type
        // errors, which figment's merged view no longer knows: check the file alone first.
        let file = toml::from_str::<Config>(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        file.pool.refuse_inline_password(Some(text))?;
        // The password is not read through figment: it would parse the value (a password
        // `123` would become a number, `[a]` an array) and its errors may quote it.
        let mut config: Config = Figment::new()
            .merge(Toml::string(text))
            .merge(
                Env::prefixed("KEYWAY_")
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        !is_service_link(&key) && key != "pool__password"
                    })
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Env(e.to_string()))?;
        config.pool.password = env_password()?;
        config.validate(Some(text))?;
        Ok(config)
    }

    /// Settings that are valid but probably not what was meant, one sentence each: printed by
    /// `keyway check` and logged when Keyway starts.
    pub fn warnings(&self) -> Vec<String> {
        self.pool.warnings()
    }

    /// Checks what the types cannot: a usable, unambiguous pool.
    ///
    /// `text` is the file the config came from, used to point at the line of a bad value.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for the first problem found.
    pub fn validate(&self, text: Option<&str>) -> Result<(), ConfigError> {
        let invalid = |key: String, needle: Option<&str>, message: String| {
            let line = needle.and_then(|n| text.and_then(|t| line_of(t, n)));
            ConfigError::Invalid {
                key,
                location: line.map(|l| format!("line {l}: ")).unwrap_or_default(),
                message,
            }
        };
        check_addr(&self.listen).map_err(|m| invalid("listen".into(), Some("listen"), m))?;
        check_addr(&self.admin).map_err(|m| invalid("admin".into(), Some("admin"), m))?;
        // Port 0 asks the system for a free port, a different one for each.
        if self.listen == self.admin && !self.listen.ends_with(":0") {
            return Err(invalid(
                "admin".into(),
                Some("admin"),
                format!(
                    "must differ from listen ({}): the admin HTTP server and the client port cannot share an address",
                    self.listen
                ),
            ));
        }
        if !(1..=1024).contains(&self.threads) {
            return Err(invalid(
                "threads".into(),
                Some("threads"),
                format!("must be between 1 and 1024, not {}", self.threads),
            ));
        }
        self.pool.validate(text)?;
        self.pool.check_password_files(text)?;
        self.check_tls(text)?;
        if self.pool.tls.is_some() {
            self.pool.tls_connector()?;
            for s in &self.pool.servers {
                self.pool.tls_server_name(s)?;
            }
        }
        self.users(text)?;
        if let Some(path) = &self.admin_token_file {
            // Only whether a token is there: the token itself is never shown.
            let usable =
                crate::credentials::read_secret_file(path).is_ok_and(|t| !t.trim().is_empty());
            if !usable {
                return Err(invalid(
                    "admin_token_file".into(),
                    Some("admin_token_file"),
                    format!("{} cannot be read or holds no token", path.display()),
                ));
            }
        }
        if self.limits.max_clients == 0 {
            return Err(invalid(
                "limits.max_clients".into(),
                Some("max_clients"),
                "must be at least 1".into(),
            ));
        }
        let limits = [
            ("max_pipeline", self.limits.max_pipeline),
            ("max_bulk_len", self.limits.max_bulk_len),
            ("max_args", self.limits.max_args),
            ("max_inline_len", self.limits.max_inline_len),
            ("max_client_output", self.limits.max_client_output),
            ("max_transactions", self.limits.max_transactions),
            ("max_blocked_per_server", self.limits.max_blocked_per_server),
        ];
        if let Some((name, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(
                format!("limits.{name}"),
                Some(name),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `tls_listen` and `[tls]` go together, and `[tls]`'s files load (a certificate and the
    /// key that matches it, a client CA).
    fn check_tls(&self, text: Option<&str>) -> Result<(), ConfigError> {
        let invalid = |key: &str, needle: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            location: text
                .and_then(|t| line_of(t, needle))
                .map(|l| format!("line {l}: "))
                .unwrap_or_default(),
            message,
        };
        match (&self.tls_listen, &self.tls) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(invalid(
                "tls_listen",
                "tls_listen",
                "needs a [tls] section with cert_file and key_file".into(),
            )),
            (None, Some(_)) => Err(invalid(
                "tls",
                "[tls]",
                "[tls] is set but tls_listen is not: set the address TLS clients connect to".into(),
            )),
            (Some(addr), Some(tls)) => {
                check_addr(addr).map_err(|m| invalid("tls_listen", "tls_listen", m))?;
                if !addr.ends_with(":0") && (*addr == self.listen || *addr == self.admin) {
                    return Err(invalid(
                        "tls_listen",
                        "tls_listen",
                        format!("must differ from listen and admin ({addr})"),
                    ));
                }
                if tls.handshake_timeout.is_zero() {
                    return Err(invalid(
                        "tls.handshake_timeout",
                        "handshake_timeout",
                        "must be more than 0s".into(),
                    ));
                }
                crate::tls::Acceptor::new(
                    tls.cert_file.clone(),
                    tls.key_file.clone(),
                    tls.client_ca_file.clone(),
                )
                .map(drop)
                .map_err(|e| invalid("tls", "cert_file", e.to_string()))
            }
        }
    }
}

/// `KEYWAY_POOL__PASSWORD`, taken as it is (not parsed), or `None` when unset.
///
/// # Errors
///
/// [`ConfigError::Env`] when it is set but empty or not UTF-8 (the message never quotes it).
pub fn env_password() -> Result<Option<Secret>, ConfigError> {
    match std::env::var(PASSWORD_ENV) {
        Ok(v) if v.is_empty() => Err(ConfigError::Env(format!(
            "{PASSWORD_ENV} is set but empty: unset it, or give the password"
        ))),
        Ok(v) => Ok(Some(Secret::new(&v))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::Env(format!(
            "{PASSWORD_ENV} is not valid UTF-8"
        ))),
    }
}

impl PoolConfig {
    /// Pool settings that are valid but probably not what was meant, one sentence each (see
    /// [`Config::warnings`]; also logged when a new topology is swapped in).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.write == WriteMode::Quorum && self.replicas == 2 {
            out.push(
                "pool.write = \"quorum\" with replicas = 2 needs both replicas (a majority of 2 is 2): it behaves like write = \"all\", and refuses writes while either replica is down; use replicas = 3 for a quorum that keeps taking writes while one replica is down"
                    .to_string(),
            );
        }
        out
    }

    /// Where server `s`'s password comes from: its own `password_file`, else the pool's, else
    /// `KEYWAY_POOL__PASSWORD` (a file wins over the environment), else none.
    pub fn password_source(&self, s: &ServerConfig) -> PasswordSource {
        match (&s.password_file, &self.password_file, &self.password) {
            (Some(path), _, _) | (None, Some(path), _) => PasswordSource::File(path.clone()),
            (None, None, Some(secret)) => PasswordSource::Value(secret.clone()),
            (None, None, None) => PasswordSource::None,
        }
    }

    /// Server `s`'s ACL user: its own `username`, else the pool's, else none (`default`).
    pub fn username<'a>(&'a self, s: &'a ServerConfig) -> Option<&'a str> {
        s.username.as_deref().or(self.username.as_deref())
    }

    /// Refuses a `password` written in a config file or a `PUT /topology` document (`text`,
    /// when known, to name its line), without quoting it: a config file is not a secret.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for `pool.password`.
    pub fn refuse_inline_password(&self, text: Option<&str>) -> Result<(), ConfigError> {
        if self.password.is_none() {
            return Ok(());
        }
        let line = text.and_then(|t| {
            t.lines()
                .position(|l| {
                    let l = l.trim_start();
                    l.starts_with("password") && !l.starts_with("password_file")
                })
                .map(|i| i + 1)
        });
        Err(ConfigError::Invalid {
            key: "pool.password".into(),
            location: line.map(|l| format!("line {l}: ")).unwrap_or_default(),
            message: format!(
                "a password is not taken from the configuration (whoever reads it would see it): put it in a file named by pool.password_file, or in the environment variable {PASSWORD_ENV}"
            ),
        })
    }

    /// The TLS client side towards the servers, loaded from `[pool.tls]`'s files (`None`:
    /// plain TCP).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when a file does not load or the settings do not go together.
    pub fn tls_connector(&self) -> Result<Option<Arc<crate::tls::Connector>>, ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let connector = crate::tls::Connector::new(
            tls.ca_file.clone(),
            tls.cert_file.clone(),
            tls.key_file.clone(),
            tls.insecure_skip_verify,
        )
        .map_err(|e| ConfigError::Invalid {
            key: "pool.tls".into(),
            location: String::new(),
            message: e.to_string(),
        })?;
        Ok(Some(Arc::new(connector)))
    }

    /// The name server `s`'s certificate must carry (see [`crate::tls::server_name`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when it is not a DNS name or an IP address.
    pub fn tls_server_name(
        &self,
        s: &ServerConfig,
    ) -> Result<rustls::pki_types::ServerName<'static>, ConfigError> {
        let configured = s
            .tls_server_name
            .as_deref()
            .or(self.tls.as_ref().and_then(|t| t.server_name.as_deref()));
        crate::tls::server_name(configured, &s.addr).map_err(|e| ConfigError::Invalid {
            key: format!("pool.servers '{}' tls server name", s.name),
            location: String::new(),
            message: e.to_string(),
        })
    }

    /// Checks that every password file named (the pool's and each server's) can be read now
    /// and holds a password, without showing it.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the key and the file.
    pub fn check_password_files(&self, text: Option<&str>) -> Result<(), ConfigError> {
        let pool = self
            .password_file
            .as_ref()
            .map(|p| ("pool.password_file".to_string(), p));
        let servers = self.servers.iter().enumerate().filter_map(|(i, s)| {
            let p = s.password_file.as_ref()?;
            Some((format!("pool.servers[{i}].password_file"), p))
        });
        for (key, path) in pool.into_iter().chain(servers) {
            if let Err(e) = crate::credentials::read_password_file(path) {
                let needle = path.to_string_lossy();
                let line = text.and_then(|t| line_of(t, &needle));
                return Err(ConfigError::Invalid {
                    key,
                    location: line.map(|l| format!("line {l}: ")).unwrap_or_default(),
                    message: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// See [`Config::validate`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for the first problem found.
    pub fn validate(&self, text: Option<&str>) -> Result<(), ConfigError> {
        let invalid = |key: String, needle: Option<String>, message: String| {
            let line = needle.and_then(|n| text.and_then(|t| line_of(t, &n)));
            ConfigError::Invalid {
                key,
                location: line.map(|l| format!("line {l}: ")).unwrap_or_default(),
                message,
            }
        };
        if self.servers.is_empty() {
            return Err(invalid(
                "pool.servers".into(),
                None,
                "the pool has no servers: add at least one [[pool.servers]] with a name and an addr"
                    .into(),
            ));
        }
        if self.servers.len() > usize::from(u16::MAX) {
            return Err(invalid(
                "pool.servers".into(),
                None,
                format!("at most {} servers", u16::MAX),
            ));
        }
        if self.replicas == 0 || self.replicas > self.servers.len() {
            return Err(invalid(
                "pool.replicas".into(),
                Some("replicas".into()),
                format!(
                    "must be between 1 and the number of servers ({}), got {}",
                    self.servers.len(),
                    self.replicas
                ),
            ));
        }
        if self.connections == 0 || self.connections > 64 {
            return Err(invalid(
                "pool.connections".into(),
                Some("connections".into()),
                format!("must be between 1 and 64, got {}", self.connections),
            ));
        }
        if !(1..=1_000_000).contains(&self.resync_keys_per_second) {
            return Err(invalid(
                "pool.resync_keys_per_second".into(),
                Some("resync_keys_per_second".into()),
                format!(
                    "must be between 1 and 1000000, got {}",
                    self.resync_keys_per_second
                ),
            ));
        }
        // Shorter than these, a setting is a typo ("1ns" for "1s"): probes or sweeps in a busy
        // loop, or deadlines no server can meet.
        let at_least = [
            ("pool.timeout", "timeout", self.timeout, MIN_DEADLINE),
            (
                "pool.health.interval",
                "interval",
                self.health.interval,
                MIN_PERIOD,
            ),
            (
                "pool.health.timeout",
                "timeout",
                self.health.timeout,
                MIN_DEADLINE,
            ),
            (
                "pool.two_phase.lock_timeout",
                "lock_timeout",
                self.two_phase.lock_timeout,
                MIN_PERIOD,
            ),
            (
                "pool.two_phase.sweep_interval",
                "sweep_interval",
                self.two_phase.sweep_interval,
                MIN_PERIOD,
            ),
        ];
        if let Some((key, needle, value, min)) = at_least.iter().find(|(_, _, v, min)| v < min) {
            return Err(invalid(
                (*key).into(),
                Some((*needle).into()),
                format!(
                    "must be at least {}, got {}",
                    humantime::format_duration(*min),
                    humantime::format_duration(*value)
                ),
            ));
        }
        if self.health.fall == 0 || self.health.rise == 0 {
            return Err(invalid(
                "pool.health.fall".into(),
                Some("fall".into()),
                "fall and rise must be at least 1".into(),
            ));
        }
        HashTag::parse(&self.hash_tag).map_err(|e| {
            invalid(
                "pool.hash_tag".into(),
                Some("hash_tag".into()),
                e.to_string(),
            )
        })?;
        let mut names = HashSet::new();
        let mut addrs = std::collections::HashMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            let key = |field: &str| format!("pool.servers[{i}].{field}");
            if s.name.is_empty() {
                return Err(invalid(key("name"), None, "must not be empty".into()));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    Some(format!("\"{}\"", s.name)),
                    format!("duplicate server name \"{}\": names must be unique", s.name),
                ));
            }
            check_addr(&s.addr).map_err(|m| invalid(key("addr"), Some(s.addr.clone()), m))?;
            if let Some(other) = addrs.insert(s.addr.as_str(), s.name.as_str()) {
                return Err(invalid(
                    key("addr"),
                    Some(s.addr.clone()),
                    format!(
                        "servers \"{other}\" and \"{}\" have the same address {}: one redis-server would hold two shares of the keys (and, with replicas, two copies of one slot)",
                        s.name, s.addr
                    ),
                ));
            }
            if let Some(user) = self.username(s) {
                if user.is_empty() || user.contains(char::is_whitespace) {
                    return Err(invalid(
                        key("username"),
                        Some("username".into()),
                        format!("\"{user}\" is not a Redis user name (empty or with spaces)"),
                    ));
                }
                if self.password_source(s) == PasswordSource::None {
                    return Err(invalid(
                        key("username"),
                        Some("username".into()),
                        format!(
                            "user \"{user}\" has no password: set pool.password_file (or this server's password_file), or {PASSWORD_ENV}"
                        ),
                    ));
                }
            }
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return Err(invalid(
                    key("weight"),
                    Some(format!("\"{}\"", s.name)),
                    format!("must be a positive number, got {}", s.weight),
                ));
            }
        }
        Ok(())
    }
}

/// Whether a `KEYWAY_*` variable (its name after the prefix, lowercase) is one of the links
/// Kubernetes injects for a Service whose name starts with `keyway` (`KEYWAY_PORT`,
/// `KEYWAY_PORT_6380_TCP_ADDR`, `KEYWAY_SERVICE_HOST`, `KEYWAY_REDIS_SERVICE_PORT_HTTP`, ...),
/// which are not Keyway settings and must not stop a sidecar from starting.
fn is_service_link(key: &str) -> bool {
    let parts: Vec<&str> = key.split('_').collect();
    (0..parts.len()).any(|start| {
        let rest = parts.get(start..).unwrap_or_default();
        let tail_ok = start == 0
            || parts
                .get(..start)
                .is_some_and(|p| p.iter().all(|s| !s.is_empty()));
        tail_ok
            && match rest {
                ["port"] | ["service", "host"] | ["service", "port", ..] => true,
                ["port", number, proto, more @ ..] => {
                    number.bytes().all(|b| b.is_ascii_digit())
                        && !number.is_empty()
                        && matches!(*proto, "tcp" | "udp" | "sctp")
                        && matches!(more, [] | ["proto" | "port" | "addr"])
                }
                _ => false,
            }
    })
}

/// The shortest deadline a setting may give (`pool.timeout`, `pool.health.timeout`).
const MIN_DEADLINE: std::time::Duration = std::time::Duration::from_millis(1);
/// The shortest period a setting may give (health probes, two-phase sweeps and lock timeout).
const MIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(10);

/// `host:port` with a numeric port; the host may be a name resolved at connect time.
///
/// A URL (`redis://user:password@host:port`) is refused without quoting it: the password it may
/// hold must not reach `keyway check`'s output, the logs, INFO or `/topology`.
fn check_addr(addr: &str) -> Result<(), String> {
    if addr.contains('@') || addr.contains('/') {
        return Err(
            "must be host:port; this looks like a URL, which may hold credentials \
                    (user:password@): Keyway takes none in an address, so that no secret is shown \
                    in logs, INFO or /topology"
                .into(),
        );
    }
    let bad = || format!("\"{addr}\" is not a host:port address");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// 1-based line of the last occurrence of `needle` in `text` (the last one, because a duplicate
/// is found after its first use).
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            !l.starts_with('#') && l.contains(needle)
        })
        .map(|(i, _)| i + 1)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:6380"
[pool]
replicas = 1
timeout = "250ms"
[[pool.servers]]
name = "a"
addr = "127.0.0.1:7001"
[[pool.servers]]
name = "b"
addr = "127.0.0.1:7002"
weight = 2
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, Path::new("test.toml"))
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.pool.timeout, Duration::from_millis(250));
        assert_eq!(c.pool.connections, 1);
        assert_eq!(c.pool.resync_keys_per_second, 5_000);
        assert_eq!(c.pool.hash_tag, "{}");
        assert_eq!(c.pool.servers[1].weight, 2.0);
        assert_eq!(c.admin, "127.0.0.1:9380");
        assert_eq!(c.threads, 1);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("replicas = 1", "replicas = 1\nconections = 4");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("conections"), "{e}");
        assert!(e.contains("line 5"), "{e}");
    }

    #[test]
    fn duplicate_name_names_line() {
        let text = GOOD.replace("name = \"b\"", "name = \"a\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("pool.servers[1].name"), "{e}");
        assert!(e.contains("line 10"), "{e}");
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (from, to, key) in [
            ("addr = \"127.0.0.1:7002\"", "addr = \"nowhere\"", "addr"),
            ("weight = 2", "weight = 0", "weight"),
            ("replicas = 1", "replicas = 3", "replicas"),
            ("timeout = \"250ms\"", "timeout = \"soon\"", "timeout"),
            ("replicas = 1", "hash_tag = \"{\"", "hash_tag"),
            ("[pool]", "threads = 0\n[pool]", "threads"),
            (
                "replicas = 1",
                "replicas = 1\nresync_keys_per_second = 0",
                "pool.resync_keys_per_second",
            ),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(key), "{to}: {e}");
        }
        let e = parse("[pool]\n").unwrap_err().to_string();
        assert!(e.contains("no servers"), "{e}");
    }

    #[test]
    fn policies_parse_and_typos_are_named() {
        let text = GOOD.replace(
            "replicas = 1",
            "replicas = 2\nread = \"least_outstanding\"\nwrite = \"quorum\"\n[pool.health]\nfall = 2\nfailover = \"none\"\n[pool]",
        );
        // (the extra [pool] header above is invalid TOML: a table defined twice)
        assert!(parse(&text).is_err());
        let text = GOOD.replace(
            "timeout = \"250ms\"",
            "timeout = \"250ms\"\nreplicas = 2\nread = \"least_outstanding\"\nwrite = \"quorum\"",
        ).replace("replicas = 1\n", "");
        let c = parse(&text).unwrap();
        assert_eq!(c.pool.read, ReadPolicy::LeastOutstanding);
        assert_eq!(c.pool.write, WriteMode::Quorum);
        assert_eq!(c.pool.health.fall, 3);
        let e = parse(&GOOD.replace("replicas = 1", "read = \"round-robin\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("round-robin") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn configs_that_would_misbehave_are_refused_with_key_and_line() {
        for (from, to, key, says) in [
            (
                "addr = \"127.0.0.1:7002\"",
                "addr = \"127.0.0.1:7001\"",
                "pool.servers[1].addr",
                "same address",
            ),
            (
                "listen = \"127.0.0.1:6380\"",
                "listen = \"127.0.0.1:6380\"\nadmin = \"127.0.0.1:6380\"",
                "admin",
                "must differ from listen",
            ),
            (
                "[pool]",
                "[limits]\nmax_bulk_len = 0\n[pool]",
                "limits.max_bulk_len",
                "at least 1",
            ),
            (
                "[pool]",
                "[limits]\nmax_args = 0\n[pool]",
                "limits.max_args",
                "at least 1",
            ),
            (
                "[pool]",
                "[limits]\nmax_inline_len = 0\n[pool]",
                "limits.max_inline_len",
                "at least 1",
            ),
            (
                "[pool]",
                "[limits]\nmax_client_output = 0\n[pool]",
                "limits.max_client_output",
                "at least 1",
            ),
            (
                "timeout = \"250ms\"",
                "timeout = \"250ms\"\n[pool.health]\ninterval = \"1ns\"",
                "pool.health.interval",
                "at least 10ms, got 1ns",
            ),
            (
                "timeout = \"250ms\"",
                "timeout = \"0s\"",
                "pool.timeout",
                "at least 1ms",
            ),
            (
                "timeout = \"250ms\"",
                "timeout = \"250ms\"\n[pool.two_phase]\nsweep_interval = \"1us\"",
                "pool.two_phase.sweep_interval",
                "at least 10ms",
            ),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{to}: {e}");
            assert!(e.contains("line "), "{to}: names no line: {e}");
        }
    }

    #[test]
    fn an_address_with_credentials_is_refused_without_showing_them() {
        for addr in [
            "redis://:s3cret@127.0.0.1:7002",
            "user:s3cret@127.0.0.1:7002",
        ] {
            let text = GOOD.replace("127.0.0.1:7002", addr);
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("pool.servers[1].addr"), "{e}");
            assert!(e.contains("credentials"), "{e}");
            assert!(!e.contains("s3cret"), "the error shows the password: {e}");
        }
    }

    #[test]
    fn kubernetes_service_links_are_not_keyway_keys() {
        for key in [
            "port",
            "port_6380_tcp",
            "port_6380_tcp_proto",
            "port_6380_tcp_port",
            "port_6380_tcp_addr",
            "service_host",
            "service_port",
            "service_port_redis",
            "redis_port",
            "redis_port_6379_tcp_addr",
            "redis_service_host",
            "admin_service_port_http",
        ] {
            assert!(is_service_link(key), "{key}");
        }
        for key in [
            "listen",
            "admin",
            "threads",
            "drain_timeout",
            "pool__timeout",
            "pool__servers",
            "limits__max_clients",
            "port_name",
            "service",
        ] {
            assert!(!is_service_link(key), "{key}");
        }
    }

    #[test]
    fn credentials_take_the_servers_own_settings_first_and_a_file_over_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let pool_pw = dir.path().join("pool-pw");
        let b_pw = dir.path().join("b-pw");
        std::fs::write(&pool_pw, "p\n").unwrap();
        std::fs::write(&b_pw, "b\n").unwrap();
        let text = GOOD
            .replace(
                "replicas = 1",
                &format!(
                    "replicas = 1\nusername = \"keyway\"\npassword_file = \"{}\"",
                    pool_pw.display()
                ),
            )
            .replace(
                "weight = 2",
                &format!(
                    "weight = 2\nusername = \"other\"\npassword_file = \"{}\"",
                    b_pw.display()
                ),
            );
        let mut c = parse(&text).unwrap();
        c.pool.password = Some(Secret::new("from-env"));
        let (a, b) = (&c.pool.servers[0], &c.pool.servers[1]);
        assert_eq!(c.pool.username(a), Some("keyway"));
        assert_eq!(c.pool.username(b), Some("other"));
        assert_eq!(c.pool.password_source(a), PasswordSource::File(pool_pw));
        assert_eq!(c.pool.password_source(b), PasswordSource::File(b_pw));
        c.pool.password_file = None;
        let a = &c.pool.servers[0];
        assert_eq!(
            c.pool.password_source(a),
            PasswordSource::Value(Secret::new("from-env"))
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("from-env"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_user_needs_a_password_and_a_password_file_must_hold_one() {
        let e = parse(&GOOD.replace("replicas = 1", "replicas = 1\nusername = \"keyway\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("username") && e.contains("no password"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for path in [empty, dir.path().join("missing")] {
            let text = GOOD.replace(
                "replicas = 1",
                &format!("replicas = 1\npassword_file = \"{}\"", path.display()),
            );
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("pool.password_file") && e.contains("line 5"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_password_in_the_file_is_refused_without_showing_it() {
        for value in ["\"s3cret-pw\"", "918273645", "true"] {
            let text = GOOD.replace("replicas = 1", &format!("replicas = 1\npassword = {value}"));
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("pool.password") && e.contains("line 5"), "{e}");
            assert!(e.contains("KEYWAY_POOL__PASSWORD"), "{e}");
            let bare = value.trim_matches('"');
            assert!(!e.contains(bare), "the error shows the password: {e}");
        }
    }

    #[test]
    fn wrong_type_names_line() {
        let e = parse(&GOOD.replace("weight = 2", "weight = \"heavy\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 12"), "{e}");
    }
}
