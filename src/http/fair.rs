//! Fair start over HTTP: the draw's publication, proof-of-work challenges,
//! the admin entry list and `PATCH /v1/admin/events/{event_id}`.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult,
    extract::{ApiJson, ServiceKey},
    queue::event_in_path,
};
use crate::{
    catalog::{self, request::EventPatch},
    fair::{
        self, DRAW_RULE,
        challenge::{ChallengeError, ChallengeSigner},
    },
    ids::{EventId, UserId},
    queue::{JoinError, JoinInput, JoinRefused},
    state::AppState,
};

/// A solved challenge, sent with a join.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeAnswer {
    /// The challenge as `GET /v1/events/{event_id}/challenge` gave it.
    pub challenge: String,
    /// Any string (≤ 64 bytes) such that sha256(challenge ‖ nonce) has
    /// `difficulty_bits` leading zero bits.
    pub nonce: String,
}

fn ms_to_time(ms: i64) -> Option<String> {
    (ms > 0).then(|| crate::time::rfc3339_from_ms(ms)).flatten()
}

impl From<JoinError> for ApiError {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::Queue(q) => q.into(),
            JoinError::Refused(JoinRefused::SaleNotOpen {
                opens_at_ms,
                prequeue_opens_at_ms,
            }) => ApiError::SaleNotOpen {
                opens_at: ms_to_time(opens_at_ms),
                prequeue_opens_at: ms_to_time(prequeue_opens_at_ms),
            },
            JoinError::Refused(JoinRefused::SaleClosed) => ApiError::SaleClosed,
            JoinError::Refused(JoinRefused::SoldOut) => ApiError::SoldOut,
            JoinError::Refused(JoinRefused::ChallengeFailed(why)) => ApiError::ChallengeFailed(
                match why {
                    "expired" => "the challenge has expired; fetch a new one",
                    "reused" => "the challenge was already used; fetch a new one",
                    _ => "this event needs a solved challenge from GET /v1/events/{event_id}/challenge",
                }
                .into(),
            ),
        }
    }
}

/// Checks a challenge answer (signature, event, hash: no store touched)
/// and computes the user's draw score from the cached seed.
///
/// # Errors
/// `challenge_failed` for a forged or wrong answer; unknown event; Redis.
pub async fn join_extras(
    state: &AppState,
    event: &EventId,
    user: &UserId,
    answer: Option<&ChallengeAnswer>,
) -> ApiResult<JoinInput> {
    let proof = match answer {
        None => None,
        Some(a) => Some(
            ChallengeSigner::new(state.config.token_secret.expose())
                .verify(event, &a.challenge, &a.nonce)
                .map_err(|e| {
                    ApiError::ChallengeFailed(match e {
                        ChallengeError::WrongSolution => {
                            "the nonce does not solve the challenge".into()
                        }
                        other => other.to_string(),
                    })
                })?,
        ),
    };
    let schedules = super::holds::schedules_of(state, event).await?;
    let seed = state
        .seeds
        .get(&state.redis, event)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such event".into()))?;
    Ok(JoinInput {
        schedules,
        draw_score: fair::draw_score(&seed, user),
        proof,
    })
}

/// The published draw of an event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Draw {
    pub event_id: String,
    /// Hex sha256 of the seed; published from the moment the pre-queue opens.
    pub commitment: Option<String>,
    pub prequeue_opens_at: Option<String>,
    pub opens_at: Option<String>,
    /// True once `opens_at` has passed (by the service's clock, Redis time).
    pub drawn: bool,
    /// Hex seed; null until the draw.
    pub seed: Option<String>,
    /// Entries in the pre-queue at the draw; null until the draw.
    pub entries: Option<u64>,
    /// How the order follows from the seed; null until the draw.
    pub rule: Option<&'static str>,
}

#[utoipa::path(get, path = "/v1/events/{event_id}/draw", tag = "queue",
    params(("event_id" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "The commitment (once the pre-queue opens) and, after opens_at, the seed, entry count and rule", body = Draw),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable", body = super::openapi::Problem),
    ))]
pub async fn draw(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
) -> ApiResult<axum::Json<Draw>> {
    let event = event_in_path(&event_id)?;
    let info = fair::info(&state.redis, &event)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such event".into()))?;
    let seed = fair::Seed::from_hex(&info.seed);
    let first_open = if info.pre_ms > 0 {
        info.pre_ms
    } else {
        info.open_ms
    };
    let published = first_open > 0 && info.now_ms >= first_open;
    let drawn = info.drawn();
    Ok(axum::Json(Draw {
        event_id: event.to_string(),
        commitment: seed
            .as_ref()
            .filter(|_| published)
            .map(fair::Seed::commitment),
        prequeue_opens_at: ms_to_time(info.pre_ms),
        opens_at: ms_to_time(info.open_ms),
        drawn,
        seed: seed.as_ref().filter(|_| drawn).map(fair::Seed::to_hex),
        entries: drawn.then_some(info.entries),
        rule: drawn.then_some(DRAW_RULE),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Page {
    /// Rank (0-based) of the first entry.
    pub offset: Option<u64>,
    /// Entries per page (1..10000, default 1000).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/admin/events/{event_id}/draw/entries", tag = "admin",
    security(("service_key" = [])),
    params(("event_id" = String, Path, description = "Event id"), Page),
    responses(
        (status = 200, description = "The draw's entries in draw order", body = super::schemas::DrawEntries),
        (status = 401, description = "unauthorized", body = super::openapi::Problem),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 422, description = "invalid_request", body = super::openapi::Problem),
    ))]
pub async fn draw_entries(
    State(state): State<AppState>,
    _: ServiceKey,
    Path(event_id): Path<String>,
    super::extract::ApiQuery(page): super::extract::ApiQuery<Page>,
) -> ApiResult<axum::Json<Value>> {
    let event = event_in_path(&event_id)?;
    let limit = page.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit must be between 1 and 10000".into(),
        ));
    }
    let offset = page.offset.unwrap_or(0);
    fair::info(&state.redis, &event)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such event".into()))?;
    let (total, users) = fair::entries(&state.redis, &event, offset, limit).await?;
    Ok(axum::Json(
        json!({ "event_id": event, "total": total, "offset": offset, "users": users }),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Challenge {
    /// Opaque, signed; send it back unchanged with the nonce.
    pub challenge: String,
    pub difficulty_bits: u8,
    pub expires_at: String,
}

#[utoipa::path(get, path = "/v1/events/{event_id}/challenge", tag = "queue",
    params(("event_id" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "A fresh challenge (stateless, signed)", body = Challenge),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable", body = super::openapi::Problem),
    ))]
pub async fn challenge(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
) -> ApiResult<axum::Json<Challenge>> {
    let event = event_in_path(&event_id)?;
    let info = fair::info(&state.redis, &event)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such event".into()))?;
    let (challenge, expires_ms) = ChallengeSigner::new(state.config.token_secret.expose()).issue(
        &event,
        info.pow_bits,
        info.now_ms,
    );
    Ok(axum::Json(Challenge {
        challenge,
        difficulty_bits: info.pow_bits,
        expires_at: ms_to_time(expires_ms).unwrap_or_default(),
    }))
}

#[utoipa::path(patch, path = "/v1/admin/events/{event_id}", tag = "admin",
    security(("service_key" = [])),
    params(("event_id" = String, Path, description = "Event id")),
    request_body = EventPatch,
    responses(
        (status = 200, description = "The event's new configuration", body = super::schemas::EventConfig),
        (status = 401, description = "unauthorized", body = super::openapi::Problem),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 422, description = "invalid_request: bad value, or a sale time that has passed", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable", body = super::openapi::Problem),
    ))]
pub async fn patch_event(
    State(state): State<AppState>,
    _: ServiceKey,
    Path(event_id): Path<String>,
    ApiJson(patch): ApiJson<EventPatch>,
) -> ApiResult<axum::Json<Value>> {
    let id = event_in_path(&event_id)?;
    let mut ev = catalog::pg::get(&state.pg, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))?;
    let now = chrono::DateTime::from_timestamp_millis(state.redis.now_ms().await?)
        .unwrap_or_else(chrono::Utc::now);
    ev.fair = patch
        .apply(&ev.fair, now)
        .map_err(|errs| ApiError::InvalidRequest(errs.join("; ")))?;
    catalog::pg::update_fair(&state.pg, &ev.event_id, &ev.fair).await?;
    catalog::load_into_redis(&state.redis, &ev).await?;
    tracing::info!(event_id = %ev.event_id, sale = ?ev.fair.sale, difficulty_bits = ev.fair.difficulty_bits, "fair-start settings changed");
    Ok(axum::Json(super::admin::event_config_json(&ev)))
}
