//! `POST /v1/payments` and payment reads; admin sales, reconcile, refunds
//! and cancellations. The payment and refund flows run in
//! [`crate::payments`]; here their results become answers.

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult,
    auth::{Caller, PaymentReader, QueueToken},
    extract::{ApiJson, OptionalIdempotencyKey, ServiceKey},
    queue::event_in_path,
    to_the_end::to_the_end,
    wallet::{answered, saved, user_in_path},
};
use crate::{
    idempotency::Answered,
    ids::{HoldId, PaymentId, ScheduleId},
    money::format_amount,
    payments::{self, PayError, Payments, RefundError, Refusal, reconcile, refund},
    queue,
    state::AppState,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    #[schema(example = "demo-concert.day-1.17")]
    pub hold_id: String,
}

fn outcome(label: &'static str) {
    metrics::counter!("boxoffice_payments_total", "outcome" => label).increment(1);
}

/// The payment flow's parts of the running service.
fn payments(state: &AppState) -> Payments<'_> {
    Payments {
        redis: &state.redis,
        pg: &state.pg,
        confirmations: &state.confirmations,
        paying_timeout: state.config.paying_timeout,
        failpoint: state.config.failpoint.as_deref(),
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NoSuchHold => ApiError::NotFound("no such hold".into()),
            Refusal::HoldExpired => ApiError::HoldExpired,
            Refusal::NotYours => ApiError::Forbidden("this hold belongs to another user".into()),
            Refusal::AlreadyPaid { payment_id } => ApiError::HoldAlreadyPaid {
                payment_id: payment_id.to_string(),
            },
            Refusal::InsufficientFunds { balance, amount } => ApiError::InsufficientFunds {
                balance: format_amount(balance),
                amount: format_amount(amount),
            },
            Refusal::Cancelled => ApiError::ScheduleCancelled,
            Refusal::SeatsUnavailable { seats } => ApiError::SeatsUnavailable { seats },
        }
    }
}

impl From<PayError> for ApiError {
    fn from(e: PayError) -> Self {
        match e {
            PayError::Refused(r) => r.into(),
            PayError::Hold(e) => e.into(),
            PayError::Key(e) => e.into(),
            PayError::Store(e) | PayError::Unknown(e) => ApiError::Dependency(e),
        }
    }
}

impl From<refund::Refusal> for ApiError {
    fn from(r: refund::Refusal) -> Self {
        match r {
            refund::Refusal::AlreadyRefunded { refund_id } => ApiError::AlreadyRefunded {
                refund_id: refund_id.to_string(),
            },
        }
    }
}

impl From<RefundError> for ApiError {
    fn from(e: RefundError) -> Self {
        match e {
            RefundError::Refused(r) => r.into(),
            RefundError::NoSuchPayment => ApiError::NotFound("no such payment".into()),
            RefundError::Key(e) => e.into(),
            RefundError::Store(e) => ApiError::Dependency(e),
        }
    }
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments",
    security(("queue_token" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    request_body = PayBody,
    responses(
        (status = 201, description = "Paid: seats sold, queue token gone", body = payments::Payment),
        (status = 402, description = "insufficient_funds (the hold stays until its deadline)", body = super::openapi::Problem),
        (status = 403, description = "forbidden (someone else's hold) or not_admitted", body = super::openapi::Problem),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 409, description = "hold_already_paid (with payment_id) or request_in_progress", body = super::openapi::Problem),
        (status = 410, description = "hold_expired or queue_token_expired", body = super::openapi::Problem),
        (status = 422, description = "invalid_request or idempotency_key_reused", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable (with Retry-After): a store is down, or the event is being restored from PostgreSQL", body = super::openapi::Problem),
    ))]
pub async fn pay(
    State(state): State<AppState>,
    QueueToken(claims): QueueToken,
    OptionalIdempotencyKey(key): OptionalIdempotencyKey,
    ApiJson(body): ApiJson<PayBody>,
) -> Response {
    let hold = match HoldId::parse(&body.hold_id) {
        Ok(h) if h.event == claims.event => h,
        Ok(_) => return ApiError::NotFound("no such hold for this event".into()).into_response(),
        Err(e) => return ApiError::InvalidRequest(e.to_string()).into_response(),
    };
    to_the_end(state.effects.clone(), async move {
        let paid = payments(&state)
            .pay(&claims, &hold, key.as_ref(), |r| saved(r.clone().into()))
            .await;
        match paid {
            Ok(answer) => {
                if let Answered::Fresh(_) = answer {
                    outcome("paid");
                }
                answered(201, answer)
            }
            Err(e) => {
                let ran = !matches!(e, PayError::Key(_));
                let e = ApiError::from(e);
                if ran {
                    outcome(e.code());
                }
                e.into_response()
            }
        }
    })
    .await
}

#[utoipa::path(get, path = "/v1/payments/{payment_id}", tag = "payments",
    security(("user_assertion" = []), ("queue_token" = []), ("service_key" = [])),
    params(("payment_id" = String, Path, description = "Payment id")),
    responses((status = 200, description = "The payment", body = payments::Payment),
              (status = 401, description = "unauthorized", body = super::openapi::Problem),
              (status = 403, description = "forbidden: another user's payment", body = super::openapi::Problem),
              (status = 404, description = "not_found", body = super::openapi::Problem),
              (status = 410, description = "queue_token_expired", body = super::openapi::Problem),
              (status = 503, description = "dependency_unavailable", body = super::openapi::Problem)))]
pub async fn get_payment(
    State(state): State<AppState>,
    reader: PaymentReader,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<payments::Payment>> {
    let id = PaymentId::parse(&id).map_err(|_| ApiError::NotFound("no such payment".into()))?;
    let (owner, payment) = payments::get(&state.pg, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such payment".into()))?;
    let allowed = match &reader {
        PaymentReader::Service => true,
        PaymentReader::User(u) => u.as_str() == owner,
        PaymentReader::Queue(t) => {
            // A queue token speaks only while its entry lives, on this
            // route as on every other.
            if !queue::entry_live(&state.redis, t).await? {
                return Err(ApiError::QueueTokenExpired);
            }
            t.user.as_str() == owner && t.event.as_str() == payment.event_id
        }
    };
    if !allowed {
        return Err(ApiError::Forbidden(
            "this payment belongs to another user".into(),
        ));
    }
    Ok(axum::Json(payment))
}

#[utoipa::path(get, path = "/v1/users/{user_id}/payments", tag = "payments",
    security(("user_assertion" = []), ("service_key" = [])),
    params(("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user's payments, newest first", body = super::schemas::UserPayments),
        (status = 403, description = "forbidden: a user assertion of another user", body = super::openapi::Problem),
        (status = 422, description = "invalid_request: malformed user id", body = super::openapi::Problem),
    ))]
pub async fn user_payments(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<super::schemas::UserPayments>> {
    let user = user_in_path(&user)?;
    caller.may_act_for(&user)?;
    Ok(axum::Json(super::schemas::UserPayments {
        payments: payments::of_user(&state.pg, &user).await?,
    }))
}

#[utoipa::path(get, path = "/v1/admin/events/{event_id}/sales", tag = "admin",
    security(("service_key" = [])),
    params(("event_id" = String, Path, description = "Event id")),
    responses((status = 200, description = "Seats sold and refunded, revenue and payments per schedule and per hour, from the hourly rollup plus the payments not rolled up yet (PostgreSQL)", body = super::schemas::SalesReport),
              (status = 401, description = "unauthorized", body = super::openapi::Problem),
              (status = 404, description = "not_found", body = super::openapi::Problem),
              (status = 503, description = "dependency_unavailable", body = super::openapi::Problem)))]
pub async fn sales(
    State(state): State<AppState>,
    _: ServiceKey,
    Path(event_id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let event = event_in_path(&event_id)?;
    let (per_schedule, per_hour) = payments::sales::report(&state.pg, &event).await?;
    if per_schedule.is_empty() {
        return Err(ApiError::NotFound(format!("no event {event}")));
    }
    Ok(axum::Json(json!({
        "event_id": event,
        "currency": state.config.currency.code(),
        "schedules": per_schedule,
        "hourly": per_hour,
    })))
}

#[utoipa::path(post, path = "/v1/admin/reconcile", tag = "admin",
    security(("service_key" = [])),
    responses((status = 200, description = "What was restored from PostgreSQL", body = reconcile::Report)))]
pub async fn reconcile_now(
    State(state): State<AppState>,
    _: ServiceKey,
) -> ApiResult<axum::Json<reconcile::Report>> {
    let report = reconcile::rebuild(&state.reconciler()).await?;
    tracing::info!(?report, "reconcile on demand");
    Ok(axum::Json(report))
}

#[utoipa::path(post, path = "/v1/admin/payments/{payment_id}/refund", tag = "admin",
    security(("service_key" = [])),
    params(("payment_id" = String, Path, description = "Payment id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    responses(
        (status = 201, description = "Refunded: the whole amount back to the wallet, the seats back on sale", body = refund::Refund),
        (status = 401, description = "unauthorized", body = super::openapi::Problem),
        (status = 404, description = "not_found: no such payment", body = super::openapi::Problem),
        (status = 409, description = "already_refunded (with refund_id) or request_in_progress", body = super::openapi::Problem),
        (status = 422, description = "idempotency_key_reused or invalid_request", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable", body = super::openapi::Problem),
    ))]
pub async fn refund_payment(
    State(state): State<AppState>,
    _: ServiceKey,
    Path(id): Path<String>,
    OptionalIdempotencyKey(key): OptionalIdempotencyKey,
) -> Response {
    let Ok(payment_id) = PaymentId::parse(&id) else {
        return ApiError::NotFound("no such payment".into()).into_response();
    };
    to_the_end(state.effects.clone(), async move {
        match payments(&state)
            .refund(payment_id, key.as_ref(), |r| saved(r.clone().into()))
            .await
        {
            Ok(answer) => answered(201, answer),
            Err(e) => ApiError::from(e).into_response(),
        }
    })
    .await
}

#[utoipa::path(post, path = "/v1/admin/events/{event_id}/schedules/{schedule_id}/cancel", tag = "admin",
    security(("service_key" = [])),
    params(("event_id" = String, Path, description = "Event id"), ("schedule_id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "Sales stopped and every payment refunded (counts of this call)", body = refund::Cancellation),
        (status = 401, description = "unauthorized", body = super::openapi::Problem),
        (status = 404, description = "not_found", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable: call again to finish", body = super::openapi::Problem),
    ))]
pub async fn cancel_schedule(
    State(state): State<AppState>,
    _: ServiceKey,
    Path((event_id, schedule_id)): Path<(String, String)>,
) -> Response {
    let no_schedule = || ApiError::NotFound("no such schedule".into()).into_response();
    let Ok(event) = event_in_path(&event_id) else {
        return ApiError::NotFound("no such event".into()).into_response();
    };
    let Ok(schedule) = ScheduleId::parse(&schedule_id) else {
        return no_schedule();
    };
    // Its refunds move money: they run to their end, as a refund does.
    to_the_end(state.effects.clone(), async move {
        match payments(&state).cancel_schedule(&event, &schedule).await {
            Ok(Some(cancellation)) => axum::Json(cancellation).into_response(),
            Ok(None) => no_schedule(),
            Err(e) => ApiError::from(e).into_response(),
        }
    })
    .await
}
