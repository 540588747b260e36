//! Reports, observations, visits, orders, specimens, immunizations, documents and appointments
//! get their ids from order, visit, specimen, document and appointment numbers (DESIGN.md, "ids"). A sender that reuses
//! one of those numbers for another patient would otherwise move the stored resource, with
//! what refers to it, to that patient; such a message is refused instead.
//!
//! The check and the commit run under [`OwnerLocks`] for the resources concerned, so two
//! messages racing with the same number for two patients cannot both pass it. The locks are
//! per server node; across nodes the race remains (a database constraint would close it).

use std::collections::{HashMap, HashSet};

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
    "Appointment",
];
/// Types locked while a message is checked and written without being owned: a Patient is
/// merged with its stored version (`ingest::stored`), which must not change in between.
const LOCKED_TYPES: &[&str] = &["Patient"];

/// Locks over the ids of owned resources, one per id. Held from the ownership check until the
/// commit returns, which under group commit includes the wait in the lane: coarser locks
/// (stripes) would make unrelated messages, a STAT result among them, queue behind each other.
#[derive(Default)]
pub struct OwnerLocks {
    held: std::sync::Mutex<HashSet<String>>,
    released: tokio::sync::Notify,
}

/// The ids one message holds; released on drop.
pub struct OwnerGuard<'a> {
    locks: &'a OwnerLocks,
    ids: Vec<String>,
}

impl Drop for OwnerGuard<'_> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        for id in &self.ids {
            held.remove(id);
        }
        drop(held);
        self.locks.released.notify_waiters();
    }
}

impl OwnerLocks {
    /// Takes every owned resource among `ops` at once (all or none, so two messages cannot
    /// deadlock), waiting while any of them is held by another message.
    pub async fn lock(&self, ops: &[WriteOp]) -> OwnerGuard<'_> {
        let mut ids: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Upsert(w) if is_locked(&w.resource_type) => {
                    Some(format!("{}/{}", w.resource_type, w.id))
                }
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.released.notified();
            {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if ids.iter().all(|id| !held.contains(id)) {
                    held.extend(ids.iter().cloned());
                    return OwnerGuard { locks: self, ids };
                }
            }
            released.await;
        }
    }
}

fn is_locked(resource_type: &str) -> bool {
    OWNED_TYPES.contains(&resource_type) || LOCKED_TYPES.contains(&resource_type)
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

/// The patient a resource belongs to: `subject`, `patient` for an Immunization, or the
/// first participant that is a Patient for an Appointment.
fn subject_of(resource: &Value) -> Option<String> {
    let direct = ["/subject/reference", "/patient/reference"]
        .iter()
        .find_map(|path| resource.pointer(path).and_then(Value::as_str));
    let participants = resource["participant"].as_array().into_iter().flatten();
    let mut actors = participants.filter_map(|p| p.pointer("/actor/reference")?.as_str());
    direct
        .or_else(|| actors.find(|r| r.starts_with("Patient/")))
        .map(String::from)
}
