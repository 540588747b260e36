//! Results: each mode writes its rows as JSON; `report` joins them into the Markdown table of
//! `benches/RESULTS.md`, with the machine, dataset, commit and date.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::procfs::PhaseUsage;

/// One line of the table: a figure beside the ceiling measured in the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The figure's number in the issue; rows are shown in this order.
    pub number: u8,
    pub figure: String,
    pub target: String,
    pub measured: String,
    pub ceiling: String,
    /// `None`: not measured.
    pub met: Option<bool>,
}

/// What one mode (`postgres`, `sqlite`) measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ModeResult {
    pub rows: Vec<Row>,
    pub phases: Vec<PhaseUsage>,
    /// Labelled facts for the header (`dataset`, `PostgreSQL`).
    pub facts: Vec<(String, String)>,
    pub notes: Vec<String>,
}

impl ModeResult {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }

    fn read(path: &Path) -> Option<ModeResult> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Where and how the run happened, for the header.
pub struct RunInfo {
    pub command: String,
    pub commit: String,
    pub date: String,
    pub elapsed_s: f64,
    /// Of which the release build took this long.
    pub build_s: f64,
}

/// Joins `postgres.json`, `sqlite.json` and `kafka.json` of `dir` into the Markdown report.
pub fn render(dir: &Path, info: &RunInfo) -> String {
    let modes: Vec<ModeResult> = ["postgres.json", "sqlite.json", "kafka.json"]
        .iter()
        .filter_map(|file| ModeResult::read(&dir.join(file)))
        .collect();
    let mut rows: Vec<Row> = modes.iter().flat_map(|m| m.rows.clone()).collect();
    if !rows.iter().any(|r| r.number == 8) {
        rows.push(crate::suite::kafka::not_measured(
            "the Kafka phase left no result (no kafka.json)",
        ));
    }
    rows.sort_by_key(|r| r.number);
    let mut out = String::from("# hl7bridge data-layer benchmark\n\n");
    out.push_str("Written by `benches/run.sh`; run it again rather than editing this file.\n\n");
    out.push_str(&header(&modes, info));
    out.push_str(&table(&rows));
    out.push_str(&cpu_table(&modes));
    out.push_str("\n## Notes\n\n");
    for note in modes.iter().flat_map(|m| &m.notes) {
        out.push_str(&format!("- {note}\n"));
    }
    out
}

fn header(modes: &[ModeResult], info: &RunInfo) -> String {
    let mut facts = vec![
        ("command".to_string(), format!("`{}`", info.command)),
        ("commit".to_string(), format!("`{}`", info.commit)),
        ("date".to_string(), info.date.clone()),
        ("run took".to_string(), run_time(info)),
        ("machine".to_string(), machine()),
    ];
    facts.extend(modes.iter().flat_map(|m| m.facts.clone()));
    let mut out = String::from("| | |\n| --- | --- |\n");
    for (label, value) in facts {
        out.push_str(&format!("| {label} | {value} |\n"));
    }
    out.push('\n');
    out
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| # | figure | target | measured | ceiling (same run) | met |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        let met = match row.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {met} |\n",
            row.number, row.figure, row.target, row.measured, row.ceiling
        ));
    }
    out
}

fn cpu_table(modes: &[ModeResult]) -> String {
    let mut out = String::from(
        "\n## Where the CPU went\n\n\
         Share of the whole machine (every core) during each phase; \"other\" is whatever else \
         ran (builds, other users). The load generator shares the machine with the server. \
         CPU per operation is the server's and PostgreSQL's CPU time over the operations done.\n\n\
         | phase | wall s | busy | server | PostgreSQL | bench | other | operations | server CPU/op | PostgreSQL CPU/op | server peak RSS |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for p in modes.iter().flat_map(|m| &m.phases) {
        let other = (p.busy_pct - p.server_pct - p.postgres_pct - p.bench_pct).max(0.0);
        let (ops, server_per_op, postgres_per_op) = match &p.ops {
            Some((n, what)) if *n > 0 => (
                format!("{} {what}", thousands(*n as f64)),
                ms(p.server_cpu_s * 1000.0 / *n as f64),
                ms(p.postgres_cpu_s * 1000.0 / *n as f64),
            ),
            _ => ("—".into(), "—".into(), "—".into()),
        };
        out.push_str(&format!(
            "| {} | {:.1} | {:.0}% | {:.0}% | {:.0}% | {:.0}% | {other:.0}% | {ops} | {server_per_op} | {postgres_per_op} | {:.0} MB |\n",
            p.phase,
            p.wall_s,
            p.busy_pct,
            p.server_pct,
            p.postgres_pct,
            p.bench_pct,
            p.server_rss_peak_mb
        ));
    }
    out
}

/// Cores, CPU model, memory and kernel of this machine.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {:.1} GiB RAM, Linux {}",
        ram_kib / 1024.0 / 1024.0,
        kernel.trim()
    )
}

fn run_time(info: &RunInfo) -> String {
    let whole = info.elapsed_s.round() as u64;
    format!(
        "{} min {} s, of which {:.0} s building release binaries",
        whole / 60,
        whole % 60,
        info.build_s
    )
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Milliseconds with a precision that suits their size.
pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} ms")
    } else {
        format!("{value:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_numbers_get_thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(12_345.6), "12,346");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn a_report_lists_rows_in_figure_order_and_says_what_was_not_measured() {
        let dir = std::env::temp_dir().join(format!("hl7bridge-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let row = |number| Row {
            number,
            figure: format!("figure {number}"),
            target: "t".into(),
            measured: "m".into(),
            ceiling: "c".into(),
            met: Some(number == 1),
        };
        let result = ModeResult {
            rows: vec![row(5), row(1)],
            ..ModeResult::default()
        };
        result.write(&dir.join("postgres.json")).unwrap();
        let info = RunInfo {
            command: "benches/run.sh".into(),
            commit: "abc".into(),
            date: "today".into(),
            elapsed_s: 61.0,
            build_s: 3.0,
        };
        let text = render(&dir, &info);
        let first = text.find("| 1 | figure 1").unwrap();
        assert!(first < text.find("| 5 | figure 5").unwrap());
        assert!(text.contains(
            "| 8 | Kafka inbound ingest, PostgreSQL | ≥ 20,000 res/s | not measured: the Kafka \
             phase left no result (no kafka.json) | — | not measured |"
        ));
        assert!(text.contains("1 min 1 s, of which 3 s building"));

        // Figure 8 from its own file, after the others whatever the files' order.
        let kafka = ModeResult {
            rows: vec![row(8)],
            ..ModeResult::default()
        };
        kafka.write(&dir.join("kafka.json")).unwrap();
        let text = render(&dir, &info);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.find("| 5 | figure 5").unwrap()
                < text
                    .find("| 8 | figure 8 | t | m | c | **not met** |")
                    .unwrap()
        );
        assert!(!text.contains("no kafka.json"));
    }

    #[test]
    fn a_skipped_kafka_phase_says_why_in_its_row() {
        let dir = std::env::temp_dir().join(format!("hl7bridge-bench-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        crate::suite::kafka::skipped("no Kafka broker: tansu was not found")
            .write(&dir.join("kafka.json"))
            .unwrap();
        let info = RunInfo {
            command: "benches/run.sh --quick".into(),
            commit: "abc".into(),
            date: "today".into(),
            elapsed_s: 5.0,
            build_s: 0.0,
        };
        let text = render(&dir, &info);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text
            .contains("| not measured: no Kafka broker: tansu was not found | — | not measured |"));
    }
}
