//! Deterministic resource ids, so that a resent or corrected message updates the same
//! resources.
//!
//! An id is the UUIDv5 of [`NAMESPACE`] and a key built from identifiers only (never from the
//! time of mapping). Key parts are joined by `|`, each with `%` and `|` percent-encoded, so
//! two different part lists never give the same key.
//!
//! - Patient: the first PID-3 repetition typed `MR`, else the first with a value; system and
//!   value.
//! - DiagnosticReport: the filler order number (OBR-3, else ORC-3); else the placer order
//!   number (OBR-2, else ORC-2) under a different prefix, so the two cannot collide. A second
//!   OBR with the same number in one message gets its occurrence number added.
//! - Observation: the report's key, OBX-3 code and coding system, OBX-4 sub-id, and for an OBX
//!   under SPM the SPM set id. When that repeats within one report (same code, no sub-id),
//!   OBX-1 is added as a last resort, then the occurrence number.
//! - Encounter: PV1-19 visit number with its authority.
//! - ServiceRequest: the placer order number (OBR-2, else ORC-2), which the order has from its
//!   first message on; else the filler order number under a different prefix.
//! - Specimen: the placer's specimen id (SPM-2.1), which it has from its order on; else the
//!   filler's (SPM-2.2) under a different prefix; else, in an order, the order's key with the
//!   SPM set id.
//! - Immunization: the filler order number (ORC-3), else the placer's (ORC-2); else the
//!   patient, the vaccine code (RXA-5) and the time given (RXA-3).
//! - DocumentReference: the unique document number (TXA-12).
//! - Appointment: the filler appointment id (SCH-2), which every SIU from the scheduling
//!   system carries; else the placer's (SCH-1) under a different prefix.
//! - Practitioner: the XCN id number with its assigning authority (AIP-3); none without an id.
//! - Location: the PL's own identifier (PL-10); else the facility with point of care, room,
//!   bed, building and floor.
//! - Provenance: one per message, from MSH-3, MSH-4 and MSH-10 as sent.
//! - Observations of an order, a specimen or an immunization: as for a report, under that
//!   resource's key.
//!
//! Identifiers without an assigning authority are scoped by the sending facility (MSH-4), so
//! that two senders' unqualified MRN `12345` do not become one patient. That scope appears only
//! in the key, not in `Identifier.system`.

use std::collections::HashMap;

use uuid::Uuid;

use super::datatypes::{code, uri_part, Ident};
use super::MapError;
use crate::ingest::v2::{Repetition, Segment};

/// The namespace of every id this mapper makes. Changing it changes every id.
const NAMESPACE: Uuid = Uuid::from_u128(0xcac3_12c7_0805_40f3_aa80_326c_89bd_245d);

const PID_3: usize = 3;
const OBX_1: usize = 1;
const OBX_3: usize = 3;
const OBX_4: usize = 4;

/// The FHIR id for a key.
pub(super) fn resource_id(key: &str) -> String {
    Uuid::new_v5(&NAMESPACE, key.as_bytes()).to_string()
}

fn key(parts: &[&str]) -> String {
    let escape = |p: &str| p.replace('%', "%25").replace('|', "%7C");
    parts
        .iter()
        .map(|p| escape(p))
        .collect::<Vec<_>>()
        .join("|")
}

/// The one rule from an HL7 assigning authority (HD: namespace id, universal id, universal id
/// type) to `Identifier.system`:
/// 1. a universal id of type `ISO` that is an OID: `urn:oid:<oid>`;
/// 2. a universal id of type `UUID`: `urn:uuid:<uuid>`;
/// 3. a namespace id: `urn:hl7bridge:v2:authority:<namespace, percent-encoded>`;
/// 4. a universal id of another type: `urn:hl7bridge:v2:authority:<type>:<id>`, percent-encoded;
/// 5. nothing: no system.
pub(super) fn authority_system(
    namespace: Option<String>,
    universal_id: Option<String>,
    id_type: Option<String>,
) -> Option<String> {
    let universal_id = code(universal_id);
    let id_type = code(id_type).map(|t| t.to_ascii_uppercase());
    match (universal_id.as_deref(), id_type.as_deref()) {
        (Some(oid), Some("ISO")) if is_oid(oid) => return Some(format!("urn:oid:{oid}")),
        (Some(uuid), Some("UUID")) if Uuid::parse_str(uuid).is_ok() => {
            return Some(format!("urn:uuid:{}", uuid.to_ascii_lowercase()))
        }
        _ => {}
    }
    if let Some(namespace) = code(namespace) {
        return Some(format!(
            "urn:hl7bridge:v2:authority:{}",
            uri_part(&namespace)
        ));
    }
    let (id, id_type) = (universal_id?, id_type.unwrap_or_default());
    Some(format!(
        "urn:hl7bridge:v2:authority:{}:{}",
        uri_part(&id_type),
        uri_part(&id)
    ))
}

fn is_oid(text: &str) -> bool {
    let mut arcs = text.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let rest: Vec<&str> = arcs.collect();
    let arc_ok = |a: &&str| {
        !a.is_empty()
            && a.bytes().all(|b| b.is_ascii_digit())
            && (a.len() == 1 || !a.starts_with('0'))
    };
    first_ok && !rest.is_empty() && rest.iter().all(arc_ok)
}

/// Sending-facility scope for identifiers that carry no authority.
pub(super) struct Scope {
    sender: String,
}

impl Scope {
    pub(super) fn new(sending_facility: Option<String>) -> Self {
        Scope {
            sender: sending_facility.unwrap_or_default(),
        }
    }

    fn system(&self, ident: &Ident) -> String {
        match &ident.system {
            Some(system) => system.clone(),
            None => self.sender_system(),
        }
    }

    fn sender_system(&self) -> String {
        format!("urn:hl7bridge:v2:sender:{}", uri_part(&self.sender))
    }
}

/// The PID-3 repetition that identifies the patient: the first typed MR, else the first.
pub(super) fn patient_identifier(pid: &Segment<'_>) -> Result<Ident, MapError> {
    identifier_list_key(pid, PID_3, "patient identifier list")
}

/// The repetition of a CX list (PID-3, MRG-1) that identifies a patient, by the PID-3 rule.
pub(super) fn identifier_list_key(
    seg: &Segment<'_>,
    field: usize,
    what: &str,
) -> Result<Ident, MapError> {
    let idents: Vec<Ident> = seg
        .field(field)
        .map(|f| f.repetitions().filter_map(|r| Ident::from_cx(&r)).collect())
        .unwrap_or_default();
    let mr = idents.iter().find(|i| i.type_code.as_deref() == Some("MR"));
    mr.or(idents.first())
        .cloned()
        .ok_or_else(|| MapError::required(seg, field, what))
}

pub(super) fn patient_key(ident: &Ident, scope: &Scope) -> String {
    key(&["Patient", &scope.system(ident), &ident.value])
}

pub(super) fn encounter_key(visit: &Ident, scope: &Scope) -> String {
    key(&["Encounter", &scope.system(visit), &visit.value])
}

/// A Practitioner named by an XCN id number (ORC-12, OBR-16, AIP-3, ...).
pub(super) fn practitioner_key(person: &Ident, scope: &Scope) -> String {
    key(&["Practitioner", &scope.system(person), &person.value])
}

/// A Location named by its own identifier (PL-10).
pub(super) fn location_identifier_key(location: &Ident, scope: &Scope) -> String {
    key(&[
        "Location",
        "identifier",
        &scope.system(location),
        &location.value,
    ])
}

/// A Location named by its place: the facility's system (else the sender's scope), then the
/// point of care, room, bed, building and floor as sent.
pub(super) fn location_place_key(
    facility: Option<String>,
    place: &[&str],
    scope: &Scope,
) -> String {
    let facility = facility.unwrap_or_else(|| scope.sender_system());
    let mut parts = vec!["Location", "place", facility.as_str()];
    parts.extend_from_slice(place);
    key(&parts)
}

/// The Provenance of one message: the sender (MSH-3, MSH-4, as sent) and its control id
/// (MSH-10), the key by which a resend is recognised.
pub(crate) fn message_provenance_id(
    application: &str,
    facility: &str,
    control_id: &str,
    payload_hash: &str,
) -> String {
    resource_id(&key(&[
        "Provenance",
        "message",
        application,
        facility,
        control_id,
        payload_hash,
    ]))
}

/// Counts keys already given out in one message.
#[derive(Debug, Default)]
pub(super) struct KeyCounter {
    seen: HashMap<String, usize>,
}

impl KeyCounter {
    fn occurrence(&mut self, key: &str) -> usize {
        let count = self.seen.entry(key.to_owned()).or_default();
        *count += 1;
        *count
    }

    fn unique(&mut self, base: String) -> String {
        match self.occurrence(&base) {
            1 => base,
            n => key(&[&base, "occurrence", &n.to_string()]),
        }
    }
}

/// The report's order number: the filler's when there is one, else the placer's.
pub(super) enum OrderNumber {
    Filler(Ident),
    Placer(Ident),
}

pub(super) fn report_key(order: &OrderNumber, scope: &Scope, seen: &mut KeyCounter) -> String {
    order_key("DiagnosticReport", order, scope, seen)
}

/// The key of a resource identified by an order (or specimen) number.
pub(super) fn order_key(
    resource_type: &str,
    order: &OrderNumber,
    scope: &Scope,
    seen: &mut KeyCounter,
) -> String {
    let (kind, ident) = match order {
        OrderNumber::Filler(ident) => ("filler", ident),
        OrderNumber::Placer(ident) => ("placer", ident),
    };
    seen.unique(key(&[
        resource_type,
        kind,
        &scope.system(ident),
        &ident.value,
    ]))
}

/// The key of a resource that has no number of its own: `parts` under its parent's key.
pub(super) fn derived_key(parent_key: &str, parts: &[&str], seen: &mut KeyCounter) -> String {
    let mut all = vec![parent_key];
    all.extend_from_slice(parts);
    seen.unique(key(&all))
}

pub(super) fn document_key(document: &Ident, scope: &Scope) -> String {
    key(&[
        "DocumentReference",
        &scope.system(document),
        &document.value,
    ])
}

/// An immunization without an order number: the patient, the vaccine and when it was given.
pub(super) fn immunization_fallback_key(
    patient_id: &str,
    vaccine: (&str, &str),
    given: &str,
    seen: &mut KeyCounter,
) -> String {
    let (system, code) = vaccine;
    let parts = ["Immunization", "patient", patient_id, system, code, given];
    seen.unique(key(&parts))
}

/// The key of one OBX within a report; `specimen` is the set id of the SPM it follows.
pub(super) fn observation_key(
    report_key: &str,
    obx: &Segment<'_>,
    specimen: Option<&str>,
    seen: &mut KeyCounter,
) -> Result<String, MapError> {
    let code = obx
        .field(OBX_3)
        .and_then(|f| f.repetition(1))
        .and_then(|r| cwe_key_part(&r));
    let (code, system) =
        code.ok_or_else(|| MapError::required(obx, OBX_3, "observation identifier"))?;
    let sub_id = obx.text(OBX_4).unwrap_or_default();
    let specimen = specimen
        .map(|s| format!("specimen {s}"))
        .unwrap_or_default();
    let base = key(&[
        "Observation",
        report_key,
        &specimen,
        &system,
        &code,
        &sub_id,
    ]);
    if seen.occurrence(&base) == 1 {
        return Ok(base);
    }
    let set_id = obx.text(OBX_1).unwrap_or_default();
    Ok(seen.unique(key(&[&base, "set id", &set_id])))
}

/// A CWE's code and coding system for a key (OBX-3, RXA-5); the text stands in for a missing
/// code.
pub(super) fn cwe_key_part(cwe: &Repetition<'_>) -> Option<(String, String)> {
    let code = code(cwe.component(1)).or_else(|| code(cwe.component(2)))?;
    Some((code, cwe.component(3).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    #[test]
    fn authority_rule_prefers_an_iso_oid() {
        let system = authority_system(some("HOSP"), some("2.16.840.1.113883.19.3"), some("ISO"));
        assert_eq!(system.as_deref(), Some("urn:oid:2.16.840.1.113883.19.3"));
    }

    #[test]
    fn authority_rule_uses_the_namespace_when_there_is_no_oid() {
        let system = authority_system(some("Facility"), some("Oid"), some("ISO"));
        assert_eq!(
            system.as_deref(),
            Some("urn:hl7bridge:v2:authority:Facility")
        );
        let system = authority_system(some("MCK"), some("1.2"), some("L"));
        assert_eq!(system.as_deref(), Some("urn:hl7bridge:v2:authority:MCK"));
    }

    #[test]
    fn authority_rule_covers_uuids_other_types_and_nothing() {
        let uuid = "CAC312C7-0805-40F3-AA80-326C89BD245D";
        let system = authority_system(None, some(uuid), some("UUID"));
        assert_eq!(
            system.as_deref(),
            Some("urn:uuid:cac312c7-0805-40f3-aa80-326c89bd245d")
        );
        let system = authority_system(None, some("lab.example"), some("DNS"));
        assert_eq!(
            system.as_deref(),
            Some("urn:hl7bridge:v2:authority:DNS:lab.example")
        );
        assert_eq!(authority_system(None, None, some("ISO")), None);
    }

    #[test]
    fn oids_are_checked() {
        assert!(is_oid("2.16.840.1"));
        assert!(is_oid("1.0.3"));
        for bad in ["3.1", "2", "2.", "2.01", "2.a", "Oid", ""] {
            assert!(!is_oid(bad), "{bad}");
        }
    }

    #[test]
    fn keys_cannot_collide_through_separators() {
        assert_ne!(key(&["a|b", "c"]), key(&["a", "b|c"]));
        assert_ne!(key(&["a%7Cb"]), key(&["a|b"]));
    }

    #[test]
    fn ids_are_stable_uuids() {
        let id = resource_id("Patient|urn:oid:1.2|M-1");
        assert_eq!(id, resource_id("Patient|urn:oid:1.2|M-1"));
        assert_ne!(id, resource_id("Patient|urn:oid:1.2|M-2"));
        assert_eq!(Uuid::parse_str(&id).unwrap().get_version_num(), 5);
    }

    #[test]
    fn unqualified_identifiers_are_scoped_by_sender() {
        let ident = Ident {
            value: "12345".to_owned(),
            system: None,
            type_code: None,
        };
        let a = patient_key(&ident, &Scope::new(some("NORTH")));
        let b = patient_key(&ident, &Scope::new(some("SOUTH")));
        assert_ne!(a, b);
    }

    #[test]
    fn repeated_report_keys_get_an_occurrence_number() {
        let mut seen = KeyCounter::default();
        let order = OrderNumber::Filler(Ident {
            value: "F1".into(),
            system: None,
            type_code: None,
        });
        let scope = Scope::new(None);
        let first = report_key(&order, &scope, &mut seen);
        let second = report_key(&order, &scope, &mut seen);
        let third = report_key(&order, &scope, &mut seen);
        assert!(first != second && second != third && first != third);
    }
}
