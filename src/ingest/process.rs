//! The MLLP message handler: one frame in, its ACKs out, after the data is committed.

use bytes::Bytes;
use hl7bridge_mllp::{FrameMeta, MessageHandler};
use serde_json::Value;
use tracing::Instrument;

use super::map::{map_message, MapContext, MapError};
use super::v2::{
    build_ack, read_header, split_frame, AckCode, AckError, Header, Message, RawMessage,
    TraceCarrier,
};
use crate::config::Config;
use crate::store::{
    now_us, payload_hash, Hl7MessageRow, ResourceWrite, Store, WriteBatch, WriteOp,
};
use crate::telemetry::{continue_trace, span_traceparent, TraceParent};

/// Table 0357 codes the handler itself decides on.
const VALUE_TOO_LONG: u16 = 104;
const INTERNAL_ERROR: u16 = 207;
/// Map errors with these codes mean "not handled here": AR. Others are content errors: AE.
const REJECTING_CODES: &[u16] = &[200, 201, 202, 203];

pub struct Hl7Ingest {
    store: Store,
    map_context: MapContext,
}

/// What processing decided before anything is written.
enum Verdict {
    Accept(Vec<WriteOp>),
    Refuse(AckCode, AckError),
}

impl Hl7Ingest {
    pub fn new(store: Store, config: &Config) -> Hl7Ingest {
        let map_context = MapContext {
            default_utc_offset: config.default_utc_offset,
        };
        Hl7Ingest { store, map_context }
    }

    async fn process(&self, raw: &RawMessage, meta: FrameMeta) -> String {
        let header = raw.header();
        let parsed = raw.parse();
        let span = message_span(header);
        // The parent must be set before the span is first entered: once started, an
        // OpenTelemetry span cannot change its trace.
        if let Ok(message) = &parsed {
            continue_trace(&span, trace_parent(message).as_ref());
        }
        async {
            let verdict = match &parsed {
                Ok(message) => self.verdict(message),
                Err(err) => Verdict::Refuse(AckCode::AR, AckError::from(err)),
            };
            self.commit(raw.bytes(), header, verdict, meta).await
        }
        .instrument(span)
        .await
    }

    fn verdict(&self, message: &Message) -> Verdict {
        let mapped = match map_message(message, &self.map_context) {
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

    /// Writes the message (and its resources, when accepted) and returns the ACK to send.
    async fn commit(
        &self,
        bytes: &[u8],
        header: Option<&Header>,
        verdict: Verdict,
        meta: FrameMeta,
    ) -> String {
        let (code, errors, ops) = match verdict {
            Verdict::Accept(ops) => (AckCode::AA, Vec::new(), ops),
            Verdict::Refuse(code, error) => (code, vec![error], Vec::new()),
        };
        let ack = ack_for(header, code, &errors);
        let row = message_row(bytes, header, code, &ack, meta);
        let stored = self
            .store
            .write(WriteBatch {
                ops,
                hl7_messages: vec![row],
            })
            .await;
        match (stored, code) {
            (Ok(_), AckCode::AA) => finish(ack, code),
            (Ok(_), _) => {
                message_refused(header, code, &errors[0]);
                finish(ack, code)
            }
            (Err(err), AckCode::AA) => {
                tracing::warn!(error = %err, "storing an accepted message failed; answering AE");
                let error = AckError {
                    code: INTERNAL_ERROR,
                    location: None,
                    message: "the message could not be stored; resend it later".into(),
                };
                message_refused(header, AckCode::AE, &error);
                finish(ack_for(header, AckCode::AE, &[error]), AckCode::AE)
            }
            (Err(err), _) => {
                tracing::warn!(error = %err, "storing a refused message failed");
                message_refused(header, code, &errors[0]);
                finish(ack, code)
            }
        }
    }
}

impl MessageHandler for Hl7Ingest {
    async fn handle(&self, frame: Bytes, meta: FrameMeta) -> Vec<u8> {
        let messages = match split_frame(&frame) {
            Ok(split) => split.messages,
            Err(err) => {
                let header = read_header(&frame);
                let verdict = Verdict::Refuse(AckCode::AR, AckError::from(&err));
                return self
                    .commit(&frame, header.as_ref(), verdict, meta)
                    .await
                    .into_bytes();
            }
        };
        let mut acks = String::new();
        for message in &messages {
            acks.push_str(&self.process(message, meta).await);
        }
        acks.into_bytes()
    }

    async fn oversized(&self, prefix: Bytes, meta: FrameMeta) -> Option<Vec<u8>> {
        let header = read_header(&prefix);
        let error = AckError {
            code: VALUE_TOO_LONG,
            location: None,
            message: "the message is larger than this receiver accepts".into(),
        };
        let verdict = Verdict::Refuse(AckCode::AR, error);
        Some(
            self.commit(&prefix, header.as_ref(), verdict, meta)
                .await
                .into_bytes(),
        )
    }
}

fn message_span(header: Option<&Header>) -> tracing::Span {
    let field = |v: Option<&String>| v.cloned().unwrap_or_default();
    tracing::info_span!(
        "hl7.message",
        otel.name = "process HL7v2 message",
        otel.kind = "server",
        hl7bridge.message_code = %field(header.and_then(|h| h.message_code.as_ref())),
        hl7bridge.trigger_event = %field(header.and_then(|h| h.trigger_event.as_ref())),
        hl7bridge.control_id = %field(header.and_then(|h| h.control_id.as_ref())),
        hl7bridge.ack_code = tracing::field::Empty,
    )
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

/// Runs a mapped resource through the R4 model. A failure here is a mapping defect, not the
/// sender's fault, so it is logged for an operator (type only, no content).
fn checked_write(resource: Value) -> Result<ResourceWrite, AckError> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match hl7bridge_fhir_codec::canonicalize(resource) {
        Ok(content) => Ok(ResourceWrite {
            resource_type,
            id,
            content,
        }),
        Err(err) => {
            tracing::error!(%resource_type, error = %err, "a mapped resource failed R4 validation");
            Err(AckError {
                code: INTERNAL_ERROR,
                location: None,
                message: format!("the {resource_type} made from this message is not valid FHIR"),
            })
        }
    }
}

/// The ACK text, carrying the current span's trace context in a ZTR.
fn ack_for(header: Option<&Header>, code: AckCode, errors: &[AckError]) -> String {
    let trace =
        span_traceparent(&tracing::Span::current()).map(|(traceparent, tracestate)| TraceCarrier {
            traceparent,
            tracestate,
        });
    build_ack(
        header,
        code,
        errors,
        trace.as_ref(),
        &ack_control_id(),
        &hl7_now(),
    )
}

/// MessageRefused: an AE or AR went back. Logged at warn with what an operator needs to find
/// the feed and the fault — sender, control id, type, error code and location; the error text
/// is written never to hold patient data.
fn message_refused(header: Option<&Header>, code: AckCode, error: &AckError) {
    let value = |v: Option<&String>| v.cloned().unwrap_or_default();
    let location = error
        .location
        .as_ref()
        .map(|(segment, seq, field)| format!("{segment}[{seq}]-{field}"))
        .unwrap_or_default();
    tracing::warn!(
        ack_code = code.as_str(),
        error_code = error.code,
        error_location = %location,
        reason = %error.message,
        sending_application = %header.map(|h| h.sending_application.as_str()).unwrap_or(""),
        sending_facility = %header.map(|h| h.sending_facility.as_str()).unwrap_or(""),
        control_id = %value(header.and_then(|h| h.control_id.as_ref())),
        message_code = %value(header.and_then(|h| h.message_code.as_ref())),
        trigger_event = %value(header.and_then(|h| h.trigger_event.as_ref())),
        "HL7v2 message refused"
    );
}

fn finish(ack: String, code: AckCode) -> String {
    tracing::Span::current().record("hl7bridge.ack_code", code.as_str());
    tracing::debug!(ack_code = code.as_str(), "message answered");
    ack
}

fn message_row(
    bytes: &[u8],
    header: Option<&Header>,
    code: AckCode,
    ack: &str,
    meta: FrameMeta,
) -> Hl7MessageRow {
    let value = |v: Option<&String>| v.cloned().unwrap_or_default();
    let message_type = header.map_or(String::new(), |h| {
        format!(
            "{}^{}",
            value(h.message_code.as_ref()),
            value(h.trigger_event.as_ref())
        )
    });
    let trace_id = span_traceparent(&tracing::Span::current())
        .map(|(tp, _)| tp[3..35].to_string())
        .unwrap_or_default();
    Hl7MessageRow {
        id: uuid::Uuid::new_v4().to_string(),
        received_at_us: now_us(),
        peer: meta.peer.to_string(),
        sending_application: header
            .map(|h| h.sending_application.clone())
            .unwrap_or_default(),
        sending_facility: header
            .map(|h| h.sending_facility.clone())
            .unwrap_or_default(),
        control_id: value(header.and_then(|h| h.control_id.as_ref())),
        message_type,
        payload_hash: payload_hash(bytes),
        raw: bytes.to_vec(),
        ack_code: code.as_str().to_string(),
        ack: ack.to_string(),
        trace_id,
    }
}

/// A new MSH-10 for an ACK: 20 hex characters (80 random bits), within v2.5's 20-character
/// limit for the field.
fn ack_control_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..20].to_string()
}

fn hl7_now() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S+0000").to_string()
}
