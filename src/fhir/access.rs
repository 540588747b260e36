//! The FHIR API's gate: who is calling (a bearer token, when authentication is on), whether
//! their scopes allow the interaction on its resource type, and one audit record per request,
//! allowed or refused.
//!
//! The gate decides what it can from the route alone. What depends on the data — whether a
//! resource lies in the patient compartment a patient-scoped token is limited to — is decided
//! by the handlers through [`Access`] (taken from the request with [`access_of`]) and the
//! functions here: [`visible`] for each resource shown, [`restriction`] for searches, and
//! `transaction::process` for writes.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, ResponseError};
use serde_json::Value;

use super::error::FhirError;
use super::FhirState;
use crate::audit::{current_trace_id, AuditRecord, Door};
use crate::auth::{Access, Permission, Reach};
use crate::store::{compartment, index, Criterion, StoredResource};

/// What one request is, read from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interaction {
    /// FHIR's restful-interaction code (`read`, `search-type`, …).
    subtype: &'static str,
    action: char,
    /// The type and permission the route needs; `None` when the handler checks per resource
    /// (system history, Bundles).
    needs: Option<(String, Permission)>,
    /// `Type/id` when the path names one resource.
    target: Option<String>,
}

/// Paths anyone may read: what a client needs before it has a token.
fn is_public(method: &Method, path: &str) -> bool {
    method == Method::GET
        && matches!(
            path,
            "/metadata"
                | "/.well-known/smart-configuration"
                | "/StructureDefinition/w3c-trace-context"
                | "/health"
                | "/ready"
                | "/metrics"
        )
}

fn classify(method: &Method, path: &str) -> Option<Interaction> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let typed = |t: &str| super::id::is_resource_type(t);
    let (subtype, action, permission, resource_type, id) = match (method.as_str(), &segments[..]) {
        ("GET", ["_history"]) => ("history-system", 'R', None, None, None),
        ("GET", [t]) if typed(t) => ("search-type", 'R', Some(Permission::Search), Some(*t), None),
        ("POST", [t, "_search"]) if typed(t) => {
            ("search-type", 'R', Some(Permission::Search), Some(*t), None)
        }
        ("GET", [t, "_history"]) if typed(t) => (
            "history-type",
            'R',
            Some(Permission::Search),
            Some(*t),
            None,
        ),
        // Type-level: every patient's record, for callers who may read every Patient; a
        // patient-scoped token is refused (it has an instance-level `$everything` of its own).
        ("GET" | "POST", ["Patient", "$everything"]) => (
            "operation",
            'E',
            Some(Permission::Search),
            Some("Patient"),
            None,
        ),
        ("GET" | "POST", ["Patient", id, "$everything"]) => (
            "operation",
            'E',
            Some(Permission::Read),
            Some("Patient"),
            Some(*id),
        ),
        ("GET", [t, id]) if typed(t) => ("read", 'R', Some(Permission::Read), Some(*t), Some(*id)),
        ("GET", [t, id, "_history"]) if typed(t) => (
            "history-instance",
            'R',
            Some(Permission::Read),
            Some(*t),
            Some(*id),
        ),
        ("GET", [t, id, "_history", _]) if typed(t) => {
            ("vread", 'R', Some(Permission::Read), Some(*t), Some(*id))
        }
        ("POST", [""]) => ("transaction", 'E', None, None, None),
        ("POST", [t]) if typed(t) => ("create", 'C', Some(Permission::Create), Some(*t), None),
        ("PUT", [t]) if typed(t) => ("update", 'U', Some(Permission::Update), Some(*t), None),
        ("PUT", [t, id]) if typed(t) => {
            ("update", 'U', Some(Permission::Update), Some(*t), Some(*id))
        }
        ("PATCH", [t, id]) if typed(t) => {
            ("patch", 'U', Some(Permission::Update), Some(*t), Some(*id))
        }
        ("DELETE", [t]) if typed(t) => ("delete", 'D', Some(Permission::Delete), Some(*t), None),
        ("DELETE", [t, id]) if typed(t) => {
            ("delete", 'D', Some(Permission::Delete), Some(*t), Some(*id))
        }
        _ => return None,
    };
    Some(Interaction {
        subtype,
        action,
        needs: resource_type
            .zip(permission)
            .map(|(t, p)| (t.to_string(), p)),
        // Only a valid id is recorded: the path is the caller's text.
        target: resource_type
            .zip(id.filter(|id| super::id::is_valid_id(id)))
            .map(|(t, id)| format!("{t}/{id}")),
    })
}

/// What a handler adds to its request's audit record: the resources it touched, beyond the
/// one the path names, and the patient concerned when the path does not say.
#[derive(Debug, Default, Clone)]
pub struct AuditNote {
    pub entities: Vec<String>,
    pub patient: Option<String>,
}

/// Adds to the request's audit record.
pub fn note(req: &HttpRequest, entities: impl IntoIterator<Item = String>) {
    let mut extensions = req.extensions_mut();
    if let Some(note) = extensions.get_mut::<AuditNote>() {
        note.entities.extend(entities);
    }
}

/// Adds the resources a Bundle response says were written (`Type/id` of each location).
pub fn note_written(req: &HttpRequest, response: &Value) {
    let written = response["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["response"]["location"].as_str())
        .filter_map(|location| {
            let mut parts = location.split('/');
            Some(format!("{}/{}", parts.next()?, parts.next()?))
        });
    note(req, written);
}

/// The caller's access, as the gate established it.
pub fn access_of(req: &HttpRequest) -> Access {
    req.extensions()
        .get::<Access>()
        .cloned()
        .unwrap_or(Access::Open)
}

pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if is_public(req.method(), req.path()) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let Some(state) = req.app_data::<web::Data<FhirState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    // The router matches the decoded path (`/%41uditEvent` is `/AuditEvent`); so must the gate.
    let decoded = super::criteria::percent_decode(req.path()).unwrap_or_default();
    let interaction = classify(req.method(), &decoded);
    let network = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let access = match &state.auth {
        None => Access::Open,
        Some(auth) => match bearer(&req) {
            None => {
                let err = FhirError::Unauthorized(crate::auth::AuthError::Missing.to_string());
                return refuse(&state, req, interaction, "unknown", network, err).await;
            }
            Some(token) => match auth.authenticate(&token).await {
                Ok(principal) => Access::Token(Arc::new(principal)),
                Err(err) => {
                    let err = FhirError::Unauthorized(err.to_string());
                    return refuse(&state, req, interaction, "unknown", network, err).await;
                }
            },
        },
    };
    let refused = match &interaction {
        Some(i) => refusal(&access, i),
        // A route the gate cannot name is nothing a token grants.
        None if matches!(access, Access::Token(_)) => Some(FhirError::Forbidden(
            "not an interaction the token's scopes can grant".into(),
        )),
        None => None,
    };
    if let Some(refusal) = refused {
        let agent = access.agent();
        return refuse(&state, req, interaction, &agent, network, refusal).await;
    }
    req.extensions_mut().insert(access.clone());
    req.extensions_mut().insert(AuditNote::default());
    let response = next.call(req).await?;
    let note = response
        .request()
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default();
    let status = response.status();
    let wrote =
        status.is_success() && !matches!(*response.request().method(), Method::GET | Method::HEAD);
    let record = record_of(
        interaction.as_ref(),
        &access.agent(),
        network,
        status.as_u16(),
        note,
        access.patient(),
    );
    if wrote {
        // A write is answered only once its audit record is stored.
        state.audit.record_stored(record).await;
    } else {
        state.audit.record(record).await;
    }
    Ok(response.map_into_boxed_body())
}

/// Why the route alone is refused to this caller, if it is.
fn refusal(access: &Access, interaction: &Interaction) -> Option<FhirError> {
    let (resource_type, permission) = interaction.needs.as_ref()?;
    let reach = access.reach(resource_type, *permission);
    if reach == Reach::None {
        return Some(FhirError::Forbidden(format!(
            "the token's scopes do not grant {} on {resource_type}",
            interaction.subtype
        )));
    }
    // `$everything` with a patient-scoped grant: only the token's own patient.
    if reach == Reach::Patient && interaction.subtype == "operation" {
        let own = access.patient().map(|p| format!("Patient/{p}"));
        if interaction.target != own {
            return Some(FhirError::Forbidden(
                "the token is limited to another patient's record".into(),
            ));
        }
    }
    None
}

async fn refuse(
    state: &FhirState,
    req: ServiceRequest,
    interaction: Option<Interaction>,
    agent: &str,
    network: String,
    err: FhirError,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let status = err.status_code().as_u16();
    let record = record_of(
        interaction.as_ref(),
        agent,
        network,
        status,
        AuditNote::default(),
        None,
    );
    // Anyone can be refused 401, as often as they like: such refusals are rate-limited in the
    // trail (counted past a few per second and address), the others recorded one by one.
    if matches!(err, FhirError::Unauthorized(_)) {
        state.audit.record_unauthenticated(record).await;
    } else {
        state.audit.record(record).await;
    }
    let response = err.error_response();
    Ok(req.into_response(response))
}

/// The audit record of one request.
fn record_of(
    interaction: Option<&Interaction>,
    agent: &str,
    network: String,
    status: u16,
    note: AuditNote,
    token_patient: Option<&str>,
) -> AuditRecord {
    let (subtype, action) = interaction.map_or(("unknown", 'E'), |i| (i.subtype, i.action));
    let mut entities: Vec<String> = interaction
        .and_then(|i| {
            i.target
                .clone()
                .or_else(|| i.needs.as_ref().map(|n| n.0.clone()))
        })
        .into_iter()
        .collect();
    for entity in note.entities {
        if !entity.is_empty() && !entities.contains(&entity) {
            entities.push(entity);
        }
    }
    let path_patient = interaction
        .and_then(|i| i.target.as_deref())
        .and_then(|t| t.strip_prefix("Patient/"))
        .map(str::to_string);
    let patient = note
        .patient
        .or(path_patient)
        .or(token_patient.map(str::to_string));
    let outcome = match status {
        200..=399 => 0,
        400..=499 => 4,
        _ => 8,
    };
    AuditRecord {
        door: Door::Fhir,
        action,
        subtype: subtype.to_string(),
        outcome,
        agent: agent.to_string(),
        network,
        entities,
        patient,
        trace_id: current_trace_id(),
        detail: format!("HTTP {status}"),
    }
}

fn bearer(req: &ServiceRequest) -> Option<String> {
    // Two Authorization headers: a proxy may have checked the other one.
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Whether `access` may see `resource`: read permission on its type and, for a
/// patient-scoped grant, the compartment rule of [`in_reach`].
pub fn visible(access: &Access, resource: &StoredResource) -> bool {
    match access.reach(&resource.resource_type, Permission::Read) {
        Reach::All => true,
        Reach::None => false,
        Reach::Patient => match serde_json::from_str::<Value>(&resource.content) {
            Ok(content) => in_reach(
                access.patient(),
                &resource.resource_type,
                &resource.id,
                &content,
            ),
            // A deletion or unreadable content: nothing to show a patient-scoped caller.
            Err(_) => false,
        },
    }
}

/// Types outside the compartment definition that a patient-scoped token may still read: the
/// directory and catalogue resources a record points at. Any other type outside the
/// definition (a Task, a stored Bundle) may point at a patient through elements the
/// definition does not list, so such a token reads none of them.
const SHARED_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "HealthcareService",
    "Endpoint",
    "Medication",
    "Substance",
    "Device",
];

/// The read rule for a patient-scoped grant: a resource of a type the Patient compartment
/// defines must be in the patient's compartment; a shared resource ([`SHARED_TYPES`]) must be
/// in no other patient's; nothing else is readable.
pub fn in_reach(patient: Option<&str>, resource_type: &str, id: &str, content: &Value) -> bool {
    let Some(patient) = patient else {
        return false;
    };
    let members = index::extract(resource_type, id, content).patients;
    if compartment::defines(resource_type) {
        members.contains(patient)
    } else {
        SHARED_TYPES.contains(&resource_type) && members.iter().all(|p| p == patient)
    }
}

/// Whether a resource found by its identifier (for a conditional reference, create, update or
/// delete) may be the match for `access`. A token that names a patient and cannot read every
/// resource of the type matches only what lies within its patient's reach ([`in_reach`]);
/// anything else must answer as no match would, or the answer would tell whether an
/// identifier is in use outside the token's record. Other callers match everything.
pub fn may_match(access: &Access, resource: &StoredResource) -> bool {
    let patient = access.patient();
    if patient.is_none() || access.reach(&resource.resource_type, Permission::Read) == Reach::All {
        return true;
    }
    serde_json::from_str::<Value>(&resource.content)
        .is_ok_and(|content| in_reach(patient, &resource.resource_type, &resource.id, &content))
}

/// The write rule for a patient-scoped grant, for the resource written and for the version it
/// replaces: a type the compartment defines, in the patient's compartment and in no other
/// patient's. Shared resources are not the patient's to change.
pub fn writable(patient: Option<&str>, resource_type: &str, id: &str, content: &Value) -> bool {
    let Some(patient) = patient else {
        return false;
    };
    let members = index::extract(resource_type, id, content).patients;
    compartment::defines(resource_type)
        && !members.is_empty()
        && members.iter().all(|p| p == patient)
}

/// The criterion that keeps a search within a patient-scoped grant, or `Err` when the type
/// may not be searched at all.
pub fn restriction(access: &Access, resource_type: &str) -> Result<Option<Criterion>, FhirError> {
    match access.reach(resource_type, Permission::Search) {
        Reach::All => Ok(None),
        Reach::None => Err(FhirError::Forbidden(format!(
            "the token's scopes do not grant search on {resource_type}"
        ))),
        Reach::Patient
            if !compartment::defines(resource_type) && !SHARED_TYPES.contains(&resource_type) =>
        {
            Err(FhirError::Forbidden(format!(
                "a patient-scoped token cannot search {resource_type}"
            )))
        }
        Reach::Patient => Ok(Some(Criterion::Compartment {
            patient: access.patient().unwrap_or_default().to_string(),
            strict: compartment::defines(resource_type),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_their_interaction_type_and_target() {
        let get = Method::GET;
        let i = classify(&get, "/Patient/$everything").unwrap();
        assert_eq!(i.subtype, "operation");
        assert_eq!(i.target, None);
        assert_eq!(i.needs, Some(("Patient".to_string(), Permission::Search)));
        let i = classify(&get, "/Observation/o1/_history/2").unwrap();
        assert_eq!(i.subtype, "vread");
        assert_eq!(i.target.as_deref(), Some("Observation/o1"));
        assert_eq!(i.needs, Some(("Observation".to_string(), Permission::Read)));
        let i = classify(&Method::POST, "/Observation/_search").unwrap();
        assert_eq!(i.subtype, "search-type");
        assert_eq!(
            classify(&get, "/Patient/p1/$everything").unwrap().subtype,
            "operation"
        );
        assert_eq!(classify(&Method::POST, "/").unwrap().needs, None);
        let posted = classify(&Method::POST, "/Patient/p1/$everything").unwrap();
        assert_eq!(
            (posted.subtype, posted.target.as_deref()),
            ("operation", Some("Patient/p1"))
        );
        assert_eq!(classify(&get, "/NotAType/x"), None);
        let i = classify(&Method::DELETE, "/Observation").unwrap();
        assert_eq!(i.action, 'D');
    }

    #[test]
    fn a_patient_grant_sees_its_compartment_and_shared_resources_only() {
        let obs = |subject: &str| serde_json::json!({"resourceType": "Observation", "subject": {"reference": subject}});
        assert!(in_reach(Some("p1"), "Observation", "o", &obs("Patient/p1")));
        assert!(!in_reach(
            Some("p1"),
            "Observation",
            "o",
            &obs("Patient/p2")
        ));
        // In the compartment definition, yet in no compartment: not this patient's.
        let orphan = serde_json::json!({"resourceType": "Observation"});
        assert!(!in_reach(Some("p1"), "Observation", "o", &orphan));
        let practitioner = serde_json::json!({"resourceType": "Practitioner"});
        assert!(in_reach(Some("p1"), "Practitioner", "d", &practitioner));
        let device =
            serde_json::json!({"resourceType": "Device", "patient": {"reference": "Patient/p2"}});
        assert!(!in_reach(Some("p1"), "Device", "d", &device));
        // Outside the definition and not a shared type: pointing at a patient through `for`.
        let task = serde_json::json!({"resourceType": "Task", "for": {"reference": "Patient/p2"}});
        assert!(!in_reach(Some("p1"), "Task", "t", &task));
        // Writes: only into this patient's record alone.
        assert!(writable(Some("p1"), "Observation", "o", &obs("Patient/p1")));
        let both = serde_json::json!({"resourceType": "Observation",
            "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Patient/p2"}]});
        assert!(in_reach(Some("p1"), "Observation", "o", &both));
        assert!(!writable(Some("p1"), "Observation", "o", &both));
        assert!(!writable(Some("p1"), "Practitioner", "d", &practitioner));
        let me = serde_json::json!({"resourceType": "Patient"});
        assert!(in_reach(Some("p1"), "Patient", "p1", &me));
        assert!(!in_reach(Some("p1"), "Patient", "p2", &me));
        assert!(!in_reach(None, "Patient", "p1", &me));
    }
}
