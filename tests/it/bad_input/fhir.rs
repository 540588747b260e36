//! FHIR over HTTP: hostile requests written byte for byte (a raw HTTP/1.1 client, so that
//! invalid UTF-8, CR/LF and oversized heads reach the server as sent), each with the answer
//! class it must get.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Mismatch, MAX_BODY_BYTES};
use crate::support::TestApp;

/// What a case must be answered with.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This 4xx, with an OperationOutcome whose first issue is an error.
    Outcome(u16),
    /// This success: the input is legitimately accepted (the case's name says why).
    Success(u16),
    /// This status from the HTTP layer, before any FHIR handler: the request cannot be read
    /// as HTTP, so no FHIR body is written (the case's name says so).
    Http(u16),
}

pub struct Case {
    name: &'static str,
    request: Req,
    expect: Expect,
}

/// A request as bytes on the wire.
struct Req {
    method: &'static str,
    target: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl Req {
    fn new(method: &'static str, target: impl Into<Vec<u8>>) -> Req {
        Req {
            method,
            target: target.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Req {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = Some(body.into());
        self
    }

    fn json(self, body: impl Into<Vec<u8>>) -> Req {
        self.header("content-type", "application/fhir+json")
            .body(body)
    }

    fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(body) = &self.body {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

fn get(target: impl Into<Vec<u8>>) -> Req {
    Req::new("GET", target)
}

fn post(target: &str, body: impl Into<Vec<u8>>) -> Req {
    Req::new("POST", target).json(body)
}

fn put(target: impl Into<Vec<u8>>, body: impl Into<Vec<u8>>) -> Req {
    Req::new("PUT", target).json(body)
}

fn case(name: &'static str, request: Req, expect: Expect) -> Case {
    Case {
        name,
        request,
        expect,
    }
}

use Expect::{Http, Outcome, Success};

/// A Patient with `members` (JSON object members, without braces) beside its resourceType.
fn patient(members: &str) -> String {
    format!(r#"{{"resourceType":"Patient",{members}}}"#)
}

fn observation_about(reference: &str) -> String {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "bad input"},
        "subject": {"reference": reference}})
    .to_string()
}

fn transaction(entries: Value) -> String {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
}

fn nested(open: &str, close: &str, depth: usize) -> String {
    format!("{}{}", open.repeat(depth), close.repeat(depth))
}

fn bodies() -> Vec<Case> {
    vec![
        case("truncated JSON is 400", post("/Patient", r#"{"resourceType":"Patient","#), Outcome(400)),
        case("JSON with unquoted names is 400", post("/Patient", "{resourceType: Patient}"), Outcome(400)),
        case("an empty body is 400", post("/Patient", ""), Outcome(400)),
        case("a body of only whitespace is 400", post("/Patient", " \r\n\t "), Outcome(400)),
        case("a JSON null body is 400", post("/Patient", "null"), Outcome(400)),
        case("a JSON array body is 400", post("/Patient", "[]"), Outcome(400)),
        case("a JSON string body is 400", post("/Patient", r#""Patient""#), Outcome(400)),
        case("a JSON number body is 400", post("/Patient", "1e400"), Outcome(400)),
        case("garbage after the JSON is 400", post("/Patient", patient(r#""active":true} x"#)), Outcome(400)),
        case("two JSON documents back to back are 400", post("/Patient", "{\"resourceType\":\"Patient\"}{}"), Outcome(400)),
        case("invalid UTF-8 inside a string is 400", post("/Patient", b"{\"resourceType\":\"Patient\",\"gender\":\"m\xffle\"}".to_vec()), Outcome(400)),
        case("an overlong UTF-8 encoding is 400", post("/Patient", b"{\"resourceType\":\"Patient\",\"gender\":\"\xc0\xaf\"}".to_vec()), Outcome(400)),
        case("a lone surrogate escape is 400", post("/Patient", patient(r#""name":[{"family":"\ud800"}]"#)), Outcome(400)),
        case("a UTF-16 body is 400", post("/Patient", b"\xff\xfe{\0}\0".to_vec()), Outcome(400)),
        case("a NUL byte between tokens is 400", post("/Patient", b"{\"resourceType\":\0\"Patient\"}".to_vec()), Outcome(400)),
        case("an escaped NUL in a string is 400", post("/Patient", patient(r#""name":[{"family":"a\u0000b"}]"#)), Outcome(400)),
        case("arrays nested 10,000 deep are 400", post("/Patient", nested("[", "]", 10_000)), Outcome(400)),
        case("objects nested 10,000 deep are 400", post("/Patient", format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000))), Outcome(400)),
        case("a resource nested 100 deep in extensions is 400", post("/Patient", patient(&format!(r#""extension":{}"#, nested(r#"[{"url":"urn:x","extension":"#, "}]", 100).replace("\"extension\":}]", "\"valueString\":\"x\"}]")))), Outcome(400)),
        case("10,000 nested arrays in a Bundle entry are 400", post("/", format!(r#"{{"resourceType":"Bundle","type":"batch","entry":{}}}"#, nested("[", "]", 10_000))), Outcome(400)),
        // Refused before parsing: 300,000 values are charged more than the test's whole body
        // budget (twice its 4 MiB bodies) at 32 bytes a value.
        case("an array of 300,000 numbers is 413", post("/Patient", patient(&format!(r#""foo":[{}1]"#, "1,".repeat(299_999)))), Outcome(413)),
        case("120,000 identifiers (240,000 values) are refused before the model is built", post("/Patient", patient(&format!(r#""identifier":[{}{{"value":"x"}}]"#, r#"{"value":"x"},"#.repeat(119_999)))), Outcome(400)),
        case("a body over HL7BRIDGE_MAX_BODY_BYTES is 413", post("/Patient", patient(&format!(r#""foo":"{}""#, "x".repeat(MAX_BODY_BYTES)))), Outcome(413)),
        case("a Bundle over HL7BRIDGE_MAX_BODY_BYTES is 413", post("/", vec![b' '; MAX_BODY_BYTES + 1]), Outcome(413)),
        case("duplicate keys are 400 rather than one value silently dropped", post("/Patient", patient(r#""gender":"male","gender":"female""#)), Outcome(400)),
        case("a duplicate resourceType key is 400", post("/Patient", r#"{"resourceType":"Patient","resourceType":"Observation"}"#), Outcome(400)),
        case("duplicate keys deep inside are 400", post("/Patient", patient(r#""name":[{"family":"A","family":"B"}]"#)), Outcome(400)),
        case("a null element is 400", post("/Patient", patient(r#""gender":null"#)), Outcome(400)),
        case("a null inside a plain array is 400", post("/Patient", patient(r#""name":[null]"#)), Outcome(400)),
        case("a null resourceType is 400", post("/Patient", r#"{"resourceType":null}"#), Outcome(400)),
        case("an empty array is 400", post("/Patient", patient(r#""name":[]"#)), Outcome(400)),
        case("an empty object is 400", post("/Patient", patient(r#""name":[{}]"#)), Outcome(400)),
        case("an empty meta is 400", post("/Patient", patient(r#""meta":{}"#)), Outcome(400)),
        case("an empty string is 400", post("/Patient", patient(r#""gender":"""#)), Outcome(400)),
        case("a gender outside its required value set is 400", post("/Patient", patient(r#""gender":"bogus""#)), Outcome(400)),
        case("a code of the right set in the wrong case is 400", post("/Patient", patient(r#""gender":"Male""#)), Outcome(400)),
        case("a HumanName use outside its value set is 400", post("/Patient", patient(r#""name":[{"use":"home","family":"Q"}]"#)), Outcome(400)),
        case("a ContactPoint system outside its value set is 400", post("/Patient", patient(r#""telecom":[{"system":"telex","value":"1"}]"#)), Outcome(400)),
        case("an Observation status outside its value set is 400", post("/Observation", r#"{"resourceType":"Observation","status":"done","code":{"text":"x"}}"#), Outcome(400)),
        case("an empty resource body object is 400", post("/Patient", "{}"), Outcome(400)),
        case("a primitive extension that is a string is 400", post("/Patient", patient(r#""gender":"male","_gender":"x""#)), Outcome(400)),
        case("a primitive extension array beside a single value is 400", post("/Patient", patient(r#""birthDate":"1980-01-01","_birthDate":[{"id":"a"}]"#)), Outcome(400)),
        case("a primitive extension array of the wrong length is 400", post("/Patient", patient(r#""name":[{"given":["A","B"],"_given":[{"id":"x"}]}]"#)), Outcome(400)),
        case(
            "an extension on a complex element's name is 400",
            post("/Patient", patient(r#""_name":{"id":"x"}"#)),
            Outcome(400),
        ),
        case(
            "an object where an array goes is 400",
            post("/Patient", patient(r#""name":{"family":"A"}"#)),
            Outcome(400),
        ),
        case(
            "an integer written as a string is 400",
            post("/Patient", patient(r#""multipleBirthInteger":"2""#)),
            Outcome(400),
        ),
        case(
            "a decimal written as a string is 400",
            post(
                "/Observation",
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":"12"}}"#,
            ),
            Outcome(400),
        ),
        case("an unknown element is 400", post("/Patient", patient(r#""favouriteColour":"blue""#)), Outcome(400)),
        case("a number where a code goes is 400", post("/Patient", patient(r#""gender":7"#)), Outcome(400)),
        case("a string where a boolean goes is 400", post("/Patient", patient(r#""active":"yes""#)), Outcome(400)),
        case("an unknown choice type suffix is 400", post("/Patient", patient(r#""deceasedString":"yes""#)), Outcome(400)),
        case("two choices of one element are 400", post("/Patient", patient(r#""deceasedBoolean":true,"deceasedDateTime":"2020-01-01""#)), Outcome(400)),
        case("an integer of 1e400 is 400", post("/Patient", patient(r#""multipleBirthInteger":1e400"#)), Outcome(400)),
        case("an integer above 2^31-1 is 400", post("/Patient", patient(r#""multipleBirthInteger":2147483648"#)), Outcome(400)),
        case("an integer of twenty-five digits is 400", post("/Patient", patient(r#""multipleBirthInteger":9999999999999999999999999"#)), Outcome(400)),
        case("a fractional integer is 400", post("/Patient", patient(r#""multipleBirthInteger":1.5"#)), Outcome(400)),
        case("an integer of -0 is accepted: the integer grammar allows it", post("/Patient", patient(r#""multipleBirthInteger":-0"#)), Success(201)),
        case("an unsignedInt of -1 is 400", post("/Patient", patient(r#""photo":[{"contentType":"image/png","size":-1}]"#)), Outcome(400)),
        case("an unsignedInt above 2^31-1 is 400", post("/Patient", patient(r#""photo":[{"contentType":"image/png","size":4294967296}]"#)), Outcome(400)),
        case("a positiveInt of 1e400 is 400", post("/Immunization", r#"{"resourceType":"Immunization","status":"completed","vaccineCode":{"text":"x"},"patient":{"reference":"Patient/bi-p1"},"occurrenceString":"x","protocolApplied":[{"doseNumberPositiveInt":1e400}]}"#), Outcome(400)),
        case("a decimal of 1e400 is 400: beyond a double, no client could read it back", post("/Observation", r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e400}}"#), Outcome(400)),
        case("a decimal of 1e300 is accepted: the decimal grammar allows exponents and the text is kept", post("/Observation", r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e300}}"#), Success(201)),
        case("a decimal of -0 is accepted: the decimal grammar allows it", post("/Observation", r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":-0}}"#), Success(201)),
        case("a boolean of 1 is 400", post("/Patient", patient(r#""active":1"#)), Outcome(400)),
        case("a resource missing a required element is 400", post("/Observation", r#"{"resourceType":"Observation","code":{"text":"x"}}"#), Outcome(400)),
    ]
}

fn types_and_ids() -> Vec<Case> {
    let long_id = "a".repeat(65);
    vec![
        case(
            "a body of another type than the URL is 400",
            post(
                "/Patient",
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#,
            ),
            Outcome(400),
        ),
        case(
            "a PUT body of another type than the URL is 400",
            put(
                "/Patient/bi-x1",
                r#"{"resourceType":"Observation","id":"bi-x1","status":"final","code":{"text":"x"}}"#,
            ),
            Outcome(400),
        ),
        case(
            "a lower-case resourceType is 400",
            post("/Patient", r#"{"resourceType":"patient"}"#),
            Outcome(400),
        ),
        case(
            "an unknown resourceType in the body is 400",
            post("/Patient", r#"{"resourceType":"Patients"}"#),
            Outcome(400),
        ),
        case(
            "a numeric resourceType is 400",
            post("/Patient", r#"{"resourceType":7}"#),
            Outcome(400),
        ),
        case(
            "a missing resourceType is 400",
            post("/Patient", r#"{"gender":"male"}"#),
            Outcome(400),
        ),
        case(
            "a missing resourceType on a PUT is 400",
            put("/Patient/bi-x2", r#"{"id":"bi-x2"}"#),
            Outcome(400),
        ),
        case(
            "a create of an unknown type is 404",
            post("/Foo", r#"{"resourceType":"Foo"}"#),
            Outcome(404),
        ),
        case(
            "a search of an unknown type is 404",
            get("/Foo?name=x"),
            Outcome(404),
        ),
        case(
            "a read of an unknown type is 404",
            get("/Foo/1"),
            Outcome(404),
        ),
        case(
            "a create of an R5-only type is 404",
            post("/Ingredient", r#"{"resourceType":"Ingredient"}"#),
            Outcome(404),
        ),
        case(
            "a PUT to an id of 65 characters is 400",
            put(
                format!("/Patient/{long_id}"),
                patient(&format!(r#""id":"{long_id}""#)),
            ),
            Outcome(400),
        ),
        case(
            "a read of an id of 65 characters is 404",
            get(format!("/Patient/{long_id}")),
            Outcome(404),
        ),
        case(
            "a PUT to an id with an encoded slash is 400",
            put("/Patient/a%2Fb", patient(r#""id":"a/b""#)),
            Outcome(400),
        ),
        case(
            "a PUT to an id with an encoded space is 400",
            put("/Patient/a%20b", patient(r#""id":"a b""#)),
            Outcome(400),
        ),
        case(
            "a PUT to a unicode id is 400",
            put("/Patient/%C3%A9t%C3%A9", patient(r#""id":"été""#)),
            Outcome(400),
        ),
        case(
            "a PUT to an id of two dots is 400",
            put("/Patient/..", patient(r#""id":"..""#)),
            Outcome(400),
        ),
        case(
            "a PUT to an id with an encoded NUL is 400",
            put("/Patient/a%00", patient(r#""active":true"#)),
            Outcome(400),
        ),
        case(
            "a PUT to an id with invalid percent-encoded UTF-8 is 400",
            put("/Patient/%FF", patient(r#""active":true"#)),
            Outcome(400),
        ),
        case(
            "a PUT with no id segment is 405",
            put("/Patient/", patient(r#""active":true"#)),
            Outcome(405),
        ),
        case(
            "a PUT whose body id differs from the URL is 400",
            put("/Patient/bi-x3", patient(r#""id":"bi-other""#)),
            Outcome(400),
        ),
        case(
            "a PUT whose body id breaks the grammar is 400",
            put("/Patient/bi-x4", patient(r#""id":"bi x4""#)),
            Outcome(400),
        ),
        case(
            "a PUT whose body id is a number is 400",
            put("/Patient/bi-x5", patient(r#""id":5"#)),
            Outcome(400),
        ),
        case(
            "a create whose body id breaks the grammar is accepted: FHIR has a create ignore the id",
            post("/Patient", patient(r#""id":"../../etc""#)),
            Success(201),
        ),
        case(
            "a read of an SQL injection id is 404: it cannot name a resource",
            get("/Patient/'%20OR%201=1%20--"),
            Outcome(404),
        ),
        case(
            "a read of an id with an encoded NUL is 404",
            get("/Patient/bi-p1%00"),
            Outcome(404),
        ),
        case(
            "a read of invalid percent-encoded UTF-8 is 404",
            get("/Patient/%C0%AF"),
            Outcome(404),
        ),
        case(
            "a read of an id that does not exist is 404",
            get("/Patient/bi-nobody"),
            Outcome(404),
        ),
        case(
            "a DELETE of an SQL injection id is 400",
            Req::new("DELETE", "/Patient/1;DROP%20TABLE%20resources"),
            Outcome(400),
        ),
        case(
            "a vread of a version that is not a number is 404",
            get("/Patient/bi-p1/_history/one"),
            Outcome(404),
        ),
        case(
            "a vread of version -1 is 404",
            get("/Patient/bi-p1/_history/-1"),
            Outcome(404),
        ),
        case(
            "a vread of a version past i64 is 404",
            get("/Patient/bi-p1/_history/99999999999999999999"),
            Outcome(404),
        ),
        case(
            "a path with raw invalid UTF-8 bytes cannot be read as HTTP: 400",
            get(b"/Patient/\xff\xfe".to_vec()),
            Http(400),
        ),
        case(
            "a path of dot segments is 404",
            get("/Patient/../../../etc/passwd"),
            Outcome(404),
        ),
    ]
}

fn references() -> Vec<Case> {
    let unknown_uuid = "urn:uuid:9b0f4a8e-0000-4000-8000-00000000dead";
    vec![
        case("a reference of a type and no id is 400", post("/Observation", observation_about("Patient/")), Outcome(400)),
        case("a reference that starts with // is 400", post("/Observation", observation_about("//x")), Outcome(400)),
        case("a reference with a dot segment is 400", post("/Observation", observation_about("Patient/../x")), Outcome(400)),
        case("a reference to an unknown type is 400", post("/Observation", observation_about("Foo/1")), Outcome(400)),
        case("a reference with an id that breaks the grammar is 400", post("/Observation", observation_about("Patient/a b")), Outcome(400)),
        case("a reference of three segments is 400", post("/Observation", observation_about("Patient/1/2")), Outcome(400)),
        case("a reference to a version that is not an id is 400", post("/Observation", observation_about("Patient/1/_history/a b")), Outcome(400)),
        case("a urn:uuid reference that names no entry is 400", post("/Observation", observation_about(unknown_uuid)), Outcome(400)),
        case("a contained reference with no contained resource is 400", post("/Observation", observation_about("#p1")), Outcome(400)),
        case("a bare # on the container itself is 400", post("/Observation", observation_about("#")), Outcome(400)),
        case("a conditional reference that matches nothing is 400", post("/Observation", observation_about("Patient?identifier=urn:bad|NOBODY")), Outcome(400)),
        case("a conditional reference to an unknown type is 400", post("/Observation", observation_about("Foo?identifier=x")), Outcome(400)),
        case("a conditional reference on a parameter other than identifier is 400", post("/Observation", observation_about("Patient?name=x")), Outcome(400)),
        case("a conditional reference matching two patients is 412", post("/Observation", observation_about("Patient?identifier=urn:bad|DUP")), Outcome(412)),
        case("an absolute reference to another server is accepted: FHIR allows it and it is kept as written", post("/Observation", observation_about("https://elsewhere.example/fhir/Patient/1")), Success(201)),
        case("a reference to a patient not stored is accepted: integrity of plain references is not checked (README)", post("/Observation", observation_about("Patient/bi-never-stored")), Success(201)),
        case("a contained reference that names a contained resource is accepted", post("/Observation", json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "contained": [{"resourceType": "Patient", "id": "p1"}], "subject": {"reference": "#p1"}}).to_string()), Success(201)),
        case("a reference that is a number is 400", post("/Observation", r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":7}}"#), Outcome(400)),
    ]
}

fn bundles() -> Vec<Case> {
    let bundle_of = |kind: &str| json!({"resourceType": "Bundle", "type": kind}).to_string();
    let entry =
        |request: Value| json!([{"resource": {"resourceType": "Patient"}, "request": request}]);
    vec![
        case("a collection Bundle posted to the base is 400", post("/", bundle_of("collection")), Outcome(400)),
        case("a document Bundle posted to the base is 400", post("/", bundle_of("document")), Outcome(400)),
        case("a searchset Bundle posted to the base is 400", post("/", bundle_of("searchset")), Outcome(400)),
        case("a message Bundle posted to the base is 400", post("/", bundle_of("message")), Outcome(400)),
        case("a transaction-response posted to the base is 400", post("/", bundle_of("transaction-response")), Outcome(400)),
        case("a Bundle without a type is 400", post("/", r#"{"resourceType":"Bundle"}"#), Outcome(400)),
        case("a Bundle whose type is a number is 400", post("/", r#"{"resourceType":"Bundle","type":1}"#), Outcome(400)),
        case("a Patient posted to the base is 400", post("/", patient(r#""active":true"#)), Outcome(400)),
        case("a Bundle whose entry is an object is 400", post("/", r#"{"resourceType":"Bundle","type":"transaction","entry":{}}"#), Outcome(400)),
        case("an entry without a request is 400", post("/", transaction(json!([{"resource": {"resourceType": "Patient"}}]))), Outcome(400)),
        case("an entry without a method is 400", post("/", transaction(entry(json!({"url": "Patient"})))), Outcome(400)),
        case("an entry with an invented method is 405", post("/", transaction(entry(json!({"method": "BREW", "url": "Patient"})))), Outcome(405)),
        case("a GET entry is 405 (not supported in Bundles)", post("/", transaction(entry(json!({"method": "GET", "url": "Patient"})))), Outcome(405)),
        case("an entry URL with a dot segment is 400", post("/", transaction(entry(json!({"method": "PUT", "url": "Patient/../x"})))), Outcome(400)),
        case("an entry URL of a type alone on a PUT is 400", post("/", transaction(entry(json!({"method": "PUT", "url": "Patient/"})))), Outcome(400)),
        case("an entry URL of an unknown type is 400", post("/", transaction(entry(json!({"method": "POST", "url": "Foo"})))), Outcome(400)),
        case("an entry URL that is an absolute URL elsewhere is 400", post("/", transaction(entry(json!({"method": "PUT", "url": "http://elsewhere.example/Patient/1"})))), Outcome(400)),
        case("an ifNoneExist with SQL in it matches nothing and creates: 200", post("/", transaction(entry(json!({"method": "POST", "url": "Patient", "ifNoneExist": "identifier=' OR 1=1 --"})))), Success(200)),
        case("an ifNoneExist that is not a string is 400", post("/", transaction(entry(json!({"method": "POST", "url": "Patient", "ifNoneExist": 1})))), Outcome(400)),
        case("an ifMatch of garbage is 400", post("/", transaction(entry(json!({"method": "PUT", "url": "Patient/bi-b1", "ifMatch": "garbage"})))), Outcome(400)),
        case("a urn:uuid reference to no entry fails the transaction with 400", post("/", transaction(json!([{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-00000000beef"}}, "request": {"method": "POST", "url": "Observation"}}]))), Outcome(400)),
        case("a transaction with one bad entry of two is 400 as a whole", post("/", transaction(json!([{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}, {"resource": {"resourceType": "Patient", "gender": 7}, "request": {"method": "POST", "url": "Patient"}}]))), Outcome(400)),
        case("a batch of only bad entries is answered 200 with an error per entry", post("/", json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "POST", "url": "Foo"}}, {}]}).to_string()), Success(200)),
        case("an entry whose resource is a string is 400", post("/", transaction(json!([{"resource": "Patient", "request": {"method": "POST", "url": "Patient"}}]))), Outcome(400)),
        case("an entry whose request is a string is 400", post("/", transaction(json!([{"resource": {"resourceType": "Patient"}, "request": "POST Patient"}]))), Outcome(400)),
    ]
}

fn search() -> Vec<Case> {
    let many_unknown: String = (0..3000).map(|i| format!("p{i}=1&")).collect();
    let many_names: String = (0..1000).map(|i| format!("name=n{i}&")).collect();
    let long_value = "x".repeat(6000);
    let chain = vec!["subject"; 2000].join(".");
    let many_alternatives = vec!["a"; 101].join(",");
    let many_includes: String = ["Patient", "Group", "Device", "Location", "Medication"]
        .iter()
        .chain(&["Substance", "Organization", "Procedure", "Practitioner"])
        .map(|target| format!("_include=Observation:subject:{target}&"))
        .collect();
    vec![
        case(
            "SQL in a name search matches nothing: 200, the value is only ever a bound parameter",
            get("/Patient?name='%20OR%201=1%20--"),
            Success(200),
        ),
        case(
            "SQL in an identifier search matches nothing: 200",
            get("/Patient?identifier=x'%3B%20DROP%20TABLE%20resources%3B%20--"),
            Success(200),
        ),
        case(
            "SQL in an _id search matches nothing: 200",
            get("/Patient?_id=1'%20OR%20'1'='1"),
            Success(200),
        ),
        case(
            "a LIKE wildcard in a name search is literal: 200",
            get("/Patient?name=%25"),
            Success(200),
        ),
        case(
            "an encoded NUL in a search value is 400",
            get("/Patient?name=a%00b"),
            Outcome(400),
        ),
        case(
            "an encoded CR LF in a search value is 400",
            get("/Patient?name=x%0D%0AX-Injected:%201"),
            Outcome(400),
        ),
        case(
            "an encoded CR LF in a parameter name is 400",
            get("/Patient?na%0D%0Ame=x"),
            Outcome(400),
        ),
        case(
            "a raw CR LF in the request line cannot be read as HTTP: 400",
            get(b"/Patient?name=x\r\nX-Injected: 1".to_vec()),
            Http(400),
        ),
        case(
            "a malformed percent escape is 400",
            get("/Patient?name=%ZZ"),
            Outcome(400),
        ),
        case(
            "a truncated percent escape is 400",
            get("/Patient?name=%"),
            Outcome(400),
        ),
        case(
            "percent-encoded invalid UTF-8 is 400",
            get("/Patient?name=%FF%FE"),
            Outcome(400),
        ),
        case(
            "a search value of 6,000 characters matches nothing: 200",
            get(format!("/Patient?name={long_value}")),
            Success(200),
        ),
        case(
            "3,000 unknown parameters are ignored with a warning: 200 (lenient handling)",
            get(format!("/Patient?{many_unknown}")),
            Success(200),
        ),
        case(
            "3,000 unknown parameters under handling=strict are 400",
            get(format!("/Patient?{many_unknown}")).header("prefer", "handling=strict"),
            Outcome(400),
        ),
        case(
            "1,000 name criteria are 400",
            get(format!("/Patient?{many_names}")),
            Outcome(400),
        ),
        case(
            "101 alternatives in one parameter are 400",
            get(format!("/Patient?name={many_alternatives}")),
            Outcome(400),
        ),
        case(
            "a repeated _count takes the last: 200",
            get("/Patient?_count=5&_count=10"),
            Success(200),
        ),
        case(
            "a negative _count is 400",
            get("/Patient?_count=-1"),
            Outcome(400),
        ),
        case(
            "a _count past u64 is 400",
            get("/Patient?_count=99999999999999999999999"),
            Outcome(400),
        ),
        case(
            "a _count in exponent form is 400",
            get("/Patient?_count=1e3"),
            Outcome(400),
        ),
        case(
            "an empty _count is 400",
            get("/Patient?_count="),
            Outcome(400),
        ),
        case(
            "a huge _count is capped at 1000: 200",
            get("/Patient?_count=1000000000"),
            Success(200),
        ),
        case(
            "_count=0 is a count-only answer: 200",
            get("/Patient?_count=0"),
            Success(200),
        ),
        case(
            "an unknown modifier on a string parameter is 400",
            get("/Patient?name:sounds-like=x"),
            Outcome(400),
        ),
        case(
            ":missing on a token parameter is 400 (not supported)",
            get("/Patient?gender:missing=true"),
            Outcome(400),
        ),
        case(
            "a modifier on identifier is 400",
            get("/Patient?identifier:of-type=a|b|c"),
            Outcome(400),
        ),
        case(
            "an empty modifier is 400",
            get("/Patient?name:=x"),
            Outcome(400),
        ),
        case(
            "_sort on an unknown field is 400",
            get("/Patient?_sort=favouriteColour"),
            Outcome(400),
        ),
        case(
            "_sort with SQL in it is 400",
            get("/Patient?_sort=id;DROP%20TABLE%20resources"),
            Outcome(400),
        ),
        case(
            "an unknown _total is 400",
            get("/Patient?_total=maybe"),
            Outcome(400),
        ),
        case(
            "an unknown _summary is 400",
            get("/Patient?_summary=everything"),
            Outcome(400),
        ),
        case(
            "_elements with a path is 400",
            get("/Patient?_elements=name.family"),
            Outcome(400),
        ),
        case(
            "a _cursor this server did not write is 400",
            get("/Patient?_cursor=garbage"),
            Outcome(400),
        ),
        case(
            "a _cursor with a time past i64 is 400",
            get("/Patient?_cursor=99999999999999999999999.x"),
            Outcome(400),
        ),
        case(
            "an _include of an invalid path is ignored with a warning: 200 (lenient handling)",
            get("/Observation?_include=Observation:nothing"),
            Success(200),
        ),
        case(
            "an _include of an invalid path under handling=strict is 400",
            get("/Observation?_include=Observation:nothing").header("prefer", "handling=strict"),
            Outcome(400),
        ),
        case(
            "_include=* is ignored with a warning: 200 (lenient handling)",
            get("/Observation?_include=*"),
            Success(200),
        ),
        case(
            "an _include naming a target type that is not a type is ignored: 200",
            get("/Observation?_include=Observation:subject:Nope"),
            Success(200),
        ),
        case(
            "more than eight _include parameters are 400",
            get(format!("/Observation?{many_includes}")),
            Outcome(400),
        ),
        case(
            "a chain on a reference parameter is 400 (refused, not ignored)",
            get("/Observation?subject.name=x"),
            Outcome(400),
        ),
        case(
            "a chain 2,000 deep is 400",
            get(format!("/Observation?{chain}=x")),
            Outcome(400),
        ),
        case(
            "_has is 400",
            get("/Patient?_has:Observation:patient:code=1"),
            Outcome(400),
        ),
        case(
            "a reference search of the wrong type is 400",
            get("/Observation?patient=Group/1"),
            Outcome(400),
        ),
        case(
            "an impossible date is 400",
            get("/Observation?date=2024-13-45"),
            Outcome(400),
        ),
        case(
            "a date prefix alone is 400",
            get("/Observation?date=gt"),
            Outcome(400),
        ),
        case(
            "a date with SQL in it is 400",
            get("/Observation?date=2024'%20OR%201=1"),
            Outcome(400),
        ),
        case(
            "a _lastUpdated that is not a date is 400",
            get("/Patient?_lastUpdated=yesterday"),
            Outcome(400),
        ),
        case(
            "a year past 9999 is 400",
            get("/Patient?birthdate=99999-01-01"),
            Outcome(400),
        ),
        case(
            "a POST _search with a JSON body is 415",
            Req::new("POST", "/Patient/_search").json("{}"),
            Outcome(415),
        ),
        case(
            "a POST _search with a form body of invalid UTF-8 is 400",
            Req::new("POST", "/Patient/_search")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(b"name=\xff".to_vec()),
            Outcome(400),
        ),
        case(
            "a history _count that is not a number is 400",
            get("/Patient/bi-p1/_history?_count=ten"),
            Outcome(400),
        ),
        case(
            "a history _since that is not an instant is 400",
            get("/Patient/bi-p1/_history?_since=soon"),
            Outcome(400),
        ),
        case(
            "a system history cursor this server did not write is 400",
            get("/_history?_cursor=x"),
            Outcome(400),
        ),
        case(
            "a type history _count past u32 is 400",
            get("/Patient/_history?_count=99999999999"),
            Outcome(400),
        ),
    ]
}

fn everything() -> Vec<Case> {
    vec![
        case(
            "$everything with a _since that is not an instant is 400",
            get("/Patient/bi-p1/$everything?_since=garbage"),
            Outcome(400),
        ),
        case(
            "$everything with an impossible start is 400",
            get("/Patient/bi-p1/$everything?start=2024-13"),
            Outcome(400),
        ),
        case(
            "$everything with an end that is not a date is 400",
            get("/Patient/bi-p1/$everything?end=tomorrow"),
            Outcome(400),
        ),
        case(
            "$everything with start after end is 400",
            get("/Patient/bi-p1/$everything?start=2025-01-01&end=2020-01-01"),
            Outcome(400),
        ),
        case(
            "$everything with a negative _count is 400",
            get("/Patient/bi-p1/$everything?_count=-5"),
            Outcome(400),
        ),
        case(
            "$everything with a _count past u64 is 400",
            get("/Patient/bi-p1/$everything?_count=184467440737095516160"),
            Outcome(400),
        ),
        case(
            "$everything with an unknown _type is 400",
            get("/Patient/bi-p1/$everything?_type=Foo"),
            Outcome(400),
        ),
        case(
            "$everything with a cursor this server did not write is 400",
            get("/Patient/bi-p1/$everything?_cursor=nodot"),
            Outcome(400),
        ),
        case(
            "$everything with a year 0 start is 400",
            get("/Patient/bi-p1/$everything?start=0000-01-01"),
            Outcome(400),
        ),
        case(
            "$everything of a patient not stored is 404",
            get("/Patient/bi-nobody/$everything"),
            Outcome(404),
        ),
        case(
            "$everything of an id that breaks the grammar is 404",
            get("/Patient/a%20b/$everything"),
            Outcome(404),
        ),
        case(
            "$everything on another type is 404 (instance-level Patient only)",
            get("/Observation/x/$everything"),
            Outcome(404),
        ),
        case(
            "$everything with a huge _count is capped: 200",
            get("/Patient/bi-p1/$everything?_count=99999999"),
            Success(200),
        ),
    ]
}

fn headers_and_methods() -> Vec<Case> {
    let big_header = "x".repeat(256 * 1024);
    let mut many_headers = get("/metadata");
    for _ in 0..200 {
        many_headers = many_headers.header("x-filler", "1");
    }
    vec![
        case("a text/plain body is 415", Req::new("POST", "/Patient").header("content-type", "text/plain").body(patient(r#""active":true"#)), Outcome(415)),
        case("a form body to create is 415", Req::new("POST", "/Patient").header("content-type", "application/x-www-form-urlencoded").body("a=1"), Outcome(415)),
        case("a multipart body is 415", Req::new("POST", "/Patient").header("content-type", "multipart/form-data; boundary=x").body("--x--"), Outcome(415)),
        case("a latin-1 charset is 415", Req::new("POST", "/Patient").header("content-type", "application/fhir+json; charset=iso-8859-1").body(patient(r#""active":true"#)), Outcome(415)),
        case("a UTF-16 charset is 415", Req::new("POST", "/Patient").header("content-type", "application/fhir+json; charset=utf-16").body(patient(r#""active":true"#)), Outcome(415)),
        case("a content type of invalid bytes is 415", Req::new("POST", "/Patient").header("content-type", b"application/\xff\xfe".to_vec()).body("{}"), Outcome(415)),
        case("a brotli body is 415", post("/Patient", patient(r#""active":true"#)).header("content-encoding", "br"), Outcome(415)),
        case("a JSON Patch content type on a create is 415", Req::new("POST", "/Patient").header("content-type", "application/json-patch+json").body("[]"), Outcome(415)),
        case("a PATCH with a FHIR JSON body is 415", Req::new("PATCH", "/Patient/bi-p1").json(patient(r#""active":true"#)), Outcome(415)),
        case("a PATCH that is not an array of operations is 400", Req::new("PATCH", "/Patient/bi-p1").header("content-type", "application/json-patch+json").body(r#"{"op":"add"}"#), Outcome(400)),
        case("a PATCH with an unknown op is 400", Req::new("PATCH", "/Patient/bi-p1").header("content-type", "application/json-patch+json").body(r#"[{"op":"explode","path":"/active"}]"#), Outcome(400)),
        case("a PATCH whose result is not a valid Patient is 422", Req::new("PATCH", "/Patient/bi-p1").header("content-type", "application/json-patch+json").body(r#"[{"op":"add","path":"/gender","value":7}]"#), Outcome(422)),
        case("a PATCH whose test fails is 422", Req::new("PATCH", "/Patient/bi-p1").header("content-type", "application/json-patch+json").body(r#"[{"op":"test","path":"/gender","value":"other"}]"#), Outcome(422)),
        case("a PATCH of a patient not stored is 404", Req::new("PATCH", "/Patient/bi-nobody").header("content-type", "application/json-patch+json").body("[]"), Outcome(404)),
        case("XML with a DOCTYPE is 400", Req::new("POST", "/Patient").header("content-type", "application/fhir+xml").body(r#"<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x "y">]><Patient xmlns="http://hl7.org/fhir"/>"#), Outcome(400)),
        case("XML that is not well-formed is 400", Req::new("POST", "/Patient").header("content-type", "application/fhir+xml").body("<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\">"), Outcome(400)),
        case("XML nested 10,000 deep is 400", Req::new("POST", "/Patient").header("content-type", "application/fhir+xml").body(format!("<Patient xmlns=\"http://hl7.org/fhir\">{}</Patient>", nested("<a>", "</a>", 10_000))), Outcome(400)),
        case("an Accept of text/html is 406", get("/metadata").header("accept", "text/html"), Outcome(406)),
        case("an Accept of invalid bytes is 406", get("/metadata").header("accept", b"\xff".to_vec()), Outcome(406)),
        case("a _format of pdf is 406", get("/metadata?_format=application/pdf"), Outcome(406)),
        case("an If-Match of garbage is 400", put("/Patient/bi-p1", patient(r#""id":"bi-p1""#)).header("if-match", "garbage"), Outcome(400)),
        case("an If-Match of version 0 is 400", put("/Patient/bi-p1", patient(r#""id":"bi-p1""#)).header("if-match", "W/\"0\""), Outcome(400)),
        case("an If-Match of a version past i64 is 400", put("/Patient/bi-p1", patient(r#""id":"bi-p1""#)).header("if-match", "W/\"99999999999999999999\""), Outcome(400)),
        case("an If-Match of invalid bytes is 400", put("/Patient/bi-p1", patient(r#""id":"bi-p1""#)).header("if-match", b"W/\"\xff\"".to_vec()), Outcome(400)),
        case("an If-Match of a version that is not current is 412", put("/Patient/bi-p1", patient(r#""id":"bi-p1""#)).header("if-match", "W/\"999\""), Outcome(412)),
        case("an If-None-Match with a version on an update is 405 (refused, not ignored)", put("/Patient/bi-p1", patient(r#""id":"bi-p1""#)).header("if-none-match", "W/\"1\""), Outcome(405)),
        case("an If-None-Exist naming a parameter Patient is not searchable by is 400 (ignored, it would widen the match)", post("/Patient", patient(r#""active":true"#)).header("if-none-exist", "nickname=x"), Outcome(400)),
        case("an If-None-Exist holding _count is 400: a condition holds criteria only", post("/Patient", patient(r#""active":true"#)).header("if-none-exist", "name=x&_count=1"), Outcome(400)),
        case("an If-None-Exist with an encoded NUL is 400", post("/Patient", patient(r#""active":true"#)).header("if-none-exist", "identifier=a%00"), Outcome(400)),
        case("an If-None-Exist matching two patients is 412", post("/Patient", patient(r#""active":true"#)).header("if-none-exist", "identifier=urn:bad|DUP"), Outcome(412)),
        case("a conditional delete matching two patients is 412", Req::new("DELETE", "/Patient?identifier=urn:bad|DUP"), Outcome(412)),
        case("a conditional delete without criteria is 400", Req::new("DELETE", "/Patient"), Outcome(400)),
        case("a conditional update on an unknown parameter is 400", put("/Patient?nickname=x", patient(r#""active":true"#)), Outcome(400)),
        case("a conditional update on a malformed date is 400", put("/Patient?birthdate=soon", patient(r#""active":true"#)), Outcome(400)),
        case("a birthDate that names no real day is 400", post("/Patient", patient(r#""birthDate":"1981-02-29""#)), Outcome(400)),
        case("a DELETE of /metadata is 404: no resource type has that name", Req::new("DELETE", "/metadata"), Outcome(404)),
        case("a PUT to the base is 405", put("/", "{}"), Outcome(405)),
        case("a POST to an instance is 404 (no handler for that path)", post("/Patient/bi-p1", patient(r#""active":true"#)), Outcome(404)),
        case("a TRACE is 405", Req::new("TRACE", "/Patient"), Outcome(405)),
        case("an invented method is 405", Req::new("BREW", "/Patient"), Outcome(405)),
        case("a header of 256 KiB cannot be read: 431 from the HTTP layer", get("/metadata").header("x-big", big_header), Http(431)),
        case("200 headers cannot be read: 431 from the HTTP layer", many_headers, Http(431)),
        case("a header value with a NUL cannot be read as HTTP: 400", get("/metadata").header("x-nul", b"a\0b".to_vec()), Http(400)),
        case("a garbage traceparent is ignored: the request is served, 200", get("/metadata").header("traceparent", "00-zz-zz-zz"), Success(200)),
        case("a Host header of garbage does not leak into the answer's URLs: 200", get("/Patient?_count=1").header("x-forwarded-host", "evil.example"), Success(200)),
    ]
}

/// KNOWN: fhirbolt checks no range of positiveInt or unsignedInt beyond what its integer
/// types hold, so a positiveInt of 0 is stored as sent. A fix checks those ranges by element
/// type, which only the model knows. Run by the ignored `known_fhir_gaps_are_refused` until
/// then.
pub fn known_gaps() -> Vec<Case> {
    vec![case(
        "a positiveInt of 0 is 400",
        post(
            "/Immunization",
            r#"{"resourceType":"Immunization","status":"completed","vaccineCode":{"text":"x"},"patient":{"reference":"Patient/bi-p1"},"occurrenceString":"x","protocolApplied":[{"doseNumberPositiveInt":0}]}"#,
        ),
        Outcome(400),
    )]
}

fn cases() -> Vec<Case> {
    let mut all = bodies();
    all.extend(types_and_ids());
    all.extend(references());
    all.extend(bundles());
    all.extend(search());
    all.extend(everything());
    all.extend(headers_and_methods());
    all
}

pub fn case_count() -> usize {
    cases().len()
}

/// What the server answered.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` on a connection of its own and reads the answer until the server closes.
/// The write half stays open until then: a half-closed client may lose its answer.
async fn exchange(app: &TestApp, request: &Req) -> Result<Answer, String> {
    let addr = app.base.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = stream.into_split();
    let wire = request.wire();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&wire).await;
        writer
    });
    let (received, closed) = read_until_closed(&mut reader, Duration::from_secs(30)).await;
    drop(writing.await);
    if !closed {
        return Err("no complete answer within 30 s".into());
    }
    parse_answer(&received)
}

fn parse_answer(received: &[u8]) -> Result<Answer, String> {
    let text_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(received)))?;
    let head = String::from_utf8_lossy(&received[..text_end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: received[text_end + 4..].to_vec(),
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        answer.body = dechunk(&answer.body);
    }
    Ok(answer)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        body = &body[line_end + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// Whether `answer` is of the class `expect` names; why not, otherwise.
fn judge(expect: Expect, answer: &Answer) -> Result<(), String> {
    if answer.status >= 500 {
        return Err(format!("a server error: {}", answer.status));
    }
    if answer.header("x-injected").is_some() {
        return Err("a header was injected into the answer".into());
    }
    let (Outcome(wanted) | Success(wanted) | Http(wanted)) = expect;
    if answer.status != wanted {
        let body = String::from_utf8_lossy(&answer.body);
        let shown: String = body.chars().take(300).collect();
        return Err(format!("status {}, not {wanted}: {shown}", answer.status));
    }
    if let Outcome(_) = expect {
        let content_type = answer.header("content-type").unwrap_or("");
        if !content_type.starts_with("application/fhir+json") {
            return Err(format!("content type {content_type:?}, not FHIR JSON"));
        }
        let outcome: Value =
            serde_json::from_slice(&answer.body).map_err(|_| "the body is not JSON".to_string())?;
        if outcome["resourceType"] != "OperationOutcome"
            || outcome["issue"][0]["severity"] != "error"
        {
            return Err(format!("not an error OperationOutcome: {outcome}"));
        }
    }
    Ok(())
}

/// Data some cases need: a patient to read, patch and page through, and two patients sharing
/// an identifier so that conditional operations on it are ambiguous.
async fn arrange(app: &TestApp) {
    let (status, _) = app
        .put_json(
            "/Patient/bi-p1",
            patient(r#""id":"bi-p1","gender":"female""#),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "the suite's patient: {status}"
    );
    for _ in 0..2 {
        let body = patient(r#""identifier":[{"system":"urn:bad","value":"DUP"}]"#);
        let response = app
            .client
            .post(format!("{}/Patient", app.base))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
}

pub async fn run(app: &TestApp) -> Vec<Mismatch> {
    run_cases(app, cases()).await
}

/// Runs `cases` against `app`, after arranging the data they need.
pub async fn run_cases(app: &TestApp, cases: Vec<Case>) -> Vec<Mismatch> {
    arrange(app).await;
    let mut mismatches = Vec::new();
    for case in cases {
        let verdict = match exchange(app, &case.request).await {
            Ok(answer) => judge(case.expect, &answer),
            Err(problem) => Err(problem),
        };
        if let Err(problem) = verdict {
            mismatches.push(Mismatch {
                door: "FHIR",
                case: case.name.to_string(),
                problem,
            });
        }
    }
    mismatches
}

/// A valid create still answers 201 and reads back.
pub async fn write_still_works(app: &TestApp, when: &str) {
    let body = patient(r#""name":[{"family":"Stillwell","given":["Vera"]}]"#);
    let response = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), 201, "a valid create {when}");
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let (status, _) = app.get_json(&format!("/Patient/{id}")).await;
    assert_eq!(status, 200, "the created patient reads back {when}");
}

/// Reads until the peer closes or `limit` passes; what arrived, and whether it closed.
async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}
