//! The audit trail: every FHIR API interaction (allowed or refused) and every accepted HL7v2
//! message becomes one `audit_event` row, served back as FHIR AuditEvents (see
//! `fhir::audit`). Requests refused for want of a valid token are the exception: past a few
//! per second from one address they are counted and summarised (see [`refusals`]).
//!
//! Recording never waits for a commit of its own: records queue to one writer task that
//! inserts them in batches, so auditing a read costs a channel send, not a transaction. The
//! queue is bounded; when the database falls behind, callers wait for room rather than
//! records being dropped. [`AuditTrail::flush`] waits until everything recorded before it is
//! stored (the AuditEvent API calls it first, so a caller sees its own trail). With a
//! retention set, a task beside the writer deletes older events every hour.

pub mod refusals;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hl7bridge_entities::audit_event;
use tokio::sync::{mpsc, oneshot, watch};

use crate::store::{instant_text, now_us, Store};
use refusals::{Refusals, Summary, SUMMARY_INTERVAL};

/// Records waiting to be written, at most.
const QUEUE: usize = 20_000;
/// Records one insert writes, at most.
const BATCH: usize = 2_000;

/// References one record lists, at most; a larger transaction notes how many it left out.
pub const MAX_ENTITIES: usize = 100;

/// The subtype of an event that counts refusals not recorded one by one.
pub const REFUSALS_SUBTYPE: &str = "unauthenticated-refusals";

/// How often events past the retention are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// Events one purge statement deletes, at most: short statements leave room for the writer.
const PURGE_CHUNK: u64 = 5_000;

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
    /// Boxed: a row is large beside the other messages.
    Record(Box<audit_event::Model>),
    Flush(oneshot::Sender<()>),
    /// Write out what came before, then stop.
    Close,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct AuditTrail {
    queue: mpsc::Sender<Message>,
    refusals: Arc<Mutex<Refusals>>,
}

impl AuditTrail {
    /// Starts the writer, and with `retention_days` the purge beside it. The writer stops once
    /// the trail is closed (or every clone dropped) and the queue is written out; await the
    /// handle to know the trail is complete.
    pub fn start(
        store: Store,
        retention_days: Option<u32>,
    ) -> (AuditTrail, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let refusals = Arc::new(Mutex::new(Refusals::default()));
        let (stop_purge, stopped) = watch::channel(());
        let purge =
            retention_days.map(|days| tokio::spawn(purge_loop(store.clone(), days, stopped)));
        let writer = tokio::spawn({
            let refusals = refusals.clone();
            async move {
                write_loop(store, receiver, refusals).await;
                drop(stop_purge);
                if let Some(purge) = purge {
                    let _ = purge.await;
                }
            }
        });
        (AuditTrail { queue, refusals }, writer)
    }

    pub async fn record(&self, record: AuditRecord) {
        if self
            .queue
            .send(Message::Record(Box::new(row(record))))
            .await
            .is_err()
        {
            tracing::error!("the audit writer has stopped; an audit record was not written");
        }
    }

    /// Records, and waits until the record is stored: for writes, so that no write is answered
    /// before its audit record is durable (a process killed after the answer loses nothing).
    pub async fn record_stored(&self, record: AuditRecord) {
        self.record(record).await;
        self.flush().await;
    }

    /// Records a request refused for want of a valid token (HTTP 401), unless its address has
    /// had its share this second: then it is only counted, for a summary event.
    pub async fn record_unauthenticated(&self, record: AuditRecord) {
        let one_by_one = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(&record.network, Instant::now(), now_us());
        if one_by_one {
            self.record(record).await;
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

fn row(record: AuditRecord) -> audit_event::Model {
    let mut entities = record.entities;
    let left_out = entities.len().saturating_sub(MAX_ENTITIES);
    entities.truncate(MAX_ENTITIES);
    let mut detail = record.detail;
    if left_out > 0 {
        detail.push_str(&format!("; {left_out} more resources not listed"));
    }
    audit_event::Model {
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
    }
}

/// One event for the refusals counted from one address (or from the addresses past the
/// table's size) since the last summary.
fn summary_row(summary: Summary) -> audit_event::Model {
    let from = if summary.network.is_empty() {
        "from addresses past those counted apart".to_string()
    } else {
        "from this address".to_string()
    };
    row(AuditRecord {
        door: Door::Fhir,
        action: 'E',
        subtype: REFUSALS_SUBTYPE.into(),
        outcome: 4,
        agent: "unknown".into(),
        network: summary.network,
        entities: Vec::new(),
        patient: None,
        trace_id: String::new(),
        detail: format!(
            "HTTP 401 x{}: requests without a valid token {from} from {} to {}, past the share \
             recorded one by one",
            summary.count,
            instant_text(summary.first_us),
            instant_text(summary.last_us),
        ),
    })
}

fn summary_rows(refusals: &Mutex<Refusals>) -> Vec<audit_event::Model> {
    let summaries = refusals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take_summaries();
    summaries.into_iter().map(summary_row).collect()
}

enum Wake {
    Message(Option<Message>),
    Summarise,
}

async fn write_loop(
    store: Store,
    mut receiver: mpsc::Receiver<Message>,
    refusals: Arc<Mutex<Refusals>>,
) {
    let mut summaries = tokio::time::interval(SUMMARY_INTERVAL);
    summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = tokio::select! {
            message = receiver.recv() => Wake::Message(message),
            _ = summaries.tick() => Wake::Summarise,
        };
        let first = match wake {
            Wake::Message(Some(message)) => message,
            Wake::Message(None) => return,
            Wake::Summarise => {
                insert(&store, summary_rows(&refusals)).await;
                continue;
            }
        };
        let mut rows = Vec::new();
        let mut waiting = Vec::new();
        let mut closed = false;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(row) => rows.push(*row),
                Message::Flush(done) => waiting.push(done),
                Message::Close => closed = true,
            }
            if rows.len() < BATCH && !closed {
                next = receiver.try_recv().ok();
            }
        }
        // A flush or close covers the refusals counted so far too.
        if closed || !waiting.is_empty() {
            rows.extend(summary_rows(&refusals));
        }
        insert(&store, rows).await;
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

/// Inserts `rows`, retrying until the database takes them: kept, never dropped.
async fn insert(store: &Store, mut rows: Vec<audit_event::Model>) {
    let mut backoff = Duration::from_millis(100);
    while !rows.is_empty() {
        match store.audit_insert(rows.clone()).await {
            Ok(()) => rows.clear(),
            Err(err) => {
                tracing::warn!(error = %err, records = rows.len(), "writing the audit trail failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Deletes events older than `days` at start and every [`PURGE_INTERVAL`], until `stop`
/// closes.
async fn purge_loop(store: Store, days: u32, mut stop: watch::Receiver<()>) {
    let mut purges = tokio::time::interval(PURGE_INTERVAL);
    purges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retention_us = i64::from(days).saturating_mul(86_400 * 1_000_000);
    loop {
        tokio::select! {
            _ = purges.tick() => {}
            _ = stop.changed() => return,
        }
        let purged = purge_before(&store, now_us().saturating_sub(retention_us), &stop).await;
        if purged > 0 {
            tracing::info!(purged, days, "audit events past the retention deleted");
        }
    }
}

/// Deletes the events recorded before `before_us`, a chunk at a time, until none is left, a
/// statement fails, or `stop` closes; returns how many it deleted.
async fn purge_before(store: &Store, before_us: i64, stop: &watch::Receiver<()>) -> u64 {
    let mut purged = 0;
    loop {
        match store.audit_purge(before_us, PURGE_CHUNK).await {
            Ok(deleted) => {
                purged += deleted;
                if deleted < PURGE_CHUNK || stop.has_changed().is_err() {
                    return purged;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "purging the audit trail failed; trying again in an hour");
                return purged;
            }
        }
    }
}

/// The trace id of the current span, for the record (empty when there is none).
pub fn current_trace_id() -> String {
    crate::telemetry::span_traceparent(&tracing::Span::current())
        .and_then(|(traceparent, _)| traceparent.split('-').nth(1).map(str::to_string))
        .unwrap_or_default()
}
