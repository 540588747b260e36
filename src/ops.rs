//! Operational endpoints on the HTTP listener, outside the FHIR API: `GET /health` (the process
//! answers), `GET /ready` (the database answers and every migration is applied), both plain
//! JSON for load balancers, and `GET /metrics` in the Prometheus text format.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::fhir::FhirState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics));
}

async fn metrics(state: web::Data<FhirState>) -> HttpResponse {
    let mut text = crate::telemetry::metrics::metrics().render();
    let (open, idle, max) = state.store.pool_usage();
    let name = "hl7bridge_db_pool_connections";
    text.push_str(&format!(
        "# HELP {name} Database connections by state (busy, idle), and the pool's maximum.\n\
         # TYPE {name} gauge\n\
         {name}{{state=\"busy\"}} {}\n{name}{{state=\"idle\"}} {idle}\n{name}{{state=\"max\"}} {max}\n",
        (open as usize).saturating_sub(idle)
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
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
