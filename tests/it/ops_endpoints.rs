//! `/metrics` checked by Prometheus' own linter. `promtool` comes from Debian's `prometheus`
//! package, which `.ci/run` installs; elsewhere the test says so and skips.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::spawn_app;

const ORU: &[u8] = include_bytes!("../fixtures/oru_r01_ztr.hl7");

fn promtool_available() -> bool {
    let what = "promtool (apt-get install prometheus)";
    crate::support::tool_present("promtool", &["--version"], what)
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    if !promtool_available() {
        return;
    }
    let app = spawn_app().await;
    app.mllp_exchange(&[ORU, b"PID|1||X\r"]).await;
    app.get_json("/Patient?identifier=TST100234").await;
    app.get_json("/Patient/missing").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("hl7bridge_db_pool_connections{state=\"max\"}"),
        "{text}"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );
    app.stop().await;
}
