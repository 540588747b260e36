//! `hl7bridge-bench`: the load generator and report of the data-layer benchmark. It measures a
//! running server (started by `benches/run.sh`) and, beside each figure, a ceiling: the same
//! database work done straight from here. See README.md, "Benchmarks".

mod dataset;
mod http;
mod load;
mod mllp;
mod options;
mod prng;
mod procfs;
mod report;
mod sql;
mod suite;

use std::process::ExitCode;

use options::{required, Flags, USAGE};
use suite::{kafka, postgres, sqlite, Server};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hl7bridge-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(mode, rest)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hl7bridge-bench {mode}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: &str, rest: &[String]) -> anyhow::Result<()> {
    match mode {
        "create-db" | "drop-db" => {
            let [admin_url, name] = rest else {
                anyhow::bail!("{USAGE}");
            };
            sql::recreate_database(admin_url, name, mode == "create-db").await
        }
        "postgres" => run_postgres(&Flags::parse(rest)?).await,
        "sqlite" => run_sqlite(&Flags::parse(rest)?).await,
        "kafka-prepare" => prepare_kafka(&Flags::parse(rest)?).await,
        "kafka" => run_kafka(&Flags::parse(rest)?).await,
        "kafka-skipped" => {
            let flags = Flags::parse(rest)?;
            let reason = required(&flags.reason, "--reason")?;
            kafka::skipped(&reason).write(&required(&flags.out, "--out")?)
        }
        "report" => write_report(&Flags::parse(rest)?),
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => anyhow::bail!("unknown mode\n\n{USAGE}"),
    }
}

async fn server(flags: &Flags) -> anyhow::Result<Server> {
    let base = required(&flags.http, "--http")?;
    Server::connect(base, required(&flags.server_pid, "--server-pid")?).await
}

async fn run_postgres(flags: &Flags) -> anyhow::Result<()> {
    let target = postgres::Target {
        server: server(flags).await?,
        mllp: required(&flags.mllp, "--mllp")?,
        database_url: required(&flags.database_url, "--database-url")?,
    };
    let out = required(&flags.out, "--out")?;
    postgres::run(target, &flags.size()).await?.write(&out)
}

async fn run_sqlite(flags: &Flags) -> anyhow::Result<()> {
    let target = sqlite::Target {
        server: server(flags).await?,
        scratch_db: required(&flags.scratch_db, "--scratch-db")?,
    };
    let out = required(&flags.out, "--out")?;
    sqlite::run(target, &flags.size()).await?.write(&out)
}

async fn prepare_kafka(flags: &Flags) -> anyhow::Result<()> {
    let dir = required(&flags.kafka_dir, "--kafka-dir")?;
    kafka::prepare(&server(flags).await?, &dir, &flags.size()).await
}

async fn run_kafka(flags: &Flags) -> anyhow::Result<()> {
    // No `Server::connect` first: the server has been consuming since it started, and the
    // meter starts at once.
    let target = kafka::Target {
        http: required(&flags.http, "--http")?,
        server_pid: required(&flags.server_pid, "--server-pid")?,
        database_url: required(&flags.database_url, "--database-url")?,
        server_log: required(&flags.server_log, "--server-log")?,
        brokers: required(&flags.brokers, "--brokers")?,
        broker_pid: required(&flags.broker_pid, "--broker-pid")?,
        broker: required(&flags.broker, "--broker")?,
        script: required(&flags.kafka_script, "--kafka-script")?,
        dir: required(&flags.kafka_dir, "--kafka-dir")?,
    };
    let out = required(&flags.out, "--out")?;
    kafka::run(target, &flags.size()).await?.write(&out)
}

fn write_report(flags: &Flags) -> anyhow::Result<()> {
    let info = report::RunInfo {
        command: required(&flags.command, "--command")?,
        commit: required(&flags.commit, "--commit")?,
        date: required(&flags.date, "--date")?,
        elapsed_s: required(&flags.elapsed_s, "--elapsed-s")?,
        build_s: required(&flags.build_s, "--build-s")?,
    };
    let text = report::render(&required(&flags.dir, "--dir")?, &info);
    let out = required(&flags.out, "--out")?;
    std::fs::write(&out, text)?;
    Ok(())
}
