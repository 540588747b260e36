//! Response format negotiation, the one place where a response leaves as something other than
//! the JSON the handlers wrote.
//!
//! Handlers always answer FHIR JSON (Bundles are spliced from stored JSON text). This middleware
//! reads what the client asked for — `_format` (`json`, `xml` or a mime type) first, then
//! `Accept` — and, only when that is XML or `_pretty=true`, rewrites a FHIR JSON body at the
//! boundary: into XML through the codec crate, or into indented JSON. Everything else,
//! including every plain JSON response, passes through untouched. A request that accepts
//! neither format gets 406 (in JSON, since nothing it named can be written).
//!
//! `POST _search` may carry `_format` and `_pretty` in its form body, which this middleware
//! cannot read before the handler: the handler reads them and leaves its choice on the
//! response ([`from_form`]), and a choice found there wins.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use super::criteria::percent_decode;
use super::error::{FhirError, FHIR_JSON};

/// The representation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// XML, answered with this content type.
    Xml(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub format: Format,
    pub pretty: bool,
}

pub async fn negotiate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .map(|v| v.to_str().unwrap_or("?"));
    let wanted = match wanted(req.query_string(), accept) {
        Ok(wanted) => wanted,
        Err(refusal) => {
            let response = refusal.error_response();
            return Ok(req.into_response(response));
        }
    };
    let response = next.call(req).await?;
    let wanted = response
        .response()
        .extensions()
        .get::<Wanted>()
        .copied()
        .unwrap_or(wanted);
    let plain = Wanted {
        format: Format::Json,
        pretty: false,
    };
    if wanted == plain || !is_fhir_json(response.headers().get(header::CONTENT_TYPE)) {
        return Ok(response.map_into_boxed_body());
    }
    let (req, res) = response.into_parts();
    let (res, body) = res.into_parts();
    let json = actix_web::body::to_bytes(body)
        .await
        .map_err(|_| actix_web::error::ErrorInternalServerError("response body"))?;
    // Rewriting takes memory as reading a body of this size does (a page as XML about 13
    // times its JSON, indented JSON up to 25 times): it is charged to the same budget, so that
    // concurrent large pages wait for each other (a hostile tester's eight 33 MB pages as XML
    // at once passed 6 GB). A page charged more than the whole budget is not rewritten.
    let state = req
        .app_data::<actix_web::web::Data<super::FhirState>>()
        .cloned();
    let values = super::handlers::json_values(&json);
    let charge = super::handlers::charge(json.len(), values);
    let budget = match &state {
        Some(state) if charge > state.body_budget.total_bytes() => {
            let refusal = FhirError::NotAcceptable(format!(
                "this answer holds {values} JSON values, more than can be rewritten as XML or \
                 indented within the memory budget; ask for fewer (_count) or for plain JSON"
            ));
            return Ok(ServiceResponse::new(req, refusal.error_response()));
        }
        Some(state) => {
            let connections = &state.body_timeouts.connections;
            state.body_budget.reserve(Some(charge), connections).await
        }
        None => None,
    };
    let rendered = tokio::task::spawn_blocking(move || render(&json, wanted))
        .await
        .map_err(|_| FhirError::Internal)
        .and_then(|r| r);
    let res = match rendered {
        Ok((content_type, bytes)) => {
            let mut res = res.set_body(BoxBody::new(bytes));
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            res
        }
        Err(err) => err.error_response(),
    };
    drop(budget);
    Ok(ServiceResponse::new(req, res))
}

fn is_fhir_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/fhir+json"))
}

/// A FHIR JSON body in the wanted form, with its content type.
fn render(json: &[u8], wanted: Wanted) -> Result<(&'static str, Vec<u8>), FhirError> {
    match wanted.format {
        // fhirbolt always indents its XML: unindented unless `_pretty=true`.
        Format::Xml(content_type) => hl7bridge_fhir_codec::json_to_xml(json)
            .map(|xml| match wanted.pretty {
                true => (content_type, xml),
                false => (content_type, hl7bridge_fhir_codec::compact_xml(&xml)),
            })
            .map_err(|e| {
                tracing::warn!(error = %e, "a response could not be written as XML");
                FhirError::NotAcceptable(format!(
                    "this content cannot be written as XML ({e}); ask for JSON"
                ))
            }),
        Format::Json => {
            let value: serde_json::Value =
                serde_json::from_slice(json).map_err(|_| FhirError::Internal)?;
            let pretty = serde_json::to_vec_pretty(&value).map_err(|_| FhirError::Internal)?;
            Ok((FHIR_JSON, pretty))
        }
    }
}

/// What the request asks for: `_format` wins over `Accept`; no preference means JSON.
pub fn wanted(query: &str, accept: Option<&str>) -> Result<Wanted, FhirError> {
    let mut format = None;
    let mut pretty = false;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // A `+` in a query is a space; `application/fhir+xml` often arrives unencoded.
        let value = percent_decode(value).unwrap_or_default().replace(' ', "+");
        match name {
            "_format" if format.is_none() => {
                let lower = value.to_ascii_lowercase();
                format = Some(named(&lower).ok_or_else(|| not_acceptable(&lower))?);
            }
            "_pretty" => pretty = value == "true",
            _ => {}
        }
    }
    let format = match (format, accept) {
        (Some(format), _) => format,
        (None, Some(accept)) => from_accept(&accept.to_ascii_lowercase())?,
        (None, None) => Format::Json,
    };
    Ok(Wanted { format, pretty })
}

/// What a `POST _search` asks for when its form body names `_format` or `_pretty` (the query
/// string's `_format` still wins); `None` when the body names neither.
pub fn from_form(
    query: &str,
    form: &str,
    accept: Option<&str>,
) -> Result<Option<Wanted>, FhirError> {
    let names = |pair: &str| pair.split('=').next().unwrap_or("").to_string();
    if !form
        .split('&')
        .map(names)
        .any(|n| n == "_format" || n == "_pretty")
    {
        return Ok(None);
    }
    wanted(&format!("{query}&{form}"), accept).map(Some)
}

/// A `_format` value or a media type (without parameters) this server writes.
fn named(format: &str) -> Option<Format> {
    match format {
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => {
            Some(Format::Json)
        }
        "xml" | "application/fhir+xml" | "application/xml+fhir" => {
            Some(Format::Xml("application/fhir+xml; charset=utf-8"))
        }
        "application/xml" => Some(Format::Xml("application/xml; charset=utf-8")),
        "text/xml" => Some(Format::Xml("text/xml; charset=utf-8")),
        _ => None,
    }
}

/// The acceptable range with the highest `q` (the first among equals); `*/*` and
/// `application/*` mean JSON.
fn from_accept(accept: &str) -> Result<Format, FhirError> {
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let mime = parts.next().unwrap_or("");
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let format = match mime {
            "" | "*/*" | "application/*" => Some(Format::Json),
            other => named(other),
        };
        match (format, best) {
            (Some(f), None) if q > 0.0 => best = Some((q, f)),
            (Some(f), Some((top, _))) if q > top => best = Some((q, f)),
            _ => {}
        }
    }
    best.map(|(_, f)| f).ok_or_else(|| not_acceptable(accept))
}

fn not_acceptable(asked: &str) -> FhirError {
    FhirError::NotAcceptable(format!(
        "application/fhir+json and application/fhir+xml are served, not {asked:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml() -> Format {
        Format::Xml("application/fhir+xml; charset=utf-8")
    }

    #[test]
    fn format_wins_over_accept_and_an_unencoded_plus_counts() {
        let w = wanted(
            "_format=application/fhir+xml",
            Some("application/fhir+json"),
        )
        .unwrap();
        assert_eq!(w.format, xml());
        assert_eq!(
            wanted("_format=json", Some("text/xml")).unwrap().format,
            Format::Json
        );
        assert!(wanted("_format=xml&_pretty=true", None).unwrap().pretty);
    }

    #[test]
    fn accept_takes_the_highest_quality_and_wildcards_mean_json() {
        let accept = "application/fhir+json;q=0.5, application/fhir+xml";
        assert_eq!(from_accept(accept).unwrap(), xml());
        assert_eq!(from_accept("text/html, */*;q=0.1").unwrap(), Format::Json);
        assert_eq!(
            from_accept("text/xml").unwrap(),
            Format::Xml("text/xml; charset=utf-8")
        );
        assert!(from_accept("text/html").is_err());
        assert!(from_accept("application/fhir+xml;q=0").is_err());
    }

    #[test]
    fn an_unknown_format_is_not_acceptable() {
        assert!(wanted("_format=html", None).is_err());
        assert!(wanted("_format=application/pdf", None).is_err());
    }
}
