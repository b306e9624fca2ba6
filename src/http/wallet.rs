//! Wallet and payment endpoints, with `Idempotency-Key` replay.

use axum::{
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    ApiError, ApiResult,
    auth::{Caller, PlatformOnly},
    extract::{ApiJson, ApiQuery, OptionalIdempotencyKey},
    schemas::{Balance, TransactionsPage},
};
use crate::{
    idempotency::{self, Claim},
    ids::{IdempotencyKey, UserId},
    money::Money,
    state::AppState,
    wallet,
};

pub fn user_in_path(raw: &str) -> ApiResult<UserId> {
    UserId::parse(raw).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// A response whose JSON body is already rendered (and stored for replay):
/// the first answer and every replay go through here, so they match
/// byte for byte; only a replay also carries `Idempotent-Replayed: true`.
pub fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let ct = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// Claims an idempotency key, answering for the cases that end here.
pub async fn claim_or_answer(
    state: &AppState,
    user: &UserId,
    key: &IdempotencyKey,
    fp: &str,
) -> Result<(), Response> {
    match idempotency::claim(&state.pg, user, key, fp).await {
        Ok(Claim::Fresh) => Ok(()),
        Ok(Claim::Replay { status, body }) => {
            let mut resp = replay(status, body);
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Err(resp)
        }
        Ok(Claim::InFlight) => Err(ApiError::RequestInProgress.into_response()),
        Ok(Claim::Mismatch) => Err(ApiError::IdempotencyKeyReused.into_response()),
        Err(e) => Err(ApiError::Dependency(e).into_response()),
    }
}

#[utoipa::path(get, path = "/v1/users/{user_id}/wallet", tag = "wallet",
    security(("user_assertion" = []), ("service_key" = [])),
    params(("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Balance (0 for a user never seen)", body = Balance),
        (status = 403, description = "forbidden: a user assertion of another user", body = super::openapi::Problem),
        (status = 422, description = "invalid_request: malformed user id", body = super::openapi::Problem),
    ))]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<Balance>> {
    let user = user_in_path(&user)?;
    caller.may_act_for(&user)?;
    let balance = wallet::balance(&state.pg, &user).await?;
    Ok(axum::Json(Balance {
        user_id: user.to_string(),
        balance,
        currency: state.config.currency.code().to_string(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeBody {
    /// Decimal string in the service currency, e.g. "50000".
    #[schema(example = "50000")]
    pub amount: String,
}

#[utoipa::path(post, path = "/v1/users/{user_id}/wallet/charges", tag = "wallet",
    security(("service_key" = [])),
    params(("user_id" = String, Path, description = "User id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    request_body = ChargeBody,
    responses(
        (status = 201, description = "Charged (a replay of the first answer with the same Idempotency-Key)", body = wallet::Charged),
        (status = 403, description = "forbidden: a user credential (assertion or queue token) can never charge", body = super::openapi::Problem),
        (status = 409, description = "request_in_progress", body = super::openapi::Problem),
        (status = 422, description = "invalid_request or idempotency_key_reused", body = super::openapi::Problem),
    ))]
pub async fn charge(
    State(state): State<AppState>,
    // Money enters a wallet only from the platform's backend: no user
    // credential can charge, not even the user's own.
    _: PlatformOnly,
    Path(user): Path<String>,
    OptionalIdempotencyKey(key): OptionalIdempotencyKey,
    ApiJson(body): ApiJson<ChargeBody>,
) -> Response {
    let run = async {
        let user = user_in_path(&user)?;
        let amount =
            Money::parse_amount(&body.amount, state.config.currency, state.config.max_charge)
                .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        Ok::<_, ApiError>((user, amount))
    };
    let (user, amount) = match run.await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if let Some(key) = &key {
        let fp = idempotency::fingerprint(&["charge", &amount.to_string()]);
        if let Err(answer) = claim_or_answer(&state, &user, key, &fp).await {
            return answer;
        }
    }
    match wallet::charge(&state.pg, &user, amount, key.as_ref()).await {
        Ok((_, body)) => {
            metrics::counter!("boxoffice_wallet_charges_total", "outcome" => "ok").increment(1);
            replay(201, body)
        }
        Err(e) => {
            metrics::counter!("boxoffice_wallet_charges_total", "outcome" => "error").increment(1);
            if let Some(key) = &key {
                idempotency::release(&state.pg, &user, key).await;
            }
            ApiError::Dependency(e).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<u32>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/users/{user_id}/wallet/transactions", tag = "wallet",
    security(("user_assertion" = []), ("service_key" = [])),
    params(("user_id" = String, Path, description = "User id"),
           ("limit" = Option<u32>, Query, description = "1..200, default 50"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "Ledger entries, newest first; amounts are signed", body = TransactionsPage),
        (status = 403, description = "forbidden: a user assertion of another user", body = super::openapi::Problem),
        (status = 422, description = "invalid_request: malformed user id, limit or cursor", body = super::openapi::Problem),
    ))]
pub async fn transactions(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> ApiResult<axum::Json<TransactionsPage>> {
    let user = user_in_path(&user)?;
    caller.may_act_for(&user)?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit must be between 1 and 200".into(),
        ));
    }
    let before = match page.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| ApiError::InvalidRequest("cursor is not valid".into()))?,
        ),
    };
    let (rows, next) = wallet::history(&state.pg, &user, limit, before).await?;
    Ok(axum::Json(TransactionsPage {
        transactions: rows,
        next_cursor: next.map(|n| n.to_string()),
    }))
}
