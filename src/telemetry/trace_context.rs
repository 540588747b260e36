//! The one validating parser for W3C Trace Context (Level 1) `traceparent` and `tracestate`,
//! used by every carrier before anything reaches the OpenTelemetry propagator — the SDK accepts
//! some malformed ids and silently rewrites them.
//!
//! Invalid input never fails a request or message: the caller starts a new trace and the
//! rejection is counted.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

const VERSION_00_LEN: usize = 55;
const MAX_TRACESTATE_MEMBERS: usize = 32;

static REJECTED: AtomicU64 = AtomicU64::new(0);

/// How many inbound trace contexts were malformed and replaced by a new trace.
pub fn rejected_count() -> u64 {
    REJECTED.load(Ordering::Relaxed)
}

/// A parsed, valid `traceparent`, with the `tracestate` that came with it when that was valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
    pub tracestate: Option<String>,
}

impl TraceParent {
    /// Parses a carrier's values. Returns `None` (and counts it) when a traceparent was given but
    /// is invalid; an invalid tracestate alone is dropped and the traceparent kept, as the
    /// specification asks.
    pub fn from_carrier(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let raw = traceparent?;
        let Some((trace_id, parent_id, flags)) = parse_traceparent(raw.trim()) else {
            REJECTED.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("malformed traceparent; starting a new trace");
            return None;
        };
        let tracestate = tracestate.map(str::trim).filter(|s| valid_tracestate(s));
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
            tracestate: tracestate.map(String::from),
        })
    }

    /// An OpenTelemetry context whose remote parent is this one.
    pub fn to_context(&self) -> Context {
        let state = self
            .tracestate
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let span_context = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            state,
        );
        Context::new().with_remote_span_context(span_context)
    }
}

/// The `traceparent` and `tracestate` values that describe `span_context`, for any outbound
/// carrier. `None` when the context is invalid (no tracing layer installed).
pub fn format_span_context(span_context: &SpanContext) -> Option<(String, Option<String>)> {
    if !span_context.is_valid() {
        return None;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    );
    let state = span_context.trace_state().header();
    Some((traceparent, (!state.is_empty()).then_some(state)))
}

fn parse_traceparent(s: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let version = hex_bytes::<1>(s.get(0..2)?)?[0];
    if version == 0xff || s.len() < VERSION_00_LEN {
        return None;
    }
    // Version 00 has exactly four fields; a later version may append fields after a dash.
    let exact = s.len() == VERSION_00_LEN;
    if !exact && (version == 0 || s.as_bytes()[VERSION_00_LEN] != b'-') {
        return None;
    }
    let b = s.as_bytes();
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = hex_bytes::<16>(&s[3..35])?;
    let parent_id = hex_bytes::<8>(&s[36..52])?;
    let flags = hex_bytes::<1>(&s[53..55])?[0];
    let nonzero = trace_id.iter().any(|&x| x != 0) && parent_id.iter().any(|&x| x != 0);
    nonzero.then_some((trace_id, parent_id, flags))
}

/// Lowercase hex only: the specification forbids upper case.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn valid_tracestate(s: &str) -> bool {
    let members: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    !members.is_empty()
        && members.len() <= MAX_TRACESTATE_MEMBERS
        && members.iter().all(|m| valid_member(m))
}

fn valid_member(member: &str) -> bool {
    let Some((key, value)) = member.split_once('=') else {
        return false;
    };
    valid_key(key) && valid_value(value)
}

fn valid_key(key: &str) -> bool {
    let (tenant, system) = match key.split_once('@') {
        Some((t, s)) => (t, Some(s)),
        None => (key, None),
    };
    let simple = |k: &str, max: usize, first_digit_ok: bool| {
        let mut chars = k.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || (first_digit_ok && c.is_ascii_digit()));
        first_ok
            && k.len() <= max
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '*' | '/'))
    };
    match system {
        None => simple(tenant, 256, false),
        Some(system) => simple(tenant, 241, true) && simple(system, 14, false),
    }
}

fn valid_value(value: &str) -> bool {
    (1..=256).contains(&value.len())
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_parsed() {
        let tp = TraceParent::from_carrier(Some(GOOD), Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(tp.flags, 1);
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(tp.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn malformed_traceparents_are_rejected_and_counted() {
        let before = rejected_count();
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with extra
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-011", // misplaced dash
            "garbage",
            "",
        ] {
            assert!(
                TraceParent::from_carrier(Some(bad), None).is_none(),
                "{bad}"
            );
        }
        assert!(rejected_count() >= before + 8);
    }

    #[test]
    fn a_future_version_keeps_the_first_four_fields() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceParent::from_carrier(Some(future), None).is_some());
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert!(TraceParent::from_carrier(Some(glued), None).is_none());
    }

    #[test]
    fn an_invalid_tracestate_is_dropped_but_the_parent_kept() {
        let tp = TraceParent::from_carrier(Some(GOOD), Some("UPPER=1")).unwrap();
        assert_eq!(tp.tracestate, None);
        let too_many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            TraceParent::from_carrier(Some(GOOD), Some(&too_many))
                .unwrap()
                .tracestate,
            None
        );
        let tenant = TraceParent::from_carrier(Some(GOOD), Some("1tenant@sys=v,a=b")).unwrap();
        assert!(tenant.tracestate.is_some());
    }

    #[test]
    fn a_context_round_trips_to_the_same_header() {
        let tp = TraceParent::from_carrier(Some(GOOD), None).unwrap();
        let cx = tp.to_context();
        let (header, state) = format_span_context(&cx.span().span_context().clone()).unwrap();
        assert_eq!(header, GOOD);
        assert_eq!(state, None);
    }
}
