//! hl7bridge: a FHIR R4 / HL7v2 integration server.
//!
//! Module map, in the order data flows:
//! - [`config`]: typed settings from the environment.
//! - [`startup`]: binds every listener, wires the parts together, runs until a shutdown signal.
//! - [`ingest`]: HL7v2 in (parse, map to FHIR, store, acknowledge after commit); the MLLP
//!   transport itself lives in the `hl7bridge-mllp` crate under `adapters/mllp`.
//! - [`fhir`]: the FHIR REST facade (actix-web). All fhirbolt calls sit in the
//!   `hl7bridge-fhir-codec` crate under `adapters/fhir-codec`.
//! - [`kafka`]: the optional Kafka adapter — HL7v2 and FHIR records in, the change feed out
//!   (the client itself lives in the `hl7bridge-kafka` crate under `adapters/kafka`).
//! - [`ops`]: `/health`, `/ready` and `/metrics` for load balancers and operators.
//! - [`store`]: the sea-orm data layer (SQLite or PostgreSQL); the schema lives in `entities/`.
//! - [`tls`]: HTTPS and MLLP over TLS (rustls): certificates, keys and client certificate names.
//! - [`send`]: `hl7bridge send`, a small MLLP client for trying the server.
//! - [`replay`]: `hl7bridge messages` and `hl7bridge replay`: the stored HL7v2 messages.
//! - [`import`]: `hl7bridge import`: Bundles and NDJSON files written straight to the database.
//! - [`auth`]: bearer tokens and SMART scopes for the FHIR API; [`audit`]: the audit trail.
//! - [`telemetry`]: logs, spans, OTLP export and the W3C trace context parser every carrier uses.
//! - `fuzzing` (hidden): the pure steps of each untrusted-input path, for the targets in `fuzz/`.

pub mod audit;
pub mod auth;
pub mod config;
pub mod fhir;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod ingest;
pub mod kafka;
pub mod ops;
pub mod replay;
pub mod send;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
