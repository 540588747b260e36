//! End to end against a real Kafka-protocol broker process (tansu, on loopback) and an
//! independent client (Python's confluent-kafka, in `tests/kafka_e2e.py`): the server binary
//! consumes what that client produces, and the client checks the change feed and the
//! dead-letter topic. Skipped, saying why, when tansu or confluent-kafka is missing; under CI
//! (`CI` set) a missing piece fails the test, and `.ci/run` installs both.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{tool_present, Running};

/// `HL7BRIDGE_TEST_TANSU`, else `tansu` on PATH, else cargo's bin directory.
fn tansu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HL7BRIDGE_TEST_TANSU") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|dir| dir.join("tansu"))
            .collect::<Vec<_>>()
    });
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let in_cargo = cargo_home.map(|home| home.join("bin/tansu"));
    on_path.chain(in_cargo).find(|p| p.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn e2e_script(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_e2e.py");
    let status = Command::new("python3")
        .arg(script)
        .args(args)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "kafka_e2e.py {} failed", args[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_broker_and_an_independent_client_see_records_stored_and_changes_published() {
    let tansu = tansu().unwrap_or_else(|| PathBuf::from("tansu"));
    let what = "tansu (cargo install tansu --version 0.6.0 --locked --features dynostore)";
    if !tool_present(&tansu.to_string_lossy(), &["--help"], what) {
        return;
    }
    if !tool_present(
        "python3",
        &["-c", "import confluent_kafka"],
        "Python's confluent-kafka",
    ) {
        return;
    }
    let (database_url, _database) = crate::support::fresh_database().await;
    let broker_port = free_port();
    let brokers = format!("127.0.0.1:{broker_port}");
    let work_dir = std::env::temp_dir().join(format!("hl7bridge-tansu-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work_dir).unwrap();
    let _broker = Running(
        Command::new(tansu)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{brokers}")])
            .args(["--advertised-listener-url", &format!("tcp://{brokers}")])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&work_dir)
            // Nothing inherited: no OTEL_* endpoint or other setting may point it elsewhere.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts"),
    );
    wait_until("tansu listens", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&brokers).is_ok()
    });
    e2e_script(&["topics", &brokers]);

    let http_port = free_port();
    let _server = Running(
        Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("HL7BRIDGE_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("HL7BRIDGE_MLLP_ADDR", "127.0.0.1:0")
            .env("HL7BRIDGE_DATABASE_URL", &database_url)
            .env("HL7BRIDGE_KAFKA_BROKERS", &brokers)
            .stdout(Stdio::null())
            .spawn()
            .expect("the server starts"),
    );
    let base = format!("http://127.0.0.1:{http_port}");
    let client = crate::support::http_client();
    let started = Instant::now();
    loop {
        let ready = client.get(format!("{base}/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server is ready in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let check = tokio::task::spawn_blocking(move || e2e_script(&["check", &brokers, &base]));
    check.await.unwrap();
    let _ = std::fs::remove_dir_all(&work_dir);
}
