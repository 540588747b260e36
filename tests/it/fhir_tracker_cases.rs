//! The transaction and batch cases issue 3 lists from other servers' trackers, through HTTP.
//! (The paging and `$everything` cases are in `fhir_everything.rs`.) Invented data only.

use serde_json::{json, Value};

use crate::support::{entry_statuses, located, spawn_app, TestApp};

fn organization(value: &str) -> Value {
    json!({"resourceType": "Organization", "name": "Invented Clinic",
        "identifier": [{"system": "urn:test:tracker-org", "value": value}]})
}

async fn count(app: &TestApp, query: &str) -> u64 {
    let (status, bundle) = app.get_json(&format!("{query}&_total=accurate")).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["total"].as_u64().unwrap()
}

#[tokio::test]
async fn two_entries_with_the_same_if_none_exist_make_one_organization_both_point_to() {
    let app = spawn_app().await;
    let condition = "identifier=urn:test:tracker-org|ORG-T1";
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:org-a", "resource": organization("ORG-T1"),
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": condition}},
        {"fullUrl": "urn:uuid:org-b", "resource": organization("ORG-T1"),
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": condition}},
        {"fullUrl": "urn:uuid:pat-a", "resource": {"resourceType": "Patient",
            "managingOrganization": {"reference": "urn:uuid:org-a"}},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:pat-b", "resource": {"resourceType": "Patient",
            "managingOrganization": {"reference": "urn:uuid:org-b"}},
         "request": {"method": "POST", "url": "Patient"}}]});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
    let entries = response["entry"].as_array().unwrap();
    assert_eq!(located(&entries[0]), located(&entries[1]), "{response}");
    assert_eq!(count(&app, "/Organization?identifier=ORG-T1").await, 1);
    let organization = located(&entries[0]);
    for patient in [&entries[2], &entries[3]] {
        let (_, read) = app.get_json(&format!("/{}", located(patient))).await;
        assert_eq!(read["managingOrganization"]["reference"], organization);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_of_conditional_puts_posted_twice_answers_200_the_second_time() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": organization("ORG-T2"),
         "request": {"method": "PUT", "url": "Organization?identifier=urn:test:tracker-org|ORG-T2"}},
        {"resource": {"resourceType": "Patient", "name": [{"family": "Putwice"}],
            "identifier": [{"system": "urn:test:tracker-mrn", "value": "MRN-T2"}]},
         "request": {"method": "PUT", "url": "Patient?identifier=urn:test:tracker-mrn|MRN-T2"}}]});
    let (status, first) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(entry_statuses(&first), ["201 Created", "201 Created"]);
    let (status, second) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        entry_statuses(&second),
        ["200 OK", "200 OK"],
        "never 409 or 500"
    );
    assert_eq!(count(&app, "/Patient?identifier=MRN-T2").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_conditional_create_on_an_identifier_with_an_empty_system_is_400_naming_it() {
    let app = spawn_app().await;
    let resource = json!({"resourceType": "Patient",
        "identifier": [{"system": "", "value": "MRN-T3"}]});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": organization("ORG-T3"), "request": {"method": "POST", "url": "Organization"}},
        {"resource": resource,
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=|MRN-T3"}}]});
    let (status, outcome) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 400, "{outcome}");
    let expression = outcome["issue"][0]["expression"][0].as_str().unwrap();
    assert_eq!(
        expression, "Bundle.entry[1].resource.identifier[0].system",
        "{outcome}"
    );
    assert!(
        !outcome.to_string().contains("selective"),
        "not a complaint about selectivity: {outcome}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_with_one_invalid_entry_answers_it_400_and_applies_the_others() {
    let app = spawn_app().await;
    let report = |issued: &str| {
        json!({"resourceType": "DiagnosticReport", "status": "final",
            "code": {"text": "invented panel"}, "issued": issued})
    };
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": report("2024-03-05T10:00:00Z"),
         "request": {"method": "POST", "url": "DiagnosticReport"}},
        // `issued` is an instant: a plain date is invalid.
        {"resource": report("2024-03-05"), "request": {"method": "POST", "url": "DiagnosticReport"}},
        {"resource": organization("ORG-T4"), "request": {"method": "POST", "url": "Organization"}}]});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "batch-response");
    assert_eq!(
        entry_statuses(&response),
        ["201 Created", "400 Bad Request", "201 Created"]
    );
    let outcome = &response["entry"][1]["response"]["outcome"];
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let named = outcome["issue"][0]["expression"][0]
        .as_str()
        .unwrap_or_default();
    assert!(named.contains("issued"), "the element is named: {outcome}");
    assert_eq!(count(&app, "/Organization?identifier=ORG-T4").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_second_entrys_if_none_exist_naming_the_first_entrys_placeholder_is_resolved_first() {
    let app = spawn_app().await;
    let bundle = |mrn: &str| {
        let condition = format!("identifier=urn:test:tracker-mrn|{mrn}");
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:pat-t5", "request": {"method": "POST", "url": "Patient",
                "ifNoneExist": condition},
             "resource": {"resourceType": "Patient",
                "identifier": [{"system": "urn:test:tracker-mrn", "value": mrn}]}},
            {"fullUrl": "urn:uuid:obs-t5", "request": {"method": "POST", "url": "Observation",
                "ifNoneExist": "patient=urn:uuid:pat-t5&code=http://loinc.org|718-7"},
             "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                "subject": {"reference": "urn:uuid:pat-t5"}}}]})
    };
    let (status, first) = app.post_bundle(bundle("MRN-T5").to_string()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(entry_statuses(&first), ["201 Created", "201 Created"]);
    // Posted again: the placeholder stands for the patient the first entry matched, so the
    // observation matches too. Left unresolved, it would match nothing and be duplicated.
    let (status, second) = app.post_bundle(bundle("MRN-T5").to_string()).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(entry_statuses(&second), ["200 OK", "200 OK"]);
    for i in 0..2 {
        assert_eq!(located(&first["entry"][i]), located(&second["entry"][i]));
    }
    let patient = located(&first["entry"][0]);
    assert_eq!(
        count(&app, &format!("/Observation?subject={patient}")).await,
        1
    );
    // Another patient's observation of the same code is its own.
    let (status, third) = app.post_bundle(bundle("MRN-T5b").to_string()).await;
    assert_eq!(status, 200, "{third}");
    assert_eq!(entry_statuses(&third), ["201 Created", "201 Created"]);
    assert_eq!(
        count(&app, "/Observation?code=http://loinc.org|718-7").await,
        2
    );
    app.stop().await;
}
