//! FHIR XML over HTTP: responses chosen by `Accept` or `_format`, XML bodies on writes, and XML
//! that must be refused without harm.

use std::time::{Duration, Instant};

use hl7bridge_fhir_codec::xml_to_json;
use serde_json::{json, Value};

use crate::support::{spawn_app, TestApp};

const FHIR_XML: &str = "application/fhir+xml";

/// An invented patient, as FHIR XML, with narrative and a primitive extension.
const PATIENT_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml"><p>Quill Marrowby</p></div>
  </text>
  <identifier>
    <system value="urn:xml-test"/>
    <value value="X-100"/>
  </identifier>
  <name>
    <family value="Marrowby"/>
    <given value="Quill"/>
  </name>
  <gender value="female"/>
  <birthDate value="1971-04-09">
    <extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
      <valueDateTime value="1971-04-09T06:15:00+01:00"/>
    </extension>
  </birthDate>
</Patient>"#;

/// The same patient as the FHIR JSON a client would send.
fn patient_json() -> Value {
    json!({"resourceType": "Patient",
        "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Quill Marrowby</p></div>"},
        "identifier": [{"system": "urn:xml-test", "value": "X-100"}],
        "name": [{"family": "Marrowby", "given": ["Quill"]}],
        "gender": "female", "birthDate": "1971-04-09",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
            "valueDateTime": "1971-04-09T06:15:00+01:00"}]}})
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    Answer {
        status,
        content_type,
        body,
    }
}

async fn get_xml(app: &TestApp, path: &str) -> Answer {
    send(
        app.client
            .get(format!("{}{path}", app.base))
            .header("accept", FHIR_XML),
    )
    .await
}

async fn post_xml(app: &TestApp, path: &str, body: impl Into<reqwest::Body>) -> Answer {
    send(
        app.client
            .post(format!("{}{path}", app.base))
            .header("content-type", FHIR_XML)
            .header("accept", FHIR_XML)
            .body(body),
    )
    .await
}

/// The JSON an XML answer stands for, read back through the codec.
fn as_json(answer: &Answer) -> Value {
    assert!(
        answer.content_type.starts_with("application/fhir+xml"),
        "{} {}",
        answer.content_type,
        answer.body
    );
    xml_to_json(answer.body.as_bytes()).expect("the server writes XML it can read")
}

/// Posts [`PATIENT_XML`]; returns the new patient's id.
async fn create_patient(app: &TestApp) -> String {
    let created = post_xml(app, "/Patient", PATIENT_XML).await;
    assert_eq!(created.status, 201, "{}", created.body);
    as_json(&created)["id"].as_str().unwrap().to_string()
}

fn without_meta(mut resource: Value) -> Value {
    let map = resource.as_object_mut().unwrap();
    map.remove("id");
    map.remove("meta");
    resource
}

#[tokio::test]
async fn a_resource_posted_as_xml_is_stored_as_the_same_json_as_its_json_form() {
    let app = spawn_app().await;
    let from_xml = post_xml(&app, "/Patient", PATIENT_XML).await;
    assert_eq!(from_xml.status, 201, "{}", from_xml.body);
    let from_xml = as_json(&from_xml);
    let (status, _) = app
        .get_json(&format!("/Patient/{}", from_xml["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    let from_json = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(patient_json().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(from_json.status(), 201);
    let from_json: Value = from_json.json().await.unwrap();
    assert_eq!(without_meta(from_xml), without_meta(from_json));
    app.stop().await;
}

#[tokio::test]
async fn an_update_sent_as_xml_creates_then_versions_the_resource() {
    let app = spawn_app().await;
    let with_id = PATIENT_XML.replace(
        "<Patient xmlns=\"http://hl7.org/fhir\">",
        "<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"xml-put\"/>",
    );
    let put = |body: String| {
        app.client
            .put(format!("{}/Patient/xml-put", app.base))
            .header("content-type", "application/xml")
            .body(body)
    };
    assert_eq!(send(put(with_id.clone())).await.status, 201);
    let changed = with_id.replace("value=\"female\"", "value=\"other\"");
    let updated = send(put(changed)).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    let (_, stored) = app.get_json("/Patient/xml-put").await;
    assert_eq!(
        (
            stored["gender"].as_str(),
            stored["meta"]["versionId"].as_str()
        ),
        (Some("other"), Some("2"))
    );
    app.stop().await;
}

#[tokio::test]
async fn every_kind_of_answer_comes_out_in_xml_when_asked() {
    let app = spawn_app().await;
    let id = create_patient(&app).await;
    // Written as text: a Rust float literal would lose the decimal's trailing zero.
    let batch = format!(
        r#"{{"resourceType":"Bundle","type":"batch","entry":[{{"request":{{"method":"POST",
        "url":"Observation"}},"resource":{{"resourceType":"Observation","status":"final",
        "code":{{"text":"invented pulse"}},"subject":{{"reference":"Patient/{id}"}},
        "valueQuantity":{{"value":72.40,"unit":"/min"}}}}}}]}}"#
    );
    let (status, _) = app.post_bundle(batch).await;
    assert_eq!(status, 200);
    for path in [
        format!("/Patient/{id}"),
        format!("/Patient/{id}/_history/1"),
        format!("/Patient/{id}/_history"),
        "/Patient/_history".to_string(),
        "/Patient?identifier=urn:xml-test|X-100".to_string(),
        format!("/Patient/{id}/$everything"),
        "/metadata".to_string(),
    ] {
        let xml = get_xml(&app, &path).await;
        assert_eq!(xml.status, 200, "{path}: {}", xml.body);
        let read_as_xml = as_json(&xml);
        let (_, read_as_json) = app.get_json(&path).await;
        let kind = read_as_json["resourceType"].as_str().unwrap();
        assert_eq!(read_as_xml["resourceType"], kind, "{path}");
        if kind != "Bundle" {
            assert_eq!(read_as_xml, read_as_json, "{path}");
        } else {
            // Bundles get a new id and time on each request; their entries must agree.
            assert_eq!(read_as_xml["entry"], read_as_json["entry"], "{path}");
        }
    }
    let capability = get_xml(&app, "/metadata?_format=xml").await;
    assert!(
        capability.body.contains("<format value=\"xml\"/>"),
        "{}",
        capability.body
    );
    let everything = get_xml(&app, &format!("/Patient/{id}/$everything")).await;
    assert!(
        everything.body.contains("<value value=\"72.40\"/>"),
        "decimals keep their text"
    );
    let missing = get_xml(&app, "/Patient/nobody-here").await;
    assert_eq!(missing.status, 404);
    assert_eq!(as_json(&missing)["issue"][0]["code"], "not-found");
    app.stop().await;
}

async fn metadata(app: &TestApp, query: &str, accept: Option<&str>) -> Answer {
    let mut request = app.client.get(format!("{}/metadata?{query}", app.base));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    send(request).await
}

#[tokio::test]
async fn format_parameters_and_accept_ranges_choose_the_representation() {
    let app = spawn_app().await;
    for (query, accept, expected) in [
        ("_format=xml", None, "application/fhir+xml"),
        (
            "_format=application/fhir+xml",
            Some("application/fhir+json"),
            "application/fhir+xml",
        ),
        (
            "_format=application%2Ffhir%2Bxml",
            None,
            "application/fhir+xml",
        ),
        (
            "_format=json",
            Some("application/fhir+xml"),
            "application/fhir+json",
        ),
        ("", Some("application/xml"), "application/xml"),
        ("", Some("text/xml"), "text/xml"),
        (
            "",
            Some("application/fhir+json;q=0.4, application/fhir+xml;q=0.9"),
            "application/fhir+xml",
        ),
        ("", Some("text/html, */*;q=0.1"), "application/fhir+json"),
    ] {
        let answer = metadata(&app, query, accept).await;
        assert_eq!(answer.status, 200, "{query} {accept:?}");
        assert!(
            answer.content_type.starts_with(expected),
            "{query} {accept:?}: {}",
            answer.content_type
        );
    }
    for (query, accept) in [
        ("_format=html", None),
        ("", Some("text/html")),
        ("", Some("application/fhir+xml;q=0")),
    ] {
        let answer = metadata(&app, query, accept).await;
        assert_eq!(answer.status, 406, "{query} {accept:?}");
        let outcome: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(outcome["issue"][0]["code"], "not-supported");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_search_posted_with_format_in_its_form_body_answers_in_that_format() {
    let app = spawn_app().await;
    create_patient(&app).await;
    let search = |query: &str, body: &str| {
        app.client
            .post(format!("{}/Patient/_search{query}", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
    };
    let xml = send(search("", "gender=female&_format=xml")).await;
    assert_eq!(xml.status, 200, "{}", xml.body);
    assert!(xml.content_type.starts_with("application/fhir+xml"));
    assert!(xml.body.contains("<Bundle"), "{}", xml.body);
    let pretty = send(search("", "gender=female&_pretty=true")).await;
    assert!(pretty.content_type.starts_with("application/fhir+json"));
    assert!(pretty.body.contains("\n  \"resourceType\": \"Bundle\""));
    // The query string's `_format` wins, as it does over Accept.
    let json = send(search("?_format=json", "gender=female&_format=xml")).await;
    assert!(json.content_type.starts_with("application/fhir+json"));
    let refused = send(search("", "gender=female&_format=html")).await;
    assert_eq!(refused.status, 406, "{}", refused.body);
    app.stop().await;
}

#[tokio::test]
async fn pretty_indents_either_format_and_plain_json_is_left_byte_for_byte() {
    let app = spawn_app().await;
    let id = create_patient(&app).await;
    let plain = send(app.client.get(format!("{}/Patient/{id}", app.base)))
        .await
        .body;
    let starred = send(
        app.client
            .get(format!("{}/Patient/{id}?_pretty=false", app.base))
            .header("accept", "*/*"),
    )
    .await;
    assert_eq!(starred.body, plain, "JSON is passed through untouched");
    assert!(!plain.contains('\n'));
    let pretty = send(
        app.client
            .get(format!("{}/Patient/{id}?_pretty=true", app.base)),
    )
    .await
    .body;
    assert!(
        pretty.contains("\n  \"resourceType\": \"Patient\""),
        "{pretty}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&pretty).unwrap(),
        serde_json::from_str::<Value>(&plain).unwrap()
    );
    let xml = get_xml(&app, &format!("/Patient/{id}?_pretty=true")).await;
    assert!(
        xml.body.contains("\n  <gender value=\"female\"/>"),
        "{}",
        xml.body
    );
    let compact = get_xml(&app, &format!("/Patient/{id}")).await;
    assert!(!compact.body.contains("\n  <"), "{}", compact.body);
    assert!(compact.body.contains("<gender value=\"female\"/>"));
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_posted_as_xml_is_answered_in_xml() {
    let app = spawn_app().await;
    let bundle = r#"<Bundle xmlns="http://hl7.org/fhir">
  <type value="transaction"/>
  <entry>
    <fullUrl value="urn:uuid:5b0c1d0e-0000-4000-8000-000000000001"/>
    <resource>
      <Patient><name><family value="Tidewell"/></name></Patient>
    </resource>
    <request><method value="POST"/><url value="Patient"/></request>
  </entry>
  <entry>
    <resource>
      <Observation>
        <status value="final"/>
        <code><text value="invented weight"/></code>
        <subject><reference value="urn:uuid:5b0c1d0e-0000-4000-8000-000000000001"/></subject>
      </Observation>
    </resource>
    <request><method value="POST"/><url value="Observation"/></request>
  </entry>
</Bundle>"#;
    let answer = post_xml(&app, "/", bundle).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response = as_json(&answer);
    assert_eq!(response["type"], "transaction-response");
    let patient = response["entry"][0]["response"]["location"]
        .as_str()
        .unwrap();
    let observation = response["entry"][1]["response"]["location"]
        .as_str()
        .unwrap();
    let (_, stored) = app
        .get_json(&format!("/{}", observation.rsplitn(3, '/').nth(2).unwrap()))
        .await;
    let patient_ref = patient.rsplitn(3, '/').nth(2).unwrap();
    assert_eq!(stored["subject"]["reference"], patient_ref);
    app.stop().await;
}

#[tokio::test]
async fn hostile_xml_is_refused_with_an_outcome_in_the_format_asked() {
    let app = spawn_app().await;
    let depth = 100_000;
    let nested = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
        "<extension url=\"urn:x\">".repeat(depth),
        "</extension>".repeat(depth)
    );
    let huge_attribute = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"{}\"/></Patient>",
        "t".repeat(8 << 20)
    );
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">\
        <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\
        <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">]>\
        <Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"&lol2;\"/></Patient>";
    let external =
        "<?xml version=\"1.0\"?><!DOCTYPE p [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\
        <Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"&xxe;\"/></Patient>";
    let cases: Vec<(&str, String)> = vec![
        (
            "unclosed",
            "<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"male\">".into(),
        ),
        ("billion laughs", laughs.into()),
        ("external entity", external.into()),
        (
            "undefined entity",
            "<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"&x;\"/></Patient>".into(),
        ),
        ("deep nesting", nested),
        ("huge attribute", huge_attribute),
        (
            "cdata",
            "<Patient xmlns=\"http://hl7.org/fhir\"><![CDATA[<x/>]]></Patient>".into(),
        ),
        (
            "processing instruction",
            "<?php x ?><Patient xmlns=\"http://hl7.org/fhir\"/>".into(),
        ),
        (
            "no namespace",
            "<Patient><gender value=\"male\"/></Patient>".into(),
        ),
        (
            "unknown element",
            "<Patient xmlns=\"http://hl7.org/fhir\"><foo value=\"x\"/></Patient>".into(),
        ),
        ("json labelled xml", "{\"resourceType\":\"Patient\"}".into()),
        ("empty", String::new()),
        (
            "two roots",
            "<Patient xmlns=\"http://hl7.org/fhir\"/><Patient xmlns=\"http://hl7.org/fhir\"/>"
                .into(),
        ),
    ];
    for (name, body) in cases {
        let started = Instant::now();
        let answer = post_xml(&app, "/Patient", body).await;
        assert_eq!(answer.status, 400, "{name}: {}", answer.body);
        assert_eq!(as_json(&answer)["issue"][0]["code"], "invalid", "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    let json_outcome = send(
        app.client
            .put(format!("{}/Patient/x1", app.base))
            .header("content-type", FHIR_XML)
            .body("<Patient"),
    )
    .await;
    assert_eq!(json_outcome.status, 400);
    assert!(json_outcome
        .content_type
        .starts_with("application/fhir+json"));
    let (status, _) = app.get_json("/metadata").await;
    assert_eq!(status, 200, "the server still serves");
    app.stop().await;
}

#[tokio::test]
async fn an_unsupported_content_type_is_415_in_the_format_asked() {
    let app = spawn_app().await;
    let answer = send(
        app.client
            .post(format!("{}/Patient", app.base))
            .header("content-type", "text/plain")
            .header("accept", FHIR_XML)
            .body("Patient"),
    )
    .await;
    assert_eq!(answer.status, 415);
    assert_eq!(as_json(&answer)["issue"][0]["code"], "not-supported");
    app.stop().await;
}
