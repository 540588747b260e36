//! References inside a resource posted in a Bundle: finding them, rewriting them to the
//! `Type/id` they resolve to, and refusing those that are no FHIR reference at all.
//!
//! The walk covers the resource and its contained resources, but not whole resources nested
//! in other places (a document Bundle stored as a resource, `Parameters.parameter.resource`):
//! their references belong to them and are kept as written.

use std::collections::HashMap;

use serde_json::Value;

use super::criteria::{parse_conditional_reference, MatchUrl};
use super::error::FhirError;
use super::id::parse_relative_reference;
use super::transaction::ambiguous;

/// Rewrites every reference in `content`: `fullUrl`s of the bundle (`urn:uuid:` included) to
/// their `Type/id`, conditional references (`Type?criteria`) to the one resource `find`
/// returns. Other literal references are left as written; anything that is none (see
/// [`is_literal_reference`]) is refused.
pub fn rewrite_references(
    content: &mut Value,
    targets: &HashMap<String, String>,
    find: Finder,
) -> Result<(), FhirError> {
    let contained = contained_ids(content);
    let mut failure = None;
    visit_references_mut(content, &mut |reference| {
        if failure.is_some() {
            return;
        }
        match resolve(reference, targets, find, &contained) {
            Ok(Some(resolved)) => *reference = resolved,
            Ok(None) => {}
            Err(err) => failure = Some(err),
        }
    });
    failure.map_or(Ok(()), Err)
}

/// The ids of the resources a conditional reference's match URL matches.
pub type Finder<'a> = &'a dyn Fn(&MatchUrl) -> Result<Vec<String>, FhirError>;

/// Rewrites the references that name a `fullUrl` in `targets` and leaves every other as
/// written (for matching a Bundle's resources against criteria before they are finished).
pub fn rewrite_known(content: &mut Value, targets: &HashMap<String, String>) {
    visit_references_mut(content, &mut |reference| {
        if let Some(target) = targets.get(reference.as_str()) {
            *reference = target.clone();
        }
    });
}

fn resolve(
    reference: &str,
    targets: &HashMap<String, String>,
    find: Finder,
    contained: &[String],
) -> Result<Option<String>, FhirError> {
    if let Some(target) = targets.get(reference) {
        return Ok(Some(target.clone()));
    }
    if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
        return Err(FhirError::invalid(format!(
            "reference {reference:?} names no entry of this bundle"
        )));
    }
    let Some(url) = parse_conditional_reference(reference) else {
        if is_literal_reference(reference, contained) {
            return Ok(None);
        }
        return Err(FhirError::invalid(format!(
            "reference {reference:?} is not Type/id, an absolute URL or #id of a contained resource"
        )));
    };
    let url = url?;
    match find(&url)?.as_slice() {
        [id] => Ok(Some(format!("{}/{id}", url.resource_type))),
        [] => Err(FhirError::invalid(format!(
            "conditional reference {reference:?} matched nothing"
        ))),
        many => Err(ambiguous("a conditional reference", many.len())),
    }
}

/// Whether a reference no entry of the bundle resolves is one FHIR allows: `Type/id` (with an
/// optional `/_history/vid`), an absolute URI, or `#id` naming a contained resource (`#`
/// alone, the container, only where contained resources can point at it). `Patient/`,
/// `//host/x` and `Patient/../x` are none of these; stored, they would point nowhere.
fn is_literal_reference(reference: &str, contained: &[String]) -> bool {
    if let Some(local) = reference.strip_prefix('#') {
        return match local {
            "" => !contained.is_empty(),
            id => contained.iter().any(|c| c == id),
        };
    }
    has_scheme(reference) || parse_relative_reference(reference).is_some()
}

/// `scheme:rest` with an RFC 3986 scheme.
fn has_scheme(reference: &str) -> bool {
    let Some((scheme, rest)) = reference.split_once(':') else {
        return false;
    };
    let scheme_char = |c: char| c.is_ascii_alphanumeric() || "+.-".contains(c);
    !rest.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(scheme_char)
}

/// The ids of the resource's contained resources.
fn contained_ids(content: &Value) -> Vec<String> {
    let contained = content.get("contained").and_then(Value::as_array);
    contained
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("id").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Calls `f` with every reference string of the resource itself and its contained resources.
pub fn visit_references(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| visit_references(v, f)),
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("reference") {
                f(r);
            }
            for (key, v) in map {
                if descends(key, v) {
                    visit_references(v, f);
                }
            }
        }
        _ => {}
    }
}

fn visit_references_mut(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| visit_references_mut(v, f)),
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("reference") {
                f(r);
            }
            for (key, v) in map.iter_mut() {
                if key != "reference" && descends(key, v) {
                    visit_references_mut(v, f);
                }
            }
        }
        _ => {}
    }
}

/// Whether the walk enters `child`, found under `key`: not into a nested resource other than
/// a contained one.
fn descends(key: &str, child: &Value) -> bool {
    let nested_resource = |v: &Value| v.get("resourceType").is_some();
    match child {
        Value::Object(_) => key == "contained" || !nested_resource(child),
        Value::Array(items) => key == "contained" || !items.iter().any(nested_resource),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_of_contained_resources_are_rewritten_but_nested_bundles_are_not() {
        let targets = HashMap::from([("urn:uuid:1".to_string(), "Patient/p".to_string())]);
        let mut list = json!({"resourceType": "List",
            "contained": [{"resourceType": "Observation", "subject": {"reference": "urn:uuid:1"}}],
            "subject": {"reference": "urn:uuid:1"}});
        rewrite_references(&mut list, &targets, &|_| Ok(Vec::new())).unwrap();
        assert_eq!(list["contained"][0]["subject"]["reference"], "Patient/p");
        let mut document = json!({"resourceType": "Bundle", "type": "document", "entry": [
            {"resource": {"resourceType": "Composition", "subject": {"reference": "urn:uuid:9"}}}]});
        rewrite_references(&mut document, &targets, &|_| Ok(Vec::new())).unwrap();
        assert_eq!(
            document["entry"][0]["resource"]["subject"]["reference"],
            "urn:uuid:9"
        );
    }

    #[test]
    fn references_that_point_nowhere_are_refused() {
        let no_targets = HashMap::new();
        let check = |reference: &str, contained: Value| {
            let mut obs = json!({"resourceType": "Observation", "contained": contained,
                "subject": {"reference": reference}});
            rewrite_references(&mut obs, &no_targets, &|_| Ok(Vec::new())).is_ok()
        };
        let none = json!([]);
        for bad in [
            "Patient/",
            "//x",
            "Patient/../x",
            "Foo/1",
            "Patient/a b",
            "#p1",
            "#",
        ] {
            assert!(!check(bad, none.clone()), "{bad}");
        }
        let good = [
            "Patient/p1",
            "Patient/p1/_history/2",
            "https://elsewhere.example/Patient/1",
        ];
        for ok in good.into_iter().chain(["urn:isbn:0451450523"]) {
            assert!(check(ok, none.clone()), "{ok}");
        }
        let patient = json!([{"resourceType": "Patient", "id": "p1"}]);
        assert!(check("#p1", patient.clone()) && check("#", patient));
    }
}
