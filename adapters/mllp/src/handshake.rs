//! What happens between accepting a TCP connection and reading its first frame.
//!
//! Plain MLLP does nothing there ([`PlainTcp`]); MLLP over TLS runs a TLS handshake and learns
//! who the peer is from its certificate. The crate does not know TLS: the application hands
//! [`MllpServer::run_with`](crate::MllpServer::run_with) a [`Handshake`], which the server runs
//! inside each connection's own task, under `MllpConfig::handshake_timeout_ms`, so a slow or
//! silent client holds its connection slot for that long at most and never the accept loop.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Who the transport says the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The names the transport verified, for TLS those of the client certificate (its subject
    /// common name and DNS names). Never empty.
    pub names: Vec<String>,
}

/// Turns an accepted connection into the stream frames are read from and written to.
pub trait Handshake: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Completes the handshake, returning the stream and the peer's identity when the
    /// handshake established one. An error closes the connection before any frame is read.
    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = io::Result<(Self::Stream, Option<Arc<PeerIdentity>>)>> + Send;
}

/// Plain MLLP: the TCP stream as it is, without an identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Handshake for PlainTcp {
    type Stream = TcpStream;

    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(TcpStream, Option<Arc<PeerIdentity>>)> {
        Ok((tcp, None))
    }
}
