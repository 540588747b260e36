//! A real FHIR client library drives the server: `tests/fhirpy_check.py` uses Python's fhirpy
//! the way an application would. Skipped, saying why, when fhirpy is not installed; under CI
//! (`CI` set) that fails instead, and `.ci/run` installs it.

use std::process::{Command, Stdio};

use crate::support::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_creates_reads_updates_searches_pages_and_calls_everything() {
    let installed = Command::new("python3")
        .args(["-c", "import fhirpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide fhirpy (.ci/run installs it)"
        );
        eprintln!("skipped: Python's fhirpy is not installed");
        return;
    }
    let app = spawn_app().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhirpy_check.py");
    let base = app.base.clone();
    let status =
        tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(base).status())
            .await
            .unwrap()
            .expect("python3 runs");
    assert!(status.success(), "fhirpy_check.py failed");
    app.stop().await;
}
