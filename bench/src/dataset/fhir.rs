//! Synthea-like transaction Bundles: one per patient, about 250 resources (encounters, each
//! with its observations, report, procedure, prescription and immunizations), joined by
//! `urn:uuid:` fullUrls; practitioners, organizations and locations referenced by identifier
//! (`Practitioner?identifier=…`), as Synthea does, from one supporting Bundle loaded first.

use serde_json::{json, Value};

use super::vocab::{self, Coded, Measure};
use crate::prng::Prng;

const ORGANIZATION_SYSTEM: &str = "urn:hl7bridge:bench:organization";
const LOCATION_SYSTEM: &str = "urn:hl7bridge:bench:location";
const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";
const MRN_SYSTEM: &str = "urn:hl7bridge:bench:mrn";
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";

/// How many shared resources the patient Bundles point at.
#[derive(Debug, Clone, Copy)]
pub struct Supporting {
    /// Organizations, and as many Locations (one each).
    pub organizations: u64,
    pub practitioners: u64,
}

impl Supporting {
    pub const DEFAULT: Supporting = Supporting {
        organizations: 20,
        practitioners: 100,
    };

    pub fn resources(&self) -> u64 {
        2 * self.organizations + self.practitioners
    }
}

/// The transaction Bundle of Organizations, Locations and Practitioners, each `PUT` by id.
pub fn supporting_bundle(seed: u64, supporting: Supporting) -> Value {
    let mut prng = Prng::derive(seed, u64::MAX);
    let mut entries = Vec::new();
    for n in 0..supporting.organizations {
        let city = prng.pick(vocab::CITIES);
        let name = format!("{} {city} Clinic", vocab::family(&mut prng));
        entries.push(put(organization(n, &name, city)));
        entries.push(put(location(n, &name, city)));
    }
    for n in 0..supporting.practitioners {
        let given = *prng.pick(vocab::GIVEN);
        entries.push(put(practitioner(n, given, &vocab::family(&mut prng))));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn put(resource: Value) -> Value {
    let url = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap_or_default(),
        resource["id"].as_str().unwrap_or_default()
    );
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

fn organization(n: u64, name: &str, city: &str) -> Value {
    json!({
        "resourceType": "Organization",
        "id": format!("bench-org-{n}"),
        "identifier": [{"system": ORGANIZATION_SYSTEM, "value": format!("org-{n}")}],
        "active": true,
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
            "code": "prov", "display": "Healthcare Provider"}]}],
        "name": name,
        "address": [{"line": [format!("{} Quarry Road", 10 + n)], "city": city, "country": "US"}]
    })
}

fn location(n: u64, name: &str, city: &str) -> Value {
    json!({
        "resourceType": "Location",
        "id": format!("bench-loc-{n}"),
        "identifier": [{"system": LOCATION_SYSTEM, "value": format!("loc-{n}")}],
        "status": "active",
        "name": name,
        "address": {"line": [format!("{} Quarry Road", 10 + n)], "city": city, "country": "US"},
        "managingOrganization": {"reference": format!("Organization/bench-org-{n}")}
    })
}

fn practitioner(n: u64, given: &str, family: &str) -> Value {
    json!({
        "resourceType": "Practitioner",
        "id": format!("bench-pract-{n}"),
        "identifier": [{"system": NPI_SYSTEM, "value": npi(n)}],
        "active": true,
        "name": [{"family": family, "given": [given], "prefix": ["Dr."]}],
        "gender": if n % 2 == 0 { "female" } else { "male" }
    })
}

fn npi(n: u64) -> String {
    format!("99990{n:05}")
}

/// One generated patient Bundle.
pub struct PatientBundle {
    pub bundle: Value,
    pub resources: usize,
}

/// Who a patient is and where they are seen; drawn from the patient's own generator.
struct Context {
    patient: String,
    organization: u64,
    practitioners: Vec<u64>,
    birth_year: u64,
}

/// The transaction Bundle of patient `index`: the same for the same seed and index.
pub fn patient_bundle(seed: u64, index: u64, supporting: Supporting) -> PatientBundle {
    let mut prng = Prng::derive(seed, index);
    let context = Context {
        patient: uuid(&mut prng),
        organization: prng.below(supporting.organizations),
        practitioners: (0..3)
            .map(|_| prng.below(supporting.practitioners))
            .collect(),
        birth_year: prng.between(1940, 2015),
    };
    let mut entries = vec![post(&context.patient, patient(&mut prng, &context, index))];
    for _ in 0..prng.between(22, 30) {
        encounter_entries(&mut prng, &context, &mut entries);
    }
    let resources = entries.len();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    PatientBundle { bundle, resources }
}

fn post(full_url: &str, resource: Value) -> Value {
    let url = resource["resourceType"].clone();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": url}})
}

fn patient(prng: &mut Prng, context: &Context, index: u64) -> Value {
    let given = [*prng.pick(vocab::GIVEN), *prng.pick(vocab::GIVEN)];
    let family = vocab::family(prng);
    let city = prng.pick(vocab::CITIES);
    let street = format!(
        "{} {} Lane",
        prng.between(1, 999),
        prng.pick(vocab::STREETS)
    );
    json!({
        "resourceType": "Patient",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            "valueAddress": {"city": prng.pick(vocab::CITIES), "country": "US"}}],
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
            "code": "MR", "display": "Medical Record Number"}]},
            "system": MRN_SYSTEM, "value": format!("MRN-{index:07}")}],
        "name": [{"use": "official", "family": family, "given": given}],
        "telecom": [{"system": "phone", "value": format!("555-{:03}-{:04}", prng.below(1000), prng.below(10_000)), "use": "home"}],
        "gender": if prng.chance(50) { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", context.birth_year, prng.between(1, 12), prng.between(1, 28)),
        "address": [{"line": [street], "city": city, "state": "ST", "postalCode": "00000", "country": "US"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
            "code": "M", "display": "Married"}]},
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US",
            "display": "English (United States)"}]}}]
    })
}

/// When one encounter happened, as FHIR dateTimes: its start and its end a quarter hour later.
struct Visit {
    start: String,
    end: String,
}

fn visit(prng: &mut Prng, birth_year: u64) -> Visit {
    let year = prng.between(birth_year.max(2000), 2024);
    let (month, day) = (prng.between(1, 12), prng.between(1, 28));
    let (hour, minute) = (prng.between(7, 18), prng.between(0, 44));
    let at = |m: u64| format!("{year}-{month:02}-{day:02}T{hour:02}:{m:02}:00+00:00");
    Visit {
        start: at(minute),
        end: at(minute + 15),
    }
}

/// One encounter and what it produced, appended to `entries`.
fn encounter_entries(prng: &mut Prng, context: &Context, entries: &mut Vec<Value>) {
    let when = visit(prng, context.birth_year);
    let encounter = uuid(prng);
    let links = Links {
        patient: &context.patient,
        encounter: &encounter,
        doctor: *prng.pick(&context.practitioners),
        organization: context.organization,
    };
    entries.push(post(&encounter, encounter_resource(prng, &links, &when)));
    let mut results = Vec::new();
    for _ in 0..prng.between(2, 6) {
        let url = uuid(prng);
        let measure = prng.pick(vocab::MEASURES);
        entries.push(post(&url, observation(prng, &links, &when, measure)));
        results.push(json!({"reference": url}));
    }
    entries.push(post(&uuid(prng), report(prng, &links, &when, results)));
    if prng.chance(30) {
        let code = prng.pick(vocab::CONDITIONS);
        entries.push(post(&uuid(prng), condition(&links, &when, code)));
    }
    if prng.chance(80) {
        let code = prng.pick(vocab::PROCEDURES);
        entries.push(post(&uuid(prng), procedure(&links, &when, code)));
    }
    if prng.chance(90) {
        let code = prng.pick(vocab::MEDICATIONS);
        entries.push(post(&uuid(prng), prescription(&links, &when, code)));
    }
    for _ in 0..prng.between(1, 2) {
        let code = prng.pick(vocab::VACCINES);
        entries.push(post(&uuid(prng), immunization(&links, &when, code)));
    }
}

fn uuid(prng: &mut Prng) -> String {
    format!("urn:uuid:{}", prng.uuid())
}

/// The references every resource of one encounter carries.
struct Links<'a> {
    patient: &'a str,
    encounter: &'a str,
    doctor: u64,
    organization: u64,
}

impl Links<'_> {
    fn subject(&self) -> Value {
        json!({"reference": self.patient})
    }

    fn encounter(&self) -> Value {
        json!({"reference": self.encounter})
    }

    fn doctor(&self) -> Value {
        json!({"reference": format!("Practitioner?identifier={NPI_SYSTEM}|{}", npi(self.doctor))})
    }

    fn location(&self) -> Value {
        let value = format!("loc-{}", self.organization);
        json!({"reference": format!("Location?identifier={LOCATION_SYSTEM}|{value}")})
    }

    fn organization(&self) -> Value {
        let value = format!("org-{}", self.organization);
        json!({"reference": format!("Organization?identifier={ORGANIZATION_SYSTEM}|{value}")})
    }
}

fn coded(system: &str, (code, display): &Coded) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn encounter_resource(prng: &mut Prng, links: &Links, when: &Visit) -> Value {
    let kind = prng.pick(vocab::ENCOUNTER_TYPES);
    let class = if kind.0 == "50849002" { "EMER" } else { "AMB" };
    json!({
        "resourceType": "Encounter",
        "identifier": [{"use": "official", "system": "urn:hl7bridge:bench:visit", "value": prng.uuid()}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
        "type": [coded(SNOMED, kind)],
        "subject": links.subject(),
        "participant": [{"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "PPRF", "display": "primary performer"}], "text": "primary performer"}],
            "period": {"start": when.start, "end": when.end}, "individual": links.doctor()}],
        "period": {"start": when.start, "end": when.end},
        "location": [{"location": links.location()}],
        "serviceProvider": links.organization()
    })
}

fn observation(prng: &mut Prng, links: &Links, when: &Visit, measure: &Measure) -> Value {
    let tenths = prng.between(measure.low_tenths, measure.high_tenths);
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": measure.category, "display": measure.category}]}],
        "code": coded(LOINC, &(measure.loinc, measure.name)),
        "subject": links.subject(),
        "encounter": links.encounter(),
        "effectiveDateTime": when.start,
        "issued": when.end,
        "valueQuantity": {"value": tenths as f64 / 10.0, "unit": measure.unit, "system": UCUM, "code": measure.unit}
    })
}

fn report(prng: &mut Prng, links: &Links, when: &Visit, results: Vec<Value>) -> Value {
    json!({
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
            "code": "LAB", "display": "Laboratory"}]}],
        "code": coded(LOINC, prng.pick(vocab::PANELS)),
        "subject": links.subject(),
        "encounter": links.encounter(),
        "effectiveDateTime": when.start,
        "issued": when.end,
        "performer": [links.doctor()],
        "result": results,
        "conclusion": "Results reviewed with the patient; no follow-up needed."
    })
}

fn condition(links: &Links, when: &Visit, code: &Coded) -> Value {
    json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
            "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}],
        "code": coded(SNOMED, code),
        "subject": links.subject(),
        "encounter": links.encounter(),
        "onsetDateTime": when.start,
        "recordedDate": when.start
    })
}

fn procedure(links: &Links, when: &Visit, code: &Coded) -> Value {
    json!({
        "resourceType": "Procedure",
        "status": "completed",
        "code": coded(SNOMED, code),
        "subject": links.subject(),
        "encounter": links.encounter(),
        "performedPeriod": {"start": when.start, "end": when.end},
        "location": links.location()
    })
}

fn prescription(links: &Links, when: &Visit, code: &Coded) -> Value {
    json!({
        "resourceType": "MedicationRequest",
        "status": "completed",
        "intent": "order",
        "medicationCodeableConcept": coded("http://www.nlm.nih.gov/research/umls/rxnorm", code),
        "subject": links.subject(),
        "encounter": links.encounter(),
        "authoredOn": when.start,
        "requester": links.doctor(),
        "dosageInstruction": [{"sequence": 1, "text": "Take one tablet by mouth twice a day",
            "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
            "asNeededBoolean": false}]
    })
}

fn immunization(links: &Links, when: &Visit, code: &Coded) -> Value {
    json!({
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": coded("http://hl7.org/fhir/sid/cvx", code),
        "patient": links.subject(),
        "encounter": links.encounter(),
        "occurrenceDateTime": when.start,
        "primarySource": true,
        "location": links.location()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patient_bundle_holds_about_250_resources() {
        let sizes: Vec<usize> = (0..20)
            .map(|i| patient_bundle(1, i, Supporting::DEFAULT).resources)
            .collect();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((200..=300).contains(&mean), "mean {mean}");
    }

    #[test]
    fn the_same_seed_gives_the_same_bundle() {
        let a = patient_bundle(5, 3, Supporting::DEFAULT).bundle;
        assert_eq!(a, patient_bundle(5, 3, Supporting::DEFAULT).bundle);
        assert_ne!(a, patient_bundle(6, 3, Supporting::DEFAULT).bundle);
    }

    #[test]
    fn every_reference_inside_a_bundle_names_one_of_its_entries_or_an_identifier() {
        let bundle = patient_bundle(2, 0, Supporting::DEFAULT).bundle;
        let text = bundle.to_string();
        let full_urls: Vec<&str> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap())
            .collect();
        for part in text.split("\"reference\":\"").skip(1) {
            let reference = &part[..part.find('"').unwrap()];
            assert!(
                full_urls.contains(&reference) || reference.contains("?identifier="),
                "{reference}"
            );
        }
    }
}
