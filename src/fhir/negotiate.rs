//! Response format negotiation: this server answers FHIR JSON only, so a request that asks for
//! nothing else than XML (through `_format` or `Accept`) gets 406 instead of JSON it did not
//! ask for.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use super::error::FhirError;

pub async fn json_only(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if let Some(refusal) = refusal(&req) {
        let response = refusal.error_response();
        return Ok(req.into_response(response));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

fn refusal(req: &ServiceRequest) -> Option<FhirError> {
    let format = req
        .query_string()
        .split('&')
        .find_map(|p| p.strip_prefix("_format="))
        .map(|f| f.to_ascii_lowercase());
    if let Some(format) = format {
        return (!is_json(&format.replace("%2b", "+").replace("%2f", "/")))
            .then(|| not_acceptable(&format));
    }
    let accept = req
        .headers()
        .get("accept")?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    let acceptable = accept
        .split(',')
        .map(|range| range.split(';').next().unwrap_or("").trim())
        .any(|range| is_json(range) || matches!(range, "*/*" | "application/*" | ""));
    (!acceptable).then(|| not_acceptable(&accept))
}

fn is_json(format: &str) -> bool {
    matches!(
        format,
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir"
    )
}

fn not_acceptable(asked: &str) -> FhirError {
    FhirError::NotAcceptable(format!(
        "only application/fhir+json is served, not {asked:?}"
    ))
}
