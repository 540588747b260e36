//! Hostile and unusual FHIR requests, each one found by trying to break the server: every one
//! gets a bounded, correct answer and leaves nothing half-done behind.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{entry_statuses, spawn_app, spawn_app_with};

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn post(url: &str, resource: Value) -> Value {
    json!({"resource": resource, "request": {"method": "POST", "url": url}})
}

#[tokio::test]
async fn a_bundle_over_the_entry_limit_is_refused_before_any_work() {
    let app = spawn_app_with(|c| c.max_bundle_entries = 100).await;
    let entries: Vec<Value> = (0..101).map(|_| json!({})).collect();
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let (status, outcome) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 400);
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("HL7BRIDGE_MAX_BUNDLE_ENTRIES"));
    app.stop().await;
}

#[tokio::test]
async fn racing_conditional_creates_leave_exactly_one_resource() {
    let app = spawn_app().await;
    let bundle = transaction(vec![json!({
        "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": "R1"}]},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:race|R1"}
    })]).to_string();
    let posts = (0..20).map(|_| {
        let (client, url, body) = (app.client.clone(), format!("{}/", app.base), bundle.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    for post in posts.collect::<Vec<_>>() {
        assert_eq!(post.await.unwrap(), 200);
    }
    let (_, found) = app.get_json("/Patient?identifier=urn:race%7CR1").await;
    assert_eq!(found["total"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_request_body_is_answered_408() {
    let app = spawn_app_with(|c| c.http_body_idle_timeout_ms = 300).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("the server answers a stalled body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn a_primitive_extension_that_would_replace_its_value_is_refused() {
    let app = spawn_app().await;
    for patient in [
        json!({"resourceType": "Patient", "name": [{"family": "Real", "_family": "Other"}]}),
        json!({"resourceType": "Patient", "birthDate": "1980-01-01", "_birthDate": [{"id": "a"}]}),
        json!({"resourceType": "Patient", "identifier": [{"value": "A", "_value": "B"}]}),
        json!({"resourceType": "Patient", "name": [{"given": ["A"], "_given": ["B"]}]}),
        json!({"resourceType": "Patient", "name": [{"family": "a\u{0}b"}]}),
    ] {
        let (status, outcome) = app
            .post_bundle(transaction(vec![post("Patient", patient.clone())]).to_string())
            .await;
        assert_eq!(status, 400, "{patient}: {outcome}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_failed_batch_entry_is_neither_matched_nor_referenced_by_other_entries() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000a1",
         "resource": {"resourceType": "Patient", "foo": ["x"], "identifier": [{"system": "urn:ph", "value": "PH-42"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:ph", "value": "PH-42"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:ph|PH-42"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-0000000000a1"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        entry_statuses(&response),
        ["400 Bad Request", "201 Created", "400 Bad Request"]
    );
    let location = response["entry"][1]["response"]["location"]
        .as_str()
        .unwrap();
    let (status, _) = app.get_json(&format!("/{location}")).await;
    assert_eq!(status, 200, "the location given resolves");
    app.stop().await;
}

#[tokio::test]
async fn version_preconditions_are_enforced_or_refused_never_ignored() {
    let app = spawn_app().await;
    let put = |if_match: &str| {
        json!({"resource": {"resourceType": "Patient", "id": "p1"},
            "request": {"method": "PUT", "url": "Patient/p1", "ifMatch": if_match}})
    };
    let (status, outcome) = app
        .post_bundle(transaction(vec![put("W/\"9\"")]).to_string())
        .await;
    assert_eq!(
        status, 412,
        "a version that does not match fails the transaction"
    );
    assert_eq!(outcome["issue"][0]["expression"][0], "Bundle.entry[0]");
    let (status, _) = app.get_json("/Patient/p1").await;
    assert_eq!(status, 404, "nothing was written");
    let since = json!({"resource": {"resourceType": "Patient", "id": "p1"},
        "request": {"method": "PUT", "url": "Patient/p1", "ifModifiedSince": "2024-01-01T00:00:00Z"}});
    let (status, _) = app.post_bundle(transaction(vec![since]).to_string()).await;
    assert_eq!(
        status, 405,
        "ifModifiedSince is refused until it is enforced"
    );
    app.stop().await;
}

#[tokio::test]
async fn in_a_batch_a_failed_precondition_fails_only_its_entry() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "b1"},
         "request": {"method": "PUT", "url": "Patient/b1", "ifMatch": "W/\"3\""}},
        {"resource": {"resourceType": "Patient", "id": "b2"},
         "request": {"method": "PUT", "url": "Patient/b2", "ifNoneMatch": "*"}}
    ]});
    let (status, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        entry_statuses(&response),
        ["412 Precondition Failed", "201 Created"]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_applies_two_updates_of_one_resource_in_order() {
    let app = spawn_app().await;
    let put = |gender: &str| {
        json!({"resource": {"resourceType": "Patient", "id": "twice", "gender": gender},
        "request": {"method": "PUT", "url": "Patient/twice"}})
    };
    let bundle =
        json!({"resourceType": "Bundle", "type": "batch", "entry": [put("male"), put("female")]});
    let (_, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(entry_statuses(&response), ["201 Created", "200 OK"]);
    let (_, patient) = app.get_json("/Patient/twice").await;
    assert_eq!(
        (
            patient["gender"].as_str(),
            patient["meta"]["versionId"].as_str()
        ),
        (Some("female"), Some("2"))
    );
    let (status, first) = app.get_json("/Patient/twice/_history/1").await;
    assert_eq!(
        (status, first["gender"].as_str()),
        (200, Some("male")),
        "vread serves the first version"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_full_url_is_refused() {
    let app = spawn_app().await;
    let entry = json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000b1",
        "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}});
    let (status, outcome) = app
        .post_bundle(transaction(vec![entry.clone(), entry]).to_string())
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.entry[1].fullUrl"
    );
    app.stop().await;
}

#[tokio::test]
async fn search_criteria_combine_and_a_leading_bar_means_no_system() {
    let app = spawn_app().await;
    let patients = vec![
        post(
            "Patient",
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:a", "value": "X1"}, {"value": "Y1"}]}),
        ),
        post(
            "Patient",
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:a", "value": "X2"}]}),
        ),
    ];
    app.post_bundle(transaction(patients).to_string()).await;
    let total = |q: &'static str| {
        let app = &app;
        async move { app.get_json(&format!("/Patient?{q}")).await.1["total"].clone() }
    };
    assert_eq!(total("identifier=X1&identifier=Y1").await, 1);
    assert_eq!(total("identifier=X1&identifier=X2").await, 0);
    assert_eq!(total("identifier=%7CY1").await, 1);
    assert_eq!(total("identifier=%7CX1").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn forwarded_headers_do_not_change_the_urls_the_server_writes() {
    let app = spawn_app().await;
    app.post_bundle(
        transaction(vec![post(
            "Patient",
            json!({"resourceType": "Patient", "identifier": [{"value": "F1"}]}),
        )])
        .to_string(),
    )
    .await;
    let response = app
        .client
        .get(format!("{}/Patient?identifier=F1", app.base))
        .header("x-forwarded-host", "attacker.test")
        .header("x-forwarded-proto", "javascript")
        .send()
        .await
        .unwrap();
    let bundle: Value = response.json().await.unwrap();
    let full_url = bundle["entry"][0]["fullUrl"].as_str().unwrap();
    assert!(full_url.starts_with(&app.base), "{full_url}");
    app.stop().await;
}

#[tokio::test]
async fn unsupported_methods_formats_and_encodings_get_the_right_4xx() {
    let app = spawn_app().await;
    let patch = app
        .client
        .patch(format!("{}/Patient", app.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 405);
    let html = app
        .client
        .get(format!("{}/metadata", app.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 406);
    let format = app.get("/metadata?_format=html").await;
    assert_eq!(format.status(), 406);
    let gzip = app
        .client
        .post(format!("{}/", app.base))
        .header("content-type", "application/fhir+json")
        .header("content-encoding", "gzip")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(gzip.status(), 415);
    let latin1 = app
        .client
        .post(format!("{}/", app.base))
        .header("content-type", "application/fhir+json; charset=latin1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(latin1.status(), 415);
    let outcome: Value = latin1.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    app.stop().await;
}

#[tokio::test]
async fn an_empty_search_result_has_no_empty_entry_array() {
    let app = spawn_app().await;
    let (status, bundle) = app.get_json("/Patient?identifier=nobody").await;
    assert_eq!(status, 200);
    assert_eq!(bundle["total"], 0);
    assert!(bundle.get("entry").is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_body_trickling_in_forever_is_answered_408_and_its_connection_closed() {
    let app = spawn_app_with(|c| {
        c.http_body_idle_timeout_ms = 400;
        c.http_body_timeout_ms = 800;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let trickle = async {
        for _ in 0..40 {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), trickle).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server closes the connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn an_entry_failing_at_reference_resolution_is_neither_matched_nor_referenced() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000c1",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:ph", "value": "X"}],
            "link": [{"other": {"reference": "urn:uuid:00000000-0000-4000-8000-0000000000ff"}, "type": "seealso"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:ph", "value": "X"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:ph|X"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-0000000000c1"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (_, response) = app.post_bundle(bundle.to_string()).await;
    assert_eq!(
        entry_statuses(&response),
        ["400 Bad Request", "201 Created", "400 Bad Request"]
    );
    app.stop().await;
}

#[tokio::test]
async fn control_characters_in_search_and_match_values_are_400_not_500() {
    let app = spawn_app().await;
    let (status, _) = app.get_json("/Patient?identifier=M%00").await;
    assert_eq!(status, 400);
    let entry = json!({"resource": {"resourceType": "Patient"},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a%00b"}});
    let (status, _) = app.post_bundle(transaction(vec![entry]).to_string()).await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn count_is_capped_by_the_configured_maximum_and_the_rest_is_paged() {
    let app = crate::support::spawn_app_with(|c| c.max_count = 3).await;
    for n in 0..5 {
        let patient = json!({"resourceType": "Patient", "name": [{"family": format!("Cap{n}")}]});
        assert_eq!(
            app.put_status(&format!("Patient/cap{n}"), &patient).await,
            201
        );
    }
    let (status, page) = app.get_json("/Patient?_count=5000").await;
    assert_eq!(status, 200);
    assert_eq!(page["entry"].as_array().unwrap().len(), 3, "{page}");
    let links = page["link"].as_array().unwrap();
    let next = links
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next link");
    assert!(next["url"].as_str().unwrap().contains("_count=3"), "{next}");
    let (_, everything) = app.get_json("/Patient/cap0/$everything?_count=5000").await;
    assert!(
        everything["entry"].as_array().unwrap().len() <= 3,
        "{everything}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_holding_every_connection_slot_are_cut_within_seconds() {
    // Eight slots; bodies may stall 30 s and take 120 s when slots are plentiful.
    let app = spawn_app_with(|c| c.http_max_connections = 8).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n";
    let mut trickles = Vec::new();
    for _ in 0..10 {
        let addr = addr.clone();
        trickles.push(tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                return String::new();
            };
            let _ = stream.write_all(head.as_bytes()).await;
            // A byte every second and a half: under the 30 s idle timeout, for ever.
            let trickle = async {
                loop {
                    if stream.write_all(b" ").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(25), trickle).await;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The trickles hold the slots; with them cut at the tightened limits a client gets in.
    let started = std::time::Instant::now();
    let client = crate::support::http_client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let health = client.get(format!("{}/health", app.base)).send().await;
    let waited = started.elapsed();
    assert!(health.is_ok_and(|r| r.status() == 200), "after {waited:?}");
    assert!(
        waited < Duration::from_secs(12),
        "/health waited {waited:?}"
    );
    let mut cut = 0;
    for trickle in trickles {
        if trickle.await.unwrap().starts_with("HTTP/1.1 408") {
            cut += 1;
        }
    }
    assert!(cut >= 6, "only {cut} slow bodies were answered 408");
    app.stop().await;
}

/// `HL7BRIDGE_HTTP_MAX_CONNECTIONS_PER_PEER`: one client address holding its maximum has a
/// further connection closed at once, unanswered, while other addresses are served; once one of
/// its connections closes it may open another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_address_at_its_connection_limit_has_further_connections_closed() {
    let app = spawn_app_with(|c| c.http_max_connections_per_peer = 3).await;
    let server: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let connect_from = |last: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, last], 0).into()).unwrap();
        socket.connect(server).await.unwrap()
    };
    let get_health = |mut stream: tokio::net::TcpStream| async move {
        let request = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer));
        let _ = read.await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(2).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let answer = get_health(connect_from(2).await).await;
    assert_eq!(
        answer, "",
        "the fourth connection from 127.0.0.2 is closed unanswered"
    );
    let answer = get_health(connect_from(3).await).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another address is served: {answer}"
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = get_health(connect_from(2).await).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a slot given back is taken: {answer}"
    );
    let answer = get_health(held.pop().unwrap()).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "held connections are served: {answer}"
    );
    app.stop().await;
}

/// A hostile tester's lockout: clients holding every connection slot, each kept alive with a
/// request every moment, left nothing for anyone else. While slots run short each answer now
/// closes its connection, and a newcomer waiting in the backlog gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_kept_alive_on_every_slot_are_recycled_for_a_newcomer() {
    let app = spawn_app_with(|c| {
        c.http_max_connections = 16;
        c.http_max_connections_per_peer = 8;
    })
    .await;
    let server: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut holders = Vec::new();
    for last in [2u8, 3] {
        for _ in 0..8 {
            let stop = stop.clone();
            holders.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(([127, 0, 0, last], 0).into()).unwrap();
                    let Ok(mut stream) = socket.connect(server).await else {
                        continue;
                    };
                    // Keep-alive requests until the server closes the connection.
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
                        if stream.write_all(request).await.is_err() {
                            break;
                        }
                        let mut answer = [0u8; 4096];
                        let read = stream.read(&mut answer);
                        match tokio::time::timeout(Duration::from_secs(2), read).await {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => break,
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 4], 0).into()).unwrap();
    let started = std::time::Instant::now();
    let mut stream = socket.connect(server).await.unwrap();
    let request = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    let _ = read.await;
    let waited = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for holder in holders {
        holder.abort();
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "after {waited:?}: {answer}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the newcomer waited {waited:?}"
    );
    app.stop().await;
}

/// A number FHIR gives no meaning (a decimal of a million digits) would be stored, and then
/// fail in clients' parsers: it is refused, in JSON, XML and Bundles alike, and one of 64
/// characters (the bound) is kept as written.
#[tokio::test]
async fn a_number_longer_than_64_characters_is_refused_with_an_outcome() {
    let app = spawn_app().await;
    let observation = |value: &str| {
        format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{value}}}}}"#
        )
    };
    let send = |path: &str, content_type: &str, body: String| {
        app.client
            .post(format!("{}{path}", app.base))
            .header("content-type", content_type)
            .header("accept", "application/fhir+json")
            .body(body)
            .send()
    };
    let million = "9".repeat(1_000_000);
    let response = send(
        "/Observation",
        "application/fhir+json",
        observation(&million),
    )
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "invalid");
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Observation.valueQuantity.value"
    );
    assert!(!outcome.to_string().contains("99999"), "{outcome}");

    let xml = format!(
        r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code><valueQuantity><value value="{million}"/></valueQuantity></Observation>"#
    );
    let response = send("/Observation", "application/fhir+xml", xml)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    let resource: Value =
        serde_json::from_str(&observation(&format!("1.{}", "0".repeat(63)))).unwrap();
    let (status, outcome) = app
        .post_bundle(transaction(vec![post("Observation", resource)]).to_string())
        .await;
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.entry[0].resource.valueQuantity.value"
    );

    let longest = format!("0.{}", "1".repeat(62));
    let response = send(
        "/Observation",
        "application/fhir+json",
        observation(&longest),
    )
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let stored = response.text().await.unwrap();
    assert!(stored.contains(&format!("\"value\":{longest}")), "{stored}");
    let (_, found) = app.get_json("/Observation").await;
    assert_eq!(found["total"], 1, "only the 64-character number was stored");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_holding_the_body_budget_do_not_keep_a_small_write_waiting_for_minutes() {
    // The budget is twice the largest body: two uploads declaring the largest hold all of it.
    let app = spawn_app_with(|c| c.max_body_bytes = 4 << 20).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut holders = Vec::new();
    for _ in 0..2 {
        let addr = addr.clone();
        holders.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
                4 << 20
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            // A byte every five seconds: within the 30 s stall limit, for two minutes.
            for _ in 0..24 {
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Waitless"}]});
    let created = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(created.status(), 201);
    // The holders get the tightened limits (2 s stall, 10 s in all) once someone waits.
    assert!(
        waited < Duration::from_secs(15),
        "the small write waited {waited:?}"
    );
    for holder in holders {
        holder.abort();
    }
    app.stop().await;
}

/// A hostile tester's finding: a search page written as XML went through fhirbolt whole, about
/// 160 times its JSON in memory (30 MB of Patients peaked at 4.8 GB). Written entry by entry,
/// a page of ten 440 KB Patients raises the peak by little more than a few times its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_search_page_written_as_xml_stays_within_a_few_times_its_size() {
    let (url, _database) = crate::support::fresh_database().await;
    let server = crate::support::ServerProcess::start(&url);
    let base = format!("http://{}", server.http);
    let client = crate::support::http_client_builder().build().unwrap();
    let given: Vec<String> = (0..40_000).map(|k| format!("g{k:06}")).collect();
    let patient = json!({"resourceType": "Patient", "gender": "female",
        "name": [{"family": "Widexml", "given": given}]});
    for _ in 0..10 {
        let created = client
            .post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .body(patient.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let before = server.peak_rss_kib();
    let page = client
        .get(format!(
            "{base}/Patient?family=Widexml&_count=100&_format=xml"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let xml = page.bytes().await.unwrap();
    let after = server.peak_rss_kib();
    drop(server);
    let entries = xml.windows(8).filter(|w| w == b"<Patient").count();
    assert_eq!(entries, 10, "every Patient is in the page");
    let grew_mib = after.saturating_sub(before) / 1024;
    crate::support::report(&format!(
        "a {} MB XML page of ten 440 KB Patients raised the peak RSS by {grew_mib} MB",
        xml.len() >> 20
    ));
    assert!(grew_mib < 350, "the peak grew by {grew_mib} MB");
}

/// A hostile tester's finding: a declared `Content-Length` over the limit was waited for, and
/// answered 408 when the body timeout passed. It is refused at once, 413, for PATCH too.
#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_at_once() {
    let app = spawn_app().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    for (method, path, content_type) in [
        ("POST", "/Patient", "application/fhir+json"),
        ("PATCH", "/Patient/x", "application/json-patch+json"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
             Content-Length: 200000000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await;
        let n = read.expect("answered within seconds").unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{method}: {answer}");
        assert!(answer.contains("OperationOutcome"), "{method}: {answer}");
    }
    app.stop().await;
}

/// A hostile tester's finding: pages rewritten as XML (or indented) took memory no budget
/// counted, and eight large ones at once passed 6 GB. Rewriting is charged to the body budget;
/// a page charged more than all of it is refused 406 (plain JSON still served).
#[tokio::test]
async fn a_page_too_large_to_rewrite_within_the_budget_is_refused_as_xml_but_served_as_json() {
    // Bodies of 1 MiB, a budget of 2 MiB: two Patients of 40,000 values each are charged
    // 2.56 MB together at 32 bytes a value.
    let app = spawn_app_with(|c| c.max_body_bytes = 1 << 20).await;
    let given: Vec<String> = (0..40_000).map(|k| format!("{k}")).collect();
    for n in 0..2 {
        let patient = json!({"resourceType": "Patient", "id": format!("wide{n}"),
            "name": [{"family": "Widepage", "given": given}]});
        let request = app.client.put(format!("{}/Patient/wide{n}", app.base));
        let (status, _, body) = crate::support::send_resource(request, &patient).await;
        assert!(status == 201 || status == 200, "{status}: {body}");
    }
    let response = app.get("/Patient?family=Widepage&_format=xml").await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 406, "{}", &text[..text.len().min(300)]);
    assert!(text.contains("_count"), "{text}");
    let (status, page) = app.get_json("/Patient?family=Widepage").await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 2);
    let response = app
        .get("/Patient?family=Widepage&_format=xml&_count=1")
        .await;
    assert_eq!(response.status(), 200, "a smaller page is written as XML");
    app.stop().await;
}
