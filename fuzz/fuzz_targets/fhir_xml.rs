//! A FHIR XML request body through the XML reader (`adapters/fhir-codec`, which
//! `src/fhir/negotiate.rs` and the body reader call): checked and converted to JSON, then
//! through the same canonical check as a JSON body. What is accepted must be writable as XML
//! again, as a client that posted XML will ask for it back.
#![no_main]

use hl7bridge_fhir_codec::{canonicalize, json_to_xml, xml_to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = xml_to_json(data) else {
        return;
    };
    let Ok(canonical) = canonicalize(json) else {
        return;
    };
    let _ = json_to_xml(canonical.to_string().as_bytes());
});
