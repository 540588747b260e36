//! References inside a resource posted in a Bundle: finding them and rewriting them to the
//! `Type/id` they resolve to.
//!
//! The walk covers the resource and its contained resources, but not whole resources nested
//! in other places (a document Bundle stored as a resource, `Parameters.parameter.resource`):
//! their references belong to them and are kept as written.

use std::collections::HashMap;

use serde_json::Value;

use super::criteria::parse_conditional_reference;
use super::error::FhirError;
use super::transaction::ambiguous;
use crate::store::IdentifierLookup;

/// Rewrites every reference in `content`: `fullUrl`s of the bundle (`urn:uuid:` included) to
/// their `Type/id`, conditional references (`Type?identifier=…`) to the one resource `find`
/// returns. Anything else is left as written.
pub fn rewrite_references(
    content: &mut Value,
    targets: &HashMap<String, String>,
    find: &dyn Fn(&IdentifierLookup) -> Vec<String>,
) -> Result<(), FhirError> {
    let mut failure = None;
    visit_references_mut(content, &mut |reference| {
        if failure.is_some() {
            return;
        }
        match resolve(reference, targets, find) {
            Ok(Some(resolved)) => *reference = resolved,
            Ok(None) => {}
            Err(err) => failure = Some(err),
        }
    });
    failure.map_or(Ok(()), Err)
}

fn resolve(
    reference: &str,
    targets: &HashMap<String, String>,
    find: &dyn Fn(&IdentifierLookup) -> Vec<String>,
) -> Result<Option<String>, FhirError> {
    if let Some(target) = targets.get(reference) {
        return Ok(Some(target.clone()));
    }
    if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
        return Err(FhirError::invalid(format!(
            "reference {reference:?} names no entry of this bundle"
        )));
    }
    let Some(lookup) = parse_conditional_reference(reference) else {
        return Ok(None);
    };
    let lookup = lookup?;
    match find(&lookup).as_slice() {
        [id] => Ok(Some(format!("{}/{id}", lookup.resource_type))),
        [] => Err(FhirError::invalid(format!(
            "conditional reference {reference:?} matched nothing"
        ))),
        many => Err(ambiguous("a conditional reference", many.len())),
    }
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
        rewrite_references(&mut list, &targets, &|_| Vec::new()).unwrap();
        assert_eq!(list["contained"][0]["subject"]["reference"], "Patient/p");
        let mut document = json!({"resourceType": "Bundle", "type": "document", "entry": [
            {"resource": {"resourceType": "Composition", "subject": {"reference": "urn:uuid:9"}}}]});
        rewrite_references(&mut document, &targets, &|_| Vec::new()).unwrap();
        assert_eq!(
            document["entry"][0]["resource"]["subject"]["reference"],
            "urn:uuid:9"
        );
    }
}
