//! Deciding what to do with one message, before anything is written: parse, check the header,
//! map to FHIR and check every resource against the R4 model. Pure CPU work, run on the
//! blocking pool so that one large message does not stall other connections.

use hl7bridge_fhir_codec::CodecError;
use serde_json::Value;

use super::map::{map_message, MapContext, MapError};
use super::v2::{AckCode, AckError, Message, RawMessage};
use crate::store::{Lane, Precondition, ResourceWrite, WriteOp};
use crate::telemetry::TraceParent;

const REQUIRED_FIELD_MISSING: u16 = 101;
const DATA_TYPE_ERROR: u16 = 102;
const INTERNAL_ERROR: u16 = 207;
const UNSUPPORTED_PROCESSING_ID: u16 = 202;
const UNSUPPORTED_VERSION: u16 = 203;
/// HL7 table 0103, processing id: production, debugging, training.
const PROCESSING_IDS: &[&str] = &["P", "D", "T"];
/// Map errors with these codes mean "not handled here": AR. Others are content errors: AE.
const REJECTING_CODES: &[u16] = &[200, 201, 202, 203];

/// What to do with a message.
pub enum Verdict {
    Accept(Accepted),
    Refuse(AckCode, AckError),
    /// It could not be processed now (reading the database failed): AE in original mode, CE
    /// in enhanced mode; the sender should send it again.
    Retry(AckError),
    /// Store it, answer nothing: an acknowledgement is never acknowledged.
    Silent,
}

/// The writes of an accepted message.
#[derive(Default)]
pub struct Accepted {
    pub ops: Vec<WriteOp>,
    /// Ids of the resources that amend their stored version (see `ingest::stored`).
    pub amended: Vec<String>,
    /// What the stored versions must still be for the merges made from them to stand.
    pub preconditions: Vec<(String, String, Precondition)>,
}

/// The verdict on a message, the trace context its ZTR carried, and its lane.
pub struct Decision {
    pub verdict: Verdict,
    pub trace: Option<TraceParent>,
    pub lane: Lane,
}

/// The decision on `raw` (a message that does not parse has no trace and goes routine).
pub fn decide(raw: &RawMessage, context: &MapContext) -> Decision {
    let message = match raw.parse() {
        Ok(message) => message,
        Err(err) => {
            return Decision {
                verdict: Verdict::Refuse(AckCode::AR, AckError::from(&err)),
                trace: None,
                lane: Lane::Normal,
            }
        }
    };
    Decision {
        trace: trace_parent(&message),
        lane: lane(&message),
        verdict: decide_parsed(&message, context),
    }
}

/// STAT (table 0027 `S`) anywhere an order's priority is carried: TQ1-9 (v2.5 and later),
/// OBR-27.6 and ORC-7.6 (quantity/timing, up to v2.4, still sent), and OBR-5 (v2.3's
/// priority field, which some analysers still fill). Everything else is routine.
fn lane(message: &Message) -> Lane {
    let stat = |value: Option<String>| value.is_some_and(|v| v.trim().eq_ignore_ascii_case("S"));
    let field_component = |segment: &str, field: usize, component: usize| {
        message.segments_named(segment).any(|s| {
            s.field(field)
                .is_some_and(|f| f.repetitions().any(|r| stat(r.component(component))))
        })
    };
    let is_stat = field_component("TQ1", 9, 1)
        || field_component("OBR", 27, 6)
        || field_component("ORC", 7, 6)
        || field_component("OBR", 5, 1);
    if is_stat {
        Lane::Stat
    } else {
        Lane::Normal
    }
}

fn decide_parsed(message: &Message, context: &MapContext) -> Verdict {
    let header = message.header();
    if header.is_acknowledgement() {
        return Verdict::Silent;
    }
    if header.control_id.as_deref().unwrap_or("").is_empty() {
        let error = AckError {
            code: REQUIRED_FIELD_MISSING,
            location: Some(("MSH".into(), 1, 10)),
            message: "MSH-10 (message control id) is required to acknowledge the message".into(),
        };
        return Verdict::Refuse(AckCode::AR, error);
    }
    if let Some(error) = version_error(header.version.as_deref()) {
        return Verdict::Refuse(AckCode::AR, error);
    }
    let component = header.delimiters.as_ref().map_or('^', |d| d.component);
    if let Some(error) = processing_id_error(header.processing_id.as_deref(), component) {
        return Verdict::Refuse(AckCode::AR, error);
    }
    let mapped = match map_message(message, context) {
        Ok(mapped) => mapped,
        Err(err) => return refuse_mapping(err),
    };
    let mut ops = Vec::with_capacity(mapped.resources.len());
    for resource in mapped.resources {
        match checked_write(resource) {
            Ok(write) => ops.push(WriteOp::Upsert(write)),
            Err(err) => return Verdict::Refuse(AckCode::AE, err),
        }
    }
    Verdict::Accept(Accepted {
        ops,
        amended: mapped.amended,
        preconditions: Vec::new(),
    })
}

/// MSH-12 must name an HL7 version 2 (`2.5.1`, or `2.5^…` with its components): the mappings
/// read v2 fields by position, which other versions do not keep.
fn version_error(version: Option<&str>) -> Option<AckError> {
    let id = version.map_or("", |v| v.split('^').next().unwrap_or(""));
    let (code, message) = if id.is_empty() {
        (
            REQUIRED_FIELD_MISSING,
            "MSH-12 (version id) is required".to_string(),
        )
    } else if is_v2_version(id) {
        return None;
    } else {
        (
            UNSUPPORTED_VERSION,
            format!("version {id:?} is not HL7 version 2"),
        )
    };
    Some(AckError {
        code,
        location: Some(("MSH".into(), 1, 12)),
        message,
    })
}

/// A published v2 release, 2.1 to 2.8.2, as senders write it: `2.n` or `2.n.n` (`2.3.1`, and
/// also `2.5.0`), surrounding spaces ignored. 2.9 and later, and anything else, are not.
fn is_v2_version(id: &str) -> bool {
    let numbers: Option<Vec<u32>> = id
        .trim()
        .split('.')
        .map(|part| {
            let digits = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| part.parse().ok()).flatten()
        })
        .collect();
    match numbers.as_deref() {
        Some([2, minor]) => (1..=8).contains(minor),
        Some([2, 8, patch]) => *patch <= 2,
        Some([2, minor, _]) => (1..=7).contains(minor),
        _ => false,
    }
}

/// MSH-11 (processing id, its first component) must be P, D or T when valued: a message
/// meant for another processing mode must not be taken as production data. An empty MSH-11,
/// which the standard requires but some senders leave out, is taken as P (the ACK says so).
fn processing_id_error(processing_id: Option<&str>, component: char) -> Option<AckError> {
    let id = processing_id?.split(component).next().unwrap_or("").trim();
    if id.is_empty() || PROCESSING_IDS.contains(&id) {
        return None;
    }
    Some(AckError {
        code: UNSUPPORTED_PROCESSING_ID,
        location: Some(("MSH".into(), 1, 11)),
        message: format!("processing id {id:?} is not P, D or T (HL7 table 0103)"),
    })
}

fn trace_parent(message: &Message) -> Option<TraceParent> {
    let carrier = message.trace_carrier()?;
    TraceParent::from_carrier(Some(&carrier.traceparent), carrier.tracestate.as_deref())
}

fn refuse_mapping(err: MapError) -> Verdict {
    let code = if REJECTING_CODES.contains(&err.code) {
        AckCode::AR
    } else {
        AckCode::AE
    };
    Verdict::Refuse(code, err.into())
}

/// Runs a mapped resource through the R4 model. A structural failure (a control character in a
/// value, say) is the sender's content: AE. A model failure is a mapping defect: AE too, but
/// logged for an operator, with the resource type only (fhirbolt's text can quote values).
fn checked_write(resource: Value) -> Result<ResourceWrite, AckError> {
    let text = |key: &str| {
        resource
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (resource_type, id) = (text("resourceType"), text("id"));
    match hl7bridge_fhir_codec::canonicalize(resource) {
        Ok(content) => Ok(ResourceWrite {
            resource_type,
            id,
            content,
        }),
        Err(CodecError::Structure { path, message }) => Err(AckError {
            code: DATA_TYPE_ERROR,
            location: None,
            message: format!("{path}: {message}"),
        }),
        Err(CodecError::Model(_) | CodecError::Xml(_)) => {
            tracing::error!(%resource_type, "a mapped resource failed R4 validation (mapping defect)");
            Err(AckError {
                code: INTERNAL_ERROR,
                location: None,
                message: format!("the {resource_type} made from this message is not valid FHIR"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::v2::parse_message;

    fn lane_of(segments: &str) -> Lane {
        let text = format!("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5.1\r{segments}");
        lane(&parse_message(text.as_bytes()).expect("the message parses"))
    }

    #[test]
    fn stat_is_read_from_every_field_that_carries_an_order_priority() {
        assert_eq!(lane_of("TQ1|1||||||||S\r"), Lane::Stat);
        assert_eq!(lane_of("ORC|RE||||||^^^^^S\r"), Lane::Stat);
        assert_eq!(
            lane_of(&format!("OBR|1{}|^^^^^S\r", "|".repeat(25))),
            Lane::Stat
        );
        assert_eq!(lane_of("OBR|1||||S\r"), Lane::Stat);
        assert_eq!(lane_of("OBR|1||||s\r"), Lane::Stat, "case does not matter");
    }

    #[test]
    fn versions_2_1_to_2_8_2_are_v2_and_others_are_not() {
        for id in [
            "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.5.0", "2.6", "2.7",
        ] {
            assert!(is_v2_version(id), "{id}");
        }
        for id in ["2.7.1", "2.8", "2.8.1", "2.8.2", " 2.5.1 "] {
            assert!(is_v2_version(id), "{id}");
        }
        for id in [
            "9.9", "2.9", "2.8.3", "2.0", "2", "3.0", "2.5.1.1", "2.", "2.x", "V2.5",
        ] {
            assert!(!is_v2_version(id), "{id}");
        }
    }

    #[test]
    fn a_version_outside_v2_is_refused_at_msh_12_with_203() {
        let error = version_error(Some("9.9")).expect("refused");
        assert_eq!(error.code, 203);
        assert_eq!(error.location, Some(("MSH".into(), 1, 12)));
        assert_eq!(version_error(Some("2.5^FRA^2.5")), None);
        assert_eq!(version_error(None).map(|e| e.code), Some(101));
    }

    #[test]
    fn processing_ids_other_than_p_d_or_t_are_refused_at_msh_11_with_202() {
        for id in ["P", "D", "T", "P^T", "T^A", " P "] {
            assert_eq!(processing_id_error(Some(id), '^'), None, "{id}");
        }
        assert_eq!(processing_id_error(None, '^'), None, "empty is taken as P");
        for id in ["X", "p", "PR"] {
            let error = processing_id_error(Some(id), '^');
            assert_eq!(error.as_ref().map(|e| e.code), Some(202), "{id}");
            assert_eq!(error.unwrap().location, Some(("MSH".into(), 1, 11)));
        }
    }

    #[test]
    fn everything_else_is_routine() {
        assert_eq!(lane_of("OBR|1||||R\r"), Lane::Normal);
        assert_eq!(lane_of("TQ1|1||||||||A\r"), Lane::Normal);
        assert_eq!(
            lane_of("OBX|1|ST|X||S\r"),
            Lane::Normal,
            "an OBX value is not a priority"
        );
        assert_eq!(lane_of(""), Lane::Normal);
    }
}
