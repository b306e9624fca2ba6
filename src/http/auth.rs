//! Credential extractors: which caller a request speaks for.
//!
//! Every extractor checks signatures only (no store is touched), so a
//! forged credential is refused before anything else runs:
//! - [`QueueToken`]: the queue entry's token. Whether the entry is still
//!   live (and admitted) is checked by the script that serves the request,
//!   in the same round trip.
//! - [`UserAssertion`]: the platform's JWT for one user.
//! - [`Caller`]: a user assertion or the service key (wallet and payment
//!   reads, lists).
//! - [`PaymentReader`]: as [`Caller`], or a queue token, for reading one
//!   payment of the token's own user.
//! - [`PlatformOnly`]: the service key, refusing user credentials with 403
//!   (wallet charges: money enters a wallet only from the platform).

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};

use super::{
    error::ApiError,
    extract::{ServiceKey, has_service_key_header},
};
use crate::{
    auth::AssertionError,
    ids::UserId,
    queue::QueueError,
    state::AppState,
    token::{QueueClaims, TokenError},
};

/// A user assertion the rate limiter (`http::limit`) already verified for
/// this request, handed to [`UserAssertion`] in the request's extensions so
/// it is not verified twice.
#[derive(Debug, Clone)]
pub struct VerifiedUser(pub UserId);

/// A queue token whose signature is valid and which has not expired.
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

/// The credential of a request's `Authorization: Bearer <credential>`, if
/// any: the header read in one place (the extractors and the rate limiter
/// use it), its value parsed by [`crate::auth::bearer`].
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    crate::auth::bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The bearer credential, or a 401 naming what this endpoint needs.
fn required_bearer<'a>(parts: &'a Parts, needs: &str) -> Result<&'a str, ApiError> {
    bearer(&parts.headers).ok_or_else(|| {
        ApiError::Unauthorized(format!(
            "this endpoint needs {needs}: Authorization: Bearer <credential>"
        ))
    })
}

fn token_error(e: &TokenError) -> ApiError {
    match e {
        TokenError::Expired => ApiError::QueueTokenExpired,
        other => ApiError::Unauthorized(other.to_string()),
    }
}

fn assertion_error(e: &AssertionError) -> ApiError {
    ApiError::Unauthorized(e.to_string())
}

impl<S: Send + Sync> FromRequestParts<S> for QueueToken
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = required_bearer(parts, "a queue token")?;
        let claims = state.tokens.verify(token).map_err(|e| token_error(&e))?;
        // A buyer route is timed under the token's event (autopilot).
        if let Some(slot) = parts.extensions.get::<super::admitted::AdmittedEvent>() {
            slot.mark(&claims.event);
        }
        Ok(Self(claims))
    }
}

/// A valid user assertion (the platform's JWT): the user is its `sub`.
#[derive(Debug, Clone)]
pub struct UserAssertion(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for UserAssertion
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        if let Some(VerifiedUser(user)) = parts.extensions.get() {
            return Ok(Self(user.clone()));
        }
        let token = required_bearer(parts, "a user assertion (the platform's JWT)")?;
        state
            .users
            .verify(token)
            .map(Self)
            .map_err(|e| assertion_error(&e))
    }
}

/// Who may read a user's wallet and payments: that user's assertion, or
/// the platform's service key. A queue token is not enough: it is the
/// credential of one queue entry, not of the user.
#[derive(Debug, Clone)]
pub enum Caller {
    User(UserId),
    Service,
}

impl Caller {
    /// # Errors
    /// 403 when a user acts on someone else's data.
    pub fn may_act_for(&self, user: &UserId) -> Result<(), ApiError> {
        match self {
            Self::Service => Ok(()),
            Self::User(u) if u == user => Ok(()),
            Self::User(_) => Err(ApiError::Forbidden(
                "a user assertion may only act for its own user".into(),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_service_key_header(parts) {
            ServiceKey::from_request_parts(parts, state)
                .await
                .map(|_| Self::Service)
        } else {
            UserAssertion::from_request_parts(parts, state)
                .await
                .map(|UserAssertion(u)| Self::User(u))
        }
    }
}

/// The platform's backend, and nobody else: the routes that move money
/// into a wallet. A user credential (assertion or queue token) is refused
/// with 403, not 401: it is valid, it just can never do this.
#[derive(Debug, Clone, Copy)]
pub struct PlatformOnly;

impl<S: Send + Sync> FromRequestParts<S> for PlatformOnly
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if !has_service_key_header(parts) && bearer(&parts.headers).is_some() {
            return Err(ApiError::Forbidden(
                "only the platform's backend (service key) may do this; user credentials never can"
                    .into(),
            ));
        }
        ServiceKey::from_request_parts(parts, state)
            .await
            .map(|_| Self)
    }
}

/// Who may read one payment: the service key, the owner's assertion, or a
/// queue token of the owner (checked against the payment's user and event
/// by the handler).
#[derive(Debug, Clone)]
pub enum PaymentReader {
    Service,
    User(UserId),
    Queue(QueueClaims),
}

impl<S: Send + Sync> FromRequestParts<S> for PaymentReader
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_service_key_header(parts) {
            return ServiceKey::from_request_parts(parts, state)
                .await
                .map(|_| Self::Service);
        }
        let app = AppState::from_ref(state);
        let token = required_bearer(
            parts,
            "a user assertion, a queue token or the service key (X-Api-Key)",
        )?;
        // Queue tokens and JWTs cannot be mistaken for each other: a queue
        // token starts with its version, a JWT with its base64 header.
        if token.starts_with("v1.") {
            app.tokens
                .verify(token)
                .map(Self::Queue)
                .map_err(|e| token_error(&e))
        } else {
            app.users
                .verify(token)
                .map(Self::User)
                .map_err(|e| assertion_error(&e))
        }
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
            assert_eq!(super::bearer(&with(v)), Some("t.k"), "{v:?}");
        }
        for v in [
            "Basic dXNlcg==",
            "Bearer",
            "Bearer   ",
            "Bearertoken",
            "t.k",
        ] {
            assert_eq!(super::bearer(&with(v)), None, "{v:?}");
        }
        assert_eq!(super::bearer(&HeaderMap::new()), None);
    }
}
