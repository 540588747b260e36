//! Bearer tokens and SMART scopes on the FHIR API, and the audit trail of every attempt:
//! tokens are signed here with the test keys in `tests/fixtures/auth` and checked by the real
//! server against their JWKS.

use std::path::PathBuf;

use hl7bridge::auth::{AuthSettings, JwksSource};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{ids, spawn_app_with, TestApp};

const ISSUER: &str = "https://idp.test.invalid";
const AUDIENCE: &str = "https://fhir.test.invalid";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/auth/{name}"))
}

fn now() -> i64 {
    now_exact() as i64
}

/// Seconds since the epoch, with their fraction.
fn now_exact() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Claims of a token valid for ten minutes, with `extra` merged in.
fn claims(scope: &str, extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "clinician-7", "exp": now() + 600,
        "iat": now(), "scope": scope,
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, "test-rsa", "rsa-private.pem", claims)
}

fn sign(alg: Algorithm, kid: &str, key_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// The server takes a token signed with the test key and refuses one signed with another key
/// under the same key id: it verifies against the key set it was given.
async fn accepts_the_test_key_only(app: &TestApp) {
    let token = rs256(&claims("system/*.read", json!({})));
    assert_eq!(get(app, "/Patient", &token).await.0, 200);
    let forged = sign(
        Algorithm::RS256,
        "test-rsa",
        "rsa-stranger-private.pem",
        &claims("system/*.read", json!({})),
    );
    assert_eq!(get(app, "/Patient", &forged).await.0, 401);
}

async fn spawn_secured() -> TestApp {
    spawn_app_with(|c| {
        c.auth = Some(AuthSettings {
            jwks: JwksSource::File(fixture("jwks.json")),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway_s: 0,
        })
    })
    .await
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.base))
        .header("accept", "application/fhir+json");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    call(app, reqwest::Method::GET, path, Some(token), None).await
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_with_401_and_a_bearer_challenge() {
    let app = spawn_secured().await;
    let scope = "system/*.read";
    let expired = rs256(&claims(scope, json!({"exp": now() - 120})));
    let early = rs256(&claims(scope, json!({"nbf": now() + 600})));
    let other_issuer = rs256(&claims(scope, json!({"iss": "https://elsewhere.invalid"})));
    let other_audience = rs256(&claims(scope, json!({"aud": "https://other.invalid"})));
    let forged = sign(
        Algorithm::RS256,
        "test-rsa",
        "rsa-stranger-private.pem",
        &claims(scope, json!({})),
    );
    let unknown_kid = sign(
        Algorithm::RS256,
        "nobody",
        "rsa-private.pem",
        &claims(scope, json!({})),
    );
    // HS256 "signed" with the public key text: the algorithm-confusion attack.
    let jwks = std::fs::read(fixture("jwks.json")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test-rsa".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims(scope, json!({})),
        &EncodingKey::from_secret(&jwks).unwrap(),
    )
    .unwrap();
    let unsigned = {
        use base64_like::encode;
        format!(
            "{}.{}.",
            encode(br#"{"alg":"none","typ":"JWT"}"#),
            encode(claims(scope, json!({})).to_string().as_bytes())
        )
    };
    let no_patient = rs256(&claims("patient/*.read", json!({})));
    for (name, token) in [
        ("none", None),
        ("garbage", Some("not.a.jwt".to_string())),
        ("expired", Some(expired)),
        ("not yet valid", Some(early)),
        ("other issuer", Some(other_issuer)),
        ("other audience", Some(other_audience)),
        ("signed by an untrusted key", Some(forged)),
        ("unknown key id", Some(unknown_kid)),
        ("HS256 with the public key", Some(confused)),
        ("alg none", Some(unsigned)),
        ("patient scopes without a patient", Some(no_patient)),
    ] {
        let mut request = app.client.get(format!("{}/Patient", app.base));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{name}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Bearer "), "{name}: {challenge}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome", "{name}");
        assert_eq!(body["issue"][0]["code"], "login", "{name}");
    }
    // The capability statement stays public; both key types verify.
    assert_eq!(app.get("/metadata").await.status().as_u16(), 200);
    let ec = sign(
        Algorithm::ES256,
        "test-ec",
        "ec-private.pem",
        &claims(scope, json!({})),
    );
    assert_eq!(get(&app, "/Patient", &ec).await.0, 200);
    assert_eq!(
        get(&app, "/Patient", &rs256(&claims(scope, json!({}))))
            .await
            .0,
        200
    );
    app.stop().await;
}

/// base64url without padding, for the hand-made unsigned token.
mod base64_like {
    pub fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test]
async fn scopes_decide_which_types_and_interactions_a_token_may_use() {
    let app = spawn_secured().await;
    let admin = rs256(&claims("system/*.*", json!({})));
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Quillfeather"}]});
    let (status, _) = call(
        &app,
        reqwest::Method::PUT,
        "/Patient/p1",
        Some(&admin),
        Some(&patient),
    )
    .await;
    assert_eq!(status, 201);

    let reader = rs256(&claims("user/Observation.read", json!({})));
    assert_eq!(get(&app, "/Observation", &reader).await.0, 200);
    let (status, body) = get(&app, "/Patient/p1", &reader).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["issue"][0]["code"], "forbidden");
    let observation = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}});
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/Observation",
        Some(&reader),
        Some(&observation),
    )
    .await;
    assert_eq!(status, 403);

    // v2: create Patients, read and search Observations, nothing else.
    let v2 = rs256(&claims("user/Patient.c user/Observation.rs", json!({})));
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/Patient",
        Some(&v2),
        Some(&patient),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(get(&app, "/Patient/p1", &v2).await.0, 403);
    assert_eq!(get(&app, "/Observation?code=x", &v2).await.0, 200);
    let (status, _) = call(
        &app,
        reqwest::Method::DELETE,
        "/Patient/p1",
        Some(&v2),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // A transaction is checked entry by entry.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": "Patient/p1"}}]});
    let (status, body) = call(&app, reqwest::Method::POST, "/", Some(&v2), Some(&bundle)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["issue"][0]["expression"][0], "Bundle.entry[1]");
    // Nobody writes the audit trail.
    let event = json!({"resourceType": "AuditEvent"});
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/AuditEvent",
        Some(&admin),
        Some(&event),
    )
    .await;
    assert_eq!(status, 405);
    app.stop().await;
}

/// Patient A's record, patient B's, and a practitioner both share.
async fn seed_two_patients(app: &TestApp, admin: &str) {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "pa", "name": [{"family": "Ambleforth"}]},
         "request": {"method": "PUT", "url": "Patient/pa"}},
        {"resource": {"resourceType": "Patient", "id": "pb", "name": [{"family": "Brindlecombe"}]},
         "request": {"method": "PUT", "url": "Patient/pb"}},
        {"resource": {"resourceType": "Practitioner", "id": "dr"},
         "request": {"method": "PUT", "url": "Practitioner/dr"}},
        {"resource": {"resourceType": "Observation", "id": "oa", "status": "final",
            "code": {"text": "glucose"}, "subject": {"reference": "Patient/pa"},
            "performer": [{"reference": "Practitioner/dr"}]},
         "request": {"method": "PUT", "url": "Observation/oa"}},
        // In A's compartment and in B's: B is named as a performer.
        {"resource": {"resourceType": "Observation", "id": "oab", "status": "final",
            "code": {"text": "glucose"}, "subject": {"reference": "Patient/pa"},
            "performer": [{"reference": "Patient/pb"}]},
         "request": {"method": "PUT", "url": "Observation/oab"}},
        {"resource": {"resourceType": "Observation", "id": "ob", "status": "final",
            "code": {"text": "glucose"}, "subject": {"reference": "Patient/pb"},
            "performer": [{"reference": "Practitioner/dr"}]},
         "request": {"method": "PUT", "url": "Observation/ob"}},
        {"resource": {"resourceType": "Condition", "id": "cb",
            "subject": {"reference": "Patient/pb"}},
         "request": {"method": "PUT", "url": "Condition/cb"}},
    ]});
    let (status, body) = call(app, reqwest::Method::POST, "/", Some(admin), Some(&bundle)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_patient_scoped_token_cannot_reach_another_patients_record_by_any_route() {
    let app = spawn_secured().await;
    let admin = rs256(&claims("system/*.*", json!({"sub": "admin"})));
    seed_two_patients(&app, &admin).await;
    let a = rs256(&claims(
        "launch/patient patient/*.read patient/Observation.write",
        json!({"sub": "patient-app", "patient": "pa"}),
    ));

    // Read, vread, instance history.
    assert_eq!(get(&app, "/Patient/pa", &a).await.0, 200);
    assert_eq!(get(&app, "/Observation/oa", &a).await.0, 200);
    assert_eq!(get(&app, "/Practitioner/dr", &a).await.0, 200);
    for path in [
        "/Patient/pb",
        "/Observation/ob",
        "/Condition/cb",
        "/Observation/ob/_history/1",
        "/Observation/ob/_history",
        "/Patient/pb/_history",
    ] {
        let (status, body) = get(&app, path, &a).await;
        assert_eq!(status, 403, "{path}: {body}");
    }

    // Search: only A's compartment, whatever the criteria say.
    let (_, found) = get(&app, "/Observation", &a).await;
    let mut got = ids(&found);
    got.sort();
    assert_eq!(got, ["Observation/oa", "Observation/oab"], "{found}");
    let (_, found) = get(&app, "/Observation?subject=Patient/pb", &a).await;
    assert!(ids(&found).is_empty(), "{found}");
    let (_, found) = get(&app, "/Patient", &a).await;
    assert_eq!(ids(&found), ["Patient/pa"]);
    let (_, found) = get(&app, "/Condition", &a).await;
    assert!(ids(&found).is_empty(), "{found}");

    // _include and _revinclude: B never comes along.
    let (_, found) = get(
        &app,
        "/Observation?_id=oab&_include=Observation:performer",
        &a,
    )
    .await;
    assert_eq!(ids(&found), ["Observation/oab"], "{found}");
    let (_, found) = get(
        &app,
        "/Observation?_id=oa&_include=Observation:performer",
        &a,
    )
    .await;
    assert_eq!(
        ids(&found),
        ["Observation/oa", "Practitioner/dr"],
        "{found}"
    );
    let (_, found) = get(&app, "/Practitioner?_revinclude=Observation:performer", &a).await;
    let got = ids(&found);
    assert!(got.contains(&"Observation/oa".to_string()), "{found}");
    assert!(!got.contains(&"Observation/ob".to_string()), "{found}");

    // Type and system history.
    let (status, found) = get(&app, "/Observation/_history", &a).await;
    assert_eq!(status, 200);
    assert!(ids(&found).iter().all(|r| r != "Observation/ob"), "{found}");
    let (status, found) = get(&app, "/_history", &a).await;
    assert_eq!(status, 200);
    let got = ids(&found);
    assert!(got.contains(&"Patient/pa".to_string()), "{found}");
    for theirs in ["Patient/pb", "Observation/ob", "Condition/cb"] {
        assert!(!got.contains(&theirs.to_string()), "{theirs}: {found}");
    }

    // $everything: their own record only.
    let (status, found) = get(&app, "/Patient/pa/$everything", &a).await;
    assert_eq!(status, 200);
    let got = ids(&found);
    assert!(got.contains(&"Observation/oa".to_string()), "{found}");
    assert!(
        got.iter()
            .all(|r| r != "Patient/pb" && r != "Observation/ob"),
        "{found}"
    );
    assert_eq!(get(&app, "/Patient/pb/$everything", &a).await.0, 403);

    // Writes: not into B's record, not of B's data.
    let theirs = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/pb"}});
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/Observation",
        Some(&a),
        Some(&theirs),
    )
    .await;
    assert_eq!(status, 403);
    let moved = json!({"resourceType": "Observation", "id": "ob", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/pa"}});
    let (status, _) = call(
        &app,
        reqwest::Method::PUT,
        "/Observation/ob",
        Some(&a),
        Some(&moved),
    )
    .await;
    assert_eq!(status, 403, "taking over B's observation");
    let (status, _) = call(
        &app,
        reqwest::Method::DELETE,
        "/Observation/ob",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // A JSON Patch's `test` must not become an oracle on another patient's values: refused
    // before it is evaluated, whether it would hold or not.
    for value in ["glucose", "something else"] {
        let response = app
            .client
            .patch(format!("{}/Observation/ob", app.base))
            .bearer_auth(&a)
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "test", "path": "/code/text", "value": value}]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "test against {value:?}");
    }
    let mine = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/pa"}});
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/Observation",
        Some(&a),
        Some(&mine),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        get(&app, "/Observation/ob", &admin).await.1["subject"]["reference"],
        "Patient/pb"
    );

    // Every refused attempt is in the audit trail, under the token's subject.
    let (status, trail) = get(
        &app,
        "/AuditEvent?agent-name=patient-app&outcome=4&_count=100",
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{trail}");
    let events = trail["entry"].as_array().unwrap();
    let concerning = |what: &str| {
        events.iter().any(|e| {
            e["resource"]["entity"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["what"]["reference"] == what)
        })
    };
    for what in ["Patient/pb", "Observation/ob", "Condition/cb"] {
        assert!(
            concerning(what),
            "no refused attempt on {what} audited: {trail}"
        );
    }
    assert!(events.len() >= 10, "{} refusals audited", events.len());
    // A patient's token reads only its own patient's trail.
    let (status, _) = get(&app, "/AuditEvent?patient=pb", &a).await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn reads_writes_and_hl7v2_messages_are_audited_without_patient_data() {
    let app = crate::support::spawn_app().await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Zanzibarnaby"}]});
    assert_eq!(app.put_status("Patient/z1", &patient).await, 201);
    assert_eq!(app.get("/Patient/z1").await.status().as_u16(), 200);
    assert_eq!(app.get("/Patient/nobody").await.status().as_u16(), 404);
    let message = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oru_r01_ztr.hl7"),
    )
    .unwrap();
    app.send_accepted(&message).await;

    let (status, trail) = app.get_json("/AuditEvent?patient=z1").await;
    assert_eq!(status, 200, "{trail}");
    let subtypes: Vec<&str> = trail["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["subtype"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(subtypes, ["read", "update"], "newest first: {trail}");
    let read = &trail["entry"][0]["resource"];
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    assert_eq!(read["agent"][0]["who"]["display"], "anonymous");
    assert_eq!(read["agent"][0]["network"]["address"], "127.0.0.1");

    let (_, missing) = app.get_json("/AuditEvent?entity=Patient/nobody").await;
    assert_eq!(missing["entry"][0]["resource"]["outcome"], "4", "{missing}");

    let (_, messages) = app
        .get_json("/AuditEvent?subtype=hl7v2-message&source=mllp")
        .await;
    let event = &messages["entry"][0]["resource"];
    assert_eq!(event["action"], "C", "{messages}");
    assert!(event["entity"].as_array().unwrap().len() > 1, "{event}");
    assert!(event["agent"][0]["who"]["display"]
        .as_str()
        .unwrap()
        .contains('^'));
    let (status, one) = app
        .get_json(&format!("/AuditEvent/{}", event["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], event["id"]);

    // References and codes only: no name, no message text.
    let (_, everything) = app.get_json("/AuditEvent?_count=1000").await;
    let text = everything.to_string();
    assert!(!text.contains("Zanzibarnaby"), "{text}");
    let message_text = String::from_utf8_lossy(&message);
    let pid5 = crate::support::field(&message_text, "PID", 5);
    let family = pid5.split('^').next().unwrap();
    assert!(
        !family.is_empty() && !text.contains(family),
        "{family} in the trail"
    );
    app.stop().await;
}

/// Each case found by the hostile pass against a running server (see the closing note of
/// issue 8); each answered 200 or 201 before its fix.
#[tokio::test]
async fn the_hostile_pass_findings_stay_closed() {
    let app = spawn_secured().await;
    let admin = rs256(&claims("system/*.*", json!({"sub": "admin"})));
    seed_two_patients(&app, &admin).await;
    let task = json!({"resourceType": "Task", "id": "tb", "status": "requested",
        "intent": "order", "for": {"reference": "Patient/pb"}});
    let (status, _) = call(
        &app,
        reqwest::Method::PUT,
        "/Task/tb",
        Some(&admin),
        Some(&task),
    )
    .await;
    assert_eq!(status, 201);
    let identified = json!({"resourceType": "Patient", "id": "pb",
        "identifier": [{"system": "urn:mrn", "value": "B-123"}], "name": [{"family": "Brindlecombe"}]});
    let (status, _) = call(
        &app,
        reqwest::Method::PUT,
        "/Patient/pb",
        Some(&admin),
        Some(&identified),
    )
    .await;
    assert_eq!(status, 200);
    let a = rs256(&claims(
        "patient/*.read patient/*.write",
        json!({"sub": "patient-app", "patient": "pa"}),
    ));
    let openid = rs256(&claims("openid", json!({})));

    // Percent-encoded routes are the routes they decode to.
    assert_eq!(get(&app, "/%41uditEvent", &openid).await.0, 403);
    assert_eq!(get(&app, "/Patient/pb/%24everything", &a).await.0, 403);

    // A matching conditional create does not hand over what the token may not read.
    let response = app
        .client
        .post(format!("{}/Patient", app.base))
        .bearer_auth(&a)
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=urn:mrn|B-123")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert!(!response.text().await.unwrap().contains("Brindlecombe"));

    // Shared resources are read, not changed, by a patient's token.
    assert_eq!(get(&app, "/Practitioner/dr", &a).await.0, 200);
    let changed = json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "X"}]});
    let (status, _) = call(
        &app,
        reqwest::Method::PUT,
        "/Practitioner/dr",
        Some(&a),
        Some(&changed),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &app,
        reqwest::Method::DELETE,
        "/Practitioner/dr",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 403);

    // A type outside the compartment definition points at B through `for`.
    assert_eq!(get(&app, "/Task/tb", &a).await.0, 403);
    assert_eq!(get(&app, "/Task", &a).await.0, 403);

    // Nothing written into B's record, even alongside A's.
    let shared = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/pa"}, "performer": [{"reference": "Patient/pb"}]});
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/Observation",
        Some(&a),
        Some(&shared),
    )
    .await;
    assert_eq!(status, 403);
    let linked = json!({"resourceType": "Patient", "id": "pa",
        "link": [{"other": {"reference": "Patient/pb"}, "type": "seealso"}]});
    let (status, _) = call(
        &app,
        reqwest::Method::PUT,
        "/Patient/pa",
        Some(&a),
        Some(&linked),
    )
    .await;
    assert_eq!(status, 403);

    // Two Authorization headers: which one a proxy checked is unknown.
    let response = app
        .client
        .get(format!("{}/Patient/pa", app.base))
        .header("authorization", format!("Bearer {a}"))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // A path's text is not stored as an entity unless it is a valid id.
    let long = "x".repeat(5000);
    assert_eq!(get(&app, &format!("/Patient/{long}"), &a).await.0, 404);
    let (_, trail) = get(&app, "/AuditEvent?_count=1000", &admin).await;
    assert!(!trail.to_string().contains(&long));
    app.stop().await;
}

/// The key set over HTTPS from a loopback key server whose certificates are made here.
mod https_key_set {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use rcgen::ExtendedKeyUsagePurpose;
    use rustls::crypto::ring;
    use rustls::pki_types::PrivateKeyDer;

    use super::*;
    use crate::tls::{start_error, test_config, Pki};

    /// Authentication settings whose key set is fetched from `url`, trusting `ca` alone when given.
    fn url_settings(url: String, ca: Option<PathBuf>) -> AuthSettings {
        AuthSettings {
            jwks: JwksSource::Url { url, ca },
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway_s: 0,
        }
    }

    /// A server configuration presenting a certificate `pki` issued for `names`.
    #[allow(deprecated)] // ring, as the server uses (see `hl7bridge::tls`)
    fn key_server_config(pki: &Pki, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (certificate, key) = pki.issue(names, ExtendedKeyUsagePurpose::ServerAuth);
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certificate.der().clone()], key)
                .unwrap();
        Arc::new(config)
    }

    /// A key server over HTTPS on loopback, serving `jwks` to every request: its URL, and how many
    /// connections it has accepted. Connection `n` is served with `configs[n]`, or the last one.
    async fn serve_jwks_over_https(
        jwks: String,
        configs: Vec<Arc<rustls::ServerConfig>>,
    ) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/jwks.json", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let config = configs[n.min(configs.len() - 1)].clone();
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                    else {
                        return;
                    };
                    let mut request = [0u8; 4096];
                    let _ = tls.read(&mut request).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                        jwks.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (url, accepted)
    }

    fn test_jwks() -> String {
        std::fs::read_to_string(fixture("jwks.json")).unwrap()
    }

    #[tokio::test]
    async fn a_key_set_fetched_over_https_through_a_private_ca_verifies_tokens() {
        let pki = Pki::new("jwks");
        let config = key_server_config(&pki, &["127.0.0.1"]);
        let (url, _) = serve_jwks_over_https(test_jwks(), vec![config]).await;
        let settings = url_settings(url, Some(pki.ca_file()));
        let app = spawn_app_with(|c| c.auth = Some(settings)).await;
        accepts_the_test_key_only(&app).await;
        app.stop().await;
    }

    #[tokio::test]
    async fn a_key_server_certificate_from_another_ca_stops_the_start_naming_the_setting() {
        let trusted = Pki::new("trusted");
        let other = Pki::new("other");
        let config = key_server_config(&other, &["127.0.0.1"]);
        let (url, _) = serve_jwks_over_https(test_jwks(), vec![config]).await;

        let settings = url_settings(url.clone(), Some(trusted.ca_file()));
        let error = start_error(test_config(|c| c.auth = Some(settings))).await;
        for expected in [
            "HL7BRIDGE_AUTH_JWKS_URL",
            "HL7BRIDGE_AUTH_JWKS_CA",
            "UnknownIssuer",
        ] {
            assert!(error.contains(expected), "{expected}: {error}");
        }
        // Nor do the system's roots know a private CA.
        let error = start_error(test_config(|c| c.auth = Some(url_settings(url, None)))).await;
        assert!(error.contains("HL7BRIDGE_AUTH_JWKS_URL"), "{error}");
    }

    #[tokio::test]
    async fn a_key_server_certificate_for_another_host_name_stops_the_start() {
        let pki = Pki::new("jwks-name");
        let config = key_server_config(&pki, &["jwks.other.invalid"]);
        let (url, _) = serve_jwks_over_https(test_jwks(), vec![config]).await;
        let settings = url_settings(url, Some(pki.ca_file()));
        let error = start_error(test_config(|c| c.auth = Some(settings))).await;
        assert!(error.contains("HL7BRIDGE_AUTH_JWKS_URL"), "{error}");
        assert!(error.contains("not valid for name"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_key_server_stops_the_start_naming_the_setting() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/jwks.json", closed.local_addr().unwrap());
        drop(closed);
        let error = start_error(test_config(|c| c.auth = Some(url_settings(url, None)))).await;
        assert!(error.contains("HL7BRIDGE_AUTH_JWKS_URL"), "{error}");
        assert!(error.contains("tcp connect error"), "{error}");
    }

    /// A token naming a key the set does not hold makes the server fetch the set again (at most
    /// every 30 s). When that fetch fails — here the key server has started presenting a
    /// certificate for another name — the keys held stay and the token is refused.
    #[tokio::test]
    async fn a_failed_refetch_over_https_refuses_a_token_naming_an_unknown_key() {
        let mut only_rsa: Value = serde_json::from_str(&test_jwks()).unwrap();
        only_rsa["keys"]
            .as_array_mut()
            .unwrap()
            .retain(|key| key["kid"] == "test-rsa");
        let pki = Pki::new("jwks-refetch");
        let configs = vec![
            key_server_config(&pki, &["127.0.0.1"]),
            key_server_config(&pki, &["jwks.other.invalid"]),
        ];
        let (url, accepted) = serve_jwks_over_https(only_rsa.to_string(), configs).await;
        let settings = url_settings(url, Some(pki.ca_file()));
        let app = spawn_app_with(|c| c.auth = Some(settings)).await;
        let scope = "system/*.read";
        let rsa = rs256(&claims(scope, json!({})));
        let ec = sign(
            Algorithm::ES256,
            "test-ec",
            "ec-private.pem",
            &claims(scope, json!({})),
        );
        assert_eq!(get(&app, "/Patient", &rsa).await.0, 200);

        tokio::time::sleep(std::time::Duration::from_secs(31)).await;
        assert_eq!(get(&app, "/Patient", &ec).await.0, 401);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the set was fetched again"
        );
        assert_eq!(get(&app, "/Patient", &rsa).await.0, 200);
        app.stop().await;
    }
}

/// A JWKS served over HTTP on loopback, as an identity provider would serve it.
#[tokio::test]
async fn a_key_set_fetched_from_a_url_verifies_tokens() {
    let jwks = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    let url = serve_over_http(jwks).await;
    let app = spawn_app_with(|c| c.auth = Some(url_key_set(url))).await;
    accepts_the_test_key_only(&app).await;
    app.stop().await;
}

/// Serves `body` as JSON to every request on a loopback port; returns its URL.
async fn serve_over_http(body: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

fn url_key_set(url: String) -> AuthSettings {
    AuthSettings {
        jwks: JwksSource::Url { url, ca: None },
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        leeway_s: 0,
    }
}

/// A key server answering with megabytes is not read to the end: the start stops, naming
/// the setting.
#[tokio::test]
async fn a_key_set_larger_than_a_megabyte_stops_the_start() {
    let huge = format!("{{\"keys\": [], \"padding\": \"{}\"}}", "x".repeat(2 << 20));
    let url = serve_over_http(huge).await;
    let config = crate::tls::test_config(|c| c.auth = Some(url_key_set(url)));
    let error = crate::tls::start_error(config).await;
    assert!(error.contains("HL7BRIDGE_AUTH_JWKS_URL"), "{error}");
    assert!(error.contains("larger than"), "{error}");
}

/// SMART v2 `u` updates; only `c` creates, and a PUT to an id that does not exist (or was
/// deleted) creates. v1 `write` grants both.
#[tokio::test]
async fn a_put_that_would_create_needs_create_permission() {
    let app = spawn_secured().await;
    let admin = rs256(&claims("system/*.*", json!({"sub": "admin"})));
    let observation = |id: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"text": "x"}, "identifier": [{"system": "urn:obs", "value": id}]})
    };
    let put = |path: &str, token: &str, body: Value| {
        let (app, path, token) = (&app, path.to_string(), token.to_string());
        async move { call(app, reqwest::Method::PUT, &path, Some(&token), Some(&body)).await }
    };
    for id in ["kept", "gone"] {
        assert_eq!(
            put(&format!("/Observation/{id}"), &admin, observation(id))
                .await
                .0,
            201
        );
    }
    let (status, _) = call(
        &app,
        reqwest::Method::DELETE,
        "/Observation/gone",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204);

    let updater = rs256(&claims("user/Observation.u", json!({})));
    assert_eq!(
        put("/Observation/kept", &updater, observation("kept"))
            .await
            .0,
        200
    );
    for id in ["new", "gone"] {
        let (status, body) = put(&format!("/Observation/{id}"), &updater, observation(id)).await;
        assert_eq!(status, 403, "PUT Observation/{id}: {body}");
        assert_eq!(body["issue"][0]["code"], "forbidden");
    }
    let (status, _) = put(
        "/Observation?identifier=urn:obs|other",
        &updater,
        observation("other"),
    )
    .await;
    assert_eq!(
        status, 403,
        "a conditional update that matches nothing creates"
    );
    let (status, _) = put(
        "/Observation?identifier=urn:obs|kept",
        &updater,
        observation("kept"),
    )
    .await;
    assert_eq!(status, 200, "a conditional update that matches updates");

    // Bundles: a transaction fails whole, a batch answers the entry.
    let entry = |id: &str| {
        json!({"resource": observation(id),
            "request": {"method": "PUT", "url": format!("Observation/{id}")}})
    };
    let transaction = json!({"resourceType": "Bundle", "type": "transaction",
        "entry": [entry("kept"), entry("new")]});
    let (status, body) = call(
        &app,
        reqwest::Method::POST,
        "/",
        Some(&updater),
        Some(&transaction),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["issue"][0]["expression"][0], "Bundle.entry[1]");
    let batch = json!({"resourceType": "Bundle", "type": "batch",
        "entry": [entry("kept"), entry("new"), entry("gone")]});
    let (status, body) = call(
        &app,
        reqwest::Method::POST,
        "/",
        Some(&updater),
        Some(&batch),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<&str> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["200 OK", "403 Forbidden", "403 Forbidden"],
        "{body}"
    );
    for id in ["new", "other"] {
        let (status, _) = get(&app, &format!("/Observation/{id}"), &admin).await;
        assert_eq!(status, 404, "Observation/{id} was created");
    }
    assert_eq!(get(&app, "/Observation/gone", &admin).await.0, 410);

    // With create permission too, the same PUTs create.
    let v2 = rs256(&claims("user/Observation.cu", json!({})));
    assert_eq!(
        put("/Observation/new", &v2, observation("new")).await.0,
        201
    );
    let v1 = rs256(&claims("user/Observation.write", json!({})));
    assert_eq!(
        put("/Observation/gone", &v1, observation("gone")).await.0,
        201
    );
    app.stop().await;
}

/// RFC 7519: `iss` is a single StringOrURI; `exp` and `nbf` are NumericDates, which may have a
/// fraction.
#[tokio::test]
async fn jwt_claims_are_read_as_rfc_7519_defines_them() {
    let app = spawn_secured().await;
    let scope = "system/*.read";
    let status = |claims: Value| {
        let app = &app;
        async move { get(app, "/Patient", &rs256(&claims)).await.0 }
    };
    for iss in [
        json!([ISSUER]),
        json!([ISSUER, "https://elsewhere.invalid"]),
    ] {
        assert_eq!(
            status(claims(scope, json!({"iss": iss}))).await,
            401,
            "iss {iss}"
        );
    }
    let at = now_exact();
    assert_eq!(
        status(claims(scope, json!({"exp": at + 600.25}))).await,
        200
    );
    assert_eq!(
        status(claims(scope, json!({"exp": at + 600.25, "nbf": at - 10.5}))).await,
        200
    );
    assert_eq!(status(claims(scope, json!({"exp": at - 120.5}))).await, 401);
    assert_eq!(status(claims(scope, json!({"nbf": at + 600.5}))).await, 401);
    assert_eq!(
        status(claims(scope, json!({"exp": (at + 600.0).to_string()}))).await,
        401
    );
    // Half a second past its `exp`, within the same whole second as the clock: a check that
    // rounds `exp` or truncates the clock to whole seconds would still take it.
    while now_exact().fract() < 0.6 || now_exact().fract() > 0.9 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let expired = rs256(&claims(scope, json!({"exp": now_exact() - 0.5})));
    assert_eq!(get(&app, "/Patient", &expired).await.0, 401);
    app.stop().await;
}

/// An identifier lookup made for a patient-scoped token (conditional reference, create, update
/// or delete) must not tell whether the identifier is in use in another patient's record: a
/// match outside the token's reach answers exactly as no match does.
#[tokio::test]
async fn identifier_matches_outside_a_patients_reach_answer_as_no_match() {
    let app = spawn_secured().await;
    let admin = rs256(&claims("system/*.*", json!({"sub": "admin"})));
    seed_two_patients(&app, &admin).await;
    for (path, resource) in [
        (
            "/Patient/pa",
            json!({"resourceType": "Patient", "id": "pa",
            "identifier": [{"system": "urn:mrn", "value": "A-1"}]}),
        ),
        (
            "/Patient/pb",
            json!({"resourceType": "Patient", "id": "pb",
            "identifier": [{"system": "urn:mrn", "value": "B-123"}]}),
        ),
        (
            "/Observation/ob",
            json!({"resourceType": "Observation", "id": "ob", "status": "final",
            "code": {"text": "glucose"}, "subject": {"reference": "Patient/pb"},
            "identifier": [{"system": "urn:obs", "value": "OB-1"},
                {"system": "urn:obs", "value": "OB-2"}]}),
        ),
    ] {
        let (status, body) = call(
            &app,
            reqwest::Method::PUT,
            path,
            Some(&admin),
            Some(&resource),
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let a = rs256(&claims(
        "patient/*.read patient/*.write",
        json!({"sub": "patient-app", "patient": "pa"}),
    ));
    let send = |bundle: Value| {
        let (app, a) = (&app, a.clone());
        async move { call(app, reqwest::Method::POST, "/", Some(&a), Some(&bundle)).await }
    };
    let referring = |kind: &str, mrn: &str| {
        json!({"resourceType": "Bundle", "type": kind, "entry": [{"resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": format!("Patient?identifier=urn:mrn|{mrn}")}},
            "request": {"method": "POST", "url": "Observation"}}]})
    };
    // The answer for B's identifier, with the identifier's text changed, is the answer for one
    // that nobody has.
    for kind in ["transaction", "batch"] {
        let (status_b, body_b) = send(referring(kind, "B-123")).await;
        let (status_none, body_none) = send(referring(kind, "NOBODY")).await;
        assert_eq!(status_b, status_none, "{kind}: {body_b}");
        let mut body_b = body_b.clone();
        let mut body_none = body_none.clone();
        for body in [&mut body_b, &mut body_none] {
            if let Some(map) = body.as_object_mut() {
                map.remove("id");
                map.remove("meta");
            }
        }
        assert_eq!(
            body_b.to_string().replace("B-123", "NOBODY"),
            body_none.to_string(),
            "{kind}"
        );
    }
    // Its own identifier still resolves.
    let (status, body) = send(referring("transaction", "A-1")).await;
    assert_eq!(status, 200, "{body}");
    let location = body["entry"][0]["response"]["location"].as_str().unwrap();
    let id = location.split('/').nth(1).unwrap();
    let (_, stored) = get(&app, &format!("/Observation/{id}"), &a).await;
    assert_eq!(stored["subject"]["reference"], "Patient/pa");

    // A conditional create, update or delete matching B's observation acts as if there were none.
    let mine = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "mine"}, "subject": {"reference": "Patient/pa"},
        "identifier": [{"system": "urn:obs", "value": "OB-1"}]});
    let delete = |value: &str| {
        json!({"resourceType": "Bundle", "type": "batch", "entry": [{
            "request": {"method": "DELETE", "url": format!("Observation?identifier=urn:obs|{value}")}}]})
    };
    for value in ["OB-1", "NOBODY"] {
        let (_, body) = send(delete(value)).await;
        assert_eq!(
            body["entry"][0]["response"]["status"], "204 No Content",
            "{value}: {body}"
        );
    }
    let update = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": mine.clone(),
        "request": {"method": "PUT", "url": "Observation?identifier=urn:obs|OB-1"}}]});
    let (_, body) = send(update).await;
    assert_eq!(
        body["entry"][0]["response"]["status"], "201 Created",
        "{body}"
    );
    let create = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": mine.clone(),
        "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=urn:obs|OB-2"}}]});
    let (_, body) = send(create).await;
    assert_eq!(
        body["entry"][0]["response"]["status"], "201 Created",
        "{body}"
    );
    let (status, found) = get(&app, "/Observation/ob", &admin).await;
    assert_eq!(status, 200, "B's observation is untouched: {found}");
    assert_eq!(found["code"]["text"], "glucose");
    app.stop().await;
}

/// Refusals for want of a valid token (401): anyone can send them, so past a few per second
/// and address they are counted into summary events; their total is still exact. Requests
/// with a valid token, allowed or refused, are recorded one by one.
#[tokio::test]
async fn an_unauthenticated_flood_is_summarised_in_the_trail_and_counted_in_full() {
    use hl7bridge::audit::refusals::PER_ADDRESS_PER_SECOND;
    let app = spawn_secured().await;
    let started = std::time::Instant::now();
    let flood = 400;
    for i in 0..flood {
        let mut request = app.client.get(format!("{}/Patient", app.base));
        if i % 2 == 1 {
            request = request.bearer_auth("not.a.jwt");
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let reader = rs256(&claims("user/Observation.rs", json!({"sub": "reader"})));
    for _ in 0..30 {
        assert_eq!(get(&app, "/Observation", &reader).await.0, 200);
        assert_eq!(get(&app, "/Patient", &reader).await.0, 403);
    }

    let admin = rs256(&claims("system/*.*", json!({"sub": "admin"})));
    let (status, trail) = get(&app, "/AuditEvent?agent-name=unknown&_count=1000", &admin).await;
    assert_eq!(status, 200, "{trail}");
    let events: Vec<&Value> = trail["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let (summaries, one_by_one): (Vec<&Value>, Vec<&Value>) = events
        .iter()
        .partition(|e| e["subtype"][0]["code"] == "unauthenticated-refusals");
    assert!(
        one_by_one.len() as u64 <= u64::from(PER_ADDRESS_PER_SECOND) * seconds,
        "{} refusals recorded one by one in {seconds} s",
        one_by_one.len()
    );
    assert!(one_by_one.iter().all(|e| e["outcomeDesc"] == "HTTP 401"));
    let counted: u64 = summaries
        .iter()
        .map(|e| {
            assert_eq!(e["outcome"], "4");
            assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1");
            let text = e["outcomeDesc"].as_str().unwrap();
            let count = text
                .strip_prefix("HTTP 401 x")
                .and_then(|t| t.split(':').next());
            count.and_then(|c| c.parse::<u64>().ok()).expect(text)
        })
        .sum();
    assert_eq!(one_by_one.len() as u64 + counted, flood, "{trail}");

    // The token's traffic, allowed and refused, is all there.
    let (_, mine) = get(&app, "/AuditEvent?agent-name=reader&_count=1000", &admin).await;
    let outcomes: Vec<&str> = mine["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "0").count(), 30);
    assert_eq!(outcomes.iter().filter(|o| **o == "4").count(), 30);
    app.stop().await;
}

/// `HL7BRIDGE_AUDIT_RETENTION_DAYS`: events older than the retention are deleted (at start,
/// then every hour); younger ones stay.
#[tokio::test]
async fn audit_events_past_the_retention_are_deleted() {
    use hl7bridge_entities::audit_event;
    let (url, _database) = crate::support::fresh_database().await;
    let store = hl7bridge::store::Store::connect(&url).await.unwrap();
    let day_us = 86_400 * 1_000_000;
    let now_us = now() * 1_000_000;
    let event = |id: &str, age_days: i64| audit_event::Model {
        id: id.to_string(),
        recorded_us: now_us - age_days * day_us,
        source: "fhir".into(),
        action: "R".into(),
        subtype: "read".into(),
        outcome: 0,
        agent: "archivist".into(),
        network: "127.0.0.1".into(),
        entities: "[]".into(),
        patient_id: String::new(),
        trace_id: String::new(),
        detail: "HTTP 200".into(),
    };
    let rows = vec![
        event("old-1", 400),
        event("old-2", 31),
        event("young-1", 29),
        event("young-2", 1),
    ];
    store.audit_insert(rows).await.unwrap();
    store.close().await;

    let app = crate::support::spawn_app_on(&url, |c| c.audit_retention_days = Some(30)).await;
    let mut kept = Vec::new();
    for _ in 0..100 {
        let (status, trail) = app.get_json("/AuditEvent?agent-name=archivist").await;
        assert_eq!(status, 200, "{trail}");
        kept = trail["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect();
        if kept.len() < 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(kept, ["young-2", "young-1"]);
    app.stop().await;
}

/// A conditional create whose `ifNoneExist` matches a resource an earlier entry of the same
/// transaction creates: with a token, as without, it resolves to that resource (it is not in
/// the store yet, and the caller may read what it is writing).
#[tokio::test]
async fn an_if_none_exist_matching_an_earlier_entry_of_the_bundle_resolves_under_a_token() {
    let app = spawn_secured().await;
    let mut failures = Vec::new();
    for scope in [
        "system/*.*",
        "user/Organization.write user/Organization.read",
    ] {
        let token = rs256(&claims(scope, json!({})));
        let identifier = format!("ORG-{}", scope.len());
        let organization = json!({"resourceType": "Organization", "name": "Invented Lab",
            "identifier": [{"system": "urn:test:org", "value": identifier}]});
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:first", "resource": organization,
             "request": {"method": "POST", "url": "Organization"}},
            {"fullUrl": "urn:uuid:second", "resource": organization,
             "request": {"method": "POST", "url": "Organization",
                 "ifNoneExist": format!("identifier=urn:test:org|{identifier}")}}]});
        let (status, response) = call(
            &app,
            reqwest::Method::POST,
            "/",
            Some(&token),
            Some(&bundle),
        )
        .await;
        if status != 200 {
            failures.push(format!("{scope}: {status} {response}"));
            continue;
        }
        let locations: Vec<&str> = response["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["response"]["location"].as_str().unwrap_or(""))
            .map(|l| l.split("/_history").next().unwrap())
            .collect();
        assert_eq!(
            locations[0], locations[1],
            "{scope}: one Organization: {response}"
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
    app.stop().await;
}
