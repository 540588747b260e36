//! What a resource contributes to the search indexes, computed from its JSON at write time:
//! the references it holds, the patient compartments it belongs to, its identifiers, and the
//! token, date and string values of its search parameters (see [`super::search_params`]).

use std::collections::BTreeSet;

use serde_json::Value;

use super::compartment::is_membership_path;
use super::search_params::{params_of, range_of, strings_of, tokens_of, values_at, Kind};
use crate::fhir::id::{parse_relative_reference, RelativeRef};

/// Index rows for one resource, deduplicated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IndexRows {
    /// (element path, target type, target id)
    pub refs: BTreeSet<(String, String, String)>,
    /// Patient ids whose compartment holds this resource.
    pub patients: BTreeSet<String>,
    /// (system, value) of each identifier; system empty when absent.
    pub identifiers: BTreeSet<(String, String)>,
    /// (parameter, system, code) of token parameters other than `identifier`.
    pub tokens: BTreeSet<(String, String, String)>,
    /// (parameter, low, high) of date parameters.
    pub dates: BTreeSet<(String, i64, i64)>,
    /// (parameter, text) of string parameters.
    pub strings: BTreeSet<(String, String)>,
}

/// Bytes of a value an index column holds. PostgreSQL's B-tree refuses keys over about 2.7 kB,
/// and a value of any length must not make a resource unstorable.
const MAX_INDEXED: usize = 256;

/// A token or string value as index columns hold it: itself when short, else its first 191
/// bytes, `#`, and the SHA-256 of the whole, so equality stays exact. Searches transform the
/// searched value the same way.
pub fn index_key(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_INDEXED {
        return std::borrow::Cow::Borrowed(text);
    }
    let cut = char_floor(text, MAX_INDEXED - 65);
    let digest = super::write::payload_hash(text.as_bytes());
    std::borrow::Cow::Owned(format!("{}#{digest}", &text[..cut]))
}

/// The first bytes of normalized text that prefix and substring matching index.
pub fn index_prefix(text: &str) -> &str {
    &text[..char_floor(text, MAX_INDEXED)]
}

fn char_floor(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// The (system, value) of a resource's identifiers, without the rest of [`extract`]'s work
/// (for matching conditional references while a Bundle is planned).
pub fn identifiers(content: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    collect_identifiers(content.get("identifier"), &mut out);
    out
}

/// Every index row of a resource: [`extract_links`] and [`add_search_values`].
pub fn extract(resource_type: &str, id: &str, content: &Value) -> IndexRows {
    let mut rows = extract_links(resource_type, id, content);
    add_search_values(resource_type, content, &mut rows);
    rows
}

/// The rows written with the resource even when search indexing is deferred: its references,
/// its patient compartments and its identifiers, which `$everything`, includes, access checks
/// and conditional references need at once.
pub fn extract_links(resource_type: &str, id: &str, content: &Value) -> IndexRows {
    let mut rows = IndexRows::default();
    collect_refs(content, &mut String::new(), &mut rows.refs);
    for (path, target_type, target_id) in &rows.refs {
        if target_type == "Patient" && is_membership_path(resource_type, path) {
            rows.patients.insert(target_id.clone());
        }
    }
    if resource_type == "Patient" {
        rows.patients.insert(id.to_string());
    }
    collect_identifiers(content.get("identifier"), &mut rows.identifiers);
    rows
}

/// Adds the token (other than `identifier`), date and string values of the type's search
/// parameters: the rows a deferred import leaves to the reindex.
pub fn add_search_values(resource_type: &str, content: &Value, rows: &mut IndexRows) {
    for param in params_of(resource_type) {
        let values = param.paths.iter().flat_map(|path| values_at(content, path));
        let name = param.name.to_string();
        match param.kind {
            Kind::Token => values.flat_map(tokens_of).for_each(|(system, code)| {
                rows.tokens.insert((name.clone(), system, code));
            }),
            Kind::Date => values.filter_map(range_of).for_each(|(low, high)| {
                rows.dates.insert((name.clone(), low, high));
            }),
            Kind::Str => values.flat_map(strings_of).for_each(|text| {
                rows.strings.insert((name.clone(), text));
            }),
            Kind::Reference { .. } => {}
        }
    }
}

fn collect_refs(value: &Value, path: &mut String, out: &mut BTreeSet<(String, String, String)>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, path, out)),
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference") {
                if let Some(RelativeRef {
                    resource_type, id, ..
                }) = parse_relative_reference(reference)
                {
                    out.insert((path.clone(), resource_type.to_string(), id.to_string()));
                }
            }
            for (key, child) in map {
                // Contained resources are indexed as part of their container only by their
                // own references, which is what searching on the container needs.
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                collect_refs(child, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn collect_identifiers(value: Option<&Value>, out: &mut BTreeSet<(String, String)>) {
    let items: Vec<&Value> = match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(single @ Value::Object(_)) => vec![single],
        _ => return,
    };
    for item in items {
        if let Some(Value::String(v)) = item.get("value") {
            let system = item.get("system").and_then(Value::as_str).unwrap_or("");
            out.insert((system.to_string(), v.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_observation_joins_its_subjects_compartment_and_records_its_references() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/e1"},
            "performer": [{"reference": "Practitioner/d1"}]});
        let rows = extract("Observation", "o1", &obs);
        assert_eq!(rows.patients, BTreeSet::from(["p1".to_string()]));
        assert!(rows
            .refs
            .contains(&("encounter".into(), "Encounter".into(), "e1".into())));
        assert!(rows
            .refs
            .contains(&("performer".into(), "Practitioner".into(), "d1".into())));
    }

    #[test]
    fn nested_reference_paths_are_dotted_without_indices() {
        let enc = json!({"resourceType": "Encounter",
            "participant": [{"individual": {"reference": "Practitioner/d1"}}]});
        let rows = extract("Encounter", "e1", &enc);
        let expected = (
            "participant.individual".into(),
            "Practitioner".into(),
            "d1".into(),
        );
        assert!(rows.refs.contains(&expected));
    }

    #[test]
    fn a_patient_is_in_its_own_compartment_and_its_identifiers_are_indexed() {
        let p = json!({"resourceType": "Patient", "identifier": [
            {"system": "urn:mrn", "value": "123"}, {"value": "456"}]});
        let rows = extract("Patient", "p1", &p);
        assert!(rows.patients.contains("p1"));
        assert!(rows.identifiers.contains(&("urn:mrn".into(), "123".into())));
        assert!(rows.identifiers.contains(&("".into(), "456".into())));
    }

    #[test]
    fn long_values_are_indexed_by_a_bounded_exact_key() {
        let long = "é".repeat(400);
        let key = index_key(&long);
        assert!(key.len() <= MAX_INDEXED, "{}", key.len());
        assert_ne!(index_key(&format!("{long}x")), key, "still exact");
        assert_eq!(index_key("short"), "short");
        assert!(index_prefix(&long).len() <= MAX_INDEXED);
    }

    #[test]
    fn search_parameter_values_are_extracted_by_type() {
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "effectiveDateTime": "2024-07-01"});
        let rows = extract("Observation", "o1", &obs);
        assert!(rows
            .tokens
            .contains(&("status".into(), "".into(), "final".into())));
        assert!(rows
            .tokens
            .contains(&("code".into(), "http://loinc.org".into(), "2345-7".into())));
        assert_eq!(rows.dates.len(), 1);
        let patient = json!({"resourceType": "Patient",
            "name": [{"family": "Quill", "given": ["Ada", "M"]}]});
        let rows = extract("Patient", "p1", &patient);
        assert!(rows.strings.contains(&("name".into(), "Ada".into())));
        assert!(rows.strings.contains(&("family".into(), "Quill".into())));
        assert!(rows.strings.contains(&("given".into(), "M".into())));
    }

    #[test]
    fn a_reference_to_a_patient_outside_a_membership_path_does_not_join() {
        let enc = json!({"resourceType": "Claim", "provider": {"reference": "Patient/p9"}});
        assert!(extract("Claim", "c1", &enc).patients.is_empty());
    }
}
