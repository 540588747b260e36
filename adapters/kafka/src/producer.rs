use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;
use crate::logging::ProducerLogs;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer: librdkafka retries internally without duplicating or reordering the
/// records of a partition, and a delivery fails only after the configured delivery timeout.
///
/// An idempotent producer can enter a fatal state (the broker lost its producer state, for
/// one); librdkafka then refuses every record on that instance. The instance is replaced by a
/// new one from the same settings the next time a record is queued.
#[derive(Clone)]
pub struct Producer {
    config: ClientConfig,
    inner: Arc<Mutex<FutureProducer<ProducerLogs>>>,
}

/// Whether the broker or the client refused a record for its size: sending it again cannot
/// succeed.
pub fn is_too_large(err: &KafkaError) -> bool {
    err.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
}

/// A record handed to librdkafka, not yet acknowledged by the broker.
pub struct Pending(DeliveryFuture);

impl Pending {
    pub async fn delivered(self) -> Result<Delivered, KafkaError> {
        match self.0.await {
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((err, _))) => Err(err),
            Err(_) => Err(KafkaError::Canceled),
        }
    }
}

impl Producer {
    pub fn new(config: &KafkaConfig, delivery_timeout: Duration) -> Result<Producer, KafkaError> {
        let timeout_ms = delivery_timeout.as_millis().max(1) as u64;
        Producer::with_client_config(&config.producer_config(timeout_ms))
    }

    pub fn with_client_config(config: &ClientConfig) -> Result<Producer, KafkaError> {
        Ok(Producer {
            config: config.clone(),
            inner: Arc::new(Mutex::new(config.create_with_context(ProducerLogs)?)),
        })
    }

    /// The live instance, replaced first if it is in a fatal state.
    fn current(&self) -> Result<FutureProducer<ProducerLogs>, KafkaError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((code, reason)) = inner.client().fatal_error() {
            tracing::warn!(%code, reason, "the Kafka producer hit a fatal error; replacing it");
            *inner = self.config.create_with_context(ProducerLogs)?;
        }
        Ok(inner.clone())
    }

    /// Queues a record and returns at once; await [`Pending::delivered`] for the broker's
    /// acknowledgement. Records queued in order on one partition are delivered in that order.
    pub fn enqueue(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Pending, KafkaError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.current()?
            .send_result(record)
            .map(Pending)
            .map_err(|(err, _)| err)
    }

    /// Queues a record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Delivered, KafkaError> {
        self.enqueue(topic, key, payload, headers)?
            .delivered()
            .await
    }

    /// The `topics` the cluster does not have (blocking: call it off the async workers).
    /// Asking may create a topic where the broker creates topics on demand.
    pub fn missing_topics(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<Vec<String>, KafkaError> {
        let producer = self.current()?;
        let mut missing = Vec::new();
        for topic in topics {
            let metadata = producer.client().fetch_metadata(Some(topic), timeout)?;
            let known = metadata
                .topics()
                .iter()
                .any(|t| t.name() == *topic && t.error().is_none() && !t.partitions().is_empty());
            if !known {
                missing.push(topic.to_string());
            }
        }
        Ok(missing)
    }

    /// Waits for every queued record, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current()?.flush(timeout)
    }
}
