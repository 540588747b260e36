//! HL7v2 over real MLLP connections, checked through the FHIR API.

use serde_json::Value;

use crate::support::{everything_for, field, resources_of, spawn_app};

const ORU: &[u8] = include_bytes!("../fixtures/oru_r01_ztr.hl7");
const ADT: &[u8] = include_bytes!("../fixtures/adt_a01.hl7");
const SENDER_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const SENDER_SPAN_ID: &str = "b7ad6b7169203331";

#[tokio::test]
async fn an_oru_with_a_ztr_is_acknowledged_aa_continuing_its_trace() {
    let app = spawn_app().await;
    let acks = app.mllp_exchange(&[ORU]).await;
    let ack = &acks[0];
    assert_eq!(field(ack, "MSA", 1), "AA", "{ack:?}");
    assert_eq!(field(ack, "MSA", 2), "LAB0001");
    assert_eq!(
        field(ack, "MSH", 3),
        "HL7BRIDGE",
        "sender and receiver are swapped"
    );
    assert_eq!(field(ack, "MSH", 5), "LABSYS");
    assert_eq!(field(ack, "MSH", 9), "ACK^R01^ACK");
    assert_eq!(field(ack, "MSH", 12), "2.5.1");
    let ztr = field(ack, "ZTR", 1);
    let traceparent = ztr
        .strip_prefix("traceparent^")
        .expect("the ACK carries a traceparent");
    assert_eq!(
        &traceparent[3..35],
        SENDER_TRACE_ID,
        "the sender's trace continues"
    );
    assert_ne!(
        &traceparent[36..52],
        SENDER_SPAN_ID,
        "under the server's own span"
    );
    assert!(
        ack.trim_end_matches('\r').ends_with(&format!("ZTR|{ztr}")),
        "ZTR is last"
    );
    app.stop().await;
}

#[tokio::test]
async fn everything_shows_the_observations_with_the_trace_of_the_http_request() {
    let app = spawn_app().await;
    app.mllp_exchange(&[ORU]).await;
    let (_, found) = app.get_json("/Patient?identifier=TST100234").await;
    let id = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let caller = "00-11112222333344445555666677778888-1234567890abcdef-01";
    let response = app
        .client
        .get(format!("{}/Patient/{id}/$everything", app.base))
        .header("traceparent", caller)
        .send()
        .await
        .unwrap();
    let bundle: Value = response.json().await.unwrap();
    let observations = resources_of(&bundle, "Observation");
    assert_eq!(observations.len(), 5);
    let cholesterol = observations
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == "2093-3")
        .unwrap();
    assert_eq!(cholesterol["valueQuantity"]["value"].to_string(), "72.40");
    assert_eq!(resources_of(&bundle, "DiagnosticReport").len(), 1);
    assert_eq!(resources_of(&bundle, "Encounter").len(), 1);
    let traceparent = bundle["meta"]["extension"][0]["extension"][0]["valueString"]
        .as_str()
        .unwrap();
    assert_eq!(&traceparent[3..35], "11112222333344445555666677778888");
    app.stop().await;
}

#[tokio::test]
async fn a_resent_message_updates_the_same_resources_instead_of_duplicating() {
    let app = spawn_app().await;
    let acks = app.mllp_exchange(&[ORU, ORU]).await;
    assert_eq!(field(&acks[1], "MSA", 1), "AA");
    assert_eq!(
        acks[1], acks[0],
        "an identical resend gets the stored ACK back"
    );
    let bundle = everything_for(&app, "TST100234").await;
    assert_eq!(resources_of(&bundle, "Observation").len(), 5);
    let patient = &resources_of(&bundle, "Patient")[0];
    assert_eq!(
        patient["meta"]["versionId"], "1",
        "an unchanged resource keeps its version"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_adt_a01_stores_the_patient_and_the_encounter() {
    let app = spawn_app().await;
    let acks = app.mllp_exchange(&[ADT]).await;
    assert_eq!(field(&acks[0], "MSA", 1), "AA", "{:?}", acks[0]);
    assert_eq!(field(&acks[0], "MSH", 9), "ACK^A01^ACK");
    let bundle = everything_for(&app, "TST200777").await;
    assert_eq!(resources_of(&bundle, "Encounter").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_frame_without_msh_gets_ar_with_an_empty_msa2_and_the_connection_stays_open() {
    let app = spawn_app().await;
    let acks = app.mllp_exchange(&[b"PID|1||X\r", ADT]).await;
    assert_eq!(field(&acks[0], "MSA", 1), "AR");
    assert_eq!(field(&acks[0], "MSA", 2), "");
    assert!(acks[0].contains("\rERR|"), "{:?}", acks[0]);
    assert_eq!(
        field(&acks[1], "MSA", 1),
        "AA",
        "the next message on the connection is served"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unsupported_message_type_gets_ar_200() {
    let app = spawn_app().await;
    let mfn = b"MSH|^~\\&|A|B|C|D|20240101000000||MFN^M02|MFN1|P|2.5\rMFI|PRA\r";
    let acks = app.mllp_exchange(&[mfn]).await;
    assert_eq!(field(&acks[0], "MSA", 1), "AR");
    assert_eq!(field(&acks[0], "MSA", 2), "MFN1");
    assert!(
        field(&acks[0], "ERR", 3).starts_with("200"),
        "{:?}",
        acks[0]
    );
    app.stop().await;
}

#[tokio::test]
async fn an_obx_value_without_a_type_gets_ae_naming_obx2() {
    let app = spawn_app().await;
    let oru = b"MSH|^~\\&|A|B|C|D|20240101000000||ORU^R01|NOTYPE1|P|2.5.1\r\
PID|1||TST300001^^^NORTHLAB^MR\r\
OBR|1||FIL9^NORTHLAB|58410-2^CBC^LN\r\
OBX|1||WBC^White cells||6.1|10*3/uL|||||F\r";
    let acks = app.mllp_exchange(&[oru]).await;
    assert_eq!(field(&acks[0], "MSA", 1), "AE", "{:?}", acks[0]);
    assert_eq!(field(&acks[0], "ERR", 2), "OBX^1^2");
    app.stop().await;
}

#[tokio::test]
async fn a_corrected_message_under_the_same_control_id_is_processed_again() {
    let app = spawn_app().await;
    let corrected = String::from_utf8(ORU.to_vec())
        .unwrap()
        .replace("||072.40|", "||073.10|");
    let acks = app.mllp_exchange(&[ORU, corrected.as_bytes()]).await;
    assert_eq!(field(&acks[1], "MSA", 1), "AA");
    assert_ne!(
        field(&acks[1], "MSH", 10),
        field(&acks[0], "MSH", 10),
        "a new ACK"
    );
    let bundle = everything_for(&app, "TST100234").await;
    let observations = resources_of(&bundle, "Observation");
    let cholesterol = observations
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == "2093-3")
        .unwrap();
    assert_eq!(cholesterol["valueQuantity"]["value"].to_string(), "73.10");
    assert_eq!(cholesterol["meta"]["versionId"], "2");
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_messages_and_requests_without_patient_data() {
    let app = spawn_app().await;
    app.mllp_exchange(&[ORU]).await;
    app.get_json("/Patient?identifier=TST100234").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let oru = "hl7bridge_hl7v2_messages_total{message_code=\"ORU\",trigger_event=\"R01\",ack_code=\"AA\"}";
    let count: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(oru))
        .expect(oru)
        .trim()
        .parse()
        .unwrap();
    assert!(count >= 1);
    assert!(text.contains(
        "hl7bridge_http_requests_total{route=\"/{type}\",method=\"GET\",status=\"2xx\"}"
    ));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("name and value");
        assert!(name.starts_with("hl7bridge_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    for patient_data in ["Quill", "TST100234", "19800214"] {
        assert!(!text.contains(patient_data), "{patient_data} in metrics");
    }
    app.stop().await;
}
