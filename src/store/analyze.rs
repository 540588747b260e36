//! Fresh planner statistics after bulk loads (PostgreSQL).
//!
//! Autovacuum analyzes a table once about a tenth of it changed, checked every minute. Right
//! after a bulk load into near-empty tables the planner still believes them empty, and the
//! `$everything` query for a patient's practitioners and organizations then walks every
//! reference of those types in the database instead of the patient's own (measured by the
//! benchmark: 62 ms instead of 5 ms at 300 patients, worse as the data grows). So the store
//! counts the rows it writes and, once they amount to a large share of what was there at the
//! last analysis, analyzes the indexed tables itself, in the background, one run at a time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sea_orm::ConnectionTrait;

use super::Store;

/// Rows written before a refresh is considered at all.
const MIN_ROWS: u64 = 20_000;

#[derive(Default)]
pub(super) struct Unanalyzed {
    rows: AtomicU64,
    /// Rows in the tables at the last refresh (0 before the first).
    baseline: AtomicU64,
    running: AtomicBool,
}

const TABLES: &str = "resource, compartment, resource_ref, token_index, date_index, string_index";

impl Store {
    /// Counts rows a commit wrote and starts a refresh when they are many, relative to the data.
    pub(super) fn written_rows(&self, rows: usize) {
        let stats = &self.unanalyzed;
        let total = stats.rows.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
        let baseline = stats.baseline.load(Ordering::Relaxed);
        if total < MIN_ROWS.max(baseline / 5) {
            return;
        }
        if stats.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let stats = &store.unanalyzed;
            let written = stats.rows.swap(0, Ordering::Relaxed);
            let started = std::time::Instant::now();
            match store
                .db
                .execute_unprepared(&format!("ANALYZE {TABLES}"))
                .await
            {
                Ok(_) => {
                    let baseline = stats.baseline.load(Ordering::Relaxed) + written;
                    stats.baseline.store(baseline, Ordering::Relaxed);
                    tracing::debug!(
                        rows = written,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "planner statistics refreshed after a bulk write"
                    );
                }
                Err(err) => {
                    stats.rows.fetch_add(written, Ordering::Relaxed);
                    tracing::warn!(error = %err, "refreshing planner statistics failed");
                }
            }
            stats.running.store(false, Ordering::Release);
        });
    }
}
