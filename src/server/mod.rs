//! The client side: the listener, one session per client, and the request path from a
//! client's frame to its reply.
//!
//! - [`session`]: reads frames, keeps replies in request order, writes them in batches.
//! - [`plan`]: decides, as a value, where a command goes (pure: sends nothing).
//! - [`dispatch`]: carries a plan out; the only code here that sends to the servers.
//! - [`merge`]: pure functions that merge several servers' replies into one.
//! - [`local`]: the commands Keyway answers itself (PING, HELLO, INFO, COMMAND, ...).
//! - [`reply`]: a reply in the making ([`reply::Pending`]), in request order.
//! - [`client`]: what a client has set on its connection; [`shared`]: what sessions share.
//!
//! The path of one request, with each step's function, is in `docs/architecture.md`.

mod blocking;
mod client;
mod dispatch;
mod info;
mod local;
mod memory;
mod merge;
mod multi;
mod plan;
mod pubsub;
mod registry;
mod reply;
mod scripts;
mod session;
mod shared;
mod stream;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::AdminState;
use crate::config::Config;
use crate::topology::TopologyError;

pub use shared::Shared;

/// Accepts clients on `listener`, one session task each, until Keyway drains.
///
/// A client over `limits.max_clients` gets `-ERR max number of clients reached` (redis-server's
/// words) and is closed at once.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Ok(addr) = listener.local_addr() {
        let _ = shared.port.set(addr.port());
    }
    accept_loop(listener, shared, None).await;
}

/// Accepts TLS clients on `listener` (`tls_listen`), as [`serve`] does plain ones: each
/// session starts once its handshake is done, and a handshake not done within `timeout` is
/// cut. Under protected mode, a client from a non-loopback address is admitted when it
/// presented a certificate that `tls.client_ca_file` verified (mutual TLS), and refused with
/// `-DENIED` (over TLS) otherwise.
pub async fn serve_tls(
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Arc<crate::tls::Acceptor>,
    timeout: std::time::Duration,
) {
    accept_loop(listener, shared, Some(TlsListener { acceptor, timeout })).await;
}

/// What a TLS listener adds to the accept loop.
#[derive(Clone)]
struct TlsListener {
    acceptor: Arc<crate::tls::Acceptor>,
    timeout: std::time::Duration,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsListener>) {
    let max_clients = shared.client_limits.max_clients as u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.drain.cancelled() => {
                tracing::info!("draining: no longer accepting clients");
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                // As redis-server: protected mode holds only while clients need no password.
                let protected =
                    shared.protected_mode && !shared.topology.users.load().auth_required();
                let loopback = admitted(protected, peer);
                // A TLS client with a verified certificate may come from anywhere: decided
                // once its handshake is done.
                let by_certificate = tls.as_ref().is_some_and(|t| t.acceptor.mutual());
                if !loopback && !by_certificate {
                    shared.metrics.client_refused.inc();
                    tracing::warn!(%peer, "client refused: protected mode (a non-loopback address; see protected_mode)");
                    match &tls {
                        None => drop(tokio::spawn(refuse_with(stream, DENIED))),
                        Some(t) => drop(tokio::spawn(refuse_tls(stream, t.clone(), DENIED))),
                    }
                    continue;
                }
                if shared.clients.load(Ordering::Relaxed) >= max_clients {
                    shared.metrics.client_refused.inc();
                    tracing::warn!(%peer, max_clients, "client refused: max_clients reached");
                    match &tls {
                        None => drop(tokio::spawn(refuse(stream))),
                        Some(t) => drop(tokio::spawn(refuse_tls(stream, t.clone(), MAX_CLIENTS))),
                    }
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let id = shared.next_client_id();
                // Counted from the accept, so that handshakes in progress count against
                // max_clients too.
                shared.clients.fetch_add(1, Ordering::Relaxed);
                shared.metrics.client_accepted.inc();
                shared.metrics.client_connections.inc();
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        None => session::run(stream, shared.clone(), id).await,
                        Some(t) => tls_session(stream, &shared, id, peer, loopback, &t).await,
                    };
                    if let Err(e) = result {
                        tracing::info!(client = id, %peer, error = %e, "client connection error");
                    }
                    shared.clients.fetch_sub(1, Ordering::Relaxed);
                    shared.metrics.client_connections.dec();
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, breathe, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A TLS client: the handshake (bounded by the listener's timeout), the protected-mode check
/// that needed it, then the session.
async fn tls_session(
    stream: tokio::net::TcpStream,
    shared: &Arc<Shared>,
    id: u64,
    peer: std::net::SocketAddr,
    loopback: bool,
    tls: &TlsListener,
) -> std::io::Result<()> {
    let Some(stream) = handshake(stream, tls, shared, peer).await else {
        return Ok(());
    };
    if !loopback && !stream.peer_verified() {
        shared.metrics.client_refused.inc();
        tracing::warn!(%peer, "client refused: protected mode (a non-loopback address without a client certificate)");
        finish_refusal(stream, DENIED).await;
        return Ok(());
    }
    tracing::debug!(client = id, %peer, version = ?stream.version(), "TLS client connected");
    session::run(stream, shared.clone(), id).await
}

/// The server side of a TLS handshake within the listener's timeout; a failure is logged
/// (without any secret: rustls's reason) and counted, and the connection closed.
async fn handshake(
    stream: tokio::net::TcpStream,
    tls: &TlsListener,
    shared: &Shared,
    peer: std::net::SocketAddr,
) -> Option<crate::tls::Stream> {
    let error = match tokio::time::timeout(tls.timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("not finished within {:?}", tls.timeout),
    };
    shared.metrics.client_tls_failures.inc();
    tracing::info!(%peer, %error, "client TLS handshake failed; connection closed");
    None
}

/// Refuses a TLS client: its handshake, then `reply` over TLS, then the close.
async fn refuse_tls(stream: tokio::net::TcpStream, tls: TlsListener, reply: &'static [u8]) {
    let peer = stream.peer_addr().ok();
    let acceptor = tls.acceptor.clone();
    if let Ok(Ok(stream)) = tokio::time::timeout(tls.timeout, acceptor.accept(stream)).await {
        finish_refusal(stream, reply).await;
    } else {
        tracing::debug!(?peer, "refused TLS client did not finish its handshake");
    }
}

async fn finish_refusal(mut stream: crate::tls::Stream, reply: &'static [u8]) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.write_all(reply).await;
    let _ = stream.shutdown().await;
}

/// What a client over `limits.max_clients` reads before its connection closes.
const MAX_CLIENTS: &[u8] = b"-ERR max number of clients reached\r\n";

async fn refuse(stream: tokio::net::TcpStream) {
    refuse_with(stream, MAX_CLIENTS).await;
}

/// What a client refused by protected mode reads before its connection closes: redis-server's
/// `-DENIED`, saying what to do in Keyway's terms.
pub(crate) const DENIED: &[u8] = b"-DENIED Keyway is running in protected mode because \
    protected_mode is on and no client authentication is configured. In this mode connections \
    are only accepted from the loopback interface. To accept clients from other addresses, \
    either configure [[users]] so that clients must authenticate (a default user that is off or \
    has a password), or set protected_mode = false in Keyway's configuration and make sure that \
    only trusted clients can reach its address (a Kubernetes NetworkPolicy, a firewall).\r\n";

/// Whether a client from `peer` may connect: any client without protected mode, else only one
/// from a loopback address (an IPv4 address mapped into IPv6 included).
pub(crate) fn admitted(protected_mode: bool, peer: std::net::SocketAddr) -> bool {
    !protected_mode || peer.ip().to_canonical().is_loopback()
}

async fn refuse_with(mut stream: tokio::net::TcpStream, reply: &'static [u8]) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.write_all(reply).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod protected_mode_tests {
    use super::{admitted, DENIED};

    #[test]
    fn protected_mode_admits_loopback_clients_only() {
        let at = |s: &str| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        for peer in [
            "127.0.0.1:5000",
            "127.8.9.10:5000",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert!(admitted(true, at(peer)), "{peer}");
        }
        for peer in [
            "10.1.2.3:5000",
            "192.168.0.9:5000",
            "[fd00::1]:5000",
            "[::ffff:10.0.0.1]:5000",
        ] {
            assert!(!admitted(true, at(peer)), "{peer}");
            assert!(admitted(false, at(peer)), "{peer}");
        }
        // One line, redis-server's error code, and the setting that lifts it.
        assert!(DENIED.starts_with(b"-DENIED "));
        assert!(DENIED.ends_with(b"\r\n"));
        assert_eq!(DENIED.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(DENIED.windows(22).any(|w| w == b"protected_mode = false"));
    }
}

/// A proxy started by [`start`]: its bound address, its shared state, its accept loop.
pub struct Running {
    /// The address clients connect to (resolved, so port 0 in the config becomes the real port).
    pub addr: std::net::SocketAddr,
    /// State shared by the sessions (topology, limits, counters).
    pub shared: Arc<Shared>,
    /// The TLS client address (`tls_listen`, resolved), if there is one.
    pub tls_addr: Option<std::net::SocketAddr>,
    /// The admin HTTP address.
    pub admin_addr: std::net::SocketAddr,
    /// The accept loop; ends when Keyway drains.
    pub task: tokio::task::JoinHandle<()>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The topology could not be built.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The TLS files of `[tls]` do not load.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The client port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Connections waiting to be accepted (the kernel caps it at `net.core.somaxconn`); a burst of
/// reconnecting clients should not be dropped and retried a second later.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listening socket with Keyway's backlog (std's default is 128).
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "address resolves to nothing",
        )
    }))
}

/// Binds `config.listen`, connects to the pool, and starts accepting clients.
///
/// # Errors
///
/// [`StartError`] when the pool is invalid or the address cannot be bound.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let shared = Shared::new(config)?;
    let listener = listen(&config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    let tls = match (&config.tls_listen, &config.tls) {
        (Some(tls_listen), Some(tls)) => {
            let acceptor = crate::tls::Acceptor::new(
                tls.cert_file.clone(),
                tls.key_file.clone(),
                tls.client_ca_file.clone(),
            )?;
            let listener = listen(tls_listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: tls_listen.clone(),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| StartError::Listen {
                addr: tls_listen.clone(),
                source,
            })?;
            Some((listener, addr, Arc::new(acceptor), tls.handshake_timeout))
        }
        _ => None,
    };
    let (admin, admin_addr) =
        crate::admin::bind(&config.admin)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.admin.clone(),
                source,
            })?;
    let admin_state = AdminState::new(
        shared.topology.clone(),
        shared.metrics.clone(),
        shared.drain.clone(),
        config.admin_token_file.clone(),
    );
    tokio::spawn(crate::admin::serve(admin, Arc::new(admin_state)));
    tokio::spawn(crate::txn::sweep(
        shared.topology.clone(),
        shared.drain.child_token(),
    ));
    tokio::spawn(crate::resync::run(
        shared.topology.clone(),
        shared.drain.child_token(),
    ));
    tokio::spawn(crate::txn::lease(
        shared.topology.clone(),
        shared.drain.child_token(),
    ));
    let tls_addr = tls.map(|(listener, addr, acceptor, timeout)| {
        tokio::spawn(serve_tls(listener, shared.clone(), acceptor, timeout));
        addr
    });
    let task = tokio::spawn(serve(listener, shared.clone()));
    Ok(Running {
        addr,
        tls_addr,
        admin_addr,
        shared,
        task,
    })
}
