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
    to_the_end::to_the_end,
};
use crate::{
    idempotency::{self, Answered, KeyRefused, Saved, Scope},
    ids::UserId,
    money::Money,
    state::AppState,
    wallet,
};

pub fn user_in_path(raw: &str) -> ApiResult<UserId> {
    UserId::parse(raw).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// A response whose JSON body is already rendered (and stored for replay).
fn stored(status: u16, body: String) -> Response {
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

/// The answer of a request run under an `Idempotency-Key`
/// ([`idempotency::once`]): the first answer and every replay are the same
/// stored bytes; only a replay carries `Idempotent-Replayed: true`.
pub fn answered(status: u16, answer: Answered<String>) -> Response {
    match answer {
        Answered::Fresh(body) => stored(status, body),
        Answered::Replayed(Saved { status, body }) => {
            let mut resp = stored(status, body);
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            resp
        }
    }
}

/// A refusal as a key's stored answer: the problem+json it is answered with.
pub fn saved(e: ApiError) -> Saved {
    Saved {
        status: e.status().as_u16(),
        body: e.body().to_string(),
    }
}

impl From<KeyRefused> for ApiError {
    fn from(e: KeyRefused) -> Self {
        match e {
            KeyRefused::InFlight => ApiError::RequestInProgress,
            KeyRefused::Reused => ApiError::IdempotencyKeyReused,
            KeyRefused::Store(e) => ApiError::Dependency(e),
        }
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
    to_the_end(state.effects.clone(), async move {
        let scope = key
            .as_ref()
            .map(|key| Scope::new(&user, key, &["charge", &amount.to_string()]));
        let charge = async {
            let charged = wallet::charge(&state.pg, &user, amount, key.as_ref()).await;
            let label = if charged.is_ok() { "ok" } else { "error" };
            metrics::counter!("boxoffice_wallet_charges_total", "outcome" => label).increment(1);
            charged.map(|(_, body)| body).map_err(ApiError::Dependency)
        };
        match idempotency::once(&state.pg, scope, charge, |_| None).await {
            Ok(answer) => answered(201, answer),
            Err(e) => e.into_response(),
        }
    })
    .await
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
