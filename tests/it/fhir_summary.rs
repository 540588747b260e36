//! `_summary=true|text|data|false` on read and search.

use serde_json::{json, Value};

use crate::support::{spawn_app, TestApp};

fn narrative(text: &str) -> Value {
    json!({"status": "generated",
        "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{text}</div>")})
}

async fn put(app: &TestApp, path: &str, resource: Value) {
    let (status, _) = app.put_json(path, resource.to_string()).await;
    assert_eq!(status, 201, "{path}");
}

fn keys(resource: &Value) -> Vec<&str> {
    resource
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

fn is_subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
}

/// An invented patient with elements inside and outside the R4 summary, and two observations.
async fn seed(app: &TestApp) {
    put(
        app,
        "/Patient/sum1",
        json!({"resourceType": "Patient", "id": "sum1", "text": narrative("Orla Penhallow"),
            "name": [{"family": "Penhallow", "given": ["Orla"]}], "gender": "female",
            "deceasedBoolean": false,
            "maritalStatus": {"text": "widowed"},
            "communication": [{"language": {"text": "Cornish"}}]}),
    )
    .await;
    for n in 1..=2 {
        put(
            app,
            &format!("/Observation/sumobs{n}"),
            json!({"resourceType": "Observation", "id": format!("sumobs{n}"),
                "text": narrative("pulse"), "status": "final",
                "category": [{"text": "vital-signs"}], "code": {"text": "invented pulse"},
                "subject": {"reference": "Patient/sum1"},
                "valueQuantity": {"value": 60 + n, "unit": "/min"}, "note": [{"text": "calm"}]}),
        )
        .await;
    }
}

#[tokio::test]
async fn summary_true_on_a_read_keeps_the_summary_elements_and_says_it_is_subsetted() {
    let app = spawn_app().await;
    seed(&app).await;
    let response = app.get("/Patient/sum1?_summary=true").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    let patient: Value = response.json().await.unwrap();
    assert_eq!(
        keys(&patient),
        [
            "resourceType",
            "id",
            "meta",
            "name",
            "gender",
            "deceasedBoolean"
        ]
    );
    assert!(is_subsetted(&patient));
    let (_, whole) = app.get_json("/Patient/sum1?_summary=false").await;
    assert!(whole.get("maritalStatus").is_some() && !is_subsetted(&whole));
    app.stop().await;
}

#[tokio::test]
async fn summary_text_keeps_the_narrative_and_the_mandatory_elements() {
    let app = spawn_app().await;
    seed(&app).await;
    let (status, observation) = app.get_json("/Observation/sumobs1?_summary=text").await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&observation),
        ["resourceType", "id", "meta", "text", "status", "code"]
    );
    assert!(is_subsetted(&observation));
    app.stop().await;
}

#[tokio::test]
async fn summary_data_drops_the_narrative_from_every_page_of_a_search() {
    let app = spawn_app().await;
    seed(&app).await;
    let (status, page) = app
        .get_json("/Observation?_summary=data&_count=1&_include=Observation:subject")
        .await;
    assert_eq!(status, 200);
    let entries = page["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "one match and its patient");
    for entry in entries {
        let resource = &entry["resource"];
        assert!(resource.get("text").is_none() && is_subsetted(resource));
    }
    assert!(entries[0]["resource"].get("note").is_some());
    let next = page["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap();
    assert!(next.contains("_summary=data"), "{next}");
    let (_, second) = app.get_json(next.strip_prefix(&app.base).unwrap()).await;
    assert!(second["entry"][0]["resource"].get("text").is_none());
    app.stop().await;
}

#[tokio::test]
async fn summary_true_on_a_type_without_a_table_returns_it_whole_with_a_warning() {
    let app = spawn_app().await;
    put(
        &app,
        "/Basic/sumbasic",
        json!({"resourceType": "Basic", "id": "sumbasic", "text": narrative("basic"),
            "code": {"text": "invented"}}),
    )
    .await;
    let (status, page) = app.get_json("/Basic?_summary=true").await;
    assert_eq!(status, 200);
    let outcome = &page["entry"][0]["resource"];
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("Basic"), "{diagnostics}");
    let basic = &page["entry"][1]["resource"];
    assert!(basic.get("text").is_some() && !is_subsetted(basic));
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_summary_value_is_refused() {
    let app = spawn_app().await;
    seed(&app).await;
    for path in ["/Patient/sum1?_summary=maybe", "/Patient?_summary=TRUE"] {
        let (status, outcome) = app.get_json(path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(outcome["issue"][0]["expression"][0], "_summary");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_summary_comes_out_in_xml_too() {
    let app = spawn_app().await;
    seed(&app).await;
    let xml = app
        .get("/Patient/sum1?_summary=true&_format=xml")
        .await
        .text()
        .await
        .unwrap();
    assert!(xml.contains("<code value=\"SUBSETTED\"/>"), "{xml}");
    assert!(!xml.contains("maritalStatus"), "{xml}");
    app.stop().await;
}
