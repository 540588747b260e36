//! Records in: HL7v2 (raw ER7) and FHIR JSON, through the MLLP and HTTP pipelines, offsets
//! committed after the data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hl7bridge_kafka::{is_too_large, Consumer, Producer, Record};
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument;

use super::FhirIngest;
use crate::config::KafkaSettings;
use crate::fhir::bundle::carried_trace;
use crate::fhir::error::FhirError;
use crate::fhir::transaction::{self, NewIds};
use crate::ingest::v2::AckCode;
use crate::ingest::{Hl7Ingest, Origin};
use crate::telemetry::metrics::metrics;
use crate::telemetry::{add_link, continue_trace, link_payload_context, TraceParent};

/// Attempts at a record the database keeps refusing while it answers otherwise; then the
/// record is dead-lettered so its partition moves on. While the database does not answer at
/// all, records wait without limit instead: an outage is not the record's fault.
const MAX_FAILED_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) struct Inbound {
    pub consumer: Consumer,
    pub dead_letters: Producer,
    pub settings: KafkaSettings,
    pub hl7: Arc<Hl7Ingest>,
    pub fhir: Arc<FhirIngest>,
}

/// What became of one record.
enum Handled {
    Stored,
    /// It can never be processed as sent.
    DeadLetter(DeadLetter),
    /// The database failed; the same record may well succeed later.
    Retry(DeadLetter),
}

#[derive(Debug)]
struct DeadLetter {
    /// Why, in words that hold no patient data.
    reason: String,
    /// A short machine-readable code: `hl7:AR:102`, `fhir:400:invalid`, `json`.
    code: String,
    /// The ACK that answered an HL7v2 record.
    ack: Option<String>,
}

impl DeadLetter {
    fn new(code: impl Into<String>, reason: impl Into<String>) -> DeadLetter {
        DeadLetter {
            reason: reason.into(),
            code: code.into(),
            ack: None,
        }
    }
}

/// Chains of records processed at once.
const MAX_CHAINS: usize = 64;

impl Inbound {
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let wait = Duration::from_millis(self.settings.batch_wait_ms);
        let max = self.settings.batch_max_records;
        let mut stored_batches = 0u64;
        loop {
            let batch = tokio::select! {
                batch = self.consumer.next_batch(max, wait) => batch,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let traces: Vec<Option<TraceParent>> = batch.iter().map(record_trace).collect();
            let span = batch_span(&batch, &traces, &self.settings.client.group_id);
            let done = self
                .process_batch(&batch, &traces, &mut stop)
                .instrument(span)
                .await;
            stored_batches += 1;
            if self.settings.test_abort_after_stored_batches == Some(stored_batches) {
                eprintln!("hl7bridge: aborting after a stored batch, before its offsets (test)");
                std::process::abort();
            }
            if let Err(err) = self.consumer.commit(&batch[..done]).await {
                // The records are consumed again, by this member or the partition's next owner;
                // processing them twice changes nothing.
                tracing::warn!(error = %err, "committing Kafka offsets failed");
            }
            if done < batch.len() {
                return;
            }
        }
    }

    /// Handles a batch; returns how many records from its start are finished (stored or
    /// dead-lettered), fewer than all only when stopping.
    ///
    /// Records run concurrently, in chains that keep the order Kafka promises: one chain per
    /// topic, partition and key (a producer keys one patient's records alike), one per
    /// partition for records without a key. Their writes meet in the group commit. A record
    /// finished beyond the first unfinished one is handled again after a restart, which
    /// changes nothing: new ids derive from the record's offset, and an HL7v2 resend gets its
    /// stored ACK.
    async fn process_batch(
        &self,
        batch: &[Record],
        traces: &[Option<TraceParent>],
        stop: &mut watch::Receiver<bool>,
    ) -> usize {
        let mut chains: Vec<Vec<usize>> = Vec::new();
        let mut chain_of: HashMap<(&str, i32, Option<&[u8]>), usize> = HashMap::new();
        for (index, record) in batch.iter().enumerate() {
            let key = (
                record.topic.as_str(),
                record.partition,
                record.key.as_deref(),
            );
            let chain = *chain_of.entry(key).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[chain].push(index);
        }
        let finished: Vec<std::sync::atomic::AtomicBool> =
            batch.iter().map(|_| Default::default()).collect();
        let runs = chains.into_iter().map(|chain| {
            let mut stop = stop.clone();
            let finished = &finished;
            async move {
                for index in chain {
                    let record = &batch[index];
                    if !self.process_record(record, &traces[index], &mut stop).await {
                        return;
                    }
                    finished[index].store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        // Bounded, so a batch of 500 keys does not queue 500 tasks on a pool of 16 connections.
        futures_util::stream::iter(runs)
            .buffer_unordered(MAX_CHAINS)
            .for_each(|_| async {})
            .await;
        finished
            .iter()
            .take_while(|f| f.load(std::sync::atomic::Ordering::Relaxed))
            .count()
    }

    /// Stores or dead-letters one record; false when stopping first.
    async fn process_record(
        &self,
        record: &Record,
        trace: &Option<TraceParent>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = FIRST_BACKOFF;
        let mut failed_attempts = 0;
        loop {
            let dead_letter = match self.handle(record, trace.clone()).await {
                Handled::Stored => {
                    metrics().kafka_record(&record.topic, "stored");
                    return true;
                }
                Handled::DeadLetter(dead_letter) => dead_letter,
                Handled::Retry(dead_letter) => {
                    // An unreachable database is an outage: wait it out. One that answers
                    // yet refuses this record again and again is refusing the record.
                    if self.fhir.store.ready().await.is_ok() {
                        failed_attempts += 1;
                    }
                    if failed_attempts < MAX_FAILED_ATTEMPTS {
                        tracing::warn!(
                            topic = %record.topic,
                            partition = record.partition,
                            offset = record.offset,
                            "storing a Kafka record failed; retrying"
                        );
                        if sleep_or_stop(&mut backoff, stop).await {
                            return false;
                        }
                        continue;
                    }
                    dead_letter
                }
            };
            if !self.dead_letter(record, &dead_letter, stop).await {
                return false;
            }
            metrics().kafka_record(&record.topic, "dead_lettered");
            return true;
        }
    }

    async fn handle(&self, record: &Record, trace: Option<TraceParent>) -> Handled {
        if record.payload.is_empty() {
            return Handled::DeadLetter(DeadLetter::new("empty", "the record has no payload"));
        }
        if record.topic == self.settings.hl7_topic {
            self.handle_hl7(record, trace).await
        } else {
            self.handle_fhir(record, trace).await
        }
    }

    async fn handle_hl7(&self, record: &Record, trace: Option<TraceParent>) -> Handled {
        let origin = Origin {
            peer: source_name(record),
            transport_trace: trace,
            door: crate::audit::Door::Kafka,
            identity: None,
        };
        let answers = self.hl7.ingest(&record.payload, &origin).await;
        let transient = answers.iter().any(|a| a.transient);
        let refused = answers
            .iter()
            .find(|a| matches!(a.code, Some(AckCode::AE | AckCode::AR)));
        let dead_letter = match refused {
            None if !transient => return Handled::Stored,
            None => DeadLetter::new("hl7:store", "the message could not be stored"),
            Some(answer) => {
                let (code, reason) = match &answer.error {
                    Some(error) => (error.code, error.message.clone()),
                    None => (0, "refused".to_string()),
                };
                let ack_code = answer.code.map_or("", |c| c.as_str());
                DeadLetter {
                    reason,
                    code: format!("hl7:{ack_code}:{code}"),
                    ack: Some(answer.acks.text()),
                }
            }
        };
        if transient {
            Handled::Retry(dead_letter)
        } else {
            Handled::DeadLetter(dead_letter)
        }
    }

    async fn handle_fhir(&self, record: &Record, trace: Option<TraceParent>) -> Handled {
        let span = tracing::info_span!(
            "kafka.fhir_record",
            otel.name = "process FHIR record",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = %record.topic,
            messaging.destination.partition.id = record.partition,
            messaging.kafka.offset = record.offset,
        );
        continue_trace(&span, trace.as_ref());
        let bundle = match fhir_bundle(&record.payload) {
            Ok(bundle) => bundle,
            Err(dead_letter) => return Handled::DeadLetter(dead_letter),
        };
        let extension_url = &self.fhir.trace_extension_url;
        link_payload_context(&span, carried_trace(&bundle, extension_url).as_ref());
        // Derived ids: a record processed twice (redelivered after a crash) creates the same
        // resources, not duplicates.
        let ids = NewIds::Derived(source_name(record));
        let fhir = &self.fhir;
        let result = transaction::process(
            &fhir.store,
            &fhir.conditional_gate,
            &fhir.bundle_limits,
            bundle,
            transaction::Caller {
                access: &crate::auth::Access::System,
                new_ids: &ids,
                trace: None,
                returns: transaction::Return::Minimal,
            },
        )
        .instrument(span)
        .await;
        match result {
            Ok(response) => judge_response(&response),
            Err(err) => {
                let dead_letter = fhir_dead_letter(&err);
                if is_transient(&err) {
                    Handled::Retry(dead_letter)
                } else {
                    Handled::DeadLetter(dead_letter)
                }
            }
        }
    }

    /// Publishes the record, unchanged, to the dead-letter topic with headers naming the error
    /// and the source; retries until the broker has it. `false` when stopped first.
    async fn dead_letter(
        &self,
        record: &Record,
        dead_letter: &DeadLetter,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        tracing::warn!(
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            code = %dead_letter.code,
            "Kafka record dead-lettered (the reason travels in its hl7bridge.error header)"
        );
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let mut headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with("hl7bridge."))
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect();
        headers.extend([
            ("hl7bridge.error", dead_letter.reason.as_bytes()),
            ("hl7bridge.error.code", dead_letter.code.as_bytes()),
            ("hl7bridge.source.topic", record.topic.as_bytes()),
            ("hl7bridge.source.partition", partition.as_bytes()),
            ("hl7bridge.source.offset", offset.as_bytes()),
        ]);
        if let Some(ack) = &dead_letter.ack {
            headers.push(("hl7bridge.ack", ack.as_bytes()));
        }
        let topic = &self.settings.dead_letter_topic;
        let mut backoff = FIRST_BACKOFF;
        let size = record.payload.len().to_string();
        let mut payload = record.payload.as_slice();
        loop {
            let sent = self
                .dead_letters
                .send(topic, record.key.as_deref(), payload, &headers)
                .await;
            match sent {
                Ok(_) => return true,
                Err(err) if is_too_large(&err) && !payload.is_empty() => {
                    // It can never be published whole: the dead letter names the error and
                    // the source offset, where the record itself stays.
                    tracing::warn!(
                        bytes = record.payload.len(),
                        "the record is too large for the dead-letter topic; sending it without its payload"
                    );
                    payload = &[];
                    headers.push(("hl7bridge.payload.omitted", size.as_bytes()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "dead-lettering a Kafka record failed; retrying");
                    if sleep_or_stop(&mut backoff, stop).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// The record's `traceparent`/`tracestate` headers, when valid.
fn record_trace(record: &Record) -> Option<TraceParent> {
    TraceParent::from_carrier(
        record.header_text("traceparent"),
        record.header_text("tracestate"),
    )
}

/// `kafka:topic/partition/offset`: where a record came from, stored with what it produced.
fn source_name(record: &Record) -> String {
    format!(
        "kafka:{}/{}/{}",
        record.topic, record.partition, record.offset
    )
}

/// One `process` span per batch, linked to every record's creation context (the messaging
/// semantic conventions for batch processing).
fn batch_span(batch: &[Record], traces: &[Option<TraceParent>], group: &str) -> tracing::Span {
    let first = batch.first().map_or("", |r| r.topic.as_str());
    let topic = if batch.iter().all(|r| r.topic == first) {
        first
    } else {
        ""
    };
    let span = tracing::info_span!(
        "kafka.process",
        otel.name = %format!("process {topic}").trim_end(),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %topic,
        messaging.consumer.group.name = %group,
        messaging.batch.message_count = batch.len(),
    );
    for trace in traces.iter().flatten() {
        add_link(&span, trace);
    }
    span
}

/// The record as a transaction or batch Bundle: a lone resource becomes a one-entry
/// transaction (an update when it has an id, else a create).
fn fhir_bundle(payload: &[u8]) -> Result<Value, DeadLetter> {
    let value = crate::fhir::json::from_slice(payload)
        .map_err(|err| DeadLetter::new("json", format!("the record is {err}")))?;
    let resource_type = value
        .get("resourceType")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| DeadLetter::new("fhir:resourceType", "no resourceType"))?;
    if resource_type == "Bundle" {
        return match value.get("type").and_then(Value::as_str) {
            Some("transaction" | "batch") => Ok(value),
            other => Err(DeadLetter::new(
                "fhir:bundle-type",
                format!(
                    "a Bundle of type {} is not processed; send a transaction or batch",
                    other.unwrap_or("(none)")
                ),
            )),
        };
    }
    Ok(transaction::single_entry_transaction(value, &resource_type))
}

/// A transaction that returned committed everything. A batch may have failed in part: the
/// record is dead-lettered (its good entries are stored, and storing them again on a replay
/// changes nothing), unless the database failed, when it is retried.
fn judge_response(response: &Value) -> Handled {
    if response.get("type").and_then(Value::as_str) != Some("batch-response") {
        return Handled::Stored;
    }
    let entries = response
        .get("entry")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let status = |e: &Value| {
        e.pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or("500")
            .to_string()
    };
    let failed: Vec<(usize, String)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i, status(e)))
        .filter(|(_, s)| !s.starts_with('2'))
        .collect();
    let Some((first, first_status)) = failed.first() else {
        return Handled::Stored;
    };
    let diagnostics = entries[*first]
        .pointer("/response/outcome/issue/0/diagnostics")
        .and_then(Value::as_str)
        .unwrap_or("");
    let code = first_status.split(' ').next().unwrap_or("500");
    let dead_letter = DeadLetter::new(
        format!("fhir:batch:{code}"),
        format!(
            "{} of {} batch entries failed; the first, Bundle.entry[{first}]: {diagnostics}",
            failed.len(),
            entries.len()
        ),
    );
    if failed.iter().any(|(_, s)| s.starts_with("503")) {
        Handled::Retry(dead_letter)
    } else {
        Handled::DeadLetter(dead_letter)
    }
}

fn is_transient(err: &FhirError) -> bool {
    match err {
        FhirError::Unavailable | FhirError::Internal => true,
        FhirError::AtEntry { error, .. } => is_transient(error),
        _ => false,
    }
}

fn fhir_dead_letter(err: &FhirError) -> DeadLetter {
    use actix_web::ResponseError;
    let status = err.status_code().as_u16();
    DeadLetter::new(
        format!("fhir:{status}:{}", err.issue_code()),
        err.to_string(),
    )
}

/// Sleeps `backoff` (doubling it up to the cap) unless stopped first; `true` when stopped.
async fn sleep_or_stop(backoff: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let delay = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    let stopped = tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|stopped| *stopped) => true,
    };
    stopped || *stop.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_lone_resource_becomes_a_one_entry_transaction() {
        let bundle = fhir_bundle(br#"{"resourceType":"Patient","id":"p1"}"#).unwrap();
        assert_eq!(bundle["type"], "transaction");
        assert_eq!(bundle["entry"][0]["request"]["method"], "PUT");
        assert_eq!(bundle["entry"][0]["request"]["url"], "Patient/p1");
        let bundle = fhir_bundle(br#"{"resourceType":"Observation"}"#).unwrap();
        assert_eq!(bundle["entry"][0]["request"]["method"], "POST");
    }

    #[test]
    fn what_cannot_be_a_transaction_is_dead_lettered() {
        for payload in [
            &b"{not json"[..],
            br#"{"id":"x"}"#,
            br#"{"resourceType":"Bundle","type":"collection"}"#,
        ] {
            assert!(fhir_bundle(payload).is_err());
        }
    }

    #[test]
    fn a_batch_with_a_failed_entry_is_dead_lettered_and_a_503_retried() {
        let partial = json!({"type": "batch-response", "entry": [
            {"response": {"status": "201 Created"}},
            {"response": {"status": "400 Bad Request",
                "outcome": {"issue": [{"diagnostics": "bad"}]}}},
        ]});
        let Handled::DeadLetter(dl) = judge_response(&partial) else {
            panic!("expected a dead letter");
        };
        assert_eq!(dl.code, "fhir:batch:400");
        assert!(dl.reason.starts_with("1 of 2"), "{}", dl.reason);
        let unavailable = json!({"type": "batch-response", "entry": [
            {"response": {"status": "503 Service Unavailable"}},
        ]});
        assert!(matches!(judge_response(&unavailable), Handled::Retry(_)));
    }
}
