//! Where a resource mapped from HL7v2 meets its stored version. Most resources are written as
//! mapped (a message carries the whole of what it maps). Two kinds are merged with what is
//! stored, so that one message does not undo what another said:
//! - every Patient keeps its stored `link`s (links add up; a new link to the same patient
//!   replaces the old one) and its stored `active` when the message says nothing of it: a
//!   merge (ADT^A40) survives later messages about either patient;
//! - an amended resource ([`Mapped::amended`](super::map::Mapped)) keeps every stored element
//!   the message does not map, and its identifiers and links add up: the merged patient of an
//!   A40 keeps its name and birth date, a cancelled order (an ORC without OBR) its code, a
//!   Specimen what the order and the results each said of it, a cancelled Appointment its
//!   time and the participants it was booked with.
//!
//! The merge reads the stored version and writes under a precondition on its version (or its
//! absence), so a change in between fails the write (the sender is answered AE and resends)
//! rather than being lost. Within one node the owner locks keep that from happening.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::store::{Precondition, Store, StoreError, StoredResource, WriteOp};

/// Elements a Patient keeps from its stored version when the message has none.
const KEPT_PATIENT_ELEMENTS: &[&str] = &["active"];
/// What tells two entries of an array element apart: entries with the same key are one.
type EntryKey = fn(&Value) -> Value;

/// Array elements whose entries add up instead of being replaced (a new entry with the key of
/// a stored one replaces it).
const ADDED_UP: &[(&str, EntryKey)] = &[
    ("link", |link| link["other"].clone()),
    ("identifier", |id| {
        Value::Array(vec![id["system"].clone(), id["value"].clone()])
    }),
    ("participant", |p| {
        Value::Array(vec![p["actor"].clone(), p["type"].clone()])
    }),
];

/// How one resource is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// As mapped, keeping a Patient's links and `active`.
    Patient,
    /// Over the stored version, element by element.
    Amend,
}

/// The merge each op needs, if any.
pub fn merge_of(resource_type: &str, id: &str, amended: &[String]) -> Option<Merge> {
    if amended.iter().any(|a| a == id) {
        Some(Merge::Amend)
    } else if resource_type == "Patient" {
        Some(Merge::Patient)
    } else {
        None
    }
}

/// `mapped` merged with `stored` (its current content) by `merge`.
pub fn merged(stored: &Value, mapped: Value, merge: Merge) -> Value {
    let (Some(stored), Value::Object(mut mapped)) = (stored.as_object(), mapped) else {
        return Value::Null;
    };
    match merge {
        Merge::Patient => {
            for key in KEPT_PATIENT_ELEMENTS {
                if let (false, Some(value)) = (mapped.contains_key(*key), stored.get(*key)) {
                    mapped.insert((*key).to_owned(), value.clone());
                }
            }
            add_up(&mut mapped, stored, &["link"]);
        }
        Merge::Amend => {
            let names: Vec<&str> = ADDED_UP.iter().map(|(name, _)| *name).collect();
            add_up(&mut mapped, stored, &names);
            for (key, value) in stored {
                if key != "meta" && !mapped.contains_key(key) {
                    mapped.insert(key.clone(), value.clone());
                }
            }
        }
    }
    Value::Object(mapped)
}

/// For each of `names`: the stored entries, each replaced by a mapped entry with the same key,
/// then the mapped entries not stored before.
fn add_up(mapped: &mut Map<String, Value>, stored: &Map<String, Value>, names: &[&str]) {
    for (name, entry_key) in ADDED_UP.iter().filter(|(n, _)| names.contains(n)) {
        let old = stored.get(*name).and_then(Value::as_array);
        let new = mapped.get(*name).and_then(Value::as_array);
        let (old, new) = (
            old.cloned().unwrap_or_default(),
            new.cloned().unwrap_or_default(),
        );
        let mut all: Vec<Value> = Vec::with_capacity(old.len() + new.len());
        for entry in old.into_iter().chain(new) {
            let key = entry_key(&entry);
            match all.iter().position(|e| entry_key(e) == key) {
                Some(at) => all[at] = entry,
                None => all.push(entry),
            }
        }
        if !all.is_empty() {
            mapped.insert((*name).to_owned(), Value::Array(all));
        }
    }
}

/// R4's invariant app-3: only a proposed, cancelled or waitlisted Appointment may go without
/// its start and end. An amending event (a deletion, a no-show) for an appointment never
/// booked here has no stored time to keep.
fn may_be_untimed(appointment: &Value) -> bool {
    let timed = appointment.get("start").is_some() && appointment.get("end").is_some();
    let status = appointment["status"].as_str().unwrap_or_default();
    timed || ["proposed", "cancelled", "waitlist"].contains(&status)
}

/// Why merging failed.
#[derive(Debug)]
pub enum MergeError {
    Store(StoreError),
    /// An amending SIU event for an appointment not booked here, without a time of its own.
    UnbookedWithoutTime,
    /// The merged resource is not valid R4 (a stored version written by a FHIR client that the
    /// mapping cannot be combined with).
    Invalid {
        resource_type: String,
    },
}

/// Merges every op that needs it with its stored version, and returns the preconditions the
/// write must hold for the merges to stand.
pub async fn merge_with_stored(
    store: &Store,
    ops: &mut [WriteOp],
    amended: &[String],
) -> Result<Vec<(String, String, Precondition)>, MergeError> {
    let mut wanted: HashMap<String, Vec<String>> = HashMap::new();
    for op in ops.iter() {
        if let WriteOp::Upsert(w) = op {
            if merge_of(&w.resource_type, &w.id, amended).is_some() {
                let ids = wanted.entry(w.resource_type.clone()).or_default();
                ids.push(w.id.clone());
            }
        }
    }
    let mut found: HashMap<(String, String), StoredResource> = HashMap::new();
    for (resource_type, ids) in wanted {
        let stored = store
            .read_many(&resource_type, &ids)
            .await
            .map_err(MergeError::Store)?;
        for s in stored {
            found.insert((s.resource_type.clone(), s.id.clone()), s);
        }
    }
    let mut preconditions = Vec::new();
    for op in ops.iter_mut() {
        let WriteOp::Upsert(w) = op else { continue };
        let Some(merge) = merge_of(&w.resource_type, &w.id, amended) else {
            continue;
        };
        let key = (w.resource_type.clone(), w.id.clone());
        let Some(current) = found.get(&key) else {
            if merge == Merge::Amend {
                if w.resource_type == "Appointment" && !may_be_untimed(&w.content) {
                    return Err(MergeError::UnbookedWithoutTime);
                }
                preconditions.push((key.0, key.1, Precondition::Absent));
            }
            continue;
        };
        let stored: Value = serde_json::from_str(&current.content).unwrap_or(Value::Null);
        let content = merged(&stored, w.content.take(), merge);
        w.content =
            hl7bridge_fhir_codec::canonicalize(content).map_err(|_| MergeError::Invalid {
                resource_type: w.resource_type.clone(),
            })?;
        preconditions.push((key.0, key.1, Precondition::Version(current.version_id)));
    }
    Ok(preconditions)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn link(other: &str, link_type: &str) -> Value {
        json!({"other": {"reference": format!("Patient/{other}")}, "type": link_type})
    }

    #[test]
    fn a_patient_keeps_its_links_and_inactivity_through_a_later_update() {
        let stored = json!({"resourceType": "Patient", "id": "b", "active": false,
            "name": [{"family": "Old"}], "link": [link("a", "replaced-by")]});
        let update = json!({"resourceType": "Patient", "id": "b", "name": [{"family": "New"}]});
        let result = merged(&stored, update, Merge::Patient);
        assert_eq!(result["active"], false);
        assert_eq!(result["link"], json!([link("a", "replaced-by")]));
        assert_eq!(
            result["name"],
            json!([{"family": "New"}]),
            "the message's own data wins"
        );
    }

    #[test]
    fn links_add_up_and_a_link_to_the_same_patient_is_replaced() {
        let stored = json!({"resourceType": "Patient", "link": [link("b", "replaces")]});
        let second_merge = json!({"resourceType": "Patient", "link": [link("c", "replaces")]});
        let result = merged(&stored, second_merge, Merge::Patient);
        assert_eq!(
            result["link"],
            json!([link("b", "replaces"), link("c", "replaces")])
        );
        let reversed = json!({"resourceType": "Patient", "link": [link("b", "replaced-by")]});
        let result = merged(&stored, reversed, Merge::Patient);
        assert_eq!(result["link"], json!([link("b", "replaced-by")]));
    }

    #[test]
    fn an_amended_resource_keeps_what_the_message_does_not_say() {
        let stored = json!({"resourceType": "Patient", "id": "b", "meta": {"versionId": "3"},
            "identifier": [{"system": "s", "value": "1"}, {"system": "ssn", "value": "9"}],
            "name": [{"family": "Kept"}], "birthDate": "1970-01-01"});
        let merge = json!({"resourceType": "Patient", "id": "b", "active": false,
            "identifier": [{"system": "s", "value": "1", "type": {"text": "MR"}}],
            "link": [link("a", "replaced-by")]});
        let result = merged(&stored, merge, Merge::Amend);
        assert_eq!(result["name"], json!([{"family": "Kept"}]));
        assert_eq!(result["birthDate"], "1970-01-01");
        assert_eq!(result["active"], false);
        assert_eq!(
            result["identifier"],
            json!([{"system": "s", "value": "1", "type": {"text": "MR"}},
                   {"system": "ssn", "value": "9"}])
        );
        assert!(result.get("meta").is_none());
    }

    #[test]
    fn only_patients_and_amended_resources_are_merged() {
        let amended = vec!["x".to_owned()];
        assert_eq!(merge_of("Patient", "p", &amended), Some(Merge::Patient));
        assert_eq!(
            merge_of("ServiceRequest", "x", &amended),
            Some(Merge::Amend)
        );
        assert_eq!(merge_of("Observation", "o", &amended), None);
    }
}
