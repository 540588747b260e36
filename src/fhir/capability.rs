//! The CapabilityStatement served at `/metadata`. It claims only what works today: read, vread,
//! create (with conditional create), update (with update-as-create), delete, search on every
//! type (`_id`, `_lastUpdated`, `identifier`, and the parameters of
//! [`crate::store::search_params`]), `$everything` on Patient, transaction and batch.

use serde_json::{json, Value};

use super::id::R4_RESOURCE_TYPES;
use crate::store::search_params::{all, params_of, Kind};

/// `started` is the server's start instant: the statement can change only with a restart.
pub fn capability_statement(base: &str, started: &str) -> Value {
    let resources: Vec<Value> = R4_RESOURCE_TYPES.iter().map(|t| resource(t)).collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": started,
        "publisher": "hl7bridge",
        "kind": "instance",
        "software": {"name": "hl7bridge", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "hl7bridge FHIR R4 facade", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"},
                {"code": "history-system"}],
        }],
    })
}

/// The R4 target types of the reference parameters the index keeps for any type (their
/// element allows several): a `_revinclude` through one of them is listed only on the types
/// it can point at. A parameter not listed here (Provenance's `target`) may point at any.
const R4_TARGETS: &[((&str, &str), &[&str])] = &[
    (
        ("Patient", "general-practitioner"),
        &["Organization", "Practitioner", "PractitionerRole"],
    ),
    (
        ("Observation", "subject"),
        &["Patient", "Group", "Device", "Location"],
    ),
    (
        ("Observation", "performer"),
        &[
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "CareTeam",
            "Patient",
            "RelatedPerson",
        ],
    ),
    (
        ("Observation", "has-member"),
        &["Observation", "QuestionnaireResponse", "MolecularSequence"],
    ),
    (
        ("DiagnosticReport", "performer"),
        &[
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "CareTeam",
        ],
    ),
    (
        ("DiagnosticReport", "subject"),
        &["Patient", "Group", "Device", "Location"],
    ),
    (("Encounter", "subject"), &["Patient", "Group"]),
    (
        ("Encounter", "participant"),
        &["Practitioner", "PractitionerRole", "RelatedPerson"],
    ),
    (("Condition", "subject"), &["Patient", "Group"]),
    (("Procedure", "subject"), &["Patient", "Group"]),
    (
        ("MedicationRequest", "requester"),
        &[
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "Patient",
            "RelatedPerson",
            "Device",
        ],
    ),
    (("MedicationRequest", "subject"), &["Patient", "Group"]),
    (("Appointment", "based-on"), &["ServiceRequest"]),
    (
        ("Appointment", "actor"),
        &[
            "Patient",
            "Practitioner",
            "PractitionerRole",
            "RelatedPerson",
            "Device",
            "HealthcareService",
            "Location",
        ],
    ),
    (
        ("Provenance", "agent"),
        &[
            "Practitioner",
            "PractitionerRole",
            "RelatedPerson",
            "Patient",
            "Device",
            "Organization",
        ],
    ),
];

/// Whether `source`'s reference parameter `param` can point at a `target`.
fn may_reference(source: &str, param: &str, target: &str) -> bool {
    R4_TARGETS
        .iter()
        .find(|((s, p), _)| *s == source && *p == param)
        .is_none_or(|(_, targets)| targets.contains(&target))
}

/// What a date parameter's `documentation` says: R4's CapabilityStatement has no element for
/// sort keys.
const SORT_KEY: &str = "Also a `_sort` key (`-` first for descending).";

fn resource(resource_type: &str) -> Value {
    let mut r = json!({
        "type": resource_type,
        "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "create"}, {"code": "update"},
            {"code": "patch"}, {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
            {"code": "search-type"}],
        "versioning": "versioned-update",
        "readHistory": true,
        "updateCreate": true,
        "conditionalCreate": true,
        "conditionalUpdate": true,
        "conditionalDelete": "single",
        "conditionalRead": "full-support",
    });
    let mut params = vec![
        json!({"name": "_id", "type": "token"}),
        json!({"name": "_lastUpdated", "type": "date", "documentation": SORT_KEY}),
        json!({"name": "identifier", "type": "token"}),
    ];
    params.extend(params_of(resource_type).iter().map(|p| {
        let kind = match p.kind {
            Kind::Token => "token",
            Kind::Date => "date",
            Kind::Str => "string",
            Kind::Reference { .. } => "reference",
        };
        let mut param = json!({"name": p.name, "type": kind});
        if p.kind == Kind::Date {
            param["documentation"] = json!(SORT_KEY);
        }
        param
    }));
    r["searchParam"] = Value::Array(params);
    let includes: Vec<String> = params_of(resource_type)
        .iter()
        .filter(|p| matches!(p.kind, Kind::Reference { .. }))
        .map(|p| format!("{resource_type}:{}", p.name))
        .collect();
    let revincludes: Vec<String> = all()
        .filter(|(source, p)| match p.kind {
            Kind::Reference { target: Some(t) } => t == resource_type,
            Kind::Reference { target: None } => may_reference(source, p.name, resource_type),
            _ => false,
        })
        .map(|(t, p)| format!("{t}:{}", p.name))
        .collect();
    if !includes.is_empty() {
        r["searchInclude"] = json!(includes);
    }
    if !revincludes.is_empty() {
        r["searchRevInclude"] = json!(revincludes);
    }
    if resource_type == "Patient" {
        r["operation"] = json!([{
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        }]);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revincludes(resource_type: &str) -> Vec<String> {
        serde_json::from_value(resource(resource_type)["searchRevInclude"].clone()).unwrap()
    }

    #[test]
    fn revincludes_are_listed_only_where_their_reference_can_point() {
        let appointment = revincludes("Appointment");
        assert!(
            !appointment.contains(&"Observation:subject".to_string()),
            "{appointment:?}"
        );
        assert!(appointment.contains(&"Provenance:target".to_string()));
        let patient = revincludes("Patient");
        for expected in [
            "Observation:subject",
            "Appointment:actor",
            "Provenance:target",
        ] {
            assert!(
                patient.contains(&expected.to_string()),
                "{expected}: {patient:?}"
            );
        }
        assert!(revincludes("ServiceRequest").contains(&"Appointment:based-on".to_string()));
    }

    #[test]
    fn every_listed_parameter_is_one_the_index_keeps_for_any_type() {
        for ((source, param), _) in R4_TARGETS {
            let found = crate::store::search_params::find(source, param)
                .unwrap_or_else(|| panic!("{source}.{param} is not indexed"));
            assert_eq!(
                found.kind,
                Kind::Reference { target: None },
                "{source}.{param}"
            );
        }
    }
}
