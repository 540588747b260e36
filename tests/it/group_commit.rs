//! Group commit and the STAT lane, through real MLLP connections: no ACK before the commit,
//! queued messages committed together, a STAT result ahead of a queue of routine ones.
//!
//! The database is held by the test itself so that the queue builds up deterministically: on
//! SQLite a second connection takes the write lock (`BEGIN IMMEDIATE`); on PostgreSQL, where a
//! lane commits two groups at once, it locks two patients' rows, which the first two routine
//! messages must update, so that both of the lane's groups in flight are blocked.

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

/// Holds the database so that the routine lane's commits of these patients block.
async fn hold_database(url: &str, locked_patients: &[String]) -> DatabaseTransaction {
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
            let ids: Vec<String> = locked_patients.iter().map(|p| format!("'{p}'")).collect();
            let lock = format!(
                "SELECT 1 FROM resource WHERE resource_type = 'Patient' AND id IN ({}) FOR UPDATE",
                ids.join(",")
            );
            txn.execute_unprepared(&lock).await.unwrap();
            txn
        }
    }
}

/// A server with patients MRN-A and MRN-B stored (their rows are the ones the PostgreSQL hold
/// locks).
async fn app_with_two_patients() -> (
    TestApp,
    String,
    crate::support::TestDatabase,
    tokio::sync::RwLockReadGuard<'static, ()>,
) {
    // These tests count on messages reaching the lane within a few hundred milliseconds.
    let turn = crate::support::timing_sensitive().await;
    let (url, database) = fresh_database().await;
    let app = spawn_app_on(&url, |_| {}).await;
    for (control, mrn) in [("SETUP1", "MRN-A"), ("SETUP2", "MRN-B")] {
        let ack = send(app.mllp, oru(control, mrn, false)).await.0;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    }
    (app, url, database, turn)
}

type Sent = tokio::task::JoinHandle<(String, Instant)>;

/// Holds the database and sends a routine message for MRN-A and one for MRN-B, which block:
/// every group the routine lane commits at once is then in flight, and what follows queues.
async fn block_routine_lane(app: &TestApp, url: &str) -> (DatabaseTransaction, Vec<Sent>) {
    let locked = [
        patient_id(app, "MRN-A").await,
        patient_id(app, "MRN-B").await,
    ];
    let hold = hold_database(url, &locked).await;
    let in_flight = vec![
        tokio::spawn(send(app.mllp, oru("N1", "MRN-A", false))),
        tokio::spawn(send(app.mllp, oru("N1B", "MRN-B", false))),
    ];
    tokio::time::sleep(Duration::from_millis(400)).await;
    (hold, in_flight)
}

#[tokio::test]
async fn acks_wait_for_the_commit_and_stat_overtakes_a_queue_of_routine_results() {
    let (app, url, _database, _turn) = app_with_two_patients().await;
    let sqlite = !url.starts_with("postgres");

    // Routine messages in flight (blocked on the held database)...
    let (hold, in_flight) = block_routine_lane(&app, &url).await;
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
        assert!(
            in_flight.iter().all(|q| !q.is_finished()),
            "no ACK before the commit"
        );
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
        assert!(
            in_flight.iter().all(|q| !q.is_finished()),
            "no ACK before the commit"
        );
        assert!(
            queued.iter().all(|q| !q.is_finished()),
            "no ACK before the commit"
        );
        hold.rollback().await.unwrap();
        for q in in_flight {
            let (ack, _) = q.await.unwrap();
            assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        }
        for q in queued {
            let (ack, _) = q.await.unwrap();
            assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        }
        assert_queued_committed_together(&app).await;
        app.stop().await;
        return;
    }
    hold.rollback().await.unwrap();
    for q in in_flight {
        let (ack, _) = q.await.unwrap();
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    }
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
    let (app, url, _database, _turn) = app_with_two_patients().await;
    let org_url = format!("{}/Organization/org-1", app.base);
    // Queue a routine message behind blocked ones, and a FHIR update whose If-Match fails.
    let (hold, in_flight) = block_routine_lane(&app, &url).await;
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
    for q in in_flight {
        assert_eq!(field(&q.await.unwrap().0, "MSA", 1), "AA");
    }
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
    let (app, url, _database, _turn) = app_with_two_patients().await;
    let (hold, in_flight) = block_routine_lane(&app, &url).await;
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
    for q in in_flight {
        assert_eq!(field(&q.await.unwrap().0, "MSA", 1), "AA");
    }
    for q in queued {
        assert_eq!(field(&q.await.unwrap().0, "MSA", 1), "AA");
    }
    assert_eq!(stale.await.unwrap(), 412, "only the stale update fails");
    assert_queued_committed_together(&app).await;
    app.stop().await;
}

/// On PostgreSQL a lane commits two groups at once: a group blocked on one patient's row does
/// not hold up a write to other resources, and a later write to the blocked patient waits for
/// its turn (the order of writes to one resource is kept). SQLite has one writer.
#[tokio::test]
async fn on_postgresql_a_blocked_group_does_not_hold_up_writes_to_other_resources() {
    let (app, url, _database, _turn) = app_with_two_patients().await;
    if !url.starts_with("postgres") {
        app.stop().await;
        return;
    }
    let locked = [patient_id(&app, "MRN-A").await];
    let hold = hold_database(&url, &locked).await;
    let blocked = tokio::spawn(send(app.mllp, oru("B1", "MRN-A", false)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ack, _) = tokio::time::timeout(
        Duration::from_secs(5),
        send(app.mllp, oru("FREE1", "MRN-FREE", false)),
    )
    .await
    .expect("another patient's result is committed while the first group is blocked");
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    // A second result for the blocked patient waits behind the first.
    let behind = tokio::spawn(send(app.mllp, oru("B2", "MRN-A", false)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished() && !behind.is_finished());
    hold.rollback().await.unwrap();
    let (first, first_at) = blocked.await.unwrap();
    let (second, second_at) = behind.await.unwrap();
    assert_eq!(field(&first, "MSA", 1), "AA", "{first}");
    assert_eq!(field(&second, "MSA", 1), "AA", "{second}");
    assert!(
        first_at <= second_at,
        "the patient's results kept their order"
    );
    app.stop().await;
}
