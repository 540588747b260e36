//! The public sample corpus in ../shared/corpus, run through the real server. Skipped (with a
//! note) where the corpus is absent; required under CI.

use std::collections::BTreeMap;

use serde_json::Value;

use hl7bridge::ingest::v2::{AckCode, AckMode, Header};

use crate::support::{corpus_dir, field, fresh_database, spawn_app, spawn_app_on};

fn sorted_files(dir: &std::path::Path, extension: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Every message's MSH-10 in a file, as the server's own splitter reads it.
fn control_ids(bytes: &[u8]) -> Vec<String> {
    match hl7bridge::ingest::v2::split_frame(bytes) {
        Ok(frame) => frame
            .messages
            .iter()
            .map(|m| {
                m.header()
                    .and_then(|h| h.control_id.clone())
                    .unwrap_or_default()
            })
            .collect(),
        Err(_) => vec![hl7bridge::ingest::v2::read_header(bytes)
            .and_then(|h| h.control_id)
            .unwrap_or_default()],
    }
}

/// What an accepted message was stored as: its resources counted by type.
fn stored_types(message: &hl7bridge::ingest::v2::RawMessage) -> String {
    let context = hl7bridge::ingest::map::MapContext::default();
    let Ok(mapped) = message
        .parse()
        .map(|m| hl7bridge::ingest::map::map_message(&m, &context))
    else {
        return "?".into();
    };
    let types = mapped.map(|m| {
        counts_by_type(
            m.resources
                .iter()
                .map(|r| r["resourceType"].as_str().unwrap_or("?").to_string()),
        )
    });
    match types {
        Ok(counts) => counts
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => "?".into(),
    }
}

/// The ACK messages in one answer: each starts at a segment named MSH.
fn acks_in(answer: &str) -> Vec<String> {
    let mut acks: Vec<String> = Vec::new();
    for segment in answer.split('\r').filter(|s| !s.is_empty()) {
        match acks.last_mut() {
            Some(ack) if !segment.starts_with("MSH") => ack.push_str(&format!("{segment}\r")),
            _ => acks.push(format!("{segment}\r")),
        }
    }
    acks
}

const PROBE: &str = "MSH|^~\\&|CORPUS|PROBE|||20240101||ZZZ^Z01|PROBE|P|2.5.1\r";

/// Sends a corpus file, then a probe that is answered with one AR, and returns every ACK that
/// came before the probe's: what the file got, however many frames (enhanced mode may send
/// two, or none), without waiting on a clock.
async fn acks_for_file(stream: &mut tokio::net::TcpStream, bytes: &[u8]) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(&hl7bridge_mllp::encode(bytes))
        .await
        .unwrap();
    let probe = hl7bridge_mllp::encode(PROBE.as_bytes());
    stream.write_all(&probe).await.unwrap();
    let mut acks = Vec::new();
    loop {
        for ack in acks_in(&read_frames(stream).await) {
            if field(&ack, "MSH", 5) == "CORPUS" && field(&ack, "MSA", 2) == "PROBE" {
                return acks;
            }
            acks.push(ack);
        }
    }
}

/// What has been read from `stream` and is complete: one frame or more, their payloads joined.
async fn read_frames(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    while !buf.ends_with(&[0x1c, 0x0d]) {
        let mut chunk = [0u8; 8192];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut chunk));
        let n = read
            .await
            .expect("an ACK in time")
            .expect("the ACK can be read");
        assert!(n > 0, "the connection stays open");
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.replace("\x1c\r", "").replace('\x0b', "")
}

/// The ACK codes stored for the messages received since `after` rows, in order (the probe's
/// left out): the application decision, AA, AE or AR, also for messages whose sender asked for
/// no ACK.
async fn stored_codes(db: &sea_orm::DatabaseConnection, after: usize) -> Vec<String> {
    use sea_orm::{ConnectionTrait, Statement};
    let sql = "SELECT sending_application, ack_code FROM hl7_message ORDER BY received_at_us";
    let statement = Statement::from_string(db.get_database_backend(), sql.to_string());
    let rows = db.query_all_raw(statement).await.unwrap();
    rows.iter()
        .skip(after)
        .map(|r| {
            let sender: String = r.try_get("", "sending_application").unwrap();
            let code: String = r.try_get("", "ack_code").unwrap();
            (sender, code)
        })
        .filter(|(sender, _)| sender != "CORPUS")
        .map(|(_, code)| code)
        .collect()
}

/// The ACKs a message of `header` answered `code` gets, in the order they are sent: accept
/// ACKs of a frame first, then application ACKs.
fn due_codes(headers: &[Option<Header>], codes: &[String]) -> Vec<String> {
    let due: Vec<_> = headers
        .iter()
        .zip(codes)
        .filter(|(header, _)| !header.as_ref().is_some_and(Header::is_acknowledgement))
        .map(|(header, code)| AckMode::of(header.as_ref()).due(ack_code(code), true))
        .collect();
    let accepts = due.iter().filter_map(|d| d.accept);
    let applications = due.iter().filter_map(|d| d.application);
    accepts
        .chain(applications)
        .map(|c| c.as_str().to_string())
        .collect()
}

fn ack_code(code: &str) -> AckCode {
    match code {
        "AA" => AckCode::AA,
        "AE" => AckCode::AE,
        _ => AckCode::AR,
    }
}

#[tokio::test]
async fn every_corpus_hl7v2_file_gets_framed_acks_matching_its_control_ids() {
    let Some(dir) = corpus_dir("hl7v2") else {
        return;
    };
    let (url, _database) = fresh_database().await;
    let app = spawn_app_on(&url, |_| {}).await;
    let db = sea_orm::Database::connect(&url).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(app.mllp).await.unwrap();
    let mut table = Vec::new();
    let mut rows_before = 0;
    for path in sorted_files(&dir, "hl7") {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let acks = acks_for_file(&mut stream, &bytes).await;
        let codes = stored_codes(&db, rows_before).await;
        rows_before += codes.len() + 1;
        let expected = control_ids(&bytes);
        assert_eq!(
            codes.len(),
            expected.len(),
            "{name}: one stored row per message"
        );
        let (messages, headers) = match hl7bridge::ingest::v2::split_frame(&bytes) {
            Ok(frame) => {
                let headers = frame.messages.iter().map(|m| m.header().cloned()).collect();
                (frame.messages, headers)
            }
            Err(_) => (Vec::new(), vec![hl7bridge::ingest::v2::read_header(&bytes)]),
        };
        let sent: Vec<String> = acks.iter().map(|a| field(a, "MSA", 1)).collect();
        assert_eq!(
            sent,
            due_codes(&headers, &codes),
            "{name}: the ACKs MSH-15/16 ask for"
        );
        for ack in &acks {
            assert!(expected.contains(&field(ack, "MSA", 2)), "{name}: {ack:?}");
        }
        for (index, (code, control_id)) in codes.iter().zip(&expected).enumerate() {
            assert!(
                ["AA", "AE", "AR"].contains(&code.as_str()),
                "{name}: {code}"
            );
            let told = acks
                .iter()
                .find(|a| field(a, "MSA", 2) == *control_id && !a.contains("MSA|C"));
            let outcome = match (code.as_str(), told) {
                ("AA", _) => stored_types(&messages[index]),
                // The code and location, not ERR-8's text, which may quote the message.
                (_, Some(ack)) => format!("{} at {}", field(ack, "ERR", 3), field(ack, "ERR", 2)),
                (_, None) => "(no application ACK asked for)".to_string(),
            };
            let mode = match AckMode::of(headers.get(index).cloned().flatten().as_ref()) {
                AckMode::Original => String::new(),
                AckMode::Enhanced { .. } if sent.is_empty() => " (sent nothing)".to_string(),
                AckMode::Enhanced { .. } => format!(" (sent {})", sent.join("+")),
            };
            table.push(format!("{name} | {control_id} | {code}{mode} | {outcome}"));
        }
    }
    eprintln!(
        "file | MSH-10 | ACK | resources stored, or why not\n{}",
        table.join("\n")
    );
    // Every resource the accepted messages stored is valid R4, as fhirbolt's strict model
    // reads it.
    use sea_orm::{ConnectionTrait, Statement};
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT resource_type, id, content FROM resource",
        ))
        .await
        .unwrap();
    assert!(
        rows.len() > 100,
        "the accepted messages stored their resources"
    );
    for row in &rows {
        let (t, id, content): (String, String, String) = (
            row.try_get_by_index(0).unwrap(),
            row.try_get_by_index(1).unwrap(),
            row.try_get_by_index(2).unwrap(),
        );
        let resource: serde_json::Value = serde_json::from_str(&content).unwrap();
        if let Err(err) = hl7bridge_fhir_codec::canonicalize(resource) {
            panic!("{t}/{id} does not validate: {err}");
        }
    }
    eprintln!(
        "{} stored resources validate against the R4 model",
        rows.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn accepted_corpus_results_and_admissions_show_up_in_everything() {
    let Some(dir) = corpus_dir("hl7v2") else {
        return;
    };
    let app = spawn_app().await;
    let mut accepted = 0;
    for path in sorted_files(&dir, "hl7") {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.contains("ORU_R01") || name.contains("ADT_A0")) || name.contains("BATCH") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut stream = tokio::net::TcpStream::connect(app.mllp).await.unwrap();
        let acks = acks_for_file(&mut stream, &bytes).await;
        // A CA says stored, not accepted: a message asking for no application ACK is left out.
        if !acks.iter().any(|a| field(a, "MSA", 1) == "AA") {
            continue;
        }
        accepted += 1;
        let frame = hl7bridge::ingest::v2::split_frame(&bytes).unwrap();
        let message = frame.messages[0].parse().unwrap();
        let pid3 = message
            .segment("PID")
            .and_then(|pid| pid.field(3))
            .and_then(|f| f.component(1))
            .expect("an accepted message names its patient");
        let (_, found) = app
            .get_json(&format!("/Patient?identifier={}", urlencode(&pid3)))
            .await;
        assert!(
            found["total"].as_u64().unwrap_or(0) >= 1,
            "{name}: patient stored"
        );
        let id = found["entry"][0]["resource"]["id"].as_str().unwrap();
        let (status, bundle) = app.get_json(&format!("/Patient/{id}/$everything")).await;
        assert_eq!(status, 200, "{name}");
        assert!(bundle["total"].as_u64().unwrap() >= 1, "{name}");
    }
    assert!(
        accepted >= 10,
        "most well-formed ORU and ADT samples are accepted ({accepted})"
    );
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn counts_by_type(entries: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in entries {
        *counts.entry(t).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn synthea_bundles_load_and_everything_returns_each_bundles_resources() {
    let Some(dir) = corpus_dir("fhir") else {
        return;
    };
    let app = spawn_app().await;
    for prefix in ["synthea__hospital", "synthea__practitioner"] {
        for path in sorted_files(&dir, "json")
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        {
            let (status, response) = app.post_bundle(std::fs::read(&path).unwrap()).await;
            assert_eq!(status, 200, "{}: {response}", path.display());
            let failed = response["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| !e["response"]["status"].as_str().unwrap().starts_with('2'))
                .count();
            assert_eq!(failed, 0, "{}", path.display());
        }
    }
    let patients: Vec<_> = sorted_files(&dir, "json")
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("synthea__") && !n.contains("Information")
        })
        .collect();
    assert!(!patients.is_empty());
    for path in patients {
        let bytes = std::fs::read(&path).unwrap();
        let bundle: Value = serde_json::from_slice(&bytes).unwrap();
        let (status, response) = app.post_bundle(bytes).await;
        assert_eq!(status, 200, "{}: {response}", path.display());
        let patient_location = response["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["response"]["location"].as_str().unwrap_or(""))
            .find(|l| l.starts_with("Patient/"))
            .unwrap()
            .to_string();
        let id = patient_location.split('/').nth(1).unwrap();
        let (status, everything) = app.get_json(&format!("/Patient/{id}/$everything")).await;
        assert_eq!(status, 200);
        let expected = counts_by_type(
            bundle["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string()),
        );
        let returned = counts_by_type(
            everything["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string()),
        );
        assert_eq!(returned, expected, "{}", path.display());
        let included = everything["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "include")
            .count();
        assert!(
            included > 0,
            "practitioners and organizations come along once"
        );
    }
    app.stop().await;
}
