//! One trace from the lab analyser to the FHIR client, read back from the spans the real binary
//! exports over OTLP to an in-process receiver that decodes the protobuf requests: an ORU^R01
//! with a ZTR over MLLP, its change record on (mock) Kafka, and a `$everything` read.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::kafka::{broker, changed, header, read_until, CHANGES};
use crate::otlp_export::{fake_collector, start_binary};
use crate::support::read_frame;

/// The ZTR the fixture carries: the analyser's trace and span.
const LAB_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const LAB_SPAN: &str = "b7ad6b7169203331";
/// The FHIR client's trace.
const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// What the fixture says about its (invented) patient; no span may repeat it.
const PATIENT_DATA: &[&str] = &[
    "Quill",
    "Ada",
    "TST100234",
    "19800214",
    "1980-02-14",
    "Fictional Way",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute_text(span: &Span) -> Vec<String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            format!("{}={value}", kv.key)
        })
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_ztr_through_the_database_and_kafka_and_the_read_has_its_own() {
    let broker = broker(1);
    let brokers = broker.bootstrap_servers();
    let (endpoint, mut received) = fake_collector().await;
    let dir = std::env::temp_dir().join(format!("hl7bridge-journey-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = [
        ("HL7BRIDGE_KAFKA_BROKERS", brokers.as_str()),
        ("HL7BRIDGE_KAFKA_RDKAFKA_FETCH_WAIT_MAX_MS", "20"),
    ];
    let (mut child, http, mllp) =
        tokio::task::block_in_place(|| start_binary(&endpoint, &dir, &env));

    // The analyser's result, over MLLP.
    let message = include_str!("../fixtures/oru_r01_ztr.hl7")
        .trim_end()
        .replace("\r\n", "\r")
        .replace('\n', "\r");
    let mut stream = TcpStream::connect(&mllp).await.unwrap();
    stream
        .write_all(&hl7bridge_mllp::encode(message.as_bytes()))
        .await
        .unwrap();
    let ack = read_frame(&mut stream).await;
    assert!(ack.contains("|AA|") || ack.contains("MSA|AA"), "{ack}");

    // Its changes on Kafka continue the analyser's trace.
    let changes = read_until(&broker, CHANGES, |records| {
        records
            .iter()
            .any(|r| changed(r).starts_with("Observation/"))
    })
    .await;
    for record in &changes {
        assert_eq!(&header(record, "traceparent")[3..35], LAB_TRACE);
    }

    // A FHIR client reads everything under its own trace.
    let client = crate::support::http_client();
    let found: serde_json::Value = client
        .get(format!("http://{http}/Patient?identifier=TST100234"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patient = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let everything: serde_json::Value = client
        .get(format!("http://{http}/Patient/{patient}/$everything"))
        .header("traceparent", CLIENT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let carried = everything["meta"]["extension"][0]["extension"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        &carried[3..35],
        &CLIENT[3..35],
        "the Bundle carries the client's trace"
    );

    // SIGTERM flushes the batch exporter.
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
    let mut spans: Vec<Span> = Vec::new();
    while let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_millis(500), received.recv()).await
    {
        let export = ExportTraceServiceRequest::decode(request.body.as_slice())
            .expect("the body is an OTLP protobuf export request");
        for resource in export.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    assert!(!spans.is_empty(), "spans were exported");

    // The MLLP span is the child of the ZTR context.
    let message_spans = named(&spans, "process HL7v2 message");
    assert_eq!(message_spans.len(), 1, "one message span");
    let message_span = message_spans[0];
    assert_eq!(hex(&message_span.trace_id), LAB_TRACE);
    assert_eq!(hex(&message_span.parent_span_id), LAB_SPAN);
    // The database write and the outbox publication belong to the same trace.
    let in_lab_trace = |s: &&Span| hex(&s.trace_id) == LAB_TRACE;
    let writes: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("UPSERT"))
        .filter(in_lab_trace)
        .collect();
    assert!(
        !writes.is_empty(),
        "the write batch span is in the lab's trace"
    );
    assert!(writes
        .iter()
        .all(|w| w.parent_span_id == message_span.span_id));
    let sends: Vec<&Span> = named(&spans, "send fhir.changes");
    assert!(!sends.is_empty(), "a producer span per change");
    assert!(
        sends.iter().all(in_lab_trace),
        "the outbox relay continues the trace"
    );
    let send_ids: Vec<String> = sends.iter().map(|s| hex(&s.span_id)).collect();
    for record in &changes {
        let span_id = &header(record, "traceparent")[36..52];
        assert!(
            send_ids.iter().any(|id| id == span_id),
            "the record names its producer span"
        );
    }
    // The read: its own trace, and the Bundle names the HTTP span.
    let http_span = spans
        .iter()
        .find(|s| hex(&s.span_id) == carried[36..52])
        .expect("the Bundle's context is an exported span");
    assert_eq!(hex(&http_span.trace_id), &CLIENT[3..35]);
    assert_eq!(hex(&http_span.parent_span_id), &CLIENT[36..52]);
    // No patient data in any attribute of any span.
    for span in &spans {
        for attribute in attribute_text(span) {
            for secret in PATIENT_DATA {
                assert!(
                    !attribute.contains(secret),
                    "span {:?} carries patient data: {attribute}",
                    span.name
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Messages without a ZTR on one long-lived connection: each is a trace of its own, not the
/// connection's (a feed keeps its connection open for hours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_on_one_connection_is_its_own_trace() {
    let (endpoint, _received) = fake_collector().await;
    let dir = std::env::temp_dir().join(format!("hl7bridge-traces-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, _http, mllp) =
        tokio::task::block_in_place(|| start_binary(&endpoint, &dir, &[]));
    let message = include_str!("../fixtures/oru_r01_ztr.hl7")
        .trim_end()
        .replace("\r\n", "\r")
        .replace('\n', "\r");
    let mut stream = TcpStream::connect(&mllp).await.unwrap();
    // Messages without a ZTR on the same connection: each is a trace of its own, not the
    // connection's (a feed's connection stays open for hours).
    let mut traces = Vec::new();
    for control_id in ["LAB0001-B", "LAB0001-C"] {
        let untraced: Vec<&str> = message
            .split('\r')
            .filter(|segment| !segment.starts_with("ZTR"))
            .collect();
        let untraced = untraced
            .join("\r")
            .replace("|LAB0001|", &format!("|{control_id}|"));
        stream
            .write_all(&hl7bridge_mllp::encode(untraced.as_bytes()))
            .await
            .unwrap();
        let ack = read_frame(&mut stream).await;
        assert!(ack.contains("MSA|AA"), "{ack}");
        let ztr = ack
            .split('\r')
            .find(|s| s.starts_with("ZTR"))
            .expect("the ACK carries a ZTR");
        let trace = ztr.split('|').nth(1).unwrap()[3..35].to_string();
        assert_ne!(trace, LAB_TRACE);
        traces.push(trace);
    }
    assert_ne!(traces[0], traces[1], "one trace per message");
    let _ = child.kill();
    let _ = tokio::task::block_in_place(|| child.wait());
    let _ = std::fs::remove_dir_all(&dir);
}
