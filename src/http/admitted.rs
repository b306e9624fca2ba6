//! Admitted buyers' requests (seat maps, holds, payments: the routes a
//! queue token opens) timed per event for the admission autopilot
//! ([`crate::queue::autopilot`]).
//!
//! The route is known before the handler runs, the event only once the
//! token is verified: the timing middleware (`track_latency` in
//! `http/mod.rs`) puts an empty [`AdmittedEvent`] in the request
//! ([`watch`]), the [`super::auth::QueueToken`] extractor fills it, and the
//! latency is recorded under that event when the response is ready. A
//! request whose token did not verify names no event and is not counted.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::extract::{MatchedPath, Request};

use crate::{ids::EventId, queue::autopilot::Autopilot};

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

/// For a request on a buyer route, the empty slot its queue token will
/// name its event in (put into the request for the extractor); `None` on
/// any other route. The caller records the latency under the event once
/// the response is ready ([`AdmittedEvent::record`]).
pub fn watch(req: &mut Request, route: Option<&MatchedPath>) -> Option<AdmittedEvent> {
    if !route.is_some_and(|p| BUYER_ROUTES.contains(&p.as_str())) {
        return None;
    }
    let slot = AdmittedEvent::default();
    req.extensions_mut().insert(slot.clone());
    Some(slot)
}

impl AdmittedEvent {
    /// Counts `took` in the autopilot's window of the event, if the token
    /// verified.
    pub fn record(&self, autopilot: &Autopilot, took: Duration) {
        if let Some(event) = self.0.get() {
            autopilot.record(event, took);
        }
    }
}
