//! Seat holds: all-or-nothing, per-user limits, best available, exact
//! expiry with no background job.
//!
//! Where a hold is decided: `lua/place_hold.lua`, one atomic script call
//! over the keys of the event's schedules it names (all under the event's
//! hash tag, so it works on Redis Cluster unchanged) for the holds of that
//! event an instance gathered ([`coalesce`]), each decided as if alone. No
//! lock is needed: Redis runs one
//! script at a time per shard, so check-then-write inside a script cannot
//! interleave with another. Every schedule script first expires holds whose
//! deadline (Redis TIME) has passed (`lua/lib/schedule.lua`), so an expired
//! hold is free from its deadline on, whatever runs or doesn't in the
//! background. This module holds the typed wrappers, and `reply` the
//! scripts' typed replies; see `docs/HOLDS.md`.

pub mod check;
pub mod coalesce;
mod reply;

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::{Deserialize, de::IgnoredAny};

use self::reply::{
    ConfirmReply, Dropped, Freed, HoldReply, HoldView, OperatorReply, Overview, PlaceReply,
    Released, SeatMapHead, Sold, Swept,
};
use crate::{
    idempotency,
    ids::{EventId, HoldId, IdempotencyKey, PaymentId, ScheduleId, SeatNo, UserId},
    store::{
        StoreError,
        coalesce::one_each,
        keys::EventKeys,
        redis,
        redis::Redis,
        reply::{bad_reply, decode_reply, decode_reply_with},
    },
    token::QueueClaims,
};

/// What a client asks to hold, valid by construction ([`HoldRequest::seats`],
/// [`HoldRequest::count`]): `place_hold` fails its whole call on a
/// malformed request, and a call carries other buyers' holds too
/// ([`coalesce`]), so no malformed one may reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest(Ask);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ask {
    /// These exact seats (1 to [`MAX_SEATS_PER_REQUEST`], distinct).
    Seats(Vec<SeatNo>),
    /// Best available: this many seats (1 to [`MAX_SEATS_PER_REQUEST`]),
    /// adjacent in one row when possible.
    Count(u32),
}

/// Most seats one request may name or count.
pub const MAX_SEATS_PER_REQUEST: usize = 100;

impl HoldRequest {
    /// These exact seats.
    ///
    /// # Errors
    /// None, more than [`MAX_SEATS_PER_REQUEST`], or one listed twice: the
    /// message says which.
    pub fn seats(seats: Vec<SeatNo>) -> Result<Self, String> {
        if seats.is_empty() {
            return Err("seats must not be empty".into());
        }
        if seats.len() > MAX_SEATS_PER_REQUEST {
            return Err(format!("at most {MAX_SEATS_PER_REQUEST} seats per hold"));
        }
        if let Some((_, twice)) = seats
            .iter()
            .enumerate()
            .find(|(i, s)| seats[..*i].contains(s))
        {
            return Err(format!("seat {} is listed twice", twice.get()));
        }
        Ok(Self(Ask::Seats(seats)))
    }

    /// The best `n` seats available.
    ///
    /// # Errors
    /// `n` is 0 or more than [`MAX_SEATS_PER_REQUEST`].
    pub fn count(n: u32) -> Result<Self, String> {
        if (1..=MAX_SEATS_PER_REQUEST as u32).contains(&n) {
            Ok(Self(Ask::Count(n)))
        } else {
            Err(format!(
                "count must be an integer from 1 to {MAX_SEATS_PER_REQUEST}"
            ))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("no such schedule")]
    NoSchedule,
    #[error("{0}")]
    Invalid(String),
    #[error("hold limit exceeded")]
    Limit {
        max_per_user: u32,
        held: u32,
        bought: u32,
        requested: u32,
    },
    #[error("seats unavailable")]
    Unavailable(Vec<u32>),
    #[error("the hold is gone (expired, released or paid)")]
    Gone,
    #[error("the hold belongs to someone else")]
    Forbidden,
    #[error("the hold is being paid")]
    Paying,
    /// The buyer's queue entry is still waiting (checked inside the script).
    #[error("not admitted yet")]
    NotAdmitted { position: Option<u64> },
    /// The buyer's queue entry is gone.
    #[error("the queue entry is gone")]
    QueueGone,
    /// The event is not ready in Redis (lost, or its sold seats are being
    /// restored from PostgreSQL): retry shortly.
    #[error("the event is being restored")]
    Restoring,
    /// The schedule was cancelled: nothing of it is sold any more.
    #[error("the schedule was cancelled")]
    Cancelled,
    /// The request's `Idempotency-Key` already made a hold for another
    /// request.
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
    /// `begin_payment` by a payment attempt that was given up: its caller
    /// had no answer from Redis, and [`abort_payment`] barred the attempt
    /// so that the call, arriving late, cannot make the hold *paying*.
    #[error("this payment attempt was given up after Redis did not answer it")]
    Barred,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A live hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub id: HoldId,
    pub seats: Vec<u32>,
    pub adjacent: bool,
    /// price × seats, from the catalog.
    pub amount: Decimal,
    pub expires_at_ms: i64,
    pub state: HoldState,
}

/// Where a live hold is: held until its deadline, or being paid (it can
/// then neither expire nor be released until its payment deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldState {
    Held,
    Paying,
}

impl HoldState {
    /// The name the API and the hold records use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Paying => "paying",
        }
    }
}

impl std::fmt::Display for HoldState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn amount(price: Decimal, seats: usize) -> Decimal {
    (price * Decimal::from(seats)).normalize()
}

/// One hold to place: the buyer (from its verified queue token), the
/// schedule of its event and what it asks for, and the request's
/// `Idempotency-Key` if it has one.
#[derive(Debug)]
pub struct HoldAsk {
    pub buyer: QueueClaims,
    pub schedule: ScheduleId,
    pub request: HoldRequest,
    pub key: Option<IdempotencyKey>,
}

impl HoldAsk {
    /// What a key remembers of the request, to tell a retry from another
    /// request under the same key: the schedule and the seats asked for
    /// (in any order) or their count.
    fn fingerprint(&self) -> String {
        let (mode, arg) = match &self.request.0 {
            Ask::Seats(seats) => {
                let mut seats: Vec<u32> = seats.iter().map(|s| s.get()).collect();
                seats.sort_unstable();
                ("seats", seats_arg(&seats))
            }
            Ask::Count(n) => ("count", n.to_string()),
        };
        idempotency::fingerprint(&["hold", self.schedule.as_str(), mode, &arg])
    }
}

/// A hold a request made, or the one its `Idempotency-Key` made before
/// (`replayed`: the same answer again, nothing done).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub hold: Hold,
    pub replayed: bool,
}

/// Places holds on the schedules of `event` in one call of `place_hold`,
/// each all seats or none, decided as if alone in the order given
/// (callers coalesce them: [`coalesce::Holds`]). One answer per ask, in
/// order.
///
/// Every ask must be of `event` (its token's event): the keys are that
/// event's, and the script checks each buyer's entry in its queue.
pub async fn place(
    redis: &Redis,
    event: &EventId,
    asks: &[HoldAsk],
) -> Vec<Result<Placement, HoldError>> {
    debug_assert!(asks.iter().all(|a| a.buyer.event == *event));
    let k = redis.keys().event(event);
    let mut keys = vec![k.hold_seq()];
    keys.extend(k.buyer_keys());
    keys.push(k.ready());
    // Each schedule's keys once, in the order of its first hold; a hold
    // names its schedule by number.
    let mut numbers: HashMap<&ScheduleId, usize> = HashMap::new();
    let mut args = Vec::with_capacity(1 + 5 * asks.len());
    args.push(asks.len().to_string());
    // The keyed holds, after every hold: their numbers and fingerprints in
    // ARGV, their keys' strings after the schedules' keys.
    let (mut key_names, mut key_args) = (Vec::new(), Vec::new());
    for (i, ask) in asks.iter().enumerate() {
        if let Some(key) = &ask.key {
            key_names.push(k.hold_key(&ask.buyer.user, key));
            key_args.extend([(i + 1).to_string(), ask.fingerprint()]);
        }
        let next = numbers.len() + 1;
        let number = *numbers.entry(&ask.schedule).or_insert_with(|| {
            keys.extend(k.schedule_keys(&ask.schedule));
            next
        });
        let (mode, arg) = match &ask.request.0 {
            Ask::Seats(seats) => (
                "seats",
                seats_arg(&seats.iter().map(|s| s.get()).collect::<Vec<_>>()),
            ),
            Ask::Count(n) => ("count", n.to_string()),
        };
        args.extend([
            number.to_string(),
            ask.buyer.user.to_string(),
            mode.into(),
            arg,
            ask.buyer.entry.to_string(),
        ]);
    }
    keys.extend(key_names);
    args.extend(key_args);
    let reply = redis
        .run(&redis::PLACE_HOLD, keys, args)
        .await
        .and_then(|raw| {
            decode_reply_with(
                &redis::PLACE_HOLD,
                raw.as_bytes(),
                Swept::<PlaceReply>::decode,
            )
        });
    let every = |e: &dyn Fn() -> HoldError| count_outcomes(asks.iter().map(|_| Err(e())).collect());
    let placements = match reply.map(Swept::counted) {
        Ok(PlaceReply::Ok { holds }) => holds,
        Ok(PlaceReply::Restoring) => return every(&|| HoldError::Restoring),
        Err(e) => return every(&|| e.duplicate().into()),
    };
    if let Err(e) = one_each(&redis::PLACE_HOLD, placements.len(), asks.len()) {
        return every(&|| e.duplicate().into());
    }
    let outcomes = placements
        .into_iter()
        .zip(asks)
        .map(|(p, ask)| {
            p.into_result().map(|p| Placement {
                hold: Hold {
                    id: HoldId {
                        event: event.clone(),
                        schedule: ask.schedule.clone(),
                        n: p.hold,
                    },
                    amount: amount(p.price, p.seats.len()),
                    adjacent: p.adjacent,
                    expires_at_ms: p.deadline,
                    seats: p.seats,
                    state: HoldState::Held,
                },
                replayed: p.replayed,
            })
        })
        .collect();
    count_outcomes(outcomes)
}

/// Counts each hold's outcome (`boxoffice_holds_total`).
fn count_outcomes(
    outcomes: Vec<Result<Placement, HoldError>>,
) -> Vec<Result<Placement, HoldError>> {
    for outcome in &outcomes {
        let label = match outcome {
            Ok(p) if p.replayed => "replayed",
            Ok(_) => "placed",
            Err(HoldError::Unavailable(_)) => "conflict",
            Err(HoldError::Limit { .. }) => "limit",
            Err(HoldError::Store(_)) => "error",
            Err(_) => "invalid",
        };
        metrics::counter!("boxoffice_holds_total", "outcome" => label).increment(1);
    }
    outcomes
}

/// The keys of a script acting on one hold for its owner: the schedule,
/// then the queue keys that prove the owner's entry is live.
fn owner_keys(redis: &Redis, id: &HoldId) -> Vec<String> {
    let k = redis.keys().event(&id.event);
    let mut keys = k.schedule_keys(&id.schedule);
    keys.extend(k.buyer_keys());
    keys
}

fn owner_args(id: &HoldId, owner: &QueueClaims) -> Vec<String> {
    vec![
        id.n.to_string(),
        owner.user.to_string(),
        owner.entry.to_string(),
    ]
}

/// The hold, if it is still live and the token's user owns it, while the
/// token's queue entry is live.
///
/// # Errors
/// Gone, someone else's, or Redis unavailable.
pub async fn get(redis: &Redis, id: &HoldId, owner: &QueueClaims) -> Result<Hold, HoldError> {
    let h = redis
        .eval_json::<Swept<HoldReply<HoldView>>>(
            &redis::HOLD_INFO,
            owner_keys(redis, id),
            owner_args(id, owner),
        )
        .await?
        .counted()
        .into_result()?;
    Ok(Hold {
        id: id.clone(),
        amount: amount(h.price, h.seats.len()),
        adjacent: h.adjacent,
        expires_at_ms: h.deadline,
        state: h.state,
        seats: h.seats,
    })
}

/// Releases the owner's hold; its seats are free at once.
///
/// # Errors
/// Gone, someone else's, being paid, or Redis unavailable.
pub async fn release(
    redis: &Redis,
    id: &HoldId,
    owner: &QueueClaims,
) -> Result<Vec<u32>, HoldError> {
    let released = redis
        .eval_json::<Swept<HoldReply<Released>>>(
            &redis::RELEASE_HOLD,
            owner_keys(redis, id),
            owner_args(id, owner),
        )
        .await?
        .counted()
        .into_result()?;
    metrics::counter!("boxoffice_holds_released_total").increment(1);
    Ok(released.seats)
}

/// One schedule's seats: which are taken (held, being paid or sold) and
/// which sold, as the bitmaps Redis keeps (bit i is seat i, high bit of
/// byte 0 first).
#[derive(Debug, Clone)]
pub struct SeatMap {
    pub seats_total: u32,
    pub row_size: u32,
    pub available: u32,
    taken: bytes::Bytes,
    sold: bytes::Bytes,
}

fn bit(map: &[u8], seat: u32) -> bool {
    map.get(seat as usize / 8)
        .is_some_and(|b| b & (0x80 >> (seat % 8)) != 0)
}

impl SeatMap {
    /// A map from its parts: the bitmaps as the script returns them (bit
    /// `s` of each is seat `s`).
    #[cfg(test)]
    pub(crate) fn from_parts(
        seats_total: u32,
        row_size: u32,
        available: u32,
        taken: &[u8],
        sold: &[u8],
    ) -> Self {
        Self {
            seats_total,
            row_size,
            available,
            taken: bytes::Bytes::copy_from_slice(taken),
            sold: bytes::Bytes::copy_from_slice(sold),
        }
    }

    /// `available`, `held` (also while being paid) or `sold`.
    pub fn status(&self, seat: u32) -> &'static str {
        if bit(&self.sold, seat) {
            "sold"
        } else if bit(&self.taken, seat) {
            "held"
        } else {
            "available"
        }
    }

    /// Seats sold, ascending.
    pub fn sold(&self) -> impl Iterator<Item = u32> + '_ {
        (1..=self.seats_total).filter(|&s| bit(&self.sold, s))
    }
}

/// # Errors
/// Unknown schedule, or Redis unavailable.
pub async fn seat_map(
    redis: &Redis,
    event: &EventId,
    schedule: &ScheduleId,
    buyer: Option<&QueueClaims>,
) -> Result<SeatMap, HoldError> {
    let k = redis.keys().event(event);
    let mut keys = k.schedule_keys(schedule);
    keys.push(k.sold_map(schedule));
    let args = buyer_args(&k, &mut keys, buyer);
    let mut parts = redis
        .run_bulk(&redis::SEAT_MAP, keys, args)
        .await?
        .into_iter();
    let h = decode_reply::<Swept<HoldReply<SeatMapHead>>>(
        &redis::SEAT_MAP,
        &parts.next().unwrap_or_default(),
    )?
    .counted()
    .into_result()?;
    Ok(SeatMap {
        seats_total: h.seats_total,
        row_size: h.row_size,
        available: h.available,
        taken: parts.next().unwrap_or_default(),
        sold: parts.next().unwrap_or_default(),
    })
}

/// For a read a buyer makes: the queue keys, the event's ready mark and the
/// user, so the script checks that the event is ready and the buyer
/// admitted in the same round trip. None for
/// operators and the audit.
fn buyer_args(k: &EventKeys, keys: &mut Vec<String>, buyer: Option<&QueueClaims>) -> Vec<String> {
    match buyer {
        Some(b) => {
            keys.extend(k.buyer_keys());
            // A buyer sees no seats while the event is being restored.
            keys.push(k.ready());
            vec![b.user.to_string(), b.entry.to_string()]
        }
        None => vec![],
    }
}

/// The seats sold in Redis, read from the seats hash itself (for the
/// audit; buyers read [`seat_map`]).
///
/// # Errors
/// Unknown schedule, or Redis unavailable.
pub async fn sold_seats(
    redis: &Redis,
    event: &EventId,
    schedule: &ScheduleId,
) -> Result<Vec<u32>, HoldError> {
    let keys = redis.keys().event(event).schedule_keys(schedule);
    match redis.eval_json(&redis::SOLD_SEATS, keys, vec![]).await? {
        OperatorReply::Ok(Sold { sold }) => Ok(sold),
        OperatorReply::NoSchedule => Err(HoldError::NoSchedule),
    }
}

/// Row label of a seat: A, B, ..., Z, AA, AB, ...
pub fn row_label(seat: u32, row_size: u32) -> String {
    let mut n = (seat.saturating_sub(1)) / row_size.max(1);
    let mut label = Vec::new();
    loop {
        label.push(b'A' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    label.reverse();
    String::from_utf8(label).expect("ASCII")
}

/// Counts of one schedule, maintained by the scripts (not recounted).
#[derive(Debug, Clone, Deserialize)]
pub struct ScheduleFigures {
    #[serde(default)]
    pub missing: bool,
    #[serde(default)]
    pub seats_total: u32,
    #[serde(default)]
    pub held: u32,
    #[serde(default)]
    pub sold: u32,
    #[serde(default)]
    pub available: u32,
    #[serde(default)]
    pub price: String,
    #[serde(default)]
    pub starts_at: String,
}

/// Figures of several schedules in one round trip.
///
/// # Errors
/// Redis unavailable.
pub async fn overview(
    redis: &Redis,
    event: &EventId,
    schedules: &[ScheduleId],
    buyer: Option<&QueueClaims>,
) -> Result<Vec<ScheduleFigures>, HoldError> {
    let k = redis.keys().event(event);
    let mut keys: Vec<String> = schedules.iter().flat_map(|s| k.schedule_keys(s)).collect();
    let args = buyer_args(&k, &mut keys, buyer);
    let o = redis
        .eval_json::<Swept<HoldReply<Overview>>>(&redis::SCHEDULES_OVERVIEW, keys, args)
        .await?
        .counted()
        .into_result()?;
    Ok(o.schedules)
}

/// Expires due holds of one schedule (tidy-up; nothing depends on it).
///
/// # Errors
/// Redis unavailable.
pub async fn sweep(
    redis: &Redis,
    event: &EventId,
    schedule: &ScheduleId,
) -> Result<u64, StoreError> {
    let keys = redis.keys().event(event).schedule_keys(schedule);
    let r: Swept<OperatorReply<IgnoredAny>> =
        redis.eval_json(&redis::SWEEP_HOLDS, keys, vec![]).await?;
    let expired = r.expired();
    r.counted();
    Ok(expired)
}

/// Whether hold number `id.n` was ever handed out for its event: a hold
/// that is gone but was minted expired or was released; one that was never
/// minted never existed (404, not 410).
///
/// # Errors
/// Redis unavailable.
pub async fn ever_minted(redis: &Redis, id: &HoldId) -> Result<bool, StoreError> {
    let seq = redis.get(&redis.keys().event(&id.event).hold_seq()).await?;
    Ok(seq.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) >= id.n)
}

/// A hold moved to *paying*.
#[derive(Debug, Clone, Deserialize)]
pub struct Paying {
    pub seats: Vec<u32>,
}

/// Moves a held hold to *paying* (it can no longer expire or be released
/// until `paying_ms` from now), if the buyer is still admitted. The hold
/// keeps `attempt`, which [`abort_payment`] names to give back only what
/// this call did.
///
/// # Errors
/// Gone (expired), someone else's, already paying, or Redis unavailable.
pub async fn begin_payment(
    redis: &Redis,
    id: &HoldId,
    buyer: &QueueClaims,
    paying_ms: u64,
    attempt: &str,
) -> Result<Paying, HoldError> {
    let user = &buyer.user;
    let k = redis.keys().event(&id.event);
    let mut keys = k.schedule_keys(&id.schedule);
    keys.extend(k.buyer_keys());
    keys.push(k.ready());
    redis
        .eval_json::<Swept<HoldReply<Paying>>>(
            &redis::BEGIN_PAYMENT,
            keys,
            vec![
                id.n.to_string(),
                user.to_string(),
                paying_ms.to_string(),
                buyer.entry.to_string(),
                attempt.to_owned(),
            ],
        )
        .await?
        .counted()
        .into_result()
}

/// What giving a *paying* hold back did (`abort_payment.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Aborted {
    /// Held again until `deadline` (Redis ms), its original deadline.
    Restored {
        deadline: i64,
    },
    /// The original deadline had passed: the hold ended, its seats freed.
    Expired,
    /// No such hold (its payment deadline passed, or it was sold).
    Gone,
    /// The hold is held, not paying (or paying for another attempt):
    /// untouched.
    NotPaying,
    /// The same, asked with [`Bar::Attempt`]: the attempt is now barred,
    /// its `begin_payment` can never take effect.
    Barred,
    /// The hold belongs to another user: untouched.
    Forbidden,
    NoSchedule,
}

/// Whether [`abort_payment`] also bars its attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    /// The attempt's `begin_payment` was answered: only give its hold back.
    No,
    /// The attempt's `begin_payment` got no answer and may still reach
    /// Redis: if the hold is not paying for it, record it on the hold, so
    /// that the late call is refused ([`HoldError::Barred`]).
    Attempt,
}

/// Gives a hold paying for `attempt` ([`begin_payment`]) back to *held*
/// with its original deadline (or frees it if that deadline has passed);
/// with [`Bar::Attempt`], bars an attempt the hold is not paying for.
///
/// # Errors
/// Redis unavailable.
pub async fn abort_payment(
    redis: &Redis,
    id: &HoldId,
    user: &UserId,
    attempt: &str,
    bar: Bar,
) -> Result<Aborted, StoreError> {
    let keys = redis.keys().event(&id.event).schedule_keys(&id.schedule);
    let mut args = vec![id.n.to_string(), user.to_string(), attempt.to_owned()];
    if bar == Bar::Attempt {
        args.push("1".to_owned());
    }
    Ok(redis
        .eval_json::<Swept<Aborted>>(&redis::ABORT_PAYMENT, keys, args)
        .await?
        .counted())
}

/// Result of marking a payment's seats sold.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Confirmed {
    pub newly_sold: u32,
    #[serde(default)]
    pub conflicts: Vec<u32>,
    #[serde(default)]
    pub overrode: Vec<u32>,
}

/// Puts the seats of a refunded payment back on sale (only those still
/// sold to it) and shrinks the buyer's bought count; idempotent. Returns
/// the seats freed by this call.
///
/// # Errors
/// Redis unavailable.
pub async fn refund_seats(
    redis: &Redis,
    event: &EventId,
    schedule: &ScheduleId,
    user: &str,
    payment_id: PaymentId,
    seats: &[i32],
) -> Result<Vec<u32>, StoreError> {
    let k = redis.keys().event(event);
    let mut keys = k.schedule_keys(schedule);
    keys.push(k.sold_map(schedule));
    let args = vec![user.to_owned(), payment_id.to_string(), seats_arg(seats)];
    let r: Swept<OperatorReply<Freed>> = redis.eval_json(&redis::REFUND_SEATS, keys, args).await?;
    match r.counted() {
        OperatorReply::Ok(Freed { freed }) => Ok(freed),
        // Not in Redis at all: nothing is sold there to free.
        OperatorReply::NoSchedule => Ok(Vec::new()),
    }
}

/// Stops a schedule's sales in Redis: marks it cancelled and drops every
/// live hold not being paid. Returns how many holds were dropped
/// (None when the schedule is not in Redis).
///
/// # Errors
/// Redis unavailable.
pub async fn cancel_schedule(
    redis: &Redis,
    event: &EventId,
    schedule: &ScheduleId,
) -> Result<Option<u64>, StoreError> {
    let keys = redis.keys().event(event).schedule_keys(schedule);
    let r: Swept<OperatorReply<Dropped>> = redis
        .eval_json(&redis::CANCEL_SCHEDULE, keys, vec![])
        .await?;
    match r.counted() {
        OperatorReply::Ok(Dropped { holds_dropped }) => Ok(Some(holds_dropped)),
        OperatorReply::NoSchedule => Ok(None),
    }
}

/// A confirmed payment's sale, as `confirm_sale.lua` takes it.
#[derive(Debug, Clone, Copy)]
pub struct Sale<'a> {
    pub event: &'a EventId,
    pub schedule: &'a ScheduleId,
    /// The paid hold's number; 0 when unknown (a replay).
    pub hold_n: u64,
    /// The buyer.
    pub user: &'a str,
    pub payment_id: PaymentId,
    /// The seats paid for.
    pub seats: &'a [i32],
    /// End the buyer's queue entry too.
    pub end_queue: bool,
}

/// Marks seats sold for a confirmed payment; idempotent, also when the hold
/// is gone (the reconciler replays PostgreSQL's payments with it).
///
/// # Errors
/// Redis unavailable; internal when the schedule is not in Redis or a seat
/// is out of its range.
pub async fn confirm_sale(redis: &Redis, sale: Sale<'_>) -> Result<Confirmed, StoreError> {
    let k = redis.keys().event(sale.event);
    let mut keys = k.schedule_keys(sale.schedule);
    keys.extend(k.buyer_keys());
    keys.push(k.sold_map(sale.schedule));
    let args = vec![
        sale.hold_n.to_string(),
        sale.user.to_owned(),
        sale.payment_id.to_string(),
        seats_arg(sale.seats),
        if sale.end_queue { "1" } else { "0" }.to_owned(),
    ];
    let r: Swept<ConfirmReply> = redis.eval_json(&redis::CONFIRM_SALE, keys, args).await?;
    match r.counted() {
        ConfirmReply::Ok(c) => Ok(c),
        ConfirmReply::NoSchedule => Err(bad_reply(&redis::CONFIRM_SALE, "no_schedule")),
        ConfirmReply::Invalid { reason, seats } => Err(bad_reply(
            &redis::CONFIRM_SALE,
            format_args!("invalid: {reason:?} {seats:?}"),
        )),
    }
}

/// Seats as the scripts take them: comma-separated.
fn seats_arg(seats: &[impl ToString]) -> String {
    seats
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::{HoldRequest, SeatMap, row_label};
    use crate::ids::SeatNo;

    #[test]
    fn seat_map_reads_bits_in_redis_order() {
        // SETBIT 1, SETBIT 9 on both, SETBIT 9 on sold: bit 0 is the high
        // bit of byte 0.
        let map = SeatMap {
            seats_total: 12,
            row_size: 6,
            available: 10,
            taken: bytes::Bytes::from_static(&[0x40, 0x40]),
            sold: bytes::Bytes::from_static(&[0x00, 0x40]),
        };
        assert_eq!(map.status(1), "held");
        assert_eq!(map.status(9), "sold");
        assert_eq!(map.status(2), "available");
        assert_eq!(map.status(8), "available");
        assert_eq!(map.status(12), "available", "past the bitmap's end");
        assert_eq!(map.sold().collect::<Vec<_>>(), vec![9]);
    }

    #[test]
    fn only_a_well_formed_request_can_be_built() {
        let seat = |n| SeatNo::new(n).unwrap();
        assert!(HoldRequest::seats(vec![seat(3), seat(1)]).is_ok());
        assert_eq!(
            HoldRequest::seats(vec![]).unwrap_err(),
            "seats must not be empty"
        );
        assert_eq!(
            HoldRequest::seats(vec![seat(2), seat(5), seat(2)]).unwrap_err(),
            "seat 2 is listed twice"
        );
        let many = (1..=101).map(seat).collect();
        assert!(
            HoldRequest::seats(many)
                .unwrap_err()
                .contains("at most 100")
        );
        assert!(HoldRequest::count(1).is_ok() && HoldRequest::count(100).is_ok());
        for n in [0, 101, u32::MAX] {
            assert!(HoldRequest::count(n).is_err(), "{n}");
        }
    }

    #[test]
    fn rows_are_lettered() {
        assert_eq!(row_label(1, 10), "A");
        assert_eq!(row_label(10, 10), "A");
        assert_eq!(row_label(11, 10), "B");
        assert_eq!(row_label(261, 10), "AA");
        assert_eq!(row_label(271, 10), "AB");
    }
}
