//! Conformance resources this server defines and serves itself: the StructureDefinition of the
//! W3C trace context extension that every emitted Bundle carries in `meta` (DESIGN.md).

use serde_json::{json, Value};

use super::bundle::BundleTrace;

/// The StructureDefinition of `{canonical_base}/StructureDefinition/w3c-trace-context`: a
/// complex extension on `Meta` with `traceparent` (1..1 string) and `tracestate` (0..1 string).
pub fn trace_context_definition(canonical_base: &str) -> Value {
    let url = BundleTrace::extension_url(canonical_base);
    json!({
        "resourceType": "StructureDefinition",
        "id": "w3c-trace-context",
        "url": url,
        "name": "W3CTraceContext",
        "title": "W3C Trace Context",
        "status": "active",
        "description": "The W3C Trace Context (traceparent and tracestate) of the operation that produced this Bundle, so that one distributed trace can be followed through FHIR payloads.",
        "fhirVersion": "4.0.1",
        "kind": "complex-type",
        "abstract": false,
        "context": [{"type": "element", "expression": "Meta"}],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Extension", "path": "Extension", "short": "W3C Trace Context", "min": 0, "max": "1"},
            {"id": "Extension.extension:traceparent", "path": "Extension.extension",
                "sliceName": "traceparent", "min": 1, "max": "1"},
            {"id": "Extension.extension:traceparent.url", "path": "Extension.extension.url",
                "fixedUri": "traceparent"},
            {"id": "Extension.extension:traceparent.value[x]", "path": "Extension.extension.value[x]",
                "short": "version-traceid-parentid-flags", "min": 1, "type": [{"code": "string"}]},
            {"id": "Extension.extension:tracestate", "path": "Extension.extension",
                "sliceName": "tracestate", "min": 0, "max": "1"},
            {"id": "Extension.extension:tracestate.url", "path": "Extension.extension.url",
                "fixedUri": "tracestate"},
            {"id": "Extension.extension:tracestate.value[x]", "path": "Extension.extension.value[x]",
                "min": 1, "type": [{"code": "string"}]},
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": url},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "max": "0"}
        ]}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_context_definition_is_a_valid_r4_structure_definition() {
        let definition = trace_context_definition("https://x.test/fhir");
        let checked = hl7bridge_fhir_codec::canonicalize(definition).expect("valid R4");
        assert_eq!(
            checked["url"],
            "https://x.test/fhir/StructureDefinition/w3c-trace-context"
        );
    }
}
