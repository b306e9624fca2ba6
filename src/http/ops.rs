//! Operations endpoints: liveness, readiness, Prometheus metrics.

use super::schemas::{Health, Readiness};
use crate::state::AppState;
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

/// Prometheus text exposition. When `BOXOFFICE_METRICS_ADDR` is set it is
/// served only there, and this route answers 404.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
    (status = 404, description = "Metrics are served on their own address (BOXOFFICE_METRICS_ADDR)", body = super::openapi::Problem, content_type = "application/problem+json")))]
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    if state.config.metrics_addr.is_some() {
        return super::ApiError::NotFound("no such endpoint".into()).into_response();
    }
    render_metrics(State(state)).await.into_response()
}

/// `/metrics` on the metrics address.
pub async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// The operator dashboard: one self-contained page, no build step.
///
/// Sent with a Content-Security-Policy that allows only the page's own
/// inline script and style (by hash), requests to this origin, and no
/// framing (`frame-ancestors 'none'` and `X-Frame-Options: DENY`, against
/// clickjacking of a page that holds the service key).
#[utoipa::path(get, path = "/dashboard", tag = "operations", responses((status = 200, description = "HTML page; paste the service key", body = String, content_type = "text/html; charset=utf-8")))]
pub async fn dashboard() -> impl IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                DASHBOARD_CSP.as_str(),
            ),
            (axum::http::header::X_FRAME_OPTIONS, "DENY"),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (axum::http::header::REFERRER_POLICY, "no-referrer"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        axum::response::Html(DASHBOARD),
    )
}

const DASHBOARD: &str = include_str!("../../static/dashboard.html");

/// The dashboard's policy, with the hashes of its one inline `<script>`
/// and one `<style>` (computed once from the embedded page, so editing the
/// page can never leave a stale hash behind). Style attributes stay allowed
/// (`style-src-attr`): the page sets colours with them.
static DASHBOARD_CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let script = csp_hash(inline(DASHBOARD, "script"));
    let style = csp_hash(inline(DASHBOARD, "style"));
    format!(
        "default-src 'none'; script-src '{script}'; style-src '{style}'; \
         style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

/// The text of the first `<tag>...</tag>` of `html`.
fn inline<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = html.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = html[start..]
        .find(&format!("</{tag}>"))
        .map_or(start, |i| start + i);
    &html[start..end]
}

fn csp_hash(text: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()))
    )
}
