//! Operator metrics, exposed at `GET /metrics` in the Prometheus text format.
//!
//! A deliberately small registry: counters and fixed-bucket histograms keyed by label values,
//! behind one mutex each (a few updates per request or message). Label values never hold
//! patient data and stay bounded: routes are patterns, message types outside the mapped ones
//! are `other`, methods outside the standard ones `_OTHER`, and everything else a closed set.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::trace_context::rejected_count;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the size buckets (writes per group commit).
const SIZE_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        self.observe_in(&BUCKETS, seconds);
    }

    fn observe_in(&mut self, bounds: &[f64; BUCKETS.len()], value: f64) {
        for (bound, count) in bounds.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }
}

struct Family<T> {
    name: &'static str,
    help: &'static str,
    series: Mutex<BTreeMap<Labels, T>>,
}

impl<T: Default> Family<T> {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn with(&self, labels: Labels, update: impl FnOnce(&mut T)) {
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        update(series.entry(labels).or_default());
    }
}

/// Every metric the server keeps.
pub struct Metrics {
    http_requests: Family<u64>,
    http_duration: Family<Histogram>,
    hl7_messages: Family<u64>,
    hl7_duration: Family<Histogram>,
    db_writes: Family<Histogram>,
    group_sizes: Family<Histogram>,
    lane_depth: Family<f64>,
    lane_wait: Family<Histogram>,
    mllp_paced: Family<Histogram>,
    cache_lookups: Family<u64>,
    shared_cache_lookups: Family<u64>,
    shared_cache_errors: Family<u64>,
    replica_reads: Family<u64>,
    replica_fallbacks: Family<u64>,
    replica_up: Family<f64>,
    replica_lag: Family<f64>,
    kafka_records: Family<u64>,
    kafka_lag: Family<f64>,
    kafka_assigned: Family<f64>,
    changes_published: Family<u64>,
    outbox_depth: Family<f64>,
    /// When the oldest unpublished change was committed (µs since the epoch); its age is
    /// computed when the metrics are read, so it keeps growing while the relay is stuck.
    outbox_oldest_us: Mutex<Option<Option<i64>>>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics {
        http_requests: Family::new(
            "hl7bridge_http_requests_total",
            "HTTP requests answered, by route, method and status class.",
        ),
        http_duration: Family::new(
            "hl7bridge_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
        ),
        hl7_messages: Family::new(
            "hl7bridge_hl7v2_messages_total",
            "HL7v2 messages answered, by message type, trigger event and ACK code.",
        ),
        hl7_duration: Family::new(
            "hl7bridge_hl7v2_ack_duration_seconds",
            "Time from a message's receipt to its ACK, by ACK code.",
        ),
        db_writes: Family::new(
            "hl7bridge_db_write_duration_seconds",
            "Time to commit one write batch, by outcome.",
        ),
        group_sizes: Family::new(
            "hl7bridge_group_commit_writes",
            "Writes (an HL7v2 message, a Kafka record, a FHIR request) committed together in one transaction.",
        ),
        lane_depth: Family::new(
            "hl7bridge_ingest_lane_depth",
            "Writes waiting for the next group commit, by lane (stat or normal).",
        ),
        lane_wait: Family::new(
            "hl7bridge_ingest_lane_wait_seconds",
            "Time from a write's arrival at the batcher to its commit, by lane; the stat lane's is the STAT latency.",
        ),
        mllp_paced: Family::new(
            "hl7bridge_mllp_paced_seconds",
            "How long MLLP frames were held back because their peer exceeded HL7BRIDGE_MLLP_MAX_MESSAGES_PER_SECOND_PER_PEER.",
        ),
        cache_lookups: Family::new(
            "hl7bridge_read_cache_lookups_total",
            "Read-cache lookups, by kind (resource or everything) and result (hit or miss).",
        ),
        shared_cache_lookups: Family::new(
            "hl7bridge_shared_cache_lookups_total",
            "Lookups in the shared second-level cache (Redis) after a read-cache miss, by kind and result (hit or miss).",
        ),
        shared_cache_errors: Family::new(
            "hl7bridge_shared_cache_errors_total",
            "Shared-cache (Redis) operations that failed or timed out; each was served by the database.",
        ),
        replica_reads: Family::new(
            "hl7bridge_replica_reads_total",
            "Read statements that may use the read replica, by the server that served them (replica or primary).",
        ),
        replica_fallbacks: Family::new(
            "hl7bridge_replica_fallbacks_total",
            "Read statements sent to the primary instead of the replica, by reason (down, lagging, read_your_writes, error).",
        ),
        replica_up: Family::new(
            "hl7bridge_replica_up",
            "Whether the read replica answered its last probe (1) or not (0).",
        ),
        replica_lag: Family::new(
            "hl7bridge_replica_lag_seconds",
            "How far the read replica was behind the primary at its last probe (an upper bound).",
        ),
        kafka_records: Family::new(
            "hl7bridge_kafka_records_total",
            "Kafka records consumed, by topic and outcome (stored or dead_lettered).",
        ),
        kafka_lag: Family::new(
            "hl7bridge_kafka_consumer_lag",
            "Records on the broker not yet committed by this group, per assigned partition.",
        ),
        kafka_assigned: Family::new(
            "hl7bridge_kafka_assigned_partitions",
            "Partitions of the inbound topics this member consumes now (0: it consumes nothing).",
        ),
        changes_published: Family::new(
            "hl7bridge_change_feed_published_total",
            "Changes the broker acknowledged on the change topic.",
        ),
        outbox_depth: Family::new(
            "hl7bridge_outbox_depth",
            "Committed changes not yet published on the change feed.",
        ),
        outbox_oldest_us: Mutex::new(None),
    })
}

impl Metrics {
    /// HttpRequestAnswered.
    pub fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let class = format!("{}xx", status / 100);
        let labels = vec![
            ("route", route.to_string()),
            ("method", known_method(method)),
            ("status", class),
        ];
        self.http_requests.with(labels, |n| *n += 1);
        self.http_duration
            .with(vec![("route", route.to_string())], |h| {
                h.observe(elapsed.as_secs_f64())
            });
    }

    /// MessageAnswered. `code` and `trigger` come from MSH-9 and are reduced to the shape of an
    /// HL7 code, so a sender cannot create unbounded series or smuggle text into labels.
    pub fn hl7_message(&self, code: &str, trigger: &str, ack: &str, elapsed: Duration) {
        let (code, trigger) = labelled_type(code, trigger);
        let labels = vec![
            ("message_code", code),
            ("trigger_event", trigger),
            ("ack_code", ack.to_string()),
        ];
        self.hl7_messages.with(labels, |n| *n += 1);
        self.hl7_duration
            .with(vec![("ack_code", ack.to_string())], |h| {
                h.observe(elapsed.as_secs_f64())
            });
    }

    /// BatchCommitted (or failed).
    pub fn db_write(&self, committed: bool, elapsed: Duration) {
        let outcome = if committed { "committed" } else { "failed" };
        self.db_writes
            .with(vec![("outcome", outcome.to_string())], |h| {
                h.observe(elapsed.as_secs_f64())
            });
    }

    /// GroupCommitted: how many writes one transaction carried.
    pub fn group_commit(&self, writes: usize) {
        self.group_sizes
            .with(Vec::new(), |h| h.observe_in(&SIZE_BUCKETS, writes as f64));
    }

    /// LaneMeasured: writes waiting in a lane (`stat` or `normal`).
    pub fn lane_depth(&self, lane: &'static str, depth: usize) {
        self.lane_depth
            .with(vec![("lane", lane.to_string())], |g| *g = depth as f64);
    }

    /// WriteCommitted: its wait in the lane, commit included.
    pub fn lane_wait(&self, lane: &'static str, elapsed: Duration) {
        self.lane_wait.with(vec![("lane", lane.to_string())], |h| {
            h.observe(elapsed.as_secs_f64())
        });
    }

    /// MllpPaced: a frame held back by its peer's rate.
    pub fn mllp_paced(&self, wait: Duration) {
        self.mllp_paced
            .with(Vec::new(), |h| h.observe(wait.as_secs_f64()));
    }

    /// CacheLookedUp.
    pub fn cache_lookup(&self, kind: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        let labels = vec![("kind", kind.to_string()), ("result", result.to_string())];
        self.cache_lookups.with(labels, |n| *n += 1);
    }

    /// SharedCacheLookedUp.
    pub fn shared_cache_lookup(&self, kind: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        let labels = vec![("kind", kind.to_string()), ("result", result.to_string())];
        self.shared_cache_lookups.with(labels, |n| *n += 1);
    }

    /// SharedCacheFailed.
    pub fn shared_cache_error(&self) {
        self.shared_cache_errors.with(Vec::new(), |n| *n += 1);
    }

    /// ReplicaRead: a read statement that could use the replica, and the server that served it
    /// (`replica` or `primary`).
    pub fn replica_read(&self, served_by: &'static str) {
        self.replica_reads
            .with(vec![("served_by", served_by.to_string())], |n| *n += 1);
    }

    /// ReplicaFallback: why such a read went to the primary (a closed set of reasons).
    pub fn replica_fallback(&self, reason: &'static str) {
        self.replica_fallbacks
            .with(vec![("reason", reason.to_string())], |n| *n += 1);
    }

    /// ReplicaProbed: whether the replica answers.
    pub fn replica_up(&self, up: bool) {
        self.replica_up
            .with(Vec::new(), |g| *g = if up { 1.0 } else { 0.0 });
    }

    /// ReplicaProbed: its lag behind the primary.
    pub fn replica_lag(&self, lag: Duration) {
        self.replica_lag
            .with(Vec::new(), |g| *g = lag.as_secs_f64());
    }

    /// RecordProcessed: `outcome` is `stored` or `dead_lettered`; topics are configured names.
    pub fn kafka_record(&self, topic: &str, outcome: &'static str) {
        let labels = vec![
            ("topic", topic.to_string()),
            ("outcome", outcome.to_string()),
        ];
        self.kafka_records.with(labels, |n| *n += 1);
    }

    /// ConsumerLagObserved.
    pub fn kafka_lag(&self, topic: &str, partition: i32, lag: i64) {
        let labels = vec![
            ("topic", topic.to_string()),
            ("partition", partition.to_string()),
        ];
        self.kafka_lag.with(labels, |g| *g = lag as f64);
    }

    /// PartitionsAssigned (eager rebalancing: the whole assignment, or 0 when revoked).
    pub fn kafka_assigned(&self, partitions: usize) {
        self.kafka_assigned
            .with(Vec::new(), |g| *g = partitions as f64);
    }

    /// ChangesPublished.
    pub fn changes_published(&self, n: usize) {
        self.changes_published.with(Vec::new(), |c| *c += n as u64);
    }

    /// OutboxMeasured: how many changes wait and how old the oldest is.
    pub fn outbox(&self, depth: i64, oldest_created_us: Option<i64>) {
        self.outbox_depth.with(Vec::new(), |g| *g = depth as f64);
        *self
            .outbox_oldest_us
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(oldest_created_us);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        render_counter(&mut out, &self.http_requests);
        render_histogram(&mut out, &self.http_duration);
        render_counter(&mut out, &self.hl7_messages);
        render_histogram(&mut out, &self.hl7_duration);
        render_histogram(&mut out, &self.db_writes);
        render_histogram_in(&mut out, &self.group_sizes, &SIZE_BUCKETS);
        render_gauge(&mut out, &self.lane_depth);
        render_histogram(&mut out, &self.lane_wait);
        render_histogram(&mut out, &self.mllp_paced);
        render_counter(&mut out, &self.cache_lookups);
        render_counter(&mut out, &self.shared_cache_lookups);
        render_counter(&mut out, &self.shared_cache_errors);
        render_counter(&mut out, &self.replica_reads);
        render_counter(&mut out, &self.replica_fallbacks);
        render_gauge(&mut out, &self.replica_up);
        render_gauge(&mut out, &self.replica_lag);
        render_counter(&mut out, &self.kafka_records);
        render_gauge(&mut out, &self.kafka_lag);
        render_gauge(&mut out, &self.kafka_assigned);
        render_counter(&mut out, &self.changes_published);
        render_gauge(&mut out, &self.outbox_depth);
        let oldest = *self
            .outbox_oldest_us
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(oldest) = oldest {
            let name = "hl7bridge_outbox_oldest_age_seconds";
            let now = chrono::Utc::now().timestamp_micros();
            let age = oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1e6);
            let _ = writeln!(
                out,
                "# HELP {name} Age of the oldest unpublished change (0 when none waits).\n# TYPE {name} gauge\n{name} {age}"
            );
        }
        let name = "hl7bridge_trace_context_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} Inbound trace contexts that were malformed and replaced by a new trace."
        );
        let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", rejected_count());
        out
    }
}

/// Methods are client-chosen tokens: only the standard ones are kept, others become `_OTHER`
/// as the HTTP semantic conventions ask (for span attributes and metric labels alike).
pub fn known_method(method: &str) -> String {
    const KNOWN: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    if KNOWN.contains(&method) {
        method.to_string()
    } else {
        "_OTHER".to_string()
    }
}

/// Message types that get their own series; anything else a sender invents is `other`, so
/// series stay bounded whatever arrives.
const LABELLED_TYPES: &[(&str, &str)] = &[
    ("ADT", "A01"),
    ("ADT", "A03"),
    ("ADT", "A04"),
    ("ADT", "A08"),
    ("ADT", "A28"),
    ("ADT", "A31"),
    ("ADT", "A40"),
    ("MDM", "T02"),
    ("OML", "O21"),
    ("ORM", "O01"),
    ("ORU", "R01"),
    ("OUL", "R22"),
    ("VXU", "V04"),
];

fn labelled_type(code: &str, trigger: &str) -> (String, String) {
    if LABELLED_TYPES.contains(&(code, trigger)) {
        (code.to_string(), trigger.to_string())
    } else {
        ("other".to_string(), "other".to_string())
    }
}

/// A counter or gauge family: one line per series.
fn render_values<T: std::fmt::Display>(out: &mut String, family: &Family<T>, kind: &str) {
    let _ = writeln!(
        out,
        "# HELP {} {}\n# TYPE {} {kind}",
        family.name, family.help, family.name
    );
    let series = family.series.lock().unwrap_or_else(|p| p.into_inner());
    for (labels, value) in series.iter() {
        let _ = writeln!(out, "{}{} {value}", family.name, label_text(labels, None));
    }
}

fn render_counter(out: &mut String, family: &Family<u64>) {
    render_values(out, family, "counter");
}

fn render_gauge(out: &mut String, family: &Family<f64>) {
    render_values(out, family, "gauge");
}

fn render_histogram(out: &mut String, family: &Family<Histogram>) {
    render_histogram_in(out, family, &BUCKETS);
}

fn render_histogram_in(
    out: &mut String,
    family: &Family<Histogram>,
    bounds: &[f64; BUCKETS.len()],
) {
    let _ = writeln!(
        out,
        "# HELP {} {}\n# TYPE {} histogram",
        family.name, family.help, family.name
    );
    let series = family.series.lock().unwrap_or_else(|p| p.into_inner());
    for (labels, h) in series.iter() {
        for (bound, count) in bounds.iter().zip(h.counts.iter()) {
            let le = Some(bound.to_string());
            let _ = writeln!(
                out,
                "{}_bucket{} {count}",
                family.name,
                label_text(labels, le)
            );
        }
        let inf = label_text(labels, Some("+Inf".to_string()));
        let _ = writeln!(out, "{}_bucket{inf} {}", family.name, h.count);
        let plain = label_text(labels, None);
        let _ = writeln!(
            out,
            "{}_sum{plain} {}\n{}_count{plain} {}",
            family.name, h.sum, family.name, h.count
        );
    }
}

fn label_text(labels: &Labels, le: Option<String>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_into_every_bucket_at_or_above_its_value() {
        let mut h = Histogram::default();
        h.observe(0.02);
        assert_eq!(h.counts[..4], [0, 0, 0, 1]);
        assert_eq!(h.counts[11], 1);
        assert_eq!(h.count, 1);
    }

    #[test]
    fn custom_http_methods_share_one_series() {
        assert_eq!(known_method("GET"), "GET");
        assert_eq!(known_method("FROBNICATE"), "_OTHER");
    }

    #[test]
    fn sender_text_never_becomes_a_label_value() {
        assert_eq!(labelled_type("ORU", "R01"), ("ORU".into(), "R01".into()));
        assert_eq!(
            labelled_type("Z07", "T03"),
            ("other".into(), "other".into())
        );
        assert_eq!(
            labelled_type("Jane Doe", ""),
            ("other".into(), "other".into())
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let labels = vec![("route", "a\"b\\c".to_string())];
        assert_eq!(label_text(&labels, None), r#"{route="a\"b\\c"}"#);
    }
}
