//! `_summary=true|text|data` on read and search (`count` is a search matter, in
//! [`super::search`]).
//!
//! - `data` drops `text`, on every type.
//! - `true` keeps the top-level elements the R4 specification marks isSummary (Σ), plus `id`,
//!   `meta` and `implicitRules`.
//! - `text` keeps `text`, `id`, `meta` and the top-level mandatory (min 1) elements.
//!
//! fhirbolt does not expose the specification's Σ flags or cardinalities, so [`TABLE`] lists
//! them, from the R4 (4.0.1) resource definitions, for the types this server maps and serves
//! most. A resource of another type is returned whole under `true` and `text`, untagged, and a
//! search says so in a warning. Nested elements are not cut: a kept element keeps all it holds.
//! A resource that lost anything is tagged SUBSETTED, as with `_elements`.

use super::error::FhirError;
use super::search::keep_only;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
}

impl Summary {
    /// A `_summary` value other than `count`; `false` asks for nothing.
    pub fn parse(value: &str) -> Result<Option<Summary>, FhirError> {
        match value {
            "true" => Ok(Some(Summary::True)),
            "text" => Ok(Some(Summary::Text)),
            "data" => Ok(Some(Summary::Data)),
            "false" => Ok(None),
            _ => Err(FhirError::invalid_at(
                "_summary must be true, text, data, count or false",
                "_summary",
            )),
        }
    }

    /// The `_summary` of a query string, if any (the last one wins).
    pub fn from_query(pairs: &[(String, String)]) -> Result<Option<Summary>, FhirError> {
        match pairs.iter().rev().find(|(n, _)| n == "_summary") {
            Some((_, value)) => Summary::parse(value),
            None => Ok(None),
        }
    }

    /// Whether this server knows what to keep of `resource_type`.
    pub fn covers(self, resource_type: &str) -> bool {
        self == Summary::Data || row(resource_type).is_some()
    }
}

/// (type, summary elements, mandatory elements), top level only; a choice element by its base
/// name (`value` for `valueQuantity`).
// One line per list: rustfmt would put each name on a line of its own, 300 lines for a table.
#[rustfmt::skip]
const TABLE: &[(&str, &[&str], &[&str])] = &[
    ("Patient",
        &["identifier", "active", "name", "telecom", "gender", "birthDate", "deceased", "address",
          "managingOrganization", "link"],
        &[]),
    ("Observation",
        &["identifier", "basedOn", "partOf", "status", "code", "subject", "focus", "encounter",
          "effective", "issued", "performer", "value", "hasMember", "derivedFrom", "component"],
        &["status", "code"]),
    ("Encounter",
        &["identifier", "status", "class", "type", "serviceType", "subject", "episodeOfCare",
          "participant", "appointment", "reasonCode", "reasonReference", "diagnosis", "account"],
        &["status", "class"]),
    ("DiagnosticReport",
        &["identifier", "basedOn", "status", "category", "code", "subject", "encounter",
          "effective", "issued", "performer", "resultsInterpreter", "media"],
        &["status", "code"]),
    ("Condition",
        &["identifier", "clinicalStatus", "verificationStatus", "code", "bodySite", "subject",
          "encounter", "onset", "recordedDate", "recorder", "asserter"],
        &["subject"]),
    ("Practitioner",
        &["identifier", "active", "name", "telecom", "address", "gender", "birthDate"],
        &[]),
    ("Organization",
        &["identifier", "active", "type", "name", "partOf"],
        &[]),
    ("MedicationRequest",
        &["identifier", "status", "intent", "priority", "doNotPerform", "reported", "medication",
          "subject", "authoredOn", "requester", "performerType", "instantiatesCanonical",
          "instantiatesUri", "basedOn", "groupIdentifier"],
        &["status", "intent", "medication", "subject"]),
    ("Procedure",
        &["identifier", "instantiatesCanonical", "instantiatesUri", "basedOn", "partOf", "status",
          "statusReason", "category", "code", "subject", "encounter", "performed", "recorder",
          "asserter", "performer", "location", "reasonCode", "reasonReference", "bodySite",
          "outcome"],
        &["status", "subject"]),
    ("Immunization",
        &["identifier", "status", "vaccineCode", "patient", "occurrence", "primarySource",
          "performer", "note", "isSubpotent"],
        &["status", "vaccineCode", "patient", "occurrence"]),
    ("ServiceRequest",
        &["identifier", "instantiatesCanonical", "instantiatesUri", "basedOn", "replaces",
          "requisition", "status", "intent", "category", "priority", "doNotPerform", "code",
          "orderDetail", "quantity", "subject", "encounter", "occurrence", "asNeeded",
          "authoredOn", "requester", "performerType", "performer", "locationCode",
          "locationReference", "reasonCode", "reasonReference", "specimen", "bodySite",
          "patientInstruction"],
        &["status", "intent", "subject"]),
    ("Specimen",
        &["identifier", "accessionIdentifier", "status", "type", "subject", "receivedTime",
          "parent", "request", "collection", "condition"],
        &[]),
];

fn row(
    resource_type: &str,
) -> Option<&'static (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
)> {
    TABLE.iter().find(|(t, _, _)| *t == resource_type)
}

/// `content` (a stored resource's JSON) as `summary` asks, or unchanged when nothing is cut.
pub fn summarise(content: &str, resource_type: &str, summary: Summary) -> String {
    let keep = |key: &str| -> bool {
        let key = key.trim_start_matches('_');
        if matches!(key, "resourceType" | "id" | "meta") {
            return true;
        }
        match (summary, row(resource_type)) {
            (Summary::Data, _) => key != "text",
            (_, None) => true,
            (Summary::True, Some((_, elements, _))) => {
                key == "implicitRules" || names_one_of(key, elements)
            }
            (Summary::Text, Some((_, _, mandatory))) => {
                key == "text" || names_one_of(key, mandatory)
            }
        }
    };
    keep_only(content, keep).unwrap_or_else(|| content.to_string())
}

/// Whether `key` is one of `elements`, or a choice of one (`valueQuantity` for `value`).
fn names_one_of(key: &str, elements: &[&str]) -> bool {
    elements.iter().any(|e| {
        key == *e
            || key
                .strip_prefix(e)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const OBSERVATION: &str = r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"1"},"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">72</div>"},"status":"final","category":[{"text":"vital-signs"}],"code":{"text":"pulse"},"valueQuantity":{"value":72},"note":[{"text":"calm"}]}"#;

    fn keys(content: &str) -> Vec<String> {
        let value: Value = serde_json::from_str(content).unwrap();
        value.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn true_keeps_the_summary_elements_and_tags_the_result() {
        let out = summarise(OBSERVATION, "Observation", Summary::True);
        assert_eq!(
            keys(&out),
            [
                "resourceType",
                "id",
                "meta",
                "status",
                "code",
                "valueQuantity"
            ]
        );
        assert!(out.contains("SUBSETTED"));
    }

    #[test]
    fn text_keeps_the_narrative_and_the_mandatory_elements() {
        let out = summarise(OBSERVATION, "Observation", Summary::Text);
        assert_eq!(
            keys(&out),
            ["resourceType", "id", "meta", "text", "status", "code"]
        );
    }

    #[test]
    fn data_drops_only_the_narrative_and_nothing_cut_means_no_tag() {
        let out = summarise(OBSERVATION, "Observation", Summary::Data);
        assert!(!keys(&out).contains(&"text".to_string()));
        assert_eq!(keys(&out).len(), keys(OBSERVATION).len() - 1);
        let bare = r#"{"resourceType":"Basic","id":"b","code":{"text":"x"}}"#;
        assert_eq!(summarise(bare, "Basic", Summary::Data), bare);
    }

    #[test]
    fn a_type_without_a_table_row_is_returned_whole() {
        let basic = r#"{"resourceType":"Basic","id":"b","text":{"status":"empty","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"/>"},"code":{"text":"x"}}"#;
        assert_eq!(summarise(basic, "Basic", Summary::True), basic);
        assert!(!Summary::True.covers("Basic") && Summary::Data.covers("Basic"));
    }

    #[test]
    fn every_row_names_a_type_once() {
        for (t, _, _) in TABLE {
            assert!(super::super::id::is_resource_type(t), "{t}");
            assert_eq!(TABLE.iter().filter(|(u, _, _)| u == t).count(), 1, "{t}");
        }
    }
}
