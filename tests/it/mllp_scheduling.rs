//! Scheduling (SIU) and the Provenance of every message, over real MLLP connections and
//! checked where a FHIR client would look.

use serde_json::Value;

use crate::replay_cli::cli;
use crate::support::{
    everything_for, field, fresh_database, replaced, resources_of, spawn_app, spawn_app_on,
};

const S12: &[u8] = include_bytes!("../fixtures/siu_s12.hl7");
const S14: &[u8] = include_bytes!("../fixtures/siu_s14.hl7");
const S15: &[u8] = include_bytes!("../fixtures/siu_s15.hl7");
const ORU: &[u8] = include_bytes!("../fixtures/oru_r01_ztr.hl7");
const SCHEDULED_MRN: &str = "TST500201";

fn reference_to(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    )
}

fn actors(appointment: &Value) -> Vec<String> {
    let participants = appointment["participant"].as_array().unwrap();
    let actors = participants
        .iter()
        .filter_map(|p| p["actor"]["reference"].as_str());
    actors.map(str::to_owned).collect()
}

#[tokio::test]
async fn an_s12_books_one_appointment_with_its_patient_practitioner_and_room() {
    let app = spawn_app().await;
    let ack = app.send_accepted(S12).await;
    assert_eq!(field(&ack, "MSH", 9), "ACK^S12^ACK");
    let bundle = everything_for(&app, SCHEDULED_MRN).await;
    let appointments = resources_of(&bundle, "Appointment");
    assert_eq!(appointments.len(), 1);
    let booked = appointments[0];
    let patient = resources_of(&bundle, "Patient")[0];
    assert_eq!(booked["status"], "booked");
    assert_eq!(booked["start"], "2024-07-15T14:00:00-04:00");
    assert_eq!(booked["end"], "2024-07-15T14:30:00-04:00");
    assert_eq!(booked["minutesDuration"], 30);
    assert_eq!(booked["identifier"][1]["value"], "FIL-7702");
    assert_eq!(booked["serviceType"][0]["coding"][0]["code"], "71020");
    assert_eq!(booked["reasonCode"][0]["coding"][0]["code"], "FOLLOWUP");
    assert_eq!(booked["appointmentType"]["coding"][0]["code"], "NORMAL");
    assert_eq!(booked["comment"], "Bring previous imaging");
    let practitioner = resources_of(&bundle, "Practitioner")[0];
    let location = resources_of(&bundle, "Location")[0];
    assert_eq!(practitioner["identifier"][0]["value"], "DR-4417");
    assert_eq!(
        actors(booked),
        [
            reference_to(patient),
            reference_to(practitioner),
            reference_to(location)
        ]
    );
    assert_eq!(
        booked["participant"][3]["actor"]["display"],
        "Portable X-ray unit"
    );
    let (status, found) = app
        .get_json(&format!(
            "/Appointment?patient={}",
            patient["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["total"], 1, "{found}");
    app.stop().await;
}

#[tokio::test]
async fn a_modification_then_a_cancellation_update_the_same_appointment() {
    let app = spawn_app().await;
    for message in [S12, S14, S15] {
        app.send_accepted(message).await;
    }
    let bundle = everything_for(&app, SCHEDULED_MRN).await;
    let appointments = resources_of(&bundle, "Appointment");
    assert_eq!(appointments.len(), 1, "one appointment, three versions");
    let cancelled = appointments[0];
    assert_eq!(cancelled["meta"]["versionId"], "3");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        cancelled["cancelationReason"]["coding"][0]["code"],
        "PATREQ"
    );
    assert_eq!(
        cancelled["start"], "2024-07-15T15:00:00-04:00",
        "the S14's time stays through a cancellation that does not repeat it"
    );
    assert_eq!(cancelled["comment"], "Moved to the afternoon slot");
    assert_eq!(cancelled["participant"][0]["status"], "declined");
    assert_eq!(
        actors(cancelled).len(),
        3,
        "the booked resources stay named"
    );
    assert_eq!(
        resources_of(&bundle, "Provenance").len(),
        3,
        "one per message"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_s12_without_a_start_gets_ae_naming_tq1_7() {
    let app = spawn_app().await;
    let no_start = replaced(
        S12,
        "TQ1|1||||||202407151400-0400|202407151430-0400",
        "TQ1|1",
    );
    let ack = app.mllp_exchange(&[&no_start]).await.remove(0);
    assert_eq!(field(&ack, "MSA", 1), "AE", "{ack:?}");
    assert_eq!(field(&ack, "ERR", 2), "TQ1^1^7");
    assert!(field(&ack, "ERR", 3).starts_with("101^"), "{ack:?}");
    let (_, found) = app.get_json("/Appointment?identifier=FIL-7702").await;
    assert_eq!(found["total"], 0, "nothing of a refused message is stored");
    app.stop().await;
}

#[tokio::test]
async fn an_unsupported_siu_event_is_refused_ar() {
    let app = spawn_app().await;
    let discontinued = replaced(S12, "SIU^S12^", "SIU^S16^");
    let ack = app.mllp_exchange(&[&discontinued]).await.remove(0);
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack:?}");
    assert!(field(&ack, "ERR", 3).starts_with("201^"), "{ack:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oru_provenance_names_every_written_resource_the_raw_message_and_the_trace() {
    let (database_url, _database) = fresh_database().await;
    let app = spawn_app_on(&database_url, |_| {}).await;
    app.send_accepted(ORU).await;
    let bundle = everything_for(&app, "TST100234").await;
    let provenances = resources_of(&bundle, "Provenance");
    assert_eq!(provenances.len(), 1);
    let provenance = provenances[0];
    let mut targets: Vec<String> = provenance["target"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reference"].as_str().unwrap().to_owned())
        .collect();
    targets.sort();
    let mut written: Vec<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| reference_to(&e["resource"]))
        .filter(|r| !r.starts_with("Provenance/"))
        .collect();
    written.sort();
    assert_eq!(
        targets, written,
        "Patient, Encounter, the report and its five results"
    );
    assert_eq!(targets.len(), 8);
    assert_eq!(provenance["activity"]["coding"][0]["code"], "R01");
    assert_eq!(provenance["agent"][0]["who"]["display"], "LABSYS");
    assert_eq!(provenance["agent"][0]["onBehalfOf"]["display"], "NORTHLAB");
    assert_eq!(
        provenance["extension"][0]["valueString"], "0af7651916cd43dd8448eb211c80319c",
        "the trace the ZTR started"
    );
    let mllp = app.mllp.to_string();
    let listed = tokio::task::block_in_place(|| cli(&["messages"], &database_url, &mllp));
    let stored: Value = serde_json::from_slice(listed.stdout.trim_ascii()).unwrap();
    assert_eq!(stored["control_id"], "LAB0001");
    let source = &provenance["entity"][0];
    assert_eq!(source["role"], "source");
    assert_eq!(source["what"]["identifier"]["value"], stored["id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_resend_writes_no_second_provenance() {
    let app = spawn_app().await;
    app.send_accepted(S12).await;
    app.send_accepted(S12).await;
    let changed = replaced(
        S12,
        "Bring previous imaging",
        "Bring previous imaging and referral",
    );
    app.send_accepted(&changed).await;
    let bundle = everything_for(&app, SCHEDULED_MRN).await;
    let provenances = resources_of(&bundle, "Provenance");
    assert_eq!(
        provenances.len(),
        2,
        "the identical resend wrote nothing; the corrected one is a message of its own"
    );
    assert!(provenances.iter().all(|p| p["meta"]["versionId"] == "1"));
    let patient_id = resources_of(&bundle, "Patient")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, found) = app
        .get_json(&format!("/Provenance?patient={patient_id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["total"], 2, "{found}");
    app.stop().await;
}

/// Hostile pass: an S17 (or S26) for an appointment never booked, with no timing, stores no
/// `entered-in-error` (`noshow`) Appointment without start or end, which R4's invariant app-3
/// allows only for proposed, cancelled or waitlisted ones.
#[tokio::test]
async fn a_deletion_before_any_booking_stores_no_appointment_breaking_app_3() {
    let app = spawn_app().await;
    let s17 = replaced(
        &replaced(S12, "SIU^S12^SIU_S12", "SIU^S17^SIU_S12"),
        "TQ1|1||||||202407151400-0400|202407151430-0400",
        "TQ1|1",
    );
    let ack = app.mllp_exchange(&[&s17]).await.remove(0);
    let (_, found) = app.get_json("/Appointment?identifier=FIL-7702").await;
    for entry in found["entry"].as_array().into_iter().flatten() {
        let appointment = &entry["resource"];
        let status = appointment["status"].as_str().unwrap_or_default();
        let timed = appointment.get("start").is_some() && appointment.get("end").is_some();
        assert!(
            timed || ["proposed", "cancelled", "waitlist"].contains(&status),
            "app-3 broken: {appointment} (ACK {ack:?})"
        );
    }
    app.stop().await;
}

/// Hostile pass: a corrected resend (or a reused control id) that names another patient gets a
/// Provenance of its own; the first patient's stored data keeps the one that names it.
#[tokio::test]
async fn a_corrected_resend_for_another_patient_leaves_the_first_patients_provenance() {
    let app = spawn_app().await;
    app.send_accepted(S12).await;
    let other = replaced(
        &replaced(S12, SCHEDULED_MRN, "TST500299"),
        "PLA-3301^EHR|FIL-7702",
        "PLA-3399^EHR|FIL-7799",
    );
    app.send_accepted(&other).await;
    let first = everything_for(&app, SCHEDULED_MRN).await;
    assert_eq!(resources_of(&first, "Appointment").len(), 1);
    assert_eq!(
        resources_of(&first, "Provenance").len(),
        1,
        "the first patient's stored data lost its Provenance"
    );
    app.stop().await;
}
