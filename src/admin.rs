//! The admin HTTP server, on its own port (config `admin`), apart from the client port.
//!
//! - `GET /metrics`: Prometheus text format, from Keyway's own registry.
//! - `GET /healthz`: 200 while the process runs; never looks at the servers, so a pool outage
//!   does not make Kubernetes restart a healthy proxy.
//! - `GET /readyz`: 200 when at least one server of the pool is reachable and Keyway is not
//!   draining; 503 with the reason otherwise.
//! - `GET /topology`: the topology in use, as JSON.
//! - `PUT /topology`: replace the pool with a `[pool]` document (TOML, or JSON with
//!   `Content-Type: application/json`); `?dry_run=true` answers what would change without
//!   changing anything. 200 with the changes, 400 with the reason when refused.
//! - anything else: 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::credentials::PasswordSource;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::topology::TopologyHandle;

/// What the admin endpoints may read and change: the topology, the metrics, whether Keyway is
/// draining, the token that mutations need. Nothing of the client sessions.
pub struct AdminState {
    /// The topology `/topology` shows and `PUT /topology` replaces.
    pub topology: Arc<TopologyHandle>,
    /// The registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// Read by `/readyz`.
    pub drain: Arc<Drain>,
    /// `admin_token_file`: mutations are off without it.
    pub token_file: Option<std::path::PathBuf>,
    /// The last token read from `token_file`, used while the file cannot be read.
    last_token: std::sync::Mutex<Option<String>>,
    /// Admin connections open now, at most [`MAX_CONNECTIONS`].
    connections: Arc<tokio::sync::Semaphore>,
}

impl AdminState {
    /// The admin state over these handles.
    pub fn new(
        topology: Arc<TopologyHandle>,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
        token_file: Option<std::path::PathBuf>,
    ) -> AdminState {
        AdminState {
            topology,
            metrics,
            drain,
            token_file,
            last_token: std::sync::Mutex::new(None),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

/// Admin connections at once. Past it a connection is closed at once, so that half-sent
/// requests cannot take every file descriptor (the client port needs them too).
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's headers (and between keep-alive
/// requests) or its body.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Serves the admin endpoints on `listener` until the process ends (the admin port stays up
/// while Keyway drains, so that `/readyz` can say so).
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let mut refused = Refused::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = state.connections.clone().try_acquire_owned() else {
            drop(stream);
            refused.note(peer);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state, peer).await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

/// Connections closed at once because [`MAX_CONNECTIONS`] were open: logged at most once a
/// minute (the first at once), with how many since, so that a flood cannot fill the log.
#[derive(Default)]
struct Refused {
    since_logged: u64,
    logged_at: Option<std::time::Instant>,
}

impl Refused {
    fn note(&mut self, peer: SocketAddr) {
        self.since_logged += 1;
        let due = self
            .logged_at
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60));
        if due {
            tracing::warn!(
                %peer,
                max = MAX_CONNECTIONS,
                refused = self.since_logged,
                "admin connections refused: too many open (count since the last such line)"
            );
            self.since_logged = 0;
            self.logged_at = Some(std::time::Instant::now());
        }
    }
}

/// Binds the admin address.
///
/// # Errors
///
/// The bind error.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Largest `PUT /topology` body accepted.
const MAX_BODY: usize = 1024 * 1024;

async fn handle(req: Request<Incoming>, state: &AdminState, peer: SocketAddr) -> Reply {
    if req.method() == Method::PUT && req.uri().path() == "/topology" {
        if let Err(refused) = authorize(&req, state, peer).await {
            return refused;
        }
        tracing::info!(%peer, "PUT /topology by an authorized caller");
        return put_topology(req, state).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => match not_ready(state) {
            None => reply(StatusCode::OK, "text/plain", "ready\n"),
            Some(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
        },
        (&Method::GET, "/topology") => reply(
            StatusCode::OK,
            "application/json",
            topology_json(state).to_string(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Checks a mutation's bearer token against `admin_token_file` (in constant time). `Err` is the
/// reply: 403 when mutations are off (no token file), 401 for a missing or wrong token. The
/// caller's address is logged; the token never is.
async fn authorize(
    req: &Request<Incoming>,
    state: &AdminState,
    peer: SocketAddr,
) -> Result<(), Reply> {
    let error = |status, msg: &str| {
        let mut r = reply(
            status,
            "application/json",
            serde_json::json!({ "error": msg }).to_string(),
        );
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    };
    let Some(path) = &state.token_file else {
        tracing::warn!(%peer, path = %req.uri().path(), "admin mutation refused: admin_token_file is not set");
        return Err(error(
            StatusCode::FORBIDDEN,
            "PUT /topology is off: set admin_token_file (a file holding a bearer token) to enable it",
        ));
    };
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || crate::credentials::read_secret_file(&path))
    };
    let token = match read.await.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
        Ok(t) if !t.trim().is_empty() => {
            let t = t.trim().to_string();
            if let Ok(mut last) = state.last_token.lock() {
                *last = Some(t.clone());
            }
            Some(t)
        }
        other => {
            let last = state.last_token.lock().ok().and_then(|l| l.clone());
            tracing::warn!(
                path = %path.display(),
                error = ?other.err().map(|e| e.to_string()),
                kept = last.is_some(),
                "admin_token_file cannot be read or is empty; the last token read stays in use"
            );
            last
        }
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (token, given) {
        (Some(token), Some(given)) => {
            use subtle::ConstantTimeEq;
            bool::from(token.as_bytes().ct_eq(given.as_bytes()))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        tracing::warn!(%peer, path = %req.uri().path(), "admin mutation refused: missing or wrong bearer token");
        Err(error(
            StatusCode::UNAUTHORIZED,
            "a bearer token (Authorization: Bearer <token from admin_token_file>) is required",
        ))
    }
}

async fn put_topology(req: Request<Incoming>, state: &AdminState) -> Reply {
    use http_body_util::BodyExt;
    let bad = |msg: String| {
        reply(
            StatusCode::BAD_REQUEST,
            "application/json",
            serde_json::json!({ "error": msg }).to_string(),
        )
    };
    let query = req.uri().query().unwrap_or_default().to_string();
    let dry_run = query
        .split('&')
        .any(|kv| matches!(kv, "dry_run" | "dry_run=true" | "dry_run=1"));
    let json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => return bad(format!("the body did not arrive within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => {
            return bad(format!(
                "cannot read the body (at most {MAX_BODY} bytes): {e}"
            ))
        }
    };
    let pool = match crate::topology::reload::parse_pool(&body, json) {
        Ok(p) => p,
        Err(e) => {
            state
                .metrics
                .config_reloads
                .with_label_values(&["rejected"])
                .inc();
            tracing::warn!(source = "admin", error = %e, "topology change refused; the running topology stays");
            return bad(e.to_string());
        }
    };
    match crate::topology::reload::apply(&state.topology, pool, "admin", dry_run).await {
        Ok(outcome) => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&outcome).unwrap_or_default(),
        ),
        Err(e) => bad(e.to_string()),
    }
}

/// Why Keyway should not get traffic now, or `None` when it should.
fn not_ready(state: &AdminState) -> Option<String> {
    if state.drain.is_draining() {
        return Some("draining: shutting down\n".into());
    }
    let topo = state.topology.load();
    if topo.servers.iter().all(|s| s.pool.open_connections() == 0) {
        // Each server's last failure (a refused connect, a refused AUTH, ...): what an
        // operator needs to act on. The reasons hold no secret.
        let mut why = format!(
            "no server of the pool is reachable ({} configured)\n",
            topo.servers.len()
        );
        for s in &topo.servers {
            if let Some(reason) = s.pool.last_failure() {
                why.push_str(&format!("server '{}' ({}): {reason}\n", s.name, s.addr));
            }
        }
        return Some(why);
    }
    None
}

fn topology_json(state: &AdminState) -> serde_json::Value {
    let topo = state.topology.load();
    let servers: Vec<_> = topo
        .servers
        .iter()
        .map(|s| {
            // Who its connections authenticate as, and where the password comes from (never
            // the password).
            let spec = topo.config.servers.iter().find(|c| c.name == s.name);
            let user = spec.and_then(|c| topo.config.username(c));
            let password = match spec.map(|c| topo.config.password_source(c)) {
                Some(PasswordSource::File(path)) => format!("file {}", path.display()),
                Some(PasswordSource::Value(_)) => crate::config::PASSWORD_ENV.to_string(),
                Some(PasswordSource::None) | None => "none".to_string(),
            };
            serde_json::json!({
                "name": s.name,
                "addr": s.addr,
                "weight": s.weight,
                "connections": s.pool.open_connections(),
                "up": s.pool.health().is_up(),
                "recovering": s.pool.health().is_recovering(),
                "last_error": s.pool.last_failure().as_deref(),
                "user": user,
                "password": password,
            })
        })
        .collect();
    serde_json::json!({
        "version": topo.version,
        "servers": servers,
        "pool": {
            "replicas": topo.config.replicas,
            "hash_tag": topo.config.hash_tag,
            "connections": topo.config.connections,
            "timeout": humantime::format_duration(topo.config.timeout).to_string(),
            "read": topo.config.read,
            "write": topo.config.write,
            "warmup": humantime::format_duration(topo.config.warmup).to_string(),
            "resync_keys_per_second": topo.config.resync_keys_per_second,
            "health": {
                "interval": humantime::format_duration(topo.config.health.interval).to_string(),
                "timeout": humantime::format_duration(topo.config.health.timeout).to_string(),
                "fall": topo.config.health.fall,
                "rise": topo.config.health.rise,
                "failover": topo.config.health.failover,
            },
        },
    })
}
