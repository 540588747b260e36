//! The real binary, started as a user starts it: spans leave over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and SIGTERM stops it cleanly after flushing them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the stand-in collector received.
pub struct Received {
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// A stand-in collector: answers 200 to every POST and reports each request.
pub async fn fake_collector() -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(request) = read_request(&mut socket).await {
                    let _ = tx.send(request);
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (endpoint, rx)
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    Some(Received {
        path,
        content_type: header("content-type").unwrap_or_default(),
        body: buf[head_end..head_end + length].to_vec(),
    })
}

/// Starts `hl7bridge serve` on port 0 (with `env` added) and returns it with its HTTP and MLLP
/// addresses, read from the "listening" log line.
pub fn start_binary(
    endpoint: &str,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (Child, String, String) {
    let mut with_export = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    with_export.extend_from_slice(env);
    start_server(dir, &with_export)
}

/// Starts `hl7bridge serve` in `dir` with only `env` (and port-0 listeners) set; returns it
/// with its HTTP and MLLP addresses.
pub fn start_server(dir: &std::path::Path, env: &[(&str, &str)]) -> (Child, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hl7bridge"));
    command
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("HL7BRIDGE_HTTP_ADDR", "127.0.0.1:0")
        .env("HL7BRIDGE_MLLP_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (http, mllp) = loop {
        let line = lines
            .next()
            .expect("the server logs before exiting")
            .unwrap();
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if event["fields"]["message"] == "hl7bridge listening" {
            let field = |name: &str| event["fields"][name].as_str().unwrap().to_string();
            break (field("http"), field("mllp"));
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, http, mllp)
}

/// Sends SIGTERM and expects a clean, successful exit.
fn stop_with_sigterm(child: &mut Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the server with success: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http_and_sigterm_stops_the_server_cleanly() {
    let (endpoint, mut received) = fake_collector().await;
    let dir = std::env::temp_dir().join(format!("hl7bridge-otlp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, http, _) = tokio::task::block_in_place(|| start_binary(&endpoint, &dir, &[]));

    let metadata = crate::support::http_client()
        .get(format!("http://{http}/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), 200);
    assert!(
        dir.join("hl7bridge.db").exists(),
        "the embedded default creates its SQLite file"
    );
    stop_with_sigterm(&mut child);

    let request = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("spans arrive at the collector")
        .unwrap();
    assert_eq!(request.path, "/v1/traces");
    assert_eq!(request.content_type, "application/x-protobuf");
    assert!(!request.body.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in OTLP/gRPC collector: a real tonic server for the trace service, reporting each
/// export request it decodes.
async fn grpc_collector() -> (
    String,
    mpsc::UnboundedReceiver<
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    >,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };

    struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let _ = self.0.send(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(incoming),
    );
    (endpoint, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_grpc_when_the_protocol_says_so() {
    let (endpoint, mut received) = grpc_collector().await;
    let dir = std::env::temp_dir().join(format!("hl7bridge-otlp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", "hl7bridge-grpc-test"),
    ];
    let (mut child, http, _) = tokio::task::block_in_place(|| start_binary(&endpoint, &dir, &env));
    let metadata = crate::support::http_client()
        .get(format!("http://{http}/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), 200);

    // Spans leave on the batch schedule while the server runs, not only at shutdown.
    let request = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("spans arrive at the gRPC collector")
        .unwrap();
    let resource = request.resource_spans[0].resource.as_ref().unwrap();
    let service = resource
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    assert!(service.contains("hl7bridge-grpc-test"), "{service}");
    let names: Vec<&str> = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.as_str())
        .collect();
    assert!(names.iter().any(|n| n.contains("/metadata")), "{names:?}");

    stop_with_sigterm(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unsupported_otlp_protocol_is_refused_at_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
        .arg("serve")
        .env_clear()
        .env("HL7BRIDGE_HTTP_ADDR", "127.0.0.1:0")
        .env("HL7BRIDGE_MLLP_ADDR", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env(
            "HL7BRIDGE_DATABASE_URL",
            "sqlite:///nonexistent-dir/never-created.db",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{stderr}");
}
