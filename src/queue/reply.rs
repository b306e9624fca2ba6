//! The typed replies of the queue scripts (`lua/*.lua` run after
//! `lua/lib/queue.lua`), decoded by [`crate::store::reply`]: every status
//! a script can send is a variant, so no status is matched as a string.

use serde::Deserialize;

use super::{EntryState, EntryView, SoldOut, pacing};

/// The event-wide figures every entry reply carries, for pacing.
#[derive(Debug)]
pub(super) struct Pace {
    rate: f64,
    rate_var: f64,
    admit_per_second: u32,
    paused: u8,
    idle_timeout_ms: u64,
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

/// A joined entry: its number and where it stands.
#[derive(Debug)]
pub(super) struct JoinedEntry {
    pub entry: u64,
    pub state: EntryState,
}

/// Every field an entry reply (`join_queue`, `queue_status`,
/// `stream_status`) may carry at its top level, flat, so serde decodes it
/// in one pass; [`JoinReply`] and [`EntriesReply`] are built from it by
/// hand. (Derived internally tagged and flattened enums first copy the
/// whole map into an intermediate tree: that showed in the status route's
/// profile, the busiest route of a surge.)
#[derive(Deserialize)]
struct EntryWire {
    status: EntryStatus,
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
    #[serde(default)]
    opens_at: i64,
    #[serde(default)]
    prequeue_opens_at: i64,
    #[serde(default)]
    entries: Vec<BatchEntry>,
    #[serde(default)]
    joins: Vec<JoinAnswer>,
}

/// Every `status` an entry reply may have.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EntryStatus {
    NoEvent,
    Ok,
    Created,
    Existing,
    SaleNotOpen,
    SaleClosed,
    SoldOut,
    ChallengeFailed,
}

/// `state` of a live entry.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StateTag {
    Prequeue,
    Waiting,
    Admitted,
}

impl EntryWire {
    fn pace(&self) -> Pace {
        Pace {
            rate: self.rate,
            rate_var: self.rate_var,
            admit_per_second: self.admit_per_second,
            paused: self.paused,
            idle_timeout_ms: self.idle_timeout_ms,
            sold_out: self.sold_out,
        }
    }
}

/// `join_queue`'s reply: about the whole call, or one answer per join.
#[derive(Debug, Deserialize)]
#[serde(try_from = "EntryWire")]
pub(super) enum JoinReply {
    NoEvent,
    SaleNotOpen {
        opens_at: i64,
        prequeue_opens_at: i64,
    },
    SaleClosed,
    Ok(JoinBatch),
}

impl TryFrom<EntryWire> for JoinReply {
    type Error = String;

    fn try_from(w: EntryWire) -> Result<Self, String> {
        Ok(match w.status {
            EntryStatus::NoEvent => Self::NoEvent,
            EntryStatus::SaleNotOpen => Self::SaleNotOpen {
                opens_at: w.opens_at,
                prequeue_opens_at: w.prequeue_opens_at,
            },
            EntryStatus::SaleClosed => Self::SaleClosed,
            EntryStatus::Ok => Self::Ok(JoinBatch {
                pace: w.pace(),
                joins: w.joins,
            }),
            other => return Err(format!("join_queue cannot answer {other:?}")),
        })
    }
}

/// The joins one `join_queue` call decided, in the order given.
#[derive(Debug)]
pub(super) struct JoinBatch {
    pub pace: Pace,
    pub joins: Vec<JoinAnswer>,
}

/// One join's answer.
#[derive(Debug, Deserialize)]
#[serde(try_from = "JoinWire")]
pub(super) enum JoinAnswer {
    Created(JoinedEntry),
    Existing(JoinedEntry),
    SoldOut,
    ChallengeFailed(ChallengeFailure),
}

/// Every field a join's answer may carry, flat (see [`EntryWire`]).
#[derive(Deserialize)]
struct JoinWire {
    status: EntryStatus,
    entry: Option<u64>,
    state: Option<StateTag>,
    position: Option<u64>,
    admitted_until: Option<i64>,
    reason: Option<ChallengeFailure>,
}

impl TryFrom<JoinWire> for JoinAnswer {
    type Error = String;

    fn try_from(w: JoinWire) -> Result<Self, String> {
        let joined = |w: &JoinWire| -> Result<JoinedEntry, String> {
            Ok(JoinedEntry {
                entry: w.entry.ok_or("a joined entry without its number")?,
                state: live_state(
                    w.state.ok_or("a live entry without its state")?,
                    w.position,
                    w.admitted_until,
                )?,
            })
        };
        Ok(match w.status {
            EntryStatus::Created => Self::Created(joined(&w)?),
            EntryStatus::Existing => Self::Existing(joined(&w)?),
            EntryStatus::SoldOut => Self::SoldOut,
            EntryStatus::ChallengeFailed => {
                Self::ChallengeFailed(w.reason.ok_or("challenge_failed without its reason")?)
            }
            other => return Err(format!("a join cannot be answered {other:?}")),
        })
    }
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

/// `leave_queue`'s reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum LeaveReply {
    Left,
    Gone,
}

/// `entry_live`'s reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum LiveReply {
    Live,
    Gone,
}

/// `queue_figures`' reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum FiguresReply {
    NoEvent,
    Ok(super::Figures),
}

/// The reply of `queue_status` and `stream_status`: many entries at once.
#[derive(Debug, Deserialize)]
#[serde(try_from = "EntryWire")]
pub(super) enum EntriesReply {
    NoEvent,
    Ok(Batch),
}

impl TryFrom<EntryWire> for EntriesReply {
    type Error = String;

    fn try_from(w: EntryWire) -> Result<Self, String> {
        Ok(match w.status {
            EntryStatus::NoEvent => Self::NoEvent,
            EntryStatus::Ok => Self::Ok(Batch {
                pace: w.pace(),
                entries: w.entries,
            }),
            other => return Err(format!("an entries reply cannot answer {other:?}")),
        })
    }
}

/// The entries a script looked up, in the order asked.
#[derive(Debug)]
pub(super) struct Batch {
    pub pace: Pace,
    pub entries: Vec<BatchEntry>,
}

/// A live entry's state from its tag and the field that tag needs
/// (`join_queue`'s and the entries replies' shared rule).
fn live_state(
    tag: StateTag,
    position: Option<u64>,
    admitted_until: Option<i64>,
) -> Result<EntryState, String> {
    Ok(match tag {
        StateTag::Prequeue => EntryState::Prequeue,
        StateTag::Waiting => EntryState::Waiting {
            position: position.ok_or("waiting without its position")?,
        },
        StateTag::Admitted => EntryState::Admitted {
            until_ms: admitted_until.ok_or("admitted without admitted_until")?,
        },
    })
}

/// One entry of a [`Batch`]: where it stands, `None` when it is gone.
/// Short field names on the wire (up to 250 per reply), decoded flat like
/// [`EntryWire`].
#[derive(Debug, Deserialize)]
#[serde(try_from = "BatchEntryWire")]
pub(super) struct BatchEntry(Option<EntryState>);

#[derive(Deserialize)]
struct BatchEntryWire {
    s: BatchTag,
    p: Option<u64>,
    u: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum BatchTag {
    Prequeue,
    Waiting,
    Admitted,
    Gone,
}

impl TryFrom<BatchEntryWire> for BatchEntry {
    type Error = String;

    fn try_from(w: BatchEntryWire) -> Result<Self, String> {
        let tag = match w.s {
            BatchTag::Prequeue => StateTag::Prequeue,
            BatchTag::Waiting => StateTag::Waiting,
            BatchTag::Admitted => StateTag::Admitted,
            BatchTag::Gone => return Ok(Self(None)),
        };
        Ok(Self(Some(live_state(tag, w.p, w.u)?)))
    }
}

impl BatchEntry {
    /// Where the entry stands; `None` when it is gone.
    pub(super) fn state(&self) -> Option<EntryState> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{redis, reply::decode_reply};

    #[test]
    fn entry_replies_decode_their_state_and_pacing() {
        let raw = br#"{"status":"ok","rate":2.5,"rate_var":0,"admit_per_second":5,"paused":0,
            "idle_timeout_ms":60000,"now_ms":1,"sold_out":"for_now","joins":[
            {"status":"created","entry":12,"state":"waiting","position":3},
            {"status":"existing","entry":7,"state":"admitted","admitted_until":99},
            {"status":"challenge_failed","reason":"reused"},{"status":"sold_out"}]}"#;
        let JoinReply::Ok(b) = decode_reply(&redis::JOIN_QUEUE, raw).unwrap() else {
            panic!("not ok");
        };
        let [
            JoinAnswer::Created(created),
            JoinAnswer::Existing(existing),
            JoinAnswer::ChallengeFailed(ChallengeFailure::Reused),
            JoinAnswer::SoldOut,
        ] = &b.joins[..]
        else {
            panic!("{:?}", b.joins);
        };
        let view = b.pace.view(created.entry, created.state);
        assert_eq!(view.entry, 12);
        assert_eq!(view.state, EntryState::Waiting { position: 3 });
        assert_eq!(view.sold_out, Some(SoldOut::ForNow));
        assert_eq!(existing.state, EntryState::Admitted { until_ms: 99 });
        let raw =
            br#"{"status":"ok","joins":[{"status":"created","state":"waiting","position":3}]}"#;
        assert!(
            decode_reply::<JoinReply>(&redis::JOIN_QUEUE, raw).is_err(),
            "a created entry without its number"
        );
        let raw = br#"{"status":"ok","rate":1,"sold_out":null,"entries":[{"s":"gone"},
            {"s":"waiting","p":4},{"s":"admitted","u":77},{"s":"prequeue"}]}"#;
        let EntriesReply::Ok(b) = decode_reply(&redis::QUEUE_STATUS, raw).unwrap() else {
            panic!("not ok");
        };
        let states: Vec<_> = b.entries.iter().map(BatchEntry::state).collect();
        assert_eq!(
            states,
            vec![
                None,
                Some(EntryState::Waiting { position: 4 }),
                Some(EntryState::Admitted { until_ms: 77 }),
                Some(EntryState::Prequeue),
            ]
        );
        let raw = br#"{"status":"ok","entries":[{"s":"waiting"}]}"#;
        assert!(decode_reply::<EntriesReply>(&redis::STREAM_STATUS, raw).is_err());
    }
}
