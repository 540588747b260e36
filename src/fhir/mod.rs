//! The FHIR R4 REST facade (JSON), on actix-web.
//!
//! Routes: `GET /metadata`, `POST /` (transaction or batch), `GET /{type}?identifier=…|_id=…`,
//! `GET /{type}/{id}`, `GET /{type}/{id}/_history/{vid}`, `GET /Patient/{id}/$everything`. Anything else answers with an
//! OperationOutcome. Every request runs in a server span continued from its `traceparent`
//! header (see [`http_trace`]), and every Bundle carries that span's context in `meta`.

pub mod bundle;
mod capability;
pub mod criteria;
pub mod error;
mod handlers;
mod http_trace;
pub mod id;
mod negotiate;
mod references;
pub mod transaction;

use actix_web::web;

pub use http_trace::trace_requests;
pub use negotiate::json_only;

use crate::store::Store;

/// What the handlers share.
pub struct FhirState {
    pub store: Store,
    /// The base URL clients see; when `None`, taken from each request.
    pub public_base_url: Option<String>,
    pub canonical_base: String,
    pub max_body_bytes: usize,
    /// How long a request body may stall between chunks.
    pub body_idle_timeout: std::time::Duration,
    pub bundle_limits: transaction::BundleLimits,
    /// Held by Bundles with conditional parts from lookup to commit (see `transaction`).
    pub conditional_gate: tokio::sync::Mutex<()>,
    /// When this server started, as a FHIR instant.
    pub started: String,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metadata", web::get().to(handlers::metadata))
        .route("/", web::post().to(handlers::post_bundle))
        .route(
            "/Patient/{id}/$everything",
            web::get().to(handlers::everything),
        )
        .route("/{type}", web::get().to(handlers::search))
        .route("/{type}/{id}", web::get().to(handlers::read))
        .route(
            "/{type}/{id}/_history/{vid}",
            web::get().to(handlers::vread),
        )
        .default_service(web::to(handlers::unsupported));
}
