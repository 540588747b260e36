//! Records on Kafka (librdkafka's mock cluster, as in `kafka.rs`): each poison record must
//! become exactly one dead letter naming its source and why, and the consumer must go on to
//! store the valid records sent after all of them.

use std::collections::BTreeMap;
use std::time::Duration;

use hl7bridge::config::KafkaSettings;
use hl7bridge_kafka::testing::MockBroker;
use hl7bridge_kafka::Record;
use serde_json::json;

use super::Mismatch;
use crate::kafka::{fast, header, producer, Quiet, DEAD, FHIR, HL7};
use crate::support::TestApp;
use hl7bridge_kafka::Consumer;

struct Case {
    name: &'static str,
    topic: &'static str,
    payload: Vec<u8>,
    /// What the dead letter's `hl7bridge.error.code` starts with.
    code: &'static str,
}

fn fhir(name: &'static str, payload: impl Into<Vec<u8>>, code: &'static str) -> Case {
    Case {
        name,
        topic: FHIR,
        payload: payload.into(),
        code,
    }
}

fn hl7(name: &'static str, payload: impl Into<Vec<u8>>, code: &'static str) -> Case {
    Case {
        name,
        topic: HL7,
        payload: payload.into(),
        code,
    }
}

pub fn broker() -> MockBroker {
    crate::kafka::broker(1)
}

pub fn settings(brokers: &str) -> KafkaSettings {
    crate::kafka::settings(brokers)
}

const MSH: &str = "MSH|^~\\&|BADLAB|BADFAC|HL7BRIDGE|GENHOSP|20240630120030-0500||ORU^R01^ORU_R01";

fn oru(control_id: &str, pid: &str, obx_value: &str) -> String {
    format!(
        "{MSH}|{control_id}|P|2.5.1\rPID|1||{pid}^^^BADLAB^MR||Ostrander^Pia||19750505|F\r\
         OBR|1||K{control_id}^BADLAB|24331-1^Lipid panel^LN|||20240630101500-0500\r\
         OBX|1|NM|2093-3^Cholesterol^LN||{obx_value}|mg/dL^^UCUM|||||F\r"
    )
}

fn transaction(entries: serde_json::Value) -> String {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
}

fn cases() -> Vec<Case> {
    let post = |resource: serde_json::Value| json!({"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}});
    let good_patient = json!({"resourceType": "Patient", "gender": "female"});
    let bad_patient = json!({"resourceType": "Patient", "gender": 7});
    vec![
        fhir("an empty FHIR record", Vec::new(), "empty"),
        fhir("truncated JSON", r#"{"resourceType":"Patient","#, "json"),
        fhir(
            "invalid UTF-8",
            b"{\"resourceType\":\"Patient\",\"gender\":\"\xff\"}".to_vec(),
            "json",
        ),
        fhir(
            "arrays nested 10,000 deep",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            "json",
        ),
        fhir(
            "duplicate keys",
            r#"{"resourceType":"Patient","gender":"male","gender":"female"}"#,
            "json",
        ),
        fhir("a JSON array", "[]", "fhir:resourceType"),
        fhir("JSON null", "null", "fhir:resourceType"),
        fhir(
            "no resourceType",
            r#"{"gender":"male"}"#,
            "fhir:resourceType",
        ),
        fhir(
            "a collection Bundle",
            r#"{"resourceType":"Bundle","type":"collection"}"#,
            "fhir:bundle-type",
        ),
        fhir(
            "a Bundle without a type",
            r#"{"resourceType":"Bundle"}"#,
            "fhir:bundle-type",
        ),
        fhir(
            "an unknown resource type",
            r#"{"resourceType":"Foo"}"#,
            "fhir:400:invalid",
        ),
        fhir(
            "an unknown element",
            r#"{"resourceType":"Patient","favouriteColour":"blue"}"#,
            "fhir:400:invalid",
        ),
        fhir(
            "a wrongly typed value",
            bad_patient.to_string(),
            "fhir:400:invalid",
        ),
        fhir(
            "an empty array",
            r#"{"resourceType":"Patient","name":[]}"#,
            "fhir:400:invalid",
        ),
        fhir(
            "a null value",
            r#"{"resourceType":"Patient","gender":null}"#,
            "fhir:400:invalid",
        ),
        fhir(
            "an integer above 2^31-1",
            r#"{"resourceType":"Patient","multipleBirthInteger":2147483648}"#,
            "fhir:400:invalid",
        ),
        fhir(
            "a decimal of 900,000 digits (a million is past the broker's record limit)",
            format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{}}}}}"#,
                "9".repeat(900_000)
            ),
            "fhir:400:invalid",
        ),
        fhir(
            "an id that breaks the grammar",
            r#"{"resourceType":"Patient","id":"a b"}"#,
            "fhir:400:invalid",
        ),
        fhir(
            "a resource of 250,000 values",
            format!(
                r#"{{"resourceType":"Patient","foo":[{}1]}}"#,
                "1,".repeat(249_999)
            ),
            "fhir:400:invalid",
        ),
        fhir(
            "a transaction with one invalid entry",
            transaction(json!([
                post(good_patient.clone()),
                post(bad_patient.clone())
            ])),
            "fhir:400:invalid",
        ),
        fhir(
            "a transaction with a urn:uuid that names no entry",
            transaction(json!([post(
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-00000000cafe"}})
            )])),
            "fhir:400:invalid",
        ),
        fhir(
            "a transaction with a malformed reference",
            transaction(json!([post(
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/../x"}})
            )])),
            "fhir:400:invalid",
        ),
        fhir(
            "a transaction with a GET entry",
            transaction(json!([{"request": {"method": "GET", "url": "Patient"}}])),
            "fhir:405:not-supported",
        ),
        fhir(
            "a transaction with an entry of the wrong type for its URL",
            transaction(
                json!([{"resource": good_patient.clone(), "request": {"method": "POST", "url": "Observation"}}]),
            ),
            "fhir:400:invalid",
        ),
        fhir(
            "a batch with one invalid entry",
            json!({"resourceType": "Bundle", "type": "batch", "entry": [post(bad_patient)]})
                .to_string(),
            "fhir:batch:400",
        ),
        hl7("an empty HL7v2 record", Vec::new(), "empty"),
        hl7("text that is not HL7v2", "this is not HL7", "hl7:AR:"),
        hl7(
            "bytes that are not text",
            vec![0xff, 0xfe, 0x00, 0x81],
            "hl7:AR:",
        ),
        hl7(
            "an unknown message type",
            oru("KB1", "KBM1", "1").replace("ORU^R01^ORU_R01", "ZZZ^Z01"),
            "hl7:AR:200",
        ),
        hl7("a missing control id", oru("", "KBM2", "1"), "hl7:AR:101"),
        hl7(
            "an invalid birth date",
            oru("KB3", "KBM3", "1").replace("19750505", "19751350"),
            "hl7:AE:102",
        ),
        hl7(
            "text in a numeric result",
            oru("KB4", "KBM4", "high"),
            "hl7:AE:102",
        ),
        hl7(
            "an MLLP frame inside the record",
            hl7bridge_mllp::encode(oru("KB5", "KBM5", "1").as_bytes()),
            "hl7:AR:",
        ),
        hl7(
            "600,000 delimiters",
            format!("{}ZZZ{}\r", oru("KB6", "KBM6", "1"), "|".repeat(600_000)),
            "hl7:AR:",
        ),
        hl7(
            "a batch without BTS",
            format!("BHS|^~\\&|BADLAB\r{}", oru("KB7", "KBM7", "1")),
            "hl7:AR:",
        ),
    ]
}

pub fn case_count() -> usize {
    cases().len()
}

pub async fn run(app: &TestApp, broker: &MockBroker) -> Vec<Mismatch> {
    let producer = producer(broker);
    let cases = cases();
    let mut next_offset: BTreeMap<&str, i64> = BTreeMap::new();
    let mut by_source = BTreeMap::new();
    for case in &cases {
        producer
            .send(case.topic, Some(b"bad-input"), &case.payload, &[])
            .await
            .expect("the mock cluster takes the record");
        let offset = next_offset.entry(case.topic).or_insert(0);
        by_source.insert((case.topic, offset.to_string()), case);
        *offset += 1;
    }
    let good_patient = json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:bad-input", "value": "KAFKA-OK"}]});
    producer
        .send(FHIR, None, good_patient.to_string().as_bytes(), &[])
        .await
        .unwrap();
    producer
        .send(HL7, None, oru("KBOK", "KBMOK", "5").as_bytes(), &[])
        .await
        .unwrap();
    stored(app, "/Patient?identifier=urn:bad-input|KAFKA-OK").await;
    stored(app, "/Patient?identifier=KBMOK").await;

    let dead = dead_letters(broker, cases.len()).await;
    judge(&cases, &by_source, &dead)
}

fn judge(
    cases: &[Case],
    by_source: &BTreeMap<(&str, String), &Case>,
    dead: &[Record],
) -> Vec<Mismatch> {
    let mismatch = |case: &str, problem: String| Mismatch {
        door: "Kafka",
        case: case.to_string(),
        problem,
    };
    let mut mismatches = Vec::new();
    let mut letters: BTreeMap<&str, usize> = BTreeMap::new();
    for record in dead {
        let source = (
            header(record, "hl7bridge.source.topic"),
            header(record, "hl7bridge.source.offset").to_string(),
        );
        let Some(case) = by_source.get(&source) else {
            mismatches.push(mismatch("(none)", format!("a dead letter for {source:?}")));
            continue;
        };
        *letters.entry(case.name).or_default() += 1;
        let code = header(record, "hl7bridge.error.code");
        if !code.starts_with(case.code) {
            mismatches.push(mismatch(
                case.name,
                format!("code {code:?}, not {:?}", case.code),
            ));
        }
        if header(record, "hl7bridge.error").is_empty() || record.payload != case.payload {
            mismatches.push(mismatch(
                case.name,
                "no reason, or not the record's payload".into(),
            ));
        }
    }
    for case in cases {
        let count = letters.get(case.name).copied().unwrap_or(0);
        if count != 1 {
            mismatches.push(mismatch(
                case.name,
                format!("{count} dead letters, not one"),
            ));
        }
    }
    mismatches
}

/// The dead-letter topic from its start: read until `expected` records are there (or 30 s
/// pass), then a moment longer, so that a second dead letter of any record shows too.
async fn dead_letters(broker: &MockBroker, expected: usize) -> Vec<Record> {
    let group = format!("bad-input-{}", uuid::Uuid::new_v4());
    let config = fast(&broker.bootstrap_servers(), &group);
    let consumer = Consumer::new(&config, &[DEAD], std::sync::Arc::new(Quiet)).unwrap();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // `next_batch` waits for a first record without end: every wait is bounded here.
    let read_until = |until: tokio::time::Instant| {
        tokio::time::timeout_at(until, consumer.next_batch(100, Duration::from_millis(50)))
    };
    while records.len() < expected {
        match read_until(deadline).await {
            Ok(batch) => records.extend(batch),
            Err(_) => return records,
        }
    }
    let more_until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(batch) = read_until(more_until).await {
        records.extend(batch);
    }
    records
}

/// Waits until the search finds one resource.
async fn stored(app: &TestApp, query: &str) {
    for _ in 0..400 {
        let (status, bundle) = app.get_json(query).await;
        if status == 200 && bundle["total"] == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{query}: the record after the poison was not stored in time");
}
