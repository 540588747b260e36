//! The read path. Every read is a bounded number of statements, whatever the result size, and
//! returns stored JSON text untouched.

use std::collections::{HashMap, HashSet};

use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};
use tracing::Instrument;

use hl7bridge_entities::hl7_message;

use crate::telemetry::metrics::metrics;

use super::compartment::SUPPORTING_TYPES;
use super::index::index_key;
use super::replica::Route;
use super::{record_server, Store, StoreError};

/// One stored resource: its current version and canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated_us: i64,
    pub deleted: bool,
    pub content: String,
}

/// Where a type or system history page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCursor {
    pub last_updated_us: i64,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
}

/// What one `$everything` page asks for.
#[derive(Debug, Clone, Default)]
pub struct EverythingPage {
    /// `_type`: only these types (members and includes).
    pub types: Option<Vec<String>>,
    /// `_since`: changed at or after this instant.
    pub since_us: Option<i64>,
    /// `start`/`end` as `[low, high)`, against each resource's clinical date.
    pub window: Option<(i64, i64)>,
    /// The (type, id) the previous page ended with (the Patient's type is `""`).
    pub after: Option<(String, String)>,
    pub limit: u64,
}

/// The date parameters that are a resource's clinical date for `start`/`end`.
const CLINICAL_DATE_PARAMS: &[&str] = &["date", "onset-date", "authoredon"];

/// Appends `$everything`'s member conditions (live; `_type`, `_since`, and the `start`/`end`
/// window) on the resource aliased `r` to a WHERE clause.
fn member_filter(page: &EverythingPage, r: &str, sql: &mut String, params: &mut Vec<Value>) {
    sql.push_str(&format!(" AND {r}.deleted = ?"));
    params.push(Value::from(false));
    if let Some(types) = &page.types {
        sql.push_str(&format!(
            " AND {r}.resource_type IN ({})",
            placeholders(types.len())
        ));
        params.extend(types.iter().map(|t| Value::from(t.as_str())));
    }
    if let Some(since) = page.since_us {
        sql.push_str(&format!(" AND {r}.last_updated_us >= ?"));
        params.push(since.into());
    }
    if let Some((low, high)) = page.window {
        // Resources without a clinical date are not filtered; the others must overlap.
        let dated = placeholders(CLINICAL_DATE_PARAMS.len());
        sql.push_str(&format!(
            " AND (NOT EXISTS (SELECT 1 FROM date_index d WHERE d.resource_type = {r}.resource_type \
             AND d.resource_id = {r}.id AND d.param IN ({dated})) \
             OR EXISTS (SELECT 1 FROM date_index d WHERE d.resource_type = {r}.resource_type \
             AND d.resource_id = {r}.id AND d.param IN ({dated}) AND d.low_us < ? AND d.high_us > ?))"
        ));
        params.extend(CLINICAL_DATE_PARAMS.iter().map(|p| Value::from(*p)));
        params.extend(CLINICAL_DATE_PARAMS.iter().map(|p| Value::from(*p)));
        params.extend([Value::from(high), Value::from(low)]);
    }
}

/// How a resource came into a `$everything` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupportingMode {
    Match,
    Include,
}

const COLUMNS: &str =
    "r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, r.content";
const MAX_IN: usize = 500;

impl Store {
    /// The current version, deleted or not; `None` when the id was never written.
    pub async fn read(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM resource r WHERE r.resource_type = ? AND r.id = ?");
        let params = vec![resource_type.into(), id.into()];
        let rows = self.query(select("resource", "read"), &sql, params).await?;
        rows.first().map(stored).transpose()
    }

    /// One version of a resource, as written then; `None` when that version never existed.
    pub async fn read_version(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> Result<Option<StoredResource>, StoreError> {
        let sql = "SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, \
                   r.content FROM resource_version r \
                   WHERE r.resource_type = ? AND r.id = ? AND r.version_id = ?";
        let params = vec![resource_type.into(), id.into(), version_id.into()];
        let rows = self
            .query(select("resource_version", "vread"), sql, params)
            .await?;
        rows.first().map(stored).transpose()
    }

    /// Versions of one resource, newest first, below `before` (a version id) when given, at most
    /// `limit` of them: one page of its history, by keyset, so pages stay stable while new
    /// versions are written.
    pub async fn history(
        &self,
        resource_type: &str,
        id: &str,
        before: Option<i64>,
        since_us: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let sql = "SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, \
                   r.content FROM resource_version r \
                   WHERE r.resource_type = ? AND r.id = ? AND r.version_id < ? \
                   AND r.last_updated_us >= ? ORDER BY r.version_id DESC LIMIT ?";
        let before = before.unwrap_or(i64::MAX);
        let params = vec![
            resource_type.into(),
            id.into(),
            before.into(),
            since_us.unwrap_or(i64::MIN).into(),
            i64::from(limit).into(),
        ];
        let rows = self
            .query(select("resource_version", "history"), sql, params)
            .await?;
        rows.iter().map(stored).collect()
    }

    /// Versions of every resource (of `resource_type`, when given), newest first, changed at or
    /// after `since_us`, after the `before` cursor: (lastUpdated, type, id, version) of the
    /// last version of the previous page.
    pub async fn history_all(
        &self,
        resource_type: Option<&str>,
        since_us: Option<i64>,
        before: Option<&HistoryCursor>,
        limit: u32,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let mut sql = String::from(
            "SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, \
             r.content FROM resource_version r WHERE 1 = 1",
        );
        let mut params: Vec<Value> = Vec::new();
        if let Some(t) = resource_type {
            sql.push_str(" AND r.resource_type = ?");
            params.push(t.into());
        }
        if let Some(since) = since_us {
            sql.push_str(" AND r.last_updated_us >= ?");
            params.push(since.into());
        }
        if let Some(c) = before {
            sql.push_str(
                " AND (r.last_updated_us < ? OR (r.last_updated_us = ? AND (r.resource_type > ? \
                 OR (r.resource_type = ? AND (r.id > ? OR (r.id = ? AND r.version_id > ?))))))",
            );
            params.extend([
                Value::from(c.last_updated_us),
                Value::from(c.last_updated_us),
                Value::from(c.resource_type.as_str()),
                Value::from(c.resource_type.as_str()),
                Value::from(c.id.as_str()),
                Value::from(c.id.as_str()),
                Value::from(c.version_id),
            ]);
        }
        sql.push_str(
            " ORDER BY r.last_updated_us DESC, r.resource_type, r.id, r.version_id LIMIT ?",
        );
        params.push(i64::from(limit).into());
        let rows = self
            .query(select("resource_version", "history page"), &sql, params)
            .await?;
        rows.iter().map(stored).collect()
    }

    /// Earlier receipts of a message with this sender and control id: (payload hash, ACK code,
    /// ACK), newest first, at most ten.
    pub async fn earlier_receipts(
        &self,
        sending_application: &str,
        sending_facility: &str,
        control_id: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let sql = "SELECT m.payload_hash, m.ack_code, m.ack FROM hl7_message m \
                   WHERE m.sending_application = ? AND m.sending_facility = ? AND m.control_id = ? \
                   ORDER BY m.received_at_us DESC LIMIT 10";
        let params = vec![
            sending_application.into(),
            sending_facility.into(),
            control_id.into(),
        ];
        let rows = self
            .query(select("hl7_message", "earlier receipts"), sql, params)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get_by_index(0)?,
                    r.try_get_by_index(1)?,
                    r.try_get_by_index(2)?,
                ))
            })
            .collect()
    }

    /// Ids of live resources of `resource_type` with an identifier of that value (and system,
    /// when given). Several lookups at once, one statement per chunk.
    pub async fn ids_by_identifier(
        &self,
        lookups: &[IdentifierLookup],
    ) -> Result<HashMap<IdentifierLookup, Vec<String>>, StoreError> {
        // Rows are matched to lookups through an index on (type, value), so the work is linear
        // in rows plus lookups, however many lookups share a value.
        // Values are compared as the index holds them (long ones by their bounded key).
        let keys: Vec<String> = lookups
            .iter()
            .map(|l| index_key(&l.value).into_owned())
            .collect();
        let mut by_key: HashMap<(&str, &str), Vec<&IdentifierLookup>> = HashMap::new();
        for (lookup, key) in lookups.iter().zip(&keys) {
            by_key
                .entry((&lookup.resource_type, key))
                .or_default()
                .push(lookup);
        }
        let types: Vec<&str> = unique(lookups.iter().map(|l| l.resource_type.as_str()));
        let values: Vec<&str> = unique(keys.iter().map(String::as_str));
        let mut found: HashMap<IdentifierLookup, Vec<String>> = HashMap::new();
        let mut seen: HashSet<(&IdentifierLookup, String)> = HashSet::new();
        for chunk in values.chunks(MAX_IN) {
            let sql = format!(
                "SELECT t.resource_type, t.resource_id, t.system, t.value FROM token_index t \
                 WHERE t.param = 'identifier' AND t.value IN ({}) AND t.resource_type IN ({})",
                placeholders(chunk.len()),
                placeholders(types.len())
            );
            let mut params: Vec<Value> = chunk.iter().map(|v| Value::from(*v)).collect();
            params.extend(types.iter().map(|t| Value::from(*t)));
            let what = select("token_index", "identifier lookup");
            for row in self.query(what, &sql, params).await? {
                let (t, id, system, value) = token_row(&row)?;
                let candidates = by_key
                    .get(&(t.as_str(), value.as_str()))
                    .into_iter()
                    .flatten();
                for lookup in candidates.filter(|l| l.matches(&t, &system, &value)) {
                    if seen.insert((lookup, id.clone())) {
                        found.entry((*lookup).clone()).or_default().push(id.clone());
                    }
                }
            }
        }
        Ok(found)
    }

    /// Live resources of one type by id, in one statement per chunk.
    pub async fn read_many(
        &self,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IN) {
            let sql = format!(
                "SELECT {COLUMNS} FROM resource r WHERE r.resource_type = ? AND r.deleted = ? \
                 AND r.id IN ({}) ORDER BY r.id",
                placeholders(chunk.len())
            );
            let mut params = vec![Value::from(resource_type), Value::from(false)];
            params.extend(chunk.iter().map(|id| Value::from(id.as_str())));
            for row in self
                .query(select("resource", "read many"), &sql, params)
                .await?
            {
                out.push(stored(&row)?);
            }
        }
        Ok(out)
    }

    /// Ids of live Patients in id order, from `from` (itself included when `inclusive`), at
    /// most `limit`: the patients type-level `$everything` walks.
    pub async fn patient_ids(
        &self,
        from: Option<&str>,
        inclusive: bool,
        limit: u64,
        filter: &EverythingPage,
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = format!(
            "SELECT r.id FROM resource r WHERE r.resource_type = 'Patient' \
             AND r.deleted = ? AND r.id {} ?",
            if inclusive { ">=" } else { ">" }
        );
        let mut params = vec![Value::from(false), Value::from(from.unwrap_or(""))];
        // With a filter, only patients with something to show: one statement finds them,
        // rather than one `$everything` query per patient that turns up nothing.
        if filter.types.is_some() || filter.since_us.is_some() || filter.window.is_some() {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM compartment c JOIN resource m \
                 ON m.resource_type = c.resource_type AND m.id = c.resource_id \
                 WHERE c.patient_id = r.id",
            );
            member_filter(filter, "m", &mut sql, &mut params);
            sql.push(')');
        }
        sql.push_str(" ORDER BY r.id LIMIT ?");
        params.push(Value::from(limit as i64));
        let rows = self
            .query(select("resource", "patient ids"), &sql, params)
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get_by_index::<String>(0)?))
            .collect()
    }

    /// One page of the patient's compartment, then the supporting resources its members
    /// reference, each once. The Patient comes first on the first page; the rest in (type, id)
    /// order after the cursor. Two statements per page, whatever the size.
    /// Also says whether more members follow the page.
    pub async fn everything(
        &self,
        patient_id: &str,
        page: &EverythingPage,
    ) -> Result<(Vec<(SupportingMode, StoredResource)>, bool), StoreError> {
        let mut members = self.compartment_members(patient_id, page).await?;
        // One more than the page was fetched to learn whether another page follows; it takes
        // no part in this page's includes.
        let more = members.len() as u64 > page.limit;
        members.truncate(page.limit as usize);
        let seen: HashSet<(String, String)> = members
            .iter()
            .map(|r| (r.resource_type.clone(), r.id.clone()))
            .collect();
        let wanted = |t: &str| {
            page.types
                .as_ref()
                .is_none_or(|types| types.iter().any(|w| w == t))
        };
        let supporting: Vec<&str> = SUPPORTING_TYPES
            .iter()
            .copied()
            .filter(|t| wanted(t))
            .collect();
        let keys: Vec<(&str, &str)> = members
            .iter()
            .map(|r| (r.resource_type.as_str(), r.id.as_str()))
            .collect();
        // The whole compartment on one page: its references are found by patient in one join.
        let whole = page.after.is_none()
            && !more
            && page.since_us.is_none()
            && page.window.is_none()
            && page.types.is_none();
        let included = if whole {
            self.supporting_by_patient(patient_id).await?
        } else {
            self.supporting(&keys, &supporting).await?
        };
        let mut out: Vec<_> = members
            .into_iter()
            .map(|r| (SupportingMode::Match, r))
            .collect();
        for r in included {
            if !seen.contains(&(r.resource_type.clone(), r.id.clone())) {
                out.push((SupportingMode::Include, r));
            }
        }
        Ok((out, more))
    }

    async fn compartment_members(
        &self,
        patient_id: &str,
        page: &EverythingPage,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let mut sql = format!(
            "SELECT {COLUMNS} FROM compartment c JOIN resource r \
             ON r.resource_type = c.resource_type AND r.id = c.resource_id \
             WHERE c.patient_id = ?"
        );
        let mut params = vec![Value::from(patient_id)];
        member_filter(page, "r", &mut sql, &mut params);
        // The Patient itself first: it sorts as the empty type.
        let order =
            "CASE WHEN r.resource_type = 'Patient' AND r.id = ? THEN '' ELSE r.resource_type END";
        if let Some((t, id)) = &page.after {
            sql.push_str(&format!(
                " AND (({order}) > ? OR (({order}) = ? AND r.id > ?))"
            ));
            params.extend([
                Value::from(patient_id),
                Value::from(t.as_str()),
                Value::from(patient_id),
                Value::from(t.as_str()),
                Value::from(id.as_str()),
            ]);
        }
        sql.push_str(&format!(" ORDER BY {order}, r.id LIMIT {}", page.limit + 1));
        params.push(Value::from(patient_id));
        let what = select("compartment", "$everything members");
        let rows = self.query(what, &sql, params).await?;
        rows.iter().map(stored).collect()
    }

    /// The supporting resources that any member of the patient's compartment references.
    async fn supporting_by_patient(
        &self,
        patient_id: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM resource r JOIN (SELECT DISTINCT rr.target_type, rr.target_id \
             FROM compartment c JOIN resource_ref rr \
             ON rr.source_type = c.resource_type AND rr.source_id = c.resource_id \
             WHERE c.patient_id = ? AND rr.target_type IN ({})) t \
             ON r.resource_type = t.target_type AND r.id = t.target_id \
             WHERE r.deleted = ? ORDER BY r.resource_type, r.id",
            placeholders(SUPPORTING_TYPES.len())
        );
        let mut params = vec![Value::from(patient_id)];
        params.extend(SUPPORTING_TYPES.iter().map(|t| Value::from(*t)));
        params.push(false.into());
        let what = select("resource_ref", "$everything includes");
        let rows = self.query(what, &sql, params).await?;
        rows.iter().map(stored).collect()
    }

    /// The resources of `types` that `members` reference.
    async fn supporting(
        &self,
        members: &[(&str, &str)],
        types: &[&str],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let mut out = Vec::new();
        if types.is_empty() || members.is_empty() {
            return Ok(out);
        }
        let mut seen = HashSet::new();
        for chunk in members.chunks(MAX_IN / 2) {
            let pairs = vec!["(rr.source_type = ? AND rr.source_id = ?)"; chunk.len()].join(" OR ");
            let sql = format!(
                "SELECT {COLUMNS} FROM resource r JOIN (SELECT DISTINCT rr.target_type, rr.target_id \
                 FROM resource_ref rr WHERE ({pairs}) AND rr.target_type IN ({})) t \
                 ON r.resource_type = t.target_type AND r.id = t.target_id \
                 WHERE r.deleted = ? ORDER BY r.resource_type, r.id",
                placeholders(types.len())
            );
            let mut params = Vec::new();
            for (t, id) in chunk {
                params.extend([Value::from(*t), Value::from(*id)]);
            }
            params.extend(types.iter().map(|t| Value::from(*t)));
            params.push(false.into());
            let what = select("resource_ref", "$everything includes");
            for row in self.query(what, &sql, params).await? {
                let r = stored(&row)?;
                if seen.insert((r.resource_type.clone(), r.id.clone())) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Stored HL7v2 messages, newest first, without their content; only those answered
    /// `ack_code` when given.
    pub async fn messages(
        &self,
        ack_code: Option<&str>,
        limit: u64,
    ) -> Result<Vec<hl7_message::Model>, StoreError> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
        let mut query = hl7_message::Entity::find()
            .order_by_desc(hl7_message::Column::ReceivedAtUs)
            .limit(limit);
        if let Some(code) = ack_code {
            query = query.filter(hl7_message::Column::AckCode.eq(code));
        }
        let mut rows = query.all(&self.db).await?;
        for row in &mut rows {
            row.raw.clear();
            row.ack.clear();
        }
        Ok(rows)
    }

    /// The raw bytes of one stored HL7v2 message.
    pub async fn message_raw(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        use sea_orm::EntityTrait;
        let row = hl7_message::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await?;
        Ok(row.map(|m| m.raw))
    }

    /// Runs one SELECT written with `?` placeholders on whichever backend this store has, in a
    /// database span of its own: on the replica when this handle may read from it and the
    /// replica may serve (see `Replica::route`), on the primary otherwise. A statement that
    /// fails on the replica is run again on the primary.
    pub(super) async fn query(
        &self,
        select: Select,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<QueryResult>, StoreError> {
        let backend = self.backend();
        let statement = Statement::from_sql_and_values(backend, dialect(backend, sql), params);
        let span = self.db_span("SELECT", select.collection, select.summary);
        let rows = self
            .routed(statement, &span)
            .instrument(span.clone())
            .await?;
        span.record("hl7bridge.db.rows", rows.len());
        Ok(rows)
    }

    async fn routed(
        &self,
        statement: Statement,
        span: &tracing::Span,
    ) -> Result<Vec<QueryResult>, StoreError> {
        if let Some(replica) = self.replica.as_ref().filter(|_| self.replica_reads) {
            let fallback = match replica.route().await {
                Route::Replica => {
                    record_server(span, Some(&replica.server));
                    match replica.db.query_all_raw(statement.clone()).await {
                        Ok(rows) => {
                            metrics().replica_read("replica");
                            return Ok(rows);
                        }
                        Err(err) => replica.read_failed(&err),
                    }
                }
                Route::Primary(fallback) => fallback,
            };
            span.record("hl7bridge.db.replica_fallback", fallback.as_str());
            metrics().replica_fallback(fallback.as_str());
            metrics().replica_read("primary");
        }
        record_server(span, self.server.as_deref());
        Ok(self.db.query_all_raw(statement).await?)
    }
}

/// What a read statement is, for its span: the table it reads and a short summary.
#[derive(Debug, Clone, Copy)]
pub(super) struct Select {
    collection: &'static str,
    summary: &'static str,
}

pub(super) const fn select(collection: &'static str, summary: &'static str) -> Select {
    Select {
        collection,
        summary,
    }
}

/// One `identifier=[system|]value` lookup, restricted to a type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentifierLookup {
    pub resource_type: String,
    /// `None` (`value`): any system. `Some("")` (`|value`): identifiers without a system.
    pub system: Option<String>,
    pub value: String,
}

impl IdentifierLookup {
    /// Whether an index row (system and value as the index holds them) answers this lookup.
    fn matches(&self, t: &str, system: &str, value: &str) -> bool {
        self.resource_type == t
            && index_key(&self.value) == value
            && self
                .system
                .as_deref()
                .is_none_or(|s| index_key(s) == system)
    }
}

pub(super) fn stored(row: &QueryResult) -> Result<StoredResource, StoreError> {
    Ok(StoredResource {
        resource_type: row.try_get_by_index(0)?,
        id: row.try_get_by_index(1)?,
        version_id: row.try_get_by_index(2)?,
        last_updated_us: row.try_get_by_index(3)?,
        deleted: row.try_get_by_index(4)?,
        content: row.try_get_by_index(5)?,
    })
}

fn token_row(row: &QueryResult) -> Result<(String, String, String, String), StoreError> {
    Ok((
        row.try_get_by_index(0)?,
        row.try_get_by_index(1)?,
        row.try_get_by_index(2)?,
        row.try_get_by_index(3)?,
    ))
}

fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items.filter(|i| seen.insert(*i)).collect()
}

pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// PostgreSQL numbers its placeholders; SQLite takes `?` as written. The SQL here holds no
/// string literals containing `?`, so a plain rewrite is safe.
fn dialect(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        let sql = "a = ? AND b IN (?, ?)";
        assert_eq!(
            dialect(DbBackend::Postgres, sql),
            "a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(dialect(DbBackend::Sqlite, sql), sql);
    }

    #[test]
    fn an_identifier_lookup_without_system_matches_any_system() {
        let lookup = IdentifierLookup {
            resource_type: "Patient".into(),
            system: None,
            value: "7".into(),
        };
        assert!(lookup.matches("Patient", "urn:a", "7"));
        assert!(!lookup.matches("Organization", "urn:a", "7"));
    }
}
