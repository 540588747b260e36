//! `hl7bridge import`: the real binary writing Bundles and NDJSON into a fresh database, read
//! back over HTTP by an app started on that database.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{fresh_database, spawn_app_on, TestApp};

/// Two transaction Bundles and an NDJSON file of invented patients. The clinic visit refers
/// to the registration's Organization by identifier, and sorts before it.
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import")
}

/// Family and given names in the fixtures, which no output line may show.
const NAMES: [&str; 7] = [
    "Quillfeather",
    "Odalys",
    "Brannigan",
    "Tobiah",
    "Marrowby",
    "Ysolde",
    "Emberlyn",
];

/// Every resource type the fixtures hold.
const TYPES: [&str; 5] = [
    "Patient",
    "Organization",
    "Encounter",
    "Observation",
    "Condition",
];

fn import(database_url: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
        .arg("import")
        .args(args.iter().map(|a| a.as_ref()))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HL7BRIDGE_DATABASE_URL", database_url)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for name in NAMES {
        assert!(
            !stderr.contains(name) && !stdout.contains(name),
            "{stderr}{stdout}"
        );
    }
    output
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn with_fixtures() -> TempDir {
        let dir = std::env::temp_dir().join(format!("hl7bridge-import-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(fixtures()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn patient_id(app: &TestApp, mrn: &str) -> String {
    let (status, found) = app.get_json(&format!("/Patient?identifier={mrn}")).await;
    assert_eq!(status, 200);
    assert_eq!(found["total"], 1, "{found}");
    found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn only(app: &TestApp, query: &str) -> Value {
    let (status, found) = app.get_json(query).await;
    assert_eq!(status, 200);
    assert_eq!(found["total"], 1, "{query}: {found}");
    found["entry"][0]["resource"].clone()
}

async fn counts(app: &TestApp) -> Vec<u64> {
    let mut counts = Vec::new();
    for resource_type in TYPES {
        let query = format!("/{resource_type}?_summary=count");
        let (_, found) = app.get_json(&query).await;
        counts.push(found["total"].as_u64().expect("a total"));
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_bundles_and_ndjson_is_imported_with_every_reference_resolved() {
    let (database_url, _database) = fresh_database().await;

    let output =
        tokio::task::block_in_place(|| import(&database_url, &[&fixtures(), &"--jobs", &"3"]));

    assert!(output.status.success(), "{}", stderr_of(&output));
    let app = spawn_app_on(&database_url, |_| {}).await;
    let first = patient_id(&app, "IMP-1001").await;
    let clinic = only(&app, "/Organization?identifier=NORTHFIELD-7").await;
    let clinic_ref = format!("Organization/{}", clinic["id"].as_str().unwrap());
    let patient = only(&app, &format!("/Patient?_id={first}")).await;
    assert_eq!(patient["managingOrganization"]["reference"], clinic_ref);
    let observation = only(&app, &format!("/Observation?subject=Patient/{first}")).await;
    let encounter = only(&app, &format!("/Encounter?subject=Patient/{first}")).await;
    let encounter_ref = format!("Encounter/{}", encounter["id"].as_str().unwrap());
    assert_eq!(observation["encounter"]["reference"], encounter_ref);
    assert_eq!(encounter["serviceProvider"]["reference"], clinic_ref);
    // The conditional reference found the Organization another file created.
    let second = patient_id(&app, "IMP-1002").await;
    let visit = only(&app, &format!("/Encounter?subject=Patient/{second}")).await;
    assert_eq!(visit["serviceProvider"]["reference"], clinic_ref);
    let condition = only(&app, &format!("/Condition?subject=Patient/{second}")).await;
    assert_eq!(
        condition["encounter"]["reference"],
        format!("Encounter/{}", visit["id"].as_str().unwrap())
    );
    // NDJSON: ids kept, and one derived for the line without.
    assert_eq!(patient_id(&app, "IMP-1003").await, "imp-ndjson-1");
    let (_, weights) = app
        .get_json("/Observation?subject=Patient/imp-ndjson-1")
        .await;
    assert_eq!(weights["total"], 2, "{weights}");
    let derived = only(&app, "/Observation?identifier=NDJ-3").await;
    assert!(uuid::Uuid::parse_str(derived["id"].as_str().unwrap()).is_ok());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_the_same_files_twice_changes_no_counts_and_no_versions() {
    let (database_url, _database) = fresh_database().await;
    let first = tokio::task::block_in_place(|| import(&database_url, &[&fixtures()]));
    assert!(first.status.success(), "{}", stderr_of(&first));
    let app = spawn_app_on(&database_url, |_| {}).await;
    let before = counts(&app).await;

    let again = tokio::task::block_in_place(|| import(&database_url, &[&fixtures()]));

    assert!(again.status.success(), "{}", stderr_of(&again));
    assert_eq!(counts(&app).await, before);
    assert_eq!(before, [3, 1, 2, 4, 1]);
    let id = patient_id(&app, "IMP-1001").await;
    let patient = only(&app, &format!("/Patient?_id={id}")).await;
    assert_eq!(patient["meta"]["versionId"], "1");
    let derived = only(&app, "/Observation?identifier=NDJ-3").await;
    assert_eq!(derived["meta"]["versionId"], "1");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_bundle_and_a_broken_ndjson_line_are_reported_and_the_rest_still_imported() {
    let (database_url, _database) = fresh_database().await;
    let dir = TempDir::with_fixtures();
    let broken_bundle = r#"{"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-2222-4333-8444-555555555555",
         "resource": {"resourceType": "Patient", "name": [{"family": "Emberlyn"}], "gender": ""},
         "request": {"method": "POST", "url": "Patient"}}]}"#;
    std::fs::write(dir.path().join("broken_transaction.json"), broken_bundle).unwrap();
    let ndjson = dir.path().join("bulk_export.ndjson");
    let mut lines: Vec<String> = std::fs::read_to_string(&ndjson)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.insert(
        1,
        r#"{"resourceType":"Patient","name":[{"family":"Emberlyn"}"#.into(),
    );
    std::fs::write(&ndjson, lines.join("\n")).unwrap();

    let output = tokio::task::block_in_place(|| import(&database_url, &[&dir.path()]));

    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    let bundle_line = format!(
        "import: {}: invalid at Bundle.entry[0].resource.gender",
        dir.path().join("broken_transaction.json").display()
    );
    assert!(stderr.contains(&bundle_line), "{stderr}");
    let ndjson_line = format!("import: {}:2: not JSON", ndjson.display());
    assert!(stderr.contains(&ndjson_line), "{stderr}");
    assert!(
        stderr.contains("import finished: 4 files, 11 resources, 2 failures"),
        "{stderr}"
    );
    let app = spawn_app_on(&database_url, |_| {}).await;
    assert_eq!(counts(&app).await, [3, 1, 2, 4, 1]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_a_terminal_progress_is_plain_lines_then_one_summary() {
    let (database_url, _database) = fresh_database().await;

    let output = tokio::task::block_in_place(|| import(&database_url, &[&fixtures()]));

    assert!(output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        !stderr.contains('\r'),
        "no redrawing off a terminal: {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("import: 0 resources, 0/s, files 0/3, 0 B of "),
        "{stderr}"
    );
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with("import finished: 3 files, 11 resources, 0 failures, "),
        "{stderr}"
    );
    assert!(summary.ends_with(" resources/s"), "{stderr}");
}

#[test]
fn import_help_prints_the_usage() {
    for args in [&["import", "--help"][..], &["help"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        let usage = String::from_utf8_lossy(&output.stdout);
        assert!(
            usage.contains("hl7bridge import [--ndjson] [--jobs N] [--defer-index] FILE|DIR...")
                && usage.contains("hl7bridge reindex [--all]"),
            "{usage}"
        );
    }
}
