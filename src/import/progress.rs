//! What an import tells the operator while it runs, on stderr: on a terminal one line redrawn
//! in place at most ten times a second; elsewhere (a pipe, CI) a plain line when it starts and
//! every five seconds after. Failures get lines of their own, and the end one summary line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TERMINAL_REDRAW: Duration = Duration::from_millis(100);
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Progress {
    started: Instant,
    terminal: bool,
    files_total: u64,
    bytes_total: u64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    resources: AtomicU64,
    failures: AtomicU64,
    /// Held while writing, so a failure line never lands in the middle of the progress line.
    out: Mutex<()>,
}

/// How an import went.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub files: u64,
    pub resources: u64,
    pub failures: u64,
    pub elapsed: Duration,
}

impl Summary {
    fn per_second(&self) -> u64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            (self.resources as f64 / seconds).round() as u64
        } else {
            0
        }
    }
}

impl Progress {
    pub(super) fn new(files_total: u64, bytes_total: u64, terminal: bool) -> Progress {
        Progress {
            started: Instant::now(),
            terminal,
            files_total,
            bytes_total,
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            resources: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            out: Mutex::new(()),
        }
    }

    pub(super) fn stored(&self, resources: u64) {
        self.resources.fetch_add(resources, Ordering::Relaxed);
    }

    /// Bytes of input that are now processed.
    pub(super) fn read(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `count` failures and prints `line`, which must hold no patient data.
    pub(super) fn failed(&self, count: u64, line: &str) {
        self.failures.fetch_add(count, Ordering::Relaxed);
        let clear = if self.terminal { "\r\x1b[K" } else { "" };
        self.write(&format!("{clear}import: {line}\n"));
    }

    /// Draws the progress line now and then until the task is aborted.
    pub(super) fn start_reporting(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let progress = self.clone();
        let every = if self.terminal {
            TERMINAL_REDRAW
        } else {
            PLAIN_EVERY
        };
        tokio::spawn(async move {
            loop {
                progress.draw();
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Prints the summary line and returns the summary.
    pub(super) fn finish(&self) -> Summary {
        let summary = self.summary();
        let clear = if self.terminal { "\r\x1b[K" } else { "" };
        self.write(&format!("{clear}{}\n", summary_line(&summary)));
        summary
    }

    fn summary(&self) -> Summary {
        Summary {
            files: self.files_done.load(Ordering::Relaxed),
            resources: self.resources.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        }
    }

    fn draw(&self) {
        let line = status_line(
            &self.summary(),
            self.files_total,
            self.bytes_done.load(Ordering::Relaxed),
            self.bytes_total,
        );
        if self.terminal {
            self.write(&format!("\r\x1b[Kimport: {line}"));
        } else {
            self.write(&format!("import: {line}\n"));
        }
    }

    fn write(&self, text: &str) {
        let _guard = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stderr = std::io::stderr().lock();
        // Nowhere left to report to when stderr is gone; the exit code still tells.
        let _ = stderr.write_all(text.as_bytes());
        let _ = stderr.flush();
    }
}

fn status_line(now: &Summary, files_total: u64, bytes_done: u64, bytes_total: u64) -> String {
    let eta = if bytes_done == 0 {
        "?".to_string()
    } else {
        let left = bytes_total.saturating_sub(bytes_done) as f64 / bytes_done as f64;
        duration_text(now.elapsed.mul_f64(left))
    };
    format!(
        "{} resources, {}/s, files {}/{}, {} of {}, ETA {eta}",
        now.resources,
        now.per_second(),
        now.files,
        files_total,
        bytes_text(bytes_done),
        bytes_text(bytes_total),
    )
}

fn summary_line(summary: &Summary) -> String {
    format!(
        "import finished: {} files, {} resources, {} failures, {:.1} s, {} resources/s",
        summary.files,
        summary.resources,
        summary.failures,
        summary.elapsed.as_secs_f64(),
        summary.per_second(),
    )
}

fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn duration_text(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_comes_from_the_share_of_bytes_still_to_read() {
        let now = Summary {
            files: 1,
            resources: 300,
            failures: 0,
            elapsed: Duration::from_secs(10),
        };
        assert_eq!(
            status_line(&now, 4, 250_000, 1_000_000),
            "300 resources, 30/s, files 1/4, 250.0 kB of 1.0 MB, ETA 30s"
        );
        assert!(status_line(&now, 4, 0, 1_000_000).ends_with("ETA ?"));
    }

    #[test]
    fn sizes_and_durations_read_at_a_glance() {
        assert_eq!(bytes_text(999), "999 B");
        assert_eq!(bytes_text(3_662_640), "3.7 MB");
        assert_eq!(duration_text(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration_text(Duration::from_secs(7_380)), "2h03m");
    }

    #[test]
    fn the_summary_names_files_resources_failures_time_and_rate() {
        let summary = Summary {
            files: 6,
            resources: 1_000,
            failures: 2,
            elapsed: Duration::from_millis(2_500),
        };
        assert_eq!(
            summary_line(&summary),
            "import finished: 6 files, 1000 resources, 2 failures, 2.5 s, 400 resources/s"
        );
    }
}
