//! Request handlers: each reads its input, calls the store, and answers FHIR JSON.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::bundle::{searchset, BundleTrace, SearchEntry};
use super::capability::capability_statement;
use super::criteria::percent_decode;
use super::error::{FhirError, FHIR_JSON};
use super::id::{is_resource_type, is_valid_id};
use super::{transaction, FhirState};
use crate::store::{IdentifierLookup, StoredResource, SupportingMode};
use crate::telemetry::span_traceparent;

type Answer = Result<HttpResponse, FhirError>;

pub async fn metadata(state: web::Data<FhirState>, req: HttpRequest) -> HttpResponse {
    let body = capability_statement(&base_url(&state, &req), &state.started);
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string())
}

pub async fn read(state: web::Data<FhirState>, path: web::Path<(String, String)>) -> Answer {
    let (resource_type, id) = path.into_inner();
    let stored = live_resource(&state, &resource_type, &id).await?;
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((header::ETAG, format!("W/\"{}\"", stored.version_id)))
        .insert_header((header::LAST_MODIFIED, http_date(stored.last_updated_us)))
        .body(stored.content))
}

pub async fn search(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let resource_type = path.into_inner();
    if !is_resource_type(&resource_type) {
        return Err(FhirError::NotFound(format!(
            "unknown resource type {resource_type:?}"
        )));
    }
    let query = SearchQuery::parse(req.query_string(), &["identifier", "_id"])?;
    let ignored = query.check_ignored(&req)?;
    let ids = match (query.get("identifier"), query.get("_id")) {
        (Some(token), _) => ids_by_identifier(&state, &resource_type, token).await?,
        (None, Some(id)) => id.split(',').map(String::from).collect(),
        (None, None) => {
            return Err(FhirError::invalid(
                "search without identifier or _id is not supported yet (no paging)",
            ))
        }
    };
    let found = state.store.read_many(&resource_type, &ids).await?;
    let entries: Vec<_> = found
        .iter()
        .map(|r| SearchEntry {
            resource: r,
            mode: "match",
        })
        .collect();
    let base = base_url(&state, &req);
    let self_link = format!("{base}/{resource_type}?{}", query.canonical());
    let body = searchset(
        &base,
        &self_link,
        entries.len(),
        &entries,
        trace(&state).as_ref(),
        ignored,
    );
    Ok(bundle_response(body))
}

pub async fn everything(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let id = path.into_inner();
    live_resource(&state, "Patient", &id).await?;
    let query = SearchQuery::parse(req.query_string(), &[])?;
    let ignored = query.check_ignored(&req)?;
    let found = state.store.everything(&id).await?;
    let entries: Vec<_> = found
        .iter()
        .map(|(mode, r)| SearchEntry {
            resource: r,
            mode: mode_name(*mode),
        })
        .collect();
    let total = found
        .iter()
        .filter(|(m, _)| *m == SupportingMode::Match)
        .count();
    let base = base_url(&state, &req);
    let self_link = format!("{base}/Patient/{id}/$everything");
    let body = searchset(
        &base,
        &self_link,
        total,
        &entries,
        trace(&state).as_ref(),
        ignored,
    );
    Ok(bundle_response(body))
}

pub async fn post_bundle(
    state: web::Data<FhirState>,
    req: HttpRequest,
    body: web::Payload,
) -> Answer {
    check_content_type(&req)?;
    let bytes = read_body(body, state.max_body_bytes).await?;
    let bundle = parse_json(&bytes)?;
    let response = transaction::process(&state.store, bundle, trace(&state).as_ref()).await?;
    Ok(bundle_response(response.to_string()))
}

pub async fn unsupported(req: HttpRequest) -> Answer {
    Err(FhirError::NotFound(format!(
        "no {} handler for this path",
        req.method()
    )))
}

async fn live_resource(
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
    match state.store.read(resource_type, id).await? {
        None => Err(FhirError::NotFound(format!(
            "{resource_type}/{id} is not known"
        ))),
        Some(r) if r.deleted => Err(FhirError::Gone(format!("{resource_type}/{id} was deleted"))),
        Some(r) => Ok(r),
    }
}

async fn ids_by_identifier(
    state: &FhirState,
    resource_type: &str,
    token: &str,
) -> Result<Vec<String>, FhirError> {
    let (system, value) = match token.split_once('|') {
        Some((s, v)) => ((!s.is_empty()).then(|| s.to_string()), v.to_string()),
        None => (None, token.to_string()),
    };
    let lookup = IdentifierLookup {
        resource_type: resource_type.to_string(),
        system,
        value,
    };
    let mut found = state
        .store
        .ids_by_identifier(std::slice::from_ref(&lookup))
        .await?;
    Ok(found.remove(&lookup).unwrap_or_default())
}

fn mode_name(mode: SupportingMode) -> &'static str {
    match mode {
        SupportingMode::Match => "match",
        SupportingMode::Include => "include",
    }
}

fn bundle_response(body: String) -> HttpResponse {
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

fn base_url(state: &FhirState, req: &HttpRequest) -> String {
    if let Some(base) = &state.public_base_url {
        return base.clone();
    }
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

fn http_date(us: i64) -> String {
    let at = chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn check_content_type(req: &HttpRequest) -> Result<(), FhirError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    match mime.to_ascii_lowercase().as_str() {
        "application/fhir+json" | "application/json" | "application/json+fhir" => Ok(()),
        other => Err(FhirError::UnsupportedMediaType(format!(
            "content type {other:?} is not supported; send application/fhir+json"
        ))),
    }
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, FhirError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| FhirError::invalid("the request body could not be read"))?;
        if body.len() + chunk.len() > limit {
            return Err(FhirError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// JSON from a request body; a UTF-8 byte-order mark is skipped (fhirbolt would fail on it).
pub fn parse_json(bytes: &[u8]) -> Result<Value, FhirError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    serde_json::from_slice(bytes).map_err(|e| {
        FhirError::invalid(format!(
            "the body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// A parsed query string: the parameters a handler knows, and the names it does not.
struct SearchQuery {
    known: Vec<(String, String)>,
    unknown: Vec<String>,
}

/// Parameters that change nothing in a JSON-only server.
const HARMLESS: &[&str] = &["_format", "_pretty"];

impl SearchQuery {
    fn parse(query: &str, known: &[&str]) -> Result<SearchQuery, FhirError> {
        let mut parsed = SearchQuery {
            known: Vec::new(),
            unknown: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_decode(&s.replace('+', " "));
            let (Some(name), Some(value)) = (decode(name), decode(raw)) else {
                return Err(FhirError::invalid(
                    "malformed percent-encoding in the query",
                ));
            };
            if known.contains(&name.as_str()) {
                parsed.known.push((name, value));
            } else if !HARMLESS.contains(&name.as_str()) {
                parsed.unknown.push(name);
            }
        }
        Ok(parsed)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.known
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Unknown parameters: a warning OperationOutcome under `Prefer: handling=lenient` (the
    /// default), a 400 under `handling=strict`.
    fn check_ignored(&self, req: &HttpRequest) -> Result<Option<Value>, FhirError> {
        if self.unknown.is_empty() {
            return Ok(None);
        }
        let message = format!(
            "unsupported search parameters ignored: {}",
            self.unknown.join(", ")
        );
        if prefers_strict(req) {
            return Err(FhirError::invalid(message.replace("ignored", "refused")));
        }
        Ok(Some(json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "not-supported", "diagnostics": message}]})))
    }

    /// The applied parameters, re-encoded, for the self link.
    fn canonical(&self) -> String {
        self.known
            .iter()
            .map(|(n, v)| format!("{n}={}", encode_query_value(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn prefers_strict(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=strict"))
}

fn encode_query_value(value: &str) -> String {
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
    use super::*;

    #[test]
    fn a_bom_before_json_is_skipped() {
        assert!(parse_json(b"\xEF\xBB\xBF{\"a\":1}").is_ok());
        assert!(parse_json(b"{\"a\":").is_err());
    }

    #[test]
    fn query_values_are_decoded_and_unknown_names_kept_apart() {
        let q = SearchQuery::parse("identifier=urn%3Ax%7C1&foo=2&_format=json", &["identifier"])
            .unwrap();
        assert_eq!(q.get("identifier"), Some("urn:x|1"));
        assert_eq!(q.unknown, ["foo"]);
        assert_eq!(q.canonical(), "identifier=urn:x|1");
    }

    #[test]
    fn http_dates_use_the_imf_fixdate_form() {
        assert_eq!(
            http_date(784_111_777_000_000),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }
}
