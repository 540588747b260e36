//! Reads through a real PostgreSQL streaming replica.
//!
//! Each test builds its own pair of clusters on free loopback ports: a primary made with
//! `initdb`, and a hot standby of it made with `pg_basebackup -R -X stream`, both run by
//! `pg_ctl` (as the `postgres` user when the tests run as root). A pair of its own, rather than
//! a standby of the server `HL7BRIDGE_DATABASE_URL` names: base-backing up that shared server
//! copies every database on it (6 GB took nearly nine minutes here), and pausing or stopping
//! a standby must not disturb other tests. Both clusters are stopped and removed when the test
//! ends, passed or failed.
//!
//! The tests need PostgreSQL's server programs (`/usr/lib/postgresql/*/bin`), and run in the
//! PostgreSQL pass (`HL7BRIDGE_DATABASE_URL=postgres://…`); otherwise they say why and skip,
//! except that under CI missing server programs fail them. They take turns: the counters they
//! read are the process's.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{json, Value};
use tokio::sync::MutexGuard;

use crate::support::{spawn_app_on, TestApp};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One PostgreSQL cluster of a test.
struct Cluster {
    data: PathBuf,
    port: u16,
}

/// A primary and its streaming replica, stopped and removed on drop.
struct Replication {
    bin: PathBuf,
    root: PathBuf,
    as_postgres: bool,
    primary: Cluster,
    replica: Cluster,
}

impl Replication {
    /// A fresh primary and a replica streaming from it, both accepting connections.
    fn start(bin: PathBuf) -> Replication {
        let root = std::env::temp_dir().join(format!("hl7bridge-replica-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root).unwrap();
        let as_postgres = running_as_root();
        let (primary_port, replica_port) = free_ports();
        let pair = Replication {
            primary: Cluster {
                data: root.join("primary"),
                port: primary_port,
            },
            replica: Cluster {
                data: root.join("replica"),
                port: replica_port,
            },
            bin,
            root,
            as_postgres,
        };
        if as_postgres {
            let owner = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pair.root)
                .status();
            assert!(owner.is_ok_and(|s| s.success()), "chown to postgres");
        }
        let primary = &pair.primary.data;
        pair.tool(
            "initdb",
            &["--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        )
        .args(["--locale=C", "-D"])
        .arg(primary)
        .succeeds();
        let socket_dir = pair.root.display();
        append(
            &primary.join("postgresql.conf"),
            &format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{socket_dir}'\n\
                 fsync = off\nmax_wal_senders = 4\n",
                pair.primary.port
            ),
        );
        pair.pg_ctl(&pair.primary, "start");
        let port = pair.primary.port.to_string();
        pair.tool(
            "pg_basebackup",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres"],
        )
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-D"])
        .arg(&pair.replica.data)
        .succeeds();
        append(
            &pair.replica.data.join("postgresql.conf"),
            &format!("port = {}\n", pair.replica.port),
        );
        pair.pg_ctl(&pair.replica, "start");
        pair
    }

    fn tool(&self, name: &str, args: &[&str]) -> Command {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command.args(args).current_dir(&self.root);
        command
    }

    fn pg_ctl(&self, cluster: &Cluster, action: &str) {
        let log = self.root.join(format!(
            "{}.log",
            cluster.data.file_name().unwrap().to_string_lossy()
        ));
        let mut command = self.tool("pg_ctl", &["-w", "-t", "60", "-m", "fast", "-D"]);
        // `-m` (the shutdown mode) only matters to `stop`.
        command.arg(&cluster.data).arg("-l").arg(&log).arg(action);
        let status = tokio::task::block_in_place(|| command.stdout(Stdio::null()).status());
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.is_ok_and(|s| s.success()),
            "pg_ctl {action} {}: {log_text}",
            cluster.data.display()
        );
    }

    fn url(cluster: &Cluster) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port)
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        for cluster in [&self.replica, &self.primary] {
            if cluster.data.join("postmaster.pid").exists() {
                let _ = self
                    .tool("pg_ctl", &["-m", "immediate", "-D"])
                    .arg(&cluster.data)
                    .arg("stop")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

trait Succeeds {
    fn succeeds(&mut self);
}

impl Succeeds for Command {
    fn succeeds(&mut self) {
        let output = tokio::task::block_in_place(|| self.output()).expect("the tool runs");
        assert!(
            output.status.success(),
            "{self:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Two loopback ports free now (both held while the second is found, so they differ).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    (port(&a), port(&b))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The newest `/usr/lib/postgresql/<version>/bin` with the programs these tests run, when the
/// tests should run at all.
fn server_programs() -> Option<PathBuf> {
    let postgres_pass =
        std::env::var("HL7BRIDGE_DATABASE_URL").is_ok_and(|url| url.starts_with("postgres"));
    if !postgres_pass {
        eprintln!("skipped: the replica tests run when HL7BRIDGE_DATABASE_URL=postgres://… (as in .ci/run)");
        return None;
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| {
            ["pg_ctl", "initdb", "pg_basebackup"]
                .iter()
                .all(|p| bin.join(p).is_file())
        })
        .collect();
    found.sort_by_key(|bin| {
        let version = bin.parent().and_then(|v| v.file_name());
        version.and_then(|v| v.to_str()?.parse::<u32>().ok())
    });
    let newest = found.pop();
    if newest.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide PostgreSQL's server programs (/usr/lib/postgresql/*/bin/pg_ctl)"
        );
        eprintln!("skipped: no /usr/lib/postgresql/*/bin/pg_ctl");
    }
    newest
}

/// The test's turn, a fresh primary and replica, and the app on the primary reading from the
/// replica; `None` when the replica tests skip.
async fn replicated_app(
    max_lag_ms: u64,
) -> Option<(MutexGuard<'static, ()>, Replication, TestApp)> {
    let bin = server_programs()?;
    let turn = ONE_AT_A_TIME.lock().await;
    let pair = Replication::start(bin);
    let replica = Replication::url(&pair.replica);
    let app = spawn_app_on(&Replication::url(&pair.primary), |config| {
        config.database_replica_url = Some(replica);
        config.replica_max_lag_ms = max_lag_ms;
        // These tests count where reads go; the read cache would answer repeats itself and
        // sends its misses to the primary (see `store::cache`).
        config.read_cache_max_bytes = 0;
    })
    .await;
    Some((turn, pair, app))
}

/// Writes a Patient and waits until the replica serves reads of it.
async fn replayed(app: &TestApp, id: &str, family: &str) {
    put_patient(app, id, family).await;
    let path = format!("/Patient/{id}");
    until_the_replica_serves(app, &path, Duration::from_secs(10)).await;
}

/// The replica counters: reads served by each server, and fallbacks by reason.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    replica: u64,
    primary: u64,
    down: u64,
    lagging: u64,
    read_your_writes: u64,
}

impl Counts {
    async fn now(app: &TestApp) -> Counts {
        let text = app.get("/metrics").await.text().await.unwrap();
        let value = |series: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or(0)
        };
        Counts {
            replica: value("hl7bridge_replica_reads_total{served_by=\"replica\"}"),
            primary: value("hl7bridge_replica_reads_total{served_by=\"primary\"}"),
            down: value("hl7bridge_replica_fallbacks_total{reason=\"down\"}"),
            lagging: value("hl7bridge_replica_fallbacks_total{reason=\"lagging\"}"),
            read_your_writes: value(
                "hl7bridge_replica_fallbacks_total{reason=\"read_your_writes\"}",
            ),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            replica: self.replica - before.replica,
            primary: self.primary - before.primary,
            down: self.down - before.down,
            lagging: self.lagging - before.lagging,
            read_your_writes: self.read_your_writes - before.read_your_writes,
        }
    }
}

/// Reads `path` until the replica serves it; fails after `within`.
async fn until_the_replica_serves(app: &TestApp, path: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let before = Counts::now(app).await;
        let (status, _) = app.get_json(path).await;
        assert_eq!(status, 200, "{path}");
        if Counts::now(app).await.since(before).replica > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never served {path}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put_patient(app: &TestApp, id: &str, family: &str) -> Value {
    let patient = json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
    let response = app
        .client
        .put(format!("{}/Patient/{id}", app.base))
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

async fn connect(url: &str) -> DatabaseConnection {
    Database::connect(url).await.expect("the cluster answers")
}

async fn sql(db: &DatabaseConnection, statement: &str) {
    db.execute_unprepared(statement).await.expect(statement);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_served_by_the_replica_when_it_is_in_sync_even_on_an_idle_primary() {
    let Some((_turn, _pair, app)) = replicated_app(300).await else {
        return;
    };
    replayed(&app, "in-sync", "Replayed").await;

    // Nothing is written for longer than the lag bound: the last replayed commit gets old,
    // but the replica has all there is, so it is not lagging.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = Counts::now(&app).await;
    let reads = [
        "/Patient/in-sync",
        "/Patient/in-sync/_history/1",
        "/Patient/in-sync/_history",
        "/Patient?_id=in-sync",
        "/Patient/in-sync/$everything",
        "/_history",
    ];
    for path in reads {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.to_string().contains("Replayed"), "{path}: {body}");
    }
    let served = Counts::now(&app).await.since(before);

    assert!(served.replica >= reads.len() as u64, "{served:?}");
    assert_eq!(served.primary, 0, "{served:?}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("hl7bridge_replica_up 1"), "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_is_never_stale_even_while_the_replica_lags() {
    // A lag bound far above the test's length: only read-your-writes keeps reads fresh here.
    let Some((_turn, pair, app)) = replicated_app(600_000).await else {
        return;
    };
    let replica = connect(&Replication::url(&pair.replica)).await;

    let streaming = Counts::now(&app).await;
    for n in 0..50 {
        write_then_read(&app, n).await;
    }
    let streamed = Counts::now(&app).await.since(streaming);
    sql(&replica, "SELECT pg_wal_replay_pause()").await;
    let paused = Counts::now(&app).await;
    for n in 50..80 {
        write_then_read(&app, n).await;
    }
    let while_paused = Counts::now(&app).await.since(paused);
    sql(&replica, "SELECT pg_wal_replay_resume()").await;

    eprintln!("streaming: {streamed:?}; replay paused: {while_paused:?}");
    assert_eq!(while_paused.replica, 0, "{while_paused:?}");
    assert!(while_paused.read_your_writes >= 60, "{while_paused:?}");
    until_the_replica_serves(&app, "/Patient/ryw", Duration::from_secs(10)).await;
    app.stop().await;
}

/// Writes version `n` and reads it back at once, by id and by search.
async fn write_then_read(app: &TestApp, n: usize) {
    let written = put_patient(app, "ryw", &format!("F{n}")).await;
    let version = written["meta"]["versionId"].clone();
    let (status, read) = app.get_json("/Patient/ryw").await;
    assert_eq!(status, 200);
    assert_eq!(read["meta"]["versionId"], version, "read after write {n}");
    assert_eq!(read["name"][0]["family"], format!("F{n}"));
    let (_, found) = app.get_json("/Patient?_id=ryw").await;
    assert_eq!(found["entry"][0]["resource"]["meta"]["versionId"], version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lagging_beyond_the_bound_is_not_read() {
    let Some((_turn, pair, app)) = replicated_app(300).await else {
        return;
    };
    replayed(&app, "lagged", "Before").await;

    // Another writer moves the primary on while the replica stands still; this node wrote
    // nothing, so only the lag bound can send its reads to the primary.
    let replica = connect(&Replication::url(&pair.replica)).await;
    let primary = connect(&Replication::url(&pair.primary)).await;
    sql(&replica, "SELECT pg_wal_replay_pause()").await;
    sql(&primary, "CREATE TABLE elsewhere (n int)").await;
    for n in 0..5 {
        sql(&primary, &format!("INSERT INTO elsewhere VALUES ({n})")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = Counts::now(&app).await;
    for _ in 0..5 {
        let (status, _) = app.get_json("/Patient/lagged").await;
        assert_eq!(status, 200);
    }
    let served = Counts::now(&app).await.since(before);
    sql(&replica, "SELECT pg_wal_replay_resume()").await;

    assert_eq!(served.replica, 0, "{served:?}");
    assert_eq!(served.lagging, 5, "{served:?}");
    until_the_replica_serves(&app, "/Patient/lagged", Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_stalls_no_read_and_serves_again_once_restarted() {
    let Some((_turn, pair, app)) = replicated_app(1000).await else {
        return;
    };
    replayed(&app, "outage", "Kept").await;

    pair.pg_ctl(&pair.replica, "stop");
    let before = Counts::now(&app).await;
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for _ in 0..50 {
        let asked = Instant::now();
        let (status, body) = app.get_json("/Patient/outage").await;
        slowest = slowest.max(asked.elapsed());
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["name"][0]["family"], "Kept");
    }
    let all = started.elapsed();
    let served = Counts::now(&app).await.since(before);
    eprintln!("replica stopped: 50 reads in {all:?}, slowest {slowest:?}; {served:?}");

    assert_eq!(served.replica, 0, "{served:?}");
    assert_eq!(served.primary, 50, "{served:?}");
    assert!(served.down >= 49, "{served:?}");
    assert!(
        slowest < Duration::from_millis(1000),
        "slowest read {slowest:?}"
    );
    pair.pg_ctl(&pair.replica, "start");
    until_the_replica_serves(&app, "/Patient/outage", Duration::from_secs(15)).await;
    app.stop().await;
}

/// Not a check: measures what a replay-position check per read would cost, against a read by
/// id, both through a pool like the server's, on an in-sync replica.
/// `HL7BRIDGE_DATABASE_URL=postgres://… cargo test --test it replica::cost -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn cost_of_a_replay_position_check_per_read() {
    let Some((_turn, pair, app)) = replicated_app(1000).await else {
        return;
    };
    replayed(&app, "cost", "Measured").await;
    // The server's replica pool checks only connections idle for a second before use.
    let mut options = sea_orm::ConnectOptions::new(Replication::url(&pair.replica));
    options.test_before_acquire_if_idle_for(Duration::from_secs(1));
    let replica = Database::connect(options).await.unwrap();
    let check = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";
    let read = "SELECT resource_type, id, version_id, last_updated_us, deleted, content \
                FROM resource WHERE resource_type = 'Patient' AND id = 'cost'";
    const N: u32 = 5000;
    for (what, statement) in [("check", check), ("read", read), ("check", check)] {
        let started = Instant::now();
        for _ in 0..N {
            let statement =
                sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, statement);
            replica.query_one_raw(statement).await.unwrap().unwrap();
        }
        eprintln!("{what}: {:?} per statement", started.elapsed() / N);
    }
    let started = Instant::now();
    for _ in 0..500 {
        app.get_json("/Patient/cost").await;
    }
    eprintln!(
        "HTTP read served by the replica: {:?} per request",
        started.elapsed() / 500
    );
    app.stop().await;
}

/// What the load against a restarting primary saw.
#[derive(Default)]
struct Answers {
    /// (control id, MRN, MSA-1) of each message answered.
    acks: Vec<(String, String, String)>,
    /// (Patient id, status) of each PUT answered.
    puts: Vec<(String, u16)>,
    /// When each PUT was sent and answered, since the load began.
    put_times: Vec<(Duration, Duration)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_restarted_under_load_costs_ae_and_503_answers_but_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;
    let Some(bin) = server_programs() else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let pair = Replication::start(bin);
    let app = spawn_app_on(&Replication::url(&pair.primary), |config| {
        config.read_cache_max_bytes = 0;
        // An outage longer than this is answered, not waited out.
        config.database_pool.acquire_timeout = Duration::from_millis(1000);
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let mllp = {
        let (stop, answers, addr) = (stop.clone(), answers.clone(), app.mllp);
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (control, mrn) = (format!("PGR{n}"), format!("PGR-MRN-{n}"));
                let message = format!(
                    "MSH|^~\\&|LABSYS|NORTHLAB|HL7BRIDGE|GENHOSP|20240630120030-0500||ORU^R01^ORU_R01|{control}|P|2.5.1\r\
                     PID|1||{mrn}^^^NORTHLAB^MR||Restart^Test||19700101|U\r\
                     OBR|1||F{control}^NORTHLAB|2345-7^Glucose^LN|||20240630101500-0500\r\
                     OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|||||F\r"
                );
                stream
                    .write_all(&hl7bridge_mllp::encode(message.as_bytes()))
                    .await
                    .unwrap();
                let ack = crate::support::read_frame(&mut stream).await;
                let code = crate::support::field(&ack, "MSA", 1);
                answers.lock().unwrap().acks.push((control, mrn, code));
            }
        })
    };
    let began = Instant::now();
    let http = {
        let (stop, answers, base) = (stop.clone(), answers.clone(), app.base.clone());
        tokio::spawn(async move {
            let client = crate::support::http_client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("pgr-{n}");
                let sent = began.elapsed();
                let status = client
                    .put(format!("{base}/Patient/{id}"))
                    .header("content-type", "application/fhir+json")
                    .body(json!({"resourceType": "Patient", "id": id}).to_string())
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await
                    .expect("every request is answered")
                    .status()
                    .as_u16();
                let mut answers = answers.lock().unwrap();
                answers.puts.push((id, status));
                answers.put_times.push((sent, began.elapsed()));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopping = began.elapsed();
    pair.pg_ctl(&pair.primary, "stop");
    let stopped = began.elapsed();
    // A write sent while the primary is down is answered 503 at once. (The load's own PUTs
    // may send none meanwhile: a PUT committed just before the stop is answered only once its
    // audit record is stored, after the restart.)
    let probe = app
        .client
        .put(format!("{}/Patient/pgr-probe", app.base))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "id": "pgr-probe"}).to_string())
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("a PUT during the outage is answered");
    let probe_status = probe.status().as_u16();
    let probe_answered = began.elapsed();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(probe_answered - stopped)).await;
    let starting = began.elapsed();
    pair.pg_ctl(&pair.primary, "start");
    // Until both doors have been answered with success again after the restart.
    let restarted_at = {
        let a = answers.lock().unwrap();
        (a.acks.len(), a.puts.len())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let a = answers.lock().unwrap();
            let acked = a.acks[restarted_at.0..]
                .iter()
                .filter(|x| x.2 == "AA")
                .count();
            let created = a.puts[restarted_at.1..]
                .iter()
                .filter(|x| x.1 == 201)
                .count();
            if acked >= 5 && created >= 5 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server did not recover after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    mllp.await.unwrap();
    http.await.unwrap();

    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let codes: std::collections::BTreeSet<&str> =
        answers.acks.iter().map(|a| a.2.as_str()).collect();
    let statuses: std::collections::BTreeSet<u16> = answers.puts.iter().map(|p| p.1).collect();
    assert!(
        codes.contains("AE"),
        "the outage was answered AE: {codes:?}"
    );
    assert!(codes.iter().all(|c| ["AA", "AE"].contains(c)), "{codes:?}");
    // The PUTs around the outage, for a failure's message: (sent, answered, status).
    let around: Vec<_> = answers
        .put_times
        .iter()
        .zip(&answers.puts)
        .filter(|((sent, answered), _)| {
            *answered >= stopping && *sent <= starting + Duration::from_secs(1)
        })
        .map(|((sent, answered), (_, status))| (sent.as_millis(), answered.as_millis(), *status))
        .collect();
    assert_eq!(
        probe_status,
        503,
        "the outage ({} ms stopping, {} ms stopped, the probe answered at {} ms, {} ms \
         starting) was answered 503; the load's PUTs around it (sent, answered, status): \
         {around:?}",
        stopping.as_millis(),
        stopped.as_millis(),
        probe_answered.as_millis(),
        starting.as_millis()
    );
    assert!(
        statuses.iter().all(|s| [201, 503].contains(s)),
        "{statuses:?}"
    );
    let mut checked = 0;
    for (control, mrn, code) in &answers.acks {
        if code != "AA" {
            continue;
        }
        let (status, found) = app
            .get_json(&format!("/Patient?identifier={mrn}&_summary=count"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            found["total"], 1,
            "{control} was acknowledged: its patient is stored once"
        );
        checked += 1;
    }
    for (id, status) in &answers.puts {
        if *status == 201 {
            let (read, _) = app.get_json(&format!("/Patient/{id}")).await;
            assert_eq!(read, 200, "Patient/{id} was answered 201");
            checked += 1;
        }
    }
    let (probe_read, _) = app.get_json("/Patient/pgr-probe").await;
    assert_eq!(probe_read, 404, "the PUT answered 503 wrote nothing");
    eprintln!(
        "restart under load: {} messages ({} AA), {} PUTs ({} created); {checked} acknowledged writes found",
        answers.acks.len(),
        answers.acks.iter().filter(|a| a.2 == "AA").count(),
        answers.puts.len(),
        answers.puts.iter().filter(|p| p.1 == 201).count(),
    );
    app.stop().await;
}
