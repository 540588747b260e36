//! Operational endpoints on the HTTP listener, outside the FHIR API: `GET /health` (the process
//! answers) and `GET /ready` (the database answers and every migration is applied). Plain JSON,
//! for load balancers and orchestrators.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::fhir::FhirState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "pass"}))
}

async fn ready(state: web::Data<FhirState>) -> HttpResponse {
    match state.store.ready().await {
        Ok(true) => HttpResponse::Ok().json(json!({"status": "pass"})),
        Ok(false) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "fail", "output": "migrations pending"})),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check: database unavailable");
            HttpResponse::ServiceUnavailable()
                .json(json!({"status": "fail", "output": "database unavailable"}))
        }
    }
}
