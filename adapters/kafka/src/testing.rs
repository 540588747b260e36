//! librdkafka's in-process mock cluster, wrapped so tests of code built on this crate need no
//! rdkafka types: a Kafka-protocol broker on a loopback port, with topic creation and outages.

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A mock cluster. It serves until dropped.
pub struct MockBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl MockBroker {
    /// A cluster of `brokers` brokers (ids from 1), listening on 127.0.0.1.
    pub fn new(brokers: i32) -> Result<MockBroker, KafkaError> {
        Ok(MockBroker {
            cluster: MockCluster::new(brokers)?,
        })
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        self.cluster.create_topic(topic, partitions, 1)
    }

    /// Takes a broker off the network: its connections drop and new ones are refused.
    pub fn broker_down(&self, broker_id: i32) -> Result<(), KafkaError> {
        self.cluster.broker_down(broker_id)
    }

    pub fn broker_up(&self, broker_id: i32) -> Result<(), KafkaError> {
        self.cluster.broker_up(broker_id)
    }
}
