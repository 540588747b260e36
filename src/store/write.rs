//! The write path: one transaction per batch, every statement a bulk statement.
//!
//! A batch is planned in memory first (versions, meta, index rows) against the current rows,
//! which are read in one query per type and chunk; then it is applied with multi-row
//! `INSERT … ON CONFLICT` statements. On PostgreSQL the current rows are locked while the batch
//! is planned, and a batch that loses a race on a brand-new resource is retried.

use std::collections::{HashMap, HashSet};

use hl7bridge_entities::token_index;
use hl7bridge_entities::{
    change_outbox, compartment, date_index, hl7_message, index_backlog, resource, resource_ref,
    resource_version, string_index,
};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    IntoActiveModel, QueryFilter, QuerySelect, SqlErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::telemetry::metrics::metrics;

use super::cache;
use super::index::{extract, extract_links, index_key, index_prefix, IndexRows};
use super::outbox::{self, WriteTrace};
use super::{instant_text, now_us, Store, StoreError};
use crate::telemetry::span_traceparent;

pub type Hl7MessageRow = hl7_message::Model;

/// A resource to create or update under a known id. `content` is canonical JSON; any
/// `meta.versionId` and `meta.lastUpdated` in it are replaced.
#[derive(Debug, Clone)]
pub struct ResourceWrite {
    pub resource_type: String,
    pub id: String,
    pub content: Value,
}

#[derive(Debug, Clone)]
pub enum WriteOp {
    Upsert(ResourceWrite),
    Delete { resource_type: String, id: String },
}

impl WriteOp {
    /// The (type, id) this operation writes.
    pub fn key(&self) -> (&str, &str) {
        match self {
            WriteOp::Upsert(w) => (&w.resource_type, &w.id),
            WriteOp::Delete { resource_type, id } => (resource_type, id),
        }
    }
}

/// Everything that must become durable together.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
    pub hl7_messages: Vec<Hl7MessageRow>,
    /// Conditions on the current rows, checked inside the transaction (after the rows are
    /// locked on PostgreSQL): one that fails aborts the whole batch.
    pub preconditions: Vec<(String, String, Precondition)>,
}

/// What a write requires of the resource's current state (`If-Match`, `If-None-Match: *`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The resource exists, is not deleted, and is at this version.
    Version(i64),
    /// The resource does not exist (or is deleted).
    Absent,
    /// The resource exists and is not deleted, at any version: the write may not create it.
    Present,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    /// Identical content was written again; the version did not change.
    Unchanged,
    Deleted,
    /// A delete of something absent or already deleted: nothing was written.
    NothingToDelete,
}

#[derive(Debug, Clone)]
pub struct Written {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated_us: i64,
    pub outcome: Outcome,
    /// The stored JSON, for creates, updates and writes that changed nothing.
    pub content: Option<String>,
}

/// What the database holds now for one key.
struct Current {
    version_id: i64,
    last_updated_us: i64,
    deleted: bool,
    content_hash: String,
}

type Key = (String, String);

/// The rows one batch writes.
#[derive(Default)]
struct Plan {
    resources: Vec<resource::Model>,
    versions: Vec<resource_version::Model>,
    /// Keys whose old index rows must go.
    reindexed: Vec<Key>,
    compartments: Vec<compartment::Model>,
    refs: Vec<resource_ref::Model>,
    tokens: Vec<token_index::Model>,
    dates: Vec<date_index::Model>,
    strings: Vec<string_index::Model>,
    /// Resources whose search values are left to the reindex.
    backlog: Vec<index_backlog::Model>,
    written: Vec<Written>,
    /// The first patient compartment of each created or updated resource (change-feed key).
    patients: HashMap<Key, String>,
    /// Every patient compartment the written resources are in now (cache invalidation).
    all_patients: HashSet<String>,
}

const MAX_ATTEMPTS: usize = 3;
/// Stays far under SQLite's 32,766 and PostgreSQL's 65,535 bind parameters.
pub(super) const MAX_BINDS: usize = 16_000;
const MAX_ROWS: usize = 500;

/// The lane a write waits in for its group commit: STAT results go before routine work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Stat,
    Normal,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Stat => "stat",
            Lane::Normal => "normal",
        }
    }
}

/// One caller's share of a transaction: its batch and the trace it was written under.
pub(super) struct Part {
    pub batch: WriteBatch,
    pub trace: WriteTrace,
}

impl Store {
    /// Writes the batch in one transaction (with other callers' batches when group commit is
    /// on) and reports what happened to each op, in order. Returns only after the commit.
    pub async fn write(&self, batch: WriteBatch) -> Result<Vec<Written>, StoreError> {
        self.write_in(batch, Lane::Normal).await
    }

    /// [`Store::write`], waiting in `lane`.
    pub async fn write_in(
        &self,
        batch: WriteBatch,
        lane: Lane,
    ) -> Result<Vec<Written>, StoreError> {
        reject_duplicates(&batch.ops)?;
        // The caller's context (an HTTP request, an HL7v2 message), not the database span's:
        // the change feed continues the trace of whoever made the change.
        let trace = span_traceparent(&tracing::Span::current())
            .map(|(traceparent, tracestate)| WriteTrace {
                traceparent,
                tracestate: tracestate.unwrap_or_default(),
            })
            .unwrap_or_default();
        let span = self.db_span("UPSERT", "resource", "write batch");
        super::record_server(&span, self.server.as_deref());
        span.record(
            "hl7bridge.db.rows",
            batch.ops.len() + batch.hl7_messages.len(),
        );
        let part = Part { batch, trace };
        match &self.batcher {
            Some(batcher) => {
                let caller = span.clone();
                batcher.submit(part, lane, &caller).instrument(span).await
            }
            None => {
                let parts = std::slice::from_ref(&part);
                let written = self.commit_parts(parts).instrument(span).await?;
                Ok(written.into_iter().next().unwrap_or_default())
            }
        }
    }

    /// Commits several callers' batches in one transaction, retrying a batch that lost a race
    /// on a brand-new resource; returns each part's results, in order.
    pub(super) async fn commit_parts(
        &self,
        parts: &[Part],
    ) -> Result<Vec<Vec<Written>>, StoreError> {
        let _gate = match self.backend() {
            DbBackend::Sqlite => Some(self.write_gate.lock().await),
            _ => None,
        };
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let result = self.write_once(parts).await;
            metrics().db_write(result.is_ok(), started.elapsed());
            match result {
                Err(StoreError::Database(err))
                    if attempt < MAX_ATTEMPTS
                        && matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
                {
                    tracing::debug!(attempt, "write lost a race on a new resource; retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn write_once(&self, parts: &[Part]) -> Result<Vec<Vec<Written>>, StoreError> {
        let ops: Vec<&WriteOp> = parts.iter().flat_map(|p| &p.batch.ops).collect();
        reject_duplicates(ops.iter().copied())?;
        // SQLite: take the write lock at BEGIN, waiting for it under the busy timeout. A deferred
        // transaction that reads first cannot wait when another connection (another process
        // on the same file) commits in between; it fails with SQLITE_BUSY_SNAPSHOT instead.
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        let txn = self.db.begin_with_options(options).await?;
        let current = load_current(&txn, &ops).await?;
        for part in parts {
            check_preconditions(&part.batch.preconditions, &current)?;
        }
        let now = now_us();
        let plan = plan(&ops, &current, now, self.defer_search_index);
        // Before `apply`: the keys of deleted resources come from index rows it removes.
        let changes = if self.change_feed {
            let traces: Vec<&WriteTrace> = parts
                .iter()
                .flat_map(|p| std::iter::repeat_n(&p.trace, p.batch.ops.len()))
                .collect();
            outbox::rows_for(&txn, &plan.written, &plan.patients, &traces, now).await?
        } else {
            Vec::new()
        };
        let changed = !changes.is_empty();
        // Also before `apply`, for the compartments the changed resources were in.
        let invalidated = match &self.cache {
            Some(_) => Some(cache::changed_by(&txn, &plan.written, &plan.all_patients).await?),
            None => None,
        };
        if let Some(invalidated) = invalidated.as_ref().filter(|c| !c.is_empty()) {
            if txn.get_database_backend() == DbBackend::Postgres {
                cache::notify(&txn, invalidated).await?;
            }
        }
        apply(&txn, &plan).await?;
        insert_chunked(&txn, changes, 9, |rows| {
            change_outbox::Entity::insert_many(rows)
        })
        .await?;
        let messages: Vec<Hl7MessageRow> = parts
            .iter()
            .flat_map(|p| p.batch.hl7_messages.iter().cloned())
            .collect();
        insert_chunked(&txn, messages, 12, |rows| {
            hl7_message::Entity::insert_many(rows)
        })
        .await?;
        txn.commit().await?;
        // Before anyone is answered: their next read must not go to a replica without this.
        if let Some(replica) = &self.replica {
            replica.committed(&self.db).await;
        }
        if changed {
            self.changes.notify_one();
        }
        if let (Some(cache), Some(invalidated)) = (&self.cache, &invalidated) {
            cache.invalidate(invalidated);
            if let Some(shared) = &self.shared {
                shared.invalidate(invalidated).await;
            }
        }
        if self.backend() == DbBackend::Postgres {
            self.written_rows(plan.index_rows());
        }
        let mut written = plan.written.into_iter();
        Ok(parts
            .iter()
            .map(|p| written.by_ref().take(p.batch.ops.len()).collect())
            .collect())
    }
}

impl Plan {
    /// Rows this plan adds to the tables `$everything` and search plan their queries on.
    fn index_rows(&self) -> usize {
        self.resources.len()
            + self.compartments.len()
            + self.refs.len()
            + self.tokens.len()
            + self.dates.len()
            + self.strings.len()
    }
}

fn reject_duplicates<'a>(ops: impl IntoIterator<Item = &'a WriteOp>) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    for op in ops {
        let (t, id) = op.key();
        if !seen.insert((t, id)) {
            return Err(StoreError::DuplicateInBatch(format!("{t}/{id}")));
        }
    }
    Ok(())
}

async fn load_current(
    txn: &DatabaseTransaction,
    ops: &[&WriteOp],
) -> Result<HashMap<Key, Current>, StoreError> {
    let lock = txn.get_database_backend() == DbBackend::Postgres;
    let mut current = HashMap::new();
    for (resource_type, chunk) in chunks_by_type(ops.iter().map(|op| op.key())) {
        use resource::Column as C;
        let columns = [
            C::Id,
            C::VersionId,
            C::LastUpdatedUs,
            C::Deleted,
            C::ContentHash,
        ];
        let mut query = rows_of(resource_type, &chunk, columns);
        if lock {
            query = query.lock_exclusive();
        }
        let rows: Vec<(String, i64, i64, bool, String)> = query.into_tuple().all(txn).await?;
        for (id, version_id, last_updated_us, deleted, content_hash) in rows {
            let key = (resource_type.to_string(), id);
            let row = Current {
                version_id,
                last_updated_us,
                deleted,
                content_hash,
            };
            current.insert(key, row);
        }
    }
    Ok(current)
}

fn check_preconditions(
    preconditions: &[(String, String, Precondition)],
    current: &HashMap<Key, Current>,
) -> Result<(), StoreError> {
    for (t, id, condition) in preconditions {
        let live = current.get(&(t.clone(), id.clone())).filter(|c| !c.deleted);
        let holds = match (condition, live) {
            (Precondition::Version(v), Some(c)) => c.version_id == *v,
            (Precondition::Version(_), None) => false,
            (Precondition::Absent, found) => found.is_none(),
            (Precondition::Present, found) => found.is_some(),
        };
        if !holds {
            let now = live.map_or("absent".to_string(), |c| {
                format!("at version {}", c.version_id)
            });
            return Err(StoreError::PreconditionFailed {
                key: format!("{t}/{id}"),
                message: format!("{t}/{id} is {now}, which the request's precondition excludes"),
            });
        }
    }
    Ok(())
}

fn plan(ops: &[&WriteOp], current: &HashMap<Key, Current>, now: i64, defer: bool) -> Plan {
    let mut plan = Plan::default();
    for &op in ops {
        let (t, id) = op.key();
        let existing = current.get(&(t.to_string(), id.to_string()));
        match op {
            WriteOp::Upsert(w) => plan_upsert(&mut plan, w, existing, now, defer),
            WriteOp::Delete { .. } => plan_delete(&mut plan, t, id, existing, now),
        }
    }
    plan
}

fn plan_upsert(
    plan: &mut Plan,
    w: &ResourceWrite,
    existing: Option<&Current>,
    now: i64,
    defer: bool,
) {
    let body = without_version_meta(w.content.clone());
    let hash = sha256_hex(body.to_string().as_bytes());
    let live = existing.filter(|c| !c.deleted);
    if let Some(c) = live.filter(|c| c.content_hash == hash) {
        // What the database holds, for an answer that returns the resource.
        let stored = with_version_meta(body, c.version_id, &instant_text(c.last_updated_us));
        plan.written.push(written(
            w,
            c.version_id,
            c.last_updated_us,
            Outcome::Unchanged,
            Some(stored.to_string()),
        ));
        return;
    }
    let version_id = existing.map_or(1, |c| c.version_id + 1);
    let content = with_version_meta(body, version_id, &instant_text(now)).to_string();
    let outcome = if live.is_some() {
        Outcome::Updated
    } else {
        Outcome::Created
    };
    if existing.is_some() {
        plan.reindexed.push((w.resource_type.clone(), w.id.clone()));
    }
    let index = if defer {
        plan.backlog.push(index_backlog::Model {
            resource_type: w.resource_type.clone(),
            resource_id: w.id.clone(),
        });
        extract_links(&w.resource_type, &w.id, &w.content)
    } else {
        extract(&w.resource_type, &w.id, &w.content)
    };
    plan.all_patients.extend(index.patients.iter().cloned());
    if let Some(patient) = index.patients.first() {
        let key = (w.resource_type.clone(), w.id.clone());
        plan.patients.insert(key, patient.clone());
    }
    add_index_rows(plan, &w.resource_type, &w.id, index);
    plan.resources.push(resource::Model {
        resource_type: w.resource_type.clone(),
        id: w.id.clone(),
        version_id,
        last_updated_us: now,
        deleted: false,
        content_hash: hash,
        content: content.clone(),
    });
    plan.versions.push(version_row(
        &w.resource_type,
        &w.id,
        version_id,
        now,
        &content,
    ));
    plan.written
        .push(written(w, version_id, now, outcome, Some(content)));
}

fn plan_delete(plan: &mut Plan, t: &str, id: &str, existing: Option<&Current>, now: i64) {
    let Some(c) = existing.filter(|c| !c.deleted) else {
        let (version_id, at) = existing.map_or((0, 0), |c| (c.version_id, c.last_updated_us));
        plan.written.push(Written {
            resource_type: t.to_string(),
            id: id.to_string(),
            version_id,
            last_updated_us: at,
            outcome: Outcome::NothingToDelete,
            content: None,
        });
        return;
    };
    let version_id = c.version_id + 1;
    plan.reindexed.push((t.to_string(), id.to_string()));
    plan.resources.push(resource::Model {
        resource_type: t.to_string(),
        id: id.to_string(),
        version_id,
        last_updated_us: now,
        deleted: true,
        content_hash: String::new(),
        content: String::new(),
    });
    plan.versions.push(version_row(t, id, version_id, now, ""));
    plan.written.push(Written {
        resource_type: t.to_string(),
        id: id.to_string(),
        version_id,
        last_updated_us: now,
        outcome: Outcome::Deleted,
        content: None,
    });
}

fn written(
    w: &ResourceWrite,
    v: i64,
    at: i64,
    outcome: Outcome,
    content: Option<String>,
) -> Written {
    Written {
        resource_type: w.resource_type.clone(),
        id: w.id.clone(),
        version_id: v,
        last_updated_us: at,
        outcome,
        content,
    }
}

fn version_row(t: &str, id: &str, v: i64, at: i64, content: &str) -> resource_version::Model {
    resource_version::Model {
        resource_type: t.to_string(),
        id: id.to_string(),
        version_id: v,
        last_updated_us: at,
        deleted: content.is_empty(),
        content: content.to_string(),
    }
}

fn add_index_rows(plan: &mut Plan, t: &str, id: &str, index: IndexRows) {
    for patient_id in index.patients {
        plan.compartments.push(compartment::Model {
            patient_id,
            resource_type: t.to_string(),
            resource_id: id.to_string(),
        });
    }
    for (path, target_type, target_id) in index.refs {
        plan.refs.push(resource_ref::Model {
            source_type: t.to_string(),
            source_id: id.to_string(),
            path,
            target_type,
            target_id,
        });
    }
    let identifiers = index
        .identifiers
        .into_iter()
        .map(|(system, value)| ("identifier".to_string(), system, value));
    for (param, system, value) in identifiers.chain(index.tokens) {
        plan.tokens.push(token_index::Model {
            resource_type: t.to_string(),
            resource_id: id.to_string(),
            param,
            system: index_key(&system).into_owned(),
            value: index_key(&value).into_owned(),
        });
    }
    for (param, low_us, high_us) in index.dates {
        plan.dates.push(date_index::Model {
            resource_type: t.to_string(),
            resource_id: id.to_string(),
            param,
            low_us,
            high_us,
        });
    }
    for (param, value) in index.strings {
        plan.strings.push(string_index::Model {
            resource_type: t.to_string(),
            resource_id: id.to_string(),
            param,
            normalized: index_prefix(&normalize(&value)).to_string(),
            value: index_key(&value).into_owned(),
        });
    }
}

/// How string search compares: case- and accent-insensitively (Latin letters with diacritics
/// fold to their base letter; other scripts are lowercased).
pub fn normalize(text: &str) -> String {
    text.to_lowercase().chars().map(fold_accent).collect()
}

fn fold_accent(c: char) -> char {
    match c {
        'à'..='å' | 'ā' | 'ă' | 'ą' => 'a',
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => 'c',
        'ď' | 'đ' => 'd',
        'è'..='ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => 'e',
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => 'g',
        'ĥ' | 'ħ' => 'h',
        'ì'..='ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => 'i',
        'ĵ' => 'j',
        'ķ' => 'k',
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => 'l',
        'ñ' | 'ń' | 'ņ' | 'ň' => 'n',
        'ò'..='ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => 'o',
        'ŕ' | 'ŗ' | 'ř' => 'r',
        'ś' | 'ŝ' | 'ş' | 'š' => 's',
        'ţ' | 'ť' | 'ŧ' => 't',
        'ù'..='ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => 'u',
        'ŵ' => 'w',
        'ý' | 'ÿ' | 'ŷ' => 'y',
        'ź' | 'ż' | 'ž' => 'z',
        other => other,
    }
}

async fn apply(txn: &DatabaseTransaction, plan: &Plan) -> Result<(), StoreError> {
    upsert_resources(txn, plan.resources.clone()).await?;
    insert_chunked(txn, plan.versions.clone(), 6, |rows| {
        resource_version::Entity::insert_many(rows)
    })
    .await?;
    remove_index_rows(txn, &plan.reindexed).await?;
    apply_index(txn, plan).await
}

/// Inserts the plan's index rows (and backlog entries); rows already present are kept.
async fn apply_index(txn: &DatabaseTransaction, plan: &Plan) -> Result<(), StoreError> {
    insert_chunked(txn, plan.compartments.clone(), 3, |rows| {
        compartment::Entity::insert_many(rows)
            .on_conflict(do_nothing_on_pk::<compartment::Entity>())
    })
    .await?;
    insert_chunked(txn, plan.refs.clone(), 5, |rows| {
        resource_ref::Entity::insert_many(rows)
            .on_conflict(do_nothing_on_pk::<resource_ref::Entity>())
    })
    .await?;
    insert_chunked(txn, plan.tokens.clone(), 5, |rows| {
        token_index::Entity::insert_many(rows)
            .on_conflict(do_nothing_on_pk::<token_index::Entity>())
    })
    .await?;
    insert_chunked(txn, plan.dates.clone(), 5, |rows| {
        date_index::Entity::insert_many(rows).on_conflict(do_nothing_on_pk::<date_index::Entity>())
    })
    .await?;
    insert_chunked(txn, plan.strings.clone(), 5, |rows| {
        string_index::Entity::insert_many(rows)
            .on_conflict(do_nothing_on_pk::<string_index::Entity>())
    })
    .await?;
    insert_chunked(txn, plan.backlog.clone(), 2, |rows| {
        index_backlog::Entity::insert_many(rows)
            .on_conflict(do_nothing_on_pk::<index_backlog::Entity>())
    })
    .await
}

async fn upsert_resources(
    txn: &DatabaseTransaction,
    rows: Vec<resource::Model>,
) -> Result<(), StoreError> {
    use resource::Column as C;
    insert_chunked(txn, rows, 7, |rows| {
        let on_conflict = OnConflict::columns([C::ResourceType, C::Id])
            .update_columns([
                C::VersionId,
                C::LastUpdatedUs,
                C::Deleted,
                C::ContentHash,
                C::Content,
            ])
            .to_owned();
        resource::Entity::insert_many(rows).on_conflict(on_conflict)
    })
    .await
}

fn do_nothing_on_pk<E: EntityTrait>() -> OnConflict {
    use sea_orm::{Iterable, PrimaryKeyToColumn};
    let columns: Vec<E::Column> = E::PrimaryKey::iter().map(|k| k.into_column()).collect();
    OnConflict::columns(columns).do_nothing().to_owned()
}

/// Inserts `rows` with as many rows per statement as the bind limit allows.
async fn insert_chunked<M, A, F>(
    txn: &DatabaseTransaction,
    rows: Vec<M>,
    columns: usize,
    statement: F,
) -> Result<(), StoreError>
where
    M: IntoActiveModel<A>,
    A: ActiveModelTrait,
    F: Fn(Vec<A>) -> sea_orm::InsertMany<A>,
{
    let per_statement = (MAX_BINDS / columns).min(MAX_ROWS);
    let mut rows = rows
        .into_iter()
        .map(IntoActiveModel::into_active_model)
        .peekable();
    while rows.peek().is_some() {
        let chunk: Vec<A> = rows.by_ref().take(per_statement).collect();
        statement(chunk).exec_without_returning(txn).await?;
    }
    Ok(())
}

/// Replaces every index row of the resources `keys` name with rows computed from their current
/// content (none for a deleted or absent one), for the reindex. On PostgreSQL a resource a
/// writer holds locked is skipped, not waited for: the reindex must never deadlock with the
/// writes it runs beside. Returns the keys it replaced.
pub(super) async fn rebuild_index(
    txn: &DatabaseTransaction,
    keys: &[Key],
) -> Result<Vec<Key>, StoreError> {
    let postgres = txn.get_database_backend() == DbBackend::Postgres;
    let mut plan = Plan::default();
    let mut done: Vec<Key> = Vec::new();
    for (t, chunk) in chunks_by_type(keys.iter().map(|(t, id)| (t.as_str(), id.as_str()))) {
        use resource::Column as C;
        let mut query = rows_of(t, &chunk, [C::Id, C::Deleted, C::Content]);
        if postgres {
            query = query.lock_with_behavior(
                sea_orm::sea_query::LockType::Update,
                sea_orm::sea_query::LockBehavior::SkipLocked,
            );
        }
        let rows: Vec<(String, bool, String)> = query.into_tuple().all(txn).await?;
        let mut present = HashSet::new();
        for (id, deleted, content) in rows {
            present.insert(id.clone());
            if !deleted {
                // Stored content was written by this server; unreadable text is indexed
                // as nothing rather than stopping the reindex of everything else.
                let value: Value = serde_json::from_str(&content).unwrap_or(Value::Null);
                add_index_rows(&mut plan, t, &id, extract(t, &id, &value));
            }
            done.push((t.to_string(), id));
        }
        // Absent ones are done too; ones locked by a writer (PostgreSQL) wait their turn.
        if !postgres {
            done.extend(
                chunk
                    .iter()
                    .filter(|id| !present.contains(**id))
                    .map(|id| (t.to_string(), id.to_string())),
            );
        } else {
            let absent: Vec<&str> = chunk
                .iter()
                .copied()
                .filter(|id| !present.contains(*id))
                .collect();
            if !absent.is_empty() {
                let exists: Vec<String> = rows_of(t, &absent, [resource::Column::Id])
                    .into_tuple()
                    .all(txn)
                    .await?;
                let exists: HashSet<String> = exists.into_iter().collect();
                done.extend(
                    absent
                        .into_iter()
                        .filter(|id| !exists.contains(*id))
                        .map(|id| (t.to_string(), id.to_string())),
                );
            }
        }
    }
    remove_index_rows(txn, &done).await?;
    apply_index(txn, &plan).await?;
    Ok(done)
}

async fn remove_index_rows(txn: &DatabaseTransaction, keys: &[Key]) -> Result<(), StoreError> {
    for (t, chunk) in chunks_by_type(keys.iter().map(|(t, id)| (t.as_str(), id.as_str()))) {
        let chunk = chunk.as_slice();
        use compartment::Column as C;
        use resource_ref::Column as R;
        delete_rows::<compartment::Entity>(txn, C::ResourceType, C::ResourceId, t, chunk).await?;
        delete_rows::<resource_ref::Entity>(txn, R::SourceType, R::SourceId, t, chunk).await?;
        use date_index::Column as D;
        use string_index::Column as S;
        use token_index::Column as T;
        delete_rows::<token_index::Entity>(txn, T::ResourceType, T::ResourceId, t, chunk).await?;
        delete_rows::<date_index::Entity>(txn, D::ResourceType, D::ResourceId, t, chunk).await?;
        delete_rows::<string_index::Entity>(txn, S::ResourceType, S::ResourceId, t, chunk).await?;
    }
    Ok(())
}

/// Keys grouped by resource type, each group cut into chunks that fit one statement.
fn chunks_by_type<'k>(
    keys: impl Iterator<Item = (&'k str, &'k str)>,
) -> Vec<(&'k str, Vec<&'k str>)> {
    let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
    for (t, id) in keys {
        by_type.entry(t).or_default().push(id);
    }
    by_type
        .into_iter()
        .flat_map(|(t, ids)| {
            ids.chunks(MAX_ROWS)
                .map(|chunk| (t, chunk.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A select of `columns` from the `resource` rows of one type's `ids`.
fn rows_of(
    resource_type: &str,
    ids: &[&str],
    columns: impl IntoIterator<Item = resource::Column>,
) -> sea_orm::Select<resource::Entity> {
    resource::Entity::find()
        .select_only()
        .columns(columns)
        .filter(resource::Column::ResourceType.eq(resource_type))
        .filter(resource::Column::Id.is_in(ids.iter().copied()))
}

/// Deletes one index's rows for resources `ids` of type `t`.
async fn delete_rows<E: EntityTrait>(
    txn: &DatabaseTransaction,
    type_column: E::Column,
    id_column: E::Column,
    t: &str,
    ids: &[&str],
) -> Result<(), StoreError> {
    E::delete_many()
        .filter(type_column.eq(t))
        .filter(id_column.is_in(ids.iter().copied()))
        .exec(txn)
        .await?;
    Ok(())
}

/// The content with `meta.versionId` and `meta.lastUpdated` removed (and `meta` too if that
/// empties it): what the version hash is computed over.
fn without_version_meta(mut content: Value) -> Value {
    if let Some(obj) = content.as_object_mut() {
        if let Some(Value::Object(meta)) = obj.get_mut("meta") {
            meta.shift_remove("versionId");
            meta.shift_remove("lastUpdated");
            if meta.is_empty() {
                obj.shift_remove("meta");
            }
        }
    }
    content
}

/// Puts `meta.versionId` and `meta.lastUpdated` in, keeping the canonical element order
/// (`resourceType`, `id`, `meta` first; within `meta`, `id` and `extension` before them).
fn with_version_meta(content: Value, version_id: i64, last_updated: &str) -> Value {
    let Value::Object(mut obj) = content else {
        return content;
    };
    let old_meta = match obj.shift_remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut meta = Map::new();
    let mut rest = old_meta.into_iter().peekable();
    while let Some((key, _)) = rest.peek() {
        if key != "id" && key != "extension" {
            break;
        }
        let (key, value) = rest.next().expect("peeked");
        meta.insert(key, value);
    }
    meta.insert("versionId".into(), Value::String(version_id.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(last_updated.to_string()),
    );
    meta.extend(rest);
    let mut out = Map::new();
    for key in ["resourceType", "id"] {
        if let Some(v) = obj.shift_remove(key) {
            out.insert(key.to_string(), v);
        }
    }
    out.insert("meta".into(), Value::Object(meta));
    out.extend(obj);
    Value::Object(out)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of raw bytes as lowercase hex (for raw HL7v2 payloads).
pub fn payload_hash(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(rows: &[resource::Model]) -> std::collections::BTreeSet<Key> {
        rows.iter()
            .map(|r| (r.resource_type.clone(), r.id.clone()))
            .collect()
    }

    fn upsert(t: &str, id: &str, content: Value) -> WriteOp {
        WriteOp::Upsert(ResourceWrite {
            resource_type: t.into(),
            id: id.into(),
            content,
        })
    }

    #[test]
    fn meta_goes_after_id_and_keeps_other_meta_elements() {
        let c = json!({"resourceType": "Patient", "id": "p", "gender": "male",
            "meta": {"profile": ["http://x"], "versionId": "9"}});
        let out = with_version_meta(without_version_meta(c), 2, "2024-01-01T00:00:00Z");
        assert_eq!(
            out.to_string(),
            r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"2","lastUpdated":"2024-01-01T00:00:00Z","profile":["http://x"]},"gender":"male"}"#
        );
    }

    #[test]
    fn writing_identical_content_again_keeps_the_version() {
        let content = json!({"resourceType": "Patient", "id": "p"});
        let hash = sha256_hex(without_version_meta(content.clone()).to_string().as_bytes());
        let current = HashMap::from([(
            ("Patient".to_string(), "p".to_string()),
            Current {
                version_id: 3,
                last_updated_us: 5,
                deleted: false,
                content_hash: hash,
            },
        )]);
        let plan = plan(&[&upsert("Patient", "p", content)], &current, 10, false);
        assert_eq!(plan.written[0].outcome, Outcome::Unchanged);
        assert_eq!(plan.written[0].version_id, 3);
        assert!(plan.resources.is_empty());
    }

    #[test]
    fn changed_content_gets_the_next_version_and_is_reindexed() {
        let current = HashMap::from([(
            ("Patient".to_string(), "p".to_string()),
            Current {
                version_id: 3,
                last_updated_us: 5,
                deleted: false,
                content_hash: "x".into(),
            },
        )]);
        let content = json!({"resourceType": "Patient", "id": "p", "gender": "female"});
        let plan = plan(&[&upsert("Patient", "p", content)], &current, 10, false);
        assert_eq!(plan.written[0].outcome, Outcome::Updated);
        assert_eq!(plan.written[0].version_id, 4);
        assert_eq!(plan.reindexed.len(), 1);
        assert_eq!(keys(&plan.resources).len(), 1);
    }

    #[test]
    fn deleting_something_absent_writes_nothing() {
        let op = WriteOp::Delete {
            resource_type: "Patient".into(),
            id: "p".into(),
        };
        let plan = plan(&[&op], &HashMap::new(), 10, false);
        assert_eq!(plan.written[0].outcome, Outcome::NothingToDelete);
        assert!(plan.resources.is_empty());
    }

    #[test]
    fn a_batch_naming_one_resource_twice_is_refused() {
        let ops = [
            upsert("Patient", "p", json!({})),
            upsert("Patient", "p", json!({})),
        ];
        assert!(matches!(
            reject_duplicates(&ops),
            Err(StoreError::DuplicateInBatch(_))
        ));
    }
}
