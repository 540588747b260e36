//! The Kafka adapter: HL7v2 and FHIR records in, the change feed out.
//!
//! - [`inbound`]: one consumer on the HL7v2 and FHIR topics. Records go through the same
//!   pipelines as MLLP frames and HTTP Bundles; a batch's offsets are committed only after every
//!   record in it is stored or dead-lettered. A record the database cannot take right now is
//!   retried in place (its partition waits); a record that can never be processed goes to the
//!   dead-letter topic and the partition moves on.
//! - [`relay`]: publishes the outbox — rows the store writes in the same transaction as each
//!   change — to the change topic with an idempotent producer, marks what the broker
//!   acknowledged, and prunes old published rows. A broker outage only delays the feed.
//!
//! Everything here is optional: without `HL7BRIDGE_KAFKA_BROKERS` none of it starts.

mod inbound;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use hl7bridge_kafka::{Consumer, ConsumerObserver, Producer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::KafkaSettings;
use crate::fhir::transaction::BundleLimits;
use crate::ingest::Hl7Ingest;
use crate::store::Store;
use crate::telemetry::metrics::metrics;

/// What the inbound FHIR path shares with the HTTP API.
pub struct FhirIngest {
    pub store: Store,
    pub conditional_gate: Arc<tokio::sync::Mutex<()>>,
    pub bundle_limits: BundleLimits,
    /// The URL of the trace-context extension on `Bundle.meta`.
    pub trace_extension_url: String,
    /// `fullUrl` base for change-feed entries, when configured.
    pub public_base_url: Option<String>,
}

/// The running adapter.
pub struct Kafka {
    stop: watch::Sender<bool>,
    inbound: JoinHandle<()>,
    relay: JoinHandle<()>,
}

struct LagToMetrics;

impl ConsumerObserver for LagToMetrics {
    fn lag(&self, topic: &str, partition: i32, lag: i64) {
        metrics().kafka_lag(topic, partition, lag);
    }

    fn rebalanced(&self, assigned: bool, partitions: usize) {
        let change = if assigned { "assigned" } else { "revoked" };
        tracing::info!(change, partitions, "Kafka partitions rebalanced");
        metrics().kafka_assigned(if assigned { partitions } else { 0 });
    }
}

impl Kafka {
    /// Creates the clients and starts consuming and relaying.
    pub fn start(
        settings: &KafkaSettings,
        hl7: Arc<Hl7Ingest>,
        fhir: Arc<FhirIngest>,
    ) -> anyhow::Result<Kafka> {
        let topics = [settings.hl7_topic.as_str(), settings.fhir_topic.as_str()];
        let consumer = Consumer::new(&settings.client, &topics, Arc::new(LagToMetrics))?;
        let delivery_timeout = Duration::from_millis(settings.delivery_timeout_ms);
        let producer = Producer::new(&settings.client, delivery_timeout)?;
        // Its own instance: a dead letter never waits behind the change feed's backlog.
        let dead_letters = Producer::new(&settings.client, delivery_timeout)?;
        let (stop, stopped) = watch::channel(false);
        let inbound = inbound::Inbound {
            consumer,
            dead_letters,
            settings: settings.clone(),
            hl7,
            fhir: fhir.clone(),
        };
        let producer_for_check = producer.clone();
        let relay = relay::Relay {
            store: fhir.store.clone(),
            producer,
            topic: settings.change_topic.clone(),
            extension_url: fhir.trace_extension_url.clone(),
            public_base_url: fhir.public_base_url.clone(),
            retention: Duration::from_millis(settings.outbox_retention_ms),
            oversize: Default::default(),
        };
        metrics().changes_published(0);
        tracing::info!(
            brokers = %settings.client.brokers,
            dead_letter_topic = %settings.dead_letter_topic,
            group = %settings.client.group_id,
            hl7_topic = %settings.hl7_topic,
            fhir_topic = %settings.fhir_topic,
            change_topic = %settings.change_topic,
            "Kafka adapter started"
        );
        let topics = [
            settings.hl7_topic.clone(),
            settings.fhir_topic.clone(),
            settings.change_topic.clone(),
            settings.dead_letter_topic.clone(),
        ];
        let checker = producer_for_check;
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            match checker.missing_topics(&names, Duration::from_secs(10)) {
                Ok(missing) if missing.is_empty() => {}
                Ok(missing) => tracing::warn!(
                    missing = %missing.join(", "),
                    "Kafka topics missing: create them (records for them wait or fail until then)"
                ),
                Err(err) => tracing::warn!(error = %err, "could not check the Kafka topics"),
            }
        });
        Ok(Kafka {
            stop,
            inbound: tokio::spawn(inbound.run(stopped.clone())),
            relay: tokio::spawn(relay.run(stopped)),
        })
    }

    /// Stops consuming after the record in hand (its batch's processed records are committed)
    /// and gives the relay a last chance to publish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.inbound.await;
        let _ = self.relay.await;
    }
}
