//! Extractors whose rejections use the API's problem+json shape, and the
//! service-key check.

use axum::{
    extract::{FromRef, FromRequest, FromRequestParts, Query, Request, rejection::JsonRejection},
    http::{HeaderMap, request::Parts},
};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::{app::AppState, auth::constant_time_eq, config::Config, ids::IdempotencyKey};

/// `axum::Json`, but a malformed body is a problem+json 400/415/422, and a
/// body over `BOXOFFICE_HTTP_MAX_BODY_BYTES` a `413 payload_too_large`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<super::hygiene::BodyLimit>()
            .map_or(0, |l| l.0);
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rej) => Err(match rej {
                rej if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge { limit_bytes: limit }
                }
                JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(e.body_text()),
                JsonRejection::MissingJsonContentType(_) => ApiError::BadRequest(
                    "expected a JSON body with Content-Type: application/json".into(),
                ),
                other => ApiError::BadRequest(other.body_text()),
            }),
        }
    }
}

/// An optional JSON body: an empty body is `T::default()`; anything else
/// must be JSON, as with [`ApiJson`].
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
            || (!req.headers().contains_key(axum::http::header::CONTENT_TYPE)
                && !req
                    .headers()
                    .contains_key(axum::http::header::TRANSFER_ENCODING)
                && !req
                    .headers()
                    .contains_key(axum::http::header::CONTENT_LENGTH));
        if empty {
            return Ok(Self(T::default()));
        }
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|ApiJson(v)| Self(v))
    }
}

/// `axum::extract::Query` with problem+json rejections.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e| ApiError::InvalidRequest(e.body_text()))
    }
}

/// Proof that the caller presented the service key in `X-Api-Key`.
#[derive(Debug, Clone, Copy)]
pub struct ServiceKey;

impl ServiceKey {
    /// Whether `headers` carry the service key in `X-Api-Key`, compared in
    /// constant time: the one check of the key (this extractor and the rate
    /// limiter's exemption use it).
    pub fn matches(config: &Config, headers: &HeaderMap) -> bool {
        headers
            .get(SERVICE_KEY_HEADER)
            .is_some_and(|v| constant_time_eq(v.as_bytes(), config.service_key.expose().as_bytes()))
    }
}

/// The header that carries the service key.
const SERVICE_KEY_HEADER: &str = "x-api-key";

impl<S: Send + Sync> FromRequestParts<S> for ServiceKey
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        if Self::matches(&state.config, &parts.headers) {
            Ok(Self)
        } else if has_service_key_header(parts) {
            Err(ApiError::Unauthorized("invalid X-Api-Key".into()))
        } else {
            Err(ApiError::Unauthorized(
                "this endpoint needs the service key in X-Api-Key".into(),
            ))
        }
    }
}

/// Whether the request carries an `X-Api-Key` header at all (routes that
/// accept either a queue token or the service key branch on it).
pub fn has_service_key_header(parts: &Parts) -> bool {
    parts.headers.contains_key(SERVICE_KEY_HEADER)
}

/// The optional `Idempotency-Key` header, validated.
pub struct OptionalIdempotencyKey(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for OptionalIdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get("idempotency-key") {
            None => Ok(Self(None)),
            Some(v) => {
                let s = v.to_str().map_err(|_| {
                    ApiError::InvalidRequest("Idempotency-Key must be ASCII".into())
                })?;
                IdempotencyKey::parse(s)
                    .map(|k| Self(Some(k)))
                    .map_err(|e| ApiError::InvalidRequest(e.to_string()))
            }
        }
    }
}
