//! A FHIR search as `GET /{type}?{query}` reads it: the query decoded, read into criteria and
//! paging for the type, then written as the store's SQL (see `hl7bridge::fuzzing::search_query`).
//!
//! Input: `{type}?{query}`, UTF-8; without a `?`, the whole input is a Patient query.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (resource_type, query) = text.split_once('?').unwrap_or(("Patient", text));
    hl7bridge::fuzzing::search_query(resource_type, query);
});
