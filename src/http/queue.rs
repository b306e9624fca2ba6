//! `POST /v1/events/{event_id}/queue`, `GET /v1/queue/status`, `DELETE /v1/queue`
//! (the stream is in `stream.rs`, fair start in `fair.rs`).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, ApiResult,
    auth::{Caller, QueueToken},
    extract::OptionalJson,
};
use crate::{
    ids::{EventId, ScheduleId, UserId},
    queue::{self, EntryState, EntryView, QueueError},
    state::AppState,
    token::QueueClaims,
};

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The user to join. Required with the service key; with a user
    /// assertion it may be omitted and, if sent, must equal its `sub`.
    pub user_id: Option<String>,
    /// A solved proof-of-work challenge (when the event asks for one).
    #[serde(default)]
    pub challenge: Option<super::fair::ChallengeAnswer>,
}

/// The user an entry is for: the caller's own (a user assertion), or the
/// one the platform names (service key). A body `user_id` is never proof of
/// anything: with a user assertion it must repeat the assertion's user.
fn joining_user(caller: Caller, body: &JoinRequest) -> ApiResult<UserId> {
    let named = body
        .user_id
        .as_deref()
        .map(UserId::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    match (caller, named) {
        (Caller::User(u), None) => Ok(u),
        (Caller::User(u), Some(n)) if n == u => Ok(u),
        (Caller::User(_), Some(_)) => Err(ApiError::Forbidden(
            "user_id differs from the user of the assertion".into(),
        )),
        (Caller::Service, Some(n)) => Ok(n),
        (Caller::Service, None) => Err(ApiError::InvalidRequest(
            "user_id is required when joining with the service key".into(),
        )),
    }
}

/// A queue entry as the client sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueEntry {
    /// Signed queue token (join only); send it as `Authorization: Bearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub event_id: String,
    pub user_id: String,
    /// `prequeue`, `waiting` or `admitted`.
    pub status: &'static str,
    /// 1 at the head of the queue; null in the pre-queue and once admitted.
    pub position: Option<u64>,
    /// Estimated seconds until admission (null while admission is paused
    /// and in the pre-queue).
    pub eta_seconds: Option<u64>,
    /// 90 % of entries at this place are admitted within this many seconds.
    pub eta_p90_seconds: Option<u64>,
    /// When to poll next.
    pub poll_after_ms: u64,
    /// End of the shopping window (RFC 3339) once admitted.
    pub admitted_until: Option<String>,
    /// `final` (no free seat, none held: stop waiting), `for_now` (only
    /// held seats may come back) or null.
    #[schema(value_type = Option<String>)]
    pub sold_out: Option<&'static str>,
}

pub fn entry(claims: &QueueClaims, view: &EntryView, token: Option<String>) -> QueueEntry {
    let (status, position, admitted_until) = match view.state {
        EntryState::Prequeue => ("prequeue", None, None),
        EntryState::Waiting { position } => ("waiting", Some(position), None),
        EntryState::Admitted { until_ms } => {
            ("admitted", None, crate::time::rfc3339_from_ms(until_ms))
        }
    };
    QueueEntry {
        token,
        event_id: claims.event.to_string(),
        user_id: claims.user.to_string(),
        status,
        position,
        eta_seconds: view.pacing.eta_seconds,
        eta_p90_seconds: view.pacing.eta_p90_seconds,
        poll_after_ms: view.pacing.poll_after_ms,
        admitted_until,
        sold_out: view.sold_out.map(queue::SoldOut::as_str),
    }
}

/// Parses an event id from the path; a malformed one cannot exist.
pub fn event_in_path(raw: &str) -> ApiResult<EventId> {
    EventId::parse(raw).map_err(|_| ApiError::NotFound("no such event".into()))
}

#[utoipa::path(post, path = "/v1/events/{event_id}/queue", tag = "queue",
    security(("user_assertion" = []), ("service_key" = [])),
    params(("event_id" = String, Path, description = "Event id")),
    request_body = JoinRequest,
    responses(
        (status = 201, description = "New entry", body = QueueEntry),
        (status = 200, description = "This user's live entry: same place, fresh token", body = QueueEntry),
        (status = 400, description = "invalid_request: malformed body", body = super::openapi::Problem),
        (status = 401, description = "unauthorized: no valid user assertion or service key", body = super::openapi::Problem),
        (status = 403, description = "forbidden: user_id differs from the assertion's user; challenge_failed: missing, wrong, reused or expired proof of work", body = super::openapi::Problem),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 409, description = "sale_not_open (with opens_at), sale_closed, or sold_out (final)", body = super::openapi::Problem),
        (status = 422, description = "invalid_request", body = super::openapi::Problem),
    ))]
pub async fn join(
    State(state): State<AppState>,
    caller: Caller,
    Path(event_id): Path<String>,
    OptionalJson(body): OptionalJson<JoinRequest>,
) -> ApiResult<impl IntoResponse> {
    let user = joining_user(caller, &body)?;
    let event = event_in_path(&event_id)?;
    let input = super::fair::join_extras(&state, &event, &user, body.challenge.as_ref()).await?;
    let joined = state
        .joins
        .ask(
            &event,
            queue::coalesce::JoinRequest {
                user: user.clone(),
                input,
            },
        )
        .await?;
    let issued_at = chrono::Utc::now().timestamp();
    let claims = QueueClaims {
        event,
        user,
        entry: joined.view.entry,
        issued_at,
        expires_at: issued_at
            + i64::try_from(state.config.queue_token_ttl.as_secs()).unwrap_or(i64::MAX / 2),
    };
    let token = state.tokens.sign(&claims);
    let status = if joined.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    metrics::counter!("boxoffice_queue_joins_total", "outcome" => if joined.created { "created" } else { "existing" }).increment(1);
    Ok((
        status,
        axum::Json(entry(&claims, &joined.view, Some(token))),
    ))
}

#[utoipa::path(get, path = "/v1/queue/status", tag = "queue",
    security(("queue_token" = [])),
    responses(
        (status = 200, description = "The entry; each call is a heartbeat", body = QueueEntry),
        (status = 401, description = "unauthorized", body = super::openapi::Problem),
        (status = 404, description = "not_found: the event is gone", body = super::openapi::Problem),
        (status = 410, description = "queue_token_expired", body = super::openapi::Problem),
    ))]
pub async fn status(
    State(state): State<AppState>,
    QueueToken(claims): QueueToken,
) -> ApiResult<axum::Json<QueueEntry>> {
    let schedules = super::holds::schedules_of(&state, &claims.event).await?;
    let view = poll(&state, &claims, schedules).await?;
    Ok(axum::Json(entry(&claims, &view, None)))
}

/// The entry's state and its heartbeat, through this instance's
/// coalesced status calls.
pub(super) async fn poll(
    state: &AppState,
    claims: &QueueClaims,
    schedules: Arc<Vec<ScheduleId>>,
) -> Result<EntryView, QueueError> {
    let poll = queue::coalesce::StatusPoll {
        claims: claims.clone(),
        schedules,
    };
    state.status_polls.ask(&claims.event, poll).await
}

#[utoipa::path(delete, path = "/v1/queue", tag = "queue",
    security(("queue_token" = [])),
    responses(
        (status = 204, description = "Left; the place is freed"),
        (status = 401, description = "unauthorized", body = super::openapi::Problem),
        (status = 404, description = "not_found: the event is gone", body = super::openapi::Problem),
        (status = 410, description = "queue_token_expired", body = super::openapi::Problem),
    ))]
pub async fn leave(
    State(state): State<AppState>,
    QueueToken(claims): QueueToken,
) -> ApiResult<StatusCode> {
    if queue::leave(&state.redis, &claims).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::QueueTokenExpired)
    }
}
