//! What the machine did during each phase, read from `/proc`: CPU time of the server, of
//! PostgreSQL's processes, of this load generator and of everything else; and the server's
//! resident memory, polled, plus the kernel's own high-water mark.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// CPU clock ticks, cumulative, at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Ticks {
    /// Every CPU's ticks, idle included: the machine's capacity.
    total: u64,
    busy: u64,
    server: u64,
    postgres: u64,
    bench: u64,
}

fn ticks(server_pid: u32, database: Option<&str>) -> Ticks {
    let (total, busy) = machine_ticks().unwrap_or_default();
    Ticks {
        total,
        busy,
        server: process_ticks(&format!("/proc/{server_pid}/stat")).unwrap_or(0),
        postgres: database.map_or(0, postgres_ticks),
        bench: process_ticks("/proc/self/stat").unwrap_or(0),
    }
}

/// (all ticks, busy ticks) from the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total, total - idle))
}

/// A process's user plus system ticks, and its command name.
fn stat_of(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let command = stat[open + 1..close].to_string();
    // After the command: state, ppid, … ; utime and stime are the 12th and 13th.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let user: u64 = rest.get(11)?.parse().ok()?;
    let system: u64 = rest.get(12)?.parse().ok()?;
    Some((command, user + system))
}

fn process_ticks(path: &str) -> Option<u64> {
    stat_of(path).map(|(_, ticks)| ticks)
}

/// PostgreSQL's processes that work for `database`: its backends (told apart by their process
/// titles, `postgres: [cluster: ]user database host(port) state`) and the shared ones (postmaster, WAL
/// writer, checkpointer, …), which other databases' work also keeps busy. Backends of other
/// databases are left out, and so is any backend that exits before the phase ends.
fn postgres_ticks(database: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let (command, ticks) = stat_of(&format!("{}/stat", e.path().display()))?;
            let title = std::fs::read(e.path().join("cmdline")).ok()?;
            let ours =
                command == "postgres" && works_for(&String::from_utf8_lossy(&title), database);
            ours.then_some(ticks)
        })
        .sum()
}

/// Whether a PostgreSQL process title belongs to `database` or to the shared processes.
fn works_for(title: &str, database: &str) -> bool {
    let Some(title) = title.strip_prefix("postgres: ") else {
        return true;
    };
    let mut words: Vec<&str> = title.split([' ', '\0']).filter(|w| !w.is_empty()).collect();
    // With `cluster_name` set (Debian sets `15/main`), the title starts with it.
    if words.first().is_some_and(|w| w.ends_with(':')) {
        words.remove(0);
    }
    match words.as_slice() {
        ["autovacuum", "worker", db, ..] => *db == database,
        [_, db, host, ..] if host.contains('(') || *host == "[local]" => *db == database,
        _ => true,
    }
}

/// One process's CPU ticks beside the machine's, at one instant: for a process the [`Meter`]
/// does not follow (the Kafka broker).
#[derive(Debug, Clone, Copy)]
pub struct ProcessClock {
    process: u64,
    machine: u64,
}

impl ProcessClock {
    pub fn now(pid: u32) -> ProcessClock {
        ProcessClock {
            process: process_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0),
            machine: machine_ticks().map_or(0, |(total, _)| total),
        }
    }

    /// The process's share of the whole machine (every core) since `earlier`, in percent.
    pub fn share_since(&self, earlier: &ProcessClock) -> f64 {
        let capacity = self.machine.saturating_sub(earlier.machine).max(1) as f64;
        100.0 * self.process.saturating_sub(earlier.process) as f64 / capacity
    }
}

/// Where one phase's CPU went, in percent of the whole machine (all cores) over its wall time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseUsage {
    pub phase: String,
    pub wall_s: f64,
    pub busy_pct: f64,
    pub server_pct: f64,
    pub postgres_pct: f64,
    pub bench_pct: f64,
    /// CPU seconds of the server and of PostgreSQL (for our database) during the phase.
    pub server_cpu_s: f64,
    pub postgres_cpu_s: f64,
    /// Operations the phase did and what they were (`Bundle`, `message`), when counted.
    pub ops: Option<(u64, String)>,
    /// Highest `VmRSS` polled during the phase, in MB.
    pub server_rss_peak_mb: f64,
}

fn usage(phase: &str, wall: Duration, before: Ticks, after: Ticks, rss_mb: f64) -> PhaseUsage {
    let capacity = after.total.saturating_sub(before.total).max(1) as f64;
    let share = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / capacity;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let seconds = |pct: f64| pct / 100.0 * cores * wall.as_secs_f64();
    let (server_pct, postgres_pct) = (
        share(after.server, before.server),
        share(after.postgres, before.postgres),
    );
    PhaseUsage {
        phase: phase.to_string(),
        wall_s: wall.as_secs_f64(),
        busy_pct: share(after.busy, before.busy),
        server_pct,
        postgres_pct,
        bench_pct: share(after.bench, before.bench),
        server_cpu_s: seconds(server_pct),
        postgres_cpu_s: seconds(postgres_pct),
        ops: None,
        server_rss_peak_mb: rss_mb,
    }
}

/// A kibibyte value (`VmRSS`, `VmHWM`) from `/proc/<pid>/status`.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Megabytes (10^6 bytes, the unit of the memory target) from kibibytes.
pub fn megabytes(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// Polls the server's `VmRSS` every 50 ms and keeps the highest value per phase and overall.
pub struct Meter {
    server_pid: u32,
    database: Option<String>,
    phase_peak_kib: Arc<AtomicU64>,
    poller: tokio::task::JoinHandle<()>,
    pub phases: Vec<PhaseUsage>,
}

impl Meter {
    /// Meters the server with this pid and, when given, PostgreSQL's work for `database`.
    pub fn start(server_pid: u32, database: Option<String>) -> Meter {
        let phase_peak_kib = Arc::new(AtomicU64::new(0));
        let peak = phase_peak_kib.clone();
        let poller = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                if let Some(kib) = status_kib(server_pid, "VmRSS") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
            }
        });
        Meter {
            server_pid,
            database,
            phase_peak_kib,
            poller,
            phases: Vec::new(),
        }
    }

    /// Runs one phase and records where its CPU went.
    pub async fn phase<T>(&mut self, name: &str, work: impl std::future::Future<Output = T>) -> T {
        let before = ticks(self.server_pid, self.database.as_deref());
        self.phase_peak_kib.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let out = work.await;
        let wall = started.elapsed();
        let after = ticks(self.server_pid, self.database.as_deref());
        let peak = self.phase_peak_kib.load(Ordering::Relaxed);
        self.phases
            .push(usage(name, wall, before, after, megabytes(peak)));
        out
    }

    /// Says how many operations (of what) the last phase did, for CPU time per operation.
    pub fn count(&mut self, ops: u64, what: &str) {
        if let Some(last) = self.phases.last_mut() {
            last.ops = Some((ops, what.to_string()));
        }
    }

    /// The server's resident memory now, in MB.
    pub fn rss_mb(&self) -> f64 {
        megabytes(status_kib(self.server_pid, "VmRSS").unwrap_or(0))
    }

    /// The kernel's record of the server's peak resident memory since it started, in MB.
    pub fn high_water_mb(&self) -> f64 {
        megabytes(status_kib(self.server_pid, "VmHWM").unwrap_or(0))
    }

    pub fn stop(self) -> Vec<PhaseUsage> {
        self.poller.abort();
        self.phases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_stat_line_and_a_resident_size() {
        let (command, _) = stat_of("/proc/self/stat").unwrap();
        assert!(!command.is_empty());
        assert!(status_kib(std::process::id(), "VmRSS").unwrap() > 0);
    }

    #[test]
    fn a_process_clock_measures_a_share_of_the_machine() {
        let before = ProcessClock::now(std::process::id());
        let mut x = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let share = ProcessClock::now(std::process::id()).share_since(&before);
        assert!(share > 0.0 && share <= 100.0, "{share}");
    }

    #[test]
    fn backends_of_other_databases_are_not_counted() {
        assert!(works_for(
            "postgres: postgres bench 127.0.0.1(5000) idle",
            "bench"
        ));
        assert!(!works_for(
            "postgres: postgres test 127.0.0.1(5000) idle",
            "bench"
        ));
        assert!(!works_for("postgres: autovacuum worker test", "bench"));
        assert!(works_for("postgres: walwriter ", "bench"));
        assert!(!works_for(
            "postgres: 15/main: postgres test 127.0.0.1(5) idle\0\0",
            "bench"
        ));
        assert!(works_for(
            "postgres: 15/main: postgres bench [local] idle",
            "bench"
        ));
        assert!(works_for("postgres: 15/main: checkpointer \0\0", "bench"));
        assert!(works_for(
            "/usr/lib/postgresql/15/bin/postgres\0-D\0/var/lib",
            "bench"
        ));
    }
}
