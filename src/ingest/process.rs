//! HL7v2 ingest: one payload in (an MLLP frame or a Kafka record), its ACKs out, after the data
//! is committed. Which ACKs a message gets is its sender's choice (MSH-15 / MSH-16, see
//! [`AckMode`]); an inbound ACK gets none.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hl7bridge_mllp::{FrameMeta, MessageHandler, PeerIdentity};
use tracing::Instrument;

use super::map::MapContext;
use super::memory::{MemoryBudget, RESERVE_KIB, SMALL_KIB};
use super::ownership::{foreign_owner, OwnerLocks};
use super::provenance::message_provenance;
use super::rate::PeerRate;
use super::senders::SenderMap;
use super::stored::{merge_with_stored, MergeError};
use super::v2::{
    build_ack, due_under, read_header, split_frame_with, split_stored_acks, AckCode, AckError,
    AckMode, CharsetRules, Header, RawMessage, TraceCarrier,
};
use super::verdict::{decide, Accepted, Decision, Verdict};
use crate::audit::{AuditRecord, AuditTrail, Door};
use crate::config::Config;
use crate::store::{now_us, payload_hash, Hl7MessageRow, Lane, Store, WriteBatch};
use crate::telemetry::metrics::metrics;
use crate::telemetry::LogRate;
use crate::telemetry::{continue_trace, link_payload_context, span_traceparent, TraceParent};

/// Table 0357 codes the handler itself decides on.
const SEGMENT_SEQUENCE_ERROR: u16 = 100;
const VALUE_TOO_LONG: u16 = 104;
const INTERNAL_ERROR: u16 = 207;
/// Messages in one frame at most. Each is its own transaction and ACK; a frame of millions of
/// tiny messages would hold its connection for hours.
pub const MAX_MESSAGES_PER_FRAME: usize = 5000;

/// Where a payload came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Stored with each message: the peer address, or the topic, partition and offset.
    pub peer: String,
    /// The transport's trace context (Kafka record headers). It becomes each message span's
    /// parent, and a differing ZTR context a link; without it the ZTR context is the parent.
    pub transport_trace: Option<TraceParent>,
    /// The door, for the audit trail.
    pub door: Door,
    /// Who the transport says the sender is (an MLLP client certificate's names). With a
    /// sender map configured, it decides which MSH-3 / MSH-4 the messages may carry.
    pub identity: Option<Arc<PeerIdentity>>,
}

impl Origin {
    /// Who shares one part of the memory budget: an MLLP client's address (all its
    /// connections), or the door (a Kafka topic's consumer, an import).
    fn sender(&self) -> String {
        match self.peer.parse::<std::net::SocketAddr>() {
            Ok(address) => address.ip().to_string(),
            Err(_) => format!("{:?}", self.door),
        }
    }
}

impl From<FrameMeta> for Origin {
    fn from(meta: FrameMeta) -> Origin {
        Origin {
            peer: meta.peer.to_string(),
            transport_trace: None,
            door: Door::Mllp,
            identity: meta.identity,
        }
    }
}

/// The acknowledgements one message gets; `None` for one that is not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acks {
    /// Enhanced mode's accept (commit) ACK: CA, CE or CR.
    pub accept: Option<String>,
    /// The application ACK, AA, AE or AR: original mode's only one.
    pub application: Option<String>,
}

impl Acks {
    /// Both, in the order they are sent: what is stored with the message.
    pub fn text(&self) -> String {
        let sent = [&self.accept, &self.application];
        sent.into_iter().flatten().map(String::as_str).collect()
    }

    /// The ACKs stored with an earlier receipt, to be sent again as they were.
    fn stored(text: &str) -> Acks {
        let (accept, application) = split_stored_acks(text);
        Acks {
            accept,
            application,
        }
    }
}

/// How one message was answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// What goes back: nothing for an inbound ACK, or what MSH-15 and MSH-16 do not ask for.
    pub acks: Acks,
    pub code: Option<AckCode>,
    pub error: Option<AckError>,
    /// The message was not stored because the database failed: the same message may succeed
    /// later, and must not be treated as bad input.
    pub transient: bool,
}

pub struct Hl7Ingest {
    store: Store,
    map_context: MapContext,
    owner_locks: OwnerLocks,
    audit: Option<AuditTrail>,
    /// `HL7BRIDGE_MLLP_MAX_MESSAGES_PER_SECOND_PER_PEER`; `None` when 0 (unpaced).
    peer_rate: Option<PeerRate>,
    senders: Option<SenderMap>,
    /// How message bytes are decoded (per sender, and the fallback).
    charsets: CharsetRules,
    /// Base of the extension URL that carries a Provenance's trace id.
    canonical_base: String,
    /// The memory messages being parsed and mapped at once may take (see [`MessageCost`]),
    /// shared between senders.
    memory: MemoryBudget,
}

/// Memory the large HL7v2 messages being parsed and mapped at once may take, in KiB: 1 GiB
/// (ordinary ones have a reserve beside it, [`RESERVE_KIB`]).
const MEMORY_BUDGET_KIB: u32 = 1 << 20;

/// What parsing and mapping one message takes in memory, estimated from its size and its
/// delimiters, and charged to [`Hl7Ingest::memory`] while the message is processed. Measured
/// by a hostile tester: a 249 KB message of 249,000 empty fields raised the peak RSS by
/// 267 MB (about 1 KiB per delimiter), and 64 of them at once, from one address within its
/// connection limit, by 7 GB. Ordinary messages (a few KB, a few hundred delimiters) cost well
/// under a MiB each, so the budget only holds back messages of that shape.
struct MessageCost;

impl MessageCost {
    const PER_DELIMITER_BYTES: usize = 1100;
    /// A field of 5 MB of bytes above 0x7F (decoded to twice as much UTF-8) took 147 MB.
    const PER_BYTE: usize = 16;

    /// The estimate in KiB, at least 1 and at most the whole budget.
    fn kib(text: &str) -> u32 {
        let bytes = text.as_bytes();
        // MSH-1 and MSH-2 name the delimiters; the usual ones otherwise.
        let separators: &[u8] = match bytes.get(..8) {
            Some(head) if head.starts_with(b"MSH") => &head[3..8],
            _ => b"|^~\\&",
        };
        // Segment ends count too: bare segments cost as much as fields.
        let delimiters = bytes
            .iter()
            .filter(|b| separators.contains(b) || **b == b'\r' || **b == b'\n')
            .count();
        let estimate = bytes.len() * Self::PER_BYTE + delimiters * Self::PER_DELIMITER_BYTES;
        u32::try_from(estimate.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, MEMORY_BUDGET_KIB)
    }
}

impl Hl7Ingest {
    pub fn new(store: Store, config: &Config) -> Hl7Ingest {
        let map_context = MapContext {
            default_utc_offset: config.default_utc_offset,
        };
        let senders = config.mllp_tls.as_ref().and_then(|tls| tls.senders.clone());
        Hl7Ingest {
            store,
            map_context,
            owner_locks: OwnerLocks::default(),
            audit: None,
            peer_rate: (config.mllp_max_messages_per_second_per_peer > 0)
                .then(|| PeerRate::new(config.mllp_max_messages_per_second_per_peer)),
            senders,
            charsets: config.mllp_charsets.clone(),
            canonical_base: config.canonical_base.clone(),
            memory: MemoryBudget::new(MEMORY_BUDGET_KIB, RESERVE_KIB, SMALL_KIB),
        }
    }

    /// Records every answered message in `audit`.
    pub fn with_audit(mut self, audit: AuditTrail) -> Hl7Ingest {
        self.audit = Some(audit);
        self
    }

    /// Splits a payload into its messages and answers each, in order.
    pub async fn ingest(&self, payload: &[u8], origin: &Origin) -> Vec<Answer> {
        let frame = match split_frame_with(payload, &self.charsets) {
            Ok(frame) => frame,
            Err(err) => {
                return vec![
                    self.refuse_frame(payload, AckError::from(&err), origin)
                        .await,
                ]
            }
        };
        let batch_errors: Vec<Option<AckError>> = (0..frame.messages.len())
            .map(|index| frame.miscounted_batch_of(index).map(AckError::from))
            .collect();
        let messages = frame.messages;
        if messages.is_empty() {
            let error = sequence_error("the batch holds no message");
            return vec![self.refuse_frame(payload, error, origin).await];
        }
        if messages.len() > MAX_MESSAGES_PER_FRAME {
            let message = format!(
                "the frame holds {} messages; at most {MAX_MESSAGES_PER_FRAME} are accepted",
                messages.len()
            );
            let error = sequence_error(&message);
            return vec![self.refuse_frame(payload, error, origin).await];
        }
        self.pace(origin, messages.len()).await;
        let mut answers = Vec::with_capacity(messages.len());
        for (message, batch_error) in messages.into_iter().zip(batch_errors) {
            let answer = match batch_error {
                // The batch is incomplete: none of it is taken, so the sender resends it whole.
                Some(error) => self.refuse_as_sent(&message, error, origin).await,
                None => self.process(message, origin).await,
            };
            answers.push(answer);
        }
        answers
    }

    /// Holds an MLLP peer over its message rate back (see [`PeerRate`]).
    async fn pace(&self, origin: &Origin, messages: usize) {
        let Some(rate) = self
            .peer_rate
            .as_ref()
            .filter(|_| origin.door == Door::Mllp)
        else {
            return;
        };
        let Ok(peer) = origin.peer.parse::<std::net::SocketAddr>() else {
            return;
        };
        let wait = rate.delay(peer.ip(), messages);
        if !wait.is_zero() {
            metrics().mllp_paced(wait);
            tokio::time::sleep(wait).await;
        }
    }

    async fn process(&self, raw: RawMessage, origin: &Origin) -> Answer {
        let started = Instant::now();
        // First: the resend shortcut would hand another sender's stored ACK back.
        if let Err(error) = self.sender_allowed(&raw, origin) {
            return self.refuse_as_sent(&raw, error, origin).await;
        }
        if let Some(stored) = self.stored_ack_for_resend(&raw).await {
            return Answer {
                acks: Acks::stored(&stored),
                code: Some(AckCode::AA),
                error: None,
                transient: false,
            };
        }
        // Held until the message is answered; a message costing more waits for room.
        let _memory = self
            .memory
            .charge(|| origin.sender(), MessageCost::kib(raw.text()))
            .await;
        let span = message_span(&raw);
        let header = raw.header().cloned();
        let context = self.map_context;
        let decided = tokio::task::spawn_blocking(move || {
            let decision = decide(&raw, &context);
            (raw, decision)
        })
        .await;
        let Ok((
            raw,
            Decision {
                verdict,
                trace,
                lane,
            },
        )) = decided
        else {
            // Processing panicked (a defect): the sender still gets an answer naming its message.
            tracing::error!("processing an HL7v2 message panicked");
            let error = internal("the message could not be processed");
            let verdict = Verdict::Refuse(AckCode::AE, error);
            return self
                .commit(b"", header.as_ref(), verdict, origin, Lane::Normal, started)
                .await;
        };
        // Before the span is first entered: a started span cannot change its trace.
        match &origin.transport_trace {
            Some(transport) => {
                continue_trace(&span, Some(transport));
                link_payload_context(&span, trace.as_ref());
            }
            None => continue_trace(&span, trace.as_ref()),
        }
        async {
            let ops: &[_] = match &verdict {
                Verdict::Accept(accepted) => &accepted.ops,
                _ => &[],
            };
            let _owners = self.owner_locks.lock(ops).await;
            let verdict = self.check_ownership(verdict).await;
            let verdict = self.merge_stored(verdict).await;
            self.commit(raw.bytes(), raw.header(), verdict, origin, lane, started)
                .await
        }
        .instrument(span)
        .await
    }

    /// Whether the connection's certificate may send as the message's MSH-3 / MSH-4. Without a
    /// sender map, or without an identity (plain MLLP, Kafka), every sender is allowed.
    fn sender_allowed(&self, raw: &RawMessage, origin: &Origin) -> Result<(), AckError> {
        match (&self.senders, &origin.identity) {
            (Some(senders), Some(identity)) => senders.check(identity, raw.header()),
            _ => Ok(()),
        }
    }

    /// Answers AR to a message that is not taken as sent (its connection may not send it, or
    /// its batch is incomplete), storing none of its data: only the raw message.
    async fn refuse_as_sent(&self, raw: &RawMessage, error: AckError, origin: &Origin) -> Answer {
        let started = Instant::now();
        let verdict = Verdict::Refuse(AckCode::AR, error);
        let span = message_span(raw);
        self.commit(
            raw.bytes(),
            raw.header(),
            verdict,
            origin,
            Lane::Normal,
            started,
        )
        .instrument(span)
        .await
    }

    /// An identical resend (same MSH-3, MSH-4, MSH-10 and payload) of an accepted message gets
    /// the stored ACK back without being processed again. The same key with another payload is
    /// processed as usual, and flagged in the log.
    async fn stored_ack_for_resend(&self, raw: &RawMessage) -> Option<String> {
        let header = raw.header()?;
        let control_id = header.control_id.as_deref().filter(|c| !c.is_empty())?;
        let (application, facility) = (&header.sending_application, &header.sending_facility);
        let earlier = match self
            .store
            .earlier_receipts(application, facility, control_id)
            .await
        {
            Ok(earlier) => earlier,
            Err(err) => {
                tracing::warn!(error = %err, "looking up earlier receipts failed; processing");
                return None;
            }
        };
        let hash = payload_hash(raw.bytes());
        if let Some((_, _, ack)) = earlier
            .iter()
            .find(|(h, code, _)| *h == hash && code == "AA")
        {
            tracing::debug!(control_id, "identical resend answered with the stored ACK");
            return Some(ack.clone());
        }
        if earlier.iter().any(|(h, _, _)| *h != hash) {
            if let Some(unlogged_before) = REUSE_LOG.admit() {
                tracing::warn!(
                    control_id = short(control_id),
                    sending_application = short(application),
                    sending_facility = short(facility),
                    unlogged_before,
                    "a message reuses a control id with a different payload; processing it"
                );
            }
        }
        None
    }

    async fn check_ownership(&self, verdict: Verdict) -> Verdict {
        let Verdict::Accept(accepted) = verdict else {
            return verdict;
        };
        match foreign_owner(&self.store, &accepted.ops).await {
            Ok(None) => Verdict::Accept(accepted),
            Ok(Some(error)) => Verdict::Refuse(AckCode::AE, error),
            Err(err) => {
                tracing::warn!(error = %err, "checking stored owners failed; answering AE");
                Verdict::Retry(internal("the message could not be stored; resend it later"))
            }
        }
    }

    /// Merges the resources that keep what is stored with their stored versions
    /// (`ingest::stored`); the write then requires those versions to be current still.
    async fn merge_stored(&self, verdict: Verdict) -> Verdict {
        let Verdict::Accept(mut accepted) = verdict else {
            return verdict;
        };
        let merged = merge_with_stored(&self.store, &mut accepted.ops, &accepted.amended).await;
        match merged {
            Ok(preconditions) => {
                accepted.preconditions = preconditions;
                Verdict::Accept(accepted)
            }
            Err(MergeError::Store(err)) => {
                tracing::warn!(error = %err, "reading stored versions failed; answering AE");
                Verdict::Retry(internal("the message could not be stored; resend it later"))
            }
            Err(MergeError::UnbookedWithoutTime) => Verdict::Refuse(
                AckCode::AE,
                AckError {
                    code: 101,
                    location: Some(("TQ1".to_string(), 1, 7)),
                    message: "no appointment with this id is booked here, and the message gives \
                              no start and end (FHIR Appointment invariant app-3)"
                        .to_string(),
                },
            ),
            Err(MergeError::Invalid { resource_type }) => {
                tracing::error!(%resource_type, "a merged resource failed R4 validation");
                let message =
                    format!("the {resource_type} merged from this message is not valid FHIR");
                Verdict::Refuse(AckCode::AE, internal(&message))
            }
        }
    }

    /// Writes the message (and its resources, when accepted) and returns how it is answered.
    async fn commit(
        &self,
        bytes: &[u8],
        header: Option<&Header>,
        verdict: Verdict,
        origin: &Origin,
        lane: Lane,
        started: Instant,
    ) -> Answer {
        let (code, errors, mut accepted, retry) = match verdict {
            Verdict::Accept(accepted) => (Some(AckCode::AA), Vec::new(), accepted, false),
            Verdict::Refuse(code, error) => (Some(code), vec![error], Accepted::default(), false),
            Verdict::Retry(error) => (Some(AckCode::AE), vec![error], Accepted::default(), true),
            Verdict::Silent => (None, Vec::new(), Accepted::default(), false),
        };
        // Written as they go out once the commit succeeds, and stored in that commit; a failed
        // commit stores nothing and is answered with ACKs written again below.
        let acks = code
            .map(|code| acks_for(header, code, !retry, &errors))
            .unwrap_or_default();
        let row = message_row(bytes, header, code, &acks.text(), &origin.peer);
        let provenance = message_provenance(header, &row, &accepted.ops, &self.canonical_base);
        accepted.ops.extend(provenance);
        let written = accepted
            .ops
            .iter()
            .map(|op| op.key())
            .map(|(t, id)| (t.to_string(), id.to_string()))
            .collect::<Vec<_>>();
        let batch = WriteBatch {
            ops: accepted.ops,
            hl7_messages: vec![row],
            preconditions: accepted.preconditions,
        };
        let stored = self.store.write_in(batch, lane).await;
        let Some(code) = code else {
            if let Err(err) = &stored {
                tracing::warn!(error = %err, "storing an inbound acknowledgement failed");
            }
            return Answer {
                acks,
                code: None,
                error: None,
                transient: stored.is_err(),
            };
        };
        let error = errors.into_iter().next();
        let final_code = match (&stored, code) {
            (Err(_), AckCode::AA) => AckCode::AE,
            _ => code,
        };
        let stored_ok = stored.is_ok();
        if stored_ok {
            self.audit(header, final_code, written, origin).await;
        }
        let (code, error, acks) = match (stored, code) {
            (Ok(_), AckCode::AA) => (code, None, acks),
            (Ok(_), _) => (code, error, acks),
            (Err(err), AckCode::AA) => {
                tracing::warn!(error = %err, "storing an accepted message failed; answering AE");
                let error = internal("the message could not be stored; resend it later");
                let acks = acks_for(header, AckCode::AE, false, std::slice::from_ref(&error));
                (AckCode::AE, Some(error), acks)
            }
            (Err(err), _) => {
                tracing::warn!(error = %err, "storing a refused message failed");
                let acks = acks_for(header, code, false, error.as_slice());
                (code, error, acks)
            }
        };
        let mut answer = finish(acks, code, error, header, started);
        answer.transient = retry || !stored_ok;
        answer
    }

    /// One audit record per stored message: who sent it (MSH-3 and MSH-4), what it wrote, how
    /// it was answered; never its content.
    async fn audit(
        &self,
        header: Option<&Header>,
        code: AckCode,
        written: Vec<(String, String)>,
        origin: &Origin,
    ) {
        let Some(audit) = &self.audit else {
            return;
        };
        let agent = header.map_or_else(String::new, |h| {
            format!("{}^{}", h.sending_application, h.sending_facility)
        });
        let message_type = header
            .map(|h| {
                let code = h.message_code.as_deref().unwrap_or("");
                match h.trigger_event.as_deref() {
                    Some(event) => format!("{code}^{event}"),
                    None => code.to_string(),
                }
            })
            .unwrap_or_default();
        let patients: Vec<&String> = written
            .iter()
            .filter(|(t, _)| t == "Patient")
            .map(|(_, id)| id)
            .collect();
        let patient = match patients.as_slice() {
            [one] => Some(one.to_string()),
            _ => None,
        };
        let network = match origin.door {
            Door::Mllp => origin
                .peer
                .rsplit_once(':')
                .map_or(origin.peer.clone(), |(ip, _)| ip.to_string()),
            _ => origin.peer.clone(),
        };
        audit
            .record(AuditRecord {
                door: origin.door,
                action: if written.is_empty() { 'E' } else { 'C' },
                subtype: "hl7v2-message".into(),
                outcome: if code == AckCode::AA { 0 } else { 4 },
                agent,
                network,
                entities: written
                    .into_iter()
                    .map(|(t, id)| format!("{t}/{id}"))
                    .collect(),
                patient,
                trace_id: crate::audit::current_trace_id(),
                detail: format!("{message_type} answered {}", code.as_str()),
            })
            .await;
    }

    /// Answers a whole frame that cannot be taken apart, with the first header it holds.
    async fn refuse_frame(&self, frame: &[u8], error: AckError, origin: &Origin) -> Answer {
        let started = Instant::now();
        let header = read_header(frame);
        let verdict = Verdict::Refuse(AckCode::AR, error);
        self.commit(
            frame,
            header.as_ref(),
            verdict,
            origin,
            Lane::Normal,
            started,
        )
        .await
    }
}

impl MessageHandler for Hl7Ingest {
    async fn handle(&self, frame: Bytes, meta: FrameMeta) -> Vec<Vec<u8>> {
        let answers = self.ingest(&frame, &Origin::from(meta)).await;
        response_frames(&answers)
    }

    async fn oversized(&self, prefix: Bytes, meta: FrameMeta) -> Vec<Vec<u8>> {
        let error = AckError {
            code: VALUE_TOO_LONG,
            location: None,
            message:
                "the message is larger than this receiver accepts (HL7BRIDGE_MLLP_MAX_FRAME_BYTES)"
                    .into(),
        };
        let origin = Origin::from(meta);
        let answer = self
            .refuse_frame(complete_fields(&prefix), error, &origin)
            .await;
        response_frames(std::slice::from_ref(&answer))
    }
}

/// The frames that answer one payload: its accept ACKs (enhanced mode) in one frame, then its
/// application ACKs in another, so that each message's accept ACK goes before its application
/// ACK. A payload of one message gets one ACK a frame; a batch gets one frame of each kind, as
/// in original mode. A frame with nothing in it is not sent.
fn response_frames(answers: &[Answer]) -> Vec<Vec<u8>> {
    let accept: String = answers
        .iter()
        .filter_map(|a| a.acks.accept.as_deref())
        .collect();
    let application: String = answers
        .iter()
        .filter_map(|a| a.acks.application.as_deref())
        .collect();
    [accept, application]
        .into_iter()
        .filter(|frame| !frame.is_empty())
        .map(String::into_bytes)
        .collect()
}

/// The prefix of an oversized frame, cut after its last complete segment or field, so a
/// control id cut in half is not echoed as if it were whole.
fn complete_fields(prefix: &[u8]) -> &[u8] {
    if let Some(end) = prefix.iter().rposition(|&b| b == b'\r' || b == b'\n') {
        return &prefix[..end];
    }
    let separator = prefix
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(prefix)
        .get(3)
        .copied();
    match separator.and_then(|sep| prefix.iter().rposition(|&b| b == sep)) {
        Some(end) => &prefix[..end],
        None => prefix,
    }
}

fn sequence_error(message: &str) -> AckError {
    AckError {
        code: SEGMENT_SEQUENCE_ERROR,
        location: None,
        message: message.to_string(),
    }
}

fn internal(message: &str) -> AckError {
    AckError {
        code: INTERNAL_ERROR,
        location: None,
        message: message.to_string(),
    }
}

/// The span of one message, with which character set its text was read in and why (never
/// the text). Each message is a trace of its own (or continues the one its carrier names):
/// a feed keeps one MLLP connection open for hours, and its thousands of messages must not
/// share the connection's trace. The span is linked to the connection's span instead.
fn message_span(raw: &RawMessage) -> tracing::Span {
    let header = raw.header();
    let field = |v: Option<&String>| v.cloned().unwrap_or_default();
    let connection = tracing::Span::current();
    let span = tracing::info_span!(
        parent: None,
        "hl7.message",
        otel.name = "process HL7v2 message",
        otel.kind = "server",
        hl7bridge.message_code = %field(header.and_then(|h| h.message_code.as_ref())),
        hl7bridge.trigger_event = %field(header.and_then(|h| h.trigger_event.as_ref())),
        hl7bridge.control_id = %field(header.and_then(|h| h.control_id.as_ref())),
        hl7bridge.ack_code = tracing::field::Empty,
        hl7bridge.charset = raw.charset().encoding,
        hl7bridge.charset_source = raw.charset().source.as_str(),
    );
    crate::telemetry::link_span(&span, &connection);
    span
}

/// The ACKs due for a message answered `code` (as original mode decides), `committed` saying
/// whether it is in safe storage. An inbound ACK gets none ([`AckMode::conditions_for`]).
fn acks_for(header: Option<&Header>, code: AckCode, committed: bool, errors: &[AckError]) -> Acks {
    let due = due_under(AckMode::conditions_for(header), code, committed);
    Acks {
        accept: due.accept.map(|code| ack_for(header, code, errors)),
        application: due.application.map(|code| ack_for(header, code, errors)),
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
    let Some(unlogged_before) = REFUSAL_LOG.admit() else {
        tracing::debug!(
            ack_code = code.as_str(),
            error_code = error.code,
            "HL7v2 message refused"
        );
        return;
    };
    let value = |v: Option<&String>| short(v.map_or("", String::as_str)).to_string();
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
        sending_application = short(header.map_or("", |h| h.sending_application.as_str())),
        sending_facility = short(header.map_or("", |h| h.sending_facility.as_str())),
        control_id = %value(header.and_then(|h| h.control_id.as_ref())),
        message_code = %value(header.and_then(|h| h.message_code.as_ref())),
        trigger_event = %value(header.and_then(|h| h.trigger_event.as_ref())),
        unlogged_before,
        "HL7v2 message refused"
    );
}

/// Refusals logged at warn per second at most; the rest go to debug and are counted in the
/// next warning (`unlogged_before`). A hostile tester's flood of junk wrote a warning per
/// frame, a thousand lines in seconds, and a log can fill a disk.
const REFUSALS_LOGGED_PER_SECOND: u64 = 20;

static REFUSAL_LOG: LogRate = LogRate::new(REFUSALS_LOGGED_PER_SECOND);
static REUSE_LOG: LogRate = LogRate::new(REFUSALS_LOGGED_PER_SECOND);

/// A header value as logged: its first 64 characters. A hostile tester's 5 MB MSH-3 made each
/// refusal a 20 MB log line.
fn short(value: &str) -> &str {
    match value.char_indices().nth(64) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

/// MessageAnswered: the span's ACK code, the refusal log line, a debug line and the metrics,
/// together.
fn finish(
    acks: Acks,
    code: AckCode,
    error: Option<AckError>,
    header: Option<&Header>,
    started: Instant,
) -> Answer {
    if let Some(error) = &error {
        message_refused(header, code, error);
    }
    let value = |v: Option<&String>| v.cloned().unwrap_or_default();
    let message_code = value(header.and_then(|h| h.message_code.as_ref()));
    let trigger = value(header.and_then(|h| h.trigger_event.as_ref()));
    metrics().hl7_message(&message_code, &trigger, code.as_str(), started.elapsed());
    tracing::Span::current().record("hl7bridge.ack_code", code.as_str());
    tracing::debug!(ack_code = code.as_str(), "message answered");
    Answer {
        acks,
        code: Some(code),
        error,
        transient: false,
    }
}

fn message_row(
    bytes: &[u8],
    header: Option<&Header>,
    code: Option<AckCode>,
    ack: &str,
    peer: &str,
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
        peer: peer.to_string(),
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
        ack_code: code.map_or("", |c| c.as_str()).to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_header_values_are_cut_at_64_characters() {
        assert_eq!(super::short("LAB"), "LAB");
        let long = "é".repeat(5000);
        assert_eq!(super::short(&long).chars().count(), 64);
    }

    #[test]
    fn bare_segments_and_high_bytes_are_charged_to_the_memory_budget() {
        let segments = format!("MSH|^~\\&|A|B\r{}", "ZZZ\r".repeat(100_000));
        // About 1.1 KB a segment: over 100 MB.
        assert!(super::MessageCost::kib(&segments) > 100 * 1024);
        let ordinary = "MSH|^~\\&|LAB|FAC|EHR|HOSP|20240630||ADT^A01|C1|P|2.5\rPID|1||M1\r";
        assert!(super::MessageCost::kib(ordinary) < 256);
    }

    #[test]
    fn an_oversized_prefix_is_cut_at_its_last_complete_field() {
        assert_eq!(complete_fields(b"MSH|^~\\&|A|B\rPID|1|X"), b"MSH|^~\\&|A|B");
        assert_eq!(
            complete_fields(b"MSH|^~\\&|A|B|C|D||ORU^R01|CTRL"),
            b"MSH|^~\\&|A|B|C|D||ORU^R01"
        );
    }
}
