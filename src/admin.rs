//! The admin HTTP server, on its own port (config `admin`), apart from the client port.
//!
//! - `GET /metrics`: Prometheus text format, from Keyway's own registry.
//! - `GET /healthz`: 200 while the process runs; never looks at the servers, so a pool outage
//!   does not make Kubernetes restart a healthy proxy.
//! - `GET /readyz`: 200 when at least one server of the pool is reachable and Keyway is not
//!   draining; 503 with the reason otherwise.
//! - `GET /topology`: the topology in use, as JSON.
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

use crate::server::Shared;

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
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, &shared)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
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

fn handle(req: Request<Incoming>, shared: &Shared) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => match not_ready(shared) {
            None => reply(StatusCode::OK, "text/plain", "ready\n"),
            Some(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
        },
        (&Method::GET, "/topology") => reply(
            StatusCode::OK,
            "application/json",
            topology_json(shared).to_string(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Why Keyway should not get traffic now, or `None` when it should.
fn not_ready(shared: &Shared) -> Option<String> {
    if shared.drain.is_cancelled() {
        return Some("draining: shutting down\n".into());
    }
    let topo = shared.topology.load();
    if topo.servers.iter().all(|s| s.pool.open_connections() == 0) {
        return Some(format!(
            "no server of the pool is reachable ({} configured)\n",
            topo.servers.len()
        ));
    }
    None
}

fn topology_json(shared: &Shared) -> serde_json::Value {
    let topo = shared.topology.load();
    let servers: Vec<_> = topo
        .servers
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "addr": s.addr,
                "weight": s.weight,
                "connections": s.pool.open_connections(),
                "reachable": s.pool.open_connections() > 0,
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
        },
    })
}
