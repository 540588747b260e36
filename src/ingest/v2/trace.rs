//! The W3C trace context an HL7v2 sender puts in a `ZTR` segment.
//!
//! Layout: `ZTR|traceparent^<value>~tracestate^<value>`: ZTR-1 repeats, each repetition a
//! key^value pair with HL7 escaping on the value. The values are returned as sent; validating
//! them is the trace-context parser's job.

use super::message::Message;

/// Repetitions of ZTR-1 read at most, so that a hostile segment cannot make us do much work.
pub const ZTR_MAX_REPETITIONS: usize = 16;

/// Raw `traceparent` and `tracestate` values from a `ZTR` segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCarrier {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl Message {
    /// The trace context of the last `ZTR` segment, when it holds a `traceparent`. The first
    /// `traceparent` wins; several `tracestate` values are joined with commas, as HTTP joins
    /// repeated headers.
    pub fn trace_carrier(&self) -> Option<TraceCarrier> {
        let ztr = self.segments_named("ZTR").last()?;
        let mut traceparent = None;
        let mut tracestate: Vec<String> = Vec::new();
        for repetition in ztr.field(1)?.repetitions().take(ZTR_MAX_REPETITIONS) {
            let (Some(key), Some(value)) = (repetition.component(1), repetition.component(2))
            else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "traceparent" if traceparent.is_none() => traceparent = Some(value),
                "tracestate" => tracestate.push(value),
                _ => {}
            }
        }
        let tracestate = Some(tracestate.join(",")).filter(|state| !state.is_empty());
        Some(TraceCarrier {
            traceparent: traceparent?,
            tracestate,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::ingest::v2::parse_message;

    const MSH: &str = "MSH|^~\\&|A|B|C|D|2024||ORU^R01|C1|P|2.5.1\rPID|1||M1\r";
    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn carrier(ztr: &str) -> Option<super::TraceCarrier> {
        parse_message(format!("{MSH}{ztr}").as_bytes())
            .unwrap()
            .trace_carrier()
    }

    #[test]
    fn traceparent_and_tracestate_are_read() {
        let c = carrier(&format!(
            "ZTR|traceparent^{PARENT}~tracestate^vendor=a\\S\\b"
        ))
        .unwrap();
        assert_eq!(c.traceparent, PARENT);
        assert_eq!(c.tracestate.as_deref(), Some("vendor=a^b"));
    }

    #[test]
    fn tracestate_is_optional_and_repeated_values_are_joined() {
        let c = carrier(&format!("ZTR|traceparent^{PARENT}")).unwrap();
        assert_eq!(c.tracestate, None);
        let c = carrier(&format!(
            "ZTR|tracestate^a=1~traceparent^{PARENT}~tracestate^b=2"
        ));
        assert_eq!(c.unwrap().tracestate.as_deref(), Some("a=1,b=2"));
    }

    #[test]
    fn no_traceparent_means_no_carrier() {
        assert_eq!(carrier("ZTR|tracestate^a=1"), None);
        assert_eq!(carrier("ZTR|"), None);
        assert_eq!(carrier("NTE|1"), None);
    }

    #[test]
    fn repetitions_past_the_limit_are_not_read() {
        let filler = "other^x~".repeat(super::ZTR_MAX_REPETITIONS);
        assert_eq!(carrier(&format!("ZTR|{filler}traceparent^{PARENT}")), None);
    }
}
