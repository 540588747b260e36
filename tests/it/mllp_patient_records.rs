//! Patient merges (ADT^A40), person records (ADT^A28), immunizations (VXU^V04) and documents
//! (MDM^T02) over real MLLP connections, checked through the FHIR API.

use serde_json::Value;

use crate::support::{
    everything_for, field, replaced, resources_of, spawn_app, spawn_app_with, TestApp,
};

const ADT_A01: &[u8] = include_bytes!("../fixtures/adt_a01.hl7");
const ADT_A28: &[u8] = include_bytes!("../fixtures/adt_a28.hl7");
const ADT_A40: &[u8] = include_bytes!("../fixtures/adt_a40.hl7");
const VXU: &[u8] = include_bytes!("../fixtures/vxu_v04.hl7");
const MDM: &[u8] = include_bytes!("../fixtures/mdm_t02.hl7");
const SURVIVOR_MRN: &str = "TST200777";
const MERGED_MRN: &str = "TST200999";
/// The text of the OBX of `mdm_t02.hl7`, base64.
const SUMMARY_BASE64: &str =
    "QWRtaXR0ZWQgd2l0aCBjaGVzdCBwYWluLgpUcm9wb25pbiBuZWdhdGl2ZS4KRGlzY2hhcmdlZCBob21lIG9uIGRheSB0d28u";

/// The one Patient with identifier `mrn`.
async fn patient(app: &TestApp, mrn: &str) -> Value {
    let (status, found) = app.get_json(&format!("/Patient?identifier={mrn}")).await;
    assert_eq!((status, found["total"].as_u64()), (200, Some(1)), "{found}");
    found["entry"][0]["resource"].clone()
}

fn reference_to(resource: &Value) -> String {
    format!("Patient/{}", resource["id"].as_str().unwrap())
}

/// A visit of the patient that A40 merges, so there is data to keep.
fn merged_patient_visit() -> Vec<u8> {
    let visit = "PV1|1|O|CLINIC-1^^^GENHOSP||||||||||||||||ENC9002^^^GENHOSP\r";
    let mut text = replaced(
        ADT_A28,
        "ADT^A28^ADT_A05|ADT0028",
        "ADT^A04^ADT_A01|ADT0004",
    );
    text = replaced(&text, "EVN|A28", "EVN|A04");
    replaced(&text, "PV1|1|N\r", visit)
}

#[tokio::test]
async fn an_adt_a40_links_the_two_patients_and_deletes_nothing() {
    let app = spawn_app().await;
    app.send_accepted(ADT_A01).await;
    app.send_accepted(&merged_patient_visit()).await;
    let ack = app.send_accepted(ADT_A40).await;
    assert_eq!(field(&ack, "MSH", 9), "ACK^A40^ACK");
    let survivor = patient(&app, SURVIVOR_MRN).await;
    let merged = patient(&app, MERGED_MRN).await;
    assert_eq!(merged["active"], false);
    assert_eq!(merged["link"][0]["type"], "replaced-by");
    assert_eq!(
        merged["link"][0]["other"]["reference"],
        reference_to(&survivor)
    );
    assert_eq!(
        merged["name"][0]["family"], "Brooke",
        "the merged record keeps its data"
    );
    assert_eq!(merged["birthDate"], "1975-11-03");
    assert_eq!(survivor["link"][0]["type"], "replaces");
    assert_eq!(
        survivor["link"][0]["other"]["reference"],
        reference_to(&merged)
    );
    let (_, visit) = app.get_json("/Encounter?identifier=ENC9002").await;
    assert_eq!(
        visit["total"], 1,
        "the merged patient's visit is still there"
    );
    let everything = everything_for(&app, SURVIVOR_MRN).await;
    assert_eq!(
        resources_of(&everything, "Patient").len(),
        2,
        "the merged Patient is in the survivor's compartment through its link"
    );
    app.stop().await;
}

#[tokio::test]
async fn later_messages_about_either_patient_keep_the_merge() {
    let app = spawn_app().await;
    app.send_accepted(ADT_A01).await;
    app.send_accepted(ADT_A28).await;
    app.send_accepted(ADT_A40).await;
    let renamed = replaced(ADT_A01, "|ADT0001|", "|ADT0002|");
    app.send_accepted(&replaced(&renamed, "Brook^Ivo", "Brook^Ivo^Jon"))
        .await;
    let late = replaced(ADT_A28, "|ADT0028|", "|ADT0029|");
    app.send_accepted(&replaced(&late, "Brooke^Ivo", "Brooke^Ivan"))
        .await;
    let survivor = patient(&app, SURVIVOR_MRN).await;
    assert_eq!(survivor["name"][0]["given"][1], "Jon");
    assert_eq!(survivor["link"][0]["type"], "replaces");
    let merged = patient(&app, MERGED_MRN).await;
    assert_eq!(merged["name"][0]["given"][0], "Ivan");
    assert_eq!(merged["active"], false);
    assert_eq!(merged["link"][0]["type"], "replaced-by");
    app.stop().await;
}

#[tokio::test]
async fn an_adt_a28_adds_a_person_without_a_visit() {
    let app = spawn_app().await;
    let ack = app.send_accepted(ADT_A28).await;
    assert_eq!(field(&ack, "MSH", 9), "ACK^A28^ACK");
    let bundle = everything_for(&app, MERGED_MRN).await;
    assert_eq!(resources_of(&bundle, "Patient").len(), 1);
    assert!(resources_of(&bundle, "Encounter").is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_vxu_v04_stores_immunizations_and_their_observations() {
    let app = spawn_app().await;
    let ack = app.send_accepted(VXU).await;
    assert_eq!(field(&ack, "MSH", 9), "ACK^V04^ACK");
    let bundle = everything_for(&app, "TST500321").await;
    let immunizations = resources_of(&bundle, "Immunization");
    assert_eq!(immunizations.len(), 2);
    let by_cvx = |code: &str| {
        let found = immunizations
            .iter()
            .find(|i| i["vaccineCode"]["coding"][0]["code"] == code);
        *found.unwrap_or_else(|| panic!("CVX {code}"))
    };
    let flu = by_cvx("141");
    assert_eq!(
        flu["vaccineCode"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/cvx"
    );
    assert_eq!(flu["status"], "completed");
    assert_eq!(flu["occurrenceDateTime"], "2024-07-06T11:30:00-04:00");
    assert_eq!(flu["lotNumber"], "LOT-K773");
    assert_eq!(flu["expirationDate"], "2025-06-30");
    assert_eq!(flu["doseQuantity"]["value"].to_string(), "0.5");
    assert_eq!(flu["route"]["coding"][0]["code"], "C28161");
    assert_eq!(flu["identifier"][0]["value"], "IZ-44017");
    let refused = by_cvx("998");
    assert_eq!(refused["status"], "not-done");
    assert_eq!(refused["statusReason"]["coding"][0]["code"], "00");
    assert!(
        refused.get("doseQuantity").is_none(),
        "999 is an unknown amount"
    );
    let observations = resources_of(&bundle, "Observation");
    assert_eq!(observations.len(), 1);
    let flu_reference = format!("Immunization/{}", flu["id"].as_str().unwrap());
    assert_eq!(observations[0]["partOf"][0]["reference"], flu_reference);
    assert_eq!(
        observations[0]["valueCodeableConcept"]["coding"][0]["code"],
        "V02"
    );
    app.send_accepted(&replaced(VXU, "|IZ0001|", "|IZ0001-R|"))
        .await;
    let again = everything_for(&app, "TST500321").await;
    let immunizations = resources_of(&again, "Immunization");
    assert_eq!(immunizations.len(), 2, "a resend updates, not duplicates");
    assert!(immunizations.iter().all(|i| i["meta"]["versionId"] == "1"));
    app.stop().await;
}

#[tokio::test]
async fn a_completion_status_outside_table_0322_gets_ae_naming_rxa_20() {
    let app = spawn_app().await;
    let bad = replaced(VXU, "|CP|A", "|XX|A");
    let ack = app.mllp_exchange(&[&bad]).await.remove(0);
    assert_eq!(field(&ack, "MSA", 1), "AE", "{ack:?}");
    assert_eq!(field(&ack, "ERR", 2), "RXA^1^20");
    assert!(field(&ack, "ERR", 3).starts_with("103^"), "{ack:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_mdm_t02_stores_the_document_with_its_text() {
    let app = spawn_app().await;
    let ack = app.send_accepted(MDM).await;
    assert_eq!(field(&ack, "MSH", 9), "ACK^T02^ACK");
    let bundle = everything_for(&app, SURVIVOR_MRN).await;
    let documents = resources_of(&bundle, "DocumentReference");
    assert_eq!(documents.len(), 1);
    let document = documents[0];
    assert_eq!(document["masterIdentifier"]["value"], "DOC-7781");
    assert_eq!(document["status"], "current");
    assert_eq!(document["docStatus"], "final");
    assert_eq!(document["type"]["coding"][0]["code"], "DS");
    assert_eq!(document["date"], "2024-07-07T15:00:00+01:00");
    let attachment = &document["content"][0]["attachment"];
    assert_eq!(attachment["contentType"], "text/plain; charset=utf-8");
    assert_eq!(attachment["data"], SUMMARY_BASE64);
    let encounter = resources_of(&bundle, "Encounter")[0];
    assert_eq!(
        document["context"]["encounter"][0]["reference"],
        format!("Encounter/{}", encounter["id"].as_str().unwrap())
    );
    app.stop().await;
}

/// A sender's configured character set decides how its bytes are read, over MSH-18 and the
/// UTF-8 check; a configured fallback reads what nothing else fits.
#[tokio::test]
async fn a_senders_character_set_and_the_fallback_come_from_the_settings() {
    use hl7bridge::ingest::v2::CharsetRules;
    // 0xB1 is ą in ISO 8859-2, ± in 8859-1 (what MSH-18 claims) and windows-1252.
    let adt = |application: &str, msh_18: &str, mrn: &str| {
        let mut bytes = format!(
            "MSH|^~\\&|{application}|EAST|HL7BRIDGE|GENHOSP|20240630120030||ADT^A04^ADT_A01|CS-{mrn}|P|2.5.1||||||{msh_18}\r\
             EVN|A04|20240630120030\r\
             PID|1||{mrn}^^^EAST^MR||Wi"
        )
        .into_bytes();
        bytes.push(0xB1);
        bytes.extend_from_slice(b"niewska^Ola||19900101|F\r");
        bytes
    };
    let app = spawn_app_with(|c| {
        c.mllp_charsets = CharsetRules::parse(Some("POLAB^EAST=8859/2"), Some("8859/5")).unwrap();
    })
    .await;
    for (application, msh_18, mrn, family) in [
        ("POLAB", "8859/1", "CS001", "Wi\u{105}niewska"),
        ("OTHER", "8859/1", "CS002", "Wi\u{b1}niewska"),
        ("OTHER", "", "CS003", "Wi\u{411}niewska"),
    ] {
        app.send_accepted(&adt(application, msh_18, mrn)).await;
        let bundle = everything_for(&app, mrn).await;
        let patient = resources_of(&bundle, "Patient")[0];
        assert_eq!(
            patient["name"][0]["family"], family,
            "{application} {msh_18:?}"
        );
    }
    app.stop().await;
}
