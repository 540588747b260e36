//! Figures 1–5 and 7 against a server on PostgreSQL, each followed by its ceiling: raw SQL
//! from the bench on the same database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sea_orm::sqlx::postgres::PgPool;

use super::{import_row, memory_row, met, with_failures, Server};
use crate::dataset::hl7::ROWS_PER_MESSAGE;
use crate::dataset::Dataset;
use crate::http::{self, Fetch};
use crate::load::{self, Limit, Sample};
use crate::mllp::Sender;
use crate::options::Size;
use crate::prng::Prng;
use crate::procfs::Meter;
use crate::report::{ms, thousands, ModeResult, Row};
use crate::sql;

const MLLP_CONNECTIONS: usize = 8;
const STAT_EVERY: Duration = Duration::from_millis(50);
const EVERYTHING_CLIENTS: usize = 16;
const READ_CLIENTS: usize = 64;
/// The server's own pool size on PostgreSQL; the read ceilings use as many connections.
const SERVER_POOL: u32 = 16;

pub struct Target {
    pub server: Server,
    pub mllp: SocketAddr,
    pub database_url: String,
}

pub async fn run(target: Target, size: &Size) -> anyhow::Result<ModeResult> {
    let dataset = Dataset::generate(size.seed, size.patients);
    let database = database_name(&target.database_url);
    let mut meter = Meter::start(target.server.pid, database);
    let idle_mb = meter.rss_mb();
    // One pool for every ceiling, opened before and closed after the phases, so that the
    // meter sees its backends' CPU.
    let pool = sql::pg_pool(&target.database_url, SERVER_POOL).await?;
    sql::create_scratch(&pool).await?;
    let version = sql::pg_version(&pool).await?;
    target.server.load_supporting(&dataset).await?;
    let (import, patients) = import_figure(&mut meter, &target, &pool, &dataset).await?;
    // As autovacuum would within a minute or so: the reads below are planned on statistics
    // of the loaded tables, not of the empty ones (see the note).
    sql::analyze(&pool).await?;
    let mut rows = vec![import];
    rows.extend(mllp_figures(&mut meter, &target, &pool, size).await);
    rows.extend(read_figures(&mut meter, &target, &pool, Arc::new(patients), size).await);
    rows.push(memory_row(&meter, "PostgreSQL", idle_mb));
    sql::drop_scratch(&pool).await?;
    pool.close().await;
    Ok(ModeResult {
        rows,
        phases: meter.stop(),
        facts: facts(&dataset, size, version),
        notes: notes(),
    })
}

/// Figure 1 and its ceiling; also the ids of the Patients imported, for the reads.
async fn import_figure(
    meter: &mut Meter,
    target: &Target,
    pool: &PgPool,
    dataset: &Dataset,
) -> anyhow::Result<(Row, Vec<String>)> {
    let (import, patients) = meter.phase("1 import", target.server.import(dataset)).await;
    meter.count(import.all_ops, "Bundles");
    anyhow::ensure!(
        !patients.is_empty(),
        "no patient was imported: {}",
        import.failures()
    );
    let (payloads, row_bytes) = copy_payloads(dataset);
    let copy = meter.phase("1 ceiling: COPY", copy(pool, payloads)).await;
    meter.count(copy.units, "rows");
    let figure = "Bulk import, PostgreSQL: transaction Bundles, 4 clients".to_string();
    let ceiling = copy_ceiling(&copy, row_bytes);
    Ok((import_row(1, figure, 10_000.0, &import, ceiling), patients))
}

/// Figures 2 and 3 (run together) and their ceilings.
async fn mllp_figures(meter: &mut Meter, target: &Target, pool: &PgPool, size: &Size) -> [Row; 2] {
    let (routine, stat) = meter.phase("2+3 MLLP", mllp(target, size)).await;
    meter.count(routine.all_ops + stat.all_ops, "messages");
    let (upsert, stat_upsert) = meter.phase("2+3 ceiling: upsert", upsert(pool, size)).await;
    meter.count(upsert.all_ops + stat_upsert.all_ops, "messages");
    [mllp_row(&routine, &upsert), stat_row(&stat, &stat_upsert)]
}

/// Figures 4 and 5, each followed by its SQL ceiling.
async fn read_figures(
    meter: &mut Meter,
    target: &Target,
    pool: &PgPool,
    patients: Arc<Vec<String>>,
    size: &Size,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (fetch, number) in [(Fetch::Everything, 4), (Fetch::Patient, 5)] {
        let name = match fetch {
            Fetch::Everything => "4 $everything",
            Fetch::Patient => "5 read",
        };
        let server = meter
            .phase(name, read(&target.server, &patients, fetch, size))
            .await;
        meter.count(server.all_ops, "requests");
        let ceiling = meter
            .phase(
                &format!("{number} ceiling: SQL"),
                read_sql(pool, &patients, fetch, size),
            )
            .await;
        meter.count(ceiling.all_ops, "requests");
        rows.push(match fetch {
            Fetch::Everything => everything_row(&server, &ceiling),
            Fetch::Patient => read_row(&server, &ceiling),
        });
    }
    rows
}

/// The dataset's resources as COPY payloads for four streams, and their mean size in bytes.
pub(super) fn copy_payloads(dataset: &Dataset) -> (Vec<(Bytes, u64)>, usize) {
    let rows: Vec<_> = dataset
        .bundles
        .iter()
        .flat_map(|b| sql::resource_rows(b))
        .collect();
    let bytes: usize = rows.iter().map(|r| r.content.len()).sum();
    (sql::copy_payloads(&rows, 4), bytes / rows.len().max(1))
}

pub(super) async fn copy(pool: &PgPool, payloads: Vec<(Bytes, u64)>) -> Sample {
    let payloads = Arc::new(payloads);
    let copiers = (0..payloads.len())
        .map(|_| sql::Copier {
            pool: pool.clone(),
            payloads: payloads.clone(),
        })
        .collect();
    let limit = Limit::for_ops(payloads.len() as u64, Duration::from_secs(600));
    load::run(copiers, limit).await
}

pub(super) fn copy_ceiling(copy: &Sample, row_bytes: usize) -> String {
    with_failures(
        format!(
            "{} rows/s (COPY of the same {} resources, ~{row_bytes} B of JSON a row, 4 streams)",
            thousands(copy.units_per_second()),
            thousands(copy.units as f64),
        ),
        copy,
    )
}

/// Load 2 on eight connections and load 3 on a ninth, at the same time.
async fn mllp(target: &Target, size: &Size) -> (Sample, Sample) {
    let limit = Limit::for_time(size.load_time()).with_warmup(size.warmup());
    let sender = |lane, stat| Sender::new(target.mllp, size.seed, size.mllp_patients, lane, stat);
    let routine = (0..MLLP_CONNECTIONS).map(|_| sender('R', false)).collect();
    tokio::join!(
        load::run(routine, limit),
        load::run(vec![sender('S', true)], limit.paced(STAT_EVERY)),
    )
}

/// The ceiling of loads 2 and 3: the same messages' rows upserted from eight tasks, and one
/// message's rows every 50 ms beside them.
async fn upsert(pool: &PgPool, size: &Size) -> (Sample, Sample) {
    let limit = Limit::for_time(size.ceiling_time()).with_warmup(size.warmup());
    let upserter = |lane| sql::Upserter {
        pool: pool.clone(),
        seed: size.seed,
        patients: size.mllp_patients,
        lane,
    };
    let routine = (0..MLLP_CONNECTIONS).map(|_| upserter('C')).collect();
    tokio::join!(
        load::run(routine, limit),
        load::run(vec![upserter('T')], limit.paced(STAT_EVERY)),
    )
}

fn mllp_row(routine: &Sample, upsert: &Sample) -> Row {
    let (rate, p99) = (routine.per_second(), routine.percentile_ms(99.0));
    let measured = format!(
        "{} msg/s, ACK p50 {}, p99 {} ({} messages)",
        thousands(rate),
        ms(routine.percentile_ms(50.0)),
        ms(p99),
        thousands(routine.ok as f64),
    );
    let ceiling = format!(
        "{} msg/s = {} rows/s ({ROWS_PER_MESSAGE} resource rows + the raw message a \
         transaction, 8 tasks; p99 {})",
        thousands(upsert.per_second()),
        thousands(upsert.units_per_second()),
        ms(upsert.percentile_ms(99.0)),
    );
    Row {
        number: 2,
        figure: "MLLP ORU^R01 (10 OBX), 8 connections, stop-and-wait".into(),
        target: "≥ 1,500 msg/s, p99 ≤ 25 ms".into(),
        measured: with_failures(measured, routine),
        ceiling: with_failures(ceiling, upsert),
        met: met(rate >= 1500.0 && p99 <= 25.0, &[routine]),
    }
}

fn stat_row(stat: &Sample, stat_upsert: &Sample) -> Row {
    let p99 = stat.percentile_ms(99.0);
    let measured = format!(
        "ACK p99 {} (p50 {}, {} messages at {:.0}/s)",
        ms(p99),
        ms(stat.percentile_ms(50.0)),
        thousands(stat.ok as f64),
        stat.per_second(),
    );
    let ceiling = format!(
        "p99 {} (one message's upsert every 50 ms, beside the 8-task upsert)",
        ms(stat_upsert.percentile_ms(99.0))
    );
    Row {
        number: 3,
        figure: "STAT ORU^R01 (OBR-27.6 = S), 9th connection, ~20/s during 2".into(),
        target: "p99 ≤ 10 ms".into(),
        measured: with_failures(measured, stat),
        ceiling: with_failures(ceiling, stat_upsert),
        met: met(p99 <= 10.0, &[stat]),
    }
}

fn clients(fetch: Fetch) -> usize {
    match fetch {
        Fetch::Everything => EVERYTHING_CLIENTS,
        Fetch::Patient => READ_CLIENTS,
    }
}

async fn read(server: &Server, patients: &Arc<Vec<String>>, fetch: Fetch, size: &Size) -> Sample {
    let readers = (0..clients(fetch))
        .map(|n| http::Reader {
            client: server.client.clone(),
            base: server.base.clone(),
            patients: patients.clone(),
            prng: Prng::derive(size.seed, 1000 + n as u64),
            fetch,
        })
        .collect();
    let limit = Limit::for_time(size.load_time()).with_warmup(size.warmup());
    load::run(readers, limit).await
}

async fn read_sql(pool: &PgPool, patients: &Arc<Vec<String>>, fetch: Fetch, size: &Size) -> Sample {
    let tasks = clients(fetch);
    let readers = (0..tasks)
        .map(|n| sql::Reader {
            pool: pool.clone(),
            patients: patients.clone(),
            prng: Prng::derive(size.seed, 2000 + n as u64),
            fetch,
        })
        .collect();
    let limit = Limit::for_time(size.ceiling_time()).with_warmup(size.warmup());
    load::run(readers, limit).await
}

fn everything_row(everything: &Sample, sql: &Sample) -> Row {
    let (rate, p99) = (everything.per_second(), everything.percentile_ms(99.0));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_request = everything.units as f64 / everything.ok.max(1) as f64;
    let measured = format!(
        "{} req/s, p50 {}, p99 {}; {} res/s = {} res/s per core ({per_request:.0} resources a request)",
        thousands(rate),
        ms(everything.percentile_ms(50.0)),
        ms(p99),
        thousands(everything.units_per_second()),
        thousands(everything.units_per_second() / cores as f64),
    );
    let ceiling = format!(
        "{} req/s, p50 {}, p99 {} (its two SELECTs from 16 tasks, pool of 16)",
        thousands(sql.per_second()),
        ms(sql.percentile_ms(50.0)),
        ms(sql.percentile_ms(99.0)),
    );
    Row {
        number: 4,
        figure: "`Patient/{id}/$everything`, 16 clients".into(),
        target: "≥ 500 req/s, p99 ≤ 50 ms".into(),
        measured: with_failures(measured, everything),
        ceiling: with_failures(ceiling, sql),
        met: met(rate >= 500.0 && p99 <= 50.0, &[everything]),
    }
}

fn read_row(single: &Sample, sql: &Sample) -> Row {
    let (rate, p99) = (single.per_second(), single.percentile_ms(99.0));
    let measured = format!(
        "{} req/s, p50 {}, p99 {}",
        thousands(rate),
        ms(single.percentile_ms(50.0)),
        ms(p99),
    );
    let ceiling = format!(
        "{} q/s, p50 {}, p99 {} (SELECT by key from 64 tasks, pool of 16)",
        thousands(sql.per_second()),
        ms(sql.percentile_ms(50.0)),
        ms(sql.percentile_ms(99.0)),
    );
    Row {
        number: 5,
        figure: "`GET /Patient/{id}`, 64 clients".into(),
        target: "≥ 15,000 req/s, p99 ≤ 10 ms".into(),
        measured: with_failures(measured, single),
        ceiling: with_failures(ceiling, sql),
        met: met(rate >= 15_000.0 && p99 <= 10.0, &[single]),
    }
}

/// The database an URL names (its last path segment).
pub(super) fn database_name(url: &str) -> Option<String> {
    let path = url.split('?').next()?;
    Some(path.rsplit('/').next()?.to_string())
}

fn facts(dataset: &Dataset, size: &Size, version: String) -> Vec<(String, String)> {
    let resources = dataset.total_resources();
    let dataset_text = format!(
        "seed {}: {} patients (flag `--patients`), {} resources in {} transaction Bundles \
         ({:.2} KB a resource as posted), {} supporting resources (Organization, Location, \
         Practitioner) loaded first and referenced by identifier; MLLP: ORU^R01 with 10 OBX \
         for {} patients; timed loads {} s, ceilings {} s",
        size.seed,
        size.patients,
        thousands(resources as f64),
        dataset.bundles.len(),
        dataset.total_bytes() as f64 / resources.max(1) as f64 / 1000.0,
        dataset.supporting.resources(),
        thousands(size.mllp_patients as f64),
        size.seconds,
        size.seconds / 2.0,
    );
    vec![
        ("dataset".into(), dataset_text),
        ("PostgreSQL".into(), version),
    ]
}

fn notes() -> Vec<String> {
    vec![
        "Ceilings run right after their figure, on the same database, from the bench with \
         raw SQL (sqlx), while the server idles: COPY for imports; for MLLP, one transaction \
         a message upserting its 13 resource rows (multi-row `INSERT … ON CONFLICT DO \
         UPDATE`) beside the raw message, which the server does plus versions, index rows and \
         parsing; for reads, the SELECTs the server runs."
            .into(),
        "Latencies are per operation, client side, sorted (nearest rank); the first seconds \
         of each timed load are a discarded warm-up. Every figure's failures (non-2xx, ACK \
         other than AA) are listed beside it and make it not met."
            .into(),
        "The bench runs ANALYZE after the import, as autovacuum would a minute or so later. \
         Planned on the statistics of the empty tables, `$everything`'s supporting-resource \
         SELECT reads every reference to a Practitioner, Organization or Location in the \
         database through `resource_ref_target` instead of the patient's own references, so \
         it slows down as the database grows (the server does not ANALYZE after bulk loads)."
            .into(),
    ]
}
