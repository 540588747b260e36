//! PL to Location (AIL-3): identifier (PL-10), name (PL-9, else the place's parts), mode
//! `instance`. A PL with neither an identifier nor a place gets no Location.

use serde_json::Value;

use super::datatypes::{trimmed, Ident, Obj};
use super::ids::{authority_system, location_identifier_key, location_place_key, resource_id};
use super::Ctx;
use crate::ingest::v2::Repetition;

/// PL point of care, room, bed, building and floor: the place, most specific last but one.
const PL_PLACE: &[usize] = &[1, 2, 3, 7, 8];
/// PL-4, the facility (HD).
const PL_FACILITY: usize = 4;
/// PL-9, the location description.
const PL_DESCRIPTION: usize = 9;
/// PL-10, the comprehensive location identifier (EI).
const PL_IDENTIFIER: usize = 10;

pub(super) struct MappedLocation {
    pub(super) id: String,
    pub(super) resource: Value,
}

/// The Location a PL names, or `None` when it names nothing.
pub(super) fn map_location(pl: &Repetition<'_>, ctx: &Ctx<'_>) -> Option<MappedLocation> {
    let identifier = Ident::from_ei_in(pl, PL_IDENTIFIER);
    let place: Vec<String> = PL_PLACE
        .iter()
        .map(|&c| trimmed(pl.component(c)).unwrap_or_default())
        .collect();
    let named: Vec<&str> = place
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect();
    let key = match &identifier {
        Some(ident) => location_identifier_key(ident, &ctx.scope),
        None if named.is_empty() => return None,
        None => {
            let hd = |m| pl.subcomponent(PL_FACILITY, m);
            let facility = authority_system(hd(1), hd(2), hd(3));
            let parts: Vec<&str> = place.iter().map(String::as_str).collect();
            location_place_key(facility, &parts, &ctx.scope)
        }
    };
    let id = resource_id(&key);
    let name = trimmed(pl.component(PL_DESCRIPTION)).or_else(|| Some(named.join(" ")));
    let resource = Obj::resource("Location", &id)
        .list(
            "identifier",
            identifier.iter().map(Ident::to_fhir).collect(),
        )
        .text("name", name)
        .text("mode", Some("instance"))
        .build();
    Some(MappedLocation { id, resource })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::map::tests::with_message;

    const MSH: &str = "MSH|^~\\&|SCHED|NORTH|EHR|HOSP|2024||SIU^S12|C1|P|2.5.1\r";

    fn location(pl: &str) -> Option<Value> {
        with_message(MSH, &format!("AIL|1||{pl}\r"), |msg, ctx| {
            let field = msg.segment("AIL").unwrap().field(3).unwrap();
            map_location(&field.repetition(1).unwrap(), ctx).map(|l| l.resource)
        })
    }

    #[test]
    fn a_place_becomes_a_location_named_by_its_parts() {
        let room = location("CLINIC-3^R12^^NORTH&1.2.840.9&ISO").unwrap();
        assert_eq!(room["name"], "CLINIC-3 R12");
        assert_eq!(room["mode"], "instance");
        assert!(room.get("identifier").is_none());
        let again = location("CLINIC-3^R12^^NORTH&1.2.840.9&ISO").unwrap();
        assert_eq!(room["id"], again["id"]);
        let other_bed = location("CLINIC-3^R12^B^NORTH&1.2.840.9&ISO").unwrap();
        assert_ne!(room["id"], other_bed["id"]);
    }

    #[test]
    fn an_identifier_and_a_description_win() {
        let pl = "CLINIC-3^R12^^^^^^^Endoscopy suite 2^LOC-77&NORTH";
        let room = location(pl).unwrap();
        assert_eq!(room["name"], "Endoscopy suite 2");
        assert_eq!(room["identifier"][0]["value"], "LOC-77");
        let moved = location("CLINIC-4^^^^^^^^^LOC-77&NORTH").unwrap();
        assert_eq!(room["id"], moved["id"], "the identifier is the key");
    }

    #[test]
    fn an_empty_place_is_no_location() {
        assert!(location("^^^NORTH").is_none());
    }
}
