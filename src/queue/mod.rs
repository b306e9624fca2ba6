//! The virtual waiting room.
//!
//! State lives in Redis sorted sets changed only by the scripts in `lua/`
//! (`join_queue`, `queue_status`, `leave_queue`, `admit_tick`,
//! `stream_status`); this module holds their typed wrappers, the pure
//! pacing rules (ETA, poll interval), the in-process fan-out of
//! statuses to streaming clients ([`stream`]) and the admission autopilot
//! that steers the rate by admitted buyers' latency ([`autopilot`]). See `docs/QUEUE.md` for the
//! data structures and why each transition is one script, and
//! `docs/FAIRNESS.md` for the pre-queue.

pub mod autopilot;
pub mod pacing;
pub mod stream;

use serde::Deserialize;

use crate::{
    fair::challenge::Proven,
    ids::{EventId, ScheduleId, UserId},
    store::{Dependency, StoreError, keys::EventKeys, redis, redis::Redis},
    token::QueueClaims,
};

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// In the pre-queue: its place is decided by the draw at `opens_at`.
    Prequeue,
    Waiting {
        position: u64,
    },
    Admitted {
        until_ms: i64,
    },
}

/// Whether anything is left to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The scripts' common reply shape.
#[derive(Debug, Deserialize)]
struct Reply {
    status: String,
    entry: Option<u64>,
    state: Option<String>,
    position: Option<u64>,
    admitted_until: Option<i64>,
    #[serde(default)]
    rate: f64,
    #[serde(default)]
    admit_per_second: u32,
    #[serde(default)]
    paused: u8,
    #[serde(default)]
    idle_timeout_ms: u64,
    #[serde(default)]
    rate_var: f64,
    #[serde(default)]
    sold_out: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    opens_at: i64,
    #[serde(default)]
    prequeue_opens_at: i64,
}

fn decode<T: serde::de::DeserializeOwned>(script: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| {
        StoreError::internal(
            Dependency::Redis,
            anyhow::anyhow!("{script}: bad reply {raw:?}: {e}"),
        )
    })
}

impl Reply {
    fn view(&self, entry: u64) -> Result<EntryView, StoreError> {
        let state = match (self.state.as_deref(), self.position, self.admitted_until) {
            (Some("prequeue"), _, _) => EntryState::Prequeue,
            (Some("waiting"), Some(position), _) => EntryState::Waiting { position },
            (Some("admitted"), _, Some(until_ms)) => EntryState::Admitted { until_ms },
            _ => {
                return Err(StoreError::internal(
                    Dependency::Redis,
                    anyhow::anyhow!("queue reply without a state: {self:?}"),
                ));
            }
        };
        let position = match state {
            EntryState::Waiting { position } => pacing::Place::Waiting(position),
            EntryState::Prequeue => pacing::Place::Prequeue,
            EntryState::Admitted { .. } => pacing::Place::Admitted,
        };
        Ok(EntryView {
            entry,
            state,
            pacing: pacing::pace(pacing::Inputs {
                place: position,
                observed_rate: self.rate,
                rate_sd: self.rate_var.max(0.0).sqrt(),
                admit_per_second: self.admit_per_second,
                paused: self.paused == 1,
                idle_timeout_ms: self.idle_timeout_ms,
            }),
            sold_out: match self.sold_out.as_deref() {
                Some("final") => Some(SoldOut::Final),
                Some("for_now") => Some(SoldOut::ForNow),
                _ => None,
            },
        })
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
pub struct JoinInput<'a> {
    /// The event's schedules (to tell a sold-out event).
    pub schedules: &'a [ScheduleId],
    /// [`crate::fair::draw_score`] of the user under the event's seed;
    /// used only if the join lands in the pre-queue.
    pub draw_score: f64,
    /// A proof of work whose signature and hash checked out, if any.
    pub proof: Option<Proven>,
}

/// Joins the event's queue (or pre-queue), or returns the user's live
/// entry.
///
/// # Errors
/// Unknown event, a refusal (sale window, challenge, sold out), or Redis
/// unavailable.
pub async fn join(
    redis: &Redis,
    event: &EventId,
    user: &UserId,
    input: JoinInput<'_>,
) -> Result<Joined, JoinError> {
    let k = redis.keys().event(event);
    let proof_id = input.proof.as_ref().map_or("", |p| p.id.as_str());
    let mut keys = vec![
        k.config(),
        k.queue_seq(),
        k.queue_waiting(),
        k.queue_polled(),
        k.queue_admitted(),
        k.queue_admitted_entries(),
        k.queue_rate_window(),
        k.queue_stats(),
        k.queue_pre_entries(),
        k.queue_draw(),
        k.challenge_used(if proof_id.is_empty() { "-" } else { proof_id }),
    ];
    keys.extend(input.schedules.iter().map(|s| k.schedule(s)));
    let args = vec![
        user.to_string(),
        crate::fair::score_arg(input.draw_score),
        input.proof.as_ref().map_or(0, |p| p.bits).to_string(),
        input.proof.as_ref().map_or(0, |p| p.expires_ms).to_string(),
        proof_id.to_owned(),
    ];
    let raw = redis.run(&redis::JOIN_QUEUE, keys, args).await?;
    let r: Reply = decode("join_queue", &raw)?;
    match r.status.as_str() {
        "no_event" => Err(QueueError::NoEvent.into()),
        "sale_not_open" => Err(JoinRefused::SaleNotOpen {
            opens_at_ms: r.opens_at,
            prequeue_opens_at_ms: r.prequeue_opens_at,
        }
        .into()),
        "sale_closed" => Err(JoinRefused::SaleClosed.into()),
        "sold_out" => Err(JoinRefused::SoldOut.into()),
        "challenge_failed" => Err(JoinRefused::ChallengeFailed(match r.reason.as_deref() {
            Some("expired") => "expired",
            Some("reused") => "reused",
            _ => "missing",
        })
        .into()),
        "created" | "existing" => {
            let entry = r.entry.ok_or_else(|| {
                StoreError::internal(Dependency::Redis, anyhow::anyhow!("join without entry"))
            })?;
            Ok(Joined {
                created: r.status == "created",
                view: r.view(entry)?,
            })
        }
        other => Err(StoreError::internal(
            Dependency::Redis,
            anyhow::anyhow!("join_queue: status {other}"),
        )
        .into()),
    }
}

/// The keys `queue_status` (after `cfg`) and `leave_queue` take, in order.
fn entry_keys(k: &EventKeys) -> Vec<String> {
    vec![
        k.queue_waiting(),
        k.queue_polled(),
        k.queue_admitted(),
        k.queue_admitted_entries(),
        k.queue_stats(),
        k.queue_pre_entries(),
        k.queue_draw(),
    ]
}

fn entry_args(claims: &QueueClaims) -> Vec<String> {
    vec![claims.entry.to_string(), claims.user.to_string()]
}

/// The entry's current state; also the heartbeat that keeps it alive.
///
/// # Errors
/// Unknown event, gone entry, or Redis unavailable.
pub async fn status(
    redis: &Redis,
    claims: &QueueClaims,
    schedules: &[ScheduleId],
) -> Result<EntryView, QueueError> {
    let k = redis.keys().event(&claims.event);
    let mut keys = vec![k.config()];
    keys.extend(entry_keys(&k));
    keys.extend(schedules.iter().map(|s| k.schedule(s)));
    let raw = redis
        .run(&redis::QUEUE_STATUS, keys, entry_args(claims))
        .await?;
    let r: Reply = decode("queue_status", &raw)?;
    match r.status.as_str() {
        "no_event" => Err(QueueError::NoEvent),
        "gone" => Err(QueueError::Gone),
        "ok" => Ok(r.view(claims.entry)?),
        other => Err(StoreError::internal(
            Dependency::Redis,
            anyhow::anyhow!("queue_status: status {other}"),
        )
        .into()),
    }
}

/// Leaves the queue; `Ok(false)` when the entry was already gone.
///
/// # Errors
/// Redis unavailable.
pub async fn leave(redis: &Redis, claims: &QueueClaims) -> Result<bool, QueueError> {
    let k = redis.keys().event(&claims.event);
    let mut keys = entry_keys(&k);
    keys.push(k.config());
    let raw = redis
        .run(&redis::LEAVE_QUEUE, keys, entry_args(claims))
        .await?;
    let r: Reply = decode("leave_queue", &raw)?;
    Ok(r.status == "left")
}

/// What one admission step did.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Tick {
    pub status: String,
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

/// Entries swept for idleness, expired or admitted per step at most.
const TICK_BATCH: u32 = 1_000;

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
    let k: EventKeys = redis.keys().event(event);
    let keys = vec![
        k.config(),
        k.queue_waiting(),
        k.queue_polled(),
        k.queue_admitted(),
        k.queue_admitted_entries(),
        k.queue_rate_window(),
        k.queue_stats(),
        k.queue_pre_entries(),
        k.queue_draw(),
    ];
    let raw = redis
        .run(
            &redis::ADMIT_TICK,
            keys,
            vec![min_interval_ms.to_string(), TICK_BATCH.to_string()],
        )
        .await?;
    decode("admit_tick", &raw)
}

/// Live figures of one event's waiting room.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Figures {
    #[serde(skip_serializing)]
    #[allow(dead_code)]
    status: String,
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
    let k = redis.keys().event(event);
    let keys = vec![
        k.config(),
        k.queue_waiting(),
        k.queue_admitted(),
        k.queue_stats(),
    ];
    let raw = redis.run(&redis::QUEUE_FIGURES, keys, vec![]).await?;
    // `no_event` carries no figures: decode the status first.
    #[derive(Deserialize)]
    struct Status {
        status: String,
    }
    if decode::<Status>("queue_figures", &raw)?.status == "no_event" {
        return Err(QueueError::NoEvent);
    }
    Ok(decode("queue_figures", &raw)?)
}
