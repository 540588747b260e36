//! OBR, with its ORC, OBX, SPM and NTE, to a DiagnosticReport and its Observations:
//! order numbers (OBR-2/OBR-3, else ORC-2/ORC-3), status (OBR-25), code (OBR-4), effective
//! time (OBR-7), issued (OBR-22), `result` references and `presentedForm` from ED values.

use serde_json::Value;

use super::datatypes::{codeable_concept, reference, Ident, Obj};
use super::ids::{report_key, resource_id, KeyCounter, OrderNumber};
use super::observation::{self, ObservationList, ReportContext};
use super::{Ctx, MapError, Subject};
use crate::ingest::v2::Segment;

const OBR_2: usize = 2;
const OBR_3: usize = 3;
const OBR_4: usize = 4;
const OBR_7: usize = 7;
const OBR_22: usize = 22;
const OBR_25: usize = 25;
const ORC_2: usize = 2;
const ORC_3: usize = 3;
const SPM_1: usize = 1;

/// HL7 table 0123 (result status) to FHIR DiagnosticReportStatus.
const REPORT_STATUS_0123: &[(&str, &str)] = &[
    ("O", "registered"),
    ("I", "registered"),
    ("S", "registered"),
    ("A", "partial"),
    ("P", "preliminary"),
    ("R", "preliminary"),
    ("C", "corrected"),
    ("F", "final"),
    ("X", "cancelled"),
];

/// One order group being read: its OBR, and the observations and attachments so far.
pub(super) struct ReportBuilder<'m> {
    obr: Segment<'m>,
    id: String,
    key: String,
    identifiers: Vec<Value>,
    effective: Option<String>,
    observations: ObservationList,
    attachments: Vec<Value>,
    specimen: Option<String>,
    /// The Specimen resource the report is about (OUL^R22).
    specimen_id: Option<String>,
}

impl<'m> ReportBuilder<'m> {
    pub(super) fn start(
        obr: Segment<'m>,
        orc: Option<Segment<'m>>,
        ctx: &Ctx<'_>,
        report_keys: &mut KeyCounter,
    ) -> Result<Self, MapError> {
        let filler = order_ident(&obr, orc.as_ref(), OBR_3, ORC_3);
        let placer = order_ident(&obr, orc.as_ref(), OBR_2, ORC_2);
        let order = match (&filler, &placer) {
            (Some(filler), _) => OrderNumber::Filler(filler.clone()),
            (None, Some(placer)) => OrderNumber::Placer(placer.clone()),
            (None, None) => return Err(MapError::required(&obr, OBR_3, "filler order number")),
        };
        let key = report_key(&order, &ctx.scope, report_keys);
        let identifiers = [
            filler.map(|f| f.with_type("FILL")),
            placer.map(|p| p.with_type("PLAC")),
        ];
        Ok(ReportBuilder {
            id: resource_id(&key),
            key,
            identifiers: identifiers
                .into_iter()
                .flatten()
                .map(|i| i.to_fhir())
                .collect(),
            effective: ctx.date_time(&obr, OBR_7, "observation date/time")?,
            obr,
            observations: ObservationList::default(),
            attachments: Vec::new(),
            specimen: None,
            specimen_id: None,
        })
    }

    /// The report and its observations are about this Specimen.
    pub(super) fn on_specimen(mut self, specimen_id: &str) -> Self {
        self.specimen_id = Some(specimen_id.to_owned());
        self
    }

    /// OBX after this SPM describe the specimen.
    pub(super) fn enter_specimen(&mut self, spm: &Segment<'_>) {
        self.specimen = Some(spm.text(SPM_1).unwrap_or_else(|| "1".to_owned()));
        self.observations.end_notes();
    }

    pub(super) fn add_obx(
        &mut self,
        obx: &Segment<'_>,
        ctx: &Ctx<'_>,
        subject: &Subject,
    ) -> Result<(), MapError> {
        if observation::is_attachment(obx) {
            self.observations.end_notes();
            self.attachments.extend(observation::attachment(obx)?);
            return Ok(());
        }
        let report = ReportContext {
            effective: self.effective.as_deref(),
            specimen: self.specimen_id.as_deref(),
            ..ReportContext::of(subject)
        };
        let specimen_set = self.specimen.as_deref();
        self.observations
            .add(obx, &self.key, specimen_set, &report, ctx)
    }

    pub(super) fn add_note(&mut self, nte: &Segment<'_>) {
        self.observations.add_note(nte);
    }

    /// A segment other than NTE or PRT ends the notes of the last observation.
    pub(super) fn end_notes(&mut self) {
        self.observations.end_notes();
    }

    /// The DiagnosticReport followed by its Observations.
    pub(super) fn finish(self, ctx: &Ctx<'_>, subject: &Subject) -> Result<Vec<Value>, MapError> {
        let obr = &self.obr;
        let issued = ctx.instant(obr, OBR_22, "results report date/time")?;
        let results = self.observations.ids().into_iter();
        let results = results.map(|id| reference("Observation", &id)).collect();
        let specimen = self.specimen_id.map(|id| reference("Specimen", &id));
        let report = Obj::resource("DiagnosticReport", &self.id)
            .list("identifier", self.identifiers)
            .text("status", Some(report_status(obr.text(OBR_25))))
            .value("code", Some(service_code(obr)?))
            .value("subject", Some(subject.patient_reference()))
            .value("encounter", subject.encounter_reference())
            .text("effectiveDateTime", self.effective)
            .text("issued", issued)
            .list("specimen", specimen.into_iter().collect())
            .list("result", results)
            .list("presentedForm", self.attachments);
        Ok(std::iter::once(report.build())
            .chain(self.observations.into_resources())
            .collect())
    }
}

fn service_code(obr: &Segment<'_>) -> Result<Value, MapError> {
    let cwe = obr.field(OBR_4).and_then(|f| f.repetition(1));
    let code = cwe.and_then(|r| codeable_concept(&r));
    code.ok_or_else(|| MapError::required(obr, OBR_4, "universal service identifier"))
}

/// The EI of an OBR field, else of the matching ORC field.
pub(super) fn order_ident(
    obr: &Segment<'_>,
    orc: Option<&Segment<'_>>,
    at_obr: usize,
    at_orc: usize,
) -> Option<Ident> {
    let ei = |seg: &Segment<'_>, n| seg.field(n)?.repetition(1).and_then(|r| Ident::from_ei(&r));
    ei(obr, at_obr).or_else(|| ei(orc?, at_orc))
}

fn report_status(hl7: Option<String>) -> &'static str {
    let hl7 = hl7.unwrap_or_default();
    let row = REPORT_STATUS_0123
        .iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(hl7.trim()));
    row.map_or("unknown", |(_, fhir)| fhir)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::MapContext;
    use crate::ingest::v2::{parse_message, Message};

    const MSH: &str = "MSH|^~\\&|LAB|NORTH|EHR|HOSP|2024||ORU^R01|C1|P|2.5.1\r";

    fn report(segments: &str) -> Result<Vec<Value>, MapError> {
        let msg = parse_message(format!("{MSH}{segments}").as_bytes()).unwrap();
        build(&msg)
    }

    fn build(msg: &Message) -> Result<Vec<Value>, MapError> {
        let ctx = Ctx::new(msg, &MapContext::default());
        let subject = Subject {
            patient: "p-1".to_owned(),
            encounter: Some("e-1".to_owned()),
        };
        let mut keys = KeyCounter::default();
        let mut builder = ReportBuilder::start(
            msg.segment("OBR").unwrap(),
            msg.segment("ORC"),
            &ctx,
            &mut keys,
        )?;
        for segment in msg.segments().filter(|s| s.name() != "OBR") {
            match segment.name() {
                "OBX" => builder.add_obx(&segment, &ctx, &subject)?,
                "NTE" => builder.add_note(&segment),
                "SPM" => builder.enter_specimen(&segment),
                _ => {}
            }
        }
        builder.finish(&ctx, &subject)
    }

    #[test]
    fn status_table_uses_fhir_codes() {
        let statuses = [
            "registered",
            "partial",
            "preliminary",
            "final",
            "corrected",
            "cancelled",
        ];
        assert!(REPORT_STATUS_0123.iter().all(|(_, s)| statuses.contains(s)));
        assert_eq!(report_status(Some("f".to_owned())), "final");
        assert_eq!(report_status(None), "unknown");
    }

    #[test]
    fn report_has_identifiers_status_times_and_results() {
        let resources = report(
            "OBR|1|PL-1^EHR|FI-1^LAB^2.16.840.1.113883.19.4^ISO|24331-1^Lipid panel^LN|||202406300800-0500|||||||||||||||202406301200-0500|||F\r\
             OBX|1|NM|2093-3^Cholesterol^LN||185|mg/dL^^UCUM|||||F\r\
             NTE|1||Fasting sample\r\
             OBX|2|NM|2571-8^Triglyceride^LN||150|mg/dL^^UCUM|||||F",
        )
        .unwrap();
        let dr = &resources[0];
        assert_eq!(resources.len(), 3);
        assert_eq!(dr["identifier"][0]["type"]["coding"][0]["code"], "FILL");
        assert_eq!(
            dr["identifier"][0]["system"],
            "urn:oid:2.16.840.1.113883.19.4"
        );
        assert_eq!(dr["identifier"][1]["value"], "PL-1");
        assert_eq!(dr["status"], "final");
        assert_eq!(dr["effectiveDateTime"], "2024-06-30T08:00:00-05:00");
        assert_eq!(dr["issued"], "2024-06-30T12:00:00-05:00");
        assert_eq!(dr["encounter"], json!({"reference": "Encounter/e-1"}));
        let ids: Vec<String> = resources[1..]
            .iter()
            .map(|o| format!("Observation/{}", o["id"].as_str().unwrap()))
            .collect();
        assert_eq!(
            dr["result"],
            json!([{"reference": ids[0]}, {"reference": ids[1]}])
        );
        assert_eq!(resources[1]["note"], json!([{"text": "Fasting sample"}]));
        assert!(resources[2].get("note").is_none());
        assert_eq!(
            resources[1]["effectiveDateTime"],
            "2024-06-30T08:00:00-05:00"
        );
    }

    #[test]
    fn encapsulated_data_goes_to_presented_form() {
        let resources = report(
            "OBR|1||F-2|11502-2^Lab report^LN\rOBX|1|ED|PDF^Report||^AP^PDF^Base64^JVBERi0x||||||F",
        )
        .unwrap();
        assert_eq!(resources.len(), 1);
        assert_eq!(
            resources[0]["presentedForm"][0]["contentType"],
            "application/pdf"
        );
        assert!(resources[0].get("result").is_none());
    }

    #[test]
    fn order_number_falls_back_to_orc_then_placer() {
        let from_orc = report("ORC|RE||F-3\rOBR|1|||X^Y^L").unwrap();
        let from_obr = report("OBR|1||F-3|X^Y^L").unwrap();
        assert_eq!(from_orc[0]["id"], from_obr[0]["id"]);
        let placer = report("OBR|1|F-3||X^Y^L").unwrap();
        assert_ne!(placer[0]["id"], from_obr[0]["id"]);
        let err = report("OBR|1|||X^Y^L").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (101, 3));
    }

    #[test]
    fn missing_service_code_is_error_101() {
        let err = report("OBR|1||F-4").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (101, 4));
    }

    #[test]
    fn repeated_codes_get_distinct_observation_ids() {
        let resources = report(
            "OBR|1||F-5|X^Y^L\rOBX|1|TX|N^Note^L||a||||||F\rOBX|2|TX|N^Note^L||b||||||F\r\
             SPM|1\rOBX|3|TX|N^Note^L||c||||||F",
        )
        .unwrap();
        let ids: Vec<&str> = resources[1..]
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    }
}
