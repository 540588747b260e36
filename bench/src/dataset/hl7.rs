//! ORU^R01 lab results with ten OBX each, for a pool of invented patients. Every message has
//! its own control id (MSH-10), order numbers and visit number, so the server stores each as
//! new results; a patient seen again is the same Patient, unchanged.

use serde_json::json;

use super::vocab;
use crate::prng::Prng;

/// Results per message.
pub const OBSERVATIONS: usize = 10;
/// Resource rows one message becomes: Patient, Encounter, DiagnosticReport and the results.
pub const ROWS_PER_MESSAGE: usize = 3 + OBSERVATIONS;

const FACILITY: &str = "BENCHLAB";
/// Streams of [`Prng::derive`] kept apart from the FHIR dataset's patient indexes.
const MESSAGE_STREAM: u64 = 1 << 40;
const PATIENT_STREAM: u64 = 2 << 40;

/// One generated result message.
pub struct Oru {
    control_id: String,
    mrn: String,
    family: String,
    given: &'static str,
    birth_date: String,
    sex: &'static str,
    /// `YYYYMMDDHHMMSS`, in UTC.
    time: String,
    panel: vocab::Coded,
    results: Vec<(&'static vocab::Measure, u64)>,
}

impl Oru {
    /// Message `seq` of a run: `lane` (one letter) keeps control ids of concurrent senders
    /// apart.
    pub fn generate(seed: u64, patients: u64, lane: char, seq: u64) -> Oru {
        let mut prng = Prng::derive(seed, MESSAGE_STREAM + seq);
        let patient = prng.below(patients);
        let mut person = Prng::derive(seed, PATIENT_STREAM + patient);
        let first = prng.below(vocab::MEASURES.len() as u64) as usize;
        let results = (0..OBSERVATIONS)
            .map(|i| &vocab::MEASURES[(first + i) % vocab::MEASURES.len()])
            .map(|m| (m, prng.between(m.low_tenths, m.high_tenths)))
            .collect();
        Oru {
            control_id: format!("{lane}{seq:010}"),
            mrn: format!("V2-{patient:06}"),
            family: vocab::family(&mut person),
            given: *person.pick(vocab::GIVEN),
            birth_date: format!(
                "{}{:02}{:02}",
                person.between(1940, 2015),
                person.between(1, 12),
                person.between(1, 28)
            ),
            sex: if person.chance(50) { "F" } else { "M" },
            time: format!(
                "2024{:02}{:02}{:02}{:02}{:02}",
                prng.between(1, 12),
                prng.between(1, 28),
                prng.between(0, 23),
                prng.between(0, 59),
                prng.between(0, 59)
            ),
            panel: *prng.pick(vocab::PANELS),
            results,
        }
    }

    /// The message as ER7 text (segments ended by CR). A STAT order carries priority `S` in
    /// OBR-27 component 6, routine ones `R`.
    pub fn er7(&self, stat: bool) -> Vec<u8> {
        let (id, time) = (&self.control_id, &self.time);
        let mut text = format!(
            "MSH|^~\\&|BENCHSYS|{FACILITY}|HL7BRIDGE|BENCH|{time}+0000||ORU^R01^ORU_R01|{id}|P|2.5.1\r\
             PID|1||{mrn}^^^{FACILITY}^MR||{family}^{given}||{birth}|{sex}|||1 Quarry Road^^Amberfold^ST^00000\r\
             PV1|1|O|LAB^^^{FACILITY}||||||||||||||||VIS{id}^^^{FACILITY}\r",
            mrn = self.mrn,
            family = self.family,
            given = self.given,
            birth = self.birth_date,
            sex = self.sex,
        );
        text.push_str(&self.obr(stat));
        for (n, (measure, tenths)) in self.results.iter().enumerate() {
            let value = format!("{}.{}", tenths / 10, tenths % 10);
            let range = format!("{}-{}", measure.low_tenths / 10, measure.high_tenths / 10);
            text.push_str(&format!(
                "OBX|{}|NM|{}^{}^LN||{value}|{}^^UCUM|{range}|N|||F|||{time}+0000\r",
                n + 1,
                measure.loinc,
                measure.name,
                measure.unit,
            ));
        }
        text.into_bytes()
    }

    fn obr(&self, stat: bool) -> String {
        let mut fields = vec![String::new(); 28];
        fields[0] = "OBR".into();
        fields[1] = "1".into();
        fields[2] = format!("PLC{}", self.control_id);
        fields[3] = format!("FIL{}^{FACILITY}", self.control_id);
        fields[4] = format!("{}^{}^LN", self.panel.0, self.panel.1);
        fields[7] = format!("{}+0000", self.time);
        fields[22] = format!("{}+0000", self.time);
        fields[25] = "F".into();
        fields[27] = if stat { "^^^^^S" } else { "^^^^^R" }.into();
        fields.join("|") + "\r"
    }

    /// The resource rows a server would store for this message, keyed as it keys them
    /// (by identifiers), with JSON of about the stored size: for the upsert ceiling.
    pub fn rows(&self) -> Vec<(&'static str, String, String)> {
        let id = &self.control_id;
        let patient = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:hl7bridge:v2:authority:BENCHLAB", "value": self.mrn,
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "name": [{"family": self.family, "given": [self.given]}],
            "gender": if self.sex == "F" { "female" } else { "male" }, "birthDate": self.birth_date,
            "address": [{"line": ["1 Quarry Road"], "city": "Amberfold", "state": "ST", "postalCode": "00000"}]});
        let encounter = json!({"resourceType": "Encounter", "status": "unknown",
            "identifier": [{"system": "urn:hl7bridge:v2:authority:BENCHLAB", "value": format!("VIS{id}")}],
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{}", self.mrn)}});
        let report = json!({"resourceType": "DiagnosticReport", "status": "final",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}]},
                "system": "urn:hl7bridge:v2:authority:BENCHLAB", "value": format!("FIL{id}")}],
            "code": {"coding": [{"system": "http://loinc.org", "code": self.panel.0, "display": self.panel.1}]},
            "subject": {"reference": format!("Patient/{}", self.mrn)},
            "encounter": {"reference": format!("Encounter/VIS{id}")},
            "effectiveDateTime": self.time, "issued": self.time,
            "result": (0..OBSERVATIONS).map(|n| json!({"reference": format!("Observation/{id}-{n}")})).collect::<Vec<_>>()});
        let mut rows = vec![
            ("Patient", self.mrn.clone(), patient.to_string()),
            ("Encounter", format!("VIS{id}"), encounter.to_string()),
            ("DiagnosticReport", format!("FIL{id}"), report.to_string()),
        ];
        for (n, (measure, tenths)) in self.results.iter().enumerate() {
            let observation = json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": measure.loinc, "display": measure.name}]},
                "subject": {"reference": format!("Patient/{}", self.mrn)},
                "encounter": {"reference": format!("Encounter/VIS{id}")},
                "effectiveDateTime": self.time,
                "valueQuantity": {"value": *tenths as f64 / 10.0, "unit": measure.unit,
                    "system": "http://unitsofmeasure.org", "code": measure.unit},
                "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]}],
                "referenceRange": [{"text": format!("{}-{}", measure.low_tenths / 10, measure.high_tenths / 10)}]});
            rows.push(("Observation", format!("{id}-{n}"), observation.to_string()));
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_ten_results_and_its_own_control_id() {
        let text = String::from_utf8(Oru::generate(1, 100, 'R', 42).er7(false)).unwrap();
        assert_eq!(text.matches("\rOBX|").count(), OBSERVATIONS);
        assert!(text.contains("|ORU^R01^ORU_R01|R0000000042|P|"));
    }

    #[test]
    fn a_stat_order_has_priority_s_in_obr_27_component_6() {
        let text = String::from_utf8(Oru::generate(1, 100, 'S', 1).er7(true)).unwrap();
        let obr = text.split('\r').find(|s| s.starts_with("OBR|")).unwrap();
        let tq = obr.split('|').nth(27).unwrap();
        assert_eq!(tq.split('^').nth(5), Some("S"));
    }

    #[test]
    fn a_patient_seen_twice_is_described_the_same_way() {
        let pid = |seq| {
            let text = String::from_utf8(Oru::generate(9, 1, 'R', seq).er7(false)).unwrap();
            text.split('\r').nth(1).unwrap().to_string()
        };
        assert_eq!(pid(1), pid(2));
    }

    #[test]
    fn one_message_is_thirteen_rows() {
        assert_eq!(Oru::generate(1, 10, 'R', 0).rows().len(), ROWS_PER_MESSAGE);
    }
}
