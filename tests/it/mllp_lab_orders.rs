//! Orders and specimen-oriented results (OML^O21, ORM^O01, OUL^R22) over real MLLP
//! connections, checked through the FHIR API.

use serde_json::Value;

use crate::support::{everything_for, field, replaced, resources_of, spawn_app};

const OML: &[u8] = include_bytes!("../fixtures/oml_o21.hl7");
const ORM: &[u8] = include_bytes!("../fixtures/orm_o01.hl7");
const ORM_CANCEL: &[u8] = include_bytes!("../fixtures/orm_o01_cancel.hl7");
const OUL: &[u8] = include_bytes!("../fixtures/oul_r22.hl7");
const ORDERED_MRN: &str = "TST400118";

/// The resource of `resource_type` whose `code` has `code`.
fn with_code<'a>(bundle: &'a Value, resource_type: &str, code: &str) -> &'a Value {
    let found = resources_of(bundle, resource_type)
        .into_iter()
        .find(|r| r["code"]["coding"][0]["code"] == code);
    found.unwrap_or_else(|| panic!("a {resource_type} coded {code}"))
}

fn reference_to(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    )
}

#[tokio::test]
async fn an_oml_o21_stores_each_order_with_its_question_and_specimen() {
    let app = spawn_app().await;
    let ack = app.send_accepted(OML).await;
    assert_eq!(field(&ack, "MSH", 9), "ACK^O21^ACK");
    let bundle = everything_for(&app, ORDERED_MRN).await;
    assert_eq!(resources_of(&bundle, "ServiceRequest").len(), 2);
    assert_eq!(resources_of(&bundle, "Encounter").len(), 1);
    let lipid = with_code(&bundle, "ServiceRequest", "24331-1");
    let fasting = with_code(&bundle, "Observation", "49541-6");
    let specimen = resources_of(&bundle, "Specimen")[0];
    assert_eq!(lipid["status"], "active");
    assert_eq!(lipid["intent"], "order");
    assert_eq!(lipid["priority"], "stat");
    assert_eq!(lipid["identifier"][0]["type"]["coding"][0]["code"], "PLAC");
    assert_eq!(lipid["identifier"][0]["value"], "PLC5501");
    assert_eq!(lipid["authoredOn"], "2024-07-02T08:10:00-04:00");
    assert_eq!(lipid["note"][0]["text"], "Patient fasting since 22:00");
    assert_eq!(lipid["reasonCode"][0]["coding"][0]["code"], "E78.5");
    assert_eq!(
        lipid["supportingInfo"][0]["reference"],
        reference_to(fasting)
    );
    assert_eq!(lipid["specimen"][0]["reference"], reference_to(specimen));
    assert_eq!(specimen["request"][0]["reference"], reference_to(lipid));
    assert_eq!(specimen["type"]["coding"][0]["code"], "119297000");
    assert_eq!(
        specimen["collection"]["collectedDateTime"],
        "2024-07-02T08:00:00-04:00"
    );
    let a1c = with_code(&bundle, "ServiceRequest", "4548-4");
    assert_eq!(a1c["priority"], "routine");
    app.stop().await;
}

#[tokio::test]
async fn a_resent_order_under_a_new_control_id_updates_nothing() {
    let app = spawn_app().await;
    app.send_accepted(OML).await;
    app.send_accepted(&replaced(OML, "|ORD0001|", "|ORD0001-R|"))
        .await;
    let bundle = everything_for(&app, ORDERED_MRN).await;
    let requests = resources_of(&bundle, "ServiceRequest");
    assert_eq!(requests.len(), 2, "the same orders, not new ones");
    assert!(requests.iter().all(|r| r["meta"]["versionId"] == "1"));
    assert_eq!(resources_of(&bundle, "Specimen").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_orc_alone_cancels_the_order_and_keeps_what_was_ordered() {
    let app = spawn_app().await;
    app.send_accepted(OML).await;
    app.send_accepted(ORM_CANCEL).await;
    let bundle = everything_for(&app, ORDERED_MRN).await;
    let lipid = with_code(&bundle, "ServiceRequest", "24331-1");
    assert_eq!(lipid["status"], "revoked", "CR: cancelled as requested");
    assert_eq!(lipid["meta"]["versionId"], "2");
    assert_eq!(lipid["priority"], "stat", "the order's details stay");
    assert!(lipid["specimen"].is_array() && lipid["supportingInfo"].is_array());
    let a1c = with_code(&bundle, "ServiceRequest", "4548-4");
    assert_eq!(a1c["status"], "active");
    app.stop().await;
}

#[tokio::test]
async fn an_orm_o01_takes_its_priority_from_orc_7() {
    let app = spawn_app().await;
    let ack = app.send_accepted(ORM).await;
    assert_eq!(field(&ack, "MSH", 9), "ACK^O01^ACK");
    let bundle = everything_for(&app, "TST400119").await;
    let xray = with_code(&bundle, "ServiceRequest", "36643-5");
    assert_eq!(xray["priority"], "asap");
    assert_eq!(xray["status"], "active");
    app.stop().await;
}

#[tokio::test]
async fn a_priority_outside_its_table_gets_ae_naming_tq1_9() {
    let app = spawn_app().await;
    let bad = replaced(OML, "TQ1|1||||||||S", "TQ1|1||||||||Q");
    let ack = app.mllp_exchange(&[&bad]).await.remove(0);
    assert_eq!(field(&ack, "MSA", 1), "AE", "{ack:?}");
    assert_eq!(field(&ack, "ERR", 2), "TQ1^1^9");
    assert!(field(&ack, "ERR", 3).starts_with("103^"), "{ack:?}");
    let (_, found) = app.get_json("/ServiceRequest?identifier=PLC5501").await;
    assert_eq!(found["total"], 0, "nothing of a refused message is stored");
    app.stop().await;
}

#[tokio::test]
async fn a_pharmacy_order_stays_unsupported_with_ar() {
    let app = spawn_app().await;
    let pharmacy = replaced(
        ORM,
        "OBR|1|PLR7001^EHRORD||36643-5^XR Chest 2 Views^LN",
        "RXO|00069-3150-83^Amoxicillin 500 mg^NDC",
    );
    let ack = app.mllp_exchange(&[&pharmacy]).await.remove(0);
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack:?}");
    assert!(field(&ack, "ERR", 3).starts_with("200^"), "{ack:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_oul_r22_adds_results_to_the_specimen_the_order_asked_for() {
    let app = spawn_app().await;
    app.send_accepted(OML).await;
    let ack = app.send_accepted(OUL).await;
    assert_eq!(field(&ack, "MSH", 9), "ACK^R22^ACK");
    let bundle = everything_for(&app, ORDERED_MRN).await;
    let specimens = resources_of(&bundle, "Specimen");
    assert_eq!(
        specimens.len(),
        1,
        "one specimen, described by both messages"
    );
    let specimen = specimens[0];
    let identifier_types: Vec<&Value> = specimen["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["type"]["coding"][0]["code"])
        .collect();
    assert_eq!(identifier_types, ["PLAC", "FILL"]);
    assert_eq!(specimen["status"], "available");
    assert_eq!(specimen["receivedTime"], "2024-07-02T09:00:00-04:00");
    let lipid = with_code(&bundle, "ServiceRequest", "24331-1");
    assert_eq!(
        specimen["request"][0]["reference"],
        reference_to(lipid),
        "the order's link survives the results"
    );
    let report = with_code(&bundle, "DiagnosticReport", "24331-1");
    assert_eq!(report["status"], "final");
    assert_eq!(report["specimen"][0]["reference"], reference_to(specimen));
    assert_eq!(report["result"].as_array().unwrap().len(), 2);
    let cholesterol = with_code(&bundle, "Observation", "2093-3");
    assert_eq!(cholesterol["specimen"]["reference"], reference_to(specimen));
    assert_eq!(cholesterol["valueQuantity"]["value"], 182);
    let triglyceride = with_code(&bundle, "Observation", "2571-8");
    assert_eq!(triglyceride["note"][0]["text"], "Slightly lipaemic");
    let arrival = with_code(&bundle, "Observation", "TEMP-ARR");
    assert_eq!(arrival["specimen"]["reference"], reference_to(specimen));
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_order_messages_by_their_type() {
    let app = spawn_app().await;
    app.send_accepted(OML).await;
    app.send_accepted(OUL).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    // The registry is shared by every test in this process: counts are at least ours.
    for (code, trigger) in [("OML", "O21"), ("OUL", "R22")] {
        let series = format!(
            "hl7bridge_hl7v2_messages_total{{message_code=\"{code}\",trigger_event=\"{trigger}\",ack_code=\"AA\"}}"
        );
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("{series}"))
            .trim()
            .parse()
            .unwrap();
        assert!(count >= 1, "{series}");
    }
    assert!(!text.contains(ORDERED_MRN));
    app.stop().await;
}
