//! Typed configuration, read from the environment.
//!
//! Every setting has a documented default, so `hl7bridge serve` needs none. An unknown
//! `HL7BRIDGE_*` variable is an error (it is almost always a typo), and every bad value is
//! reported at once rather than one per restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ingest::v2::{CharsetRules, UtcOffset};
use crate::ingest::SenderMap;

/// Settings for the whole server. Defaults are in [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// `HL7BRIDGE_HTTP_ADDR`: the FHIR API listener. Default `127.0.0.1:8080`.
    pub http_addr: SocketAddr,
    /// `HL7BRIDGE_MLLP_ADDR`: the HL7v2 MLLP listener. Default `127.0.0.1:2575`.
    pub mllp_addr: SocketAddr,
    /// `HL7BRIDGE_DATABASE_URL`: `sqlite://FILE` or `postgres://…`. Default
    /// `sqlite://hl7bridge.db` (created in the working directory).
    pub database_url: String,
    /// `HL7BRIDGE_DATABASE_MAX_CONNECTIONS` (16), `_ACQUIRE_TIMEOUT_MS` (10000),
    /// `_IDLE_TIMEOUT_MS` (600000), `_MAX_LIFETIME_MS` (1800000): the connection pool (see
    /// `store::PoolSettings`).
    pub database_pool: crate::store::PoolSettings,
    /// `HL7BRIDGE_DATABASE_REPLICA_URL`: a PostgreSQL streaming replica of the database, for
    /// reads that feed no write (see `store::replica`). PostgreSQL only. Default: none, every
    /// read goes to the database.
    pub database_replica_url: Option<String>,
    /// `HL7BRIDGE_REPLICA_MAX_LAG_MS`: a replica further behind the primary than this is not
    /// read. Default 1000.
    pub replica_max_lag_ms: u64,
    /// `HL7BRIDGE_REDIS_URL`: a Redis server (`redis://host:port[/db]`) shared by every node as
    /// the read cache's second level (see `store::shared_cache`). Needs the read cache on.
    /// Default: none.
    pub redis_url: Option<String>,
    /// `HL7BRIDGE_REDIS_PREFIX`: the namespace of this database's keys in Redis, required with
    /// `HL7BRIDGE_REDIS_URL`: the same on every node of one database, different for every other
    /// deployment on that Redis.
    pub redis_prefix: Option<String>,
    /// `HL7BRIDGE_REDIS_TTL_S`: how long an entry lives in Redis at most; bounds how long a
    /// write made without hl7bridge (plain SQL) can go unseen. Default 300.
    pub redis_ttl_s: u64,
    /// `HL7BRIDGE_PUBLIC_BASE_URL`: the FHIR base URL clients see, used in `fullUrl` and links.
    /// Default: taken from each request's scheme and Host header.
    pub public_base_url: Option<String>,
    /// `HL7BRIDGE_CANONICAL_BASE`: base of the canonical URLs this server defines (the trace
    /// context extension). Default `https://hl7bridge.dev/fhir`.
    pub canonical_base: String,
    /// `HL7BRIDGE_MAX_BODY_BYTES`: the largest FHIR request body. Default 64 MiB.
    pub max_body_bytes: usize,
    /// `HL7BRIDGE_MAX_BUNDLE_ENTRIES`: the most entries one transaction or batch may hold.
    /// Default 20000.
    pub max_bundle_entries: usize,
    /// `HL7BRIDGE_MAX_COUNT`: the most matches one search or `$everything` page returns,
    /// whatever `_count` asks. Default 1000.
    pub max_count: u64,
    /// `HL7BRIDGE_EVERYTHING_MAX_UNPAGED`: `Patient/$everything` without `_count` answers in
    /// one Bundle up to this many resources, then in pages of this size. Default 1000.
    pub everything_max_unpaged: u64,
    /// `HL7BRIDGE_GROUP_COMMIT_MAX_WRITES`: the most writes (messages, records, requests)
    /// committed in one transaction. 1 turns group commit off. Default 256.
    pub group_commit_max_writes: usize,
    /// `HL7BRIDGE_GROUP_COMMIT_MAX_OPS`: the most resources one group commit writes (a single
    /// larger write is committed alone). Default 4096.
    pub group_commit_max_ops: usize,
    /// `HL7BRIDGE_READ_CACHE_MAX_BYTES`: resource text the read cache holds at most; 0 turns
    /// it off. Default 64 MiB.
    pub read_cache_max_bytes: usize,
    /// `HL7BRIDGE_HTTP_BODY_IDLE_TIMEOUT_MS`: how long a request body may stall between
    /// chunks before the request is answered 408. Default 30000.
    pub http_body_idle_timeout_ms: u64,
    /// `HL7BRIDGE_HTTP_BODY_TIMEOUT_MS`: how long a whole request body may take to arrive.
    /// Default 120000.
    pub http_body_timeout_ms: u64,
    /// `HL7BRIDGE_HTTP_MAX_CONNECTIONS`: open HTTP connections at most; more wait in the
    /// listen backlog. Default 1024.
    pub http_max_connections: usize,
    /// `HL7BRIDGE_HTTP_MAX_CONNECTIONS_PER_PEER`: open HTTP connections one client address
    /// may hold; a further one is closed as soon as it is accepted (or its TLS handshake ends),
    /// so that one client cannot take every slot. Behind a reverse proxy every client has the
    /// proxy's address: raise it to `HTTP_MAX_CONNECTIONS`. Default 256.
    pub http_max_connections_per_peer: usize,
    /// `HL7BRIDGE_MLLP_MAX_CONNECTIONS`: MLLP connections served at once. Default 1024.
    pub mllp_max_connections: usize,
    /// `HL7BRIDGE_MLLP_MAX_CONNECTIONS_PER_PEER`: MLLP connections one address may hold.
    /// Default 64.
    pub mllp_max_connections_per_peer: usize,
    /// `HL7BRIDGE_MLLP_MAX_MESSAGES_PER_SECOND_PER_PEER`: HL7v2 messages one sending address
    /// may have processed per second, over all its connections, in bursts of as many; a faster
    /// sender waits longer for its ACKs. 0: no pacing. Default 2000.
    pub mllp_max_messages_per_second_per_peer: u32,
    /// `HL7BRIDGE_MLLP_IDLE_TIMEOUT_MS`: an MLLP connection with no frame for this long is
    /// closed. Default 600000 (ten minutes).
    pub mllp_idle_timeout_ms: u64,
    /// `HL7BRIDGE_MLLP_FRAME_TIMEOUT_MS`: the longest one frame may take to arrive, from its
    /// first byte, however steadily it comes (a trickling sender cannot hold a connection
    /// slot). Default 60000: a 16 MiB frame needs about 280 KB/s.
    pub mllp_frame_timeout_ms: u64,
    /// `HL7BRIDGE_MLLP_MAX_FRAME_BYTES`: the largest MLLP frame. Default 16 MiB.
    pub mllp_max_frame_bytes: usize,
    /// `HL7BRIDGE_MLLP_MAX_BUFFERED_BYTES`: what all MLLP connections may hold in frames
    /// beyond 64 KiB each (unfinished frames, frames being answered); a connection needing more
    /// stops reading until there is room. Default 1 GiB.
    pub mllp_max_buffered_bytes: usize,
    /// `HL7BRIDGE_DEFAULT_UTC_OFFSET`: the offset given to HL7v2 times sent without one
    /// (`+HH:MM` or `-HH:MM`). Default `+00:00`.
    pub default_utc_offset: UtcOffset,
    /// `HL7BRIDGE_MLLP_CHARSETS` (`application^facility=charset;…`, `*` for any) and
    /// `HL7BRIDGE_MLLP_FALLBACK_CHARSET` (default windows-1252): how HL7v2 bytes are decoded
    /// where a sender's MSH-18 cannot be trusted, and when nothing else fits.
    pub mllp_charsets: CharsetRules,
    /// `HL7BRIDGE_SHUTDOWN_TIMEOUT_MS`: how long draining may take on SIGINT/SIGTERM.
    /// Default 10000.
    pub shutdown_timeout_ms: u64,
    /// `HL7BRIDGE_HTTP_TLS_CERT` and `HL7BRIDGE_HTTP_TLS_KEY`, both or neither: serve the FHIR
    /// API over HTTPS only (HTTP/2 or HTTP/1.1, chosen by ALPN). Default: plain HTTP.
    pub http_tls: Option<TlsFiles>,
    /// `HL7BRIDGE_MLLP_TLS_*`: serve MLLP over TLS only. Default: plain MLLP.
    pub mllp_tls: Option<MllpTlsSettings>,
    /// `HL7BRIDGE_TLS_HANDSHAKE_TIMEOUT_MS`: a client of either TLS listener that has not
    /// finished its handshake this long after connecting is disconnected. Default 10000.
    pub tls_handshake_timeout_ms: u64,
    /// The Kafka adapter; `None` (the default) when `HL7BRIDGE_KAFKA_BROKERS` is unset.
    pub kafka: Option<KafkaSettings>,
    /// Bearer-token authentication on the FHIR API (see `auth`): `None` when off. Off by
    /// default on a loopback `HTTP_ADDR`; on any other address `HL7BRIDGE_AUTH_JWKS_FILE` (or
    /// `_JWKS_URL`), `_ISSUER` and `_AUDIENCE` are required, unless `HL7BRIDGE_AUTH=off` says
    /// that a gateway in front authenticates callers.
    pub auth: Option<crate::auth::AuthSettings>,
    /// `HL7BRIDGE_AUDIT_RETENTION_DAYS`: audit events older than this many days are deleted
    /// at start and every hour. Default: none, every event is kept.
    pub audit_retention_days: Option<u32>,
}

/// A certificate chain and its private key, two PEM files named by two settings. Read at
/// start: a missing or invalid file stops the server, naming the setting and the file.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `…_TLS_CERT`: the server's certificate first, then any intermediate CA certificates.
    pub cert: PathBuf,
    /// `…_TLS_KEY`: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The settings' names without `_CERT` or `_KEY`, for messages (`HL7BRIDGE_HTTP_TLS`).
    pub settings: &'static str,
}

/// `HL7BRIDGE_MLLP_TLS_*`: MLLP over TLS.
#[derive(Debug, Clone)]
pub struct MllpTlsSettings {
    /// `CERT` and `KEY`, both or neither; every other MLLP TLS setting needs them.
    pub files: TlsFiles,
    /// `CLIENT_CA`: a PEM bundle of CA certificates. When set, every client must present a
    /// certificate issued by one of them, or the handshake fails. Default: none asked for.
    pub client_ca: Option<PathBuf>,
    /// `SENDERS`: which MSH-3 / MSH-4 senders each client certificate may send as, written
    /// `identity=application^facility[,application^facility…][;identity=…]`. `identity` is
    /// the certificate's subject common name or one of its DNS names (ASCII case ignored);
    /// `application` and `facility` are the namespace ids of MSH-3 and MSH-4, exactly, or `*`
    /// for any. Example: `lab-a.example=LABSYS^LABFAC;ris.example=RIS^*`. A message from
    /// another sender is answered AR and none of its data is stored; a certificate that no
    /// entry names may send nothing. Needs `CLIENT_CA`. Default: any verified client may send
    /// as any sender. The full syntax is in `ingest::senders`.
    pub senders: Option<SenderMap>,
}

/// `HL7BRIDGE_KAFKA_*`: the Kafka adapter's settings.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `BROKERS` (required to switch Kafka on), `GROUP` (default `hl7bridge`), the security
    /// settings `SECURITY_PROTOCOL`, `SASL_MECHANISM`, `SASL_USERNAME`, `SASL_PASSWORD`,
    /// `SSL_CA_LOCATION`, `SSL_CERTIFICATE_LOCATION`, `SSL_KEY_LOCATION`, and any librdkafka
    /// property as `HL7BRIDGE_KAFKA_RDKAFKA_<NAME>` with dots written as underscores
    /// (`HL7BRIDGE_KAFKA_RDKAFKA_FETCH_WAIT_MAX_MS=50` sets `fetch.wait.max.ms`).
    pub client: hl7bridge_kafka::KafkaConfig,
    /// `HL7_TOPIC`: raw HL7v2 (ER7) records in. Default `hl7v2.inbound`.
    pub hl7_topic: String,
    /// `FHIR_TOPIC`: FHIR JSON records in (a resource, or a transaction or batch Bundle).
    /// Default `fhir.inbound`.
    pub fhir_topic: String,
    /// `CHANGE_TOPIC`: the change feed out. Default `fhir.changes`.
    pub change_topic: String,
    /// `DEAD_LETTER_TOPIC`: records that cannot be processed. Default `hl7bridge.dead-letter`.
    pub dead_letter_topic: String,
    /// `BATCH_MAX_RECORDS`: records processed between offset commits, at most. Default 500.
    pub batch_max_records: usize,
    /// `BATCH_WAIT_MS`: how long a batch waits to fill after its first record. Default 50.
    pub batch_wait_ms: u64,
    /// `DELIVERY_TIMEOUT_MS`: how long the producer tries one record before reporting failure
    /// (the relay then retries from the outbox). Default 30000.
    pub delivery_timeout_ms: u64,
    /// `OUTBOX_RETENTION_MS`: published changes stay in the outbox this long. Default 3600000.
    pub outbox_retention_ms: u64,
    /// `TEST_ABORT_AFTER_STORED_BATCHES`: for crash-recovery tests only — the process aborts
    /// right after the Nth batch's database commit, before its offsets are committed.
    pub test_abort_after_stored_batches: Option<u64>,
}

impl KafkaSettings {
    /// The defaults, with `brokers`.
    pub fn new(brokers: String) -> KafkaSettings {
        KafkaSettings {
            client: hl7bridge_kafka::KafkaConfig {
                brokers,
                group_id: "hl7bridge".into(),
                ..Default::default()
            },
            hl7_topic: "hl7v2.inbound".into(),
            fhir_topic: "fhir.inbound".into(),
            change_topic: "fhir.changes".into(),
            dead_letter_topic: "hl7bridge.dead-letter".into(),
            batch_max_records: 500,
            batch_wait_ms: 50,
            delivery_timeout_ms: 30_000,
            outbox_retention_ms: 3_600_000,
            test_abort_after_stored_batches: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mllp_addr: SocketAddr::from(([127, 0, 0, 1], 2575)),
            database_url: "sqlite://hl7bridge.db".into(),
            database_replica_url: None,
            redis_url: None,
            redis_prefix: None,
            redis_ttl_s: 300,
            database_pool: crate::store::PoolSettings::default(),
            replica_max_lag_ms: 1000,
            public_base_url: None,
            canonical_base: "https://hl7bridge.dev/fhir".into(),
            max_body_bytes: 64 << 20,
            mllp_max_frame_bytes: 16 << 20,
            mllp_max_buffered_bytes: 1 << 30,
            mllp_max_connections: 1024,
            mllp_max_connections_per_peer: 64,
            mllp_idle_timeout_ms: 600_000,
            mllp_frame_timeout_ms: 60_000,
            mllp_max_messages_per_second_per_peer: 2000,
            max_bundle_entries: 20_000,
            everything_max_unpaged: 1000,
            max_count: crate::fhir::search_max_count(),
            group_commit_max_writes: 256,
            group_commit_max_ops: 4096,
            read_cache_max_bytes: 64 << 20,
            http_body_idle_timeout_ms: 30_000,
            http_body_timeout_ms: 120_000,
            http_max_connections: 1024,
            http_max_connections_per_peer: 256,
            default_utc_offset: UtcOffset::UTC,
            mllp_charsets: CharsetRules::default(),
            shutdown_timeout_ms: 10_000,
            http_tls: None,
            mllp_tls: None,
            tls_handshake_timeout_ms: 10_000,
            kafka: None,
            auth: None,
            audit_retention_days: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

const PREFIX: &str = "HL7BRIDGE_";

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars())
    }

    /// Builds a configuration from `(name, value)` pairs; names without the prefix are ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
            .collect();
        let mut problems = Vec::new();
        let mut config = Config::default();
        let mut take = |name: &str| {
            let value = vars.remove(&format!("{PREFIX}{name}"))?;
            Some((name.to_string(), value))
        };
        macro_rules! setting {
            ($field:ident, $name:literal) => {
                set(&mut config.$field, take($name), &mut problems)
            };
        }
        setting!(http_addr, "HTTP_ADDR");
        setting!(mllp_addr, "MLLP_ADDR");
        setting!(max_body_bytes, "MAX_BODY_BYTES");
        setting!(mllp_max_frame_bytes, "MLLP_MAX_FRAME_BYTES");
        setting!(mllp_max_buffered_bytes, "MLLP_MAX_BUFFERED_BYTES");
        setting!(shutdown_timeout_ms, "SHUTDOWN_TIMEOUT_MS");
        setting!(max_bundle_entries, "MAX_BUNDLE_ENTRIES");
        setting!(everything_max_unpaged, "EVERYTHING_MAX_UNPAGED");
        setting!(max_count, "MAX_COUNT");
        setting!(group_commit_max_writes, "GROUP_COMMIT_MAX_WRITES");
        setting!(group_commit_max_ops, "GROUP_COMMIT_MAX_OPS");
        setting!(read_cache_max_bytes, "READ_CACHE_MAX_BYTES");
        setting!(http_body_idle_timeout_ms, "HTTP_BODY_IDLE_TIMEOUT_MS");
        setting!(http_max_connections, "HTTP_MAX_CONNECTIONS");
        setting!(
            http_max_connections_per_peer,
            "HTTP_MAX_CONNECTIONS_PER_PEER"
        );
        setting!(http_body_timeout_ms, "HTTP_BODY_TIMEOUT_MS");
        setting!(mllp_max_connections, "MLLP_MAX_CONNECTIONS");
        setting!(
            mllp_max_connections_per_peer,
            "MLLP_MAX_CONNECTIONS_PER_PEER"
        );
        setting!(mllp_idle_timeout_ms, "MLLP_IDLE_TIMEOUT_MS");
        setting!(mllp_frame_timeout_ms, "MLLP_FRAME_TIMEOUT_MS");
        setting!(
            mllp_max_messages_per_second_per_peer,
            "MLLP_MAX_MESSAGES_PER_SECOND_PER_PEER"
        );
        let pool = &mut config.database_pool;
        set(
            &mut pool.max_connections,
            take("DATABASE_MAX_CONNECTIONS"),
            &mut problems,
        );
        for (name, slot) in [
            ("DATABASE_ACQUIRE_TIMEOUT_MS", &mut pool.acquire_timeout),
            ("DATABASE_IDLE_TIMEOUT_MS", &mut pool.idle_timeout),
            ("DATABASE_MAX_LIFETIME_MS", &mut pool.max_lifetime),
        ] {
            let mut ms = slot.as_millis() as u64;
            set(&mut ms, take(name), &mut problems);
            *slot = std::time::Duration::from_millis(ms);
        }
        setting!(tls_handshake_timeout_ms, "TLS_HANDSHAKE_TIMEOUT_MS");
        setting!(redis_ttl_s, "REDIS_TTL_S");
        if let Some((_, url)) = take("REDIS_URL") {
            config.redis_url = Some(url.trim().to_string());
        }
        if let Some((_, prefix)) = take("REDIS_PREFIX") {
            config.redis_prefix = Some(prefix);
        }
        config.http_tls = tls_files(&mut take, "HL7BRIDGE_HTTP_TLS", &mut problems);
        config.mllp_tls = mllp_tls_settings(&mut take, &mut problems);
        let max_lag = take("REPLICA_MAX_LAG_MS");
        let lag_given = max_lag.is_some();
        set(&mut config.replica_max_lag_ms, max_lag, &mut problems);
        if let Some((_, url)) = take("DATABASE_URL") {
            config.database_url = url;
        }
        if let Some((_, url)) = take("DATABASE_REPLICA_URL") {
            config.database_replica_url = Some(url.trim().to_string());
        } else if lag_given {
            problems.push(format!(
                "{PREFIX}REPLICA_MAX_LAG_MS without {PREFIX}DATABASE_REPLICA_URL"
            ));
        }
        if let Some((_, url)) = take("PUBLIC_BASE_URL") {
            config.public_base_url = Some(url.trim_end_matches('/').to_string());
        }
        if let Some((_, base)) = take("CANONICAL_BASE") {
            config.canonical_base = base.trim_end_matches('/').to_string();
        }
        if let Some((name, offset)) = take("DEFAULT_UTC_OFFSET") {
            if let Some(parsed) = UtcOffset::parse(&offset).filter(|_| offset.contains(':')) {
                config.default_utc_offset = parsed;
            } else {
                problems.push(format!(
                    "{PREFIX}{name}: expected +HH:MM or -HH:MM, got {offset:?}"
                ));
            }
        }
        let by_sender = take("MLLP_CHARSETS");
        let fallback = take("MLLP_FALLBACK_CHARSET");
        if by_sender.is_some() || fallback.is_some() {
            let value = |v: &Option<(String, String)>| v.as_ref().map(|(_, v)| v.clone());
            match CharsetRules::parse(value(&by_sender).as_deref(), value(&fallback).as_deref()) {
                Ok(rules) => config.mllp_charsets = rules,
                Err(found) => problems.extend(
                    found
                        .iter()
                        .map(|p| format!("{PREFIX}MLLP_CHARSETS / MLLP_FALLBACK_CHARSET: {p}")),
                ),
            }
        }
        if let Some((name, days)) = take("AUDIT_RETENTION_DAYS") {
            match days.trim().parse::<u32>() {
                Ok(days) if days > 0 => config.audit_retention_days = Some(days),
                _ => problems.push(format!(
                    "{PREFIX}{name}: expected a whole number of days, at least 1 (got {days:?})"
                )),
            }
        }
        config.kafka = kafka_settings(&mut vars, &mut problems);
        config.auth = auth_settings(&mut vars, config.http_addr, &mut problems);
        config.check(&mut problems);
        problems.extend(vars.keys().map(|k| format!("{k}: unknown setting")));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }

    fn check(&self, problems: &mut Vec<String>) {
        let db = &self.database_url;
        if !(db.starts_with("sqlite:") || is_postgres(db)) {
            problems.push(format!(
                "{PREFIX}DATABASE_URL: expected sqlite://… or postgres://…"
            ));
        }
        if let Some(redis) = &self.redis_url {
            if !redis.starts_with("redis://") {
                problems.push(format!(
                    "{PREFIX}REDIS_URL: expected redis://host:port, got {}",
                    if redis.contains('@') {
                        "a URL with credentials"
                    } else {
                        redis
                    }
                ));
            }
            if self.read_cache_max_bytes == 0 {
                problems.push(format!(
                    "{PREFIX}REDIS_URL: the shared cache is the read cache's second level, and \
                     {PREFIX}READ_CACHE_MAX_BYTES=0 turns the read cache off"
                ));
            }
            // Two deployments on one Redis, each with the default `sqlite://hl7bridge.db`,
            // would otherwise share keys, and serve each other's patients.
            if self.redis_prefix.as_deref().is_none_or(str::is_empty) {
                problems.push(format!(
                    "{PREFIX}REDIS_URL needs {PREFIX}REDIS_PREFIX: a namespace for this \
                     database's keys, the same on every node of it and different from any other \
                     deployment's on that Redis"
                ));
            }
        }
        if self.redis_ttl_s == 0 {
            problems.push(format!("{PREFIX}REDIS_TTL_S: must be at least 1"));
        }
        if let Some(replica) = &self.database_replica_url {
            if !is_postgres(db) {
                problems.push(format!(
                    "{PREFIX}DATABASE_REPLICA_URL: read replicas need PostgreSQL, and \
                     {PREFIX}DATABASE_URL is not a postgres:// URL"
                ));
            }
            if !is_postgres(replica) {
                problems.push(format!(
                    "{PREFIX}DATABASE_REPLICA_URL: expected postgres://…"
                ));
            }
        }
        let limits = [
            self.max_body_bytes,
            self.mllp_max_frame_bytes,
            self.mllp_max_buffered_bytes,
            self.max_bundle_entries,
            self.everything_max_unpaged as usize,
            self.max_count as usize,
            self.http_max_connections,
            self.http_max_connections_per_peer,
            self.http_body_idle_timeout_ms as usize,
            self.http_body_timeout_ms as usize,
            self.mllp_max_connections,
            self.mllp_max_connections_per_peer,
            self.mllp_idle_timeout_ms as usize,
            self.mllp_frame_timeout_ms as usize,
            self.replica_max_lag_ms as usize,
            self.database_pool.max_connections as usize,
            self.database_pool.acquire_timeout.as_millis() as usize,
            self.tls_handshake_timeout_ms as usize,
        ];
        if limits.contains(&0) {
            problems.push("size, count and time limits must be greater than zero".into());
        }
    }
}

/// `<settings>_CERT` and `<settings>_KEY`: both or neither.
fn tls_files(
    take: &mut impl FnMut(&str) -> Option<(String, String)>,
    settings: &'static str,
    problems: &mut Vec<String>,
) -> Option<TlsFiles> {
    let mut path = |suffix: &str| {
        let name = format!("{settings}_{suffix}");
        let (_, value) = take(&name[PREFIX.len()..])?;
        if value.trim().is_empty() {
            problems.push(format!("{name}: must name a PEM file"));
        }
        Some(PathBuf::from(value.trim()))
    };
    let (cert, key) = (path("CERT"), path("KEY"));
    let (given, missing) = match (cert, key) {
        (Some(cert), Some(key)) => {
            return Some(TlsFiles {
                cert,
                key,
                settings,
            })
        }
        (None, None) => return None,
        (Some(_), None) => ("CERT", "KEY"),
        (None, Some(_)) => ("KEY", "CERT"),
    };
    problems.push(format!(
        "{settings}_{given} is set without {settings}_{missing} (both or neither)"
    ));
    None
}

fn mllp_tls_settings(
    take: &mut impl FnMut(&str) -> Option<(String, String)>,
    problems: &mut Vec<String>,
) -> Option<MllpTlsSettings> {
    let files = tls_files(take, "HL7BRIDGE_MLLP_TLS", problems);
    let client_ca = take("MLLP_TLS_CLIENT_CA").map(|(_, v)| PathBuf::from(v.trim()));
    let senders = take("MLLP_TLS_SENDERS").and_then(|(name, value)| {
        SenderMap::parse(&value)
            .map_err(|found| {
                problems.extend(found.iter().map(|p| format!("{PREFIX}{name}: {p}")));
            })
            .ok()
    });
    if client_ca
        .as_ref()
        .is_some_and(|ca| ca.as_os_str().is_empty())
    {
        problems.push(format!("{PREFIX}MLLP_TLS_CLIENT_CA: must name a PEM file"));
    }
    if files.is_none() && (client_ca.is_some() || senders.is_some()) {
        problems.push(format!(
            "{PREFIX}MLLP_TLS_CLIENT_CA and {PREFIX}MLLP_TLS_SENDERS need {PREFIX}MLLP_TLS_CERT \
             and {PREFIX}MLLP_TLS_KEY"
        ));
    }
    if senders.is_some() && client_ca.is_none() {
        problems.push(format!(
            "{PREFIX}MLLP_TLS_SENDERS needs {PREFIX}MLLP_TLS_CLIENT_CA: senders are mapped \
             from client certificates"
        ));
    }
    Some(MllpTlsSettings {
        files: files?,
        client_ca,
        senders,
    })
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

const KAFKA: &str = "KAFKA_";
const RDKAFKA: &str = "KAFKA_RDKAFKA_";

/// Takes every `HL7BRIDGE_KAFKA_*` variable out of `vars`.
fn kafka_settings(
    vars: &mut BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Option<KafkaSettings> {
    let names: Vec<String> = vars
        .keys()
        .filter(|k| k[PREFIX.len()..].starts_with(KAFKA))
        .cloned()
        .collect();
    if names.is_empty() {
        return None;
    }
    let mut take = |name: &str| {
        let value = vars.remove(&format!("{PREFIX}{KAFKA}{name}"))?;
        Some((format!("{KAFKA}{name}"), value))
    };
    let Some((_, brokers)) = take("BROKERS").filter(|(_, b)| !b.trim().is_empty()) else {
        problems.push(format!(
            "{}: Kafka settings without {PREFIX}{KAFKA}BROKERS",
            names.join(", ")
        ));
        for name in &names {
            vars.remove(name);
        }
        return None;
    };
    let mut kafka = KafkaSettings::new(brokers.trim().to_string());
    let text_settings: [(&str, &mut String); 5] = [
        ("GROUP", &mut kafka.client.group_id),
        ("HL7_TOPIC", &mut kafka.hl7_topic),
        ("FHIR_TOPIC", &mut kafka.fhir_topic),
        ("CHANGE_TOPIC", &mut kafka.change_topic),
        ("DEAD_LETTER_TOPIC", &mut kafka.dead_letter_topic),
    ];
    for (name, slot) in text_settings {
        if let Some((name, value)) = take(name) {
            if value.trim().is_empty() {
                problems.push(format!("{PREFIX}{name}: must not be empty"));
            } else {
                *slot = value.trim().to_string();
            }
        }
    }
    let security = &mut kafka.client.security;
    let optional_settings: [(&str, &mut Option<String>); 7] = [
        ("SECURITY_PROTOCOL", &mut security.protocol),
        ("SASL_MECHANISM", &mut security.sasl_mechanism),
        ("SASL_USERNAME", &mut security.sasl_username),
        ("SASL_PASSWORD", &mut security.sasl_password),
        ("SSL_CA_LOCATION", &mut security.ssl_ca_location),
        (
            "SSL_CERTIFICATE_LOCATION",
            &mut security.ssl_certificate_location,
        ),
        ("SSL_KEY_LOCATION", &mut security.ssl_key_location),
    ];
    for (name, slot) in optional_settings {
        *slot = take(name).map(|(_, v)| v);
    }
    set(
        &mut kafka.batch_max_records,
        take("BATCH_MAX_RECORDS"),
        problems,
    );
    set(&mut kafka.batch_wait_ms, take("BATCH_WAIT_MS"), problems);
    set(
        &mut kafka.delivery_timeout_ms,
        take("DELIVERY_TIMEOUT_MS"),
        problems,
    );
    set(
        &mut kafka.outbox_retention_ms,
        take("OUTBOX_RETENTION_MS"),
        problems,
    );
    if let Some(var) = take("TEST_ABORT_AFTER_STORED_BATCHES") {
        let mut n = 0u64;
        set(&mut n, Some(var), problems);
        kafka.test_abort_after_stored_batches = Some(n);
    }
    if kafka.batch_max_records == 0 || kafka.delivery_timeout_ms == 0 {
        problems.push(format!(
            "{PREFIX}{KAFKA}BATCH_MAX_RECORDS and DELIVERY_TIMEOUT_MS must be greater than zero"
        ));
    }
    let raw: Vec<String> = vars
        .keys()
        .filter(|k| k[PREFIX.len()..].starts_with(RDKAFKA))
        .cloned()
        .collect();
    for name in raw {
        let value = vars.remove(&name).unwrap_or_default();
        let property = name[PREFIX.len() + RDKAFKA.len()..]
            .to_ascii_lowercase()
            .replace('_', ".");
        kafka.client.options.insert(property, value);
    }
    let topics = [
        &kafka.hl7_topic,
        &kafka.fhir_topic,
        &kafka.change_topic,
        &kafka.dead_letter_topic,
    ];
    let distinct: std::collections::BTreeSet<_> = topics.iter().collect();
    if distinct.len() != topics.len() {
        problems.push(format!(
            "{PREFIX}{KAFKA}*_TOPIC: the four topics must differ"
        ));
    }
    Some(kafka)
}

/// Takes every `HL7BRIDGE_AUTH*` variable out of `vars`.
fn auth_settings(
    vars: &mut BTreeMap<String, String>,
    http_addr: SocketAddr,
    problems: &mut Vec<String>,
) -> Option<crate::auth::AuthSettings> {
    use crate::auth::{AuthSettings, JwksSource};
    let mut take = |name: &str| vars.remove(&format!("{PREFIX}{name}"));
    let switch = take("AUTH");
    let file = take("AUTH_JWKS_FILE");
    let url = take("AUTH_JWKS_URL");
    let ca = take("AUTH_JWKS_CA");
    let issuer = take("AUTH_ISSUER");
    let audience = take("AUTH_AUDIENCE");
    let leeway = take("AUTH_LEEWAY_S");
    let any_token_setting =
        file.is_some() || url.is_some() || ca.is_some() || issuer.is_some() || audience.is_some();
    match switch.as_deref().map(str::trim) {
        None => {}
        Some("off") if any_token_setting => {
            problems.push(format!(
                "{PREFIX}AUTH=off beside {PREFIX}AUTH_* token settings: choose one"
            ));
            return None;
        }
        Some("off") => return None,
        Some(other) => {
            problems.push(format!(
                "{PREFIX}AUTH: the only value is `off` (got {other:?}); authentication is on \
                 whenever {PREFIX}AUTH_JWKS_FILE or _JWKS_URL is set"
            ));
            return None;
        }
    }
    if !any_token_setting {
        if !http_addr.ip().is_loopback() {
            problems.push(format!(
                "{PREFIX}HTTP_ADDR {http_addr} is not loopback, so the FHIR API needs \
                 authentication: set {PREFIX}AUTH_JWKS_FILE (or _JWKS_URL), _ISSUER and \
                 _AUDIENCE, or {PREFIX}AUTH=off when a gateway in front authenticates callers"
            ));
        }
        return None;
    }
    let jwks = match (file, url) {
        (Some(file), None) => Some(JwksSource::File(file.trim().into())),
        (None, Some(url)) => match crate::auth::jwks::url_problem(url.trim()) {
            None => Some(JwksSource::Url {
                url: url.trim().to_string(),
                ca: ca.as_deref().map(|path| path.trim().into()),
            }),
            Some(problem) => {
                problems.push(format!("{PREFIX}AUTH_JWKS_URL: {problem}"));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{PREFIX}AUTH_JWKS_FILE and _JWKS_URL: set one, not both"
            ));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{PREFIX}AUTH_*: token settings without {PREFIX}AUTH_JWKS_FILE or _JWKS_URL"
            ));
            None
        }
    };
    let https = matches!(&jwks, Some(JwksSource::Url { url, .. }) if url.starts_with("https://"));
    if ca.is_some() && !https {
        problems.push(format!(
            "{PREFIX}AUTH_JWKS_CA is for an https:// {PREFIX}AUTH_JWKS_URL only"
        ));
    }
    let mut required = |name: &str, value: Option<String>| match value {
        Some(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => {
            problems.push(format!(
                "{PREFIX}{name} is required when authentication is on"
            ));
            None
        }
    };
    let issuer = required("AUTH_ISSUER", issuer);
    let audience = required("AUTH_AUDIENCE", audience);
    let mut settings = AuthSettings {
        jwks: jwks?,
        issuer: issuer?,
        audience: audience?,
        leeway_s: 30,
    };
    set(
        &mut settings.leeway_s,
        leeway.map(|v| ("AUTH_LEEWAY_S".to_string(), v)),
        problems,
    );
    Some(settings)
}

fn set<T: std::str::FromStr>(
    slot: &mut T,
    var: Option<(String, String)>,
    problems: &mut Vec<String>,
) where
    T::Err: std::fmt::Display,
{
    if let Some((name, raw)) = var {
        match raw.trim().parse() {
            Ok(value) => *slot = value,
            Err(err) => problems.push(format!("{PREFIX}{name}: {err} (got {raw:?})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_settings_give_the_embedded_defaults() {
        let config = Config::from_vars(vars(&[("PATH", "/bin")])).unwrap();
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.mllp_addr.to_string(), "127.0.0.1:2575");
        assert_eq!(config.database_url, "sqlite://hl7bridge.db");
    }

    #[test]
    fn every_bad_value_and_unknown_key_is_reported_at_once() {
        let err = Config::from_vars(vars(&[
            ("HL7BRIDGE_HTTP_ADDR", "nowhere"),
            ("HL7BRIDGE_MAX_BODY_BYTES", "-1"),
            ("HL7BRIDGE_DATABSE_URL", "sqlite://x"),
            ("HL7BRIDGE_DEFAULT_UTC_OFFSET", "5"),
        ]))
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        assert!(err
            .to_string()
            .contains("HL7BRIDGE_DATABSE_URL: unknown setting"));
    }

    #[test]
    fn character_sets_by_sender_and_the_fallback_are_read_and_checked() {
        let config = Config::from_vars(vars(&[
            (
                "HL7BRIDGE_MLLP_CHARSETS",
                "LAB^EAST=8859/2;*^WEST=windows-1250",
            ),
            ("HL7BRIDGE_MLLP_FALLBACK_CHARSET", "8859/15"),
        ]))
        .unwrap();
        let expected =
            CharsetRules::parse(Some("LAB^EAST=8859/2;*^WEST=windows-1250"), Some("8859/15"));
        assert_eq!(config.mllp_charsets, expected.unwrap());
        let err = Config::from_vars(vars(&[
            ("HL7BRIDGE_MLLP_CHARSETS", "LAB=8859/2"),
            ("HL7BRIDGE_MLLP_FALLBACK_CHARSET", "klingon"),
        ]))
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err
            .to_string()
            .contains("expected application^facility=charset"));
    }

    #[test]
    fn audit_retention_is_unset_by_default_and_a_positive_number_of_days() {
        assert_eq!(Config::default().audit_retention_days, None);
        let config = Config::from_vars(vars(&[("HL7BRIDGE_AUDIT_RETENTION_DAYS", "365")]));
        assert_eq!(config.unwrap().audit_retention_days, Some(365));
        for bad in ["0", "-1", "a year", "1.5"] {
            let vars = vars(&[("HL7BRIDGE_AUDIT_RETENTION_DAYS", bad)]);
            assert!(Config::from_vars(vars).is_err(), "{bad}");
        }
    }

    #[test]
    fn kafka_is_off_without_brokers_and_on_with_them() {
        assert!(Config::from_vars(vars(&[])).unwrap().kafka.is_none());
        let config = Config::from_vars(vars(&[
            ("HL7BRIDGE_KAFKA_BROKERS", "127.0.0.1:9092"),
            ("HL7BRIDGE_KAFKA_GROUP", "lab"),
            ("HL7BRIDGE_KAFKA_SASL_PASSWORD", "pw"),
            ("HL7BRIDGE_KAFKA_RDKAFKA_FETCH_WAIT_MAX_MS", "50"),
        ]))
        .unwrap();
        let kafka = config.kafka.unwrap();
        assert_eq!(kafka.client.brokers, "127.0.0.1:9092");
        assert_eq!(kafka.client.group_id, "lab");
        assert_eq!(kafka.hl7_topic, "hl7v2.inbound");
        assert_eq!(kafka.change_topic, "fhir.changes");
        assert_eq!(kafka.client.security.sasl_password.as_deref(), Some("pw"));
        assert_eq!(kafka.client.options["fetch.wait.max.ms"], "50");
    }

    #[test]
    fn kafka_settings_without_brokers_are_refused() {
        let err = Config::from_vars(vars(&[("HL7BRIDGE_KAFKA_GROUP", "lab")])).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.to_string().contains("HL7BRIDGE_KAFKA_BROKERS"), "{err}");
    }

    #[test]
    fn a_shared_cache_needs_its_own_prefix() {
        let err = Config::from_vars(vars(&[("HL7BRIDGE_REDIS_URL", "redis://127.0.0.1:6379")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("needs HL7BRIDGE_REDIS_PREFIX"),
            "{err}"
        );
        let config = Config::from_vars(vars(&[
            ("HL7BRIDGE_REDIS_URL", "redis://127.0.0.1:6379"),
            ("HL7BRIDGE_REDIS_PREFIX", "ward-7:"),
        ]))
        .unwrap();
        assert_eq!(config.redis_prefix.as_deref(), Some("ward-7:"));
    }

    #[test]
    fn a_replica_is_refused_beside_sqlite() {
        let err = Config::from_vars(vars(&[(
            "HL7BRIDGE_DATABASE_REPLICA_URL",
            "postgres://127.0.0.1:5433/h",
        )]))
        .unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.to_string().contains("read replicas need PostgreSQL"));
    }

    #[test]
    fn a_replica_beside_postgres_takes_its_lag_bound() {
        let config = Config::from_vars(vars(&[
            ("HL7BRIDGE_DATABASE_URL", "postgres://127.0.0.1/h"),
            (
                "HL7BRIDGE_DATABASE_REPLICA_URL",
                "postgres://127.0.0.1:5433/h",
            ),
            ("HL7BRIDGE_REPLICA_MAX_LAG_MS", "250"),
        ]))
        .unwrap();
        assert_eq!(config.replica_max_lag_ms, 250);
        assert!(config.database_replica_url.is_some());
        let err = Config::from_vars(vars(&[("HL7BRIDGE_REPLICA_MAX_LAG_MS", "250")])).unwrap_err();
        assert!(err
            .to_string()
            .contains("without HL7BRIDGE_DATABASE_REPLICA_URL"));
    }

    #[test]
    fn a_listener_off_loopback_needs_authentication_or_an_explicit_off() {
        let err = Config::from_vars(vars(&[("HL7BRIDGE_HTTP_ADDR", "0.0.0.0:8080")])).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.to_string().contains("needs authentication"), "{err}");
        let off = Config::from_vars(vars(&[
            ("HL7BRIDGE_HTTP_ADDR", "0.0.0.0:8080"),
            ("HL7BRIDGE_AUTH", "off"),
        ]))
        .unwrap();
        assert!(off.auth.is_none());
        let on = Config::from_vars(vars(&[
            ("HL7BRIDGE_HTTP_ADDR", "0.0.0.0:8080"),
            ("HL7BRIDGE_AUTH_JWKS_FILE", "/etc/hl7bridge/jwks.json"),
            ("HL7BRIDGE_AUTH_ISSUER", "https://idp.example"),
            ("HL7BRIDGE_AUTH_AUDIENCE", "https://fhir.example"),
        ]))
        .unwrap();
        let auth = on.auth.unwrap();
        assert_eq!(auth.issuer, "https://idp.example");
        assert_eq!(auth.leeway_s, 30);
        assert!(Config::from_vars(vars(&[])).unwrap().auth.is_none());
    }

    #[test]
    fn incomplete_or_contradictory_auth_settings_are_refused() {
        let err = Config::from_vars(vars(&[("HL7BRIDGE_AUTH_JWKS_FILE", "k.json")])).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        let err = Config::from_vars(vars(&[
            ("HL7BRIDGE_AUTH", "off"),
            ("HL7BRIDGE_AUTH_ISSUER", "x"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("choose one"), "{err}");
        let err = Config::from_vars(vars(&[("HL7BRIDGE_AUTH", "on")])).unwrap_err();
        assert!(err.to_string().contains("the only value is `off`"), "{err}");
    }

    #[test]
    fn kafka_security_settings_reach_the_consumer_and_the_producer() {
        let config = Config::from_vars(vars(&[
            ("HL7BRIDGE_KAFKA_BROKERS", "127.0.0.1:9093"),
            ("HL7BRIDGE_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("HL7BRIDGE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("HL7BRIDGE_KAFKA_SASL_USERNAME", "bridge"),
            ("HL7BRIDGE_KAFKA_SASL_PASSWORD", "pw"),
            ("HL7BRIDGE_KAFKA_SSL_CA_LOCATION", "/etc/kafka/ca.pem"),
            (
                "HL7BRIDGE_KAFKA_SSL_CERTIFICATE_LOCATION",
                "/etc/kafka/client.pem",
            ),
            ("HL7BRIDGE_KAFKA_SSL_KEY_LOCATION", "/etc/kafka/client.key"),
        ]))
        .unwrap();
        let client = config.kafka.unwrap().client;
        let expected = [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "bridge"),
            ("sasl.password", "pw"),
            ("ssl.ca.location", "/etc/kafka/ca.pem"),
            ("ssl.certificate.location", "/etc/kafka/client.pem"),
            ("ssl.key.location", "/etc/kafka/client.key"),
        ];
        let consumer = client.consumer_config(1000);
        let producer = client.producer_config(1000);
        for (property, value) in expected {
            assert_eq!(consumer.get(property), Some(value), "consumer {property}");
            assert_eq!(producer.get(property), Some(value), "producer {property}");
        }
    }

    #[test]
    fn a_tls_certificate_without_its_key_is_refused_naming_both() {
        let err = Config::from_vars(vars(&[
            ("HL7BRIDGE_HTTP_TLS_CERT", "/etc/hl7bridge/http.pem"),
            ("HL7BRIDGE_MLLP_TLS_KEY", "/etc/hl7bridge/mllp.key"),
        ]))
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err
            .to_string()
            .contains("HL7BRIDGE_HTTP_TLS_CERT is set without HL7BRIDGE_HTTP_TLS_KEY"));
        assert!(err
            .to_string()
            .contains("HL7BRIDGE_MLLP_TLS_KEY is set without HL7BRIDGE_MLLP_TLS_CERT"));
    }

    #[test]
    fn mllp_tls_takes_a_client_ca_and_a_sender_map() {
        let config = Config::from_vars(vars(&[
            ("HL7BRIDGE_MLLP_TLS_CERT", "server.pem"),
            ("HL7BRIDGE_MLLP_TLS_KEY", "server.key"),
            ("HL7BRIDGE_MLLP_TLS_CLIENT_CA", "clients.pem"),
            ("HL7BRIDGE_MLLP_TLS_SENDERS", "lab-a.example=LABSYS^LABFAC"),
            ("HL7BRIDGE_TLS_HANDSHAKE_TIMEOUT_MS", "2500"),
        ]))
        .unwrap();
        assert!(config.http_tls.is_none());
        assert_eq!(config.tls_handshake_timeout_ms, 2500);
        let mllp = config.mllp_tls.unwrap();
        assert_eq!(mllp.files.cert, PathBuf::from("server.pem"));
        assert_eq!(mllp.files.settings, "HL7BRIDGE_MLLP_TLS");
        assert_eq!(mllp.client_ca, Some(PathBuf::from("clients.pem")));
        assert!(mllp.senders.is_some());
    }

    #[test]
    fn a_sender_map_needs_client_certificates_and_a_valid_syntax() {
        let err = Config::from_vars(vars(&[
            ("HL7BRIDGE_MLLP_TLS_CERT", "server.pem"),
            ("HL7BRIDGE_MLLP_TLS_KEY", "server.key"),
            ("HL7BRIDGE_MLLP_TLS_SENDERS", "lab-a.example=LABSYS^LABFAC"),
        ]))
        .unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err
            .to_string()
            .contains("HL7BRIDGE_MLLP_TLS_SENDERS needs HL7BRIDGE_MLLP_TLS_CLIENT_CA"));

        let err = Config::from_vars(vars(&[
            ("HL7BRIDGE_MLLP_TLS_CLIENT_CA", "clients.pem"),
            ("HL7BRIDGE_MLLP_TLS_SENDERS", "lab-a.example=LABSYS"),
        ]))
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err
            .to_string()
            .contains("HL7BRIDGE_MLLP_TLS_SENDERS: lab-a.example: \"LABSYS\": expected"));
        assert!(err.to_string().contains("need HL7BRIDGE_MLLP_TLS_CERT"));
    }

    #[test]
    fn settings_override_defaults() {
        let config = Config::from_vars(vars(&[
            ("HL7BRIDGE_HTTP_ADDR", "127.0.0.1:0"),
            ("HL7BRIDGE_DATABASE_URL", "postgres://localhost/test"),
        ]))
        .unwrap();
        assert_eq!(config.http_addr.port(), 0);
        assert!(config.database_url.starts_with("postgres"));
    }

    #[test]
    fn a_jwks_url_must_be_https_or_plain_http_to_loopback() {
        let auth = |url: &str, ca: Option<&str>| {
            let mut pairs = vec![
                ("HL7BRIDGE_AUTH_JWKS_URL", url),
                ("HL7BRIDGE_AUTH_ISSUER", "https://idp.example"),
                ("HL7BRIDGE_AUTH_AUDIENCE", "https://fhir.example"),
            ];
            pairs.extend(ca.map(|ca| ("HL7BRIDGE_AUTH_JWKS_CA", ca)));
            Config::from_vars(vars(&pairs)).map(|config| config.auth.unwrap().jwks)
        };
        let jwks = auth(
            "https://idp.example/jwks",
            Some("/etc/hl7bridge/idp-ca.pem"),
        )
        .unwrap();
        assert_eq!(
            jwks,
            crate::auth::JwksSource::Url {
                url: "https://idp.example/jwks".into(),
                ca: Some("/etc/hl7bridge/idp-ca.pem".into()),
            }
        );
        assert!(auth("http://127.0.0.1:8081/jwks", None).is_ok());
        let err = auth("http://idp.example/jwks", None).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(
            err.to_string().contains(
                "HL7BRIDGE_AUTH_JWKS_URL: plain http:// is allowed to a loopback host only"
            ),
            "{err}"
        );
        let err = auth("http://127.0.0.1:8081/jwks", Some("ca.pem")).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(
            err.to_string()
                .contains("HL7BRIDGE_AUTH_JWKS_CA is for an https://"),
            "{err}"
        );
        let err = Config::from_vars(vars(&[("HL7BRIDGE_AUTH_JWKS_CA", "ca.pem")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("without HL7BRIDGE_AUTH_JWKS_FILE or _JWKS_URL"),
            "{err}"
        );
    }
}
