//! The search parameters this server indexes: a subset of the R4 definitions, as element paths.
//! The same table drives extraction at write time and query building at search time, so a
//! parameter is searchable exactly when it is indexed.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `token_index`: codes, codings, identifiers, plain `code` elements.
    Token,
    /// `date_index`: date, dateTime, instant and Period elements.
    Date,
    /// `string_index`: strings and HumanName parts.
    Str,
    /// `resource_ref`: the paths' references; `target` limits the referenced type.
    Reference { target: Option<&'static str> },
}

pub struct SearchParam {
    pub name: &'static str,
    pub kind: Kind,
    /// Element paths from the resource root; choice types spelled out.
    pub paths: &'static [&'static str],
}

const fn p(name: &'static str, kind: Kind, paths: &'static [&'static str]) -> SearchParam {
    SearchParam { name, kind, paths }
}

const TOKEN: Kind = Kind::Token;
const DATE: Kind = Kind::Date;
const STR: Kind = Kind::Str;
const PATIENT: Kind = Kind::Reference {
    target: Some("Patient"),
};
const ANY: Kind = Kind::Reference { target: None };
const ENCOUNTER: Kind = Kind::Reference {
    target: Some("Encounter"),
};
const ORGANIZATION: Kind = Kind::Reference {
    target: Some("Organization"),
};
const OBSERVATION: Kind = Kind::Reference {
    target: Some("Observation"),
};
const LOCATION: Kind = Kind::Reference {
    target: Some("Location"),
};
const MEDICATION: Kind = Kind::Reference {
    target: Some("Medication"),
};
const PRACTITIONER: Kind = Kind::Reference {
    target: Some("Practitioner"),
};

const CLINICAL_DATE: &[&str] = &["effectiveDateTime", "effectivePeriod"];

/// (resource type, its parameters). Every type also has `_id`, `_lastUpdated` and (through
/// the identifier index) `identifier`.
const PARAMS: &[(&str, &[SearchParam])] = &[
    (
        "Patient",
        &[
            p("name", STR, &["name"]),
            p("family", STR, &["name.family"]),
            p("given", STR, &["name.given"]),
            p("birthdate", DATE, &["birthDate"]),
            p("gender", TOKEN, &["gender"]),
            p("active", TOKEN, &["active"]),
            p("general-practitioner", ANY, &["generalPractitioner"]),
            p("organization", ORGANIZATION, &["managingOrganization"]),
        ],
    ),
    (
        "Observation",
        &[
            p("code", TOKEN, &["code"]),
            p("category", TOKEN, &["category"]),
            p("status", TOKEN, &["status"]),
            p(
                "date",
                DATE,
                &["effectiveDateTime", "effectivePeriod", "effectiveInstant"],
            ),
            p("patient", PATIENT, &["subject"]),
            p("subject", ANY, &["subject"]),
            p("encounter", ENCOUNTER, &["encounter"]),
            p("performer", ANY, &["performer"]),
            p("has-member", ANY, &["hasMember"]),
        ],
    ),
    (
        "DiagnosticReport",
        &[
            p("code", TOKEN, &["code"]),
            p("category", TOKEN, &["category"]),
            p("status", TOKEN, &["status"]),
            p("date", DATE, CLINICAL_DATE),
            p("issued", DATE, &["issued"]),
            p("result", OBSERVATION, &["result"]),
            p("performer", ANY, &["performer"]),
            p("patient", PATIENT, &["subject"]),
            p("subject", ANY, &["subject"]),
            p("encounter", ENCOUNTER, &["encounter"]),
        ],
    ),
    (
        "Encounter",
        &[
            p("status", TOKEN, &["status"]),
            p("class", TOKEN, &["class"]),
            p("type", TOKEN, &["type"]),
            p("date", DATE, &["period"]),
            p("patient", PATIENT, &["subject"]),
            p("subject", ANY, &["subject"]),
            p("participant", ANY, &["participant.individual"]),
            p("location", LOCATION, &["location.location"]),
            p("service-provider", ORGANIZATION, &["serviceProvider"]),
        ],
    ),
    (
        "Condition",
        &[
            p("code", TOKEN, &["code"]),
            p("category", TOKEN, &["category"]),
            p("clinical-status", TOKEN, &["clinicalStatus"]),
            p("onset-date", DATE, &["onsetDateTime", "onsetPeriod"]),
            p("patient", PATIENT, &["subject"]),
            p("subject", ANY, &["subject"]),
            p("encounter", ENCOUNTER, &["encounter"]),
        ],
    ),
    (
        "Procedure",
        &[
            p("code", TOKEN, &["code"]),
            p("category", TOKEN, &["category"]),
            p("status", TOKEN, &["status"]),
            p("date", DATE, &["performedDateTime", "performedPeriod"]),
            p("patient", PATIENT, &["subject"]),
            p("subject", ANY, &["subject"]),
            p("encounter", ENCOUNTER, &["encounter"]),
        ],
    ),
    (
        "MedicationRequest",
        &[
            p("code", TOKEN, &["medicationCodeableConcept"]),
            p("category", TOKEN, &["category"]),
            p("status", TOKEN, &["status"]),
            p("authoredon", DATE, &["authoredOn"]),
            p("medication", MEDICATION, &["medicationReference"]),
            p("requester", ANY, &["requester"]),
            p("patient", PATIENT, &["subject"]),
            p("subject", ANY, &["subject"]),
            p("encounter", ENCOUNTER, &["encounter"]),
        ],
    ),
    (
        "Immunization",
        &[
            p("vaccine-code", TOKEN, &["vaccineCode"]),
            p("status", TOKEN, &["status"]),
            p("date", DATE, &["occurrenceDateTime"]),
            p("patient", PATIENT, &["patient"]),
        ],
    ),
    (
        "Appointment",
        &[
            p("status", TOKEN, &["status"]),
            p("date", DATE, &["start"]),
            p("service-type", TOKEN, &["serviceType"]),
            p("appointment-type", TOKEN, &["appointmentType"]),
            p("reason-code", TOKEN, &["reasonCode"]),
            p("based-on", ANY, &["basedOn"]),
            p("actor", ANY, &["participant.actor"]),
            p("patient", PATIENT, &["participant.actor"]),
            p("practitioner", PRACTITIONER, &["participant.actor"]),
            p("location", LOCATION, &["participant.actor"]),
        ],
    ),
    (
        "Provenance",
        &[
            p("recorded", DATE, &["recorded"]),
            p("target", ANY, &["target"]),
            p("patient", PATIENT, &["target"]),
            p("agent", ANY, &["agent.who"]),
        ],
    ),
    (
        "AllergyIntolerance",
        &[
            p("code", TOKEN, &["code"]),
            p("clinical-status", TOKEN, &["clinicalStatus"]),
            p("date", DATE, &["recordedDate"]),
            p("patient", PATIENT, &["patient"]),
        ],
    ),
];

/// The parameters of `resource_type`, without the ones every type has.
pub fn params_of(resource_type: &str) -> &'static [SearchParam] {
    PARAMS
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map_or(&[], |(_, params)| *params)
}

/// Every (resource type, parameter) of the table.
pub fn all() -> impl Iterator<Item = (&'static str, &'static SearchParam)> {
    PARAMS
        .iter()
        .flat_map(|(t, params)| params.iter().map(move |p| (*t, p)))
}

/// The code system of a token parameter on a `code` element, which R4 binds to one value set
/// of one system (required binding); the resource does not write it.
const IMPLIED_SYSTEMS: &[(&str, &str, &str)] = &[
    (
        "Patient",
        "gender",
        "http://hl7.org/fhir/administrative-gender",
    ),
    (
        "Observation",
        "status",
        "http://hl7.org/fhir/observation-status",
    ),
    (
        "DiagnosticReport",
        "status",
        "http://hl7.org/fhir/diagnostic-report-status",
    ),
    (
        "Encounter",
        "status",
        "http://hl7.org/fhir/encounter-status",
    ),
    ("Procedure", "status", "http://hl7.org/fhir/event-status"),
    (
        "MedicationRequest",
        "status",
        "http://hl7.org/fhir/CodeSystem/medicationrequest-status",
    ),
    ("Immunization", "status", "http://hl7.org/fhir/event-status"),
    (
        "Appointment",
        "status",
        "http://hl7.org/fhir/appointmentstatus",
    ),
];

/// The system [`IMPLIED_SYSTEMS`] gives a type's token parameter, if any.
pub fn implied_system(resource_type: &str, name: &str) -> Option<&'static str> {
    IMPLIED_SYSTEMS
        .iter()
        .find(|(t, n, _)| *t == resource_type && *n == name)
        .map(|(_, _, system)| *system)
}

pub fn find(resource_type: &str, name: &str) -> Option<&'static SearchParam> {
    params_of(resource_type).iter().find(|p| p.name == name)
}

/// Every value at `path` (dotted, arrays flattened at each step).
pub fn values_at<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![root];
    for step in path.split('.') {
        let mut next = Vec::new();
        for value in current {
            match value.get(step) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(v) => next.push(v),
                None => {}
            }
        }
        current = next;
    }
    current
}

/// (system, code) pairs of a token element: a plain code or boolean, a Coding, a
/// CodeableConcept or an Identifier.
pub fn tokens_of(value: &Value) -> Vec<(String, String)> {
    let pair = |v: &Value, code_key: &str| {
        let code = v.get(code_key).and_then(Value::as_str)?;
        let system = v.get("system").and_then(Value::as_str).unwrap_or("");
        Some((system.to_string(), code.to_string()))
    };
    match value {
        Value::String(code) => vec![(String::new(), code.clone())],
        Value::Bool(b) => vec![(String::new(), b.to_string())],
        Value::Object(map) if map.contains_key("coding") => values_at(value, "coding")
            .into_iter()
            .filter_map(|c| pair(c, "code"))
            .collect(),
        Value::Object(map) if map.contains_key("code") => pair(value, "code").into_iter().collect(),
        Value::Object(_) => pair(value, "value").into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The text of a string element, or the parts of a HumanName.
pub fn strings_of(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Object(_) => ["family", "given", "text", "prefix", "suffix"]
            .iter()
            .flat_map(|part| values_at(value, part))
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The range a date element covers, `[low, high)` in microseconds: a date or dateTime as
/// written (a year covers the year), or a Period (an open end is unbounded).
pub fn range_of(value: &Value) -> Option<(i64, i64)> {
    match value {
        Value::String(text) => date_range(text),
        Value::Object(period) => {
            let start = period.get("start").and_then(Value::as_str);
            let end = period.get("end").and_then(Value::as_str);
            if start.is_none() && end.is_none() {
                return None;
            }
            let low = match start {
                Some(s) => date_range(s)?.0,
                None => i64::MIN,
            };
            let high = match end {
                Some(e) => date_range(e)?.1,
                None => i64::MAX,
            };
            Some((low, high))
        }
        _ => None,
    }
}

/// `[low, high)` for an R4 date, dateTime or instant (`2024`, `2024-03`, `2024-03-05`,
/// `2024-03-05T10:00`, seconds and fractions optional, `Z` or `±hh:mm`; without a zone, UTC).
pub fn date_range(text: &str) -> Option<(i64, i64)> {
    use chrono::{Months, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
    let text = text.trim();
    // FHIR years run from 0001 to 9999, always four digits.
    let year = text.get(..4).unwrap_or("");
    if !year.bytes().all(|b| b.is_ascii_digit()) || year == "0000" {
        return None;
    }
    let to_us = |dt: NaiveDateTime| Utc.from_utc_datetime(&dt).timestamp_micros();
    let day_start = |d: NaiveDate| d.and_time(NaiveTime::MIN);
    match text.len() {
        4 => {
            let year: i32 = text.parse().ok()?;
            let start = NaiveDate::from_ymd_opt(year, 1, 1)?;
            let end = NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?;
            Some((to_us(day_start(start)), to_us(day_start(end))))
        }
        7 => {
            let start = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok()?;
            let end = start.checked_add_months(Months::new(1))?;
            Some((to_us(day_start(start)), to_us(day_start(end))))
        }
        10 => {
            let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            let next = day.succ_opt()?;
            Some((to_us(day_start(day)), to_us(day_start(next))))
        }
        _ => {
            let (local, offset) = split_zone(text)?;
            let (stamp, precision_us) = parse_local(local)?;
            let at = to_us(stamp) - offset;
            Some((at, at + precision_us))
        }
    }
}

/// The text before its zone, and the zone's offset in microseconds (0 when absent).
fn split_zone(text: &str) -> Option<(&str, i64)> {
    if let Some(local) = text.strip_suffix('Z') {
        return Some((local, 0));
    }
    let time_start = text.find('T')?;
    match text[time_start..].rfind(['+', '-']) {
        Some(i) => {
            let at = time_start + i;
            let zone = &text[at..];
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':')?;
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            // R4's offsets run from -14:00 to +14:00.
            if h > 14 || m > 59 || (h == 14 && m > 0) {
                return None;
            }
            Some((&text[..at], sign * (h * 3600 + m * 60) * 1_000_000))
        }
        None => Some((text, 0)),
    }
}

/// A local dateTime and how long its precision lasts (a minute, a second, a fraction).
fn parse_local(text: &str) -> Option<(chrono::NaiveDateTime, i64)> {
    use chrono::NaiveDateTime;
    if let Ok(dt) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M") {
        return Some((dt, 60_000_000));
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S") {
        return Some((dt, 1_000_000));
    }
    let dt = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    let digits = text.rsplit_once('.').map_or(0, |(_, f)| f.len()).min(6) as u32;
    Some((dt, 10i64.pow(6 - digits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partial_dates_cover_their_whole_period() {
        let (low, high) = date_range("2024").unwrap();
        assert_eq!(date_range("2024-01-01").unwrap().0, low);
        assert_eq!(date_range("2025-01-01").unwrap().0, high);
        let (low, high) = date_range("2024-02").unwrap();
        assert_eq!(high - low, 29 * 86_400_000_000, "a leap February");
        let (low, high) = date_range("2024-03-05T10:00:00+01:00").unwrap();
        assert_eq!(date_range("2024-03-05T09:00:00Z").unwrap().0, low);
        assert_eq!(high - low, 1_000_000);
        assert!(date_range("2024-13").is_none());
        assert!(date_range("yesterday").is_none());
    }

    #[test]
    fn tokens_come_from_codes_codings_and_plain_codes() {
        let concept = json!({"coding": [{"system": "http://loinc.org", "code": "2345-7"}]});
        assert_eq!(
            tokens_of(&concept),
            vec![("http://loinc.org".to_string(), "2345-7".to_string())]
        );
        assert_eq!(
            tokens_of(&json!("final")),
            vec![(String::new(), "final".into())]
        );
    }

    #[test]
    fn a_period_without_an_end_is_open() {
        let (low, high) = range_of(&json!({"start": "2024-01-01"})).unwrap();
        assert_eq!(low, date_range("2024-01-01").unwrap().0);
        assert_eq!(high, i64::MAX);
    }
}
