//! Enhanced acknowledgement mode (MSH-15 / MSH-16), batch counts (BTS-1) and the MSH-11 /
//! MSH-12 checks, over real MLLP connections. Patients and data are invented.
//!
//! "Nothing is sent" is checked without waiting on a clock: a probe message in original mode
//! follows on the same connection, and the next frame must be the probe's ACK.

use std::time::Duration;

use hl7bridge_mllp::FrameDecoder;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{fresh_database, spawn_app, spawn_app_on, TestApp};

const MSH: &str =
    "MSH|^~\\&|LABSYS|NORTHLAB|HL7BRIDGE|GENHOSP|20240630120030-0500||ORU^R01^ORU_R01";

/// An ORU^R01 with MSH-11 `P` and MSH-12 `2.5.1`, asking for `msh_15` and `msh_16`.
fn oru(control_id: &str, mrn: &str, msh_15: &str, msh_16: &str) -> String {
    oru_with(control_id, mrn, "P|2.5.1", msh_15, msh_16)
}

/// An ORU^R01 whose MSH-11 and MSH-12 are `processing_and_version` (`P|2.5.1`).
fn oru_with(
    control_id: &str,
    mrn: &str,
    processing_and_version: &str,
    msh_15: &str,
    msh_16: &str,
) -> String {
    format!(
        "{MSH}|{control_id}|{processing_and_version}|||{msh_15}|{msh_16}\r\
         PID|1||{mrn}^^^NORTHLAB^MR||Quill^Invented||19800101|F\r\
         OBR|1||F-{control_id}^NORTHLAB|24331-1^Lipid panel^LN|||20240630101500-0500\r\
         OBX|1|NM|2093-3^Cholesterol^LN||100|mg/dL^^UCUM|||||F\r"
    )
}

/// One MLLP connection to the server. Frames are decoded from a buffer, since two frames
/// written back to back can arrive in one read.
struct Link {
    stream: TcpStream,
    frames: FrameDecoder,
    probes: usize,
}

impl Link {
    async fn open(app: &TestApp) -> Link {
        let stream = TcpStream::connect(app.mllp).await.expect("MLLP connects");
        let frames = FrameDecoder::new(1 << 20);
        Link {
            stream,
            frames,
            probes: 0,
        }
    }

    async fn send(&mut self, payload: &str) {
        let framed = hl7bridge_mllp::encode(payload.as_bytes());
        self.stream.write_all(&framed).await.unwrap();
    }

    async fn next(&mut self) -> String {
        let read = async {
            loop {
                if let Some(frame) = self.frames.next_frame().expect("a frame within 1 MiB") {
                    return String::from_utf8_lossy(&frame).into_owned();
                }
                let mut chunk = [0u8; 4096];
                let n = self
                    .stream
                    .read(&mut chunk)
                    .await
                    .expect("the ACK can be read");
                assert!(n > 0, "the connection closed before an ACK arrived");
                self.frames.push(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("an ACK arrives in time")
    }

    /// Sends an original-mode message and checks that the next frame is its ACK: nothing else
    /// was waiting, and the connection still serves.
    async fn expect_nothing_more(&mut self) {
        self.probes += 1;
        let control_id = format!("PROBE-{}", self.probes);
        self.send(&oru(&control_id, "PROBE0001", "", "")).await;
        let next = self.next().await;
        assert_eq!(
            (msa(&next, 1), msa(&next, 2)),
            ("AA".to_string(), control_id),
            "the next frame answers the probe: {next:?}"
        );
    }
}

/// MSA-n of a single ACK.
fn msa(ack: &str, n: usize) -> String {
    assert_eq!(
        ack.matches("MSH|").count(),
        1,
        "one ACK in the frame: {ack:?}"
    );
    crate::support::field(ack, "MSA", n)
}

fn field(ack: &str, segment: &str, n: usize) -> String {
    crate::support::field(ack, segment, n)
}

/// The ACK messages of one frame, each starting at MSH.
fn acks_in(frame: &str) -> Vec<String> {
    frame
        .split("MSH|")
        .filter(|a| !a.is_empty())
        .map(|a| format!("MSH|{a}"))
        .collect()
}

async fn patients_with(app: &TestApp, mrn: &str) -> u64 {
    let (_, found) = app.get_json(&format!("/Patient?identifier={mrn}")).await;
    found["total"].as_u64().unwrap_or(0)
}

async fn stored_receipts(db: &DatabaseConnection, control_id: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM hl7_message WHERE control_id = '{control_id}'");
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .expect("COUNT answers a row");
    row.try_get::<i64>("", "n").unwrap()
}

#[tokio::test]
async fn al_al_gets_ca_then_aa_each_in_its_own_frame_with_the_header_rules() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    link.send(&oru("EN-ALAL", "ENH0001", "AL", "AL")).await;
    let (commit, application) = (link.next().await, link.next().await);
    assert_eq!(msa(&commit, 1), "CA");
    assert_eq!(msa(&application, 1), "AA");
    for ack in [&commit, &application] {
        assert_eq!(msa(ack, 2), "EN-ALAL");
        assert_eq!(
            field(ack, "MSH", 3),
            "HL7BRIDGE",
            "sender and receiver swapped"
        );
        assert_eq!(field(ack, "MSH", 5), "LABSYS");
        assert_eq!(field(ack, "MSH", 9), "ACK^R01^ACK");
        assert_eq!(field(ack, "MSH", 11), "P");
        assert_eq!(field(ack, "MSH", 12), "2.5.1");
        assert_eq!(
            (field(ack, "MSH", 15), field(ack, "MSH", 16)),
            ("NE".to_string(), "NE".to_string()),
            "our ACKs ask for no ACK back"
        );
    }
    assert_ne!(field(&commit, "MSH", 10), field(&application, "MSH", 10));
    link.expect_nothing_more().await;
    assert_eq!(patients_with(&app, "ENH0001").await, 1, "stored before CA");
    app.stop().await;
}

#[tokio::test]
async fn ne_al_gets_only_the_application_ack() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    link.send(&oru("EN-NEAL", "ENH0002", "NE", "AL")).await;
    assert_eq!(msa(&link.next().await, 1), "AA");
    link.expect_nothing_more().await;
    app.stop().await;
}

#[tokio::test]
async fn al_ne_gets_only_the_commit_ack() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    link.send(&oru("EN-ALNE", "ENH0003", "AL", "NE")).await;
    assert_eq!(msa(&link.next().await, 1), "CA");
    link.expect_nothing_more().await;
    assert_eq!(patients_with(&app, "ENH0003").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn ne_ne_gets_nothing_and_the_connection_serves_the_next_message() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    link.send(&oru("EN-NENE", "ENH0004", "NE", "NE")).await;
    link.expect_nothing_more().await;
    link.send(&oru("EN-NENE2", "ENH0005", "AL", "AL")).await;
    assert_eq!(msa(&link.next().await, 1), "CA");
    assert_eq!(msa(&link.next().await, 1), "AA");
    assert_eq!(
        patients_with(&app, "ENH0004").await,
        1,
        "stored all the same"
    );
    app.stop().await;
}

#[tokio::test]
async fn er_er_with_a_content_error_gets_no_commit_ack_and_an_ae_application_ack() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    let bad_birth_date = oru("EN-ERER", "ENH0006", "ER", "ER").replace("19800101", "19800230");
    link.send(&bad_birth_date).await;
    let application = link.next().await;
    assert_eq!(msa(&application, 1), "AE", "the store succeeded: no CE");
    assert_eq!(field(&application, "ERR", 2), "PID^1^7");
    link.expect_nothing_more().await;
    link.send(&oru("EN-ERER2", "ENH0007", "ER", "ER")).await;
    link.expect_nothing_more().await;
    assert_eq!(
        patients_with(&app, "ENH0007").await,
        1,
        "success: nothing sent"
    );
    app.stop().await;
}

/// Makes every insert into `hl7_message` fail, as an unavailable database fails the write.
async fn refuse_message_writes(db: &DatabaseConnection) {
    let statements: &[&str] = match db.get_database_backend() {
        DbBackend::Sqlite => &["CREATE TRIGGER refuse_writes BEFORE INSERT ON hl7_message \
             BEGIN SELECT RAISE(ABORT, 'database unavailable (test)'); END"],
        _ => &[
            "CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'database unavailable (test)'; END $$",
            "CREATE TRIGGER refuse_writes BEFORE INSERT ON hl7_message \
             FOR EACH ROW EXECUTE FUNCTION refuse_writes()",
        ],
    };
    for statement in statements {
        db.execute_unprepared(statement).await.unwrap();
    }
}

async fn allow_message_writes(db: &DatabaseConnection) {
    let statement = match db.get_database_backend() {
        DbBackend::Sqlite => "DROP TRIGGER refuse_writes",
        _ => "DROP TRIGGER refuse_writes ON hl7_message",
    };
    db.execute_unprepared(statement).await.unwrap();
}

#[tokio::test]
async fn a_message_that_cannot_be_stored_now_gets_ce_and_is_stored_when_resent() {
    let (url, _database) = fresh_database().await;
    let app = spawn_app_on(&url, |_| {}).await;
    let db = Database::connect(&url).await.unwrap();
    refuse_message_writes(&db).await;
    let mut link = Link::open(&app).await;
    let message = oru("EN-CE", "ENH0008", "AL", "AL");
    link.send(&message).await;
    let (commit, application) = (link.next().await, link.next().await);
    assert_eq!(msa(&commit, 1), "CE", "{commit:?}");
    assert!(field(&commit, "ERR", 3).starts_with("207^"), "{commit:?}");
    assert_eq!(msa(&application, 1), "AE", "as original mode answers");
    assert_eq!(patients_with(&app, "ENH0008").await, 0);

    allow_message_writes(&db).await;
    link.send(&message).await;
    assert_eq!(msa(&link.next().await, 1), "CA");
    assert_eq!(msa(&link.next().await, 1), "AA");
    assert_eq!(patients_with(&app, "ENH0008").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_identical_resend_gets_the_same_acks_back_and_is_stored_once() {
    let (url, _database) = fresh_database().await;
    let app = spawn_app_on(&url, |_| {}).await;
    let message = oru("EN-DUP", "ENH0009", "AL", "AL");
    let mut link = Link::open(&app).await;
    link.send(&message).await;
    let first = [link.next().await, link.next().await];
    link.send(&message).await;
    let again = [link.next().await, link.next().await];
    assert_eq!(msa(&first[0], 1), "CA");
    assert_eq!(again, first, "the stored ACKs, byte for byte");
    link.expect_nothing_more().await;

    let silent = oru("EN-DUP-NE", "ENH0010", "NE", "NE");
    link.send(&silent).await;
    link.send(&silent).await;
    link.expect_nothing_more().await;

    let db = Database::connect(&url).await.unwrap();
    assert_eq!(stored_receipts(&db, "EN-DUP").await, 1);
    assert_eq!(stored_receipts(&db, "EN-DUP-NE").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_inbound_ack_gets_no_answer_even_when_it_asks_for_one_or_cannot_be_read() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    let commit_ack_to_us = "MSH|^~\\&|LABSYS|NORTHLAB|HL7BRIDGE|GENHOSP|20240630120031||\
                            ACK^R01^ACK|LAB-ACK-1|P|2.5.1|||AL|AL\rMSA|CA|0123456789abcdef0123\r";
    link.send(commit_ack_to_us).await;
    let unreadable_ack = "MSH|^~\\\\&|LABSYS|NORTHLAB|HL7BRIDGE|GENHOSP|20240630120032||\
                          ACK^R01^ACK|LAB-ACK-2|P|2.5.1\rMSA|AA|X\r";
    link.send(unreadable_ack).await;
    link.expect_nothing_more().await;
    app.stop().await;
}

#[tokio::test]
async fn a_batch_in_enhanced_mode_gets_its_commit_acks_then_its_application_acks() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    let batch = format!(
        "BHS|^~\\&|LABSYS|NORTHLAB\r{}{}BTS|2\r",
        oru("EN-B1", "ENH0011", "AL", "AL"),
        oru("EN-B2", "ENH0012", "AL", "AL")
    );
    link.send(&batch).await;
    let commits = acks_in(&link.next().await);
    let applications = acks_in(&link.next().await);
    let codes = |acks: &[String]| -> Vec<(String, String)> {
        acks.iter().map(|a| (msa(a, 1), msa(a, 2))).collect()
    };
    let pair = |code: &str, id: &str| (code.to_string(), id.to_string());
    assert_eq!(codes(&commits), [pair("CA", "EN-B1"), pair("CA", "EN-B2")]);
    assert_eq!(
        codes(&applications),
        [pair("AA", "EN-B1"), pair("AA", "EN-B2")]
    );
    link.expect_nothing_more().await;
    app.stop().await;
}

#[tokio::test]
async fn a_batch_whose_bts_1_miscounts_its_messages_is_refused_whole() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    let batch = |count: &str, first: &str, second: &str| {
        format!(
            "BHS|^~\\&|LABSYS|NORTHLAB\r{}{}BTS|{count}\r",
            oru(first, "ENH0013", "", ""),
            oru(second, "ENH0014", "", "")
        )
    };
    link.send(&batch("3", "EN-BTS1", "EN-BTS2")).await;
    let acks = acks_in(&link.next().await);
    assert_eq!(acks.len(), 2);
    for (ack, control_id) in acks.iter().zip(["EN-BTS1", "EN-BTS2"]) {
        assert_eq!(msa(ack, 1), "AR");
        assert_eq!(msa(ack, 2), control_id);
        assert!(field(ack, "ERR", 3).starts_with("100^"), "{ack:?}");
        assert_eq!(field(ack, "ERR", 2), "BTS^1^1");
    }
    assert_eq!(
        patients_with(&app, "ENH0013").await,
        0,
        "nothing of it stored"
    );

    link.send(&batch("2", "EN-BTS3", "EN-BTS4")).await;
    let acks = acks_in(&link.next().await);
    assert!(acks.iter().all(|a| msa(a, 1) == "AA"), "{acks:?}");
    assert_eq!(
        patients_with(&app, "ENH0013").await,
        1,
        "a matching count changes nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_processing_id_other_than_p_d_or_t_is_refused_with_202_and_echoed() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    link.send(&oru_with("EN-PID", "ENH0015", "X|2.5.1", "", ""))
        .await;
    let ack = link.next().await;
    assert_eq!(msa(&ack, 1), "AR");
    assert_eq!(field(&ack, "MSH", 11), "X", "MSH-11 echoed");
    assert!(field(&ack, "ERR", 3).starts_with("202^"), "{ack:?}");
    assert_eq!(field(&ack, "ERR", 2), "MSH^1^11");

    link.send(&oru_with("EN-PID-T", "ENH0016", "T|2.5.1", "", ""))
        .await;
    let ack = link.next().await;
    assert_eq!(
        (msa(&ack, 1), field(&ack, "MSH", 11)),
        ("AA".into(), "T".into())
    );
    assert_eq!(patients_with(&app, "ENH0015").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_version_that_is_not_v2_is_refused_with_203_cr_in_enhanced_mode() {
    let app = spawn_app().await;
    let mut link = Link::open(&app).await;
    link.send(&oru_with("EN-VER", "ENH0017", "P|9.9", "", ""))
        .await;
    let ack = link.next().await;
    assert_eq!(msa(&ack, 1), "AR");
    assert!(field(&ack, "ERR", 3).starts_with("203^"), "{ack:?}");
    assert_eq!(field(&ack, "ERR", 2), "MSH^1^12");

    link.send(&oru_with("EN-VER2", "ENH0018", "P|9.9", "AL", "AL"))
        .await;
    let (commit, application) = (link.next().await, link.next().await);
    assert_eq!(msa(&commit, 1), "CR");
    assert!(field(&commit, "ERR", 3).starts_with("203^"), "{commit:?}");
    assert_eq!(msa(&application, 1), "AR");
    link.expect_nothing_more().await;
    app.stop().await;
}

#[tokio::test]
async fn silent_messages_restart_the_idle_timer_like_answered_ones() {
    // Four NE/NE messages 400 ms apart outlast a 1 s idle timeout only if each restarts it.
    let app = crate::support::spawn_app_with(|c| c.mllp_idle_timeout_ms = 1_000).await;
    let mut link = Link::open(&app).await;
    for n in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        link.send(&oru(&format!("EN-IDLE{n}"), "ENH0019", "NE", "NE"))
            .await;
    }
    link.expect_nothing_more().await;
    app.stop().await;
}
