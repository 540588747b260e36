//! The data layer over sea-orm: one code path for SQLite (the embedded default, a file created
//! and migrated on start) and PostgreSQL.
//!
//! Writes go through [`Store::write`]: one transaction per batch, bulk upserts chunked under the
//! bind-parameter limit, index rows replaced in bulk. Reads return stored canonical JSON as text
//! so that Bundles are assembled by splicing, not by re-serialising.
//!
//! Every read goes to the primary unless it is made through [`Store::replica_reads`], which the
//! FHIR read interactions use: those may be served by a PostgreSQL read replica (see
//! [`replica`]). Writes, and the reads that decide what to write, always use the primary.

mod analyze;
mod audit;
mod batcher;
mod cache;
pub mod compartment;
pub mod index;
mod outbox;
mod read;
mod reindex;
mod replica;
pub(crate) mod search;
pub mod search_params;
mod shared_cache;
mod write;

use std::sync::Arc;
use std::time::Duration;

use hl7bridge_entities::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr};

pub use audit::AuditFilter;
pub use batcher::GroupLimits;
pub use cache::CacheLimits;
pub use outbox::{ChangeRow, RelayTurn, WriteTrace};
pub use read::{EverythingPage, HistoryCursor, IdentifierLookup, StoredResource, SupportingMode};
pub use reindex::REINDEX_CHUNK;
pub use replica::ReplicaSettings;
pub use search::{Criterion, DateCriterion, Order, Prefix, Search, StrMatch};
pub use write::{
    payload_hash, Hl7MessageRow, Lane, Outcome, Precondition, ResourceWrite, WriteBatch, WriteOp,
    Written,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the work; the caller may retry later.
    #[error("database unavailable")]
    Unavailable(#[source] DbErr),
    /// The database rejected the statement for a reason retrying will not fix.
    #[error("database error")]
    Database(#[source] DbErr),
    /// The same resource appears twice in one batch.
    #[error("{0} appears more than once in the batch")]
    DuplicateInBatch(String),
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("a read replica needs a PostgreSQL database and a postgres:// replica URL")]
    ReplicaNeedsPostgres,
    /// A write's precondition did not hold; nothing was written.
    #[error("{message}")]
    PreconditionFailed { key: String, message: String },
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        match err {
            err if unreachable(&err) => StoreError::Unavailable(err),
            other => StoreError::Database(other),
        }
    }
}

/// Whether an error says the server could not be reached (rather than that one statement
/// failed): connection and pool errors, broken connections, and the SQLSTATE classes
/// 08 (connection exception) and 57P (shutdown, cannot connect now). A statement cut off by a
/// server restart (57P01) is such an error: the caller is told to retry (AE, 503), not that
/// the request failed for good (500).
pub(crate) fn unreachable(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    let sqlx = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match sqlx.as_ref() {
        Sqlx::Io(_)
        | Sqlx::Tls(_)
        | Sqlx::Protocol(_)
        | Sqlx::PoolTimedOut
        | Sqlx::PoolClosed
        | Sqlx::WorkerCrashed => true,
        Sqlx::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

#[derive(Clone)]
pub struct Store {
    /// The primary: every write, and every read not made through [`Store::replica_reads`].
    db: DatabaseConnection,
    url: String,
    /// Where the primary listens (PostgreSQL), for database spans.
    server: Option<Arc<replica::Server>>,
    /// The read replica, when one is configured.
    replica: Option<Arc<replica::Replica>>,
    /// Whether this handle's reads may go to the replica.
    replica_reads: bool,
    /// SQLite allows one writer; a transaction that reads and then writes would fail with
    /// SQLITE_BUSY under contention instead of waiting, so writers queue here instead.
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Whether writes record their changes in the outbox for the Kafka change feed.
    change_feed: bool,
    /// Woken after a commit that recorded changes.
    changes: std::sync::Arc<tokio::sync::Notify>,
    /// PostgreSQL: rows written since the planner statistics were last refreshed.
    unanalyzed: std::sync::Arc<analyze::Unanalyzed>,
    /// Group commit, when on: writes queue here and are committed together.
    batcher: Option<std::sync::Arc<batcher::Batcher>>,
    /// The read cache, when on (see [`cache`]).
    cache: Option<std::sync::Arc<cache::ReadCache>>,
    /// SQLite with the cache on: a connection of its own for `PRAGMA data_version`.
    data_version_probe: Option<DatabaseConnection>,
    /// Writes leave search values to the reindex (see [`reindex`]).
    defer_search_index: bool,
    /// The read cache's second level in Redis, when configured (see [`shared_cache`]).
    shared: Option<Arc<shared_cache::SharedCache>>,
}

impl Store {
    /// Connects with the default pool, creating the SQLite file if needed, and applies pending
    /// migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, &PoolSettings::default()).await
    }

    /// As [`Store::connect`], with a pool sized and checked as `pool` says.
    pub async fn connect_with(url: &str, pool: &PoolSettings) -> Result<Store, StoreError> {
        let options = connect_options(url, pool)?;
        let db = Database::connect(options).await?;
        Migrator::up(&db, None).await?;
        let server = match db.get_database_backend() {
            DbBackend::Postgres => replica::Server::of_postgres_url(url).map(Arc::new),
            _ => None,
        };
        Ok(Store {
            db,
            url: url.to_string(),
            server,
            replica: None,
            replica_reads: false,
            write_gate: Default::default(),
            change_feed: false,
            changes: Default::default(),
            unanalyzed: Default::default(),
            batcher: None,
            cache: None,
            data_version_probe: None,
            defer_search_index: false,
            shared: None,
        })
    }

    /// Adds a read replica for the reads made through [`Store::replica_reads`], and starts
    /// watching it. A replica that is down now is not an error: reads use the primary until it
    /// answers. Set it before group commit, whose committers must see it.
    pub async fn with_replica(mut self, settings: &ReplicaSettings) -> Result<Store, StoreError> {
        if self.backend() != DbBackend::Postgres || !settings.url.starts_with("postgres") {
            return Err(StoreError::ReplicaNeedsPostgres);
        }
        self.replica = Some(replica::Replica::start(settings, self.db.clone()).await?);
        Ok(self)
    }

    /// This store, with reads that may be served by the replica when it is up, within its lag
    /// bound, and has replayed this node's newest commit (the same store when there is no
    /// replica). For reads that feed no write: a lookup that decides what to write must see the
    /// primary, since another node may have committed moments ago.
    pub fn replica_reads(&self) -> Store {
        Store {
            replica_reads: true,
            ..self.clone()
        }
    }

    /// From now on, every committed change is also written to the outbox (see
    /// [`outbox`]). Set it before the store is shared.
    pub fn with_change_feed(mut self) -> Store {
        self.change_feed = true;
        self
    }

    /// Turns the read cache on (see [`cache`]): on PostgreSQL with a listener for other nodes'
    /// writes, on SQLite with a connection that watches the file's data version. Needs a Tokio
    /// runtime; set it before group commit.
    pub async fn with_read_cache(mut self, limits: CacheLimits) -> Result<Store, StoreError> {
        match self.backend() {
            DbBackend::Postgres => {
                // Off until the listener is in place: writes of other nodes would go unseen.
                let cache = std::sync::Arc::new(cache::ReadCache::new(limits, false));
                self.cache = Some(cache.clone());
                tokio::spawn(cache::listen(
                    self.clone(),
                    std::sync::Arc::downgrade(&cache),
                ));
            }
            _ => {
                let url = self.url.clone();
                let mut options = connect_options(&url, &PoolSettings::default())?;
                options.max_connections(1).min_connections(1);
                self.data_version_probe = Some(Database::connect(options).await?);
                self.cache = Some(std::sync::Arc::new(cache::ReadCache::new(limits, true)));
            }
        }
        Ok(self)
    }

    /// Adds Redis at `url` as the read cache's second level, shared with every node that uses
    /// the same Redis and `prefix` (see [`shared_cache`]); needs the read cache. Connects
    /// lazily: only a malformed URL is an error. Set it before group commit.
    pub fn with_shared_cache(
        mut self,
        url: &str,
        prefix: Option<&str>,
        ttl: Duration,
    ) -> Result<Store, redis::RedisError> {
        let prefix = prefix.map_or_else(|| shared_cache::default_prefix(&self.url), str::to_string);
        self.shared = Some(Arc::new(shared_cache::SharedCache::new(url, prefix, ttl)?));
        Ok(self)
    }

    /// From now on, writes index only what cannot wait (references, compartments,
    /// identifiers) and leave their search values to [`Store::reindex_backlog`], for big
    /// imports. Set it before group commit.
    pub fn deferring_search_index(mut self) -> Store {
        self.defer_search_index = true;
        self
    }

    /// From now on, writes are committed in groups (see [`batcher`]); each still returns only
    /// after its own commit. Needs a Tokio runtime; set it last, after the other options.
    pub fn with_group_commit(mut self, limits: GroupLimits) -> Store {
        let direct = Store {
            batcher: None,
            ..self.clone()
        };
        self.batcher = Some(std::sync::Arc::new(batcher::Batcher::start(direct, limits)));
        self
    }

    /// Notified after each commit that recorded changes in the outbox.
    pub fn change_notify(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.changes.clone()
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// `sqlite` or `postgres`, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.backend() {
            DbBackend::Postgres => "postgres",
            _ => "sqlite",
        }
    }

    /// A client span for one database operation, named and attributed per the OpenTelemetry
    /// database conventions (`db.system.name` uses the registry's `postgresql`). The server it
    /// went to is recorded with [`record_server`] once that is decided.
    fn db_span(
        &self,
        operation: &'static str,
        collection: &'static str,
        summary: &'static str,
    ) -> tracing::Span {
        let system = match self.backend() {
            DbBackend::Postgres => "postgresql",
            _ => "sqlite",
        };
        tracing::info_span!(
            "db.client",
            otel.name = %format!("{operation} {collection}"),
            otel.kind = "client",
            db.system.name = system,
            db.operation.name = operation,
            db.collection.name = collection,
            db.query.summary = summary,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            hl7bridge.db.rows = tracing::field::Empty,
            hl7bridge.db.replica_fallback = tracing::field::Empty,
        )
    }

    /// Whether the database answers and every migration is applied.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        Ok(Migrator::get_pending_migrations(&self.db).await?.is_empty())
    }

    /// The connection pool now: (open connections, idle ones, the most it may open).
    pub fn pool_usage(&self) -> (u32, usize, u32) {
        match self.backend() {
            DbBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                (
                    pool.size(),
                    pool.num_idle(),
                    pool.options().get_max_connections(),
                )
            }
            _ => {
                let pool = self.db.get_sqlite_connection_pool();
                (
                    pool.size(),
                    pool.num_idle(),
                    pool.options().get_max_connections(),
                )
            }
        }
    }

    pub async fn close(self) {
        if let Some(replica) = &self.replica {
            replica.close().await;
        }
        if let Err(err) = self.db.close().await {
            tracing::warn!(error = %err, "closing the database pool failed");
        }
    }
}

/// The connection pool: its size, and how long connections wait, idle and live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections at most: PostgreSQL's; SQLite keeps 4 (one writer at a time anyway).
    pub max_connections: u32,
    /// How long a statement waits for a connection before it fails (HL7v2 answers AE, FHIR
    /// 503): the longest database outage that callers wait out rather than being answered.
    pub acquire_timeout: Duration,
    /// A connection idle this long is closed (the pool keeps one).
    pub idle_timeout: Duration,
    /// A connection this old is replaced (server-side memory, failovers behind a proxy).
    pub max_lifetime: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
        }
    }
}

fn connect_options(url: &str, pool: &PoolSettings) -> Result<ConnectOptions, StoreError> {
    let mut options = if url.starts_with("sqlite:") {
        let mut options = ConnectOptions::new(sqlite_url(url));
        // WAL lets readers run beside the writer; FULL makes every acknowledged commit survive
        // power loss, not only a process crash.
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(false)
        });
        options.max_connections(4);
        options
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let mut options = ConnectOptions::new(url.to_string());
        options.max_connections(pool.max_connections);
        options
    } else {
        return Err(StoreError::UnsupportedUrl);
    };
    // Every connection is checked before use, so one broken by a database restart is replaced
    // instead of failing the statement it was given.
    options
        .min_connections(1)
        .connect_timeout(pool.acquire_timeout.min(Duration::from_secs(10)))
        .acquire_timeout(pool.acquire_timeout)
        .idle_timeout(pool.idle_timeout)
        .max_lifetime(pool.max_lifetime)
        .test_before_acquire(true)
        .sqlx_logging(false);
    Ok(options)
}

/// `sqlite://file.db` must create the file when it is missing.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Puts the server a statement went to on its span (nothing for SQLite, a file).
fn record_server(span: &tracing::Span, server: Option<&replica::Server>) {
    if let Some(server) = server {
        span.record("server.address", server.address.as_str());
        span.record("server.port", server.port);
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// `meta.lastUpdated` text for a stored timestamp.
pub fn instant_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_sqlite_url_creates_the_file() {
        assert_eq!(sqlite_url("sqlite://x.db"), "sqlite://x.db?mode=rwc");
        assert_eq!(sqlite_url("sqlite://x.db?mode=ro"), "sqlite://x.db?mode=ro");
    }

    #[test]
    fn instants_are_utc_with_microseconds() {
        assert_eq!(
            instant_text(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
    }

    /// A server error with a given SQLSTATE, as PostgreSQL would send it.
    #[derive(Debug)]
    struct ServerSaid(&'static str);

    impl std::fmt::Display for ServerSaid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for ServerSaid {}

    impl sea_orm::sqlx::error::DatabaseError for ServerSaid {
        fn message(&self) -> &str {
            "server error"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sea_orm::sqlx::error::ErrorKind {
            sea_orm::sqlx::error::ErrorKind::Other
        }
    }

    fn server_said(code: &'static str) -> DbErr {
        let err = sea_orm::sqlx::Error::Database(Box::new(ServerSaid(code)));
        DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(err)))
    }

    #[test]
    fn a_lost_or_restarting_server_is_unavailable_but_a_failed_statement_is_not() {
        let unavailable = |err| matches!(StoreError::from(err), StoreError::Unavailable(_));
        assert!(unavailable(DbErr::Conn(RuntimeErr::Internal(
            "refused".into()
        ))));
        // 57P01: the statement was cut off by a restart ("terminating connection due to
        // administrator command"); 57P03: the server is starting; 08006: connection failure.
        assert!(unavailable(server_said("57P01")));
        assert!(unavailable(server_said("57P03")));
        assert!(unavailable(server_said("08006")));
        assert!(!unavailable(server_said("23505")));
        assert!(!unavailable(server_said("42P01")));
        assert!(!unavailable(DbErr::Custom("bad row".into())));
    }
}
