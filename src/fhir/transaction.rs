//! `POST /` with a `transaction` or `batch` Bundle.
//!
//! Processing runs in three passes over the entries:
//! 1. read each entry's request (method, URL, resource), check the resource against the R4
//!    model, and collect every match URL the bundle needs — conditional creates, updates and
//!    deletes, and conditional references — so the store answers them before planning (all
//!    identifier lookups in one batched query);
//! 2. decide each entry's target id (new, matched, or given) and map every `fullUrl`
//!    (`urn:uuid:` placeholders included) to `Type/id`; entries that failed step 1 take no
//!    part, so nothing can match or reference them. A match URL naming an earlier entry's
//!    `fullUrl` is answered once that entry's target is known (see [`plan`]);
//! 3. rewrite references and write everything that passed, in one database transaction per
//!    round (see [`split_writes`]).
//!
//! A transaction fails as a whole at the first bad entry (the error names it); a batch answers
//! each entry on its own.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use actix_web::http::StatusCode;
use actix_web::ResponseError;
use serde_json::{json, Map, Value};

use super::access;
use super::bundle::{meta, BundleTrace};
use super::criteria::{parse_conditional_reference, Match, MatchUrl, SearchMatch};
use super::error::FhirError;
use super::id::{is_resource_type, is_valid_id};
use super::references::{rewrite_known, rewrite_references, visit_references};
use crate::auth::{Access, Permission, Reach};
use crate::store::index::{extract, identifiers, IndexRows};
use crate::store::{
    instant_text, Criterion, IdentifierLookup, Outcome, Precondition, ResourceWrite, Store,
    StoreError, WriteBatch, WriteOp, Written,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transaction,
    Batch,
}

/// What one entry asks for, as read from its `request`.
#[derive(Clone)]
enum Request {
    Create {
        resource: Value,
        if_none_exist: Option<MatchUrl>,
    },
    Update {
        resource: Value,
        target: Target,
    },
    Delete {
        resource_type: String,
        target: Target,
    },
}

#[derive(Clone)]
enum Target {
    Id(String),
    Conditional(MatchUrl),
}

/// An entry once its target is known.
enum Planned {
    Write(WriteOp),
    /// A conditional create that matched an existing resource: nothing to write.
    Existing {
        resource_type: String,
        id: String,
    },
}

#[derive(Clone)]
struct Entry {
    full_url: Option<String>,
    request: Request,
    /// `ifMatch` / `ifNoneMatch: *` of a PUT or DELETE, checked inside the write.
    precondition: Option<Precondition>,
    /// The id this entry's resource gets if it creates one.
    new_id: String,
}

/// How the ids of created resources are chosen.
pub enum NewIds {
    /// A random UUID each (HTTP requests: every request is a new intent).
    Random,
    /// A UUID derived from this name and the entry's position, so that processing the same
    /// input again (a Kafka record redelivered after a crash) creates the same resources
    /// instead of duplicates.
    Derived(String),
}

impl NewIds {
    /// The id the entry at `index` gets if it creates a resource.
    pub fn for_entry(&self, index: usize) -> String {
        match self {
            NewIds::Random => uuid::Uuid::new_v4().to_string(),
            NewIds::Derived(name) => {
                let name = format!("{name}#{index}");
                uuid::Uuid::new_v5(&NEW_ID_NAMESPACE, name.as_bytes()).to_string()
            }
        }
    }
}

/// The UUIDv5 namespace of derived resource ids (a random UUID fixed here, never to change).
const NEW_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5f1c_2b0e_8d4a_4c4f_9b7e_1a2d_3c4b_5e6f);

/// What the store answered for a Bundle's match URLs (only matches the caller may use).
#[derive(Default)]
struct Answers {
    /// Identifier lookups; a lookup that matched nothing maps to no ids.
    identifiers: HashMap<IdentifierLookup, Vec<String>>,
    /// Other searches, by their resolved match URL.
    searches: HashMap<String, Vec<String>>,
}

impl Answers {
    /// The store's answer to `m`, if it was asked.
    fn get(&self, m: &Match) -> Option<&Vec<String>> {
        match m {
            Match::Identifier(lookup) => self.identifiers.get(lookup),
            Match::Search(search) => self.searches.get(&search.key),
        }
    }
}

/// Matching while a Bundle is planned: what the store answered, less the resources that
/// entries planned so far change, plus the resources of this Bundle. Local identifiers are
/// indexed by (type, value), so a bundle of thousands of conditional entries stays linear.
struct Matches<'a> {
    answers: &'a Answers,
    /// (type, value) → (system, id)
    local: HashMap<(String, String), Vec<(String, String)>>,
    /// This Bundle's resources by type, with their index rows: kept only when some match URL
    /// asks more than an identifier.
    local_rows: Option<HashMap<String, Vec<(String, IndexRows)>>>,
    /// Resources written or deleted by entries planned so far: what the store holds of them
    /// is about to change, so only their new content can match.
    changed: HashSet<(String, String)>,
    /// Of those, the deleted ones. In a transaction a condition may not match one: both
    /// entries would name the same resource, which R4 forbids.
    deleted: HashSet<(String, String)>,
    kind: Kind,
    /// `fullUrl` → `Type/id`: entries planned so far, and entries whose target needs no match.
    targets: HashMap<String, String>,
    /// Every `fullUrl` of the Bundle's readable entries.
    full_urls: HashSet<String>,
    /// Matches the store has not answered yet (their resolved form was not known before).
    pending: RefCell<Vec<Match>>,
    /// Resources conditional updates create under an id of their own choosing (the body's,
    /// or `_id`'s) because nothing matched: they must still be absent when written, or a
    /// plain PUT racing with this Bundle would be overwritten.
    must_be_absent: HashSet<String>,
    now_us: i64,
}

impl<'a> Matches<'a> {
    fn new(answers: &'a Answers, rows: bool, kind: Kind) -> Self {
        Matches {
            answers,
            local: HashMap::new(),
            local_rows: rows.then(HashMap::new),
            changed: HashSet::new(),
            deleted: HashSet::new(),
            kind,
            targets: HashMap::new(),
            full_urls: HashSet::new(),
            pending: RefCell::new(Vec::new()),
            must_be_absent: HashSet::new(),
            now_us: chrono::Utc::now().timestamp_micros(),
        }
    }

    /// Records what an entry writes, for the entries planned after it.
    fn add_local(&mut self, w: &ResourceWrite) {
        for (system, value) in identifiers(&w.content) {
            let key = (w.resource_type.clone(), value);
            self.local
                .entry(key)
                .or_default()
                .push((system, w.id.clone()));
        }
        if let Some(by_type) = &mut self.local_rows {
            let mut content = w.content.clone();
            rewrite_known(&mut content, &self.targets);
            let rows = extract(&w.resource_type, &w.id, &content);
            let list = by_type.entry(w.resource_type.clone()).or_default();
            list.retain(|(id, _)| *id != w.id);
            list.push((w.id.clone(), rows));
        }
    }

    /// The ids `url` matches, its `fullUrl` values replaced by their targets.
    fn matched(&self, url: &MatchUrl) -> Result<Vec<String>, FhirError> {
        let resolved = url.resolve(&|value| self.placeholder(value))?;
        if self.kind == Kind::Transaction {
            let stored = self.answers.get(&resolved);
            let t = resolved.resource_type();
            let gone = stored
                .into_iter()
                .flatten()
                .find(|id| self.deleted.contains(&(t.to_string(), id.to_string())));
            if let Some(id) = gone {
                return Err(FhirError::invalid(format!(
                    "the condition matches {t}/{id}, which an earlier entry of this transaction \
                     deletes: one resource may be the target of one entry only"
                )));
            }
        }
        Ok(self.ids(&resolved))
    }

    fn placeholder(&self, value: &str) -> Result<Option<String>, FhirError> {
        if let Some(target) = self.targets.get(value) {
            return Ok(Some(target.clone()));
        }
        if self.full_urls.contains(value) {
            return Err(FhirError::invalid(format!(
                "{value} is the fullUrl of a conditional entry whose resource is not known before \
                 this condition is matched: this entry itself, or one after it (put that one \
                 first)"
            )));
        }
        if value.starts_with("urn:uuid:") || value.starts_with("urn:oid:") {
            return Err(FhirError::invalid(format!(
                "{value} names no entry of this Bundle"
            )));
        }
        Ok(None)
    }

    fn ids(&self, m: &Match) -> Vec<String> {
        let stored = self.answers.get(m);
        if stored.is_none() {
            self.pending.borrow_mut().push(m.clone());
        }
        let resource_type = m.resource_type().to_string();
        let unchanged = |id: &&String| {
            !self
                .changed
                .contains(&(resource_type.clone(), id.to_string()))
        };
        let mut ids: Vec<String> = stored
            .into_iter()
            .flatten()
            .filter(unchanged)
            .cloned()
            .collect();
        for id in self.local_ids(m) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Whether a live `resource_type/id` exists, in the store or written by an entry planned
    /// so far (asked of the store like a match on `_id`).
    fn exists(&self, resource_type: &str, id: &str) -> bool {
        let by_id = Match::Search(SearchMatch {
            resource_type: resource_type.to_string(),
            key: format!("{resource_type}?_id={id}"),
            criteria: vec![Criterion::Ids(vec![id.to_string()])],
        });
        !self.ids(&by_id).is_empty()
    }

    fn local_ids(&self, m: &Match) -> Vec<String> {
        match m {
            Match::Identifier(lookup) => {
                let key = (lookup.resource_type.clone(), lookup.value.clone());
                let found = self.local.get(&key).into_iter().flatten();
                found
                    .filter(|(system, _)| lookup.system.as_deref().is_none_or(|s| s == system))
                    .map(|(_, id)| id.clone())
                    .collect()
            }
            Match::Search(search) => {
                let rows = self.local_rows.as_ref();
                let candidates = rows.and_then(|by_type| by_type.get(&search.resource_type));
                let meets = |(id, rows): &&(String, IndexRows)| {
                    search
                        .criteria
                        .iter()
                        .all(|c| c.holds(id, rows, self.now_us))
                };
                let found = candidates.into_iter().flatten().filter(meets);
                found.map(|(id, _)| id.clone()).collect()
            }
        }
    }
}

/// Planning's outcome: every entry planned (and the keys that must be absent when written),
/// or the matches the store must answer first.
enum Planning {
    Done(Vec<Result<Planned, FhirError>>, HashSet<String>),
    Ask(Vec<Match>),
}

/// Plans targets and finishes resources. In a batch, an entry that fails only while its
/// references are resolved must not stay a target or a match for the others: planning is
/// redone without it until no entry newly fails (each round removes at least one entry).
fn plan_until_stable(
    kind: Kind,
    mut entries: Vec<Result<Entry, FhirError>>,
    answers: &Answers,
    rows: bool,
) -> Planning {
    loop {
        let mut matches = Matches::new(answers, rows, kind);
        let planned = plan_targets(entries.clone(), &mut matches);
        let finished = finish_resources(planned, &mut matches);
        let pending = matches.pending.into_inner();
        if !pending.is_empty() {
            return Planning::Ask(pending);
        }
        let newly_failed = |i: usize| entries[i].is_ok() && finished[i].is_err();
        if kind == Kind::Transaction || !(0..entries.len()).any(newly_failed) {
            return Planning::Done(finished, matches.must_be_absent);
        }
        let failed: Vec<usize> = (0..entries.len()).filter(|&i| newly_failed(i)).collect();
        for i in failed {
            if let Err(err) = &finished[i] {
                entries[i] = Err(err.clone());
            }
        }
    }
}

/// How many times planning may stop for matches it could only resolve then: each time is one
/// link of a chain of entries whose match URLs name earlier entries' `fullUrl`s.
const MAX_MATCH_ROUNDS: usize = 64;

/// Plans every entry, asking the store for matches as planning finds them: a match URL that
/// names an earlier entry's `fullUrl` can only be resolved, and answered, once that entry's
/// target is known.
async fn plan(
    store: &Store,
    access: &Access,
    kind: Kind,
    entries: Vec<Result<Entry, FhirError>>,
    answers: &mut Answers,
    rows: bool,
) -> Result<(Vec<Result<Planned, FhirError>>, HashSet<String>), FhirError> {
    let limit = match_limit(entries.len());
    for _ in 0..MAX_MATCH_ROUNDS {
        match plan_until_stable(kind, entries.clone(), answers, rows) {
            Planning::Done(planned, absent) => return Ok((planned, absent)),
            Planning::Ask(pending) => answer(store, access, answers, pending, limit).await?,
        }
    }
    Err(FhirError::invalid(format!(
        "the Bundle's match URLs name each other's fullUrls more than {MAX_MATCH_ROUNDS} deep"
    )))
}

/// Enough ids per search that the resources this Bundle changes can be set aside and still
/// tell none, one or several apart.
fn match_limit(entries: usize) -> u64 {
    entries as u64 + 2
}

/// How many of a Bundle's searches run at once.
const CONCURRENT_SEARCHES: usize = 4;

/// Asks the store for `matches` not answered yet: identifier lookups together, searches one
/// by one.
async fn answer(
    store: &Store,
    access: &Access,
    answers: &mut Answers,
    matches: Vec<Match>,
    limit: u64,
) -> Result<(), FhirError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let mut lookups = Vec::new();
    let mut searches = HashMap::new();
    for m in matches {
        if answers.get(&m).is_some() {
            continue;
        }
        match m {
            Match::Identifier(lookup) => lookups.push(lookup),
            Match::Search(search) => {
                searches.entry(search.key.clone()).or_insert(search);
            }
        }
    }
    // A few at once: each is one indexed query, and the Bundle holds the conditional gate
    // while they run.
    let answered: Vec<(String, Vec<String>)> = stream::iter(searches.into_values())
        .map(|search| async move {
            let t = &search.resource_type;
            let ids = store.search_ids(t, &search.criteria, limit).await?;
            let ids = in_reach(store, access, t, ids).await?;
            Ok::<_, FhirError>((search.key, ids))
        })
        .buffer_unordered(CONCURRENT_SEARCHES)
        .try_collect()
        .await?;
    answers.searches.extend(answered);
    if lookups.is_empty() {
        return Ok(());
    }
    let mut found = store.ids_by_identifier(&lookups).await?;
    for lookup in lookups {
        let ids = found.remove(&lookup).unwrap_or_default();
        let ids = in_reach(store, access, &lookup.resource_type, ids).await?;
        answers.identifiers.insert(lookup, ids);
    }
    Ok(())
}

/// What each entry of a response Bundle carries besides its `response`: what the client's
/// `Prefer: return=` asks of every entry. A single-resource interaction is answered from the
/// same entry, so it shares the choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Return {
    /// The `response` alone: status, location, etag and time. A transaction's default, as
    /// most servers answer a Bundle of thousands of entries; a single resource's default is
    /// the resource.
    #[default]
    Minimal,
    /// The resource as stored, in `entry.resource`.
    Representation,
    /// An OperationOutcome in `entry.response.outcome`, for successes too.
    OperationOutcome,
}

impl Return {
    /// The preference as a `Preference-Applied` header states it.
    pub fn as_header(self) -> &'static str {
        match self {
            Return::Minimal => "return=minimal",
            Return::Representation => "return=representation",
            Return::OperationOutcome => "return=OperationOutcome",
        }
    }

    /// The `return` preference of a request's `Prefer` headers, if it names a known one.
    pub fn preferred(headers: &actix_web::http::header::HeaderMap) -> Option<Return> {
        headers
            .get_all("prefer")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|p| p.split(';').next())
            .filter_map(|p| p.split_once('='))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("return"))
            .find_map(|(_, v)| match v.trim().trim_matches('"') {
                v if v.eq_ignore_ascii_case("minimal") => Some(Return::Minimal),
                v if v.eq_ignore_ascii_case("representation") => Some(Return::Representation),
                v if v.eq_ignore_ascii_case("OperationOutcome") => Some(Return::OperationOutcome),
                _ => None,
            })
    }
}

/// Who submits a Bundle, and how the answer is to be written.
pub struct Caller<'a> {
    pub access: &'a Access,
    /// How entries' new ids are made.
    pub new_ids: &'a NewIds,
    /// The trace the response Bundle carries in its `meta`.
    pub trace: Option<&'a BundleTrace>,
    pub returns: Return,
}

/// Limits on what one Bundle may ask for.
pub struct BundleLimits {
    pub max_entries: usize,
}

/// Processes a transaction or batch Bundle and returns the response Bundle.
///
/// Bundles with conditional writes (ifNoneExist, conditional update or delete) hold
/// `conditional_gate` from their first match until their writes commit, so that racing
/// conditional creates on this node find each other instead of duplicating. Conditional
/// references alone create nothing and do not take it: a Synthea patient Bundle refers to its
/// practitioners and organizations by identifier, and such Bundles load side by side.
pub async fn process(
    store: &Store,
    conditional_gate: &tokio::sync::Mutex<()>,
    limits: &BundleLimits,
    bundle: Value,
    caller: Caller<'_>,
) -> Result<Value, FhirError> {
    let Caller {
        trace,
        new_ids,
        access,
        returns,
    } = caller;
    let kind = bundle_kind(&bundle)?;
    let raw_entries = entries_of(bundle, limits)?;
    let mut results: Vec<Option<Result<Value, FhirError>>> =
        (0..raw_entries.len()).map(|_| None).collect();
    // Reading and checking every resource against the model is CPU work: off the I/O worker.
    let entries = tokio::task::spawn_blocking(move || {
        raw_entries.into_iter().map(read_entry).collect::<Vec<_>>()
    })
    .await
    .map_err(|_| FhirError::Internal)?;
    let entries: Vec<Result<Entry, FhirError>> = entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            entry.map(|mut e| {
                e.new_id = new_ids.for_entry(index);
                e
            })
        })
        .collect();
    let entries: Vec<Result<Entry, FhirError>> = entries
        .into_iter()
        .map(|entry| entry.and_then(|e| permitted(access, e)))
        .collect();
    let mut permissions: Vec<Option<(String, Permission)>> =
        entries.iter().map(|e| e.as_ref().ok().map(needs)).collect();
    let urls = match_urls(&entries);
    let rows = urls.iter().any(|url| !url.is_identifier_only());
    let _gate = if has_conditional_writes(&entries) {
        Some(conditional_gate.lock().await)
    } else {
        None
    };
    let mut answers = Answers::default();
    let known = known_now(&urls, &entries);
    answer(
        store,
        access,
        &mut answers,
        known,
        match_limit(entries.len()),
    )
    .await?;
    let mut preconditions: Vec<Option<Precondition>> = entries
        .iter()
        .map(|e| e.as_ref().ok().and_then(|e| e.precondition.clone()))
        .collect();
    let (mut planned, must_be_absent) =
        plan(store, access, kind, entries, &mut answers, rows).await?;
    for (index, p) in planned.iter().enumerate() {
        if let Ok(Planned::Write(op)) = p {
            if must_be_absent.contains(&op_key(op)) {
                preconditions[index].get_or_insert(Precondition::Absent);
            }
        }
    }
    creating_puts_need_create(
        store,
        access,
        &mut permissions,
        &mut preconditions,
        &mut planned,
    )
    .await?;
    within_patient_reach(store, access, &permissions, &mut planned).await?;
    let mut matched_creates = Vec::new();
    let rounds = split_writes(
        kind,
        planned,
        &preconditions,
        &mut results,
        &mut matched_creates,
    )?;
    // Read before the writes: the answer is the version matched, even when a later entry of
    // the Bundle changes or deletes it.
    answer_matched_creates(store, matched_creates, returns, &mut results).await;
    for round in rounds {
        let keys: Vec<String> = round.batch.ops.iter().map(op_key).collect();
        match store.write(round.batch).await {
            Ok(written) => {
                for (index, w) in round.positions.into_iter().zip(written) {
                    results[index] = Some(Ok(write_response(&w, returns)));
                }
            }
            Err(err) if kind == Kind::Transaction => {
                let at = precondition_entry(&err, &keys, &round.positions);
                let err = FhirError::from(err);
                return Err(match at {
                    Some(index) => err.in_entry(index),
                    None => err,
                });
            }
            Err(err) => {
                let answer = error_response(&FhirError::from(err));
                for index in round.positions {
                    results[index] = Some(Ok(answer.clone()));
                }
            }
        }
    }
    let response_type = match kind {
        Kind::Transaction => "transaction-response",
        Kind::Batch => "batch-response",
    };
    let entries: Vec<Value> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(FhirError::Internal)))
        .map(|r| r.unwrap_or_else(|e| error_response(&e)))
        .collect();
    let mut response = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": meta(trace),
        "type": response_type,
    });
    if !entries.is_empty() {
        response["entry"] = Value::Array(entries);
    }
    Ok(response)
}

/// The type and permission an entry needs.
fn needs(entry: &Entry) -> (String, Permission) {
    match &entry.request {
        Request::Create { resource, .. } => (type_of(resource), Permission::Create),
        Request::Update { resource, .. } => (type_of(resource), Permission::Update),
        Request::Delete { resource_type, .. } => (resource_type.clone(), Permission::Delete),
    }
}

/// The entry, if the caller's scopes grant what it asks on its type at all. The audit trail is
/// the server's own: no caller writes AuditEvents.
fn permitted(access: &Access, entry: Entry) -> Result<Entry, FhirError> {
    let (resource_type, permission) = needs(&entry);
    if resource_type == "AuditEvent" {
        return Err(FhirError::NotSupported(
            "the audit trail is written by the server alone".into(),
        ));
    }
    if access.reach(&resource_type, permission) == Reach::None {
        return Err(FhirError::Forbidden(format!(
            "the token's scopes do not grant {permission:?} on {resource_type}"
        )));
    }
    Ok(entry)
}

/// The matches `access` may use (see `access::may_match`); for a token that names no patient,
/// all of them, unread.
async fn in_reach(
    store: &Store,
    access: &Access,
    resource_type: &str,
    ids: Vec<String>,
) -> Result<Vec<String>, FhirError> {
    if access.patient().is_none() {
        return Ok(ids);
    }
    let mut usable = Vec::with_capacity(ids.len());
    for id in ids {
        let found = store.read(resource_type, &id).await?;
        if found.is_some_and(|r| access::may_match(access, &r)) {
            usable.push(id);
        }
    }
    Ok(usable)
}

/// A PUT that creates its target (none exists, or it was deleted) is a create as well as an
/// update, and needs the create permission too (SMART v2 `c`; v1 `write` grants both). Only a
/// token whose create and update grants differ on the type needs the look-up; its PUTs that
/// update then carry the precondition that the target still exists, so a delete racing with
/// the write cannot turn it into a create (it fails 412 instead).
async fn creating_puts_need_create(
    store: &Store,
    access: &Access,
    permissions: &mut [Option<(String, Permission)>],
    preconditions: &mut [Option<Precondition>],
    planned: &mut [Result<Planned, FhirError>],
) -> Result<(), FhirError> {
    for (index, entry) in planned.iter_mut().enumerate() {
        let Some((resource_type, Permission::Update)) = &permissions[index] else {
            continue;
        };
        let create = access.reach(resource_type, Permission::Create);
        if create == access.reach(resource_type, Permission::Update) {
            continue;
        }
        let Ok(Planned::Write(WriteOp::Upsert(w))) = &*entry else {
            continue;
        };
        let exists = match &preconditions[index] {
            Some(Precondition::Absent) => false,
            _ => store
                .read(&w.resource_type, &w.id)
                .await?
                .is_some_and(|current| !current.deleted),
        };
        if exists {
            preconditions[index].get_or_insert(Precondition::Present);
        } else if create == Reach::None {
            *entry = Err(FhirError::Forbidden(format!(
                "a PUT that creates needs create permission, which the token's scopes do not \
                 grant on {resource_type}"
            )));
        } else {
            permissions[index] = Some((resource_type.clone(), Permission::Create));
        }
    }
    Ok(())
}

/// For entries a patient-scoped grant allows: the resource written, and the version it
/// replaces or deletes, must both lie within the token's patient (see `access::in_reach`),
/// so such a token can neither move another patient's data into its record nor change it.
async fn within_patient_reach(
    store: &Store,
    access: &Access,
    permissions: &[Option<(String, Permission)>],
    planned: &mut [Result<Planned, FhirError>],
) -> Result<(), FhirError> {
    // What this Bundle writes: a match among them was written by this caller, under the checks
    // below, and is not in the store yet.
    let written_here: HashSet<(String, String)> = planned
        .iter()
        .filter_map(|entry| match entry {
            Ok(Planned::Write(op)) => {
                let (t, id) = op.key();
                Some((t.to_string(), id.to_string()))
            }
            _ => None,
        })
        .collect();
    for (entry, needed) in planned.iter_mut().zip(permissions) {
        // A conditional create that matched: answered with the match, which the caller must
        // be able to read.
        if let Ok(Planned::Existing { resource_type, id }) = &*entry {
            if matches!(access, Access::Token(_)) {
                let readable = match store.read(resource_type, id).await? {
                    Some(r) => access::visible(access, &r),
                    None => written_here.contains(&(resource_type.clone(), id.clone())),
                };
                if !readable {
                    *entry = Err(FhirError::Forbidden(
                        "a resource matching ifNoneExist exists that the token may not read".into(),
                    ));
                }
            }
            continue;
        }
        let (Ok(Planned::Write(op)), Some((resource_type, permission))) = (&*entry, needed) else {
            continue;
        };
        if access.reach(resource_type, *permission) != Reach::Patient {
            continue;
        }
        let (t, id) = op.key();
        let mut allowed = match op {
            WriteOp::Upsert(w) => access::writable(access.patient(), t, id, &w.content),
            WriteOp::Delete { .. } => true,
        };
        if allowed {
            if let Some(current) = store.read(t, id).await?.filter(|c| !c.deleted) {
                allowed = serde_json::from_str::<Value>(&current.content)
                    .is_ok_and(|content| access::writable(access.patient(), t, id, &content));
            }
        }
        if !allowed {
            *entry = Err(FhirError::Forbidden(format!(
                "{t}/{id} would lie outside the patient the token is limited to"
            )));
        }
    }
    Ok(())
}

/// A lone resource as a one-entry transaction: an update of its id when it has one, else a
/// create.
pub fn single_entry_transaction(resource: Value, resource_type: &str) -> Value {
    let request = match resource.get("id").and_then(Value::as_str) {
        Some(id) => json!({"method": "PUT", "url": format!("{resource_type}/{id}")}),
        None => json!({"method": "POST", "url": resource_type}),
    };
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": resource, "request": request}],
    })
}

fn entries_of(bundle: Value, limits: &BundleLimits) -> Result<Vec<Value>, FhirError> {
    let entries = match bundle {
        Value::Object(mut map) => map.shift_remove("entry"),
        _ => None,
    };
    let entries = match entries {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(FhirError::invalid_at(
                "entry must be an array",
                "Bundle.entry",
            ))
        }
    };
    if entries.len() > limits.max_entries {
        return Err(FhirError::invalid_at(
            format!(
                "the Bundle has {} entries; at most {} are accepted (HL7BRIDGE_MAX_BUNDLE_ENTRIES)",
                entries.len(),
                limits.max_entries
            ),
            "Bundle.entry",
        ));
    }
    Ok(entries)
}

fn bundle_kind(bundle: &Value) -> Result<Kind, FhirError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(FhirError::invalid("POST to the base expects a Bundle"));
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => Ok(Kind::Transaction),
        Some("batch") => Ok(Kind::Batch),
        other => Err(FhirError::invalid_at(
            format!(
                "Bundle.type must be transaction or batch, got {}",
                other.unwrap_or("nothing")
            ),
            "Bundle.type",
        )),
    }
}

fn read_entry(entry: Value) -> Result<Entry, FhirError> {
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .map(String::from);
    let request = entry
        .get("request")
        .ok_or_else(|| FhirError::invalid_at("entry has no request", "request"))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_start_matches('/');
    let precondition = read_precondition(method, request)?;
    if method != "POST" && request.get("ifNoneExist").is_some() {
        return Err(FhirError::invalid_at(
            "ifNoneExist belongs to a POST (a conditional PUT or DELETE puts its condition in \
             request.url)",
            "request.ifNoneExist",
        ));
    }
    let resource = entry.get("resource").cloned().map(checked).transpose()?;
    let request = match method {
        "POST" => read_create(url, resource, request)?,
        "PUT" => read_update(url, resource)?,
        "DELETE" => read_delete(url)?,
        "" => {
            return Err(FhirError::invalid_at(
                "request.method is missing",
                "request.method",
            ))
        }
        other => {
            return Err(FhirError::NotSupported(format!(
                "{other} entries are not supported yet"
            )))
        }
    };
    Ok(Entry {
        full_url,
        request,
        precondition,
        new_id: String::new(),
    })
}

/// `ifMatch` (a version, `W/"3"` or `3`) and `ifNoneMatch: *` on PUT and DELETE, enforced
/// inside the write. `ifModifiedSince` and `ifNoneMatch` with a version are refused (405)
/// rather than ignored, and so is any precondition on another method.
fn read_precondition(method: &str, request: &Value) -> Result<Option<Precondition>, FhirError> {
    if request.get("ifModifiedSince").is_some() {
        return Err(FhirError::NotSupported(
            "request.ifModifiedSince is not supported yet".into(),
        ));
    }
    let text = |field: &str| request.get(field).map(|v| v.as_str().map(str::trim));
    let (if_match, if_none_match) = (text("ifMatch"), text("ifNoneMatch"));
    if (if_match.is_some() || if_none_match.is_some()) && !matches!(method, "PUT" | "DELETE") {
        return Err(FhirError::NotSupported(format!(
            "preconditions on {method} entries are not supported"
        )));
    }
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => Err(FhirError::invalid("ifMatch and ifNoneMatch together")),
        (Some(value), None) => parse_etag(value).map(|v| Some(Precondition::Version(v))),
        (None, Some(Some("*"))) => Ok(Some(Precondition::Absent)),
        (None, Some(_)) => Err(FhirError::NotSupported(
            "ifNoneMatch other than * is not supported".into(),
        )),
        (None, None) => Ok(None),
    }
}

/// `W/"3"`, `"3"` or `3` → 3.
pub(super) fn parse_etag(value: Option<&str>) -> Result<i64, FhirError> {
    let version = value
        .map(|v| v.strip_prefix("W/").unwrap_or(v).trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|v| *v > 0);
    version.ok_or_else(|| FhirError::invalid_at("not an ETag such as W/\"3\"", "request.ifMatch"))
}

/// The resource checked against the R4 model, in canonical form. References are rewritten
/// afterwards; that changes only reference strings, so the result stays valid.
fn checked(resource: Value) -> Result<Value, FhirError> {
    hl7bridge_fhir_codec::canonicalize(resource)
        .map_err(codec_error)
        .map_err(|e| match e {
            // The codec roots its paths at the type ("Observation.performer"); in a Bundle the
            // element is under the entry's `resource`.
            FhirError::Invalid {
                message,
                expression,
            } => {
                let inner = expression
                    .as_deref()
                    .and_then(|e| e.split_once('.'))
                    .map(|(_, rest)| rest);
                let expression = match inner {
                    Some(rest) => format!("resource.{rest}"),
                    None => "resource".to_string(),
                };
                FhirError::Invalid {
                    message,
                    expression: Some(expression),
                }
            }
            other => other,
        })
}

fn read_create(url: &str, resource: Option<Value>, request: &Value) -> Result<Request, FhirError> {
    if url.contains('$') {
        return Err(FhirError::NotSupported(format!(
            "operations in Bundles are not supported yet: {url:?}"
        )));
    }
    let resource = resource_of_type(url, resource)?;
    let if_none_exist = match request.get("ifNoneExist") {
        Some(Value::String(query)) => {
            Some(MatchUrl::parse(url, query).map_err(|e| e.at("request.ifNoneExist"))?)
        }
        Some(_) => {
            return Err(FhirError::invalid_at(
                "must be a string",
                "request.ifNoneExist",
            ))
        }
        None => None,
    };
    Ok(Request::Create {
        resource,
        if_none_exist,
    })
}

fn read_update(url: &str, resource: Option<Value>) -> Result<Request, FhirError> {
    if let Some((resource_type, query)) = url.split_once('?') {
        let resource = resource_of_type(resource_type, resource)?;
        let url = MatchUrl::parse(resource_type, query).map_err(|e| e.at("request.url"))?;
        let target = Target::Conditional(url);
        return Ok(Request::Update { resource, target });
    }
    let (resource_type, id) = type_and_id(url)?;
    let resource = resource_of_type(resource_type, resource)?;
    if let Some(body_id) = resource.get("id").and_then(Value::as_str) {
        if body_id != id {
            return Err(FhirError::invalid_at(
                "resource.id does not match the URL",
                "resource.id",
            ));
        }
    }
    Ok(Request::Update {
        resource,
        target: Target::Id(id.to_string()),
    })
}

fn read_delete(url: &str) -> Result<Request, FhirError> {
    if let Some((resource_type, query)) = url.split_once('?') {
        if !is_resource_type(resource_type) {
            return Err(FhirError::invalid_at(
                format!("request.url names no resource type: {resource_type:?}"),
                "request.url",
            ));
        }
        let url = MatchUrl::parse(resource_type, query).map_err(|e| e.at("request.url"))?;
        let target = Target::Conditional(url);
        return Ok(Request::Delete {
            resource_type: resource_type.into(),
            target,
        });
    }
    let (resource_type, id) = type_and_id(url)?;
    Ok(Request::Delete {
        resource_type: resource_type.into(),
        target: Target::Id(id.into()),
    })
}

fn type_and_id(url: &str) -> Result<(&str, &str), FhirError> {
    match url.split_once('/') {
        Some((t, id)) if is_resource_type(t) && is_valid_id(id) => Ok((t, id)),
        _ => Err(FhirError::invalid_at(
            format!("request.url {url:?} is not Type/id"),
            "request.url",
        )),
    }
}

fn resource_of_type(resource_type: &str, resource: Option<Value>) -> Result<Value, FhirError> {
    if !is_resource_type(resource_type) {
        return Err(FhirError::invalid_at(
            format!("request.url names no resource type: {resource_type:?}"),
            "request.url",
        ));
    }
    let resource =
        resource.ok_or_else(|| FhirError::invalid_at("entry has no resource", "resource"))?;
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == resource_type => Ok(resource),
        _ => Err(FhirError::invalid_at(
            format!("resource.resourceType must be {resource_type}, as request.url says"),
            "resource.resourceType",
        )),
    }
}

/// Whether any entry creates, updates or deletes by search criteria.
fn has_conditional_writes(entries: &[Result<Entry, FhirError>]) -> bool {
    entries.iter().flatten().any(|entry| match &entry.request {
        Request::Create { if_none_exist, .. } => if_none_exist.is_some(),
        Request::Update { target, .. } | Request::Delete { target, .. } => {
            matches!(target, Target::Conditional(_))
        }
    })
}

/// Every match URL of the readable entries: their conditions and their resources'
/// conditional references (those that do not parse fail later, in their entry).
fn match_urls(entries: &[Result<Entry, FhirError>]) -> Vec<MatchUrl> {
    let mut urls = HashSet::new();
    for entry in entries.iter().flatten() {
        let resource = match &entry.request {
            Request::Create {
                resource,
                if_none_exist,
            } => {
                urls.extend(if_none_exist.clone());
                resource
            }
            Request::Update { resource, target } => {
                if let Target::Conditional(url) = target {
                    urls.insert(url.clone());
                }
                resource
            }
            Request::Delete {
                target: Target::Conditional(url),
                ..
            } => {
                urls.insert(url.clone());
                continue;
            }
            Request::Delete { .. } => continue,
        };
        visit_references(resource, &mut |reference| {
            if let Some(Ok(url)) = parse_conditional_reference(reference) {
                urls.insert(url);
            }
        });
    }
    urls.into_iter().collect()
}

/// The matches that can be asked before planning: those of match URLs naming no `fullUrl`.
fn known_now(urls: &[MatchUrl], entries: &[Result<Entry, FhirError>]) -> Vec<Match> {
    let full_urls: HashSet<&str> = entries
        .iter()
        .flatten()
        .filter_map(|e| e.full_url.as_deref())
        .collect();
    let names_an_entry = |v: &String| {
        full_urls.contains(v.as_str()) || v.starts_with("urn:uuid:") || v.starts_with("urn:oid:")
    };
    urls.iter()
        .filter(|url| !url.reference_values().iter().any(names_an_entry))
        .filter_map(|url| url.resolve(&|_| Ok(None)).ok())
        .collect()
}

/// The target of an entry that needs no match: a plain create's new resource, a PUT's id.
fn fixed_target(entry: &Entry) -> Option<String> {
    match &entry.request {
        Request::Create {
            resource,
            if_none_exist: None,
        } => Some(format!("{}/{}", type_of(resource), entry.new_id)),
        Request::Update {
            resource,
            target: Target::Id(id),
        } => Some(format!("{}/{id}", type_of(resource))),
        _ => None,
    }
}

/// Pass 2: target ids. Creates and updates are recorded as local matches as they are planned,
/// so a later conditional create in the same bundle finds an earlier one.
fn plan_targets(
    entries: Vec<Result<Entry, FhirError>>,
    matches: &mut Matches,
) -> Vec<Result<(Option<String>, Planned), FhirError>> {
    let mut planned = Vec::with_capacity(entries.len());
    for entry in entries.iter().flatten() {
        let Some(url) = &entry.full_url else { continue };
        matches.full_urls.insert(url.clone());
        if let Some(target) = fixed_target(entry) {
            matches.targets.entry(url.clone()).or_insert(target);
        }
    }
    let mut full_urls = HashSet::new();
    for entry in entries {
        let result = entry.and_then(|e| {
            let full_url = e.full_url.clone();
            if let Some(url) = &full_url {
                if !full_urls.insert(url.clone()) {
                    let message = "fullUrl is the same as an earlier entry's";
                    return Err(FhirError::invalid_at(message, "fullUrl"));
                }
            }
            plan_entry(e, matches).map(|p| (full_url, p))
        });
        if let Ok((full_url, p)) = &result {
            if let (Some(url), Some(target)) = (full_url, target_of(p)) {
                matches.targets.insert(url.clone(), target);
            }
            if let Planned::Write(op) = p {
                let target = op_target(op);
                if matches!(op, WriteOp::Delete { .. }) {
                    matches.deleted.insert(target.clone());
                }
                matches.changed.insert(target);
            }
            if let Planned::Write(WriteOp::Upsert(w)) = p {
                matches.add_local(w);
            }
        }
        planned.push(result);
    }
    planned
}

fn plan_entry(entry: Entry, matches: &mut Matches) -> Result<Planned, FhirError> {
    let new_id = entry.new_id;
    match entry.request {
        Request::Create {
            resource,
            if_none_exist,
        } => {
            let resource_type = type_of(&resource);
            if let Some(url) = if_none_exist {
                match matches.matched(&url)?.as_slice() {
                    [] => {}
                    [id] => {
                        return Ok(Planned::Existing {
                            resource_type,
                            id: id.clone(),
                        })
                    }
                    many => return Err(ambiguous("ifNoneExist", many.len())),
                }
            }
            Ok(upsert(resource_type, new_id, resource))
        }
        Request::Update { resource, target } => {
            let resource_type = type_of(&resource);
            let id = match target {
                Target::Id(id) => id,
                Target::Conditional(url) => {
                    let found = matches.matched(&url)?;
                    // `PUT Type?_id=x` that matches nothing creates `x`, so a retry matches it.
                    let named = url.sole_id();
                    let client_chose = named.is_some() || resource.get("id").is_some();
                    let new_id = named.unwrap_or(new_id);
                    let id = conditional_update_target(&resource, &found, new_id)?;
                    // Only an id the client chose can name a resource that exists already.
                    let creates_chosen_id = found.is_empty() && client_chose;
                    if creates_chosen_id && matches.exists(&resource_type, &id) {
                        return Err(FhirError::Conflict(format!(
                            "no {resource_type} matches the condition, and {resource_type}/{id}, \
                             which resource.id names, exists: a conditional update does not \
                             overwrite a resource its condition does not match"
                        )));
                    }
                    if creates_chosen_id {
                        matches
                            .must_be_absent
                            .insert(format!("{resource_type}/{id}"));
                    }
                    id
                }
            };
            Ok(upsert(resource_type, id, resource))
        }
        Request::Delete {
            resource_type,
            target,
        } => {
            let id = match target {
                Target::Id(id) => id,
                // No match: a delete of an id nothing has, which answers 204 and writes nothing.
                Target::Conditional(url) => match matches.matched(&url)?.as_slice() {
                    [] => new_id,
                    [id] => id.clone(),
                    many => {
                        return Err(FhirError::PreconditionFailed(format!(
                            "the conditional delete matches {} resources; it deletes one at most",
                            many.len()
                        )))
                    }
                },
            };
            Ok(Planned::Write(WriteOp::Delete { resource_type, id }))
        }
    }
}

/// The id a conditional update writes: the one match, else the body's id (update as create),
/// else a new one. A body id that contradicts the match is refused.
fn conditional_update_target(
    resource: &Value,
    found: &[String],
    new_id: String,
) -> Result<String, FhirError> {
    let body_id = resource.get("id").and_then(Value::as_str);
    match (found, body_id) {
        ([], Some(id)) if is_valid_id(id) => Ok(id.to_string()),
        ([], Some(_)) => Err(FhirError::invalid_at("not a valid id", "resource.id")),
        ([], None) => Ok(new_id),
        ([id], Some(body)) if body != id => Err(FhirError::invalid_at(
            "resource.id differs from the resource the condition matched",
            "resource.id",
        )),
        ([id], _) => Ok(id.clone()),
        (many, _) => Err(ambiguous("the conditional update", many.len())),
    }
}

pub(super) fn ambiguous(what: &str, n: usize) -> FhirError {
    FhirError::PreconditionFailed(format!("{what} matched {n} resources"))
}

fn type_of(resource: &Value) -> String {
    resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn upsert(resource_type: String, id: String, content: Value) -> Planned {
    Planned::Write(WriteOp::Upsert(ResourceWrite {
        resource_type,
        id,
        content,
    }))
}

/// Pass 3: references rewritten, ids set, content checked and made canonical.
fn finish_resources(
    planned: Vec<Result<(Option<String>, Planned), FhirError>>,
    matches: &mut Matches,
) -> Vec<Result<Planned, FhirError>> {
    let mut targets = HashMap::new();
    for (full_url, p) in planned.iter().flatten() {
        let (Some(url), Some(target)) = (full_url, target_of(p)) else {
            continue;
        };
        targets.insert(url.clone(), target);
    }
    matches.targets = targets;
    let matches = &*matches;
    planned
        .into_iter()
        .map(|p| p.and_then(|(_, p)| finish(p, matches)))
        .collect()
}

fn target_of(planned: &Planned) -> Option<String> {
    match planned {
        Planned::Write(WriteOp::Upsert(w)) => Some(format!("{}/{}", w.resource_type, w.id)),
        Planned::Existing { resource_type, id } => Some(format!("{resource_type}/{id}")),
        Planned::Write(WriteOp::Delete { .. }) => None,
    }
}

fn finish(planned: Planned, matches: &Matches) -> Result<Planned, FhirError> {
    let Planned::Write(WriteOp::Upsert(mut w)) = planned else {
        return Ok(planned);
    };
    rewrite_references(&mut w.content, &matches.targets, &|url| {
        matches.matched(url)
    })?;
    if let Value::Object(map) = &mut w.content {
        set_id(map, &w.id);
    }
    Ok(Planned::Write(WriteOp::Upsert(w)))
}

/// Puts `id` right after `resourceType`, where the canonical order has it.
fn set_id(map: &mut Map<String, Value>, id: &str) {
    map.shift_remove("id");
    map.shift_insert(1, "id".to_string(), Value::String(id.to_string()));
}

pub fn codec_error(err: hl7bridge_fhir_codec::CodecError) -> FhirError {
    use hl7bridge_fhir_codec::CodecError;
    match err {
        CodecError::Structure { path, message } => FhirError::invalid_at(message, path),
        CodecError::Model(message) => {
            FhirError::invalid(format!("not a valid R4 resource: {message}"))
        }
        CodecError::Xml(message) => FhirError::invalid(format!(
            "the body is not FHIR XML that this server reads: {message}"
        )),
    }
}

/// One transaction's worth of writes and the entries they answer.
#[derive(Default)]
struct Round {
    batch: WriteBatch,
    positions: Vec<usize>,
}

/// Splits planned entries into rounds of writes and immediate answers. No resource appears
/// twice in one round, since a round is one database transaction. A transaction has a single
/// round: a failed entry or a resource targeted twice fails the whole bundle. A batch applies
/// a resource targeted again in a later round, so entries take effect in their order.
fn split_writes(
    kind: Kind,
    planned: Vec<Result<Planned, FhirError>>,
    preconditions: &[Option<Precondition>],
    results: &mut [Option<Result<Value, FhirError>>],
    matched_creates: &mut Vec<(usize, String, String)>,
) -> Result<Vec<Round>, FhirError> {
    if kind == Kind::Transaction {
        deleted_after_a_match(&planned)?;
    }
    let mut rounds: Vec<Round> = Vec::new();
    let mut last_round: HashMap<String, usize> = HashMap::new();
    for (index, p) in planned.into_iter().enumerate() {
        let op = match p {
            Err(err) if kind == Kind::Transaction => return Err(err.in_entry(index)),
            Err(err) => {
                results[index] = Some(Err(err.in_entry(index)));
                continue;
            }
            Ok(Planned::Existing { resource_type, id }) => {
                let location = format!("{resource_type}/{id}");
                let response = json!({"response": {"status": "200 OK", "location": location}});
                results[index] = Some(Ok(response));
                matched_creates.push((index, resource_type, id));
                continue;
            }
            Ok(Planned::Write(op)) => op,
        };
        let key = op_key(&op);
        let mut round = last_round.get(&key).map_or(0, |r| r + 1);
        if round > 0 && kind == Kind::Transaction {
            let err = FhirError::invalid(format!("{key} is the target of more than one entry"));
            return Err(err.in_entry(index));
        }
        let precondition = preconditions.get(index).cloned().flatten();
        // In a batch, a failed precondition fails its round: such an entry gets one of its own.
        if precondition.is_some() && kind == Kind::Batch {
            round = rounds.len().max(round);
        }
        last_round.insert(key, round);
        while rounds.len() <= round {
            rounds.push(Round::default());
        }
        if let Some(condition) = precondition {
            let (t, id) = op_target(&op);
            rounds[round].batch.preconditions.push((t, id, condition));
        }
        rounds[round].batch.ops.push(op);
        rounds[round].positions.push(index);
    }
    Ok(rounds)
}

/// In a transaction, a resource an `ifNoneExist` matched may not be deleted by a later entry:
/// both would name it, and the references to the first entry would point at nothing.
fn deleted_after_a_match(planned: &[Result<Planned, FhirError>]) -> Result<(), FhirError> {
    let mut matched = HashSet::new();
    for (index, p) in planned.iter().enumerate() {
        match p {
            Ok(Planned::Existing { resource_type, id }) => {
                matched.insert(format!("{resource_type}/{id}"));
            }
            Ok(Planned::Write(op @ WriteOp::Delete { .. })) if matched.contains(&op_key(op)) => {
                let key = op_key(op);
                let message = format!(
                    "{key} is what an earlier entry's ifNoneExist matched: one resource may be \
                     the target of one entry only"
                );
                return Err(FhirError::invalid(message).in_entry(index));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The entry whose precondition failed, when that is what `err` says.
fn precondition_entry(err: &StoreError, keys: &[String], positions: &[usize]) -> Option<usize> {
    let StoreError::PreconditionFailed { key, .. } = err else {
        return None;
    };
    keys.iter().position(|k| k == key).map(|i| positions[i])
}

fn op_target(op: &WriteOp) -> (String, String) {
    match op {
        WriteOp::Upsert(w) => (w.resource_type.clone(), w.id.clone()),
        WriteOp::Delete { resource_type, id } => (resource_type.clone(), id.clone()),
    }
}

fn op_key(op: &WriteOp) -> String {
    match op {
        WriteOp::Upsert(w) => format!("{}/{}", w.resource_type, w.id),
        WriteOp::Delete { resource_type, id } => format!("{resource_type}/{id}"),
    }
}

fn write_response(w: &Written, returns: Return) -> Value {
    let (status, what) = match w.outcome {
        Outcome::Created => ("201 Created", "created"),
        Outcome::Updated => ("200 OK", "updated"),
        Outcome::Unchanged => ("200 OK", "unchanged: the content is the current version's"),
        Outcome::Deleted => ("204 No Content", "deleted"),
        Outcome::NothingToDelete => ("204 No Content", "nothing to delete"),
    };
    let live = matches!(
        w.outcome,
        Outcome::Created | Outcome::Updated | Outcome::Unchanged
    );
    let answer = Answered {
        resource_type: &w.resource_type,
        id: &w.id,
        version: live.then_some((w.version_id, w.last_updated_us)),
        status,
        what,
        content: w.content.as_deref(),
    };
    answer.entry(returns)
}

/// One response entry: what happened to which resource, and the resource as stored.
struct Answered<'a> {
    resource_type: &'a str,
    id: &'a str,
    /// The version and its time, for a resource that is live after the entry.
    version: Option<(i64, i64)>,
    status: &'a str,
    /// What happened, in words, for an OperationOutcome.
    what: &'a str,
    content: Option<&'a str>,
}

impl Answered<'_> {
    fn entry(&self, returns: Return) -> Value {
        let mut response = json!({"status": self.status});
        if returns == Return::OperationOutcome {
            response["outcome"] = json!({"resourceType": "OperationOutcome", "issue": [{
                "severity": "information", "code": "informational",
                "diagnostics": format!("{}/{} {}", self.resource_type, self.id, self.what)}]});
        }
        let stored = match (returns, self.content) {
            (Return::Representation, Some(content)) => serde_json::from_str::<Value>(content).ok(),
            _ => None,
        };
        if let Some((version_id, last_updated_us)) = self.version {
            response["location"] = json!(format!(
                "{}/{}/_history/{version_id}",
                self.resource_type, self.id
            ));
            response["etag"] = json!(format!("W/\"{version_id}\""));
            response["lastModified"] = json!(instant_text(last_updated_us));
        }
        match stored {
            Some(resource) => json!({"resource": resource, "response": response}),
            None => json!({"response": response}),
        }
    }
}

/// Conditional creates that matched (entry index, type, id) are answered as a read of what
/// they matched: its version in `location`, `etag` and `lastModified`, and the resource or an
/// outcome when the client prefers. A read that fails leaves the answer they had (status and
/// location): the match itself stands.
async fn answer_matched_creates(
    store: &Store,
    matched: Vec<(usize, String, String)>,
    returns: Return,
    results: &mut [Option<Result<Value, FhirError>>],
) {
    let mut by_type: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    for (index, resource_type, id) in matched {
        by_type.entry(resource_type).or_default().push((index, id));
    }
    for (resource_type, entries) in by_type {
        let mut ids: Vec<String> = entries.iter().map(|(_, id)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        let Ok(found) = store.read_many(&resource_type, &ids).await else {
            continue;
        };
        let found: HashMap<&str, _> = found.iter().map(|r| (r.id.as_str(), r)).collect();
        for (index, id) in entries {
            let Some(stored) = found.get(id.as_str()) else {
                continue;
            };
            let answer = Answered {
                resource_type: &resource_type,
                id: &id,
                version: Some((stored.version_id, stored.last_updated_us)),
                status: "200 OK",
                what: "matched the conditional create's criteria: nothing was created",
                content: Some(&stored.content),
            };
            results[index] = Some(Ok(answer.entry(returns)));
        }
    }
}

fn error_response(err: &FhirError) -> Value {
    let status: StatusCode = err.status_code();
    let text = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    json!({"response": {"status": text.trim_end(), "outcome": err.outcome()}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_matches() -> Matches<'static> {
        static EMPTY: std::sync::OnceLock<Answers> = std::sync::OnceLock::new();
        Matches::new(
            EMPTY.get_or_init(Answers::default),
            false,
            Kind::Transaction,
        )
    }

    fn organization(id: &str, system: &str, value: &str) -> ResourceWrite {
        ResourceWrite {
            resource_type: "Organization".into(),
            id: id.into(),
            content: json!({"resourceType": "Organization",
                "identifier": [{"system": system, "value": value}]}),
        }
    }

    #[test]
    fn urn_uuid_placeholders_are_rewritten_to_type_and_id() {
        let targets = HashMap::from([("urn:uuid:1".to_string(), "Patient/abc".to_string())]);
        let mut obs =
            json!({"resourceType": "Observation", "subject": {"reference": "urn:uuid:1"}});
        rewrite_references(&mut obs, &targets, &|u| no_matches().matched(u)).unwrap();
        assert_eq!(obs["subject"]["reference"], "Patient/abc");
    }

    #[test]
    fn an_unknown_placeholder_is_an_error_not_a_dangling_reference() {
        let mut obs = json!({"subject": {"reference": "urn:uuid:nope"}});
        let find = |u: &MatchUrl| no_matches().matched(u);
        assert!(rewrite_references(&mut obs, &HashMap::new(), &find).is_err());
    }

    #[test]
    fn a_conditional_reference_resolves_to_a_resource_of_the_same_bundle() {
        let mut matches = no_matches();
        matches.add_local(&organization("o1", "urn:x", "7"));
        let mut enc = json!({"serviceProvider": {"reference": "Organization?identifier=urn:x|7"}});
        rewrite_references(&mut enc, &HashMap::new(), &|u| matches.matched(u)).unwrap();
        assert_eq!(enc["serviceProvider"]["reference"], "Organization/o1");
    }

    #[test]
    fn an_ambiguous_conditional_reference_is_a_precondition_failure() {
        let mut matches = no_matches();
        for id in ["o1", "o2"] {
            matches.add_local(&organization(id, "urn:x", "7"));
        }
        let mut enc = json!({"serviceProvider": {"reference": "Organization?identifier=7"}});
        let find = |u: &MatchUrl| matches.matched(u);
        let err = rewrite_references(&mut enc, &HashMap::new(), &find).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::PRECONDITION_FAILED);
    }

    fn entries(bundle_entries: Value) -> Vec<Result<Entry, FhirError>> {
        let items = bundle_entries.as_array().unwrap().clone();
        let ids = NewIds::Derived("test".into());
        items
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                read_entry(e).map(|mut e| {
                    e.new_id = ids.for_entry(i);
                    e
                })
            })
            .collect()
    }

    #[test]
    fn a_match_url_naming_an_earlier_entry_is_resolved_then_asked_then_matched_locally() {
        let code = json!({"coding": [{"system": "http://loinc.org", "code": "718-7"}]});
        let entries = entries(json!([
            {"fullUrl": "urn:uuid:p", "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:o", "request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final", "code": code,
                          "subject": {"reference": "urn:uuid:p"}}},
            {"request": {"method": "POST", "url": "Observation",
                         "ifNoneExist": "patient=urn:uuid:p&code=http://loinc.org|718-7"},
             "resource": {"resourceType": "Observation", "status": "final", "code": code}},
        ]));
        let patient_id = NewIds::Derived("test".into()).for_entry(0);
        let observation_id = NewIds::Derived("test".into()).for_entry(1);
        // The store is asked with the placeholder resolved to the new patient's id.
        let Planning::Ask(asked) = plan_until_stable(
            Kind::Transaction,
            entries.clone(),
            &Answers::default(),
            true,
        ) else {
            panic!("the resolved search was not asked");
        };
        let keys: Vec<String> = asked
            .into_iter()
            .map(|m| match m {
                Match::Search(s) => s.key,
                other => panic!("{other:?}"),
            })
            .collect();
        let expected =
            format!("Observation?patient=Patient/{patient_id}&code=http://loinc.org|718-7");
        assert_eq!(keys, vec![expected.clone()]);
        // The store knows none; the second entry of the Bundle matches.
        let answers = Answers {
            searches: HashMap::from([(expected, Vec::new())]),
            ..Answers::default()
        };
        let Planning::Done(planned, _) =
            plan_until_stable(Kind::Transaction, entries, &answers, true)
        else {
            panic!("asked again");
        };
        match &planned[2] {
            Ok(Planned::Existing { resource_type, id }) => {
                assert_eq!(
                    (resource_type.as_str(), id),
                    ("Observation", &observation_id)
                )
            }
            _ => panic!("the third entry did not match the second"),
        }
    }

    #[test]
    fn a_match_url_naming_a_later_conditional_entry_is_refused() {
        let entries = entries(json!([
            {"request": {"method": "POST", "url": "Observation",
                         "ifNoneExist": "patient=urn:uuid:p&status=final"},
             "resource": {"resourceType": "Observation", "status": "final",
                          "code": {"text": "x"}}},
            {"fullUrl": "urn:uuid:p", "request": {"method": "POST", "url": "Patient",
                                                  "ifNoneExist": "identifier=urn:mrn|1"},
             "resource": {"resourceType": "Patient"}},
        ]));
        let lookup = IdentifierLookup {
            resource_type: "Patient".into(),
            system: Some("urn:mrn".into()),
            value: "1".into(),
        };
        let answers = Answers {
            identifiers: HashMap::from([(lookup, Vec::new())]),
            ..Answers::default()
        };
        let outcome = plan_until_stable(Kind::Transaction, entries, &answers, true);
        let Planning::Done(planned, _) = outcome else {
            panic!("nothing is left to ask");
        };
        let err = planned[0].as_ref().err().expect("refused");
        assert!(err.to_string().contains("not known before"), "{err}");
    }

    #[test]
    fn the_id_is_placed_after_the_resource_type() {
        let mut v = json!({"resourceType": "Patient", "gender": "male", "id": "old"});
        set_id(v.as_object_mut().unwrap(), "new");
        assert_eq!(
            v.to_string(),
            r#"{"resourceType":"Patient","id":"new","gender":"male"}"#
        );
    }

    #[test]
    fn a_put_whose_body_id_differs_from_the_url_is_refused() {
        let entry = json!({"request": {"method": "PUT", "url": "Patient/a"},
            "resource": {"resourceType": "Patient", "id": "b"}});
        assert!(read_entry(entry).is_err());
    }
}
