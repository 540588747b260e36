//! TLS for the FHIR API and the MLLP listener: certificates and keys read from PEM files,
//! rustls server configurations on the `ring` provider (set here, never left to a process-wide
//! default), the MLLP handshake, and the names a verified client certificate carries, which
//! `ingest` maps to the senders that client may send as. Also the client side of the HTTPS the
//! server speaks itself (a JWKS URL, the OTLP exporter): the same provider, and the roots trusted.
//!
//! Files are read once, at start: a renewed certificate is served after a restart.

use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hl7bridge_mllp::{Handshake, PeerIdentity};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{MllpTlsSettings, TlsFiles};

/// The HTTPS configuration. ALPN is left to actix-web, which offers `h2`, then `http/1.1`.
pub fn http_server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let (chain, key) = files.read()?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("the ring provider supports no TLS version")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| files.mismatch())
}

/// MLLP over TLS: the handshake [`hl7bridge_mllp::MllpServer::run_with`] runs on each
/// connection. With a client CA, a client must present a certificate it issued, and the
/// certificate's names become the connection's [`PeerIdentity`].
pub struct MllpTls {
    acceptor: TlsAcceptor,
}

impl MllpTls {
    pub fn new(settings: &MllpTlsSettings) -> anyhow::Result<MllpTls> {
        let (chain, key) = settings.files.read()?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("the ring provider supports no TLS version")?;
        let builder = match &settings.client_ca {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path)?),
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .with_context(|| settings.files.mismatch())?;
        Ok(MllpTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl Handshake for MllpTls {
    type Stream = TlsStream<TcpStream>;

    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(Self::Stream, Option<Arc<PeerIdentity>>)> {
        let stream = self.acceptor.accept(tcp).await?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|end_entity| {
                Arc::new(PeerIdentity {
                    names: certificate_names(end_entity),
                })
            });
        Ok((stream, identity))
    }
}

/// An HTTPS client configuration trusting `roots`, for reqwest's `tls_backend_preconfigured`.
/// The server's certificate must chain to one of them and be valid for the URL's host: rustls'
/// WebPKI verifier, with no way here to turn either check off.
pub fn https_client_config(roots: RootCertStore) -> anyhow::Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("the ring provider supports no TLS version")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The system's root certificates, found as OpenSSL would (`SSL_CERT_FILE`, `SSL_CERT_DIR`, or
/// the distribution's bundle). Unreadable or unparsable ones are skipped; none at all is an error.
pub fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let mut reasons: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        if reasons.is_empty() {
            reasons.push("the bundle holds none".into());
        }
        anyhow::bail!("no system root certificates found ({})", reasons.join("; "));
    }
    Ok(roots)
}

/// The CA certificates of the PEM bundle at `path`, which `setting` names.
pub fn ca_roots(setting: &str, path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(setting, path)? {
        roots
            .add(certificate)
            .with_context(|| format!("{setting}: {} holds an unusable CA", path.display()))?;
    }
    Ok(roots)
}

/// ring rather than aws-lc-rs: it builds in a fraction of the time. rustls deprecates it for
/// lacking post-quantum key exchange (X25519MLKEM768); the classical groups remain safe today.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

impl TlsFiles {
    fn cert_setting(&self) -> String {
        format!("{}_CERT", self.settings)
    }

    fn key_setting(&self) -> String {
        format!("{}_KEY", self.settings)
    }

    fn read(&self) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let chain = read_certificates(&self.cert_setting(), &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|err| unreadable(&self.key_setting(), &self.key, err, "private key"))?;
        Ok((chain, key))
    }

    fn mismatch(&self) -> String {
        format!(
            "{} and {}: cannot serve this certificate with this key ({} and {})",
            self.cert_setting(),
            self.key_setting(),
            self.cert.display(),
            self.key.display()
        )
    }
}

/// Client certificates must chain to one of the CAs in the PEM bundle at `path`.
fn client_verifier(
    path: &Path,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let setting = "HL7BRIDGE_MLLP_TLS_CLIENT_CA";
    let roots = ca_roots(setting, path)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .with_context(|| format!("{setting}: {}", path.display()))
}

fn read_certificates(setting: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let read: Result<Vec<_>, _> =
        CertificateDer::pem_file_iter(path).and_then(|certificates| certificates.collect());
    match read {
        Ok(certificates) if certificates.is_empty() => Err(unreadable(
            setting,
            path,
            pem::Error::NoItemsFound,
            "certificate",
        )),
        Ok(certificates) => Ok(certificates),
        Err(err) => Err(unreadable(setting, path, err, "certificate")),
    }
}

fn unreadable(setting: &str, path: &Path, err: pem::Error, what: &str) -> anyhow::Error {
    let reason = match err {
        pem::Error::Io(err) => err.to_string(),
        pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not a PEM file ({other})"),
    };
    anyhow::anyhow!("{setting}: cannot read {}: {reason}", path.display())
}

/// The subject common names and DNS names of a certificate, in that order, each once.
/// A certificate that does not parse has none.
pub fn certificate_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    let Ok(parsed) = webpki::EndEntityCert::try_from(certificate) else {
        return Vec::new();
    };
    let mut names = common_names(parsed.subject());
    for dns_name in parsed.valid_dns_names() {
        if !names.iter().any(|n| n == dns_name) {
            names.push(dns_name.to_string());
        }
    }
    names
}

const DER_SEQUENCE: u8 = 0x30;
const DER_SET: u8 = 0x31;
const DER_OID: u8 = 0x06;
const DER_UTF8_STRING: u8 = 0x0c;
const DER_PRINTABLE_STRING: u8 = 0x13;
const DER_IA5_STRING: u8 = 0x16;
/// id-at-commonName, 2.5.4.3, as DER contents.
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The common names in a DER Name's contents (a sequence of sets of type-and-value
/// sequences). webpki checks names against a DNS name or reads SANs, but does not read the
/// subject; this reads only what it needs and stops at anything unexpected.
fn common_names(mut name: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    while let Some((DER_SET, mut relative, rest)) = der_element(name) {
        name = rest;
        while let Some((DER_SEQUENCE, attribute, rest)) = der_element(relative) {
            relative = rest;
            let Some((DER_OID, oid, value)) = der_element(attribute) else {
                continue;
            };
            let text = match der_element(value) {
                Some((DER_UTF8_STRING | DER_PRINTABLE_STRING | DER_IA5_STRING, text, _)) => text,
                _ => continue,
            };
            if oid == COMMON_NAME_OID {
                found.extend(std::str::from_utf8(text).ok().map(str::to_string));
            }
        }
    }
    found
}

/// The first DER element of `input`: its tag, its contents and what follows it. Lengths of up
/// to two bytes are read, which covers any name in a certificate.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&byte, rest) = rest.split_first()?;
            (usize::from(byte), rest)
        }
        0x82 => {
            let (bytes, rest) = rest.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([bytes[0], bytes[1]])), rest)
        }
        _ => return None,
    };
    let (contents, rest) = rest.split_at_checked(length)?;
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn certificate(common_name: Option<&str>, dns_names: &[&str]) -> CertificateDer<'static> {
        let names: Vec<String> = dns_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Hospital");
        if let Some(common_name) = common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_certificate_is_named_by_its_common_name_then_its_dns_names() {
        let der = certificate(Some("lab-a.example"), &["lab-a.example", "lab-a2.example"]);
        assert_eq!(certificate_names(&der), ["lab-a.example", "lab-a2.example"]);
    }

    #[test]
    fn a_certificate_without_a_common_name_is_named_by_its_dns_names() {
        let der = certificate(None, &["ris.example"]);
        assert_eq!(certificate_names(&der), ["ris.example"]);
    }

    #[test]
    fn a_long_common_name_is_read_too() {
        let long = format!("{}.example", "a".repeat(150));
        let der = certificate(Some(&long), &[]);
        assert_eq!(certificate_names(&der), [long]);
    }

    #[test]
    fn bytes_that_are_no_certificate_name_nothing() {
        let der = CertificateDer::from(vec![0x30, 0x82, 0xff]);
        assert!(certificate_names(&der).is_empty());
        assert!(common_names(&[DER_SET, 0x05, DER_SEQUENCE, 0x09]).is_empty());
    }
}
