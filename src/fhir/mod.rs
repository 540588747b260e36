//! The FHIR R4 REST facade (JSON, and XML at the boundary: see [`negotiate`]), on actix-web.
//!
//! Routes: `GET /metadata`, `POST /` (transaction or batch), `POST /{type}` (create, with
//! `If-None-Exist`), `PUT /{type}/{id}` (update or create), `DELETE /{type}/{id}`,
//! `GET /{type}?identifier=…|_id=…`,
//! `GET /{type}/{id}`, `GET /{type}/{id}/_history` (paged, newest first),
//! `GET /{type}/{id}/_history/{vid}`, `GET /Patient/{id}/$everything`, `GET /Patient/$everything`, and
//! `GET /StructureDefinition/w3c-trace-context`, the definition of the extension every emitted
//! Bundle carries. Anything else answers with an OperationOutcome. Every request runs in a server span continued from its `traceparent`
//! header (see [`http_trace`]), and every Bundle carries that span's context in `meta`.

mod access;
mod audit_api;
pub mod bundle;
mod capability;
pub mod criteria;
mod definitions;
pub mod error;
pub(crate) mod handlers;
mod http_trace;
pub mod id;
pub mod json;
mod negotiate;
mod patch;
mod references;
mod rest;
pub(crate) mod search;
mod summary;
pub mod transaction;

use actix_web::web;

pub use access::guard;
pub use http_trace::trace_requests;
pub use negotiate::negotiate;

use crate::store::Store;

/// What the handlers share.
pub struct FhirState {
    /// For writes, and for the reads that decide what to write.
    pub store: Store,
    /// For the read interactions: may be served by the read replica.
    pub reads: Store,
    /// The base URL clients see; when `None`, taken from each request.
    pub public_base_url: Option<String>,
    pub canonical_base: String,
    pub max_body_bytes: usize,
    pub body_timeouts: BodyTimeouts,
    /// Bounds the memory of Bundles being read and processed at once (see [`BodyBudget`]).
    pub body_budget: BodyBudget,
    pub bundle_limits: transaction::BundleLimits,
    /// Held by Bundles with conditional parts from lookup to commit (see `transaction`).
    /// Shared with the Kafka FHIR path, so conditional creates from both find each other.
    pub conditional_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// `$everything` answers in one Bundle up to this many resources, then in pages this size.
    pub everything_page_limit: u64,
    /// The most resources a client may ask for on one page (`_count`).
    pub max_count: u64,
    /// When this server started, as a FHIR instant.
    pub started: String,
    /// Verifies bearer tokens; `None` when authentication is off.
    pub auth: Option<std::sync::Arc<crate::auth::Authenticator>>,
    pub audit: crate::audit::AuditTrail,
}

/// The default cap on `_count`.
pub const fn search_max_count() -> u64 {
    search::MAX_COUNT
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metadata", web::get().to(handlers::metadata))
        .route("/", web::post().to(handlers::post_bundle))
        .route(
            "/Patient/$everything",
            web::get().to(handlers::everything_all),
        )
        .route(
            "/Patient/$everything",
            web::post().to(handlers::everything_all_post),
        )
        .route(
            "/Patient/{id}/$everything",
            web::get().to(handlers::everything),
        )
        .route(
            "/Patient/{id}/$everything",
            web::post().to(handlers::everything_post),
        )
        .route(
            "/StructureDefinition/w3c-trace-context",
            web::get().to(handlers::trace_context_definition),
        )
        .route("/AuditEvent", web::get().to(audit_api::search))
        .route("/AuditEvent", web::route().to(audit_api::immutable))
        .route("/AuditEvent/{id}", web::get().to(audit_api::read))
        .route("/AuditEvent/{id}", web::route().to(audit_api::immutable))
        .route("/_history", web::get().to(handlers::system_history))
        .route("/{type}/_history", web::get().to(handlers::type_history))
        .route("/{type}", web::get().to(handlers::search))
        .route("/{type}/_search", web::post().to(handlers::search_post))
        .route("/{type}", web::post().to(rest::create))
        .route("/{type}", web::put().to(rest::conditional_update))
        .route("/{type}", web::delete().to(rest::conditional_delete))
        .route("/{type}/{id}/_history", web::get().to(handlers::history))
        .route("/{type}/{id}", web::put().to(rest::update))
        .route("/{type}/{id}", web::delete().to(rest::delete))
        .route("/{type}/{id}", web::patch().to(rest::patch))
        .route("/{type}/{id}", web::get().to(handlers::read))
        .route(
            "/{type}/{id}/_history/{vid}",
            web::get().to(handlers::vread),
        )
        .default_service(web::to(handlers::unsupported));
}

/// How long a request body may take: between chunks, and in all. While connection slots run
/// short the limits tighten to [`BodyTimeouts::PRESSED_IDLE`] and [`BodyTimeouts::PRESSED_TOTAL`],
/// so that bodies trickling in cannot hold every slot and lock other clients out.
#[derive(Debug, Clone)]
pub struct BodyTimeouts {
    pub idle: std::time::Duration,
    pub total: std::time::Duration,
    pub connections: std::sync::Arc<OpenConnections>,
}

impl BodyTimeouts {
    pub const PRESSED_IDLE: std::time::Duration = std::time::Duration::from_secs(2);
    pub const PRESSED_TOTAL: std::time::Duration = std::time::Duration::from_secs(10);

    /// The (idle, total) limits that hold now: tight while connection slots run short or
    /// another request waits for the memory budget that bodies being read hold.
    pub fn now(&self) -> (std::time::Duration, std::time::Duration) {
        if self.connections.short_of_slots() || self.connections.budget_wanted() {
            (
                self.idle.min(Self::PRESSED_IDLE),
                self.total.min(Self::PRESSED_TOTAL),
            )
        } else {
            (self.idle, self.total)
        }
    }
}

/// While three quarters of the HTTP connection slots are taken, each response closes its
/// connection (HTTP/1.1), so that clients keeping their connections alive with steady requests
/// give their slots back in turn, and a client waiting in the listen backlog gets one (they
/// queue behind it when they reconnect). A hostile tester held every slot from four addresses
/// each sending `GET /health` every two seconds, and locked everyone else out.
pub async fn recycle_connections(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let state = req.app_data::<actix_web::web::Data<FhirState>>().cloned();
    let mut res = next.call(req).await?;
    if state.is_some_and(|s| s.body_timeouts.connections.short_of_slots()) {
        res.response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(res)
}

/// Open HTTP connections, counted as they open and close, in all and per client address.
#[derive(Debug)]
pub struct OpenConnections {
    open: std::sync::atomic::AtomicUsize,
    max: usize,
    per_peer: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    max_per_peer: usize,
    /// Refusals logged, one a second at most.
    refusals: crate::telemetry::LogRate,
    /// Requests waiting for the body budget (see [`BodyBudget::reserve`]).
    budget_waiters: std::sync::atomic::AtomicUsize,
}

impl OpenConnections {
    pub fn new(max: usize, max_per_peer: usize) -> std::sync::Arc<OpenConnections> {
        std::sync::Arc::new(OpenConnections {
            open: Default::default(),
            max,
            per_peer: Default::default(),
            max_per_peer,
            refusals: crate::telemetry::LogRate::new(1),
            budget_waiters: Default::default(),
        })
    }

    fn peers(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.per_peer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection from `peer` until the guard is dropped (with the connection);
    /// `None` when `peer` already holds its maximum.
    pub fn opened(
        self: &std::sync::Arc<Self>,
        peer: Option<std::net::IpAddr>,
    ) -> Option<OpenConnection> {
        if let Some(ip) = peer {
            let mut peers = self.peers();
            let held = peers.entry(ip).or_insert(0);
            if *held >= self.max_per_peer {
                return None;
            }
            *held += 1;
        }
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(OpenConnection(self.clone(), peer))
    }

    /// Warns of connections refused for their client's limit, once a second at most.
    fn refused(&self, peer: Option<std::net::IpAddr>) {
        if let Some(unlogged_before) = self.refusals.admit() {
            tracing::warn!(
                peer = ?peer,
                max = self.max_per_peer,
                unlogged_before,
                "HTTP client holds its maximum of connections; closing new ones"
            );
        }
    }

    /// Some request is waiting for the body budget: bodies trickling in while holding it
    /// must not make it wait for minutes.
    pub fn budget_wanted(&self) -> bool {
        self.budget_waiters
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    }

    /// Three quarters of the slots or more are taken.
    pub fn short_of_slots(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::Relaxed) * 4 >= self.max * 3
    }
}

/// Counts each new connection (see `HttpServer::on_connect`), or closes it at once when its
/// client already holds `HTTP_MAX_CONNECTIONS_PER_PEER`: a connection that is never counted
/// cannot take a slot another client needs.
pub fn on_connect(
    connections: &std::sync::Arc<OpenConnections>,
    connection: &dyn std::any::Any,
    extensions: &mut actix_web::dev::Extensions,
) {
    use actix_web::rt::net::TcpStream;
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;
    let tcp = connection
        .downcast_ref::<TcpStream>()
        .or_else(|| connection.downcast_ref::<Tls>().map(|tls| tls.get_ref().0));
    let peer = tcp.and_then(|tcp| tcp.peer_addr().ok()).map(|a| a.ip());
    match connections.opened(peer) {
        // Dropped with the connection, so the counts fall as connections close.
        Some(open) => {
            extensions.insert(open);
        }
        None => {
            if let Some(tcp) = tcp {
                // The connection ends here: actix reads end of input and drops it.
                let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both);
            }
            connections.refused(peer);
        }
    }
}

/// One open connection in [`OpenConnections`], and its client's address.
pub struct OpenConnection(std::sync::Arc<OpenConnections>, Option<std::net::IpAddr>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(ip) = self.1 {
            let mut peers = self.0.peers();
            if let Some(held) = peers.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    peers.remove(&ip);
                }
            }
        }
    }
}

/// A Bundle takes about twenty-five times its size in memory while it is parsed and checked.
/// Requests reserve their declared size (the maximum when undeclared) from this budget before
/// reading, so concurrent large Bundles wait for each other instead of exhausting memory.
pub struct BodyBudget {
    permits: tokio::sync::Semaphore,
    total_mib: u32,
    max_body_bytes: usize,
}

impl BodyBudget {
    /// A budget of `total_bytes`, in whole MiB.
    pub fn new(total_bytes: usize, max_body_bytes: usize) -> BodyBudget {
        let total_mib = u32::try_from((total_bytes >> 20).max(1)).unwrap_or(u32::MAX);
        BodyBudget {
            permits: tokio::sync::Semaphore::new(total_mib as usize),
            total_mib,
            max_body_bytes,
        }
    }

    /// Reserves the declared size (the maximum when undeclared). While it waits, `waiting`
    /// says so, which tightens the time limits of the bodies holding the budget (see
    /// [`BodyTimeouts::now`]): slow uploads cannot keep other writes waiting for minutes.
    pub async fn reserve(
        &self,
        declared: Option<usize>,
        waiting: &OpenConnections,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // A small declared body takes none: such bodies are bounded by the connection limit,
        // and a small write must not queue behind large uploads.
        if declared.is_some_and(|d| d < 1 << 20) {
            return None;
        }
        // A parsed body may be charged more than its size (see `grow`), up to the whole budget.
        let bytes = declared
            .unwrap_or(self.max_body_bytes)
            .min(self.total_bytes());
        let mib = u32::try_from(bytes.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_mib);
        if let Ok(permit) = self.permits.try_acquire_many(mib) {
            return Some(permit);
        }
        // Counted until this wait ends, however it ends (a client that goes away drops it).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        waiting
            .budget_waiters
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _waiting = Waiting(&waiting.budget_waiters);
        self.permits.acquire_many(mib).await.ok()
    }

    /// The whole budget, in bytes.
    pub fn total_bytes(&self) -> usize {
        (self.total_mib as usize) << 20
    }

    /// The budget a parsed body keeps while its request is processed: none under 1 MiB (small
    /// requests are bounded by the connection limit, and must not queue behind large ones);
    /// else `held` when it covers `bytes`, or else `held` given back and `bytes` (at most the
    /// whole budget) reserved anew, so that no request holds part of the budget while it waits
    /// for more.
    pub async fn grow<'a>(
        &'a self,
        held: Option<tokio::sync::SemaphorePermit<'a>>,
        bytes: usize,
        waiting: &OpenConnections,
    ) -> Option<tokio::sync::SemaphorePermit<'a>> {
        if bytes < 1 << 20 {
            return None;
        }
        let wanted = bytes.min(self.total_bytes()).div_ceil(1 << 20).max(1);
        if held
            .as_ref()
            .is_some_and(|permit| permit.num_permits() >= wanted)
        {
            return held;
        }
        drop(held);
        self.reserve(Some(bytes), waiting).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_parsed_body_keeps_what_it_is_charged_and_small_ones_keep_nothing() {
        const MIB: usize = 1 << 20;
        let budget = BodyBudget::new(8 * MIB, 4 * MIB);
        let connections = OpenConnections::new(16, 16);
        let held = budget.reserve(Some(MIB), &connections).await;
        assert_eq!(budget.permits.available_permits(), 7);
        // Charged at 3 MiB after parsing (tiny values): it now holds 3.
        let grown = budget.grow(held, 3 * MIB, &connections).await.unwrap();
        assert_eq!(grown.num_permits(), 3);
        assert_eq!(budget.permits.available_permits(), 5);
        // Charged beyond the largest body (a body of tiny values): up to the whole budget.
        let most = budget
            .grow(Some(grown), 40 * MIB, &connections)
            .await
            .unwrap();
        assert_eq!(most.num_permits(), 8);
        drop(most);
        // A small body gives its reservation back once parsed.
        let held = budget.reserve(Some(1000), &connections).await;
        assert!(budget.grow(held, 900 * 1024, &connections).await.is_none());
        assert_eq!(budget.permits.available_permits(), 8);
    }
}
