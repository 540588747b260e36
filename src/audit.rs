//! The audit trail: every FHIR API interaction (allowed or refused) and every accepted HL7v2
//! message becomes one `audit_event` row, served back as FHIR AuditEvents (see
//! `fhir::audit`).
//!
//! Recording never waits for a commit of its own: records queue to one writer task that
//! inserts them in batches, so auditing a read costs a channel send, not a transaction. The
//! queue is bounded; when the database falls behind, callers wait for room rather than
//! records being dropped. [`AuditTrail::flush`] waits until everything recorded before it is
//! stored (the AuditEvent API calls it first, so a caller sees its own trail).

use std::time::Duration;

use hl7bridge_entities::audit_event;
use tokio::sync::{mpsc, oneshot};

use crate::store::{now_us, Store};

/// Records waiting to be written, at most.
const QUEUE: usize = 20_000;
/// Records one insert writes, at most.
const BATCH: usize = 2_000;

/// References one record lists, at most; a larger transaction notes how many it left out.
pub const MAX_ENTITIES: usize = 100;

/// The door an interaction came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Fhir,
    Mllp,
    Kafka,
}

impl Door {
    fn as_str(self) -> &'static str {
        match self {
            Door::Fhir => "fhir",
            Door::Mllp => "mllp",
            Door::Kafka => "kafka",
        }
    }
}

/// One interaction to record. Only references, codes and counts: never resource content,
/// search values or message text.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub door: Door,
    /// C, R, U, D or E.
    pub action: char,
    pub subtype: String,
    /// 0 success, 4 refused or invalid (4xx, AR/AE), 8 failed on our side (5xx).
    pub outcome: i32,
    pub agent: String,
    pub network: String,
    /// `Type/id` references, or a bare `Type` for a search.
    pub entities: Vec<String>,
    pub patient: Option<String>,
    pub trace_id: String,
    pub detail: String,
}

enum Message {
    Record(audit_event::Model),
    Flush(oneshot::Sender<()>),
    /// Write out what came before, then stop.
    Close,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct AuditTrail {
    queue: mpsc::Sender<Message>,
}

impl AuditTrail {
    /// Starts the writer. It stops once every `AuditTrail` clone is dropped and the queue is
    /// written out; await the handle to know the trail is complete.
    pub fn start(store: Store) -> (AuditTrail, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write_loop(store, receiver));
        (AuditTrail { queue }, writer)
    }

    pub async fn record(&self, record: AuditRecord) {
        let mut entities = record.entities;
        let left_out = entities.len().saturating_sub(MAX_ENTITIES);
        entities.truncate(MAX_ENTITIES);
        let mut detail = record.detail;
        if left_out > 0 {
            detail.push_str(&format!("; {left_out} more resources not listed"));
        }
        let row = audit_event::Model {
            id: uuid::Uuid::new_v4().to_string(),
            recorded_us: now_us(),
            source: record.door.as_str().into(),
            action: record.action.to_string(),
            subtype: record.subtype,
            outcome: record.outcome,
            agent: record.agent,
            network: record.network,
            entities: serde_json::to_string(&entities).unwrap_or_else(|_| "[]".into()),
            patient_id: record.patient.unwrap_or_default(),
            trace_id: record.trace_id,
            detail,
        };
        if self.queue.send(Message::Record(row)).await.is_err() {
            tracing::error!("the audit writer has stopped; an audit record was not written");
        }
    }

    /// Stops the writer once everything recorded before this call is stored (at shutdown,
    /// after the servers have drained).
    pub async fn close(&self) {
        let _ = self.queue.send(Message::Close).await;
    }

    /// Waits until everything recorded before this call is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_loop(store: Store, mut receiver: mpsc::Receiver<Message>) {
    let mut rows = Vec::new();
    let mut waiting = Vec::new();
    let mut closed = false;
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(row) => rows.push(row),
                Message::Flush(done) => waiting.push(done),
                Message::Close => closed = true,
            }
            if rows.len() < BATCH && !closed {
                next = receiver.try_recv().ok();
            }
        }
        let mut backoff = Duration::from_millis(100);
        while !rows.is_empty() {
            match store.audit_insert(rows.clone()).await {
                Ok(()) => rows.clear(),
                Err(err) => {
                    // Kept, not dropped: retried until the database takes them.
                    tracing::warn!(error = %err, records = rows.len(), "writing the audit trail failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

/// The trace id of the current span, for the record (empty when there is none).
pub fn current_trace_id() -> String {
    crate::telemetry::span_traceparent(&tracing::Span::current())
        .and_then(|(traceparent, _)| traceparent.split('-').nth(1).map(str::to_string))
        .unwrap_or_default()
}
