//! The queue-token extractor.
//!
//! [`QueueToken`] only checks the signature (no Redis). Whether the entry is
//! admitted is checked by the script that serves the request (place_hold,
//! begin_payment, seat_map, schedules_overview), in the same round trip.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};

use super::error::ApiError;
use crate::{app::AppState, queue::QueueError, token::QueueClaims};

/// A queue token whose signature is valid.
#[derive(Debug, Clone)]
pub struct QueueToken(pub QueueClaims);

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NoEvent => ApiError::NotFound("no such event".into()),
            QueueError::Gone => ApiError::QueueTokenExpired,
            QueueError::Store(e) => ApiError::Dependency(e),
        }
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl<S: Send + Sync> FromRequestParts<S> for QueueToken
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized(
                "this endpoint needs a queue token: Authorization: Bearer <token>".into(),
            )
        })?;
        state
            .tokens
            .verify(token)
            .map(Self)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))
    }
}
