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
    bearer_token(&parts.headers)
}

/// The credential of `Authorization: Bearer <credential>`. The scheme name
/// is case-insensitive (RFC 9110 section 11.1) and may be followed by any
/// run of spaces or tabs; the credential is trimmed and must not be empty.
/// The one parser of the header: extractors and the rate limiter use it.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    let credential = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
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

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer t.k",
            "bearer t.k",
            "BEARER t.k",
            "bEaReR   t.k ",
            "Bearer\tt.k",
        ] {
            assert_eq!(super::bearer_token(&with(v)), Some("t.k"), "{v:?}");
        }
        for v in [
            "Basic dXNlcg==",
            "Bearer",
            "Bearer   ",
            "Bearertoken",
            "t.k",
        ] {
            assert_eq!(super::bearer_token(&with(v)), None, "{v:?}");
        }
        assert_eq!(super::bearer_token(&HeaderMap::new()), None);
    }
}
