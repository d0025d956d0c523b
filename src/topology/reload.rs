//! Where new topologies come from, and how a change is checked, described and applied.
//!
//! Three sources feed one path, [`apply`]: the config file (watched through its directory, see
//! [`watch_file`]), SIGHUP (which rereads the file), and the admin API (`PUT /topology` with a
//! `[pool]` document in TOML or JSON). Every change is parsed and validated, and its slot table
//! built, before the swap; a refused change is logged and counted and the running topology
//! keeps serving. The last change applied wins, whatever its source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{TopologyError, TopologyHandle};
use crate::config::{Config, ConfigError, PoolConfig, PASSWORD_ENV};
use crate::credentials::PasswordSource;
use crate::routing::{primary_moves, SlotTable};

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The document or file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The topology could not be built.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// What a change does, for logs, `keyway plan`, and the admin API's answers.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Changes {
    /// Servers that join the pool.
    pub added: Vec<String>,
    /// Servers that leave it.
    pub removed: Vec<String>,
    /// Servers whose address changes: `name: old -> new`.
    pub readdressed: Vec<String>,
    /// Servers whose weight changes: `name: old -> new`.
    pub reweighted: Vec<String>,
    /// Pool settings that change: `key: old -> new`.
    pub settings: Vec<String>,
    /// Slots whose primary changes, of 16384.
    pub slots_moved: usize,
    /// Those slots by (from, to) server.
    pub moves: Vec<Move>,
}

/// Slots that move from one server to another.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Move {
    pub from: String,
    pub to: String,
    pub slots: usize,
}

impl Changes {
    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no change".into();
        }
        let mut parts = Vec::new();
        for (what, list) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("readdressed", &self.readdressed),
            ("reweighted", &self.reweighted),
            ("settings", &self.settings),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what} [{}]", list.join(", ")));
            }
        }
        parts.push(format!("{} slots move", self.slots_moved));
        parts.join("; ")
    }
}

fn table_of(pool: &PoolConfig) -> Result<(SlotTable, Vec<String>), TopologyError> {
    let mut servers: Vec<_> = pool.servers.iter().collect();
    servers.sort_by(|a, b| a.name.cmp(&b.name));
    let ranked: Vec<(&str, f64)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.weight))
        .collect();
    let table = SlotTable::build(&ranked, 1)?;
    Ok((table, servers.iter().map(|s| s.name.clone()).collect()))
}

/// Describes the change from `old` to `new` (both valid).
///
/// # Errors
///
/// [`TopologyError`] when a slot table cannot be built.
pub fn diff(old: &PoolConfig, new: &PoolConfig) -> Result<Changes, TopologyError> {
    let mut c = Changes::default();
    let old_by_name: BTreeMap<_, _> = old.servers.iter().map(|s| (&s.name, s)).collect();
    let new_by_name: BTreeMap<_, _> = new.servers.iter().map(|s| (&s.name, s)).collect();
    for (name, s) in &new_by_name {
        match old_by_name.get(name) {
            None => c.added.push(name.to_string()),
            Some(o) => {
                if o.addr != s.addr {
                    c.readdressed
                        .push(format!("{name}: {} -> {}", o.addr, s.addr));
                }
                if o.weight != s.weight {
                    c.reweighted
                        .push(format!("{name}: {} -> {}", o.weight, s.weight));
                }
                // Who a server's connections authenticate as (never the password itself).
                let auth = |pool: &PoolConfig, s| {
                    format!(
                        "user {}, password {}",
                        pool.username(s).unwrap_or("default"),
                        match pool.password_source(s) {
                            PasswordSource::None => "none".to_string(),
                            PasswordSource::File(p) => format!("from {}", p.display()),
                            PasswordSource::Value(_) => format!("from {PASSWORD_ENV}"),
                        }
                    )
                };
                let (before, after) = (auth(old, o), auth(new, s));
                if before != after {
                    c.settings.push(format!("{name}: {before} -> {after}"));
                }
            }
        }
    }
    c.removed = old_by_name
        .keys()
        .filter(|n| !new_by_name.contains_key(*n))
        .map(|n| n.to_string())
        .collect();
    let mut setting = |key: &str, a: String, b: String| {
        if a != b {
            c.settings.push(format!("{key}: {a} -> {b}"));
        }
    };
    setting(
        "replicas",
        old.replicas.to_string(),
        new.replicas.to_string(),
    );
    setting("hash_tag", old.hash_tag.clone(), new.hash_tag.clone());
    setting(
        "connections",
        old.connections.to_string(),
        new.connections.to_string(),
    );
    setting(
        "timeout",
        format!("{:?}", old.timeout),
        format!("{:?}", new.timeout),
    );
    setting("read", format!("{:?}", old.read), format!("{:?}", new.read));
    setting(
        "write",
        format!("{:?}", old.write),
        format!("{:?}", new.write),
    );
    setting(
        "warmup",
        format!("{:?}", old.warmup),
        format!("{:?}", new.warmup),
    );
    setting(
        "health",
        format!("{:?}", old.health),
        format!("{:?}", new.health),
    );
    setting(
        "two_phase",
        format!("{:?}", old.two_phase),
        format!("{:?}", new.two_phase),
    );

    let (old_table, old_names) = table_of(old)?;
    let (new_table, new_names) = table_of(new)?;
    let old_refs: Vec<&str> = old_names.iter().map(String::as_str).collect();
    let new_refs: Vec<&str> = new_names.iter().map(String::as_str).collect();
    for ((from, to), slots) in primary_moves(&old_table, &old_refs, &new_table, &new_refs) {
        c.slots_moved += slots;
        c.moves.push(Move { from, to, slots });
    }
    Ok(c)
}

/// The result of a change that was accepted.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Whether a new topology was swapped in (false for a dry run or a change that changes
    /// nothing).
    pub applied: bool,
    /// The topology version in use after the call.
    pub version: u64,
    /// What changed (or would change).
    pub changes: Changes,
}

/// Validates `new`, describes it, and (unless `dry_run`, or nothing changes) swaps it in.
/// Logs and counts the outcome.
///
/// # Errors
///
/// [`ReloadError`] when `new` is invalid; the running topology stays.
pub async fn apply(
    handle: &TopologyHandle,
    new: PoolConfig,
    source: &str,
    dry_run: bool,
) -> Result<Outcome, ReloadError> {
    let result = check_and_swap(handle, new, dry_run).await;
    let metrics = handle.metrics();
    match &result {
        Ok(o) if o.applied => {
            metrics.config_reloads.with_label_values(&["applied"]).inc();
            tracing::info!(source, version = o.version, changes = %o.changes.summary(), "topology swapped");
            for warning in handle.load().config.warnings() {
                tracing::warn!(source, "{warning}");
            }
        }
        Ok(_) => {}
        Err(e) => {
            metrics
                .config_reloads
                .with_label_values(&["rejected"])
                .inc();
            tracing::warn!(source, error = %e, "topology change refused; the running topology stays");
        }
    }
    result
}

async fn check_and_swap(
    handle: &TopologyHandle,
    new: PoolConfig,
    dry_run: bool,
) -> Result<Outcome, ReloadError> {
    new.validate(None)?;
    let current = handle.load();
    let changes = diff(&current.config, &new)?;
    if dry_run || changes.is_empty() {
        return Ok(Outcome {
            applied: false,
            version: current.version,
            changes,
        });
    }
    let next = handle.swap(&new).await?;
    Ok(Outcome {
        applied: true,
        version: next.version,
        changes,
    })
}

/// Parses a `[pool]` document (the admin API's body): TOML, or JSON when `json`.
///
/// # Errors
///
/// [`ConfigError::Syntax`] naming the problem (and its line for TOML).
pub fn parse_pool(body: &[u8], json: bool) -> Result<PoolConfig, ConfigError> {
    let syntax = |message: String| ConfigError::Syntax {
        path: PathBuf::from(if json {
            "request body (JSON)"
        } else {
            "request body (TOML)"
        }),
        message,
    };
    let text = std::str::from_utf8(body).map_err(|e| syntax(format!("not UTF-8: {e}")))?;
    let mut pool: PoolConfig = if json {
        serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?
    } else {
        toml::from_str(text).map_err(|e| syntax(e.to_string().trim_end().to_string()))?
    };
    let text = if json { None } else { Some(text) };
    // As for the config file: no password in the document; the environment's applies.
    pool.refuse_inline_password(text)?;
    pool.password = crate::config::env_password()?;
    pool.validate(text)?;
    pool.check_password_files(text)?;
    Ok(pool)
}

/// Rereads the config file and applies its `[pool]`. Settings outside `[pool]` (listen,
/// admin, limits) take effect at the next start; a change to them is logged as such.
///
/// # Errors
///
/// [`ReloadError`] when the file is invalid.
pub async fn reload_file(
    handle: &TopologyHandle,
    path: &Path,
    running: &Config,
    source: &str,
) -> Result<Outcome, ReloadError> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            handle
                .metrics()
                .config_reloads
                .with_label_values(&["rejected"])
                .inc();
            tracing::warn!(source, error = %e, "config reload refused; the running topology stays");
            return Err(e.into());
        }
    };
    let outside_pool = |c: &Config| {
        (
            c.listen.clone(),
            c.admin.clone(),
            c.limits.clone(),
            c.drain_timeout,
        )
    };
    // `Config::load` validated the users: compiling them again cannot fail.
    if let Ok(users) = config.users(None) {
        let names: Vec<&str> = users.names().collect();
        tracing::info!(source, users = ?names, "client users reloaded");
        handle.users.store(users);
    }
    if outside_pool(&config) != outside_pool(running) {
        tracing::warn!(
            source,
            "settings outside [pool] changed; they take effect at the next start"
        );
    }
    apply(handle, config.pool, source, false).await
}

/// Watches the config file's directory and reloads on every change to the file's content.
///
/// The directory, not the file: Kubernetes updates a mounted ConfigMap by pointing a `..data`
/// symlink at a new directory, which replaces the file without writing to it, and editors often
/// save by renaming over it. Events are debounced (100 ms) and a reload happens only when the
/// content differs from what was last read.
///
/// # Errors
///
/// The watcher could not be set up (the directory does not exist, inotify limits).
pub fn watch_file(
    handle: Arc<TopologyHandle>,
    path: PathBuf,
    running: Config,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let mut last = std::fs::read(&path).unwrap_or_default();
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let Ok(now) = std::fs::read(&path) else {
                // Mid-swap (the symlink briefly dangles) or removed: wait for the next event.
                continue;
            };
            if now == last {
                continue;
            }
            last = now;
            let _ = reload_file(&handle, &path, &running, "file").await;
        }
    });
    Ok(watcher)
}
