//! Request handlers: each reads its input, calls the store, and answers FHIR JSON (which
//! [`super::negotiate`] turns into XML when asked).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::access::{self, access_of};
use super::bundle::{searchset, BundleTrace, SearchEntry};
use super::capability::capability_statement;
use super::criteria::percent_decode;
use super::error::{FhirError, FHIR_JSON};
use super::id::{is_resource_type, is_valid_id};
use super::rest::known_type;
use super::search::{self, SearchRequest, Total};
use super::summary::{summarise, Summary};
use super::{transaction, BodyTimeouts, FhirState};
use crate::auth::{Access, Permission, Reach};
use crate::store::search_params::date_range;
use crate::store::{EverythingPage, HistoryCursor, Search, StoredResource, SupportingMode};
use crate::telemetry::span_traceparent;

/// A resource outside what the caller's token reaches.
fn not_yours(resource_type: &str, id: &str) -> FhirError {
    FhirError::Forbidden(format!(
        "{resource_type}/{id} is outside what the token's scopes reach"
    ))
}

pub(super) type Answer = Result<HttpResponse, FhirError>;

pub async fn metadata(state: web::Data<FhirState>, req: HttpRequest) -> HttpResponse {
    let body = capability_statement(&base_url(&state, &req), &state.started);
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string())
}

/// The definition of the trace context extension, served by the server that defines it.
pub async fn trace_context_definition(state: web::Data<FhirState>) -> HttpResponse {
    let body = super::definitions::trace_context_definition(&state.canonical_base);
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string())
}

pub async fn read(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Answer {
    let (resource_type, id) = path.into_inner();
    let summary = Summary::from_query(&decode_pairs(req.query_string())?)?;
    let mut stored = live_resource(&state, &resource_type, &id).await?;
    if !access::visible(&access_of(&req), &stored) {
        return Err(not_yours(&resource_type, &id));
    }
    if not_modified(&req, &stored) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, format!("W/\"{}\"", stored.version_id)))
            .insert_header((header::LAST_MODIFIED, http_date(stored.last_updated_us)))
            .finish());
    }
    if let Some(summary) = summary {
        stored.content = summarise(&stored.content, &resource_type, summary);
    }
    Ok(resource_response(stored))
}

/// Conditional read: `If-None-Match` naming the current version (or `*`), or, without it,
/// `If-Modified-Since` at or after the last change (HTTP dates have whole seconds).
fn not_modified(req: &HttpRequest, stored: &StoredResource) -> bool {
    let text = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(tags) = text(header::IF_NONE_MATCH) {
        let current = stored.version_id.to_string();
        return tags.split(',').map(str::trim).any(|tag| {
            let tag = tag.trim_start_matches("W/").trim_matches('"');
            tag == "*" || tag == current
        });
    }
    let Some(since) = text(header::IF_MODIFIED_SINCE) else {
        return false;
    };
    match chrono::DateTime::parse_from_rfc2822(&since.replace("GMT", "+0000")) {
        Ok(at) => stored.last_updated_us / 1_000_000 <= at.timestamp(),
        Err(_) => false,
    }
}

pub async fn vread(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Answer {
    let access = access_of(&req);
    let (resource_type, id, vid) = path.into_inner();
    let label = format!("{resource_type}/{id}/_history/{vid}");
    let version: i64 = vid
        .parse()
        .ok()
        .filter(|_| is_resource_type(&resource_type) && is_valid_id(&id))
        .ok_or_else(|| FhirError::NotFound(format!("{label} is not known")))?;
    match state
        .reads
        .read_version(&resource_type, &id, version)
        .await?
    {
        None => Err(FhirError::NotFound(format!("{label} is not known"))),
        Some(r) if !r.deleted && !access::visible(&access, &r) => {
            Err(not_yours(&resource_type, &id))
        }
        Some(r) if r.deleted => {
            if access.reach(&resource_type, Permission::Read) != Reach::All {
                return Err(not_yours(&resource_type, &id));
            }
            Err(FhirError::Gone(format!("{label} is a deletion")))
        }
        Some(r) => Ok(resource_response(r)),
    }
}

/// Most versions on one history page, and the default.
const MAX_HISTORY_PAGE: u32 = 1000;
const DEFAULT_HISTORY_PAGE: u32 = 50;

pub async fn history(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Answer {
    let (resource_type, id) = path.into_inner();
    if !is_resource_type(&resource_type) || !is_valid_id(&id) {
        return Err(FhirError::NotFound(format!(
            "{resource_type}/{id} is not known"
        )));
    }
    let pairs = decode_pairs(req.query_string())?;
    let (known, unknown): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .partition(|(name, _)| matches!(name.as_str(), "_count" | "_page_before" | "_since"));
    let unknown: Vec<String> = unknown.into_iter().map(|(name, _)| name).collect();
    ignored_parameters(&unknown, &req)?;
    let number = |name: &str| -> Result<Option<i64>, FhirError> {
        let Some((_, raw)) = known.iter().rev().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        raw.parse()
            .map(Some)
            .map_err(|_| FhirError::invalid(format!("{name} must be a whole number")))
    };
    let count = number("_count")?
        .unwrap_or(DEFAULT_HISTORY_PAGE.into())
        .clamp(1, MAX_HISTORY_PAGE.into());
    let before = number("_page_before")?;
    let since = match known.iter().rev().find(|(n, _)| n == "_since") {
        Some((_, raw)) => {
            let at = date_range(&raw.replace(' ', "+"))
                .ok_or_else(|| FhirError::invalid_at("_since: not a FHIR instant", "_since"))?;
            Some((at.0, raw.clone()))
        }
        None => None,
    };
    let Some(current) = state.reads.read(&resource_type, &id).await? else {
        return Err(FhirError::NotFound(format!(
            "{resource_type}/{id} is not known"
        )));
    };
    let access = access_of(&req);
    let limited = access.reach(&resource_type, Permission::Read) != Reach::All;
    if limited && !access::visible(&access, &current) {
        return Err(not_yours(&resource_type, &id));
    }
    let mut versions = state
        .reads
        .history(
            &resource_type,
            &id,
            before,
            since.as_ref().map(|(at, _)| *at),
            count as u32,
        )
        .await?;
    if limited {
        // Each version on its own: a resource may have moved between compartments.
        versions.retain(|v| access::visible(&access, v));
    }
    let base = base_url(&state, &req);
    let page_url = |before: Option<i64>| {
        let cursor = before
            .map(|b| format!("&_page_before={b}"))
            .unwrap_or_default();
        let since = since
            .as_ref()
            .map(|(_, raw)| format!("&_since={}", encode_query_value(raw)))
            .unwrap_or_default();
        format!("{base}/{resource_type}/{id}/_history?_count={count}{since}{cursor}")
    };
    let mut links = vec![("self", page_url(before))];
    if let Some(oldest) = versions
        .last()
        .filter(|v| v.version_id > 1 && versions.len() as i64 == count)
    {
        links.push(("next", page_url(Some(oldest.version_id))));
    }
    let total = (since.is_none() && !limited).then_some(current.version_id);
    let body = super::bundle::history(&base, &links, total, &versions, trace(&state).as_ref());
    Ok(bundle_response(body))
}

/// `GET /{type}/_history`: every version of every resource of the type, newest first.
pub async fn type_history(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let resource_type = known_type(path.into_inner())?;
    changes_history(&state, &req, Some(&resource_type)).await
}

/// `GET /_history`: every version of every resource, newest first.
pub async fn system_history(state: web::Data<FhirState>, req: HttpRequest) -> Answer {
    changes_history(&state, &req, None).await
}

/// A page of type or system history: `_count`, `_since`, and a cursor in `next` links.
async fn changes_history(
    state: &FhirState,
    req: &HttpRequest,
    resource_type: Option<&str>,
) -> Answer {
    let mut count = DEFAULT_HISTORY_PAGE;
    let mut since = None;
    let mut cursor = None;
    let mut unknown = Vec::new();
    for (name, value) in decode_pairs(req.query_string())? {
        let invalid = |what: &str| FhirError::invalid_at(format!("{name}: {what}"), name.clone());
        match name.as_str() {
            "_count" => {
                let n: u32 = value.parse().map_err(|_| invalid("not a whole number"))?;
                count = n.clamp(1, MAX_HISTORY_PAGE);
            }
            "_since" => {
                let range = date_range(&value.replace(' ', "+"));
                since = Some((range.ok_or_else(|| invalid("not a FHIR instant"))?.0, value));
            }
            "_cursor" => {
                cursor = Some(
                    parse_history_cursor(&value)
                        .ok_or_else(|| invalid("not a cursor this server wrote"))?,
                )
            }
            _ => unknown.push(name),
        }
    }
    ignored_parameters(&unknown, req)?;
    let mut versions = state
        .reads
        .history_all(
            resource_type,
            since.as_ref().map(|(at, _)| *at),
            cursor.as_ref(),
            count,
        )
        .await?;
    let base = base_url(state, req);
    let path = resource_type.map_or("_history".to_string(), |t| format!("{t}/_history"));
    let page_url = |after: Option<String>| {
        let mut url = format!("{base}/{path}?_count={count}");
        if let Some((_, text)) = &since {
            url.push_str(&format!("&_since={}", encode_query_value(text)));
        }
        if let Some(after) = after {
            url.push_str(&format!("&_cursor={}", encode_query_value(&after)));
        }
        url
    };
    let mut links = vec![("self", page_url(cursor.as_ref().map(history_cursor_text)))];
    let full_page = versions.len() as u32 == count;
    let next = versions
        .last()
        .filter(|_| full_page)
        .map(|last| HistoryCursor {
            last_updated_us: last.last_updated_us,
            resource_type: last.resource_type.clone(),
            id: last.id.clone(),
            version_id: last.version_id,
        });
    // What the caller may not see is left out; the cursor still moves past it.
    let access = access_of(req);
    versions.retain(
        |v| match access.reach(&v.resource_type, Permission::Search) {
            Reach::All => true,
            Reach::None => false,
            Reach::Patient => !v.deleted && access::visible(&access, v),
        },
    );
    if let Some(next) = next {
        links.push(("next", page_url(Some(history_cursor_text(&next)))));
    }
    let body = super::bundle::history(&base, &links, None, &versions, trace(state).as_ref());
    Ok(bundle_response(body))
}

/// `<lastUpdated µs>.<version>.<type>.<id>` (ids may hold dots; they come last).
fn history_cursor_text(c: &HistoryCursor) -> String {
    format!(
        "{}.{}.{}.{}",
        c.last_updated_us, c.version_id, c.resource_type, c.id
    )
}

fn parse_history_cursor(text: &str) -> Option<HistoryCursor> {
    let mut parts = text.splitn(4, '.');
    Some(HistoryCursor {
        last_updated_us: parts.next()?.parse().ok()?,
        version_id: parts.next()?.parse().ok()?,
        resource_type: parts.next()?.to_string(),
        id: parts.next()?.to_string(),
    })
}

fn resource_response(stored: StoredResource) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((header::ETAG, format!("W/\"{}\"", stored.version_id)))
        .insert_header((header::LAST_MODIFIED, http_date(stored.last_updated_us)))
        .body(stored.content)
}

pub async fn search(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let resource_type = known_type(path.into_inner())?;
    let pairs = decode_pairs(req.query_string())?;
    run_search(&state, &req, &resource_type, pairs).await
}

/// `POST /{type}/_search`: the parameters in an `application/x-www-form-urlencoded` body (and
/// the query string), for clients that keep them out of URLs and logs.
pub async fn search_post(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Answer {
    let resource_type = known_type(path.into_inner())?;
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form && !body.is_empty() {
        return Err(FhirError::UnsupportedMediaType(
            "_search takes application/x-www-form-urlencoded parameters".into(),
        ));
    }
    let text =
        std::str::from_utf8(&body).map_err(|_| FhirError::invalid("the form body is not UTF-8"))?;
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let wanted = super::negotiate::from_form(req.query_string(), text, accept)?;
    let mut pairs = decode_pairs(req.query_string())?;
    pairs.extend(decode_pairs(text)?);
    let mut response = run_search(&state, &req, &resource_type, pairs).await?;
    if let Some(wanted) = wanted {
        response.extensions_mut().insert(wanted);
    }
    Ok(response)
}

/// One page of results: at most `_count` resources after the cursor, a `next` link when there
/// are more (carrying every applied parameter), and the total when asked for or free.
async fn run_search(
    state: &FhirState,
    req: &HttpRequest,
    resource_type: &str,
    pairs: Vec<(String, String)>,
) -> Answer {
    let mut request = SearchRequest::read(resource_type, pairs, state.max_count)?;
    let access = access_of(req);
    if let Some(restriction) = access::restriction(&access, resource_type)? {
        request.criteria.push(restriction);
    }
    let ignored = ignored_parameters(&request.unknown, req)?;
    let base = base_url(state, req);
    let link = |cursor: Option<String>| {
        let mut params: Vec<String> = request
            .applied
            .iter()
            .map(|(n, v)| format!("{}={}", encode_query_value(n), encode_query_value(v)))
            .collect();
        if let Some(cursor) = cursor {
            params.push(format!("_cursor={}", encode_query_value(&cursor)));
        }
        format!("{base}/{resource_type}?{}", params.join("&"))
    };
    let self_cursor = request
        .cursor
        .as_ref()
        .map(|(at, id)| search::cursor_text(*at, id));
    let mut links = vec![("self", link(self_cursor))];
    let trace = trace(state);
    if request.count_only {
        let total = state
            .reads
            .search_count(resource_type, &request.criteria)
            .await?;
        let body = searchset(
            &base,
            &links,
            Some(total as usize),
            &[],
            trace.as_ref(),
            ignored,
        );
        return Ok(bundle_response(body));
    }
    let mut page = state
        .reads
        .search(&Search {
            resource_type: resource_type.to_string(),
            criteria: request.criteria.clone(),
            order: request.order,
            after: request.cursor.clone(),
            limit: request.count + 1,
        })
        .await?;
    let more = page.len() as u64 > request.count;
    page.truncate(request.count as usize);
    let cursor_of_last = page
        .last()
        .map(|(last, key)| search::cursor_text(*key, &last.id));
    let mut page: Vec<StoredResource> = page.into_iter().map(|(r, _)| r).collect();
    if let (true, Some(cursor)) = (more, cursor_of_last) {
        links.push(("next", link(Some(cursor))));
    }
    let total = match request.total {
        Total::Accurate => Some(
            state
                .reads
                .search_count(resource_type, &request.criteria)
                .await? as usize,
        ),
        Total::Cheap if request.cursor.is_none() && !more => Some(page.len()),
        _ => None,
    };
    let (mut included, capped) = includes(state, &request, &page).await?;
    included.retain(|r| access::visible(&access, r));
    if let Some(elements) = &request.elements {
        for r in &mut page {
            r.content = search::subset(&r.content, elements);
        }
    }
    let mut uncovered = std::collections::BTreeSet::new();
    if let Some(summary) = request.summary {
        for r in page.iter_mut().chain(included.iter_mut()) {
            if !summary.covers(&r.resource_type) {
                uncovered.insert(r.resource_type.clone());
            }
            r.content = summarise(&r.content, &r.resource_type, summary);
        }
    }
    let mut warnings = Vec::new();
    if capped {
        warnings.push(json!({"severity": "warning", "code": "too-costly", "diagnostics":
            format!("_revinclude added at most {MAX_REVINCLUDED} resources per parameter; use a smaller _count")}));
    }
    if !uncovered.is_empty() {
        let types: Vec<String> = uncovered.into_iter().collect();
        warnings.push(json!({"severity": "warning", "code": "not-supported", "diagnostics":
            format!("_summary has no element table for {}: those resources are whole", types.join(", "))}));
    }
    let ignored = if warnings.is_empty() {
        ignored
    } else {
        let mut outcome =
            ignored.unwrap_or_else(|| json!({"resourceType": "OperationOutcome", "issue": []}));
        if let Some(issues) = outcome["issue"].as_array_mut() {
            issues.extend(warnings);
        }
        Some(outcome)
    };
    let entries: Vec<_> = page
        .iter()
        .map(|r| SearchEntry {
            resource: r,
            mode: "match",
        })
        .chain(included.iter().map(|r| SearchEntry {
            resource: r,
            mode: "include",
        }))
        .collect();
    let body = searchset(&base, &links, total, &entries, trace.as_ref(), ignored);
    Ok(bundle_response(body))
}

/// Most resources `_revinclude` adds to one page.
const MAX_REVINCLUDED: u64 = 1000;

/// `_include` and `_revinclude` for one page: one level, each resource once, none that is
/// already a match; and whether a `_revinclude` reached its cap.
async fn includes(
    state: &FhirState,
    request: &SearchRequest,
    page: &[StoredResource],
) -> Result<(Vec<StoredResource>, bool), FhirError> {
    let keys: Vec<(&str, &str)> = page
        .iter()
        .map(|r| (r.resource_type.as_str(), r.id.as_str()))
        .collect();
    let mut seen: std::collections::HashSet<(String, String)> = page
        .iter()
        .map(|r| (r.resource_type.clone(), r.id.clone()))
        .collect();
    let mut out = Vec::new();
    let mut capped = false;
    if keys.is_empty() {
        return Ok((out, capped));
    }
    for (paths, target) in &request.includes {
        let found = state
            .reads
            .included(&keys, paths, target.as_deref())
            .await?;
        out.extend(found);
    }
    for (source, paths) in &request.revincludes {
        let found = state
            .reads
            .revincluded(source, paths, &keys, MAX_REVINCLUDED)
            .await?;
        capped |= found.len() as u64 >= MAX_REVINCLUDED;
        out.extend(found);
    }
    out.retain(|r| seen.insert((r.resource_type.clone(), r.id.clone())));
    Ok((out, capped))
}

/// `GET /Patient/{id}/$everything`.
pub async fn everything(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let pairs = decode_pairs(req.query_string())?;
    everything_of(state, req, path.into_inner(), pairs).await
}

/// `POST /Patient/{id}/$everything`, its parameters in a Parameters resource (and the query).
pub async fn everything_post(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> Answer {
    let pairs = posted_parameters(&state, &req, body).await?;
    everything_of(state, req, path.into_inner(), pairs).await
}

/// The query's parameters, then those of the Parameters resource in the body, as name-value
/// pairs in their query-string form (a POSTed operation means the same as its GET).
async fn posted_parameters(
    state: &FhirState,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<Vec<(String, String)>, FhirError> {
    let mut pairs = decode_pairs(req.query_string())?;
    let parameters = read_resource_body(state, req, body).await?;
    pairs.extend(parameter_pairs(&parameters.value)?);
    Ok(pairs)
}

/// The most parameters a POSTed operation takes: `$everything` has six, and each becomes part
/// of the `next` link.
const MAX_OPERATION_PARAMETERS: usize = 64;

/// A Parameters resource's simple parameters as name-value pairs.
fn parameter_pairs(parameters: &Value) -> Result<Vec<(String, String)>, FhirError> {
    if parameters["resourceType"] != "Parameters" {
        return Err(FhirError::invalid_at(
            "the body of a POSTed operation is a Parameters resource",
            "resourceType",
        ));
    }
    let listed = match parameters.get("parameter") {
        None => &[][..],
        Some(Value::Array(listed)) => listed.as_slice(),
        Some(_) => {
            return Err(FhirError::invalid_at(
                "Parameters.parameter must be a JSON array",
                "Parameters.parameter",
            ))
        }
    };
    if listed.len() > MAX_OPERATION_PARAMETERS {
        return Err(FhirError::invalid_at(
            format!("at most {MAX_OPERATION_PARAMETERS} parameters"),
            "Parameters.parameter",
        ));
    }
    listed
        .iter()
        .enumerate()
        .map(|(i, parameter)| {
            let at = format!("Parameters.parameter[{i}]");
            let name = parameter["name"]
                .as_str()
                .ok_or_else(|| FhirError::invalid_at("a parameter without a name", at.clone()))?;
            let value = parameter.as_object().and_then(|fields| {
                fields
                    .iter()
                    .find(|(key, _)| key.starts_with("value"))
                    .and_then(|(_, value)| match value {
                        Value::String(text) => Some(text.clone()),
                        Value::Number(number) => Some(number.to_string()),
                        _ => None,
                    })
            });
            let value = value.ok_or_else(|| {
                FhirError::invalid_at(
                    format!("{name}: takes a single primitive value[x]"),
                    at.clone(),
                )
            })?;
            Ok((name.to_string(), value))
        })
        .collect()
}

async fn everything_of(
    state: web::Data<FhirState>,
    req: HttpRequest,
    id: String,
    pairs: Vec<(String, String)>,
) -> Answer {
    live_resource(&state, "Patient", &id).await?;
    let request = EverythingRequest::read(pairs, state.everything_page_limit, state.max_count)?;
    let mut issues = Vec::new();
    if let Some(outcome) = ignored_parameters(&request.unknown, &req)? {
        issues.extend(outcome["issue"].as_array().cloned().unwrap_or_default());
    }
    let (mut found, more) = state.reads.everything_cached(&id, &request.page).await?;
    let access = access_of(&req);
    let mut next_cursor = None;
    if more {
        next_cursor = Some(cursor_after(&found, &id));
        if !request.counted {
            issues.push(json!({"severity": "information", "code": "informational",
                "diagnostics": format!("more than {} resources: the result is paged; follow the next link",
                    request.page.limit)}));
        }
    }
    let base = base_url(&state, &req);
    let operation = format!("{base}/Patient/{id}/$everything");
    let mut links = vec![("self", request.link(&operation, request.cursor.as_deref()))];
    if let Some(cursor) = &next_cursor {
        links.push(("next", request.link(&operation, Some(cursor))));
    }
    // What the caller's scopes do not cover is left out (the cursor above still moves past it).
    if !matches!(access, Access::Open | Access::System) {
        found.retain(|(_, r)| access::visible(&access, r));
    }
    let single_page = request.cursor.is_none() && !more;
    let total = single_page.then(|| {
        found
            .iter()
            .filter(|(m, _)| *m == SupportingMode::Match)
            .count()
    });
    let entries: Vec<_> = found
        .iter()
        .map(|(mode, r)| SearchEntry {
            resource: r,
            mode: mode_name(*mode),
        })
        .collect();
    let outcome =
        (!issues.is_empty()).then(|| json!({"resourceType": "OperationOutcome", "issue": issues}));
    let body = searchset(
        &base,
        &links,
        total,
        &entries,
        trace(&state).as_ref(),
        outcome,
    );
    Ok(bundle_response(body))
}

/// The most Patients one page of type-level `$everything` looks at, however few resources they
/// give (a `_type` or `_since` filter can leave most of them with nothing to show).
const MAX_PATIENTS_A_PAGE: u64 = 5_000;

/// `GET /Patient/$everything`: every patient's record, patient after patient in id order, in
/// pages of `_count` compartment members (each patient's supporting resources beside them). A
/// patient's record may run across pages; the cursor names the patient and, within it, where
/// the page ended, so following `next` gives every resource once and no page is empty.
pub async fn everything_all(state: web::Data<FhirState>, req: HttpRequest) -> Answer {
    let pairs = decode_pairs(req.query_string())?;
    everything_all_of(state, req, pairs).await
}

/// `POST /Patient/$everything`, its parameters in a Parameters resource (and the query).
pub async fn everything_all_post(
    state: web::Data<FhirState>,
    req: HttpRequest,
    body: web::Payload,
) -> Answer {
    let pairs = posted_parameters(&state, &req, body).await?;
    everything_all_of(state, req, pairs).await
}

async fn everything_all_of(
    state: web::Data<FhirState>,
    req: HttpRequest,
    pairs: Vec<(String, String)>,
) -> Answer {
    let mut pairs_without_cursor = Vec::new();
    let mut cursor = None;
    for (name, value) in pairs {
        if name == "_cursor" {
            cursor = Some(value);
        } else {
            pairs_without_cursor.push((name, value));
        }
    }
    let request = EverythingRequest::read(
        pairs_without_cursor,
        state.everything_page_limit,
        state.max_count,
    )?;
    let mut issues = Vec::new();
    if let Some(outcome) = ignored_parameters(&request.unknown, &req)? {
        issues.extend(outcome["issue"].as_array().cloned().unwrap_or_default());
    }
    // The cursor: `<patient id>~` (that patient's record from its start) or
    // `<patient id>~<type>.<id>` (after that member).
    let (mut from, mut after) = match &cursor {
        None => (None, None),
        Some(text) => {
            let bad =
                || FhirError::invalid_at("_cursor: not a cursor this server wrote", "_cursor");
            let (patient, inner) = text.split_once('~').ok_or_else(bad)?;
            let after = match inner {
                "" => None,
                inner => {
                    let (t, id) = inner
                        .split_once('.')
                        .filter(|(t, _)| t.is_empty() || is_resource_type(t))
                        .ok_or_else(bad)?;
                    Some((t.to_string(), id.to_string()))
                }
            };
            (Some(patient.to_string()), after)
        }
    };
    let limit = request.page.limit;
    let mut found: Vec<(SupportingMode, StoredResource)> = Vec::new();
    let mut matches = 0u64;
    let mut scanned = 0u64;
    let mut next_cursor = None;
    let mut inclusive = true;
    'patients: loop {
        // One more than can still fit: a full page must know whether another patient follows.
        let want = (limit - matches).min(MAX_PATIENTS_A_PAGE - scanned) + 1;
        let patients = state
            .reads
            .patient_ids(from.as_deref(), inclusive, want, &request.page)
            .await?;
        for patient in &patients {
            if matches == limit || scanned == MAX_PATIENTS_A_PAGE {
                next_cursor = Some(format!("{patient}~"));
                break 'patients;
            }
            scanned += 1;
            // The position within a record belongs to the cursor's patient only: if that
            // patient is gone (deleted since), the next one starts from its beginning.
            let resume = after
                .take()
                .filter(|_| from.as_deref() == Some(patient.as_str()));
            let page = EverythingPage {
                limit: limit - matches,
                after: resume,
                ..request.page.clone()
            };
            let (part, more) = state.reads.everything_cached(patient, &page).await?;
            matches += part
                .iter()
                .filter(|(m, _)| *m == SupportingMode::Match)
                .count() as u64;
            if more {
                next_cursor = Some(format!("{patient}~{}", cursor_after(&part, patient)));
                found.extend(part);
                break 'patients;
            }
            found.extend(part);
        }
        if (patients.len() as u64) < want {
            break;
        }
        from = patients.last().cloned();
        inclusive = false;
    }
    let access = access_of(&req);
    if !matches!(access, Access::Open | Access::System) {
        found.retain(|(_, r)| access::visible(&access, r));
    }
    let base = base_url(&state, &req);
    let operation = format!("{base}/Patient/$everything");
    let mut links = vec![("self", request.link(&operation, cursor.as_deref()))];
    if let Some(next) = &next_cursor {
        links.push(("next", request.link(&operation, Some(next))));
    }
    let entries: Vec<_> = found
        .iter()
        .map(|(mode, r)| SearchEntry {
            resource: r,
            mode: mode_name(*mode),
        })
        .collect();
    let outcome =
        (!issues.is_empty()).then(|| json!({"resourceType": "OperationOutcome", "issue": issues}));
    let body = searchset(
        &base,
        &links,
        None,
        &entries,
        trace(&state).as_ref(),
        outcome,
    );
    Ok(bundle_response(body))
}

/// The cursor that resumes a patient's record after a page's last match: `<type>.<id>`, the
/// type left empty for the patient itself (which comes first).
fn cursor_after(page: &[(SupportingMode, StoredResource)], patient: &str) -> String {
    let last = page
        .iter()
        .rfind(|(m, _)| *m == SupportingMode::Match)
        .map(|(_, r)| r)
        .expect("a page holds at least one match");
    let last_type = if last.resource_type == "Patient" && last.id == patient {
        ""
    } else {
        last.resource_type.as_str()
    };
    format!("{last_type}.{}", last.id)
}

/// `$everything`'s parameters, read.
pub(crate) struct EverythingRequest {
    page: EverythingPage,
    /// The parameters applied, for the links.
    applied: Vec<(String, String)>,
    cursor: Option<String>,
    /// Whether the client chose the page size.
    counted: bool,
    unknown: Vec<String>,
}

impl EverythingRequest {
    /// A GET link to `operation` with the parameters applied, from `cursor` on.
    fn link(&self, operation: &str, cursor: Option<&str>) -> String {
        let mut params: Vec<String> = self
            .applied
            .iter()
            .map(|(n, v)| format!("{n}={}", encode_query_value(v)))
            .collect();
        if let Some(cursor) = cursor {
            params.push(format!("_cursor={}", encode_query_value(cursor)));
        }
        if params.is_empty() {
            operation.to_string()
        } else {
            format!("{operation}?{}", params.join("&"))
        }
    }

    pub(crate) fn read(
        pairs: Vec<(String, String)>,
        unpaged_limit: u64,
        max_count: u64,
    ) -> Result<Self, FhirError> {
        let mut request = EverythingRequest {
            page: EverythingPage {
                limit: unpaged_limit,
                ..EverythingPage::default()
            },
            applied: Vec::new(),
            cursor: None,
            counted: false,
            unknown: Vec::new(),
        };
        let (mut low, mut high) = (None, None);
        for (name, value) in pairs {
            let invalid =
                |what: &str| FhirError::invalid_at(format!("{name}: {what}"), name.clone());
            let range =
                || date_range(&value.replace(' ', "+")).ok_or_else(|| invalid("not a FHIR date"));
            match name.as_str() {
                "start" => low = Some(range()?.0),
                "end" => high = Some(range()?.1),
                "_since" => request.page.since_us = Some(range()?.0),
                "_type" => {
                    let types: Vec<String> = value.split(',').map(str::to_string).collect();
                    if let Some(bad) = types.iter().find(|t| !is_resource_type(t)) {
                        return Err(invalid(&format!("{bad:?} is not a resource type")));
                    }
                    // Repeated `_type` parameters add up, as a comma list does; each type is
                    // kept once (and the links carry the list once, after the loop), so what
                    // reaches the store and the links is bounded by the number of types.
                    let all = request.page.types.get_or_insert_with(Vec::new);
                    all.extend(types);
                    all.sort_unstable();
                    all.dedup();
                    continue;
                }
                "_count" => {
                    let count: u64 = value.parse().map_err(|_| invalid("not a whole number"))?;
                    // A page of nothing would never move the cursor on.
                    if count == 0 {
                        return Err(invalid("at least 1 (a page of nothing cannot be paged)"));
                    }
                    request.page.limit = count.min(max_count);
                    request.counted = true;
                }
                "_cursor" => {
                    let (t, id) = value
                        .split_once('.')
                        .filter(|(t, _)| t.is_empty() || is_resource_type(t))
                        .ok_or_else(|| invalid("not a cursor this server wrote"))?;
                    request.page.after = Some((t.to_string(), id.to_string()));
                    request.cursor = Some(value);
                    continue;
                }
                _ => {
                    request.unknown.push(name);
                    continue;
                }
            }
            request.applied.push((name, value));
        }
        if let Some(types) = &request.page.types {
            request.applied.push(("_type".to_string(), types.join(",")));
        }
        if low.is_some() || high.is_some() {
            let window = (low.unwrap_or(i64::MIN), high.unwrap_or(i64::MAX));
            if window.0 >= window.1 {
                return Err(FhirError::invalid("start is after end"));
            }
            request.page.window = Some(window);
        }
        Ok(request)
    }
}

pub async fn post_bundle(
    state: web::Data<FhirState>,
    req: HttpRequest,
    body: web::Payload,
) -> Answer {
    let ReadBody {
        value: bundle,
        budget: _held_while_processed,
    } = read_resource_body(&state, &req, body).await?;
    let extension_url = BundleTrace::extension_url(&state.canonical_base);
    let carried = super::bundle::carried_trace(&bundle, &extension_url);
    crate::telemetry::link_payload_context(&tracing::Span::current(), carried.as_ref());
    let limits = &state.bundle_limits;
    let trace = trace(&state);
    let gate = &state.conditional_gate;
    let preferred = transaction::Return::preferred(req.headers());
    let returns = preferred.unwrap_or_default();
    let mut response = transaction::process(
        &state.store,
        gate,
        limits,
        bundle,
        transaction::Caller {
            access: &access_of(&req),
            new_ids: &transaction::NewIds::Random,
            trace: trace.as_ref(),
            returns,
        },
    )
    .await?;
    access::note_written(&req, &response);
    if returns == transaction::Return::Representation {
        with_full_urls(&mut response, &base_url(&state, &req));
    }
    let mut answer = bundle_response(response.to_string());
    if let Some(preferred) = preferred {
        answer.headers_mut().insert(
            header::HeaderName::from_static("preference-applied"),
            header::HeaderValue::from_static(preferred.as_header()),
        );
    }
    Ok(answer)
}

/// Each response entry that carries its resource is given the resource's `fullUrl`.
fn with_full_urls(response: &mut Value, base: &str) {
    let Some(entries) = response.get_mut("entry").and_then(Value::as_array_mut) else {
        return;
    };
    for entry in entries {
        let Some(resource) = entry.get("resource") else {
            continue;
        };
        let (Some(t), Some(id)) = (resource["resourceType"].as_str(), resource["id"].as_str())
        else {
            continue;
        };
        let full_url = format!("{base}/{t}/{id}");
        if let Some(map) = entry.as_object_mut() {
            map.insert("fullUrl".into(), Value::String(full_url));
        }
    }
}

/// A request body, read, with its share of the memory budget, held until it is dropped: keep
/// it while the request is processed.
pub(super) struct ReadBody<'a> {
    pub value: Value,
    pub budget: Option<tokio::sync::SemaphorePermit<'a>>,
}

/// What a body is charged at least, per JSON value in it. The budget (twice the largest body)
/// assumes a body takes about 25 times its size in memory while it is processed; parsed and
/// processed, each JSON value took 400 bytes in one hostile tester's run (4.75 million values,
/// 3.8 GB) and about 700 in another's (a 65.5 MB transaction of tiny codings, 5.35 GB), so a
/// value is charged 800 / 25 = 32 bytes. Ordinary FHIR JSON (15 to 30 bytes a value) is
/// charged its size or up to twice it; a body of tiny values, as much as it will take.
pub(super) const CHARGE_PER_VALUE: usize = 32;

/// The request body as JSON (FHIR XML is decoded to the JSON the JSON path would produce):
/// content type checked, size and time bounded, parsed off the I/O worker. The memory budget is
/// reserved before reading, for the declared size, then for what the parsed body is charged.
pub(super) async fn read_resource_body<'a>(
    state: &'a FhirState,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<ReadBody<'a>, FhirError> {
    let format = body_format(req)?;
    if format == BodyFormat::JsonPatch {
        return Err(FhirError::UnsupportedMediaType(
            "a JSON Patch is only taken by PATCH".into(),
        ));
    }
    let connections = &state.body_timeouts.connections;
    let mut budget = state
        .body_budget
        .reserve(declared_within_limit(req, state)?, connections)
        .await;
    let bytes = read_body(body, state.max_body_bytes, &state.body_timeouts).await?;
    // JSON is charged before it is parsed, by a count of its values that allocates nothing:
    // a body of tiny values must wait for (or be refused) the budget parsing it will take,
    // not be given it after the fact. XML values are counted once parsed (as JSON).
    if format != BodyFormat::Xml {
        let values = json_values(&bytes);
        let charge = charge(bytes.len(), values);
        if charge > state.body_budget.total_bytes() {
            let most = state.body_budget.total_bytes() / CHARGE_PER_VALUE;
            return Err(FhirError::TooManyValues { values, most });
        }
        budget = state.body_budget.grow(budget, charge, connections).await;
    }
    let size = bytes.len();
    let (value, values) = tokio::task::spawn_blocking(move || match format {
        BodyFormat::Xml => parse_xml(&bytes).map(|value| {
            let values = super::json::Size::unbounded(&value).values;
            (value, Some(values))
        }),
        _ => parse_json(&bytes).map(|value| (value, None)),
    })
    .await
    .map_err(|_| FhirError::Internal)??;
    if let Some(values) = values {
        let charge = charge(size, values);
        budget = state.body_budget.grow(budget, charge, connections).await;
    }
    Ok(ReadBody { value, budget })
}

/// What a body of `size` bytes holding `values` JSON values is charged.
pub(super) fn charge(size: usize, values: usize) -> usize {
    size.max(values.saturating_mul(CHARGE_PER_VALUE))
}

/// How many values JSON text holds, about (commas, containers and one more, outside
/// strings), without parsing it.
pub(super) fn json_values(bytes: &[u8]) -> usize {
    let (mut count, mut in_string, mut escaped) = (1usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b'{' | b'[' => count += 1,
            _ => {}
        }
    }
    count
}

/// A JSON Patch body (`application/json-patch+json`), as JSON.
pub(super) async fn read_patch_body(
    state: &FhirState,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<Value, FhirError> {
    if body_format(req)? != BodyFormat::JsonPatch {
        return Err(FhirError::UnsupportedMediaType(
            "PATCH takes application/json-patch+json".into(),
        ));
    }
    let _budget = state
        .body_budget
        .reserve(
            declared_within_limit(req, state)?,
            &state.body_timeouts.connections,
        )
        .await;
    let bytes = read_body(body, state.max_body_bytes, &state.body_timeouts).await?;
    tokio::task::spawn_blocking(move || parse_json(&bytes))
        .await
        .map_err(|_| FhirError::Internal)?
}

pub async fn unsupported(req: HttpRequest) -> Answer {
    let method = req.method().as_str();
    if method == "GET" || method == "POST" {
        return Err(FhirError::NotFound(format!(
            "no {method} handler for this path"
        )));
    }
    Err(FhirError::NotSupported(format!(
        "{method} is not supported yet"
    )))
}

pub(super) async fn live_resource(
    state: &FhirState,
    resource_type: &str,
    id: &str,
) -> Result<StoredResource, FhirError> {
    if !is_resource_type(resource_type) {
        return Err(FhirError::NotFound(format!(
            "unknown resource type {resource_type:?}"
        )));
    }
    if !is_valid_id(id) {
        return Err(FhirError::NotFound(format!("{id:?} is not a valid id")));
    }
    match state.reads.read_cached(resource_type, id).await? {
        None => Err(FhirError::NotFound(format!(
            "{resource_type}/{id} is not known"
        ))),
        Some(r) if r.deleted => Err(FhirError::Gone(format!("{resource_type}/{id} was deleted"))),
        Some(r) => Ok(r),
    }
}

fn mode_name(mode: SupportingMode) -> &'static str {
    match mode {
        SupportingMode::Match => "match",
        SupportingMode::Include => "include",
    }
}

pub(super) fn bundle_response(body: String) -> HttpResponse {
    HttpResponse::Ok().content_type(FHIR_JSON).body(body)
}

/// The trace context of the request being served, for the Bundle's meta.
fn trace(state: &FhirState) -> Option<BundleTrace> {
    let (traceparent, tracestate) = span_traceparent(&tracing::Span::current())?;
    Some(BundleTrace {
        extension_url: BundleTrace::extension_url(&state.canonical_base),
        traceparent,
        tracestate,
    })
}

pub(crate) fn base_url(state: &FhirState, req: &HttpRequest) -> String {
    if let Some(base) = &state.public_base_url {
        return base.clone();
    }
    // Only the Host header (or HTTP/2 authority), never X-Forwarded-* or Forwarded: those
    // are set by whoever connects. Behind a proxy, set HL7BRIDGE_PUBLIC_BASE_URL.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .filter(|h| is_host(h))
        .unwrap_or_else(|| req.app_config().host().to_string());
    let scheme = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// `name[:port]` or `[v6]:port`, nothing else.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

pub(super) fn http_date(us: i64) -> String {
    let at = chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFormat {
    Json,
    Xml,
    JsonPatch,
}

/// FHIR JSON or XML (or a JSON Patch) in UTF-8, not compressed: anything else is answered 415
/// rather than misread. No content type means JSON.
fn body_format(req: &HttpRequest) -> Result<BodyFormat, FhirError> {
    let unsupported = |what: String| Err(FhirError::UnsupportedMediaType(what));
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("?").trim().to_ascii_lowercase();
        if encoding != "identity" {
            return unsupported(format!("content encoding {encoding:?} is not supported"));
        }
    }
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let value = value.to_str().unwrap_or("").to_ascii_lowercase();
    let mut parts = value.split(';').map(str::trim);
    let mime = parts.next().unwrap_or("");
    let format = match mime {
        "application/fhir+json" | "application/json" | "application/json+fhir" => {
            BodyFormat::Json
        }
        "application/fhir+xml" | "application/xml" | "application/xml+fhir" | "text/xml" => {
            BodyFormat::Xml
        }
        "application/json-patch+json" => BodyFormat::JsonPatch,
        _ => {
            return unsupported(format!(
                "content type {mime:?} is not supported; send application/fhir+json or application/fhir+xml"
            ))
        }
    };
    let charset = parts
        .find_map(|p| {
            p.split_once('=')
                .filter(|(k, _)| k.trim() == "charset")
                .map(|(_, v)| v.trim())
        })
        .map(|c| c.trim_matches('"'));
    match charset {
        None | Some("utf-8" | "utf8") => Ok(format),
        Some(other) => unsupported(format!("charset {other:?} is not supported; send UTF-8")),
    }
}

/// Reads the body within `limit` bytes. A body that stalls for the idle timeout, or is still
/// arriving after the total one (a trickle that defeats the idle timer), is answered 408; both
/// are looked up again for every chunk, so they tighten as soon as slots run short.
async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    timeouts: &BodyTimeouts,
) -> Result<Vec<u8>, FhirError> {
    let started = tokio::time::Instant::now();
    let mut body = Vec::new();
    loop {
        let (idle, total) = timeouts.now();
        let deadline = started + total;
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let Ok(next) = tokio::time::timeout(wait, payload.next()).await else {
            return Err(FhirError::RequestTimeout(
                "the request body stalled or arrived too slowly".into(),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|_| FhirError::invalid("the request body could not be read"))?;
        if body.len() + chunk.len() > limit {
            return Err(FhirError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The declared body length; a length over the limit is refused at once, before the body is
/// waited for (a hostile tester's `Content-Length: 200000000` was answered 408 after the body
/// timeout instead).
fn declared_within_limit(req: &HttpRequest, state: &FhirState) -> Result<Option<usize>, FhirError> {
    match declared_length(req) {
        Some(length) if length > state.max_body_bytes => {
            Err(FhirError::PayloadTooLarge(state.max_body_bytes))
        }
        declared => Ok(declared),
    }
}

fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// FHIR XML from a request body, as the JSON fhirbolt writes for it.
fn parse_xml(bytes: &[u8]) -> Result<Value, FhirError> {
    hl7bridge_fhir_codec::xml_to_json(bytes).map_err(transaction::codec_error)
}

/// JSON from a request body; a UTF-8 byte-order mark is skipped (fhirbolt would fail on it).
pub fn parse_json(bytes: &[u8]) -> Result<Value, FhirError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    super::json::from_slice(bytes).map_err(|e| FhirError::invalid(format!("the body is {e}")))
}

/// Parameters the format negotiation reads (see [`super::negotiate`]), not the handlers.
const HARMLESS: &[&str] = &["_format", "_pretty"];

/// The query's (name, value) pairs, percent-decoded, without the harmless ones.
pub(crate) fn decode_pairs(query: &str) -> Result<Vec<(String, String)>, FhirError> {
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        // Control characters have no place in a search value (and PostgreSQL refuses NUL).
        let decode = |s: &str| {
            percent_decode(&s.replace('+', " ")).filter(|t| !t.chars().any(char::is_control))
        };
        let (Some(name), Some(value)) = (decode(name), decode(raw)) else {
            return Err(FhirError::invalid(
                "malformed percent-encoding in the query",
            ));
        };
        if !HARMLESS.contains(&name.as_str()) {
            pairs.push((name, value));
        }
    }
    Ok(pairs)
}

/// Unknown parameters: a warning OperationOutcome under `Prefer: handling=lenient` (the
/// default), a 400 under `handling=strict`.
fn ignored_parameters(unknown: &[String], req: &HttpRequest) -> Result<Option<Value>, FhirError> {
    if unknown.is_empty() {
        return Ok(None);
    }
    let message = format!(
        "unsupported search parameters ignored: {}",
        unknown.join(", ")
    );
    if prefers_strict(req) {
        return Err(FhirError::invalid(message.replace("ignored", "refused")));
    }
    Ok(Some(json!({"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "not-supported", "diagnostics": message}]})))
}

fn prefers_strict(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=strict"))
}

pub(super) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~|:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_values_are_counted_without_parsing_and_strings_hide_their_commas() {
        let text = br#"{"a":[1,2,{"b":null}],"c":"x,y\",{["}"#;
        let parsed: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(
            json_values(text),
            crate::fhir::json::Size::unbounded(&parsed).values
        );
    }

    #[test]
    fn every_json_value_is_counted() {
        let value: Value = serde_json::from_str(r#"{"a":[1,2,{"b":null}],"c":"x"}"#).unwrap();
        // The object, the array, 1, 2, the inner object, null, "x".
        assert_eq!(crate::fhir::json::Size::unbounded(&value).values, 7);
    }

    use super::*;

    #[test]
    fn a_bom_before_json_is_skipped() {
        assert!(parse_json(b"\xEF\xBB\xBF{\"a\":1}").is_ok());
        assert!(parse_json(b"{\"a\":").is_err());
    }

    #[test]
    fn query_values_are_decoded_and_harmless_names_dropped() {
        let pairs = decode_pairs("identifier=urn%3Ax%7C1&foo=2&_format=json").unwrap();
        assert_eq!(
            pairs,
            [
                ("identifier".to_string(), "urn:x|1".to_string()),
                ("foo".to_string(), "2".to_string())
            ]
        );
        assert_eq!(encode_query_value("urn:x|1"), "urn:x|1");
    }

    #[test]
    fn http_dates_use_the_imf_fixdate_form() {
        assert_eq!(
            http_date(784_111_777_000_000),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }
}
