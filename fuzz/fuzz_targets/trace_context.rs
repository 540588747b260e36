//! The W3C trace-context parser (`hl7bridge::telemetry::TraceParent`), as every carrier uses
//! it. A context it accepts must survive the trip through OpenTelemetry and back: written out
//! as the server writes outbound headers, it parses again to the same ids and flags.
//!
//! Input: the `traceparent` value, then optionally a newline and the `tracestate` value.
#![no_main]

use hl7bridge::telemetry::{format_span_context, TraceParent};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (traceparent, tracestate) = match text.split_once('\n') {
        Some((parent, state)) => (parent, Some(state)),
        None => (text, None),
    };
    let Some(parsed) = TraceParent::from_carrier(Some(traceparent), tracestate) else {
        return;
    };
    let context = parsed.to_context();
    let (parent_out, state_out) =
        format_span_context(&context.span().span_context()).expect("a parsed context is valid");
    let again = TraceParent::from_carrier(Some(&parent_out), state_out.as_deref())
        .expect("a traceparent the server writes parses");
    assert_eq!(
        (again.trace_id, again.parent_id, again.flags),
        (parsed.trace_id, parsed.parent_id, parsed.flags)
    );
});
