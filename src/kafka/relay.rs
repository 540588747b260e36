//! The outbox relay: committed changes out to the change topic, in commit order, at least once.

use std::time::{Duration, Instant};

use hl7bridge_kafka::{is_too_large, KafkaError, Pending, Producer};
use serde_json::json;
use tokio::sync::watch;

use crate::fhir::bundle::{meta, BundleTrace};
use crate::store::{now_us, ChangeRow, Store};
use crate::telemetry::metrics::metrics;
use crate::telemetry::{continue_trace, span_traceparent, TraceParent};

/// Changes read and published per round.
const BATCH: u64 = 500;
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// With no notification, the outbox is still looked at this often (a change committed by
/// another node sharing the database, say).
const POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const LAST_ATTEMPT: Duration = Duration::from_secs(2);

pub(super) struct Relay {
    pub store: Store,
    pub producer: Producer,
    pub topic: String,
    pub extension_url: String,
    pub public_base_url: Option<String>,
    pub retention: Duration,
    /// Changes the broker refused for their size: sent again without the resource.
    pub oversize: std::sync::Mutex<std::collections::HashSet<i64>>,
}

impl Relay {
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let notify = self.store.change_notify();
        let mut backoff = Duration::from_millis(200);
        let mut last_prune: Option<Instant> = None;
        loop {
            let stopping = *stop.borrow();
            // Stopping: one last short attempt; what is not acknowledged by then stays in the
            // outbox for the next start, instead of holding shutdown for a delivery timeout.
            let round = async {
                if stopping {
                    tokio::time::timeout(LAST_ATTEMPT, self.publish_some())
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!("stopping before the broker answered"))
                        })
                } else {
                    self.publish_some().await
                }
            };
            match round.await {
                Ok(n) => {
                    backoff = Duration::from_millis(200);
                    if n as u64 == BATCH && !stopping {
                        continue;
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "publishing the change feed failed; retrying"
                    );
                    self.measure().await;
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            self.measure().await;
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                self.prune().await;
                last_prune = Some(Instant::now());
            }
            if stopping {
                return;
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Publishes up to [`BATCH`] pending changes and marks those the broker acknowledged.
    /// Only an unbroken run from the oldest is marked: after a failed delivery everything
    /// younger is sent again, so a patient's changes never end on the topic out of order.
    async fn publish_some(&self) -> anyhow::Result<usize> {
        // Another node sharing the database is relaying: it publishes these changes.
        let Some(turn) = self.store.relay_turn().await? else {
            return Ok(0);
        };
        let published = self.publish_in_turn().await;
        turn.finish().await;
        published
    }

    async fn publish_in_turn(&self) -> anyhow::Result<usize> {
        let rows = self.store.pending_changes(BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Before waiting on the broker, which may take the whole delivery timeout.
        self.measure().await;
        let mut in_flight: Vec<(i64, Pending, tracing::Span)> = Vec::with_capacity(rows.len());
        let mut failure: Option<(i64, KafkaError)> = None;
        for row in &rows {
            match self.enqueue(row) {
                Ok((pending, span)) => in_flight.push((row.seq, pending, span)),
                Err(err) => {
                    failure = Some((row.seq, err));
                    break;
                }
            }
        }
        // Every queued record is awaited, so none is left to be delivered unrecorded.
        let mut published = Vec::with_capacity(in_flight.len());
        let mut broken = false;
        for (seq, pending, span) in in_flight {
            match pending.delivered().await {
                Ok(delivered) => {
                    span.record("messaging.destination.partition.id", delivered.partition);
                    span.record("messaging.kafka.offset", delivered.offset);
                    if !broken {
                        published.push(seq);
                    }
                }
                Err(err) => {
                    span.record("error.type", "delivery_failed");
                    broken = true;
                    if failure.as_ref().is_none_or(|(first, _)| seq < *first) {
                        failure = Some((seq, err));
                    }
                }
            }
        }
        if !published.is_empty() {
            self.store.mark_published(&published, now_us()).await?;
            metrics().changes_published(published.len());
        }
        match failure {
            Some((seq, err)) => {
                if is_too_large(&err) {
                    self.oversize
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(seq);
                }
                Err(anyhow::Error::new(err).context(format!(
                    "{} of {} changes published",
                    published.len(),
                    rows.len()
                )))
            }
            None => Ok(rows.len()),
        }
    }

    /// Queues one change under its own producer span.
    fn enqueue(&self, row: &ChangeRow) -> Result<(Pending, tracing::Span), KafkaError> {
        let span = publish_span(&self.topic);
        let parent = TraceParent::from_carrier(
            Some(row.traceparent.as_str()).filter(|t| !t.is_empty()),
            Some(row.tracestate.as_str()).filter(|t| !t.is_empty()),
        );
        continue_trace(&span, parent.as_ref());
        let trace = span_traceparent(&span);
        let oversize = self
            .oversize
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&row.seq);
        let mut payload = self.bundle(row, trace.clone(), oversize);
        let mut headers: Vec<(&str, &[u8])> =
            vec![("content-type", b"application/fhir+json".as_slice())];
        if let Some((traceparent, tracestate)) = &trace {
            headers.push(("traceparent", traceparent.as_bytes()));
            if let Some(state) = tracestate {
                headers.push(("tracestate", state.as_bytes()));
            }
        }
        let key = Some(row.partition_key.as_bytes());
        let queued = self
            .producer
            .enqueue(&self.topic, key, payload.as_bytes(), &headers);
        let pending = match queued {
            Err(err) if is_too_large(&err) && !oversize => {
                // Too large for any record: the change goes out without its resource, which
                // the consumer reads from the FHIR API instead.
                payload = self.bundle(row, trace.clone(), true);
                self.producer
                    .enqueue(&self.topic, key, payload.as_bytes(), &headers)?
            }
            other => other?,
        };
        Ok((pending, span))
    }

    /// A history Bundle holding the one change, its meta carrying the publish span's trace.
    /// `without_resource`: the entry says where to read the resource instead of holding it.
    fn bundle(
        &self,
        row: &ChangeRow,
        trace: Option<(String, Option<String>)>,
        without_resource: bool,
    ) -> String {
        let trace = trace.map(|(traceparent, tracestate)| BundleTrace {
            extension_url: self.extension_url.clone(),
            traceparent,
            tracestate,
        });
        // The same change always gets the same Bundle id, so a consumer can recognise a
        // duplicate delivery.
        let change = format!(
            "{}/{}/_history/{}",
            row.resource_type, row.resource_id, row.version_id
        );
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, change.as_bytes());
        let head = json!({
            "resourceType": "Bundle",
            "id": id.to_string(),
            "meta": meta(trace.as_ref()),
            "type": "history",
        })
        .to_string();
        let stored_entry = if without_resource {
            resource_omitted(row)
        } else {
            row.entry.clone()
        };
        let entry = match &self.public_base_url {
            Some(base) => {
                let full_url = json!(format!("{base}/{}/{}", row.resource_type, row.resource_id));
                format!(r#"{{"fullUrl":{full_url},{}"#, &stored_entry[1..])
            }
            None => stored_entry,
        };
        format!(r#"{},"entry":[{entry}]}}"#, &head[..head.len() - 1])
    }

    async fn measure(&self) {
        match self.store.outbox_backlog().await {
            Ok((depth, oldest)) => metrics().outbox(depth, oldest),
            Err(err) => tracing::debug!(error = %err, "measuring the outbox failed"),
        }
    }

    async fn prune(&self) {
        let before = now_us() - self.retention.as_micros() as i64;
        match self.store.prune_published(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "published changes pruned from the outbox"),
            Err(err) => tracing::warn!(error = %err, "pruning the outbox failed"),
        }
    }
}

/// The change's entry without its resource, with an outcome saying where to read it.
fn resource_omitted(row: &ChangeRow) -> String {
    let mut entry: serde_json::Value = serde_json::from_str(&row.entry).unwrap_or_default();
    if let Some(map) = entry.as_object_mut() {
        map.shift_remove("resource");
    }
    let at = format!(
        "{}/{}/_history/{}",
        row.resource_type, row.resource_id, row.version_id
    );
    entry["response"]["outcome"] = json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "warning", "code": "too-long",
        "diagnostics": format!("the resource is too large for the change feed; read {at}"),
    }]});
    entry.to_string()
}

/// A producer span per change. The key (a patient id) is not an attribute: no patient data
/// in spans.
fn publish_span(topic: &str) -> tracing::Span {
    tracing::info_span!(
        "kafka.publish",
        otel.name = %format!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.kafka.offset = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}
