//! The one error type of the HTTP API, rendered as RFC 9457
//! `application/problem+json` with a stable `code`.
//!
//! Domain errors are enums in their own modules and are mapped to
//! [`ApiError`] at the boundary. Infrastructure failures become a 503
//! (`dependency_unavailable`, with `Retry-After`) or a generic 500; their
//! cause is logged once and never shown to clients.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Syntactically broken request (malformed JSON, wrong content type).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but invalid input.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("the queue entry is still waiting")]
    NotAdmitted { position: Option<u64> },
    #[error(
        "the queue token is no longer valid: the entry left, was evicted, timed out or completed"
    )]
    QueueTokenExpired,
    #[error("some of the requested seats are not available")]
    SeatsUnavailable { seats: Vec<u32> },
    #[error("the hold would exceed {max_per_user} seats per user in this schedule")]
    HoldLimitExceeded {
        max_per_user: u32,
        held: u32,
        bought: u32,
        requested: u32,
    },
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the hold is already paid")]
    HoldAlreadyPaid { payment_id: String },
    #[error("this schedule was cancelled: nothing of it is sold any more")]
    ScheduleCancelled,
    #[error("the payment is already refunded")]
    AlreadyRefunded { refund_id: String },
    #[error("the hold is being paid by another request")]
    HoldBeingPaid,
    #[error("the wallet balance is lower than the amount")]
    InsufficientFunds { balance: String, amount: String },
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    RequestInProgress,
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("the request body is larger than the limit of {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    /// The client did not send its whole request in time.
    #[error("the request was not received completely within {limit_ms} ms")]
    RequestTimeout { limit_ms: u64 },
    /// The request was received but its answer took too long; the only
    /// waits in a handler are Redis, PostgreSQL and their pools, so this is
    /// a slow dependency or an overloaded instance: transient, retry.
    #[error("the request did not complete within {limit_ms} ms; retry shortly")]
    DeadlineExceeded { limit_ms: u64 },
    #[error("the sale is not open yet")]
    SaleNotOpen {
        opens_at: Option<String>,
        prequeue_opens_at: Option<String>,
    },
    #[error("the sale is closed")]
    SaleClosed,
    #[error("{0}")]
    ChallengeFailed(String),
    #[error("sold out: no seat is free and none is held")]
    SoldOut,
    #[error("{0}")]
    Dependency(#[from] StoreError),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError as E;
        match self {
            E::BadRequest(_) => StatusCode::BAD_REQUEST,
            E::InvalidRequest(_) | E::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            E::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            E::Forbidden(_) | E::NotAdmitted { .. } | E::ChallengeFailed(_) => {
                StatusCode::FORBIDDEN
            }
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::AlreadyExists(_)
            | E::SeatsUnavailable { .. }
            | E::HoldLimitExceeded { .. }
            | E::HoldAlreadyPaid { .. }
            | E::ScheduleCancelled
            | E::AlreadyRefunded { .. }
            | E::HoldBeingPaid
            | E::RequestInProgress
            | E::SaleNotOpen { .. }
            | E::SaleClosed
            | E::SoldOut => StatusCode::CONFLICT,
            E::QueueTokenExpired | E::HoldExpired => StatusCode::GONE,
            E::InsufficientFunds { .. } => StatusCode::PAYMENT_REQUIRED,
            E::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            E::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            E::Dependency(StoreError::Unavailable { .. }) | E::DeadlineExceeded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            E::Dependency(StoreError::Internal { .. }) | E::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        use ApiError as E;
        match self {
            E::BadRequest(_) | E::InvalidRequest(_) => "invalid_request",
            E::Unauthorized(_) => "unauthorized",
            E::Forbidden(_) => "forbidden",
            E::NotFound(_) => "not_found",
            E::AlreadyExists(_) => "already_exists",
            E::NotAdmitted { .. } => "not_admitted",
            E::QueueTokenExpired => "queue_token_expired",
            E::SeatsUnavailable { .. } => "seats_unavailable",
            E::HoldLimitExceeded { .. } => "hold_limit_exceeded",
            E::HoldExpired => "hold_expired",
            E::HoldAlreadyPaid { .. } => "hold_already_paid",
            E::ScheduleCancelled => "sale_closed",
            E::AlreadyRefunded { .. } => "already_refunded",
            E::HoldBeingPaid => "request_in_progress",
            E::InsufficientFunds { .. } => "insufficient_funds",
            E::IdempotencyKeyReused => "idempotency_key_reused",
            E::RequestInProgress => "request_in_progress",
            E::RateLimited { .. } => "rate_limited",
            E::SaleNotOpen { .. } => "sale_not_open",
            E::SaleClosed => "sale_closed",
            E::ChallengeFailed(_) => "challenge_failed",
            E::SoldOut => "sold_out",
            E::PayloadTooLarge { .. } => "payload_too_large",
            E::RequestTimeout { .. } => "request_timeout",
            E::Dependency(StoreError::Unavailable { .. }) | E::DeadlineExceeded { .. } => {
                "dependency_unavailable"
            }
            E::Dependency(StoreError::Internal { .. }) | E::Internal(_) => "internal_error",
        }
    }

    fn extra(&self) -> Map<String, Value> {
        use ApiError as E;
        let mut m = Map::new();
        match self {
            E::NotAdmitted { position } => {
                m.insert("position".into(), json!(position));
            }
            E::SeatsUnavailable { seats } => {
                m.insert("unavailable_seats".into(), json!(seats));
            }
            E::HoldLimitExceeded {
                max_per_user,
                held,
                bought,
                requested,
            } => {
                m.insert("max_per_user".into(), json!(max_per_user));
                m.insert("held".into(), json!(held));
                m.insert("bought".into(), json!(bought));
                m.insert("requested".into(), json!(requested));
            }
            E::HoldAlreadyPaid { payment_id } => {
                m.insert("payment_id".into(), json!(payment_id));
            }
            E::AlreadyRefunded { refund_id } => {
                m.insert("refund_id".into(), json!(refund_id));
            }
            E::InsufficientFunds { balance, amount } => {
                m.insert("balance".into(), json!(balance));
                m.insert("amount".into(), json!(amount));
            }
            E::Dependency(StoreError::Unavailable { dep, .. }) => {
                m.insert("dependency".into(), json!(dep.as_str()));
            }
            E::PayloadTooLarge { limit_bytes } => {
                m.insert("limit_bytes".into(), json!(limit_bytes));
            }
            E::RequestTimeout { limit_ms } | E::DeadlineExceeded { limit_ms } => {
                m.insert("limit_ms".into(), json!(limit_ms));
            }
            E::SaleNotOpen {
                opens_at,
                prequeue_opens_at,
            } => {
                m.insert("opens_at".into(), json!(opens_at));
                m.insert("prequeue_opens_at".into(), json!(prequeue_opens_at));
            }
            _ => {}
        }
        m
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::Dependency(StoreError::Unavailable { .. })
            | Self::DeadlineExceeded { .. }
            | Self::RequestInProgress
            | Self::HoldBeingPaid => Some(1),
            _ => None,
        }
    }

    /// The client-facing explanation; internal causes stay in the logs.
    fn detail(&self) -> String {
        match self {
            Self::Dependency(StoreError::Unavailable { dep, .. }) => {
                format!("{} is unavailable; retry shortly", dep.as_str())
            }
            Self::Dependency(StoreError::Internal { .. }) | Self::Internal(_) => {
                "an unexpected error occurred; it has been logged".into()
            }
            other => other.to_string(),
        }
    }
}

impl ApiError {
    /// The problem+json body.
    pub fn body(&self) -> Value {
        self.body_as(self.status())
    }

    /// The one builder of a problem+json body, answered with `status`
    /// (which `title` and `status` in the body always match).
    fn body_as(&self, status: StatusCode) -> Value {
        let mut body = self.extra();
        body.insert(
            "type".into(),
            json!(format!("urn:boxoffice:problem:{}", self.code())),
        );
        body.insert(
            "title".into(),
            json!(status.canonical_reason().unwrap_or("Error")),
        );
        body.insert("status".into(), json!(status.as_u16()));
        body.insert("detail".into(), json!(self.detail()));
        body.insert("code".into(), json!(self.code()));
        Value::Object(body)
    }

    /// This refusal answered with another status than its own (a 405, or
    /// the status of an axum rejection rewritten as problem+json), logged
    /// like any other.
    pub fn into_response_as(self, status: StatusCode) -> Response {
        match &self {
            Self::Dependency(e @ StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "dependency unavailable")
            }
            Self::Dependency(e) => tracing::error!(error = %e, "store error"),
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal error"),
            _ => {}
        }
        let mut resp = (status, axum::Json(self.body_as(status))).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        self.into_response_as(status)
    }
}

/// Shorthand for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
