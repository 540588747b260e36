//! Reports, observations, visits, orders, specimens, immunizations and documents get their ids
//! from order, visit, specimen and document numbers (DESIGN.md, "ids"). A sender that reuses
//! one of those numbers for another patient would otherwise move the stored resource, with
//! what refers to it, to that patient; such a message is refused instead.
//!
//! The check and the commit run under [`OwnerLocks`] for the resources concerned, so two
//! messages racing with the same number for two patients cannot both pass it. The locks are
//! per server node; across nodes the race remains (a database constraint would close it).

use std::collections::HashMap;

use serde_json::Value;

use super::v2::AckError;
use crate::store::{Store, StoreError, WriteOp};

/// Table 0357: duplicate key identifier.
const DUPLICATE_KEY: u16 = 205;
const OWNED_TYPES: &[&str] = &[
    "DiagnosticReport",
    "Observation",
    "Encounter",
    "ServiceRequest",
    "Specimen",
    "Immunization",
    "DocumentReference",
];
/// Types locked while a message is checked and written without being owned: a Patient is
/// merged with its stored version (`ingest::stored`), which must not change in between.
const LOCKED_TYPES: &[&str] = &["Patient"];

/// Striped locks over the ids of owned resources.
pub struct OwnerLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

const STRIPES: usize = 256;

impl Default for OwnerLocks {
    fn default() -> Self {
        OwnerLocks {
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl OwnerLocks {
    /// Locks every stripe that the owned resources among `ops` fall in, in stripe order so that
    /// two messages cannot deadlock.
    pub async fn lock(&self, ops: &[WriteOp]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Upsert(w) if is_locked(&w.resource_type) => Some(stripe(&w.id)),
                _ => None,
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.stripes[s].lock().await);
        }
        guards
    }
}

fn is_locked(resource_type: &str) -> bool {
    OWNED_TYPES.contains(&resource_type) || LOCKED_TYPES.contains(&resource_type)
}

fn stripe(id: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    (hasher.finish() % STRIPES as u64) as usize
}

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

/// The patient a resource belongs to: `subject`, or `patient` for an Immunization.
fn subject_of(resource: &Value) -> Option<String> {
    ["/subject/reference", "/patient/reference"]
        .iter()
        .find_map(|path| resource.pointer(path).and_then(Value::as_str))
        .map(String::from)
}
