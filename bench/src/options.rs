//! Command-line flags. Hand-parsed: the bench keeps its dependencies to what the workspace
//! already builds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

pub const USAGE: &str = "\
usage: hl7bridge-bench create-db|drop-db ADMIN_URL NAME
       hl7bridge-bench postgres --http URL --mllp ADDR --database-url URL --server-pid PID --out FILE [SIZE]
       hl7bridge-bench sqlite --http URL --scratch-db FILE --server-pid PID --out FILE [SIZE]
       hl7bridge-bench kafka-prepare --http URL --server-pid PID --kafka-dir DIR [SIZE]
       hl7bridge-bench kafka --http URL --database-url URL --server-pid PID --server-log FILE
                       --brokers ADDR --broker-pid PID --broker TEXT --kafka-script FILE
                       --kafka-dir DIR --out FILE [SIZE]
       hl7bridge-bench kafka-skipped --reason TEXT --out FILE
       hl7bridge-bench report --dir DIR --out FILE --commit REV --date TEXT --command TEXT --elapsed-s S --build-s S

SIZE: --quick (a few seconds per figure) or any of
  --patients N         patient Bundles imported into PostgreSQL (default 500, quick 6)
  --sqlite-patients N  of those, imported into SQLite (default 100, quick 3)
  --mllp-patients N    patients the ORU^R01 messages name (default 2000, quick 50)
  --kafka-patients N   patient Bundles produced to Kafka, one a record (default 400, quick 100;
                       the server takes up to 64 records at once, and far fewer records than
                       that finish together and make the rate meaningless)
  --seconds S          length of each timed load (default 30, quick 2); ceilings take half
  --seed N             dataset seed (default 1)

benches/run.sh runs all of these in order; see README.md, \"Benchmarks\".";

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Size {
    pub seed: u64,
    pub patients: u64,
    pub sqlite_patients: u64,
    pub mllp_patients: u64,
    pub kafka_patients: u64,
    pub seconds: f64,
}

impl Size {
    pub fn load_time(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    pub fn ceiling_time(&self) -> Duration {
        Duration::from_secs_f64(self.seconds / 2.0)
    }

    /// Discarded at the start of each timed load: connections open, caches fill.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64((self.seconds / 15.0).min(2.0))
    }
}

/// The flags of the `postgres`, `sqlite` and `report` modes, all optional until a mode asks.
#[derive(Debug, Default)]
pub struct Flags {
    pub http: Option<String>,
    pub mllp: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub scratch_db: Option<PathBuf>,
    pub server_pid: Option<u32>,
    pub out: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub commit: Option<String>,
    pub date: Option<String>,
    pub command: Option<String>,
    pub elapsed_s: Option<f64>,
    pub build_s: Option<f64>,
    pub kafka_dir: Option<PathBuf>,
    pub server_log: Option<PathBuf>,
    pub brokers: Option<String>,
    pub broker_pid: Option<u32>,
    pub broker: Option<String>,
    pub kafka_script: Option<PathBuf>,
    pub reason: Option<String>,
    quick: bool,
    seed: Option<u64>,
    patients: Option<u64>,
    sqlite_patients: Option<u64>,
    mllp_patients: Option<u64>,
    kafka_patients: Option<u64>,
    seconds: Option<f64>,
}

impl Flags {
    pub fn parse(args: &[String]) -> anyhow::Result<Flags> {
        let mut flags = Flags::default();
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            if flag == "--quick" {
                flags.quick = true;
                continue;
            }
            let value = rest
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            flags
                .set(flag, value)
                .with_context(|| format!("{flag} {value}"))?;
        }
        Ok(flags)
    }

    fn set(&mut self, flag: &str, value: &str) -> anyhow::Result<()> {
        let text = || Some(value.to_string());
        match flag {
            "--http" => self.http = Some(value.trim_end_matches('/').to_string()),
            "--mllp" => self.mllp = Some(value.parse()?),
            "--database-url" => self.database_url = text(),
            "--scratch-db" => self.scratch_db = Some(value.into()),
            "--server-pid" => self.server_pid = Some(value.parse()?),
            "--out" => self.out = Some(value.into()),
            "--dir" => self.dir = Some(value.into()),
            "--commit" => self.commit = text(),
            "--date" => self.date = text(),
            "--command" => self.command = text(),
            "--elapsed-s" => self.elapsed_s = Some(value.parse()?),
            "--build-s" => self.build_s = Some(value.parse()?),
            "--kafka-dir" => self.kafka_dir = Some(value.into()),
            "--server-log" => self.server_log = Some(value.into()),
            "--brokers" => self.brokers = text(),
            "--broker-pid" => self.broker_pid = Some(value.parse()?),
            "--broker" => self.broker = text(),
            "--kafka-script" => self.kafka_script = Some(value.into()),
            "--reason" => self.reason = text(),
            "--seed" => self.seed = Some(value.parse()?),
            "--patients" => self.patients = Some(positive(value)?),
            "--sqlite-patients" => self.sqlite_patients = Some(positive(value)?),
            "--mllp-patients" => self.mllp_patients = Some(positive(value)?),
            "--kafka-patients" => self.kafka_patients = Some(positive(value)?),
            "--seconds" => self.seconds = Some(value.parse::<f64>()?.max(0.5)),
            _ => bail!("unknown flag\n\n{USAGE}"),
        }
        Ok(())
    }

    pub fn size(&self) -> Size {
        let quick = self.quick;
        let pick = |given: Option<u64>, full: u64, small: u64| {
            given.unwrap_or(if quick { small } else { full })
        };
        let patients = pick(self.patients, 500, 6);
        Size {
            seed: self.seed.unwrap_or(1),
            patients,
            sqlite_patients: pick(self.sqlite_patients, 100, 3).min(patients),
            mllp_patients: pick(self.mllp_patients, 2000, 50),
            kafka_patients: pick(self.kafka_patients, 400, 100),
            seconds: self.seconds.unwrap_or(if quick { 2.0 } else { 30.0 }),
        }
    }
}

fn positive(value: &str) -> anyhow::Result<u64> {
    let n: u64 = value.parse()?;
    anyhow::ensure!(n > 0, "must be at least 1");
    Ok(n)
}

/// A required flag's value, or an error naming it.
pub fn required<T: Clone>(value: &Option<T>, flag: &str) -> anyhow::Result<T> {
    value
        .clone()
        .with_context(|| format!("{flag} is required\n\n{USAGE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Flags> {
        Flags::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn quick_shrinks_what_was_not_given() {
        let size = parse(&["--quick", "--patients", "9"]).unwrap().size();
        assert_eq!(
            (
                size.patients,
                size.sqlite_patients,
                size.kafka_patients,
                size.seconds
            ),
            (9, 3, 100, 2.0)
        );
    }

    #[test]
    fn sqlite_never_imports_more_patients_than_postgres() {
        let size = parse(&["--patients", "5"]).unwrap().size();
        assert_eq!(size.sqlite_patients, 5);
    }

    #[test]
    fn an_unknown_flag_is_refused() {
        assert!(parse(&["--patient", "5"]).is_err());
        assert!(parse(&["--patients"]).is_err());
        assert!(parse(&["--patients", "0"]).is_err());
        assert!(parse(&["--kafka-patients", "0"]).is_err());
    }
}
