//! The typed replies of the schedule scripts (`lua/*.lua` run after
//! `lua/lib/schedule.lua`), one per script family, decoded by
//! [`crate::store::reply`]: every status a family can send is a variant,
//! so no status is ever matched as a string.
//!
//! - [`HoldReply`]: the scripts a buyer calls (place, read, release, pay
//!   for a hold; seat map, schedule overview): the answer or a refusal.
//! - [`OperatorReply`]: the scripts the operators, the audit and the
//!   background loops call on a schedule (sold seats, sweep, check,
//!   refund, cancel): the answer or `no_schedule`.
//! - [`ConfirmReply`] and [`super::Aborted`]: the payment's last steps.
//!
//! [`Swept`] wraps each of them: the holds the script expired on its way.

use rust_decimal::Decimal;
use serde::Deserialize;

use super::{HoldError, HoldState};

/// A schedule script's reply plus the holds it expired lazily on its way
/// (every reply but the early refusals carries them).
#[derive(Debug, Deserialize)]
pub(super) struct Swept<R> {
    #[serde(flatten)]
    reply: R,
    #[serde(default)]
    expired: u64,
    #[serde(default)]
    expired_paying: u64,
}

impl<R> Swept<R> {
    /// Counts the expired holds (`boxoffice_holds_expired_total`) and
    /// returns the reply.
    pub(super) fn counted(self) -> R {
        if self.expired > 0 {
            metrics::counter!("boxoffice_holds_expired_total", "state" => "held")
                .increment(self.expired - self.expired_paying.min(self.expired));
        }
        if self.expired_paying > 0 {
            metrics::counter!("boxoffice_holds_expired_total", "state" => "paying")
                .increment(self.expired_paying);
        }
        self.reply
    }

    /// How many holds the script expired.
    pub(super) fn expired(&self) -> u64 {
        self.expired
    }
}

/// The reply of a script a buyer calls: `T` is its answer (status `ok`,
/// or `released` for `release_hold`), the other variants the refusals.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum HoldReply<T> {
    #[serde(alias = "released")]
    Ok(T),
    NoSchedule,
    Restoring,
    Cancelled,
    NotAdmitted {
        position: Option<u64>,
    },
    QueueGone,
    Gone,
    Forbidden,
    Paying,
    Invalid {
        reason: Invalid,
        #[serde(default)]
        seats: Vec<u32>,
    },
    Limit {
        max_per_user: u32,
        held: u32,
        bought: u32,
        requested: u32,
    },
    Unavailable {
        seats: Vec<u32>,
    },
    /// The hold's `Idempotency-Key` made a hold for another request.
    KeyReused,
    /// The payment attempt was given up (`abort_payment`'s bar).
    Barred,
}

/// Why a script found its request invalid.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Invalid {
    /// `seats` names the seats past the schedule's last.
    SeatOutOfRange,
    CountTooLarge,
}

impl<T> HoldReply<T> {
    /// The answer, or the refusal as a [`HoldError`].
    pub(super) fn into_result(self) -> Result<T, HoldError> {
        Err(match self {
            Self::Ok(t) => return Ok(t),
            Self::NoSchedule => HoldError::NoSchedule,
            Self::Restoring => HoldError::Restoring,
            Self::Cancelled => HoldError::Cancelled,
            Self::NotAdmitted { position } => HoldError::NotAdmitted { position },
            Self::QueueGone => HoldError::QueueGone,
            Self::Gone => HoldError::Gone,
            Self::Forbidden => HoldError::Forbidden,
            Self::Paying => HoldError::Paying,
            Self::Barred => HoldError::Barred,
            Self::Invalid {
                reason: Invalid::SeatOutOfRange,
                seats,
            } => HoldError::Invalid(format!("seats out of range for this schedule: {seats:?}")),
            Self::Invalid {
                reason: Invalid::CountTooLarge,
                ..
            } => HoldError::Invalid("count is larger than the schedule".into()),
            Self::Limit {
                max_per_user,
                held,
                bought,
                requested,
            } => HoldError::Limit {
                max_per_user,
                held,
                bought,
                requested,
            },
            Self::Unavailable { seats } => HoldError::Unavailable(seats),
            Self::KeyReused => HoldError::KeyReused,
        })
    }
}

/// The reply of a script that takes no buyer: the answer, or the schedule
/// is not in Redis.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum OperatorReply<T> {
    Ok(T),
    NoSchedule,
}

/// `confirm_sale`'s reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum ConfirmReply {
    Ok(super::Confirmed),
    NoSchedule,
    Invalid {
        reason: Invalid,
        #[serde(default)]
        seats: Vec<u32>,
    },
}

/// `place_hold`'s reply: each hold's answer, in the order asked (an
/// unknown or cancelled schedule answers its own holds), or the whole
/// event not ready.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum PlaceReply {
    Ok { holds: Vec<HoldReply<Placed>> },
    Restoring,
}

impl Swept<PlaceReply> {
    /// `place_hold`'s reply. The derived decoding (`flatten` into
    /// internally tagged enums) buffers the whole reply twice and each hold
    /// once more before anything reaches its struct. A placed hold and a
    /// batch of them are written by hand in `lua/place_hold.lua` with
    /// `status` first, so those are read straight into their structs (which
    /// ignore `status`): 0.37 µs a hold instead of 0.90 in a batch of 11
    /// (docs/bench/surge-17.md, twelfth run). Anything else (a refusal,
    /// keys in another order) takes the derived path, to the same result.
    ///
    /// # Errors
    /// The reply does not decode.
    pub(super) fn decode(raw: &[u8]) -> serde_json::Result<Self> {
        /// The prefix of every reply written by hand as `ok`.
        const OK: &str = r#"{"status":"ok","#;
        #[derive(Deserialize)]
        struct Batch<'a> {
            #[serde(default)]
            expired: u64,
            #[serde(default)]
            expired_paying: u64,
            #[serde(borrow)]
            holds: Vec<&'a serde_json::value::RawValue>,
        }
        if !raw.starts_with(OK.as_bytes()) {
            return serde_json::from_slice(raw);
        }
        let batch: Batch = serde_json::from_slice(raw)?;
        let holds = batch
            .holds
            .into_iter()
            .map(|hold| {
                let hold = hold.get();
                if hold.starts_with(OK) {
                    serde_json::from_str(hold).map(HoldReply::Ok)
                } else {
                    serde_json::from_str(hold)
                }
            })
            .collect::<serde_json::Result<_>>()?;
        Ok(Self {
            reply: PlaceReply::Ok { holds },
            expired: batch.expired,
            expired_paying: batch.expired_paying,
        })
    }
}

/// One hold's answer in `place_hold`'s reply.
#[derive(Debug, Deserialize)]
pub(super) struct Placed {
    pub hold: u64,
    pub seats: Vec<u32>,
    pub adjacent: bool,
    pub deadline: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    /// The hold an earlier request with the same key made, answered again.
    #[serde(default)]
    pub replayed: bool,
}

/// `hold_info`'s answer.
#[derive(Debug, Deserialize)]
pub(super) struct HoldView {
    pub seats: Vec<u32>,
    /// The hold deadline while held, the payment deadline while paying.
    pub deadline: i64,
    pub state: HoldState,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    pub adjacent: bool,
}

/// `release_hold`'s answer: the seats freed.
#[derive(Debug, Deserialize)]
pub(super) struct Released {
    pub seats: Vec<u32>,
}

/// `seat_map`'s JSON head (the bitmaps follow it).
#[derive(Debug, Deserialize)]
pub(super) struct SeatMapHead {
    pub seats_total: u32,
    pub row_size: u32,
    pub available: u32,
}

/// `schedules_overview`'s answer.
#[derive(Debug, Deserialize)]
pub(super) struct Overview {
    pub schedules: Vec<super::ScheduleFigures>,
}

/// `sold_seats`' answer.
#[derive(Debug, Deserialize)]
pub(super) struct Sold {
    pub sold: Vec<u32>,
}

/// `refund_seats`' answer: the seats this call put back on sale.
#[derive(Debug, Deserialize)]
pub(super) struct Freed {
    pub freed: Vec<u32>,
}

/// `cancel_schedule`'s answer.
#[derive(Debug, Deserialize)]
pub(super) struct Dropped {
    pub holds_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{redis, reply::decode_reply};

    fn hold_reply<T: serde::de::DeserializeOwned>(raw: &str) -> HoldReply<T> {
        decode_reply::<Swept<HoldReply<T>>>(&redis::PLACE_HOLD, raw.as_bytes())
            .unwrap()
            .counted()
    }

    #[test]
    fn statuses_decode_to_their_variants_with_their_fields() {
        let placed = hold_reply::<Placed>(
            r#"{"status":"ok","hold":7,"seats":[3,4],"adjacent":true,"deadline":99,
               "price":"12.50","expired":1,"expired_paying":0}"#,
        )
        .into_result()
        .unwrap();
        assert_eq!((placed.hold, placed.seats), (7, vec![3, 4]));
        assert_eq!(placed.price, Decimal::new(1250, 2));
        let released = hold_reply::<Released>(r#"{"status":"released","seats":[5]}"#);
        assert_eq!(released.into_result().unwrap().seats, vec![5]);
        let limit = hold_reply::<Placed>(
            r#"{"status":"limit","max_per_user":4,"held":2,"bought":1,"requested":2}"#,
        );
        assert!(matches!(
            limit.into_result(),
            Err(HoldError::Limit {
                max_per_user: 4,
                held: 2,
                bought: 1,
                requested: 2
            })
        ));
        let waiting = hold_reply::<Placed>(r#"{"status":"not_admitted","position":3}"#);
        assert!(matches!(
            waiting.into_result(),
            Err(HoldError::NotAdmitted { position: Some(3) })
        ));
        let view = hold_reply::<HoldView>(
            r#"{"status":"ok","seats":[1],"deadline":5,"state":"paying","price":"1","adjacent":true}"#,
        );
        assert_eq!(view.into_result().unwrap().state, HoldState::Paying);
    }

    /// `Swept::<PlaceReply>::decode` reads by hand what the derived
    /// decoding would read, and refuses what it would refuse.
    #[test]
    fn place_hold_replies_decode_as_the_derived_decoding_does() {
        let ok =
            r#"{"status":"ok","hold":7,"seats":[3],"adjacent":true,"deadline":99,"price":"5"}"#;
        let reordered =
            r#"{"hold":8,"status":"ok","seats":[4,5],"adjacent":false,"deadline":9,"price":"2.5"}"#;
        let cases = [
            format!(
                r#"{{"status":"ok","expired":2,"expired_paying":1,"holds":[{ok},
                {{"status":"unavailable","seats":[3]}},{{"status":"limit","max_per_user":4,
                "held":2,"bought":1,"requested":2}},{{"status":"queue_gone"}},{reordered}]}}"#
            ),
            format!(r#"{{"status":"ok","holds":[{ok},{ok}]}}"#),
            format!(r#"{{"expired":1,"holds":[{ok}],"status":"ok"}}"#),
            r#"{"status":"ok","holds":[]}"#.into(),
            r#"{"status":"restoring"}"#.into(),
            r#"{"status":"cancelled"}"#.into(),
            r#"{"status":"ok","holds":[{"status":"ok","hold":"x"}]}"#.into(),
            r#"{"status":"ok","holds":[{"status":"made_up"}]}"#.into(),
            r#"{"status":"ok","expired":1}"#.into(),
            r#"{"status":"ok","#.into(),
        ];
        for raw in &cases {
            let derived = decode_reply::<Swept<PlaceReply>>(&redis::PLACE_HOLD, raw.as_bytes());
            let by_hand = Swept::<PlaceReply>::decode(raw.as_bytes());
            assert_eq!(by_hand.is_ok(), derived.is_ok(), "{raw}");
            assert_eq!(
                format!("{:?}", by_hand.ok()),
                format!("{:?}", derived.ok()),
                "{raw}"
            );
        }
    }

    #[test]
    fn a_batch_of_holds_decodes_each_answer_and_counts_expiry_once() {
        let raw = br#"{"status":"ok","expired":2,"expired_paying":1,"holds":[
            {"status":"ok","hold":7,"seats":[3],"adjacent":true,"deadline":99,"price":"5"},
            {"status":"unavailable","seats":[3]},
            {"status":"queue_gone"},
            {"status":"no_schedule"},
            {"status":"cancelled"}]}"#;
        let swept = decode_reply::<Swept<PlaceReply>>(&redis::PLACE_HOLD, raw).unwrap();
        assert_eq!(swept.expired(), 2);
        let PlaceReply::Ok { holds } = swept.counted() else {
            panic!("a batch")
        };
        let outcomes: Vec<_> = holds.into_iter().map(HoldReply::into_result).collect();
        assert_eq!(outcomes[0].as_ref().unwrap().seats, vec![3]);
        assert!(matches!(&outcomes[1], Err(HoldError::Unavailable(s)) if *s == [3]));
        assert!(matches!(outcomes[2], Err(HoldError::QueueGone)));
        assert!(matches!(outcomes[3], Err(HoldError::NoSchedule)));
        assert!(matches!(outcomes[4], Err(HoldError::Cancelled)));
        let whole =
            decode_reply::<Swept<PlaceReply>>(&redis::PLACE_HOLD, br#"{"status":"restoring"}"#);
        assert!(matches!(whole.unwrap().counted(), PlaceReply::Restoring));
        // A schedule's refusal answers its own holds, never the whole call.
        for raw in [
            &br#"{"status":"cancelled"}"#[..],
            br#"{"status":"no_schedule"}"#,
        ] {
            assert!(decode_reply::<Swept<PlaceReply>>(&redis::PLACE_HOLD, raw).is_err());
        }
    }

    #[test]
    fn an_unknown_status_is_an_error_naming_the_script() {
        let e = decode_reply::<Swept<HoldReply<Placed>>>(
            &redis::PLACE_HOLD,
            br#"{"status":"sold_twice"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("script place_hold: bad reply"), "{e}");
        assert!(e.contains("sold_twice"), "{e}");
    }
}
