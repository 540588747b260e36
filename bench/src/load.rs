//! Closed-loop load: a fixed number of workers, each with one operation in flight, timed one by
//! one. Every run is bounded in time (and optionally in operations), so the bench stops by
//! itself whatever the server does.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One client of a load: owns its connection, does one operation per call.
pub trait Worker: Send + 'static {
    /// Operation `seq` (unique across the run's workers); on success, how many units (resources,
    /// rows, messages) it moved.
    fn call(&mut self, seq: u64) -> impl Future<Output = Result<u64, String>> + Send;
}

/// How long a run lasts and how its operations are spaced.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// No operation starts after this.
    pub time: Duration,
    /// No operation starts once this many have been handed out.
    pub ops: Option<u64>,
    /// Operations that start before this are done but not counted.
    pub warmup: Duration,
    /// Each worker starts its k-th operation no earlier than `k * pace` after the start.
    pub pace: Option<Duration>,
}

impl Limit {
    pub fn for_time(time: Duration) -> Limit {
        Limit {
            time,
            ops: None,
            warmup: Duration::ZERO,
            pace: None,
        }
    }

    pub fn for_ops(ops: u64, at_most: Duration) -> Limit {
        Limit {
            ops: Some(ops),
            ..Limit::for_time(at_most)
        }
    }

    pub fn with_warmup(self, warmup: Duration) -> Limit {
        Limit { warmup, ..self }
    }

    pub fn paced(self, pace: Duration) -> Limit {
        Limit {
            pace: Some(pace),
            ..self
        }
    }
}

/// What a run measured after its warm-up.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Latency of each successful operation, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub ok: u64,
    pub failed: u64,
    pub units: u64,
    pub first_error: Option<String>,
    /// Operations done, warm-up included: what the phase's CPU time was spent on.
    pub all_ops: u64,
    /// From the end of the warm-up until the last operation finished.
    pub elapsed: Duration,
}

impl Sample {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn units_per_second(&self) -> f64 {
        self.units as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`th percentile latency in milliseconds (nearest rank); 0 without samples.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) as f64 / 1000.0
    }

    /// A short account of failures, for the report; empty when there were none.
    pub fn failures(&self) -> String {
        match &self.first_error {
            Some(error) if self.failed > 0 => format!("{} failed (first: {error})", self.failed),
            _ => String::new(),
        }
    }

    fn merge(&mut self, other: Sample) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        self.failed += other.failed;
        self.units += other.units;
        self.all_ops += other.all_ops;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs every worker until the limit and returns the merged sample.
pub async fn run<W: Worker>(workers: Vec<W>, limit: Limit) -> Sample {
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| tokio::spawn(drive(worker, limit, start, next.clone())))
        .collect();
    let mut sample = Sample::default();
    for task in tasks {
        match task.await {
            Ok(part) => sample.merge(part),
            Err(err) => {
                sample.failed += 1;
                sample
                    .first_error
                    .get_or_insert(format!("worker died: {err}"));
            }
        }
    }
    sample.elapsed = start.elapsed().saturating_sub(limit.warmup);
    sample.latencies_us.sort_unstable();
    sample
}

async fn drive<W: Worker>(
    mut worker: W,
    limit: Limit,
    start: Instant,
    next: Arc<AtomicU64>,
) -> Sample {
    let mut sample = Sample::default();
    let measured_from = start + limit.warmup;
    for k in 0u32.. {
        if let Some(pace) = limit.pace {
            tokio::time::sleep_until((start + pace * k).into()).await;
        }
        let began = Instant::now();
        if began >= start + limit.time {
            break;
        }
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if limit.ops.is_some_and(|ops| seq >= ops) {
            break;
        }
        let outcome = worker.call(seq).await;
        sample.all_ops += 1;
        if began < measured_from {
            continue;
        }
        match outcome {
            Ok(units) => {
                sample.latencies_us.push(began.elapsed().as_micros() as u64);
                sample.ok += 1;
                sample.units += units;
            }
            Err(error) => {
                sample.failed += 1;
                sample.first_error.get_or_insert(error);
            }
        }
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    struct Counter;

    impl Worker for Counter {
        async fn call(&mut self, _seq: u64) -> Result<u64, String> {
            Ok(2)
        }
    }

    #[tokio::test]
    async fn a_run_bounded_by_operations_does_each_once() {
        let limit = Limit::for_ops(10, Duration::from_secs(5));
        let sample = run(vec![Counter, Counter, Counter], limit).await;
        assert_eq!((sample.ok, sample.units), (10, 20));
    }
}
