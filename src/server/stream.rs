//! What a session reads from and writes to: a client's TCP connection, or TLS over one.
//!
//! The session is generic over [`ClientStream`], so that the plain path compiles to what it
//! was written for (`TcpStream`'s borrowed halves, its readiness) and TLS pays only for
//! itself: its halves share the TLS state behind tokio's split lock, and its readiness also
//! counts plaintext that rustls has already decrypted and buffered.

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls;

/// A client connection a session can serve.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half an active stretch borrows.
    type Rd<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The writing half an active stretch borrows.
    type Wr<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    /// Borrows both halves for an active stretch.
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>);

    /// Ready when a read would not wait (the parked state waits on this, holding no buffer).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The TCP connection under it (addresses, file descriptor).
    fn tcp(&self) -> &TcpStream;
}

impl ClientStream for TcpStream {
    type Rd<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Wr<'a> = tokio::net::tcp::WriteHalf<'a>;

    #[inline]
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        self.split()
    }

    #[inline]
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    #[inline]
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ClientStream for tls::Stream {
    type Rd<'a> = tokio::io::ReadHalf<&'a mut tls::Stream>;
    type Wr<'a> = tokio::io::WriteHalf<&'a mut tls::Stream>;

    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        tokio::io::split(self)
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tls::Stream::poll_read_ready(self, cx)
    }

    fn tcp(&self) -> &TcpStream {
        tls::Stream::tcp(self)
    }
}
