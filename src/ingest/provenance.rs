//! One Provenance per accepted HL7v2 message that writes resources, written in the same
//! transaction as they are:
//! - `target`: every resource the message wrote (unversioned: a resource the message left
//!   unchanged keeps its version, and the Provenance still names it);
//! - `recorded`: when the message was received; `activity`: its trigger event (table 0003);
//! - `agent`: the sender as the v2-to-FHIR guide has it, the author being the sending facility
//!   (MSH-4) and the sending application (MSH-3) the device acting for it, both as logical
//!   references (identifier and display): no Organization or Device is made;
//! - `entity` (role `source`): the stored raw message, by the id it has in `hl7_message` (the
//!   id `hl7bridge messages` lists and `hl7bridge replay` takes). The raw message is not copied
//!   into a Binary: that would store every message twice and put its content, patient data and
//!   all, behind the FHIR API, outside the checks `hl7_message` is under;
//! - the trace id of the message's span, in the extension the audit trail's AuditEvents carry
//!   (`{canonical_base}/StructureDefinition/audit-trace-id`). The W3C trace-context extension
//!   is for Bundles only (DESIGN.md).
//!
//! Its id comes from MSH-3, MSH-4, MSH-10 and the payload's hash (`map::ids`): an identical
//! resend is answered from the stored ACK and writes nothing, while a corrected resend (or a
//! control id a sender reuses) is a message of its own with a Provenance of its own, so what
//! the earlier one wrote, still stored, keeps the Provenance that names it.

use serde_json::{json, Value};

use super::map::message_provenance_id;
use super::v2::{unescape, Delimiters, Header};
use crate::store::{instant_text, Hl7MessageRow, ResourceWrite, WriteOp};

const EVENT_TYPE_0003: &str = "http://terminology.hl7.org/CodeSystem/v2-0003";
const PARTICIPANT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
/// Where the stored raw messages' ids live.
const MESSAGE_ID_SYSTEM: &str = "urn:hl7bridge:hl7-message";
const FACILITY_SYSTEM: &str = "urn:hl7bridge:v2:sending-facility";
const APPLICATION_SYSTEM: &str = "urn:hl7bridge:v2:sending-application";

/// The Provenance write for a message stored as `row` with `ops`; `None` when the message
/// writes nothing or has no control id.
pub fn message_provenance(
    header: Option<&Header>,
    row: &Hl7MessageRow,
    ops: &[WriteOp],
    canonical_base: &str,
) -> Option<WriteOp> {
    let header = header?;
    let control_id = header.control_id.as_deref().filter(|c| !c.is_empty())?;
    let targets: Vec<Value> = ops
        .iter()
        .map(WriteOp::key)
        .map(|(t, id)| json!({"reference": format!("{t}/{id}")}))
        .collect();
    if targets.is_empty() {
        return None;
    }
    let id = message_provenance_id(
        &header.sending_application,
        &header.sending_facility,
        control_id,
        &row.payload_hash,
    );
    let mut provenance = json!({
        "resourceType": "Provenance",
        "id": id,
        "target": targets,
        "recorded": instant_text(row.received_at_us),
        "agent": [agent(header)],
        "entity": [{
            "role": "source",
            "what": {
                "identifier": {"system": MESSAGE_ID_SYSTEM, "value": row.id},
                "display": format!("HL7v2 message {}, control id {}", row.message_type, printable(control_id)),
            }
        }],
    });
    if let Some(event) = header.trigger_event.as_deref().map(printable) {
        provenance["activity"] = json!({
            "coding": [{"system": EVENT_TYPE_0003, "code": event}],
            "text": printable(&row.message_type),
        });
    }
    if !row.trace_id.is_empty() {
        provenance["extension"] = json!([{
            "url": format!("{canonical_base}/StructureDefinition/audit-trace-id"),
            "valueString": row.trace_id,
        }]);
    }
    match hl7bridge_fhir_codec::canonicalize(provenance) {
        Ok(content) => Some(WriteOp::Upsert(ResourceWrite {
            resource_type: "Provenance".into(),
            id,
            content,
        })),
        Err(_) => {
            tracing::error!("a message's Provenance failed R4 validation (mapping defect)");
            None
        }
    }
}

/// The sending application acting for the sending facility; either alone when the other is
/// not sent.
fn agent(header: &Header) -> Value {
    let delimiters = header.delimiters.as_ref().copied().unwrap_or_default();
    let facility = sender(
        "Organization",
        &header.sending_facility,
        FACILITY_SYSTEM,
        &delimiters,
    );
    let application = sender(
        "Device",
        &header.sending_application,
        APPLICATION_SYSTEM,
        &delimiters,
    );
    let author = json!({"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]});
    match (application, facility) {
        (Some(device), Some(organization)) => {
            json!({"type": author, "who": device, "onBehalfOf": organization})
        }
        (Some(who), None) | (None, Some(who)) => json!({"type": author, "who": who}),
        (None, None) => json!({"type": author, "who": {"display": "unidentified sender"}}),
    }
}

/// A logical reference to a sender named by an HD (namespace id, else universal id).
fn sender(kind: &str, raw: &str, system: &str, delimiters: &Delimiters) -> Option<Value> {
    let mut components = raw.split(delimiters.component);
    let namespace = components.next().map(|c| unescape(c, delimiters));
    let universal = components.next().map(|c| unescape(c, delimiters));
    let name = [namespace, universal]
        .into_iter()
        .flatten()
        .map(|c| printable(&c))
        .find(|c| !c.is_empty())?;
    Some(json!({
        "type": kind,
        "identifier": {"system": system, "value": name},
        "display": name,
    }))
}

/// `text` without control characters and surrounding blanks: FHIR strings cannot hold them.
fn printable(text: &str) -> String {
    let kept: String = text.chars().filter(|c| !c.is_control()).collect();
    kept.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::v2::parse_message;

    fn row() -> Hl7MessageRow {
        Hl7MessageRow {
            id: "m-1".into(),
            received_at_us: 1_720_000_000_000_000,
            peer: "127.0.0.1:1".into(),
            sending_application: String::new(),
            sending_facility: String::new(),
            control_id: "C1".into(),
            message_type: "SIU^S12".into(),
            payload_hash: String::new(),
            raw: Vec::new(),
            ack_code: "AA".into(),
            ack: String::new(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        }
    }

    fn header(msh: &str) -> Header {
        let text = format!("{msh}\rPID|1||M-1\r");
        parse_message(text.as_bytes()).unwrap().header().clone()
    }

    fn write(id: &str) -> WriteOp {
        WriteOp::Upsert(ResourceWrite {
            resource_type: "Patient".into(),
            id: id.into(),
            content: json!({}),
        })
    }

    fn provenance(msh: &str, ops: &[WriteOp]) -> Option<Value> {
        let header = header(msh);
        let op = message_provenance(Some(&header), &row(), ops, "https://x.test/fhir")?;
        match op {
            WriteOp::Upsert(w) => Some(w.content),
            _ => None,
        }
    }

    const MSH: &str = "MSH|^~\\&|SCHED^1.2.3^ISO|NORTH\\T\\CO|EHR|HOSP|2024||SIU^S12|C1|P|2.5.1";

    #[test]
    fn it_names_the_targets_the_raw_message_the_sender_and_the_trace() {
        let p = provenance(MSH, &[write("p-1"), write("p-2")]).unwrap();
        assert_eq!(p["target"][1]["reference"], "Patient/p-2");
        assert_eq!(p["entity"][0]["role"], "source");
        assert_eq!(p["entity"][0]["what"]["identifier"]["value"], "m-1");
        assert_eq!(p["activity"]["coding"][0]["code"], "S12");
        assert_eq!(p["agent"][0]["who"]["display"], "SCHED");
        assert_eq!(p["agent"][0]["onBehalfOf"]["display"], "NORTH&CO");
        assert_eq!(p["agent"][0]["type"]["coding"][0]["code"], "author");
        assert_eq!(p["recorded"], "2024-07-03T09:46:40.000000Z");
        assert_eq!(
            p["extension"][0]["url"],
            "https://x.test/fhir/StructureDefinition/audit-trace-id"
        );
        assert_eq!(p["extension"][0]["valueString"], row().trace_id);
    }

    #[test]
    fn its_id_is_the_message_key_and_nothing_written_means_no_provenance() {
        let first = provenance(MSH, &[write("p-1")]).unwrap();
        let again = provenance(MSH, &[write("p-1"), write("p-3")]).unwrap();
        assert_eq!(first["id"], again["id"]);
        let other = provenance(&MSH.replace("|C1|", "|C2|"), &[write("p-1")]).unwrap();
        assert_ne!(first["id"], other["id"]);
        assert_eq!(provenance(MSH, &[]), None);
    }

    #[test]
    fn a_sender_without_msh_3_is_the_facility_alone() {
        let p = provenance(
            "MSH|^~\\&||NORTH|EHR|HOSP|2024||SIU^S12|C1|P|2.5.1",
            &[write("p")],
        );
        let agent = &p.unwrap()["agent"][0];
        assert_eq!(agent["who"]["type"], "Organization");
        assert!(agent.get("onBehalfOf").is_none());
    }
}
