//! SPM to Specimen, with the OBX that follow it as Observations of the specimen: identifiers
//! (SPM-2 placer and filler parts, SPM-30 accession), type (SPM-4), collection (SPM-7 method,
//! SPM-8 site, SPM-12 amount, SPM-17 time or period), received time (SPM-18), availability
//! (SPM-20), condition (SPM-24), container type (SPM-27) and description (SPM-14), as the
//! v2-to-FHIR guide maps them.
//!
//! Several messages describe one specimen (the order that asks for it, the results made on
//! it), each with what its sender knows: a Specimen amends its stored version
//! (`ingest::stored`) instead of replacing it, so the order's `request` link survives the
//! results, and the lab's identifiers the order's resend.

use serde_json::Value;

use super::datatypes::{all_cwe, code, decimal, first_cwe, reference, Ident, Obj};
use super::ids::{derived_key, order_key, resource_id, KeyCounter, OrderNumber};
use super::observation::{quantity, unit_from, ObservationList, ReportContext};
use super::{Ctx, MapError, Subject};
use crate::ingest::v2::{Repetition, Segment};

const SPM_1: usize = 1;
const SPM_2: usize = 2;
const SPM_4: usize = 4;
const SPM_7: usize = 7;
const SPM_8: usize = 8;
const SPM_12: usize = 12;
const SPM_14: usize = 14;
const SPM_17: usize = 17;
const SPM_18: usize = 18;
const SPM_20: usize = 20;
const SPM_24: usize = 24;
const SPM_27: usize = 27;
const SPM_30: usize = 30;
/// EIP parts of SPM-2.
const PLACER_PART: usize = 1;
const FILLER_PART: usize = 2;

/// HL7 table 0136 (yes/no) to FHIR SpecimenStatus, as the guide's
/// YesNoIndicator[AvailabilityStatus] map has it.
const AVAILABILITY_0136: &[(&str, &str)] = &[("Y", "available"), ("N", "unavailable")];

/// One SPM being read, with the observations made on it so far.
pub(super) struct SpecimenGroup {
    pub(super) id: String,
    key: String,
    resource: Value,
    observations: ObservationList,
}

/// What a Specimen without a specimen id of its own is keyed by.
pub(super) enum SpecimenParent<'a> {
    /// The order it belongs to (OML): its key and ServiceRequest id.
    Order { key: &'a str, request_id: &'a str },
    /// None: the specimen is what the message is about (OUL), so SPM-2 is required.
    None,
}

impl SpecimenGroup {
    pub(super) fn start(
        spm: &Segment<'_>,
        parent: SpecimenParent<'_>,
        ctx: &Ctx<'_>,
        subject: &Subject,
        keys: &mut KeyCounter,
    ) -> Result<Self, MapError> {
        let placer = specimen_ident(spm, PLACER_PART);
        let filler = specimen_ident(spm, FILLER_PART);
        let key = match (&placer, &filler, &parent) {
            (Some(placer), ..) => order_key(
                "Specimen",
                &OrderNumber::Placer(placer.clone()),
                &ctx.scope,
                keys,
            ),
            (None, Some(filler), _) => order_key(
                "Specimen",
                &OrderNumber::Filler(filler.clone()),
                &ctx.scope,
                keys,
            ),
            (None, None, SpecimenParent::Order { key, .. }) => {
                let set_id = spm.text(SPM_1).unwrap_or_else(|| "1".to_owned());
                derived_key(key, &["Specimen", &set_id], keys)
            }
            (None, None, SpecimenParent::None) => {
                return Err(MapError::required(spm, SPM_2, "specimen id"))
            }
        };
        let request = match parent {
            SpecimenParent::Order { request_id, .. } => {
                vec![reference("ServiceRequest", request_id)]
            }
            SpecimenParent::None => Vec::new(),
        };
        let id = resource_id(&key);
        let identifiers = [
            placer.map(|p| p.with_type("PLAC")),
            filler.map(|f| f.with_type("FILL")),
        ];
        let identifiers = identifiers.into_iter().flatten().map(|i| i.to_fhir());
        let resource = Obj::resource("Specimen", &id)
            .list("identifier", identifiers.collect())
            .value("accessionIdentifier", accession(spm))
            .text("status", availability(spm)?)
            .value("type", first_cwe(spm, SPM_4))
            .value("subject", Some(subject.patient_reference()))
            .text(
                "receivedTime",
                ctx.date_time(spm, SPM_18, "specimen received date/time")?,
            )
            .list("request", request)
            .value("collection", collection(spm, ctx)?)
            .list("container", container(spm))
            .list("condition", all_cwe(spm, SPM_24))
            .list("note", description(spm))
            .build();
        Ok(SpecimenGroup {
            id,
            key,
            resource,
            observations: ObservationList::default(),
        })
    }

    /// An OBX about the specimen itself.
    pub(super) fn add_obx(
        &mut self,
        obx: &Segment<'_>,
        ctx: &Ctx<'_>,
        subject: &Subject,
    ) -> Result<(), MapError> {
        let report = ReportContext {
            specimen: Some(&self.id),
            ..ReportContext::of(subject)
        };
        self.observations.add(obx, &self.key, None, &report, ctx)
    }

    pub(super) fn add_note(&mut self, nte: &Segment<'_>) {
        self.observations.add_note(nte);
    }

    pub(super) fn end_notes(&mut self) {
        self.observations.end_notes();
    }

    /// The Specimen followed by its Observations.
    pub(super) fn finish(self) -> Vec<Value> {
        std::iter::once(self.resource)
            .chain(self.observations.into_resources())
            .collect()
    }
}

/// One part of SPM-2 (EIP): the EI written in the subcomponents of component `part`.
fn specimen_ident(spm: &Segment<'_>, part: usize) -> Option<Ident> {
    let rep = spm.field(SPM_2)?.repetition(1)?;
    Ident::from_ei_in(&rep, part)
}

fn accession(spm: &Segment<'_>) -> Option<Value> {
    let rep = spm.field(SPM_30)?.repetition(1)?;
    Ident::from_cx(&rep).map(|i| i.to_fhir())
}

/// SPM-20 through table 0136; another code is error 103.
fn availability(spm: &Segment<'_>) -> Result<Option<&'static str>, MapError> {
    let Some(sent) = code(spm.text(SPM_20)) else {
        return Ok(None);
    };
    let row = AVAILABILITY_0136
        .iter()
        .find(|(hl7, _)| hl7.eq_ignore_ascii_case(&sent));
    match row {
        Some((_, fhir)) => Ok(Some(fhir)),
        None => Err(MapError::table_value(spm, SPM_20, "specimen availability")),
    }
}

fn collection(spm: &Segment<'_>, ctx: &Ctx<'_>) -> Result<Option<Value>, MapError> {
    let collected = collected(spm, ctx)?;
    let (key, value) = match collected {
        Collected::At(time) => ("collectedDateTime", Some(Value::String(time))),
        Collected::Period(period) => ("collectedPeriod", Some(period)),
        Collected::Unknown => ("collectedDateTime", None),
    };
    Ok(Obj::new()
        .value(key, value)
        .value("quantity", amount(spm)?)
        .value("method", first_cwe(spm, SPM_7))
        .value("bodySite", first_cwe(spm, SPM_8))
        .build_non_empty())
}

enum Collected {
    At(String),
    Period(Value),
    Unknown,
}

/// SPM-17 (DR): a start alone is a time, a start and an end a period. In v2.5 the DR parts
/// are TS, so each time is the first subcomponent of its component.
fn collected(spm: &Segment<'_>, ctx: &Ctx<'_>) -> Result<Collected, MapError> {
    let Some(rep) = spm.field(SPM_17).and_then(|f| f.repetition(1)) else {
        return Ok(Collected::Unknown);
    };
    let what = "specimen collection date/time";
    let start = ctx.date_time_of(rep.subcomponent(1, 1), spm, SPM_17, what)?;
    let end = ctx.date_time_of(rep.subcomponent(2, 1), spm, SPM_17, what)?;
    Ok(match (start, end) {
        (Some(start), None) => Collected::At(start),
        (None, None) => Collected::Unknown,
        (start, end) => Collected::Period(Obj::new().text("start", start).text("end", end).build()),
    })
}

/// SPM-12 (CQ): the amount, and its unit (a CWE in the subcomponents of component 2).
fn amount(spm: &Segment<'_>) -> Result<Option<Value>, MapError> {
    let Some(rep) = spm.field(SPM_12).and_then(|f| f.repetition(1)) else {
        return Ok(None);
    };
    let Some(number) = rep.component(1) else {
        return Ok(None);
    };
    let value = decimal(&number)
        .ok_or_else(|| MapError::data_type(spm, SPM_12, "specimen collection amount"))?;
    let unit = unit_from(|n| rep.subcomponent(2, n));
    Ok(Some(quantity(value, None, &unit)))
}

fn container(spm: &Segment<'_>) -> Vec<Value> {
    let container = Obj::new().value("type", first_cwe(spm, SPM_27));
    container.build_non_empty().into_iter().collect()
}

/// SPM-14 repetitions, as lines of one note.
fn description(spm: &Segment<'_>) -> Vec<Value> {
    let Some(field) = spm.field(SPM_14) else {
        return Vec::new();
    };
    let lines: Vec<String> = field.repetitions().filter_map(|r| text(&r)).collect();
    if lines.is_empty() {
        return Vec::new();
    }
    vec![Obj::new().text("text", Some(lines.join("\n"))).build()]
}

fn text(rep: &Repetition<'_>) -> Option<String> {
    rep.text().filter(|t| !t.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::tests::{seg, test_subject, with_message};

    const MSH: &str = "MSH|^~\\&|LAB|NORTH|EHR|HOSP|2024||OUL^R22^OUL_R22|C1|P|2.5.1\r";

    fn specimen(segments: &str, parent: SpecimenParent<'_>) -> Result<Vec<Value>, MapError> {
        with_message(MSH, segments, |msg, ctx| {
            let (spm, subject) = (msg.segment("SPM").unwrap(), test_subject());
            let mut keys = KeyCounter::default();
            let mut group = SpecimenGroup::start(&spm, parent, ctx, &subject, &mut keys)?;
            for obx in msg.segments_named("OBX") {
                group.add_obx(&obx, ctx, &subject)?;
            }
            Ok(group.finish())
        })
    }

    #[test]
    fn availability_table_uses_fhir_codes() {
        let statuses = [
            "available",
            "unavailable",
            "unsatisfactory",
            "entered-in-error",
        ];
        assert!(AVAILABILITY_0136.iter().all(|(_, s)| statuses.contains(s)));
    }

    #[test]
    fn specimen_fields_are_mapped() {
        let spm = seg(
            "SPM",
            &[
                (SPM_1, "1"),
                (SPM_2, "SP-1&EHR^SF-1&LAB&2.16.840.1.113883.19.4&ISO"),
                (SPM_4, "119297000^Blood^SCT"),
                (SPM_7, "28520004^Venipuncture^SCT"),
                (SPM_8, "368208006^Left arm^SCT"),
                (SPM_12, "5^mL&milliliter&UCUM"),
                (SPM_14, "Slightly lipaemic"),
                (SPM_17, "202407010800-0400^202407010815-0400"),
                (SPM_18, "202407011000-0400"),
                (SPM_20, "Y"),
                (SPM_24, "RB^Rejected^HL70493"),
                (SPM_27, "SST^Serum separator tube^HL70370"),
                (SPM_30, "ACC-9^^^LAB"),
            ],
        );
        let resources = specimen(&spm, SpecimenParent::None).unwrap();
        let s = &resources[0];
        assert_eq!(s["identifier"][0]["type"]["coding"][0]["code"], "PLAC");
        assert_eq!(s["identifier"][1]["value"], "SF-1");
        assert_eq!(
            s["identifier"][1]["system"],
            "urn:oid:2.16.840.1.113883.19.4"
        );
        assert_eq!(s["accessionIdentifier"]["value"], "ACC-9");
        assert_eq!(s["type"]["coding"][0]["code"], "119297000");
        assert_eq!(s["status"], "available");
        assert_eq!(s["receivedTime"], "2024-07-01T10:00:00-04:00");
        assert_eq!(
            s["collection"]["collectedPeriod"],
            json!({"start": "2024-07-01T08:00:00-04:00", "end": "2024-07-01T08:15:00-04:00"})
        );
        assert_eq!(
            s["collection"]["quantity"],
            json!({"value": 5, "unit": "milliliter", "system": "http://unitsofmeasure.org",
                   "code": "mL"})
        );
        assert_eq!(s["collection"]["method"]["coding"][0]["code"], "28520004");
        assert_eq!(
            s["collection"]["bodySite"]["coding"][0]["code"],
            "368208006"
        );
        assert_eq!(s["condition"][0]["coding"][0]["code"], "RB");
        assert_eq!(s["container"][0]["type"]["coding"][0]["code"], "SST");
        assert_eq!(s["note"], json!([{"text": "Slightly lipaemic"}]));
    }

    #[test]
    fn observations_of_the_specimen_refer_to_it() {
        let resources = specimen(
            "SPM|1|^SF-2&LAB||119297000^Blood^SCT\rOBX|1|NM|X^Temp^L||4|Cel^^UCUM|||||F",
            SpecimenParent::None,
        )
        .unwrap();
        let id = resources[0]["id"].as_str().unwrap();
        assert_eq!(
            resources[1]["specimen"],
            json!({"reference": format!("Specimen/{id}")})
        );
    }

    #[test]
    fn the_key_is_the_placer_id_else_the_filler_id_else_the_order() {
        let ordered = specimen("SPM|1|SP-1", SpecimenParent::None).unwrap();
        let received = specimen("SPM|2|SP-1^SF-1", SpecimenParent::None).unwrap();
        assert_eq!(
            ordered[0]["id"], received[0]["id"],
            "the lab's id arrives later"
        );
        let filler_only = specimen("SPM|1|^SP-1", SpecimenParent::None).unwrap();
        assert_ne!(filler_only[0]["id"], ordered[0]["id"]);
        let err = specimen("SPM|1||X^Y^L", SpecimenParent::None).unwrap_err();
        assert_eq!(
            (err.code, err.location),
            (101, Some(("SPM".to_owned(), 1, 2)))
        );
        let parent = SpecimenParent::Order {
            key: "ServiceRequest|placer|x|1",
            request_id: "sr-1",
        };
        let in_order = specimen("SPM|1||X^Y^L", parent).unwrap();
        assert_eq!(
            in_order[0]["request"],
            json!([{"reference": "ServiceRequest/sr-1"}])
        );
    }

    #[test]
    fn invalid_availability_and_amount_are_content_errors() {
        let gap = "|".repeat(SPM_20 - SPM_2);
        let err = specimen(&format!("SPM|1|SP-1{gap}Q"), SpecimenParent::None).unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (103, 20));
        let gap = "|".repeat(SPM_12 - SPM_2);
        let err = specimen(&format!("SPM|1|SP-1{gap}lots"), SpecimenParent::None).unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (102, 12));
    }
}
