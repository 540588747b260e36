//! The change-feed outbox: rows written in the same transaction as the changes they describe,
//! read back in commit order by the Kafka relay, marked when the broker has them, and pruned.
//!
//! A change is therefore published if and only if it was committed: a crash before the commit
//! leaves neither, a crash after it leaves a pending row that the next relay run publishes.

use std::collections::HashMap;

use hl7bridge_entities::{change_outbox, compartment};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use serde_json::json;

use super::write::{Outcome, Written};
use super::{instant_text, Store, StoreError};

pub type ChangeRow = change_outbox::Model;

/// The trace context a write ran under, recorded with its changes.
#[derive(Debug, Clone, Default)]
pub struct WriteTrace {
    pub traceparent: String,
    pub tracestate: String,
}

/// Outbox rows for the writes that changed something. `patients` names the compartment each
/// created or updated resource is in; the compartments of deleted resources are looked up here,
/// before their index rows go.
pub(super) async fn rows_for(
    txn: &DatabaseTransaction,
    written: &[Written],
    patients: &HashMap<(String, String), String>,
    traces: &[&WriteTrace],
    now: i64,
) -> Result<Vec<change_outbox::ActiveModel>, StoreError> {
    let deleted: Vec<&Written> = written
        .iter()
        .filter(|w| w.outcome == Outcome::Deleted)
        .collect();
    let deleted_patients = patients_of_deleted(txn, &deleted).await?;
    let rows = written
        .iter()
        .zip(traces)
        .filter(|(w, _)| {
            matches!(
                w.outcome,
                Outcome::Created | Outcome::Updated | Outcome::Deleted
            )
        })
        .map(|(w, trace)| {
            let key = (w.resource_type.clone(), w.id.clone());
            let patient = patients.get(&key).or_else(|| deleted_patients.get(&key));
            let partition_key = match patient {
                Some(patient) => format!("Patient/{patient}"),
                None => format!("{}/{}", w.resource_type, w.id),
            };
            change_outbox::ActiveModel {
                seq: ActiveValue::NotSet,
                partition_key: ActiveValue::Set(partition_key),
                resource_type: ActiveValue::Set(w.resource_type.clone()),
                resource_id: ActiveValue::Set(w.id.clone()),
                version_id: ActiveValue::Set(w.version_id),
                entry: ActiveValue::Set(history_entry(w)),
                traceparent: ActiveValue::Set(trace.traceparent.clone()),
                tracestate: ActiveValue::Set(trace.tracestate.clone()),
                created_us: ActiveValue::Set(now),
                published_us: ActiveValue::Set(None),
            }
        })
        .collect();
    Ok(rows)
}

/// The first (lowest) patient whose compartment held each deleted resource.
async fn patients_of_deleted(
    txn: &DatabaseTransaction,
    deleted: &[&Written],
) -> Result<HashMap<(String, String), String>, StoreError> {
    let mut out: HashMap<(String, String), String> = HashMap::new();
    let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
    for w in deleted {
        by_type.entry(&w.resource_type).or_default().push(&w.id);
    }
    for (resource_type, ids) in by_type {
        for chunk in ids.chunks(500) {
            let rows: Vec<(String, String)> = compartment::Entity::find()
                .select_only()
                .columns([
                    compartment::Column::ResourceId,
                    compartment::Column::PatientId,
                ])
                .filter(compartment::Column::ResourceType.eq(resource_type))
                .filter(compartment::Column::ResourceId.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(txn)
                .await?;
            for (id, patient) in rows {
                let slot = out
                    .entry((resource_type.to_string(), id))
                    .or_insert_with(|| patient.clone());
                if patient < *slot {
                    *slot = patient;
                }
            }
        }
    }
    Ok(out)
}

/// A history Bundle entry for one change, with the stored JSON spliced in unchanged.
fn history_entry(w: &Written) -> String {
    let (method, url, status) = match w.outcome {
        Outcome::Created => ("POST", w.resource_type.clone(), "201 Created"),
        Outcome::Deleted => (
            "DELETE",
            format!("{}/{}", w.resource_type, w.id),
            "204 No Content",
        ),
        _ => ("PUT", format!("{}/{}", w.resource_type, w.id), "200 OK"),
    };
    let request = json!({"method": method, "url": url});
    let response = json!({
        "status": status,
        "etag": format!("W/\"{}\"", w.version_id),
        "lastModified": instant_text(w.last_updated_us),
    });
    match &w.content {
        Some(resource) => {
            format!(r#"{{"resource":{resource},"request":{request},"response":{response}}}"#)
        }
        None => format!(r#"{{"request":{request},"response":{response}}}"#),
    }
}

/// The right to relay the outbox for one round. On PostgreSQL, where several nodes may share
/// one database, it is a transaction-scoped advisory lock: one relay at a time publishes, so
/// nodes do not each publish every change. SQLite is one node; its turn is always granted.
pub struct RelayTurn {
    txn: Option<DatabaseTransaction>,
}

/// The advisory lock key of the outbox relay (an arbitrary constant, fixed forever).
const RELAY_LOCK: i64 = 0x686c_3762_7269_6467;

impl RelayTurn {
    /// Ends the turn, releasing the lock.
    pub async fn finish(self) {
        if let Some(txn) = self.txn {
            let _ = txn.commit().await;
        }
    }
}

impl Store {
    /// This node's turn to relay, or `None` while another node holds it.
    pub async fn relay_turn(&self) -> Result<Option<RelayTurn>, StoreError> {
        if self.backend() != DbBackend::Postgres {
            return Ok(Some(RelayTurn { txn: None }));
        }
        let txn = self.db.begin().await?;
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1)",
            [RELAY_LOCK.into()],
        );
        let granted: bool = match txn.query_one_raw(statement).await? {
            Some(row) => row.try_get_by_index(0)?,
            None => false,
        };
        if granted {
            Ok(Some(RelayTurn { txn: Some(txn) }))
        } else {
            txn.rollback().await?;
            Ok(None)
        }
    }

    /// Unpublished changes, oldest first.
    pub async fn pending_changes(&self, limit: u64) -> Result<Vec<ChangeRow>, StoreError> {
        Ok(change_outbox::Entity::find()
            .filter(change_outbox::Column::PublishedUs.is_null())
            .order_by_asc(change_outbox::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Records that the broker acknowledged these changes.
    pub async fn mark_published(&self, seqs: &[i64], at_us: i64) -> Result<(), StoreError> {
        for chunk in seqs.chunks(500) {
            change_outbox::Entity::update_many()
                .col_expr(change_outbox::Column::PublishedUs, Expr::value(at_us))
                .filter(change_outbox::Column::Seq.is_in(chunk.iter().copied()))
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// Deletes changes published before `before_us`; returns how many went.
    pub async fn prune_published(&self, before_us: i64) -> Result<u64, StoreError> {
        let result = change_outbox::Entity::delete_many()
            .filter(change_outbox::Column::PublishedUs.lt(before_us))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// How many changes wait, and when the oldest of them was committed.
    pub async fn outbox_backlog(&self) -> Result<(i64, Option<i64>), StoreError> {
        let row: Option<(i64, Option<i64>)> = change_outbox::Entity::find()
            .select_only()
            .column_as(change_outbox::Column::Seq.count(), "depth")
            .column_as(change_outbox::Column::CreatedUs.min(), "oldest")
            .filter(change_outbox::Column::PublishedUs.is_null())
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(row.unwrap_or((0, None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_is_an_entry_without_a_resource() {
        let w = Written {
            resource_type: "Observation".into(),
            id: "o1".into(),
            version_id: 3,
            last_updated_us: 0,
            outcome: Outcome::Deleted,
            content: None,
        };
        let entry: serde_json::Value = serde_json::from_str(&history_entry(&w)).unwrap();
        assert_eq!(entry["request"]["method"], "DELETE");
        assert_eq!(entry["request"]["url"], "Observation/o1");
        assert_eq!(entry["response"]["etag"], "W/\"3\"");
        assert!(entry.get("resource").is_none());
    }

    #[test]
    fn a_created_resource_is_spliced_in_unchanged() {
        let w = Written {
            resource_type: "Patient".into(),
            id: "p".into(),
            version_id: 1,
            last_updated_us: 0,
            outcome: Outcome::Created,
            content: Some(r#"{"resourceType":"Patient","id":"p"}"#.into()),
        };
        let entry: serde_json::Value = serde_json::from_str(&history_entry(&w)).unwrap();
        assert_eq!(entry["resource"]["id"], "p");
        assert_eq!(entry["response"]["status"], "201 Created");
    }
}
