//! Who is calling the FHIR API: OAuth2 bearer tokens (JWTs signed with RS256 or ES256 by a key
//! in a configured JWKS), checked for issuer, audience and expiry, carrying SMART scopes.
//!
//! Authentication is off by default on a loopback listener and required on any other address
//! (see `config`). What a token may do with a resource is decided by [`Access`], which the
//! FHIR layer consults per request and per resource.

pub(crate) mod jwks;
pub mod scopes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

pub use scopes::{Permission, Reach, Scopes};

/// `HL7BRIDGE_AUTH_*`: where the signing keys are and what a token must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    pub jwks: JwksSource,
    /// `HL7BRIDGE_AUTH_ISSUER`: the `iss` every token must carry.
    pub issuer: String,
    /// `HL7BRIDGE_AUTH_AUDIENCE`: a value the token's `aud` must hold (this server's URL, as
    /// the authorization server was told it).
    pub audience: String,
    /// `HL7BRIDGE_AUTH_LEEWAY_S`: clock skew allowed on `exp` and `nbf`. Default 30.
    pub leeway_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `HL7BRIDGE_AUTH_JWKS_FILE`: read at start.
    File(std::path::PathBuf),
    /// `HL7BRIDGE_AUTH_JWKS_URL`: fetched at start, and again (at most every
    /// [`REFETCH_INTERVAL`]) when a token names a key id the set does not hold, so keys can be
    /// rotated without a restart. `https://`, or `http://` to a loopback host (see `jwks`).
    Url {
        url: String,
        /// `HL7BRIDGE_AUTH_JWKS_CA`: a PEM bundle of the CAs trusted for an https:// URL,
        /// instead of the system's roots.
        ca: Option<std::path::PathBuf>,
    },
}

/// The least time between two fetches of a JWKS URL.
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// The signature algorithms accepted. `none` and the HMAC family never are: a server that
/// verified HS256 with a public key as the secret would accept tokens anyone can forge.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// A caller, as its verified token describes it.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `sub`, else `client_id`: who to name in the audit trail.
    pub subject: String,
    pub client_id: Option<String>,
    /// The SMART launch context: the patient a `patient/` scope is limited to.
    pub patient: Option<String>,
    pub scopes: Scopes,
}

/// What one request may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// Authentication is off: everything is allowed.
    Open,
    /// Trusted internal callers (the HL7v2 and Kafka ingress, `import`).
    System,
    Token(Arc<Principal>),
}

impl Access {
    /// How far `permission` on `resource_type` reaches for this caller.
    pub fn reach(&self, resource_type: &str, permission: Permission) -> Reach {
        match self {
            Access::Open | Access::System => Reach::All,
            Access::Token(p) => match p.scopes.reach(resource_type, permission) {
                // A patient scope without a patient to limit it to grants nothing.
                Reach::Patient if p.patient.is_none() => Reach::None,
                reach => reach,
            },
        }
    }

    /// The patient a patient-scoped grant is limited to.
    pub fn patient(&self) -> Option<&str> {
        match self {
            Access::Token(p) => p.patient.as_deref(),
            _ => None,
        }
    }

    /// Who the audit trail names: the token's subject, or `anonymous`.
    pub fn agent(&self) -> String {
        match self {
            Access::Open => "anonymous".into(),
            Access::System => "hl7bridge".into(),
            Access::Token(p) => p.subject.clone(),
        }
    }
}

/// Why a bearer token was refused. The texts go to the caller; they never echo the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted (RS256, RS384, RS512, PS256, ES256, ES384)")]
    Algorithm,
    #[error("the token was not signed by a key this server trusts")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    Issuer,
    #[error("the token is meant for another audience")]
    Audience,
    #[error("the token lacks a required claim ({0})")]
    MissingClaim(String),
    #[error("the token has patient scopes but names no patient")]
    NoPatient,
    #[error("the token's {0} claim is not of the form RFC 7519 gives it")]
    ClaimForm(&'static str),
}

#[derive(Deserialize)]
struct Claims {
    /// Read as any JSON, and checked by [`check_claims`]: jsonwebtoken would take an array
    /// for `iss` and refuses a fractional `exp` or `nbf`.
    iss: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    sub: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
    /// Space-separated (RFC 8693, SMART); some servers send `scp` as an array instead.
    scope: Option<String>,
    scp: Option<Vec<String>>,
    patient: Option<String>,
}

/// Verifies bearer tokens against a key set.
pub struct Authenticator {
    settings: AuthSettings,
    keys: std::sync::RwLock<JwkSet>,
    last_fetch: tokio::sync::Mutex<Instant>,
    fetcher: jwks::Fetcher,
}

impl Authenticator {
    /// Loads the key set; a key set that cannot be read or holds no usable key is an error.
    pub async fn load(settings: AuthSettings) -> anyhow::Result<Authenticator> {
        let fetcher = jwks::Fetcher::new(&settings.jwks)?;
        let keys = fetch(&fetcher).await?;
        if !keys.keys.iter().any(usable) {
            anyhow::bail!("the JWKS holds no RSA or EC signing key");
        }
        Ok(Authenticator {
            settings,
            keys: std::sync::RwLock::new(keys),
            last_fetch: tokio::sync::Mutex::new(Instant::now()),
            fetcher,
        })
    }

    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let key = match self.key_for(header.kid.as_deref(), header.alg) {
            Some(key) => key,
            None => {
                self.refetch().await;
                self.key_for(header.kid.as_deref(), header.alg)
                    .ok_or(AuthError::UnknownKey)?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["aud"]);
        // `iss`, `exp` and `nbf` are checked by `check_claims`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::Signature,
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidIssuer => AuthError::Issuer,
                K::InvalidAudience => AuthError::Audience,
                K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                K::InvalidAlgorithm => AuthError::Algorithm,
                _ => AuthError::Malformed,
            }
        })?;
        let claims = data.claims;
        check_claims(&claims, &self.settings, unix_now())?;
        let scope_text = match (claims.scope, claims.scp) {
            (Some(text), _) => text,
            (None, Some(list)) => list.join(" "),
            (None, None) => String::new(),
        };
        let scopes = Scopes::parse(&scope_text);
        let patient = claims.patient.filter(|p| crate::fhir::id::is_valid_id(p));
        if scopes.has_patient_context() && patient.is_none() {
            return Err(AuthError::NoPatient);
        }
        let client_id = claims.client_id.or(claims.azp);
        let subject = claims
            .sub
            .or_else(|| client_id.clone())
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
        Ok(Principal {
            subject,
            client_id,
            patient,
            scopes,
        })
    }

    /// The key that verifies `alg` for `kid`: the key with that id, or with no id given, the
    /// only key of the algorithm's family.
    fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let fits = |k: &&Jwk| {
            usable(k)
                && k.common
                    .key_algorithm
                    .is_none_or(|a| a.to_string() == format!("{alg:?}"))
                && DecodingKey::from_jwk(k).is_ok_and(|d| d.family() == alg.family())
        };
        let candidates: Vec<&Jwk> = match kid {
            Some(kid) => keys
                .keys
                .iter()
                .filter(|k| k.common.key_id.as_deref() == Some(kid))
                .filter(fits)
                .collect(),
            None => keys.keys.iter().filter(fits).collect(),
        };
        match candidates.as_slice() {
            [one] => DecodingKey::from_jwk(one).ok(),
            _ => None,
        }
    }

    async fn refetch(&self) {
        let JwksSource::Url { .. } = &self.settings.jwks else {
            return;
        };
        let mut last = self.last_fetch.lock().await;
        if last.elapsed() < REFETCH_INTERVAL {
            return;
        }
        *last = Instant::now();
        // On failure the keys held stay, and a token naming another is refused.
        match fetch(&self.fetcher).await {
            Ok(keys) => *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys,
            Err(err) => tracing::warn!(error = format!("{err:#}"), "refetching the JWKS failed"),
        }
    }
}

/// RFC 7519's rules for the claims jsonwebtoken reads otherwise: `iss` is one StringOrURI
/// (§4.1.1; an array is refused, not searched for the issuer), and `exp` and `nbf` are
/// NumericDates (§2: seconds since the epoch, possibly fractional), compared with the clock to
/// the fraction. A token is expired from its `exp` on and valid from its `nbf` on, each
/// moved by the configured leeway.
fn check_claims(claims: &Claims, settings: &AuthSettings, now: f64) -> Result<(), AuthError> {
    match &claims.iss {
        None => return Err(AuthError::MissingClaim("iss".into())),
        Some(Value::String(iss)) if *iss == settings.issuer => {}
        Some(Value::String(_)) => return Err(AuthError::Issuer),
        Some(_) => return Err(AuthError::ClaimForm("iss")),
    }
    let leeway = settings.leeway_s as f64;
    let exp = numeric_date(claims.exp.as_ref(), "exp")?
        .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
    if now >= exp + leeway {
        return Err(AuthError::Expired);
    }
    if numeric_date(claims.nbf.as_ref(), "nbf")?.is_some_and(|nbf| now + leeway < nbf) {
        return Err(AuthError::NotYetValid);
    }
    Ok(())
}

/// A NumericDate claim's seconds: any finite JSON number.
fn numeric_date(value: Option<&Value>, claim: &'static str) -> Result<Option<f64>, AuthError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|s| s.is_finite())
            .map(Some)
            .ok_or(AuthError::ClaimForm(claim)),
        Some(_) => Err(AuthError::ClaimForm(claim)),
    }
}

/// Seconds since the epoch, with their fraction.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Signing keys of the families accepted; encryption keys (`use: enc`) never verify tokens.
fn usable(key: &Jwk) -> bool {
    use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
    let signing = !matches!(key.common.public_key_use, Some(PublicKeyUse::Encryption));
    let family = matches!(
        key.algorithm,
        AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
    );
    signing && family
}

async fn fetch(fetcher: &jwks::Fetcher) -> anyhow::Result<JwkSet> {
    use anyhow::Context;
    let text = fetcher.read().await?;
    serde_json::from_str(&text).context("the JWKS is not a JSON Web Key Set")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(leeway_s: u64) -> AuthSettings {
        AuthSettings {
            jwks: JwksSource::File("unused".into()),
            issuer: "https://idp.test".into(),
            audience: "https://fhir.test".into(),
            leeway_s,
        }
    }

    fn claims(value: Value) -> Claims {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn exp_and_nbf_are_compared_to_the_fraction_of_a_second() {
        let at = |exp: Value, nbf: Value, leeway: u64, now: f64| {
            let c = claims(json!({"iss": "https://idp.test", "exp": exp, "nbf": nbf}));
            check_claims(&c, &settings(leeway), now)
        };
        assert!(at(json!(100.5), json!(99.5), 0, 100.4).is_ok());
        assert!(matches!(
            at(json!(100.5), json!(99), 0, 100.5),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            at(json!(100.25), json!(99), 0, 100.3),
            Err(AuthError::Expired)
        ));
        assert!(at(json!(100.25), json!(99), 1, 101.2).is_ok());
        assert!(matches!(
            at(json!(200), json!(100.75), 0, 100.7),
            Err(AuthError::NotYetValid)
        ));
        assert!(at(json!(200), json!(100.75), 0, 100.75).is_ok());
        assert!(matches!(
            at(json!("200"), json!(1), 0, 100.0),
            Err(AuthError::ClaimForm("exp"))
        ));
        assert!(matches!(
            at(json!(200), json!(true), 0, 100.0),
            Err(AuthError::ClaimForm("nbf"))
        ));
    }

    #[test]
    fn iss_must_be_the_issuer_as_one_string() {
        let check = |iss: Value| {
            let c = claims(json!({"iss": iss, "exp": 200}));
            check_claims(&c, &settings(0), 100.0)
        };
        assert!(check(json!("https://idp.test")).is_ok());
        assert!(matches!(
            check(json!("https://other.test")),
            Err(AuthError::Issuer)
        ));
        assert!(matches!(
            check(json!(["https://idp.test"])),
            Err(AuthError::ClaimForm("iss"))
        ));
        let none = claims(json!({"exp": 200}));
        assert!(matches!(
            check_claims(&none, &settings(0), 100.0),
            Err(AuthError::MissingClaim(_))
        ));
    }
}
