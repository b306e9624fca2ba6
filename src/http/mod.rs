//! HTTP: translates requests into domain calls and results back into JSON
//! or problem+json. No business rule lives here.

pub mod admin;
pub mod admitted;
pub mod auth;
pub mod catalog;
pub mod error;
pub mod extract;
pub mod fair;
pub mod holds;
pub mod hygiene;
pub mod limit;
pub mod openapi;
pub mod ops;
pub mod payments;
pub mod queue;
pub mod schemas;
pub mod stream;
pub mod to_the_end;
pub mod wallet;

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, StatusCode},
    middleware::{self, Next},
    response::Response,
    routing::{get, patch, post},
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::state::AppState;
pub use error::{ApiError, ApiResult};
use limit::RateLimits;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the whole router with its middleware; `limits` go to the rate
/// limit middleware.
pub fn router(state: AppState, limits: Arc<RateLimits>) -> Router {
    let api = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/dashboard", get(ops::dashboard))
        .route("/v1/events", get(catalog::list_events))
        .route("/v1/events/{event_id}/queue", post(queue::join))
        .route("/v1/queue/status", get(queue::status))
        .route("/v1/queue/stream", get(stream::stream))
        .route("/v1/events/{event_id}/draw", get(fair::draw))
        .route("/v1/events/{event_id}/challenge", get(fair::challenge))
        .route(
            "/v1/admin/events/{event_id}/draw/entries",
            get(fair::draw_entries),
        )
        .route("/v1/queue", axum::routing::delete(queue::leave))
        .route(
            "/v1/events/{event_id}/schedules",
            get(holds::list_schedules),
        )
        .route(
            "/v1/events/{event_id}/schedules/{schedule_id}/seats",
            get(holds::seats),
        )
        .route("/v1/holds", post(holds::place))
        .route(
            "/v1/holds/{hold_id}",
            get(holds::get).delete(holds::release),
        )
        .route(
            "/v1/admin/events/{event_id}/schedules/{schedule_id}/seats",
            get(holds::admin_seats),
        )
        .route("/v1/users/{user_id}/wallet", get(wallet::balance))
        .route("/v1/users/{user_id}/wallet/charges", post(wallet::charge))
        .route(
            "/v1/users/{user_id}/wallet/transactions",
            get(wallet::transactions),
        )
        .route("/v1/payments", post(payments::pay))
        .route("/v1/payments/{payment_id}", get(payments::get_payment))
        .route("/v1/users/{user_id}/payments", get(payments::user_payments))
        .route("/v1/admin/events/{event_id}/sales", get(payments::sales))
        .route("/v1/admin/reconcile", post(payments::reconcile_now))
        .route(
            "/v1/admin/payments/{payment_id}/refund",
            post(payments::refund_payment),
        )
        .route(
            "/v1/admin/events/{event_id}/schedules/{schedule_id}/cancel",
            post(payments::cancel_schedule),
        )
        .route("/v1/admin/events", post(admin::create_event))
        .route(
            "/v1/admin/events/{event_id}",
            get(admin::get_event).patch(fair::patch_event),
        )
        .route(
            "/v1/admin/events/{event_id}/queue",
            patch(admin::patch_queue),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), track_latency));

    let docs: Router<AppState> = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .url(
            "/openapi.json",
            <openapi::ApiDoc as utoipa::OpenApi>::openapi(),
        )
        .into();

    #[cfg(feature = "failpoints")]
    let api = hygiene::failpoint_routes(api, &state);

    api.merge(docs)
        .layer(middleware::from_fn_with_state(
            (state.clone(), limits),
            limit::limit,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request| {
                            let id = req
                                .headers()
                                .get(&REQUEST_ID)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!("request", request_id = %id, method = %req.method(), uri = %req.uri().path())
                        })
                        .on_request(())
                        .on_response(
                            tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG),
                        )
                        // A 5xx is logged once, with its cause, where it is
                        // made (`ApiError`); a per-request ERROR line here
                        // only repeated it, thousands of times a second when
                        // a surge is refused.
                        .on_failure(
                            tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                        ),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(middleware::from_fn_with_state(state.clone(), hygiene::limits))
                .layer(DefaultBodyLimit::max(state.config.http.max_body_bytes))
                .layer(CatchPanicLayer::custom(panic_response)),
        )
        .with_state(state)
}

/// The router of the metrics address (`BOXOFFICE_METRICS_ADDR`): only
/// `/metrics`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::render_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Times every routed request, in one layer: into
/// `boxoffice_http_request_duration_seconds` by matched route (never the
/// raw path, so label values stay bounded) and status, and an admitted
/// buyer's request also into the autopilot's window of its event
/// ([`admitted`]).
async fn track_latency(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let buyer = admitted::watch(&mut req, route.as_ref());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let took = start.elapsed();
    if let Some(slot) = buyer {
        slot.record(&state.autopilot, took);
    }
    metrics::histogram!(
        "boxoffice_http_request_duration_seconds",
        "method" => method,
        "route" => route.as_ref().map_or("unmatched", MatchedPath::as_str).to_owned(),
        "status" => resp.status().as_u16().to_string(),
    )
    .record(took.as_secs_f64());
    resp
}

/// A handler that panicked answers a problem+json 500 (logged once), and
/// the process keeps serving.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    axum::response::IntoResponse::into_response(ApiError::Internal(anyhow::anyhow!(
        "handler panicked: {what}"
    )))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> Response {
    ApiError::InvalidRequest("method not allowed on this endpoint".into())
        .into_response_as(StatusCode::METHOD_NOT_ALLOWED)
}
