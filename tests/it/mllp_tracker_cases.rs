//! The cases issue 4 lists from other engines' trackers, each through the real server: frames
//! over a real MLLP connection, the result read back over the FHIR API. Invented data only.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::support::{everything_for, field, read_frame, resources_of, spawn_app, TestApp};

const MSH: &str =
    "MSH|^~\\&|TRACKLAB|TRACKFAC|HL7BRIDGE|GENHOSP|20240630120030-0500||ORU^R01^ORU_R01";

/// An ORU^R01 for invented patient `mrn`, control id `control`, with `results` (segments after
/// OBR, CR-separated) and segments ended by `end`.
fn oru(mrn: &str, control: &str, results: &[&str], end: &str) -> Vec<u8> {
    let mut segments = vec![
        format!("{MSH}|{control}|P|2.5.1"),
        format!("PID|1||{mrn}^^^TRACKFAC^MR||Tracker^Testa||19750301|F"),
        format!("OBR|1||F-{control}^TRACKFAC|24331-1^Lipid panel^LN|||20240630101500-0500"),
    ];
    segments.extend(results.iter().map(|s| s.to_string()));
    let mut text = segments.join(end);
    text.push_str(end);
    text.into_bytes()
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x0b];
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    frame
}

async fn observations(app: &TestApp, mrn: &str) -> Vec<Value> {
    resources_of(&everything_for(app, mrn).await, "Observation")
        .into_iter()
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_nte_with_escaped_backslashes_reads_back_as_the_path_it_names() {
    let app = spawn_app().await;
    let message = oru(
        "TRK001",
        "T1",
        &[
            "OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL|||||F",
            "NTE|1|L|path C:\\E\\TEMP\\E\\R\\",
        ],
        "\r",
    );
    app.send_accepted(&message).await;
    let found = observations(&app, "TRK001").await;
    assert_eq!(found[0]["note"][0]["text"], "path C:\\TEMP\\R\\");
    app.stop().await;
}

#[tokio::test]
async fn lf_and_crlf_line_ends_parse_as_the_same_message() {
    let results = ["OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL|||||F"];
    let mut stored = Vec::new();
    for end in ["\n", "\r\n"] {
        let app = spawn_app().await;
        app.send_accepted(&oru("TRK002", "T2", &results, end)).await;
        let mut all: Vec<Value> = everything_for(&app, "TRK002").await["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let mut r = e["resource"].clone();
                r.as_object_mut().unwrap().remove("meta");
                r
            })
            .filter(|r| r["resourceType"] != "Provenance")
            .collect();
        all.sort_by_key(|r| format!("{}/{}", r["resourceType"], r["id"]));
        stored.push(all);
        app.stop().await;
    }
    assert!(stored[0].len() >= 3, "patient, report, observation");
    assert_eq!(
        stored[0], stored[1],
        "the same resources from either line end"
    );
}

#[tokio::test]
async fn a_value_without_a_type_is_ae_naming_obx_2() {
    let app = spawn_app().await;
    let message = oru(
        "TRK003",
        "T3",
        &["OBX|1||WBC^White cells||6.1|10*3/uL|||||F"],
        "\r",
    );
    let ack = app.mllp_exchange(&[&message]).await.remove(0);
    assert_eq!(field(&ack, "MSA", 1), "AE", "{ack:?}");
    assert_eq!(field(&ack, "ERR", 2), "OBX^1^2", "{ack:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_one_segment_message_ending_in_cr_gets_a_normal_ack() {
    let app = spawn_app().await;
    let message = format!("{MSH}|T4|P|2.5.1\r");
    let ack = app.mllp_exchange(&[message.as_bytes()]).await.remove(0);
    assert_eq!(field(&ack, "MSA", 2), "T4", "{ack:?}");
    assert_eq!(field(&ack, "MSH", 9), "ACK^R01^ACK");
    assert!(["AA", "AE", "AR"].contains(&field(&ack, "MSA", 1).as_str()));
    app.stop().await;
}

#[tokio::test]
async fn a_v251_oul_r22_is_answered_ack_r22_ack() {
    let app = spawn_app().await;
    let oul = include_bytes!("../fixtures/oul_r22.hl7");
    let ack = app.mllp_exchange(&[oul]).await.remove(0);
    assert_eq!(field(&ack, "MSH", 9), "ACK^R22^ACK", "{ack:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_stray_lf_after_a_trailer_and_a_final_cr_in_its_own_read_are_both_fine() {
    let app = spawn_app().await;
    let results = ["OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL|||||F"];
    let mut stream = tokio::net::TcpStream::connect(app.mllp).await.unwrap();
    // A frame, then a stray LF before the next frame.
    let mut bytes = framed(&oru("TRK006", "T6A", &results, "\r"));
    bytes.push(b'\n');
    bytes.extend(framed(&oru("TRK006", "T6B", &results, "\r")));
    stream.write_all(&bytes).await.unwrap();
    assert_eq!(field(&read_frame(&mut stream).await, "MSA", 2), "T6A");
    assert_eq!(field(&read_frame(&mut stream).await, "MSA", 2), "T6B");
    // A frame whose final CR comes in a read of its own.
    let frame = framed(&oru("TRK006", "T6C", &results, "\r"));
    let (body, last) = frame.split_at(frame.len() - 1);
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(last).await.unwrap();
    let ack = read_frame(&mut stream).await;
    assert_eq!(
        (field(&ack, "MSA", 1), field(&ack, "MSA", 2)),
        ("AA".into(), "T6C".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn five_delimiters_keep_every_field_in_its_place() {
    let app = spawn_app().await;
    let message = String::from_utf8(oru(
        "TRK007",
        "T7",
        &["OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL|||||F"],
        "\r",
    ))
    .unwrap()
    .replacen("MSH|^~\\&|", "MSH|^~\\&#|", 1);
    let ack = app.send_accepted(message.as_bytes()).await;
    assert!(
        ack.starts_with("MSH|^~\\&#|HL7BRIDGE|GENHOSP|TRACKLAB|TRACKFAC|"),
        "{ack:?}"
    );
    assert_eq!(field(&ack, "MSA", 2), "T7");
    let bundle = everything_for(&app, "TRK007").await;
    let patient = resources_of(&bundle, "Patient")[0];
    assert_eq!(patient["name"][0]["family"], "Tracker");
    assert_eq!(patient["birthDate"], "1975-03-01");
    app.stop().await;
}

/// An ED result is the report's own document: it goes to `DiagnosticReport.presentedForm`
/// (see `map/mod.rs`), whole.
#[tokio::test]
async fn five_megabytes_of_base64_in_an_ed_obx_are_accepted_and_stored() {
    let app = spawn_app().await;
    let data = "QUJD".repeat(5 * 1024 * 1024 / 4);
    let obx = format!("OBX|1|ED|PDF^Report^L||^AP^PDF^Base64^{data}||||||F");
    app.send_accepted(&oru("TRK008", "T8", &[&obx], "\r")).await;
    let bundle = everything_for(&app, "TRK008").await;
    let report = resources_of(&bundle, "DiagnosticReport")[0];
    let form = &report["presentedForm"][0];
    assert_eq!(form["contentType"], "application/pdf");
    assert_eq!(form["data"].as_str().map(str::len), Some(data.len()));
    assert!(
        form["data"].as_str() == Some(data.as_str()),
        "stored byte for byte"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_hex_escaped_crlf_decodes_to_two_lines() {
    let app = spawn_app().await;
    let obx = "OBX|1|TX|8251-1^Comment^LN||first line\\X0D0A\\second line||||||F";
    app.send_accepted(&oru("TRK009", "T9", &[obx], "\r")).await;
    let found = observations(&app, "TRK009").await;
    let text = found[0]["valueString"].as_str().unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["first line", "second line"]
    );
    app.stop().await;
}

#[tokio::test]
async fn fractional_seconds_and_an_offset_are_kept_as_sent() {
    let app = spawn_app().await;
    let obx = "OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL|||||F|||20240630120030.1234-0500";
    app.send_accepted(&oru("TRK010", "T10", &[obx], "\r")).await;
    let found = observations(&app, "TRK010").await;
    assert_eq!(
        found[0]["effectiveDateTime"],
        "2024-06-30T12:00:30.1234-05:00"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_obx_after_spm_yields_its_observation() {
    let app = spawn_app().await;
    let results = [
        "SPM|1|SP-11^TRACKFAC||119297000^Blood specimen^SCT|||||||||||||20240630101500-0500",
        "OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL|||||F",
    ];
    app.send_accepted(&oru("TRK011", "T11", &results, "\r"))
        .await;
    assert_eq!(observations(&app, "TRK011").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_numeric_value_with_leading_and_trailing_zeros_is_72_40() {
    let app = spawn_app().await;
    let obx = "OBX|1|NM|2093-3^Cholesterol^LN||072.40|nmol/L|||||F";
    app.send_accepted(&oru("TRK012", "T12", &[obx], "\r")).await;
    let id = observations(&app, "TRK012").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The text as served, so the trailing zero is seen as written.
    let text = app
        .get(&format!("/Observation/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"value\":72.40"), "{text}");
    app.stop().await;
}
