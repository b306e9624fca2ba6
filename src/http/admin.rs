//! Admin endpoints (service key): events, live tuning, figures.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult,
    extract::{ApiJson, ServiceKey},
    queue::event_in_path,
};
use crate::{
    catalog::{
        self, Event, Schedule,
        request::{NewEvent, QueuePatch},
    },
    holds,
    payments::sales,
    queue,
    state::AppState,
};

pub fn event_config_json(ev: &Event) -> Value {
    json!({
        "event_id": ev.event_id,
        "name": ev.name,
        "queue": ev.queue,
        "sale": ev.fair.sale.to_json(),
        "challenge": { "difficulty_bits": ev.fair.difficulty_bits },
        "schedules": ev.schedules.iter().map(Schedule::config_view).collect::<Vec<_>>(),
    })
}

/// A schedule in the admin event view: its settings and its figures.
#[derive(Serialize)]
struct ScheduleView<'a> {
    #[serde(flatten)]
    settings: catalog::views::ScheduleView<'a>,
    #[serde(flatten)]
    figures: ScheduleFigures,
}

/// Live counts (from Redis; zero while the event is restoring) and the
/// money of the payments that stand (from PostgreSQL): a refund gives the
/// whole amount back.
#[derive(Serialize)]
struct ScheduleFigures {
    held: u32,
    sold: u32,
    available: u32,
    #[serde(with = "crate::money::serde_amount")]
    revenue: Decimal,
    payments: i64,
    payments_refunded: i64,
}

/// Every schedule of `ev` with its figures.
async fn schedule_views<'a>(
    state: &AppState,
    ev: &'a Event,
    restoring: bool,
) -> ApiResult<Vec<ScheduleView<'a>>> {
    let ids: Vec<_> = ev.schedules.iter().map(|s| s.schedule_id.clone()).collect();
    // One answer per id, in order.
    let live = if restoring {
        vec![]
    } else {
        holds::overview(&state.redis, &ev.event_id, &ids, None).await?
    };
    let money = sales::per_schedule(&state.pg, &ev.event_id).await?;
    Ok(ev
        .schedules
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Not in Redis (being restored): zero live figures.
            let (held, sold, available) = live
                .get(i)
                .filter(|f| !f.missing)
                .map_or((0, 0, 0), |f| (f.held, f.sold, f.available));
            let (revenue, payments, refunded) = money
                .iter()
                .find(|m| m.schedule_id == s.schedule_id.as_str())
                .map_or((Decimal::ZERO, 0, 0), |m| {
                    (
                        m.sales.revenue,
                        m.sales.payments - m.payments_refunded,
                        m.payments_refunded,
                    )
                });
            ScheduleView {
                settings: s.config_view(),
                figures: ScheduleFigures {
                    held,
                    sold,
                    available,
                    revenue,
                    payments,
                    payments_refunded: refunded,
                },
            }
        })
        .collect())
}

#[utoipa::path(post, path = "/v1/admin/events", tag = "admin",
    security(("service_key" = [])),
    request_body = NewEvent,
    responses(
        (status = 201, description = "Created", body = super::schemas::EventConfig),
        (status = 409, description = "already_exists", body = super::openapi::Problem),
        (status = 422, description = "invalid_request", body = super::openapi::Problem),
    ))]
pub async fn create_event(
    State(state): State<AppState>,
    _: ServiceKey,
    ApiJson(body): ApiJson<NewEvent>,
) -> ApiResult<impl IntoResponse> {
    let ev = body
        .parse(state.config.currency)
        .map_err(|errs| ApiError::InvalidRequest(errs.join("; ")))?;
    if !catalog::pg::insert(&state.pg, &ev).await? {
        return Err(ApiError::AlreadyExists(format!(
            "event {} already exists",
            ev.event_id
        )));
    }
    // PostgreSQL is the source of truth; if Redis is down now, the
    // reconciler loads the event as soon as it is back.
    catalog::load_into_redis(&state.redis, &ev).await?;
    // A new event has no sold seats: ready at once, in epoch 0.
    catalog::finish_restore(&state.redis, &ev.event_id, 0).await?;
    state.public_catalog.invalidate();
    tracing::info!(event_id = %ev.event_id, "event created");
    Ok((StatusCode::CREATED, axum::Json(event_config_json(&ev))))
}

/// The admission figures: the autopilot's last step on this instance, or,
/// before one (loops off, just started), what the settings say.
fn admission_figures(state: &AppState, ev: &Event) -> queue::autopilot::Figures {
    let settings = &ev.queue;
    state
        .autopilot
        .figures(&ev.event_id)
        .unwrap_or_else(|| queue::autopilot::Figures {
            admission_mode: settings.autopilot.mode.as_str().to_owned(),
            effective_admit_per_second: match settings.autopilot.mode {
                queue::autopilot::Mode::Fixed => settings.admit_per_second,
                queue::autopilot::Mode::Auto => settings.autopilot.clamp(settings.admit_per_second),
            },
            admitted_p99_ms: None,
            pool_wait_p99_ms: None,
        })
}

async fn existing(state: &AppState, raw: &str) -> ApiResult<Event> {
    let id = event_in_path(raw)?;
    catalog::pg::get(&state.pg, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))
}

#[utoipa::path(get, path = "/v1/admin/events/{event_id}", tag = "admin",
    security(("service_key" = [])),
    params(("event_id" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "Configuration and live figures; while the event is missing from Redis or being restored, zero live figures and `\"restoring\": true`", body = super::schemas::EventDetails),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable (with Retry-After): PostgreSQL or the event's Redis shard is down", body = super::openapi::Problem),
    ))]
pub async fn get_event(
    State(state): State<AppState>,
    _: ServiceKey,
    Path(event_id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let ev = existing(&state, &event_id).await?;
    let mut body = event_config_json(&ev);
    // Missing from Redis (lost, or being restored): the definition from
    // PostgreSQL with zero live figures and `"restoring": true`, never an
    // error; the reconciler brings the event back by itself.
    let restoring = !catalog::is_ready(&state.redis, &ev.event_id).await?;
    let figures = if restoring {
        queue::Figures::default()
    } else {
        match queue::figures(&state.redis, &ev.event_id).await {
            Ok(f) => f,
            // Lost between the two calls.
            Err(queue::QueueError::NoEvent) => queue::Figures::default(),
            Err(e) => return Err(e.into()),
        }
    };
    let mut figures = figures;
    figures.autopilot = admission_figures(&state, &ev);
    body["restoring"] = json!(restoring);
    body["live"] = serde_json::to_value(&figures).map_err(anyhow::Error::from)?;
    body["schedules"] = serde_json::to_value(schedule_views(&state, &ev, restoring).await?)
        .map_err(anyhow::Error::from)?;
    if let Some(info) = crate::fair::info(&state.redis, &ev.event_id).await? {
        let drawn = info.drawn();
        body["draw"] = json!({
            "opens_at": ev.fair.sale.opens_at.map(crate::time::rfc3339_ms),
            "commitment": ev.fair.seed.commitment(),
            "drawn": drawn,
            "seed": drawn.then(|| ev.fair.seed.to_hex()),
            "entries": drawn.then_some(info.entries),
        });
    }
    Ok(axum::Json(body))
}

#[utoipa::path(patch, path = "/v1/admin/events/{event_id}/queue", tag = "admin",
    security(("service_key" = [])),
    params(("event_id" = String, Path, description = "Event id")),
    request_body = QueuePatch,
    responses(
        (status = 200, description = "The new settings; they apply from the next tick", body = super::schemas::QueueSettingsBody),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 422, description = "invalid_request", body = super::openapi::Problem),
    ))]
pub async fn patch_queue(
    State(state): State<AppState>,
    _: ServiceKey,
    Path(event_id): Path<String>,
    ApiJson(patch): ApiJson<QueuePatch>,
) -> ApiResult<axum::Json<super::schemas::QueueSettingsBody>> {
    let mut ev = existing(&state, &event_id).await?;
    ev.queue = patch
        .apply(&ev.queue)
        .map_err(|errs| ApiError::InvalidRequest(errs.join("; ")))?;
    catalog::pg::update_queue(&state.pg, &ev.event_id, &ev.queue).await?;
    catalog::load_into_redis(&state.redis, &ev).await?;
    tracing::info!(event_id = %ev.event_id, settings = ?ev.queue, "admission settings changed");
    Ok(axum::Json(super::schemas::QueueSettingsBody {
        event_id: ev.event_id.to_string(),
        queue: ev.queue,
    }))
}
