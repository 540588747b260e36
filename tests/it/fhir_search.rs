//! Search over HTTP: token, reference, date and string parameters, paging that holds while
//! resources are created between pages, totals, and what happens to parameters the server
//! does not support.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::{pages, spawn_app, TestApp};

fn patient(full_url: &str, family: &str, given: &str, birth: &str, gender: &str) -> Value {
    json!({"fullUrl": full_url, "request": {"method": "POST", "url": "Patient"},
        "resource": {"resourceType": "Patient", "name": [{"family": family, "given": [given]}],
            "birthDate": birth, "gender": gender}})
}

fn observation(subject: &str, code: &str, when: &str, status: &str) -> Value {
    json!({"request": {"method": "POST", "url": "Observation"},
        "resource": {"resourceType": "Observation", "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": subject}, "effectiveDateTime": when}})
}

/// Three invented patients and their observations; returns the patients' ids in order.
async fn seed(app: &TestApp) -> Vec<String> {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        patient("urn:uuid:a", "Quillfeather", "Ada", "1980-02-14", "female"),
        patient("urn:uuid:b", "Quimby", "Bo", "1991-06-01", "male"),
        patient("urn:uuid:c", "Stone", "Cy", "1980-11-30", "other"),
        observation("urn:uuid:a", "2345-7", "2024-07-01T08:00:00+02:00", "final"),
        observation("urn:uuid:a", "718-7", "2024-07-15", "final"),
        observation("urn:uuid:b", "2345-7", "2024-08-02T12:00:00Z", "amended"),
        observation("urn:uuid:c", "2345-7", "2023-12-31", "preliminary"),
    ]});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
    response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .take(3)
        .map(|e| {
            let location = e["response"]["location"].as_str().unwrap();
            location.split('/').nth(1).unwrap().to_string()
        })
        .collect()
}

async fn ids(app: &TestApp, query: &str) -> BTreeSet<String> {
    let (status, bundle) = app.get_json(query).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    matches(&bundle)
}

fn matches(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The subjects (patient ids) of the observations a query finds.
async fn subjects(app: &TestApp, query: &str) -> Vec<String> {
    let (status, bundle) = app.get_json(query).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    let mut found: Vec<String> = bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| {
                    let reference = e["resource"]["subject"]["reference"].as_str().unwrap();
                    reference.trim_start_matches("Patient/").to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn token_reference_date_and_string_parameters_select_what_they_say() {
    let app = spawn_app().await;
    let p = seed(&app).await;
    let (a, b, c) = (&p[0], &p[1], &p[2]);

    // Tokens: system|code, a bare code, ORed alternatives.
    let glucose = subjects(&app, "/Observation?code=http://loinc.org|2345-7").await;
    assert_eq!(glucose, sorted(&[a, b, c]));
    assert_eq!(
        subjects(&app, "/Observation?code=718-7").await,
        sorted(&[a])
    );
    assert!(
        subjects(&app, "/Observation?code=http://snomed.info/sct|2345-7")
            .await
            .is_empty()
    );
    let statuses = subjects(&app, "/Observation?status=final,amended&code=2345-7").await;
    assert_eq!(statuses, sorted(&[a, b]));
    // References: Type/id or a bare id, by patient or subject.
    let by_patient = subjects(&app, &format!("/Observation?patient=Patient/{a}")).await;
    assert_eq!(by_patient.len(), 2);
    assert_eq!(
        subjects(&app, &format!("/Observation?subject={b}")).await,
        sorted(&[b])
    );
    // Dates: prefixes, partial dates, and explicit zones (08:00+02:00 is 06:00Z).
    let july = subjects(&app, "/Observation?date=ge2024-07&date=lt2024-08").await;
    assert_eq!(july, sorted(&[a, a]));
    assert_eq!(
        subjects(&app, "/Observation?date=2024-07-01").await,
        sorted(&[a])
    );
    let after = subjects(&app, "/Observation?date=gt2024-07-01T07:00:00Z&code=2345-7").await;
    assert_eq!(after, sorted(&[b]), "06:00Z is not after 07:00Z");
    // An unencoded + in a zone is read as a plus: 07:30+02:00 is 05:30Z, before 06:00Z.
    let plus = subjects(
        &app,
        "/Observation?date=gt2024-07-01T07:30:00+02:00&code=2345-7",
    )
    .await;
    assert_eq!(plus, sorted(&[a, b]));
    let (_, bundle) = app
        .get_json("/Observation?date=gt2024-07-01T07:30:00+02:00")
        .await;
    let link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(
        link.contains("07:30:00%2B02:00"),
        "the link keeps the plus: {link}"
    );
    let (_, outcome) = app.get_json("/Observation?patient=Group/g1").await;
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("Patient/id"), "{diagnostics}");
    assert_eq!(
        subjects(&app, "/Observation?date=lt2024").await,
        sorted(&[c])
    );
    assert_eq!(
        ids(&app, "/Patient?birthdate=1980").await,
        BTreeSet::from([a.clone(), c.clone()])
    );
    assert_eq!(
        ids(&app, "/Patient?birthdate=ge1990-01-01").await,
        BTreeSet::from([b.clone()])
    );
    // Strings: case-insensitive prefix by default, :exact, :contains.
    assert_eq!(
        ids(&app, "/Patient?name=qui").await,
        BTreeSet::from([a.clone(), b.clone()])
    );
    assert_eq!(
        ids(&app, "/Patient?family:exact=Quimby").await,
        BTreeSet::from([b.clone()])
    );
    assert!(ids(&app, "/Patient?family:exact=quimby").await.is_empty());
    assert_eq!(
        ids(&app, "/Patient?name:contains=TON").await,
        BTreeSet::from([c.clone()])
    );
    assert_eq!(
        ids(&app, "/Patient?given=ada&gender=female").await,
        BTreeSet::from([a.clone()])
    );
    // Search text is data, never SQL or a LIKE pattern.
    assert!(ids(&app, "/Patient?name=%27%20OR%201%3D1%20--")
        .await
        .is_empty());
    assert!(ids(&app, "/Patient?name=%25").await.is_empty());
    assert!(ids(&app, "/Patient?name=_").await.is_empty());
    // Everything of a type, and _lastUpdated.
    assert_eq!(ids(&app, "/Patient").await.len(), 3);
    assert_eq!(
        ids(&app, "/Patient?_lastUpdated=gt2000-01-01").await.len(),
        3
    );
    assert!(ids(&app, "/Patient?_lastUpdated=lt2000-01-01")
        .await
        .is_empty());
}

#[tokio::test]
async fn bad_values_are_400_and_unknown_parameters_warn_unless_strict() {
    let app = spawn_app().await;
    seed(&app).await;
    for query in [
        "/Observation?date=ge2024-13-01",
        "/Observation?patient=Group/g1",
        "/Patient?_count=lots",
        "/Patient?_sort=family",
        "/Patient?_cursor=nonsense",
    ] {
        let (status, outcome) = app.get_json(query).await;
        assert_eq!(status, 400, "{query}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
    }
    let (status, bundle) = app.get_json("/Patient?gender=male&_contained=true").await;
    assert_eq!(status, 200);
    assert_eq!(bundle["entry"][0]["search"]["mode"], "outcome");
    let warning = bundle["entry"][0]["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap();
    assert!(warning.contains("_contained"), "{warning}");
    assert_eq!(matches(&bundle).len(), 1);
    let strict = app
        .client
        .get(format!("{}/Patient?gender=male&_contained=true", app.base))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(strict.status(), 400);
}

#[tokio::test]
async fn pages_carry_every_parameter_and_new_resources_neither_repeat_nor_hide_old_ones() {
    let app = spawn_app().await;
    let create = |n: usize| {
        let body = json!({"resourceType": "Patient", "name": [{"family": "Pager", "given": [format!("P{n}")]}]});
        let request = app
            .client
            .post(format!("{}/Patient", app.base))
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 201);
            let created: Value = response.json().await.unwrap();
            created["id"].as_str().unwrap().to_string()
        }
    };
    let mut before = BTreeSet::new();
    for n in 0..7 {
        before.insert(create(n).await);
    }
    create(100).await; // another family: never in the results
    let body = json!({"resourceType": "Patient", "name": [{"family": "Other"}]});
    app.client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut url = format!("{}/Patient?family=Pager&_count=3", app.base);
    let mut pages = 0;
    loop {
        let bundle: Value = app
            .client
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page: Vec<String> = matches(&bundle).into_iter().collect();
        assert!(!page.is_empty(), "no empty pages: {bundle}");
        assert!(page.len() <= 3);
        seen.extend(page);
        pages += 1;
        // A new match created while paging: it may appear later, but nothing seen repeats.
        create(200 + pages).await;
        let next = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(next) => {
                assert!(
                    next.contains("family=Pager") && next.contains("_count=3"),
                    "{next}"
                );
                url = next;
            }
            None => break,
        }
        assert!(pages < 20, "paging ends");
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no resource on two pages");
    assert!(
        before.is_subset(&unique),
        "every resource present at the start is on a page"
    );

    let (_, counted) = app.get_json("/Patient?family=Pager&_summary=count").await;
    assert!(counted.get("entry").is_none());
    let total = counted["total"].as_u64().unwrap();
    assert!(total >= 8, "{counted}");
    let (_, accurate) = app
        .get_json("/Patient?family=Pager&_count=2&_total=accurate")
        .await;
    assert_eq!(accurate["total"].as_u64(), Some(total));
    let (_, none) = app
        .get_json("/Patient?family=Pager&_count=2&_total=none")
        .await;
    assert!(none.get("total").is_none());

    // Newest first, by the same keyset.
    let (_, newest) = app
        .get_json("/Patient?family=Pager&_sort=-_lastUpdated&_count=1")
        .await;
    let (_, oldest) = app.get_json("/Patient?family=Pager&_count=1").await;
    assert_ne!(matches(&newest), matches(&oldest));
    assert!(before.is_superset(&matches(&oldest)));
}

#[tokio::test]
async fn post_search_reads_form_parameters() {
    let app = spawn_app().await;
    let p = seed(&app).await;
    let response = app
        .client
        .post(format!("{}/Patient/_search", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=Quimby&_count=5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bundle: Value = response.json().await.unwrap();
    assert_eq!(matches(&bundle), BTreeSet::from([p[1].clone()]));
    let refused = app
        .client
        .post(format!("{}/Patient/_search", app.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 415);
}

#[tokio::test]
async fn include_and_revinclude_add_one_level_once() {
    let app = spawn_app().await;
    let p = seed(&app).await;
    let (status, bundle) = app
        .get_json("/Observation?code=2345-7&_include=Observation:patient")
        .await;
    assert_eq!(status, 200, "{bundle}");
    let included: BTreeSet<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(included, p.iter().cloned().collect(), "each patient once");
    assert_eq!(matches(&bundle).len(), 3);

    let (_, bundle) = app
        .get_json("/Patient?family=Quimby&_revinclude=Observation:subject")
        .await;
    let kinds: Vec<(&str, &str)> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["search"]["mode"].as_str().unwrap(),
                e["resource"]["resourceType"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("match", "Patient"), ("include", "Observation")]);

    let (status, bundle) = app
        .get_json("/Patient?family=Quimby&_include=Patient:nonsense")
        .await;
    assert_eq!(status, 200);
    assert_eq!(bundle["entry"][0]["search"]["mode"], "outcome");
}

/// Text no compression shrinks, from a fixed seed.
fn noise(len: usize, seed: u64) -> String {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

async fn create(app: &TestApp, resource: Value) -> String {
    let response = app
        .client
        .post(format!(
            "{}/{}",
            app.base,
            resource["resourceType"].as_str().unwrap()
        ))
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn long_values_are_stored_and_found_exactly() {
    let app = spawn_app().await;
    let family = noise(3000, 7);
    let mrn = noise(3000, 11);
    let id = create(
        &app,
        json!({"resourceType": "Patient", "name": [{"family": family}],
            "identifier": [{"system": "urn:long", "value": mrn}]}),
    )
    .await;
    let found = ids(&app, &format!("/Patient?family:exact={family}")).await;
    assert_eq!(found, BTreeSet::from([id.clone()]));
    assert_eq!(
        ids(&app, &format!("/Patient?family={}", &family[..300]))
            .await
            .len(),
        1
    );
    let other = format!("{}x", &mrn[..2999]);
    assert!(ids(&app, &format!("/Patient?identifier=urn:long|{other}"))
        .await
        .is_empty());
    assert_eq!(
        ids(&app, &format!("/Patient?identifier=urn:long|{mrn}")).await,
        BTreeSet::from([id.clone()])
    );
    // A conditional create keyed on the long identifier finds the stored resource.
    let response = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", format!("identifier=urn:long|{mrn}"))
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "matched, not created");
    let (status, _) = app
        .get_json(&format!("/Patient?name={}", "a".repeat(50_000)))
        .await;
    assert_eq!(status, 200, "a long search text is no error");
    // Over MLLP, a long name is stored (AA), not refused as a transient failure forever.
    let message = format!(
        "MSH|^~\\&|ADT|FAC|HL7BRIDGE|HOSP|20240101||ADT^A01|LONG1|P|2.5.1\rEVN|A01|20240101\r\
         PID|1||LONGNAME1^^^FAC^MR||{}^Al||19700101|M\rPV1|1|I",
        noise(4000, 3)
    );
    let answers = app.mllp_exchange(&[message.as_bytes()]).await;
    assert!(answers[0].contains("MSA|AA"), "{}", answers[0]);
}

#[tokio::test]
async fn date_prefixes_follow_the_r4_range_rules() {
    let app = spawn_app().await;
    let obs = |effective: Value| {
        let mut o =
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"}});
        if let Value::Object(extra) = effective {
            for (k, v) in extra {
                o[k] = v;
            }
        }
        o
    };
    let straddling = create(
        &app,
        obs(json!({"effectivePeriod": {"start": "2023-12-15", "end": "2024-01-15"}})),
    )
    .await;
    let year = create(&app, obs(json!({"effectiveDateTime": "2024"}))).await;
    let undated = create(&app, obs(json!({}))).await;
    let inside = create(&app, obs(json!({"effectiveDateTime": "2024-06-01"}))).await;
    let ge = ids(&app, "/Observation?date=ge2024").await;
    assert!(
        !ge.contains(&straddling),
        "reaches into 2024 but not above it, nor inside"
    );
    assert!(ge.contains(&year) && ge.contains(&inside));
    let le = ids(&app, "/Observation?date=le2024-01-01").await;
    assert!(le.contains(&straddling));
    assert!(
        !le.contains(&year),
        "2024 as a whole is not at or before its first day"
    );
    let ne = ids(&app, "/Observation?date=ne2024").await;
    assert!(ne.contains(&straddling));
    assert!(!ne.contains(&undated), "no value, no match");
    assert!(!ne.contains(&inside));

    let report = create(
        &app,
        json!({"resourceType": "DiagnosticReport", "status": "final",
        "code": {"text": "r"}, "effectiveDateTime": "2024-01-01",
        "issued": "2024-03-05T10:00:00Z"}),
    )
    .await;
    assert!(
        ids(&app, "/DiagnosticReport?date=2024-03-05")
            .await
            .is_empty(),
        "date is effective[x]"
    );
    assert_eq!(
        ids(&app, "/DiagnosticReport?issued=2024-03-05").await,
        BTreeSet::from([report])
    );
}

#[tokio::test]
async fn what_would_widen_a_search_is_refused_and_accents_do_not_matter() {
    let app = spawn_app().await;
    let p = seed(&app).await;
    for query in [
        "/Observation?subject:Patient=nonexistent",
        "/Patient?gender:not=male",
        "/Patient?name:missing=true",
        "/Observation?patient.name=Quimby",
        "/Patient?_has:Observation:patient:code=1234",
        "/Patient?_id:above=x",
    ] {
        let (status, outcome) = app.get_json(query).await;
        assert_eq!(status, 400, "{query}: {outcome}");
    }
    let many = (0..9)
        .map(|_| "_revinclude=Observation:subject")
        .collect::<Vec<_>>()
        .join("&");
    let distinct = format!(
        "/Patient?{}",
        [
            "Observation:subject",
            "Observation:patient",
            "Observation:encounter",
            "Encounter:patient",
            "Encounter:subject",
            "Condition:patient",
            "Condition:subject",
            "Procedure:patient",
            "Procedure:subject"
        ]
        .iter()
        .map(|v| format!("_revinclude={v}"))
        .collect::<Vec<_>>()
        .join("&")
    );
    assert_eq!(
        app.get_json(&format!("/Patient?{many}")).await.0,
        200,
        "repeats count once"
    );
    assert_eq!(app.get_json(&distinct).await.0, 400, "too many includes");
    assert_eq!(
        ids(&app, "/Patient?name=").await.len(),
        3,
        "an empty value is ignored"
    );
    assert_eq!(ids(&app, "/Patient?gender=").await.len(), 3);
    let accented = create(
        &app,
        json!({"resourceType": "Patient", "name": [{"family": "Müller", "given": ["José"]}]}),
    )
    .await;
    assert_eq!(
        ids(&app, "/Patient?name=muller").await,
        BTreeSet::from([accented.clone()])
    );
    assert_eq!(
        ids(&app, "/Patient?given=JOSE").await,
        BTreeSet::from([accented])
    );
    let (status, _) = app
        .get_json(&format!(
            "/Patient/{}/$everything?start=2025&end=2020",
            p[0]
        ))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn elements_subset_the_matches_and_say_so() {
    let app = spawn_app().await;
    seed(&app).await;
    let (status, bundle) = app
        .get_json("/Patient?family=Quimby&_elements=gender,birthDate")
        .await;
    assert_eq!(status, 200, "{bundle}");
    let patient = &bundle["entry"][0]["resource"];
    assert_eq!(patient["gender"], "male");
    assert_eq!(patient["birthDate"], "1991-06-01");
    assert!(patient.get("name").is_none(), "{patient}");
    assert_eq!(patient["meta"]["tag"][0]["code"], "SUBSETTED");
    let self_link = bundle["link"][0]["url"]
        .as_str()
        .unwrap()
        .replace("%2C", ",");
    assert!(
        self_link.contains("_elements=gender,birthDate"),
        "{self_link}"
    );
}

#[tokio::test]
async fn includes_follow_medication_requester_and_result_references() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "request": {"method": "POST", "url": "Patient"},
            "resource": {"resourceType": "Patient"}},
        {"fullUrl": "urn:uuid:m", "request": {"method": "POST", "url": "Medication"},
            "resource": {"resourceType": "Medication", "code": {"text": "invented"}}},
        {"fullUrl": "urn:uuid:d", "request": {"method": "POST", "url": "Practitioner"},
            "resource": {"resourceType": "Practitioner"}},
        {"fullUrl": "urn:uuid:o", "request": {"method": "POST", "url": "Observation"},
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "o"},
                "subject": {"reference": "urn:uuid:p"}}},
        {"request": {"method": "POST", "url": "MedicationRequest"},
            "resource": {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "subject": {"reference": "urn:uuid:p"},
                "medicationReference": {"reference": "urn:uuid:m"},
                "requester": {"reference": "urn:uuid:d"}}},
        {"request": {"method": "POST", "url": "DiagnosticReport"},
            "resource": {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "r"},
                "subject": {"reference": "urn:uuid:p"}, "result": [{"reference": "urn:uuid:o"}]}},
    ]});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200, "{response}");
    let included = |bundle: &Value| -> BTreeSet<String> {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "include")
            .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, found) = app
        .get_json("/MedicationRequest?_include=MedicationRequest:medication&_include=MedicationRequest:requester")
        .await;
    assert_eq!(
        included(&found),
        BTreeSet::from(["Medication".into(), "Practitioner".into()])
    );
    let (_, found) = app
        .get_json("/DiagnosticReport?_include=DiagnosticReport:result")
        .await;
    assert_eq!(included(&found), BTreeSet::from(["Observation".into()]));
    let (_, found) = app
        .get_json("/Observation?_revinclude=DiagnosticReport:result")
        .await;
    assert_eq!(
        included(&found),
        BTreeSet::from(["DiagnosticReport".into()])
    );
}

/// Follows `next` links from `first`; returns the matches' ids in the order the pages gave.
async fn ids_in_page_order(app: &TestApp, first: &str) -> Vec<String> {
    let mut out = Vec::new();
    for page in pages(app, first).await {
        let ids: Vec<String> = page["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect();
        assert!(!ids.is_empty(), "no empty page: {page}");
        out.extend(ids);
    }
    out
}

/// `_sort` by a date parameter: ascending by each resource's earliest instant, descending by
/// its latest, ties by id, resources without the date last either way; pages of one keep it.
#[tokio::test]
async fn sort_by_a_date_parameter_in_both_directions_pages_in_order() {
    let app = spawn_app().await;
    let dated = |id: &str, effective: Value| {
        let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"text": "invented sort reading"}});
        if let Some((k, v)) = effective.as_object().and_then(|m| m.iter().next()) {
            o[k] = v.clone();
        }
        o
    };
    let seeded = [
        (
            "s-mar",
            json!({"effectiveDateTime": "2021-03-01T10:00:00Z"}),
        ),
        ("s-jan", json!({"effectiveDateTime": "2021-01-15"})),
        // A period from February to December: earliest of all but two, latest of all.
        (
            "s-period",
            json!({"effectivePeriod": {"start": "2021-02-01T00:00:00Z", "end": "2021-12-31T00:00:00Z"}}),
        ),
        ("s-none", json!({})),
        ("s-jan-b", json!({"effectiveDateTime": "2021-01-15"})),
        ("s-jun", json!({"effectiveDateTime": "2021-06"})),
    ];
    for (id, effective) in seeded {
        assert_eq!(
            app.put_status(&format!("Observation/{id}"), &dated(id, effective))
                .await,
            201
        );
    }
    let ascending = ids_in_page_order(&app, "/Observation?_sort=date&_count=2").await;
    assert_eq!(
        ascending,
        ["s-jan", "s-jan-b", "s-period", "s-mar", "s-jun", "s-none"]
    );
    let descending = ids_in_page_order(&app, "/Observation?_sort=-date&_count=4").await;
    assert_eq!(
        descending,
        ["s-period", "s-jun", "s-mar", "s-jan-b", "s-jan", "s-none"]
    );
    // Other types' date parameters too; unknown or non-date keys are refused.
    let (status, _) = app.get_json("/Patient?_sort=-birthdate").await;
    assert_eq!(status, 200);
    for refused in ["date,_id", "status", "-nonsense"] {
        let (status, outcome) = app.get_json(&format!("/Observation?_sort={refused}")).await;
        assert_eq!(status, 400, "{refused}: {outcome}");
        assert_eq!(outcome["issue"][0]["expression"][0], "_sort");
    }
    app.stop().await;
}

/// A token on a plain `code` element (gender, status) matches when the client names the
/// system its binding implies, as FHIR clients often write it; another system matches
/// nothing. `\|` is a bar inside a value, in searches and in conditions alike.
#[tokio::test]
async fn code_tokens_take_their_bound_system_and_an_escaped_bar_is_part_of_the_value() {
    let app = spawn_app().await;
    let p = seed(&app).await;
    let (a, b) = (&p[0], &p[1]);
    let gender = "http://hl7.org/fhir/administrative-gender";
    assert_eq!(
        ids(&app, &format!("/Patient?gender={gender}|male")).await,
        BTreeSet::from([b.clone()])
    );
    assert_eq!(
        ids(
            &app,
            &format!("/Patient?gender={gender}|female,{gender}|male")
        )
        .await,
        BTreeSet::from([a.clone(), b.clone()])
    );
    assert!(ids(&app, "/Patient?gender=urn:other|male").await.is_empty());
    assert_eq!(
        subjects(
            &app,
            "/Observation?status=http://hl7.org/fhir/observation-status|amended"
        )
        .await,
        vec![b.clone()]
    );

    let bar = json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:bars", "value": "A|B"}]});
    let created = app.put_status("Patient/barred", &bar).await;
    assert_eq!(created, 201);
    // `%5C%7C` is `\|`, percent-encoded.
    assert_eq!(
        ids(&app, "/Patient?identifier=urn:bars%7CA%5C%7CB").await,
        BTreeSet::from(["barred".to_string()])
    );
    assert!(ids(&app, "/Patient?identifier=urn:bars%7CA")
        .await
        .is_empty());
    // The same as a condition: the conditional create finds the existing patient.
    let response = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", r"identifier=urn:bars|A\|B")
        .body(bar.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "matched, not created again");
    app.stop().await;
}
