//! Figure 8, Kafka inbound ingest on PostgreSQL, in two steps around the producer;
//! `benches/run.sh` starts the broker (tansu, on loopback) and both servers:
//!
//! 1. [`prepare`], against a server without Kafka on a fresh database: loads the supporting
//!    resources the patient Bundles reference by identifier, and writes the Bundles one a line
//!    for `benches/kafka_bench.py produce`, which puts each on the FHIR topic as one record
//!    before the server that consumes them starts.
//! 2. [`run`], against the server restarted on the same database with
//!    `HL7BRIDGE_KAFKA_BROKERS`: meters it while it consumes, polling its record counters and
//!    the resource table; takes the ingest window from the stored resources' own timestamps
//!    (first stored to last), the group join from the server's log, checks the topics with
//!    `kafka_bench.py check`, then COPYs the same rows as the ceiling.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sea_orm::sqlx::{self, postgres::PgPool};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::postgres::{copy, copy_ceiling, copy_payloads, database_name};
use super::Server;
use crate::dataset::Dataset;
use crate::options::Size;
use crate::procfs::{Meter, ProcessClock};
use crate::report::{ms, thousands, ModeResult, Row};
use crate::{http, sql};

/// The issue's target.
const TARGET: f64 = 20_000.0;
/// What `prepare` writes into the Kafka directory, and the producer beside it.
const RECORDS: &str = "records.ndjson";
const EXPECTED: &str = "records.json";
const PRODUCED: &str = "produced.json";
/// The types of the supporting resources; every other resource in the database came from Kafka.
const SUPPORTING_TYPES: &[&str] = &["Organization", "Location", "Practitioner"];

const POLL: Duration = Duration::from_millis(100);
/// The resource table is counted every this many polls (a sequential scan; the server's
/// counters are read every poll).
const COUNT_EVERY: u32 = 10;
/// Waiting for the first record to be handled: the group join and the first fetch.
const FIRST_AT_MOST: Duration = Duration::from_secs(120);
/// Nothing more handled or stored for this long ends the wait.
const STALL_AT_MOST: Duration = Duration::from_secs(60);
/// The whole wait, at most: keeps `run.sh` bounded whatever the server does.
const INGEST_AT_MOST: Duration = Duration::from_secs(300);
/// The server's metrics unanswered for this long: it is gone.
const SILENT_AT_MOST: Duration = Duration::from_secs(10);

/// What `prepare` wrote, for `run` to expect.
#[derive(Debug, Serialize, Deserialize)]
struct Expected {
    patients: u64,
    records: u64,
    resources: u64,
    bytes: u64,
    largest_record: u64,
}

/// What `kafka_bench.py produce` did.
#[derive(Debug, Deserialize)]
struct Produced {
    topic: String,
    partitions: u32,
    records: u64,
    seconds: f64,
}

/// What `kafka_bench.py check` found on the broker after the run.
#[derive(Debug, Deserialize)]
struct Checked {
    /// The server's group's committed offsets on the FHIR topic, summed over its partitions:
    /// on a fresh topic, how many records it is done with.
    committed: u64,
    /// Records on the dead-letter topic, read to its end.
    dead_letters: u64,
}

/// Step 1: the supporting resources in, the records out to `dir` for the producer.
pub async fn prepare(server: &Server, dir: &Path, size: &Size) -> anyhow::Result<()> {
    let dataset = Dataset::generate(size.seed, size.kafka_patients);
    server.load_supporting(&dataset).await?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(RECORDS);
    let file = std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for bundle in &dataset.bundles {
        out.write_all(bundle)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let expected = Expected {
        patients: size.kafka_patients,
        records: dataset.bundles.len() as u64,
        resources: dataset.total_resources() as u64,
        bytes: dataset.total_bytes() as u64,
        largest_record: dataset.bundles.iter().map(|b| b.len()).max().unwrap_or(0) as u64,
    };
    std::fs::write(dir.join(EXPECTED), serde_json::to_vec_pretty(&expected)?)?;
    Ok(())
}

/// The server that consumes, and the broker it consumes from.
pub struct Target {
    pub http: String,
    pub server_pid: u32,
    pub database_url: String,
    /// The server's JSON log lines, for the group join.
    pub server_log: PathBuf,
    pub brokers: String,
    pub broker_pid: u32,
    /// The broker's name and version, for the header.
    pub broker: String,
    /// `benches/kafka_bench.py`.
    pub script: PathBuf,
    /// Where `prepare` and the producer wrote.
    pub dir: PathBuf,
}

/// Step 2: figure 8 and its ceiling.
pub async fn run(target: Target, size: &Size) -> anyhow::Result<ModeResult> {
    // First of all: the server has been consuming since it started.
    let mut meter = Meter::start(target.server_pid, database_name(&target.database_url));
    let metered_from_us = now_us();
    let broker_before = ProcessClock::now(target.broker_pid);
    let expected: Expected = read_json(&target.dir.join(EXPECTED))?;
    let produced: Produced = read_json(&target.dir.join(PRODUCED))?;
    // Opened before the phases so that the meter counts its backends (see `Meter`); four
    // connections for the COPY streams, one of them polling meanwhile.
    let pool = sql::pg_pool(&target.database_url, 4).await?;
    let client = http::client()?;
    let watched = meter
        .phase(
            "8 Kafka ingest",
            watch(&client, &target.http, &pool, &expected),
        )
        .await;
    let broker_pct = ProcessClock::now(target.broker_pid).share_since(&broker_before);
    meter.count(watched.stored_records + watched.dead_records, "records");
    let stored = stored(&pool).await?;

    let dataset = Dataset::generate(size.seed, size.kafka_patients);
    anyhow::ensure!(
        dataset.total_resources() as u64 == expected.resources,
        "the regenerated dataset differs from the one produced"
    );
    sql::create_scratch(&pool).await?;
    let (payloads, row_bytes) = copy_payloads(&dataset);
    let copied = meter.phase("8 ceiling: COPY", copy(&pool, payloads)).await;
    meter.count(copied.units, "rows");
    sql::drop_scratch(&pool).await?;
    pool.close().await;

    // Last, so that the final offset commit has long been made.
    let checked = check(&target).await;
    let join = read_join(&target.server_log);
    let facts = facts(&target, &expected, &produced, &watched);
    let evidence = Evidence {
        expected: &expected,
        watched: &watched,
        stored: &stored,
        checked: &checked,
        join: &join,
        metered_from_us,
        broker_pct,
    };
    let row = ingest_row(&evidence, &produced, copy_ceiling(&copied, row_bytes));
    Ok(ModeResult {
        rows: vec![row],
        phases: meter.stop(),
        facts,
        notes: notes(),
    })
}

/// Figure 8 when it could not run, saying why.
pub fn skipped(reason: &str) -> ModeResult {
    ModeResult {
        rows: vec![not_measured(reason)],
        ..ModeResult::default()
    }
}

pub fn not_measured(reason: &str) -> Row {
    Row {
        number: 8,
        figure: "Kafka inbound ingest, PostgreSQL".into(),
        target: format!("≥ {} res/s", thousands(TARGET)),
        measured: format!("not measured: {reason}"),
        ceiling: "—".into(),
        met: None,
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// How the wait for the server ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// Every record was handled (stored or dead-lettered) or every resource stored.
    Finished,
    NothingHandled,
    Stalled,
    TimedOut,
    ServerSilent,
}

/// What the wait saw last.
#[derive(Debug)]
struct Watched {
    end: End,
    /// The server's own counters, over every topic.
    stored_records: u64,
    dead_records: u64,
    /// Changes the broker acknowledged on the change topic.
    changes: u64,
    /// The last count of the resource table (supporting resources left out).
    resources: u64,
}

/// Polls the server's record counters every [`POLL`] and the resource table every
/// [`COUNT_EVERY`] polls until every record is handled, every resource stored, or nothing
/// moves any more.
async fn watch(
    client: &reqwest::Client,
    base: &str,
    pool: &PgPool,
    expected: &Expected,
) -> Watched {
    let started = Instant::now();
    let mut seen = (0, 0, 0);
    let mut moved = started;
    let mut answered = started;
    let mut anything = false;
    let mut watched = Watched {
        end: End::Finished,
        stored_records: 0,
        dead_records: 0,
        changes: 0,
        resources: 0,
    };
    let mut interval = tokio::time::interval(POLL);
    for poll in 0u32.. {
        interval.tick().await;
        if let Some(counts) = server_counts(client, base).await {
            (watched.stored_records, watched.dead_records) = (counts.stored, counts.dead);
            watched.changes = counts.changes;
            answered = Instant::now();
        }
        let handled_all = watched.stored_records + watched.dead_records >= expected.records;
        if poll % COUNT_EVERY == 0 || handled_all {
            if let Ok(n) = count_resources(pool).await {
                watched.resources = n;
            }
        }
        let now = (
            watched.stored_records,
            watched.dead_records,
            watched.resources,
        );
        if now != seen {
            (seen, moved, anything) = (now, Instant::now(), true);
        }
        let end = if handled_all || watched.resources >= expected.resources {
            Some(End::Finished)
        } else if answered.elapsed() > SILENT_AT_MOST {
            Some(End::ServerSilent)
        } else if !anything && moved.elapsed() > FIRST_AT_MOST {
            Some(End::NothingHandled)
        } else if anything && moved.elapsed() > STALL_AT_MOST {
            Some(End::Stalled)
        } else if started.elapsed() > INGEST_AT_MOST {
            Some(End::TimedOut)
        } else {
            None
        };
        if let Some(end) = end {
            watched.end = end;
            break;
        }
    }
    watched
}

/// The server's Kafka counters.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    /// Records stored and dead-lettered, over every topic.
    stored: u64,
    dead: u64,
    /// Changes published on the change topic.
    changes: u64,
}

async fn server_counts(client: &reqwest::Client, base: &str) -> Option<Counts> {
    let response = client.get(format!("{base}/metrics")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    Some(counts(&response.text().await.ok()?))
}

/// The server's Kafka counters, from its `/metrics` (Prometheus text).
fn counts(metrics: &str) -> Counts {
    let mut counts = Counts::default();
    for line in metrics.lines() {
        let (series, value) = line.rsplit_once(' ').unwrap_or_default();
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        if let Some(labels) = series.strip_prefix("hl7bridge_kafka_records_total{") {
            if labels.contains("outcome=\"stored\"") {
                counts.stored += n;
            } else if labels.contains("outcome=\"dead_lettered\"") {
                counts.dead += n;
            }
        } else if series == "hl7bridge_change_feed_published_total" {
            counts.changes += n;
        }
    }
    counts
}

const COUNT: &str = "SELECT count(*) FROM resource WHERE resource_type <> ALL($1)";

async fn count_resources(pool: &PgPool) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(COUNT)
        .bind(SUPPORTING_TYPES)
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

/// The resources Kafka brought, and when the first and the last were written.
#[derive(Debug)]
struct Stored {
    resources: u64,
    patients: u64,
    first_us: Option<i64>,
    last_us: Option<i64>,
}

impl Stored {
    /// From the first resource stored to the last.
    fn window(&self) -> Option<Duration> {
        let (first, last) = (self.first_us?, self.last_us?);
        Some(Duration::from_micros(
            last.saturating_sub(first).max(1) as u64
        ))
    }

    fn rate(&self) -> f64 {
        self.window()
            .map_or(0.0, |w| self.resources as f64 / w.as_secs_f64())
    }
}

const STORED: &str = "SELECT count(*), count(*) FILTER (WHERE resource_type = 'Patient'), \
    min(last_updated_us), max(last_updated_us) FROM resource WHERE resource_type <> ALL($1)";

async fn stored(pool: &PgPool) -> anyhow::Result<Stored> {
    let (resources, patients, first_us, last_us): (i64, i64, Option<i64>, Option<i64>) =
        sqlx::query_as(STORED)
            .bind(SUPPORTING_TYPES)
            .fetch_one(pool)
            .await?;
    Ok(Stored {
        resources: resources as u64,
        patients: patients as u64,
        first_us,
        last_us,
    })
}

/// `kafka_bench.py check`: what the broker holds after the run, or why that is unknown.
async fn check(target: &Target) -> Result<Checked, String> {
    let script = target.script.clone();
    let brokers = target.brokers.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(["check", &brokers])
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("python3: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("no output");
        return Err(format!("kafka_bench.py check failed: {last}"));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("kafka_bench.py check: {e}"))
}

/// The consumer group's join, from the server's log: when the Kafka adapter started, when
/// partitions were first assigned (both in microseconds since the epoch), and how many
/// assignments there were in all (more than one: the group rebalanced during the run).
#[derive(Debug, Default)]
struct Join {
    adapter_started_us: Option<i64>,
    assigned_us: Option<i64>,
    partitions: Option<u64>,
    assignments: u64,
}

impl Join {
    fn seconds(&self) -> Option<f64> {
        Some((self.assigned_us? - self.adapter_started_us?) as f64 / 1e6)
    }
}

fn read_join(log: &Path) -> Join {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    join_from_log(&text)
}

fn join_from_log(text: &str) -> Join {
    let mut join = Join::default();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &event["fields"];
        let at = event["timestamp"].as_str().and_then(rfc3339_us);
        match fields["message"].as_str() {
            Some("Kafka adapter started") => {
                join.adapter_started_us = join.adapter_started_us.or(at)
            }
            Some("Kafka partitions rebalanced") if fields["change"] == "assigned" => {
                join.assignments += 1;
                if join.assigned_us.is_none() {
                    join.assigned_us = at;
                    join.partitions = fields["partitions"].as_u64();
                }
            }
            _ => {}
        }
    }
    join
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp such as the server's log
/// writes (`2025-01-02T03:04:05.678901Z`, or with an offset such as `+01:00`).
fn rfc3339_us(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(['T', 't'])?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, offset_s) = match time.strip_suffix(['Z', 'z']) {
        Some(clock) => (clock, 0),
        None => {
            let at = time.rfind(['+', '-'])?;
            let sign = if time[at..].starts_with('-') { -1 } else { 1 };
            let (hours, minutes) = time[at + 1..].split_once(':')?;
            let offset = hours.parse::<i64>().ok()? * 3600 + minutes.parse::<i64>().ok()? * 60;
            (&time[..at], sign * offset)
        }
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (parts.next()??, parts.next()??, parts.next()??);
    let digits: String = fraction.chars().take(6).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros = format!("{digits:0<6}").parse::<i64>().ok()?;
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(seconds * 1_000_000 + micros)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar, counted in 400-year
/// eras of 146,097 days with years starting in March, so that the leap day comes last.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Everything the row is judged on.
struct Evidence<'a> {
    expected: &'a Expected,
    watched: &'a Watched,
    stored: &'a Stored,
    checked: &'a Result<Checked, String>,
    join: &'a Join,
    metered_from_us: i64,
    broker_pct: f64,
}

impl Evidence<'_> {
    /// Everything that went wrong; any of it makes the figure not met.
    fn problems(&self) -> Vec<String> {
        let (expected, watched, stored) = (self.expected, self.watched, self.stored);
        let mut problems = Vec::new();
        match watched.end {
            End::Finished => {}
            End::NothingHandled => problems.push(format!(
                "nothing was handled within {} s of the bench starting",
                FIRST_AT_MOST.as_secs()
            )),
            End::Stalled => problems.push(format!(
                "the ingest stalled (nothing handled or stored for {} s)",
                STALL_AT_MOST.as_secs()
            )),
            End::TimedOut => problems.push(format!(
                "the wait was cut at {} s",
                INGEST_AT_MOST.as_secs()
            )),
            End::ServerSilent => problems.push("the server stopped answering".into()),
        }
        if stored.resources != expected.resources || stored.patients != expected.records {
            problems.push(format!(
                "{} of {} resources ({} of {} patients) stored",
                thousands(stored.resources as f64),
                thousands(expected.resources as f64),
                stored.patients,
                expected.records
            ));
        }
        if watched.dead_records > 0 {
            problems.push(format!(
                "the server dead-lettered {} records",
                watched.dead_records
            ));
        }
        if watched.stored_records != expected.records {
            problems.push(format!(
                "the server counted {} of {} records stored",
                watched.stored_records, expected.records
            ));
        }
        match self.checked {
            Ok(checked) => {
                if checked.dead_letters > 0 {
                    problems.push(format!(
                        "dead-letter topic: {} records",
                        checked.dead_letters
                    ));
                }
                if checked.committed != expected.records {
                    problems.push(format!(
                        "the group committed offsets past {} of {} records",
                        checked.committed, expected.records
                    ));
                }
            }
            Err(err) => problems.push(format!("the topics could not be checked ({err})")),
        }
        problems
    }

    /// What makes the figure less exact without making it wrong.
    fn caveats(&self) -> Vec<String> {
        let mut caveats = Vec::new();
        if self
            .stored
            .first_us
            .is_some_and(|first| first < self.metered_from_us)
        {
            caveats.push(
                "the first resource was stored before the bench began metering: the phase's \
                 CPU misses the start"
                    .into(),
            );
        }
        caveats
    }
}

fn ingest_row(evidence: &Evidence, produced: &Produced, ceiling: String) -> Row {
    let (stored, join) = (evidence.stored, evidence.join);
    let rate = stored.rate();
    let window = stored.window().unwrap_or_default().as_secs_f64();
    let mut measured = format!(
        "{} res/s ({} resources from {} records, first stored to last in {window:.1} s",
        thousands(rate),
        thousands(stored.resources as f64),
        thousands(evidence.watched.stored_records as f64),
    );
    // The same resources over a window that also holds the first records' processing.
    if let (Some(assigned), Some(last)) = (join.assigned_us, stored.last_us) {
        let span = (last - assigned).max(1) as f64 / 1e6;
        measured.push_str(&format!(
            "; {} res/s from partitions assigned",
            thousands(stored.resources as f64 / span)
        ));
    }
    measured.push(')');
    match join.seconds() {
        Some(seconds) => {
            measured.push_str(&format!(
                "; group join {} (adapter start to {} partitions assigned",
                short_time(seconds),
                join.partitions.unwrap_or(0)
            ));
            if let (Some(assigned), Some(first)) = (join.assigned_us, stored.first_us) {
                let after = (first - assigned) as f64 / 1e6;
                measured.push_str(&format!("), first resource stored {after:.1} s later"));
            } else {
                measured.push(')');
            }
            if join.assignments > 1 {
                measured.push_str(&format!(", then {} more rebalances", join.assignments - 1));
            }
        }
        None => measured.push_str("; group join not found in the server's log"),
    }
    measured.push_str(&format!(
        "; {} dead-lettered; broker CPU {:.0}% of the machine",
        evidence.watched.dead_records, evidence.broker_pct
    ));
    let problems = evidence.problems();
    for remark in problems.iter().chain(&evidence.caveats()) {
        measured.push_str(&format!("; {remark}"));
    }
    Row {
        number: 8,
        figure: format!(
            "Kafka inbound ingest, PostgreSQL: a transaction Bundle a record, {} partitions, \
             produced before the server started",
            produced.partitions
        ),
        target: format!("≥ {} res/s", thousands(TARGET)),
        measured,
        ceiling,
        met: Some(rate >= TARGET && problems.is_empty()),
    }
}

/// Seconds as `2.3 s`, or below one second as milliseconds.
fn short_time(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.1} s")
    } else {
        ms(seconds * 1000.0)
    }
}

fn facts(
    target: &Target,
    expected: &Expected,
    produced: &Produced,
    watched: &Watched,
) -> Vec<(String, String)> {
    let changes = format!(
        "{} changes published by the end of the ingest",
        thousands(watched.changes as f64)
    );
    vec![(
        "Kafka".into(),
        format!(
            "{} on loopback, in-memory storage; the first {} patients' Bundles as {} records \
             on `{}` ({} partitions, keyed by patient; {:.1} MB, largest {:.0} KB), {} \
             resources, produced in {:.2} s before the server started; the server's change \
             feed ran too ({changes})",
            target.broker,
            expected.patients,
            thousands(produced.records as f64),
            produced.topic,
            produced.partitions,
            expected.bytes as f64 / 1e6,
            expected.largest_record as f64 / 1e3,
            thousands(expected.resources as f64),
            produced.seconds,
        ),
    )]
}

fn notes() -> Vec<String> {
    vec![
        "Kafka (figure 8): a third server on a fresh database, after the supporting resources \
         were loaded over HTTP by a server without Kafka; the broker runs on this machine and \
         its CPU is in \"other\". The rate is the resources Kafka brought over the span of \
         their own `lastUpdated` stamps, first to last, so it leaves out the group join and \
         the first fetch (given apart: adapter start to partitions assigned, from the \
         server's log); the phase itself runs from the bench starting, which includes them. \
         The bench polls `/metrics` every 100 ms and counts the resource table every second; \
         every record stored and none dead-lettered (the server's counters, the resource \
         table and the dead-letter topic), and the group's offsets committed, or the figure \
         is not met."
            .into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_log_become_microseconds_since_the_epoch() {
        assert_eq!(rfc3339_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_us("2024-02-29T12:00:01.5Z"),
            Some(1_709_208_001_500_000)
        );
        assert_eq!(
            rfc3339_us("2024-03-01T00:00:00.000001+01:00"),
            Some(1_709_247_600_000_001)
        );
        assert_eq!(rfc3339_us("2024-03-01"), None);
        assert_eq!(rfc3339_us("2024-03-01T00:00:00.x1Z"), None);
    }

    #[test]
    fn the_join_is_read_from_the_adapter_start_to_the_first_assignment() {
        let log = concat!(
            r#"{"timestamp":"2025-01-01T00:00:01.000000Z","level":"INFO","fields":{"message":"Kafka adapter started"}}"#,
            "\nnot json\n",
            r#"{"timestamp":"2025-01-01T00:00:04.250000Z","level":"INFO","fields":{"message":"Kafka partitions rebalanced","change":"assigned","partitions":5}}"#,
            "\n",
            r#"{"timestamp":"2025-01-01T00:00:08.000000Z","level":"INFO","fields":{"message":"Kafka partitions rebalanced","change":"revoked","partitions":5}}"#,
            "\n",
            r#"{"timestamp":"2025-01-01T00:00:09.000000Z","level":"INFO","fields":{"message":"Kafka partitions rebalanced","change":"assigned","partitions":3}}"#,
        );
        let join = join_from_log(log);
        assert_eq!(join.seconds(), Some(3.25));
        assert_eq!((join.partitions, join.assignments), (Some(5), 2));
        assert_eq!(join_from_log("").seconds(), None);
        assert_eq!(short_time(0.0052), "5.20 ms");
        assert_eq!(short_time(2.26), "2.3 s");
    }

    #[test]
    fn records_are_counted_from_the_metrics_by_outcome() {
        let text = "# TYPE hl7bridge_kafka_records_total counter\n\
            hl7bridge_kafka_records_total{topic=\"fhir.inbound\",outcome=\"stored\"} 7\n\
            hl7bridge_kafka_records_total{topic=\"hl7v2.inbound\",outcome=\"stored\"} 2\n\
            hl7bridge_kafka_records_total{topic=\"fhir.inbound\",outcome=\"dead_lettered\"} 1\n\
            hl7bridge_kafka_consumer_lag{topic=\"fhir.inbound\",partition=\"0\"} 40\n\
            hl7bridge_change_feed_published_total 12\n";
        let expected = Counts {
            stored: 9,
            dead: 1,
            changes: 12,
        };
        assert_eq!(counts(text), expected);
        assert_eq!(counts(""), Counts::default());
    }

    fn evidence_row(dead: u64, rate_window_us: i64) -> Row {
        let expected = Expected {
            patients: 2,
            records: 2,
            resources: 500,
            bytes: 1,
            largest_record: 1,
        };
        let watched = Watched {
            end: End::Finished,
            stored_records: 2 - dead,
            dead_records: dead,
            changes: 0,
            resources: 500,
        };
        let stored = Stored {
            resources: if dead > 0 { 250 } else { 500 },
            patients: 2 - dead,
            first_us: Some(10_000_000),
            last_us: Some(10_000_000 + rate_window_us),
        };
        let checked = Ok(Checked {
            committed: 2,
            dead_letters: dead,
        });
        let join = Join {
            adapter_started_us: Some(8_000_000),
            assigned_us: Some(9_500_000),
            partitions: Some(5),
            assignments: 1,
        };
        let evidence = Evidence {
            expected: &expected,
            watched: &watched,
            stored: &stored,
            checked: &checked,
            join: &join,
            metered_from_us: 7_000_000,
            broker_pct: 3.0,
        };
        let produced = Produced {
            topic: "fhir.inbound".into(),
            partitions: 4,
            records: 2,
            seconds: 0.1,
        };
        ingest_row(&evidence, &produced, "c".into())
    }

    #[test]
    fn the_rate_runs_from_the_first_stored_resource_to_the_last() {
        let row = evidence_row(0, 20_000);
        assert!(
            row.measured
                .starts_with("25,000 res/s (500 resources from 2 records"),
            "{}",
            row.measured
        );
        assert!(
            row.measured.contains("group join 1.5 s"),
            "{}",
            row.measured
        );
        assert!(
            row.measured.contains("first resource stored 0.5 s later"),
            "{}",
            row.measured
        );
        assert_eq!(row.met, Some(true));
        assert_eq!(evidence_row(0, 1_000_000).met, Some(false));
    }

    #[test]
    fn a_dead_letter_makes_the_figure_not_met_however_fast() {
        let row = evidence_row(1, 1_000);
        assert_eq!(row.met, Some(false));
        assert!(
            row.measured.contains("dead-letter topic: 1 records"),
            "{}",
            row.measured
        );
        assert!(
            row.measured.contains("250 of 500 resources"),
            "{}",
            row.measured
        );
    }

    #[test]
    fn a_skipped_figure_says_why() {
        let row = not_measured("tansu was not found");
        assert_eq!(row.met, None);
        assert_eq!(row.measured, "not measured: tansu was not found");
    }
}
