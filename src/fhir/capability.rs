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
        .filter(|(_, p)| match p.kind {
            Kind::Reference { target } => target.is_none_or(|t| t == resource_type),
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
