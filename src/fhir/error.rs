//! The FHIR API's error boundary: each variant decides the HTTP status and the OperationOutcome
//! issue code, and every error leaves as an OperationOutcome.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};

use crate::store::StoreError;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

#[derive(Debug, Clone, thiserror::Error)]
pub enum FhirError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    /// The request cannot be read or breaks a FHIR rule; `expression` points at the culprit.
    #[error("{message}")]
    Invalid {
        message: String,
        expression: Option<String>,
    },
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body larger than {0} bytes (HL7BRIDGE_MAX_BODY_BYTES)")]
    PayloadTooLarge(usize),
    /// A body of more JSON values than the memory budget for bodies can take at all.
    #[error(
        "the body holds {values} JSON values, more than the memory for request bodies can take \
         (about {most}; HL7BRIDGE_MAX_BODY_BYTES sets it): send it in parts"
    )]
    TooManyValues { values: usize, most: usize },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but cannot be applied (a JSON Patch whose `test` fails).
    #[error("{0}")]
    Unprocessable(String),
    /// No valid bearer token (answered with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// The token does not grant this.
    #[error("{0}")]
    Forbidden(String),
    #[error("the database is unavailable; retry later")]
    Unavailable,
    #[error("internal error")]
    Internal,
    /// Any of the above, raised by one entry of a Bundle.
    #[error("{error}")]
    AtEntry { index: usize, error: Box<FhirError> },
}

impl FhirError {
    pub fn invalid(message: impl Into<String>) -> Self {
        FhirError::Invalid {
            message: message.into(),
            expression: None,
        }
    }

    pub fn invalid_at(message: impl Into<String>, expression: impl Into<String>) -> Self {
        FhirError::Invalid {
            message: message.into(),
            expression: Some(expression.into()),
        }
    }

    /// The same error, an `Invalid` one pointed at `expression` (the element that holds what
    /// was found wrong).
    pub fn at(self, expression: &str) -> Self {
        match self {
            FhirError::Invalid { message, .. } => FhirError::invalid_at(message, expression),
            other => other,
        }
    }

    /// The same error, pointed at a Bundle entry.
    pub fn in_entry(self, index: usize) -> Self {
        FhirError::AtEntry {
            index,
            error: Box::new(self),
        }
    }

    /// Where the culprit is, as a FHIRPath-like expression, when known.
    fn expression(&self) -> Option<String> {
        match self {
            FhirError::Invalid { expression, .. } => expression.clone(),
            FhirError::AtEntry { index, error } => Some(match error.expression() {
                Some(inner) => format!("Bundle.entry[{index}].{inner}"),
                None => format!("Bundle.entry[{index}]"),
            }),
            _ => None,
        }
    }

    /// The FHIR issue-type code (http://hl7.org/fhir/issue-type).
    pub fn issue_code(&self) -> &'static str {
        match self {
            FhirError::NotFound(_) => "not-found",
            FhirError::Gone(_) => "deleted",
            FhirError::Invalid { .. } => "invalid",
            FhirError::NotSupported(_) | FhirError::UnsupportedMediaType(_) => "not-supported",
            FhirError::PayloadTooLarge(_) | FhirError::TooManyValues { .. } => "too-long",
            FhirError::RequestTimeout(_) => "timeout",
            FhirError::NotAcceptable(_) => "not-supported",
            FhirError::PreconditionFailed(_) => "duplicate",
            FhirError::Conflict(_) => "conflict",
            FhirError::Unprocessable(_) => "processing",
            FhirError::Unauthorized(_) => "login",
            FhirError::Forbidden(_) => "forbidden",
            FhirError::Unavailable => "transient",
            FhirError::Internal => "exception",
            FhirError::AtEntry { error, .. } => error.issue_code(),
        }
    }

    /// The OperationOutcome this error is reported as.
    pub fn outcome(&self) -> Value {
        let mut issue = json!({
            "severity": "error",
            "code": self.issue_code(),
            "diagnostics": self.to_string(),
        });
        if let Some(e) = self.expression() {
            issue["expression"] = json!([e]);
        }
        json!({"resourceType": "OperationOutcome", "issue": [issue]})
    }
}

impl ResponseError for FhirError {
    fn status_code(&self) -> StatusCode {
        match self {
            FhirError::NotFound(_) => StatusCode::NOT_FOUND,
            FhirError::Gone(_) => StatusCode::GONE,
            FhirError::Invalid { .. } => StatusCode::BAD_REQUEST,
            FhirError::NotSupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            FhirError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FhirError::PayloadTooLarge(_) | FhirError::TooManyValues { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            FhirError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            FhirError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            FhirError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            FhirError::Conflict(_) => StatusCode::CONFLICT,
            FhirError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FhirError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            FhirError::Forbidden(_) => StatusCode::FORBIDDEN,
            FhirError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            FhirError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            FhirError::AtEntry { error, .. } => error.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        // The rest of an unread body would otherwise be read as the next request, or keep the
        // connection (and its slot) open.
        if matches!(
            self,
            FhirError::RequestTimeout(_)
                | FhirError::PayloadTooLarge(_)
                | FhirError::TooManyValues { .. }
        ) {
            response.force_close();
        }
        if let FhirError::Unauthorized(message) = self {
            // RFC 6750: the scheme, and why the token (if any) was refused.
            let description = message.replace('"', "'");
            response.insert_header((
                actix_web::http::header::WWW_AUTHENTICATE,
                format!("Bearer realm=\"hl7bridge\", error=\"invalid_token\", error_description=\"{description}\""),
            ));
        }
        response
            .content_type(FHIR_JSON)
            .body(self.outcome().to_string())
    }
}

impl From<StoreError> for FhirError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %err, "database unavailable");
                FhirError::Unavailable
            }
            StoreError::PreconditionFailed { message, .. } => {
                FhirError::PreconditionFailed(message)
            }
            StoreError::DuplicateInBatch(what) => {
                FhirError::invalid(format!("{what} is the target of more than one entry"))
            }
            other => {
                tracing::error!(error = ?other, "database error");
                FhirError::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_error_names_the_entry_in_its_expression() {
        let err = FhirError::invalid_at("empty array", "resource.name").in_entry(3);
        let outcome = err.outcome();
        assert_eq!(
            outcome["issue"][0]["expression"][0],
            "Bundle.entry[3].resource.name"
        );
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn any_entry_error_names_its_entry() {
        let err = FhirError::NotSupported("GET entries are not supported yet".into()).in_entry(2);
        assert_eq!(
            err.outcome()["issue"][0]["expression"][0],
            "Bundle.entry[2]"
        );
        assert_eq!(err.status_code(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn a_missing_resource_is_a_404_not_found_outcome() {
        let err = FhirError::NotFound("Patient/x is not known".into());
        assert_eq!(err.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(err.outcome()["issue"][0]["code"], "not-found");
    }
}
