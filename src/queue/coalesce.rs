//! The waiting room's two busiest calls, coalesced per event
//! ([`crate::store::coalesce`]): every arriving buyer joins
//! (`POST /v1/events/{e}/queue`) and every waiting buyer polls
//! (`GET /v1/queue/status`). Each request in a call is decided as if
//! alone, in arrival order (`lua/join_queue.lua`, `lua/queue_status.lua`).

use std::sync::Arc;

use super::{EntryView, JoinError, JoinInput, Joined, QueueError};
use crate::{
    ids::{EventId, ScheduleId, UserId},
    store::{
        coalesce::{Batch, unavailable},
        redis::{self, Redis},
    },
    token::QueueClaims,
};

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
    type Key = EventId;
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
    type Key = EventId;
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
