//! The audit trail's table: bulk inserts from the audit writer, and the listing that
//! `GET /AuditEvent` pages through (newest first).

use hl7bridge_entities::audit_event;
use sea_orm::{EntityTrait, Value};

use super::read::{placeholders, select};
use super::{Store, StoreError};

/// What an audit listing is restricted to; every field narrows it.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub ids: Vec<String>,
    pub patient: Option<String>,
    /// `[low, high)` in µs since the epoch.
    pub recorded: Vec<(i64, i64)>,
    pub agent: Option<String>,
    pub actions: Vec<String>,
    pub outcomes: Vec<i32>,
    pub subtypes: Vec<String>,
    pub sources: Vec<String>,
    /// A `Type/id` the event concerns.
    pub entity: Option<String>,
    /// (recorded µs, id) of the last event of the previous page.
    pub before: Option<(i64, String)>,
    pub limit: u64,
}

impl Store {
    /// Inserts audit rows in one transaction, chunked under the bind-parameter limit.
    pub async fn audit_insert(&self, rows: Vec<audit_event::Model>) -> Result<(), StoreError> {
        use sea_orm::{IntoActiveModel, TransactionTrait};
        const COLUMNS: usize = 12;
        let per_statement = (super::write::MAX_BINDS / COLUMNS).min(500);
        let txn = self.db.begin().await?;
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<audit_event::ActiveModel> = rows
                .by_ref()
                .take(per_statement)
                .map(IntoActiveModel::into_active_model)
                .collect();
            audit_event::Entity::insert_many(chunk)
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Deletes up to `max` of the oldest events recorded before `before_us`; returns how many
    /// it deleted (fewer than `max`: none older are left).
    pub async fn audit_purge(&self, before_us: i64, max: u64) -> Result<u64, StoreError> {
        use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect};
        let ids: Vec<String> = audit_event::Entity::find()
            .select_only()
            .column(audit_event::Column::Id)
            .filter(audit_event::Column::RecordedUs.lt(before_us))
            .order_by_asc(audit_event::Column::RecordedUs)
            .limit(max)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let deleted = audit_event::Entity::delete_many()
            .filter(audit_event::Column::Id.is_in(ids))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected)
    }

    /// One page of audit events, newest first.
    pub async fn audit_list(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<audit_event::Model>, StoreError> {
        let mut sql = String::from(
            "SELECT id, recorded_us, source, action, subtype, outcome, agent, network, entities, \
             patient_id, trace_id, detail FROM audit_event WHERE 1 = 1",
        );
        let mut params: Vec<Value> = Vec::new();
        let mut any_of = |sql: &mut String, column: &str, values: Vec<Value>| {
            if !values.is_empty() {
                sql.push_str(&format!(
                    " AND {column} IN ({})",
                    placeholders(values.len())
                ));
                params.extend(values);
            }
        };
        any_of(
            &mut sql,
            "id",
            filter.ids.iter().map(|v| Value::from(v.as_str())).collect(),
        );
        any_of(
            &mut sql,
            "action",
            filter
                .actions
                .iter()
                .map(|v| Value::from(v.as_str()))
                .collect(),
        );
        any_of(
            &mut sql,
            "outcome",
            filter.outcomes.iter().map(|v| Value::from(*v)).collect(),
        );
        any_of(
            &mut sql,
            "subtype",
            filter
                .subtypes
                .iter()
                .map(|v| Value::from(v.as_str()))
                .collect(),
        );
        any_of(
            &mut sql,
            "source",
            filter
                .sources
                .iter()
                .map(|v| Value::from(v.as_str()))
                .collect(),
        );
        if let Some(patient) = &filter.patient {
            sql.push_str(" AND patient_id = ?");
            params.push(Value::from(patient.as_str()));
        }
        if let Some(agent) = &filter.agent {
            sql.push_str(" AND agent = ?");
            params.push(Value::from(agent.as_str()));
        }
        if let Some(entity) = &filter.entity {
            // The entities column is a JSON array of quoted references; a reference holds
            // no quote, so the quoted form matches whole references only. LIKE's wildcards
            // are escaped.
            let escaped = entity
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            sql.push_str(" AND entities LIKE ? ESCAPE '\\'");
            params.push(Value::from(format!("%\"{escaped}\"%")));
        }
        for (low, high) in &filter.recorded {
            sql.push_str(" AND recorded_us >= ? AND recorded_us < ?");
            params.extend([Value::from(*low), Value::from(*high)]);
        }
        if let Some((at, id)) = &filter.before {
            sql.push_str(" AND (recorded_us < ? OR (recorded_us = ? AND id < ?))");
            params.extend([Value::from(*at), Value::from(*at), Value::from(id.as_str())]);
        }
        sql.push_str(&format!(
            " ORDER BY recorded_us DESC, id DESC LIMIT {}",
            filter.limit
        ));
        let rows = self
            .query(select("audit_event", "audit listing"), &sql, params)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(audit_event::Model {
                    id: row.try_get_by_index(0)?,
                    recorded_us: row.try_get_by_index(1)?,
                    source: row.try_get_by_index(2)?,
                    action: row.try_get_by_index(3)?,
                    subtype: row.try_get_by_index(4)?,
                    outcome: row.try_get_by_index(5)?,
                    agent: row.try_get_by_index(6)?,
                    network: row.try_get_by_index(7)?,
                    entities: row.try_get_by_index(8)?,
                    patient_id: row.try_get_by_index(9)?,
                    trace_id: row.try_get_by_index(10)?,
                    detail: row.try_get_by_index(11)?,
                })
            })
            .collect()
    }
}
