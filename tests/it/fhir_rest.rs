//! Single-resource create, update and delete over HTTP.

use serde_json::{json, Value};

use crate::support::{assert_one_created, race, send_resource, spawn_app};

async fn send(
    request: reqwest::RequestBuilder,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    send_resource(request, &body).await
}

#[tokio::test]
async fn a_create_answers_201_with_location_etag_and_the_stored_resource() {
    let app = spawn_app().await;
    let patient =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:rest", "value": "R1"}]});
    let (status, headers, body) =
        send(app.client.post(format!("{}/Patient", app.base)), patient).await;
    assert_eq!(status, 201, "{body}");
    let location = headers["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/Patient/", app.base))
            && location.ends_with("/_history/1")
    );
    assert_eq!(headers["etag"], "W/\"1\"");
    let stored: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stored["meta"]["versionId"], "1");
    let (status, _) = app
        .get_json(&format!("/Patient/{}", stored["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_conditional_create_with_if_none_exist_returns_the_existing_resource() {
    let app = spawn_app().await;
    let patient =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:rest", "value": "R2"}]});
    let post = || {
        app.client
            .post(format!("{}/Patient", app.base))
            .header("if-none-exist", "identifier=urn:rest|R2")
    };
    let (first, h1, created) = send(post(), patient.clone()).await;
    let (second, h2, matched) = send(post(), patient).await;
    assert_eq!((first, second), (201, 200));
    // Answered as a read of what matched: the resource, its version and time.
    let (created, matched): (Value, Value) = (
        serde_json::from_str(&created).unwrap(),
        serde_json::from_str(&matched).unwrap(),
    );
    assert_eq!(matched, created);
    assert_eq!(h2["etag"], "W/\"1\"");
    assert_eq!(h2["location"], h1["location"]);
    assert_eq!(h2["last-modified"], h1["last-modified"]);
    let id = |h: &reqwest::header::HeaderMap| {
        h["location"]
            .to_str()
            .unwrap()
            .split('/')
            .nth(4)
            .unwrap()
            .to_string()
    };
    assert_eq!(id(&h1), id(&h2));
    app.stop().await;
}

#[tokio::test]
async fn an_update_creates_then_versions_and_a_delete_leaves_410() {
    let app = spawn_app().await;
    let url = format!("{}/Patient/upd1", app.base);
    let v1 = json!({"resourceType": "Patient", "id": "upd1", "gender": "male"});
    let v2 = json!({"resourceType": "Patient", "id": "upd1", "gender": "female"});
    let (created, _, _) = send(app.client.put(&url), v1).await;
    let (updated, headers, body) = send(app.client.put(&url), v2).await;
    assert_eq!((created, updated), (201, 200));
    assert_eq!(headers["etag"], "W/\"2\"");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["gender"],
        "female"
    );
    let deleted = app.client.delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, outcome) = app.get_json("/Patient/upd1").await;
    assert_eq!(
        (status, outcome["issue"][0]["code"].as_str()),
        (410, Some("deleted"))
    );
    app.stop().await;
}

#[tokio::test]
async fn invalid_single_resources_get_an_outcome_naming_the_element() {
    let app = spawn_app().await;
    let bad = json!({"resourceType": "Patient", "name": []});
    let (status, _, body) = send(app.client.post(format!("{}/Patient", app.base)), bad).await;
    assert_eq!(status, 400);
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["issue"][0]["expression"][0], "Patient.name");
    let wrong = json!({"resourceType": "Observation"});
    let (status, _, _) = send(app.client.post(format!("{}/Patient", app.base)), wrong).await;
    assert_eq!(status, 400);
    let mismatch = json!({"resourceType": "Patient", "id": "other"});
    let (status, _, _) = send(
        app.client.put(format!("{}/Patient/one", app.base)),
        mismatch,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = send(
        app.client
            .put(format!("{}/Patient/one", app.base))
            .header("if-match", "W/\"1\""),
        json!({"resourceType": "Patient", "id": "one"}),
    )
    .await;
    assert_eq!(
        status, 412,
        "If-Match on a resource that does not exist fails"
    );
    app.stop().await;
}

#[tokio::test]
async fn instance_history_pages_newest_first_through_next_links() {
    let app = spawn_app().await;
    let url = format!("{}/Patient/hist1", app.base);
    for gender in ["male", "female", "other"] {
        let patient = json!({"resourceType": "Patient", "id": "hist1", "gender": gender});
        let (status, _, _) = send(app.client.put(&url), patient).await;
        assert!(status == 200 || status == 201);
    }
    assert_eq!(app.client.delete(&url).send().await.unwrap().status(), 204);

    let (status, page) = app.get_json("/Patient/hist1/_history?_count=2").await;
    assert_eq!(status, 200);
    assert_eq!(
        (page["type"].as_str(), page["total"].as_i64()),
        (Some("history"), Some(4))
    );
    let methods = |page: &Value| -> Vec<String> {
        page["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["method"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(methods(&page), ["DELETE", "PUT"]);
    assert!(
        page["entry"][0].get("resource").is_none(),
        "a deletion has no resource"
    );
    assert_eq!(page["entry"][1]["resource"]["gender"], "other");
    let next = page["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next link")["url"]
        .as_str()
        .unwrap()
        .to_string();
    let second: Value = app
        .client
        .get(&next)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(methods(&second), ["PUT", "POST"]);
    assert!(second["link"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["relation"] != "next"));
    let (status, _) = app.get_json("/Patient/nobody/_history").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn an_unreadable_conditional_header_is_refused_not_ignored() {
    let app = spawn_app().await;
    let value = reqwest::header::HeaderValue::from_bytes(b"identifier=urn:x|r\xc3\xa9ce1").unwrap();
    let patient =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "race1"}]});
    let request = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("if-none-exist", value);
    let (status, _, body) = send(request, patient).await;
    assert_eq!(status, 400, "{body}");
    let (_, found) = app.get_json("/Patient?identifier=race1").await;
    assert_eq!(found["total"], 0, "nothing was created");
    app.stop().await;
}

#[tokio::test]
async fn if_match_and_if_none_match_guard_updates_and_deletes() {
    let app = spawn_app().await;
    let url = format!("{}/Patient/guard1", app.base);
    let patient =
        |gender: &str| json!({"resourceType": "Patient", "id": "guard1", "gender": gender});
    let (status, _, _) = send(
        app.client.put(&url).header("if-none-match", "*"),
        patient("male"),
    )
    .await;
    assert_eq!(status, 201, "If-None-Match: * creates what is absent");
    let (status, _, _) = send(
        app.client.put(&url).header("if-none-match", "*"),
        patient("female"),
    )
    .await;
    assert_eq!(status, 412, "and refuses what exists");
    let (status, _, _) = send(
        app.client.put(&url).header("if-match", "W/\"2\""),
        patient("female"),
    )
    .await;
    assert_eq!(status, 412, "a stale version loses");
    let (status, headers, _) = send(
        app.client.put(&url).header("if-match", "W/\"1\""),
        patient("female"),
    )
    .await;
    assert_eq!(
        (status, headers["etag"].to_str().unwrap()),
        (200, "W/\"2\"")
    );
    let stale = app
        .client
        .delete(&url)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let (status, _) = app.get_json("/Patient/guard1").await;
    assert_eq!(status, 200, "a failed conditional delete deletes nothing");
    let current = app
        .client
        .delete(&url)
        .header("if-match", "W/\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(current.status(), 204);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_racing_conditional_updates_make_one_resource_and_conditional_delete_removes_it() {
    let app = spawn_app().await;
    let url = format!("{}/Patient?identifier=urn:cu%7CCU-1", app.base);
    let body = json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:cu", "value": "CU-1"}], "gender": "female"});
    let statuses = race(20, || app.client.put(&url), &body).await;
    assert_one_created(&statuses);
    let (_, found) = app.get_json("/Patient?identifier=urn:cu|CU-1").await;
    assert_eq!(
        found["entry"].as_array().unwrap().len(),
        1,
        "exactly one resource"
    );
    let id = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A second resource with the same identifier makes the condition ambiguous: 412.
    let (status, _, _) = send(
        app.client.post(format!("{}/Patient", app.base)),
        body.clone(),
    )
    .await;
    assert_eq!(status, 201);
    let ambiguous = app.client.delete(&url).send().await.unwrap();
    assert_eq!(ambiguous.status(), 412);
    let other = found["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(other, id);
    let (_, both) = app.get_json("/Patient?identifier=urn:cu|CU-1").await;
    let second = both["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .find(|i| *i != id)
        .unwrap();
    let deleted = app
        .client
        .delete(format!("{}/Patient/{second}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);

    let removed = app.client.delete(&url).send().await.unwrap();
    assert_eq!(removed.status(), 204);
    assert_eq!(app.get(&format!("/Patient/{id}")).await.status(), 410);
    let nothing = app.client.delete(&url).send().await.unwrap();
    assert_eq!(nothing.status(), 204, "no match: nothing to delete");
    let unconditional = app
        .client
        .delete(format!("{}/Patient", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unconditional.status(), 400);
}

#[tokio::test]
async fn type_and_system_history_page_newest_first_through_every_version() {
    let app = spawn_app().await;
    let patient = json!({"resourceType": "Patient", "gender": "male"});
    let (_, _, created) = send(app.client.post(format!("{}/Patient", app.base)), patient).await;
    let id = serde_json::from_str::<Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let updated = json!({"resourceType": "Patient", "id": id, "gender": "female"});
    let url = format!("{}/Patient/{id}", app.base);
    assert_eq!(send(app.client.put(&url), updated).await.0, 200);
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    let (_, _, made) = send(app.client.post(format!("{}/Observation", app.base)), obs).await;
    let obs_id = serde_json::from_str::<Value>(&made).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let gone = app
        .client
        .delete(format!("{}/Observation/{obs_id}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);

    let (status, patients) = app.get_json("/Patient/_history").await;
    assert_eq!(status, 200, "{patients}");
    let versions: Vec<&str> = patients["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["etag"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["W/\"2\"", "W/\"1\""], "newest first");

    let mut seen = Vec::new();
    let mut next = Some(format!("{}/_history?_count=1", app.base));
    while let Some(url) = next {
        let page: Value = app
            .client
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["type"], "history");
        for entry in page["entry"].as_array().into_iter().flatten() {
            let method = entry["request"]["method"].as_str().unwrap().to_string();
            seen.push((entry["fullUrl"].as_str().unwrap().to_string(), method));
        }
        next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        assert!(seen.len() <= 4, "paging ends: {seen:?}");
    }
    let methods: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(methods, ["DELETE", "POST", "PUT", "POST"], "{seen:?}");
    let (_, later) = app.get_json("/_history?_since=2999-01-01T00:00:00Z").await;
    assert!(later.get("entry").is_none());
}

#[tokio::test]
async fn a_conditional_read_answers_304_when_nothing_changed() {
    let app = spawn_app().await;
    let patient = json!({"resourceType": "Patient", "gender": "male"});
    let (_, headers, body) = send(app.client.post(format!("{}/Patient", app.base)), patient).await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{}/Patient/{id}", app.base);
    let last_modified = headers["last-modified"].to_str().unwrap().to_string();
    let read = |name: &'static str, value: String| {
        let request = app.client.get(&url).header(name, value);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(read("if-none-match", "W/\"1\"".into()).await, 304);
    assert_eq!(read("if-none-match", "W/\"2\"".into()).await, 200);
    assert_eq!(read("if-modified-since", last_modified.clone()).await, 304);
    assert_eq!(
        read("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT".into()).await,
        200
    );
    assert_eq!(read("if-modified-since", "yesterday".into()).await, 200);
    let updated = json!({"resourceType": "Patient", "id": id, "gender": "female"});
    assert_eq!(send(app.client.put(&url), updated).await.0, 200);
    assert_eq!(
        read("if-none-match", "W/\"1\"".into()).await,
        200,
        "changed since"
    );
}

#[tokio::test]
async fn prefer_return_operation_outcome_answers_with_an_outcome() {
    let app = spawn_app().await;
    let patient = json!({"resourceType": "Patient", "gender": "male"});
    let request = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("prefer", "return=OperationOutcome");
    let (status, headers, body) = send(request, patient).await;
    assert_eq!(status, 201);
    assert!(headers.contains_key("location"));
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["severity"], "information");
    assert_eq!(headers["preference-applied"], "return=OperationOutcome");
    // A delete too: 200 with the outcome, as a 204 carries no body.
    let location = headers["location"].to_str().unwrap();
    let id = location.split('/').nth(4).unwrap();
    let response = app
        .client
        .delete(format!("{}/Patient/{id}", app.base))
        .header("prefer", "return=OperationOutcome")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let outcome: Value = response.json().await.unwrap();
    let said = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(said.contains("deleted"), "{said}");
    let plain = app
        .client
        .delete(format!("{}/Patient/{id}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 204, "without the preference, no body");
}

#[tokio::test]
async fn instance_history_honours_since() {
    let app = spawn_app().await;
    let patient = json!({"resourceType": "Patient", "gender": "male"});
    let (_, _, body) = send(app.client.post(format!("{}/Patient", app.base)), patient).await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, all) = app.get_json(&format!("/Patient/{id}/_history")).await;
    assert_eq!(all["entry"].as_array().unwrap().len(), 1);
    let (status, later) = app
        .get_json(&format!(
            "/Patient/{id}/_history?_since=2999-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(status, 200);
    assert!(later.get("entry").is_none(), "{later}");
    let link = later["link"][0]["url"].as_str().unwrap();
    assert!(link.contains("_since="), "{link}");
    let (status, _) = app
        .get_json(&format!("/Patient/{id}/_history?_since=garbage"))
        .await;
    assert_eq!(status, 400);
}

/// A transaction answers each entry's `response` alone by default; `Prefer:
/// return=representation` adds each resource as stored, and `return=OperationOutcome` an
/// outcome per entry, for an unchanged resource too.
#[tokio::test]
async fn a_transaction_returns_each_stored_resource_or_outcome_when_the_client_prefers() {
    let app = spawn_app().await;
    let bundle = |family: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:7c0f6b8e-1111-4000-8000-00000000000a",
             "resource": {"resourceType": "Patient", "id": "pref-1", "name": [{"family": family}]},
             "request": {"method": "PUT", "url": "Patient/pref-1"}},
            {"resource": {"resourceType": "Observation", "status": "final",
                          "code": {"text": "Heart rate"},
                          "subject": {"reference": "urn:uuid:7c0f6b8e-1111-4000-8000-00000000000a"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "DELETE", "url": "Patient/pref-none"}},
            {"resource": {"resourceType": "Patient", "id": "pref-2"},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "_id=pref-2"}}
        ]})
    };
    let existing = json!({"resourceType": "Patient", "id": "pref-2", "gender": "unknown"});
    assert_eq!(app.put_status("Patient/pref-2", &existing).await, 201);
    let post = |prefer: Option<&'static str>, body: Value| {
        let mut request = app
            .client
            .post(format!("{}/", app.base))
            .header("content-type", "application/fhir+json");
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        async move {
            let response = request.body(body.to_string()).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };

    let plain = post(None, bundle("Quill")).await;
    for entry in plain["entry"].as_array().unwrap() {
        assert!(entry.get("resource").is_none(), "{entry}");
        assert!(entry["response"].get("outcome").is_none(), "{entry}");
    }

    let response = app
        .client
        .post(format!("{}/", app.base))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=representation")
        .body(bundle("Quill").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["preference-applied"],
        "return=representation"
    );
    let full = post(Some("return=representation"), bundle("Quillon")).await;
    let entries = full["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["resource"]["name"][0]["family"], "Quillon");
    assert_eq!(entries[0]["resource"]["meta"]["versionId"], "2");
    assert_eq!(
        entries[0]["fullUrl"],
        format!("{}/Patient/pref-1", app.base)
    );
    let observation = &entries[1]["resource"];
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(observation["subject"]["reference"], "Patient/pref-1");
    let (status, read) = app
        .get_json(&format!(
            "/Observation/{}",
            observation["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        &read, observation,
        "the returned resource is the stored one"
    );
    assert!(entries[2].get("resource").is_none(), "a delete has none");
    // A conditional create that matched: the resource it matched, with its version.
    assert_eq!(entries[3]["response"]["status"], "200 OK");
    assert_eq!(entries[3]["resource"]["gender"], "unknown");
    assert_eq!(entries[3]["response"]["etag"], "W/\"1\"");
    assert_eq!(
        entries[3]["response"]["location"],
        "Patient/pref-2/_history/1"
    );

    // Sent again unchanged: the stored version is returned, not a new one.
    let again = post(Some("return=representation"), bundle("Quillon")).await;
    assert_eq!(again["entry"][0]["resource"], entries[0]["resource"]);

    let outcomes = post(Some("return=OperationOutcome"), bundle("Quillon")).await;
    let entries = outcomes["entry"].as_array().unwrap();
    for entry in entries {
        let outcome = &entry["response"]["outcome"];
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{entry}");
        assert_eq!(outcome["issue"][0]["severity"], "information");
        assert!(entry.get("resource").is_none());
    }
    let unchanged = entries[0]["response"]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap();
    assert!(unchanged.contains("unchanged"), "{unchanged}");
    app.stop().await;
}

/// Narratives are checked against txt-1: a script, an event attribute or a `javascript:` link
/// is refused with an OperationOutcome naming the element, in JSON and XML alike, and nothing
/// is stored; a plain-text `div` is stored as the XHTML `div` it stands for.
#[tokio::test]
async fn a_narrative_that_could_run_code_is_refused_and_plain_text_is_wrapped() {
    let app = spawn_app().await;
    let ns = "http://www.w3.org/1999/xhtml";
    for div in [
        format!("<div xmlns=\"{ns}\"><script>alert(1)</script></div>"),
        format!("<div xmlns=\"{ns}\"><img src=\"x.png\" onerror=\"alert(1)\"/></div>"),
        format!("<div xmlns=\"{ns}\"><a href=\"javascript:alert(1)\">x</a></div>"),
        format!("<div xmlns=\"{ns}\">unclosed<br></div>"),
        // Found by a hostile pass: an HTML parser reads `onerror` past the `/`, and ends the
        // comment at `<!-->`, leaving the img live.
        format!("<div xmlns=\"{ns}\"><img src=\"x\"/onerror=\"alert(1)\"/></div>"),
        format!("<div xmlns=\"{ns}\"><!--><img src=\"x\" onerror=\"alert(1)\"/>--></div>"),
        format!("<div xmlns=\"{ns}\">&nbsp;<b>x</b></div>"),
    ] {
        let patient = json!({"resourceType": "Patient", "id": "narr-bad",
            "text": {"status": "generated", "div": div}});
        let (status, _, body) = send(
            app.client.put(format!("{}/Patient/narr-bad", app.base)),
            patient,
        )
        .await;
        assert_eq!(status, 400, "{div}: {body}");
        let outcome: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let said = outcome.to_string();
        assert!(said.contains("text.div"), "{said}");
    }
    let xml = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"narr-bad\"/><text>\
         <status value=\"generated\"/><div xmlns=\"{ns}\"><script>alert(1)</script></div>\
         </text></Patient>"
    );
    let response = app
        .client
        .put(format!("{}/Patient/narr-bad", app.base))
        .header("content-type", "application/fhir+xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (status, _) = app.get_json("/Patient/narr-bad").await;
    assert_eq!(status, 404, "nothing was stored");

    let plain = json!({"resourceType": "Patient", "id": "narr-plain",
        "text": {"status": "generated", "div": "Seen for <b> & rest"}});
    let (status, _, body) = send(
        app.client.put(format!("{}/Patient/narr-plain", app.base)),
        plain,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let stored: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        stored["text"]["div"],
        format!("<div xmlns=\"{ns}\">Seen for &lt;b&gt; &amp; rest</div>")
    );
    let xml = app
        .client
        .get(format!("{}/Patient/narr-plain", app.base))
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(xml.status(), 200, "it can be written as XML too");
    app.stop().await;
}

/// Found by a hostile pass: in a batch, a conditional create that matched a resource a later
/// entry deletes is answered with the version it matched, not a bare location.
#[tokio::test]
async fn a_matched_conditional_create_answers_the_version_matched_though_a_later_entry_deletes_it()
{
    let app = spawn_app().await;
    let patient = json!({"resourceType": "Patient", "id": "cc-x",
        "identifier": [{"system": "urn:cc", "value": "D"}]});
    assert_eq!(app.put_status("Patient/cc-x", &patient).await, 201);
    let conditional = json!({"resource": {"resourceType": "Patient",
            "identifier": [{"system": "urn:cc", "value": "D"}]},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:cc|D"}});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        conditional,
        {"request": {"method": "DELETE", "url": "Patient/cc-x"}}
    ]});
    let response = app
        .client
        .post(format!("{}/", app.base))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=representation")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bundle: Value = response.json().await.unwrap();
    let matched = &bundle["entry"][0];
    assert_eq!(matched["response"]["status"], "200 OK", "{bundle}");
    assert_eq!(matched["response"]["location"], "Patient/cc-x/_history/1");
    assert_eq!(matched["resource"]["id"], "cc-x");
    assert_eq!(bundle["entry"][1]["response"]["status"], "204 No Content");
    app.stop().await;
}
