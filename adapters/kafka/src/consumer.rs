use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::KafkaConfig;

/// One consumed record, owned, so it outlives the consumer's buffers.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The first header named `name`, as text when it is UTF-8.
    pub fn header_text(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    fn from_message(message: &BorrowedMessage<'_>) -> Record {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }
}

/// What the application wants to hear from the consumer's background events.
pub trait ConsumerObserver: Send + Sync + 'static {
    /// Records on the broker not yet committed by this group, per assigned partition, from
    /// librdkafka's periodic statistics.
    fn lag(&self, topic: &str, partition: i32, lag: i64);
    /// Partitions were assigned (`true`) or revoked (`false`).
    fn rebalanced(&self, assigned: bool, partitions: usize) {
        let _ = (assigned, partitions);
    }
}

struct Context {
    observer: Arc<dyn ConsumerObserver>,
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::logging::log(level, facility, message);
    }

    fn error(&self, err: KafkaError, reason: &str) {
        crate::logging::error(&err, reason);
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // Partition -1 is librdkafka's internal unassigned partition; negative lag
                // means nothing committed yet on a partition the statistics cannot judge.
                if *id >= 0 && p.desired && p.consumer_lag >= 0 {
                    self.observer.lag(topic, *id, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            self.observer.rebalanced(false, partitions.count());
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.observer.rebalanced(true, partitions.count());
        }
    }
}

/// A group member that hands out batches and commits only what it is told to.
///
/// Offsets are committed per batch, after the caller's own commit. A batch that is processed but
/// not committed when the process dies or the partitions move is consumed again by whoever owns
/// them next: processing must be idempotent, and is, in hl7bridge.
pub struct Consumer {
    inner: Arc<StreamConsumer<Context>>,
}

impl Consumer {
    pub fn new(
        config: &KafkaConfig,
        topics: &[&str],
        observer: Arc<dyn ConsumerObserver>,
    ) -> Result<Consumer, KafkaError> {
        Consumer::with_client_config(&config.consumer_config(5000), topics, observer)
    }

    /// As [`Consumer::new`], from raw client settings (tests tune timings this way).
    pub fn with_client_config(
        config: &ClientConfig,
        topics: &[&str],
        observer: Arc<dyn ConsumerObserver>,
    ) -> Result<Consumer, KafkaError> {
        let inner: StreamConsumer<Context> = config.create_with_context(Context { observer })?;
        inner.subscribe(topics)?;
        Ok(Consumer {
            inner: Arc::new(inner),
        })
    }

    /// Waits for at least one record, then gathers more for at most `wait` until `max` are in
    /// hand. Consumer errors (a broker down, say) are logged and waited out: librdkafka
    /// reconnects by itself.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Vec<Record> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            match self.inner.recv().await {
                Ok(message) => batch.push(Record::from_message(&message)),
                Err(err) => {
                    tracing::warn!(error = %err, "Kafka consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.inner.recv()).await {
                Ok(Ok(message)) => batch.push(Record::from_message(&message)),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "Kafka consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Commits, synchronously, the position after every record in `records`: per partition the
    /// highest offset plus one. Call it only once those records are durable.
    pub async fn commit(&self, records: &[Record]) -> Result<(), KafkaError> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in records {
            let slot = next.entry((&r.topic, r.partition)).or_insert(r.offset + 1);
            *slot = (*slot).max(r.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        let inner = self.inner.clone();
        // A synchronous commit waits on the network: off the async workers.
        tokio::task::spawn_blocking(move || inner.commit(&list, CommitMode::Sync))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

/// The group's committed position on each partition of `topic` (`None` where it has committed
/// nothing), asked of the group coordinator without joining the group.
pub fn committed_offsets(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Option<i64>>, KafkaError> {
    let consumer: BaseConsumer = config.consumer_config(0).create()?;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    Ok((0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect())
}
