//! ORC, with its TQ1, OBR and NTE, to a ServiceRequest: status (ORC-5, else ORC-1), intent
//! (OBR-11), identifiers (placer and filler order numbers, ORC-4 as the requisition),
//! priority (TQ1-9, else ORC-7.6, OBR-27.6, OBR-5), code (OBR-4), requested time (OBR-6),
//! authoredOn (ORC-9 of a new order), reasons (OBR-31) and notes, as the v2-to-FHIR guide maps
//! them. Ordering providers (ORC-12, OBR-16) are not mapped: no Practitioner is made.

use serde_json::Value;

use super::datatypes::{all_cwe, code, first_cwe, reference, Ident, Obj};
use super::diagnostic_report::order_ident;
use super::ids::{order_key, KeyCounter, OrderNumber};
use super::observation::add_note;
use super::{Ctx, MapError, Subject};
use crate::ingest::v2::Segment;

const ORC_1: usize = 1;
const ORC_2: usize = 2;
const ORC_3: usize = 3;
const ORC_4: usize = 4;
const ORC_5: usize = 5;
const ORC_7: usize = 7;
const ORC_9: usize = 9;
const OBR_2: usize = 2;
const OBR_3: usize = 3;
const OBR_4: usize = 4;
const OBR_5: usize = 5;
const OBR_6: usize = 6;
const OBR_11: usize = 11;
const OBR_27: usize = 27;
const OBR_31: usize = 31;
const TQ1_9: usize = 9;
/// TQ-6, the priority component of ORC-7 and OBR-27.
const TQ_6: usize = 6;

/// HL7 table 0119 (order control) to FHIR RequestStatus, as the v2-to-FHIR guide's
/// OrderControlCode[ServiceRequest.status] map has it: a cancel *request* (CA) leaves the order
/// active until the filler confirms it (CR). `None`: a code of the table that says nothing of
/// the status, which is then `unknown`.
const ORDER_CONTROL_0119: &[(&str, Option<&str>)] = &[
    ("AF", Some("active")),
    ("CA", Some("active")),
    ("CH", None),
    ("CN", None),
    ("CP", None),
    ("CR", Some("revoked")),
    ("DC", Some("revoked")),
    ("DE", None),
    ("DF", Some("revoked")),
    ("DR", Some("revoked")),
    ("FU", Some("completed")),
    ("HD", Some("active")),
    ("HR", Some("on-hold")),
    ("LI", None),
    ("MC", None),
    ("NA", None),
    ("NW", Some("active")),
    ("OC", Some("revoked")),
    ("OD", Some("revoked")),
    ("OE", None),
    ("OF", None),
    ("OH", Some("on-hold")),
    ("OK", Some("active")),
    ("OP", None),
    ("OR", None),
    ("PA", None),
    ("PR", Some("active")),
    ("PY", Some("active")),
    ("RE", None),
    ("RF", None),
    ("RL", Some("active")),
    ("RO", Some("active")),
    ("RP", None),
    ("RQ", Some("active")),
    ("RR", None),
    ("RU", None),
    ("SC", None),
    ("SN", None),
    ("SR", None),
    ("SS", None),
    ("UA", None),
    ("UC", None),
    ("UD", None),
    ("UF", None),
    ("UH", None),
    ("UM", None),
    ("UN", None),
    ("UR", None),
    ("UX", None),
    ("XO", None),
    ("XR", None),
    ("XX", None),
];

/// HL7 table 0038 (order status) to FHIR RequestStatus, as the guide's OrderStatus map has it;
/// `A` (some results available) has no status there.
const ORDER_STATUS_0038: &[(&str, Option<&str>)] = &[
    ("A", None),
    ("CA", Some("revoked")),
    ("CM", Some("completed")),
    ("DC", Some("revoked")),
    ("ER", Some("entered-in-error")),
    ("HD", Some("on-hold")),
    ("IP", Some("active")),
    ("RP", Some("revoked")),
    ("SC", Some("active")),
];

/// HL7 tables 0485 (extended priority) and 0027 (priority) to FHIR RequestPriority, as the
/// guide's Priority map has it. The timing-critical codes `TS<n>`, `TM<n>`, ... are matched by
/// [`is_timed_priority`]; they, like `P`, `C`, `T` and `PRN`, have no FHIR priority.
const PRIORITY_0485: &[(&str, Option<&str>)] = &[
    ("S", Some("stat")),
    ("A", Some("asap")),
    ("R", Some("routine")),
    ("P", None),
    ("C", None),
    ("T", None),
    ("PRN", None),
];

/// A status or priority code's row: `Some(None)` for a code of the table without a FHIR code.
fn row(table: &[(&str, Option<&'static str>)], code: &str) -> Option<Option<&'static str>> {
    let code = code.to_ascii_uppercase();
    table
        .iter()
        .find(|(hl7, _)| *hl7 == code)
        .map(|(_, fhir)| *fhir)
}

/// `TS<n>`, `TM<n>`, `TH<n>`, `TD<n>`, `TW<n>`, `TL<n>`: timing critical within n units.
fn is_timed_priority(code: &str) -> bool {
    let code = code.to_ascii_uppercase();
    let Some(rest) = code.strip_prefix('T') else {
        return false;
    };
    let mut chars = rest.chars();
    let unit_ok = chars.next().is_some_and(|u| "SMHDWL".contains(u));
    let digits = chars.as_str();
    unit_ok && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The segments of one order group.
#[derive(Clone, Copy)]
pub(super) struct OrderSegments<'m> {
    pub(super) orc: Option<Segment<'m>>,
    pub(super) tq1: Option<Segment<'m>>,
    pub(super) obr: Option<Segment<'m>>,
}

impl<'m> OrderSegments<'m> {
    /// The key of the order's ServiceRequest: its placer order number, else its filler's.
    pub(super) fn key(&self, ctx: &Ctx<'_>, seen: &mut KeyCounter) -> Result<String, MapError> {
        let (placer, filler) = self.numbers();
        let order = match (placer, filler) {
            (Some(placer), _) => OrderNumber::Placer(placer),
            (None, Some(filler)) => OrderNumber::Filler(filler),
            (None, None) => return Err(self.missing_number()),
        };
        Ok(order_key("ServiceRequest", &order, &ctx.scope, seen))
    }

    fn numbers(&self) -> (Option<Ident>, Option<Ident>) {
        match (&self.obr, &self.orc) {
            (Some(obr), orc) => (
                order_ident(obr, orc.as_ref(), OBR_2, ORC_2),
                order_ident(obr, orc.as_ref(), OBR_3, ORC_3),
            ),
            (None, Some(orc)) => (Ident::ei_at(orc, ORC_2), Ident::ei_at(orc, ORC_3)),
            (None, None) => (None, None),
        }
    }

    fn missing_number(&self) -> MapError {
        match (&self.orc, &self.obr) {
            (Some(orc), _) => MapError::required(orc, ORC_2, "placer order number"),
            (None, Some(obr)) => MapError::required(obr, OBR_2, "placer order number"),
            (None, None) => MapError::missing_segment("ORC"),
        }
    }
}

/// What the ServiceRequest refers to besides its patient and visit.
#[derive(Default)]
pub(super) struct OrderLinks {
    pub(super) supporting_info: Vec<String>,
    pub(super) specimens: Vec<String>,
}

pub(super) fn map_service_request(
    order: &OrderSegments<'_>,
    id: &str,
    ctx: &Ctx<'_>,
    subject: &Subject,
    links: OrderLinks,
    notes: &[Segment<'_>],
) -> Result<Value, MapError> {
    let (placer, filler) = order.numbers();
    let identifiers = [
        placer.map(|p| p.with_type("PLAC")),
        filler.map(|f| f.with_type("FILL")),
    ];
    let identifiers = identifiers.into_iter().flatten().map(|i| i.to_fhir());
    let orc = order.orc.as_ref();
    let obr = order.obr.as_ref();
    let requisition = orc
        .and_then(|orc| Ident::ei_at(orc, ORC_4))
        .map(|i| i.with_type("PGN").to_fhir());
    let code = match obr {
        Some(obr) => Some(service_code(obr)?),
        None => None,
    };
    let supporting = links.supporting_info.iter();
    let specimens = links.specimens.iter();
    let mut request = Obj::resource("ServiceRequest", id)
        .list("identifier", identifiers.collect())
        .value("requisition", requisition)
        .text("status", Some(status(orc)?))
        .text("intent", Some(intent(obr)))
        .text("priority", priority(order)?)
        .value("code", code)
        .value("subject", Some(subject.patient_reference()))
        .value("encounter", subject.encounter_reference())
        .text("occurrenceDateTime", requested_time(obr, ctx)?)
        .text("authoredOn", authored_on(orc, ctx)?)
        .list("reasonCode", reasons(obr))
        .list(
            "supportingInfo",
            supporting.map(|id| reference("Observation", id)).collect(),
        )
        .list(
            "specimen",
            specimens.map(|id| reference("Specimen", id)).collect(),
        )
        .build();
    for nte in notes {
        add_note(&mut request, nte);
    }
    Ok(request)
}

fn service_code(obr: &Segment<'_>) -> Result<Value, MapError> {
    let code = first_cwe(obr, OBR_4);
    code.ok_or_else(|| MapError::required(obr, OBR_4, "universal service identifier"))
}

/// ORC-5 through table 0038 when valued, else ORC-1 through table 0119; `unknown` when the
/// code has no FHIR status, or when the order has no ORC. A code outside its table is error 103.
fn status(orc: Option<&Segment<'_>>) -> Result<&'static str, MapError> {
    let Some(orc) = orc else {
        return Ok("unknown");
    };
    if let Some(sent) = code(orc.text(ORC_5)) {
        let found = row(ORDER_STATUS_0038, &sent);
        let status = found.ok_or_else(|| MapError::table_value(orc, ORC_5, "order status"))?;
        return Ok(status.unwrap_or("unknown"));
    }
    let sent =
        code(orc.text(ORC_1)).ok_or_else(|| MapError::required(orc, ORC_1, "order control"))?;
    let found = row(ORDER_CONTROL_0119, &sent);
    let status = found.ok_or_else(|| MapError::table_value(orc, ORC_1, "order control"))?;
    Ok(status.unwrap_or("unknown"))
}

/// OBR-11 `G` (generated order) is a reflex order; anything else an order.
fn intent(obr: Option<&Segment<'_>>) -> &'static str {
    let action = obr.and_then(|obr| code(obr.text(OBR_11)));
    match action.as_deref() {
        Some("G" | "g") => "reflex-order",
        _ => "order",
    }
}

/// The first priority sent: TQ1-9, ORC-7.6, OBR-27.6, OBR-5. A code outside tables
/// 0485/0027 is error 103; a code of the table without a FHIR priority is left out.
fn priority(order: &OrderSegments<'_>) -> Result<Option<&'static str>, MapError> {
    let sources = [
        (order.tq1, TQ1_9, 1),
        (order.orc, ORC_7, TQ_6),
        (order.obr, OBR_27, TQ_6),
        (order.obr, OBR_5, 1),
    ];
    for (segment, field, component) in sources {
        let Some(segment) = segment else { continue };
        let sent = segment.field(field).and_then(|f| f.component(component));
        let Some(sent) = code(sent) else { continue };
        if is_timed_priority(&sent) {
            return Ok(None);
        }
        let found = row(PRIORITY_0485, &sent);
        return found.ok_or_else(|| MapError::table_value(&segment, field, "priority"));
    }
    Ok(None)
}

fn requested_time(obr: Option<&Segment<'_>>, ctx: &Ctx<'_>) -> Result<Option<String>, MapError> {
    match obr {
        Some(obr) => ctx.date_time(obr, OBR_6, "requested date/time"),
        None => Ok(None),
    }
}

/// ORC-9 is when the order was placed only in a new order (NW); otherwise it is the time of
/// the status change.
fn authored_on(orc: Option<&Segment<'_>>, ctx: &Ctx<'_>) -> Result<Option<String>, MapError> {
    let Some(orc) = orc else {
        return Ok(None);
    };
    let control = code(orc.text(ORC_1)).map(|c| c.to_ascii_uppercase());
    if control.as_deref() != Some("NW") {
        return Ok(None);
    }
    ctx.date_time(orc, ORC_9, "date/time of transaction")
}

fn reasons(obr: Option<&Segment<'_>>) -> Vec<Value> {
    obr.map(|obr| all_cwe(obr, OBR_31)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::ids::resource_id;
    use crate::ingest::map::tests::{seg, test_subject, with_message};

    const MSH: &str = "MSH|^~\\&|EHR|NORTH|LAB|HOSP|2024||OML^O21^OML_O21|C1|P|2.5.1\r";

    fn request(segments: &str) -> Result<Value, MapError> {
        with_message(MSH, segments, |msg, ctx| {
            let order = OrderSegments {
                orc: msg.segment("ORC"),
                tq1: msg.segment("TQ1"),
                obr: msg.segment("OBR"),
            };
            let key = order.key(ctx, &mut KeyCounter::default())?;
            let notes: Vec<_> = msg.segments_named("NTE").collect();
            let (id, links) = (resource_id(&key), OrderLinks::default());
            map_service_request(&order, &id, ctx, &test_subject(), links, &notes)
        })
    }

    #[test]
    fn tables_use_fhir_codes() {
        let statuses = [
            "active",
            "on-hold",
            "revoked",
            "completed",
            "entered-in-error",
        ];
        for (_, status) in ORDER_CONTROL_0119.iter().chain(ORDER_STATUS_0038) {
            assert!(status.is_none_or(|s| statuses.contains(&s)), "{status:?}");
        }
        let priorities = ["routine", "urgent", "asap", "stat"];
        for (_, priority) in PRIORITY_0485 {
            assert!(priority.is_none_or(|p| priorities.contains(&p)));
        }
    }

    #[test]
    fn order_control_drives_the_status_as_the_guide_maps_it() {
        let status = |control: &str| {
            request(&format!("ORC|{control}|PL-1^EHR\rOBR|1|PL-1^EHR||X^Y^L")).unwrap()["status"]
                .clone()
        };
        assert_eq!(status("NW"), "active");
        assert_eq!(
            status("CA"),
            "active",
            "a cancel request, not yet confirmed"
        );
        assert_eq!(status("CR"), "revoked");
        assert_eq!(status("DC"), "revoked");
        assert_eq!(status("XO"), "unknown");
        assert_eq!(status("hr"), "on-hold");
        let err = request("ORC|ZZ|PL-1\rOBR|1|PL-1||X^Y^L").unwrap_err();
        assert_eq!(
            (err.code, err.location),
            (103, Some(("ORC".to_owned(), 1, 1)))
        );
    }

    #[test]
    fn order_status_wins_over_order_control() {
        let sr = request("ORC|SC|PL-1|||CM\rOBR|1|PL-1||X^Y^L").unwrap();
        assert_eq!(sr["status"], "completed");
        let err = request("ORC|SC|PL-1|||QQ\rOBR|1|PL-1||X^Y^L").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (103, 5));
    }

    #[test]
    fn identifiers_carry_placer_filler_and_group_types() {
        let sr = request(
            "ORC|NW|PL-7^EHR|FI-7^LAB^2.16.840.1.113883.19.4^ISO|GRP-1^EHR\rOBR|1|||57021-8^CBC^LN",
        )
        .unwrap();
        let type_of = |i: &Value| i["type"]["coding"][0]["code"].clone();
        assert_eq!(type_of(&sr["identifier"][0]), "PLAC");
        assert_eq!(sr["identifier"][0]["value"], "PL-7");
        assert_eq!(type_of(&sr["identifier"][1]), "FILL");
        assert_eq!(
            sr["identifier"][1]["system"],
            "urn:oid:2.16.840.1.113883.19.4"
        );
        assert_eq!(type_of(&sr["requisition"]), "PGN");
        assert_eq!(sr["intent"], "order");
        assert_eq!(sr["code"]["coding"][0]["code"], "57021-8");
    }

    #[test]
    fn priority_comes_from_tq1_then_orc_7_then_obr_27() {
        let priority = |segments: &str| request(segments).unwrap().get("priority").cloned();
        let tq1 = "ORC|NW|PL-1||||||||||\rTQ1|1||||||||S\rOBR|1|||X^Y^L";
        assert_eq!(priority(tq1), Some(json!("stat")));
        let orc_7 = "ORC|NW|PL-1|||||^^^^^A\rOBR|1|||X^Y^L";
        assert_eq!(priority(orc_7), Some(json!("asap")));
        let obr_27 = format!(
            "ORC|NW|PL-1\r{}",
            seg("OBR", &[(4, "X^Y^L"), (27, "^^^^^R")])
        );
        assert_eq!(priority(&obr_27), Some(json!("routine")));
        let both = "ORC|NW|PL-1|||||^^^^^R\rTQ1|1||||||||S\rOBR|1|||X^Y^L";
        assert_eq!(priority(both), Some(json!("stat")), "TQ1 first");
        assert_eq!(priority("ORC|NW|PL-1|||||^^^^^PRN\rOBR|1|||X^Y^L"), None);
        assert_eq!(priority("ORC|NW|PL-1|||||^^^^^TM30\rOBR|1|||X^Y^L"), None);
        let err = request("ORC|NW|PL-1|||||^^^^^Q\rOBR|1|||X^Y^L").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (103, 7));
    }

    #[test]
    fn a_new_order_has_its_time_reasons_and_notes() {
        let orc = seg("ORC", &[(1, "NW"), (2, "PL-1"), (9, "202407010900-0400")]);
        let obr = seg(
            "OBR",
            &[
                (4, "X^Y^L"),
                (6, "202407021000-0400"),
                (31, "R51^Headache^I10"),
            ],
        );
        let sr = request(&format!("{orc}{obr}NTE|1||Fasting~since midnight")).unwrap();
        assert_eq!(sr["authoredOn"], "2024-07-01T09:00:00-04:00");
        assert_eq!(sr["occurrenceDateTime"], "2024-07-02T10:00:00-04:00");
        assert_eq!(sr["reasonCode"][0]["coding"][0]["code"], "R51");
        assert_eq!(sr["note"], json!([{"text": "Fasting\nsince midnight"}]));
        let orc = seg("ORC", &[(1, "XO"), (2, "PL-1"), (9, "202407010900")]);
        let changed = request(&format!("{orc}OBR|1|||X^Y^L")).unwrap();
        assert!(changed.get("authoredOn").is_none());
    }

    #[test]
    fn an_order_needs_a_number_and_an_obr_needs_a_code() {
        let err = request("ORC|NW\rOBR|1|||X^Y^L").unwrap_err();
        assert_eq!(
            (err.code, err.location),
            (101, Some(("ORC".to_owned(), 1, 2)))
        );
        let err = request("ORC|NW|PL-1\rOBR|1").unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (101, 4));
        let orc_only = request("ORC|CR|PL-1").unwrap();
        assert_eq!(orc_only["status"], "revoked");
        assert!(orc_only.get("code").is_none());
    }

    #[test]
    fn placer_number_is_the_key_so_the_filler_number_can_arrive_later() {
        let new = request("ORC|NW|PL-9^EHR\rOBR|1|||X^Y^L").unwrap();
        let accepted = request("ORC|OK|PL-9^EHR|FI-3^LAB\rOBR|1|||X^Y^L").unwrap();
        assert_eq!(new["id"], accepted["id"]);
        let filler_only = request("ORC|SN||PL-9^EHR\rOBR|1|||X^Y^L").unwrap();
        assert_ne!(filler_only["id"], new["id"]);
    }

    #[test]
    fn timed_priorities_are_recognised() {
        assert!(is_timed_priority("TM30") && is_timed_priority("td2"));
        assert!(!is_timed_priority("T") && !is_timed_priority("TX3") && !is_timed_priority("TM"));
    }
}
