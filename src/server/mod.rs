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
mod merge;
mod multi;
mod plan;
mod pubsub;
mod registry;
mod reply;
mod scripts;
mod session;
mod shared;

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
    let max_clients = shared.client_limits.max_clients as u64;
    if let Ok(addr) = listener.local_addr() {
        let _ = shared.port.set(addr.port());
    }
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
                if !admitted(protected, peer) {
                    shared.metrics.client_refused.inc();
                    tracing::warn!(%peer, "client refused: protected mode (a non-loopback address; see protected_mode)");
                    tokio::spawn(refuse_with(stream, DENIED));
                    continue;
                }
                if shared.clients.load(Ordering::Relaxed) >= max_clients {
                    shared.metrics.client_refused.inc();
                    tracing::warn!(%peer, max_clients, "client refused: max_clients reached");
                    tokio::spawn(refuse(stream));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let id = shared.next_client_id();
                shared.clients.fetch_add(1, Ordering::Relaxed);
                shared.metrics.client_accepted.inc();
                shared.metrics.client_connections.inc();
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = session::run(stream, shared.clone(), id).await {
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

async fn refuse(stream: tokio::net::TcpStream) {
    refuse_with(stream, b"-ERR max number of clients reached\r\n").await;
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
    tokio::spawn(crate::txn::lease(
        shared.topology.clone(),
        shared.drain.child_token(),
    ));
    let task = tokio::spawn(serve(listener, shared.clone()));
    Ok(Running {
        addr,
        admin_addr,
        shared,
        task,
    })
}
