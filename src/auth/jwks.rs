//! Reading the key set that signs access tokens: a file, or a URL fetched over HTTPS (plain
//! HTTP only to a loopback host).
//!
//! An HTTPS URL's certificate must be valid for its host and chain to the system's root
//! certificates or, with `HL7BRIDGE_AUTH_JWKS_CA`, to that bundle's CAs alone: a hospital's
//! identity provider behind a private CA is then trusted through that CA and through no public
//! one. Plain HTTP to any other host is refused, since whoever is on the path could replace the
//! keys and sign tokens at will; every redirect is held to the same rule. The HTTP client and
//! what it trusts are made once, at start, and reused by every refetch.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use reqwest::redirect::{Action, Attempt, Policy};
use reqwest::Url;
use rustls::RootCertStore;

use super::JwksSource;

const URL_SETTING: &str = "HL7BRIDGE_AUTH_JWKS_URL";
const CA_SETTING: &str = "HL7BRIDGE_AUTH_JWKS_CA";
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;

/// Why `url` may not serve the key set, or `None` when it may: `https://`, or `http://` to a
/// loopback address or `localhost`.
pub fn url_problem(url: &str) -> Option<String> {
    let Ok(parsed) = Url::parse(url) else {
        return Some(format!("expected an https:// URL, got {url:?}"));
    };
    match parsed.scheme() {
        "https" => None,
        "http" if is_loopback(&parsed) => None,
        "http" => Some(format!(
            "plain http:// is allowed to a loopback host only, not {}: anyone on the path \
             could replace the signing keys; use https://",
            parsed.host_str().unwrap_or_default()
        )),
        _ => Some(format!("expected an https:// URL, got {url:?}")),
    }
}

/// Parsing has normalised the host already: IPv4 in dotted form, names in lower case.
fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
    match unbracketed.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost",
    }
}

/// Where the key set comes from, with what is needed to read it again.
pub(super) enum Fetcher {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
        /// What a failed fetch is reported as: the setting, the URL and what it was checked
        /// against.
        context: String,
    },
}

impl Fetcher {
    /// Reads the CA bundle or the system's roots and builds the HTTP client; fetches nothing.
    pub(super) fn new(source: &JwksSource) -> anyhow::Result<Fetcher> {
        let (url, ca) = match source {
            JwksSource::File(path) => return Ok(Fetcher::File(path.clone())),
            JwksSource::Url { url, ca } => (url, ca),
        };
        if let Some(problem) = url_problem(url) {
            anyhow::bail!("{URL_SETTING}: {problem}");
        }
        let https = url.starts_with("https://");
        let (roots, trusted) = match ca {
            Some(path) => (
                crate::tls::ca_roots(CA_SETTING, path)?,
                format!("the CAs of {CA_SETTING} ({})", path.display()),
            ),
            None => (
                system_roots_for(https)?,
                "the system's root certificates".into(),
            ),
        };
        let context = if https {
            format!(
                "{URL_SETTING}: fetching the key set from {url}, whose certificate must be \
                 valid for its host and issued by {trusted}"
            )
        } else {
            format!("{URL_SETTING}: fetching the key set from {url}")
        };
        let mut client = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::https_client_config(roots)?)
            .timeout(FETCH_TIMEOUT)
            .redirect(Policy::custom(follow_safe_redirects));
        if !https {
            // A loopback URL sent through a proxy from the environment would cross the network.
            client = client.no_proxy();
        }
        let client = client
            .build()
            .with_context(|| format!("{URL_SETTING}: building the HTTP client"))?;
        Ok(Fetcher::Url {
            url: url.clone(),
            client,
            context,
        })
    }

    /// The key set's text, read from the file or fetched from the URL.
    pub(super) async fn read(&self) -> anyhow::Result<String> {
        match self {
            Fetcher::File(path) => tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("reading the JWKS file {}", path.display())),
            Fetcher::Url {
                url,
                client,
                context,
            } => get(client, url).await.context(context.clone()),
        }
    }
}

/// The system's roots; an http:// URL needs them only if it redirects to https://, so their
/// absence stops the start only for an https:// one.
fn system_roots_for(https: bool) -> anyhow::Result<RootCertStore> {
    match crate::tls::system_roots() {
        Ok(roots) => Ok(roots),
        Err(_) if !https => Ok(RootCertStore::empty()),
        Err(err) => Err(err.context(format!(
            "{URL_SETTING}: nothing to verify the key server's certificate against; set \
             {CA_SETTING} to the PEM bundle of the CA that issued it"
        ))),
    }
}

/// The most a key set may hold: real ones are a few kilobytes, and a key server (or whatever
/// answers in its place) must not make the server buffer without bound.
const MAX_KEY_SET_BYTES: usize = 1 << 20;

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let mut response = client.get(url).send().await?.error_for_status()?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_KEY_SET_BYTES {
            anyhow::bail!("the key set is larger than {MAX_KEY_SET_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).context("the key set is not UTF-8 text")
}

fn follow_safe_redirects(attempt: Attempt) -> Action {
    if attempt.previous().len() >= MAX_REDIRECTS {
        return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
    }
    match url_problem(attempt.url().as_str()) {
        None => attempt.follow(),
        Some(problem) => attempt.error(format!("refused redirect: {problem}")),
    }
}

#[cfg(test)]
mod tests {
    use super::url_problem;

    #[test]
    fn https_urls_and_plain_http_to_loopback_may_serve_the_key_set() {
        for url in [
            "https://idp.example.org/.well-known/jwks.json",
            "https://10.1.2.3:8443/keys",
            "http://127.0.0.1:8080/jwks.json",
            "http://127.8.9.10/jwks.json",
            "http://[::1]:8080/jwks.json",
            "http://LOCALHOST:8080/jwks.json",
        ] {
            assert_eq!(url_problem(url), None, "{url}");
        }
    }

    #[test]
    fn plain_http_to_any_other_host_or_another_scheme_is_refused() {
        for (url, expected) in [
            (
                "http://idp.example.org/jwks.json",
                "loopback host only, not idp.example.org",
            ),
            (
                "http://10.1.2.3/jwks.json",
                "loopback host only, not 10.1.2.3",
            ),
            (
                "http://localhost.example.org/jwks.json",
                "loopback host only",
            ),
            ("http://0.0.0.0/jwks.json", "loopback host only"),
            ("ftp://127.0.0.1/jwks.json", "expected an https:// URL"),
            ("/etc/hl7bridge/jwks.json", "expected an https:// URL"),
        ] {
            let problem = url_problem(url).unwrap_or_default();
            assert!(problem.contains(expected), "{url}: {problem}");
        }
    }
}
