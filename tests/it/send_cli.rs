//! `hl7bridge send` and `hl7bridge replay` against a real server over MLLP, with messages in
//! enhanced acknowledgement mode: each file gets the answers its MSH-15 and MSH-16 ask for, and
//! only those. Patients and data are invented.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::replay_cli::cli;
use crate::support::{fresh_database, spawn_app_on, TestApp};

/// An ORU^R01 asking for `msh_15` and `msh_16`.
fn oru(control_id: &str, mrn: &str, msh_15: &str, msh_16: &str) -> String {
    format!(
        "MSH|^~\\&|LABSYS|NORTHLAB|HL7BRIDGE|GENHOSP|20240630120030-0500||ORU^R01^ORU_R01|\
         {control_id}|P|2.5.1|||{msh_15}|{msh_16}\r\
         PID|1||{mrn}^^^NORTHLAB^MR||Wren^Invented||19750505|F\r\
         OBR|1||F-{control_id}^NORTHLAB|24331-1^Lipid panel^LN|||20240630101500-0500\r\
         OBX|1|NM|2093-3^Cholesterol^LN||120|mg/dL^^UCUM|||||F\r"
    )
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = std::env::temp_dir().join(format!("hl7bridge-send-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the binary; returns its exit code, its stdout and how long it took.
fn run(args: &[&str], database_url: &str, app: &TestApp) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let output = tokio::task::block_in_place(|| cli(args, database_url, &app.mllp.to_string()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.is_empty() || output.status.code() == Some(1),
        "{stderr}"
    );
    (output.status.code(), stdout, started.elapsed())
}

/// The printed section of one file: from its name to the next file's.
fn section<'a>(stdout: &'a str, name: &str) -> &'a str {
    let start = stdout
        .find(&format!("{name}:\n"))
        .unwrap_or_else(|| panic!("{name} in {stdout}"));
    let rest = &stdout[start + name.len() + 2..];
    let end = rest.find(".hl7:\n").map_or(rest.len(), |i| {
        rest[..i].rfind('\n').map_or(0, |line_start| line_start + 1)
    });
    &rest[..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_al_al_file_then_an_original_mode_file_each_get_their_own_answers() {
    let (database_url, _database) = fresh_database().await;
    let app = spawn_app_on(&database_url, |_| {}).await;
    let files = Files::new();
    let enhanced = files.write("enhanced.hl7", &oru("SC-ALAL", "SEND0101", "AL", "AL"));
    let original = files.write("original.hl7", &oru("SC-ORIG", "SEND0102", "", ""));
    let (code, stdout, _) = run(&["send", &enhanced, &original], &database_url, &app);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(
        section(&stdout, &enhanced),
        "MSA|CA|SC-ALAL\nMSA|AA|SC-ALAL\n",
        "{stdout}"
    );
    assert_eq!(section(&stdout, &original), "MSA|AA|SC-ORIG\n", "{stdout}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ne_ne_file_is_done_at_once_with_nothing_due() {
    let (database_url, _database) = fresh_database().await;
    let app = spawn_app_on(&database_url, |_| {}).await;
    let files = Files::new();
    let silent = files.write("silent.hl7", &oru("SC-NENE", "SEND0201", "NE", "NE"));
    let (code, stdout, took) = run(&["send", &silent], &database_url, &app);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        section(&stdout, &silent).contains("nothing was due for SC-NENE"),
        "{stdout}"
    );
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: no 30 s wait"
    );
    let (_, found) = app.get_json("/Patient?identifier=SEND0201").await;
    assert_eq!(found["total"], 1, "stored all the same");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_er_er_file_with_a_content_error_shows_its_ae_and_fails() {
    let (database_url, _database) = fresh_database().await;
    let app = spawn_app_on(&database_url, |_| {}).await;
    let files = Files::new();
    let fine = files.write("fine.hl7", &oru("SC-EROK", "SEND0301", "ER", "ER"));
    let bad_birth_date = oru("SC-ERER", "SEND0302", "ER", "ER").replace("19750505", "19750230");
    let bad = files.write("bad.hl7", &bad_birth_date);
    let after = files.write("after.hl7", &oru("SC-AFTER", "SEND0303", "", ""));

    let (code, stdout, _) = run(&["send", &fine], &database_url, &app);
    assert_eq!(code, Some(0), "no ACK under ER means success: {stdout}");
    assert!(section(&stdout, &fine).starts_with("nothing was due for SC-EROK"));

    let (code, stdout, _) = run(
        &["send", "--grace-ms", "5000", &bad, &after],
        &database_url,
        &app,
    );
    assert_eq!(code, Some(1), "{stdout}");
    let shown = section(&stdout, &bad);
    assert!(
        shown.starts_with("MSA|AE|SC-ERER\nERR||PID^1^7|"),
        "{stdout}"
    );
    assert!(!shown.contains("MSA|CA"), "stored: no CE sent, none shown");
    assert_eq!(section(&stdout, &after), "MSA|AA|SC-AFTER\n", "{stdout}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_enhanced_mode_message_is_replayed_with_its_stored_acks() {
    let (database_url, _database) = fresh_database().await;
    let app = spawn_app_on(&database_url, |_| {}).await;
    let files = Files::new();
    let both = files.write("both.hl7", &oru("SC-RP1", "SEND0401", "AL", "AL"));
    let silent = files.write("silent.hl7", &oru("SC-RP2", "SEND0402", "NE", "NE"));
    let (code, stdout, _) = run(&["send", &both, &silent], &database_url, &app);
    assert_eq!(code, Some(0), "{stdout}");

    let (_, listed, _) = run(&["messages"], &database_url, &app);
    let id_of = |control_id: &str| -> String {
        listed
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|m| m["control_id"] == control_id)
            .unwrap_or_else(|| panic!("{control_id} in {listed}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (both_id, silent_id) = (id_of("SC-RP1"), id_of("SC-RP2"));
    let (code, stdout, took) = run(&["replay", &both_id, &silent_id], &database_url, &app);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        stdout,
        format!(
            "{both_id}:\nMSA|CA|SC-RP1\nMSA|AA|SC-RP1\n\
             {silent_id}:\nnothing was due for SC-RP2: none was asked for; `hl7bridge messages` lists what the \
             server decided\n"
        )
    );
    app.stop().await;
}
