//! Test harness: `spawn_app` builds the real application on port 0 and runs it in the
//! background; helpers speak FHIR over HTTP and MLLP over TCP (`tls.rs` has its own TLS
//! clients).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use hl7bridge::config::Config;
use hl7bridge::startup::Application;
use hl7bridge::telemetry::Telemetry;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct TestApp {
    /// `http://…`, or `https://…` when the test set `http_tls` (`client` speaks only HTTP).
    pub base: String,
    pub mllp: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _database: TestDatabase,
}

/// A test's SQLite file, removed (with its WAL and shared-memory files) when the test ends,
/// passed or not. PostgreSQL test databases are dropped by `.ci/run`.
pub struct TestDatabase(Option<PathBuf>);

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    }
}

static TELEMETRY: OnceLock<()> = OnceLock::new();

/// Tests that load every core (huge HL7v2 messages) take this exclusively; tests whose
/// assertions rest on messages arriving within a few hundred milliseconds (group commit) take
/// it shared, so the two never run at once.
static CPU: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a test that loads every core while it runs.
pub async fn cpu_heavy() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    CPU.write().await
}

/// Held by a test whose timing a core-loading test running beside it would upset.
pub async fn timing_sensitive() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CPU.read().await
}

/// Spans need the OpenTelemetry layer to get ids; nothing is exported in tests.
fn init_telemetry() {
    TELEMETRY.get_or_init(|| {
        // Leaked on purpose: the provider must live as long as the test process.
        // Errors only, unless RUST_LOG says otherwise: lifecycle lines and the refusals
        // the tests provoke on purpose would bury the test output.
        if let Ok(telemetry) = Telemetry::init_with_log_filter("error") {
            std::mem::forget(telemetry);
        }
    });
}

/// An HTTP client for a test. reqwest has rustls without a default crypto provider (see
/// Cargo.toml), and this process installs none, which shows that the server never relies on
/// one: a client is given its own, ring trusting nothing (tests speak plain HTTP to the API).
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("an HTTP client")
}

/// As [`http_client`], for a test that sets more.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let tls = hl7bridge::tls::https_client_config(rustls::RootCertStore::empty())
        .expect("a TLS client configuration");
    reqwest::Client::builder().tls_backend_preconfigured(tls)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// As [`spawn_app`], with settings changed by `adjust` first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let (database_url, database) = fresh_database().await;
    start_app(database_url, database, adjust).await
}

/// Another app on an existing database (a second node, or a restart); the first app's test
/// owns the database's cleanup.
pub async fn spawn_app_on(database_url: &str, adjust: impl FnOnce(&mut Config)) -> TestApp {
    start_app(database_url.to_string(), TestDatabase(None), adjust).await
}

async fn start_app(
    database_url: String,
    database: TestDatabase,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    init_telemetry();
    let mut config = Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        mllp_addr: "127.0.0.1:0".parse().unwrap(),
        database_url,
        shutdown_timeout_ms: 5_000,
        ..Config::default()
    };
    adjust(&mut config);
    let scheme = match config.http_tls {
        Some(_) => "https",
        None => "http",
    };
    let app = Application::build(config)
        .await
        .expect("the application builds");
    let base = format!("{scheme}://{}", app.http_addr());
    let mllp = app.mllp_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        mllp,
        client: http_client(),
        stop: Some(stop),
        task: Some(task),
        _database: database,
    }
}

impl TestApp {
    /// A server running in another process (see `otlp_export::start_server`), driven like
    /// an in-process one; stopping it is the process's owner's business.
    pub fn of_process(http: &str, mllp: &str) -> TestApp {
        TestApp {
            base: format!("http://{http}"),
            mllp: mllp.parse().expect("the server logs its MLLP address"),
            client: http_client(),
            stop: None,
            task: None,
            _database: TestDatabase(None),
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET is answered")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("the body is JSON"))
    }

    /// PUTs a resource as FHIR JSON and returns the status.
    pub async fn put_status(&self, path: &str, body: &Value) -> u16 {
        let response = self
            .client
            .put(format!("{}/{path}", self.base))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("PUT is answered");
        response.status().as_u16()
    }

    pub async fn post_bundle(&self, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/", self.base))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .expect("POST is answered");
        let status = response.status().as_u16();
        (status, response.json().await.expect("the body is JSON"))
    }

    /// `PUT {path}` of a FHIR JSON body: the status and the body, JSON when there is one.
    pub async fn put_json(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .expect("PUT is answered");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends each payload framed on one connection and returns the answers, in order.
    pub async fn mllp_exchange(&self, payloads: &[&[u8]]) -> Vec<String> {
        let mut stream = TcpStream::connect(self.mllp).await.expect("MLLP connects");
        let mut answers = Vec::new();
        for payload in payloads {
            stream
                .write_all(&hl7bridge_mllp::encode(payload))
                .await
                .unwrap();
            answers.push(read_frame(&mut stream).await);
        }
        answers
    }

    /// Sends one message on a new connection and returns its ACK, which must be an AA.
    pub async fn send_accepted(&self, message: &[u8]) -> String {
        let ack = self.mllp_exchange(&[message]).await.remove(0);
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack:?}");
        ack
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(15), task).await;
            result.expect("the server stops in time").unwrap().unwrap();
        }
    }
}

/// `$everything` of the one patient with identifier `mrn`.
pub async fn everything_for(app: &TestApp, mrn: &str) -> Value {
    let (status, found) = app.get_json(&format!("/Patient?identifier={mrn}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        found["total"], 1,
        "one patient with identifier {mrn}: {found}"
    );
    let id = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, bundle) = app.get_json(&format!("/Patient/{id}/$everything")).await;
    assert_eq!(status, 200);
    bundle
}

/// `Type/id` of every entry of a Bundle, in order.
pub fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let r = &e["resource"];
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// The resources of one type in a Bundle.
pub fn resources_of<'a>(bundle: &'a Value, resource_type: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == resource_type)
        .collect()
}

/// A fixture with one text in it replaced, which must be there.
pub fn replaced(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    assert!(text.contains(from), "{from}");
    text.replace(from, to).into_bytes()
}

/// Reads one MLLP frame and returns its payload as text.
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("the ACK can be read");
            assert!(n > 0, "the connection closed before an ACK arrived");
            buf.extend_from_slice(&chunk[..n]);
            if buf.ends_with(&[0x1c, 0x0d]) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("an ACK arrives in time");
    assert_eq!(buf.first(), Some(&0x0b), "the answer starts a frame");
    String::from_utf8_lossy(&buf[1..buf.len() - 2]).into_owned()
}

/// The value of `SEG-n` of the first such segment of an ER7 message, read with the field
/// separator the message's own MSH declares.
pub fn field(message: &str, segment: &str, n: usize) -> String {
    let separator = message.chars().nth(3).unwrap_or('|');
    let line = message
        .split('\r')
        .find(|l| l.starts_with(segment))
        .unwrap_or_else(|| panic!("no {segment} in {message:?}"));
    let fields: Vec<&str> = line.split(separator).collect();
    let index = if segment == "MSH" { n - 1 } else { n };
    fields.get(index).copied().unwrap_or("").to_string()
}

pub async fn fresh_database() -> (String, TestDatabase) {
    match std::env::var("HL7BRIDGE_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            (fresh_postgres_database(&url).await, TestDatabase(None))
        }
        _ => {
            let file =
                std::env::temp_dir().join(format!("hl7bridge-test-{}.db", uuid::Uuid::new_v4()));
            (
                format!("sqlite://{}", file.display()),
                TestDatabase(Some(file)),
            )
        }
    }
}

/// Creates an empty database on the server `url` points at, named for this test.
async fn fresh_postgres_database(url: &str) -> String {
    use sea_orm::{ConnectionTrait, Database};
    let name = format!("hl7bridge_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(url)
        .await
        .expect("PostgreSQL is reachable");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("a test database can be created");
    let _ = admin.close().await;
    let (path, query) = url
        .split_once('?')
        .map_or((url, None), |(p, q)| (p, Some(q)));
    let (server, _) = path.rsplit_once('/').expect("the URL names a database");
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{server}/{name}{query}")
}

/// Each entry's `response.status` of a transaction or batch response.
pub fn entry_statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect()
}

/// `Type/id` of a transaction or batch response entry's location, without its version.
pub fn located(entry: &Value) -> String {
    let location = entry["response"]["location"].as_str().unwrap();
    let mut parts = location.split('/');
    format!("{}/{}", parts.next().unwrap(), parts.next().unwrap())
}

/// Sends `body` as FHIR JSON with `request`; the answer's status, headers and text.
pub async fn send_resource(
    request: reqwest::RequestBuilder,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let response = request
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// Sends `n` requests at once, each built by `request` with `body` as FHIR JSON, and returns
/// their statuses.
pub async fn race(
    n: usize,
    request: impl Fn() -> reqwest::RequestBuilder,
    body: &Value,
) -> Vec<u16> {
    let racers: Vec<_> = (0..n)
        .map(|_| {
            let (request, body) = (request(), body.clone());
            tokio::spawn(async move { send_resource(request, &body).await.0 })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    statuses
}

/// Racing conditional writes: exactly one created, the others found it (200).
pub fn assert_one_created(statuses: &[u16]) {
    let created = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(created, 1, "{statuses:?}");
    let found_it = statuses.iter().all(|s| *s == 201 || *s == 200);
    assert!(found_it, "{statuses:?}");
}

/// Follows `next` links from `first` (a path); returns every page.
pub async fn pages(app: &TestApp, first: &str) -> Vec<Value> {
    let mut url = format!("{}{first}", app.base);
    let mut out = Vec::new();
    loop {
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        let next = next_link(&page);
        out.push(page);
        match next {
            Some(next) => url = next,
            None => return out,
        }
        assert!(out.len() < 50, "paging ends");
    }
}

/// A Bundle's `next` link, if it has one.
pub fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

/// A child process killed when the test ends, passed or not.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the tool a test drives the server with is installed (`program args` succeeds).
/// Outside CI a missing tool skips the test, saying so; under CI (`CI` set) it fails it, since
/// `.ci/run` installs every tool.
pub fn tool_present(program: &str, args: &[&str], what: &str) -> bool {
    let found = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide {what} (.ci/run installs it)"
        );
        eprintln!("skipped: {what} is not installed");
    }
    found
}

/// `../shared/corpus/<kind>` beside the repository, when present. Under CI it must be there.
pub fn corpus_dir(kind: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus")
        .join(kind);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must provide {}",
        dir.display()
    );
    eprintln!("skipped: {} is not present", dir.display());
    None
}

/// Prints a line a test measured, and appends it to the file `HL7BRIDGE_TEST_REPORT` names, if
/// set: CI prints that file after the tests, since the test harness shows a passing test's
/// output to nobody.
pub fn report(line: &str) {
    eprintln!("{line}");
    if let Ok(path) = std::env::var("HL7BRIDGE_TEST_REPORT") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// The server binary on a database of its own, started in a directory of its own, for tests
/// that measure the process (its peak memory); killed and its directory removed when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    pub http: String,
    pub mllp: String,
    dir: PathBuf,
}

impl ServerProcess {
    pub fn start(database_url: &str) -> ServerProcess {
        let dir = std::env::temp_dir().join(format!("hl7bridge-proc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = [("HL7BRIDGE_DATABASE_URL", database_url)];
        let (child, http, mllp) =
            tokio::task::block_in_place(|| crate::otlp_export::start_server(&dir, &env));
        ServerProcess {
            child,
            http,
            mllp,
            dir,
        }
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
