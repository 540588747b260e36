//! The figures, in the order they run, each mode against its own server: [`postgres`]
//! (figures 1–5 and 7), [`sqlite`] (6 and 7) and [`kafka`] (8). Each phase is timed by the
//! [`Meter`], and each figure is followed by its ceiling while the server idles.

pub mod kafka;
pub mod postgres;
pub mod sqlite;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::dataset::Dataset;
use crate::http::{self, Importer};
use crate::load::{self, Limit, Sample};
use crate::procfs::Meter;
use crate::report::{ms, thousands, Row};

/// Clients posting Bundles at once.
const IMPORT_CLIENTS: usize = 4;
/// An import that has not finished by then stops; its rate still counts what was done.
const IMPORT_AT_MOST: Duration = Duration::from_secs(600);

/// The server under test.
pub struct Server {
    pub client: reqwest::Client,
    pub base: String,
    pub pid: u32,
}

impl Server {
    pub async fn connect(base: String, pid: u32) -> anyhow::Result<Server> {
        let client = http::client()?;
        http::wait_ready(&client, &base).await?;
        Ok(Server { client, base, pid })
    }

    /// The Organizations, Locations and Practitioners the patient Bundles reference.
    async fn load_supporting(&self, dataset: &Dataset) -> anyhow::Result<()> {
        let body = dataset.supporting_bundle.clone();
        http::post_bundle(&self.client, &self.base, body)
            .await
            .map_err(anyhow::Error::msg)
            .context("loading the supporting Bundle")?;
        Ok(())
    }

    /// Posts every patient Bundle from [`IMPORT_CLIENTS`] clients; returns the sample and the
    /// ids of the Patients created.
    async fn import(&self, dataset: &Dataset) -> (Sample, Vec<String>) {
        let bundles = Arc::new(dataset.bundles.clone());
        let resources = Arc::new(dataset.resources.clone());
        let patients = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..IMPORT_CLIENTS)
            .map(|_| Importer {
                client: self.client.clone(),
                base: self.base.clone(),
                bundles: bundles.clone(),
                resources: resources.clone(),
                patients: patients.clone(),
            })
            .collect();
        let limit = Limit::for_ops(bundles.len() as u64, IMPORT_AT_MOST);
        let sample = load::run(workers, limit).await;
        let ids = patients.lock().map(|p| p.clone()).unwrap_or_default();
        (sample, ids)
    }
}

/// `measured` with the run's failures after it, if any.
fn with_failures(measured: String, sample: &Sample) -> String {
    match sample.failures() {
        failures if failures.is_empty() => measured,
        failures => format!("{measured}; {failures}"),
    }
}

/// Met only when the condition holds and nothing failed.
fn met(condition: bool, samples: &[&Sample]) -> Option<bool> {
    Some(condition && samples.iter().all(|s| s.failed == 0))
}

fn import_row(number: u8, figure: String, target: f64, import: &Sample, ceiling: String) -> Row {
    let rate = import.units_per_second();
    let measured = format!(
        "{} res/s ({} resources in {:.1} s; Bundle p50 {}, p99 {})",
        thousands(rate),
        thousands(import.units as f64),
        import.elapsed.as_secs_f64(),
        ms(import.percentile_ms(50.0)),
        ms(import.percentile_ms(99.0)),
    );
    Row {
        number,
        figure,
        target: format!("≥ {} res/s", thousands(target)),
        measured: with_failures(measured, import),
        ceiling,
        met: met(rate >= target, &[import]),
    }
}

/// Figure 7 for one server: the kernel's high-water mark for its whole life.
fn memory_row(meter: &Meter, which: &str, idle_mb: f64) -> Row {
    let peak = meter.high_water_mb();
    let busiest = meter
        .phases
        .iter()
        .max_by(|a, b| a.server_rss_peak_mb.total_cmp(&b.server_rss_peak_mb));
    let during = busiest.map_or(String::new(), |p| {
        format!(
            "; highest polled VmRSS {:.0} MB, in {}",
            p.server_rss_peak_mb, p.phase
        )
    });
    Row {
        number: 7,
        figure: format!("Peak RSS of the {which} server, whole run"),
        target: "≤ 300 MB".into(),
        measured: format!("{peak:.0} MB (VmHWM{during})"),
        ceiling: format!("idle after start: {idle_mb:.0} MB"),
        met: Some(peak > 0.0 && peak <= 300.0),
    }
}
