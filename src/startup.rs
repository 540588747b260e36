//! Building and running the application: every listener is bound in [`Application::build`], so
//! callers (and tests, on port 0) learn the real addresses before anything runs; one shutdown
//! signal then reaches the HTTP server and the MLLP accept loop, and draining has a deadline.
//! TLS certificates and keys are read before anything is bound, so a bad file stops the start.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use hl7bridge_mllp::{DrainOutcome, MllpConfig, MllpServer};
use tokio::sync::watch;

use crate::audit::AuditTrail;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::fhir::{self, FhirState};
use crate::ingest::Hl7Ingest;
use crate::kafka::{FhirIngest, Kafka};
use crate::store::{instant_text, now_us, CacheLimits, GroupLimits, ReplicaSettings, Store};
use crate::tls::{self, MllpTls};

/// A built, bound, not yet running server.
pub struct Application {
    http: actix_web::dev::Server,
    http_addr: SocketAddr,
    mllp: MllpServer,
    mllp_tls: Option<Arc<MllpTls>>,
    ingest: Arc<Hl7Ingest>,
    kafka: Option<Kafka>,
    store: Store,
    audit: AuditTrail,
    /// The audit writer: it ends once the trail is closed and written out.
    audit_writer: tokio::task::JoinHandle<()>,
    shutdown_timeout: Duration,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let http_tls = config
            .http_tls
            .as_ref()
            .map(tls::http_server_config)
            .transpose()?;
        let mllp_tls = match &config.mllp_tls {
            Some(settings) => Some(Arc::new(MllpTls::new(settings)?)),
            None => None,
        };
        // Listeners next: a port in use fails fast, before a database file is created.
        let listener = TcpListener::bind(config.http_addr)
            .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
        let mllp_config = MllpConfig {
            max_frame_bytes: config.mllp_max_frame_bytes,
            max_buffered_bytes: config.mllp_max_buffered_bytes,
            max_connections: config.mllp_max_connections,
            max_connections_per_peer: config.mllp_max_connections_per_peer,
            idle_timeout_ms: config.mllp_idle_timeout_ms,
            frame_timeout_ms: config.mllp_frame_timeout_ms,
            handshake_timeout_ms: config.tls_handshake_timeout_ms,
            ..MllpConfig::default()
        };
        let mllp = MllpServer::bind(config.mllp_addr, mllp_config)
            .await
            .with_context(|| format!("binding MLLP on {}", config.mllp_addr))?;
        let store = open_store(&config).await?;
        let auth = match &config.auth {
            Some(settings) => Some(Arc::new(
                Authenticator::load(settings.clone())
                    .await
                    .context("loading the token signing keys (HL7BRIDGE_AUTH_JWKS_*)")?,
            )),
            None => None,
        };
        tokio::spawn(index_deferred(store.clone()));
        let (audit, audit_writer) = AuditTrail::start(store.clone(), config.audit_retention_days);
        let audit_handle = audit.clone();
        let conditional_gate = Arc::new(tokio::sync::Mutex::new(()));
        let (http, http_addr) = http_server(
            &config,
            listener,
            http_tls,
            store.clone(),
            conditional_gate.clone(),
            auth,
            audit.clone(),
        )?;
        let ingest = Arc::new(Hl7Ingest::new(store.clone(), &config).with_audit(audit));
        let kafka = match &config.kafka {
            Some(settings) => {
                let fhir = Arc::new(FhirIngest {
                    store: store.clone(),
                    conditional_gate,
                    bundle_limits: fhir::transaction::BundleLimits {
                        max_entries: config.max_bundle_entries,
                    },
                    trace_extension_url: fhir::bundle::BundleTrace::extension_url(
                        &config.canonical_base,
                    ),
                    public_base_url: config.public_base_url.clone(),
                });
                let kafka = Kafka::start(settings, ingest.clone(), fhir)
                    .context("starting the Kafka adapter")?;
                Some(kafka)
            }
            None => None,
        };
        tracing::info!(
            http = %http_addr,
            http_tls = config.http_tls.is_some(),
            mllp = %mllp.local_addr(),
            mllp_tls = mllp_tls_mode(&config),
            database = %redacted_url(&config.database_url),
            replica = config.database_replica_url.as_deref().map(redacted_url),
            "hl7bridge listening"
        );
        Ok(Application {
            http,
            http_addr,
            mllp,
            mllp_tls,
            ingest,
            kafka,
            store,
            audit: audit_handle,
            audit_writer,
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn mllp_addr(&self) -> SocketAddr {
        self.mllp.local_addr()
    }

    /// Runs until `shutdown` completes or a listener stops by itself, then drains both.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let http_handle = self.http.handle();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mllp = tokio::spawn(run_mllp(self.mllp, self.mllp_tls, self.ingest, stop_rx));
        let mut http = tokio::spawn(self.http);
        let ended_by_itself = tokio::select! {
            _ = shutdown => None,
            result = &mut http => Some(result),
        };
        match &ended_by_itself {
            None => tracing::info!("shutdown signal received; draining"),
            Some(result) => tracing::error!(?result, "the HTTP server stopped by itself"),
        }
        let _ = stop_tx.send(true);
        let kafka = self.kafka;
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            stop_http(http_handle, ended_by_itself.is_none(), http).await;
            let mllp = mllp.await;
            // Last: the relay publishes what HTTP and MLLP committed while draining.
            if let Some(kafka) = kafka {
                kafka.stop().await;
            }
            mllp
        })
        .await;
        // The trail of everything answered so far, written out before the database closes.
        self.audit.close().await;
        if tokio::time::timeout(self.shutdown_timeout, self.audit_writer)
            .await
            .is_err()
        {
            tracing::warn!("writing out the audit trail passed its deadline");
        }
        match drained {
            Ok(Ok(DrainOutcome::Finished)) => tracing::info!("drained; stopped cleanly"),
            Ok(outcome) => tracing::warn!(?outcome, "stopped without draining every connection"),
            Err(_) => tracing::warn!("draining passed its deadline; stopping anyway"),
        }
        self.store.close().await;
        Ok(())
    }
}

/// The database `config` names, migrated, with the change feed on when Kafka is configured and
/// group commit as configured. Needs a Tokio runtime.
/// Indexes the search values an import deferred and did not get to index (it was stopped):
/// until then searches on them miss those resources.
async fn index_deferred(store: Store) {
    match store.index_backlog_len().await {
        Ok(0) => return,
        Ok(waiting) => tracing::warn!(
            waiting,
            "resources wait for their search values to be indexed; indexing them now"
        ),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the index backlog; run `hl7bridge reindex`");
            return;
        }
    }
    match store.drain_index_backlog(|_| {}).await {
        Ok(done) => tracing::info!(done, "deferred search values indexed"),
        Err(err) => {
            tracing::warn!(error = %err, "indexing the backlog failed; run `hl7bridge reindex`")
        }
    }
}

pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    open_store_with(config, false).await
}

/// As [`open_store`]; `defer_search_index` makes its writes leave search values to the
/// reindex (`hl7bridge import --defer-index`).
pub async fn open_store_with(config: &Config, defer_search_index: bool) -> anyhow::Result<Store> {
    let mut store = Store::connect_with(&config.database_url, &config.database_pool)
        .await
        .context("opening the database")?;
    if defer_search_index {
        store = store.deferring_search_index();
    }
    if let Some(url) = &config.database_replica_url {
        let settings = ReplicaSettings {
            url: url.clone(),
            max_lag: Duration::from_millis(config.replica_max_lag_ms),
        };
        store = store
            .with_replica(&settings)
            .await
            .context("opening the read replica")?;
    }
    if config.kafka.is_some() {
        store = store.with_change_feed();
    }
    // Before group commit: the committers' writes must invalidate it.
    if config.read_cache_max_bytes > 0 {
        let limits = CacheLimits {
            max_bytes: config.read_cache_max_bytes,
            ..CacheLimits::default()
        };
        store = store
            .with_read_cache(limits)
            .await
            .context("starting the read cache")?;
        if let Some(url) = &config.redis_url {
            store = store
                .with_shared_cache(
                    url,
                    config.redis_prefix.as_deref(),
                    Duration::from_secs(config.redis_ttl_s),
                )
                .context("HL7BRIDGE_REDIS_URL")?;
        }
    }
    if config.group_commit_max_writes > 1 {
        store = store.with_group_commit(GroupLimits {
            max_writes: config.group_commit_max_writes,
            max_ops: config.group_commit_max_ops.max(1),
        });
    }
    Ok(store)
}

async fn run_mllp(
    mllp: MllpServer,
    tls: Option<Arc<MllpTls>>,
    ingest: Arc<Hl7Ingest>,
    mut stop: watch::Receiver<bool>,
) -> DrainOutcome {
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    match tls {
        Some(tls) => mllp.run_with(ingest, tls, stopped).await,
        None => mllp.run(ingest, stopped).await,
    }
}

/// How MLLP is served, for the start-up line.
fn mllp_tls_mode(config: &Config) -> &'static str {
    match &config.mllp_tls {
        None => "off",
        Some(tls) if tls.senders.is_some() => "client certificates, sender map",
        Some(tls) if tls.client_ca.is_some() => "client certificates",
        Some(_) => "on",
    }
}

async fn stop_http(
    handle: ServerHandle,
    still_running: bool,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    if still_running {
        handle.stop(true).await;
        let _ = http.await;
    }
}

/// The database URL without its password, for the log.
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}

fn http_server(
    config: &Config,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    store: Store,
    conditional_gate: Arc<tokio::sync::Mutex<()>>,
    auth: Option<Arc<Authenticator>>,
    audit: AuditTrail,
) -> anyhow::Result<(actix_web::dev::Server, SocketAddr)> {
    let addr = listener.local_addr()?;
    let connections = fhir::OpenConnections::new(
        config.http_max_connections,
        config.http_max_connections_per_peer,
    );
    let state = web::Data::new(FhirState {
        reads: store.replica_reads(),
        store,
        public_base_url: config.public_base_url.clone(),
        canonical_base: config.canonical_base.clone(),
        max_body_bytes: config.max_body_bytes,
        body_timeouts: fhir::BodyTimeouts {
            idle: Duration::from_millis(config.http_body_idle_timeout_ms),
            total: Duration::from_millis(config.http_body_timeout_ms),
            connections: connections.clone(),
        },
        body_budget: fhir::BodyBudget::new(
            config.max_body_bytes.saturating_mul(2),
            config.max_body_bytes,
        ),
        bundle_limits: fhir::transaction::BundleLimits {
            max_entries: config.max_bundle_entries,
        },
        conditional_gate,
        everything_page_limit: config.everything_max_unpaged,
        max_count: config.max_count,
        started: instant_text(now_us()),
        auth,
        audit,
    });
    let shutdown_secs = config.shutdown_timeout_ms.div_ceil(1000);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(fhir::guard))
            .wrap(from_fn(fhir::negotiate))
            .wrap(from_fn(fhir::trace_requests))
            .wrap(from_fn(fhir::recycle_connections))
            .configure(crate::ops::routes)
            .configure(fhir::routes)
    })
    .workers(workers)
    .on_connect(move |connection, extensions| {
        fhir::on_connect(&connections, connection, extensions)
    })
    .max_connections(config.http_max_connections.div_ceil(workers))
    .tls_handshake_timeout(Duration::from_millis(config.tls_handshake_timeout_ms));
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    let server = server
        .disable_signals()
        .shutdown_timeout(shutdown_secs)
        .run();
    Ok((server, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_password_never_reaches_the_log() {
        assert_eq!(
            redacted_url("postgres://app:s3cret@db:5432/h"),
            "postgres://app@db:5432/h"
        );
        assert_eq!(
            redacted_url("sqlite://hl7bridge.db"),
            "sqlite://hl7bridge.db"
        );
    }
}
