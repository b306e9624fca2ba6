//! `GET /v1/queue/stream`: Server-Sent Events instead of polling.
//!
//! The first `status` event is read at once (and is a heartbeat); after
//! that the entry is looked after by the in-process hub
//! ([`crate::queue::stream`]), which reads due entries in batches once
//! per tick and pushes changes. Final events: `admitted` or `gone`.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::Stream;

use super::{ApiError, ApiResult, auth::QueueToken, queue::entry};
use crate::{
    queue::{self, EntryState, stream::Push},
    state::AppState,
    token::QueueClaims,
};

/// Keep-alive comment interval (proxies close silent connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn event(kind: &str, claims: &QueueClaims, view: &queue::EntryView) -> Event {
    Event::default()
        .event(kind)
        .json_data(entry(claims, view, None))
        .unwrap_or_else(|_| Event::default().event(kind))
}

#[utoipa::path(get, path = "/v1/queue/stream", tag = "queue",
    security(("queue_token" = [])),
    responses(
        (status = 200, description = "text/event-stream: `status` events (the status JSON) when position, status or ETA change, keep-alive comments, and a final `admitted` or `gone` event. An open stream is a heartbeat.", content_type = "text/event-stream", body = super::schemas::SseEvent),
        (status = 401, description = "unauthorized", body = super::openapi::Problem),
        (status = 410, description = "queue_token_expired", body = super::openapi::Problem),
        (status = 503, description = "dependency_unavailable", body = super::openapi::Problem),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    QueueToken(claims): QueueToken,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let schedules = super::holds::schedules_of(&state, &claims.event).await?;
    let first = super::queue::poll(&state, &claims, schedules.clone()).await?;
    let admitted = matches!(first.state, EntryState::Admitted { .. });
    let opening = event(
        if admitted { "admitted" } else { "status" },
        &claims,
        &first,
    );
    let sub = if admitted {
        None
    } else {
        Some(
            state
                .streams
                .subscribe(claims.clone(), schedules, first)
                .ok_or_else(|| {
                    ApiError::Dependency(crate::store::StoreError::Unavailable {
                        dep: crate::store::Dependency::Redis,
                        reason: "shutting down".into(),
                    })
                })?,
        )
    };
    metrics::gauge!("boxoffice_queue_streams").set(state.streams.len() as f64);
    let rest = futures::stream::unfold((sub, claims), |(sub, claims)| async move {
        let mut sub = sub?;
        let push = sub.rx.recv().await?;
        let (ev, done) = match &push {
            Push::Status(v) => (event("status", &claims, v), false),
            Push::Admitted(v) => (event("admitted", &claims, v), true),
            Push::Gone => (Event::default().event("gone").data("{}"), true),
        };
        Some((Ok(ev), (if done { None } else { Some(sub) }, claims)))
    });
    let all = futures::StreamExt::chain(futures::stream::once(async move { Ok(opening) }), rest);
    Ok(Sse::new(all).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
