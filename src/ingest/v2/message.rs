//! A parsed message, with decoded access to its values by HL7 position.
//!
//! `hl7-parser` splits the normalised text into segments, fields, repetitions, components and
//! subcomponents; the result is kept as byte ranges into that text, so that [`Message`] owns
//! its data. Values are unescaped on access. Empty values and the HL7 explicit null `""` read
//! as `None`: the mapper treats "delete this value" as absent for now.

use std::ops::Range;

use thiserror::Error;

use super::charset::Charset;
use super::delimiters::{DelimiterError, Delimiters};
use super::escape::unescape;
use super::frame::{split_frame, FrameError, RawMessage};
use super::header::Header;
use super::segment_names::{joined_segment_at, starts_like_segment};

/// Why a message could not be parsed. Each leads to an AR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("MSH-1 cannot be read")]
    NoHeader,
    #[error(transparent)]
    Delimiters(#[from] DelimiterError),
    #[error("segment {index} does not start with a segment name (a line wrapped inside a field?)")]
    NotASegment { index: usize },
    #[error("segment {index} ({name}) has another segment joined onto it by a space")]
    JoinedSegments { index: usize, name: String },
    #[error(
        "segment {index} ({name}) holds a line feed followed by a segment name: a segment \
             ended with LF where the others end with CR"
    )]
    LineFeedSegment { index: usize, name: String },
    #[error("segment {index} ({name}) has a field with more than {max} repetitions", max = MAX_REPETITIONS)]
    TooManyRepetitions { index: usize, name: String },
    #[error("the message has more than {max} segments, fields and components", max = MAX_DELIMITERS)]
    TooManyDelimiters,
    #[error("the structure parser failed at byte {position}")]
    Structure { position: usize },
    #[error("the structure parser read {consumed} of {total} bytes")]
    ShortParse { consumed: usize, total: usize },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the frame holds {0} messages where one was expected")]
    NotOneMessage(usize),
}

/// A parsed HL7v2 message.
#[derive(Clone)]
pub struct Message {
    text: String,
    delimiters: Delimiters,
    charset: Charset,
    header: Header,
    segments: Vec<SegmentData>,
}

#[derive(Debug, Clone)]
struct SegmentData {
    name: String,
    range: Range<usize>,
    fields: Vec<FieldData>,
}

#[derive(Debug, Clone)]
struct FieldData {
    range: Range<usize>,
    repetitions: Vec<RepetitionData>,
}

#[derive(Debug, Clone)]
struct RepetitionData {
    range: Range<usize>,
    components: Vec<ComponentData>,
}

#[derive(Debug, Clone)]
struct ComponentData {
    range: Range<usize>,
    subcomponents: Vec<Range<usize>>,
}

/// Parses a frame that holds exactly one message.
pub fn parse_message(bytes: &[u8]) -> Result<Message, ParseError> {
    let frame = split_frame(bytes)?;
    match frame.messages.as_slice() {
        [message] => message.parse(),
        messages => Err(ParseError::NotOneMessage(messages.len())),
    }
}

impl RawMessage {
    /// Parses the message; its [`RawMessage::header`] stays available when this fails.
    pub fn parse(&self) -> Result<Message, ParseError> {
        let header = self.header().cloned().ok_or(ParseError::NoHeader)?;
        let delimiters = header.delimiters.clone()?;
        let lines: Vec<&str> = self.text().split('\r').collect();
        check_lines(&lines, &delimiters)?;
        let text = normalise(&lines, &delimiters);
        let segments = structure(&text, lines.len())?;
        let charset = self.charset().clone();
        Ok(Message {
            text,
            delimiters,
            charset,
            header,
            segments,
        })
    }
}

/// More repetitions than this in one field is not a real message; it would cost memory in
/// proportion (every repetition becomes JSON, then a model object).
pub const MAX_REPETITIONS: usize = 1000;

/// Delimiters (field, repetition, component, subcomponent) in one message at most. The
/// structure parser allocates per field and component, several hundred bytes each; a frame of
/// millions of empty fields would take gigabytes. Real messages stay far below: a result with
/// two thousand OBX segments has about a hundred thousand.
pub const MAX_DELIMITERS: usize = 250_000;

/// Rejects wrapped lines, segments joined by spaces or by a stray LF, which `hl7-parser` would
/// silently cut short or read as one segment, and fields with absurd repetition counts.
fn check_lines(lines: &[&str], delimiters: &Delimiters) -> Result<(), ParseError> {
    let field_separator = delimiters.field;
    let separators = [
        delimiters.field,
        delimiters.repetition,
        delimiters.component,
        delimiters.subcomponent,
    ];
    // Each segment counts as one more: a message of millions of bare `ZZZ` segments has no
    // field delimiters, and took about 1.3 KB of memory per segment (a hostile tester's 12 MB
    // message peaked at 3.9 GB).
    let delimiter_count: usize = lines
        .iter()
        .map(|line| 1 + line.chars().filter(|c| separators.contains(c)).count())
        .sum();
    if delimiter_count > MAX_DELIMITERS {
        return Err(ParseError::TooManyDelimiters);
    }
    for (i, line) in lines.iter().enumerate() {
        if !starts_like_segment(line, field_separator) {
            return Err(ParseError::NotASegment { index: i + 1 });
        }
        let name = || line[..3].to_owned();
        if joined_segment_at(line, field_separator).is_some() {
            return Err(ParseError::JoinedSegments {
                index: i + 1,
                name: name(),
            });
        }
        // With CR terminators an LF is data, but an LF followed by a segment name is a segment
        // end the sender got wrong: reading it as data would swallow that segment.
        let segment_after_lf = |rest: &str| {
            rest.chars().nth(3) == Some(field_separator)
                && starts_like_segment(rest, field_separator)
        };
        if line.split('\n').skip(1).any(segment_after_lf) {
            return Err(ParseError::LineFeedSegment {
                index: i + 1,
                name: name(),
            });
        }
        if max_repetitions(line, delimiters) > MAX_REPETITIONS {
            return Err(ParseError::TooManyRepetitions {
                index: i + 1,
                name: name(),
            });
        }
    }
    Ok(())
}

fn max_repetitions(line: &str, delimiters: &Delimiters) -> usize {
    line.split(delimiters.field)
        .map(|field| field.matches(delimiters.repetition).count() + 1)
        .max()
        .unwrap_or(0)
}

/// The copy of the message handed to `hl7-parser`:
/// - segments joined by CR, for its strict mode, so that LF inside a value stays data;
/// - MSH-2 cut to four characters, because it reads exactly four and moves every MSH field by
///   one when the v2.7 truncation character is present (MSH-1/MSH-2 are read by us anyway);
/// - a segment that is only a name gets a field separator, because it fails without one.
fn normalise(lines: &[&str], delimiters: &Delimiters) -> String {
    let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            text.push('\r');
        }
        match (i, delimiters.truncation) {
            (0, Some(_)) => text.extend([&line[..8], &line[9..]]),
            _ => text.push_str(line),
        }
        if line.len() == 3 {
            text.push(delimiters.field);
        }
    }
    text
}

fn structure(text: &str, segment_count: usize) -> Result<Vec<SegmentData>, ParseError> {
    let parsed = hl7_parser::Message::parse(text).map_err(|err| ParseError::Structure {
        position: match err {
            hl7_parser::parser::ParseError::FailedToParse { position, .. } => position,
            hl7_parser::parser::ParseError::IncompleteInput(_) => text.len(),
        },
    })?;
    // hl7-parser returns Ok with what it read so far when it meets a line it cannot read
    // (a blank line, a wrapped line, an odd segment name): a short parse is an error here.
    let consumed = parsed.raw_value().len();
    if consumed != text.len() || parsed.segments.len() != segment_count {
        return Err(ParseError::ShortParse {
            consumed,
            total: text.len(),
        });
    }
    Ok(parsed
        .segments
        .iter()
        .map(SegmentData::from_parsed)
        .collect())
}

impl SegmentData {
    fn from_parsed(segment: &hl7_parser::message::Segment<'_>) -> Self {
        let fields = segment.fields.iter().map(|field| FieldData {
            range: field.range.clone(),
            repetitions: field
                .repeats
                .iter()
                .map(RepetitionData::from_parsed)
                .collect(),
        });
        SegmentData {
            name: segment.name.to_owned(),
            range: segment.range.clone(),
            fields: fields.collect(),
        }
    }
}

impl RepetitionData {
    fn from_parsed(repetition: &hl7_parser::message::Repeat<'_>) -> Self {
        let components = repetition.components.iter().map(|component| ComponentData {
            range: component.range.clone(),
            subcomponents: component
                .subcomponents
                .iter()
                .map(|s| s.range.clone())
                .collect(),
        });
        RepetitionData {
            range: repetition.range.clone(),
            components: components.collect(),
        }
    }
}

/// Leaves the message text out: it holds patient data.
impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("segments", &self.segments.len())
            .field("charset", &self.charset)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Message {
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// How the message's bytes were decoded.
    pub fn charset(&self) -> &Charset {
        &self.charset
    }

    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        (0..self.segments.len()).map(move |index| self.segment_at(index))
    }

    pub fn segments_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Segment<'a>> {
        self.segments()
            .filter(move |segment| segment.name() == name)
    }

    /// The first segment with this name.
    pub fn segment(&self, name: &str) -> Option<Segment<'_>> {
        self.segments().find(|segment| segment.name() == name)
    }

    fn segment_at(&self, index: usize) -> Segment<'_> {
        Segment {
            message: self,
            data: &self.segments[index],
            index,
        }
    }

    /// Decoded text of a range; `None` when empty or the explicit null `""`.
    fn decode(&self, range: &Range<usize>) -> Option<String> {
        let raw = &self.text[range.clone()];
        if raw.is_empty() || raw == "\"\"" {
            return None;
        }
        Some(unescape(raw, &self.delimiters).into_owned()).filter(|text| !text.is_empty())
    }
}

/// One segment of a [`Message`].
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    message: &'a Message,
    data: &'a SegmentData,
    index: usize,
}

impl<'a> Segment<'a> {
    pub fn name(&self) -> &'a str {
        &self.data.name
    }

    /// Position in the message, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Which occurrence of its name this segment is, from 1 (ERR-2.2).
    pub fn sequence(&self) -> usize {
        let earlier = &self.message.segments[..self.index];
        1 + earlier.iter().filter(|s| s.name == self.data.name).count()
    }

    pub fn raw(&self) -> &'a str {
        &self.message.text[self.data.range.clone()]
    }

    /// Field `n`, numbered as HL7 does: for MSH, field 1 is the field separator and field 2
    /// the encoding characters as sent.
    pub fn field(&self, n: usize) -> Option<Field<'a>> {
        let data = self.data.fields.get(n.checked_sub(1)?)?;
        let literal = match (self.name(), n) {
            ("MSH", 1) => Some(&self.message.text[data.range.clone()]),
            ("MSH", 2) => Some(self.message.header.encoding_characters.as_str()),
            _ => None,
        };
        Some(Field {
            message: self.message,
            data,
            literal,
        })
    }

    /// Decoded text of field `n` (see [`Field::text`]).
    pub fn text(&self, n: usize) -> Option<String> {
        self.field(n)?.text()
    }
}

/// One field of a [`Segment`].
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    message: &'a Message,
    data: &'a FieldData,
    literal: Option<&'a str>,
}

impl<'a> Field<'a> {
    /// The field as sent, still escaped.
    pub fn raw(&self) -> &'a str {
        self.literal
            .unwrap_or(&self.message.text[self.data.range.clone()])
    }

    /// The whole field unescaped, delimiters between its parts kept as they are.
    pub fn text(&self) -> Option<String> {
        match self.literal {
            Some(literal) => Some(literal.to_owned()),
            None => self.message.decode(&self.data.range),
        }
    }

    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let message = self.message;
        self.data
            .repetitions
            .iter()
            .map(move |data| Repetition { message, data })
    }

    /// Repetition `n`, from 1.
    pub fn repetition(&self, n: usize) -> Option<Repetition<'a>> {
        self.repetitions().nth(n.checked_sub(1)?)
    }

    /// Component `n` of the first repetition.
    pub fn component(&self, n: usize) -> Option<String> {
        self.repetition(1)?.component(n)
    }

    /// Subcomponent `m` of component `n` of the first repetition.
    pub fn subcomponent(&self, n: usize, m: usize) -> Option<String> {
        self.repetition(1)?.subcomponent(n, m)
    }
}

/// One repetition of a [`Field`].
#[derive(Debug, Clone, Copy)]
pub struct Repetition<'a> {
    message: &'a Message,
    data: &'a RepetitionData,
}

impl<'a> Repetition<'a> {
    pub fn raw(&self) -> &'a str {
        &self.message.text[self.data.range.clone()]
    }

    /// The whole repetition unescaped, component separators kept.
    pub fn text(&self) -> Option<String> {
        self.message.decode(&self.data.range)
    }

    /// Whether no subcomponent holds a value.
    pub fn is_empty(&self) -> bool {
        let mut ranges = self
            .data
            .components
            .iter()
            .flat_map(|c| c.subcomponents.iter());
        ranges.all(|range| self.message.decode(range).is_none())
    }

    /// Component `n`, from 1, unescaped; subcomponent separators inside it are kept.
    pub fn component(&self, n: usize) -> Option<String> {
        let data = self.data.components.get(n.checked_sub(1)?)?;
        self.message.decode(&data.range)
    }

    /// Subcomponent `m` of component `n`, both from 1.
    pub fn subcomponent(&self, n: usize, m: usize) -> Option<String> {
        let data = self.data.components.get(n.checked_sub(1)?)?;
        self.message
            .decode(data.subcomponents.get(m.checked_sub(1)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|LAB|FAC|EHR|HOSP|20240630120030||ORU^R01^ORU_R01|C1|P|2.5.1\r\
                       PID|1||MRN-7^^^HOSP&1.2.3&ISO^MR~X-1^^^OTHER||Testperson^Alma^^^^^L\r\
                       OBX|1|NM|2345-7^Glucose^LN||072.40|mg/dL^^UCUM|||||F\r\
                       OBX|2|TX|1^Note^L||line \\S\\one~line two||||||F\r\
                       NTE|1||\"\"";

    fn parse(text: &str) -> Message {
        parse_message(text.as_bytes()).unwrap()
    }

    #[test]
    fn bare_segments_count_against_the_delimiter_limit() {
        // A hostile tester's 12 MB of bare `ZZZ` segments had no field delimiters and took
        // 3.9 GB to process.
        let many = format!(
            "{}\r{}",
            &ORU[..ORU.find('\r').unwrap()],
            "ZZZ\r".repeat(MAX_DELIMITERS)
        );
        assert!(matches!(
            parse_message(many.as_bytes()),
            Err(ParseError::TooManyDelimiters)
        ));
        let fewer = format!(
            "{}\r{}",
            &ORU[..ORU.find('\r').unwrap()],
            "ZZZ\r".repeat(1000)
        );
        assert!(parse_message(fewer.as_bytes()).is_ok());
    }

    #[test]
    fn fields_are_numbered_as_hl7_numbers_them() {
        let msg = parse(ORU);
        let msh = msg.segment("MSH").unwrap();
        assert_eq!(msh.text(1).as_deref(), Some("|"));
        assert_eq!(msh.text(2).as_deref(), Some("^~\\&"));
        assert_eq!(msh.text(3).as_deref(), Some("LAB"));
        assert_eq!(msh.field(9).unwrap().component(2).as_deref(), Some("R01"));
        assert_eq!(msh.text(10).as_deref(), Some("C1"));
    }

    #[test]
    fn repetitions_components_and_subcomponents_are_decoded() {
        let msg = parse(ORU);
        let pid_3 = msg.segment("PID").unwrap().field(3).unwrap();
        assert_eq!(pid_3.repetitions().count(), 2);
        let first = pid_3.repetition(1).unwrap();
        assert_eq!(first.component(1).as_deref(), Some("MRN-7"));
        assert_eq!(first.component(4).as_deref(), Some("HOSP&1.2.3&ISO"));
        assert_eq!(first.subcomponent(4, 2).as_deref(), Some("1.2.3"));
        assert_eq!(first.component(2), None);
        assert_eq!(
            pid_3.repetition(2).unwrap().component(1).as_deref(),
            Some("X-1")
        );
    }

    #[test]
    fn segments_are_found_by_name_with_their_sequence() {
        let msg = parse(ORU);
        let obx: Vec<_> = msg.segments_named("OBX").collect();
        assert_eq!(obx.len(), 2);
        assert_eq!(obx[1].sequence(), 2);
        assert_eq!(obx[1].index(), 3);
        let note = obx[1].field(5).unwrap();
        assert_eq!(
            note.repetition(1).unwrap().text().as_deref(),
            Some("line ^one")
        );
    }

    #[test]
    fn explicit_null_and_empty_values_read_as_none() {
        let msg = parse(ORU);
        assert_eq!(msg.segment("NTE").unwrap().text(3), None);
        assert_eq!(msg.segment("OBX").unwrap().text(4), None);
        assert_eq!(msg.segment("OBX").unwrap().text(40), None);
        assert!(msg.segment("OBX").unwrap().field(0).is_none());
    }

    #[test]
    fn truncation_character_keeps_fields_in_place() {
        let msg = parse("MSH|^~\\&#|A|B|C|D|2024||ORU^R01|C9|P|2.5.1\rPID|1||M1");
        let msh = msg.segment("MSH").unwrap();
        assert_eq!(msh.text(2).as_deref(), Some("^~\\&#"));
        assert_eq!(msh.field(9).unwrap().component(1).as_deref(), Some("ORU"));
        assert_eq!(msh.text(10).as_deref(), Some("C9"));
        assert_eq!(msh.text(12).as_deref(), Some("2.5.1"));
        assert_eq!(msg.delimiters().truncation, Some('#'));
    }

    #[test]
    fn non_standard_delimiters_are_used_for_structure_and_escapes() {
        let msg = parse("MSH:-+?*:f2:c1-c2:r1+r2:s1*s2:x?R?y");
        let msh = msg.segment("MSH").unwrap();
        assert_eq!(msh.field(4).unwrap().component(2).as_deref(), Some("c2"));
        assert_eq!(
            msh.field(5)
                .unwrap()
                .repetition(2)
                .unwrap()
                .text()
                .as_deref(),
            Some("r2")
        );
        assert_eq!(
            msh.field(6).unwrap().subcomponent(1, 2).as_deref(),
            Some("s2")
        );
        assert_eq!(msh.text(7).as_deref(), Some("x+y"));
        let msg = parse("MSH$%~\\&$GHH LAB\rPID$$$555-44$$DOE%JANE");
        let pid = msg.segment("PID").unwrap();
        assert_eq!(pid.field(5).unwrap().component(2).as_deref(), Some("JANE"));
    }

    #[test]
    fn wrapped_line_is_rejected_not_truncated() {
        let text = "MSH|^~\\&|A|B|C|D|2024||MDM^T02|C1|P|2.3\rOBX|1|TX|X||first half\r\
                    of the value|||F";
        let err = parse_message(text.as_bytes()).unwrap_err();
        assert_eq!(err, ParseError::NotASegment { index: 3 });
    }

    #[test]
    fn segments_joined_by_spaces_are_rejected() {
        let text = "MSH|^~\\&|A|B|||2005||ADT^A01|599|P|2.3||| EVN|A01|2005 PID|1||1";
        let err = parse_message(text.as_bytes()).unwrap_err();
        assert!(matches!(err, ParseError::JoinedSegments { index: 1, .. }));
    }

    #[test]
    fn a_short_parse_is_an_error() {
        let err = structure("MSH|^~\\&|A\rPID|1\rPI|2", 3).unwrap_err();
        assert!(matches!(
            err,
            ParseError::ShortParse {
                consumed: 16,
                total: 21
            }
        ));
    }

    #[test]
    fn invalid_encoding_characters_are_a_parse_error_with_a_header() {
        let text = "MSH|^~\\\\&|dev||Host||2024||OUL^R22^OUL_R22|2|P|2.5.1";
        let frame = split_frame(text.as_bytes()).unwrap();
        let raw = &frame.messages[0];
        assert_eq!(
            raw.parse().unwrap_err(),
            ParseError::Delimiters(DelimiterError::Duplicate)
        );
        assert_eq!(raw.header().unwrap().control_id.as_deref(), Some("2"));
    }

    #[test]
    fn segment_that_is_only_a_name_is_read() {
        let msg = parse("MSH|^~\\&|A\rZPR\rPID|1||M1");
        assert_eq!(msg.segments().count(), 3);
        assert_eq!(msg.segment("PID").unwrap().text(3).as_deref(), Some("M1"));
    }

    #[test]
    fn debug_output_leaves_out_patient_data() {
        let msg = parse(ORU);
        let pid = msg.segment("PID").unwrap();
        for text in [
            format!("{msg:?}"),
            format!("{pid:?}"),
            format!("{:?}", pid.field(5)),
        ] {
            assert!(!text.contains("Testperson"));
        }
    }

    #[test]
    fn frame_with_two_messages_is_not_one_message() {
        let text = "MSH|^~\\&|A\rMSH|^~\\&|B";
        assert_eq!(
            parse_message(text.as_bytes()).unwrap_err(),
            ParseError::NotOneMessage(2)
        );
    }
}
