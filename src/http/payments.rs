//! `POST /v1/payments` and payment reads; admin sales and reconcile.

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    ApiError, ApiResult,
    auth::{Caller, PaymentReader, QueueToken},
    extract::{ApiJson, OptionalIdempotencyKey, ServiceKey},
    queue::event_in_path,
    wallet::{claim_or_answer, replay, user_in_path},
};
use crate::{
    holds::{self, HoldError},
    idempotency,
    ids::{HoldId, ScheduleId, UserId},
    money::format_amount,
    payments::{self, Recorded, reconcile, refund},
    state::AppState,
    token::QueueClaims,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    #[schema(example = "demo-concert.day-1.17")]
    pub hold_id: String,
}

/// Whether a failed attempt's answer is *the* answer to this payment (kept
/// for replay) or a passing condition (the claim is released so a retry
/// runs again).
fn is_final(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::InsufficientFunds { .. }
            | ApiError::HoldExpired
            | ApiError::HoldAlreadyPaid { .. }
            | ApiError::ScheduleCancelled
            | ApiError::SeatsUnavailable { .. }
            | ApiError::Forbidden(_)
            | ApiError::NotFound(_)
    )
}

fn outcome(label: &'static str) {
    metrics::counter!("boxoffice_payments_total", "outcome" => label).increment(1);
}

async fn pay_once(
    state: &AppState,
    claims: &QueueClaims,
    hold: &HoldId,
    key: Option<&crate::ids::IdempotencyKey>,
) -> Result<String, ApiError> {
    // Step 1: held -> paying; the script checks that the buyer is still
    // admitted, the owner and the deadline, atomically.
    let paying_ms = state.config.paying_timeout.as_millis() as u64;
    let paying = match holds::begin_payment(&state.redis, hold, claims, paying_ms).await {
        Ok(p) => p,
        Err(HoldError::Gone) => {
            // Gone from Redis: paid, expired, or never minted. Only the
            // caller's own paid hold names its payment.
            return Err(match payments::paid_hold(&state.pg, hold).await? {
                Some((id, owner)) if owner == claims.user.as_str() => ApiError::HoldAlreadyPaid {
                    payment_id: id.to_string(),
                },
                Some(_) => ApiError::Forbidden("this hold belongs to another user".into()),
                None if holds::ever_minted(&state.redis, hold).await? => ApiError::HoldExpired,
                None => ApiError::NotFound("no such hold".into()),
            });
        }
        Err(HoldError::NoSchedule) => return Err(ApiError::NotFound("no such hold".into())),
        Err(e) => return Err(e.into()),
    };
    #[cfg(feature = "failpoints")]
    failpoint(state, "crash_before_commit").await;
    // Step 2: the PostgreSQL transaction.
    let recorded = payments::record(&state.pg, &claims.user, hold, &paying.seats, key).await;
    let give_back = || async {
        if let Err(e) = holds::abort_payment(&state.redis, hold, &claims.user).await {
            tracing::warn!(%hold, error = %e, "could not return the hold to held; it frees at its paying deadline");
        }
    };
    match recorded {
        Ok(Recorded::Paid { payment, body }) => {
            #[cfg(feature = "failpoints")]
            failpoint(state, "crash_after_commit").await;
            confirm(state, claims, hold, &payment).await;
            Ok(body)
        }
        Ok(Recorded::InsufficientFunds { balance, amount }) => {
            give_back().await;
            Err(ApiError::InsufficientFunds {
                balance: format_amount(balance),
                amount: format_amount(amount),
            })
        }
        Ok(Recorded::AlreadyPaid { payment_id }) => Err(ApiError::HoldAlreadyPaid {
            payment_id: payment_id.to_string(),
        }),
        Ok(Recorded::Cancelled) => {
            give_back().await;
            Err(ApiError::ScheduleCancelled)
        }
        Ok(Recorded::SeatTaken) => {
            give_back().await;
            Err(ApiError::SeatsUnavailable {
                seats: paying.seats,
            })
        }
        // The statement may have committed: the hold stays *paying*; its
        // paying deadline frees it, or the reconciler finishes a payment
        // that did commit.
        Ok(Recorded::Unknown(e)) => Err(e.into()),
        Err(e) => {
            give_back().await;
            Err(e.into())
        }
    }
}

/// Test-only crash point, compiled in only with the `failpoints` feature
/// (the test build): when `BOXOFFICE_FAILPOINT` names it, the request stops
/// here for good and the process says so on stderr, so a test can kill the
/// process (SIGKILL) at exactly this point, skipping every clean-up a
/// process that really died would skip.
#[cfg(feature = "failpoints")]
async fn failpoint(state: &AppState, name: &str) {
    if state.config.failpoint.as_deref() == Some(name) {
        eprintln!("boxoffice: failpoint {name} reached");
        std::future::pending::<()>().await;
    }
}

/// Step 3: seats sold, hold dropped, queue entry ended. If Redis fails now
/// the money has moved and the seats are sold in PostgreSQL; the reconciler
/// finishes this step.
async fn confirm(
    state: &AppState,
    claims: &QueueClaims,
    hold: &HoldId,
    payment: &payments::Payment,
) {
    let sale = holds::Sale {
        event: &hold.event,
        schedule: &hold.schedule,
        hold_n: hold.n,
        user: claims.user.as_str(),
        payment_id: payment.payment_id,
        seats: &payment.seats,
        end_queue: true,
    };
    match holds::confirm_sale(&state.redis, sale).await {
        // The answer does not wait for this bookkeeping; if it is lost the
        // reconciler replays the (idempotent) step.
        Ok(_) => state.confirmations.push(payment.payment_id),
        Err(e) => {
            tracing::warn!(%hold, error = %e, "confirm_sale failed; the reconciler will finish it");
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
    // A replay must work even after the queue token is gone, so the key is
    // looked up before anything else is checked.
    if let Some(key) = &key {
        let fp = idempotency::fingerprint(&["payment", &hold.to_string()]);
        if let Err(answer) = claim_or_answer(&state, &claims.user, key, &fp).await {
            return answer;
        }
    }
    match pay_once(&state, &claims, &hold, key.as_ref()).await {
        Ok(body) => {
            outcome("paid");
            replay(201, body)
        }
        Err(e) => {
            outcome(e.code());
            if let Some(key) = &key {
                if is_final(&e) {
                    let stored = idempotency::complete_now(
                        &state.pg,
                        &claims.user,
                        key,
                        e.status().as_u16(),
                        &e.body().to_string(),
                    )
                    .await;
                    if stored.is_err() {
                        idempotency::release(&state.pg, &claims.user, key).await;
                    }
                } else {
                    idempotency::release(&state.pg, &claims.user, key).await;
                }
            }
            e.into_response()
        }
    }
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
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::NotFound("no such payment".into()))?;
    let (owner, payment) = payments::get(&state.pg, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such payment".into()))?;
    let allowed = match &reader {
        PaymentReader::Service => true,
        PaymentReader::User(u) => u.as_str() == owner,
        PaymentReader::Queue(t) => t.user.as_str() == owner && t.event.as_str() == payment.event_id,
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
    let Ok(payment_id) = id.parse::<Uuid>() else {
        return ApiError::NotFound("no such payment".into()).into_response();
    };
    // Keys are scoped to the payment's owner, as a charge's are to the
    // wallet's user.
    let owner = match payments::get(&state.pg, payment_id).await {
        Ok(Some((owner, _))) => owner,
        Ok(None) => return ApiError::NotFound("no such payment".into()).into_response(),
        Err(e) => return ApiError::Dependency(e).into_response(),
    };
    let owner = match UserId::parse(&owner) {
        Ok(u) => u,
        Err(e) => return ApiError::Internal(e.into()).into_response(),
    };
    if let Some(key) = &key {
        let fp = idempotency::fingerprint(&["refund", &payment_id.to_string()]);
        if let Err(answer) = claim_or_answer(&state, &owner, key, &fp).await {
            return answer;
        }
    }
    let outcome = refund::record(&state.pg, payment_id, key.as_ref()).await;
    let error = match outcome {
        Ok(refund::Refunded::Done { body, seats, .. }) => {
            metrics::counter!("boxoffice_refunds_total", "by" => "request").increment(1);
            // Test-only crash point (the `failpoints` feature): die between
            // the commit and the Redis step; the reconciler finishes it.
            #[cfg(feature = "failpoints")]
            if state.config.failpoint.as_deref() == Some("crash_after_refund_commit") {
                panic!("failpoint crash_after_refund_commit");
            }
            if let Err(e) = refund::release_seats(&state.redis, &state.pg, &seats).await {
                tracing::warn!(%payment_id, error = %e, "refund's Redis step failed; the reconciler will finish it");
            }
            return replay(201, body);
        }
        Ok(refund::Refunded::Already { refund_id }) => ApiError::AlreadyRefunded {
            refund_id: refund_id.to_string(),
        },
        Ok(refund::Refunded::NoSuchPayment) => ApiError::NotFound("no such payment".into()),
        Err(e) => ApiError::Dependency(e),
    };
    if let Some(key) = &key {
        if matches!(error, ApiError::AlreadyRefunded { .. }) {
            let stored = idempotency::complete_now(
                &state.pg,
                &owner,
                key,
                error.status().as_u16(),
                &error.body().to_string(),
            )
            .await;
            if stored.is_err() {
                idempotency::release(&state.pg, &owner, key).await;
            }
        } else {
            idempotency::release(&state.pg, &owner, key).await;
        }
    }
    error.into_response()
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
) -> ApiResult<axum::Json<refund::Cancellation>> {
    let event = event_in_path(&event_id)?;
    let schedule = ScheduleId::parse(&schedule_id)
        .map_err(|_| ApiError::NotFound("no such schedule".into()))?;
    let cancelled_at = refund::mark_cancelled(&state.pg, &event, &schedule)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such schedule".into()))?;
    // Sales stop in Redis before the refunds start: no hold or payment
    // of this schedule succeeds from here on.
    let holds_dropped = holds::cancel_schedule(&state.redis, &event, &schedule)
        .await?
        .unwrap_or(0);
    let already_refunded = refund::refunded_count(&state.pg, &event, &schedule).await?;
    #[allow(unused_mut)]
    let mut stop_after = None;
    #[cfg(feature = "failpoints")]
    if let Some(n) = state
        .config
        .failpoint
        .as_deref()
        .and_then(|f| f.strip_prefix("crash_during_cancel_after:"))
    {
        stop_after = n.parse().ok();
    }
    let refunded =
        refund::refund_schedule(&state.redis, &state.pg, &event, &schedule, stop_after).await?;
    if stop_after.is_some() {
        panic!("failpoint crash_during_cancel_after");
    }
    tracing::info!(%event, %schedule, refunded, "schedule cancelled");
    Ok(axum::Json(refund::Cancellation {
        event_id: event.to_string(),
        schedule_id: schedule.to_string(),
        cancelled_at: crate::time::rfc3339_ms(cancelled_at),
        holds_dropped,
        refunded,
        already_refunded,
    }))
}
