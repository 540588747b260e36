//! `Patient/{id}/$everything` with its parameters: a date window kept across pages, `_type`,
//! `_since`, cursor paging, supporting resources, and the unpaged limit; and type-level
//! `Patient/$everything` paging through every patient's record.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::{next_link, pages, spawn_app, spawn_app_with, TestApp};

/// An invented patient with eight observations in 2019, four in 2020, an encounter in 2018 and
/// a 2019 MedicationRequest naming a Medication and a Practitioner. Returns the patient's id.
async fn seed(app: &TestApp) -> String {
    let mut entries = vec![
        json!({"fullUrl": "urn:uuid:p", "request": {"method": "POST", "url": "Patient"},
            "resource": {"resourceType": "Patient", "name": [{"family": "Windowson"}]}}),
        json!({"fullUrl": "urn:uuid:med", "request": {"method": "POST", "url": "Medication"},
            "resource": {"resourceType": "Medication", "code": {"text": "invented tablets"}}}),
        json!({"fullUrl": "urn:uuid:doc", "request": {"method": "POST", "url": "Practitioner"},
            "resource": {"resourceType": "Practitioner", "name": [{"family": "Prescriber"}]}}),
        json!({"request": {"method": "POST", "url": "MedicationRequest"},
            "resource": {"resourceType": "MedicationRequest", "status": "active",
                "intent": "order", "subject": {"reference": "urn:uuid:p"},
                "medicationReference": {"reference": "urn:uuid:med"},
                "requester": {"reference": "urn:uuid:doc"}, "authoredOn": "2019-05-01"}}),
        json!({"request": {"method": "POST", "url": "Encounter"},
            "resource": {"resourceType": "Encounter", "status": "finished",
                "class": {"code": "AMB"}, "subject": {"reference": "urn:uuid:p"},
                "period": {"start": "2018-03-01T10:00:00Z", "end": "2018-03-01T11:00:00Z"}}}),
    ];
    for (n, when) in (1..=8)
        .map(|m| format!("2019-{m:02}-10"))
        .chain((1..=4).map(|m| format!("2020-{m:02}-10")))
        .enumerate()
    {
        entries.push(json!({"request": {"method": "POST", "url": "Observation"},
            "resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": format!("invented measurement {n}")},
                "subject": {"reference": "urn:uuid:p"}, "effectiveDateTime": when}}));
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
    let location = response["entry"][0]["response"]["location"]
        .as_str()
        .unwrap();
    location.split('/').nth(1).unwrap().to_string()
}

fn entries<'a>(page: &'a Value, mode: &str) -> Vec<&'a Value> {
    page["entry"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["search"]["mode"] == mode).collect())
        .unwrap_or_default()
}

fn key(entry: &Value) -> String {
    let r = &entry["resource"];
    format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap(),
        r["id"].as_str().unwrap()
    )
}

#[tokio::test]
async fn a_date_window_holds_on_every_page_and_supporting_resources_come_along() {
    let app = spawn_app().await;
    let patient = seed(&app).await;
    let all = pages(
        &app,
        &format!("/Patient/{patient}/$everything?_count=5&start=2019-01-01&end=2019-12-31"),
    )
    .await;
    assert!(all.len() >= 2, "paged by 5");
    let mut seen = Vec::new();
    let mut included = BTreeSet::new();
    for (n, page) in all.iter().enumerate() {
        let matches = entries(page, "match");
        assert!(!matches.is_empty(), "no empty page");
        assert!(matches.len() <= 5);
        for entry in &matches {
            let r = &entry["resource"];
            for field in ["effectiveDateTime", "authoredOn"] {
                if let Some(when) = r[field].as_str() {
                    assert!(when.starts_with("2019"), "page {n} holds {when}");
                }
            }
            assert_ne!(
                r["resourceType"], "Encounter",
                "the 2018 encounter is outside"
            );
            seen.push(key(entry));
        }
        for entry in entries(page, "include") {
            included.insert(
                entry["resource"]["resourceType"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        if n + 1 < all.len() {
            let next = page["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
                .unwrap();
            let next = next["url"].as_str().unwrap();
            for part in ["_count=5", "start=2019-01-01", "end=2019-12-31"] {
                assert!(next.contains(part), "{next} lacks {part}");
            }
        }
    }
    assert_eq!(
        entries(&all[0], "match")[0]["resource"]["resourceType"],
        "Patient"
    );
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "nothing twice");
    assert_eq!(
        seen.len(),
        1 + 8 + 1,
        "the patient, 2019's observations, the medication request"
    );
    assert_eq!(
        included,
        BTreeSet::from(["Medication".to_string(), "Practitioner".to_string()])
    );
}

#[tokio::test]
async fn type_and_since_narrow_the_result() {
    let app = spawn_app().await;
    let patient = seed(&app).await;
    let (status, only) = app
        .get_json(&format!("/Patient/{patient}/$everything?_type=Observation"))
        .await;
    assert_eq!(status, 200);
    let matches = entries(&only, "match");
    assert_eq!(matches.len(), 12);
    assert!(matches
        .iter()
        .all(|e| e["resource"]["resourceType"] == "Observation"));
    assert!(entries(&only, "include").is_empty());
    let (_, later) = app
        .get_json(&format!("/Patient/{patient}/$everything?_since=2999-01-01"))
        .await;
    assert!(entries(&later, "match").is_empty());
    let (status, _) = app
        .get_json(&format!("/Patient/{patient}/$everything?_type=Nonsense"))
        .await;
    assert_eq!(status, 400);
    for refused in ["_count=0", "_cursor=Nonsense.x", "_cursor=x"] {
        let (status, outcome) = app
            .get_json(&format!("/Patient/{patient}/$everything?{refused}"))
            .await;
        assert_eq!(status, 400, "{refused}: {outcome}");
    }
    for refused in ["_count=0", "_cursor=x", "_cursor=p~Nonsense.x"] {
        let (status, _) = app
            .get_json(&format!("/Patient/$everything?{refused}"))
            .await;
        assert_eq!(status, 400, "type level, {refused}");
    }
}

async fn post_everything(app: &TestApp, path: &str, parameters: Value) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/fhir+json")
        .body(parameters.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_posted_parameters_resource_means_what_the_same_query_means() {
    let app = spawn_app().await;
    let patient = seed(&app).await;
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "start", "valueDate": "2019-01-01"},
        {"name": "end", "valueDate": "2019-12-31"},
        {"name": "_type", "valueCode": "Observation"},
        {"name": "_type", "valueCode": "Patient"},
        {"name": "_count", "valueInteger": 5}]});
    let path = format!("/Patient/{patient}/$everything");
    let (status, first) = post_everything(&app, &path, parameters).await;
    assert_eq!(status, 200, "{first}");
    let next = next_link(&first).expect("nine members in pages of five");
    // The next link is a GET carrying every posted parameter.
    for part in [
        "start=2019-01-01",
        "end=2019-12-31",
        "_count=5",
        "_type=Observation",
        "Patient",
    ] {
        assert!(next.contains(part), "{next} lacks {part}");
    }
    let by_get = pages(
        &app,
        &format!("{path}?start=2019-01-01&end=2019-12-31&_type=Observation,Patient&_count=5"),
    )
    .await;
    let keys = |page: &Value| {
        entries(page, "match")
            .into_iter()
            .map(key)
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&first), keys(&by_get[0]));
    let rest = pages(&app, next.strip_prefix(&app.base).unwrap()).await;
    let posted: Vec<String> = std::iter::once(&first)
        .chain(&rest)
        .flat_map(keys)
        .collect();
    let got: Vec<String> = by_get.iter().flat_map(keys).collect();
    assert_eq!(posted, got);
    assert_eq!(posted.len(), 1 + 8, "the patient and 2019's observations");

    // Type level too.
    let (status, all) = post_everything(&app, "/Patient/$everything",
        json!({"resourceType": "Parameters", "parameter": [{"name": "_type", "valueCode": "Patient"}]})).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(entries(&all, "match").len(), 1);

    // Not a Parameters resource, or a parameter without a simple value: 400 naming it.
    let (status, outcome) = post_everything(&app, &path, json!({"resourceType": "Patient"})).await;
    assert_eq!(status, 400, "{outcome}");
    let (status, outcome) = post_everything(
        &app,
        &path,
        json!({"resourceType": "Parameters",
        "parameter": [{"name": "start", "valueDate": "2019-01-01"},
                      {"name": "_type", "valueCodeableConcept": {"text": "x"}}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        outcome["issue"][0]["expression"][0], "Parameters.parameter[1]",
        "{outcome}"
    );
    let (status, _) = post_everything(
        &app,
        "/Patient/nobody/$everything",
        json!({"resourceType": "Parameters"}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_large_result_without_count_is_paged_with_an_information_issue() {
    let app = spawn_app_with(|config| config.everything_max_unpaged = 6).await;
    let patient = seed(&app).await;
    let all = pages(&app, &format!("/Patient/{patient}/$everything")).await;
    assert_eq!(all.len(), 3, "1 + 12 + 2 members in pages of 6");
    let outcome = entries(&all[0], "outcome");
    assert_eq!(
        outcome[0]["resource"]["issue"][0]["severity"],
        "information"
    );
    let total: usize = all.iter().map(|p| entries(p, "match").len()).sum();
    assert_eq!(total, 15);
    assert!(all[0].get("total").is_none(), "no total for a paged result");
    let (_, small) = spawn_app()
        .await
        .get_json("/Patient/none/$everything")
        .await;
    assert_eq!(small["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn each_page_includes_only_what_its_own_members_reference() {
    let app = spawn_app().await;
    let patient = seed(&app).await;
    let all = pages(&app, &format!("/Patient/{patient}/$everything?_count=1")).await;
    assert_eq!(all.len(), 15);
    let mut included_on = Vec::new();
    for page in &all {
        let matches = entries(page, "match");
        assert_eq!(matches.len(), 1);
        if !entries(page, "include").is_empty() {
            included_on.push(
                matches[0]["resource"]["resourceType"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert_eq!(
        included_on,
        ["MedicationRequest"],
        "only the page that references them"
    );
}

/// After a bulk load, PostgreSQL's planner statistics are refreshed without waiting for
/// autovacuum (which would plan `$everything` on empty-table statistics for a minute or more).
#[tokio::test]
async fn a_bulk_load_refreshes_the_planner_statistics_on_postgresql() {
    let (url, _database) = crate::support::fresh_database().await;
    let app = crate::support::spawn_app_on(&url, |_| {}).await;
    let entries: Vec<serde_json::Value> = (0..4000)
        .map(|n| {
            serde_json::json!({
                "resource": {"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                    "subject": {"reference": "Patient/bulk-1"},
                    "effectiveDateTime": "2024-06-30T10:15:00Z",
                    "identifier": [{"system": "urn:test:bulk", "value": format!("o{n}")}]},
                "request": {"method": "POST", "url": "Observation"}
            })
        })
        .collect();
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let (status, _) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200);
    if !url.starts_with("postgres") {
        // SQLite plans without table statistics of this kind; nothing to refresh.
        app.stop().await;
        return;
    }
    use sea_orm::{ConnectionTrait, Database, Statement};
    let db = Database::connect(&url).await.unwrap();
    let analyzed = "SELECT COUNT(*) AS n FROM pg_stat_user_tables \
                    WHERE relname IN ('compartment', 'resource_ref') AND last_analyze IS NOT NULL";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                analyzed.to_string(),
            ))
            .await
            .unwrap()
            .unwrap();
        if row.try_get::<i64>("", "n").unwrap() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tables were analyzed after the load"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// A transaction creating `patients` invented Patients (ids `tl-NN`), each with `observations`
/// Observations performed by one shared Practitioner.
async fn seed_many(app: &TestApp, patients: usize, observations: usize) {
    let mut entries = vec![
        json!({"request": {"method": "PUT", "url": "Practitioner/tl-doc"},
        "resource": {"resourceType": "Practitioner", "id": "tl-doc",
            "name": [{"family": "Sharedoc"}]}}),
    ];
    for p in 0..patients {
        let id = format!("tl-{p:02}");
        entries.push(
            json!({"request": {"method": "PUT", "url": format!("Patient/{id}")},
            "resource": {"resourceType": "Patient", "id": id,
                "name": [{"family": format!("Typelevel{p}")}]}}),
        );
        for o in 0..observations {
            entries.push(json!({"request": {"method": "POST", "url": "Observation"},
                "resource": {"resourceType": "Observation", "status": "final",
                    "code": {"text": format!("invented reading {o}")},
                    "subject": {"reference": format!("Patient/{id}")},
                    "performer": [{"reference": "Practitioner/tl-doc"}]}}));
        }
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
}

#[tokio::test]
async fn type_level_everything_pages_through_60_patients_once_each_with_no_empty_page() {
    let app = spawn_app().await;
    seed_many(&app, 60, 0).await;
    // The Practitioner is nobody's: type-level `$everything` is the patients' records.
    let pages = pages(&app, "/Patient/$everything?_count=50").await;

    let sizes: Vec<usize> = pages.iter().map(|p| entries(p, "match").len()).collect();
    assert_eq!(sizes, [50, 10], "two pages, neither empty");
    let keys: Vec<String> = pages
        .iter()
        .flat_map(|p| entries(p, "match").into_iter().map(key))
        .collect();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), 60);
    assert_eq!(unique.len(), 60, "each patient exactly once");
    assert!(keys.iter().all(|k| k.starts_with("Patient/tl-")));
    // The next link keeps the page size.
    let next = pages[0]["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap();
    assert!(
        next["url"].as_str().unwrap().contains("_count=50"),
        "{next}"
    );
    app.stop().await;
}

/// A filter that few patients' records meet: only those patients are visited, so pages are
/// never empty and a filter nobody meets gives one empty result without a next link.
#[tokio::test]
async fn type_level_everything_with_a_filter_skips_patients_with_nothing_to_show() {
    let app = spawn_app().await;
    seed_many(&app, 40, 0).await;
    // Two of the forty patients get an Observation.
    for id in ["tl-07", "tl-31"] {
        let observation = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "invented reading"}, "subject": {"reference": format!("Patient/{id}")}});
        let (status, _) = app
            .put_json(&format!("/Observation/obs-{id}"), observation.to_string())
            .await;
        assert_eq!(status, 201);
    }
    let all = pages(&app, "/Patient/$everything?_type=Observation&_count=1").await;
    let sizes: Vec<usize> = all.iter().map(|p| entries(p, "match").len()).collect();
    assert_eq!(sizes, [1, 1], "one Observation a page, no empty page");
    let keys: Vec<String> = all
        .iter()
        .flat_map(|p| entries(p, "match").into_iter().map(key))
        .collect();
    assert_eq!(keys, ["Observation/obs-tl-07", "Observation/obs-tl-31"]);

    let (status, none) = app.get_json("/Patient/$everything?_type=Encounter").await;
    assert_eq!(status, 200);
    assert!(entries(&none, "match").is_empty());
    assert!(
        !none["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next"),
        "nothing more to page to: {none}"
    );
    app.stop().await;
}

#[tokio::test]
async fn type_level_everything_splits_records_across_pages_without_loss_or_repeats() {
    let app = spawn_app().await;
    seed_many(&app, 3, 4).await;
    for count in [1, 2, 5, 7, 15, 16] {
        let pages = pages(&app, &format!("/Patient/$everything?_count={count}")).await;
        let keys: Vec<String> = pages
            .iter()
            .flat_map(|p| entries(p, "match").into_iter().map(key))
            .collect();
        let unique: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(keys.len(), 15, "_count={count}: {keys:?}");
        assert_eq!(unique.len(), 15, "_count={count}: each resource once");
        for page in &pages {
            let members = entries(page, "match").len();
            assert!(
                members > 0 && members <= count,
                "_count={count}: a page of {members}"
            );
            // Whoever's observations are on the page, their performer comes along.
            assert!(
                entries(page, "include")
                    .iter()
                    .any(|e| key(e) == "Practitioner/tl-doc")
                    || entries(page, "match")
                        .iter()
                        .all(|e| key(e).starts_with("Patient/")),
                "_count={count}: {page}"
            );
        }
        assert_eq!(pages.len(), 15usize.div_ceil(count), "_count={count}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_type_level_cursor_whose_patient_was_deleted_starts_the_next_record_from_its_beginning() {
    let app = spawn_app().await;
    seed_many(&app, 2, 3).await;
    // A page ending inside tl-00's record.
    let (status, first) = app.get_json("/Patient/$everything?_count=2").await;
    assert_eq!(status, 200, "{first}");
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_string())
        .expect("a next page");
    let deleted = app
        .client
        .delete(format!("{}/Patient/tl-00", app.base))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let rest = pages(&app, next.trim_start_matches(&app.base)).await;
    let keys: Vec<String> = rest
        .iter()
        .flat_map(|p| entries(p, "match").into_iter().map(key))
        .collect();
    // tl-01's whole record: the Patient and its three Observations, nothing skipped.
    assert!(keys.contains(&"Patient/tl-01".to_string()), "{keys:?}");
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("Observation/"))
            .count(),
        3,
        "{keys:?}"
    );
    app.stop().await;
}

/// Hostile pass: a posted `_type` repeating one type 40,000 times was passed to the store as
/// 40,000 SQL parameters (500 "too many SQL variables" on SQLite, a misleading 503 on
/// PostgreSQL). A GET cannot carry such a list (431), so only the POST form reached it.
#[tokio::test]
async fn a_posted_type_list_with_tens_of_thousands_of_entries_is_not_a_server_error() {
    let app = spawn_app().await;
    let patient = seed(&app).await;
    let types = vec!["Observation"; 40_000].join(",");
    for path in [
        format!("/Patient/{patient}/$everything"),
        "/Patient/$everything".to_string(),
    ] {
        let (status, body) = post_everything(
            &app,
            &path,
            json!({"resourceType": "Parameters",
                "parameter": [{"name": "_type", "valueString": types}]}),
        )
        .await;
        assert!(status < 500, "{path}: {status} {body}");
    }
    app.stop().await;
}

/// Hostile pass: a `parameter` that is not an array was ignored, so the `_type` and `_count`
/// it held were dropped and the whole record came back unpaged.
#[tokio::test]
async fn a_parameters_body_whose_parameter_is_not_an_array_is_refused() {
    let app = spawn_app().await;
    let patient = seed(&app).await;
    let (status, body) = post_everything(
        &app,
        &format!("/Patient/{patient}/$everything"),
        json!({"resourceType": "Parameters",
            "parameter": {"name": "_count", "valueInteger": 2}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    app.stop().await;
}
