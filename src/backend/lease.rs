//! A server connection held by one client: for `WATCH`, whose watched keys live on the
//! connection that sent it, until EXEC, DISCARD, UNWATCH, RESET or the client's departure. Not
//! pipelined and not shared: one request at a time, each with the pool's timeout. Dropping a
//! lease closes its socket, which also ends the server's watches.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{connect, BackendError, Pool, Reply, Shared};
use crate::protocol::{Limits, Proto, ReplyDecoder};

/// A connection of one server's, held by one client.
pub struct Lease {
    shared: Arc<Shared>,
    stream: TcpStream,
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
                let n = self
                    .stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|e| self.shared.unavailable(&e.to_string()))?;
                if n == 0 {
                    return Err(self.shared.unavailable("the server closed the connection"));
                }
            }
        }
        last.ok_or_else(|| self.shared.protocol("no reply"))
    }
}
