//! Deferred indexing: `hl7bridge import --defer-index` must leave a database that answers
//! every search exactly as an inline import does, and a backlog left by a stopped import is
//! indexed by the next `serve`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{fresh_database, spawn_app_on, TestApp};

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CODES: [(&str, &str); 4] = [
    ("8867-4", "heart rate"),
    ("8480-6", "systolic blood pressure"),
    ("2339-0", "glucose"),
    ("29463-7", "body weight"),
];
const GIVEN: [&str; 6] = ["Zoë", "Anselm", "Brígida", "Corwin", "Dagny", "Eloïse"];
const FAMILY: [&str; 5] = ["Hartwell", "Ostrander", "Penhallow", "Quaritch", "Vasquéz"];

/// Invented patients with observations, conditions and encounters as NDJSON, and a transaction
/// Bundle whose Encounter refers to the clinic by identifier (so it goes in the second phase).
fn dataset() -> TempDir {
    let dir = std::env::temp_dir().join(format!("hl7bridge-defer-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = Vec::new();
    lines.push(json!({
        "resourceType": "Organization", "id": "def-clinic",
        "identifier": [{"system": "urn:example:clinics", "value": "HARBOR-9"}],
        "name": "Harbor Street Clinic"
    }));
    for p in 0..24 {
        let patient = format!("def-p{p}");
        lines.push(json!({
            "resourceType": "Patient", "id": patient,
            "identifier": [{"system": "urn:example:mrn", "value": format!("DEF-{p:03}")}],
            "name": [{"family": FAMILY[p % FAMILY.len()], "given": [GIVEN[p % GIVEN.len()]]}],
            "gender": if p % 2 == 0 { "female" } else { "male" },
            "birthDate": format!("{}-0{}-1{}", 1950 + p * 2, 1 + p % 9, p % 10),
            "managingOrganization": {"reference": "Organization/def-clinic"}
        }));
        for o in 0..6 {
            let (code, display) = CODES[(p + o) % CODES.len()];
            lines.push(json!({
                "resourceType": "Observation", "id": format!("def-o{p}-{o}"),
                "status": if o == 5 { "amended" } else { "final" },
                "category": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "encounter": {"reference": format!("Encounter/def-e{p}")},
                "effectiveDateTime": format!("2022-{:02}-{:02}T08:30:00Z", 1 + (p + o) % 12, 1 + o * 4),
                "valueQuantity": {"value": 60 + p + o, "unit": "1"}
            }));
        }
        lines.push(json!({
            "resourceType": "Encounter", "id": format!("def-e{p}"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": if p % 3 == 0 { "EMER" } else { "AMB" }},
            "subject": {"reference": format!("Patient/{patient}")},
            "serviceProvider": {"reference": "Organization/def-clinic"},
            "period": {"start": format!("2022-{:02}-03T09:00:00Z", 1 + p % 12),
                       "end": format!("2022-{:02}-03T10:00:00Z", 1 + p % 12)}
        }));
        if p % 4 == 0 {
            lines.push(json!({
                "resourceType": "Condition", "id": format!("def-c{p}"),
                "clinicalStatus": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "onsetDateTime": format!("{}-05-01", 2000 + p)
            }));
        }
    }
    let ndjson: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(dir.join("a-records.ndjson"), ndjson.join("\n") + "\n").unwrap();
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{
            "fullUrl": "urn:uuid:7d1c1c62-2f5e-4bb4-a6a7-3f1f3b0e9a11",
            "resource": {
                "resourceType": "Encounter", "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "IMP"},
                "subject": {"reference": "Patient/def-p1"},
                "serviceProvider": {"reference":
                    "Organization?identifier=urn:example:clinics|HARBOR-9"},
                "period": {"start": "2023-02-14T07:00:00Z"}
            },
            "request": {"method": "POST", "url": "Encounter"}
        }]
    });
    std::fs::write(dir.join("b-admission.json"), bundle.to_string()).unwrap();
    TempDir(dir)
}

fn import(database_url: &str, args: &[&str], dir: &TempDir) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
        .arg("import")
        .args(args)
        .arg(&dir.0)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HL7BRIDGE_DATABASE_URL", database_url)
        .output()
        .expect("the binary runs")
}

/// Searches that use every kind of deferred value, with what each must at least find.
const SEARCHES: [(&str, u64); 17] = [
    ("/Observation?code=http://loinc.org|8867-4", 30),
    ("/Observation?code=8480-6&date=ge2022-06-01", 1),
    ("/Observation?status=amended", 24),
    ("/Observation?category=vital-signs&status=final", 120),
    ("/Observation?date=2022-03", 1),
    ("/Observation?date=lt2022-04-01&code=2339-0", 1),
    ("/Patient?name=zoe", 4),
    ("/Patient?given=eloise", 4),
    ("/Patient?family:exact=Vasquéz", 4),
    ("/Patient?birthdate=lt1970", 1),
    ("/Patient?gender=female&birthdate=ge1980", 1),
    ("/Condition?code=44054006&onset-date=ge2010", 1),
    ("/Encounter?class=EMER", 8),
    ("/Encounter?date=2022-02&status=finished", 1),
    (
        "/Encounter?service-provider=Organization/def-clinic&class=IMP",
        1,
    ),
    (
        "/Patient?identifier=urn:example:mrn|DEF-007&_revinclude=Observation:subject",
        7,
    ),
    (
        "/Observation?code=29463-7&_include=Observation:subject&_count=500",
        2,
    ),
];

/// What a search found: its total and the ids of every entry, sorted.
async fn found(app: &TestApp, query: &str) -> (u64, Vec<String>) {
    let query = if query.contains("_count=") {
        query.to_string()
    } else {
        format!("{query}&_count=500")
    };
    let (status, bundle) = app.get_json(&query).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    let mut ids = crate::support::ids(&bundle);
    ids.sort();
    (bundle["total"].as_u64().unwrap_or(ids.len() as u64), ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_import_answers_every_search_as_an_inline_import_does() {
    let dir = dataset();
    let (inline_url, _inline_db) = fresh_database().await;
    let (deferred_url, _deferred_db) = fresh_database().await;

    let inline = tokio::task::block_in_place(|| import(&inline_url, &[], &dir));
    let deferred = tokio::task::block_in_place(|| import(&deferred_url, &["--defer-index"], &dir));

    let stderr = String::from_utf8_lossy(&deferred.stderr).into_owned();
    assert!(
        inline.status.success(),
        "{}",
        String::from_utf8_lossy(&inline.stderr)
    );
    assert!(deferred.status.success(), "{stderr}");
    // The NDJSON resources, then the Bundle's one (in the second phase).
    assert!(stderr.contains("reindexed 199 resources in"), "{stderr}");
    assert!(stderr.contains("reindexed 1 resources in"), "{stderr}");
    for name in GIVEN.iter().chain(FAMILY.iter()) {
        assert!(!stderr.contains(name), "{stderr}");
    }
    let a = spawn_app_on(&inline_url, |_| {}).await;
    let b = spawn_app_on(&deferred_url, |_| {}).await;
    for (query, at_least) in SEARCHES {
        let expected = found(&a, query).await;
        assert!(expected.1.len() as u64 >= at_least, "{query}: {expected:?}");
        assert_eq!(found(&b, query).await, expected, "{query}");
    }

    // `reindex --all` rebuilds every row and changes no answer.
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
            .args(["reindex", "--all"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HL7BRIDGE_DATABASE_URL", &deferred_url)
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("reindexed 200 resources in"), "{stderr}");
    for (query, _) in SEARCHES {
        assert_eq!(found(&b, query).await, found(&a, query).await, "{query}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_left_by_a_stopped_import_is_indexed_when_the_server_starts() {
    use hl7bridge::store::{ResourceWrite, Store, WriteBatch, WriteOp};
    let (url, _db) = fresh_database().await;
    // What an import killed before its reindex leaves: resources written, values deferred.
    let store = Store::connect(&url).await.unwrap().deferring_search_index();
    let ops = (0..30)
        .map(|i| {
            WriteOp::Upsert(ResourceWrite {
                resource_type: "Observation".into(),
                id: format!("late-{i}"),
                content: json!({
                    "resourceType": "Observation", "id": format!("late-{i}"), "status": "final",
                    "identifier": [{"value": format!("LATE-{i}")}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                    "effectiveDateTime": "2024-01-05"
                }),
            })
        })
        .collect();
    let batch = WriteBatch {
        ops,
        ..WriteBatch::default()
    };
    store.write(batch).await.unwrap();
    assert_eq!(store.index_backlog_len().await.unwrap(), 30);
    store.close().await;

    let app = spawn_app_on(&url, |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (total, _) = found(&app, "/Observation?code=718-7&date=2024-01-05").await;
        if total == 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog was not indexed: {total}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Identifiers were indexed with the write, not by the reindex.
    let (total, _) = found(&app, "/Observation?identifier=LATE-7").await;
    assert_eq!(total, 1);
    app.stop().await;
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.index_backlog_len().await.unwrap(), 0);
    store.close().await;
}
