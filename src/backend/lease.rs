//! A server connection held by one client: for `WATCH`, whose watched keys live on the
//! connection that sent it, until EXEC, DISCARD, UNWATCH, RESET or the client's departure. Not
//! pipelined and not shared: one request at a time, each with the pool's timeout. Dropping a
//! lease closes its socket, which also ends the server's watches.

use std::sync::Arc;

use crate::tls::Conn;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{connect, BackendError, Pool, Reply, Shared};
use crate::protocol::{Limits, Proto, ReplyDecoder};

/// A connection of one server's, held by one client.
pub struct Lease {
    shared: Arc<Shared>,
    stream: Conn,
    decoder: ReplyDecoder,
    buf: BytesMut,
    /// A request failed on it: its replies can no longer be matched.
    broken: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("server", &self.shared.name)
            .finish()
    }
}

impl Pool {
    /// Opens a connection of `proto` to this server for one client's use.
    ///
    /// # Errors
    ///
    /// [`BackendError::Unavailable`] when the server cannot be reached (or refuses `HELLO 3`).
    pub async fn lease(&self, proto: Proto) -> Result<Lease, BackendError> {
        let stream = connect(&self.shared, proto)
            .await
            .map_err(|reason| self.shared.unavailable(&reason))?;
        Ok(Lease {
            shared: self.shared.clone(),
            stream,
            decoder: ReplyDecoder::new(Limits::for_replies()),
            buf: BytesMut::with_capacity(1024),
            broken: false,
        })
    }
}

impl Pool {
    /// Opens Keyway's subscriber connection to this server (RESP2, authenticated as Keyway's
    /// other connections are): the one connection per server that carries every pub/sub
    /// subscription of this Keyway's clients (`server::pubsub`).
    ///
    /// # Errors
    ///
    /// [`BackendError::Unavailable`] when the server cannot be reached.
    pub async fn subscriber(&self) -> Result<Conn, BackendError> {
        connect(&self.shared, Proto::Resp2)
            .await
            .map_err(|reason| self.shared.unavailable(&reason))
    }
}

impl Lease {
    /// Sends `frame`, which gets `replies` replies, and returns the last of them. After an
    /// error the lease is broken: every later call fails.
    pub async fn call(&mut self, frame: &[u8], replies: usize) -> Reply {
        if self.broken {
            return Err(self
                .shared
                .unavailable("the connection held for this client failed earlier"));
        }
        let timeout = self.shared.timeout;
        let result = match tokio::time::timeout(timeout, self.exchange(frame, replies)).await {
            Ok(result) => result,
            Err(_) => Err(self.shared.timed_out()),
        };
        self.broken = result.is_err();
        result
    }

    async fn exchange(&mut self, frame: &[u8], replies: usize) -> Reply {
        self.stream
            .write_all(frame)
            .await
            .map_err(|e| self.shared.unavailable(&e.to_string()))?;
        let mut last = None;
        for _ in 0..replies.max(1) {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(reply)) => {
                        last = Some(reply);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(self.shared.protocol(&e.to_string())),
                }
                // The request was written: a failure now leaves its outcome unknown.
                let n = self
                    .stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|e| self.shared.lost(&e.to_string()))?;
                if n == 0 {
                    return Err(self.shared.lost("the server closed the connection"));
                }
            }
        }
        last.ok_or_else(|| self.shared.protocol("no reply"))
    }
}

/// Server connections that carry blocking commands (`BLPOP`, `XREAD ... BLOCK`, ...): one per
/// blocked client while it blocks, kept open afterwards for the next one (up to
/// [`IDLE_BLOCKING_KEPT`] per protocol), and at most `limit` at once per server.
#[derive(Default)]
pub(super) struct Blocking {
    /// Connections that carried a blocking command to its end, ready for the next.
    idle: std::sync::Mutex<Vec<(Proto, Conn)>>,
    /// Blocked clients at most, set by the first blocking command (`limits.max_blocked_per_server`).
    permits: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
}

/// Idle blocking connections a server's pool keeps per protocol.
pub const IDLE_BLOCKING_KEPT: usize = 64;

impl Blocking {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Proto, Conn)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the idle connections (the pool left the topology).
    pub(super) fn close(&self) {
        self.idle().clear();
    }
}

/// A server connection carrying one client's blocking command, and its share of the server's
/// `limits.max_blocked_per_server`. Dropping it (the client went away) closes the socket at once,
/// so that the server unblocks that client and pops nothing for it.
pub struct BlockedLease {
    lease: Lease,
    proto: Proto,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for BlockedLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lease.fmt(f)
    }
}

/// Why a blocking command got no server connection.
#[derive(Debug)]
pub enum BlockError {
    /// `limit` clients already block on this server.
    Limit { server: Arc<str>, limit: usize },
    /// The server could not be reached.
    Backend(BackendError),
}

impl Pool {
    /// A connection of `proto` for one blocking command: an idle one kept from an earlier
    /// blocking command, or a new one. At most `limit` at once on this server.
    ///
    /// # Errors
    ///
    /// [`BlockError::Limit`] past `limit`; [`BlockError::Backend`] when the server cannot be
    /// reached.
    pub async fn block(&self, proto: Proto, limit: usize) -> Result<BlockedLease, BlockError> {
        let permits = self
            .blocking
            .permits
            .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(limit)));
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            return Err(BlockError::Limit {
                server: self.shared.name.clone(),
                limit,
            });
        };
        let kept = loop {
            let next = {
                let mut idle = self.blocking.idle();
                let at = idle.iter().rposition(|(p, _)| *p == proto);
                at.map(|at| idle.swap_remove(at).1)
            };
            let Some(stream) = next else { break None };
            // A kept connection must be quiet: readable means the server closed it (or sent
            // what no request asked for), and it goes.
            if stream.is_quiet() {
                break Some(stream);
            }
        };
        let stream = match kept {
            Some(stream) => stream,
            None => connect(&self.shared, proto)
                .await
                .map_err(|reason| BlockError::Backend(self.shared.unavailable(&reason)))?,
        };
        Ok(BlockedLease {
            lease: Lease {
                shared: self.shared.clone(),
                stream,
                decoder: ReplyDecoder::new(Limits::for_replies()),
                // Empty until the reply comes: a blocked client holds no buffer.
                buf: BytesMut::new(),
                broken: false,
            },
            proto,
            _permit: permit,
        })
    }

    /// Keeps a blocking command's connection for the next one, if it ended cleanly and there is
    /// room; otherwise it closes.
    pub fn unblock(&self, lease: BlockedLease) {
        let BlockedLease { lease, proto, .. } = lease;
        if lease.broken {
            return;
        }
        let mut idle = self.blocking.idle();
        if idle.iter().filter(|(p, _)| *p == proto).count() < IDLE_BLOCKING_KEPT {
            idle.push((proto, lease.stream));
        }
    }
}

impl BlockedLease {
    /// Sends a blocking command's `frame` and waits for its one reply as long as the server
    /// takes: the command's own timeout decides (0 blocks for ever), not `pool.timeout`. The
    /// connection itself was opened within `pool.timeout`. An error names the server.
    pub async fn call(&mut self, frame: &[u8]) -> Reply {
        let lease = &mut self.lease;
        let result = lease.exchange(frame, 1).await;
        // Bytes past the one reply: nothing asked for them, so the connection is not reused.
        lease.broken = result.is_err() || !lease.buf.is_empty();
        // The reply's buffer goes with it: an idle kept connection holds none.
        lease.buf = BytesMut::new();
        result
    }
}
