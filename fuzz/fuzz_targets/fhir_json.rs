//! A FHIR JSON request body through the reader every write uses: JSON parsed, checked against
//! the R4 model into canonical form (`adapters/fhir-codec`), and written back as XML (see
//! `hl7bridge::fuzzing::fhir_json_body`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hl7bridge::fuzzing::fhir_json_body(data);
});
