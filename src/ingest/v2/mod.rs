//! Reading and writing HL7v2 ER7 text.
//!
//! This module owns everything between the bytes of a received frame and typed, decoded access
//! to the fields of each message, and the reverse step of writing an ACK:
//!
//! - [`split_frame`]: skips a UTF-8 byte-order mark, finds segment terminators, and splits a
//!   frame into messages, accepting several bare `MSH` messages and `FHS`/`BHS`/`BTS`/`FTS`
//!   envelopes ([`Envelope`] tells the caller which kind it saw, for a batch ACK).
//! - [`RawMessage`]: one message's original bytes, decoded text ([`Charset`] says how it was
//!   decoded) and its [`Header`], which is readable even when the rest of the message is not,
//!   so that an AR can still echo what the sender sent.
//! - [`Message`]: the parsed message with decoded access by HL7 position
//!   (`msg.segments_named("OBX")`, `seg.field(5)`, `rep.component(1)`).
//! - [`dtm`]: HL7 timestamps to FHIR `date`, `dateTime`, `instant` and `time` text.
//! - [`TraceCarrier`]: the W3C trace context carried in a `ZTR` segment.
//! - [`build_ack`]: an ACK written from plain values; [`AckMode`]: which ACKs a message gets
//!   (original or enhanced mode, from MSH-15 and MSH-16).
//!
//! The `hl7-parser` crate is used for one job only: splitting a normalised message into
//! segments, fields, repetitions, components and subcomponents. Splitting frames, reading
//! MSH-1/MSH-2, segment terminators, character sets, unescaping and timestamp conversion are done
//! here, because the crate gets each of them wrong on real input (see the comment at each
//! workaround and `shared/LIBRARIES.md`).
//!
//! Limits: UTF-16 and other encodings that are not ASCII-compatible cannot be read (the frame is
//! split on ASCII bytes before decoding); `\C..\` and `\M..\` character-set escapes are kept
//! verbatim rather than interpreted.

mod ack;
mod ack_mode;
mod charset;
mod delimiters;
pub mod dtm;
mod escape;
mod frame;
mod header;
mod message;
mod segment_names;
mod trace;

pub use ack::{build_ack, error_text, AckCode, AckError};
pub use ack_mode::{
    accept_code, ack_messages, due_under, msa_field, split_stored_acks, AckCondition, AckMode,
    DueAcks, Expectation,
};
pub use charset::{encoding_named, Charset, CharsetRules, CharsetSource};
pub use delimiters::{DelimiterError, Delimiters};
pub use dtm::{DtmError, UtcOffset};
pub use escape::{escape, unescape};
pub use frame::{
    read_header, split_frame, split_frame_with, Envelope, Frame, FrameError, MiscountedBatch,
    RawMessage,
};
pub use header::Header;
pub use message::{parse_message, Field, Message, ParseError, Repetition, Segment};
pub use trace::{TraceCarrier, ZTR_MAX_REPETITIONS};
