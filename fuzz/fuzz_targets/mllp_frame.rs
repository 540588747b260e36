//! The MLLP frame decoder (`adapters/mllp`), fed one byte stream whole and cut into reads of
//! varying size, as a connection would: both must yield the same frames, the same oversized
//! frame and the same end state. Every frame must come back unchanged through `encode`.
//!
//! Input: byte 0 sets the read sizes, byte 1 the frame limit (0 means the default), the rest
//! is the stream.
#![no_main]

use hl7bridge_mllp::codec::{DEFAULT_MAX_FRAME_BYTES, TRAILER};
use hl7bridge_mllp::{encode, FrameDecoder, FrameError};
use libfuzzer_sys::fuzz_target;

/// What a connection sees: frames until the first oversized one (after which it closes), and
/// whether the stream ended between frames.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    frames: Vec<Vec<u8>>,
    oversized: bool,
    clean_end: bool,
}

fn decode<'a>(max_frame_bytes: usize, reads: impl Iterator<Item = &'a [u8]>) -> Seen {
    let mut decoder = FrameDecoder::new(max_frame_bytes);
    let mut seen = Seen {
        frames: Vec::new(),
        oversized: false,
        clean_end: false,
    };
    for read in reads {
        decoder.push(read);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => seen.frames.push(frame.to_vec()),
                Ok(None) => break,
                Err(FrameError::Oversized { prefix, limit }) => {
                    assert_eq!(limit, max_frame_bytes);
                    assert!(!prefix.is_empty(), "an oversized frame keeps a prefix");
                    seen.oversized = true;
                    return seen;
                }
            }
        }
    }
    seen.clean_end = decoder.finish().is_ok();
    seen
}

/// Read sizes from 1 to 32 bytes, in a pattern set by `seed`.
fn reads(stream: &[u8], seed: u8) -> impl Iterator<Item = &[u8]> {
    let mut state = u32::from(seed) | 1;
    let mut rest = stream;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = (((state >> 16) % 32) as usize + 1).min(rest.len());
        let (read, tail) = rest.split_at(len);
        rest = tail;
        Some(read)
    })
}

fuzz_target!(|data: &[u8]| {
    let [seed, limit, stream @ ..] = data else {
        return;
    };
    let max_frame_bytes = match limit {
        0 => DEFAULT_MAX_FRAME_BYTES,
        n => usize::from(*n),
    };
    let whole = decode(max_frame_bytes, std::iter::once(stream));
    let pieces = decode(max_frame_bytes, reads(stream, *seed));
    assert_eq!(
        whole, pieces,
        "frames must not depend on how reads were cut"
    );

    for frame in &whole.frames {
        assert!(frame.len() <= max_frame_bytes);
        assert!(!frame.windows(2).any(|w| w == TRAILER));
        let again = decode(max_frame_bytes, std::iter::once(&encode(frame)[..]));
        assert_eq!(
            again.frames,
            vec![frame.clone()],
            "encode then decode is lossless"
        );
        assert!(again.clean_end);
    }
});
