//! Reports, observations and visits get their ids from order and visit numbers (DESIGN.md,
//! "ids"). A sender that reuses one of those numbers for another patient would otherwise move
//! the stored report, with its results, to that patient; such a message is refused instead.

use std::collections::HashMap;

use serde_json::Value;

use super::v2::AckError;
use crate::store::{Store, StoreError, WriteOp};

/// Table 0357: duplicate key identifier.
const DUPLICATE_KEY: u16 = 205;
const OWNED_TYPES: &[&str] = &["DiagnosticReport", "Observation", "Encounter"];

/// An error naming the first resource that already belongs to another patient, if any.
/// Reads one statement per type (and chunk), whatever the message size.
pub async fn foreign_owner(store: &Store, ops: &[WriteOp]) -> Result<Option<AckError>, StoreError> {
    let mut wanted: HashMap<&str, HashMap<String, Option<String>>> = HashMap::new();
    for op in ops {
        let WriteOp::Upsert(w) = op else { continue };
        if OWNED_TYPES.contains(&w.resource_type.as_str()) {
            let subject = subject_of(&w.content);
            wanted
                .entry(&w.resource_type)
                .or_default()
                .insert(w.id.clone(), subject);
        }
    }
    for (resource_type, subjects) in wanted {
        let ids: Vec<String> = subjects.keys().cloned().collect();
        for stored in store.read_many(resource_type, &ids).await? {
            let Ok(content) = serde_json::from_str::<Value>(&stored.content) else {
                continue;
            };
            if subject_of(&content) != subjects[&stored.id] {
                return Ok(Some(AckError {
                    code: DUPLICATE_KEY,
                    location: None,
                    message: format!(
                        "a stored {resource_type} with this order or visit number belongs to another patient"
                    ),
                }));
            }
        }
    }
    Ok(None)
}

fn subject_of(resource: &Value) -> Option<String> {
    resource
        .pointer("/subject/reference")
        .and_then(Value::as_str)
        .map(String::from)
}
