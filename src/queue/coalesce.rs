//! The waiting room's two busiest calls, coalesced per event: every
//! arriving buyer joins (`POST /v1/events/{e}/queue`) and every waiting
//! buyer polls (`GET /v1/queue/status`), so in a surge they cost one
//! Redis call per batch instead of one per request.
//!
//! A request joins its event's pending list. While fewer than
//! [`CALLS_PER_EVENT`] calls for that event are in flight, it also starts
//! one, which takes every pending request (up to [`MAX_BATCH`]) into one
//! script call and repeats until nothing is pending. So an idle instance
//! sends each request at once, alone (no timer, no added wait), and a busy
//! one sends the requests that arrived during the last round trip
//! together: the event's config, pacing figures and sold-out state are
//! read once per call, and a call's own cost (the network, the script's
//! dispatch: about half of a lone status call's Redis time) is paid once.
//! Each request is still decided as if alone, in arrival order
//! (`lua/join_queue.lua`, `lua/queue_status.lua`), from its own verified
//! token or assertion; a failed call fails each of its requests with the
//! same error.
//!
//! The calls run in tasks of their own, so a client that goes away takes
//! only its own answer with it, never the batch it is in.
//!
//! A request waits for its answer at most [`CALL_TIMEOUT`] from the moment
//! it joins the list, as a lone call would: with Redis hanging, the calls
//! ahead of it each wait out a timeout of their own before the breaker
//! opens, and a request behind them must not add theirs to its own (a
//! burst of polls during a stall took two timeouts before this bound). It
//! then answers 503; a request that has given up is never sent.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use super::{EntryView, JoinError, JoinInput, Joined, QueueError};
use crate::{
    ids::{EventId, ScheduleId, UserId},
    store::{
        Dependency, StoreError,
        redis::{self, CALL_TIMEOUT, Redis},
    },
    token::QueueClaims,
};

/// Calls in flight per event, kind and instance: two, so one is on the
/// wire while the other's answers are handed out.
const CALLS_PER_EVENT: usize = 2;

/// Requests per call at most (a few O(log n) lookups each: 250 stay near
/// a millisecond of Redis with a million waiting).
const MAX_BATCH: usize = 250;

/// One kind of coalesced call: what a request carries and what it gets.
pub trait Batch: Send + Sync + 'static {
    type Request: Send + 'static;
    type Answer: Send + 'static;
    /// The script, for the batch-size metric's label.
    const SCRIPT: &'static str;

    /// Answers `requests` (all of `event`) in one call: one answer per
    /// request, in order.
    fn answer(
        &self,
        event: &EventId,
        requests: Vec<Self::Request>,
    ) -> impl Future<Output = Vec<Self::Answer>> + Send;

    /// The answer of a request that got none from a call: `reason` says
    /// why (no answer in time, or the call ended without one).
    fn unavailable(reason: &'static str) -> Self::Answer;
}

struct Waiting<B: Batch> {
    request: B::Request,
    reply: oneshot::Sender<B::Answer>,
}

struct Pending<B: Batch> {
    waiting: Vec<Waiting<B>>,
    calls: usize,
}

/// The pending requests of one kind on this instance, per event.
pub struct Coalescer<B: Batch> {
    batch: B,
    events: Mutex<HashMap<EventId, Pending<B>>>,
}

impl<B: Batch> Coalescer<B> {
    pub fn new(batch: B) -> Self {
        Self {
            batch,
            events: Mutex::default(),
        }
    }

    /// `request`'s answer, from the next call for `event`.
    pub async fn ask(self: &Arc<Self>, event: &EventId, request: B::Request) -> B::Answer {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut events = self.events.lock().expect("lock");
            let pending = events.entry(event.clone()).or_insert_with(|| Pending {
                waiting: Vec::new(),
                calls: 0,
            });
            pending.waiting.push(Waiting { request, reply });
            let start = pending.calls < CALLS_PER_EVENT;
            if start {
                pending.calls += 1;
            }
            start
        };
        if start {
            let call = Call {
                coalescer: Arc::clone(self),
                event: event.clone(),
            };
            tokio::spawn(call.run());
        }
        match tokio::time::timeout(CALL_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => B::unavailable("the call ended without an answer"),
            Err(_) => B::unavailable("no answer within the call timeout"),
        }
    }

    /// The next batch of `event`'s pending requests; `None` (and one call
    /// fewer in flight) when none is left.
    fn next_batch(&self, event: &EventId) -> Option<Vec<Waiting<B>>> {
        let mut events = self.events.lock().expect("lock");
        let pending = events.get_mut(event)?;
        // Requests that have given up (their deadline passed, or the
        // client went away) are not sent: a join answered 503 must not
        // happen afterwards.
        pending.waiting.retain(|w| !w.reply.is_closed());
        if pending.waiting.is_empty() {
            pending.calls -= 1;
            if pending.calls == 0 {
                events.remove(event);
            }
            return None;
        }
        let n = pending.waiting.len().min(MAX_BATCH);
        Some(pending.waiting.drain(..n).collect())
    }
}

/// One call slot of one event: answers batches until none is pending.
struct Call<B: Batch> {
    coalescer: Arc<Coalescer<B>>,
    event: EventId,
}

impl<B: Batch> Call<B> {
    async fn run(self) {
        while let Some(batch) = self.coalescer.next_batch(&self.event) {
            metrics::histogram!("boxoffice_queue_batch", "script" => B::SCRIPT)
                .record(batch.len() as f64);
            let (requests, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.request, w.reply)).unzip();
            let answers = self.coalescer.batch.answer(&self.event, requests).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The client may have gone: its answer is dropped.
                let _ = reply.send(answer);
            }
        }
    }
}

impl<B: Batch> Drop for Call<B> {
    /// A call that ends early (a panic while answering) gives its slot
    /// back; when it was the event's last, the pending requests are
    /// dropped and answered [`Batch::unavailable`] rather than left
    /// waiting for a call that no longer comes.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut events = self
            .coalescer
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(pending) = events.get_mut(&self.event) {
            pending.calls -= 1;
            if pending.calls == 0 {
                events.remove(&self.event);
            }
        }
    }
}

fn unavailable(reason: &'static str) -> StoreError {
    StoreError::Unavailable {
        dep: Dependency::Redis,
        reason: reason.into(),
    }
}

/// Status polls (`queue_status`): an entry's state, and its heartbeat.
pub struct Statuses {
    pub redis: Redis,
}

/// One status poll: the verified token's claims and the event's schedules.
pub struct StatusPoll {
    pub claims: QueueClaims,
    pub schedules: Arc<Vec<ScheduleId>>,
}

impl Batch for Statuses {
    type Request = StatusPoll;
    type Answer = Result<EntryView, QueueError>;
    const SCRIPT: &'static str = "queue_status";

    async fn answer(&self, event: &EventId, polls: Vec<StatusPoll>) -> Vec<Self::Answer> {
        let claims: Vec<&QueueClaims> = polls.iter().map(|p| &p.claims).collect();
        let reply = super::entries(
            &self.redis,
            &redis::QUEUE_STATUS,
            event,
            &polls[0].schedules,
            &claims,
        )
        .await;
        match reply {
            Ok(Some(views)) => views
                .into_iter()
                .map(|v| v.ok_or(QueueError::Gone))
                .collect(),
            Ok(None) => polls.iter().map(|_| Err(QueueError::NoEvent)).collect(),
            Err(e) => polls
                .iter()
                .map(|_| Err(QueueError::Store(e.duplicate())))
                .collect(),
        }
    }

    fn unavailable(reason: &'static str) -> Self::Answer {
        Err(QueueError::Store(unavailable(reason)))
    }
}

/// Joins (`join_queue`): a new entry, or the user's live one.
pub struct Joins {
    pub redis: Redis,
}

/// One join: the user (from a verified assertion or the service key) and
/// what the join needs besides.
pub struct JoinRequest {
    pub user: UserId,
    pub input: JoinInput,
}

impl Batch for Joins {
    type Request = JoinRequest;
    type Answer = Result<Joined, JoinError>;
    const SCRIPT: &'static str = "join_queue";

    async fn answer(&self, event: &EventId, joins: Vec<JoinRequest>) -> Vec<Self::Answer> {
        super::joins(&self.redis, event, &joins).await
    }

    fn unavailable(reason: &'static str) -> Self::Answer {
        Err(unavailable(reason).into())
    }
}
