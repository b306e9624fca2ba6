//! Admitted buyers' requests (seat maps, holds, payments: the routes a
//! queue token opens) timed per event for the admission autopilot
//! ([`crate::queue::autopilot`]).
//!
//! The route is known before the handler runs, the event only once the
//! token is verified: this middleware puts an empty [`AdmittedEvent`] in
//! the request, the [`super::auth::QueueToken`] extractor fills it, and the
//! latency is recorded under that event when the response is ready. A
//! request whose token did not verify names no event and is not counted.

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};

use crate::{ids::EventId, state::AppState};

/// The routes admitted buyers use (queue status and streams are not: they
/// are the waiting room's own, and a stream lasts minutes).
const BUYER_ROUTES: &[&str] = &[
    "/v1/events/{event_id}/schedules",
    "/v1/events/{event_id}/schedules/{schedule_id}/seats",
    "/v1/holds",
    "/v1/holds/{hold_id}",
    "/v1/payments",
];

/// The event of a buyer's verified queue token, set by the extractor.
#[derive(Debug, Clone, Default)]
pub struct AdmittedEvent(Arc<OnceLock<EventId>>);

impl AdmittedEvent {
    pub fn mark(&self, event: &EventId) {
        let _ = self.0.set(event.clone());
    }
}

/// Times the buyer routes per event (route layer).
pub async fn measure(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let buyer = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| BUYER_ROUTES.contains(&p.as_str()));
    if !buyer {
        return next.run(req).await;
    }
    let slot = AdmittedEvent::default();
    req.extensions_mut().insert(slot.clone());
    let start = Instant::now();
    let resp = next.run(req).await;
    if let Some(event) = slot.0.get() {
        state.autopilot.record(event, start.elapsed());
    }
    resp
}
