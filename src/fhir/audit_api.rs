//! `GET /AuditEvent` and `GET /AuditEvent/{id}`: the audit trail as R4 AuditEvents, newest
//! first. The trail is written by the server alone; writes to it are refused.
//!
//! Search parameters: `patient`, `date` (with `ge`/`gt`/`le`/`lt`/`eq` prefixes),
//! `agent-name` (a token's subject, or `MSH-3^MSH-4`), `action`, `outcome`, `subtype`,
//! `source` (`fhir`, `mllp`, `kafka`), `entity` (`Type/id`), `_count`, and the `_cursor` of
//! `next` links. A patient-scoped token sees only its own patient's events.

use actix_web::{web, HttpRequest};
use serde_json::{json, Value};

use super::access::access_of;
use super::bundle::{searchset, SearchEntry};
use super::error::FhirError;
use super::handlers::{base_url, bundle_response, decode_pairs, encode_query_value, Answer};
use super::FhirState;
use crate::auth::{Permission, Reach};
use crate::store::search_params::date_range;
use crate::store::{instant_text, AuditFilter, StoredResource};
use hl7bridge_entities::audit_event;

const DEFAULT_COUNT: u64 = 50;
const MAX_COUNT: u64 = 1000;

pub async fn search(state: web::Data<FhirState>, req: HttpRequest) -> Answer {
    let mut filter = AuditFilter {
        limit: DEFAULT_COUNT,
        ..AuditFilter::default()
    };
    let mut applied = Vec::new();
    for (name, value) in decode_pairs(req.query_string())? {
        let invalid = |what: &str| FhirError::invalid_at(format!("{name}: {what}"), name.clone());
        let list = || value.split(',').map(str::to_string).collect::<Vec<_>>();
        match name.as_str() {
            "patient" => {
                let id = value.strip_prefix("Patient/").unwrap_or(&value);
                filter.patient = Some(id.to_string());
            }
            "date" => filter.recorded.push(recorded_range(&value).ok_or_else(|| {
                invalid("expected a FHIR date or instant, with an optional ge/gt/le/lt/eq prefix")
            })?),
            "agent-name" => filter.agent = Some(value.clone()),
            "action" => filter.actions = list(),
            "outcome" => {
                filter.outcomes = value
                    .split(',')
                    .map(|o| o.parse().map_err(|_| invalid("expected 0, 4, 8 or 12")))
                    .collect::<Result<_, _>>()?
            }
            "subtype" => filter.subtypes = list(),
            "source" => filter.sources = list(),
            "entity" => filter.entity = Some(value.clone()),
            "_count" => {
                let n: u64 = value.parse().map_err(|_| invalid("not a whole number"))?;
                filter.limit = n.clamp(1, MAX_COUNT);
            }
            "_cursor" => {
                let (at, id) = value
                    .split_once('.')
                    .and_then(|(at, id)| Some((at.parse().ok()?, id.to_string())))
                    .ok_or_else(|| invalid("not a cursor this server wrote"))?;
                filter.before = Some((at, id));
                continue;
            }
            _ => return Err(invalid("not a search parameter of AuditEvent here")),
        }
        applied.push((name, value));
    }
    limit_to_patient(&req, &mut filter)?;
    state.audit.flush().await;
    let limit = filter.limit;
    filter.limit += 1;
    let mut rows = state.store.audit_list(&filter).await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let base = base_url(&state, &req);
    let link = |cursor: Option<String>| {
        let mut params: Vec<String> = applied
            .iter()
            .map(|(n, v)| format!("{n}={}", encode_query_value(v)))
            .collect();
        params.push(format!("_count={limit}"));
        if let Some(cursor) = cursor {
            params.push(format!("_cursor={}", encode_query_value(&cursor)));
        }
        format!("{base}/AuditEvent?{}", params.join("&"))
    };
    let mut links = vec![("self", link(None))];
    if let (true, Some(last)) = (more, rows.last()) {
        links.push((
            "next",
            link(Some(format!("{}.{}", last.recorded_us, last.id))),
        ));
    }
    let resources: Vec<StoredResource> = rows
        .iter()
        .map(|row| as_stored(row, &state.canonical_base))
        .collect();
    let entries: Vec<_> = resources
        .iter()
        .map(|resource| SearchEntry {
            resource,
            mode: "match",
        })
        .collect();
    let body = searchset(&base, &links, None, &entries, None, None);
    Ok(bundle_response(body))
}

pub async fn read(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let id = path.into_inner();
    let mut filter = AuditFilter {
        ids: vec![id.clone()],
        limit: 1,
        ..AuditFilter::default()
    };
    limit_to_patient(&req, &mut filter)?;
    state.audit.flush().await;
    let row = state.store.audit_list(&filter).await?.into_iter().next();
    let row = row.ok_or_else(|| FhirError::NotFound(format!("AuditEvent/{id} is not known")))?;
    let stored = as_stored(&row, &state.canonical_base);
    Ok(actix_web::HttpResponse::Ok()
        .content_type(super::error::FHIR_JSON)
        .body(stored.content))
}

pub async fn immutable() -> Answer {
    Err(FhirError::NotSupported(
        "the audit trail is written by the server alone".into(),
    ))
}

/// A patient-scoped token reads only its own patient's events.
fn limit_to_patient(req: &HttpRequest, filter: &mut AuditFilter) -> Result<(), FhirError> {
    let access = access_of(req);
    let reach = access.reach("AuditEvent", Permission::Read);
    if reach == Reach::None {
        return Err(FhirError::Forbidden(
            "the token's scopes do not grant reading AuditEvents".into(),
        ));
    }
    if reach == Reach::Patient {
        let own = access.patient().unwrap_or_default().to_string();
        if filter.patient.as_ref().is_some_and(|p| *p != own) {
            return Err(FhirError::Forbidden(
                "the token is limited to another patient's record".into(),
            ));
        }
        filter.patient = Some(own);
    }
    Ok(())
}

/// `[low, high)` of a `date` value: an instant's microsecond, or a date's whole span, narrowed
/// by its prefix.
fn recorded_range(value: &str) -> Option<(i64, i64)> {
    let (prefix, text) = match value.get(..2) {
        Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let (low, high) = date_range(&text.replace(' ', "+"))?;
    Some(match prefix {
        "ge" => (low, i64::MAX),
        "gt" => (high, i64::MAX),
        "le" => (i64::MIN, high),
        "lt" => (i64::MIN, low),
        _ => (low, high),
    })
}

/// One row as an R4 AuditEvent.
fn as_stored(row: &audit_event::Model, canonical_base: &str) -> StoredResource {
    let entities: Vec<String> = serde_json::from_str(&row.entities).unwrap_or_default();
    let mut entity: Vec<Value> = entities
        .iter()
        .map(|e| {
            if e.contains('/') {
                json!({"what": {"reference": e}})
            } else {
                // A search names only the type it searched.
                json!({"type": {"system": "http://hl7.org/fhir/resource-types", "code": e}})
            }
        })
        .collect();
    if !row.patient_id.is_empty() {
        let patient = format!("Patient/{}", row.patient_id);
        if !entities.contains(&patient) {
            entity.push(json!({"what": {"reference": patient}, "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1", "display": "Patient"}}));
        }
    }
    let own_subtypes = format!("{canonical_base}/CodeSystem/audit-subtype");
    let (event_type, subtype_system) = if row.subtype == "hl7v2-message" {
        (
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM",
                   "code": "110107", "display": "Import"}),
            own_subtypes,
        )
    } else if row.subtype == crate::audit::REFUSALS_SUBTYPE {
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                   "code": "rest", "display": "RESTful Operation"}),
            own_subtypes,
        )
    } else {
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                   "code": "rest", "display": "RESTful Operation"}),
            "http://hl7.org/fhir/restful-interaction".to_string(),
        )
    };
    let mut agent = json!({"who": {"display": row.agent}, "requestor": true});
    if !row.network.is_empty() {
        agent["network"] = json!({"address": row.network, "type": "2"});
    }
    let recorded = instant_text(row.recorded_us);
    let mut resource = json!({
        "resourceType": "AuditEvent",
        "id": row.id,
        "meta": {"versionId": "1", "lastUpdated": recorded},
        "type": event_type,
        "subtype": [{"system": subtype_system, "code": row.subtype}],
        "action": row.action,
        "recorded": recorded,
        "outcome": row.outcome.to_string(),
        "outcomeDesc": row.detail,
        "agent": [agent],
        "source": {
            "site": row.source,
            "observer": {"display": "hl7bridge"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                      "code": "4", "display": "Application Server"}]
        },
    });
    if !entity.is_empty() {
        resource["entity"] = Value::Array(entity);
    }
    if !row.trace_id.is_empty() {
        resource["extension"] = json!([{
            "url": format!("{canonical_base}/StructureDefinition/audit-trace-id"),
            "valueString": row.trace_id,
        }]);
    }
    StoredResource {
        resource_type: "AuditEvent".into(),
        id: row.id.clone(),
        version_id: 1,
        last_updated_us: row.recorded_us,
        deleted: false,
        content: resource.to_string(),
    }
}
