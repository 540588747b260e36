//! Group commit: writes from many callers (MLLP connections, Kafka records, FHIR requests)
//! committed together, one transaction and one fsync for many.
//!
//! Two lanes, each with its own committer task. The STAT lane's committer takes only STAT
//! writes, so a STAT result never waits behind a queue of routine ones; on SQLite, where there
//! is one writer, it waits at most for the routine group being committed. Within a lane, writes
//! are committed in arrival order: a group stops at the first write that touches a resource
//! already in the group, and that write starts the next one. Callers that must keep their own
//! order across lanes (one patient's messages) hold their own lock until their commit returns.
//!
//! On PostgreSQL a lane commits up to [`POSTGRES_GROUPS_IN_FLIGHT`] groups at once, each
//! touching resources no other group in flight touches: a write that touches one waits, and so
//! does everything queued behind it, so the order of writes to any one resource is still their
//! arrival order. While one group waits for its commit the next is already being written, which
//! is where stop-and-wait senders spent their time. SQLite has one writer: one group at a time.
//!
//! A caller is answered only after its group committed. A group that fails for a reason other
//! than an unreachable database is retried one write at a time, so one bad write (a failed
//! precondition, a constraint) fails only its own caller.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use sea_orm::{DbBackend, DbErr};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::write::{Lane, Part, WriteOp, Written};
use super::{Store, StoreError};
use crate::telemetry::metrics::metrics;
use crate::telemetry::{add_link, span_traceparent, TraceParent};

/// Writes queued per lane before callers wait to enqueue (each caller waits for its own
/// commit anyway, so this only bounds bursts).
const LANE_CAPACITY: usize = 4096;

/// Groups of one lane being committed at once on PostgreSQL.
pub const POSTGRES_GROUPS_IN_FLIGHT: usize = 2;

/// How much one group may carry. A single write larger than this is committed alone.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    pub max_writes: usize,
    pub max_ops: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            max_writes: 256,
            max_ops: 4096,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Written>, StoreError>>;

struct Job {
    part: Part,
    arrived: Instant,
    /// The caller's write span, linked from the group's span.
    caller: Option<TraceParent>,
    reply: Reply,
}

pub(super) struct Batcher {
    stat: mpsc::Sender<Job>,
    normal: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts one committer per lane on `store` (a store without a batcher of its own). They
    /// stop when the last handle to this batcher is dropped, after committing what is queued.
    pub(super) fn start(store: Store, limits: GroupLimits) -> Batcher {
        let (stat, stat_rx) = mpsc::channel(LANE_CAPACITY);
        let (normal, normal_rx) = mpsc::channel(LANE_CAPACITY);
        tokio::spawn(committer(store.clone(), Lane::Stat, stat_rx, limits));
        tokio::spawn(committer(store, Lane::Normal, normal_rx, limits));
        Batcher { stat, normal }
    }

    /// Queues the part and waits until it is committed (or has failed).
    pub(super) async fn submit(
        &self,
        part: Part,
        lane: Lane,
        caller: &tracing::Span,
    ) -> Result<Vec<Written>, StoreError> {
        let caller = span_traceparent(caller)
            .and_then(|(tp, ts)| TraceParent::from_carrier(Some(&tp), ts.as_deref()));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            part,
            arrived: Instant::now(),
            caller,
            reply,
        };
        let sender = match lane {
            Lane::Stat => &self.stat,
            Lane::Normal => &self.normal,
        };
        if sender.send(job).await.is_err() {
            return Err(unavailable("the server is shutting down"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(unavailable("the server is shutting down")))
    }
}

async fn committer(store: Store, lane: Lane, mut rx: mpsc::Receiver<Job>, limits: GroupLimits) {
    let in_flight = match store.backend() {
        DbBackend::Postgres => POSTGRES_GROUPS_IN_FLIGHT,
        _ => 1,
    };
    let mut queued: VecDeque<Job> = VecDeque::new();
    // The resources the groups being committed touch, and the groups themselves (each
    // answering with its keys when done).
    let mut held: HashSet<(String, String)> = HashSet::new();
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        while running.len() < in_flight {
            let group = take_group(&mut queued, limits, &held);
            if group.is_empty() {
                break;
            }
            let keys: Vec<(String, String)> = group
                .iter()
                .flat_map(|job| job.part.batch.ops.iter().map(op_key))
                .collect();
            held.extend(keys.iter().cloned());
            let store = &store;
            running.push(async move {
                commit_group(store, lane, group).await;
                keys
            });
        }
        metrics().lane_depth(lane.as_str(), queued.len());
        if !open && queued.is_empty() && running.is_empty() {
            return;
        }
        tokio::select! {
            Some(keys) = running.next(), if !running.is_empty() => {
                for key in keys {
                    held.remove(&key);
                }
            }
            job = rx.recv(), if open => match job {
                Some(job) => {
                    queued.push_back(job);
                    while let Ok(job) = rx.try_recv() {
                        queued.push_back(job);
                    }
                }
                None => open = false,
            },
        }
    }
}

/// The longest run from the front of the queue that fits the limits, touches no resource
/// twice and none that a group in flight (`held`) touches. At least one write, unless the
/// front of the queue touches a held resource (then none: it waits for that group).
fn take_group(
    queued: &mut VecDeque<Job>,
    limits: GroupLimits,
    held: &HashSet<(String, String)>,
) -> Vec<Job> {
    let mut group = Vec::new();
    let mut keys: HashSet<(String, String)> = HashSet::new();
    let mut ops = 0;
    while let Some(next) = queued.front() {
        let size = next.part.batch.ops.len();
        let fits = group.len() < limits.max_writes && ops + size <= limits.max_ops;
        let disjoint = next.part.batch.ops.iter().all(|op| {
            let key = op_key(op);
            !keys.contains(&key) && !held.contains(&key)
        });
        if !disjoint || (!group.is_empty() && !fits) {
            break;
        }
        let job = queued.pop_front().expect("front exists");
        keys.extend(job.part.batch.ops.iter().map(op_key));
        ops += size;
        group.push(job);
    }
    group
}

fn op_key(op: &WriteOp) -> (String, String) {
    match op {
        WriteOp::Upsert(w) => (w.resource_type.clone(), w.id.clone()),
        WriteOp::Delete { resource_type, id } => (resource_type.clone(), id.clone()),
    }
}

async fn commit_group(store: &Store, lane: Lane, group: Vec<Job>) {
    let span = tracing::info_span!(
        "group.commit",
        otel.name = "group commit",
        otel.kind = "internal",
        hl7bridge.lane = lane.as_str(),
        hl7bridge.group.writes = group.len(),
    );
    for job in &group {
        if let Some(caller) = &job.caller {
            add_link(&span, caller);
        }
    }
    let (parts, waiting): (Vec<Part>, Vec<(Instant, Reply)>) = group
        .into_iter()
        .map(|job| (job.part, (job.arrived, job.reply)))
        .unzip();
    metrics().group_commit(parts.len());
    let results = commit_isolated(store, parts).instrument(span).await;
    for ((arrived, reply), result) in waiting.into_iter().zip(results) {
        metrics().lane_wait(lane.as_str(), arrived.elapsed());
        // A caller that gave up (a closed connection) no longer waits; its write stands.
        let _ = reply.send(result);
    }
}

/// The parts' results: together when the group commits, one by one when it fails for a
/// reason other than the database being out of reach.
/// A failed precondition names its resource, so only its part is answered with it and the
/// others are committed together still: a stale `If-Match` does not break up the group.
async fn commit_isolated(
    store: &Store,
    mut parts: Vec<Part>,
) -> Vec<Result<Vec<Written>, StoreError>> {
    match store.commit_parts(&parts).await {
        Ok(written) => written.into_iter().map(Ok).collect(),
        Err(err) if parts.len() == 1 => vec![Err(err)],
        // Out of reach for one is out of reach for all: every caller may retry later.
        Err(StoreError::Unavailable(err)) => {
            let text = err.to_string();
            parts.iter().map(|_| Err(unavailable(&text))).collect()
        }
        Err(StoreError::PreconditionFailed { key, message })
            if precondition_of(&parts, &key).is_some() =>
        {
            let failed = precondition_of(&parts, &key).expect("checked");
            parts.remove(failed);
            let mut results = Box::pin(commit_isolated(store, parts)).await;
            results.insert(failed, Err(StoreError::PreconditionFailed { key, message }));
            results
        }
        Err(_) => {
            let mut results = Vec::with_capacity(parts.len());
            for part in &parts {
                let single = store.commit_parts(std::slice::from_ref(part)).await;
                results.push(single.map(|mut w| w.pop().unwrap_or_default()));
            }
            results
        }
    }
}

/// The part whose precondition on `key` (`Type/id`) failed.
fn precondition_of(parts: &[Part], key: &str) -> Option<usize> {
    parts.iter().position(|p| {
        p.batch
            .preconditions
            .iter()
            .any(|(t, id, _)| key.strip_prefix(t.as_str()) == Some(&format!("/{id}")))
    })
}

fn unavailable(reason: &str) -> StoreError {
    StoreError::Unavailable(DbErr::Custom(reason.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ResourceWrite, WriteBatch, WriteTrace};

    fn job(ids: &[&str]) -> Job {
        let ops = ids
            .iter()
            .map(|id| {
                WriteOp::Upsert(ResourceWrite {
                    resource_type: "Patient".into(),
                    id: id.to_string(),
                    content: serde_json::json!({"resourceType": "Patient"}),
                })
            })
            .collect();
        let batch = WriteBatch {
            ops,
            ..WriteBatch::default()
        };
        Job {
            part: Part {
                batch,
                trace: WriteTrace::default(),
            },
            arrived: Instant::now(),
            caller: None,
            reply: oneshot::channel().0,
        }
    }

    fn ids(group: &[Job]) -> Vec<String> {
        group
            .iter()
            .flat_map(|j| j.part.batch.ops.iter().map(|op| op_key(op).1))
            .collect()
    }

    #[test]
    fn a_group_stops_at_the_first_write_touching_a_resource_already_in_it() {
        let mut queued: VecDeque<Job> = [job(&["a"]), job(&["b"]), job(&["a", "c"]), job(&["d"])]
            .into_iter()
            .collect();
        let none = HashSet::new();
        let group = take_group(&mut queued, GroupLimits::default(), &none);
        assert_eq!(ids(&group), ["a", "b"]);
        let group = take_group(&mut queued, GroupLimits::default(), &none);
        assert_eq!(
            ids(&group),
            ["a", "c", "d"],
            "order is kept; d waited its turn"
        );
        assert!(queued.is_empty());
    }

    #[test]
    fn a_group_respects_its_limits_but_always_takes_one_write() {
        let limits = GroupLimits {
            max_writes: 2,
            max_ops: 3,
        };
        let mut queued: VecDeque<Job> = [
            job(&["a", "b", "c", "d"]),
            job(&["e"]),
            job(&["f"]),
            job(&["g", "h"]),
        ]
        .into_iter()
        .collect();
        let none = HashSet::new();
        assert_eq!(
            ids(&take_group(&mut queued, limits, &none)),
            ["a", "b", "c", "d"]
        );
        assert_eq!(ids(&take_group(&mut queued, limits, &none)), ["e", "f"]);
        assert_eq!(ids(&take_group(&mut queued, limits, &none)), ["g", "h"]);
    }

    #[test]
    fn a_write_touching_a_resource_in_flight_waits_and_so_does_everything_behind_it() {
        let held: HashSet<(String, String)> = [("Patient".to_string(), "b".to_string())].into();
        let mut queued: VecDeque<Job> = [job(&["a"]), job(&["b"]), job(&["c"])]
            .into_iter()
            .collect();
        let group = take_group(&mut queued, GroupLimits::default(), &held);
        assert_eq!(ids(&group), ["a"], "stops before b");
        let group = take_group(&mut queued, GroupLimits::default(), &held);
        assert!(
            group.is_empty(),
            "b waits for its group in flight; c waits behind b"
        );
        assert_eq!(queued.len(), 2);
        let group = take_group(&mut queued, GroupLimits::default(), &HashSet::new());
        assert_eq!(ids(&group), ["b", "c"]);
    }
}
