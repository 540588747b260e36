//! Conditional create, update, delete and references by any search criteria (not only an
//! identifier), over HTTP. Invented data only.

use serde_json::{json, Value};

use crate::support::{
    assert_one_created, entry_statuses, located, race, send_resource, spawn_app, TestApp,
};

fn patient(family: &str, birth_date: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Invented"]}],
        "birthDate": birth_date, "gender": "female"})
}

async fn send(request: reqwest::RequestBuilder, body: &Value) -> (u16, Value) {
    let (status, _, text) = send_resource(request, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let (status, bundle) = app.get_json(query).await;
    assert_eq!(status, 200, "{bundle}");
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_racing_creates_on_name_and_birth_date_make_one_patient() {
    let app = spawn_app().await;
    let post = || {
        app.client
            .post(format!("{}/Patient", app.base))
            .header("if-none-exist", "family=Racewell&birthdate=1971-04-05")
    };
    let statuses = race(20, post, &patient("Racewell", "1971-04-05")).await;
    assert_one_created(&statuses);
    assert_eq!(ids(&app, "/Patient?family=Racewell").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_conditional_update_on_several_criteria_creates_updates_and_refuses_two_matches() {
    let app = spawn_app().await;
    let url = format!(
        "{}/Patient?family=Quillfeather&birthdate=1980-02-03&gender=female",
        app.base
    );
    let (created, first) = send(app.client.put(&url), &patient("Quillfeather", "1980-02-03")).await;
    assert_eq!(created, 201, "{first}");
    let mut changed = patient("Quillfeather", "1980-02-03");
    changed["active"] = json!(true);
    let (updated, second) = send(app.client.put(&url), &changed).await;
    assert_eq!(updated, 200, "{second}");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["meta"]["versionId"], "2");
    // Another patient of that name and birth date: the condition no longer names one.
    let (status, _) = send(
        app.client.post(format!("{}/Patient", app.base)),
        &patient("Quillfeather", "1980-02-03"),
    )
    .await;
    assert_eq!(status, 201);
    let (ambiguous, outcome) = send(app.client.put(&url), &changed).await;
    assert_eq!(ambiguous, 412, "{outcome}");
    // A different birth date is a different patient: created, the others untouched.
    let other = url.replace("1980-02-03", "1980-02-04");
    let (status, _) = send(
        app.client.put(&other),
        &patient("Quillfeather", "1980-02-04"),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(ids(&app, "/Patient?family=Quillfeather").await.len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_conditional_delete_by_code_and_status_removes_the_one_match() {
    let app = spawn_app().await;
    let observation = |status: &str, code: &str| {
        json!({"resourceType": "Observation", "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/invented-1"}})
    };
    for (status, code) in [
        ("cancelled", "24331-1"),
        ("final", "24331-1"),
        ("cancelled", "2345-7"),
    ] {
        let (created, body) = send(
            app.client.post(format!("{}/Observation", app.base)),
            &observation(status, code),
        )
        .await;
        assert_eq!(created, 201, "{body}");
    }
    let url = format!(
        "{}/Observation?status=cancelled&code=http://loinc.org%7C24331-1",
        app.base
    );
    let deleted = app.client.delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let left = ids(&app, "/Observation?code=24331-1").await;
    assert_eq!(left.len(), 1, "only the cancelled one of that code is gone");
    let (_, kept) = app.get_json(&format!("/Observation/{}", left[0])).await;
    assert_eq!(kept["status"], "final");
    assert_eq!(ids(&app, "/Observation?status=cancelled").await.len(), 1);
    // A type this server indexes no status for: refused, never read as "delete any".
    let unindexed = app
        .client
        .delete(format!("{}/ServiceRequest?status=revoked", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unindexed.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn unknown_and_result_parameters_in_a_condition_are_400_and_create_nothing() {
    let app = spawn_app().await;
    for condition in [
        "family=Nobody&nickname=x",
        "family=Nobody&_count=1",
        "family=Nobody&birthdate=",
        "family=Nobody&birthdate=not-a-date",
    ] {
        let (status, outcome) = send(
            app.client
                .post(format!("{}/Patient", app.base))
                .header("if-none-exist", condition),
            &patient("Nobody", "1990-01-01"),
        )
        .await;
        assert_eq!(status, 400, "{condition}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
    }
    let unknown = app
        .client
        .delete(format!("{}/Patient?nickname=x", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400, "a delete never widens to everything");
    assert!(ids(&app, "/Patient?family=Nobody").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_conditional_reference_by_name_and_birth_date_points_at_the_stored_patient() {
    let app = spawn_app().await;
    let (_, stored) = send(
        app.client.post(format!("{}/Patient", app.base)),
        &patient("Referwell", "1965-07-08"),
    )
    .await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final",
            "code": {"text": "invented"},
            "subject": {"reference": "Patient?family=Referwell&birthdate=1965-07-08"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
    let (_, observation) = app
        .get_json(&format!("/{}", located(&response["entry"][0])))
        .await;
    assert_eq!(
        observation["subject"]["reference"],
        format!("Patient/{}", stored["id"].as_str().unwrap())
    );
    app.stop().await;
}

#[tokio::test]
async fn a_condition_matches_a_resource_an_earlier_entry_creates_with_time_zones_as_written() {
    let app = spawn_app().await;
    let observation = |at: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "effectiveDateTime": at})
    };
    // 10:00 at +01:00 is 09:00 UTC: the `+` is a plus, not a space.
    let condition = "code=http://loinc.org|8310-5&date=2024-03-05T10:00:00+01:00";
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:first", "resource": observation("2024-03-05T09:00:00Z"),
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:second", "resource": observation("2024-03-05T09:00:00Z"),
         "request": {"method": "POST", "url": "Observation", "ifNoneExist": condition}}]});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(entry_statuses(&response), ["201 Created", "200 OK"]);
    let entries = response["entry"].as_array().unwrap();
    assert_eq!(located(&entries[0]), located(&entries[1]));
    assert_eq!(ids(&app, "/Observation?code=8310-5").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_resource_an_earlier_entry_deletes_no_longer_matches() {
    let app = spawn_app().await;
    let (_, stored) = send(
        app.client.post(format!("{}/Patient", app.base)),
        &patient("Gonewell", "1950-01-01"),
    )
    .await;
    let id = stored["id"].as_str().unwrap();
    let bundle = |kind: &str| {
        json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "DELETE", "url": format!("Patient/{id}")}},
            {"resource": patient("Gonewell", "1950-01-01"),
             "request": {"method": "POST", "url": "Patient",
                         "ifNoneExist": "family=Gonewell&birthdate=1950-01-01"}}]})
    };
    // In a transaction both entries would name the deleted patient: refused as a whole.
    let (status, outcome) = app.post_bundle(bundle("transaction").to_string()).await;
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(app.get(&format!("/Patient/{id}")).await.status(), 200);
    // A batch applies its entries in turn: the condition no longer matches.
    let (status, response) = app.post_bundle(bundle("batch").to_string()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(entry_statuses(&response), ["204 No Content", "201 Created"]);
    let live = ids(&app, "/Patient?family=Gonewell").await;
    assert_eq!(live.len(), 1);
    assert_ne!(live[0], id, "a new patient, not the deleted one");
    app.stop().await;
}

#[tokio::test]
async fn a_conditional_update_matching_nothing_never_overwrites_the_resource_its_body_names() {
    let app = spawn_app().await;
    let (_, victim) = send(
        app.client.post(format!("{}/Patient", app.base)),
        &patient("Victimson", "1944-04-04"),
    )
    .await;
    let id = victim["id"].as_str().unwrap();
    let mut intruder = patient("Intruder", "1999-09-09");
    intruder["id"] = json!(id);
    let url = format!("{}/Patient?identifier=urn:mrn%7CNO-SUCH", app.base);
    let (status, outcome) = send(app.client.put(&url), &intruder).await;
    assert_eq!(status, 409, "{outcome}");
    let (_, kept) = app.get_json(&format!("/Patient/{id}")).await;
    assert_eq!(kept["name"][0]["family"], "Victimson");
    assert_eq!(kept["meta"]["versionId"], "1");
    // An id nothing has yet is update-as-create, as before.
    intruder["id"] = json!("cond-fresh-1");
    let (status, created) = send(app.client.put(&url), &intruder).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "cond-fresh-1");
    app.stop().await;
}

#[tokio::test]
async fn in_a_transaction_a_matched_resource_cannot_also_be_deleted() {
    let app = spawn_app().await;
    let (_, stored) = send(
        app.client.post(format!("{}/Patient", app.base)),
        &patient("Overlap", "1960-06-06"),
    )
    .await;
    let id = stored["id"].as_str().unwrap();
    let condition = "family=Overlap&birthdate=1960-06-06";
    let matched_then_deleted = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:ov-p", "resource": patient("Overlap", "1960-06-06"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": condition}},
        {"request": {"method": "DELETE", "url": format!("Patient/{id}")}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "urn:uuid:ov-p"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let (status, outcome) = app.post_bundle(matched_then_deleted.to_string()).await;
    assert_eq!(status, 400, "{outcome}");
    let deleted_twice = |kind: &str| {
        let delete = json!({"method": "DELETE", "url": format!("Patient?{condition}")});
        json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"request": delete.clone()}, {"request": delete}]})
    };
    let (status, outcome) = app
        .post_bundle(deleted_twice("transaction").to_string())
        .await;
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(app.get(&format!("/Patient/{id}")).await.status(), 200);
    // A batch applies its entries in turn: the second finds nothing left to delete.
    let (status, response) = app.post_bundle(deleted_twice("batch").to_string()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        entry_statuses(&response),
        ["204 No Content", "204 No Content"]
    );
    assert_eq!(app.get(&format!("/Patient/{id}")).await.status(), 410);
    app.stop().await;
}

#[tokio::test]
async fn conditions_are_read_as_written_and_refused_when_ambiguous() {
    let app = spawn_app().await;
    let post = |condition: &str| {
        app.client
            .post(format!("{}/Patient", app.base))
            .header("if-none-exist", condition.to_string())
    };
    // An escaped comma is part of the value: the retry matches.
    let comma = json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:s", "value": "a,b"}]});
    let statuses = [
        send(post(r"identifier=urn:s|a\,b"), &comma).await.0,
        send(post(r"identifier=urn:s|a\,b"), &comma).await.0,
    ];
    assert_eq!(statuses, [201, 200]);
    assert_eq!(ids(&app, "/Patient?identifier=urn:s|a%5C,b").await.len(), 1);
    // A urn:uuid identifier in a Bundle condition is an identifier, not a placeholder.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient",
            "identifier": [{"value": "urn:uuid:5d0c7e6a-0000-4000-8000-000000000001"}]},
         "request": {"method": "POST", "url": "Patient",
            "ifNoneExist": "identifier=urn:uuid:5d0c7e6a-0000-4000-8000-000000000001"}}]});
    for expected in ["201 Created", "200 OK"] {
        let (status, response) = app.post_bundle(bundle.to_string()).await;
        assert_eq!(status, 200, "{response}");
        assert_eq!(entry_statuses(&response), [expected]);
    }
    // Two If-None-Exist headers: refused, not the first alone.
    let twice = post("family=Twice").header("if-none-exist", "gender=female");
    let (status, outcome) = send(twice, &patient("Twice", "1970-01-01")).await;
    assert_eq!(status, 400, "{outcome}");
    // ifNoneExist on a PUT is refused, not ignored.
    let put = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "ine-put"},
         "request": {"method": "PUT", "url": "Patient/ine-put", "ifNoneExist": "family=x"}}]});
    let (status, outcome) = app.post_bundle(put.to_string()).await;
    assert_eq!(status, 400, "{outcome}");
    assert!(ids(&app, "/Patient?family=Twice").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_chain_of_twenty_conditions_on_earlier_entries_is_idempotent() {
    let app = spawn_app().await;
    let mut entries = vec![json!({"fullUrl": "urn:uuid:chain-0",
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "root"}},
        "request": {"method": "POST", "url": "Observation",
            "ifNoneExist": "code=chain-root&status=final"}})];
    entries[0]["resource"]["code"] = json!({"coding": [{"code": "chain-root"}]});
    for link in 1..=20 {
        let code = format!("chain-{link}");
        entries.push(json!({"fullUrl": format!("urn:uuid:chain-{link}"),
            "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"code": code}]},
                "hasMember": [{"reference": format!("urn:uuid:chain-{}", link - 1)}]},
            "request": {"method": "POST", "url": "Observation",
                "ifNoneExist": format!("has-member=urn:uuid:chain-{}&code={code}", link - 1)}}));
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let (status, first) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{first}");
    assert!(entry_statuses(&first).iter().all(|s| s == "201 Created"));
    let (status, second) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{second}");
    assert!(
        entry_statuses(&second).iter().all(|s| s == "200 OK"),
        "{second}"
    );
    assert_eq!(
        ids(&app, "/Observation?status=final&_count=100")
            .await
            .len(),
        21
    );
    app.stop().await;
}

#[tokio::test]
async fn a_conditional_update_on_an_id_alone_creates_that_id_so_a_retry_updates_it() {
    let app = spawn_app().await;
    let url = format!("{}/Patient?_id=by-id-7", app.base);
    let (first, created) = send(app.client.put(&url), &patient("Byid", "1977-07-07")).await;
    assert_eq!(first, 201, "{created}");
    assert_eq!(created["id"], "by-id-7");
    let (second, updated) = send(app.client.put(&url), &patient("Byid", "1977-07-08")).await;
    assert_eq!(second, 200, "{updated}");
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(ids(&app, "/Patient?family=Byid").await, ["by-id-7"]);
    app.stop().await;
}
