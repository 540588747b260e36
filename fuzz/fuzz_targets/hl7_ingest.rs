//! One MLLP payload through HL7v2 ingest as far as it goes without a store: split into
//! messages, each parsed, mapped to FHIR and checked against the R4 model, and the ACK written
//! (see `hl7bridge::fuzzing::ingest_payload`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hl7bridge::fuzzing::ingest_payload(data);
});
