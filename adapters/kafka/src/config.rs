use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;

/// How to reach and join the cluster.
#[derive(Clone, Default)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` (`bootstrap.servers`).
    pub brokers: String,
    /// The consumer group (`group.id`).
    pub group_id: String,
    pub security: Security,
    /// Raw librdkafka properties (`fetch.wait.max.ms`, `socket.keepalive.enable`, …), applied
    /// after the typed settings. Properties this crate's guarantees rest on cannot be
    /// overridden (see [`KafkaConfig::consumer_config`] and [`KafkaConfig::producer_config`]).
    pub options: BTreeMap<String, String>,
}

/// Transport security. Unset fields leave librdkafka's defaults (plaintext).
#[derive(Clone, Default)]
pub struct Security {
    /// `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: Option<String>,
    /// `sasl.mechanism`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    /// `ssl.ca.location`: a PEM file of trusted certificate authorities.
    pub ssl_ca_location: Option<String>,
    /// `ssl.certificate.location` and `ssl.key.location`: a client certificate and its key.
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
}

/// Never printed: the SASL password stays out of logs and panics.
impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "***"))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let option_names: Vec<&String> = self.options.keys().collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("security", &self.security)
            .field("options", &option_names)
            .finish()
    }
}

impl KafkaConfig {
    fn common(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        let s = &self.security;
        let typed = [
            ("security.protocol", &s.protocol),
            ("sasl.mechanism", &s.sasl_mechanism),
            ("sasl.username", &s.sasl_username),
            ("sasl.password", &s.sasl_password),
            ("ssl.ca.location", &s.ssl_ca_location),
            ("ssl.certificate.location", &s.ssl_certificate_location),
            ("ssl.key.location", &s.ssl_key_location),
        ];
        for (name, value) in typed {
            if let Some(value) = value {
                config.set(name, value);
            }
        }
        for (name, value) in &self.options {
            config.set(name, value);
        }
        config
    }

    /// Consumer settings. Offsets are committed by the application after its own commit, so
    /// automatic commits and automatic offset storing are forced off; a new group starts at the
    /// earliest record, so nothing produced before the first start is skipped. The prefetch
    /// queue is 4 MiB unless set otherwise: librdkafka's 64 MiB default, full of large
    /// transaction Bundles, took the server to 370–560 MB RSS in the benchmark for no gain in
    /// throughput.
    pub fn consumer_config(&self, statistics_interval_ms: u64) -> ClientConfig {
        let mut config = self.common();
        config
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("statistics.interval.ms", statistics_interval_ms.to_string());
        if !self.options.contains_key("auto.offset.reset") {
            config.set("auto.offset.reset", "earliest");
        }
        if !self.options.contains_key("queued.max.messages.kbytes") {
            config.set("queued.max.messages.kbytes", "4096");
        }
        config
    }

    /// Producer settings: idempotent, acknowledged by every in-sync replica, and failing a
    /// delivery after `delivery_timeout_ms` so the caller learns of an outage and retries.
    pub fn producer_config(&self, delivery_timeout_ms: u64) -> ClientConfig {
        let mut config = self.common();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", delivery_timeout_ms.to_string());
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_options_cannot_switch_on_automatic_commits() {
        let config = KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "g".into(),
            options: BTreeMap::from([
                ("enable.auto.commit".to_string(), "true".to_string()),
                ("fetch.wait.max.ms".to_string(), "50".to_string()),
            ]),
            ..KafkaConfig::default()
        };
        let consumer = config.consumer_config(1000);
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("4096"));
        let producer = config.producer_config(5000);
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
    }

    #[test]
    fn the_password_is_not_printed() {
        let config = KafkaConfig {
            security: Security {
                sasl_password: Some("hunter2".into()),
                ..Security::default()
            },
            ..KafkaConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
