//! The read replica: a PostgreSQL streaming standby that serves the reads which feed no write
//! (read, vread, search, history, `$everything`) while three things hold, and the primary serves
//! them otherwise:
//!
//! - It answers. A probe task asks it every `interval`; a probe or a read that cannot reach it
//!   marks it down at once, and only a probe marks it up again. So a dead replica costs the one
//!   read that found it dead (retried on the primary), not a timeout on every request.
//! - It is within `max_lag` of the primary. The probe samples the primary's WAL write position
//!   (`pg_current_wal_lsn()`) with the time it saw it; a replica that has replayed up to a
//!   sample's position holds everything the primary held at that sample's time, so its
//!   staleness is at most the time since the newest such sample. Unlike
//!   `pg_last_xact_replay_timestamp()`, this does not grow on an idle primary, where nothing is
//!   left to replay; the timestamp is used only when no sample is old enough to decide (just
//!   after start, or once the replica is behind every sample kept).
//! - It has replayed every commit this node made (read-your-writes). After each commit the
//!   write path reads the primary's WAL write position, which a synchronous commit has flushed
//!   past its commit record, before it answers its caller. A read goes to the replica only if
//!   the replay position last seen is at or past the newest of those; if it is not, one fresh
//!   look at the replica decides. The guarantee covers every client of this node; a client that
//!   writes through one node and reads through another is not covered (see the README).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};

use crate::telemetry::metrics::metrics;

use super::StoreError;

/// How long a probe may wait for either server before the replica counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a read may wait for a fresh replay position before going to the primary.
const FRESH_CHECK_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a commit may wait for the primary's WAL position (then reads go to the primary
/// until the next probe learns a position past that commit).
const COMMIT_POSITION_TIMEOUT: Duration = Duration::from_secs(1);

const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";
const REPLAY_POSITION: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";
const STANDBY_STATUS: &str = "SELECT pg_is_in_recovery(), \
     (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, \
     EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8";

/// The replica to read from, and how far behind the primary it may be.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub url: String,
    pub max_lag: Duration,
}

/// Where a database server listens, for the `server.address` and `server.port` span attributes
/// (never the URL, which may hold credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Server {
    pub address: String,
    pub port: u16,
}

impl Server {
    /// The host and port a PostgreSQL URL names, as the driver reads them (defaults included).
    pub(super) fn of_postgres_url(url: &str) -> Option<Server> {
        let options: sea_orm::sqlx::postgres::PgConnectOptions = url.parse().ok()?;
        Some(Server {
            address: options.get_host().to_string(),
            port: options.get_port(),
        })
    }
}

/// Why a read that could have gone to the replica went to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fallback {
    /// The replica did not answer (a probe or a read found it unreachable).
    Down,
    /// It is further behind the primary than `max_lag`.
    Lagging,
    /// It has not replayed this node's newest commit yet.
    ReadYourWrites,
    /// The statement failed on the replica for another reason (a recovery conflict, say).
    Error,
}

impl Fallback {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Fallback::Down => "down",
            Fallback::Lagging => "lagging",
            Fallback::ReadYourWrites => "read_your_writes",
            Fallback::Error => "error",
        }
    }
}

/// Where one read statement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Replica,
    Primary(Fallback),
}

/// What the last probe (or a read) learnt of the replica.
#[derive(Debug, Clone, Copy)]
struct Health {
    up: bool,
    /// The highest replay position seen.
    replayed: u64,
    /// The replica holds everything the primary held at this time; `None`: unknown.
    holds_as_of: Option<Instant>,
    lagging: bool,
}

pub(super) struct Replica {
    pub(super) db: DatabaseConnection,
    pub(super) server: Server,
    max_lag: Duration,
    interval: Duration,
    health: Mutex<Health>,
    /// The primary's WAL position after this node's newest commit.
    committed: AtomicU64,
    /// Commits whose position could not be read, counted; a probe that reads the primary's
    /// position afterwards covers them (`covered` catches up). Reads go to the primary while
    /// some are not covered.
    unknown_commits: AtomicU64,
    covered_commits: AtomicU64,
}

impl Replica {
    /// Opens a lazy pool to the replica (the server starts even while the replica is down) and
    /// starts the probe task, which ends once the pool is closed or the replica dropped.
    pub(super) async fn start(
        settings: &ReplicaSettings,
        primary: DatabaseConnection,
    ) -> Result<Arc<Replica>, StoreError> {
        let server = Server::of_postgres_url(&settings.url).ok_or(StoreError::UnsupportedUrl)?;
        let mut options = ConnectOptions::new(settings.url.clone());
        // Short timeouts: the primary can always serve instead, so waiting long is never worth
        // it. Connections idle for a second are checked before use, so a restarted replica's
        // dead connections are replaced instead of failing reads.
        options
            .max_connections(16)
            .min_connections(0)
            .connect_timeout(Duration::from_secs(1))
            .acquire_timeout(Duration::from_secs(1))
            .test_before_acquire_if_idle_for(Duration::from_secs(1))
            .connect_lazy(true)
            .sqlx_logging(false);
        let db = Database::connect(options).await?;
        let max_lag = settings.max_lag;
        let replica = Arc::new(Replica {
            db,
            server,
            max_lag,
            interval: (max_lag / 4).clamp(Duration::from_millis(10), Duration::from_millis(250)),
            health: Mutex::new(Health {
                up: false,
                replayed: 0,
                holds_as_of: None,
                lagging: false,
            }),
            committed: AtomicU64::new(0),
            unknown_commits: AtomicU64::new(0),
            covered_commits: AtomicU64::new(0),
        });
        // The first probe before any read: a replica that is up serves from the start.
        let mut samples = Samples::default();
        replica.probe(&primary, &mut samples).await;
        if !replica.health().up {
            tracing::warn!(
                replica = %replica.server.address,
                port = replica.server.port,
                "read replica does not answer at start; reads go to the primary until it does"
            );
        }
        tokio::spawn(probe_loop(Arc::downgrade(&replica), primary, samples));
        Ok(replica)
    }

    /// Where the next read statement goes. Costs no round trip unless this node committed
    /// something the replica was not yet seen to have replayed.
    pub(super) async fn route(&self) -> Route {
        let health = self.health();
        if !health.up {
            return Route::Primary(Fallback::Down);
        }
        let fresh = health
            .holds_as_of
            .is_some_and(|at| at.elapsed() <= self.max_lag);
        if !fresh {
            return Route::Primary(Fallback::Lagging);
        }
        let Some(needed) = self.needed() else {
            return Route::Primary(Fallback::ReadYourWrites);
        };
        if health.replayed >= needed {
            return Route::Replica;
        }
        match tokio::time::timeout(FRESH_CHECK_TIMEOUT, position(&self.db, REPLAY_POSITION)).await {
            Ok(Ok(replayed)) => {
                self.saw_replay(replayed);
                if replayed >= needed {
                    Route::Replica
                } else {
                    Route::Primary(Fallback::ReadYourWrites)
                }
            }
            Ok(Err(err)) => Route::Primary(self.read_failed(&err)),
            Err(_) => Route::Primary(Fallback::ReadYourWrites),
        }
    }

    /// Records the primary's WAL position after a commit of this node. Call it after every
    /// commit and before answering the writer.
    pub(super) async fn committed(&self, primary: &DatabaseConnection) {
        let read =
            tokio::time::timeout(COMMIT_POSITION_TIMEOUT, position(primary, PRIMARY_POSITION));
        match read.await {
            Ok(Ok(lsn)) => {
                self.committed.fetch_max(lsn, SeqCst);
            }
            _ => {
                self.unknown_commits.fetch_add(1, SeqCst);
                tracing::debug!("WAL position after a commit unknown; reads use the primary");
            }
        }
    }

    /// A read on the replica failed: marks it down when it could not be reached. Returns why
    /// the read goes to the primary instead.
    pub(super) fn read_failed(&self, err: &DbErr) -> Fallback {
        if super::unreachable(err) {
            self.mark_down(&err.to_string());
            Fallback::Down
        } else {
            tracing::debug!(error = %err, "a read failed on the replica; retried on the primary");
            Fallback::Error
        }
    }

    /// The position the replica must have replayed for this node's commits to be visible;
    /// `None` while a commit's position is unknown.
    fn needed(&self) -> Option<u64> {
        let covered = self.covered_commits.load(SeqCst) >= self.unknown_commits.load(SeqCst);
        covered.then(|| self.committed.load(SeqCst))
    }

    fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Health)) -> (Health, Health) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let before = *health;
        change(&mut health);
        (before, *health)
    }

    fn saw_replay(&self, replayed: u64) {
        self.update(|h| h.replayed = h.replayed.max(replayed));
    }

    /// ReplicaDown.
    fn mark_down(&self, reason: &str) {
        let (before, _) = self.update(|h| h.up = false);
        metrics().replica_up(false);
        if before.up {
            tracing::warn!(
                replica = %self.server.address,
                port = self.server.port,
                reason,
                "read replica unreachable; reads go to the primary until it answers again"
            );
        }
    }

    /// One look at both servers.
    async fn probe(&self, primary: &DatabaseConnection, samples: &mut Samples) {
        // Loaded before the primary is asked: a position read after these commits covers them.
        let unknown = self.unknown_commits.load(SeqCst);
        let asked = Instant::now();
        if let Ok(Ok(lsn)) =
            tokio::time::timeout(PROBE_TIMEOUT, position(primary, PRIMARY_POSITION)).await
        {
            samples.push(asked, lsn, self.max_lag + self.interval);
            if unknown > self.covered_commits.load(SeqCst) {
                self.committed.fetch_max(lsn, SeqCst);
                self.covered_commits.fetch_max(unknown, SeqCst);
            }
        }
        let status = match tokio::time::timeout(PROBE_TIMEOUT, standby_status(&self.db)).await {
            Ok(Ok(status)) => status,
            Ok(Err(err)) => return self.mark_down(&err.to_string()),
            Err(_) => return self.mark_down("no answer within the probe timeout"),
        };
        let Some(replayed) = status.replayed.filter(|_| status.in_recovery) else {
            return self.mark_down("the server is not in recovery (promoted?), so not a replica");
        };
        let now = Instant::now();
        let holds_as_of = samples.holds_as_of(replayed, status.replay_age, now);
        let lag = holds_as_of.map(|at| now.saturating_duration_since(at));
        let lagging = lag.is_none_or(|lag| lag > self.max_lag);
        let (before, _) = self.update(|h| {
            h.up = true;
            h.replayed = h.replayed.max(replayed);
            h.holds_as_of = holds_as_of;
            h.lagging = lagging;
        });
        self.probed(before, lagging, lag);
    }

    /// ReplicaProbed: the gauges, and a log line when its state changed.
    fn probed(&self, before: Health, lagging: bool, lag: Option<Duration>) {
        metrics().replica_up(true);
        if let Some(lag) = lag {
            metrics().replica_lag(lag);
        }
        let (address, port) = (&self.server.address, self.server.port);
        if !before.up {
            tracing::info!(replica = %address, port, "read replica answers; reads may use it");
        }
        if lagging && !before.lagging {
            let lag_ms = lag.map(|l| l.as_millis() as u64);
            tracing::warn!(
                replica = %address,
                port,
                lag_ms,
                max_lag_ms = self.max_lag.as_millis() as u64,
                "read replica lags beyond its bound; reads go to the primary"
            );
        } else if !lagging && before.lagging && before.up {
            tracing::info!(replica = %address, port, "read replica caught up");
        }
    }

    pub(super) async fn close(&self) {
        if let Err(err) = self.db.close_by_ref().await {
            tracing::warn!(error = %err, "closing the replica pool failed");
        }
    }

    fn closed(&self) -> bool {
        self.db.get_postgres_connection_pool().is_closed()
    }
}

async fn probe_loop(replica: Weak<Replica>, primary: DatabaseConnection, mut samples: Samples) {
    let Some(interval) = replica.upgrade().map(|r| r.interval) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(replica) = replica.upgrade().filter(|r| !r.closed()) else {
            return;
        };
        replica.probe(&primary, &mut samples).await;
    }
}

/// A WAL position (`pg_lsn` as bytes from `0/0`) that `sql` selects.
async fn position(db: &DatabaseConnection, sql: &str) -> Result<u64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?
        .ok_or_else(|| DbErr::Custom("no row".into()))?;
    let lsn: Option<i64> = row.try_get_by_index(0)?;
    // NULL: the server is not a standby (replay) or is one (write position).
    let lsn = lsn.ok_or_else(|| DbErr::Custom("no WAL position".into()))?;
    Ok(lsn.max(0) as u64)
}

struct StandbyStatus {
    in_recovery: bool,
    replayed: Option<u64>,
    /// Time since the last replayed commit was made; `None` before the first.
    replay_age: Option<Duration>,
}

async fn standby_status(db: &DatabaseConnection) -> Result<StandbyStatus, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, STANDBY_STATUS))
        .await?
        .ok_or_else(|| DbErr::Custom("no row".into()))?;
    let in_recovery: bool = row.try_get_by_index(0)?;
    let replayed: Option<i64> = row.try_get_by_index(1)?;
    let age: Option<f64> = row.try_get_by_index(2)?;
    Ok(StandbyStatus {
        in_recovery,
        replayed: replayed.map(|lsn| lsn.max(0) as u64),
        replay_age: age.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
    })
}

/// The primary's WAL positions with the times they were seen, oldest first, each higher than
/// the one before: an unchanged position moves its sample's time forward instead.
#[derive(Default)]
struct Samples(VecDeque<(Instant, u64)>);

impl Samples {
    /// Adds a sample and forgets those older than `keep`, except the newest of them.
    fn push(&mut self, at: Instant, lsn: u64, keep: Duration) {
        match self.0.back_mut() {
            Some(last) if last.1 >= lsn => last.0 = at,
            _ => self.0.push_back((at, lsn)),
        }
        while self.0.len() > 1 && at.saturating_duration_since(self.0[1].0) > keep {
            self.0.pop_front();
        }
    }

    /// When the primary last held no more than a replica that replayed up to `replayed` holds.
    /// A replica behind every sample holds less than the oldest: then the age of its last
    /// replayed commit (`replay_age`) is the estimate, never later than the oldest sample.
    fn holds_as_of(
        &self,
        replayed: u64,
        replay_age: Option<Duration>,
        now: Instant,
    ) -> Option<Instant> {
        if let Some((at, _)) = self.0.iter().rev().find(|(_, lsn)| *lsn <= replayed) {
            return Some(*at);
        }
        let by_timestamp = now.checked_sub(replay_age?)?;
        Some(match self.0.front() {
            Some((oldest, _)) => by_timestamp.min(*oldest),
            None => by_timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(2);

    #[test]
    fn an_idle_primary_leaves_a_caught_up_replica_fresh() {
        let start = Instant::now();
        let mut samples = Samples::default();
        for s in 0..10 {
            samples.push(start + Duration::from_secs(s), 500, KEEP);
        }
        let now = start + Duration::from_secs(9);
        // The last commit was replayed an hour ago; nothing has happened since.
        let age = Some(Duration::from_secs(3600));
        assert_eq!(samples.holds_as_of(500, age, now), Some(now));
        assert_eq!(samples.0.len(), 1, "an unchanged position is one sample");
    }

    #[test]
    fn a_replica_is_as_fresh_as_the_newest_sample_it_has_replayed() {
        let start = Instant::now();
        let mut samples = Samples::default();
        for (s, lsn) in [(0, 100), (1, 200), (2, 300)] {
            samples.push(start + Duration::from_secs(s), lsn, KEEP);
        }
        let now = start + Duration::from_secs(2);
        assert_eq!(
            samples.holds_as_of(250, None, now),
            Some(start + Duration::from_secs(1))
        );
    }

    #[test]
    fn behind_every_sample_the_replay_timestamp_decides_but_never_later_than_the_oldest() {
        let start = Instant::now();
        let mut samples = Samples::default();
        samples.push(start + Duration::from_secs(10), 100, KEEP);
        let now = start + Duration::from_secs(10);
        assert_eq!(samples.holds_as_of(50, None, now), None, "unknown");
        assert_eq!(
            samples.holds_as_of(50, Some(Duration::from_secs(3)), now),
            Some(start + Duration::from_secs(7))
        );
        assert_eq!(
            samples.holds_as_of(50, Some(Duration::ZERO), now),
            Some(start + Duration::from_secs(10)),
            "a fresh timestamp cannot make it fresher than the oldest sample"
        );
    }

    #[test]
    fn old_samples_are_forgotten_but_one_older_than_the_window_is_kept() {
        let start = Instant::now();
        let mut samples = Samples::default();
        for s in 0..10u64 {
            samples.push(start + Duration::from_secs(s), s * 10, KEEP);
        }
        let kept: Vec<u64> = samples.0.iter().map(|(_, lsn)| *lsn).collect();
        assert_eq!(kept, [60, 70, 80, 90]);
    }

    #[test]
    fn the_server_of_a_url_is_its_host_and_port_without_credentials() {
        let server = Server::of_postgres_url("postgres://app:s3cret@db.local:6543/h").unwrap();
        assert_eq!(
            server,
            Server {
                address: "db.local".into(),
                port: 6543
            }
        );
        let default_port = Server::of_postgres_url("postgres://db.local/h").unwrap();
        assert_eq!(default_port.port, 5432);
    }
}
