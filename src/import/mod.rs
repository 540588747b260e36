//! `hl7bridge import`: bulk loads straight into the database, no server involved.
//!
//! Two kinds of file:
//! - a transaction or batch Bundle (`*.json`; a lone resource is taken as a one-entry
//!   transaction), processed by [`crate::fhir::transaction`] as `POST /` would be ([`bundle`]);
//! - NDJSON (`*.ndjson`), one resource per line, upserted in chunks ([`ndjson`]).
//!
//! Files, and chunks of NDJSON files, run `--jobs` at a time; their writes meet in the store's
//! group commit, as concurrent requests to `serve` do. Bundles with conditional references wait
//! until everything else is written (see [`inputs::phases`]). Ids of new resources are derived
//! from the file's path, so an import run again writes nothing new. A file or line that fails
//! is reported — by name, line or entry, issue code and expression, never content — and the
//! import goes on; [`run`] says whether anything failed.

mod bundle;
mod inputs;
mod ndjson;
mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub use progress::Summary;

use crate::config::Config;
use crate::fhir::transaction::BundleLimits;
use crate::startup::{open_store, open_store_with};
use crate::store::Store;
use inputs::{Format, Input};
use progress::Progress;

/// `hl7bridge import [--ndjson] [--jobs N] FILE|DIR...`
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub paths: Vec<PathBuf>,
    /// Read every file as NDJSON, whatever its name.
    pub ndjson: bool,
    /// Files or NDJSON chunks imported at once.
    pub jobs: usize,
    /// Leave search values to a bulk reindex (see [`crate::store::Store::reindex_backlog`]).
    pub defer_index: bool,
}

impl ImportOptions {
    pub const DEFAULT_JOBS: usize = 2;

    /// Reads the command line after `import`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<ImportOptions, String> {
        let mut options = ImportOptions {
            paths: Vec::new(),
            ndjson: false,
            jobs: Self::DEFAULT_JOBS,
            defer_index: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
                _ => (arg.as_str(), None),
            };
            match flag {
                "--ndjson" if inline.is_none() => options.ndjson = true,
                "--defer-index" if inline.is_none() => options.defer_index = true,
                "--jobs" => {
                    let value = inline.or_else(|| args.next());
                    options.jobs = value
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or("--jobs takes a whole number greater than zero")?;
                }
                other if other.starts_with("--") => return Err(format!("unknown option {arg}")),
                _ => options.paths.push(PathBuf::from(arg)),
            }
        }
        if options.paths.is_empty() {
            return Err("name at least one file or directory to import".into());
        }
        Ok(options)
    }
}

/// What every import task shares.
struct Importer {
    store: Store,
    /// Conditional creates of this process's Bundles find each other (see
    /// [`crate::fhir::transaction::process`]).
    conditional_gate: tokio::sync::Mutex<()>,
    bundle_limits: BundleLimits,
    /// The largest Bundle file and the longest NDJSON line: `HL7BRIDGE_MAX_BODY_BYTES`, as over
    /// HTTP, since a Bundle takes many times its size in memory while it is processed.
    max_bytes: u64,
    jobs: Arc<Semaphore>,
    progress: Arc<Progress>,
}

impl Importer {
    /// Waits for one of the `--jobs` slots.
    async fn job_slot(&self) -> OwnedSemaphorePermit {
        self.jobs
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    async fn run_phase(self: &Arc<Self>, inputs: Vec<Input>) {
        let mut tasks = JoinSet::new();
        for input in inputs {
            match input.format {
                Format::Bundle => {
                    let slot = self.job_slot().await;
                    let importer = self.clone();
                    tasks.spawn(async move {
                        bundle::import(&importer, &input).await;
                        drop(slot);
                    });
                }
                Format::Ndjson => ndjson::import(self, &input, &mut tasks).await,
            }
            // Finished tasks are reaped as the import goes, so the set stays small.
            while let Some(finished) = tasks.try_join_next() {
                self.check_task(finished);
            }
        }
        while let Some(finished) = tasks.join_next().await {
            self.check_task(finished);
        }
    }

    fn check_task(&self, finished: Result<(), tokio::task::JoinError>) {
        if finished.is_err() {
            self.progress
                .failed(1, "exception: an import task panicked");
        }
    }
}

/// Imports what `options` names into the database `config` names. `Ok(true)` when nothing
/// failed; `Err` only when the import could not start (a missing file, no database).
pub async fn run(config: &Config, options: &ImportOptions) -> anyhow::Result<bool> {
    let max_bytes = config.max_body_bytes as u64;
    let collected = {
        let options = options.clone();
        tokio::task::spawn_blocking(move || {
            inputs::collect(&options).map(|found| {
                let total: u64 = found.iter().map(|i| i.bytes).sum();
                (found.len() as u64, total, inputs::phases(found, max_bytes))
            })
        })
        .await
        .context("listing the input files")??
    };
    let (files, bytes, (first, second)) = collected;
    let store = open_store_with(config, options.defer_index).await?;
    let progress = Arc::new(Progress::new(files, bytes, std::io::stderr().is_terminal()));
    let importer = Arc::new(Importer {
        store: store.clone(),
        conditional_gate: tokio::sync::Mutex::new(()),
        bundle_limits: BundleLimits {
            max_entries: config.max_bundle_entries,
        },
        max_bytes,
        jobs: Arc::new(Semaphore::new(options.jobs)),
        progress: progress.clone(),
    });
    let reporting = progress.start_reporting();
    importer.run_phase(first).await;
    if options.defer_index && !second.is_empty() {
        // Conditional references match identifiers, which are indexed at once; the rest of
        // the phase's reads (a conditional update's search) must see everything.
        drain(&store).await?;
    }
    importer.run_phase(second).await;
    reporting.abort();
    let summary = progress.finish();
    if options.defer_index {
        drain(&store).await?;
    }
    // The group-commit tasks stop once the last handle to the store is gone.
    drop(importer);
    store.close().await;
    Ok(summary.failures == 0)
}

/// Indexes the backlog, with a line on stderr per 10,000 resources and one at the end.
async fn drain(store: &Store) -> anyhow::Result<u64> {
    let started = std::time::Instant::now();
    let mut next_line = 10_000;
    let total = store
        .drain_index_backlog(|done| {
            if done >= next_line {
                eprintln!("reindexing: {done} resources so far");
                next_line = (done / 10_000 + 1) * 10_000;
            }
        })
        .await
        .context("indexing the deferred search values")?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "reindexed {total} resources in {secs:.1} s ({:.0} resources/s)",
        total as f64 / secs.max(0.001)
    );
    Ok(total)
}

/// `hl7bridge reindex [--all]`: indexes the backlog a deferred import left (or, with `all`,
/// every stored resource again).
pub async fn reindex(config: &Config, all: bool) -> anyhow::Result<u64> {
    let store = open_store(config).await?;
    if all {
        let queued = store
            .queue_all_for_reindex()
            .await
            .context("queueing every resource")?;
        eprintln!("{queued} resources to reindex");
    }
    let total = drain(&store).await?;
    store.close().await;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ImportOptions, String> {
        ImportOptions::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn options_take_ndjson_jobs_and_paths_in_any_order() {
        let options = parse(&["a.json", "--jobs", "4", "--ndjson", "dir"]).unwrap();
        assert_eq!(
            options.paths,
            [PathBuf::from("a.json"), PathBuf::from("dir")]
        );
        assert!(options.ndjson);
        assert_eq!(options.jobs, 4);
        assert_eq!(parse(&["--jobs=3", "x"]).unwrap().jobs, 3);
        assert_eq!(parse(&["x"]).unwrap().jobs, ImportOptions::DEFAULT_JOBS);
        assert!(parse(&["--defer-index", "x"]).unwrap().defer_index);
        assert!(!parse(&["x"]).unwrap().defer_index);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--jobs", "0", "x"]).is_err());
        assert!(parse(&["--jobs"]).is_err());
        assert!(parse(&["--fast", "x"]).is_err());
    }
}
