//! librdkafka's own log lines and client errors, into `tracing` at hl7bridge's levels. The
//! rdkafka defaults log a broker that is briefly unreachable at ERROR, the level hl7bridge
//! keeps for data an operator must act on; librdkafka reconnects by itself, so it is a warning.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

pub(crate) fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error | Warning => {
            tracing::warn!(facility, "librdkafka: {message}")
        }
        Notice | Info => tracing::info!(facility, "librdkafka: {message}"),
        Debug => tracing::debug!(facility, "librdkafka: {message}"),
    }
}

pub(crate) fn error(error: &KafkaError, reason: &str) {
    tracing::warn!(error = %error, reason, "Kafka client error; librdkafka retries");
}

/// The producer's context: logging only.
pub struct ProducerLogs;

impl ClientContext for ProducerLogs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log(level, facility, message);
    }

    fn error(&self, err: KafkaError, reason: &str) {
        error(&err, reason);
    }
}
