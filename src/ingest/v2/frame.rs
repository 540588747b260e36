//! Splitting a received frame (an MLLP payload, a Kafka record, a file) into messages.
//!
//! Done here because `hl7-parser` fails on a byte-order mark, returns two MSH messages in one
//! buffer as one message, and knows nothing of FHS/BHS batches.
//!
//! Segment terminators: when the frame holds a CR, only CR ends a segment and LF is data, except
//! an LF right after a CR, which is the second half of a CRLF terminator; with no CR at all, LF
//! ends segments. Blank lines are ignored wherever they are.

use std::ops::Range;

use thiserror::Error;

use super::charset::{decode, Charset, CharsetRules};
use super::header::Header;
use super::segment_names::starts_like_segment;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The envelope a frame arrived in, so that the caller can answer a batch with a batch ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// One or more `MSH` messages with no batch header.
    Bare,
    /// `BHS` ... `BTS` without a file header.
    Batch,
    /// `FHS` ... `FTS`, holding batches or messages.
    File,
}

/// A frame split into messages.
#[derive(Debug, Clone)]
pub struct Frame {
    pub envelope: Envelope,
    /// The `FHS`, `BHS`, `BTS` and `FTS` segments in the order received (UTF-8, lossy).
    pub envelope_segments: Vec<String>,
    pub messages: Vec<RawMessage>,
    /// Batches whose BTS-1 does not count the messages they hold.
    pub miscounted_batches: Vec<MiscountedBatch>,
}

impl Frame {
    /// The miscounted batch that holds message `index`, if any.
    pub fn miscounted_batch_of(&self, index: usize) -> Option<&MiscountedBatch> {
        self.miscounted_batches
            .iter()
            .find(|batch| batch.messages.contains(&index))
    }
}

/// A batch whose trailer (BTS-1, the batch message count) names another number of messages
/// than it holds: evidently incomplete (or padded), so none of its messages is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiscountedBatch {
    /// Its messages, as indexes into [`Frame::messages`].
    pub messages: Range<usize>,
    /// BTS-1 as sent.
    pub declared: String,
    /// Which BTS of the frame closed it, from 1 (for the ERR location).
    pub trailer: usize,
}

/// Why a frame could not be split. Segment numbers count non-blank lines from 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("the frame holds no HL7 message")]
    Empty,
    #[error("segment {line} is outside any message (no MSH before it)")]
    OutsideMessage { line: usize },
    #[error("FHS at segment {line} is not the first segment")]
    MisplacedFileHeader { line: usize },
    #[error("BHS at segment {line} opens a batch before the previous one was closed by BTS")]
    NestedBatch { line: usize },
    #[error("{name} at segment {line} closes nothing")]
    UnmatchedTrailer { name: &'static str, line: usize },
    #[error("segment {line} follows the FTS that closed the file")]
    AfterFileTrailer { line: usize },
    #[error("the frame ends inside a batch or file: {name} is missing")]
    Unclosed { name: &'static str },
}

/// One message as received: its bytes, its decoded text and its header.
#[derive(Clone)]
pub struct RawMessage {
    bytes: Vec<u8>,
    text: String,
    charset: Charset,
    header: Option<Header>,
}

/// Leaves the message text out: it holds patient data.
impl std::fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMessage")
            .field("bytes", &self.bytes.len())
            .field("charset", &self.charset)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl RawMessage {
    /// The message's original bytes, terminators included.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The decoded text, non-blank segments joined by CR.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn charset(&self) -> &Charset {
        &self.charset
    }

    /// MSH values for the ACK; `None` only when MSH-1 is unusable.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    fn from_lines(frame: &[u8], lines: &[Range<usize>], rules: &CharsetRules) -> RawMessage {
        let first = &frame[lines[0].clone()];
        let joined = lines
            .iter()
            .map(|r| &frame[r.clone()])
            .collect::<Vec<_>>()
            .join(&b'\r');
        // The sender's namespace ids are ASCII in practice; read before decoding, since the
        // sender may be what decides how to decode (and only then: this runs per message).
        let sender = rules
            .has_sender_rules()
            .then(|| Header::read(&String::from_utf8_lossy(first), false))
            .flatten()
            .and_then(|h| h.namespace_ids());
        let sender = sender.as_ref().map(|(a, f)| (a.as_str(), f.as_str()));
        let (text, charset) = decode(&joined, msh_18(first).as_deref(), sender, rules);
        let header = read_decoded_header(&text);
        let end = lines.last().map_or(lines[0].end, |r| r.end);
        let bytes = frame[lines[0].start..end].to_vec();
        RawMessage {
            bytes,
            text,
            charset,
            header,
        }
    }
}

fn read_decoded_header(text: &str) -> Option<Header> {
    let mut lines = text.split('\r');
    let msh = lines.next()?;
    let separator = msh.chars().nth(3)?;
    let continued = lines
        .next()
        .is_some_and(|next| !starts_like_segment(next, separator));
    Header::read(msh, continued)
}

/// MSH-18 (first repetition, first component) read from the raw bytes, before decoding.
fn msh_18(msh: &[u8]) -> Option<String> {
    let (&field, encoding) = msh.get(3).zip(msh.get(4..6))?;
    let msh_18 = msh.split(|&b| b == field).nth(17)?;
    let first = msh_18.split(|&b| b == encoding[1]).next()?;
    let value = first.split(|&b| b == encoding[0]).next()?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// Splits a frame into messages, checking the batch envelope.
pub fn split_frame(frame: &[u8]) -> Result<Frame, FrameError> {
    split_frame_with(frame, &CharsetRules::default())
}

/// [`split_frame`], decoding each message's text by `rules` (see [`super::charset`]).
pub fn split_frame_with(frame: &[u8], rules: &CharsetRules) -> Result<Frame, FrameError> {
    let frame = frame.strip_prefix(UTF8_BOM).unwrap_or(frame);
    let mut splitter = Splitter::new(frame, rules);
    for (i, range) in segment_lines(frame).into_iter().enumerate() {
        splitter.push(i + 1, range)?;
    }
    splitter.finish()
}

/// The header of the first MSH in a frame, for an AR when the frame cannot be split or parsed.
pub fn read_header(frame: &[u8]) -> Option<Header> {
    let frame = frame.strip_prefix(UTF8_BOM).unwrap_or(frame);
    let lines = segment_lines(frame);
    let start = lines
        .iter()
        .position(|r| kind(&frame[r.clone()]) == Kind::Msh)?;
    let end = (start + 2).min(lines.len());
    RawMessage::from_lines(frame, &lines[start..end], &CharsetRules::default()).header
}

/// Non-blank segment lines as byte ranges of the frame.
fn segment_lines(frame: &[u8]) -> Vec<Range<usize>> {
    let cr_ends_segments = frame.contains(&b'\r');
    let terminator = if cr_ends_segments { b'\r' } else { b'\n' };
    let mut lines = Vec::new();
    let mut start = 0;
    for piece in frame.split(|&b| b == terminator) {
        let mut range = start..start + piece.len();
        start = range.end + 1;
        if cr_ends_segments && piece.first() == Some(&b'\n') {
            range.start += 1;
        }
        if !frame[range.clone()].iter().all(u8::is_ascii_whitespace) {
            lines.push(range);
        }
    }
    lines
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Msh,
    Fhs,
    Bhs,
    Bts,
    Fts,
    Other,
}

fn kind(line: &[u8]) -> Kind {
    let named = |name: &[u8]| {
        line.starts_with(name) && line.get(3).is_none_or(|b| !b.is_ascii_alphanumeric())
    };
    const NAMES: [(&[u8], Kind); 5] = [
        (b"MSH", Kind::Msh),
        (b"FHS", Kind::Fhs),
        (b"BHS", Kind::Bhs),
        (b"BTS", Kind::Bts),
        (b"FTS", Kind::Fts),
    ];
    NAMES
        .iter()
        .find(|(name, _)| named(name))
        .map_or(Kind::Other, |&(_, kind)| kind)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    None,
    Open,
    Closed,
}

/// The state of one pass over a frame's segment lines.
struct Splitter<'a> {
    frame: &'a [u8],
    rules: &'a CharsetRules,
    envelope: Envelope,
    file: FileState,
    batch_open: bool,
    /// Messages before the open batch's BHS.
    batch_start: usize,
    trailers: usize,
    miscounted: Vec<MiscountedBatch>,
    current: Vec<Range<usize>>,
    envelope_segments: Vec<String>,
    messages: Vec<RawMessage>,
}

impl<'a> Splitter<'a> {
    fn new(frame: &'a [u8], rules: &'a CharsetRules) -> Self {
        Splitter {
            frame,
            rules,
            envelope: Envelope::Bare,
            file: FileState::None,
            batch_open: false,
            batch_start: 0,
            trailers: 0,
            miscounted: Vec::new(),
            current: Vec::new(),
            envelope_segments: Vec::new(),
            messages: Vec::new(),
        }
    }

    fn push(&mut self, line: usize, range: Range<usize>) -> Result<(), FrameError> {
        let kind = kind(&self.frame[range.clone()]);
        if self.file == FileState::Closed {
            return Err(FrameError::AfterFileTrailer { line });
        }
        match kind {
            Kind::Msh => self.start_message(range),
            Kind::Other if self.current.is_empty() => {
                return Err(FrameError::OutsideMessage { line })
            }
            Kind::Other => self.current.push(range),
            _ => {
                self.envelope_transition(kind, line)?;
                self.flush();
                let text = String::from_utf8_lossy(&self.frame[range]).into_owned();
                match kind {
                    Kind::Bhs => self.batch_start = self.messages.len(),
                    Kind::Bts => self.check_batch_count(&text),
                    _ => {}
                }
                self.envelope_segments.push(text);
            }
        }
        Ok(())
    }

    fn envelope_transition(&mut self, kind: Kind, line: usize) -> Result<(), FrameError> {
        match kind {
            Kind::Fhs if line != 1 => return Err(FrameError::MisplacedFileHeader { line }),
            Kind::Fhs => {
                self.file = FileState::Open;
                self.envelope = Envelope::File;
            }
            Kind::Bhs if self.batch_open => return Err(FrameError::NestedBatch { line }),
            Kind::Bhs => {
                self.batch_open = true;
                if self.envelope == Envelope::Bare {
                    self.envelope = Envelope::Batch;
                }
            }
            Kind::Bts if !self.batch_open => {
                return Err(FrameError::UnmatchedTrailer { name: "BTS", line })
            }
            Kind::Bts => self.batch_open = false,
            Kind::Fts if self.file != FileState::Open => {
                return Err(FrameError::UnmatchedTrailer { name: "FTS", line })
            }
            Kind::Fts if self.batch_open => return Err(FrameError::Unclosed { name: "BTS" }),
            Kind::Fts => self.file = FileState::Closed,
            Kind::Msh | Kind::Other => {}
        }
        Ok(())
    }

    /// Compares BTS-1, when valued, with the messages since the batch's BHS. A count that is
    /// not a number cannot match either.
    fn check_batch_count(&mut self, bts: &str) {
        self.trailers += 1;
        let declared = bts_1(bts);
        let messages = self.batch_start..self.messages.len();
        if declared.is_empty() || declared.parse::<usize>().ok() == Some(messages.len()) {
            return;
        }
        self.miscounted.push(MiscountedBatch {
            messages,
            declared: declared.to_owned(),
            trailer: self.trailers,
        });
    }

    fn start_message(&mut self, range: Range<usize>) {
        self.flush();
        self.current.push(range);
    }

    fn flush(&mut self) {
        if !self.current.is_empty() {
            let lines = std::mem::take(&mut self.current);
            self.messages
                .push(RawMessage::from_lines(self.frame, &lines, self.rules));
        }
    }

    fn finish(mut self) -> Result<Frame, FrameError> {
        self.flush();
        if self.batch_open {
            return Err(FrameError::Unclosed { name: "BTS" });
        }
        if self.file == FileState::Open {
            return Err(FrameError::Unclosed { name: "FTS" });
        }
        if self.messages.is_empty() && self.envelope == Envelope::Bare {
            return Err(FrameError::Empty);
        }
        Ok(Frame {
            envelope: self.envelope,
            envelope_segments: self.envelope_segments,
            messages: self.messages,
            miscounted_batches: self.miscounted,
        })
    }
}

/// BTS-1, trimmed; the segment's own fourth character is its field separator.
fn bts_1(bts: &str) -> &str {
    let Some(separator) = bts.chars().nth(3) else {
        return "";
    };
    bts.split(separator).nth(1).unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSH_A: &str = "MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||ADT^A04^ADT_A01|A1|P|2.5";
    const MSH_B: &str = "MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||ADT^A04^ADT_A01|B2|P|2.5";

    fn frame(segments: &[&str], terminator: &str) -> Vec<u8> {
        segments
            .iter()
            .map(|s| format!("{s}{terminator}"))
            .collect::<String>()
            .into_bytes()
    }

    fn control_ids(frame: &Frame) -> Vec<String> {
        let ids = frame
            .messages
            .iter()
            .map(|m| m.header().unwrap().control_id.clone());
        ids.map(Option::unwrap_or_default).collect()
    }

    #[test]
    fn cr_lf_and_crlf_give_the_same_text() {
        let segments = [MSH_A, "EVN|A04", "PID|1||P-1"];
        let texts: Vec<String> = ["\r", "\n", "\r\n"]
            .iter()
            .map(|t| {
                split_frame(&frame(&segments, t)).unwrap().messages[0]
                    .text()
                    .to_owned()
            })
            .collect();
        assert_eq!(texts[0], segments.join("\r"));
        assert_eq!(texts[0], texts[1]);
        assert_eq!(texts[0], texts[2]);
    }

    #[test]
    fn lf_is_data_when_cr_ends_segments() {
        let bytes = format!("{MSH_A}\rNTE|1||line one\nline two\r");
        let frame = split_frame(bytes.as_bytes()).unwrap();
        assert_eq!(frame.messages[0].text().split('\r').count(), 2);
        assert!(frame.messages[0].text().ends_with("line one\nline two"));
    }

    #[test]
    fn byte_order_mark_and_blank_lines_are_skipped() {
        let bytes = format!("\u{FEFF}{MSH_A}\n\nPID|1||P-1\n\n\n");
        let frame = split_frame(bytes.as_bytes()).unwrap();
        assert_eq!(frame.messages.len(), 1);
        assert_eq!(frame.messages[0].text(), format!("{MSH_A}\rPID|1||P-1"));
    }

    #[test]
    fn several_bare_messages_are_split() {
        let frame = split_frame(&frame(&[MSH_A, "PID|1", MSH_B, "PID|2"], "\r")).unwrap();
        assert_eq!(frame.envelope, Envelope::Bare);
        assert_eq!(control_ids(&frame), ["A1", "B2"]);
    }

    #[test]
    fn batch_without_file_header_is_a_batch() {
        let segments = ["BHS|^~\\&|APP", MSH_A, "EVN|A04", MSH_B, "BTS|2"];
        let frame = split_frame(&frame(&segments, "\r")).unwrap();
        assert_eq!(frame.envelope, Envelope::Batch);
        assert_eq!(control_ids(&frame), ["A1", "B2"]);
        assert_eq!(frame.envelope_segments, ["BHS|^~\\&|APP", "BTS|2"]);
    }

    #[test]
    fn file_with_two_batches_is_a_file() {
        let segments = [
            "FHS|^~\\&",
            "BHS|^~\\&",
            MSH_A,
            "BTS|1",
            "BHS|^~\\&",
            MSH_B,
            "BTS|1",
        ];
        let frame = split_frame(&frame(&[&segments[..], &["FTS|2"]].concat(), "\r")).unwrap();
        assert_eq!(frame.envelope, Envelope::File);
        assert_eq!(control_ids(&frame), ["A1", "B2"]);
    }

    #[test]
    fn a_bts_1_that_miscounts_its_batch_is_reported_with_the_batch() {
        let segments = [
            "BHS|^~\\&",
            MSH_A,
            "BTS|1",
            "BHS|^~\\&",
            MSH_A,
            MSH_B,
            "BTS|3",
            MSH_B,
        ];
        let frame = split_frame(&frame(&segments, "\r")).unwrap();
        let miscounted = MiscountedBatch {
            messages: 1..3,
            declared: "3".into(),
            trailer: 2,
        };
        assert_eq!(frame.miscounted_batches, std::slice::from_ref(&miscounted));
        assert_eq!(frame.miscounted_batch_of(0), None);
        assert_eq!(frame.miscounted_batch_of(2), Some(&miscounted));
        assert_eq!(
            frame.miscounted_batch_of(3),
            None,
            "a bare message after the batch"
        );
    }

    #[test]
    fn an_absent_or_matching_bts_1_changes_nothing_and_a_word_is_no_count() {
        let count = |bts: &str| {
            let segments = ["BHS|^~\\&", MSH_A, MSH_B, bts];
            split_frame(&frame(&segments, "\r"))
                .unwrap()
                .miscounted_batches
                .len()
        };
        assert_eq!(count("BTS"), 0);
        assert_eq!(count("BTS||comment"), 0);
        assert_eq!(count("BTS|2"), 0);
        assert_eq!(count("BTS| 02 "), 0);
        assert_eq!(count("BTS|two"), 1);
        assert_eq!(count("BTS|0"), 1);
    }

    #[test]
    fn nested_batch_header_is_an_error() {
        let segments = ["BHS|^~\\&", MSH_A, "BHS|^~\\&", MSH_B, "BTS|1", "BTS|1"];
        let err = split_frame(&frame(&segments, "\r")).unwrap_err();
        assert_eq!(err, FrameError::NestedBatch { line: 3 });
    }

    #[test]
    fn envelope_errors_are_reported() {
        let err = |segments: &[&str]| split_frame(&frame(segments, "\r")).unwrap_err();
        assert_eq!(
            err(&["BHS|^~\\&", MSH_A]),
            FrameError::Unclosed { name: "BTS" }
        );
        assert_eq!(
            err(&[MSH_A, "BTS|1"]),
            FrameError::UnmatchedTrailer {
                name: "BTS",
                line: 2
            }
        );
        assert_eq!(
            err(&[MSH_A, "FHS|^~\\&"]),
            FrameError::MisplacedFileHeader { line: 2 }
        );
        assert_eq!(
            err(&["PID|1", MSH_A]),
            FrameError::OutsideMessage { line: 1 }
        );
        assert_eq!(
            err(&["FHS|^~\\&", "FTS|0", MSH_A]),
            FrameError::AfterFileTrailer { line: 3 }
        );
        assert_eq!(split_frame(b"\r\n\r\n").unwrap_err(), FrameError::Empty);
    }

    #[test]
    fn header_is_read_from_a_frame_that_cannot_be_split() {
        let segments = ["BHS|^~\\&", MSH_A, "BHS|^~\\&", "BTS|1"];
        let header = read_header(&frame(&segments, "\r")).unwrap();
        assert_eq!(header.control_id.as_deref(), Some("A1"));
    }

    #[test]
    fn message_bytes_are_the_original_bytes() {
        let bytes = frame(&[MSH_A, "PID|1", MSH_B], "\r\n");
        let frame = split_frame(&bytes).unwrap();
        assert_eq!(
            frame.messages[0].bytes(),
            format!("{MSH_A}\r\nPID|1").as_bytes()
        );
    }

    #[test]
    fn debug_output_leaves_out_the_message_text() {
        let frame = split_frame(format!("{MSH_A}\rPID|1||SECRET-MRN").as_bytes()).unwrap();
        assert!(!format!("{frame:?}").contains("SECRET-MRN"));
    }

    #[test]
    fn msh_18_selects_the_character_set() {
        let msh = "MSH|^~\\&|A|B|C|D|2024||ADT^A08|1|P|2.4|||AL|NE|NLD|8859/1~UNICODE UTF-8";
        let bytes = [msh.as_bytes(), b"\rPID|1||1||Zo\xEB"].concat();
        let message = &split_frame(&bytes).unwrap().messages[0];
        assert!(message.text().ends_with("Zoë"));
        assert_eq!(message.charset().encoding, "windows-1252");
    }
}
