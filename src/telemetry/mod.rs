//! Logs and traces.
//!
//! Logs are JSON lines on stdout, filtered by `RUST_LOG` (default `info`), each written inside a
//! span carrying that span's `trace_id` and `span_id`. Spans always get
//! W3C ids — every carrier needs them, exported or not — and are exported over OTLP (batch
//! processor) only when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set, as `http/protobuf` (the default) or `grpc`, chosen by `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`
//! or `OTEL_EXPORTER_OTLP_PROTOCOL`. The other standard `OTEL_*` variables (headers, timeout,
//! service name, resource attributes, sampler) are read by the OpenTelemetry SDK itself; the
//! `http/protobuf` exporter's HTTP client is made here (`otlp_http_client`) and reads the
//! timeout as well.
//!
//! Level policy: per-message and per-request work at debug; lifecycle (listening, shutting down)
//! at info; recovered surprises at warn; error only when data was rejected for a reason an
//! operator must act on. No patient data at any level.

mod log_format;
mod log_rate;
pub mod metrics;
pub mod trace_context;

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use log_rate::LogRate;
pub use trace_context::{format_span_context, TraceParent};

const SERVICE_NAME: &str = "hl7bridge";

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] before exiting so buffered
/// spans are flushed.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
    /// The gRPC exporter's connection lives on a runtime of its own: the batch processor runs
    /// on a plain thread, and the server's runtime does not exist yet when this is built.
    grpc_runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Installs the global subscriber. Call it before starting the async runtime: the OTLP HTTP
    /// client is a blocking one and must not be created inside it.
    pub fn init() -> anyhow::Result<Telemetry> {
        Telemetry::init_with_log_filter("info")
    }

    /// As [`Telemetry::init`], with another log filter for when `RUST_LOG` is unset.
    pub fn init_with_log_filter(default_filter: &str) -> anyhow::Result<Telemetry> {
        let (provider, exporting, grpc_runtime) = tracer_provider()?;
        let tracer = provider.tracer(SERVICE_NAME);
        // The log filter applies to the log layer only: RUST_LOG=warn must not switch off the
        // spans whose ids every carrier propagates.
        // actix-http logs every malformed request at ERROR: anyone could flood the log at the
        // level reserved for operators. Those are the client's errors, not ours.
        let quiet = format!("{default_filter},actix_http::h1::dispatcher=off");
        let log_filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(quiet));
        let logs = tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(log_format::WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(false),
            ));
        let spans = tracing_opentelemetry::layer().with_tracer(tracer);
        tracing_subscriber::registry()
            .with(logs.with_filter(log_filter))
            .with(spans.with_filter(LevelFilter::INFO))
            .try_init()?;
        Ok(Telemetry {
            provider,
            exporting,
            grpc_runtime,
        })
    }

    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes and stops the exporter, waiting at most five seconds.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("hl7bridge: flushing spans failed: {err}");
        }
        if let Some(runtime) = self.grpc_runtime {
            // Not a blocking drop: this may run where blocking a runtime is not allowed.
            runtime.shutdown_background();
        }
    }
}

type Provider = (SdkTracerProvider, bool, Option<tokio::runtime::Runtime>);

fn tracer_provider() -> anyhow::Result<Provider> {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let exporting = otlp_configured();
    let mut grpc_runtime = None;
    if exporting {
        let exporter = match otlp_protocol()?.as_str() {
            "grpc" => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otlp-grpc")
                    .enable_all()
                    .build()?;
                let exporter = {
                    let _inside = runtime.enter();
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .build()?
                };
                grpc_runtime = Some(runtime);
                exporter
            }
            _ => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(otlp_http_client()?)
                .build()?,
        };
        builder = builder.with_batch_exporter(exporter);
    }
    Ok((builder.build(), exporting, grpc_runtime))
}

/// The `http/protobuf` exporter's client. opentelemetry-otlp would build one with reqwest's
/// default TLS provider, which this build leaves out (see Cargo.toml): that client would panic.
/// This one has rustls on ring, and verifies an https:// endpoint against the system's roots.
fn otlp_http_client() -> anyhow::Result<reqwest::blocking::Client> {
    use anyhow::Context;
    let roots = crate::tls::system_roots().unwrap_or_else(|_| rustls::RootCertStore::empty());
    let tls = crate::tls::https_client_config(roots)?;
    let timeout = [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis);
    // On a thread of its own, as opentelemetry-otlp does: reqwest's blocking client starts a
    // runtime, which cannot be done from within the caller's, if it has one.
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .build()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))?
    .context("building the OTLP HTTP client")
}

/// `grpc` or `http/protobuf` (the default); anything else is refused at start, not ignored.
fn otlp_protocol() -> anyhow::Result<String> {
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    .unwrap_or_else(|| "http/protobuf".to_string());
    match protocol.trim() {
        p @ ("grpc" | "http/protobuf") => Ok(p.to_string()),
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: use grpc or http/protobuf"
        ),
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// Makes `parent` the parent of `span` when the carrier held a valid context.
pub fn continue_trace(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let Some(parent) = parent {
        // Fails only when no OpenTelemetry layer is installed; then there is nothing to join.
        let _ = span.set_parent(parent.to_context());
    }
}

/// Links `span` to a context that a payload carried (a posted Bundle's meta, say) when it
/// differs from the span's own: the transport carrier is the parent, the payload's a link.
pub fn link_payload_context(span: &tracing::Span, payload: Option<&TraceParent>) {
    let Some(payload) = payload else { return };
    let linked = payload.to_context();
    let linked = linked.span().span_context().clone();
    let own = span.context().span().span_context().clone();
    if linked.trace_id() != own.trace_id() || linked.span_id() != own.span_id() {
        span.add_link(linked);
    }
}

/// Links `span` to `linked` unconditionally (a batch span to each of its messages).
pub fn add_link(span: &tracing::Span, linked: &TraceParent) {
    let cx = linked.to_context();
    span.add_link(cx.span().span_context().clone());
}

/// Links `span` to `other` (a message to the connection it came over), when `other` is a
/// valid, recorded span.
pub fn link_span(span: &tracing::Span, other: &tracing::Span) {
    let other = other.context().span().span_context().clone();
    if other.is_valid() {
        span.add_link(other);
    }
}

/// `traceparent` (and `tracestate`) naming `span`, for outbound carriers.
pub fn span_traceparent(span: &tracing::Span) -> Option<(String, Option<String>)> {
    let cx = span.context();
    let span_ref = cx.span();
    format_span_context(span_ref.span_context())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_tracing(test: impl FnOnce()) {
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn a_root_span_gets_a_new_valid_trace() {
        with_tracing(|| {
            let span = tracing::info_span!("root");
            let (traceparent, _) = span_traceparent(&span).expect("a valid context");
            assert_eq!(traceparent.len(), 55);
        });
    }

    #[test]
    fn a_differing_payload_context_becomes_a_link_of_the_transport_span() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        let transport = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let payload = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            continue_trace(
                &span,
                TraceParent::from_carrier(Some(transport), None).as_ref(),
            );
            link_payload_context(
                &span,
                TraceParent::from_carrier(Some(payload), None).as_ref(),
            );
        });
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(
            spans[0].span_context.trace_id().to_string(),
            &transport[3..35]
        );
        let link = &spans[0].links.links[0];
        assert_eq!(link.span_context.trace_id().to_string(), &payload[3..35]);
    }

    #[test]
    fn a_continued_span_keeps_the_trace_id_under_a_new_span_id() {
        with_tracing(|| {
            let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("child");
            continue_trace(
                &span,
                TraceParent::from_carrier(Some(parent), None).as_ref(),
            );
            let (traceparent, _) = span_traceparent(&span).unwrap();
            assert_eq!(&traceparent[..36], &parent[..36]);
            assert_ne!(traceparent, parent);
        });
    }
}
