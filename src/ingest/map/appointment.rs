//! SIU (SCH with its TQ1, NTE, PID and resource groups) to Appointment, as the v2-to-FHIR
//! guide maps SCH, AIS, AIG, AIL and AIP:
//! - identifiers: SCH-1 (placer, `PLAC`) and SCH-2 (filler, `FILL`); the id rests on the filler's
//!   (see `ids.rs`), so S13/S14/S15/S17/S26 update the Appointment that S12 made;
//! - status: SCH-25 through table 0278, else the trigger event (S15 cancelled, S17
//!   entered-in-error as the guide maps a deleted appointment, S26 noshow, otherwise booked);
//! - reasonCode (SCH-7), appointmentType (SCH-8, or SCH-7 coded in HL70277), serviceType
//!   (AIS-3), cancelationReason (SCH-6, when cancelled), basedOn (SCH-26/27), comment (the NTE
//!   after SCH);
//! - start and end: TQ1-7/8, else SCH-11.4/5, else the first AIS-4; an end missing is the
//!   start plus the duration; minutesDuration from SCH-9/10, else AIS-7/8, in minutes or hours;
//! - participants: the patient, each AIP (a Practitioner when AIP-3 has an id number), each
//!   AIL (a Location), each AIG (AIG-3 as a logical reference: no resource is made).
//!
//! S15, S17 and S26 amend the stored Appointment (a cancellation need not repeat the
//! booking), and only they may leave the time out. PV1 is not mapped: an SIU's visit is one
//! that has not happened, and its Encounter would overwrite what ADT said of a real one.
//! SCH-12/16/20 (contact and entering persons) are not mapped.

use chrono::{DateTime, SecondsFormat, TimeDelta};
use serde_json::Value;

use super::datatypes::{code, codeable_concept, coding_system_uri, first_cwe, Ident, Obj};
use super::datatypes::{reference, trimmed};
use super::ids::{order_key, resource_id, KeyCounter, OrderNumber};
use super::location::map_location;
use super::observation::text_value;
use super::oru::only_patient;
use super::patient::map_patient;
use super::practitioner::{map_practitioner, person_reference};
use super::{Ctx, MapError, Mapped};
use crate::ingest::v2::{dtm, Segment};

/// SIU events mapped here.
pub(super) const SIU_EVENTS: &[&str] = &["S12", "S13", "S14", "S15", "S17", "S26"];
/// Events that change only the status: the Appointment amends its stored version.
const STATUS_EVENTS: &[&str] = &["S15", "S17", "S26"];

const SCH_1: usize = 1;
const SCH_2: usize = 2;
const SCH_6: usize = 6;
const SCH_7: usize = 7;
const SCH_8: usize = 8;
const SCH_9: usize = 9;
const SCH_10: usize = 10;
const SCH_11: usize = 11;
const SCH_25: usize = 25;
const SCH_26: usize = 26;
const SCH_27: usize = 27;
const TQ1_7: usize = 7;
const TQ1_8: usize = 8;
const AIS_3: usize = 3;
const AIS_4: usize = 4;
const AIS_7: usize = 7;
const AIS_8: usize = 8;
const AIG_3: usize = 3;
const AIG_4: usize = 4;
const AIG_8: usize = 8;
const AIG_14: usize = 14;
const AIL_3: usize = 3;
const AIL_6: usize = 6;
const AIL_12: usize = 12;
const AIP_3: usize = 3;
const AIP_4: usize = 4;
const AIP_6: usize = 6;
const AIP_12: usize = 12;
const NTE_3: usize = 3;
/// Field 2 of AIS, AIG, AIL and AIP.
const SEGMENT_ACTION: usize = 2;
/// TQ components 4 and 5 (start and end date/time) of SCH-11.
const TQ_START: usize = 4;
const TQ_END: usize = 5;

/// Appointment status set by the trigger event when SCH-25 says nothing.
const STATUS_BY_TRIGGER: &[(&str, &str)] = &[
    ("S12", "booked"),
    ("S13", "booked"),
    ("S14", "booked"),
    ("S15", "cancelled"),
    ("S17", "entered-in-error"),
    ("S26", "noshow"),
];

/// HL7 table 0278 (filler status) to FHIR AppointmentStatus, as the guide's
/// FillerStatusCodes[Appointment] map has it; `None`: no FHIR status (the trigger decides).
/// A code that is itself an AppointmentStatus (`ARRIVED`, sent by older systems) is taken as
/// that status.
const FILLER_STATUS_0278: &[(&str, Option<&str>)] = &[
    ("Pending", Some("pending")),
    ("Waitlist", Some("waitlist")),
    ("Booked", Some("booked")),
    ("Started", Some("checked-in")),
    ("Complete", Some("fulfilled")),
    ("Cancelled", Some("cancelled")),
    ("Dc", None),
    ("Discontinued", None),
    ("Deleted", Some("entered-in-error")),
    ("Blocked", None),
    ("Overbook", None),
    ("Noshow", Some("noshow")),
];

/// Appointment.status's codes (its required value set).
fn appointment_statuses() -> &'static [&'static str] {
    hl7bridge_fhir_codec::required_codes(Some("Appointment"), "", "status")
        .expect("R4 binds Appointment.status")
}

/// AppointmentStatus to a participant's ParticipationStatus: who was booked accepted; a
/// pending booking is tentative; a cancelled or deleted one declined.
const PARTICIPATION_BY_STATUS: &[(&str, &str)] = &[
    ("proposed", "needs-action"),
    ("pending", "tentative"),
    ("waitlist", "tentative"),
    ("cancelled", "declined"),
    ("entered-in-error", "declined"),
];

/// Duration units (SCH-10, AIS-8) read, with their length in minutes; others are left out.
const DURATION_UNITS: &[(&str, i64)] = &[
    ("min", 1),
    ("m", 1),
    ("mins", 1),
    ("minute", 1),
    ("minutes", 1),
    ("h", 60),
    ("hr", 60),
    ("hrs", 60),
    ("hour", 60),
    ("hours", 60),
];

const V2_0277: &str = "HL70277";

pub(super) fn map_siu(ctx: &Ctx<'_>, event: &str) -> Result<Mapped, MapError> {
    let sch = ctx
        .msg
        .segment("SCH")
        .ok_or_else(|| MapError::missing_segment("SCH"))?;
    let pid = only_patient(ctx.msg)?;
    let patient = map_patient(&pid, ctx)?;
    let groups = Groups::read(ctx, &sch);
    let status = status(&sch, event)?;
    let id = resource_id(&appointment_key(&sch, ctx)?);
    let timing = Timing::read(&sch, &groups, ctx)?;
    if timing.start.is_none() && !STATUS_EVENTS.contains(&event) {
        return Err(missing_start(&sch, groups.tq1.as_ref()));
    }
    let mut others = Vec::new();
    let participants = participants(&groups, ctx, status, &patient.id, &mut others)?;
    let identifiers = [
        Ident::ei_at(&sch, SCH_1).map(|i| i.with_type("PLAC")),
        Ident::ei_at(&sch, SCH_2).map(|i| i.with_type("FILL")),
    ];
    let (reason, appointment_type) = reason_and_type(&sch);
    let cancelled = status == "cancelled";
    let appointment = Obj::resource("Appointment", &id)
        .list(
            "identifier",
            identifiers.iter().flatten().map(Ident::to_fhir).collect(),
        )
        .text("status", Some(status))
        .value(
            "cancelationReason",
            first_cwe(&sch, SCH_6).filter(|_| cancelled),
        )
        .list("serviceType", groups.services())
        .value("appointmentType", appointment_type)
        .list("reasonCode", reason.into_iter().collect())
        .text("start", timing.start)
        .text("end", timing.end)
        .value("minutesDuration", timing.minutes.map(Value::from))
        .text("comment", groups.comment())
        .list("basedOn", based_on(&sch, ctx))
        .list("participant", participants)
        .build();
    let mut resources = vec![patient.resource, appointment];
    resources.extend(others);
    let mut mapped = Mapped::new(resources, patient.id);
    if STATUS_EVENTS.contains(&event) {
        mapped.amended.push(id);
    }
    Ok(mapped)
}

/// The segments of an SIU that the Appointment reads besides SCH.
struct Groups<'m> {
    tq1: Option<Segment<'m>>,
    notes: Vec<Segment<'m>>,
    services: Vec<Segment<'m>>,
    resources: Vec<Segment<'m>>,
}

impl<'m> Groups<'m> {
    /// TQ1 is the first after SCH; notes are the NTE right after SCH (and its TQ1); AIS, AIG,
    /// AIL and AIP are read wherever they are.
    fn read(ctx: &Ctx<'m>, sch: &Segment<'m>) -> Groups<'m> {
        let mut groups = Groups {
            tq1: None,
            notes: Vec::new(),
            services: Vec::new(),
            resources: Vec::new(),
        };
        let mut in_header = true;
        for segment in ctx.msg.segments().skip(sch.index() + 1) {
            match (segment.name(), in_header) {
                ("TQ1", true) => {
                    groups.tq1.get_or_insert(segment);
                }
                ("NTE", true) => groups.notes.push(segment),
                (name, _) => {
                    in_header = false;
                    match name {
                        "AIS" => groups.services.push(segment),
                        "AIG" | "AIL" | "AIP" => groups.resources.push(segment),
                        _ => {}
                    }
                }
            }
        }
        groups
    }

    fn services(&self) -> Vec<Value> {
        let kept = self.services.iter().filter(|ais| !is_deleted(ais));
        let services = kept.filter_map(|ais| first_cwe(ais, AIS_3));
        services.collect()
    }

    fn comment(&self) -> Option<String> {
        let lines: Vec<String> = self
            .notes
            .iter()
            .filter_map(|nte| nte.field(NTE_3).and_then(|f| text_value(&f)))
            .collect();
        Some(lines.join("\n")).filter(|c| !c.is_empty())
    }
}

/// The filler appointment id, else the placer's; one of them is required.
fn appointment_key(sch: &Segment<'_>, ctx: &Ctx<'_>) -> Result<String, MapError> {
    let number = match (Ident::ei_at(sch, SCH_2), Ident::ei_at(sch, SCH_1)) {
        (Some(filler), _) => OrderNumber::Filler(filler),
        (None, Some(placer)) => OrderNumber::Placer(placer),
        (None, None) => return Err(MapError::required(sch, SCH_2, "filler appointment id")),
    };
    let seen = &mut KeyCounter::default();
    Ok(order_key("Appointment", &number, &ctx.scope, seen))
}

/// SCH-25 when it names a status, else the trigger event's. A code outside table 0278 that
/// is not an AppointmentStatus either is error 103.
fn status(sch: &Segment<'_>, event: &str) -> Result<&'static str, MapError> {
    let by_trigger = STATUS_BY_TRIGGER.iter().find(|(t, _)| *t == event);
    let fallback = by_trigger.map_or("booked", |(_, status)| status);
    let Some(sent) = code(sch.field(SCH_25).and_then(|f| f.component(1))) else {
        return Ok(fallback);
    };
    match filler_status(&sent) {
        Some(status) => Ok(status.unwrap_or(fallback)),
        None => Err(MapError::table_value(sch, SCH_25, "filler status code")),
    }
}

/// A filler status code's AppointmentStatus: `Some(None)` for a code without one, `None` for
/// a code that is not one.
fn filler_status(sent: &str) -> Option<Option<&'static str>> {
    let row = FILLER_STATUS_0278
        .iter()
        .find(|(hl7, _)| hl7.eq_ignore_ascii_case(sent));
    if let Some((_, status)) = row {
        return Some(*status);
    }
    let fhir = appointment_statuses()
        .iter()
        .find(|s| s.eq_ignore_ascii_case(sent));
    fhir.map(|s| Some(*s))
}

/// SCH-7 is the reason, unless it is coded in table 0277 (the guide maps it so); SCH-8 is the
/// appointment type.
fn reason_and_type(sch: &Segment<'_>) -> (Option<Value>, Option<Value>) {
    let reason = first_cwe(sch, SCH_7);
    let coded_as_type = sch
        .field(SCH_7)
        .and_then(|f| f.component(3))
        .is_some_and(|s| s.trim().eq_ignore_ascii_case(V2_0277));
    match (coded_as_type, first_cwe(sch, SCH_8)) {
        (true, None) => (None, reason),
        (_, appointment_type) => (reason, appointment_type),
    }
}

/// The ServiceRequests the appointment is for: SCH-26 placer order numbers, SCH-27 filler's.
fn based_on(sch: &Segment<'_>, ctx: &Ctx<'_>) -> Vec<Value> {
    let numbers = |field: usize| {
        let reps = sch.field(field).into_iter().flat_map(|f| f.repetitions());
        reps.filter_map(|r| Ident::from_ei(&r)).collect::<Vec<_>>()
    };
    let placers = numbers(SCH_26).into_iter().map(OrderNumber::Placer);
    let fillers = numbers(SCH_27).into_iter().map(OrderNumber::Filler);
    let orders: Vec<OrderNumber> = placers.chain(fillers).collect();
    let mut refs: Vec<Value> = Vec::new();
    for order in &orders {
        let key = order_key(
            "ServiceRequest",
            order,
            &ctx.scope,
            &mut KeyCounter::default(),
        );
        let found = reference("ServiceRequest", &resource_id(&key));
        if !refs.contains(&found) {
            refs.push(found);
        }
    }
    refs
}

/// When the appointment starts and ends, and how long it is.
struct Timing {
    start: Option<String>,
    end: Option<String>,
    minutes: Option<i64>,
}

impl Timing {
    fn read(sch: &Segment<'_>, groups: &Groups<'_>, ctx: &Ctx<'_>) -> Result<Timing, MapError> {
        let first_ais = groups.services.first();
        let minutes = match duration(sch, SCH_9, SCH_10)? {
            Some(minutes) => Some(minutes),
            None => match first_ais {
                Some(ais) => duration(ais, AIS_7, AIS_8)?,
                None => None,
            },
        };
        let mut sources = Vec::new();
        if let Some(tq1) = &groups.tq1 {
            sources.push((*tq1, TQ1_7, 1, TQ1_8, 1));
        }
        sources.push((*sch, SCH_11, TQ_START, SCH_11, TQ_END));
        if let Some(ais) = first_ais {
            sources.push((*ais, AIS_4, 1, 0, 0));
        }
        for (seg, start_at, start_component, end_at, end_component) in sources {
            let Some(start) = instant(&seg, start_at, start_component, ctx, "start date/time")?
            else {
                continue;
            };
            let sent_end = match end_at {
                0 => None,
                _ => instant(&seg, end_at, end_component, ctx, "end date/time")?,
            };
            let end = sent_end.or_else(|| minutes.and_then(|m| plus_minutes(&start, m)));
            let Some(end) = end else {
                return Err(missing_end(
                    &seg,
                    if end_at == 0 { start_at } else { end_at },
                ));
            };
            return Ok(Timing {
                start: Some(start),
                end: Some(end),
                minutes,
            });
        }
        Ok(Timing {
            start: None,
            end: None,
            minutes,
        })
    }
}

/// A FHIR instant from `seg`-`field`.`component`; a time without minutes is error 102, since
/// an appointment's start and end are instants.
fn instant(
    seg: &Segment<'_>,
    field: usize,
    component: usize,
    ctx: &Ctx<'_>,
    what: &str,
) -> Result<Option<String>, MapError> {
    let Some(raw) = seg.field(field).and_then(|f| f.component(component)) else {
        return Ok(None);
    };
    let Some(raw) = trimmed(Some(raw)) else {
        return Ok(None);
    };
    dtm::fhir_instant(&raw, ctx.offset)
        .map(Some)
        .map_err(|_| MapError::data_type(seg, field, what))
}

/// A duration in whole minutes from a number field and its units; `None` when either is
/// absent or the units are not minutes or hours. A number that is not one is error 102.
fn duration(seg: &Segment<'_>, number_at: usize, units_at: usize) -> Result<Option<i64>, MapError> {
    let Some(number) = trimmed(seg.field(number_at).and_then(|f| f.component(1))) else {
        return Ok(None);
    };
    let units = code(seg.field(units_at).and_then(|f| f.component(1)));
    let factor = units.and_then(|u| {
        DURATION_UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&u))
            .map(|(_, factor)| *factor)
    });
    let value: i64 = number
        .parse()
        .ok()
        .filter(|n| *n > 0 && *n < 1_000_000)
        .ok_or_else(|| MapError::data_type(seg, number_at, "duration"))?;
    Ok(factor.map(|f| value * f))
}

fn plus_minutes(start: &str, minutes: i64) -> Option<String> {
    let start = DateTime::parse_from_rfc3339(start).ok()?;
    let end = start.checked_add_signed(TimeDelta::try_minutes(minutes)?)?;
    Some(end.to_rfc3339_opts(SecondsFormat::AutoSi, false))
}

/// Appointment.start and end come together (R4 invariant app-2).
fn missing_end(seg: &Segment<'_>, field: usize) -> MapError {
    let message = format!(
        "{}-{field} (end date/time) or a duration in minutes (SCH-9/SCH-10, AIS-7/AIS-8) is required with a start",
        seg.name()
    );
    MapError::at(101, seg, field, message)
}

fn missing_start(sch: &Segment<'_>, tq1: Option<&Segment<'_>>) -> MapError {
    match tq1 {
        Some(tq1) => MapError::required(tq1, TQ1_7, "start date/time"),
        None => MapError::required(sch, SCH_11, "appointment timing quantity start"),
    }
}

/// The patient first, then each AIS, AIG, AIL and AIP resource in message order; the
/// Practitioners and Locations they name go to `others`, once each.
fn participants(
    groups: &Groups<'_>,
    ctx: &Ctx<'_>,
    status: &str,
    patient_id: &str,
    others: &mut Vec<Value>,
) -> Result<Vec<Value>, MapError> {
    let default = participation(Some(status));
    let patient = Obj::new()
        .value("actor", Some(reference("Patient", patient_id)))
        .text("required", Some("required"))
        .text("status", Some(default));
    let mut list = vec![patient.build()];
    for seg in groups.resources.iter().filter(|s| !is_deleted(s)) {
        let (actor, kind, start_at, status_at) = match seg.name() {
            "AIP" => (
                person_actor(seg, ctx, others),
                first_cwe(seg, AIP_4),
                AIP_6,
                AIP_12,
            ),
            "AIL" => (location_actor(seg, ctx, others), None, AIL_6, AIL_12),
            _ => (resource_actor(seg), first_cwe(seg, AIG_4), AIG_8, AIG_14),
        };
        if actor.is_none() && kind.is_none() {
            continue;
        }
        let own = code(seg.field(status_at).and_then(|f| f.component(1)));
        let own = own.and_then(|s| filler_status(&s)).flatten();
        let period = Obj::new()
            .text("start", ctx.date_time(seg, start_at, "start date/time")?)
            .build_non_empty();
        let participant = Obj::new()
            .list("type", kind.into_iter().collect())
            .value("actor", actor)
            .text(
                "status",
                Some(own.map_or(default, |s| participation(Some(s)))),
            )
            .value("period", period);
        list.push(participant.build());
    }
    Ok(list)
}

/// AIS-2, AIG-2, AIL-2, AIP-2 (segment action code, table 0206) `D`: the resource is taken
/// off the appointment.
fn is_deleted(seg: &Segment<'_>) -> bool {
    code(seg.text(SEGMENT_ACTION)).is_some_and(|a| a.eq_ignore_ascii_case("D"))
}

fn participation(status: Option<&str>) -> &'static str {
    let row = PARTICIPATION_BY_STATUS
        .iter()
        .find(|(s, _)| Some(*s) == status);
    row.map_or("accepted", |(_, p)| p)
}

fn push_once(others: &mut Vec<Value>, resource: Value) {
    if !others.iter().any(|o| o["id"] == resource["id"]) {
        others.push(resource);
    }
}

fn person_actor(aip: &Segment<'_>, ctx: &Ctx<'_>, others: &mut Vec<Value>) -> Option<Value> {
    let xcn = aip.field(AIP_3)?.repetition(1)?;
    let practitioner = map_practitioner(&xcn, ctx);
    let actor = person_reference(&xcn, practitioner.as_ref());
    if let Some(practitioner) = practitioner {
        push_once(others, practitioner.resource);
    }
    actor
}

fn location_actor(ail: &Segment<'_>, ctx: &Ctx<'_>, others: &mut Vec<Value>) -> Option<Value> {
    let pl = ail.field(AIL_3)?.repetition(1)?;
    let location = map_location(&pl, ctx)?;
    let actor = reference("Location", &location.id);
    push_once(others, location.resource);
    Some(actor)
}

/// AIG-3 as a logical reference: its code as the identifier, its text as the display.
fn resource_actor(aig: &Segment<'_>) -> Option<Value> {
    let cwe = aig.field(AIG_3)?.repetition(1)?;
    let identifier = code(cwe.component(1)).map(|value| {
        let system = cwe.component(3).map(|name| coding_system_uri(&name));
        Obj::new()
            .text("system", system)
            .text("value", Some(value))
            .build()
    });
    let display = cwe
        .component(2)
        .or_else(|| codeable_concept(&cwe).and_then(|c| c["text"].as_str().map(str::to_owned)));
    Obj::new()
        .value("identifier", identifier)
        .text("display", display)
        .build_non_empty()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::tests::seg;
    use crate::ingest::map::{map_message, MapContext};
    use crate::ingest::v2::parse_message;

    const PID: &str = "PID|1||M-88^^^EAST^MR||Oakhollow^Petra\r";

    fn siu(event: &str, segments: &str) -> Result<Mapped, MapError> {
        let text = format!(
            "MSH|^~\\&|SCHED|EAST|EHR|HOSP|2024||SIU^{event}^SIU_S12|C1|P|2.5.1\r{segments}"
        );
        let msg = parse_message(text.as_bytes()).unwrap();
        map_message(&msg, &MapContext::default())
    }

    fn appointment(event: &str, segments: &str) -> Result<Value, MapError> {
        let mapped = siu(event, segments)?;
        let found = mapped
            .resources
            .iter()
            .find(|r| r["resourceType"] == "Appointment");
        Ok(found.cloned().unwrap())
    }

    fn sch(fields: &[(usize, &str)]) -> String {
        let mut all = vec![(SCH_2, "F-1^SCHED")];
        all.extend_from_slice(fields);
        seg("SCH", &all)
    }

    const TQ1: &str = "TQ1|1||||||202407150900+0200|202407150945+0200\r";

    #[test]
    fn tables_use_fhir_codes() {
        let statuses = STATUS_BY_TRIGGER.iter().map(|(_, s)| *s);
        let mapped = FILLER_STATUS_0278.iter().filter_map(|(_, s)| *s);
        for status in statuses.chain(mapped) {
            assert!(appointment_statuses().contains(&status), "{status}");
        }
        let participation = ["accepted", "declined", "tentative", "needs-action"];
        for (status, p) in PARTICIPATION_BY_STATUS {
            assert!(appointment_statuses().contains(status) && participation.contains(p));
        }
        assert!(SIU_EVENTS
            .iter()
            .all(|e| STATUS_BY_TRIGGER.iter().any(|(t, _)| t == e)));
        assert!(DURATION_UNITS.iter().all(|(_, f)| [1, 60].contains(f)));
    }

    #[test]
    fn a_booking_maps_identifiers_times_types_and_comment() {
        let fields = [
            (SCH_1, "P-1^EHR"),
            (SCH_7, "CHECKUP^Check-up^HL70276"),
            (SCH_8, "NORMAL^Normal^HL70277"),
            (SCH_9, "45"),
            (SCH_10, "MIN"),
            (SCH_26, "ORD-9^EHR"),
        ];
        let segments = format!("{}{TQ1}NTE|1||Fasting~from midnight\r{PID}", sch(&fields));
        let a = appointment("S12", &segments).unwrap();
        assert_eq!(a["status"], "booked");
        assert_eq!(a["identifier"][0]["type"]["coding"][0]["code"], "PLAC");
        assert_eq!(a["identifier"][1]["value"], "F-1");
        assert_eq!(a["start"], "2024-07-15T09:00:00+02:00");
        assert_eq!(a["end"], "2024-07-15T09:45:00+02:00");
        assert_eq!(a["minutesDuration"], 45);
        assert_eq!(a["reasonCode"][0]["coding"][0]["code"], "CHECKUP");
        assert_eq!(
            a["appointmentType"]["coding"][0]["system"],
            "http://terminology.hl7.org/CodeSystem/v2-0277"
        );
        assert_eq!(a["comment"], "Fasting\nfrom midnight");
        assert!(a["basedOn"][0]["reference"]
            .as_str()
            .unwrap()
            .starts_with("ServiceRequest/"));
        assert_eq!(
            a["participant"][0]["actor"]["reference"]
                .as_str()
                .unwrap()
                .len(),
            44
        );
        assert_eq!(a["participant"][0]["status"], "accepted");
    }

    #[test]
    fn the_filler_id_is_the_key_whatever_the_event() {
        let booked = appointment("S12", &format!("{}{TQ1}{PID}", sch(&[]))).unwrap();
        let moved = appointment("S13", &format!("{}{TQ1}{PID}", sch(&[(SCH_1, "P-1")]))).unwrap();
        assert_eq!(booked["id"], moved["id"]);
        let placer_only = seg("SCH", &[(SCH_1, "F-1^SCHED")]);
        let other = appointment("S12", &format!("{placer_only}{TQ1}{PID}")).unwrap();
        assert_ne!(
            other["id"], booked["id"],
            "placer and filler ids cannot collide"
        );
    }

    #[test]
    fn status_comes_from_sch_25_then_from_the_event() {
        let status = |event: &str, filler: &str| {
            let segments = format!("{}{TQ1}{PID}", sch(&[(SCH_25, filler)]));
            appointment(event, &segments).map(|a| a["status"].clone())
        };
        assert_eq!(status("S12", "Booked").unwrap(), "booked");
        assert_eq!(status("S14", "Started").unwrap(), "checked-in");
        assert_eq!(status("S12", "noshow").unwrap(), "noshow");
        assert_eq!(status("S14", "ARRIVED").unwrap(), "arrived");
        assert_eq!(status("S15", "").unwrap(), "cancelled");
        assert_eq!(status("S17", "").unwrap(), "entered-in-error");
        assert_eq!(status("S26", "").unwrap(), "noshow");
        assert_eq!(
            status("S15", "Blocked").unwrap(),
            "cancelled",
            "no FHIR status"
        );
        let err = status("S12", "Maybe").unwrap_err();
        assert_eq!((err.code, err.location), (103, Some(("SCH".into(), 1, 25))));
    }

    #[test]
    fn a_missing_end_is_the_start_plus_the_duration() {
        let tq1 = "TQ1|1||||||202407150900+0200\r";
        let hours = sch(&[(SCH_9, "2"), (SCH_10, "h^hours^ISO+")]);
        let a = appointment("S12", &format!("{hours}{tq1}{PID}")).unwrap();
        assert_eq!(a["end"], "2024-07-15T11:00:00+02:00");
        assert_eq!(a["minutesDuration"], 120);
        let seconds = sch(&[(SCH_9, "60"), (SCH_10, "s")]);
        let err = appointment("S12", &format!("{seconds}{tq1}{PID}")).unwrap_err();
        assert_eq!((err.code, err.location), (101, Some(("TQ1".into(), 1, 8))));
        let bad = sch(&[(SCH_9, "half"), (SCH_10, "min")]);
        let err = appointment("S12", &format!("{bad}{tq1}{PID}")).unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (102, SCH_9));
    }

    #[test]
    fn sch_11_and_ais_4_stand_in_for_tq1() {
        let old = sch(&[(SCH_11, "^^^202407150900^202407151000")]);
        let a = appointment("S12", &format!("{old}{PID}")).unwrap();
        assert_eq!(a["start"], "2024-07-15T09:00:00+00:00");
        assert_eq!(a["end"], "2024-07-15T10:00:00+00:00");
        let ais = "AIS|1||X1^Scan^L|202407150900|||20|min\r";
        let a = appointment("S12", &format!("{}{PID}RGS|1\r{ais}", sch(&[]))).unwrap();
        assert_eq!(a["end"], "2024-07-15T09:20:00+00:00");
        assert_eq!(a["minutesDuration"], 20);
        assert_eq!(a["serviceType"][0]["coding"][0]["code"], "X1");
    }

    #[test]
    fn required_fields_are_named() {
        let err = appointment("S12", &format!("SCH\r{TQ1}{PID}")).unwrap_err();
        assert_eq!((err.code, err.location), (101, Some(("SCH".into(), 1, 2))));
        let err = appointment("S12", &format!("{}TQ1|1\r{PID}", sch(&[]))).unwrap_err();
        assert_eq!((err.code, err.location), (101, Some(("TQ1".into(), 1, 7))));
        let err = appointment("S14", &format!("{}{PID}", sch(&[]))).unwrap_err();
        assert_eq!((err.code, err.location), (101, Some(("SCH".into(), 1, 11))));
        let err = siu("S12", &format!("{TQ1}{PID}")).unwrap_err();
        assert_eq!((err.code, err.location), (100, Some(("SCH".into(), 1, 0))));
        let err = siu("S12", &format!("{}{TQ1}", sch(&[]))).unwrap_err();
        assert_eq!(err.code, 100, "no patient");
    }

    #[test]
    fn a_cancellation_needs_no_time_and_amends() {
        let fields = [(SCH_6, "WEATHER^Storm^L"), (SCH_25, "Cancelled")];
        let mapped = siu("S15", &format!("{}{PID}", sch(&fields))).unwrap();
        let a = &mapped.resources[1];
        assert_eq!(a["status"], "cancelled");
        assert_eq!(a["cancelationReason"]["coding"][0]["code"], "WEATHER");
        assert!(a.get("start").is_none());
        assert_eq!(a["participant"][0]["status"], "declined");
        assert_eq!(mapped.amended, [a["id"].as_str().unwrap()]);
        let booked = siu("S12", &format!("{}{TQ1}{PID}", sch(&[(SCH_6, "NEW")]))).unwrap();
        assert!(booked.amended.is_empty());
        assert!(booked.resources[1].get("cancelationReason").is_none());
    }

    #[test]
    fn resource_groups_become_participants_and_resources_once() {
        let groups = "RGS|1\r\
AIP|1||D-7^Yarrow^Tess^^^^^^EAST|SURG^Surgeon^L||202407150900||||||Pending\r\
AIP|2||D-7^Yarrow^Tess^^^^^^EAST|ASST^Assistant^L\r\
AIP|3|D|D-9^Gone\r\
AIL|1||OR^2^^EAST\r\
AIG|1||SCOPE-1^Endoscope^L|EQ^Equipment^L\r";
        let mapped = siu("S12", &format!("{}{TQ1}{PID}{groups}", sch(&[]))).unwrap();
        let types: Vec<&str> = mapped
            .resources
            .iter()
            .map(|r| r["resourceType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["Patient", "Appointment", "Practitioner", "Location"]
        );
        let participants = mapped.resources[1]["participant"].as_array().unwrap();
        assert_eq!(
            participants.len(),
            5,
            "the patient, two AIP, AIL, AIG; D is dropped"
        );
        let surgeon = &participants[1];
        assert_eq!(surgeon["type"][0]["coding"][0]["code"], "SURG");
        assert_eq!(surgeon["status"], "tentative", "AIP-12 Pending");
        assert_eq!(
            surgeon["period"],
            json!({"start": "2024-07-15T09:00:00+00:00"})
        );
        assert_eq!(participants[2]["status"], "accepted");
        assert_eq!(participants[1]["actor"], participants[2]["actor"]);
        let room = &participants[3]["actor"]["reference"];
        assert_eq!(
            *room,
            format!("Location/{}", mapped.resources[3]["id"].as_str().unwrap())
        );
        assert_eq!(
            participants[4]["actor"],
            json!({"identifier": {"system": "urn:hl7bridge:v2:codesystem:L", "value": "SCOPE-1"},
                   "display": "Endoscope"})
        );
    }
}
