//! The HTTP carrier: one server span per request, continued from the `traceparent` and
//! `tracestate` request headers when they are valid (several `traceparent` headers are
//! invalid). Attributes follow the stable HTTP semantic conventions; the query string is not
//! recorded, since its values can be patient data.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use actix_web::Error;
use tracing::Instrument;

use crate::telemetry::{continue_trace, TraceParent};

pub async fn trace_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let method = crate::telemetry::metrics::known_method(req.method().as_str());
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %req.path(),
        url.scheme = %req.connection_info().scheme(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    continue_trace(&span, parent_from(req.headers()).as_ref());
    let started = std::time::Instant::now();
    let response = next.call(req).instrument(span.clone()).await?;
    let status = response.status();
    crate::telemetry::metrics::metrics().http_request(
        &route,
        &method,
        status.as_u16(),
        started.elapsed(),
    );
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let trace_id = crate::telemetry::span_traceparent(&span)
        .map(|(tp, _)| tp[3..35].to_string())
        .unwrap_or_default();
    tracing::debug!(
        parent: &span,
        method = %method,
        route = %route,
        status = status.as_u16(),
        trace_id = %trace_id,
        "request answered"
    );
    Ok(response)
}

fn parent_from(headers: &HeaderMap) -> Option<TraceParent> {
    let mut parents = headers.get_all("traceparent");
    let first = parents.next();
    let traceparent = if parents.next().is_some() {
        Some("")
    } else {
        first.and_then(|v| v.to_str().ok())
    };
    let tracestate: Vec<&str> = headers
        .get_all("tracestate")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let tracestate = (!tracestate.is_empty()).then(|| tracestate.join(","));
    TraceParent::from_carrier(traceparent, tracestate.as_deref())
}
