//! Kafka transport for hl7bridge, over rdkafka (librdkafka). It knows records, offsets and
//! headers; what a record means is the application's business.
//!
//! - [`KafkaConfig`]: brokers, group, security settings and a pass-through map of raw
//!   librdkafka options, turned into client settings in one place.
//! - [`Consumer`]: hands out batches of owned [`Record`]s and commits offsets only when told,
//!   after the application has made the batch durable. Automatic commits and automatic offset
//!   storing are off whatever the pass-through options say.
//! - [`Producer`]: idempotent (`enable.idempotence`, `acks=all`), so retries inside librdkafka
//!   neither duplicate nor reorder records of one partition.

mod config;
mod consumer;
mod logging;
mod producer;
pub mod testing;

pub use config::{KafkaConfig, Security};
pub use consumer::{committed_offsets, Consumer, ConsumerObserver, Record};
pub use producer::{is_too_large, Delivered, Pending, Producer};
pub use rdkafka::error::KafkaError;
