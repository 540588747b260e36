//! OBX to Observation: code (OBX-3), value by value type (OBX-2, OBX-5, units OBX-6),
//! reference range (OBX-7), interpretation (OBX-8), status (OBX-11), effective time (OBX-14,
//! else the report's OBR-7), and NTE notes. OBX-2 `ED` becomes an Attachment for the
//! report's `presentedForm` instead (see the choices in `map/mod.rs`).

use serde_json::{Number, Value};

use super::datatypes::{base64, code, codeable_concept, decimal, is_base64, reference, Obj};
use super::ids::{observation_key, resource_id, KeyCounter};
use super::{Ctx, MapError, Subject};
use crate::ingest::v2::{dtm, Field, Repetition, Segment};

const OBX_2: usize = 2;
const OBX_3: usize = 3;
const OBX_5: usize = 5;
const OBX_6: usize = 6;
const OBX_7: usize = 7;
const OBX_8: usize = 8;
const OBX_11: usize = 11;
const OBX_14: usize = 14;
const NTE_3: usize = 3;

const UCUM: &str = "http://unitsofmeasure.org";
const V3_INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";

/// HL7 table 0085 (observation result status) to FHIR ObservationStatus.
const OBSERVATION_STATUS_0085: &[(&str, &str)] = &[
    ("F", "final"),
    ("U", "final"),
    ("C", "corrected"),
    ("A", "amended"),
    ("B", "amended"),
    ("P", "preliminary"),
    ("R", "preliminary"),
    ("S", "preliminary"),
    ("I", "registered"),
    ("O", "registered"),
    ("D", "entered-in-error"),
    ("W", "entered-in-error"),
    ("X", "cancelled"),
    ("N", "cancelled"),
];

/// HL7 table 0078 (interpretation codes) to v3 ObservationInterpretation codes and displays.
const INTERPRETATION_0078: &[(&str, &str, &str)] = &[
    ("L", "L", "Low"),
    ("H", "H", "High"),
    ("LL", "LL", "Critical low"),
    ("HH", "HH", "Critical high"),
    ("<", "<", "Off scale low"),
    (">", ">", "Off scale high"),
    ("N", "N", "Normal"),
    ("A", "A", "Abnormal"),
    ("AA", "AA", "Critical abnormal"),
    ("U", "U", "Significant change up"),
    ("D", "D", "Significant change down"),
    ("B", "B", "Better"),
    ("W", "W", "Worse"),
    ("S", "S", "Susceptible"),
    ("R", "R", "Resistant"),
    ("I", "I", "Intermediate"),
    ("MS", "MS", "moderately susceptible"),
    ("VS", "VS", "very susceptible"),
    ("POS", "POS", "Positive"),
    ("NEG", "NEG", "Negative"),
    ("IND", "IND", "Indeterminate"),
    ("DET", "DET", "Detected"),
    ("ND", "ND", "Not detected"),
];

/// SN comparators that FHIR Quantity.comparator has.
const SN_COMPARATORS: &[&str] = &["<", ">", "<=", ">="];

/// The report (or order, specimen, immunization) an OBX belongs to.
pub(super) struct ReportContext<'a> {
    pub(super) subject: &'a Subject,
    /// OBR-7 as a FHIR dateTime.
    pub(super) effective: Option<&'a str>,
    /// The Specimen the observation was made on.
    pub(super) specimen: Option<&'a str>,
    /// The Immunization the observation is part of (VXU).
    pub(super) part_of: Option<&'a str>,
}

impl<'a> ReportContext<'a> {
    pub(super) fn of(subject: &'a Subject) -> Self {
        ReportContext {
            subject,
            effective: None,
            specimen: None,
            part_of: None,
        }
    }
}

/// The observations of one report, order, specimen or immunization, keyed under its key, and
/// whether an NTE now annotates the last of them.
#[derive(Default)]
pub(super) struct ObservationList {
    observations: Vec<Value>,
    keys: KeyCounter,
    notes_to_last: bool,
}

impl ObservationList {
    /// Maps `obx` as an Observation of the resource keyed `parent_key`; `specimen_set` is the
    /// set id of the SPM an OBX of a report follows.
    pub(super) fn add(
        &mut self,
        obx: &Segment<'_>,
        parent_key: &str,
        specimen_set: Option<&str>,
        report: &ReportContext<'_>,
        ctx: &Ctx<'_>,
    ) -> Result<(), MapError> {
        let key = observation_key(parent_key, obx, specimen_set, &mut self.keys)?;
        let mapped = map_obx(obx, &resource_id(&key), report, ctx)?;
        self.observations.push(mapped);
        self.notes_to_last = true;
        Ok(())
    }

    /// An NTE annotates the last observation, until another segment comes between.
    pub(super) fn add_note(&mut self, nte: &Segment<'_>) {
        if let Some(last) = self.observations.last_mut().filter(|_| self.notes_to_last) {
            add_note(last, nte);
        }
    }

    pub(super) fn end_notes(&mut self) {
        self.notes_to_last = false;
    }

    pub(super) fn ids(&self) -> Vec<String> {
        let ids = self.observations.iter().filter_map(|o| o["id"].as_str());
        ids.map(str::to_owned).collect()
    }

    pub(super) fn into_resources(self) -> Vec<Value> {
        self.observations
    }
}

/// Whether the OBX carries encapsulated data (OBX-2 `ED`).
pub(super) fn is_attachment(obx: &Segment<'_>) -> bool {
    value_type(obx).as_deref() == Some("ED")
}

/// OBX-2, upper case.
pub(super) fn value_type(obx: &Segment<'_>) -> Option<String> {
    code(obx.text(OBX_2)).map(|t| t.to_ascii_uppercase())
}

pub(super) fn map_obx(
    obx: &Segment<'_>,
    id: &str,
    report: &ReportContext<'_>,
    ctx: &Ctx<'_>,
) -> Result<Value, MapError> {
    let (value_key, value) = observation_value(obx, ctx)?.unzip();
    let effective = ctx.date_time(obx, OBX_14, "date/time of the observation")?;
    let effective = effective.or_else(|| report.effective.map(str::to_owned));
    let part_of = report.part_of.map(|id| reference("Immunization", id));
    let observation = Obj::resource("Observation", id)
        .list("partOf", part_of.into_iter().collect())
        .text("status", Some(lookup_status(obx)?))
        .value("code", Some(observation_code(obx)?))
        .value("subject", Some(report.subject.patient_reference()))
        .value("encounter", report.subject.encounter_reference())
        .text("effectiveDateTime", effective)
        .value(value_key.unwrap_or("value"), value)
        .list("interpretation", interpretations(obx))
        .value(
            "specimen",
            report.specimen.map(|id| reference("Specimen", id)),
        )
        .list("referenceRange", reference_range(obx));
    Ok(observation.build())
}

fn observation_code(obx: &Segment<'_>) -> Result<Value, MapError> {
    let cwe = obx.field(OBX_3).and_then(|f| f.repetition(1));
    let code = cwe.and_then(|r| codeable_concept(&r));
    code.ok_or_else(|| MapError::required(obx, OBX_3, "observation identifier"))
}

/// OBX-11 as a FHIR status: `unknown` when empty, error 103 when outside table 0085 (an
/// unreadable status is not silently stored as `unknown`).
fn lookup_status(obx: &Segment<'_>) -> Result<&'static str, MapError> {
    let Some(hl7) = code(obx.text(OBX_11)) else {
        return Ok("unknown");
    };
    let row = OBSERVATION_STATUS_0085
        .iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(&hl7));
    row.map(|(_, fhir)| *fhir)
        .ok_or_else(|| MapError::table_value(obx, OBX_11, "result status"))
}

/// Value types with a FHIR type of their own, which therefore may not repeat.
const TYPED_VALUES: &[&str] = &["NM", "SN", "CE", "CWE", "CNE", "DT", "DTM", "TS", "TM"];

/// The `value[x]` element name and value; `None` when OBX-5 is empty.
fn observation_value(
    obx: &Segment<'_>,
    ctx: &Ctx<'_>,
) -> Result<Option<(&'static str, Value)>, MapError> {
    let Some(field) = obx
        .field(OBX_5)
        .filter(|f| f.repetitions().any(|r| !r.is_empty()))
    else {
        return Ok(None);
    };
    let value_type = value_type(obx).ok_or_else(|| MapError::required(obx, OBX_2, "value type"))?;
    let value = match value_type.as_str() {
        "ST" | "TX" | "FT" => text_value(&field).map(|text| ("valueString", Value::String(text))),
        t if TYPED_VALUES.contains(&t) => {
            let single = single_value(obx, &field)?;
            let typed = typed_value(t, &single, obx, ctx);
            Some(typed.ok_or_else(|| MapError::data_type(obx, OBX_5, "observation value"))?)
        }
        _ => field
            .text()
            .map(|text| ("valueString", Value::String(text))),
    };
    Ok(value)
}

fn typed_value(
    value_type: &str,
    value: &Repetition<'_>,
    obx: &Segment<'_>,
    ctx: &Ctx<'_>,
) -> Option<(&'static str, Value)> {
    let text = || value.text().unwrap_or_default();
    let typed = match value_type {
        "NM" => (
            "valueQuantity",
            quantity(decimal(&text())?, None, &unit(obx)),
        ),
        "SN" => structured_numeric(value, &unit(obx))?,
        "DT" | "DTM" | "TS" => ("valueDateTime", Value::String(timestamp(value, ctx)?)),
        "TM" => ("valueTime", Value::String(dtm::fhir_time(&text()).ok()?)),
        _ => ("valueCodeableConcept", codeable_concept(value)?),
    };
    Some(typed)
}

/// The one repetition of a value whose type may not repeat.
fn single_value<'m>(obx: &Segment<'m>, field: &Field<'m>) -> Result<Repetition<'m>, MapError> {
    let mut values = field.repetitions().filter(|r| !r.is_empty());
    match (values.next(), values.next()) {
        (Some(value), None) => Ok(value),
        _ => Err(MapError::data_type(
            obx,
            OBX_5,
            "observation value, repeated",
        )),
    }
}

/// ST/TX/FT: repetitions are lines; empty repetitions are blank lines.
pub(super) fn text_value(field: &Field<'_>) -> Option<String> {
    let lines: Vec<String> = field
        .repetitions()
        .map(|r| r.text().unwrap_or_default())
        .collect();
    Some(lines.join("\n")).filter(|text| !text.trim().is_empty())
}

fn timestamp(value: &Repetition<'_>, ctx: &Ctx<'_>) -> Option<String> {
    dtm::fhir_date_time(&value.component(1)?, ctx.offset).ok()
}

/// A unit (OBX-6, RXA-7, SPM-12.2): with coding system UCUM, a UCUM code; otherwise the unit
/// as text only.
pub(super) struct Unit {
    text: Option<String>,
    ucum_code: Option<String>,
}

fn unit(obx: &Segment<'_>) -> Unit {
    let cwe = obx.field(OBX_6).and_then(|f| f.repetition(1));
    unit_from(|n| cwe.as_ref().and_then(|r| r.component(n)))
}

/// A unit from a CWE whose parts `component` reads (components, or subcomponents in a CQ).
pub(super) fn unit_from(component: impl Fn(usize) -> Option<String>) -> Unit {
    let is_ucum = component(3).is_some_and(|s| s.trim().eq_ignore_ascii_case("UCUM"));
    match (is_ucum, code(component(1))) {
        (true, Some(ucum)) => Unit {
            text: component(2).or(Some(ucum.clone())),
            ucum_code: Some(ucum),
        },
        _ => Unit {
            text: component(1).or_else(|| component(2)),
            ucum_code: None,
        },
    }
}

pub(super) fn quantity(value: Number, comparator: Option<&str>, unit: &Unit) -> Value {
    Obj::new()
        .value("value", Some(Value::Number(value)))
        .text("comparator", comparator)
        .text("unit", unit.text.clone())
        .text("system", unit.ucum_code.as_ref().map(|_| UCUM))
        .text("code", unit.ucum_code.clone())
        .build()
}

/// SN `comparator^num1^separator^num2`: a Quantity (`<^5`, `=^4.2`, `^182`), a Range
/// (`^10^-^20`), a Ratio (`^1^:^128`, `^1^/^2`) or a categorical `^2^+` as text.
fn structured_numeric(sn: &Repetition<'_>, unit: &Unit) -> Option<(&'static str, Value)> {
    let comparator = code(sn.component(1)).filter(|c| c != "=");
    let first = sn.component(2).map(|n| decimal(&n));
    let second = sn.component(4).map(|n| decimal(&n));
    let separator = code(sn.component(3));
    if comparator
        .as_deref()
        .is_some_and(|c| !SN_COMPARATORS.contains(&c))
    {
        return None;
    }
    match (separator.as_deref(), first, second, comparator.is_some()) {
        (None, Some(Some(n)), None, _) => {
            Some(("valueQuantity", quantity(n, comparator.as_deref(), unit)))
        }
        (Some("-"), low, high, false) if low.is_some() || high.is_some() => range(low, high, unit),
        (Some(":" | "/"), Some(Some(n)), Some(Some(d)), false) => Some(("valueRatio", ratio(n, d))),
        (Some("+"), Some(Some(n)), None, false) => {
            Some(("valueString", Value::String(format!("{n}+"))))
        }
        _ => None,
    }
}

fn range(
    low: Option<Option<Number>>,
    high: Option<Option<Number>>,
    unit: &Unit,
) -> Option<(&'static str, Value)> {
    let bound = |n: Option<Option<Number>>| match n {
        None => Some(None),
        Some(Some(n)) => Some(Some(quantity(n, None, unit))),
        Some(None) => None,
    };
    let range = Obj::new()
        .value("low", bound(low)?)
        .value("high", bound(high)?);
    Some(("valueRange", range.build()))
}

fn ratio(numerator: Number, denominator: Number) -> Value {
    let side = |n: Number| Obj::new().value("value", Some(Value::Number(n))).build();
    Obj::new()
        .value("numerator", Some(side(numerator)))
        .value("denominator", Some(side(denominator)))
        .build()
}

/// OBX-8 repetitions; codes outside table 0078 keep their v2 code under the v2-0078 system.
fn interpretations(obx: &Segment<'_>) -> Vec<Value> {
    let Some(field) = obx.field(OBX_8) else {
        return Vec::new();
    };
    let codes = field.repetitions().filter_map(|r| code(r.component(1)));
    codes.map(|c| interpretation(&c)).collect()
}

fn interpretation(hl7: &str) -> Value {
    let row = INTERPRETATION_0078.iter().find(|(h, ..)| *h == hl7);
    let coding = match row {
        Some((_, v3, display)) => Obj::new()
            .text("system", Some(V3_INTERPRETATION))
            .text("code", Some(*v3))
            .text("display", Some(*display)),
        None => Obj::new()
            .text(
                "system",
                Some("http://terminology.hl7.org/CodeSystem/v2-0078"),
            )
            .text("code", Some(hl7)),
    };
    Obj::new().list("coding", vec![coding.build()]).build()
}

fn reference_range(obx: &Segment<'_>) -> Vec<Value> {
    let text = obx.text(OBX_7);
    Obj::new()
        .text("text", text)
        .build_non_empty()
        .into_iter()
        .collect()
}

/// Adds an NTE as an Annotation on the observation; NTE-3 repetitions are lines.
pub(super) fn add_note(observation: &mut Value, nte: &Segment<'_>) {
    let Some(text) = nte.field(NTE_3).and_then(|f| text_value(&f)) else {
        return;
    };
    let note = Obj::new().text("text", Some(text)).build();
    if let Some(fields) = observation.as_object_mut() {
        let notes = fields
            .entry("note")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(notes) = notes.as_array_mut() {
            notes.push(note);
        }
    }
}

/// ED `source^type of data^subtype^encoding^data` to an Attachment; `None` when there is no
/// data. Base64 data is checked, hex and unencoded (`A`) data are base64-encoded.
pub(super) fn attachment(obx: &Segment<'_>) -> Result<Option<Value>, MapError> {
    let Some(ed) = obx.field(OBX_5).and_then(|f| f.repetition(1)) else {
        return Ok(None);
    };
    let Some(data) = ed.component(5) else {
        return Ok(None);
    };
    let encoding = code(ed.component(4))
        .unwrap_or_default()
        .to_ascii_uppercase();
    let data = match encoding.as_str() {
        "BASE64" => Some(data.split_whitespace().collect::<String>()).filter(|d| is_base64(d)),
        "HEX" => hex_bytes(&data).map(|bytes| base64(&bytes)),
        "A" | "" => Some(base64(data.as_bytes())),
        _ => None,
    };
    let data = data.ok_or_else(|| MapError::data_type(obx, OBX_5, "encapsulated data"))?;
    let title = obx.field(OBX_3).and_then(|f| f.component(2));
    let content_type = content_type(code(ed.component(2)), code(ed.component(3)));
    let attachment = Obj::new()
        .text("contentType", Some(content_type))
        .text("data", Some(data));
    Ok(Some(attachment.text("title", title).build()))
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let digits: String = text.split_whitespace().collect();
    if digits.len() % 2 != 0 || !digits.is_ascii() {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect()
}

/// A MIME type from ED-2 (type of data) and ED-3 (subtype).
fn content_type(type_of_data: Option<String>, subtype: Option<String>) -> String {
    let subtype = subtype.map(|s| s.to_ascii_lowercase());
    if let Some(full) = subtype
        .as_ref()
        .filter(|s| s.contains('/') && is_mime_type(s))
    {
        return full.clone();
    }
    let major = match type_of_data
        .unwrap_or_default()
        .to_ascii_uppercase()
        .as_str()
    {
        "IM" | "SI" => "image",
        "AU" => "audio",
        "TEXT" | "TX" | "FT" => "text",
        "MULTIPART" => "multipart",
        _ => "application",
    };
    let default = if major == "text" {
        "plain"
    } else {
        "octet-stream"
    };
    let minor = subtype
        .filter(|s| is_mime_token(s))
        .unwrap_or_else(|| default.to_owned());
    format!("{major}/{minor}")
}

fn is_mime_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
}

fn is_mime_type(text: &str) -> bool {
    text.split_once('/')
        .is_some_and(|(a, b)| is_mime_token(a) && is_mime_token(b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::MapContext;
    use crate::ingest::v2::parse_message;

    const MSH: &str = "MSH|^~\\&|LAB|NORTH|EHR|HOSP|2024||ORU^R01|C1|P|2.5.1\r";

    fn observation(obx: &str) -> Result<Value, MapError> {
        let msg = parse_message(format!("{MSH}{obx}").as_bytes()).unwrap();
        let ctx = Ctx::new(&msg, &MapContext::default());
        let subject = Subject {
            patient: "p-1".to_owned(),
            encounter: None,
        };
        let report = ReportContext {
            effective: Some("2024-06-30"),
            ..ReportContext::of(&subject)
        };
        map_obx(&msg.segment("OBX").unwrap(), "o-1", &report, &ctx)
    }

    fn value(obx: &str) -> Value {
        let o = observation(obx).unwrap();
        let key = o
            .as_object()
            .unwrap()
            .keys()
            .find(|k| k.starts_with("value"))
            .unwrap();
        json!({ key.clone(): o[key.as_str()] })
    }

    #[test]
    fn status_and_interpretation_tables_use_fhir_codes() {
        let statuses = hl7bridge_fhir_codec::required_codes(Some("Observation"), "", "status")
            .expect("R4 binds Observation.status");
        assert!(OBSERVATION_STATUS_0085
            .iter()
            .all(|(_, s)| statuses.contains(s)));
        assert!(INTERPRETATION_0078
            .iter()
            .all(|(v2, v3, d)| v2 == v3 && !d.is_empty()));
        let status = |obx_11: &str| {
            observation(&format!("OBX|1|ST|8251-1^Comment^LN||x||||||{obx_11}"))
                .map(|o| o["status"].clone())
        };
        assert_eq!(status("c").unwrap(), "corrected");
        assert_eq!(status("").unwrap(), "unknown");
        let refused = status("Q").unwrap_err();
        assert_eq!((refused.code, refused.location.unwrap().2), (103, 11));
    }

    #[test]
    fn numeric_value_keeps_its_digits_and_ucum_unit() {
        let o = observation("OBX|1|NM|2345-7^Glucose^LN||072.40|mg/dL^milligram per deciliter^UCUM|70-99|H|||F|||202406301015-0500").unwrap();
        assert_eq!(
            o["valueQuantity"].to_string(),
            r#"{"value":72.40,"unit":"milligram per deciliter","system":"http://unitsofmeasure.org","code":"mg/dL"}"#
        );
        assert_eq!(o["status"], "final");
        assert_eq!(o["code"]["coding"][0]["system"], "http://loinc.org");
        assert_eq!(o["effectiveDateTime"], "2024-06-30T10:15:00-05:00");
        assert_eq!(o["referenceRange"], json!([{"text": "70-99"}]));
        assert_eq!(o["interpretation"][0]["coding"][0]["code"], "H");
        assert_eq!(o["subject"], json!({"reference": "Patient/p-1"}));
    }

    #[test]
    fn local_units_are_text_only() {
        let v = value("OBX|1|NM|X^Y^L||10.1|10\\S\\9/L|||||F");
        assert_eq!(
            v,
            json!({"valueQuantity": {"value": 10.1, "unit": "10^9/L"}})
        );
    }

    #[test]
    fn text_values_join_repetitions_as_lines() {
        assert_eq!(
            value("OBX|1|ST|X^Y^L||Clear \\T\\ yellow||||||F"),
            json!({"valueString": "Clear & yellow"})
        );
        assert_eq!(
            value("OBX|1|TX|X^Y^L||Line one~~Line three||||||F"),
            json!({"valueString": "Line one\n\nLine three"})
        );
        assert_eq!(
            value("OBX|1|FT|X^Y^L||a\\.br\\b||||||F"),
            json!({"valueString": "a\nb"})
        );
    }

    #[test]
    fn coded_values_become_codeable_concepts() {
        let v = value("OBX|1|CWE|94500-6^SARS-CoV-2 RNA^LN||260373001^Detected^SCT||||||F");
        assert_eq!(
            v["valueCodeableConcept"]["coding"][0],
            json!({"system": "http://snomed.info/sct", "code": "260373001", "display": "Detected"})
        );
    }

    #[test]
    fn structured_numerics_become_quantity_range_ratio() {
        assert_eq!(
            value("OBX|1|SN|X^Y^L||<^5|mg||||F")["valueQuantity"],
            json!({"value": 5, "comparator": "<", "unit": "mg"})
        );
        assert_eq!(
            value("OBX|1|SN|X^Y^L||=^4.2||||||F"),
            json!({"valueQuantity": {"value": 4.2}})
        );
        assert_eq!(
            value("OBX|1|SN|X^Y^L||^182||||||F"),
            json!({"valueQuantity": {"value": 182}})
        );
        assert_eq!(
            value("OBX|1|SN|X^Y^L||^10^-^20||||||F"),
            json!({"valueRange": {"low": {"value": 10}, "high": {"value": 20}}})
        );
        assert_eq!(
            value("OBX|1|SN|X^Y^L||^1^:^128||||||F"),
            json!({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}})
        );
        assert_eq!(
            value("OBX|1|SN|X^Y^L||^2^+||||||F"),
            json!({"valueString": "2+"})
        );
    }

    #[test]
    fn invalid_structured_numerics_are_error_102() {
        for sn in ["<>^5", "<^1^-^2", "^x", "^1^:", "^1^?^2"] {
            let err = observation(&format!("OBX|1|SN|X^Y^L||{sn}||||||F")).unwrap_err();
            assert_eq!((err.code, err.location.unwrap().2), (102, 5), "{sn}");
        }
    }

    #[test]
    fn times_and_other_types_are_mapped() {
        assert_eq!(
            value("OBX|1|DT|X^Y^L||20240630||||||F"),
            json!({"valueDateTime": "2024-06-30"})
        );
        assert_eq!(
            value("OBX|1|TS|X^Y^L||202406301200^M||||||F"),
            json!({"valueDateTime": "2024-06-30T12:00:00+00:00"})
        );
        assert_eq!(
            value("OBX|1|TM|X^Y^L||0930||||||F"),
            json!({"valueTime": "09:30:00"})
        );
        assert_eq!(
            value("OBX|1|RP|X^Y^L||http://img.example/1^^IM^JPEG||||||F"),
            json!({"valueString": "http://img.example/1^^IM^JPEG"})
        );
    }

    #[test]
    fn value_without_value_type_is_error_101_on_obx_2() {
        let err = observation("OBX|1||WBC^White cells||6.1|10*3/uL|||||F").unwrap_err();
        assert_eq!(err.code, 101);
        assert_eq!(err.location, Some(("OBX".to_owned(), 1, 2)));
    }

    #[test]
    fn non_numeric_and_repeated_numbers_are_error_102() {
        assert_eq!(
            observation("OBX|1|NM|X^Y^L||<5||||||F").unwrap_err().code,
            102
        );
        assert_eq!(
            observation("OBX|1|NM|X^Y^L||27~25||||||F")
                .unwrap_err()
                .code,
            102
        );
    }

    #[test]
    fn empty_value_status_and_effective_fall_back() {
        let o = observation("OBX|1|NM|X^Y^L").unwrap();
        assert_eq!(o["status"], "unknown");
        assert_eq!(o["effectiveDateTime"], "2024-06-30");
        assert!(o.get("valueQuantity").is_none());
    }

    #[test]
    fn missing_code_is_error_101() {
        let err = observation("OBX|1|ST|||x||||||F").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (101, 3));
    }

    #[test]
    fn encapsulated_data_becomes_an_attachment() {
        let msg = parse_message(format!("{MSH}OBX|1|ED|PDF^Report||LAB^AP^PDF^Base64^JVBERi0x||||||F\rOBX|2|ED|X||^TEXT^^A^hi||||||F").as_bytes()).unwrap();
        let mut obx = msg.segments_named("OBX");
        let first = obx.next().unwrap();
        assert!(is_attachment(&first));
        assert_eq!(
            attachment(&first).unwrap().unwrap(),
            json!({"contentType": "application/pdf", "data": "JVBERi0x", "title": "Report"})
        );
        assert_eq!(
            attachment(&obx.next().unwrap()).unwrap().unwrap(),
            json!({"contentType": "text/plain", "data": "aGk="})
        );
    }

    #[test]
    fn invalid_encapsulated_data_is_error_102() {
        let msg =
            parse_message(format!("{MSH}OBX|1|ED|X||^AP^PDF^Base64^not*base64||||||F").as_bytes())
                .unwrap();
        assert_eq!(
            attachment(&msg.segment("OBX").unwrap()).unwrap_err().code,
            102
        );
    }

    #[test]
    fn content_types_are_built_from_type_and_subtype() {
        let ct =
            |t: &str, s: &str| content_type(code(Some(t.to_owned())), code(Some(s.to_owned())));
        assert_eq!(ct("IM", "JPEG"), "image/jpeg");
        assert_eq!(ct("AP", "application/pdf"), "application/pdf");
        assert_eq!(ct("NS", "Octet-stream"), "application/octet-stream");
        assert_eq!(ct("", "bad type!"), "application/octet-stream");
    }

    #[test]
    fn notes_are_added_as_annotations() {
        let msg =
            parse_message(format!("{MSH}NTE|1|L|Repeat in 3 months~if raised").as_bytes()).unwrap();
        let mut o = json!({"resourceType": "Observation"});
        add_note(&mut o, &msg.segment("NTE").unwrap());
        assert_eq!(
            o["note"],
            json!([{"text": "Repeat in 3 months\nif raised"}])
        );
    }
}
