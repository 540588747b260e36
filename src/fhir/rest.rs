//! Single-resource interactions: create (`POST /{type}`), update (`PUT /{type}/{id}`), patch
//! (`PATCH /{type}/{id}`, written as an update) and delete (`DELETE /{type}/{id}`). Each runs as
//! a one-entry transaction, so every rule of the Bundle path holds for all of them: the model
//! check, `If-None-Exist` (conditional create), reference resolution, versioning, and the
//! per-node serialisation of conditional creates.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::{FhirError, FHIR_JSON};
use super::handlers::{
    base_url, http_date, live_resource, read_patch_body, read_resource_body, Answer,
};
use super::id::{is_resource_type, is_valid_id};
use super::transaction::{self, Return};
use super::FhirState;
use crate::auth::{Permission, Reach};

pub async fn create(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> Answer {
    let resource_type = known_type(path.into_inner())?;
    let body = read_resource_body(&state, &req, body).await?;
    let resource = body.value;
    let mut request = json!({"method": "POST", "url": resource_type});
    if let Some(query) = header_text(&req, "if-none-exist")? {
        request["ifNoneExist"] = json!(query);
    }
    let entry = json!({"resource": resource, "request": request});
    run(&state, &req, &resource_type, entry).await
}

pub async fn update(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Answer {
    let (resource_type, url) = instance(path.into_inner())?;
    put(&state, &req, &resource_type, url, body).await
}

pub async fn delete(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Answer {
    let (resource_type, url) = instance(path.into_inner())?;
    remove(&state, &req, &resource_type, url).await
}

/// `PUT /{type}?criteria`: conditional update (the one match, else a create).
pub async fn conditional_update(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> Answer {
    let resource_type = known_type(path.into_inner())?;
    let url = conditional_url(&req, &resource_type)?;
    put(&state, &req, &resource_type, url, body).await
}

/// `DELETE /{type}?criteria`: conditional delete of the one match (412 when several match,
/// 204 when none does).
pub async fn conditional_delete(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let resource_type = known_type(path.into_inner())?;
    let url = conditional_url(&req, &resource_type)?;
    remove(&state, &req, &resource_type, url).await
}

/// How often a PATCH without `If-Match` is tried again when another write got in between.
const PATCH_ATTEMPTS: usize = 3;

/// `PATCH /{type}/{id}` with a JSON Patch: applied to the current version, checked through the
/// codec (422 when the result is not a valid resource), and written as an update that holds
/// only if that version is still current. With `If-Match` a stale version is a 412; without
/// it, a write that got in between makes the patch start again on the newer version.
pub async fn patch(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Answer {
    let (resource_type, url) = instance(path.into_inner())?;
    let id = url[resource_type.len() + 1..].to_string();
    let operations = read_patch_body(&state, &req, body).await?;
    let asked = header_text(&req, "if-match")?
        .map(|tag| transaction::parse_etag(Some(&tag)))
        .transpose()?;
    let access = super::access::access_of(&req);
    for attempt in 1..=PATCH_ATTEMPTS {
        let current = live_resource(&state, &resource_type, &id).await?;
        // Before the patch's `test` operations or the version check are evaluated: their
        // answers would tell a patient-scoped caller what another patient's resource holds.
        if access.reach(&resource_type, Permission::Update) == Reach::Patient {
            let content: Value =
                serde_json::from_str(&current.content).map_err(|_| FhirError::Internal)?;
            if !super::access::writable(access.patient(), &resource_type, &id, &content) {
                return Err(FhirError::Forbidden(format!(
                    "{url} lies outside the patient the token is limited to"
                )));
            }
        }
        if asked.is_some_and(|version| version != current.version_id) {
            return Err(FhirError::PreconditionFailed(format!(
                "{url} is at version {}",
                current.version_id
            )));
        }
        let mut resource: Value =
            serde_json::from_str(&current.content).map_err(|_| FhirError::Internal)?;
        super::patch::apply(&mut resource, &operations, state.max_body_bytes)?;
        if let Err(err) = hl7bridge_fhir_codec::canonicalize(resource.clone()) {
            return Err(FhirError::Unprocessable(format!(
                "the patched resource is not valid: {err}"
            )));
        }
        let if_match = format!("W/\"{}\"", current.version_id);
        let entry = json!({"resource": resource,
            "request": {"method": "PUT", "url": url, "ifMatch": if_match}});
        match run(&state, &req, &resource_type, entry).await {
            Err(FhirError::PreconditionFailed(_))
                if asked.is_none() && attempt < PATCH_ATTEMPTS => {}
            answer => return answer,
        }
    }
    Err(FhirError::Conflict(format!(
        "{url} kept changing while it was patched; try again"
    )))
}

/// A PUT of the request body to `url` (`Type/id` or `Type?condition`).
async fn put(
    state: &FhirState,
    req: &HttpRequest,
    resource_type: &str,
    url: String,
    body: web::Payload,
) -> Answer {
    let body = read_resource_body(state, req, body).await?;
    let entry = json!({"resource": body.value, "request": {"method": "PUT", "url": url}});
    run(state, req, resource_type, entry).await
}

/// A DELETE of `url` (`Type/id` or `Type?condition`).
async fn remove(state: &FhirState, req: &HttpRequest, resource_type: &str, url: String) -> Answer {
    let entry = json!({"request": {"method": "DELETE", "url": url}});
    run(state, req, resource_type, entry).await
}

/// `Type?query`, refusing a type-level PUT or DELETE without a condition.
fn conditional_url(req: &HttpRequest, resource_type: &str) -> Result<String, FhirError> {
    let query = req.query_string();
    if query.is_empty() {
        return Err(FhirError::invalid(format!(
            "{} /{resource_type} needs search criteria (identifier=…, or any others)",
            req.method()
        )));
    }
    Ok(format!("{resource_type}?{query}"))
}

/// The checked type of an instance path and its `Type/id`.
fn instance((resource_type, id): (String, String)) -> Result<(String, String), FhirError> {
    let resource_type = known_type(resource_type)?;
    valid_id(&id)?;
    let url = format!("{resource_type}/{id}");
    Ok((resource_type, url))
}

/// Runs `entry` as a one-entry transaction and answers as the single interaction would.
async fn run(
    state: &FhirState,
    req: &HttpRequest,
    resource_type: &str,
    mut entry: Value,
) -> Answer {
    for (name, field) in [
        ("if-match", "ifMatch"),
        ("if-none-match", "ifNoneMatch"),
        ("if-modified-since", "ifModifiedSince"),
    ] {
        if let Some(value) = header_text(req, name)? {
            entry["request"][field] = json!(value);
        }
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
    let gate = &state.conditional_gate;
    let response = transaction::process(
        &state.store,
        gate,
        &state.bundle_limits,
        bundle,
        transaction::Caller {
            access: &super::access::access_of(req),
            new_ids: &transaction::NewIds::Random,
            trace: None,
            // The answer is the resource unless the client prefers an outcome (or nothing);
            // either comes from the write itself, not from a read after it.
            returns: match Return::preferred(req.headers()) {
                Some(Return::OperationOutcome) => Return::OperationOutcome,
                _ => Return::Representation,
            },
        },
    )
    .await
    .map_err(|e| without_entry(e, resource_type))?;
    super::access::note_written(req, &response);
    let mut response = response;
    answer(state, req, response["entry"][0].take())
}

/// The single interaction's answer to its one entry's `response` (and stored `resource`).
fn answer(state: &FhirState, req: &HttpRequest, mut entry: Value) -> Answer {
    let preferred = Return::preferred(req.headers());
    let outcome = &entry["response"];
    let status_text = outcome["status"].as_str().unwrap_or("500");
    let code: u16 = status_text
        .split(' ')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(500);
    // A delete answered with an outcome is 200: a 204 carries no body.
    let code = match (code, preferred) {
        (204, Some(Return::OperationOutcome)) => 200,
        (code, _) => code,
    };
    let status = StatusCode::from_u16(code).map_err(|_| FhirError::Internal)?;
    let mut response = HttpResponse::build(status);
    if let Some(preferred) = preferred {
        response.insert_header(("Preference-Applied", preferred.as_header()));
    }
    if let Some(location) = outcome["location"].as_str() {
        response.insert_header((
            header::LOCATION,
            format!("{}/{location}", base_url(state, req)),
        ));
    }
    if let Some(etag) = outcome["etag"].as_str() {
        response.insert_header((header::ETAG, etag.to_string()));
    }
    let modified = outcome["lastModified"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    if let Some(at) = modified {
        let us = at.timestamp_micros();
        response.insert_header((header::LAST_MODIFIED, http_date(us)));
    }
    let body = match preferred {
        Some(Return::Minimal) => None,
        Some(Return::OperationOutcome) => entry["response"].get_mut("outcome").map(Value::take),
        Some(Return::Representation) | None => entry.get_mut("resource").map(Value::take),
    };
    match body {
        Some(body) => Ok(response.content_type(FHIR_JSON).body(body.to_string())),
        None => Ok(response.finish()),
    }
}

/// A single interaction's errors name the resource, not a Bundle entry.
fn without_entry(err: FhirError, resource_type: &str) -> FhirError {
    match err {
        FhirError::AtEntry { error, .. } => match *error {
            FhirError::Invalid {
                message,
                expression,
            } => FhirError::Invalid {
                message,
                // `request.url` and `request.ifNoneExist` are the request's own URL and
                // If-None-Exist header, which no expression names.
                expression: expression.filter(|e| !e.starts_with("request.")).map(|e| {
                    match e.strip_prefix("resource") {
                        Some(rest) => format!("{resource_type}{rest}"),
                        None => e,
                    }
                }),
            },
            other => other,
        },
        other => other,
    }
}

/// The resource type of a path, or 404 for a name R4 does not define.
pub(super) fn known_type(resource_type: String) -> Result<String, FhirError> {
    if is_resource_type(&resource_type) {
        Ok(resource_type)
    } else {
        Err(FhirError::NotFound(format!(
            "unknown resource type {resource_type:?}"
        )))
    }
}

fn valid_id(id: &str) -> Result<(), FhirError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(FhirError::invalid(format!("{id:?} is not a valid id")))
    }
}

/// A header's value. One that is present but not visible ASCII is an error, never treated as
/// absent: dropping an unreadable `If-None-Exist` would turn a conditional create into a plain
/// one.
/// Sent twice, it is refused too: these headers hold one value, and reading only the first
/// (say, the first of two `If-None-Exist` conditions) would widen a match.
fn header_text(req: &HttpRequest, name: &str) -> Result<Option<String>, FhirError> {
    let mut values = req.headers().get_all(name);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(FhirError::invalid(format!(
            "the {name} header is given more than once"
        )));
    }
    let text = value
        .to_str()
        .map_err(|_| FhirError::invalid(format!("the {name} header is not visible ASCII")))?;
    Ok(Some(text.to_string()))
}
