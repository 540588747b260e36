//! A real FHIR client library drives the server: `tests/fhirpy_check.py` uses Python's fhirpy
//! the way an application would. Skipped, saying why, when fhirpy is not installed; under CI
//! (`CI` set) that fails instead, and `.ci/run` installs it.

use std::process::Command;

use crate::support::{spawn_app, tool_present};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_creates_reads_updates_searches_pages_and_calls_everything() {
    if !tool_present("python3", &["-c", "import fhirpy"], "Python's fhirpy") {
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
