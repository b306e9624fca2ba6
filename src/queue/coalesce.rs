//! Status polls coalesced per event: the busiest route of a surge (every
//! waiting buyer polls `GET /v1/queue/status`) costs one Redis call per
//! batch of polls instead of one per poll.
//!
//! A poll joins its event's pending list. While fewer than
//! [`CALLS_PER_EVENT`] calls for that event are in flight, it also starts
//! one, which takes every pending poll (up to [`MAX_BATCH`]) into one
//! `queue_status` call and repeats until nothing is pending. So an idle
//! instance sends each poll at once, alone (no timer, no added wait), and
//! a busy one sends the polls that arrived during the last round trip
//! together: the event's config, pacing figures and sold-out state are
//! read once per call, and the script's call overhead (about half of a
//! lone status call's Redis time) is paid once. Each poll is still
//! answered as if alone (`lua/queue_status.lua`), from its own verified
//! token; a failed call fails each of its polls with the same error.
//!
//! The calls run in tasks of their own, so a client that goes away takes
//! only its own answer with it, never the batch it is in.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use super::{EntryView, QueueError};
use crate::{
    ids::{EventId, ScheduleId},
    store::{Dependency, StoreError, redis, redis::Redis},
    token::QueueClaims,
};

/// Calls in flight per event and instance: two, so one is on the wire
/// while the other's answers are handed out.
const CALLS_PER_EVENT: usize = 2;

/// Polls per call at most (the script does a few O(log n) lookups per
/// poll: 250 stay near a millisecond of Redis with a million waiting).
const MAX_BATCH: usize = 250;

type Answer = Result<EntryView, QueueError>;

struct Poll {
    claims: QueueClaims,
    schedules: Arc<Vec<ScheduleId>>,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Pending {
    polls: Vec<Poll>,
    calls: usize,
}

/// The pending polls of this instance, per event.
pub struct StatusPolls {
    redis: Redis,
    events: Mutex<HashMap<EventId, Pending>>,
}

impl StatusPolls {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            events: Mutex::default(),
        }
    }

    /// The entry's current state; also the heartbeat that keeps it alive.
    ///
    /// # Errors
    /// Unknown event, gone entry, or Redis unavailable.
    pub async fn status(
        self: &Arc<Self>,
        claims: &QueueClaims,
        schedules: Arc<Vec<ScheduleId>>,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut events = self.events.lock().expect("lock");
            let pending = events.entry(claims.event.clone()).or_default();
            pending.polls.push(Poll {
                claims: claims.clone(),
                schedules,
                reply,
            });
            let start = pending.calls < CALLS_PER_EVENT;
            if start {
                pending.calls += 1;
            }
            start
        };
        if start {
            let call = Call {
                polls: Arc::clone(self),
                event: claims.event.clone(),
            };
            tokio::spawn(call.run());
        }
        answer.await.unwrap_or_else(|_| {
            Err(QueueError::Store(StoreError::Unavailable {
                dep: Dependency::Redis,
                reason: "the status call ended without an answer".into(),
            }))
        })
    }

    /// The next batch of `event`'s pending polls; `None` (and one call
    /// fewer in flight) when none is left.
    fn next_batch(&self, event: &EventId) -> Option<Vec<Poll>> {
        let mut events = self.events.lock().expect("lock");
        let pending = events.get_mut(event)?;
        if pending.polls.is_empty() {
            pending.calls -= 1;
            if pending.calls == 0 {
                events.remove(event);
            }
            return None;
        }
        let n = pending.polls.len().min(MAX_BATCH);
        Some(pending.polls.drain(..n).collect())
    }
}

/// One call slot of one event: answers batches until none is pending.
struct Call {
    polls: Arc<StatusPolls>,
    event: EventId,
}

impl Call {
    async fn run(self) {
        while let Some(batch) = self.polls.next_batch(&self.event) {
            metrics::histogram!("boxoffice_queue_status_batch").record(batch.len() as f64);
            let claims: Vec<&QueueClaims> = batch.iter().map(|p| &p.claims).collect();
            let answers = super::entries(
                &self.polls.redis,
                &redis::QUEUE_STATUS,
                &self.event,
                &batch[0].schedules,
                &claims,
            )
            .await;
            match answers {
                Ok(Some(views)) => {
                    for (poll, view) in batch.into_iter().zip(views) {
                        let _ = poll.reply.send(view.ok_or(QueueError::Gone));
                    }
                }
                Ok(None) => {
                    for poll in batch {
                        let _ = poll.reply.send(Err(QueueError::NoEvent));
                    }
                }
                Err(e) => {
                    for poll in batch {
                        let _ = poll.reply.send(Err(QueueError::Store(e.duplicate())));
                    }
                }
            }
        }
    }
}

impl Drop for Call {
    /// A call that ends early (a panic while answering) still gives its
    /// slot back, answering what is pending with an error rather than
    /// leaving later polls of the event without a call to take them.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut events = self.polls.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pending) = events.get_mut(&self.event) {
            pending.calls -= 1;
            if pending.calls == 0 {
                events.remove(&self.event);
            }
        }
    }
}
