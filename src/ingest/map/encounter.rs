//! PV1 to Encounter: visit number (PV1-19), class (PV1-2), status from the trigger event and
//! discharge time, period (PV1-44 admit, PV1-45 discharge).

use serde_json::Value;

use super::datatypes::{code, reference, Ident, Obj};
use super::ids::{encounter_key, resource_id};
use super::{Ctx, MapError};
use crate::ingest::v2::Segment;

const PV1_2: usize = 2;
const PV1_19: usize = 19;
const PV1_44: usize = 44;
const PV1_45: usize = 45;

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const NULL_FLAVOR: &str = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor";

/// HL7 table 0004 (patient class) to v3 ActCode encounter classes. Any other class, or none,
/// is written as the v3 null flavour `UNK`: Encounter.class is required.
const PATIENT_CLASS_0004: &[(&str, &str, &str)] = &[
    ("E", "EMER", "emergency"),
    ("I", "IMP", "inpatient encounter"),
    ("B", "IMP", "inpatient encounter"),
    ("O", "AMB", "ambulatory"),
    ("R", "AMB", "ambulatory"),
    ("P", "PRENC", "pre-admission"),
];

/// Encounter status set by the ADT trigger event itself.
const STATUS_BY_TRIGGER: &[(&str, &str)] = &[
    ("A01", "in-progress"),
    ("A04", "arrived"),
    ("A03", "finished"),
];

pub(super) struct MappedEncounter {
    pub(super) id: String,
    pub(super) resource: Value,
}

/// The Encounter of a PV1, or `None` when PV1-19 holds no visit number.
pub(super) fn map_encounter(
    pv1: &Segment<'_>,
    ctx: &Ctx<'_>,
    patient_id: &str,
) -> Result<Option<MappedEncounter>, MapError> {
    let visit = pv1
        .field(PV1_19)
        .and_then(|f| f.repetition(1))
        .and_then(|r| Ident::from_cx(&r));
    let Some(visit) = visit else {
        return Ok(None);
    };
    let id = resource_id(&encounter_key(&visit, &ctx.scope));
    let start = ctx.date_time(pv1, PV1_44, "admit date/time")?;
    let end = ctx.date_time(pv1, PV1_45, "discharge date/time")?;
    let status = status(ctx.trigger, end.is_some());
    let period = Obj::new()
        .text("start", start)
        .text("end", end)
        .build_non_empty();
    let resource = Obj::resource("Encounter", &id)
        .list("identifier", vec![visit.to_fhir()])
        .text("status", Some(status))
        .value("class", Some(class(code(pv1.text(PV1_2)).as_deref())))
        .value("subject", Some(reference("Patient", patient_id)))
        .value("period", period)
        .build();
    Ok(Some(MappedEncounter { id, resource }))
}

/// A01/A03/A04 say what happened; otherwise a discharge time means finished, an A08 update
/// without one means the visit goes on, and a result message cannot tell.
fn status(trigger: Option<&str>, discharged: bool) -> &'static str {
    let by_trigger = STATUS_BY_TRIGGER.iter().find(|(t, _)| Some(*t) == trigger);
    match (by_trigger, discharged, trigger) {
        (Some((_, status)), ..) => status,
        (None, true, _) => "finished",
        (None, false, Some("A08")) => "in-progress",
        (None, false, _) => "unknown",
    }
}

fn class(patient_class: Option<&str>) -> Value {
    let row = PATIENT_CLASS_0004
        .iter()
        .find(|(hl7, ..)| Some(*hl7) == patient_class);
    let (system, code, display) = match row {
        Some((_, code, display)) => (ACT_CODE, *code, *display),
        None => (NULL_FLAVOR, "UNK", "unknown"),
    };
    let coding = Obj::new()
        .text("system", Some(system))
        .text("code", Some(code));
    coding.text("display", Some(display)).build()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::MapContext;
    use crate::ingest::v2::{parse_message, UtcOffset};

    fn encounter(trigger: &str, pv1: &str) -> Result<Option<Value>, MapError> {
        let text = format!("MSH|^~\\&|A|NORTH|C|D|2024||ADT^{trigger}|C1|P|2.5.1\r{pv1}");
        let msg = parse_message(text.as_bytes()).unwrap();
        let context = MapContext {
            default_utc_offset: UtcOffset::from_minutes(60).unwrap(),
        };
        let ctx = Ctx::new(&msg, &context);
        let found = map_encounter(&msg.segment("PV1").unwrap(), &ctx, "p-1")?;
        Ok(found.map(|e| e.resource))
    }

    fn pv1(class: &str, visit: &str, admit: &str, discharge: &str) -> String {
        let gap = "|".repeat(PV1_44 - PV1_19);
        format!(
            "PV1|1|{class}{}{visit}{gap}{admit}|{discharge}",
            "|".repeat(PV1_19 - PV1_2)
        )
    }

    #[test]
    fn tables_use_known_codes() {
        let classes = ["EMER", "IMP", "AMB", "PRENC"];
        assert!(PATIENT_CLASS_0004
            .iter()
            .all(|(_, c, _)| classes.contains(c)));
        let statuses = ["planned", "arrived", "in-progress", "finished"];
        assert!(STATUS_BY_TRIGGER.iter().all(|(_, s)| statuses.contains(s)));
    }

    #[test]
    fn admission_maps_class_visit_period_and_status() {
        let e = encounter("A01", &pv1("I", "V-77^^^NORTH^VN", "202406301200", ""))
            .unwrap()
            .unwrap();
        assert_eq!(e["status"], "in-progress");
        assert_eq!(e["class"]["code"], "IMP");
        assert_eq!(e["identifier"][0]["value"], "V-77");
        assert_eq!(e["identifier"][0]["type"]["coding"][0]["code"], "VN");
        assert_eq!(e["subject"], json!({"reference": "Patient/p-1"}));
        assert_eq!(e["period"], json!({"start": "2024-06-30T12:00:00+01:00"}));
    }

    #[test]
    fn discharge_finishes_the_encounter() {
        let text = pv1("E", "V-1", "202406301200", "202407011300-0400");
        let e = encounter("A03", &text).unwrap().unwrap();
        assert_eq!(e["status"], "finished");
        assert_eq!(e["period"]["end"], "2024-07-01T13:00:00-04:00");
        assert_eq!(
            encounter("A08", &text).unwrap().unwrap()["status"],
            "finished"
        );
        let open = pv1("O", "V-1", "", "");
        assert_eq!(
            encounter("A08", &open).unwrap().unwrap()["status"],
            "in-progress"
        );
        assert_eq!(
            encounter("A04", &open).unwrap().unwrap()["status"],
            "arrived"
        );
        assert_eq!(
            encounter("R01", &open).unwrap().unwrap()["status"],
            "unknown"
        );
    }

    #[test]
    fn unknown_class_is_a_null_flavour() {
        let e = encounter("A04", &pv1("Z", "V-1", "", "")).unwrap().unwrap();
        assert_eq!(e["class"]["system"], NULL_FLAVOR);
        assert_eq!(e["class"]["code"], "UNK");
    }

    #[test]
    fn no_visit_number_means_no_encounter() {
        assert_eq!(encounter("A01", "PV1|1|I").unwrap(), None);
    }

    #[test]
    fn invalid_admit_time_is_error_102() {
        let err = encounter("A01", &pv1("I", "V-1", "20241399", "")).unwrap_err();
        assert_eq!(
            (err.code, err.location),
            (102, Some(("PV1".to_owned(), 1, 44)))
        );
    }
}
