//! The typed replies of the queue scripts (`lua/*.lua` run after
//! `lua/lib/queue.lua`), decoded by [`crate::store::reply`]: every status
//! a script can send is a variant, so no status is matched as a string.

use serde::Deserialize;

use super::{EntryState, EntryView, SoldOut, pacing};

/// The event-wide figures every entry reply carries, for pacing.
#[derive(Debug, Deserialize)]
pub(super) struct Pace {
    #[serde(default)]
    rate: f64,
    #[serde(default)]
    rate_var: f64,
    #[serde(default)]
    admit_per_second: u32,
    #[serde(default)]
    paused: u8,
    #[serde(default)]
    idle_timeout_ms: u64,
    #[serde(default)]
    sold_out: Option<SoldOut>,
}

impl Pace {
    /// An entry's view: where it stands, paced by these figures.
    pub(super) fn view(&self, entry: u64, state: EntryState) -> EntryView {
        let place = match state {
            EntryState::Waiting { position } => pacing::Place::Waiting(position),
            EntryState::Prequeue => pacing::Place::Prequeue,
            EntryState::Admitted { .. } => pacing::Place::Admitted,
        };
        EntryView {
            entry,
            state,
            pacing: pacing::pace(pacing::Inputs {
                place,
                observed_rate: self.rate,
                rate_sd: self.rate_var.max(0.0).sqrt(),
                admit_per_second: self.admit_per_second,
                paused: self.paused == 1,
                idle_timeout_ms: self.idle_timeout_ms,
            }),
            sold_out: self.sold_out,
        }
    }
}

/// A live entry's place (`state` and its field) and the pacing figures.
#[derive(Debug, Deserialize)]
pub(super) struct Standing {
    #[serde(flatten)]
    pub state: EntryState,
    #[serde(flatten)]
    pub pace: Pace,
}

/// A joined entry: its number and where it stands.
#[derive(Debug, Deserialize)]
pub(super) struct JoinedEntry {
    pub entry: u64,
    #[serde(flatten)]
    pub standing: Standing,
}

/// `join_queue`'s reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum JoinReply {
    NoEvent,
    SaleNotOpen {
        #[serde(default)]
        opens_at: i64,
        #[serde(default)]
        prequeue_opens_at: i64,
    },
    SaleClosed,
    SoldOut,
    ChallengeFailed {
        reason: ChallengeFailure,
    },
    Created(JoinedEntry),
    Existing(JoinedEntry),
}

/// Why `join_queue` refused a proof of work.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum ChallengeFailure {
    Missing,
    Expired,
    Reused,
}

impl ChallengeFailure {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Expired => "expired",
            Self::Reused => "reused",
        }
    }
}

/// `queue_status`'s reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum StatusReply {
    NoEvent,
    Gone,
    Ok(Standing),
}

/// `leave_queue`'s reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum LeaveReply {
    Left,
    Gone,
}

/// `queue_figures`' reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum FiguresReply {
    NoEvent,
    Ok(super::Figures),
}

/// `stream_status`' reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum StreamReply {
    NoEvent,
    Ok(Batch),
}

/// The entries `stream_status` looked up, in the order asked.
#[derive(Debug, Deserialize)]
pub(super) struct Batch {
    #[serde(flatten)]
    pub pace: Pace,
    #[serde(default)]
    pub entries: Vec<BatchEntry>,
}

/// One entry of a [`Batch`] (short field names: up to 250 per reply).
#[derive(Debug, Deserialize)]
#[serde(tag = "s", rename_all = "snake_case")]
pub(super) enum BatchEntry {
    Prequeue,
    Waiting { p: u64 },
    Admitted { u: i64 },
    Gone,
}

impl BatchEntry {
    /// Where the entry stands; `None` when it is gone.
    pub(super) fn state(&self) -> Option<EntryState> {
        match *self {
            Self::Prequeue => Some(EntryState::Prequeue),
            Self::Waiting { p } => Some(EntryState::Waiting { position: p }),
            Self::Admitted { u } => Some(EntryState::Admitted { until_ms: u }),
            Self::Gone => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{redis, reply::decode_reply};

    #[test]
    fn entry_replies_decode_their_state_and_pacing() {
        let raw = br#"{"status":"created","entry":12,"state":"waiting","position":3,
            "rate":2.5,"rate_var":0,"admit_per_second":5,"paused":0,"idle_timeout_ms":60000,
            "now_ms":1,"sold_out":"for_now"}"#;
        let JoinReply::Created(j) = decode_reply(&redis::JOIN_QUEUE, raw).unwrap() else {
            panic!("not created");
        };
        let view = j.standing.pace.view(j.entry, j.standing.state);
        assert_eq!(view.entry, 12);
        assert_eq!(view.state, EntryState::Waiting { position: 3 });
        assert_eq!(view.sold_out, Some(SoldOut::ForNow));
        let raw = br#"{"status":"ok","state":"admitted","admitted_until":77,"sold_out":null}"#;
        let StatusReply::Ok(s) = decode_reply(&redis::QUEUE_STATUS, raw).unwrap() else {
            panic!("not ok");
        };
        assert_eq!(s.state, EntryState::Admitted { until_ms: 77 });
        let raw = br#"{"status":"ok","rate":1,"entries":[{"s":"gone"},{"s":"waiting","p":4}]}"#;
        let StreamReply::Ok(b) = decode_reply(&redis::STREAM_STATUS, raw).unwrap() else {
            panic!("not ok");
        };
        let states: Vec<_> = b.entries.iter().map(BatchEntry::state).collect();
        assert_eq!(
            states,
            vec![None, Some(EntryState::Waiting { position: 4 })]
        );
    }
}
