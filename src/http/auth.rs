//! Queue-token extractors.
//!
//! [`QueueToken`] only checks the signature (no Redis); [`AdmittedUser`]
//! also asks Redis whether the entry is admitted, which doubles as the
//! entry's heartbeat.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};

use super::error::ApiError;
use crate::{
    app::AppState,
    queue::{self, EntryState, QueueError},
    token::QueueClaims,
};

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

/// A user whose queue entry is admitted right now.
#[derive(Debug, Clone)]
pub struct AdmittedUser {
    pub claims: QueueClaims,
    pub admitted_until_ms: i64,
}

impl<S: Send + Sync> FromRequestParts<S> for AdmittedUser
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let QueueToken(claims) = QueueToken::from_request_parts(parts, state).await?;
        let state = AppState::from_ref(state);
        let view = queue::status(&state.redis, &claims)
            .await
            .map_err(|e| match e {
                QueueError::NoEvent => ApiError::QueueTokenExpired,
                other => other.into(),
            })?;
        match view.state {
            EntryState::Admitted { until_ms } => Ok(Self {
                claims,
                admitted_until_ms: until_ms,
            }),
            EntryState::Waiting { position } => Err(ApiError::NotAdmitted {
                position: Some(position),
            }),
        }
    }
}
