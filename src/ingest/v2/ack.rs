//! Writing an ACK from plain values.
//!
//! Written by hand rather than with `hl7-parser`'s builder from the parsed message, which
//! escapes existing escapes a second time (`A\S\2` becomes `A\E\S\E\2`) and leaves the last
//! segment without its CR.

use std::borrow::Cow;

use super::ack_mode::AckMode;
use super::delimiters::Delimiters;
use super::escape::escape;
use super::frame::{FrameError, MiscountedBatch};
use super::header::Header;
use super::message::ParseError;
use super::segment_names::joined_segment_at;
use super::trace::TraceCarrier;

/// MSH-12 of an ACK to a message whose header could not be read.
pub(crate) const DEFAULT_VERSION: &str = "2.5.1";

/// MSA-1 (HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Accepted.
    AA,
    /// Error in the content: the sender should fix and resend.
    AE,
    /// Rejected: the message could not be read or is not handled here.
    AR,
    /// Enhanced mode's accept ACK: committed to safe storage.
    CA,
    /// Enhanced mode's accept ACK: not stored now; the sender should send it again.
    CE,
    /// Enhanced mode's accept ACK: cannot be accepted as sent.
    CR,
}

impl AckCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// Whether the code says the message was taken (AA, CA): no ERR segment goes with it.
    pub fn is_accept(&self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
}

/// One ERR segment. `message` is shown to the sender's staff: never patient data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// An HL7 table 0357 code.
    pub code: u16,
    /// Segment name, its sequence from 1, and field number (0 for the whole segment).
    pub location: Option<(String, usize, usize)>,
    pub message: String,
}

/// HL7 table 0357, message error condition codes.
const TABLE_0357: &[(u16, &str)] = &[
    (0, "Message accepted"),
    (100, "Segment sequence error"),
    (101, "Required field missing"),
    (102, "Data type error"),
    (103, "Table value not found"),
    (104, "Value too long"),
    (200, "Unsupported message type"),
    (201, "Unsupported event code"),
    (202, "Unsupported processing id"),
    (203, "Unsupported version id"),
    (204, "Unknown key identifier"),
    (205, "Duplicate key identifier"),
    (206, "Application record locked"),
    (207, "Application internal error"),
];

/// The table 0357 text for a code.
pub fn error_text(code: u16) -> Option<&'static str> {
    TABLE_0357
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, text)| *text)
}

impl From<&FrameError> for AckError {
    fn from(err: &FrameError) -> Self {
        AckError {
            code: 100,
            location: None,
            message: err.to_string(),
        }
    }
}

/// Every message of a batch whose BTS-1 miscounts it gets this error, located at that BTS-1.
impl From<&MiscountedBatch> for AckError {
    fn from(batch: &MiscountedBatch) -> Self {
        AckError {
            code: 100,
            location: Some(("BTS".to_owned(), batch.trailer, 1)),
            message: format!(
                "BTS-1 counts {:?} messages but the batch holds {}: it is incomplete; \
                 send the whole batch again",
                batch.declared,
                batch.messages.len()
            ),
        }
    }
}

impl From<&ParseError> for AckError {
    fn from(err: &ParseError) -> Self {
        let (code, location) = match err {
            ParseError::Delimiters(_) => (102, Some(("MSH".to_owned(), 1, 2))),
            ParseError::NoHeader => (100, Some(("MSH".to_owned(), 1, 1))),
            ParseError::JoinedSegments { name, .. } | ParseError::LineFeedSegment { name, .. } => {
                (100, Some((name.clone(), 1, 0)))
            }
            ParseError::TooManyRepetitions { name, .. } => (102, Some((name.clone(), 1, 0))),
            ParseError::TooManyDelimiters => (102, None),
            _ => (100, None),
        };
        AckError {
            code,
            location,
            message: err.to_string(),
        }
    }
}

/// Writes an ACK: MSH with the inbound delimiters and sender/receiver swapped, MSA, one ERR per
/// error unless `code` accepts, and a ZTR last when `trace` is given. An ACK to a message in
/// enhanced mode (see [`AckMode`]) carries MSH-15 and MSH-16 `NE`: an acknowledgement is never
/// acknowledged, and saying so keeps a sender that reads those fields from answering it. Segments end with CR, the last one
/// too. Without a header, or with unusable inbound delimiters, standard delimiters and
/// version 2.5.1 are used and MSA-2 stays empty rather than guessed.
pub fn build_ack(
    header: Option<&Header>,
    code: AckCode,
    errors: &[AckError],
    trace: Option<&TraceCarrier>,
    ack_control_id: &str,
    now_hl7_timestamp: &str,
) -> String {
    let writer = AckWriter::new(header);
    let mut segments = vec![
        writer.msh(ack_control_id, now_hl7_timestamp),
        writer.msa(code),
    ];
    if !code.is_accept() {
        segments.extend(errors.iter().map(|error| writer.err(error)));
    }
    segments.extend(trace.map(|trace| writer.ztr(trace)));
    segments.iter().flat_map(|s| [s.as_str(), "\r"]).collect()
}

fn or_default<'t>(value: Cow<'t, str>, default: &'static str) -> Cow<'t, str> {
    if value.is_empty() {
        Cow::Borrowed(default)
    } else {
        value
    }
}

struct AckWriter<'a> {
    header: Option<&'a Header>,
    delimiters: Delimiters,
    /// Inbound values are echoed as sent only when they were escaped with these delimiters.
    echo_raw: bool,
}

impl<'a> AckWriter<'a> {
    fn new(header: Option<&'a Header>) -> Self {
        let inbound = header.and_then(|h| h.delimiters.clone().ok());
        AckWriter {
            header,
            delimiters: inbound.unwrap_or(Delimiters::STANDARD),
            echo_raw: inbound.is_some(),
        }
    }

    fn escape<'t>(&self, text: &'t str) -> Cow<'t, str> {
        escape(text, &self.delimiters)
    }

    /// An inbound raw value, fit to be written under this ACK's delimiters.
    fn echo<'t>(&self, raw: &'t str) -> Cow<'t, str> {
        if self.echo_raw {
            Cow::Borrowed(raw)
        } else {
            self.escape(raw)
        }
    }

    fn inbound(&self, pick: impl Fn(&'a Header) -> Option<&'a str>) -> Cow<'a, str> {
        self.header
            .and_then(pick)
            .map_or(Cow::Borrowed(""), |raw| self.echo(raw))
    }

    fn segment(&self, name: &str, fields: &[Cow<'_, str>]) -> String {
        let used = fields
            .iter()
            .rposition(|f| !f.is_empty())
            .map_or(0, |last| last + 1);
        let separator = self.delimiters.field.to_string();
        let mut segment = name.to_owned();
        for field in &fields[..used] {
            segment.push_str(&separator);
            push_without_controls(&mut segment, field, self.delimiters.escape);
        }
        self.unjoined(segment)
    }

    /// The segment with each space that makes it look like two joined segments (` MSH|`)
    /// written as the hex escape `\X20\`. An echoed value that ended its inbound segment
    /// (MSH-3 ` MSH`, say) is followed by a separator here, and a receiver that rejects joined
    /// segments, this server included, would refuse the ACK (found by fuzzing).
    fn unjoined(&self, mut segment: String) -> String {
        let escape = self.delimiters.escape;
        while let Some(at) = joined_segment_at(&segment, self.delimiters.field) {
            segment.replace_range(at..at + 1, &format!("{escape}X20{escape}"));
        }
        segment
    }

    fn msh(&self, control_id: &str, now: &str) -> String {
        let encoding = match (self.echo_raw, self.header) {
            (true, Some(h)) => h.encoding_characters.clone(),
            _ => self.delimiters.encoding_characters(),
        };
        let fields = [
            Cow::Owned(encoding),
            self.inbound(|h| Some(h.receiving_application.as_str())),
            self.inbound(|h| Some(h.receiving_facility.as_str())),
            self.inbound(|h| Some(h.sending_application.as_str())),
            self.inbound(|h| Some(h.sending_facility.as_str())),
            self.escape(now),
            Cow::Borrowed(""),
            Cow::Owned(self.message_type()),
            self.escape(control_id),
            or_default(self.inbound(|h| h.processing_id.as_deref()), "P"),
            or_default(self.inbound(|h| h.version.as_deref()), DEFAULT_VERSION),
        ];
        let no_ack_asked = ["", "", "NE", "NE"].map(Cow::Borrowed);
        let enhanced = AckMode::of(self.header).is_enhanced();
        let asked = if enhanced { &no_ack_asked[..] } else { &[] };
        self.segment("MSH", &[&fields[..], asked].concat())
    }

    /// `ACK^<trigger>^ACK`, or `ACK` when the inbound trigger is unknown.
    fn message_type(&self) -> String {
        let trigger = self.header.and_then(|h| h.trigger_event.as_deref());
        let c = self.delimiters.component;
        match trigger {
            Some(trigger) => format!("ACK{c}{}{c}ACK", self.escape(trigger)),
            None => "ACK".to_owned(),
        }
    }

    fn msa(&self, code: AckCode) -> String {
        let control_id = self.inbound(|h| h.control_id.as_deref());
        self.segment("MSA", &[code.as_str().into(), control_id])
    }

    fn err(&self, error: &AckError) -> String {
        let c = self.delimiters.component;
        let location = error.location.as_ref().map(|(segment, sequence, field)| {
            let segment = self.escape(segment);
            match field {
                0 => format!("{segment}{c}{sequence}"),
                _ => format!("{segment}{c}{sequence}{c}{field}"),
            }
        });
        let text = error_text(error.code).unwrap_or("");
        let condition = format!("{}{c}{}{c}HL70357", error.code, self.escape(text));
        let fields: [Cow<'_, str>; 8] = [
            "".into(),
            location.unwrap_or_default().into(),
            condition.into(),
            "E".into(),
            "".into(),
            "".into(),
            "".into(),
            self.escape(&error.message),
        ];
        self.segment("ERR", &fields)
    }

    fn ztr(&self, trace: &TraceCarrier) -> String {
        let d = &self.delimiters;
        let pair = |key: &str, value: &str| format!("{key}{}{}", d.component, self.escape(value));
        let mut pairs = vec![pair("traceparent", &trace.traceparent)];
        pairs.extend(
            trace
                .tracestate
                .as_deref()
                .map(|state| pair("tracestate", state)),
        );
        self.segment("ZTR", &[pairs.join(&d.repetition.to_string()).into()])
    }
}

/// Appends `value` with control characters written as `\Xhh\`. An echoed value holding a CR
/// would split the ACK's segments, and one holding 0x1C would end its MLLP frame early.
fn push_without_controls(out: &mut String, value: &str, escape: char) {
    for c in value.chars() {
        if c.is_ascii_control() {
            out.push_str(&format!("{escape}X{:02X}{escape}", c as u32));
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::v2::read_header;

    const NOW: &str = "20240630120030-0500";

    fn header(msh: &str) -> Header {
        read_header(msh.as_bytes()).unwrap()
    }

    fn segments(ack: &str) -> Vec<&str> {
        assert!(ack.ends_with('\r'), "the last segment ends with CR");
        ack.trim_end_matches('\r').split('\r').collect()
    }

    #[test]
    fn accept_swaps_sender_and_receiver_and_echoes_the_control_id() {
        let h = header("MSH|^~\\&|LAB|LABFAC|EHR|HOSP|2024||ORU^R01^ORU_R01|C-77|P|2.5.1");
        let ack = build_ack(Some(&h), AckCode::AA, &[], None, "ACK-1", NOW);
        assert_eq!(
            segments(&ack),
            [
                "MSH|^~\\&|EHR|HOSP|LAB|LABFAC|20240630120030-0500||ACK^R01^ACK|ACK-1|P|2.5.1",
                "MSA|AA|C-77",
            ]
        );
    }

    #[test]
    fn escaped_sender_values_are_echoed_without_double_escaping() {
        let h = header("MSH|^~\\&|LAB|Isaac\\S\\2|EHR||2024||ADT^A08|9|P|2.3");
        let ack = build_ack(Some(&h), AckCode::AA, &[], None, "A1", NOW);
        assert!(segments(&ack)[0].starts_with("MSH|^~\\&|EHR||LAB|Isaac\\S\\2|"));
    }

    #[test]
    fn error_segments_carry_location_code_severity_and_message() {
        let h = header("MSH|^~\\&|LAB|F|EHR|H|2024||ORU^R01|C1|P|2.5.1");
        let error = AckError {
            code: 101,
            location: Some(("OBX".to_owned(), 1, 2)),
            message: "OBX-2 (value type) is required when OBX-5 has a value".to_owned(),
        };
        let ack = build_ack(Some(&h), AckCode::AE, &[error], None, "A2", NOW);
        assert_eq!(
            segments(&ack)[1..],
            [
                "MSA|AE|C1",
                "ERR||OBX^1^2|101^Required field missing^HL70357|E||||\
                 OBX-2 (value type) is required when OBX-5 has a value",
            ]
        );
    }

    #[test]
    fn errors_are_not_written_on_accept() {
        let error = AckError {
            code: 207,
            location: None,
            message: "x".to_owned(),
        };
        let ack = build_ack(None, AckCode::AA, &[error], None, "A3", NOW);
        assert_eq!(segments(&ack).len(), 2);
    }

    #[test]
    fn oul_r22_with_invalid_msh_2_gets_ack_r22_with_standard_delimiters() {
        let h = header("MSH|^~\\\\&|device||Host||19981004010159+0100||OUL^R22^OUL_R22|2|P|2.5.1");
        let error = AckError::from(&ParseError::Delimiters(h.delimiters.clone().unwrap_err()));
        let ack = build_ack(Some(&h), AckCode::AR, &[error], None, "A4", NOW);
        let segments = segments(&ack);
        assert_eq!(
            segments[0],
            "MSH|^~\\&|Host||device||20240630120030-0500||ACK^R22^ACK|A4|P|2.5.1"
        );
        assert_eq!(segments[1], "MSA|AR|2");
        assert!(segments[2].starts_with("ERR||MSH^1^2|102^Data type error^HL70357|E|"));
    }

    #[test]
    fn no_header_means_standard_delimiters_and_an_empty_msa_2() {
        let error = AckError {
            code: 100,
            location: None,
            message: "no MSH".to_owned(),
        };
        let ack = build_ack(None, AckCode::AR, &[error], None, "A5", NOW);
        let segments = segments(&ack);
        assert_eq!(
            segments[0],
            "MSH|^~\\&|||||20240630120030-0500||ACK|A5|P|2.5.1"
        );
        assert_eq!(segments[1], "MSA|AR");
    }

    #[test]
    fn control_characters_in_echoed_values_cannot_break_segments_or_frames() {
        let mut out = String::new();
        push_without_controls(&mut out, "A\x1cB\rC", '\\');
        assert_eq!(out, "A\\X1C\\B\\X0D\\C");
    }

    #[test]
    fn msa_2_is_empty_when_msh_10_is_missing() {
        let h = header("MSH|^~\\&|A|B|C|D|2024||ADT^A01||P|2.5");
        let ack = build_ack(Some(&h), AckCode::AA, &[], None, "A6", NOW);
        assert_eq!(segments(&ack)[1], "MSA|AA");
    }

    #[test]
    fn trace_context_is_the_last_segment_with_escaped_values() {
        let h = header("MSH|^~\\&|A|B|C|D|2024||ORU^R01|C1|P|2.5.1");
        let trace = TraceCarrier {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            tracestate: Some("v=a^b|c".to_owned()),
        };
        let ack = build_ack(Some(&h), AckCode::AA, &[], Some(&trace), "A7", NOW);
        assert_eq!(
            *segments(&ack).last().unwrap(),
            "ZTR|traceparent^00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\
             ~tracestate^v=a\\S\\b\\F\\c"
        );
    }

    #[test]
    fn inbound_delimiters_are_kept() {
        let h = header("MSH|^~\\&#|A|B|C|D|2024||ORU^R01|C1|P|2.5.1");
        let ack = build_ack(Some(&h), AckCode::AA, &[], None, "A8", NOW);
        assert!(ack.starts_with("MSH|^~\\&#|C|D|A|B|"));
        let h = header("MSH$%~\\&$APP$FAC$$$2024$$ORU%R01$C2$P$2.4");
        let ack = build_ack(Some(&h), AckCode::AA, &[], None, "A9", NOW);
        assert_eq!(
            segments(&ack)[0],
            "MSH$%~\\&$$$APP$FAC$20240630120030-0500$$ACK%R01%ACK$A9$P$2.4"
        );
    }

    #[test]
    fn an_echoed_value_never_makes_the_ack_look_like_joined_segments() {
        // The fuzzer's input (hl7_ingest, minimised): MSH-3 ` MSH` ended the inbound MSH; in
        // the ACK's MSH-5 a separator follows it, which reads as a second MSH joined on.
        let inbound = header("MSH|| MSH");
        let ack = build_ack(Some(&inbound), AckCode::AR, &[], None, "A1", NOW);
        let parsed = crate::ingest::v2::parse_message(ack.as_bytes()).expect("the ACK parses");
        let msh_5 = parsed.segment("MSH").and_then(|msh| msh.text(5));
        assert_eq!(msh_5.as_deref(), Some(" MSH"));
    }

    #[test]
    fn an_ack_in_enhanced_mode_asks_for_no_ack_and_accepts_carry_no_err() {
        let h = header("MSH|^~\\&|LAB|F|EHR|H|2024||ORU^R01|C1|T|2.5.1|||AL|AL");
        let error = AckError {
            code: 207,
            location: None,
            message: "x".to_owned(),
        };
        let commit = build_ack(
            Some(&h),
            AckCode::CA,
            std::slice::from_ref(&error),
            None,
            "A1",
            NOW,
        );
        assert_eq!(
            segments(&commit),
            [
                "MSH|^~\\&|EHR|H|LAB|F|20240630120030-0500||ACK^R01^ACK|A1|T|2.5.1|||NE|NE",
                "MSA|CA|C1",
            ]
        );
        let refused = build_ack(Some(&h), AckCode::CE, &[error], None, "A2", NOW);
        assert_eq!(segments(&refused)[1], "MSA|CE|C1");
        assert!(segments(&refused)[2].starts_with("ERR|||207^"));
    }

    #[test]
    fn every_table_0357_code_has_text() {
        for code in [
            0, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204, 205, 206, 207,
        ] {
            assert!(error_text(code).is_some(), "{code}");
        }
        assert_eq!(error_text(999), None);
    }
}
