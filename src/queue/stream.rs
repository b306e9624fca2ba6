//! Push instead of polling: the in-process hub behind
//! `GET /v1/queue/stream`.
//!
//! Every open stream registers here. Once per tick, for each event with
//! streams, the hub sends the entries that are due (each entry is due
//! again after its own `poll_after_ms`, so the far back of the line is
//! looked at less often, as polling clients would) to Redis in one
//! `stream_status` call per 250 entries, and fans the answers out to the
//! streams in memory. The event-wide figures (rate, paused, sold out) are
//! read once per call; there is no Redis call per subscriber. The same
//! call writes every due entry's heartbeat, so a client that only streams
//! is never evicted as idle.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{EntryState, EntryView};
use crate::{
    ids::{EventId, ScheduleId},
    store::{StoreError, redis, redis::Redis},
    token::QueueClaims,
};

/// What a stream is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    Status(EntryView),
    /// Final: admitted (the stream ends).
    Admitted(EntryView),
    /// Final: the entry is gone (the stream ends).
    Gone,
}

struct Sub {
    claims: QueueClaims,
    tx: mpsc::Sender<Push>,
    due: Instant,
    last: Option<EntryView>,
}

#[derive(Default)]
struct EventSubs {
    schedules: Arc<Vec<ScheduleId>>,
    subs: HashMap<u64, Sub>,
}

/// The registry of open streams of this instance.
#[derive(Default)]
pub struct Hub {
    events: Mutex<HashMap<EventId, EventSubs>>,
    next: AtomicU64,
    closed: AtomicBool,
}

/// Unregisters its stream when dropped (the client went away).
pub struct Subscription {
    hub: Arc<Hub>,
    event: EventId,
    id: u64,
    pub rx: mpsc::Receiver<Push>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut events = self.hub.events.lock().expect("lock");
        if let Some(e) = events.get_mut(&self.event) {
            e.subs.remove(&self.id);
            if e.subs.is_empty() {
                events.remove(&self.event);
            }
        }
    }
}

impl Hub {
    /// Registers a stream whose first status (`first`) was just sent;
    /// `None` once the hub has shut down.
    pub fn subscribe(
        self: &Arc<Self>,
        claims: QueueClaims,
        schedules: Arc<Vec<ScheduleId>>,
        first: EntryView,
    ) -> Option<Subscription> {
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = mpsc::channel(4);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let event = claims.event.clone();
        let due = Instant::now() + Duration::from_millis(first.pacing.poll_after_ms);
        let mut events = self.events.lock().expect("lock");
        let e = events.entry(event.clone()).or_default();
        e.schedules = schedules;
        e.subs.insert(
            id,
            Sub {
                claims,
                tx,
                due,
                last: Some(first),
            },
        );
        Some(Subscription {
            hub: self.clone(),
            event,
            id,
            rx,
        })
    }

    /// Open streams on this instance.
    pub fn len(&self) -> usize {
        self.events
            .lock()
            .expect("lock")
            .values()
            .map(|e| e.subs.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One round: every due entry of every event, one Redis call per
    /// event (per 250 due entries).
    pub async fn round(&self, redis: &Redis) {
        let now = Instant::now();
        type Due = (EventId, Arc<Vec<ScheduleId>>, Vec<(u64, QueueClaims)>);
        let work: Vec<Due> = {
            let events = self.events.lock().expect("lock");
            events
                .iter()
                .filter_map(|(ev, e)| {
                    let due: Vec<_> = e
                        .subs
                        .iter()
                        .filter(|(_, s)| s.due <= now)
                        .map(|(id, s)| (*id, s.claims.clone()))
                        .collect();
                    (!due.is_empty()).then(|| (ev.clone(), e.schedules.clone(), due))
                })
                .collect()
        };
        for (event, schedules, due) in work {
            for chunk in due.chunks(STREAM_BATCH) {
                let claims: Vec<&QueueClaims> = chunk.iter().map(|(_, c)| c).collect();
                match statuses(redis, &event, &schedules, &claims).await {
                    Ok(views) => self.deliver(&event, chunk, views),
                    Err(e) => crate::telemetry::loop_failed("stream", &e),
                }
            }
        }
    }

    fn deliver(
        &self,
        event: &EventId,
        chunk: &[(u64, QueueClaims)],
        views: Vec<Option<EntryView>>,
    ) {
        let now = Instant::now();
        let mut events = self.events.lock().expect("lock");
        let Some(e) = events.get_mut(event) else {
            return;
        };
        for ((id, _), view) in chunk.iter().zip(views) {
            let Some(sub) = e.subs.get_mut(id) else {
                continue;
            };
            let push = match view {
                None => Push::Gone,
                Some(v) if matches!(v.state, EntryState::Admitted { .. }) => Push::Admitted(v),
                Some(v) => {
                    sub.due = now + Duration::from_millis(v.pacing.poll_after_ms);
                    if sub.last.as_ref() == Some(&v) {
                        continue;
                    }
                    sub.last = Some(v.clone());
                    Push::Status(v)
                }
            };
            let fin = !matches!(push, Push::Status(_));
            // A full channel means a slow client: skip, it gets the next one.
            let _ = sub.tx.try_send(push);
            if fin {
                e.subs.remove(id);
            }
        }
        if e.subs.is_empty() {
            events.remove(event);
        }
    }

    /// Runs rounds every `every` until shutdown, then ends every stream.
    pub async fn run(self: Arc<Self>, redis: Redis, every: Duration, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            if !self.is_empty() {
                self.round(&redis).await;
            }
        }
        self.closed.store(true, Ordering::SeqCst);
        // Dropping the senders ends every stream, so graceful shutdown
        // does not wait for clients that would stream forever.
        self.events.lock().expect("lock").clear();
    }
}

/// Entries per `stream_status` call: four O(log n) lookups each, so a
/// call stays near a millisecond even with a million waiting.
const STREAM_BATCH: usize = 250;

/// The state of many entries of one event in one round trip (`None` =
/// gone); also their heartbeat.
///
/// # Errors
/// Redis unavailable.
pub async fn statuses(
    redis: &Redis,
    event: &EventId,
    schedules: &[ScheduleId],
    claims: &[&QueueClaims],
) -> Result<Vec<Option<EntryView>>, StoreError> {
    Ok(
        super::entries(redis, &redis::STREAM_STATUS, event, schedules, claims)
            .await?
            .unwrap_or_else(|| vec![None; claims.len()]),
    )
}
