//! RXA, with its ORC and RXR, to an Immunization, as the v2-to-FHIR guide maps them: status
//! (RXA-21 `D` deleted, else RXA-20 completion status), vaccine (RXA-5, CVX codes under
//! `http://hl7.org/fhir/sid/cvx`), time given (RXA-3), recorded (ORC-9, else RXA-22), dose
//! (RXA-6 and RXA-7), lot number and expiry (RXA-15, RXA-16), refusal reason (RXA-18),
//! indication (RXA-19), route and site (RXR-1, RXR-2), identifiers (ORC-2 placer, ORC-3
//! filler). Providers (RXA-10, ORC-12), the manufacturer (RXA-17) and the location (RXA-27)
//! are not mapped: no Practitioner, Organization or Location is made.

use serde_json::Value;

use super::datatypes::{all_cwe, code, decimal, first_cwe, Ident, Obj};
use super::ids::{cwe_key_part, immunization_fallback_key, order_key, KeyCounter, OrderNumber};
use super::observation::{quantity, unit_from};
use super::{Ctx, MapError, Subject};
use crate::ingest::v2::{dtm, Segment};

const ORC_2: usize = 2;
const ORC_3: usize = 3;
const ORC_9: usize = 9;
const RXA_3: usize = 3;
const RXA_5: usize = 5;
const RXA_6: usize = 6;
const RXA_7: usize = 7;
const RXA_15: usize = 15;
const RXA_16: usize = 16;
const RXA_18: usize = 18;
const RXA_19: usize = 19;
const RXA_20: usize = 20;
const RXA_21: usize = 21;
const RXA_22: usize = 22;
const RXR_1: usize = 1;
const RXR_2: usize = 2;

/// HL7 table 0322 (completion status) to FHIR ImmunizationStatusCodes, as the guide's
/// CompletionStatus map has it.
const COMPLETION_STATUS_0322: &[(&str, &str)] = &[
    ("CP", "completed"),
    ("PA", "completed"),
    ("RE", "not-done"),
    ("NA", "not-done"),
];

/// RXA-21 (table 0206) action code for a record the sender deleted.
const ACTION_DELETE: &str = "D";

/// RXA-6 for "amount unknown" in the CDC immunization guide: not a dose of 999.
const UNKNOWN_AMOUNT: &str = "999";

/// The key of the Immunization of an RXA: ORC-3, else ORC-2, else the patient, vaccine and
/// time given.
pub(super) fn immunization_key(
    orc: Option<&Segment<'_>>,
    rxa: &Segment<'_>,
    ctx: &Ctx<'_>,
    patient_id: &str,
    seen: &mut KeyCounter,
) -> Result<String, MapError> {
    let number = |field| orc.and_then(|orc| Ident::ei_at(orc, field));
    let order = match (number(ORC_3), number(ORC_2)) {
        (Some(filler), _) => Some(OrderNumber::Filler(filler)),
        (None, Some(placer)) => Some(OrderNumber::Placer(placer)),
        (None, None) => None,
    };
    if let Some(order) = order {
        return Ok(order_key("Immunization", &order, &ctx.scope, seen));
    }
    let vaccine = rxa.field(RXA_5).and_then(|f| f.repetition(1));
    let (code, system) = vaccine
        .and_then(|r| cwe_key_part(&r))
        .ok_or_else(|| MapError::required(rxa, RXA_5, "administered code"))?;
    let given = occurrence(rxa, ctx)?;
    Ok(immunization_fallback_key(
        patient_id,
        (&system, &code),
        &given,
        seen,
    ))
}

/// The segments of one immunization.
pub(super) struct ImmunizationSegments<'a, 'm> {
    pub(super) orc: Option<&'a Segment<'m>>,
    pub(super) rxa: &'a Segment<'m>,
    pub(super) rxr: Option<&'a Segment<'m>>,
}

pub(super) fn map_immunization(
    segments: &ImmunizationSegments<'_, '_>,
    id: &str,
    ctx: &Ctx<'_>,
    subject: &Subject,
) -> Result<Value, MapError> {
    let (orc, rxa, rxr) = (segments.orc, segments.rxa, segments.rxr);
    let identifiers = [
        orc.and_then(|orc| Ident::ei_at(orc, ORC_2))
            .map(|i| i.with_type("PLAC")),
        orc.and_then(|orc| Ident::ei_at(orc, ORC_3))
            .map(|i| i.with_type("FILL")),
    ];
    let identifiers = identifiers.into_iter().flatten().map(|i| i.to_fhir());
    let recorded = match orc.map(|orc| ctx.date_time(orc, ORC_9, "date/time of transaction")) {
        Some(Ok(Some(time))) => Some(time),
        Some(Err(err)) => return Err(err),
        _ => ctx.date_time(rxa, RXA_22, "system entry date/time")?,
    };
    let immunization = Obj::resource("Immunization", id)
        .list("identifier", identifiers.collect())
        .text("status", Some(status(rxa)?))
        .value("statusReason", first_cwe(rxa, RXA_18))
        .value("vaccineCode", Some(vaccine_code(rxa)?))
        .value("patient", Some(subject.patient_reference()))
        .value("encounter", subject.encounter_reference())
        .text("occurrenceDateTime", Some(occurrence(rxa, ctx)?))
        .text("recorded", recorded)
        .text("lotNumber", rxa.field(RXA_15).and_then(|f| f.component(1)))
        .text("expirationDate", expiration(rxa)?)
        .value("site", rxr.and_then(|rxr| first_cwe(rxr, RXR_2)))
        .value("route", rxr.and_then(|rxr| first_cwe(rxr, RXR_1)))
        .value("doseQuantity", dose(rxa)?)
        .list("reasonCode", all_cwe(rxa, RXA_19));
    Ok(immunization.build())
}

/// RXA-21 `D`: entered in error; else RXA-20 through table 0322, `completed` when absent. A
/// code outside the table is error 103.
fn status(rxa: &Segment<'_>) -> Result<&'static str, MapError> {
    let action = code(rxa.text(RXA_21)).map(|a| a.to_ascii_uppercase());
    if action.as_deref() == Some(ACTION_DELETE) {
        return Ok("entered-in-error");
    }
    let Some(sent) = code(rxa.text(RXA_20)) else {
        return Ok("completed");
    };
    let row = COMPLETION_STATUS_0322
        .iter()
        .find(|(hl7, _)| hl7.eq_ignore_ascii_case(&sent));
    row.map(|(_, fhir)| *fhir)
        .ok_or_else(|| MapError::table_value(rxa, RXA_20, "completion status"))
}

fn vaccine_code(rxa: &Segment<'_>) -> Result<Value, MapError> {
    first_cwe(rxa, RXA_5).ok_or_else(|| MapError::required(rxa, RXA_5, "administered code"))
}

/// RXA-3, required: an immunization without a time given is error 101.
fn occurrence(rxa: &Segment<'_>, ctx: &Ctx<'_>) -> Result<String, MapError> {
    let what = "date/time start of administration";
    ctx.date_time(rxa, RXA_3, what)?
        .ok_or_else(|| MapError::required(rxa, RXA_3, what))
}

fn expiration(rxa: &Segment<'_>) -> Result<Option<String>, MapError> {
    let Some(raw) = rxa.field(RXA_16).and_then(|f| f.component(1)) else {
        return Ok(None);
    };
    dtm::fhir_date(&raw)
        .map(Some)
        .map_err(|_| MapError::data_type(rxa, RXA_16, "substance expiration date"))
}

/// RXA-6 with the units of RXA-7. An amount that is not a number is error 102.
fn dose(rxa: &Segment<'_>) -> Result<Option<Value>, MapError> {
    let amount = rxa.text(RXA_6).filter(|a| a.trim() != UNKNOWN_AMOUNT);
    let Some(amount) = amount else {
        return Ok(None);
    };
    let value =
        decimal(&amount).ok_or_else(|| MapError::data_type(rxa, RXA_6, "administered amount"))?;
    let units = rxa.field(RXA_7).and_then(|f| f.repetition(1));
    let unit = unit_from(|n| units.as_ref().and_then(|r| r.component(n)));
    Ok(Some(quantity(value, None, &unit)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::tests::{test_subject, with_message};

    const MSH: &str = "MSH|^~\\&|EHR|NORTH|IIS|STATE|2024||VXU^V04^VXU_V04|C1|P|2.5.1\r";

    fn immunization(segments: &str) -> Result<Value, MapError> {
        with_message(MSH, segments, |msg, ctx| {
            let (orc, rxr) = (msg.segment("ORC"), msg.segment("RXR"));
            let rxa = msg.segment("RXA").unwrap();
            let segments = ImmunizationSegments {
                orc: orc.as_ref(),
                rxa: &rxa,
                rxr: rxr.as_ref(),
            };
            let mut keys = KeyCounter::default();
            let key = immunization_key(orc.as_ref(), &rxa, ctx, "p-1", &mut keys)?;
            map_immunization(&segments, &key, ctx, &test_subject())
        })
    }

    #[test]
    fn completion_table_uses_fhir_codes() {
        let statuses = ["completed", "entered-in-error", "not-done"];
        assert!(COMPLETION_STATUS_0322
            .iter()
            .all(|(_, s)| statuses.contains(s)));
    }

    #[test]
    fn an_administered_vaccine_is_mapped() {
        let gap = |from: usize, to: usize| "|".repeat(to - from);
        let i = immunization(&format!(
            "ORC|RE|PL-5^EHR|IZ-5^EHR||||||20240701\r\
             RXA|0|1|20240630||140^Influenza, seasonal^CVX|0.5|mL^milliliter^UCUM\
             {}LOT-77|20250101{}CP|A\r\
             RXR|C28161^Intramuscular^NCIT|LD^Left Deltoid^HL70163",
            gap(RXA_7, RXA_15),
            gap(RXA_16, RXA_20),
        ))
        .unwrap();
        assert_eq!(i["status"], "completed");
        assert_eq!(
            i["vaccineCode"]["coding"][0],
            json!({"system": "http://hl7.org/fhir/sid/cvx", "code": "140",
                   "display": "Influenza, seasonal"})
        );
        assert_eq!(i["occurrenceDateTime"], "2024-06-30");
        assert_eq!(i["recorded"], "2024-07-01");
        assert_eq!(i["lotNumber"], "LOT-77");
        assert_eq!(i["expirationDate"], "2025-01-01");
        assert_eq!(i["doseQuantity"]["code"], "mL");
        assert_eq!(i["doseQuantity"]["value"].to_string(), "0.5");
        assert_eq!(i["route"]["coding"][0]["code"], "C28161");
        assert_eq!(i["site"]["coding"][0]["code"], "LD");
        assert_eq!(i["identifier"][1]["type"]["coding"][0]["code"], "FILL");
        assert_eq!(i["patient"], json!({"reference": "Patient/p-1"}));
    }

    #[test]
    fn status_follows_rxa_20_and_21() {
        let gap = "|".repeat(RXA_20 - RXA_5);
        let status = |tail: &str| {
            immunization(&format!("RXA|0|1|20240630||140^Flu^CVX{gap}{tail}"))
                .map(|i| i["status"].clone())
        };
        assert_eq!(status("RE").unwrap(), "not-done");
        assert_eq!(status("NA").unwrap(), "not-done");
        assert_eq!(status("PA").unwrap(), "completed");
        assert_eq!(status("").unwrap(), "completed");
        assert_eq!(status("CP|D").unwrap(), "entered-in-error");
        let err = status("XX").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (103, 20));
    }

    #[test]
    fn without_order_numbers_the_vaccine_and_time_make_the_key() {
        let a = immunization("RXA|0|1|20240630||140^Flu^CVX").unwrap();
        let again = immunization("RXA|0|1|20240630||140^Flu^CVX|0.5").unwrap();
        let other_day = immunization("RXA|0|1|20240701||140^Flu^CVX").unwrap();
        assert_eq!(a["id"], again["id"]);
        assert_ne!(a["id"], other_day["id"]);
        let err = immunization("RXA|0|1|||140^Flu^CVX").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (101, 3));
        let err = immunization("ORC|RE||IZ-1\rRXA|0|1|20240630").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (101, 5));
    }

    #[test]
    fn an_unknown_amount_is_no_dose() {
        let i = immunization("RXA|0|1|20240630||140^Flu^CVX|999").unwrap();
        assert!(i.get("doseQuantity").is_none());
    }

    #[test]
    fn a_dose_that_is_not_a_number_is_error_102() {
        let err = immunization("RXA|0|1|20240630||140^Flu^CVX|half").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (102, 6));
    }
}
