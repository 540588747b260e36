//! Deciding what to do with one message, before anything is written: parse, check the header,
//! map to FHIR and check every resource against the R4 model. Pure CPU work, run on the
//! blocking pool so that one large message does not stall other connections.

use hl7bridge_fhir_codec::CodecError;
use serde_json::Value;

use super::map::{map_message, MapContext, MapError};
use super::v2::{AckCode, AckError, Message, RawMessage};
use crate::store::{ResourceWrite, WriteOp};
use crate::telemetry::TraceParent;

const REQUIRED_FIELD_MISSING: u16 = 101;
const DATA_TYPE_ERROR: u16 = 102;
const INTERNAL_ERROR: u16 = 207;
/// Map errors with these codes mean "not handled here": AR. Others are content errors: AE.
const REJECTING_CODES: &[u16] = &[200, 201, 202, 203];

/// What to do with a message.
pub enum Verdict {
    Accept(Vec<WriteOp>),
    Refuse(AckCode, AckError),
    /// Store it, answer nothing: an acknowledgement is never acknowledged.
    Silent,
}

/// The verdict on `raw`, and the trace context its ZTR carried (when it parsed).
pub fn decide(raw: &RawMessage, context: &MapContext) -> (Verdict, Option<TraceParent>) {
    let message = match raw.parse() {
        Ok(message) => message,
        Err(err) => return (Verdict::Refuse(AckCode::AR, AckError::from(&err)), None),
    };
    let trace = trace_parent(&message);
    (decide_parsed(&message, context), trace)
}

fn decide_parsed(message: &Message, context: &MapContext) -> Verdict {
    let header = message.header();
    if header.message_code.as_deref() == Some("ACK") {
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
    Verdict::Accept(ops)
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
