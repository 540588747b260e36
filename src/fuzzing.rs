//! Entry points for the fuzz targets in `fuzz/`: each untrusted-input path of the server, as
//! far as it goes without a database or a socket. Not an API; nothing else should call these.
//!
//! Each function runs the same code the server runs on that input and panics only where the
//! server itself would, or where an invariant the server relies on is broken (stated at each
//! `assert!`). What the inputs mean is up to the fuzzer: an `Err` is a normal answer.

use hl7bridge_fhir_codec::{canonicalize, json_to_xml};

use crate::fhir::handlers::{decode_pairs, parse_json, EverythingRequest};
use crate::fhir::search::SearchRequest;
use crate::ingest::map::MapContext;
use crate::ingest::v2::{build_ack, parse_message, read_header, split_frame, AckCode, AckError};
use crate::ingest::verdict::{decide, Verdict};
use crate::store::search::where_clause;

/// An MLLP payload through ingest up to the write: split into messages; each parsed, mapped to
/// FHIR and checked against the R4 model (`ingest::verdict::decide`, the deepest step that
/// needs no store: ownership checks and merges read stored resources); then the ACK the server
/// would send, which must itself be a readable HL7v2 message.
pub fn ingest_payload(payload: &[u8]) {
    let messages = match split_frame(payload) {
        Ok(frame) => frame.messages,
        Err(err) => {
            let header = read_header(payload);
            check_ack(header.as_ref(), AckCode::AR, &[AckError::from(&err)]);
            return;
        }
    };
    let context = MapContext::default();
    for raw in messages {
        let decision = decide(&raw, &context);
        if let Some(trace) = &decision.trace {
            let _ = trace.to_context();
        }
        match decision.verdict {
            Verdict::Accept(_) => check_ack(raw.header(), AckCode::AA, &[]),
            Verdict::Refuse(code, error) => check_ack(raw.header(), code, &[error]),
            Verdict::Retry(error) => check_ack(raw.header(), AckCode::AE, &[error]),
            Verdict::Silent => {}
        }
    }
}

fn check_ack(header: Option<&crate::ingest::v2::Header>, code: AckCode, errors: &[AckError]) {
    let ack = build_ack(header, code, errors, None, "ACK1", "20240101120000+0000");
    assert!(
        parse_message(ack.as_bytes()).is_ok(),
        "an ACK the server writes must parse as HL7v2"
    );
}

/// A search query string for `resource_type` read as `GET /{type}?…` reads it, then turned
/// into the SQL the store would run, whose placeholders must match its parameters.
pub fn search_query(resource_type: &str, query: &str) {
    let Ok(pairs) = decode_pairs(query) else {
        return;
    };
    let Ok(request) = SearchRequest::read(resource_type, pairs, crate::fhir::search_max_count())
    else {
        return;
    };
    let (mut sql, mut params) = (String::new(), Vec::new());
    where_clause(&mut sql, &mut params, resource_type, &request.criteria);
    assert_eq!(
        sql.matches('?').count(),
        params.len(),
        "every SQL placeholder has exactly one parameter"
    );
}

/// A `Patient/{id}/$everything` query string, read as the handler reads it.
pub fn everything_query(query: &str, unpaged_limit: u64) {
    if let Ok(pairs) = decode_pairs(query) {
        let _ = EverythingRequest::read(pairs, unpaged_limit, crate::fhir::search_max_count());
    }
}

/// A FHIR JSON request body as a write reads it: parsed (a byte-order mark skipped), then
/// checked into canonical form by the codec. What is accepted must come back unchanged when
/// checked again (the server re-reads what it stored), and must be writable as XML without a
/// panic (a client may ask for XML; an error there is a 406, not a defect).
pub fn fhir_json_body(bytes: &[u8]) {
    let Ok(value) = parse_json(bytes) else {
        return;
    };
    let Ok(canonical) = canonicalize(value) else {
        return;
    };
    assert_eq!(
        canonicalize(canonical.clone()).as_ref(),
        Ok(&canonical),
        "canonical form is a fixed point"
    );
    let _ = json_to_xml(canonical.to_string().as_bytes());
}
