//! `hl7bridge serve`: load the configuration, start telemetry, build the application, run until
//! SIGINT or SIGTERM, and say how it ended. Also the small commands beside it: `send`,
//! `messages`, `replay` and `import`.

use std::process::ExitCode;

use hl7bridge::config::Config;
use hl7bridge::import::ImportOptions;
use hl7bridge::startup::Application;
use hl7bridge::telemetry::Telemetry;

const USAGE: &str = "usage: hl7bridge serve\n       hl7bridge send [--grace-ms N] FILE...\n       \
hl7bridge messages [--ack AA|AE|AR] [--limit N]\n       hl7bridge replay [--grace-ms N] ID...\n       \
hl7bridge import [--ndjson] [--jobs N] [--defer-index] FILE|DIR...\n       \
hl7bridge reindex [--all]\n\n\
serve: starts the FHIR API and the MLLP listener. Settings come from HL7BRIDGE_* environment\n\
variables (see README.md); with none set it serves FHIR on 127.0.0.1:8080 and MLLP on\n\
127.0.0.1:2575 and stores data in ./hl7bridge.db (SQLite). HL7BRIDGE_KAFKA_BROKERS switches\n\
the Kafka adapter on (HL7v2 and FHIR topics in, the change feed out).\n\
send: sends each HL7v2 file as one MLLP frame to HL7BRIDGE_MLLP_ADDR (default\n\
127.0.0.1:2575) and prints the ACKs; exits 1 unless every file is accepted (application ACK AA;\n\
none asked for: accept ACK CA; neither: nothing due). The ACKs each message asks for (MSH-15,\n\
MSH-16) are read: one always sent is waited for up to 30 s, one sent on error or on success\n\
only (ER, SU) for --grace-ms (default 1000).\n\
messages: lists the HL7v2 messages stored in HL7BRIDGE_DATABASE_URL, newest first, one JSON\n\
line each (sender, control id, type, ACK code; never content); default limit 100.\n\
replay: sends the stored messages with these ids to HL7BRIDGE_MLLP_ADDR again, like send.\n\
import: writes FHIR files straight into HL7BRIDGE_DATABASE_URL (no server needed): transaction\n\
or batch Bundles (*.json) as POST / would, NDJSON (*.ndjson, one resource per line) as upserts.\n\
A directory means its *.json and *.ndjson files, in name order; Bundles with conditional\n\
references go after the rest. --ndjson reads every file as NDJSON; --jobs N imports N files or\n\
NDJSON chunks at once (default 2). Importing the same files again writes nothing new. Failures\n\
are reported and skipped; exits 1 if there were any. --defer-index leaves codes, dates and\n\
names out of the search index while loading, then indexes them in bulk before it ends.\n\
reindex: indexes what a deferred import left unindexed (serve also does this when it starts);\n\
--all indexes every stored resource again.";

fn main() -> ExitCode {
    bound_malloc_arenas();
    // `hl7bridge serve --help` must print help, not start a server.
    if std::env::args()
        .skip(1)
        .any(|a| matches!(a.as_str(), "--help" | "-h"))
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match std::env::args().nth(1).as_deref() {
        Some("serve") => match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("hl7bridge: {err:#}");
                ExitCode::FAILURE
            }
        },
        Some("send") => exit_code(send()),
        Some("messages") => exit_code(messages()),
        Some("replay") => exit_code(replay()),
        Some("import") => exit_code(import()),
        Some("reindex") => exit_code(reindex()),
        Some("--version" | "version") => {
            println!("hl7bridge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn send() -> anyhow::Result<bool> {
    let (waits, files) = sender_args()?;
    let config = Config::from_env()?;
    hl7bridge::send::send_files(config.mllp_addr, &files, waits)
}

/// `[--grace-ms N] NAME...` of `send` and `replay`.
fn sender_args() -> anyhow::Result<(hl7bridge::send::Waits, Vec<String>)> {
    let mut grace = hl7bridge::send::DEFAULT_GRACE;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(2);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--grace-ms" => {
                let ms = args.next().and_then(|n| n.parse().ok());
                let ms =
                    ms.ok_or_else(|| anyhow::anyhow!("--grace-ms takes a number\n\n{USAGE}"))?;
                grace = std::time::Duration::from_millis(ms);
            }
            _ => names.push(arg),
        }
    }
    anyhow::ensure!(!names.is_empty(), "{USAGE}");
    Ok((hl7bridge::send::Waits::with_grace(grace), names))
}

fn exit_code(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("hl7bridge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn messages() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut ack = None;
    let mut limit = 100;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match (arg.as_str(), rest.next()) {
            ("--ack", Some(code)) => {
                let code = code.to_ascii_uppercase();
                if !["AA", "AE", "AR"].contains(&code.as_str()) {
                    anyhow::bail!("--ack takes AA, AE or AR (the stored decision)");
                }
                ack = Some(code);
            }
            ("--limit", Some(n)) => {
                limit = n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--limit takes a whole number"))?
            }
            _ => anyhow::bail!("{USAGE}"),
        }
    }
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(hl7bridge::replay::list(
        &config.database_url,
        ack.as_deref(),
        limit,
    ))?;
    Ok(true)
}

fn replay() -> anyhow::Result<bool> {
    let (waits, ids) = sender_args()?;
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(hl7bridge::replay::replay(
        &config.database_url,
        config.mllp_addr,
        &ids,
        waits,
    ))
}

fn import() -> anyhow::Result<bool> {
    let options = ImportOptions::parse(std::env::args().skip(2))
        .map_err(|problem| anyhow::anyhow!("{problem}\n\n{USAGE}"))?;
    let config = Config::from_env()?;
    // Warnings and errors only: the progress and failure lines on stderr say the rest.
    let telemetry = Telemetry::init_with_log_filter("warn")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(hl7bridge::import::run(&config, &options));
    drop(runtime);
    telemetry.shutdown();
    result
}

fn reindex() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let all = match args.as_slice() {
        [] => false,
        [flag] if flag == "--all" => true,
        _ => anyhow::bail!("{USAGE}"),
    };
    let config = Config::from_env()?;
    let telemetry = Telemetry::init_with_log_filter("warn")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(hl7bridge::import::reindex(&config, all));
    drop(runtime);
    telemetry.shutdown();
    result.map(|_| true)
}

fn serve() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // Before the runtime: the OTLP exporter's HTTP client must not be built inside it.
    let telemetry = Telemetry::init()?;
    tracing::info!(otlp_export = telemetry.is_exporting(), "hl7bridge starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let app = Application::build(config).await?;
        app.run_until_stopped(shutdown_signal()).await
    });
    drop(runtime);
    telemetry.shutdown();
    result
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => tracing::info!("SIGINT received"),
                    _ = terminate.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// glibc gives busy threads malloc arenas of their own, up to eight per core, and keeps what
/// each has grown to: with the runtime's workers and the blocking pool that parses request
/// bodies, the benchmark's server peaked above its 300 MB memory target with most of it idle
/// in arenas. Two arenas are plenty for two worker threads. Called before any thread starts.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread has started yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
