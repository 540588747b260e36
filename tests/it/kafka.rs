//! The Kafka adapter against librdkafka's mock cluster (a real Kafka-protocol broker on a
//! loopback port, inside the test process): records in through the real pipelines, offsets
//! committed after the data, dead letters, the change feed through an outage, rebalances, and a
//! process killed between the database commit and the offset commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hl7bridge::config::{Config, KafkaSettings};
use hl7bridge_kafka::testing::MockBroker;
use hl7bridge_kafka::{
    committed_offsets, Consumer, ConsumerObserver, KafkaConfig, Producer, Record,
};
use serde_json::{json, Value};

use crate::support::{spawn_app_on, spawn_app_with, Running, TestApp};

pub(crate) const HL7: &str = "hl7v2.inbound";
pub(crate) const FHIR: &str = "fhir.inbound";
pub(crate) const CHANGES: &str = "fhir.changes";
pub(crate) const DEAD: &str = "hl7bridge.dead-letter";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub(crate) fn broker(partitions: i32) -> MockBroker {
    let broker = MockBroker::new(1).expect("the mock cluster starts");
    for topic in [HL7, FHIR, CHANGES, DEAD] {
        broker.create_topic(topic, partitions).unwrap();
    }
    broker
}

/// Client settings that make a test wait milliseconds, not seconds, for librdkafka's timers.
pub(crate) fn fast(brokers: &str, group: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_string(),
        group_id: group.to_string(),
        options: BTreeMap::from(
            [
                ("fetch.wait.max.ms", "20"),
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "300"),
                ("topic.metadata.refresh.interval.ms", "500"),
                ("reconnect.backoff.max.ms", "200"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        ),
        ..KafkaConfig::default()
    }
}

pub(crate) fn settings(brokers: &str) -> KafkaSettings {
    let mut settings = KafkaSettings::new(brokers.to_string());
    settings.client = fast(brokers, "hl7bridge");
    settings.batch_wait_ms = 20;
    settings.delivery_timeout_ms = 1_500;
    settings
}

async fn app_with_kafka(broker: &MockBroker) -> TestApp {
    let brokers = broker.bootstrap_servers();
    spawn_app_with(|config: &mut Config| config.kafka = Some(settings(&brokers))).await
}

pub(crate) fn producer(broker: &MockBroker) -> Producer {
    Producer::new(
        &fast(&broker.bootstrap_servers(), "-"),
        Duration::from_secs(10),
    )
    .unwrap()
}

pub(crate) struct Quiet;
impl ConsumerObserver for Quiet {
    fn lag(&self, _: &str, _: i32, _: i64) {}
}

/// Reads `topic` from the start with a fresh group until `done` holds for what was read.
pub(crate) async fn read_until(
    broker: &MockBroker,
    topic: &str,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let group = format!("reader-{}", uuid::Uuid::new_v4());
    let config = fast(&broker.bootstrap_servers(), &group);
    let consumer = Consumer::new(&config, &[topic], Arc::new(Quiet)).unwrap();
    let mut records = Vec::new();
    let read = async {
        while !done(&records) {
            records.extend(consumer.next_batch(100, Duration::from_millis(50)).await);
        }
    };
    if tokio::time::timeout(Duration::from_secs(40), read)
        .await
        .is_err()
    {
        panic!("{topic}: the expected records did not arrive; read {records:?}");
    }
    records
}

fn oru(control_id: &str, mrn: &str) -> Vec<u8> {
    let text = include_str!("../fixtures/oru_r01_ztr.hl7")
        .replace("LAB0001", control_id)
        .replace("TST100234", mrn);
    text.trim_end()
        .replace("\r\n", "\r")
        .replace('\n', "\r")
        .into_bytes()
}

fn patient(mrn: &str) -> Vec<u8> {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": mrn}],
        "name": [{"family": "Testperson", "given": ["Kaf"]}],
    })
    .to_string()
    .into_bytes()
}

async fn wait_for_ids(app: &TestApp, query: &str, expected: usize) -> Vec<String> {
    for _ in 0..400 {
        let (status, bundle) = app.get_json(query).await;
        assert_eq!(status, 200, "{bundle}");
        let ids: Vec<String> = entries(&bundle)
            .iter()
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
            .collect();
        if ids.len() >= expected {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{query}: fewer than {expected} results in time");
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn header<'a>(record: &'a Record, name: &str) -> &'a str {
    record
        .header_text(name)
        .unwrap_or_else(|| panic!("no {name} header on {record:?}"))
}

pub(crate) fn change_bundle(record: &Record) -> Value {
    serde_json::from_slice(&record.payload).expect("a change record is JSON")
}

/// The resource (`Type/id`) a change record is about.
pub(crate) fn changed(record: &Record) -> String {
    let bundle = change_bundle(record);
    bundle["entry"][0]["request"]["url"]
        .as_str()
        .map(|url| match bundle["entry"][0]["resource"]["id"].as_str() {
            Some(id) if !url.contains('/') => format!("{url}/{id}"),
            _ => url.to_string(),
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_both_topics_are_stored_and_every_change_is_published_with_its_trace() {
    let broker = broker(1);
    let app = app_with_kafka(&broker).await;
    let producer = producer(&broker);
    producer
        .send(
            HL7,
            None,
            &oru("KAF0001", "KAF100"),
            &[("traceparent", TRACEPARENT.as_bytes())],
        )
        .await
        .unwrap();
    producer
        .send(FHIR, None, &patient("KAF200"), &[])
        .await
        .unwrap();

    let hl7_patient = wait_for_ids(&app, "/Patient?identifier=KAF100", 1).await;
    wait_for_ids(&app, "/Patient?identifier=urn:test:mrn|KAF200", 1).await;
    let (_, everything) = app
        .get_json(&format!("/Patient/{}/$everything", hl7_patient[0]))
        .await;
    let stored: BTreeSet<String> = entries(&everything)
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();

    // Every resource the HL7v2 record produced is on the change feed, keyed by its patient,
    // carrying the trace the record's header started.
    let changes = read_until(&broker, CHANGES, |records| {
        let seen: BTreeSet<String> = records.iter().map(changed).collect();
        stored.is_subset(&seen)
            && records
                .iter()
                .any(|r| changed(r).starts_with("Patient/") && !stored.contains(&changed(r)))
    })
    .await;
    for record in changes.iter().filter(|r| stored.contains(&changed(r))) {
        let key = format!("Patient/{}", hl7_patient[0]);
        assert_eq!(
            record.key.as_deref(),
            Some(key.as_bytes()),
            "{}",
            changed(record)
        );
        let traceparent = header(record, "traceparent");
        assert_eq!(
            &traceparent[3..35],
            &TRACEPARENT[3..35],
            "the trace continues"
        );
        let bundle = change_bundle(record);
        assert_eq!(bundle["type"], "history");
        let extension = &bundle["meta"]["extension"][0];
        assert!(extension["url"]
            .as_str()
            .unwrap()
            .ends_with("/StructureDefinition/w3c-trace-context"));
        assert_eq!(
            extension["extension"][0]["valueString"], traceparent,
            "meta and header agree"
        );
        assert_eq!(bundle["entry"][0]["response"]["status"], "201 Created");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_with_their_source_and_the_partition_moves_on() {
    let broker = broker(1);
    let app = app_with_kafka(&broker).await;
    let producer = producer(&broker);
    let poison: [(&str, &[u8]); 5] = [
        (FHIR, b"{\"resourceType\": \"Patient\", broken"),
        (FHIR, br#"{"resourceType":"Bundle","type":"collection"}"#),
        (
            FHIR,
            br#"{"resourceType":"Patient","birthDate":"not a date at all","gender":7}"#,
        ),
        (HL7, b"this is not HL7"),
        (
            HL7,
            b"MSH|^~\\&|LAB|FAC|HL7BRIDGE|HOSP|20240101||ZZZ^Z99|BAD0001|P|2.5.1\rPID|1||X1",
        ),
    ];
    for (topic, payload) in poison {
        producer
            .send(
                topic,
                Some(b"k"),
                payload,
                &[("traceparent", TRACEPARENT.as_bytes())],
            )
            .await
            .unwrap();
    }
    // Good records after the poison on the same partitions are still processed.
    producer
        .send(FHIR, None, &patient("KAF300"), &[])
        .await
        .unwrap();
    producer
        .send(HL7, None, &oru("KAF0301", "KAF301"), &[])
        .await
        .unwrap();
    wait_for_ids(&app, "/Patient?identifier=urn:test:mrn|KAF300", 1).await;
    wait_for_ids(&app, "/Patient?identifier=KAF301", 1).await;

    let dead = read_until(&broker, DEAD, |records| records.len() >= poison.len()).await;
    assert_eq!(
        dead.len(),
        poison.len(),
        "one dead letter per poison record"
    );
    let mut sources = BTreeSet::new();
    for record in &dead {
        let (topic, payload) = poison
            .iter()
            .find(|(_, p)| *p == record.payload.as_slice())
            .expect("the payload is dead-lettered unchanged");
        assert_eq!(header(record, "hl7bridge.source.topic"), *topic);
        assert_eq!(header(record, "hl7bridge.source.partition"), "0");
        sources.insert((
            topic.to_string(),
            header(record, "hl7bridge.source.offset").to_string(),
        ));
        assert!(!header(record, "hl7bridge.error").is_empty());
        assert!(!header(record, "hl7bridge.error.code").is_empty());
        assert_eq!(
            header(record, "traceparent"),
            TRACEPARENT,
            "the record's own headers are kept"
        );
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        if *topic == HL7 {
            assert!(
                header(record, "hl7bridge.ack").starts_with("MSH"),
                "{payload:?}"
            );
            assert!(header(record, "hl7bridge.error.code").starts_with("hl7:AR:"));
        }
    }
    assert_eq!(sources.len(), poison.len(), "each names its own offset");

    // Everything, poison included, is committed: nothing will be consumed again.
    let config = fast(&broker.bootstrap_servers(), "hl7bridge");
    for (topic, end) in [(FHIR, 4), (HL7, 3)] {
        let mut committed = None;
        for _ in 0..100 {
            committed = committed_offsets(&config, topic, 1, Duration::from_secs(5)).unwrap()[0];
            if committed == Some(end) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(committed, Some(end), "{topic} committed to its end");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_delays_the_change_feed_and_loses_nothing() {
    let broker = broker(1);
    let app = app_with_kafka(&broker).await;
    broker.broker_down(1).unwrap();
    // Writes do not depend on the broker.
    let mut ids = Vec::new();
    for n in 0..5 {
        let response = app
            .client
            .post(format!("{}/Patient", app.base))
            .header("content-type", "application/fhir+json")
            .body(patient(&format!("OUT{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        ids.push(format!("Patient/{}", body["id"].as_str().unwrap()));
    }
    // Deliveries fail after the producer's delivery timeout; the relay measures the outbox
    // and retries.
    let mut depth = 0.0;
    for _ in 0..100 {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        depth = metrics
            .lines()
            .find_map(|l| l.strip_prefix("hl7bridge_outbox_depth "))
            .map_or(0.0, |v| v.parse().unwrap());
        if depth >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(depth >= 5.0, "the changes wait in the outbox: {depth}");
    broker.broker_up(1).unwrap();
    let changes = read_until(&broker, CHANGES, |records| {
        let seen: BTreeSet<String> = records.iter().map(changed).collect();
        ids.iter().all(|id| seen.contains(id))
    })
    .await;
    // Each change keyed by its own patient.
    for record in &changes {
        let id = changed(record);
        assert_eq!(record.key.as_deref(), Some(id.as_bytes()));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_nodes_neither_loses_nor_duplicates_a_record() {
    let broker = broker(2);
    let brokers = broker.bootstrap_servers();
    // The test owns the database: it outlives the first node.
    let (database_url, _database) = crate::support::fresh_database().await;
    let node = || {
        spawn_app_on(&database_url, |config: &mut Config| {
            config.kafka = Some(settings(&brokers))
        })
    };
    let first = node().await;
    let producer = producer(&broker);
    let send = |range: std::ops::Range<usize>| {
        let producer = producer.clone();
        async move {
            for n in range {
                // Creates without ids: applying one twice would make a second resource.
                let key = format!("k{n}");
                producer
                    .send(FHIR, Some(key.as_bytes()), &patient(&format!("RB{n}")), &[])
                    .await
                    .unwrap();
            }
        }
    };
    send(0..20).await;
    wait_for_ids(&first, "/Patient?identifier=urn:test:mrn|RB19", 1).await;
    let second = node().await;
    send(20..40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.stop().await;
    send(40..50).await;
    for n in 0..50 {
        let query = format!("/Patient?identifier=urn:test:mrn|RB{n}");
        let ids = wait_for_ids(&second, &query, 1).await;
        assert_eq!(ids.len(), 1, "RB{n} stored exactly once");
    }
    let config = fast(&brokers, "hl7bridge");
    let mut committed = 0;
    for _ in 0..100 {
        let offsets = committed_offsets(&config, FHIR, 2, Duration::from_secs(5)).unwrap();
        committed = offsets.iter().flatten().sum::<i64>();
        if committed == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(committed, 50, "the group committed every record");
    // On PostgreSQL the nodes take turns relaying the shared outbox (an advisory lock), so
    // each change is published once; SQLite is a single-node store and has no such lock.
    if database_url.starts_with("postgres") {
        read_until(&broker, CHANGES, |records| records.len() >= 50).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let changes = read_until(&broker, CHANGES, |records| records.len() >= 50).await;
        let ids: BTreeSet<String> = changes
            .iter()
            .map(|r| change_bundle(r)["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(changes.len(), 50, "each change published once");
        assert_eq!(ids.len(), 50);
    }
    second.stop().await;
}

/// The server binary, killed (SIGABRT from inside, at exactly the worst moment) after its first
/// batch is committed to the database and before its offsets are committed to Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_database_commit_and_the_offset_commit_stores_each_record_once() {
    let broker = broker(1);
    let producer = producer(&broker);
    for n in 0..10 {
        producer
            .send(FHIR, None, &patient(&format!("CR{n}")), &[])
            .await
            .unwrap();
    }
    let (database_url, _database) = crate::support::fresh_database().await;
    let run = |abort: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hl7bridge"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("HL7BRIDGE_HTTP_ADDR", "127.0.0.1:0")
            .env("HL7BRIDGE_MLLP_ADDR", "127.0.0.1:0")
            .env("HL7BRIDGE_DATABASE_URL", &database_url)
            .env("HL7BRIDGE_KAFKA_BROKERS", broker.bootstrap_servers())
            .env("HL7BRIDGE_KAFKA_BATCH_WAIT_MS", "200")
            .env("HL7BRIDGE_KAFKA_RDKAFKA_FETCH_WAIT_MAX_MS", "20")
            // The killed member holds its partitions until its session times out.
            .env("HL7BRIDGE_KAFKA_RDKAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("HL7BRIDGE_KAFKA_RDKAFKA_HEARTBEAT_INTERVAL_MS", "500")
            .stdout(std::process::Stdio::null());
        if abort {
            command.env("HL7BRIDGE_KAFKA_TEST_ABORT_AFTER_STORED_BATCHES", "1");
        }
        Running(command.spawn().expect("the server binary starts"))
    };
    let mut crashed = run(true);
    let status = tokio::task::spawn_blocking(move || crashed.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the server aborted");
    let config = fast(&broker.bootstrap_servers(), "hl7bridge");
    let committed = committed_offsets(&config, FHIR, 1, Duration::from_secs(5)).unwrap();
    assert_eq!(
        committed,
        vec![None],
        "no offset was committed before the crash"
    );

    // Restarted, it consumes the same records again; each is stored once, and every change
    // (from before and after the crash) reaches the feed.
    let _restarted = run(false);
    let app = spawn_app_on(&database_url, |_| {}).await;
    let mut ids = BTreeSet::new();
    for n in 0..10 {
        let found = wait_for_ids(&app, &format!("/Patient?identifier=urn:test:mrn|CR{n}"), 1).await;
        assert_eq!(found.len(), 1, "CR{n} stored exactly once");
        ids.insert(format!("Patient/{}", found[0]));
    }
    read_until(&broker, CHANGES, |records| {
        let seen: BTreeSet<String> = records.iter().map(changed).collect();
        ids.is_subset(&seen)
    })
    .await;
    // Once the dead member's session has expired, the new one is assigned the partition,
    // consumes the ten records again (each writes nothing new) and commits.
    let mut committed = vec![None];
    for _ in 0..300 {
        committed = committed_offsets(&config, FHIR, 1, Duration::from_secs(5)).unwrap();
        if committed == vec![Some(10)] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(committed, vec![Some(10)]);
    for n in 0..10 {
        let query = format!("/Patient?identifier=urn:test:mrn|CR{n}");
        assert_eq!(
            wait_for_ids(&app, &query, 1).await.len(),
            1,
            "CR{n} still once"
        );
    }
    crate::support::report(
        "Kafka crash between the database commit and the offset commit: 10 records; no offset \
         committed before the crash; after restart each stored once (duplicates: 0, lost: 0) \
         and the offset committed at 10",
    );
    app.stop().await;
}

/// The server's clients refuse records over 100 kB here, as a broker's `message.max.bytes`
/// would refuse larger ones.
async fn app_with_small_records(broker: &MockBroker) -> TestApp {
    let brokers = broker.bootstrap_servers();
    spawn_app_with(|config: &mut Config| {
        let mut kafka = settings(&brokers);
        kafka
            .client
            .options
            .insert("message.max.bytes".into(), "100000".into());
        config.kafka = Some(kafka);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_dead_letter_goes_without_its_payload_and_the_partition_moves_on() {
    let broker = broker(1);
    let app = app_with_small_records(&broker).await;
    let producer = producer(&broker);
    let huge = vec![b'X'; 300_000];
    producer.send(HL7, Some(b"big"), &huge, &[]).await.unwrap();
    producer
        .send(HL7, None, &oru("KAF0401", "KAF401"), &[])
        .await
        .unwrap();
    wait_for_ids(&app, "/Patient?identifier=KAF401", 1).await;
    let dead = read_until(&broker, DEAD, |records| !records.is_empty()).await;
    assert!(dead[0].payload.is_empty(), "the payload is left out");
    assert_eq!(header(&dead[0], "hl7bridge.payload.omitted"), "300000");
    assert_eq!(header(&dead[0], "hl7bridge.source.offset"), "0");
    assert_eq!(dead[0].key.as_deref(), Some(&b"big"[..]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_too_large_for_a_record_is_published_without_its_resource_and_nothing_repeats() {
    let broker = broker(1);
    let app = app_with_small_records(&broker).await;
    let big = json!({"resourceType": "Patient",
        "text": {"status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "y".repeat(200_000))},
        "identifier": [{"system": "urn:test:mrn", "value": "BIG1"}]});
    let mut entries: Vec<Value> = (0..5)
        .map(|n| {
            json!({"request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient",
                    "identifier": [{"system": "urn:test:mrn", "value": format!("SMALL{n}")}]}})
        })
        .collect();
    entries.push(json!({"request": {"method": "POST", "url": "Patient"}, "resource": big}));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
    let changes = read_until(&broker, CHANGES, |records| records.len() >= 6).await;
    // Give a broken relay time to send the same changes again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = read_until(&broker, CHANGES, |records| records.len() >= changes.len()).await;
    assert_eq!(again.len(), 6, "each change once");
    let without: Vec<Value> = again
        .iter()
        .map(change_bundle)
        .filter(|b| b["entry"][0].get("resource").is_none())
        .collect();
    assert_eq!(
        without.len(),
        1,
        "only the large change goes without its resource"
    );
    let outcome = &without[0]["entry"][0]["response"]["outcome"]["issue"][0];
    assert_eq!(outcome["code"], "too-long");
    assert!(outcome["diagnostics"]
        .as_str()
        .unwrap()
        .contains("/_history/1"));
    let (_, metrics) = (0, app.get("/metrics").await.text().await.unwrap());
    assert!(
        metrics.contains("hl7bridge_outbox_depth 0"),
        "the outbox drains"
    );
    app.stop().await;
}

/// Two nodes on one PostgreSQL database: while one holds the relay turn, the other is refused
/// it, so they never publish the same changes side by side. (SQLite is one node: always granted.)
#[tokio::test]
async fn one_node_at_a_time_relays_a_shared_postgresql_outbox() {
    let (url, _database) = crate::support::fresh_database().await;
    let first = hl7bridge::store::Store::connect(&url).await.unwrap();
    let second = hl7bridge::store::Store::connect(&url).await.unwrap();
    let turn = first
        .relay_turn()
        .await
        .unwrap()
        .expect("the first node gets the turn");
    let other = second.relay_turn().await.unwrap();
    assert_eq!(other.is_none(), url.starts_with("postgres"), "{url}");
    if let Some(other) = other {
        other.finish().await;
    }
    turn.finish().await;
    let next = second.relay_turn().await.unwrap();
    assert!(next.is_some(), "released with the first node's turn");
    next.unwrap().finish().await;
}
