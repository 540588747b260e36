//! Whole-message mapping tests with invented patients, and a run over the shared corpus.

use std::path::PathBuf;

use serde_json::Value;

use super::{map_message, Ctx, MapContext, MapError, Mapped, Subject};
use crate::ingest::v2::{
    build_ack, parse_message, read_header, split_frame, AckCode, AckError, Message, RawMessage,
    UtcOffset,
};

const ORU_R01_LAB: &str = "MSH|^~\\&|LABSYS|NORTHLAB^2.16.840.1.113883.19.8^ISO|EHR|HOSP|20240630121500-0500||ORU^R01^ORU_R01|LAB-0001|P|2.5.1\r\
PID|1||MRN-5521^^^NORTH&2.16.840.1.113883.19.5&ISO^MR||Quillfeather^Maren^J||19810214|F|||7 Birch Rd^^Lakeside^MN^55001^USA^H\r\
PV1|1|O|CLINIC-2||||||||||||||||V-3001^^^NORTH^VN\r\
ORC|RE|PL-88^EHR|FI-88^NORTHLAB\r\
OBR|1|PL-88^EHR|FI-88^NORTHLAB|57021-8^CBC W Auto Differential panel^LN|||202406300745-0500|||||||||||||||202406301210-0500|||F\r\
OBX|1|NM|6690-2^Leukocytes^LN||072.40|10*3/uL^^UCUM|4.0-11.0|H|||F|||202406300800-0500\r\
NTE|1||Sample slightly haemolysed\r\
OBX|2|ST|8251-1^Service comment^LN||See note||||||F\r\
OBX|3|TX|11526-1^Pathology study^LN||First line~Second line||||||F\r\
OBX|4|CWE|882-1^ABO and Rh group^LN||278149003^Blood group A Rh(D) positive^SCT||||||F\r\
OBX|5|SN|5196-1^HBsAg titer^LN||^1^:^128||||||F\r\
OBX|6|ED|PDF^Printable report^L||^AP^PDF^Base64^JVBERi0xLjQK||||||F\r";

const ADT_MSH: &str =
    "MSH|^~\\&|ADTSYS|NORTH|EHR|HOSP|20240701090000||ADT^{EVENT}^ADT_A01|ADT-{EVENT}|P|2.5.1\r";
const ADT_BODY: &str = "EVN|{EVENT}|20240701090000\r\
PID|1||MRN-7310^^^NORTH^MR||Ashgrove^Tobias||19590923|M|||1 Quay St^^Harbourtown^ME^04001\r\
PV1|1|I|WARD-4^12^A||||||||||||||||V-9902^^^NORTH^VN|||||||||||||||||||||||||202407010830|{DISCHARGE}\r";

/// The patient the resource mappers' own tests map for: `Patient/p-1`, without a visit.
pub(super) fn test_subject() -> Subject {
    Subject {
        patient: "p-1".to_owned(),
        encounter: None,
    }
}

/// Parses `msh` followed by `segments` and hands the message and its mapping context to `f`.
pub(super) fn with_message<T>(
    msh: &str,
    segments: &str,
    f: impl FnOnce(&Message, &Ctx<'_>) -> T,
) -> T {
    let msg = parse_message(format!("{msh}{segments}").as_bytes()).unwrap();
    let ctx = Ctx::new(&msg, &MapContext::default());
    f(&msg, &ctx)
}

/// One segment with the given fields set and the others empty, ending with CR:
/// `seg("ORC", &[(1, "NW"), (9, "20240701")])`.
pub(super) fn seg(name: &str, fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut values = vec![""; last];
    for (n, value) in fields {
        values[n - 1] = value;
    }
    format!("{name}|{}\r", values.join("|"))
}

fn mapped(text: &str) -> Result<Mapped, MapError> {
    let msg = parse_message(text.as_bytes()).unwrap();
    map_message(&msg, &MapContext::default())
}

fn adt(event: &str, discharge: &str) -> Result<Mapped, MapError> {
    let text = format!("{ADT_MSH}{ADT_BODY}")
        .replace("{EVENT}", event)
        .replace("{DISCHARGE}", discharge);
    mapped(&text)
}

fn of_type<'a>(mapped: &'a Mapped, resource_type: &str) -> Vec<&'a Value> {
    mapped
        .resources
        .iter()
        .filter(|r| r["resourceType"] == resource_type)
        .collect()
}

#[test]
fn oru_r01_maps_patient_encounter_report_and_observations() {
    let m = mapped(ORU_R01_LAB).unwrap();
    assert_eq!(of_type(&m, "Patient").len(), 1);
    assert_eq!(of_type(&m, "Encounter").len(), 1);
    assert_eq!(of_type(&m, "DiagnosticReport").len(), 1);
    assert_eq!(of_type(&m, "Observation").len(), 5);
    assert_eq!(m.patient_id.as_deref(), m.resources[0]["id"].as_str());
    m.resources.iter().for_each(assert_fhir_shape);
}

#[test]
fn oru_r01_values_have_their_fhir_types() {
    let m = mapped(ORU_R01_LAB).unwrap();
    let obs = of_type(&m, "Observation");
    assert_eq!(obs[0]["valueQuantity"]["value"].to_string(), "72.40");
    assert_eq!(obs[0]["note"][0]["text"], "Sample slightly haemolysed");
    assert_eq!(obs[1]["valueString"], "See note");
    assert_eq!(obs[2]["valueString"], "First line\nSecond line");
    assert_eq!(
        obs[3]["valueCodeableConcept"]["coding"][0]["code"],
        "278149003"
    );
    assert_eq!(obs[4]["valueRatio"]["denominator"]["value"], 128);
    let report = of_type(&m, "DiagnosticReport")[0];
    assert_eq!(report["presentedForm"][0]["data"], "JVBERi0xLjQK");
    assert_eq!(report["result"].as_array().unwrap().len(), 5);
    let encounter = format!(
        "Encounter/{}",
        of_type(&m, "Encounter")[0]["id"].as_str().unwrap()
    );
    assert!(obs
        .iter()
        .all(|o| o["encounter"]["reference"] == encounter.as_str()));
}

#[test]
fn resending_a_message_gives_byte_identical_resources() {
    let first = mapped(ORU_R01_LAB).unwrap();
    let again = mapped(&ORU_R01_LAB.replace('\r', "\n")).unwrap();
    let text = |m: &Mapped| serde_json::to_string(&m.resources).unwrap();
    assert_eq!(text(&first), text(&again));
}

#[test]
fn a_corrected_result_keeps_its_ids() {
    let corrected = ORU_R01_LAB
        .replace("|072.40|", "|7.10|")
        .replace("|H|||F|", "|N|||C|");
    let ids = |m: Mapped| {
        m.resources
            .iter()
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(mapped(ORU_R01_LAB).unwrap()),
        ids(mapped(&corrected).unwrap())
    );
}

#[test]
fn obx_without_value_type_is_error_101_on_obx_2() {
    let text = ORU_R01_LAB.replace(
        "OBX|6|ED|",
        "OBX|1||WBC^White cells||6.1|10*3/uL|||||F\rOBX|6|ED|",
    );
    let err = mapped(&text).unwrap_err();
    assert_eq!(
        (err.code, err.location.clone()),
        (101, Some(("OBX".to_owned(), 6, 2)))
    );
    let ack_error = AckError::from(err);
    assert_eq!(ack_error.code, 101);
}

#[test]
fn adt_a01_a04_a08_map_patient_and_encounter() {
    for (event, status) in [
        ("A01", "in-progress"),
        ("A04", "arrived"),
        ("A08", "in-progress"),
    ] {
        let m = adt(event, "").unwrap();
        assert_eq!(m.resources.len(), 2, "{event}");
        assert_eq!(m.resources[1]["status"], status, "{event}");
        assert_eq!(m.resources[1]["class"]["code"], "IMP");
        m.resources.iter().for_each(assert_fhir_shape);
    }
    let discharged = adt("A03", "202407051000").unwrap();
    assert_eq!(
        discharged.resources[1]["period"]["end"],
        "2024-07-05T10:00:00+00:00"
    );
}

#[test]
fn adt_a31_maps_the_patient_only() {
    assert_eq!(adt("A31", "").unwrap().resources.len(), 1);
}

#[test]
fn same_patient_gets_the_same_id_from_adt_and_oru_of_one_sender() {
    let a = adt("A01", "").unwrap();
    let oru = ORU_R01_LAB
        .replace("NORTHLAB^2.16.840.1.113883.19.8^ISO", "NORTH")
        .replace(
            "MRN-5521^^^NORTH&2.16.840.1.113883.19.5&ISO^MR",
            "MRN-7310^^^NORTH^MR",
        );
    assert_eq!(a.patient_id, mapped(&oru).unwrap().patient_id);
}

#[test]
fn unsupported_types_and_events_are_200_and_201() {
    let err = mapped(&ORU_R01_LAB.replace("ORU^R01^ORU_R01", "DFT^P03^DFT_P03")).unwrap_err();
    assert_eq!(
        (err.code, err.location),
        (200, Some(("MSH".to_owned(), 1, 9)))
    );
    assert_eq!(
        mapped(&ORU_R01_LAB.replace("ORU^R01^ORU_R01", "ORU^R30"))
            .unwrap_err()
            .code,
        201
    );
    assert_eq!(adt("A17", "").unwrap_err().code, 201);
    let vxu = ORU_R01_LAB.replace("ORU^R01^ORU_R01", "VXU^V05");
    assert_eq!(mapped(&vxu).unwrap_err().code, 201);
}

#[test]
fn missing_pid_and_second_patient_are_errors() {
    let no_pid = "MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rEVN|A01|2024\r";
    assert_eq!(mapped(no_pid).unwrap_err().code, 100);
    let two = ORU_R01_LAB.replace("PV1|", "PID|2||MRN-1\rPV1|");
    assert_eq!(mapped(&two).unwrap_err().code, 207);
}

#[test]
fn errors_never_contain_patient_data() {
    let bad_time = ORU_R01_LAB.replace("202406300800-0500", "20240699");
    let err = mapped(&bad_time).unwrap_err();
    assert_eq!(err.code, 102);
    for secret in ["Quillfeather", "MRN-5521", "19810214", "20240699"] {
        assert!(!err.message.contains(secret));
    }
}

#[test]
fn default_offset_is_applied_to_times_without_one() {
    let text = ORU_R01_LAB.replace("202406300745-0500", "202406300745");
    let msg = parse_message(text.as_bytes()).unwrap();
    let ctx = MapContext {
        default_utc_offset: UtcOffset::parse("+02:00").unwrap(),
    };
    let m = map_message(&msg, &ctx).unwrap();
    assert_eq!(
        of_type(&m, "DiagnosticReport")[0]["effectiveDateTime"],
        "2024-06-30T07:45:00+02:00"
    );
}

/// The invented fixtures of the integration tests, with what each maps to.
const FIXTURES: &[(&str, &str, &str)] = &[
    (
        "adt_a28",
        include_str!("../../../tests/fixtures/adt_a28.hl7"),
        "1 Patient",
    ),
    (
        "adt_a40",
        include_str!("../../../tests/fixtures/adt_a40.hl7"),
        "2 Patient",
    ),
    (
        "oml_o21",
        include_str!("../../../tests/fixtures/oml_o21.hl7"),
        "1 Patient, 1 Encounter, 2 ServiceRequest, 1 Observation, 1 Specimen",
    ),
    (
        "orm_o01",
        include_str!("../../../tests/fixtures/orm_o01.hl7"),
        "1 Patient, 1 ServiceRequest",
    ),
    (
        "orm_o01_cancel",
        include_str!("../../../tests/fixtures/orm_o01_cancel.hl7"),
        "1 Patient, 1 ServiceRequest",
    ),
    (
        "oul_r22",
        include_str!("../../../tests/fixtures/oul_r22.hl7"),
        "1 Patient, 1 DiagnosticReport, 3 Observation, 1 Specimen",
    ),
    (
        "vxu_v04",
        include_str!("../../../tests/fixtures/vxu_v04.hl7"),
        "1 Patient, 2 Immunization, 1 Observation",
    ),
    (
        "mdm_t02",
        include_str!("../../../tests/fixtures/mdm_t02.hl7"),
        "1 Patient, 1 Encounter, 1 DocumentReference",
    ),
];

fn fixture(name: &str) -> &'static str {
    let found = FIXTURES.iter().find(|(n, ..)| *n == name);
    found.map(|(_, text, _)| *text).unwrap()
}

fn type_counts(mapped: &Mapped) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for resource in &mapped.resources {
        let kind = resource["resourceType"].as_str().unwrap();
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    parts.join(", ")
}

#[test]
fn every_new_message_type_maps_its_fixture_deterministically() {
    for (name, text, expected) in FIXTURES {
        let m = mapped(text).unwrap();
        let mut kinds: Vec<&str> = expected.split(", ").collect();
        let mut got_kinds: Vec<String> = type_counts(&m).split(", ").map(String::from).collect();
        kinds.sort_unstable();
        got_kinds.sort_unstable();
        assert_eq!(got_kinds, kinds, "{name}");
        m.resources.iter().for_each(assert_fhir_shape);
        assert_eq!(mapped(&text.replace('\r', "\n")).unwrap(), m, "{name}");
        let ids: std::collections::HashSet<_> = m.resources.iter().map(|r| &r["id"]).collect();
        assert_eq!(
            ids.len(),
            m.resources.len(),
            "{name}: ids are unique in a message"
        );
    }
}

#[test]
fn amended_resources_are_the_merged_patient_cancelled_orders_and_specimens() {
    let amended_types = |name: &str| {
        let m = mapped(fixture(name)).unwrap();
        let of = |id: &String| {
            let found = m.resources.iter().find(|r| r["id"] == id.as_str());
            found.unwrap()["resourceType"].as_str().unwrap().to_owned()
        };
        m.amended.iter().map(of).collect::<Vec<_>>()
    };
    assert_eq!(amended_types("adt_a40"), ["Patient"]);
    assert_eq!(amended_types("oml_o21"), ["Specimen"]);
    assert_eq!(amended_types("orm_o01"), Vec::<String>::new());
    assert_eq!(amended_types("orm_o01_cancel"), ["ServiceRequest"]);
    assert_eq!(amended_types("oul_r22"), ["Specimen"]);
}

/// Checks what strict FHIR JSON parsing cares about and this mapper could get wrong.
fn assert_fhir_shape(resource: &Value) {
    let id = resource["id"].as_str().expect("every resource has an id");
    assert!(
        id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    );
    assert!(resource["resourceType"].is_string());
    check_node(resource, "");
}

fn check_node(value: &Value, key: &str) {
    match value {
        Value::String(text) => {
            assert!(!text.trim().is_empty(), "empty string at {key}");
            let time_keys = [
                "effectiveDateTime",
                "valueDateTime",
                "start",
                "end",
                "issued",
            ];
            if time_keys.contains(&key) && text.contains('T') {
                let zone = &text[text.len() - 6..];
                assert!(
                    zone.starts_with(['+', '-']) && zone.as_bytes()[3] == b':',
                    "{key} needs an offset"
                );
            }
            if key == "reference" {
                assert!(text
                    .split_once('/')
                    .is_some_and(|(t, id)| !t.is_empty() && !id.is_empty()));
            }
        }
        Value::Array(items) => {
            assert!(!items.is_empty(), "empty array at {key}");
            items.iter().for_each(|item| check_node(item, key));
        }
        Value::Object(fields) => {
            assert!(!fields.is_empty(), "empty object at {key}");
            fields.iter().for_each(|(k, v)| check_node(v, k));
        }
        Value::Null => panic!("null at {key}"),
        _ => {}
    }
}

/// The shared corpus: `HL7_CORPUS_DIR`, else `shared/` beside the crate.
fn corpus_dir() -> Option<PathBuf> {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/hl7v2");
    let dir =
        std::env::var_os("HL7_CORPUS_DIR").map_or_else(|| PathBuf::from(default), PathBuf::from);
    dir.is_dir().then_some(dir)
}

#[test]
fn every_corpus_message_is_read_without_panic() {
    let Some(dir) = corpus_dir() else {
        eprintln!("corpus directory not found: skipped");
        return;
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "hl7"));
    paths.sort();
    assert!(!paths.is_empty());
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        println!("{name}: {}", frame_outcome(&bytes));
    }
}

fn frame_outcome(bytes: &[u8]) -> String {
    match split_frame(bytes) {
        Err(err) => {
            let header = read_header(bytes).expect("a frame error still has a header");
            let ack = build_ack(
                Some(&header),
                AckCode::AR,
                &[AckError::from(&err)],
                None,
                "X",
                "2024",
            );
            assert!(ack.contains("MSA|AR|"));
            format!(
                "frame rejected (error {}); header control id {:?}",
                AckError::from(&err).code,
                header.control_id
            )
        }
        Ok(frame) => {
            let outcomes: Vec<String> = frame.messages.iter().map(message_outcome).collect();
            format!(
                "{:?}, {} message(s): {}",
                frame.envelope,
                outcomes.len(),
                outcomes.join(" | ")
            )
        }
    }
}

fn message_outcome(raw: &RawMessage) -> String {
    let header = raw
        .header()
        .expect("every corpus message has a usable MSH-1");
    if let Some(expected) = plain_control_id(raw.text()) {
        assert_eq!(header.control_id.as_deref(), Some(expected.as_str()));
    }
    let id = format!("[{}]", header.control_id.as_deref().unwrap_or("-"));
    let msg = match raw.parse() {
        Ok(msg) => msg,
        // Codes and locations only: error texts may quote the message.
        Err(err) => {
            let err = AckError::from(&err);
            return format!("{id} header only, AR {} at {:?}", err.code, err.location);
        }
    };
    match map_message(&msg, &MapContext::default()) {
        Ok(mapped) => {
            mapped.resources.iter().for_each(assert_fhir_shape);
            let again = map_message(&raw.parse().unwrap(), &MapContext::default()).unwrap();
            assert_eq!(mapped, again);
            format!(
                "{id} parsed ({}), mapped: {}",
                msg.charset().encoding,
                counts(&mapped)
            )
        }
        Err(err) => format!("{id} parsed, map error {} at {:?}", err.code, err.location),
    }
}

/// MSH-10 read the plain way, when the MSH line is whole.
fn plain_control_id(text: &str) -> Option<String> {
    let mut lines = text.split('\r');
    let msh = lines.next()?;
    let separator = msh.chars().nth(3)?;
    let wrapped = lines.next().is_some_and(|next| {
        let name = next.as_bytes().get(..3).unwrap_or_default();
        let name_ok = name.first().is_some_and(u8::is_ascii_uppercase)
            && name
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        !(name_ok && next[3..].starts_with(separator))
    });
    let id = msh
        .split(separator)
        .nth(9)
        .filter(|id| !id.is_empty() && !wrapped)?;
    Some(id.to_owned())
}

fn counts(mapped: &Mapped) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for resource in &mapped.resources {
        let kind = resource["resourceType"].as_str().unwrap_or("?").to_owned();
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
