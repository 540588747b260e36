//! Codes checked against their required value sets. fhirbolt keeps a `code` element as
//! unchecked text, so `"gender": "bogus"` was stored; R4 binds these elements to one value set
//! each, `required` (a code outside it is invalid). Covered: the elements every clinical
//! workflow writes (genders, the statuses and intents of the resources the HL7v2 mapping and
//! common clients produce) and the `use`/`system`/`type` codes of the Identifier, HumanName,
//! ContactPoint and Address datatypes. Other required bindings are not checked yet.

const GENDER: &[&str] = &["male", "female", "other", "unknown"];
/// ServiceRequest's intents; MedicationRequest's are the same without the last, `directive`.
const REQUEST_INTENT: &[&str] = &[
    "proposal",
    "plan",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
    "directive",
];
const MEDICATION_REQUEST_INTENT: &[&str] = match REQUEST_INTENT.split_last() {
    Some((_, without_directive)) => without_directive,
    None => &[],
};

/// (resource type, element, codes) for elements directly on a resource.
const ON_RESOURCES: &[(&str, &str, &[&str])] = &[
    (
        "Observation",
        "status",
        &[
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "DiagnosticReport",
        "status",
        &[
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "Encounter",
        "status",
        &[
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "Procedure",
        "status",
        &[
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "MedicationRequest",
        "status",
        &[
            "active",
            "on-hold",
            "cancelled",
            "completed",
            "entered-in-error",
            "stopped",
            "draft",
            "unknown",
        ],
    ),
    ("MedicationRequest", "intent", MEDICATION_REQUEST_INTENT),
    (
        "ServiceRequest",
        "status",
        &[
            "draft",
            "active",
            "on-hold",
            "revoked",
            "completed",
            "entered-in-error",
            "unknown",
        ],
    ),
    ("ServiceRequest", "intent", REQUEST_INTENT),
    (
        "Immunization",
        "status",
        &["completed", "entered-in-error", "not-done"],
    ),
    (
        "Appointment",
        "status",
        &[
            "proposed",
            "pending",
            "booked",
            "arrived",
            "fulfilled",
            "cancelled",
            "noshow",
            "entered-in-error",
            "checked-in",
            "waitlist",
        ],
    ),
    (
        "Specimen",
        "status",
        &[
            "available",
            "unavailable",
            "unsatisfactory",
            "entered-in-error",
        ],
    ),
    (
        "DocumentReference",
        "status",
        &["current", "superseded", "entered-in-error"],
    ),
    ("AllergyIntolerance", "type", &["allergy", "intolerance"]),
    (
        "AllergyIntolerance",
        "criticality",
        &["low", "high", "unable-to-assess"],
    ),
];

/// (element holding the datatype, element, codes): `identifier`, `name`, `telecom` and
/// `address` hold an Identifier, a HumanName, a ContactPoint and an Address wherever R4 has
/// them as objects.
const IN_DATATYPES: &[(&str, &str, &[&str])] = &[
    (
        "identifier",
        "use",
        &["usual", "official", "temp", "secondary", "old"],
    ),
    (
        "name",
        "use",
        &[
            "usual",
            "official",
            "temp",
            "nickname",
            "anonymous",
            "old",
            "maiden",
        ],
    ),
    (
        "telecom",
        "system",
        &["phone", "fax", "email", "pager", "url", "sms", "other"],
    ),
    ("telecom", "use", &["home", "work", "temp", "old", "mobile"]),
    (
        "address",
        "use",
        &["home", "work", "temp", "old", "billing"],
    ),
    ("address", "type", &["postal", "physical", "both"]),
];

/// The codes element `key` may hold, in an object that is a resource of `resource_type` (its
/// own `resourceType`) or that sits under element `parent`. The HL7v2 mapping checks its
/// tables against these too.
pub fn required(
    resource_type: Option<&str>,
    parent: &str,
    key: &str,
) -> Option<&'static [&'static str]> {
    if key == "gender" {
        // Patient, Practitioner, RelatedPerson, Person and contacts: all administrative gender.
        return Some(GENDER);
    }
    if let Some(resource_type) = resource_type {
        return ON_RESOURCES
            .iter()
            .find(|(t, k, _)| *t == resource_type && *k == key)
            .map(|(_, _, codes)| *codes);
    }
    IN_DATATYPES
        .iter()
        .find(|(p, k, _)| *p == parent && *k == key)
        .map(|(_, _, codes)| *codes)
}

/// The element an object at `path` sits under: `Patient.name[0]` is under `name`.
pub fn parent_element(path: &str) -> &str {
    let without_index = match path.rfind('[') {
        Some(at) if path.ends_with(']') => &path[..at],
        _ => path,
    };
    without_index.rsplit('.').next().unwrap_or(without_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_found_by_resource_or_datatype() {
        let medication = required(Some("MedicationRequest"), "", "intent").unwrap();
        assert!(medication.contains(&"order") && !medication.contains(&"directive"));
        assert!(required(Some("ServiceRequest"), "", "intent")
            .unwrap()
            .contains(&"directive"));
        assert_eq!(required(Some("Patient"), "", "gender"), Some(GENDER));
        assert!(required(Some("Observation"), "", "status")
            .unwrap()
            .contains(&"final"));
        assert!(required(Some("Patient"), "", "status").is_none());
        assert!(required(None, "telecom", "use")
            .unwrap()
            .contains(&"mobile"));
        assert!(required(None, "name", "use").unwrap().contains(&"maiden"));
        // A HumanName's `use` is not an Address's.
        assert!(!required(None, "address", "use")
            .unwrap()
            .contains(&"maiden"));
        assert_eq!(parent_element("Patient.name[0]"), "name");
        assert_eq!(parent_element("Patient.contact[1].address"), "address");
        assert_eq!(parent_element("Patient"), "Patient");
    }
}
