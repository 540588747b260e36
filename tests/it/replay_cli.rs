//! `hl7bridge messages` and `hl7bridge replay` against a running server's database.

use std::process::Command;

use serde_json::Value;

use crate::support::{fresh_database, spawn_app_on};

pub(crate) fn cli(args: &[&str], database_url: &str, mllp: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HL7BRIDGE_DATABASE_URL", database_url)
        .env("HL7BRIDGE_MLLP_ADDR", mllp)
        .output()
        .expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_are_listed_without_content_and_replayed_over_mllp() {
    let (database_url, _database) = fresh_database().await;
    let app = spawn_app_on(&database_url, |_| {}).await;
    let accepted = include_str!("../fixtures/adt_a01.hl7")
        .trim_end()
        .replace("\r\n", "\r")
        .replace('\n', "\r");
    let refused =
        "MSH|^~\\&|LAB|FAC|HL7BRIDGE|HOSP|20240101||ZZZ^Z99|REPLAY1|P|2.5.1\rPID|1||SECRETMRN";
    let answers = app
        .mllp_exchange(&[accepted.as_bytes(), refused.as_bytes()])
        .await;
    assert!(answers[0].contains("MSA|AA"), "{}", answers[0]);
    assert!(answers[1].contains("MSA|AR"), "{}", answers[1]);
    let mllp = app.mllp.to_string();

    let listed =
        tokio::task::block_in_place(|| cli(&["messages", "--ack", "AR"], &database_url, &mllp));
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let text = String::from_utf8(listed.stdout).unwrap();
    assert!(!text.contains("SECRETMRN"), "no content in the listing");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["control_id"], "REPLAY1");
    assert_eq!(lines[0]["message_type"], "ZZZ^Z99");
    let refused_id = lines[0]["id"].as_str().unwrap().to_string();

    let all = tokio::task::block_in_place(|| cli(&["messages"], &database_url, &mllp));
    let all: Vec<Value> = String::from_utf8(all.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(all.len(), 2);
    let accepted_id = all.iter().find(|m| m["ack_code"] == "AA").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Replayed, the refused message is refused again (exit 1); the accepted one gets its
    // stored ACK back (exit 0).
    let again = tokio::task::block_in_place(|| cli(&["replay", &refused_id], &database_url, &mllp));
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stdout).contains("MSA|AR"));
    let again =
        tokio::task::block_in_place(|| cli(&["replay", &accepted_id], &database_url, &mllp));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let unknown =
        tokio::task::block_in_place(|| cli(&["replay", "no-such-id"], &database_url, &mllp));
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no stored message"));
    app.stop().await;
}

#[test]
fn messages_and_replay_against_a_missing_database_say_so_and_create_nothing() {
    let dir = std::env::temp_dir().join(format!("hl7bridge-nodb-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("nothing-here.db");
    let url = format!("sqlite://{}", missing.display());
    for args in [&["messages"][..], &["replay", "some-id"]] {
        let output = cli(args, &url, "127.0.0.1:9");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("no database at"), "{args:?}: {stderr}");
        assert!(!missing.exists(), "{args:?} created the database");
    }
    // A file that is not this server's database is left as it is.
    let foreign = dir.join("other-application.db");
    std::fs::write(&foreign, b"").unwrap();
    let url = format!("sqlite://{}", foreign.display());
    let output = cli(&["messages"], &url, "127.0.0.1:9");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an hl7bridge database"));
    assert_eq!(
        std::fs::metadata(&foreign).unwrap().len(),
        0,
        "left untouched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_on_a_subcommand_prints_usage_instead_of_starting_a_server() {
    let dir = std::env::temp_dir().join(format!("hl7bridge-help-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for args in [&["serve", "--help"][..], &["send", "-h"], &["--help"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
            .args(args)
            .current_dir(&dir)
            .env_clear()
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("usage: hl7bridge serve"));
    }
    assert!(!dir.join("hl7bridge.db").exists(), "no server started");
    let _ = std::fs::remove_dir_all(&dir);
}
