//! The query string of `Patient/{id}/$everything`, read as the handler reads it (see
//! `hl7bridge::fuzzing::everything_query`), with the default unpaged limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

const EVERYTHING_MAX_UNPAGED: u64 = 1000;

fuzz_target!(|data: &[u8]| {
    if let Ok(query) = std::str::from_utf8(data) {
        hl7bridge::fuzzing::everything_query(query, EVERYTHING_MAX_UNPAGED);
    }
});
