//! ADT^A40 (merge patient, patient identifier list): the patient of PID survives, the patient
//! named by MRG-1 is merged into it. Nothing is deleted or moved:
//! - the surviving Patient (from PID, as for any ADT) gets a `link` of type `replaces` to the
//!   merged one;
//! - the merged Patient is amended, not replaced: it keeps everything stored for it, and gets
//!   `active: false`, the MRG-1 identifiers and a `link` of type `replaced-by` to the survivor.
//!
//! Links add up over several merges, and a later message about either patient keeps them (see
//! `ingest::stored`). Resources of the merged patient stay in its compartment; a client follows
//! the link. Only one patient group per message (a second PID is error 207); PV1 is ignored.

use serde_json::Value;

use super::datatypes::{reference, Ident, Obj};
use super::ids::{identifier_list_key, patient_key, resource_id};
use super::oru::only_patient;
use super::patient::map_patient;
use super::{Ctx, MapError, Mapped};
use crate::ingest::v2::Segment;

const MRG_1: usize = 1;

pub(super) fn map_merge(ctx: &Ctx<'_>) -> Result<Mapped, MapError> {
    let pid = only_patient(ctx.msg)?;
    let mrg = ctx
        .msg
        .segment("MRG")
        .ok_or_else(|| MapError::missing_segment("MRG"))?;
    let survivor = map_patient(&pid, ctx)?;
    let merged_ident = identifier_list_key(&mrg, MRG_1, "prior patient identifier list")?;
    let merged_id = resource_id(&patient_key(&merged_ident, &ctx.scope));
    if merged_id == survivor.id {
        let message = "MRG-1 (prior patient identifier list) names the surviving patient".into();
        return Err(MapError::at(102, &mrg, MRG_1, message));
    }
    let mut survivor_resource = survivor.resource;
    if let Some(fields) = survivor_resource.as_object_mut() {
        fields.insert("link".into(), links(&merged_id, "replaces"));
    }
    let merged = merged_patient(&mrg, &merged_id, &survivor.id);
    let mut mapped = Mapped::new(vec![survivor_resource, merged], survivor.id);
    mapped.amended.push(merged_id);
    Ok(mapped)
}

fn links(other: &str, link_type: &str) -> Value {
    let link = Obj::new()
        .value("other", Some(reference("Patient", other)))
        .text("type", Some(link_type))
        .build();
    Value::Array(vec![link])
}

/// What the merge says of the merged patient; the rest of it stays as stored.
fn merged_patient(mrg: &Segment<'_>, id: &str, survivor_id: &str) -> Value {
    let identifiers = mrg
        .field(MRG_1)
        .map(|f| {
            let idents = f.repetitions().filter_map(|r| Ident::from_cx(&r));
            idents.map(|i| i.to_fhir()).collect()
        })
        .unwrap_or_default();
    let mut patient = Obj::resource("Patient", id)
        .list("identifier", identifiers)
        .value("active", Some(Value::Bool(false)))
        .build();
    if let Some(fields) = patient.as_object_mut() {
        fields.insert("link".into(), links(survivor_id, "replaced-by"));
    }
    patient
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::{map_message, MapContext};
    use crate::ingest::v2::parse_message;

    const A40: &str = "MSH|^~\\&|ADT|NORTH|EHR|HOSP|20240701||ADT^A40^ADT_A39|M1|P|2.5.1\r\
                       EVN|A40|20240701\r\
                       PID|1||MRN-100^^^NORTH^MR||Keep^Ada\r\
                       MRG|MRN-200^^^NORTH^MR~55-1^^^SSA^SS\r";

    fn mapped(text: &str) -> Result<Mapped, MapError> {
        let msg = parse_message(text.as_bytes()).unwrap();
        map_message(&msg, &MapContext::default())
    }

    #[test]
    fn survivor_and_merged_patient_link_each_other() {
        let m = mapped(A40).unwrap();
        let (survivor, merged) = (&m.resources[0], &m.resources[1]);
        let id = |r: &Value| r["id"].as_str().unwrap().to_owned();
        assert_eq!(m.patient_id, Some(id(survivor)));
        assert_eq!(
            survivor["link"],
            json!([{"other": {"reference": format!("Patient/{}", id(merged))}, "type": "replaces"}])
        );
        assert_eq!(merged["link"][0]["type"], "replaced-by");
        assert_eq!(
            merged["link"][0]["other"]["reference"],
            format!("Patient/{}", id(survivor))
        );
        assert_eq!(merged["active"], false);
        assert_eq!(merged["identifier"][1]["value"], "55-1");
        assert!(merged.get("name").is_none(), "the stored name stays");
        assert_eq!(m.amended, vec![id(merged)]);
    }

    #[test]
    fn the_merged_id_is_the_one_its_own_messages_gave_it() {
        let adt = "MSH|^~\\&|ADT|NORTH|EHR|HOSP|20240701||ADT^A04|M0|P|2.5.1\r\
                   PID|1||MRN-200^^^NORTH^MR||Gone^Bo\r";
        let earlier = mapped(adt).unwrap();
        assert_eq!(
            mapped(A40).unwrap().resources[1]["id"],
            earlier.resources[0]["id"]
        );
    }

    #[test]
    fn merge_needs_an_mrg_naming_another_patient() {
        let no_mrg = A40.replace("MRG|MRN-200^^^NORTH^MR~55-1^^^SSA^SS\r", "");
        assert_eq!(mapped(&no_mrg).unwrap_err().code, 100);
        let empty = A40.replace("MRG|MRN-200^^^NORTH^MR~55-1^^^SSA^SS", "MRG|");
        let err = mapped(&empty).unwrap_err();
        assert_eq!(
            (err.code, err.location),
            (101, Some(("MRG".to_owned(), 1, 1)))
        );
        let itself = A40.replace("MRG|MRN-200", "MRG|MRN-100");
        assert_eq!(mapped(&itself).unwrap_err().code, 102);
    }
}
