//! The MLLP listener: accepting connections, capping how many are served, and shutting down.
//!
//! Each accepted connection runs as its own task (see `connection.rs`) with its own decoder; the
//! task runs the handshake first (see `handshake.rs`), so a slow one delays no other
//! connection. The accept loop owns those tasks in a `JoinSet`, which is both the connection
//! count for the cap and the handle for draining at shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tracing::{debug, error, info, warn, Instrument};

use crate::config::MllpConfig;
use crate::connection::{stop_requested, Connection};
use crate::handshake::{Handshake, PeerIdentity, PlainTcp};
use crate::slots::Registry;

/// Pending connections the kernel holds while the server is at its connection cap.
const LISTEN_BACKLOG: u32 = 1024;
/// Pause after a failed accept, which is usually file-descriptor exhaustion and needs time to clear.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// At the cap with every connection busy, how often to look for one that fell idle.
const CAP_RECHECK: Duration = Duration::from_millis(200);

/// Where a frame came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMeta {
    pub peer: SocketAddr,
    /// Unique per server run, in accept order; the same for every frame of one connection.
    pub connection_id: u64,
    /// Who the handshake established the peer to be (a TLS client certificate's names); `None`
    /// on plain TCP, or over TLS without client certificates.
    pub identity: Option<Arc<PeerIdentity>>,
}

/// What the application does with frames. Frames of one connection are handled one at a time,
/// in order; different connections are handled concurrently.
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one payload and returns the response payloads (ACKs), which the server frames
    /// one by one and writes, in order, before reading the connection's next frame. Several
    /// responses are several frames (an HL7 accept acknowledgement, then an application
    /// acknowledgement); none writes nothing, since some messages (acknowledgements themselves,
    /// or messages whose sender asked for no acknowledgement) must not be answered.
    fn handle(&self, frame: Bytes, meta: FrameMeta) -> impl Future<Output = Vec<Vec<u8>>> + Send;

    /// Answers a frame longer than `max_frame_bytes`, given its first bytes (at most 64 KiB,
    /// enough to read MSH). The responses, if any, are written as for [`handle`](Self::handle),
    /// then the connection is closed.
    fn oversized(
        &self,
        prefix: Bytes,
        meta: FrameMeta,
    ) -> impl Future<Output = Vec<Vec<u8>>> + Send;
}

/// How `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection closed by itself before the drain deadline.
    Finished,
    /// The deadline passed; these connections were dropped where they stood.
    DeadlinePassed { aborted_connections: usize },
}

/// A bound MLLP listener, not yet accepting.
#[derive(Debug)]
pub struct MllpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: MllpConfig,
}

impl MllpServer {
    /// Validates `config` and binds `addr` (port 0 picks a free port; see `local_addr`).
    ///
    /// Keepalive is set on the listening socket, which accepted sockets inherit on Linux, macOS
    /// and Windows; probe timing is the operating system's default.
    pub async fn bind(addr: SocketAddr, config: MllpConfig) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_keepalive(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            config,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves plain-TCP connections until `shutdown` completes, then drains them (see
    /// [`DrainOutcome`]).
    pub async fn run<H: MessageHandler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()>,
    ) -> DrainOutcome {
        self.run_with(handler, Arc::new(PlainTcp), shutdown).await
    }

    /// As [`run`](Self::run), each connection going through `handshake` before its first frame.
    pub async fn run_with<H: MessageHandler, T: Handshake>(
        self,
        handler: Arc<H>,
        handshake: Arc<T>,
        shutdown: impl Future<Output = ()>,
    ) -> DrainOutcome {
        let Self {
            listener, config, ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let slow_frame = Duration::from_millis(config.slow_frame_evict_ms);
        let mut acceptor = Acceptor {
            config,
            handler,
            handshake,
            handshake_warnings: Arc::default(),
            stop: stop_rx,
            tasks: JoinSet::new(),
            next_id: 0,
            per_peer: PeerCounts::default(),
            last_refusal_warning: None,
            refused_since_warning: 0,
            slots: Registry::new(slow_frame),
            last_eviction_warning: None,
            evicted_since_warning: 0,
        };
        acceptor.accept_until(&listener, shutdown).await;

        // Closing the listener first makes new clients fail fast instead of queueing.
        drop(listener);
        stop_tx.send_replace(true);
        acceptor.drain().await
    }
}

/// The accept loop's state.
struct Acceptor<H, T> {
    config: MllpConfig,
    handler: Arc<H>,
    handshake: Arc<T>,
    handshake_warnings: Arc<HandshakeWarnings>,
    stop: watch::Receiver<bool>,
    tasks: JoinSet<()>,
    next_id: u64,
    per_peer: PeerCounts,
    last_refusal_warning: Option<std::time::Instant>,
    refused_since_warning: u64,
    /// Open connections and how long each has been idle (see [`crate::slots`]).
    slots: Arc<Registry>,
    last_eviction_warning: Option<std::time::Instant>,
    evicted_since_warning: u64,
}

/// Open connections per peer address, shared with the connection tasks.
type PeerCounts = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in [`PeerCounts`], given back when the task ends, panics included.
struct PeerSlot {
    ip: IpAddr,
    counts: PeerCounts,
}

impl PeerSlot {
    /// Takes a slot for `ip`, or `None` when it already holds `max`.
    fn take(counts: &PeerCounts, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut map = counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = map.entry(ip).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(PeerSlot {
            ip,
            counts: Arc::clone(counts),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = map.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl<H: MessageHandler, T: Handshake> Acceptor<H, T> {
    async fn accept_until(&mut self, listener: &TcpListener, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        loop {
            // At the cap a newcomer is accepted when a connection idle long enough can make way
            // for it; otherwise it waits in the backlog. Connections on their way out do not
            // count, but all tasks together stay within twice the cap.
            let max = self.config.max_connections;
            let at_cap = self.slots.staying() >= max;
            let can_accept =
                self.tasks.len() < max.saturating_mul(2) && (!at_cap || self.slots.has_evictable());
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                Some(ended) = self.tasks.join_next() => log_task_end(ended),
                accepted = listener.accept(), if can_accept => self.on_accept(accepted).await,
                () = tokio::time::sleep(CAP_RECHECK), if !can_accept => {}
            }
        }
    }

    async fn on_accept(&mut self, accepted: io::Result<(TcpStream, SocketAddr)>) {
        match accepted {
            Ok((stream, peer)) => self.spawn_connection(stream, peer),
            Err(e) => {
                warn!(error = %e, "accepting an MLLP connection failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }

    fn spawn_connection(&mut self, stream: TcpStream, peer: SocketAddr) {
        let max = self.config.max_connections_per_peer;
        let Some(slot) = PeerSlot::take(&self.per_peer, peer.ip(), max) else {
            self.refused_since_warning += 1;
            // One line a second at most: a peer hammering the cap must not flood the log.
            if self
                .last_refusal_warning
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
            {
                warn!(%peer, max, refused = self.refused_since_warning,
                    "MLLP peer holds its maximum of connections; closing new ones");
                self.last_refusal_warning = Some(std::time::Instant::now());
                self.refused_since_warning = 0;
            }
            return;
        };
        if self.slots.staying() >= self.config.max_connections && self.slots.evict_one() {
            self.evicted_since_warning += 1;
            if self
                .last_eviction_warning
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
            {
                warn!(
                    max = self.config.max_connections,
                    evicted = self.evicted_since_warning,
                    "MLLP connections at their maximum; closing idle or slow ones for newcomers"
                );
                self.last_eviction_warning = Some(std::time::Instant::now());
                self.evicted_since_warning = 0;
            }
        }
        let registration = self.slots.register(self.next_id);
        // Responses are single small writes; Nagle would only delay them.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, %peer, "could not set TCP_NODELAY");
        }
        let connection_id = self.next_id;
        self.next_id += 1;
        let span = tracing::info_span!("mllp_connection", connection_id, %peer);
        let handshake = Arc::clone(&self.handshake);
        let warnings = Arc::clone(&self.handshake_warnings);
        let handler = Arc::clone(&self.handler);
        let config = self.config.clone();
        let mut stop = self.stop.clone();
        self.tasks.spawn(
            async move {
                let _slot = slot;
                let activity = registration.activity.clone();
                let secured = tokio::select! {
                    secured = secure(&*handshake, stream, &config, &mut stop) => secured,
                    // A handshake that is still going after a second counts as idle.
                    () = activity.evicted() => return,
                };
                let (stream, identity) = match secured {
                    Ok(secured) => secured,
                    Err(failure) => {
                        warnings.note(peer, failure);
                        return;
                    }
                };
                let meta = FrameMeta {
                    peer,
                    connection_id,
                    identity,
                };
                let connection = Connection::new(stream, meta, handler, &config, stop)
                    .with_registration(registration);
                connection.serve().await;
            }
            .instrument(span),
        );
    }

    async fn drain(mut self) -> DrainOutcome {
        info!(
            open_connections = self.tasks.len(),
            "MLLP shutdown requested; finishing frames in flight"
        );
        let all_closed = async {
            while let Some(ended) = self.tasks.join_next().await {
                log_task_end(ended);
            }
        };
        if tokio::time::timeout(self.config.drain_timeout(), all_closed)
            .await
            .is_ok()
        {
            info!("MLLP drain finished; every connection closed");
            return DrainOutcome::Finished;
        }
        let aborted_connections = self.tasks.len();
        self.tasks.shutdown().await;
        info!(
            aborted_connections,
            "MLLP drain deadline passed; connections dropped"
        );
        DrainOutcome::DeadlinePassed {
            aborted_connections,
        }
    }
}

/// Why a connection ended before its handshake finished.
enum HandshakeFailure {
    Failed(io::Error),
    TimedOut,
    Shutdown,
}

/// Runs the handshake within `handshake_timeout_ms`, giving up at shutdown.
async fn secure<T: Handshake>(
    handshake: &T,
    stream: TcpStream,
    config: &MllpConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<(T::Stream, Option<Arc<PeerIdentity>>), HandshakeFailure> {
    let timed = tokio::time::timeout(config.handshake_timeout(), handshake.handshake(stream));
    tokio::select! {
        biased;
        done = timed => match done {
            Ok(Ok(secured)) => Ok(secured),
            Ok(Err(e)) => Err(HandshakeFailure::Failed(e)),
            Err(_) => Err(HandshakeFailure::TimedOut),
        },
        () = stop_requested(stop) => Err(HandshakeFailure::Shutdown),
    }
}

/// Failed handshakes, warned of once a second at most: a scanner or a misconfigured sender
/// retrying in a loop must not flood the log.
#[derive(Default)]
struct HandshakeWarnings {
    /// When the last warning was logged, and how many failures went unsaid since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl HandshakeWarnings {
    fn note(&self, peer: SocketAddr, failure: HandshakeFailure) {
        let error = match failure {
            HandshakeFailure::Failed(e) => e,
            HandshakeFailure::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                "not finished within handshake_timeout_ms",
            ),
            HandshakeFailure::Shutdown => {
                debug!("MLLP handshake cut short by shutdown");
                return;
            }
        };
        // A port probe or a TCP health check: connected, then closed without a word.
        if error.kind() == io::ErrorKind::UnexpectedEof {
            debug!(%peer, "MLLP peer closed before finishing the handshake");
            return;
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, unsaid) = &mut *state;
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            *unsaid += 1;
            debug!(%peer, %error, "MLLP handshake failed; closing");
            return;
        }
        warn!(%peer, %error, also_failed_since_last_warning = *unsaid,
            "MLLP handshake failed; closing");
        *last = Some(std::time::Instant::now());
        *unsaid = 0;
    }
}

fn log_task_end(ended: Result<(), JoinError>) {
    match ended {
        Err(e) if e.is_panic() => {
            error!("MLLP connection task panicked; its connection was dropped")
        }
        Err(_) | Ok(()) => {}
    }
}
