//! The public sample corpus in ../shared/corpus, run through the real server. Skipped (with a
//! note) where the corpus is absent; required under CI.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::{corpus_dir, field, spawn_app};

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

#[tokio::test]
async fn every_corpus_hl7v2_file_gets_framed_acks_matching_its_control_ids() {
    let Some(dir) = corpus_dir("hl7v2") else {
        return;
    };
    let app = spawn_app().await;
    let mut table = Vec::new();
    for path in sorted_files(&dir, "hl7") {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let answer = app.mllp_exchange(&[&bytes]).await.remove(0);
        let acks = acks_in(&answer);
        let expected = control_ids(&bytes);
        assert_eq!(
            acks.len(),
            expected.len(),
            "{name}: one ACK per message: {answer:?}"
        );
        let messages = hl7bridge::ingest::v2::split_frame(&bytes)
            .map(|f| f.messages)
            .unwrap_or_default();
        for (index, (ack, control_id)) in acks.iter().zip(&expected).enumerate() {
            assert_eq!(field(ack, "MSA", 2), *control_id, "{name}");
            let code = field(ack, "MSA", 1);
            assert!(
                ["AA", "AE", "AR"].contains(&code.as_str()),
                "{name}: {code}"
            );
            let outcome = if code == "AA" {
                stored_types(&messages[index])
            } else {
                // The code and location, not ERR-8's text, which may quote the message.
                format!("{} at {}", field(ack, "ERR", 3), field(ack, "ERR", 2))
            };
            table.push(format!("{name} | {control_id} | {code} | {outcome}"));
        }
    }
    eprintln!(
        "file | MSH-10 | ACK | resources stored, or why not\n{}",
        table.join("\n")
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
        let answer = app.mllp_exchange(&[&bytes]).await.remove(0);
        if field(&answer, "MSA", 1) != "AA" {
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
            found["total"].as_u64().unwrap() >= 1,
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
