//! Nothing acknowledged is lost (nor its audit record): the real binary under MLLP and HTTP
//! write load, killed with
//! SIGKILL at ten moments and restarted on the same database. Every message answered AA and
//! every create answered 201 must then be stored exactly once. Runs on SQLite, and on
//! PostgreSQL when `HL7BRIDGE_DATABASE_URL` points there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, Statement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::otlp_export::start_server;
use crate::support::{field, fresh_database};

const KILLS: usize = 10;
const MLLP_CLIENTS: usize = 4;
const HTTP_CLIENTS: usize = 2;

fn oru(control_id: &str, mrn: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LABSYS|NORTHLAB|HL7BRIDGE|GENHOSP|20240630120030-0500||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||{mrn}^^^NORTHLAB^MR||Crash^Test||19700101|U\r\
         OBR|1|P{control_id}|F{control_id}^NORTHLAB|2345-7^Glucose^LN|||20240630101500-0500||||||||||||||||||F\r\
         OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|||||F\r"
    )
    .into_bytes()
}

#[derive(Default)]
struct Acknowledged {
    /// Control ids answered AA, with the MRN each named.
    messages: Vec<(String, String)>,
    /// (id, identifier value) of each Patient answered 201.
    created: Vec<(String, String)>,
}

/// Sends messages one after another until the connection dies or `stop` is set.
async fn mllp_load(
    mllp: String,
    tag: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acknowledged>>,
) {
    let Ok(mut stream) = TcpStream::connect(&mllp).await else {
        return;
    };
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let control_id = format!("{tag}-{n}");
        let mrn = format!("MRN{tag}-{n}");
        if stream
            .write_all(&hl7bridge_mllp::encode(&oru(&control_id, &mrn)))
            .await
            .is_err()
        {
            return;
        }
        let answer =
            tokio::time::timeout(Duration::from_secs(10), read_frame_or_eof(&mut stream)).await;
        let Ok(Some(ack)) = answer else { return };
        if field(&ack, "MSA", 1) == "AA" {
            acked.lock().unwrap().messages.push((control_id, mrn));
        }
    }
}

/// One frame, or None when the peer went away first (the server was killed).
async fn read_frame_or_eof(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(&[0x1c, 0x0d]) {
            return Some(String::from_utf8_lossy(&buf[1..buf.len() - 2]).into_owned());
        }
    }
}

async fn http_load(
    base: String,
    tag: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acknowledged>>,
) {
    let client = crate::support::http_client();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let value = format!("H{tag}-{n}");
        let patient = serde_json::json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:test:crash", "value": value}],
            "name": [{"family": "Crash"}],
        });
        let sent = client
            .post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .body(patient.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let Ok(response) = sent else { return };
        if response.status().as_u16() != 201 {
            continue;
        }
        let Ok(body) = response.json::<serde_json::Value>().await else {
            return;
        };
        let id = body["id"].as_str().unwrap_or_default().to_string();
        acked.lock().unwrap().created.push((id, value));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_ten_sigkills_exactly_once() {
    let (url, _database) = fresh_database().await;
    let dir = std::env::temp_dir().join(format!("hl7bridge-crash-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = [("HL7BRIDGE_DATABASE_URL", url.as_str())];
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    // A fixed sequence of kill moments, so a failure can be rerun as it happened.
    let moments_ms = [350, 820, 510, 1200, 430, 960, 610, 1500, 700, 390];
    for (round, wait_ms) in moments_ms.iter().enumerate().take(KILLS) {
        let (mut child, http, mllp) = tokio::task::block_in_place(|| start_server(&dir, &env));
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        for c in 0..MLLP_CLIENTS {
            let tag = format!("R{round}M{c}");
            load.push(tokio::spawn(mllp_load(
                mllp.clone(),
                tag,
                stop.clone(),
                acked.clone(),
            )));
        }
        for c in 0..HTTP_CLIENTS {
            let tag = format!("R{round}H{c}");
            let base = format!("http://{http}");
            load.push(tokio::spawn(http_load(
                base,
                tag,
                stop.clone(),
                acked.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(*wait_ms)).await;
        child.kill().expect("SIGKILL is delivered");
        tokio::task::block_in_place(|| child.wait()).unwrap();
        stop.store(true, Ordering::Relaxed);
        for task in load {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }

    // A last start: recovery on open must not lose or repeat anything either.
    let (mut child, _, _) = tokio::task::block_in_place(|| start_server(&dir, &env));
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.messages.len() >= 20 && acked.created.len() >= 10,
        "the load ran: {} messages and {} creates acknowledged",
        acked.messages.len(),
        acked.created.len()
    );
    let db = Database::connect(&url)
        .await
        .expect("the test reads the database");
    let backend = db.get_database_backend();
    let rows = |sql: &str| Statement::from_string(backend, sql.to_string());
    let stored_acks: HashMap<String, i64> = db
        .query_all_raw(rows(
            "SELECT control_id, COUNT(*) AS n FROM hl7_message WHERE ack_code = 'AA' GROUP BY control_id",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.try_get::<String>("", "control_id").unwrap(), r.try_get::<i64>("", "n").unwrap()))
        .collect();
    let identifiers: HashMap<String, i64> = db
        .query_all_raw(rows(
            "SELECT value, COUNT(*) AS n FROM token_index WHERE resource_type = 'Patient' AND param = 'identifier' GROUP BY value",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.try_get::<String>("", "value").unwrap(), r.try_get::<i64>("", "n").unwrap()))
        .collect();
    let live_patients: std::collections::HashSet<String> = db
        .query_all_raw(rows(
            "SELECT id FROM resource WHERE resource_type = 'Patient' AND deleted = false",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.try_get::<String>("", "id").unwrap())
        .collect();
    // Each acknowledged write is found once, lost, or duplicated; counted first and reported,
    // then required to be found once.
    let once = |n: Option<&i64>| match n {
        None => Stored::Lost,
        Some(1) => Stored::Once,
        Some(_) => Stored::Duplicated,
    };
    let messages: Vec<Stored> = acked
        .messages
        .iter()
        .map(|(control_id, mrn)| {
            once(stored_acks.get(control_id)).worst(once(identifiers.get(mrn)))
        })
        .collect();
    let creates: Vec<Stored> = acked
        .created
        .iter()
        .map(|(id, value)| match live_patients.contains(id) {
            true => once(identifiers.get(value)),
            false => Stored::Lost,
        })
        .collect();
    let count = |what: Stored| {
        let n = |all: &[Stored]| all.iter().filter(|s| **s == what).count();
        n(&messages) + n(&creates)
    };
    crate::support::report(&format!(
        "crash safety ({}): {KILLS} SIGKILLs; acknowledged: {} messages, {} creates; found once \
         after restart: {}; duplicates: {}; lost: {}",
        backend_name(backend),
        messages.len(),
        creates.len(),
        count(Stored::Once),
        count(Stored::Duplicated),
        count(Stored::Lost),
    ));
    for ((control_id, mrn), stored) in acked.messages.iter().zip(&messages) {
        assert_eq!(
            *stored,
            Stored::Once,
            "message {control_id} and its patient {mrn}"
        );
    }
    for ((id, value), stored) in acked.created.iter().zip(&creates) {
        assert_eq!(*stored, Stored::Once, "created Patient/{id} ({value})");
    }
    // Every acknowledged write is in the audit trail too: a write is answered only once its
    // audit record is stored.
    let audited: Vec<String> = db
        .query_all_raw(rows("SELECT entities FROM audit_event"))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.try_get::<String>("", "entities").unwrap())
        .collect();
    let audited = audited.join("\n");
    for (id, _) in &acked.created {
        assert!(
            audited.contains(&format!("\"Patient/{id}\"")),
            "the create of Patient/{id} is in the audit trail"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What became of one acknowledged write after the crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stored {
    Once,
    Duplicated,
    Lost,
}

impl Stored {
    fn worst(self, other: Stored) -> Stored {
        self.max(other)
    }
}

fn backend_name(backend: sea_orm::DatabaseBackend) -> &'static str {
    match backend {
        sea_orm::DatabaseBackend::Postgres => "PostgreSQL",
        sea_orm::DatabaseBackend::Sqlite => "SQLite",
        _ => "another database",
    }
}
