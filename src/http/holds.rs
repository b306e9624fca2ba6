//! Seat maps and holds: `GET /v1/events/{e}/schedules`,
//! `GET /v1/events/{e}/schedules/{s}/seats`, `POST /v1/holds`,
//! `GET|DELETE /v1/holds/{hold_id}`.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    ApiError, ApiResult,
    auth::QueueToken,
    extract::{ApiJson, OptionalIdempotencyKey, ServiceKey},
    queue::event_in_path,
};
use crate::{
    holds::{self, Hold, HoldError, HoldRequest, MAX_SEATS_PER_REQUEST},
    ids::{EventId, HoldId, ScheduleId, SeatNo},
    payments::{self, Refusal},
    state::AppState,
    store::{Dependency, StoreError},
    token::QueueClaims,
};

impl From<HoldError> for ApiError {
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::NoSchedule => ApiError::NotFound("no such schedule".into()),
            HoldError::Invalid(m) => ApiError::InvalidRequest(m),
            HoldError::Limit {
                max_per_user,
                held,
                bought,
                requested,
            } => ApiError::HoldLimitExceeded {
                max_per_user,
                held,
                bought,
                requested,
            },
            HoldError::Unavailable(seats) => ApiError::SeatsUnavailable { seats },
            HoldError::Gone => ApiError::HoldExpired,
            HoldError::Forbidden => ApiError::Forbidden("this hold belongs to another user".into()),
            HoldError::Paying => ApiError::HoldBeingPaid,
            HoldError::NotAdmitted { position } => ApiError::NotAdmitted { position },
            HoldError::QueueGone => ApiError::QueueTokenExpired,
            HoldError::Restoring => ApiError::Dependency(StoreError::Unavailable {
                dep: Dependency::Redis,
                reason: "the event is being restored from PostgreSQL".into(),
            }),
            HoldError::Cancelled => ApiError::ScheduleCancelled,
            HoldError::KeyReused => ApiError::IdempotencyKeyReused,
            // Only a call whose caller had already answered 503 meets this.
            HoldError::Barred => ApiError::Dependency(StoreError::Unavailable {
                dep: Dependency::Redis,
                reason: "this payment attempt was given up after Redis did not answer it".into(),
            }),
            HoldError::Store(e) => ApiError::Dependency(e),
        }
    }
}

/// The schedule ids of an event (cached per instance, see
/// [`crate::catalog::cache::ScheduleIds`]).
pub async fn schedules_of(state: &AppState, event: &EventId) -> ApiResult<Arc<Vec<ScheduleId>>> {
    state
        .schedule_ids
        .get_or_load(&state.redis, event)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such event".into()))
}

fn same_event(claims: &QueueClaims, event: &EventId) -> ApiResult<()> {
    if &claims.event == event {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "the queue token is for another event".into(),
        ))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleAvailability {
    pub schedule_id: String,
    pub starts_at: String,
    #[schema(example = "50000")]
    pub price: String,
    pub seats_total: u32,
    pub seats_available: u32,
}

#[utoipa::path(get, path = "/v1/events/{event_id}/schedules", tag = "seats",
    security(("queue_token" = [])),
    params(("event_id" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "Schedules with live availability", body = super::schemas::ScheduleList),
        (status = 403, description = "not_admitted or forbidden: the token is for another event", body = super::openapi::Problem),
        (status = 404, description = "not_found: no such event", body = super::openapi::Problem),
        (status = 410, description = "queue_token_expired", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable (with Retry-After): Redis or the event's shard is down, or the event is being restored", body = super::openapi::Problem),
    ))]
pub async fn list_schedules(
    State(state): State<AppState>,
    QueueToken(claims): QueueToken,
    Path(event_id): Path<String>,
) -> ApiResult<axum::Json<super::schemas::ScheduleList>> {
    let event = event_in_path(&event_id)?;
    same_event(&claims, &event)?;
    let ids = schedules_of(&state, &event).await?;
    // The script checks that the buyer is admitted: one round trip.
    let figures = holds::overview(&state.redis, &event, &ids, Some(&claims)).await?;
    let schedules: Vec<ScheduleAvailability> = ids
        .iter()
        .zip(figures)
        .filter(|(_, f)| !f.missing)
        .map(|(id, f)| ScheduleAvailability {
            schedule_id: id.to_string(),
            starts_at: f.starts_at,
            price: f.price,
            seats_total: f.seats_total,
            seats_available: f.available,
        })
        .collect();
    Ok(axum::Json(super::schemas::ScheduleList { schedules }))
}

/// One seat of a seat map (the schema; [`seat_map_text`] writes it).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Seat<'a> {
    pub seat_no: u32,
    pub row: &'a str,
    /// `available`, `held` or `sold`.
    pub status: &'static str,
}

/// Every seat of the schedule with its status, and how many are available.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeatMapBody<'a> {
    seats: Vec<Seat<'a>>,
    available: u32,
}

/// A seat map as the JSON text serde would make of [`SeatMapBody`], written
/// directly: a schedule of 5,000 seats is 5,000 objects, the largest
/// answer of a sale and one in two buyers asks for it. Each row's label
/// is escaped once, not once per seat, and the buffer is sized up front
/// (growing it by doubling to 230 KB faulted in fresh memory each time).
/// A test checks the text is serde's, byte for byte.
fn seat_map_text(map: &holds::SeatMap) -> Vec<u8> {
    const SEAT: &[u8] = br#"{"seat_no":"#;
    let per_row = map.row_size.max(1);
    // 56 bytes hold the longest seat: 6 digits, a 6-letter row, "available".
    let mut out = Vec::with_capacity(56 * map.seats_total as usize + 32);
    out.extend_from_slice(br#"{"seats":["#);
    let mut number = itoa::Buffer::new();
    let mut row = Vec::new();
    for n in 1..=map.seats_total {
        if n > 1 {
            out.push(b',');
        }
        if (n - 1) % per_row == 0 {
            // `,"row":"<label>","status":"`, for the seats of this row.
            row.clear();
            row.extend_from_slice(br#","row":"#);
            serde_json::to_writer(&mut row, &holds::row_label(n, per_row))
                .expect("a string serializes");
            row.extend_from_slice(br#","status":""#);
        }
        out.extend_from_slice(SEAT);
        out.extend_from_slice(number.format(n).as_bytes());
        out.extend_from_slice(&row);
        out.extend_from_slice(map.status(n).as_bytes());
        out.extend_from_slice(br#""}"#);
    }
    out.extend_from_slice(br#"],"available":"#);
    out.extend_from_slice(number.format(map.available).as_bytes());
    out.push(b'}');
    out
}

async fn seat_map_json(
    state: &AppState,
    event: &EventId,
    schedule_raw: &str,
    buyer: Option<&QueueClaims>,
) -> ApiResult<Response> {
    let schedule = ScheduleId::parse(schedule_raw)
        .map_err(|_| ApiError::NotFound("no such schedule".into()))?;
    let map = holds::seat_map(&state.redis, event, &schedule, buyer).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        seat_map_text(&map),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/events/{event_id}/schedules/{schedule_id}/seats", tag = "seats",
    security(("queue_token" = [])),
    params(("event_id" = String, Path, description = "Event id"), ("schedule_id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "Every seat with its status", body = SeatMapBody),
        (status = 404, description = "not_found: no such event or schedule", body = super::openapi::Problem),
        (status = 403, description = "not_admitted, or forbidden: the token is for another event", body = super::openapi::Problem),
        (status = 410, description = "queue_token_expired", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable (with Retry-After): Redis or the event's shard is down, or the event is being restored", body = super::openapi::Problem),
    ))]
pub async fn seats(
    State(state): State<AppState>,
    QueueToken(claims): QueueToken,
    Path((event_id, schedule_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let event = event_in_path(&event_id)?;
    same_event(&claims, &event)?;
    // The script checks that the buyer is admitted: one round trip.
    seat_map_json(&state, &event, &schedule_id, Some(&claims)).await
}

#[utoipa::path(get, path = "/v1/admin/events/{event_id}/schedules/{schedule_id}/seats", tag = "admin",
    security(("service_key" = [])),
    params(("event_id" = String, Path, description = "Event id"), ("schedule_id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "Every seat with its status (for the dashboard)", body = SeatMapBody),
        (status = 404, description = "not_found: no such event or schedule", body = super::openapi::Problem),
    ))]
pub async fn admin_seats(
    State(state): State<AppState>,
    _: ServiceKey,
    Path((event_id, schedule_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let event = event_in_path(&event_id)?;
    seat_map_json(&state, &event, &schedule_id, None).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    pub schedule_id: String,
    /// Exact seats (1..N, distinct, at most 100). Give this or `count`.
    #[schema(value_type = Option<Vec<u32>>)]
    pub seats: Option<Vec<Value>>,
    /// Best available: this many seats, adjacent in one row when possible.
    #[schema(value_type = Option<u32>)]
    pub count: Option<Value>,
}

impl HoldBody {
    fn parse(&self) -> ApiResult<(ScheduleId, HoldRequest)> {
        let bad = |m: &str| ApiError::InvalidRequest(m.to_owned());
        let schedule = ScheduleId::parse(&self.schedule_id)
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        let req = match (&self.seats, &self.count) {
            (Some(_), Some(_)) => return Err(bad("give either seats or count, not both")),
            (None, None) => return Err(bad("give seats (a list of seat numbers) or count")),
            (Some(list), None) => {
                // Bounded before anything is converted.
                if list.len() > MAX_SEATS_PER_REQUEST {
                    return Err(bad("at most 100 seats per hold"));
                }
                let seats = list
                    .iter()
                    .map(|v| {
                        v.as_i64()
                            .filter(|_| v.is_i64() || v.is_u64())
                            .and_then(|n| SeatNo::new(n).ok())
                            .ok_or_else(|| bad("seats must be positive integers"))
                    })
                    .collect::<ApiResult<Vec<_>>>()?;
                HoldRequest::seats(seats).map_err(ApiError::InvalidRequest)?
            }
            (None, Some(v)) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .and_then(|n| HoldRequest::count(n).ok())
                .ok_or_else(|| bad("count must be an integer from 1 to 100"))?,
        };
        Ok((schedule, req))
    }
}

/// A hold as the client sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HoldResponse {
    #[schema(example = "demo-concert.day-1.17")]
    pub hold_id: String,
    pub event_id: String,
    pub schedule_id: String,
    pub seats: Vec<u32>,
    pub adjacent: bool,
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "100000")]
    pub amount: rust_decimal::Decimal,
    pub expires_at: Option<String>,
    /// `held` or `paying`.
    pub status: String,
}

impl From<Hold> for HoldResponse {
    fn from(h: Hold) -> Self {
        Self {
            hold_id: h.id.to_string(),
            event_id: h.id.event.to_string(),
            schedule_id: h.id.schedule.to_string(),
            seats: h.seats,
            adjacent: h.adjacent,
            amount: h.amount,
            expires_at: crate::time::rfc3339_from_ms(h.expires_at_ms),
            status: h.state.to_string(),
        }
    }
}

#[utoipa::path(post, path = "/v1/holds", tag = "holds",
    security(("queue_token" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Scoped to the buyer: while the hold it made lasts, a retry with the same key and body answers that hold again (with Idempotent-Replayed: true) and holds nothing more; a refused request made nothing and is decided anew")),
    request_body = HoldBody,
    responses(
        (status = 201, description = "All requested seats are held (or, with Idempotent-Replayed: true, the hold this Idempotency-Key made)", body = HoldResponse),
        (status = 409, description = "seats_unavailable (with unavailable_seats) or hold_limit_exceeded", body = super::openapi::Problem),
        (status = 404, description = "not_found: unknown schedule", body = super::openapi::Problem),
        (status = 422, description = "invalid_request, or idempotency_key_reused: the key made a hold for another request", body = super::openapi::Problem),
        (status = 403, description = "not_admitted", body = super::openapi::Problem),
        (status = 410, description = "queue_token_expired", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable (with Retry-After): Redis or the event's shard is down, or the event is being restored from PostgreSQL", body = super::openapi::Problem),
    ))]
pub async fn place(
    State(state): State<AppState>,
    QueueToken(buyer): QueueToken,
    OptionalIdempotencyKey(key): OptionalIdempotencyKey,
    ApiJson(body): ApiJson<HoldBody>,
) -> ApiResult<Response> {
    let (schedule, request) = body.parse()?;
    let event = buyer.event.clone();
    let ask = holds::HoldAsk {
        buyer,
        schedule,
        request,
        key,
    };
    let placed = state.holds.ask(&event, ask).await?;
    let mut resp = (
        StatusCode::CREATED,
        axum::Json(HoldResponse::from(placed.hold)),
    )
        .into_response();
    if placed.replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

fn hold_in_path(raw: &str, token: &QueueToken) -> ApiResult<HoldId> {
    let id = HoldId::parse(raw).map_err(|_| ApiError::NotFound("no such hold".into()))?;
    if id.event != token.0.event {
        return Err(ApiError::Forbidden(
            "this hold belongs to another event".into(),
        ));
    }
    Ok(id)
}

#[utoipa::path(get, path = "/v1/holds/{hold_id}", tag = "holds",
    security(("queue_token" = [])),
    params(("hold_id" = String, Path, description = "Hold id")),
    responses(
        (status = 200, description = "The live hold", body = HoldResponse),
        (status = 403, description = "forbidden: another user's hold, or a hold of another event", body = super::openapi::Problem),
        (status = 404, description = "not_found: no such hold", body = super::openapi::Problem),
        (status = 410, description = "hold_expired (the caller's own hold is gone) or queue_token_expired", body = super::openapi::Problem),
    ))]
pub async fn get(
    State(state): State<AppState>,
    token: QueueToken,
    Path(hold_id): Path<String>,
) -> ApiResult<axum::Json<HoldResponse>> {
    let id = hold_in_path(&hold_id, &token)?;
    match holds::get(&state.redis, &id, &token.0).await {
        Err(HoldError::Gone) => Err(gone(&state, &token.0, &id).await),
        hold => Ok(axum::Json(hold?.into())),
    }
}

/// A hold gone from Redis, answered as the payment route answers it
/// (`payments::why_gone`): someone else's paid hold is `403`, a hold never
/// minted `404`, and the caller's own hold, paid or expired or released,
/// `410 hold_expired` (these routes read or release a live hold).
async fn gone(state: &AppState, buyer: &QueueClaims, id: &HoldId) -> ApiError {
    match payments::why_gone(&state.pg, &state.redis, &buyer.user, id).await {
        Ok(Refusal::NotYours) => HoldError::Forbidden.into(),
        Ok(Refusal::NoSuchHold) => ApiError::NotFound("no such hold".into()),
        Ok(_) => ApiError::HoldExpired,
        Err(e) => ApiError::Dependency(e),
    }
}

#[utoipa::path(delete, path = "/v1/holds/{hold_id}", tag = "holds",
    security(("queue_token" = [])),
    params(("hold_id" = String, Path, description = "Hold id")),
    responses(
        (status = 204, description = "Released; the seats are free at once"),
        (status = 403, description = "forbidden: another user's hold, or a hold of another event", body = super::openapi::Problem),
        (status = 404, description = "not_found: no such hold", body = super::openapi::Problem),
        (status = 409, description = "request_in_progress: the hold is being paid", body = super::openapi::Problem),
        (status = 410, description = "hold_expired (the caller's own hold is gone) or queue_token_expired", body = super::openapi::Problem),
    ))]
pub async fn release(
    State(state): State<AppState>,
    token: QueueToken,
    Path(hold_id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = hold_in_path(&hold_id, &token)?;
    match holds::release(&state.redis, &id, &token.0).await {
        Err(HoldError::Gone) => Err(gone(&state, &token.0, &id).await),
        released => released.map(|_| StatusCode::NO_CONTENT).map_err(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde makes of the schema's structs for `map`.
    fn serde_text(map: &holds::SeatMap) -> Vec<u8> {
        let per_row = map.row_size.max(1);
        let rows: Vec<String> = (0..map.seats_total.div_ceil(per_row))
            .map(|r| holds::row_label(r * per_row + 1, per_row))
            .collect();
        let body = SeatMapBody {
            seats: (1..=map.seats_total)
                .map(|n| Seat {
                    seat_no: n,
                    row: &rows[((n - 1) / per_row) as usize],
                    status: map.status(n),
                })
                .collect(),
            available: map.available,
        };
        serde_json::to_vec(&body).unwrap()
    }

    #[test]
    fn the_seat_map_text_is_what_serde_makes_of_the_schema() {
        // (seats, row size, bitmap bytes): rows of one seat past "Z" and
        // "ZZ", a row size of 0 (read as 1), a last row cut short, empty
        // and short bitmaps (seats past their end are available).
        let cases: [(u32, u32, usize); 7] = [
            (0, 10, 0),
            (1, 1, 1),
            (7, 3, 1),
            (26 * 27 + 5, 1, 100),
            (5_000, 50, 626),
            (100, 0, 5),
            (1_001, 40, 126),
        ];
        let mut x: u32 = 0x9e37_79b9;
        let mut byte = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        };
        for (total, row_size, len) in cases {
            let taken: Vec<u8> = (0..len).map(|_| byte()).collect();
            let sold: Vec<u8> = (0..len / 2).map(|_| byte() & byte()).collect();
            let map = holds::SeatMap::from_parts(total, row_size, total / 3, &taken, &sold);
            let text = seat_map_text(&map);
            assert_eq!(
                String::from_utf8(text.clone()).unwrap(),
                String::from_utf8(serde_text(&map)).unwrap(),
                "{total} seats, rows of {row_size}"
            );
            let v: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(v["seats"].as_array().unwrap().len(), total as usize);
        }
        // Each status, where the bitmaps put it.
        let map = holds::SeatMap::from_parts(16, 4, 0, &[0b0110_0000, 0], &[0b0100_0000]);
        let v: Value = serde_json::from_slice(&seat_map_text(&map)).unwrap();
        let status: Vec<&str> = v["seats"].as_array().unwrap()[..3]
            .iter()
            .map(|s| s["status"].as_str().unwrap())
            .collect();
        assert_eq!(status, ["sold", "held", "available"]);
    }
}
