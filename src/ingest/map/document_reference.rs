//! MDM^T02 (original document with content): TXA and the OBX after it to a DocumentReference,
//! as the v2-to-FHIR guide maps them where R4 allows: the unique document number (TXA-12) as
//! `masterIdentifier` and key, type (TXA-2), `date` (TXA-6), completion status (TXA-17) as
//! `docStatus`, availability (TXA-19) as `status`, title (TXA-25) as `description`. The text of
//! the ST, TX and FT values (repetitions as lines, one OBX a line) becomes one UTF-8
//! `text/plain` attachment, base64 in `data`; each ED value an attachment of its own, each RP
//! value an attachment `url`. OBX of other types (a study UID, a code) are not document content
//! and are not mapped. Authors and authenticators (TXA-5, TXA-9, TXA-10) are not mapped: no
//! Practitioner is made.

use serde_json::Value;

use super::datatypes::{base64, code, codeable_concept, Ident, Obj};
use super::ids::{document_key, resource_id};
use super::observation::{attachment, text_value, value_type};
use super::{patient_and_visit, Ctx, MapError, Mapped, Subject};
use crate::ingest::v2::Segment;

const TXA_2: usize = 2;
const TXA_6: usize = 6;
const TXA_12: usize = 12;
const TXA_17: usize = 17;
const TXA_19: usize = 19;
const TXA_25: usize = 25;
const OBX_5: usize = 5;

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// HL7 table 0271 (document completion status) to FHIR CompositionStatus for `docStatus`:
/// authenticated documents are final, the others preliminary.
const COMPLETION_STATUS_0271: &[(&str, &str)] = &[
    ("AU", "final"),
    ("LA", "final"),
    ("DI", "preliminary"),
    ("DO", "preliminary"),
    ("IN", "preliminary"),
    ("IP", "preliminary"),
    ("PA", "preliminary"),
];

/// HL7 table 0273 (document availability status) to FHIR DocumentReferenceStatus. R4 has no
/// status for a document that is not yet available (UN): it stays `current`, and its
/// `docStatus` tells that it is not final.
const AVAILABILITY_0273: &[(&str, &str)] = &[
    ("AV", "current"),
    ("UN", "current"),
    ("OB", "superseded"),
    ("CA", "entered-in-error"),
];

pub(super) fn map_mdm(ctx: &Ctx<'_>) -> Result<Mapped, MapError> {
    let txa = ctx
        .msg
        .segment("TXA")
        .ok_or_else(|| MapError::missing_segment("TXA"))?;
    let (subject, mut resources) = patient_and_visit(ctx)?;
    let obx: Vec<Segment<'_>> = ctx
        .msg
        .segments()
        .skip_while(|s| s.name() != "TXA")
        .filter(|s| s.name() == "OBX")
        .collect();
    resources.push(map_document(&txa, &obx, ctx, &subject)?);
    Ok(Mapped::new(resources, subject.patient))
}

fn map_document(
    txa: &Segment<'_>,
    obx: &[Segment<'_>],
    ctx: &Ctx<'_>,
    subject: &Subject,
) -> Result<Value, MapError> {
    let number = txa
        .field(TXA_12)
        .and_then(|f| f.repetition(1))
        .and_then(|r| Ident::from_ei(&r))
        .ok_or_else(|| MapError::required(txa, TXA_12, "unique document number"))?;
    let id = resource_id(&document_key(&number, &ctx.scope));
    let context = Obj::new().list(
        "encounter",
        subject.encounter_reference().into_iter().collect(),
    );
    let document = Obj::resource("DocumentReference", &id)
        .value("masterIdentifier", Some(number.to_fhir()))
        .text(
            "status",
            Some(lookup(txa, TXA_19, AVAILABILITY_0273)?.unwrap_or("current")),
        )
        .text("docStatus", lookup(txa, TXA_17, COMPLETION_STATUS_0271)?)
        .value(
            "type",
            txa.field(TXA_2)
                .and_then(|f| f.repetition(1))
                .and_then(|r| codeable_concept(&r)),
        )
        .value("subject", Some(subject.patient_reference()))
        .text("date", ctx.instant(txa, TXA_6, "origination date/time")?)
        .text(
            "description",
            txa.field(TXA_25).and_then(|f| f.component(1)),
        )
        .list("content", content(txa, obx)?)
        .value("context", context.build_non_empty());
    Ok(document.build())
}

/// RP `pointer^application id^type of data^subtype`: the pointer as the attachment's URL.
fn reference_pointer(obx: &Segment<'_>) -> Option<Value> {
    let url = obx.field(OBX_5)?.component(1)?;
    let attachment = Obj::new().text("url", Some(url.trim()));
    attachment.build_non_empty()
}

/// A code of `table`, `None` when absent; a code outside the table is error 103.
fn lookup(
    seg: &Segment<'_>,
    field: usize,
    table: &[(&str, &'static str)],
) -> Result<Option<&'static str>, MapError> {
    let Some(sent) = code(seg.text(field)) else {
        return Ok(None);
    };
    let row = table
        .iter()
        .find(|(hl7, _)| hl7.eq_ignore_ascii_case(&sent));
    match row {
        Some((_, fhir)) => Ok(Some(fhir)),
        None => {
            let what = format!("{}-{field} code", seg.name());
            Err(MapError::table_value(seg, field, &what))
        }
    }
}

/// The text of the OBX as one attachment, then each ED value; a document without content is
/// error 101 (DocumentReference.content is required).
fn content(txa: &Segment<'_>, obx: &[Segment<'_>]) -> Result<Vec<Value>, MapError> {
    let mut lines = Vec::new();
    let mut attachments = Vec::new();
    for segment in obx {
        let value = segment.field(OBX_5);
        match value_type(segment).as_deref() {
            Some("ED") => attachments.extend(attachment(segment)?),
            Some("ST" | "TX" | "FT") => lines.extend(value.and_then(|f| text_value(&f))),
            Some("RP") => attachments.extend(reference_pointer(segment)),
            _ => {}
        }
    }
    let text = Some(lines.join("\n")).filter(|t| !t.is_empty());
    let text = text.map(|t| {
        Obj::new()
            .text("contentType", Some(TEXT_CONTENT_TYPE))
            .text("data", Some(base64(t.as_bytes())))
            .build()
    });
    let all: Vec<Value> = text.into_iter().chain(attachments).collect();
    if all.is_empty() {
        let (seg, field) = match obx.first() {
            Some(first) => (first, OBX_5),
            None => (txa, 0),
        };
        let message = "the document has no content (OBX-5)".to_owned();
        return Err(MapError::at(101, seg, field, message));
    }
    let entry = |a: Value| Obj::new().value("attachment", Some(a)).build();
    Ok(all.into_iter().map(entry).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::map::tests::seg;
    use crate::ingest::map::{map_message, MapContext};
    use crate::ingest::v2::parse_message;

    fn mdm() -> String {
        let txa = seg(
            "TXA",
            &[
                (1, "1"),
                (TXA_2, "DS^Discharge summary^HL70270"),
                (3, "TX"),
                (TXA_6, "202407011030-0400"),
                (TXA_12, "DOC-42^DOCS"),
                (TXA_17, "AU"),
                (TXA_19, "AV"),
                (TXA_25, "Discharge summary"),
            ],
        );
        format!(
            "MSH|^~\\&|DOCS|NORTH|EHR|HOSP|20240701||MDM^T02^MDM_T02|D1|P|2.5.1\r\
             EVN|T02|20240701\r\
             PID|1||MRN-300^^^NORTH^MR||Writer^Pat\r\
             PV1|1|O|||||||||||||||||V-88^^^NORTH^VN\r\
             {txa}\
             OBX|1|TX|DS^Summary^L||Admitted for observation.~Discharged well.||||||F\r\
             OBX|2|FT|DS^Summary^L||Follow up in clinic.||||||F\r"
        )
    }

    fn document(text: &str) -> Result<Value, MapError> {
        let msg = parse_message(text.as_bytes()).unwrap();
        let mapped = map_message(&msg, &MapContext::default())?;
        Ok(mapped.resources.last().unwrap().clone())
    }

    #[test]
    fn tables_use_fhir_codes() {
        assert!(COMPLETION_STATUS_0271.iter().all(|(_, s)| [
            "preliminary",
            "final",
            "amended",
            "entered-in-error"
        ]
        .contains(s)));
        assert!(AVAILABILITY_0273.iter().all(|(_, s)| [
            "current",
            "superseded",
            "entered-in-error"
        ]
        .contains(s)));
    }

    #[test]
    fn the_document_carries_its_text_as_base64() {
        let d = document(&mdm()).unwrap();
        assert_eq!(d["resourceType"], "DocumentReference");
        assert_eq!(d["masterIdentifier"]["value"], "DOC-42");
        assert_eq!(d["status"], "current");
        assert_eq!(d["docStatus"], "final");
        assert_eq!(d["type"]["coding"][0]["code"], "DS");
        assert_eq!(d["date"], "2024-07-01T10:30:00-04:00");
        assert_eq!(d["description"], "Discharge summary");
        let text = "Admitted for observation.\nDischarged well.\nFollow up in clinic.";
        assert_eq!(
            d["content"],
            json!([{"attachment": {
                "contentType": TEXT_CONTENT_TYPE,
                "data": base64(text.as_bytes())
            }}])
        );
        assert!(d["context"]["encounter"][0]["reference"]
            .as_str()
            .unwrap()
            .starts_with("Encounter/"));
    }

    #[test]
    fn encapsulated_data_is_an_attachment_of_its_own() {
        let pdf = mdm().replace(
            "OBX|2|FT|DS^Summary^L||Follow up in clinic.||||||F",
            "OBX|2|ED|PDF^Printable^L||^AP^PDF^Base64^JVBERi0x||||||F",
        );
        let d = document(&pdf).unwrap();
        assert_eq!(
            d["content"][1]["attachment"]["contentType"],
            "application/pdf"
        );
        assert_eq!(d["content"][1]["attachment"]["data"], "JVBERi0x");
    }

    #[test]
    fn pointers_are_urls_and_other_values_are_not_content() {
        let other = mdm().replace(
            "OBX|2|FT|DS^Summary^L||Follow up in clinic.||||||F",
            "OBX|2|RP|IMG^Image^L||https://img.example/1^PACS^IM^JPEG||||||F\r\
             OBX|3|HD|UID^Study^L||1.2.3.4||||||F",
        );
        let d = document(&other).unwrap();
        assert_eq!(d["content"].as_array().unwrap().len(), 2);
        assert_eq!(
            d["content"][1]["attachment"],
            json!({"url": "https://img.example/1"})
        );
    }

    #[test]
    fn number_content_and_codes_are_checked() {
        let no_number = mdm().replace("DOC-42^DOCS", "");
        let err = document(&no_number).unwrap_err();
        assert_eq!(
            (err.code, err.location),
            (101, Some(("TXA".to_owned(), 1, 12)))
        );
        let empty = mdm()
            .replace("Admitted for observation.~Discharged well.", "")
            .replace("Follow up in clinic.", "");
        assert_eq!(document(&empty).unwrap_err().code, 101);
        let bad_status = mdm().replace("||AU||AV|", "||ZZ||AV|");
        let err = document(&bad_status).unwrap_err();
        assert_eq!((err.code, err.location.unwrap().2), (103, 17));
        let obsolete = document(&mdm().replace("||AU||AV|", "||AU||OB|")).unwrap();
        assert_eq!(obsolete["status"], "superseded");
    }

    #[test]
    fn a_resend_keeps_the_id() {
        let first = document(&mdm()).unwrap();
        let corrected = document(&mdm().replace("Discharged well.", "Discharged home.")).unwrap();
        assert_eq!(first["id"], corrected["id"]);
    }
}
