//! XCN to Practitioner: identifier (XCN-1 with the assigning authority XCN-9 and type XCN-13)
//! and name (XCN-2 to XCN-7, type XCN-10). A person without an id number gets no
//! Practitioner, since its id would rest on a name; the reference to them is then a display.

use serde_json::Value;

use super::datatypes::{reference, Ident, Obj};
use super::ids::{practitioner_key, resource_id};
use super::patient::person_name;
use super::Ctx;
use crate::ingest::v2::Repetition;

/// XCN-10, the name type.
const XCN_10: usize = 10;

pub(super) struct MappedPractitioner {
    pub(super) id: String,
    pub(super) resource: Value,
}

/// The Practitioner an XCN names, or `None` when it has no id number.
pub(super) fn map_practitioner(xcn: &Repetition<'_>, ctx: &Ctx<'_>) -> Option<MappedPractitioner> {
    let ident = Ident::from_xcn(xcn)?;
    let id = resource_id(&practitioner_key(&ident, &ctx.scope));
    let resource = Obj::resource("Practitioner", &id)
        .list("identifier", vec![ident.to_fhir()])
        .list("name", person_name(xcn, 1, XCN_10).into_iter().collect())
        .build();
    Some(MappedPractitioner { id, resource })
}

/// How a resource refers to the person an XCN names: the Practitioner made for them, else
/// their name as a display; `None` when the XCN holds neither.
pub(super) fn person_reference(
    xcn: &Repetition<'_>,
    practitioner: Option<&MappedPractitioner>,
) -> Option<Value> {
    if let Some(practitioner) = practitioner {
        return Some(reference("Practitioner", &practitioner.id));
    }
    let name = person_name(xcn, 1, XCN_10)?;
    let family = name["family"].as_str().map(str::to_owned);
    let given = name["given"].as_array().into_iter().flatten();
    let mut parts: Vec<String> = given
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    parts.extend(family);
    Obj::new()
        .text("display", Some(parts.join(" ")))
        .build_non_empty()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::tests::with_message;

    const MSH: &str = "MSH|^~\\&|SCHED|NORTH|EHR|HOSP|2024||SIU^S12|C1|P|2.5.1\r";

    fn practitioner(xcn: &str) -> (Option<Value>, Option<Value>) {
        with_message(MSH, &format!("AIP|1||{xcn}\r"), |msg, ctx| {
            let field = msg.segment("AIP").unwrap().field(3).unwrap();
            let rep = field.repetition(1).unwrap();
            let mapped = map_practitioner(&rep, ctx);
            let reference = person_reference(&rep, mapped.as_ref());
            (mapped.map(|p| p.resource), reference)
        })
    }

    #[test]
    fn an_xcn_with_an_id_becomes_a_practitioner() {
        let xcn = "D-204^Fernwhistle^Odile^M^^Dr^^^NPI&2.16.840.1.113883.4.6&ISO^L^^^NPI";
        let (resource, reference) = practitioner(xcn);
        let resource = resource.unwrap();
        assert_eq!(resource["identifier"][0]["value"], "D-204");
        assert_eq!(
            resource["identifier"][0]["system"],
            "urn:oid:2.16.840.1.113883.4.6"
        );
        assert_eq!(
            resource["identifier"][0]["type"]["coding"][0]["code"],
            "NPI"
        );
        assert_eq!(
            resource["name"],
            json!([{"use": "official", "family": "Fernwhistle", "given": ["Odile", "M"],
                    "prefix": ["Dr"]}])
        );
        let id = resource["id"].as_str().unwrap();
        assert_eq!(
            reference.unwrap()["reference"],
            format!("Practitioner/{id}")
        );
    }

    #[test]
    fn the_same_id_under_another_sender_is_another_practitioner() {
        let (north, _) = practitioner("D-1^Quell");
        let other = with_message(
            "MSH|^~\\&|SCHED|SOUTH|EHR|HOSP|2024||SIU^S12|C1|P|2.5.1\r",
            "AIP|1||D-1^Quell\r",
            |msg, ctx| {
                let rep = msg.segment("AIP").unwrap().field(3).unwrap();
                map_practitioner(&rep.repetition(1).unwrap(), ctx)
                    .unwrap()
                    .id
            },
        );
        assert_ne!(north.unwrap()["id"], other.as_str());
    }

    #[test]
    fn a_name_without_an_id_is_only_a_display() {
        let (resource, reference) = practitioner("^Brackwater^Ines");
        assert!(resource.is_none());
        assert_eq!(reference, Some(json!({"display": "Ines Brackwater"})));
        assert_eq!(practitioner("^^").1, None);
    }
}
