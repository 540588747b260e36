//! The outbox relay: committed changes out to the change topic, in commit order, at least once.

use std::time::{Duration, Instant};

use hl7bridge_kafka::{Pending, Producer};
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

pub(super) struct Relay {
    pub store: Store,
    pub producer: Producer,
    pub topic: String,
    pub extension_url: String,
    pub public_base_url: Option<String>,
    pub retention: Duration,
}

impl Relay {
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let notify = self.store.change_notify();
        let mut backoff = Duration::from_millis(200);
        let mut last_prune: Option<Instant> = None;
        loop {
            let stopping = *stop.borrow();
            match self.publish_some().await {
                Ok(n) => {
                    backoff = Duration::from_millis(200);
                    if n as u64 == BATCH && !stopping {
                        continue;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "publishing the change feed failed; retrying");
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
        let rows = self.store.pending_changes(BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut in_flight: Vec<(i64, Pending, tracing::Span)> = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in &rows {
            let span = publish_span(&self.topic);
            let parent = TraceParent::from_carrier(
                Some(row.traceparent.as_str()).filter(|t| !t.is_empty()),
                Some(row.tracestate.as_str()).filter(|t| !t.is_empty()),
            );
            continue_trace(&span, parent.as_ref());
            let trace = span_traceparent(&span);
            let payload = self.bundle(row, trace.clone());
            let mut headers: Vec<(&str, &[u8])> =
                vec![("content-type", b"application/fhir+json".as_slice())];
            if let Some((traceparent, tracestate)) = &trace {
                headers.push(("traceparent", traceparent.as_bytes()));
                if let Some(state) = tracestate {
                    headers.push(("tracestate", state.as_bytes()));
                }
            }
            let key = Some(row.partition_key.as_bytes());
            match self
                .producer
                .enqueue(&self.topic, key, payload.as_bytes(), &headers)
            {
                Ok(pending) => in_flight.push((row.seq, pending, span)),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        let mut published = Vec::with_capacity(in_flight.len());
        for (seq, pending, span) in in_flight {
            match pending.delivered().await {
                Ok(delivered) if failure.is_none() => {
                    span.record("messaging.destination.partition.id", delivered.partition);
                    span.record("messaging.kafka.offset", delivered.offset);
                    published.push(seq);
                }
                Ok(_) => {}
                Err(err) => {
                    span.record("error.type", "delivery_failed");
                    failure.get_or_insert(err);
                }
            }
        }
        if !published.is_empty() {
            self.store.mark_published(&published, now_us()).await?;
            metrics().changes_published(published.len());
        }
        match failure {
            Some(err) => Err(anyhow::anyhow!(err).context(format!(
                "{} of {} changes published",
                published.len(),
                rows.len()
            ))),
            None => Ok(rows.len()),
        }
    }

    /// A history Bundle holding the one change, its meta carrying the publish span's trace.
    fn bundle(&self, row: &ChangeRow, trace: Option<(String, Option<String>)>) -> String {
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
        let entry = match &self.public_base_url {
            Some(base) => {
                let full_url = json!(format!("{base}/{}/{}", row.resource_type, row.resource_id));
                format!(r#"{{"fullUrl":{full_url},{}"#, &row.entry[1..])
            }
            None => row.entry.clone(),
        };
        format!(r#"{},"entry":[{entry}]}}"#, &head[..head.len() - 1])
    }

    async fn measure(&self) {
        match self.store.outbox_backlog().await {
            Ok((depth, oldest)) => {
                let age_us = oldest.map_or(0, |at| (now_us() - at).max(0));
                metrics().outbox(depth, Duration::from_micros(age_us as u64));
            }
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
