//! `POST /` with a `transaction` or `batch` Bundle.
//!
//! Processing runs in three passes over the entries:
//! 1. read each entry's request (method, URL, resource) and collect every identifier lookup
//!    the bundle needs — conditional creates and updates and conditional references — so they
//!    are answered by one batched query instead of one query per entry;
//! 2. decide each entry's target id (new, matched, or given) and map every `fullUrl`
//!    (`urn:uuid:` placeholders included) to `Type/id`;
//! 3. rewrite references, check each resource against the R4 model, and write everything that
//!    passed in one database transaction.
//!
//! A transaction fails as a whole at the first bad entry (the error names it); a batch answers
//! each entry on its own.

use std::collections::{HashMap, HashSet};

use actix_web::http::StatusCode;
use actix_web::ResponseError;
use serde_json::{json, Map, Value};

use super::bundle::{meta, BundleTrace};
use super::criteria::{parse_conditional_reference, parse_identifier_query};
use super::error::FhirError;
use super::id::{is_resource_type, is_valid_id};
use crate::store::index::extract;
use crate::store::{
    instant_text, IdentifierLookup, Outcome, ResourceWrite, Store, WriteBatch, WriteOp, Written,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transaction,
    Batch,
}

/// What one entry asks for, as read from its `request`.
enum Request {
    Create {
        resource: Value,
        if_none_exist: Option<IdentifierLookup>,
    },
    Update {
        resource: Value,
        target: Target,
    },
    Delete {
        resource_type: String,
        id: String,
    },
}

enum Target {
    Id(String),
    Conditional(IdentifierLookup),
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

struct Entry {
    full_url: Option<String>,
    request: Request,
}

/// Identifier lookups answered by the database, plus resources of this bundle, so conditional
/// references can resolve to either.
struct Matches {
    stored: HashMap<IdentifierLookup, Vec<String>>,
    local: Vec<(String, String, String, String)>, // (type, id, system, value)
}

impl Matches {
    fn ids(&self, lookup: &IdentifierLookup) -> Vec<String> {
        let mut ids = self.stored.get(lookup).cloned().unwrap_or_default();
        for (t, id, system, value) in &self.local {
            let system_ok = lookup.system.as_deref().is_none_or(|s| s == system);
            if *t == lookup.resource_type
                && *value == lookup.value
                && system_ok
                && !ids.contains(id)
            {
                ids.push(id.clone());
            }
        }
        ids
    }
}

/// Processes a transaction or batch Bundle and returns the response Bundle.
pub async fn process(
    store: &Store,
    bundle: Value,
    trace: Option<&BundleTrace>,
) -> Result<Value, FhirError> {
    let kind = bundle_kind(&bundle)?;
    let raw_entries = match bundle.get("entry") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            return Err(FhirError::invalid_at(
                "entry must be an array",
                "Bundle.entry",
            ))
        }
    };
    let mut results: Vec<Option<Result<Value, FhirError>>> =
        (0..raw_entries.len()).map(|_| None).collect();
    let entries: Vec<Result<Entry, FhirError>> = raw_entries.into_iter().map(read_entry).collect();
    let lookups = collect_lookups(&entries);
    let stored = store.ids_by_identifier(&lookups).await?;
    let mut matches = Matches {
        stored,
        local: Vec::new(),
    };
    let planned = plan_targets(entries, &mut matches);
    let planned = finish_resources(planned, &matches);
    let (batch, positions) = split_writes(kind, &planned, &mut results)?;
    let written = store.write(batch).await?;
    for (index, w) in positions.into_iter().zip(written) {
        results[index] = Some(Ok(write_response(&w)));
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
    Ok(json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": meta(trace),
        "type": response_type,
        "entry": entries,
    }))
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
    let resource = entry.get("resource").cloned();
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
    Ok(Entry { full_url, request })
}

fn read_create(url: &str, resource: Option<Value>, request: &Value) -> Result<Request, FhirError> {
    let resource = resource_of_type(url, resource)?;
    let if_none_exist = match request.get("ifNoneExist").and_then(Value::as_str) {
        Some(query) => Some(parse_identifier_query(url, query.trim_start_matches('?'))?),
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
        let target = Target::Conditional(parse_identifier_query(resource_type, query)?);
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
    if url.contains('?') {
        return Err(FhirError::NotSupported(
            "conditional delete is not supported yet".into(),
        ));
    }
    let (resource_type, id) = type_and_id(url)?;
    Ok(Request::Delete {
        resource_type: resource_type.into(),
        id: id.into(),
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
            format!("resource is not a {resource_type}"),
            "resource.resourceType",
        )),
    }
}

fn collect_lookups(entries: &[Result<Entry, FhirError>]) -> Vec<IdentifierLookup> {
    let mut lookups = HashSet::new();
    for entry in entries.iter().flatten() {
        let resource = match &entry.request {
            Request::Create {
                resource,
                if_none_exist,
            } => {
                lookups.extend(if_none_exist.clone());
                resource
            }
            Request::Update { resource, target } => {
                if let Target::Conditional(lookup) = target {
                    lookups.insert(lookup.clone());
                }
                resource
            }
            Request::Delete { .. } => continue,
        };
        visit_references(resource, &mut |reference| {
            if let Some(Ok(lookup)) = parse_conditional_reference(reference) {
                lookups.insert(lookup);
            }
        });
    }
    lookups.into_iter().collect()
}

/// Pass 2: target ids. Creates and updates are recorded as local matches as they are planned,
/// so a later conditional create in the same bundle finds an earlier one.
fn plan_targets(
    entries: Vec<Result<Entry, FhirError>>,
    matches: &mut Matches,
) -> Vec<Result<(Option<String>, Planned), FhirError>> {
    let mut planned = Vec::with_capacity(entries.len());
    for entry in entries {
        let result = entry.and_then(|e| {
            let full_url = e.full_url.clone();
            plan_entry(e, matches).map(|p| (full_url, p))
        });
        if let Ok((_, Planned::Write(WriteOp::Upsert(w)))) = &result {
            for (system, value) in extract(&w.resource_type, &w.id, &w.content).identifiers {
                matches
                    .local
                    .push((w.resource_type.clone(), w.id.clone(), system, value));
            }
        }
        planned.push(result);
    }
    planned
}

fn plan_entry(entry: Entry, matches: &Matches) -> Result<Planned, FhirError> {
    match entry.request {
        Request::Create {
            resource,
            if_none_exist,
        } => {
            let resource_type = type_of(&resource);
            if let Some(lookup) = if_none_exist {
                match matches.ids(&lookup).as_slice() {
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
            Ok(upsert(
                resource_type,
                uuid::Uuid::new_v4().to_string(),
                resource,
            ))
        }
        Request::Update { resource, target } => {
            let resource_type = type_of(&resource);
            let id = match target {
                Target::Id(id) => id,
                Target::Conditional(lookup) => match matches.ids(&lookup).as_slice() {
                    [] => uuid::Uuid::new_v4().to_string(),
                    [id] => id.clone(),
                    many => return Err(ambiguous("the conditional update", many.len())),
                },
            };
            Ok(upsert(resource_type, id, resource))
        }
        Request::Delete { resource_type, id } => {
            Ok(Planned::Write(WriteOp::Delete { resource_type, id }))
        }
    }
}

fn ambiguous(what: &str, n: usize) -> FhirError {
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
    matches: &Matches,
) -> Vec<Result<Planned, FhirError>> {
    let mut targets = HashMap::new();
    for (full_url, p) in planned.iter().flatten() {
        let (Some(url), Some(target)) = (full_url, target_of(p)) else {
            continue;
        };
        targets.insert(url.clone(), target);
    }
    planned
        .into_iter()
        .map(|p| p.and_then(|(_, p)| finish(p, &targets, matches)))
        .collect()
}

fn target_of(planned: &Planned) -> Option<String> {
    match planned {
        Planned::Write(WriteOp::Upsert(w)) => Some(format!("{}/{}", w.resource_type, w.id)),
        Planned::Existing { resource_type, id } => Some(format!("{resource_type}/{id}")),
        Planned::Write(WriteOp::Delete { .. }) => None,
    }
}

fn finish(
    planned: Planned,
    targets: &HashMap<String, String>,
    matches: &Matches,
) -> Result<Planned, FhirError> {
    let Planned::Write(WriteOp::Upsert(mut w)) = planned else {
        return Ok(planned);
    };
    rewrite_references(&mut w.content, targets, matches)?;
    if let Value::Object(map) = &mut w.content {
        set_id(map, &w.id);
    }
    w.content = hl7bridge_fhir_codec::canonicalize(w.content).map_err(codec_error)?;
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
    }
}

fn rewrite_references(
    content: &mut Value,
    targets: &HashMap<String, String>,
    matches: &Matches,
) -> Result<(), FhirError> {
    let mut failure = None;
    visit_references_mut(content, &mut |reference| {
        if failure.is_some() {
            return;
        }
        match resolve(reference, targets, matches) {
            Ok(Some(resolved)) => *reference = resolved,
            Ok(None) => {}
            Err(err) => failure = Some(err),
        }
    });
    failure.map_or(Ok(()), Err)
}

fn resolve(
    reference: &str,
    targets: &HashMap<String, String>,
    matches: &Matches,
) -> Result<Option<String>, FhirError> {
    if let Some(target) = targets.get(reference) {
        return Ok(Some(target.clone()));
    }
    if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
        return Err(FhirError::invalid(format!(
            "reference {reference:?} names no entry of this bundle"
        )));
    }
    let Some(lookup) = parse_conditional_reference(reference) else {
        return Ok(None);
    };
    let lookup = lookup?;
    match matches.ids(&lookup).as_slice() {
        [id] => Ok(Some(format!("{}/{id}", lookup.resource_type))),
        [] => Err(FhirError::invalid(format!(
            "conditional reference {reference:?} matched nothing"
        ))),
        many => Err(ambiguous("a conditional reference", many.len())),
    }
}

fn visit_references(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| visit_references(v, f)),
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("reference") {
                f(r);
            }
            map.values().for_each(|v| visit_references(v, f));
        }
        _ => {}
    }
}

fn visit_references_mut(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| visit_references_mut(v, f)),
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("reference") {
                f(r);
            }
            for (key, v) in map.iter_mut() {
                if key != "reference" {
                    visit_references_mut(v, f);
                }
            }
        }
        _ => {}
    }
}

/// Splits planned entries into the write batch and immediate answers. In a transaction any
/// failed entry fails the whole bundle.
fn split_writes(
    kind: Kind,
    planned: &[Result<Planned, FhirError>],
    results: &mut [Option<Result<Value, FhirError>>],
) -> Result<(WriteBatch, Vec<usize>), FhirError> {
    let mut batch = WriteBatch::default();
    let mut positions = Vec::new();
    let mut targets = HashSet::new();
    for (index, p) in planned.iter().enumerate() {
        match p {
            Err(err) if kind == Kind::Transaction => return Err(clone_error(err).in_entry(index)),
            Err(err) => results[index] = Some(Err(clone_error(err).in_entry(index))),
            Ok(Planned::Existing { resource_type, id }) => {
                let location = format!("{resource_type}/{id}");
                results[index] = Some(Ok(
                    json!({"response": {"status": "200 OK", "location": location}}),
                ));
            }
            Ok(Planned::Write(op)) => {
                let key = op_key(op);
                if !targets.insert(key.clone()) {
                    let err =
                        FhirError::invalid(format!("{key} is the target of more than one entry"));
                    if kind == Kind::Transaction {
                        return Err(err.in_entry(index));
                    }
                    results[index] = Some(Err(err.in_entry(index)));
                    continue;
                }
                batch.ops.push(op.clone());
                positions.push(index);
            }
        }
    }
    Ok((batch, positions))
}

fn op_key(op: &WriteOp) -> String {
    match op {
        WriteOp::Upsert(w) => format!("{}/{}", w.resource_type, w.id),
        WriteOp::Delete { resource_type, id } => format!("{resource_type}/{id}"),
    }
}

/// Errors are kept per entry and reported once; this copies one for the response.
fn clone_error(err: &FhirError) -> FhirError {
    match err {
        FhirError::Invalid {
            message,
            expression,
        } => FhirError::Invalid {
            message: message.clone(),
            expression: expression.clone(),
        },
        FhirError::NotSupported(m) => FhirError::NotSupported(m.clone()),
        FhirError::PreconditionFailed(m) => FhirError::PreconditionFailed(m.clone()),
        FhirError::NotFound(m) => FhirError::NotFound(m.clone()),
        FhirError::Conflict(m) => FhirError::Conflict(m.clone()),
        _ => FhirError::Internal,
    }
}

fn write_response(w: &Written) -> Value {
    let status = match w.outcome {
        Outcome::Created => "201 Created",
        Outcome::Updated | Outcome::Unchanged => "200 OK",
        Outcome::Deleted | Outcome::NothingToDelete => "204 No Content",
    };
    let mut response = json!({"status": status});
    if matches!(
        w.outcome,
        Outcome::Created | Outcome::Updated | Outcome::Unchanged
    ) {
        response["location"] = json!(format!(
            "{}/{}/_history/{}",
            w.resource_type, w.id, w.version_id
        ));
        response["etag"] = json!(format!("W/\"{}\"", w.version_id));
        response["lastModified"] = json!(instant_text(w.last_updated_us));
    }
    json!({"response": response})
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

    fn no_matches() -> Matches {
        Matches {
            stored: HashMap::new(),
            local: Vec::new(),
        }
    }

    #[test]
    fn urn_uuid_placeholders_are_rewritten_to_type_and_id() {
        let targets = HashMap::from([("urn:uuid:1".to_string(), "Patient/abc".to_string())]);
        let mut obs =
            json!({"resourceType": "Observation", "subject": {"reference": "urn:uuid:1"}});
        rewrite_references(&mut obs, &targets, &no_matches()).unwrap();
        assert_eq!(obs["subject"]["reference"], "Patient/abc");
    }

    #[test]
    fn an_unknown_placeholder_is_an_error_not_a_dangling_reference() {
        let mut obs = json!({"subject": {"reference": "urn:uuid:nope"}});
        assert!(rewrite_references(&mut obs, &HashMap::new(), &no_matches()).is_err());
    }

    #[test]
    fn a_conditional_reference_resolves_to_a_resource_of_the_same_bundle() {
        let mut matches = no_matches();
        matches.local.push((
            "Organization".into(),
            "o1".into(),
            "urn:x".into(),
            "7".into(),
        ));
        let mut enc = json!({"serviceProvider": {"reference": "Organization?identifier=urn:x|7"}});
        rewrite_references(&mut enc, &HashMap::new(), &matches).unwrap();
        assert_eq!(enc["serviceProvider"]["reference"], "Organization/o1");
    }

    #[test]
    fn an_ambiguous_conditional_reference_is_a_precondition_failure() {
        let mut matches = no_matches();
        for id in ["o1", "o2"] {
            matches
                .local
                .push(("Organization".into(), id.into(), "urn:x".into(), "7".into()));
        }
        let mut enc = json!({"serviceProvider": {"reference": "Organization?identifier=7"}});
        let err = rewrite_references(&mut enc, &HashMap::new(), &matches).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::PRECONDITION_FAILED);
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
