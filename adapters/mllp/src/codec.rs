//! MLLP framing: finding frames in a byte stream, and wrapping outgoing payloads.
//!
//! A frame is a start block (0x0B), the payload, then the trailer 0x1C 0x0D. MLLP has no
//! escaping, so the trailer alone ends a frame: a 0x1C not followed by 0x0D is payload, and so is
//! a 0x0B that appears before the trailer. Resynchronising on an inner 0x0B instead would throw
//! away bytes the sender believes it delivered, with no reply to tell it so; passing them on means
//! the handler sees them and answers.
//!
//! One [`FrameDecoder`] belongs to one connection. It knows nothing of sockets: the caller pushes
//! whatever a read returned and then asks for frames until there are none.

use bytes::{Buf, Bytes, BytesMut};

/// First byte of every frame.
pub const START_BLOCK: u8 = 0x0B;
/// First trailer byte; on its own it is payload.
pub const END_BLOCK: u8 = 0x1C;
/// Second trailer byte.
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// The two bytes that end a frame.
pub const TRAILER: [u8; 2] = [END_BLOCK, CARRIAGE_RETURN];

/// Default payload limit: far above real HL7v2 messages, low enough to bound memory per connection.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// How much of an oversized payload is kept: enough for the MSH segment, so an AR can be built.
pub const OVERSIZED_PREFIX_BYTES: usize = 64 * 1024;

/// Why no further frame can be taken from this connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The current frame's payload grew past the limit. The decoder skips the rest of that frame,
    /// but the connection should answer (using `prefix`) and close.
    #[error("frame payload exceeds the {limit}-byte limit")]
    Oversized { prefix: Bytes, limit: usize },
}

/// The stream ended inside a frame; its bytes are lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream ended mid-frame with {buffered_bytes} payload bytes buffered")]
pub struct Truncated {
    pub buffered_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: everything up to the next start block is junk.
    Seeking,
    /// After a start block: the buffer starts at the payload's first byte.
    InFrame,
    /// Inside a frame already reported as oversized: dropped up to its trailer.
    Discarding,
}

/// Where the trailer search ended.
enum Scan {
    /// The payload is this many bytes and the trailer follows it.
    Complete(usize),
    /// No trailer yet; this many leading bytes are certainly payload.
    Incomplete(usize),
}

/// Per-connection frame decoder over a growing buffer.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    state: State,
    /// Bytes of the current payload already searched for a trailer, so each byte is searched once.
    scanned: usize,
    junk_bytes: u64,
    max_frame_bytes: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder refusing payloads longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            state: State::Seeking,
            scanned: 0,
            junk_bytes: 0,
            max_frame_bytes,
        }
    }

    /// Appends bytes as read from the connection, at any boundary.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete payload, or `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            let moved_on = match self.state {
                State::Seeking => self.seek_start(),
                State::InFrame => return self.take_frame(),
                State::Discarding => self.discard_rest(),
            };
            if !moved_on {
                return Ok(None);
            }
        }
    }

    /// Bytes held: the current frame's so far, and whatever followed it.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Whether a frame has started but not ended (after `next_frame` returned `Ok(None)`).
    pub fn is_mid_frame(&self) -> bool {
        self.state != State::Seeking
    }

    /// At end of stream: `Ok` if it ended between frames. Call once `next_frame` returns `Ok(None)`.
    pub fn finish(&self) -> Result<(), Truncated> {
        match self.state {
            State::Seeking => Ok(()),
            State::InFrame | State::Discarding => Err(Truncated {
                buffered_bytes: self.buf.len(),
            }),
        }
    }

    /// Bytes skipped outside any frame (line endings, NULs, anything before a start block).
    pub fn junk_bytes(&self) -> u64 {
        self.junk_bytes
    }

    /// Skips to just past the next start block; `false` if there is none yet.
    fn seek_start(&mut self) -> bool {
        match self.buf.iter().position(|&b| b == START_BLOCK) {
            Some(at) => {
                self.junk_bytes += at as u64;
                self.buf.advance(at + 1);
                self.state = State::InFrame;
                self.scanned = 0;
                true
            }
            None => {
                self.junk_bytes += self.buf.len() as u64;
                self.buf.clear();
                false
            }
        }
    }

    fn take_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        // Phase 1: is a whole frame buffered, and is it within the limit?
        let payload_len = match find_trailer(&self.buf, self.scanned) {
            Scan::Complete(len) => len,
            Scan::Incomplete(scanned) => {
                self.scanned = scanned;
                if scanned > self.max_frame_bytes {
                    return Err(self.reject(scanned));
                }
                return Ok(None);
            }
        };
        if payload_len > self.max_frame_bytes {
            return Err(self.reject(payload_len));
        }

        // Phase 2: take it and step over the trailer.
        let payload = self.buf.split_to(payload_len).freeze();
        self.buf.advance(TRAILER.len());
        self.state = State::Seeking;
        Ok(Some(payload))
    }

    /// Keeps the payload's prefix for the caller and drops the rest of the frame from here on.
    fn reject(&mut self, known_payload: usize) -> FrameError {
        let keep = known_payload.min(OVERSIZED_PREFIX_BYTES);
        let prefix = self.buf.split_to(keep).freeze();
        self.state = State::Discarding;
        FrameError::Oversized {
            prefix,
            limit: self.max_frame_bytes,
        }
    }

    /// Drops payload bytes up to and including the trailer; `false` if it has not arrived.
    fn discard_rest(&mut self) -> bool {
        match find_trailer(&self.buf, 0) {
            Scan::Complete(len) => {
                self.buf.advance(len + TRAILER.len());
                self.state = State::Seeking;
                true
            }
            Scan::Incomplete(scanned) => {
                self.buf.advance(scanned);
                false
            }
        }
    }
}

/// Searches `payload[from..]` for the trailer. A 0x1C as the last buffered byte is left unscanned,
/// since the 0x0D that would make it a trailer may be in the next read.
fn find_trailer(payload: &[u8], from: usize) -> Scan {
    let end_blocks = payload
        .iter()
        .enumerate()
        .skip(from)
        .filter(|&(_, &b)| b == END_BLOCK);
    for (at, _) in end_blocks {
        match payload.get(at + 1) {
            Some(&CARRIAGE_RETURN) => return Scan::Complete(at),
            Some(_) => {}
            None => return Scan::Incomplete(at),
        }
    }
    Scan::Incomplete(payload.len())
}

/// Wraps `payload` in a frame. The payload must not contain the trailer, which MLLP cannot escape;
/// HL7v2 text never does.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(payload.len() + 1 + TRAILER.len());
    framed.push(START_BLOCK);
    framed.extend_from_slice(payload);
    framed.extend_from_slice(&TRAILER);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut FrameDecoder) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = decoder.next_frame() {
            frames.push(frame);
        }
        frames
    }

    fn oversized_prefix(result: Result<Option<Bytes>, FrameError>) -> Option<Bytes> {
        match result {
            Err(FrameError::Oversized { prefix, .. }) => Some(prefix),
            _ => None,
        }
    }

    #[test]
    fn a_single_frame_is_decoded() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&encode(b"MSH|^~\\&|A"));

        assert_eq!(
            decode_all(&mut decoder),
            vec![Bytes::from_static(b"MSH|^~\\&|A")]
        );
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn a_partial_frame_is_not_an_error() {
        let mut decoder = FrameDecoder::default();
        decoder.push(b"\x0bMSH|partial");

        assert_eq!(decoder.next_frame(), Ok(None));
        assert!(decoder.is_mid_frame());
    }

    #[test]
    fn a_frame_pushed_one_byte_at_a_time_is_decoded() {
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        for byte in encode(b"MSH|one\rPID|1") {
            decoder.push(&[byte]);
            frames.extend(decode_all(&mut decoder));
        }

        assert_eq!(frames, vec![Bytes::from_static(b"MSH|one\rPID|1")]);
    }

    #[test]
    fn trailer_bytes_in_separate_pushes_end_the_frame() {
        let mut decoder = FrameDecoder::default();
        decoder.push(b"\x0bMSH|x\x1c");
        assert_eq!(decoder.next_frame(), Ok(None));

        decoder.push(b"\x0d");

        assert_eq!(decoder.next_frame(), Ok(Some(Bytes::from_static(b"MSH|x"))));
    }

    #[test]
    fn every_frame_in_one_push_comes_out_in_order() {
        let mut decoder = FrameDecoder::default();
        let mut bytes = encode(b"first");
        bytes.extend(encode(b"second"));
        bytes.extend(encode(b"third"));
        decoder.push(&bytes);

        assert_eq!(decode_all(&mut decoder), vec!["first", "second", "third"]);
    }

    #[test]
    fn junk_between_frames_is_skipped_and_counted() {
        let mut decoder = FrameDecoder::default();
        decoder.push(b"\r\n\0 garbage");
        decoder.push(&encode(b"one"));
        decoder.push(b"\n\r\0");
        decoder.push(&encode(b"two"));

        assert_eq!(decode_all(&mut decoder), vec!["one", "two"]);
        assert_eq!(decoder.junk_bytes(), 11 + 3);
    }

    #[test]
    fn a_stray_line_feed_after_a_trailer_does_not_break_the_next_frame() {
        let mut decoder = FrameDecoder::default();
        decoder.push(b"\x0bone\x1c\x0d\n");
        assert_eq!(decode_all(&mut decoder), vec!["one"]);

        decoder.push(&encode(b"two"));

        assert_eq!(decode_all(&mut decoder), vec!["two"]);
        assert_eq!(decoder.junk_bytes(), 1);
    }

    #[test]
    fn an_end_block_without_carriage_return_is_payload() {
        let mut decoder = FrameDecoder::default();
        decoder.push(b"\x0ba\x1cb\x1c\x1c\x0d");

        assert_eq!(
            decode_all(&mut decoder),
            vec![Bytes::from_static(b"a\x1cb\x1c")]
        );
    }

    #[test]
    fn a_start_block_inside_a_frame_is_payload() {
        let mut decoder = FrameDecoder::default();
        decoder.push(b"\x0bone\x0btwo\x1c\x0d");

        assert_eq!(
            decode_all(&mut decoder),
            vec![Bytes::from_static(b"one\x0btwo")]
        );
    }

    #[test]
    fn an_empty_payload_is_a_frame() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&encode(b""));

        assert_eq!(decode_all(&mut decoder), vec![Bytes::new()]);
    }

    #[test]
    fn a_payload_of_exactly_the_limit_is_accepted() {
        let mut decoder = FrameDecoder::new(4);
        decoder.push(&encode(b"1234"));

        assert_eq!(decode_all(&mut decoder), vec!["1234"]);
    }

    #[test]
    fn a_complete_frame_over_the_limit_is_oversized() {
        let mut decoder = FrameDecoder::new(4);
        decoder.push(&encode(b"12345"));

        let prefix = oversized_prefix(decoder.next_frame());

        assert_eq!(prefix, Some(Bytes::from_static(b"12345")));
    }

    #[test]
    fn a_partial_frame_over_the_limit_is_oversized_before_its_trailer() {
        let mut decoder = FrameDecoder::new(4);
        decoder.push(b"\x0bMSH|123");

        let prefix = oversized_prefix(decoder.next_frame());

        assert_eq!(prefix, Some(Bytes::from_static(b"MSH|123")));
    }

    #[test]
    fn the_oversized_prefix_is_capped_at_64_kib() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&encode(&vec![b'x'; 200 * 1024]));

        let prefix = oversized_prefix(decoder.next_frame());

        assert_eq!(prefix.map(|p| p.len()), Some(OVERSIZED_PREFIX_BYTES));
    }

    #[test]
    fn decoding_resumes_after_the_oversized_frame_ends() {
        let mut decoder = FrameDecoder::new(4);
        decoder.push(b"\x0btoo long");
        assert!(oversized_prefix(decoder.next_frame()).is_some());

        decoder.push(b" still\x1c");
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.push(b"\x0d");
        decoder.push(&encode(b"ok"));

        assert_eq!(decode_all(&mut decoder), vec!["ok"]);
    }

    #[test]
    fn finish_is_clean_between_frames() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&encode(b"one"));
        decoder.push(b"\r\n");
        decode_all(&mut decoder);

        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn finish_reports_a_stream_that_ended_mid_frame() {
        let mut decoder = FrameDecoder::default();
        decoder.push(b"\x0bMSH|cut\x1c");
        decode_all(&mut decoder);

        assert_eq!(decoder.finish(), Err(Truncated { buffered_bytes: 8 }));
    }

    #[test]
    fn a_16_mib_frame_in_1_kib_pushes_is_decoded() {
        // Rescanning the buffer on every push would make this take minutes, not a fraction of
        // a second.
        let mut decoder = FrameDecoder::default();
        let framed = encode(&vec![b'x'; DEFAULT_MAX_FRAME_BYTES]);
        let mut frames = Vec::new();
        for chunk in framed.chunks(1024) {
            decoder.push(chunk);
            frames.extend(decode_all(&mut decoder));
        }

        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn encode_wraps_the_payload_in_start_block_and_trailer() {
        assert_eq!(encode(b"ACK"), b"\x0bACK\x1c\x0d");
    }
}
