//! A real MLLP client drives the server: python-hl7's `mllp_send` sends the fixtures and gets
//! their ACKs. Skipped, saying why, when it is not installed; under CI (`CI` set) that fails
//! instead, and `.ci/run` installs it.

use std::process::Command;

use crate::support::{spawn_app, tool_present};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hl7s_mllp_send_gets_an_aa_for_each_message() {
    if !tool_present("mllp_send", &["--version"], "python-hl7's mllp_send") {
        return;
    }
    let app = spawn_app().await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut file = String::new();
    for name in ["oru_r01_ztr.hl7", "adt_a01.hl7"] {
        file.push_str(
            std::fs::read_to_string(fixtures.join(name))
                .unwrap()
                .trim_end(),
        );
        file.push('\n');
    }
    let path =
        std::env::temp_dir().join(format!("hl7bridge-mllp-send-{}.hl7", uuid::Uuid::new_v4()));
    std::fs::write(&path, file).unwrap();
    let port = app.mllp.port().to_string();
    let file_arg = path.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("mllp_send")
            .args(["--loose", "--file", &file_arg, "--port", &port, "127.0.0.1"])
            .output()
    })
    .await
    .unwrap()
    .expect("mllp_send runs");
    let _ = std::fs::remove_file(&path);
    let acks = String::from_utf8_lossy(&output.stdout).replace('\r', "\n");
    assert!(
        output.status.success(),
        "{acks}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(acks.matches("MSA|AA|").count(), 2, "{acks}");
    assert!(acks.contains("MSA|AA|LAB0001"), "{acks}");
    app.stop().await;
}
