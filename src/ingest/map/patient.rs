//! PID to Patient: identifiers (PID-3), names (PID-5), birth date (PID-7), gender (PID-8),
//! addresses (PID-11) and phone numbers (PID-13 home, PID-14 business).

use serde_json::Value;

use super::datatypes::{code, Ident, Obj};
use super::ids::{patient_identifier, patient_key, resource_id};
use super::{Ctx, MapError};
use crate::ingest::v2::{dtm, Repetition, Segment};

pub(super) const PID_3: usize = 3;
const PID_5: usize = 5;
const PID_7: usize = 7;
const PID_8: usize = 8;
const PID_11: usize = 11;
const PID_13: usize = 13;
const PID_14: usize = 14;

/// HL7 table 0001 (administrative sex) to FHIR AdministrativeGender.
const GENDER_0001: &[(&str, &str)] = &[
    ("M", "male"),
    ("F", "female"),
    ("O", "other"),
    ("U", "unknown"),
    ("A", "other"),
    ("N", "other"),
];

/// HL7 table 0200 (name type) to FHIR NameUse.
const NAME_USE_0200: &[(&str, &str)] = &[
    ("L", "official"),
    ("R", "official"),
    ("C", "official"),
    ("D", "usual"),
    ("A", "usual"),
    ("T", "usual"),
    ("M", "maiden"),
    ("N", "nickname"),
    ("S", "anonymous"),
    ("B", "old"),
    ("NB", "temp"),
];

/// HL7 table 0190 (address type) to FHIR Address.use and Address.type.
const ADDRESS_TYPE_0190: &[(&str, Option<&str>, Option<&str>)] = &[
    ("H", Some("home"), None),
    ("B", Some("work"), None),
    ("O", Some("work"), None),
    ("C", Some("temp"), None),
    ("BA", Some("old"), None),
    ("M", None, Some("postal")),
];

/// HL7 table 0201 (telecommunication use) to FHIR ContactPoint.use.
const TELECOM_USE_0201: &[(&str, &str)] = &[
    ("PRN", "home"),
    ("ORN", "home"),
    ("VHN", "home"),
    ("WPN", "work"),
    ("PRS", "mobile"),
];

/// HL7 table 0202 (telecommunication equipment) to FHIR ContactPoint.system.
const TELECOM_SYSTEM_0202: &[(&str, &str)] = &[
    ("PH", "phone"),
    ("CP", "phone"),
    ("SAT", "phone"),
    ("FX", "fax"),
    ("BP", "pager"),
    ("Internet", "email"),
    ("X.400", "email"),
    ("MD", "other"),
    ("TDD", "other"),
    ("TTY", "other"),
];

fn lookup<'t>(table: &[(&str, &'t str)], code: Option<&str>) -> Option<&'t str> {
    let code = code?;
    table
        .iter()
        .find(|(hl7, _)| hl7.eq_ignore_ascii_case(code))
        .map(|(_, fhir)| *fhir)
}

pub(super) struct MappedPatient {
    pub(super) id: String,
    pub(super) resource: Value,
}

pub(super) fn map_patient(pid: &Segment<'_>, ctx: &Ctx<'_>) -> Result<MappedPatient, MapError> {
    let id = resource_id(&patient_key(&patient_identifier(pid)?, &ctx.scope));
    let resource = Obj::resource("Patient", &id)
        .list(
            "identifier",
            repetitions(pid, PID_3, |r| Ident::from_cx(r).map(|i| i.to_fhir())),
        )
        .list("name", repetitions(pid, PID_5, human_name))
        .list("telecom", telecoms(pid))
        .text("gender", gender(pid)?)
        .text("birthDate", birth_date(pid)?)
        .list("address", repetitions(pid, PID_11, address))
        .build();
    Ok(MappedPatient { id, resource })
}

fn repetitions<'m>(
    seg: &Segment<'m>,
    field: usize,
    map: impl Fn(&Repetition<'m>) -> Option<Value>,
) -> Vec<Value> {
    let Some(field) = seg.field(field) else {
        return Vec::new();
    };
    field.repetitions().filter_map(|r| map(&r)).collect()
}

/// PID-7. An invalid date is a content error (AE): leaving it out would drop what the sender
/// said without telling them.
fn birth_date(pid: &Segment<'_>) -> Result<Option<String>, MapError> {
    let Some(raw) = pid.field(PID_7).and_then(|f| f.component(1)) else {
        return Ok(None);
    };
    dtm::fhir_date(&raw)
        .map(Some)
        .map_err(|_| MapError::data_type(pid, PID_7, "date of birth"))
}

/// PID-8 through table 0001. A code outside the table is a content error (AE, 103).
fn gender(pid: &Segment<'_>) -> Result<Option<&'static str>, MapError> {
    let Some(sent) = code(pid.text(PID_8)) else {
        return Ok(None);
    };
    match lookup(GENDER_0001, Some(&sent)) {
        Some(fhir) => Ok(Some(fhir)),
        None => Err(MapError::table_value(pid, PID_8, "administrative sex")),
    }
}

/// XPN: family name (FN.1 surname), given name, further given names, suffix, prefix, degree,
/// name type. A name with no name parts is skipped.
fn human_name(xpn: &Repetition<'_>) -> Option<Value> {
    person_name(xpn, 0, 7)
}

/// A person's name laid out as XPN from component `1 + shift` on, its name type in component
/// `type_at`: XCN carries the same parts after its id number (`shift` 1, type in 10).
pub(super) fn person_name(name: &Repetition<'_>, shift: usize, type_at: usize) -> Option<Value> {
    let parts = |components: &[usize]| {
        let values = components
            .iter()
            .filter_map(|&c| name.component(c + shift))
            .map(Value::String);
        values.collect::<Vec<_>>()
    };
    let family = name.subcomponent(1 + shift, 1);
    let (given, prefix, suffix) = (parts(&[2, 3]), parts(&[5]), parts(&[4, 6]));
    if family.is_none() && given.is_empty() && prefix.is_empty() && suffix.is_empty() {
        return None;
    }
    let name_use = code(name.component(type_at));
    Obj::new()
        .text("use", lookup(NAME_USE_0200, name_use.as_deref()))
        .text("family", family)
        .list("given", given)
        .list("prefix", prefix)
        .list("suffix", suffix)
        .build_non_empty()
}

/// XAD: street (SAD.1), other designation, city, state, postal code, country, address type,
/// county.
fn address(xad: &Repetition<'_>) -> Option<Value> {
    let lines = [xad.subcomponent(1, 1), xad.component(2)];
    let lines: Vec<Value> = lines.into_iter().flatten().map(Value::String).collect();
    let has_place =
        !lines.is_empty() || [3, 4, 5, 6, 9].iter().any(|&c| xad.component(c).is_some());
    if !has_place {
        return None;
    }
    let kind = code(xad.component(7));
    let row = ADDRESS_TYPE_0190
        .iter()
        .find(|(hl7, ..)| Some(*hl7) == kind.as_deref());
    Obj::new()
        .text("use", row.and_then(|r| r.1))
        .text("type", row.and_then(|r| r.2))
        .list("line", lines)
        .text("city", xad.component(3))
        .text("district", xad.component(9))
        .text("state", xad.component(4))
        .text("postalCode", xad.component(5))
        .text("country", xad.component(6))
        .build_non_empty()
}

fn telecoms(pid: &Segment<'_>) -> Vec<Value> {
    let mut values = repetitions(pid, PID_13, |r| contact_point(r, "home"));
    values.extend(repetitions(pid, PID_14, |r| contact_point(r, "work")));
    values
}

/// XTN: the number or address, its use (0201), its equipment (0202). Without a known
/// equipment type an email address is `email` and anything else `phone`.
fn contact_point(xtn: &Repetition<'_>, default_use: &str) -> Option<Value> {
    let equipment = code(xtn.component(3));
    let email = xtn.component(4);
    let system = lookup(TELECOM_SYSTEM_0202, equipment.as_deref())
        .or(email.as_ref().map(|_| "email"))
        .unwrap_or("phone");
    let value = match system {
        "email" => email.or_else(|| xtn.component(1)),
        _ => phone_number(xtn),
    }?;
    let use_code = match (equipment.as_deref(), code(xtn.component(2))) {
        (Some("CP"), _) => Some("mobile"),
        (_, Some(hl7)) => lookup(TELECOM_USE_0201, Some(&hl7)),
        (_, None) => Some(default_use),
    };
    let point = Obj::new()
        .text("system", Some(system))
        .text("value", Some(value));
    point.text("use", use_code).build_non_empty()
}

/// XTN-12 unformatted number, else XTN-1, else country, area, local number and extension.
fn phone_number(xtn: &Repetition<'_>) -> Option<String> {
    if let Some(number) = xtn.component(12).or_else(|| xtn.component(1)) {
        return Some(number);
    }
    let country = xtn.component(5).map(|c| format!("+{c}"));
    let parts = [country, xtn.component(6), xtn.component(7)];
    let mut number = parts.into_iter().flatten().collect::<Vec<_>>().join(" ");
    if let Some(extension) = xtn.component(8) {
        number.push_str(&format!(" ext. {extension}"));
    }
    Some(number).filter(|n| !n.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::MapContext;
    use crate::ingest::v2::parse_message;

    const MSH: &str = "MSH|^~\\&|ADT|NORTH|EHR|HOSP|20240101||ADT^A04^ADT_A01|C1|P|2.5.1\r";

    fn patient(pid: &str) -> Result<Value, MapError> {
        let msg = parse_message(format!("{MSH}{pid}").as_bytes()).unwrap();
        let ctx = Ctx::new(&msg, &MapContext::default());
        map_patient(&msg.segment("PID").unwrap(), &ctx).map(|p| p.resource)
    }

    #[test]
    fn every_table_maps_to_fhir_codes() {
        let required = |parent, key| hl7bridge_fhir_codec::required_codes(None, parent, key);
        let genders = required("", "gender").expect("R4 binds gender");
        assert!(GENDER_0001.iter().all(|(_, g)| genders.contains(g)));
        let uses = required("name", "use").expect("R4 binds HumanName.use");
        assert!(NAME_USE_0200.iter().all(|(_, u)| uses.contains(u)));
        assert!(ADDRESS_TYPE_0190
            .iter()
            .all(|(_, u, t)| u.is_some() != t.is_some()));
        assert!(TELECOM_USE_0201
            .iter()
            .all(|(_, u)| ["home", "work", "mobile"].contains(u)));
        let systems = ["phone", "fax", "email", "pager", "url", "sms", "other"];
        assert!(TELECOM_SYSTEM_0202.iter().all(|(_, s)| systems.contains(s)));
    }

    #[test]
    fn demographics_are_mapped() {
        let p = patient(
            "PID|1||MRN-4411^^^NORTH&2.16.840.1.113883.19.5&ISO^MR~998-11^^^SSA^SS||\
             Testperson^Alma^Beatrix^Jr^Dr^^L~^^^^^^S|Maiden|19750312|F|||\
             12 Elm Way^Apt 3^Springfield^IL^62701^USA^H||^PRN^PH^^1^217^5550142~^NET^Internet^alma@example.org\
             |^WPN^PH^^^217^5550199^12",
        )
        .unwrap();
        assert_eq!(p["resourceType"], "Patient");
        assert_eq!(
            p["identifier"][0]["system"],
            "urn:oid:2.16.840.1.113883.19.5"
        );
        assert_eq!(p["identifier"][0]["type"]["coding"][0]["code"], "MR");
        assert_eq!(
            p["identifier"][1]["system"],
            "urn:hl7bridge:v2:authority:SSA"
        );
        assert_eq!(
            p["name"],
            json!([{"use": "official", "family": "Testperson", "given": ["Alma", "Beatrix"],
                    "prefix": ["Dr"], "suffix": ["Jr"]}])
        );
        assert_eq!(p["gender"], "female");
        assert_eq!(p["birthDate"], "1975-03-12");
        assert_eq!(
            p["address"][0],
            json!({"use": "home", "line": ["12 Elm Way", "Apt 3"], "city": "Springfield",
                   "state": "IL", "postalCode": "62701", "country": "USA"})
        );
        assert_eq!(
            p["telecom"],
            json!([
                {"system": "phone", "value": "+1 217 5550142", "use": "home"},
                {"system": "email", "value": "alma@example.org"},
                {"system": "phone", "value": "217 5550199 ext. 12", "use": "work"}
            ])
        );
    }

    #[test]
    fn family_name_is_the_first_surname_subcomponent() {
        let p = patient("PID|1||M1||van Veld-de Boer&van&Veld&de&Boer^Anna").unwrap();
        assert_eq!(p["name"][0]["family"], "van Veld-de Boer");
    }

    #[test]
    fn empty_names_and_nulls_are_left_out() {
        let p = patient("PID|1||M1||^^^^^^~^^^^^^S|||\"\"|||\"\"").unwrap();
        assert!(p.get("name").is_none());
        assert!(p.get("gender").is_none());
        assert!(p.get("address").is_none());
    }

    #[test]
    fn an_invalid_birth_date_is_a_content_error_naming_pid_7() {
        let err = patient("PID|1||M1||Doe^Jo||196203520|M").unwrap_err();
        assert_eq!(
            (err.code, err.location),
            (102, Some(("PID".to_owned(), 1, 7)))
        );
        assert!(!err.message.contains("1962"));
    }

    #[test]
    fn a_gender_outside_table_0001_is_a_content_error_naming_pid_8() {
        let err = patient("PID|1||M1||Doe^Jo||19620305|M-").unwrap_err();
        assert_eq!(
            (err.code, err.location),
            (103, Some(("PID".to_owned(), 1, 8)))
        );
    }

    #[test]
    fn patient_without_pid_3_is_error_101() {
        let err = patient("PID|1||||Doe^Jo").unwrap_err();
        assert_eq!(err.code, 101);
        assert_eq!(err.location, Some(("PID".to_owned(), 1, 3)));
        assert!(!err.message.contains("Doe"));
    }

    #[test]
    fn patient_id_comes_from_the_mr_identifier() {
        let a = patient("PID|1||X-9^^^OTHER~M1^^^HOSP^MR").unwrap();
        let b = patient("PID|1||M1^^^HOSP^MR").unwrap();
        assert_eq!(a["id"], b["id"]);
    }
}
