//! `PATCH /{type}/{id}` with a JSON Patch (RFC 6902): every operation, `If-Match`, failing
//! tests, forbidden targets, broken documents and pointers.

use serde_json::{json, Value};

use crate::support::{spawn_app, TestApp};

const JSON_PATCH: &str = "application/json-patch+json";

/// An invented patient, stored as version 1 of `Patient/{id}`.
async fn seed(app: &TestApp, id: &str) {
    let patient = json!({"resourceType": "Patient", "id": id,
        "name": [{"family": "Fennimore", "given": ["Ada"]}], "gender": "female",
        "telecom": [{"system": "phone", "value": "555-0100"}, {"system": "email", "value": "ada@example.test"}]});
    let (status, _) = app
        .put_json(&format!("/Patient/{id}"), patient.to_string())
        .await;
    assert_eq!(status, 201);
}

struct Answer {
    status: u16,
    etag: Option<String>,
    body: Value,
}

fn patch_request(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: &str,
) -> reqwest::RequestBuilder {
    app.client
        .patch(format!("{}{path}", app.base))
        .header("content-type", content_type)
        .body(body.to_string())
}

async fn patch(app: &TestApp, path: &str, body: &str, if_match: Option<&str>) -> Answer {
    let mut request = patch_request(app, path, JSON_PATCH, body);
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, etag, body }
}

#[tokio::test]
async fn every_operation_applies_and_the_result_is_a_new_version() {
    let app = spawn_app().await;
    seed(&app, "pat1").await;
    let operations = json!([
        {"op": "test", "path": "/name/0/family", "value": "Fennimore"},
        {"op": "add", "path": "/birthDate", "value": "1984-02-29"},
        {"op": "replace", "path": "/gender", "value": "other"},
        {"op": "copy", "from": "/name/0", "path": "/name/-"},
        {"op": "move", "from": "/name/1/family", "path": "/name/1/text"},
        {"op": "remove", "path": "/telecom/0"},
    ]);
    let answer = patch(&app, "/Patient/pat1", &operations.to_string(), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.etag.as_deref(), Some("W/\"2\""));
    let (_, stored) = app.get_json("/Patient/pat1").await;
    assert_eq!(stored["meta"]["versionId"], "2");
    assert_eq!(stored["birthDate"], "1984-02-29");
    assert_eq!(stored["gender"], "other");
    assert_eq!(
        stored["name"][1],
        json!({"text": "Fennimore", "given": ["Ada"]})
    );
    assert_eq!(
        stored["telecom"],
        json!([{"system": "email", "value": "ada@example.test"}])
    );
    app.stop().await;
}

#[tokio::test]
async fn if_match_naming_an_older_version_is_412() {
    let app = spawn_app().await;
    seed(&app, "pat2").await;
    let change = r#"[{"op": "replace", "path": "/gender", "value": "male"}]"#;
    assert_eq!(
        patch(&app, "/Patient/pat2", change, Some("W/\"1\""))
            .await
            .status,
        200
    );
    let stale = patch(&app, "/Patient/pat2", change, Some("W/\"1\"")).await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.body["resourceType"], "OperationOutcome");
    let other = r#"[{"op": "replace", "path": "/gender", "value": "other"}]"#;
    let current = patch(&app, "/Patient/pat2", other, Some("W/\"2\"")).await;
    assert_eq!(current.etag.as_deref(), Some("W/\"3\""));
    app.stop().await;
}

#[tokio::test]
async fn a_failing_test_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    seed(&app, "pat3").await;
    let operations = r#"[{"op": "replace", "path": "/gender", "value": "male"},
        {"op": "test", "path": "/name/0/family", "value": "Somebody Else"}]"#;
    let answer = patch(&app, "/Patient/pat3", operations, None).await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.body["issue"][0]["code"], "processing");
    let (_, stored) = app.get_json("/Patient/pat3").await;
    assert_eq!(
        (
            stored["gender"].as_str(),
            stored["meta"]["versionId"].as_str()
        ),
        (Some("female"), Some("1"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_test_compares_decimals_by_value() {
    let app = spawn_app().await;
    let observation = r#"{"resourceType":"Observation","id":"obs1","status":"final",
        "code":{"text":"invented pulse"},"valueQuantity":{"value":72.40,"unit":"/min"}}"#;
    let (status, _) = app.put_json("/Observation/obs1", observation).await;
    assert_eq!(status, 201);
    let operations = r#"[{"op": "test", "path": "/valueQuantity/value", "value": 72.4},
        {"op": "replace", "path": "/status", "value": "amended"}]"#;
    let answer = patch(&app, "/Observation/obs1", operations, None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    app.stop().await;
}

#[tokio::test]
async fn the_id_and_type_cannot_be_patched_and_the_result_must_stay_valid() {
    let app = spawn_app().await;
    seed(&app, "pat4").await;
    for operations in [
        r#"[{"op": "replace", "path": "/id", "value": "other"}]"#,
        r#"[{"op": "remove", "path": "/resourceType"}]"#,
        r#"[{"op": "replace", "path": "", "value": {"resourceType": "Patient", "id": "pat4"}}]"#,
        r#"[{"op": "add", "path": "/name", "value": []}]"#,
        r#"[{"op": "add", "path": "/favouriteColour", "value": "green"}]"#,
        r#"[{"op": "replace", "path": "/gender", "value": {"code": "x"}}]"#,
    ] {
        let answer = patch(&app, "/Patient/pat4", operations, None).await;
        assert_eq!(answer.status, 422, "{operations}: {}", answer.body);
        assert_eq!(answer.body["resourceType"], "OperationOutcome");
    }
    let (_, stored) = app.get_json("/Patient/pat4").await;
    assert_eq!(stored["meta"]["versionId"], "1");
    app.stop().await;
}

#[tokio::test]
async fn broken_patch_documents_are_400_and_bad_pointers_422() {
    let app = spawn_app().await;
    seed(&app, "pat5").await;
    for document in [
        r#"{"op": "remove", "path": "/gender"}"#,
        r#""remove /gender""#,
        r#"[{"path": "/gender"}]"#,
        r#"[{"op": "merge", "path": "/gender", "value": "x"}]"#,
        r#"[{"op": "remove", "path": "gender"}]"#,
        r#"[{"op": "remove", "path": "/name/0/~2"}]"#,
        r#"[{"op": "add", "path": "/gender"}]"#,
        r#"[{"op": "move", "path": "/gender"}]"#,
        r#"[{"op": "remove", "path": 7}]"#,
        r#"[42]"#,
        r#"[{"op": "remove", "path": "/gender"}"#,
    ] {
        let answer = patch(&app, "/Patient/pat5", document, None).await;
        assert_eq!(answer.status, 400, "{document}: {}", answer.body);
        assert_eq!(answer.body["issue"][0]["code"], "invalid", "{document}");
    }
    for document in [
        r#"[{"op": "remove", "path": "/telecom/9"}]"#,
        r#"[{"op": "remove", "path": "/telecom/01"}]"#,
        r#"[{"op": "replace", "path": "/maritalStatus", "value": {"text": "x"}}]"#,
        r#"[{"op": "add", "path": "/name/5", "value": {"family": "x"}}]"#,
        r#"[{"op": "add", "path": "/contact/0/name", "value": {"family": "x"}}]"#,
        r#"[{"op": "move", "from": "/name", "path": "/name/0/given"}]"#,
        r#"[{"op": "copy", "from": "/nothing", "path": "/gender"}]"#,
    ] {
        let answer = patch(&app, "/Patient/pat5", document, None).await;
        assert_eq!(answer.status, 422, "{document}: {}", answer.body);
    }
    app.stop().await;
}

#[tokio::test]
async fn patch_needs_an_existing_resource_and_a_json_patch_body() {
    let app = spawn_app().await;
    let change = r#"[{"op": "replace", "path": "/gender", "value": "male"}]"#;
    assert_eq!(
        patch(&app, "/Patient/nobody", change, None).await.status,
        404
    );
    assert_eq!(patch(&app, "/NotAType/x", change, None).await.status, 404);
    seed(&app, "pat6").await;
    let fhir_json = patch_request(&app, "/Patient/pat6", "application/fhir+json", change)
        .send()
        .await
        .unwrap();
    assert_eq!(fhir_json.status(), 415);
    let deleted = app
        .client
        .delete(format!("{}/Patient/pat6", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(patch(&app, "/Patient/pat6", change, None).await.status, 410);
    app.stop().await;
}

#[tokio::test]
async fn patch_is_advertised_and_answers_in_xml_when_asked() {
    let app = spawn_app().await;
    let (_, capability) = app.get_json("/metadata").await;
    let interactions = &capability["rest"][0]["resource"][0]["interaction"];
    assert!(interactions
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["code"] == "patch"));
    seed(&app, "pat7").await;
    let change = r#"[{"op": "replace", "path": "/gender", "value": "male"}]"#;
    let response = patch_request(&app, "/Patient/pat7?_format=xml", JSON_PATCH, change)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let xml = response.text().await.unwrap();
    assert!(xml.contains("<gender value=\"male\"/>"), "{xml}");
    app.stop().await;
}
