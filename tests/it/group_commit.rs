//! Group commit and the STAT lane, through real MLLP connections: no ACK before the commit,
//! queued messages committed together, a STAT result ahead of a queue of routine ones.
//!
//! The database is held by the test itself so that the queue builds up deterministically: on
//! SQLite a second connection takes the write lock (`BEGIN IMMEDIATE`); on PostgreSQL it locks
//! one patient's row, which the first routine message must update.

use std::time::{Duration, Instant};

use sea_orm::{
    ConnectionTrait, Database, DatabaseTransaction, DbBackend, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{field, fresh_database, read_frame, spawn_app_on, TestApp};

fn oru(control_id: &str, mrn: &str, stat: bool) -> Vec<u8> {
    // OBR-27.6 is the order's priority in v2.5's quantity/timing field.
    let priority = if stat { "^^^^^S" } else { "^^^^^R" };
    format!(
        "MSH|^~\\&|LABSYS|NORTHLAB|HL7BRIDGE|GENHOSP|20240630120030-0500||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||{mrn}^^^NORTHLAB^MR||Quill^Ada||19800214|F\r\
         OBR|1|P{control_id}|F{control_id}^NORTHLAB|2345-7^Glucose^LN|||20240630101500-0500||||||||||||||||||F||{priority}\r\
         OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|||||F\r"
    )
    .into_bytes()
}

/// Sends one message on its own connection; returns the ACK and when it arrived.
async fn send(app_mllp: std::net::SocketAddr, payload: Vec<u8>) -> (String, Instant) {
    let mut stream = TcpStream::connect(app_mllp).await.expect("MLLP connects");
    stream
        .write_all(&hl7bridge_mllp::encode(&payload))
        .await
        .unwrap();
    let ack = read_frame(&mut stream).await;
    (ack, Instant::now())
}

async fn patient_id(app: &TestApp, mrn: &str) -> String {
    let (status, found) = app.get_json(&format!("/Patient?identifier={mrn}")).await;
    assert_eq!(status, 200);
    found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("patient {mrn} is stored: {found}"))
        .to_string()
}

async fn last_updated(app: &TestApp, mrn: &str) -> String {
    let (_, found) = app.get_json(&format!("/Patient?identifier={mrn}")).await;
    found["entry"][0]["resource"]["meta"]["lastUpdated"]
        .as_str()
        .unwrap_or_else(|| panic!("patient {mrn} is stored: {found}"))
        .to_string()
}

/// Holds the database so that the routine lane's first commit blocks.
async fn hold_database(url: &str, locked_patient: &str) -> DatabaseTransaction {
    let db = Database::connect(url).await.expect("the test connects");
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            let options = TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            };
            db.begin_with_options(options).await.unwrap()
        }
        _ => {
            let txn = db.begin().await.unwrap();
            let lock = format!(
                "SELECT 1 FROM resource WHERE resource_type = 'Patient' AND id = '{locked_patient}' FOR UPDATE"
            );
            txn.execute_unprepared(&lock).await.unwrap();
            txn
        }
    }
}

/// A server with patient MRN-A stored (its row is the one the PostgreSQL hold locks).
async fn app_with_one_patient() -> (TestApp, String, crate::support::TestDatabase) {
    let (url, database) = fresh_database().await;
    let app = spawn_app_on(&url, |_| {}).await;
    let first = send(app.mllp, oru("SETUP1", "MRN-A", false)).await.0;
    assert_eq!(field(&first, "MSA", 1), "AA", "{first}");
    (app, url, database)
}

#[tokio::test]
async fn acks_wait_for_the_commit_and_stat_overtakes_a_queue_of_routine_results() {
    let (app, url, _database) = app_with_one_patient().await;
    let locked = patient_id(&app, "MRN-A").await;
    let hold = hold_database(&url, &locked).await;
    let sqlite = !url.starts_with("postgres");

    // One routine message in flight (blocked on the held database)...
    let in_flight = tokio::spawn(send(app.mllp, oru("N1", "MRN-A", false)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // ...eight queued behind it, then a STAT result.
    let queued: Vec<_> = (2..10)
        .map(|n| {
            tokio::spawn(send(
                app.mllp,
                oru(&format!("N{n}"), &format!("MRN-{n}"), false),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stat = tokio::spawn(send(app.mllp, oru("S1", "MRN-STAT", true)));

    if sqlite {
        // One writer: nothing can commit, so nothing may be acknowledged.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!in_flight.is_finished(), "no ACK before the commit");
        assert!(!stat.is_finished(), "no ACK before the commit");
        assert!(
            queued.iter().all(|q| !q.is_finished()),
            "no ACK before the commit"
        );
    } else {
        // The STAT lane has its own committer: it commits while the routine lane is blocked.
        let (ack, _) = tokio::time::timeout(Duration::from_secs(5), stat)
            .await
            .expect("the STAT result is acknowledged while routine work is blocked")
            .unwrap();
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        assert!(!in_flight.is_finished(), "no ACK before the commit");
        assert!(
            queued.iter().all(|q| !q.is_finished()),
            "no ACK before the commit"
        );
        hold.rollback().await.unwrap();
        let (ack, _) = in_flight.await.unwrap();
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        for q in queued {
            let (ack, _) = q.await.unwrap();
            assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        }
        assert_queued_committed_together(&app).await;
        app.stop().await;
        return;
    }
    hold.rollback().await.unwrap();
    let (ack, _) = in_flight.await.unwrap();
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    let (stat_ack, stat_at) = stat.await.unwrap();
    assert_eq!(field(&stat_ack, "MSA", 1), "AA", "{stat_ack}");
    for q in queued {
        let (ack, at) = q.await.unwrap();
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        assert!(
            stat_at < at,
            "the STAT result went ahead of the queued routine ones"
        );
    }
    assert_queued_committed_together(&app).await;
    let stat_time = last_updated(&app, "MRN-STAT").await;
    let queued_time = last_updated(&app, "MRN-2").await;
    assert!(
        stat_time < queued_time,
        "{stat_time} is before {queued_time}"
    );
    app.stop().await;
}

/// The eight queued messages went out in one transaction: one commit time for all.
async fn assert_queued_committed_together(app: &TestApp) {
    let mut times = Vec::new();
    for n in 2..10 {
        times.push(last_updated(app, &format!("MRN-{n}")).await);
    }
    times.dedup();
    assert_eq!(
        times.len(),
        1,
        "one commit for the queued messages: {times:?}"
    );
}

#[tokio::test]
async fn a_failing_write_in_a_group_fails_only_its_own_caller() {
    let (app, url, _database) = app_with_one_patient().await;
    let locked = patient_id(&app, "MRN-A").await;
    let org_url = format!("{}/Organization/org-1", app.base);
    let hold = hold_database(&url, &locked).await;
    // Queue a routine message behind a blocked one, and a FHIR update whose If-Match fails.
    let in_flight = tokio::spawn(send(app.mllp, oru("N1", "MRN-A", false)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let queued = tokio::spawn(send(app.mllp, oru("N2", "MRN-2", false)));
    let client = app.client.clone();
    let body = serde_json::json!({"resourceType": "Organization", "id": "org-1", "name": "Lab"});
    let stale = tokio::spawn(async move {
        client
            .put(org_url)
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"7\"")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    hold.rollback().await.unwrap();
    assert_eq!(field(&in_flight.await.unwrap().0, "MSA", 1), "AA");
    assert_eq!(field(&queued.await.unwrap().0, "MSA", 1), "AA");
    assert_eq!(stale.await.unwrap(), 412, "only the stale update fails");
    patient_id(&app, "MRN-2").await;
    app.stop().await;
}

/// One stale `If-Match` among queued messages must not cost the others their group commit:
/// the failing write is answered alone and the rest still commit together. Otherwise a
/// client sending a stale precondition now and then turns every group into one transaction
/// per write (under MLLP load, a few 412s a second cut throughput by two thirds).
#[tokio::test]
async fn a_failing_write_does_not_break_up_the_group_it_was_queued_in() {
    let (app, url, _database) = app_with_one_patient().await;
    let locked = patient_id(&app, "MRN-A").await;
    let hold = hold_database(&url, &locked).await;
    let in_flight = tokio::spawn(send(app.mllp, oru("N1", "MRN-A", false)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut queued: Vec<_> = (2..6)
        .map(|n| {
            tokio::spawn(send(
                app.mllp,
                oru(&format!("N{n}"), &format!("MRN-{n}"), false),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = app.client.clone();
    let org_url = format!("{}/Organization/org-1", app.base);
    let body = serde_json::json!({"resourceType": "Organization", "id": "org-1", "name": "Lab"});
    let stale = tokio::spawn(async move {
        client
            .put(org_url)
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"7\"")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    queued.extend((6..10).map(|n| {
        tokio::spawn(send(
            app.mllp,
            oru(&format!("N{n}"), &format!("MRN-{n}"), false),
        ))
    }));
    tokio::time::sleep(Duration::from_millis(400)).await;
    hold.rollback().await.unwrap();
    assert_eq!(field(&in_flight.await.unwrap().0, "MSA", 1), "AA");
    for q in queued {
        assert_eq!(field(&q.await.unwrap().0, "MSA", 1), "AA");
    }
    assert_eq!(stale.await.unwrap(), 412, "only the stale update fails");
    assert_queued_committed_together(&app).await;
    app.stop().await;
}
