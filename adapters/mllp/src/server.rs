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

use crate::buffers::FrameBuffers;
use crate::config::MllpConfig;
use crate::connection::{stop_requested, Connection};
use crate::handshake::{Handshake, PeerIdentity, PlainTcp};
use crate::slots::Registry;

/// Pending connections the kernel holds while the acceptor cannot take them.
const LISTEN_BACKLOG: u32 = 1024;
/// Connections of one address waiting at the cap at most; a newer one takes the place of the
/// oldest (whose sender has likely given up on it) and keeps its turn.
const WAITING_PER_PEER: usize = 2;
/// Connections waiting at the cap at most: `max_connections`, or this many if more.
const WAITING_ROOM_MIN: usize = 256;
/// Addresses whose last admission is remembered, for taking turns.
const ADMITTED_MAX: usize = 4096;
/// Waiting addresses considered in turn for each slot: the first whose newcomer some
/// connection may make way for is let in.
const ADMISSION_TRIES: usize = 8;
/// Pause after a failed accept, which is usually file-descriptor exhaustion and needs time to clear.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// At the cap with newcomers waiting, how often to look for a connection that may make way.
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
        let buffers = Arc::new(FrameBuffers::new(config.max_buffered_bytes));
        let mut acceptor = Acceptor {
            config,
            handler,
            handshake,
            handshake_warnings: Arc::default(),
            stop: stop_rx,
            tasks: JoinSet::new(),
            next_id: 0,
            per_peer: PeerCounts::default(),
            waiting: Vec::new(),
            admitted: HashMap::new(),
            last_refusal_warning: None,
            refused_since_warning: 0,
            slots: Registry::new(slow_frame),
            buffers,
            last_eviction_warning: None,
            evicted_since_warning: 0,
        };
        acceptor.accept_until(&listener, shutdown).await;

        // Closing the listener first makes new clients fail fast instead of queueing; those
        // still waiting for a slot were never served and are closed too.
        drop(listener);
        acceptor.waiting.clear();
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
    /// Connections accepted at the cap, waiting for a slot (see [`crate::slots`]).
    waiting: Vec<Waiting>,
    /// When each address last had a waiting connection let in.
    admitted: HashMap<IpAddr, std::time::Instant>,
    last_refusal_warning: Option<std::time::Instant>,
    refused_since_warning: u64,
    /// Open connections and how long each has been idle (see [`crate::slots`]).
    slots: Arc<Registry>,
    /// The memory connections may hold in frames (see [`crate::buffers`]).
    buffers: Arc<FrameBuffers>,
    last_eviction_warning: Option<std::time::Instant>,
    evicted_since_warning: u64,
}

/// Where a waiting newcomer stands (see `admit_waiting`): unknown, connections held, most
/// recently accepted, last let in, waiting since.
type PlaceInLine = (
    bool,
    usize,
    std::cmp::Reverse<Option<tokio::time::Instant>>,
    Option<std::time::Instant>,
    std::time::Instant,
);

/// A connection accepted at the cap, not yet served.
struct Waiting {
    stream: TcpStream,
    peer: SocketAddr,
    slot: PeerSlot,
    /// When its address started waiting (see [`WAITING_PER_PEER`]).
    since: std::time::Instant,
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
            self.admit_waiting();
            // Newcomers are taken from the backlog into the waiting room, so that the next
            // slot goes to whoever is fairest (see `admit_waiting`), not to whoever reconnects
            // most often. Connections on their way out do not count against the cap, but all
            // tasks together stay within twice the cap.
            let can_accept = self.tasks.len() < self.config.max_connections.saturating_mul(2);
            let waiting = !self.waiting.is_empty();
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                Some(ended) = self.tasks.join_next() => log_task_end(ended),
                accepted = listener.accept(), if can_accept => self.on_accept(accepted).await,
                () = tokio::time::sleep(CAP_RECHECK), if waiting => {}
            }
        }
    }

    async fn on_accept(&mut self, accepted: io::Result<(TcpStream, SocketAddr)>) {
        match accepted {
            Ok((stream, peer)) => self.enqueue(stream, peer),
            Err(e) => {
                warn!(error = %e, "accepting an MLLP connection failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }

    /// Puts a newcomer in the waiting room, or closes it when its address already holds its
    /// maximum of connections.
    fn enqueue(&mut self, stream: TcpStream, peer: SocketAddr) {
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
        let mut since = std::time::Instant::now();
        let theirs = || self.waiting.iter().filter(|w| w.peer.ip() == peer.ip());
        if theirs().count() >= WAITING_PER_PEER {
            since = self.drop_oldest_waiting(peer.ip());
        } else if self.waiting.len() >= self.waiting_room() {
            // Full: the address waiting with the most gives up its oldest, if it has two.
            let mut counts: HashMap<IpAddr, usize> = HashMap::new();
            for w in &self.waiting {
                *counts.entry(w.peer.ip()).or_insert(0) += 1;
            }
            match counts.into_iter().max_by_key(|(_, n)| *n) {
                Some((ip, n)) if n > 1 => {
                    self.drop_oldest_waiting(ip);
                }
                // One each: the newcomer takes the place of the one that would go in last, if
                // it would go in before it (a known sender among many unknown addresses).
                _ => {
                    let holdings = self.slots.holdings();
                    let last = (0..self.waiting.len())
                        .map(|i| {
                            let w = &self.waiting[i];
                            (self.place_in_line(w.peer.ip(), w.since, &holdings), i)
                        })
                        .max();
                    let ours = self.place_in_line(peer.ip(), since, &holdings);
                    match last {
                        Some((theirs, i)) if ours < theirs => {
                            self.waiting.swap_remove(i);
                        }
                        _ => {
                            debug!(%peer, "MLLP waiting room full; closing the newcomer");
                            return;
                        }
                    }
                }
            }
        }
        self.waiting.push(Waiting {
            stream,
            peer,
            slot,
            since,
        });
    }

    fn waiting_room(&self) -> usize {
        self.config.max_connections.max(WAITING_ROOM_MIN)
    }

    /// Closes the oldest waiting connection of `ip` and returns since when `ip` has waited.
    fn drop_oldest_waiting(&mut self, ip: IpAddr) -> std::time::Instant {
        let oldest = (0..self.waiting.len())
            .filter(|&i| self.waiting[i].peer.ip() == ip)
            .min_by_key(|&i| self.waiting[i].since)
            .expect("an address with waiting connections");
        self.waiting.swap_remove(oldest).since
    }

    /// Serves waiting newcomers while there are slots, or connections that may make way for
    /// them. Known senders go first, then addresses holding the fewest connections, then the
    /// address with a message accepted most recently, then the address let in longest ago (or
    /// never), then the one waiting longest. Addresses take turns, so reconnecting over and
    /// over gains nothing, and an address that sent one message long ago does not go before
    /// one sending now.
    fn admit_waiting(&mut self) {
        let max = self.config.max_connections;
        while !self.waiting.is_empty() && self.tasks.len() < max.saturating_mul(2) {
            let holdings = self.slots.holdings();
            let staying: usize = holdings.values().sum();
            let mut order: Vec<(PlaceInLine, usize)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut by_age: Vec<usize> = (0..self.waiting.len()).collect();
            by_age.sort_by_key(|&i| self.waiting[i].since);
            for i in by_age {
                let ip = self.waiting[i].peer.ip();
                if seen.insert(ip) {
                    let place = self.place_in_line(ip, self.waiting[i].since, &holdings);
                    order.push((place, i));
                }
            }
            order.sort();
            let admitted = order
                .iter()
                .take(ADMISSION_TRIES)
                .find_map(|&((unknown, ..), i)| {
                    let ip = self.waiting[i].peer.ip();
                    if staying < max {
                        return Some(i);
                    }
                    let victim = self.slots.make_way_for(ip, !unknown, &holdings)?;
                    self.slots.evict(&victim);
                    self.note_eviction();
                    Some(i)
                });
            match admitted {
                Some(i) => {
                    let Waiting {
                        stream, peer, slot, ..
                    } = self.waiting.swap_remove(i);
                    self.took_turn(peer.ip());
                    self.spawn_connection(stream, peer, slot);
                }
                None => return,
            }
        }
    }

    /// Where a newcomer from `ip`, waiting since `since`, stands in line (lower goes first).
    fn place_in_line(
        &self,
        ip: IpAddr,
        since: std::time::Instant,
        holdings: &HashMap<IpAddr, usize>,
    ) -> PlaceInLine {
        let accepted = self.slots.last_accepted(ip);
        (
            accepted.is_none(),
            holdings.get(&ip).copied().unwrap_or(0),
            std::cmp::Reverse(accepted),
            self.admitted.get(&ip).copied(),
            since,
        )
    }

    fn took_turn(&mut self, ip: IpAddr) {
        if self.admitted.len() >= ADMITTED_MAX && !self.admitted.contains_key(&ip) {
            let longest_ago = self
                .admitted
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(ip, _)| *ip);
            if let Some(longest_ago) = longest_ago {
                self.admitted.remove(&longest_ago);
            }
        }
        self.admitted.insert(ip, std::time::Instant::now());
    }

    fn note_eviction(&mut self) {
        self.evicted_since_warning += 1;
        if self
            .last_eviction_warning
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            warn!(
                max = self.config.max_connections,
                evicted = self.evicted_since_warning,
                waiting = self.waiting.len(),
                "MLLP connections at their maximum; closing idle or slow ones for newcomers"
            );
            self.last_eviction_warning = Some(std::time::Instant::now());
            self.evicted_since_warning = 0;
        }
    }

    fn spawn_connection(&mut self, stream: TcpStream, peer: SocketAddr, slot: PeerSlot) {
        let registration = self.slots.register(self.next_id, peer.ip());
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
        let buffers = Arc::clone(&self.buffers);
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
                    .with_registration(registration)
                    .with_buffers(&buffers);
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
