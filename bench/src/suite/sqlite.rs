//! Figures 6 and 7 against a second server on a fresh SQLite file: the first patients'
//! Bundles imported, then the same rows inserted straight into a scratch SQLite file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{import_row, memory_row, with_failures, Server};
use crate::dataset::Dataset;
use crate::load::{self, Limit, Sample};
use crate::options::Size;
use crate::procfs::Meter;
use crate::report::{thousands, ModeResult};
use crate::sql;

pub struct Target {
    pub server: Server,
    /// A file for the ceiling's scratch table, beside the server's database.
    pub scratch_db: PathBuf,
}

pub async fn run(target: Target, size: &Size) -> anyhow::Result<ModeResult> {
    let dataset = Dataset::generate(size.seed, size.sqlite_patients);
    let mut meter = Meter::start(target.server.pid, None);
    let idle_mb = meter.rss_mb();
    target.server.load_supporting(&dataset).await?;
    let (import, _) = meter
        .phase("6 SQLite import", target.server.import(&dataset))
        .await;
    meter.count(import.all_ops, "Bundles");
    let insert = meter
        .phase("6 ceiling: SQLite INSERT", insert(&target, &dataset))
        .await?;
    meter.count(insert.all_ops, "Bundles");
    let ceiling = with_failures(
        format!(
            "{} rows/s (the same resources inserted from one task, a transaction a Bundle, \
             WAL and synchronous=FULL as the server)",
            thousands(insert.units_per_second())
        ),
        &insert,
    );
    let figure = format!(
        "Bulk import, SQLite: the first {} patients' Bundles, 4 clients",
        size.sqlite_patients
    );
    let mut result = ModeResult::default();
    result
        .rows
        .push(import_row(6, figure, 5_000.0, &import, ceiling));
    result.rows.push(memory_row(&meter, "SQLite", idle_mb));
    result.phases = meter.stop();
    result.facts = vec![(
        "SQLite dataset".into(),
        format!(
            "the first {} patients, {} resources",
            size.sqlite_patients,
            thousands(dataset.total_resources() as f64)
        ),
    )];
    Ok(result)
}

async fn insert(target: &Target, dataset: &Dataset) -> anyhow::Result<Sample> {
    let bundles: Vec<_> = dataset
        .bundles
        .iter()
        .map(|b| sql::resource_rows(b))
        .collect();
    let pool = sql::sqlite_pool(&target.scratch_db).await?;
    let inserter = sql::SqliteInserter {
        pool: pool.clone(),
        bundles: Arc::new(bundles),
    };
    let limit = Limit::for_ops(dataset.bundles.len() as u64, Duration::from_secs(600));
    let sample = load::run(vec![inserter], limit).await;
    pool.close().await;
    Ok(sample)
}
