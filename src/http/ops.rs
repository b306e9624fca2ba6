//! Operations endpoints: liveness, readiness, Prometheus metrics.

use super::schemas::{Health, Readiness};
use crate::app::AppState;
use axum::{extract::State, http::StatusCode, response::IntoResponse};

/// The process is up (no dependency is consulted).
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(Health { status: "ok" })
}

/// Redis and PostgreSQL answer and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "A dependency is unavailable or migrations are pending (with Retry-After)", body = Readiness,
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (redis, pg) = tokio::join!(state.redis.ping(), state.pg.migrations_applied());
    let redis_ok = redis.is_ok();
    let (pg_ok, migrations_ok) = match pg {
        Ok(applied) => (true, applied),
        Err(_) => (false, false),
    };
    let ready = redis_ok && pg_ok && migrations_ok;
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        redis: if redis_ok { "ok" } else { "unavailable" },
        postgres: if pg_ok { "ok" } else { "unavailable" },
        migrations: if migrations_ok {
            "applied"
        } else if pg_ok {
            "pending"
        } else {
            "unknown"
        },
    };
    if ready {
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, 1.into());
        resp
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// The operator dashboard: one self-contained page, no build step.
#[utoipa::path(get, path = "/dashboard", tag = "operations", responses((status = 200, description = "HTML page; paste the service key", body = String, content_type = "text/html; charset=utf-8")))]
pub async fn dashboard() -> impl IntoResponse {
    axum::response::Html(include_str!("../../static/dashboard.html"))
}
