//! The script-invariant checker: runs `lua/check_schedule.lua`, which
//! checks the invariants written at the top of `lua/lib/schedule.lua`
//! (counters equal the seats hash, bitmaps equal seat presence, every hold
//! has a deadline and back, seats within 1..N, per-user counts) on one
//! schedule. Used by `boxoffice audit` and at the end of the hold and
//! payment tests. Read-only; it does not even expire due holds.

use serde::Deserialize;
use uuid::Uuid;

use super::{HoldError, reply::OperatorReply};
use crate::{
    ids::{EventId, ScheduleId},
    store::redis::{CHECK_SCHEDULE, Redis},
};

/// One broken invariant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Violation {
    /// Stable name: `seat_range`, `seat_value`, `held_counter`,
    /// `sold_counter`, `uheld`, `map_bits`, `sold_bits`, `hold_deadline`,
    /// `deadline_hold`, `hold_record`, `seat_owner`, `max_per_user`.
    pub check: String,
    pub detail: String,
}

/// How many objects the checker looked at.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Counts {
    pub seats: u64,
    pub holds: u64,
    pub held: u64,
    pub sold: u64,
    pub users: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Total {
    pub check: String,
    pub count: u64,
}

/// What the checker found on one schedule.
#[derive(Debug, Clone, Deserialize)]
pub struct ScheduleCheck {
    /// Redis `TIME` when the check ran (ms).
    pub now: i64,
    /// N: seats are numbered 1..N.
    pub seats: u32,
    pub max_per_user: Option<u32>,
    pub price: Option<String>,
    pub hold_ms: u64,
    pub counts: Counts,
    /// The broken invariants (at most 50 listed per check).
    pub violations: Vec<Violation>,
    /// Exact count per failed check.
    pub totals: Vec<Total>,
    /// Every sold seat with the payment id Redis has for it.
    pub sold: Vec<(u32, String)>,
    /// Every *paying* hold: (hold number, created ms, deadline ms).
    pub paying: Vec<(u64, i64, i64)>,
}

impl ScheduleCheck {
    /// The sold seats with their Redis payment ids parsed (`None` for a
    /// value that is not a UUID).
    pub fn sold_payments(&self) -> impl Iterator<Item = (u32, Option<Uuid>)> + '_ {
        self.sold.iter().map(|(s, p)| (*s, p.parse().ok()))
    }
}

/// Checks one schedule's script invariants.
///
/// # Errors
/// `NoSchedule` when the schedule is not loaded in Redis; Redis unavailable.
pub async fn check_schedule(
    redis: &Redis,
    event: &EventId,
    schedule: &ScheduleId,
) -> Result<ScheduleCheck, HoldError> {
    let k = redis.keys().event(event);
    let mut keys = k.schedule_keys(schedule);
    keys.push(k.sold_map(schedule));
    match redis.eval_json(&CHECK_SCHEDULE, keys, vec![]).await? {
        OperatorReply::Ok(check) => Ok(check),
        OperatorReply::NoSchedule => Err(HoldError::NoSchedule),
    }
}
