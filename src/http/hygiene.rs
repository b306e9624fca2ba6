//! HTTP hygiene that needs a response: the whole-request timeout, the body
//! limit, and problem+json for every refusal made before a handler runs.
//! (The connection-level limits live in `crate::server`.)

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::ApiError;
use crate::state::AppState;
#[cfg(feature = "failpoints")]
use axum::Router;

/// The configured body limit, left in the request's extensions for
/// `ApiJson` to name in its 413.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Middleware: the body limit (declared length checked before anything
/// runs), the whole-request timeout, and problem+json for plain-text
/// refusals (see [`problem_json`]). One middleware rather than three: each
/// layer costs on every request.
///
/// A request still running after `BOXOFFICE_HTTP_REQUEST_TIMEOUT_MS` is
/// cancelled (its handler future is dropped, as tower's timeout does) and
/// answered:
/// - `408 request_timeout` (and the connection closed) when the client had
///   not sent its whole body yet: the client is the slow party;
/// - `503 dependency_unavailable` with `Retry-After: 1` otherwise: every
///   wait inside a handler is Redis, PostgreSQL or their pools (each bounded
///   on its own), so a request that ran out of time is stuck behind a slow
///   dependency or an overloaded instance, and a retry is the right answer.
pub async fn limits(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let http = state.config.http;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > http.max_body_bytes as u64) {
        return close(
            ApiError::PayloadTooLarge {
                limit_bytes: http.max_body_bytes,
            }
            .into_response(),
        );
    }
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(BodyLimit(http.max_body_bytes));
    // Only a body still to come needs watching (most requests have none).
    let (body, received) = if body.is_end_stream() {
        (body, None)
    } else {
        let received = Arc::new(AtomicBool::new(false));
        let watched = Body::new(Watched {
            inner: body,
            received: received.clone(),
        });
        (watched, Some(received))
    };
    let limit = http.request_timeout;
    let resp = match tokio::time::timeout(limit, next.run(Request::from_parts(parts, body))).await {
        Ok(resp) => resp,
        Err(_) => timed_out(limit, received.is_none_or(|r| r.load(Ordering::Acquire))),
    };
    if is_plain_error(&resp) {
        return problem_json(&state, resp).await;
    }
    resp
}

fn timed_out(limit: Duration, body_received: bool) -> Response {
    let limit_ms = limit.as_millis() as u64;
    metrics::counter!("boxoffice_http_request_timeouts_total",
        "party" => if body_received { "server" } else { "client" })
    .increment(1);
    if body_received {
        tracing::warn!(limit_ms, "request cut by the whole-request timeout");
        ApiError::DeadlineExceeded { limit_ms }.into_response()
    } else {
        close(ApiError::RequestTimeout { limit_ms }.into_response())
    }
}

/// Asks hyper to close the connection after this response (the rest of an
/// unread body must not be taken for the next request).
fn close(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A request body that records when it has been read to the end.
struct Watched {
    inner: Body,
    received: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(res, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.received.store(true, Ordering::Release);
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A 4xx or 5xx whose body is not JSON.
fn is_plain_error(resp: &Response) -> bool {
    let status = resp.status();
    (status.is_client_error() || status.is_server_error())
        && !resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.starts_with("application/problem+json") || ct.starts_with("application/json")
            })
}

/// Rewrites a plain-text refusal (axum's own rejections, such as a path
/// that is not valid UTF-8 or a body over the limit read by an extractor
/// other than `ApiJson`) as problem+json with the same status, so every
/// refusal has the API's one error shape.
async fn problem_json(state: &AppState, resp: Response) -> Response {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let err = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound(text),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
            limit_bytes: state.config.http.max_body_bytes,
        },
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout {
            limit_ms: state.config.http.request_timeout.as_millis() as u64,
        },
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::InvalidRequest(text),
        s if s.is_client_error() => ApiError::BadRequest(text),
        _ => ApiError::Internal(anyhow::anyhow!("{status}: {text}")),
    };
    let mut out = err.into_response_as(status);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Test-only routes, compiled only with the `failpoints` feature and
/// mounted only when `BOXOFFICE_FAILPOINT=slow_route`:
/// `GET /__failpoints/sleep/{ms}` answers after `ms` milliseconds (to
/// exceed the whole-request timeout on purpose).
#[cfg(feature = "failpoints")]
pub fn failpoint_routes(api: Router<AppState>, state: &AppState) -> Router<AppState> {
    if state.config.failpoint.as_deref() != Some("slow_route") {
        return api;
    }
    api.route(
        "/__failpoints/sleep/{ms}",
        axum::routing::get(
            |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                "slept"
            },
        ),
    )
}
