//! MLLP transport for HL7v2: framing, and a TCP server that hands each frame to the application
//! and writes back its answer, over plain TCP or whatever stream a [`Handshake`] makes of it
//! (TLS, in the application).
//!
//! This crate owns the bytes on the wire and the connection lifecycle (limits, timeouts,
//! connection cap, graceful shutdown). It knows nothing of HL7 or FHIR: a [`MessageHandler`]
//! turns a payload into response payloads, typically ACKs, each
//! written as its own frame, and decides what to answer for an oversized frame. Logs carry sizes, peers and connection ids, never payload bytes.
//!
//! Limitations:
//! - A 0x0B inside a frame is payload, not a new frame (see [`codec`]); a sender that lost a
//!   trailer gets one answer for the two messages it ran together.
//! - Keepalive probe timing is the operating system's; tune it there (or set it per socket with
//!   `socket2` if that is ever needed).

mod buffers;
pub mod codec;
mod config;
mod connection;
mod handshake;
mod server;
mod slots;

pub use codec::{encode, FrameDecoder, FrameError, Truncated};
pub use config::{ConfigError, MllpConfig};
pub use handshake::{Handshake, PeerIdentity, PlainTcp};
pub use server::{DrainOutcome, FrameMeta, MessageHandler, MllpServer};
pub use slots::MIN_IDLE_TO_EVICT;
