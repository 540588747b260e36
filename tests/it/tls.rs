//! Transport security over real sockets: the FHIR API over HTTPS (HTTP/2 or HTTP/1.1 by ALPN),
//! MLLP over TLS with client certificates mapped to the senders they may send as, handshake
//! timeouts, and settings that stop the start. Certificates are made at test time (rcgen): a
//! CA, a server certificate for 127.0.0.1 and localhost, and client certificates for two
//! senders, written as PEM files to a directory removed when the test ends.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hl7bridge::config::{Config, MllpTlsSettings, TlsFiles};
use hl7bridge::ingest::SenderMap;
use hl7bridge::startup::Application;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::{field, read_frame, spawn_app_with, TestApp};

const ORU: &[u8] = include_bytes!("../fixtures/oru_r01_ztr.hl7");
const ADT: &[u8] = include_bytes!("../fixtures/adt_a01.hl7");
/// The ORU's sender is LABSYS^NORTHLAB, the ADT's ADTSYS^GENHOSP.
const SENDERS: &str = "lab-a.example=LABSYS^NORTHLAB;adt.example=ADTSYS^*";
const LAB: &str = "lab-a.example";
const ADT_SYSTEM: &str = "adt.example";
const H2: &[u8] = b"h2";
const HTTP1: &[u8] = b"http/1.1";

/// A CA and the certificates it issues, as PEM files in a directory of their own.
pub(crate) struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("hl7bridge-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("hl7bridge test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` (its common name is the first), signed by this CA.
    pub(crate) fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (Certificate, KeyPair) {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &self.ca).unwrap(), key)
    }

    /// The server's certificate (127.0.0.1 and localhost) and the CA's, and the key, written
    /// as `server.pem` and `server.key`.
    fn server_files(&self, settings: &'static str) -> TlsFiles {
        let (certificate, key) = self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (cert, key_file) = (self.dir.join("server.pem"), self.dir.join("server.key"));
        std::fs::write(&cert, certificate.pem() + &self.ca.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        TlsFiles {
            cert,
            key: key_file,
            settings,
        }
    }

    /// MLLP over TLS asking for client certificates of this CA, with the test's sender map.
    fn mllp_settings(&self) -> MllpTlsSettings {
        MllpTlsSettings {
            files: self.server_files("HL7BRIDGE_MLLP_TLS"),
            client_ca: Some(self.ca_file()),
            senders: Some(SenderMap::parse(SENDERS).unwrap()),
        }
    }

    /// A client configuration trusting this CA, offering `alpn`, presenting a certificate
    /// for `client` when given.
    #[allow(deprecated)] // ring, as the server uses (see `hl7bridge::tls`)
    fn client_config(&self, alpn: &[&[u8]], client: Option<&str>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some(name) => {
                let (certificate, key) = self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth);
                let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
                builder
                    .with_client_auth_cert(vec![certificate.der().clone()], key)
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// An app serving the FHIR API over HTTPS with a certificate `pki` issued, and its address.
async fn spawn_https_app(pki: &Pki) -> (TestApp, SocketAddr) {
    let files = pki.server_files("HL7BRIDGE_HTTP_TLS");
    let app = spawn_app_with(|config| config.http_tls = Some(files)).await;
    let addr = https_addr(&app);
    (app, addr)
}

fn https_addr(app: &TestApp) -> SocketAddr {
    let addr = app.base.strip_prefix("https://").expect("an HTTPS base");
    addr.parse().unwrap()
}

/// An app serving MLLP over TLS to clients of `pki`, with the test's sender map.
async fn spawn_mllp_app(pki: &Pki) -> TestApp {
    let settings = pki.mllp_settings();
    spawn_app_with(|config| config.mllp_tls = Some(settings)).await
}

/// An MLLP connection presenting a certificate for `name` that `pki` issued.
async fn mllp_client(app: &TestApp, pki: &Pki, name: &str) -> TlsStream<TcpStream> {
    let config = pki.client_config(&[], Some(name));
    let connected = tls_connect(app.mllp, config).await;
    connected.expect("the TLS handshake succeeds")
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let server = ServerName::IpAddress(addr.ip().into());
    let connect = TlsConnector::from(config).connect(server, tcp);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// `GET path` over TLS with HTTP/2 or HTTP/1.1, whichever ALPN chose: the protocol, the
/// status and the JSON body.
async fn https_get(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
) -> (Vec<u8>, u16, Value) {
    let stream = tls_connect(addr, config)
        .await
        .expect("the TLS handshake succeeds");
    let protocol = stream
        .get_ref()
        .1
        .alpn_protocol()
        .unwrap_or_default()
        .to_vec();
    let io = TokioIo::new(stream);
    let response = if protocol == H2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("an HTTP/2 connection");
        tokio::spawn(connection);
        let request = hyper::Request::get(format!("https://{addr}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender
            .send_request(request)
            .await
            .expect("an HTTP/2 answer")
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("an HTTP/1.1 connection");
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender
            .send_request(request)
            .await
            .expect("an HTTP/1.1 answer")
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (protocol, status, json)
}

/// Sends one message over MLLP on `stream` and returns the answer.
async fn mllp_send(stream: &mut TlsStream<TcpStream>, message: &[u8]) -> String {
    let framed = hl7bridge_mllp::encode(message);
    stream
        .write_all(&framed)
        .await
        .expect("the frame is written");
    read_frame(stream).await
}

/// Whether the server closes `stream` (EOF or an error, such as a TLS alert) within `within`
/// without answering anything.
async fn closed_without_answer(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn patients_with(app: &TestApp, identifier: &str) -> u64 {
    let (status, found) = app
        .get_json(&format!("/Patient?identifier={identifier}"))
        .await;
    assert_eq!(status, 200, "{found}");
    found["total"].as_u64().expect("a total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_fhir_api_over_http2_chosen_by_alpn_with_https_links() {
    let pki = Pki::new("https");
    let (app, addr) = spawn_https_app(&pki).await;

    let (protocol, status, metadata) =
        https_get(addr, pki.client_config(&[H2, HTTP1], None), "/metadata").await;

    assert_eq!(protocol, H2, "HTTP/2 is chosen when the client offers it");
    assert_eq!(status, 200);
    assert_eq!(metadata["resourceType"], "CapabilityStatement");
    assert_eq!(metadata["implementation"]["url"], format!("https://{addr}"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_to_a_client_that_offers_only_http1() {
    let pki = Pki::new("http1");
    let (app, addr) = spawn_https_app(&pki).await;

    let (protocol, status, metadata) =
        https_get(addr, pki.client_config(&[HTTP1], None), "/metadata").await;

    assert_eq!(protocol, HTTP1);
    assert_eq!(status, 200);
    assert_eq!(metadata["implementation"]["url"], format!("https://{addr}"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_https_port_is_closed_unanswered_and_https_goes_on() {
    let pki = Pki::new("plain");
    let (app, addr) = spawn_https_app(&pki).await;

    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /metadata HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;

    assert!(read.is_ok(), "the server closes the connection");
    assert!(!answer.starts_with(b"HTTP/"), "no plain HTTP answer");
    let (_, status, _) = https_get(addr, pki.client_config(&[H2], None), "/metadata").await;
    assert_eq!(status, 200, "the server goes on serving");
    app.stop().await;
}

/// Over HTTPS the per-client connection limit holds too: a connection past it finishes its
/// handshake, then is closed unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_closes_a_connection_past_the_clients_limit_after_its_handshake() {
    let pki = Pki::new("per-peer");
    let files = pki.server_files("HL7BRIDGE_HTTP_TLS");
    let app = spawn_app_with(|config| {
        config.http_tls = Some(files);
        config.http_max_connections_per_peer = 2;
    })
    .await;
    let addr = https_addr(&app);
    let config = pki.client_config(&[HTTP1], None);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tls_connect(addr, config.clone()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut third = tls_connect(addr, config.clone()).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_without_answer(&mut third, Duration::from_secs(3)).await);
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, status, _) = https_get(addr, config, "/metadata").await;
    assert_eq!(status, 200, "a slot given back is taken");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_over_tls_with_an_allowed_certificate_is_acknowledged_and_stored() {
    let pki = Pki::new("mllp");
    let app = spawn_mllp_app(&pki).await;

    let mut lab = mllp_client(&app, &pki, LAB).await;
    let ack = mllp_send(&mut lab, ORU).await;
    let mut adt = mllp_client(&app, &pki, ADT_SYSTEM).await;
    let adt_ack = mllp_send(&mut adt, ADT).await;

    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack:?}");
    assert_eq!(field(&ack, "MSA", 2), "LAB0001");
    assert_eq!(field(&adt_ack, "MSA", 1), "AA", "{adt_ack:?}");
    assert_eq!(patients_with(&app, "TST100234").await, 1);
    assert_eq!(patients_with(&app, "TST200777").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_sending_as_another_sender_gets_ar_naming_msh_3_and_nothing_is_stored() {
    let pki = Pki::new("impostor");
    let app = spawn_mllp_app(&pki).await;
    let mut lab = mllp_client(&app, &pki, LAB).await;

    let ack = mllp_send(&mut lab, ADT).await;

    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack:?}");
    assert_eq!(field(&ack, "MSA", 2), "ADT0001");
    assert_eq!(field(&ack, "ERR", 2), "MSH^1^3");
    assert_eq!(
        field(&ack, "ERR", 3),
        "207^Application internal error^HL70357"
    );
    let text = field(&ack, "ERR", 8);
    assert!(
        text.contains("MSH-3 ADTSYS / MSH-4 GENHOSP") && text.contains(LAB),
        "{text}"
    );
    assert_eq!(patients_with(&app, "TST200777").await, 0);
    let next = mllp_send(&mut lab, ORU).await;
    assert_eq!(
        field(&next, "MSA", 1),
        "AA",
        "the connection goes on: {next:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_of_another_senders_accepted_message_is_refused_not_given_its_stored_ack() {
    let pki = Pki::new("resend");
    let app = spawn_mllp_app(&pki).await;
    let mut lab = mllp_client(&app, &pki, LAB).await;
    let mut adt = mllp_client(&app, &pki, ADT_SYSTEM).await;
    assert_eq!(field(&mllp_send(&mut lab, ORU).await, "MSA", 1), "AA");

    let ack = mllp_send(&mut adt, ORU).await;

    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack:?}");
    assert_eq!(field(&ack, "ERR", 2), "MSH^1^3");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_or_with_one_of_another_ca_is_refused_at_handshake() {
    let pki = Pki::new("mllp");
    let stranger = Pki::new("stranger");
    let app = spawn_mllp_app(&pki).await;
    let clients = [
        ("no certificate", pki.client_config(&[], None)),
        ("another CA's certificate", {
            // Trusts the server, but presents a certificate the server's CA did not issue.
            let mut config = (*pki.client_config(&[], None)).clone();
            let own = stranger.client_config(&[], Some(LAB));
            config.client_auth_cert_resolver = own.client_auth_cert_resolver.clone();
            Arc::new(config)
        }),
    ];

    for (what, config) in clients {
        // Under TLS 1.3 the client may finish its side before the server checks the
        // certificate: then the refusal arrives as an alert on the first read.
        if let Ok(mut stream) = tls_connect(app.mllp, config).await {
            let _ = stream.write_all(&hl7bridge_mllp::encode(ORU)).await;
            let refused = closed_without_answer(&mut stream, Duration::from_secs(10)).await;
            assert!(refused, "{what}: the server closes without an ACK");
        }
    }

    assert_eq!(patients_with(&app, "TST100234").await, 0);
    let mut lab = mllp_client(&app, &pki, LAB).await;
    assert_eq!(field(&mllp_send(&mut lab, ORU).await, "MSA", 1), "AA");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_cut_off_at_the_handshake_timeout_and_others_are_served_meanwhile() {
    let pki = Pki::new("silent");
    let settings = pki.mllp_settings();
    let http = pki.server_files("HL7BRIDGE_HTTP_TLS");
    let app = spawn_app_with(|config| {
        config.mllp_tls = Some(settings);
        config.http_tls = Some(http);
        config.tls_handshake_timeout_ms = 2000;
    })
    .await;
    let https = https_addr(&app);
    let started = Instant::now();
    let mut silent_mllp = TcpStream::connect(app.mllp).await.unwrap();
    let mut silent_http = TcpStream::connect(https).await.unwrap();

    let mut lab = mllp_client(&app, &pki, LAB).await;
    let ack = mllp_send(&mut lab, ORU).await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "served meanwhile"
    );

    assert!(closed_without_answer(&mut silent_mllp, Duration::from_secs(10)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "not before the timeout"
    );
    assert!(closed_without_answer(&mut silent_http, Duration::from_secs(10)).await);
    let mut adt = mllp_client(&app, &pki, ADT_SYSTEM).await;
    assert_eq!(field(&mllp_send(&mut adt, ADT).await, "MSA", 1), "AA");
    app.stop().await;
}

pub(crate) fn test_config(adjust: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        mllp_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: "sqlite::memory:".into(),
        ..Config::default()
    };
    adjust(&mut config);
    config
}

/// Builds the application and returns why it could not start.
pub(crate) async fn start_error(config: Config) -> String {
    match Application::build(config).await {
        Ok(_) => panic!("the application started"),
        Err(err) => format!("{err:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_or_mismatched_tls_file_stops_the_start_naming_setting_and_file() {
    let pki = Pki::new("files");
    let files = pki.server_files("HL7BRIDGE_HTTP_TLS");
    let missing = pki.dir.join("missing.pem");
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let other = Pki::new("other");
    let other_key = other.server_files("HL7BRIDGE_HTTP_TLS").key;

    let mut mllp = pki.mllp_settings();
    mllp.client_ca = Some(missing.clone());
    let http = |cert: &Path, key: &Path| {
        let files = TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            settings: "HL7BRIDGE_HTTP_TLS",
        };
        test_config(|config| config.http_tls = Some(files))
    };

    let cases = [
        (
            "HL7BRIDGE_HTTP_TLS_CERT",
            http(&missing, &files.key),
            &missing,
        ),
        (
            "HL7BRIDGE_HTTP_TLS_KEY",
            http(&files.cert, &garbage),
            &garbage,
        ),
        (
            "HL7BRIDGE_MLLP_TLS_CLIENT_CA",
            test_config(|config| config.mllp_tls = Some(mllp)),
            &missing,
        ),
        (
            "cannot serve this certificate with this key",
            http(&files.cert, &other_key),
            &other_key,
        ),
    ];
    for (expected, config, file) in cases {
        let error = start_error(config).await;
        assert!(error.contains(expected), "{expected}: {error}");
        assert!(error.contains(&file.display().to_string()), "{error}");
    }
}

#[test]
fn the_binary_refuses_to_start_with_a_certificate_but_no_key_or_a_missing_file() {
    let serve = |vars: &[(&str, &str)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hl7bridge"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HL7BRIDGE_HTTP_ADDR", "127.0.0.1:0")
            .env("HL7BRIDGE_MLLP_ADDR", "127.0.0.1:0")
            .env("HL7BRIDGE_DATABASE_URL", "sqlite::memory:")
            .envs(vars.iter().copied())
            .output()
            .expect("the binary runs");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let stderr = serve(&[("HL7BRIDGE_HTTP_TLS_CERT", "/nonexistent/http.pem")]);
    assert!(
        stderr.contains("HL7BRIDGE_HTTP_TLS_CERT is set without HL7BRIDGE_HTTP_TLS_KEY"),
        "{stderr}"
    );
    let stderr = serve(&[
        ("HL7BRIDGE_MLLP_TLS_CERT", "/nonexistent/mllp.pem"),
        ("HL7BRIDGE_MLLP_TLS_KEY", "/nonexistent/mllp.key"),
    ]);
    assert!(
        stderr.contains("HL7BRIDGE_MLLP_TLS_CERT: cannot read /nonexistent/mllp.pem"),
        "{stderr}"
    );
}
