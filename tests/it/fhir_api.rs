//! The FHIR facade over real HTTP.

use serde_json::{json, Value};

use crate::support::spawn_app;

const CALLER_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn clinic_transaction() -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5d1f0a3e-0000-4000-8000-000000000001",
                "resource": {"resourceType": "Organization", "name": "Invented Clinic",
                    "identifier": [{"system": "urn:test:org", "value": "ORG-1"}]},
                "request": {"method": "POST", "url": "Organization",
                    "ifNoneExist": "identifier=urn:test:org|ORG-1"}
            },
            {
                "fullUrl": "urn:uuid:5d1f0a3e-0000-4000-8000-000000000002",
                "resource": {"resourceType": "Patient",
                    "identifier": [{"system": "urn:test:mrn", "value": "MRN-42"}],
                    "name": [{"family": "Tester", "given": ["Una"]}], "gender": "female",
                    "managingOrganization": {"reference": "Organization?identifier=urn:test:org|ORG-1"}},
                "request": {"method": "POST", "url": "Patient"}
            },
            {
                "fullUrl": "urn:uuid:5d1f0a3e-0000-4000-8000-000000000003",
                "resource": {"resourceType": "Encounter", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": "urn:uuid:5d1f0a3e-0000-4000-8000-000000000002"},
                    "serviceProvider": {"reference": "urn:uuid:5d1f0a3e-0000-4000-8000-000000000001"}},
                "request": {"method": "POST", "url": "Encounter"}
            },
            {
                "fullUrl": "urn:uuid:5d1f0a3e-0000-4000-8000-000000000004",
                "resource": {"resourceType": "Observation", "status": "final",
                    "code": {"text": "Body weight"},
                    "subject": {"reference": "urn:uuid:5d1f0a3e-0000-4000-8000-000000000002"},
                    "encounter": {"reference": "urn:uuid:5d1f0a3e-0000-4000-8000-000000000003"},
                    "valueQuantity": serde_json::from_str::<Value>(r#"{"value": 61.50, "unit": "kg"}"#).unwrap()},
                "request": {"method": "POST", "url": "Observation"}
            }
        ]
    })
}

fn location_id(entry: &Value) -> String {
    let location = entry["response"]["location"].as_str().expect("a location");
    location.split('/').nth(1).unwrap().to_string()
}

#[tokio::test]
async fn metadata_claims_r4_json_and_patient_everything() {
    let app = spawn_app().await;
    let (status, cs) = app.get_json("/metadata").await;
    assert_eq!(status, 200);
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let patient = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert_eq!(patient["operation"][0]["name"], "everything");
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_resolves_placeholders_and_everything_returns_the_compartment() {
    let app = spawn_app().await;
    let (status, response) = app.post_bundle(clinic_transaction().to_string()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "transaction-response");
    let statuses: Vec<_> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["201 Created"; 4]);
    let patient_id = location_id(&response["entry"][1]);
    let org_id = location_id(&response["entry"][0]);

    let response = app
        .client
        .get(format!("{}/Patient/{patient_id}/$everything", app.base))
        .header("traceparent", CALLER_TRACE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bundle: Value = response.json().await.unwrap();
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 3);
    let entries = bundle["entry"].as_array().unwrap();
    let kinds: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["resource"]["resourceType"].as_str().unwrap().to_string(),
                e["search"]["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(kinds[0], ("Patient".into(), "match".into()));
    assert!(kinds.contains(&("Encounter".into(), "match".into())));
    assert!(kinds.contains(&("Observation".into(), "match".into())));
    assert!(kinds.contains(&("Organization".into(), "include".into())));
    let encounter = entries
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Encounter")
        .unwrap();
    assert_eq!(
        encounter["resource"]["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    assert_eq!(
        encounter["resource"]["serviceProvider"]["reference"],
        format!("Organization/{org_id}")
    );
    let patient = &entries[0]["resource"];
    assert_eq!(
        patient["managingOrganization"]["reference"],
        format!("Organization/{org_id}")
    );
    let obs = entries
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Observation")
        .unwrap();
    assert_eq!(
        obs["resource"]["valueQuantity"]["value"].to_string(),
        "61.50"
    );

    let ext = &bundle["meta"]["extension"][0];
    assert_eq!(
        ext["url"],
        "https://hl7bridge.dev/fhir/StructureDefinition/w3c-trace-context"
    );
    let traceparent = ext["extension"][0]["valueString"].as_str().unwrap();
    assert_eq!(&traceparent[..36], &CALLER_TRACE[..36], "same trace id");
    assert_ne!(
        &traceparent[36..52],
        &CALLER_TRACE[36..52],
        "the server's own span"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace_instead_of_failing() {
    let app = spawn_app().await;
    let (_, response) = app.post_bundle(clinic_transaction().to_string()).await;
    let patient_id = location_id(&response["entry"][1]);
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let response = app
        .client
        .get(format!("{}/Patient/{patient_id}/$everything", app.base))
        .header("traceparent", bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bundle: Value = response.json().await.unwrap();
    let traceparent = bundle["meta"]["extension"][0]["extension"][0]["valueString"]
        .as_str()
        .unwrap();
    assert_eq!(traceparent.len(), 55);
    assert_ne!(&traceparent[3..35], "4bf92f3577b34da6a3ce929d0e0e4736");
    app.stop().await;
}

#[tokio::test]
async fn a_patient_is_found_by_identifier_with_or_without_system() {
    let app = spawn_app().await;
    app.post_bundle(clinic_transaction().to_string()).await;
    for query in ["identifier=urn:test:mrn%7CMRN-42", "identifier=MRN-42"] {
        let (status, bundle) = app.get_json(&format!("/Patient?{query}")).await;
        assert_eq!(status, 200);
        assert_eq!(bundle["total"], 1, "{query}");
        assert_eq!(
            bundle["entry"][0]["resource"]["identifier"][0]["value"],
            "MRN-42"
        );
    }
    let (_, bundle) = app.get_json("/Patient?identifier=urn:other%7CMRN-42").await;
    assert_eq!(bundle["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn reading_a_stored_resource_returns_it_with_its_version_headers() {
    let app = spawn_app().await;
    let (_, response) = app.post_bundle(clinic_transaction().to_string()).await;
    let patient_id = location_id(&response["entry"][1]);
    let response = app.get(&format!("/Patient/{patient_id}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    assert!(response.headers().contains_key("last-modified"));
    let patient: Value = response.json().await.unwrap();
    assert_eq!(patient["id"], patient_id.as_str());
    assert_eq!(patient["meta"]["versionId"], "1");
    app.stop().await;
}

#[tokio::test]
async fn unknown_resources_and_types_are_404_operation_outcomes() {
    let app = spawn_app().await;
    for path in ["/Patient/nope", "/Spaceship/1", "/Patient/a%2Fb"] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["code"], "not-found");
    }
    let (status, _) = app.get_json("/Patient/nope/$everything").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_with_a_bad_entry_writes_nothing_and_names_the_entry() {
    let app = spawn_app().await;
    let mut bundle = clinic_transaction();
    bundle["entry"][3]["resource"]["performer"] = json!([]);
    let (status, outcome) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.entry[3].resource.performer"
    );
    let (_, found) = app.get_json("/Patient?identifier=MRN-42").await;
    assert_eq!(
        found["total"], 0,
        "nothing of the failed transaction was stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_answers_each_entry_on_its_own() {
    let app = spawn_app().await;
    let mut bundle = clinic_transaction();
    bundle["type"] = json!("batch");
    bundle["entry"][2]["resource"]["subject"]["reference"] = json!("Patient/p1");
    bundle["entry"][3]["resource"]["subject"]["reference"] = json!("Patient/p1");
    bundle["entry"][3]["resource"]["encounter"] = json!({"reference": "Encounter/e1"});
    bundle["entry"][1]["resource"]["gender"] = json!("");
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(response["type"], "batch-response");
    let statuses: Vec<_> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "400 Bad Request",
            "201 Created",
            "201 Created"
        ]
    );
    assert_eq!(
        response["entry"][1]["response"]["outcome"]["issue"][0]["code"],
        "invalid"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_conditional_create_twice_keeps_one_resource() {
    let app = spawn_app().await;
    let (_, first) = app.post_bundle(clinic_transaction().to_string()).await;
    let (_, second) = app.post_bundle(clinic_transaction().to_string()).await;
    assert_eq!(second["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        location_id(&first["entry"][0]),
        location_id(&second["entry"][0])
    );
    let (_, found) = app
        .get_json("/Organization?identifier=urn:test:org%7CORG-1")
        .await;
    assert_eq!(found["total"], 1);
    app.stop().await;
}

#[tokio::test]
async fn broken_json_and_xml_bodies_get_operation_outcomes() {
    let app = spawn_app().await;
    let (status, body) = app.post_bundle("{\"resourceType\": \"Bundle\", ").await;
    assert_eq!(status, 400);
    assert_eq!(body["resourceType"], "OperationOutcome");
    let response = app
        .client
        .post(format!("{}/", app.base))
        .header("content-type", "application/fhir+xml")
        .body("<Bundle/>")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a Bundle without its type");
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let (status, body) = app
        .post_bundle(json!({"resourceType": "Patient"}).to_string())
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["issue"][0]["code"], "invalid");
    app.stop().await;
}

#[tokio::test]
async fn unknown_search_parameters_warn_by_default_and_fail_when_strict() {
    let app = spawn_app().await;
    let (status, bundle) = app.get_json("/Patient?identifier=x&shoe-size=9").await;
    assert_eq!(status, 200);
    assert_eq!(bundle["entry"][0]["search"]["mode"], "outcome");
    assert_eq!(
        bundle["entry"][0]["resource"]["issue"][0]["severity"],
        "warning"
    );
    let response = app
        .client
        .get(format!("{}/Patient?identifier=x&shoe-size=9", app.base))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn the_server_serves_the_definition_of_its_trace_extension() {
    let app = spawn_app().await;
    let (status, definition) = app.get_json("/StructureDefinition/w3c-trace-context").await;
    assert_eq!(status, 200);
    assert_eq!(definition["resourceType"], "StructureDefinition");
    assert_eq!(
        definition["url"],
        "https://hl7bridge.dev/fhir/StructureDefinition/w3c-trace-context"
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer_for_load_balancers() {
    let app = spawn_app().await;
    let (status, health) = app.get_json("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("pass")));
    let (status, ready) = app.get_json("/ready").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("pass")));
    app.stop().await;
}
