//! HL7v2 ingest: what happens to a frame between the MLLP transport and the ACK.
//!
//! For each message in a frame: parse ([`v2`]), continue the sender's trace from its `ZTR`,
//! map to FHIR ([`map`]), check every resource against the R4 model, merge the few that must
//! keep what is stored (`stored`: patient links, amended resources), then write the resources
//! and the raw message with its ACK in one transaction. The ACK goes back only after that
//! commit: AA when stored, AE when the content is wrong or the store failed (the sender may
//! retry), AR when the message cannot be read or is of a type not handled. Rejected messages are
//! stored raw too, with their ACK. Over MLLP with client certificates, a message whose MSH-3 /
//! MSH-4 its certificate may not send as ([`SenderMap`]) is refused AR before any of that.

pub mod map;
mod memory;
mod ownership;
mod process;
mod provenance;
mod rate;
mod senders;
mod stored;
pub mod v2;
pub(crate) mod verdict;

pub use process::{Answer, Hl7Ingest, Origin, MAX_MESSAGES_PER_FRAME};
pub use senders::SenderMap;
