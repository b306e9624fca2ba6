//! The virtual waiting room.
//!
//! State lives in Redis sorted sets changed only by the scripts in `lua/`
//! (`join_queue`, `queue_status`, `leave_queue`, `admit_tick`,
//! `stream_status`, all run after the prelude `lua/lib/queue.lua`); this
//! module holds their typed wrappers (`reply`: their typed replies), the pure
//! pacing rules (ETA, poll interval), joins and status polls coalesced
//! into one call per event and batch ([`coalesce`]), the in-process fan-out of
//! statuses to streaming clients ([`stream`]) and the admission autopilot
//! that steers the rate by admitted buyers' latency ([`autopilot`]). See `docs/QUEUE.md` for the
//! data structures and why each transition is one script, and
//! `docs/FAIRNESS.md` for the pre-queue.

pub mod autopilot;
pub mod coalesce;
pub mod pacing;
mod reply;
pub mod stream;

use std::sync::Arc;

use serde::Deserialize;

use self::reply::{EntriesReply, FiguresReply, JoinAnswer, JoinReply, LeaveReply, LiveReply};
use crate::{
    fair::challenge::Proven,
    ids::{EventId, ScheduleId},
    store::{StoreError, coalesce::one_each, redis, redis::Redis},
    token::QueueClaims,
};

/// Where an entry stands (as the scripts write it: `state` and its field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EntryState {
    /// In the pre-queue: its place is decided by the draw at `opens_at`.
    Prequeue,
    Waiting {
        position: u64,
    },
    Admitted {
        #[serde(rename = "admitted_until")]
        until_ms: i64,
    },
}

/// Whether anything is left to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SoldOut {
    /// No free seat and none held: nothing can come back.
    Final,
    /// No free seat, but some are held and may come back.
    ForNow,
}

impl SoldOut {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Final => "final",
            Self::ForNow => "for_now",
        }
    }
}

/// An entry's state plus what is needed to pace the client.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryView {
    pub entry: u64,
    pub state: EntryState,
    pub pacing: pacing::Pacing,
    pub sold_out: Option<SoldOut>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no such event")]
    NoEvent,
    #[error("the queue entry is gone")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a join was refused (besides [`QueueError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("the sale is not open yet")]
    SaleNotOpen {
        opens_at_ms: i64,
        prequeue_opens_at_ms: i64,
    },
    #[error("the sale is closed")]
    SaleClosed,
    /// `missing`, `expired` or `reused`.
    #[error("challenge {0}")]
    ChallengeFailed(&'static str),
    #[error("sold out")]
    SoldOut,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Refused(#[from] JoinRefused),
}

impl From<StoreError> for JoinError {
    fn from(e: StoreError) -> Self {
        Self::Queue(QueueError::Store(e))
    }
}

/// Outcome of a join.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// False when the user already had a live entry (same place).
    pub created: bool,
    pub view: EntryView,
}

/// What a join needs besides the event and the user.
#[derive(Debug, Clone)]
pub struct JoinInput {
    /// The event's schedules (to tell a sold-out event).
    pub schedules: Arc<Vec<ScheduleId>>,
    /// [`crate::fair::draw_score`] of the user under the event's seed;
    /// used only if the join lands in the pre-queue.
    pub draw_score: f64,
    /// A proof of work whose signature and hash checked out, if any.
    pub proof: Option<Proven>,
}

/// Joins the event's queue (or pre-queue), or returns each user's live
/// entry: many joins in one script call, each decided as if alone, in
/// order ([`coalesce`] gathers them). One answer per join: a refusal
/// (sale window, challenge, sold out), an unknown event or Redis
/// unavailable are answers too.
pub async fn joins(
    redis: &Redis,
    event: &EventId,
    joins: &[coalesce::JoinRequest],
) -> Vec<Result<Joined, JoinError>> {
    let k = redis.keys().event(event);
    let mut keys = k.queue_keys();
    let mut args = Vec::with_capacity(1 + 5 * joins.len());
    args.push(joins.len().to_string());
    for j in joins {
        let proof = j.input.proof.as_ref();
        let proof_id = proof.map_or("", |p| p.id.as_str());
        keys.push(k.challenge_used(if proof_id.is_empty() { "-" } else { proof_id }));
        args.extend([
            j.user.to_string(),
            crate::fair::score_arg(j.input.draw_score),
            proof.map_or(0, |p| p.bits).to_string(),
            proof.map_or(0, |p| p.expires_ms).to_string(),
            proof_id.to_owned(),
        ]);
    }
    if let Some(first) = joins.first() {
        keys.extend(first.input.schedules.iter().map(|s| k.schedule(s)));
    }
    let every = |answer: &dyn Fn() -> JoinError| joins.iter().map(|_| Err(answer())).collect();
    let batch = match redis.eval_json(&redis::JOIN_QUEUE, keys, args).await {
        Ok(JoinReply::Ok(batch)) => batch,
        Ok(JoinReply::NoEvent) => return every(&|| QueueError::NoEvent.into()),
        Ok(JoinReply::SaleNotOpen {
            opens_at,
            prequeue_opens_at,
        }) => {
            return every(&|| {
                JoinRefused::SaleNotOpen {
                    opens_at_ms: opens_at,
                    prequeue_opens_at_ms: prequeue_opens_at,
                }
                .into()
            });
        }
        Ok(JoinReply::SaleClosed) => return every(&|| JoinRefused::SaleClosed.into()),
        Err(e) => return every(&|| e.duplicate().into()),
    };
    if let Err(e) = one_each(&redis::JOIN_QUEUE, batch.joins.len(), joins.len()) {
        return every(&|| e.duplicate().into());
    }
    batch
        .joins
        .into_iter()
        .map(|j| {
            Ok(match j {
                JoinAnswer::Created(e) => Joined {
                    created: true,
                    view: batch.pace.view(e.entry, e.state),
                },
                JoinAnswer::Existing(e) => Joined {
                    created: false,
                    view: batch.pace.view(e.entry, e.state),
                },
                JoinAnswer::SoldOut => return Err(JoinRefused::SoldOut.into()),
                JoinAnswer::ChallengeFailed(reason) => {
                    return Err(JoinRefused::ChallengeFailed(reason.as_str()).into());
                }
            })
        })
        .collect()
}

fn entry_args(claims: &QueueClaims) -> Vec<String> {
    vec![claims.entry.to_string(), claims.user.to_string()]
}

/// Many entries of one event in one call of `script` (`queue_status` or
/// `stream_status`, whose replies have one shape): `None` when the event
/// is gone, else each entry's view in the order given (`None`: gone).
///
/// # Errors
/// Redis unavailable.
async fn entries(
    redis: &Redis,
    script: &redis::Script,
    event: &EventId,
    schedules: &[ScheduleId],
    claims: &[&QueueClaims],
) -> Result<Option<Vec<Option<EntryView>>>, StoreError> {
    let k = redis.keys().event(event);
    let mut keys = k.queue_keys();
    keys.extend(schedules.iter().map(|s| k.schedule(s)));
    let mut args = Vec::with_capacity(claims.len() * 2);
    for c in claims {
        args.push(c.user.to_string());
        args.push(c.entry.to_string());
    }
    let batch = match redis.eval_json(script, keys, args).await? {
        EntriesReply::Ok(batch) => batch,
        EntriesReply::NoEvent => return Ok(None),
    };
    one_each(script, batch.entries.len(), claims.len())?;
    Ok(Some(
        claims
            .iter()
            .zip(batch.entries)
            .map(|(c, e)| Some(batch.pace.view(c.entry, e.state()?)))
            .collect(),
    ))
}

/// Whether the entry `claims` names is still live (waiting, or admitted
/// and within its admission); a read, no heartbeat.
///
/// # Errors
/// Redis unavailable.
pub async fn entry_live(redis: &Redis, claims: &QueueClaims) -> Result<bool, QueueError> {
    let keys = redis.keys().event(&claims.event).queue_keys();
    let r = redis
        .eval_json(&redis::ENTRY_LIVE, keys, entry_args(claims))
        .await?;
    Ok(matches!(r, LiveReply::Live))
}

/// Leaves the queue; `Ok(false)` when the entry was already gone.
///
/// # Errors
/// Redis unavailable.
pub async fn leave(redis: &Redis, claims: &QueueClaims) -> Result<bool, QueueError> {
    let keys = redis.keys().event(&claims.event).queue_keys();
    let r = redis
        .eval_json(&redis::LEAVE_QUEUE, keys, entry_args(claims))
        .await?;
    Ok(matches!(r, LeaveReply::Left))
}

/// What `admit_tick.lua` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TickStatus {
    /// The event is not in Redis: nothing to report.
    NoEvent,
    /// Another instance ticked less than the minimum interval ago; only
    /// the figures (waiting, active, rate) are filled.
    Skipped,
    #[default]
    Ticked,
}

/// What one admission step did (`admit_tick.lua`'s reply).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Tick {
    pub status: TickStatus,
    #[serde(default)]
    pub admitted: u64,
    #[serde(default)]
    pub evicted: u64,
    #[serde(default)]
    pub expired: u64,
    /// Admitted users released for being silent past the idle timeout.
    #[serde(default)]
    pub released: u64,
    #[serde(default)]
    pub waiting: u64,
    #[serde(default)]
    pub active: u64,
    #[serde(default)]
    pub rate: f64,
}

/// Entries expired or admitted per step at most.
const TICK_BATCH: u32 = 1_000;

/// Entries each sweep for idleness (waiting, admitted) looks at per step.
/// The step blocks Redis while it runs, and with a long line the sweep is
/// most of it: at 1,000 a step over a million waiting took 2–7 ms, five
/// times a second (docs/BENCHMARKS.md, the pre-queue's slow log), which
/// every status poll arriving meanwhile waited out. At 250 the line is
/// swept at 1,250 entries a second per ticking instance (5 steps a second
/// at the default 200 ms tick, 10 at most across instances).
const SWEEP_BATCH: u32 = 250;

/// Runs one admission step. Safe from every instance at once: the script
/// skips if another instance ticked less than `min_interval_ms` ago.
///
/// # Errors
/// Redis unavailable.
pub async fn tick(
    redis: &Redis,
    event: &EventId,
    min_interval_ms: u64,
) -> Result<Tick, StoreError> {
    let keys = redis.keys().event(event).queue_keys();
    redis
        .eval_json(
            &redis::ADMIT_TICK,
            keys,
            vec![
                min_interval_ms.to_string(),
                TICK_BATCH.to_string(),
                SWEEP_BATCH.to_string(),
            ],
        )
        .await
}

/// Live figures of one event's waiting room.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Figures {
    pub waiting: u64,
    pub admitted_now: u64,
    pub admitted_total: u64,
    pub joined_total: u64,
    pub evicted_total: u64,
    pub expired_total: u64,
    pub left_total: u64,
    /// Observed admissions per second (moving average over ~10 s).
    #[serde(rename(serialize = "admission_rate"))]
    #[schema(rename = "admission_rate")]
    pub rate: f64,
    /// Highest number of admitted entries ever seen at once.
    #[serde(default)]
    pub peak_active: u64,
    /// Entries in the pre-queue (part of `waiting`).
    #[serde(default)]
    pub prequeue: u64,
    /// The admission mode, the rate in use and admitted buyers' p99 (from
    /// the autopilot's last step on this instance, not from the script).
    #[serde(flatten, skip_deserializing)]
    pub autopilot: autopilot::Figures,
}

/// # Errors
/// Unknown event, or Redis unavailable.
pub async fn figures(redis: &Redis, event: &EventId) -> Result<Figures, QueueError> {
    let keys = redis.keys().event(event).queue_keys();
    match redis.eval_json(&redis::QUEUE_FIGURES, keys, vec![]).await? {
        FiguresReply::Ok(f) => Ok(f),
        FiguresReply::NoEvent => Err(QueueError::NoEvent),
    }
}
