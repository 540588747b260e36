//! HL7v2 to FHIR R4 JSON: one parsed [`Message`] in, the resources it describes out.
//!
//! One file per target resource (`patient.rs`, `encounter.rs`, `diagnostic_report.rs`,
//! `observation.rs`, `service_request.rs`, `specimen.rs`, `immunization.rs`,
//! `document_reference.rs`, `appointment.rs`, `practitioner.rs`, `location.rs`), each with the HL7 tables it uses as constants; `oru.rs`,
//! `orders.rs`, `oul.rs`, `vxu.rs` and `merge.rs` walk their messages' groups, `ids.rs` makes
//! the deterministic ids, `datatypes.rs` converts the shared HL7 data types.
//!
//! Every resource has `resourceType` and `id`; references are `Patient/<id>`.
//! No element is ever an empty string, array or object, and every `dateTime` with a time has
//! an offset ([`MapContext::default_utc_offset`] when the sender gave none).
//!
//! Supported (each with Patient, and an Encounter when PV1-19 is present):
//! - ORU^R01: a DiagnosticReport per OBR, an Observation per OBX including OBX under SPM;
//! - OML^O21, ORM^O01 (`orders.rs`): a ServiceRequest per ORC, an Observation per OBX of the
//!   order (its `supportingInfo`), a Specimen per SPM (OML) with its own OBX as Observations;
//! - OUL^R22 (`oul.rs`): a Specimen per SPM, a DiagnosticReport per OBR and an Observation per
//!   OBX, each referring to its Specimen;
//! - VXU^V04 (`vxu.rs`): an Immunization per RXA, an Observation (`partOf` it) per OBX;
//! - MDM^T02 (`document_reference.rs`): a DocumentReference from TXA with the OBX content;
//! - ADT^A01/A03/A04/A08; ADT^A28/A31 (Patient only: their PV1 is a placeholder); ADT^A40
//!   (`merge.rs`: the surviving and the merged Patient, linked);
//! - SIU^S12/S13/S14/S15/S17/S26 (`appointment.rs`): an Appointment, with a Practitioner per
//!   AIP that has an id number and a Location per AIL (no Encounter: see there).
//!
//! Anything else is a [`MapError`] with code 200 (message type) or 201 (event).
//!
//! Choices, so that a reader knows where data goes or does not go:
//! - The HL7 explicit null `""` is read as absent: nothing is deleted.
//! - Invalid values are content errors, never silently left out: an invalid date (PID-7, OBR-7,
//!   OBR-22, OBX-14, PV1-44/45) is error 102, a PID-8 outside table 0001 is error 103. The
//!   sender gets an AE naming the field; the raw message is kept.
//! - OBX-2 `ED` is not an Observation value in R4: its data goes to the report's
//!   `presentedForm`. NM, SN, ST/TX/FT, CE/CWE/CNE, DT/DTM/TS and TM have their FHIR types;
//!   any other value type (RP, CX, FN, ...) becomes `valueString` with the field's text,
//!   escapes decoded and delimiters kept. Only ST/TX/FT values may repeat (joined by
//!   newlines); a repeated value of another type is an error (102), not silently cut.
//! - A missing OBX-11 or OBR-25 gives status `unknown`.
//! - Limitations: one patient per message (a second PID is error 207); OBX before the first
//!   OBR (patient-level observations) and OBX in ADT messages are not mapped; NTE after OBR or
//!   PID is not mapped (R4 DiagnosticReport and Patient have no note); no Encounter without
//!   PV1-19, since its id would have nothing stable to rest on.
//! - Decimals keep their digits because the workspace enables serde_json's
//!   `arbitrary_precision`; without it `72.40` would be written `72.4`.

mod appointment;
mod datatypes;
mod diagnostic_report;
mod document_reference;
mod encounter;
mod ids;
mod immunization;
mod location;
mod merge;
mod observation;
mod orders;
mod oru;
mod oul;
mod patient;
mod practitioner;
mod service_request;
mod specimen;
mod vxu;

pub(crate) use ids::message_provenance_id;
use serde_json::Value;
use thiserror::Error;

use crate::ingest::v2::dtm::{self, UtcOffset};
use crate::ingest::v2::{AckError, Message, Segment};

const MSH_4: usize = 4;
const MSH_9: usize = 9;

/// ADT events mapped by [`map_adt`]; A40 has its own mapper.
const ADT_EVENTS: &[&str] = &["A01", "A03", "A04", "A08", "A28", "A31"];
/// ADT events about a person, whose PV1 is a placeholder without a visit.
const PERSON_EVENTS: &[&str] = &["A28", "A31"];

/// Settings for one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapContext {
    /// The offset given to times that arrive without one.
    pub default_utc_offset: UtcOffset,
}

impl Default for MapContext {
    fn default() -> Self {
        MapContext {
            default_utc_offset: UtcOffset::UTC,
        }
    }
}

/// The resources one message maps to.
#[derive(Clone, PartialEq)]
pub struct Mapped {
    /// Patient first, then Encounter, then the message's own resources (each DiagnosticReport
    /// followed by its Observations, each ServiceRequest followed by its Observations and
    /// Specimens, ...).
    pub resources: Vec<Value>,
    pub patient_id: Option<String>,
    /// Ids of resources the message only amends: their stored elements stay, and only the
    /// elements mapped here change (see `ingest::stored`). The merged Patient of an ADT^A40
    /// and a ServiceRequest named by an ORC without an OBR are written so.
    pub amended: Vec<String>,
}

impl Mapped {
    fn new(resources: Vec<Value>, patient_id: String) -> Self {
        Mapped {
            resources,
            patient_id: Some(patient_id),
            amended: Vec::new(),
        }
    }
}

/// Shows `type/id` of each resource only: the resources hold patient data.
impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = self.resources.iter().map(|r| {
            let kind = r["resourceType"].as_str().unwrap_or("?");
            format!("{kind}/{}", r["id"].as_str().unwrap_or("?"))
        });
        f.debug_struct("Mapped")
            .field("resources", &ids.collect::<Vec<_>>())
            .field("patient_id", &self.patient_id)
            .field("amended", &self.amended)
            .finish()
    }
}

/// Why a message cannot be mapped. `message` never holds patient data.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct MapError {
    /// An HL7 table 0357 code.
    pub code: u16,
    /// Segment name, its sequence from 1, and field number (0 for the whole segment).
    pub location: Option<(String, usize, usize)>,
    pub message: String,
}

impl MapError {
    fn at(code: u16, segment: &Segment<'_>, field: usize, message: String) -> Self {
        let location = Some((segment.name().to_owned(), segment.sequence(), field));
        MapError {
            code,
            location,
            message,
        }
    }

    fn required(segment: &Segment<'_>, field: usize, what: &str) -> Self {
        let message = format!("{}-{field} ({what}) is required", segment.name());
        Self::at(101, segment, field, message)
    }

    fn data_type(segment: &Segment<'_>, field: usize, what: &str) -> Self {
        let message = format!("{}-{field} ({what}) is not valid", segment.name());
        Self::at(102, segment, field, message)
    }

    fn table_value(segment: &Segment<'_>, field: usize, what: &str) -> Self {
        let message = format!(
            "{}-{field} ({what}) is not a value of its HL7 table",
            segment.name()
        );
        Self::at(103, segment, field, message)
    }

    fn missing_segment(name: &str) -> Self {
        let message = format!("the {name} segment is required");
        MapError {
            code: 100,
            location: Some((name.to_owned(), 1, 0)),
            message,
        }
    }
}

impl From<MapError> for AckError {
    fn from(err: MapError) -> Self {
        AckError {
            code: err.code,
            location: err.location,
            message: err.message,
        }
    }
}

/// What every resource mapper needs from the message as a whole.
struct Ctx<'m> {
    msg: &'m Message,
    offset: UtcOffset,
    scope: ids::Scope,
    trigger: Option<&'m str>,
}

impl<'m> Ctx<'m> {
    fn new(msg: &'m Message, context: &MapContext) -> Self {
        let facility = msg.segment("MSH").and_then(|msh| msh.text(MSH_4));
        Ctx {
            msg,
            offset: context.default_utc_offset,
            scope: ids::Scope::new(facility),
            trigger: msg.header().trigger_event.as_deref(),
        }
    }

    /// Field `field` (its first component, for TS) as a FHIR dateTime.
    fn date_time(
        &self,
        seg: &Segment<'_>,
        field: usize,
        what: &str,
    ) -> Result<Option<String>, MapError> {
        let raw = seg.field(field).and_then(|f| f.component(1));
        self.date_time_of(raw, seg, field, what)
    }

    /// A value read from `seg`-`field` as a FHIR dateTime; errors name that field.
    fn date_time_of(
        &self,
        raw: Option<String>,
        seg: &Segment<'_>,
        field: usize,
        what: &str,
    ) -> Result<Option<String>, MapError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let text = dtm::fhir_date_time(&raw, self.offset);
        text.map(Some)
            .map_err(|_| MapError::data_type(seg, field, what))
    }

    /// Field `field` as a FHIR instant; a value too imprecise for an instant is left out.
    fn instant(
        &self,
        seg: &Segment<'_>,
        field: usize,
        what: &str,
    ) -> Result<Option<String>, MapError> {
        let Some(raw) = seg.field(field).and_then(|f| f.component(1)) else {
            return Ok(None);
        };
        match dtm::fhir_instant(&raw, self.offset) {
            Ok(text) => Ok(Some(text)),
            Err(dtm::DtmError::Precision) => Ok(None),
            Err(_) => Err(MapError::data_type(seg, field, what)),
        }
    }
}

/// The patient and encounter that resources refer to.
struct Subject {
    patient: String,
    encounter: Option<String>,
}

impl Subject {
    fn patient_reference(&self) -> Value {
        datatypes::reference("Patient", &self.patient)
    }

    fn encounter_reference(&self) -> Option<Value> {
        let encounter = self.encounter.as_deref()?;
        Some(datatypes::reference("Encounter", encounter))
    }
}

/// Maps one parsed message to FHIR R4 resources.
pub fn map_message(msg: &Message, ctx: &MapContext) -> Result<Mapped, MapError> {
    let header = msg.header();
    let trigger = header.trigger_event.as_deref();
    let ctx = Ctx::new(msg, ctx);
    match (header.message_code.as_deref(), trigger) {
        (Some("ORU"), Some("R01")) => oru::map_oru(&ctx),
        (Some("OML"), Some("O21")) | (Some("ORM"), Some("O01")) => orders::map_orders(&ctx),
        (Some("OUL"), Some("R22")) => oul::map_oul(&ctx),
        (Some("VXU"), Some("V04")) => vxu::map_vxu(&ctx),
        (Some("MDM"), Some("T02")) => document_reference::map_mdm(&ctx),
        (Some("ADT"), Some("A40")) => merge::map_merge(&ctx),
        (Some("ADT"), Some(event)) if ADT_EVENTS.contains(&event) => map_adt(&ctx, event),
        (Some("SIU"), Some(event)) if appointment::SIU_EVENTS.contains(&event) => {
            appointment::map_siu(&ctx, event)
        }
        (Some("ORU" | "OML" | "ORM" | "OUL" | "VXU" | "MDM" | "ADT" | "SIU"), _) => {
            Err(unsupported(201, "event"))
        }
        _ => Err(unsupported(200, "message type")),
    }
}

fn unsupported(code: u16, what: &str) -> MapError {
    MapError {
        code,
        location: Some(("MSH".to_owned(), 1, MSH_9)),
        message: format!("this {what} is not supported"),
    }
}

/// The Patient of the message's one PID, and its Encounter when PV1-19 names a visit.
fn patient_and_visit(ctx: &Ctx<'_>) -> Result<(Subject, Vec<Value>), MapError> {
    let pid = oru::only_patient(ctx.msg)?;
    let patient = patient::map_patient(&pid, ctx)?;
    let encounter = match ctx.msg.segment("PV1") {
        Some(pv1) => encounter::map_encounter(&pv1, ctx, &patient.id)?,
        None => None,
    };
    let subject = Subject {
        patient: patient.id,
        encounter: encounter.as_ref().map(|e| e.id.clone()),
    };
    let mut resources = vec![patient.resource];
    resources.extend(encounter.map(|e| e.resource));
    Ok((subject, resources))
}

fn map_adt(ctx: &Ctx<'_>, event: &str) -> Result<Mapped, MapError> {
    let pid = ctx
        .msg
        .segment("PID")
        .ok_or_else(|| MapError::missing_segment("PID"))?;
    let patient = patient::map_patient(&pid, ctx)?;
    let pv1 = ctx
        .msg
        .segment("PV1")
        .filter(|_| !PERSON_EVENTS.contains(&event));
    let encounter = match pv1 {
        Some(pv1) => encounter::map_encounter(&pv1, ctx, &patient.id)?,
        None => None,
    };
    let mut resources = vec![patient.resource];
    resources.extend(encounter.map(|e| e.resource));
    Ok(Mapped::new(resources, patient.id))
}

#[cfg(test)]
mod tests;
