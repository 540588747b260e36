//! FHIR clients: one `reqwest` client (kept-alive connections, no proxy) shared by the workers
//! that import Bundles, fetch `$everything` and read single resources.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::load::Worker;
use crate::prng::Prng;

/// Plain HTTP only; the TLS configuration (ring, trusting nothing) is there because reqwest
/// has rustls without a default provider (see Cargo.toml).
pub fn client() -> anyhow::Result<reqwest::Client> {
    #[allow(deprecated)] // ring, as the server uses: aws-lc-rs is slow to build here
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// Waits until `GET /ready` answers 200.
pub async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{base}/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{base} was not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts one transaction Bundle and returns the response Bundle.
pub async fn post_bundle(
    client: &reqwest::Client,
    base: &str,
    body: Bytes,
) -> Result<Value, String> {
    let response = client
        .post(format!("{base}/"))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST /: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(format!("POST / answered {status}: {:.200}", text));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("response Bundle: {e}"))
}

/// The id of the Patient a transaction response created (`Patient/<id>/_history/1`).
fn created_patient(response: &Value) -> Option<String> {
    response["entry"].as_array()?.iter().find_map(|e| {
        let location = e["response"]["location"].as_str()?;
        let id = location.strip_prefix("Patient/")?;
        Some(id.split('/').next()?.to_string())
    })
}

/// Posts Bundle `seq` of the list; remembers the Patient each created.
pub struct Importer {
    pub client: reqwest::Client,
    pub base: String,
    pub bundles: Arc<Vec<Bytes>>,
    pub resources: Arc<Vec<usize>>,
    pub patients: Arc<Mutex<Vec<String>>>,
}

impl Worker for Importer {
    async fn call(&mut self, seq: u64) -> Result<u64, String> {
        let index = seq as usize;
        let response = post_bundle(&self.client, &self.base, self.bundles[index].clone()).await?;
        let patient = created_patient(&response).ok_or("no Patient in the response")?;
        if let Ok(mut patients) = self.patients.lock() {
            patients.push(patient);
        }
        Ok(self.resources[index] as u64)
    }
}

/// What a reader fetches for a randomly chosen patient: over HTTP here, or the same rows with
/// raw SQL (`sql::Reader`).
#[derive(Debug, Clone, Copy)]
pub enum Fetch {
    /// `GET /Patient/{id}/$everything`; units are the resources returned.
    Everything,
    /// `GET /Patient/{id}`; one unit.
    Patient,
}

pub struct Reader {
    pub client: reqwest::Client,
    pub base: String,
    pub patients: Arc<Vec<String>>,
    pub prng: Prng,
    pub fetch: Fetch,
}

impl Worker for Reader {
    async fn call(&mut self, _seq: u64) -> Result<u64, String> {
        let id = self.prng.pick(&self.patients);
        let url = match self.fetch {
            Fetch::Everything => format!("{}/Patient/{id}/$everything", self.base),
            Fetch::Patient => format!("{}/Patient/{id}", self.base),
        };
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("GET answered {status}"));
        }
        Ok(match self.fetch {
            Fetch::Everything => entries(&body)?,
            Fetch::Patient => 1,
        })
    }
}

/// Entries of a Bundle, counted by their `fullUrl`s without parsing it.
fn entries(body: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    Ok(text.matches("\"fullUrl\"").count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_counted_by_their_full_urls() {
        let bundle = br#"{"entry":[{"fullUrl":"a"},{"fullUrl":"b"}]}"#;
        assert_eq!(entries(bundle), Ok(2));
        assert_eq!(entries(b"{}"), Ok(0));
    }

    #[test]
    fn the_created_patient_is_found_by_its_location() {
        let response = serde_json::json!({"entry": [
            {"response": {"location": "Encounter/e1/_history/1"}},
            {"response": {"location": "Patient/p7/_history/1"}}]});
        assert_eq!(created_patient(&response).as_deref(), Some("p7"));
    }
}
