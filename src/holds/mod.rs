//! Seat holds: all-or-nothing, per-user limits, best available, exact
//! expiry with no background job.
//!
//! Where a hold is decided: `lua/place_hold.lua`, one atomic script per
//! hold over the schedule's keys (all under the event's hash tag, so it
//! works on Redis Cluster unchanged). No lock is needed: Redis runs one
//! script at a time per shard, so check-then-write inside a script cannot
//! interleave with another. Every schedule script first expires holds whose
//! deadline (Redis TIME) has passed (`lua/lib/schedule.lua`), so an expired
//! hold is free from its deadline on, whatever runs or doesn't in the
//! background. This module holds the typed wrappers; see `docs/HOLDS.md`.

pub mod check;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::{
    ids::{EventId, HoldId, ScheduleId, SeatNo, UserId},
    store::{Dependency, StoreError, keys::EventKeys, redis, redis::Redis},
    token::QueueClaims,
};

/// What a client asks to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldRequest {
    /// These exact seats (non-empty, distinct).
    Seats(Vec<SeatNo>),
    /// Best available: this many seats, adjacent in one row when possible.
    Count(u32),
}

/// Most seats one request may name or count.
pub const MAX_SEATS_PER_REQUEST: usize = 100;

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
    /// `held` or `paying`.
    pub state: String,
}

#[derive(Debug, Deserialize)]
struct Reply {
    status: String,
    #[serde(default)]
    hold: Option<u64>,
    #[serde(default)]
    seats: Vec<u32>,
    #[serde(default)]
    adjacent: Option<bool>,
    #[serde(default)]
    deadline: Option<i64>,
    #[serde(default)]
    price: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    max_per_user: u32,
    #[serde(default)]
    held: u32,
    #[serde(default)]
    bought: u32,
    #[serde(default)]
    requested: u32,
    #[serde(default)]
    expired: u64,
    #[serde(default)]
    expired_paying: u64,
    #[serde(default)]
    position: Option<u64>,
}

fn bad_reply(script: &str, raw: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::internal(Dependency::Redis, anyhow::anyhow!("{script}: {why}: {raw}"))
}

fn decode<T: serde::de::DeserializeOwned>(script: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| bad_reply(script, raw, e))
}

/// Counts holds that expired lazily (for `boxoffice_holds_expired_total`).
fn count_expired(r: &Reply) {
    count_expired_n(r.expired, r.expired_paying);
}

fn count_expired_n(expired: u64, expired_paying: u64) {
    if expired > 0 {
        metrics::counter!("boxoffice_holds_expired_total", "state" => "held")
            .increment(expired - expired_paying.min(expired));
    }
    if expired_paying > 0 {
        metrics::counter!("boxoffice_holds_expired_total", "state" => "paying")
            .increment(expired_paying);
    }
}

fn amount(
    script: &str,
    raw: &str,
    price: Option<&str>,
    seats: usize,
) -> Result<Decimal, StoreError> {
    let price: Decimal = price
        .ok_or_else(|| bad_reply(script, raw, "no price"))?
        .parse()
        .map_err(|e| bad_reply(script, raw, e))?;
    Ok((price * Decimal::from(seats)).normalize())
}

fn common_errors(script: &str, raw: &str, r: &Reply) -> HoldError {
    match r.status.as_str() {
        "no_schedule" => HoldError::NoSchedule,
        "gone" => HoldError::Gone,
        "forbidden" => HoldError::Forbidden,
        "paying" => HoldError::Paying,
        "not_admitted" => HoldError::NotAdmitted {
            position: r.position,
        },
        "queue_gone" => HoldError::QueueGone,
        "restoring" => HoldError::Restoring,
        "cancelled" => HoldError::Cancelled,
        other => HoldError::Store(bad_reply(script, raw, format!("status {other}"))),
    }
}

/// Places a hold: all seats or none.
///
/// # Errors
/// Unknown schedule, a seat out of range, the per-user limit, unavailable
/// seats (named exactly), or Redis unavailable.
pub async fn place(
    redis: &Redis,
    buyer: &QueueClaims,
    schedule: &ScheduleId,
    req: &HoldRequest,
) -> Result<Hold, HoldError> {
    let (event, user) = (&buyer.event, &buyer.user);
    let k = redis.keys().event(event);
    let mut keys = k.schedule_keys(schedule);
    keys.push(k.hold_seq());
    keys.extend(k.buyer_keys());
    keys.push(k.ready());
    let (mode, arg) = match req {
        HoldRequest::Seats(seats) => (
            "seats",
            seats
                .iter()
                .map(|s| s.get().to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        HoldRequest::Count(n) => ("count", n.to_string()),
    };
    let raw = match redis
        .run(
            &redis::PLACE_HOLD,
            keys,
            vec![user.to_string(), mode.into(), arg, buyer.entry.to_string()],
        )
        .await
    {
        Ok(raw) => raw,
        Err(e) => {
            metrics::counter!("boxoffice_holds_total", "outcome" => "error").increment(1);
            return Err(e.into());
        }
    };
    let r: Reply = decode("place_hold", &raw)?;
    count_expired(&r);
    let outcome = match r.status.as_str() {
        "ok" => {
            let n = r
                .hold
                .ok_or_else(|| bad_reply("place_hold", &raw, "no hold"))?;
            Ok(Hold {
                id: HoldId {
                    event: event.clone(),
                    schedule: schedule.clone(),
                    n,
                },
                amount: amount("place_hold", &raw, r.price.as_deref(), r.seats.len())?,
                adjacent: r.adjacent.unwrap_or(false),
                expires_at_ms: r
                    .deadline
                    .ok_or_else(|| bad_reply("place_hold", &raw, "no deadline"))?,
                seats: r.seats,
                state: "held".into(),
            })
        }
        "invalid" => Err(HoldError::Invalid(match r.reason.as_deref() {
            Some("seat_out_of_range") => {
                format!("seats out of range for this schedule: {:?}", r.seats)
            }
            Some("count_too_large") => "count is larger than the schedule".into(),
            other => format!("invalid hold request ({})", other.unwrap_or("unknown")),
        })),
        "limit" => Err(HoldError::Limit {
            max_per_user: r.max_per_user,
            held: r.held,
            bought: r.bought,
            requested: r.requested,
        }),
        "unavailable" => Err(HoldError::Unavailable(r.seats)),
        _ => Err(common_errors("place_hold", &raw, &r)),
    };
    let label = match &outcome {
        Ok(_) => "placed",
        Err(HoldError::Unavailable(_)) => "conflict",
        Err(HoldError::Limit { .. }) => "limit",
        Err(HoldError::Store(_)) => "error",
        Err(_) => "invalid",
    };
    metrics::counter!("boxoffice_holds_total", "outcome" => label).increment(1);
    outcome
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
    let raw = redis
        .run(
            &redis::HOLD_INFO,
            owner_keys(redis, id),
            owner_args(id, owner),
        )
        .await?;
    let r: Reply = decode("hold_info", &raw)?;
    count_expired(&r);
    if r.status != "ok" {
        return Err(common_errors("hold_info", &raw, &r));
    }
    Ok(Hold {
        id: id.clone(),
        amount: amount("hold_info", &raw, r.price.as_deref(), r.seats.len())?,
        adjacent: r.adjacent.unwrap_or(false),
        expires_at_ms: r.deadline.unwrap_or_default(),
        state: r.state.unwrap_or_else(|| "held".into()),
        seats: r.seats,
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
    let raw = redis
        .run(
            &redis::RELEASE_HOLD,
            owner_keys(redis, id),
            owner_args(id, owner),
        )
        .await?;
    let r: Reply = decode("release_hold", &raw)?;
    count_expired(&r);
    if r.status == "released" {
        metrics::counter!("boxoffice_holds_released_total").increment(1);
        Ok(r.seats)
    } else {
        Err(common_errors("release_hold", &raw, &r))
    }
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

#[derive(Deserialize)]
struct SeatMapHead {
    status: String,
    #[serde(default)]
    seats_total: u32,
    #[serde(default)]
    row_size: u32,
    #[serde(default)]
    available: u32,
    #[serde(default)]
    expired: u64,
    #[serde(default)]
    expired_paying: u64,
}

fn bit(map: &[u8], seat: u32) -> bool {
    map.get(seat as usize / 8)
        .is_some_and(|b| b & (0x80 >> (seat % 8)) != 0)
}

impl SeatMap {
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
    let head = parts.next().unwrap_or_default();
    let raw = String::from_utf8_lossy(&head);
    let h: SeatMapHead = decode("seat_map", &raw)?;
    if h.status != "ok" {
        return Err(common_errors("seat_map", &raw, &decode("seat_map", &raw)?));
    }
    count_expired_n(h.expired, h.expired_paying);
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
    #[derive(Deserialize)]
    struct Sold {
        status: String,
        #[serde(default)]
        sold: Vec<u32>,
    }
    let keys = redis.keys().event(event).schedule_keys(schedule);
    let raw = redis.run(&redis::SOLD_SEATS, keys, vec![]).await?;
    let r: Sold = decode("sold_seats", &raw)?;
    match r.status.as_str() {
        "ok" => Ok(r.sold),
        "no_schedule" => Err(HoldError::NoSchedule),
        _ => Err(HoldError::Store(bad_reply(
            "sold_seats",
            &raw,
            "unexpected status",
        ))),
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
    let raw = redis.run(&redis::SCHEDULES_OVERVIEW, keys, args).await?;
    #[derive(Deserialize)]
    struct Overview {
        status: String,
        #[serde(default)]
        schedules: Vec<ScheduleFigures>,
    }
    let o: Overview = decode("schedules_overview", &raw)?;
    if o.status != "ok" {
        return Err(common_errors(
            "schedules_overview",
            &raw,
            &decode("schedules_overview", &raw)?,
        ));
    }
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
    let raw = redis.run(&redis::SWEEP_HOLDS, keys, vec![]).await?;
    let r: Reply = decode("sweep_holds", &raw)?;
    count_expired(&r);
    Ok(r.expired)
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
#[derive(Debug, Clone)]
pub struct Paying {
    pub seats: Vec<u32>,
}

/// Moves a held hold to *paying* (it can no longer expire or be released
/// until `paying_ms` from now), if the buyer is still admitted.
///
/// # Errors
/// Gone (expired), someone else's, already paying, or Redis unavailable.
pub async fn begin_payment(
    redis: &Redis,
    id: &HoldId,
    buyer: &QueueClaims,
    paying_ms: u64,
) -> Result<Paying, HoldError> {
    let user = &buyer.user;
    let k = redis.keys().event(&id.event);
    let mut keys = k.schedule_keys(&id.schedule);
    keys.extend(k.buyer_keys());
    keys.push(k.ready());
    let raw = redis
        .run(
            &redis::BEGIN_PAYMENT,
            keys,
            vec![
                id.n.to_string(),
                user.to_string(),
                paying_ms.to_string(),
                buyer.entry.to_string(),
            ],
        )
        .await?;
    let r: Reply = decode("begin_payment", &raw)?;
    count_expired(&r);
    if r.status != "ok" {
        return Err(common_errors("begin_payment", &raw, &r));
    }
    Ok(Paying { seats: r.seats })
}

/// Gives a *paying* hold back to *held* with its original deadline (or
/// frees it if that deadline has passed).
///
/// # Errors
/// Redis unavailable.
pub async fn abort_payment(
    redis: &Redis,
    id: &HoldId,
    user: &UserId,
) -> Result<String, StoreError> {
    let keys = redis.keys().event(&id.event).schedule_keys(&id.schedule);
    let raw = redis
        .run(
            &redis::ABORT_PAYMENT,
            keys,
            vec![id.n.to_string(), user.to_string()],
        )
        .await?;
    let r: Reply = decode("abort_payment", &raw)?;
    count_expired(&r);
    Ok(r.status)
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
    payment_id: uuid::Uuid,
    seats: &[i32],
) -> Result<Vec<u32>, StoreError> {
    #[derive(Deserialize)]
    struct Freed {
        status: String,
        #[serde(default)]
        freed: Vec<u32>,
        #[serde(default)]
        expired: u64,
        #[serde(default)]
        expired_paying: u64,
    }
    let k = redis.keys().event(event);
    let mut keys = k.schedule_keys(schedule);
    keys.push(k.sold_map(schedule));
    let args = vec![
        user.to_owned(),
        payment_id.to_string(),
        seats
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ];
    let raw = redis.run(&redis::REFUND_SEATS, keys, args).await?;
    let r: Freed = decode("refund_seats", &raw)?;
    count_expired_n(r.expired, r.expired_paying);
    match r.status.as_str() {
        "ok" => Ok(r.freed),
        // Not in Redis at all: nothing is sold there to free.
        "no_schedule" => Ok(Vec::new()),
        other => Err(bad_reply("refund_seats", &raw, format!("status {other}"))),
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
    #[derive(Deserialize)]
    struct Dropped {
        status: String,
        #[serde(default)]
        holds_dropped: u64,
        #[serde(default)]
        expired: u64,
        #[serde(default)]
        expired_paying: u64,
    }
    let keys = redis.keys().event(event).schedule_keys(schedule);
    let raw = redis.run(&redis::CANCEL_SCHEDULE, keys, vec![]).await?;
    let r: Dropped = decode("cancel_schedule", &raw)?;
    count_expired_n(r.expired, r.expired_paying);
    match r.status.as_str() {
        "ok" => Ok(Some(r.holds_dropped)),
        "no_schedule" => Ok(None),
        other => Err(bad_reply(
            "cancel_schedule",
            &raw,
            format!("status {other}"),
        )),
    }
}

/// Marks seats sold for a confirmed payment; idempotent, also when the hold
/// is gone (the reconciler replays PostgreSQL's payments with it).
///
/// # Errors
/// Redis unavailable.
#[allow(clippy::too_many_arguments)]
pub async fn confirm_sale(
    redis: &Redis,
    event: &EventId,
    schedule: &ScheduleId,
    hold_n: u64,
    user: &str,
    payment_id: &str,
    seats: &[i32],
    end_queue: bool,
) -> Result<Confirmed, StoreError> {
    let k = redis.keys().event(event);
    let mut keys = k.schedule_keys(schedule);
    keys.extend([
        k.queue_admitted(),
        k.queue_admitted_entries(),
        k.queue_waiting(),
        k.queue_polled(),
        k.sold_map(schedule),
    ]);
    let args = vec![
        hold_n.to_string(),
        user.to_owned(),
        payment_id.to_owned(),
        seats
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        if end_queue { "1" } else { "0" }.to_owned(),
    ];
    let raw = redis.run(&redis::CONFIRM_SALE, keys, args).await?;
    let v: serde_json::Value = decode("confirm_sale", &raw)?;
    if v["status"] != "ok" {
        return Err(bad_reply("confirm_sale", &raw, "unexpected status"));
    }
    decode("confirm_sale", &raw)
}

#[cfg(test)]
mod tests {
    use super::{SeatMap, row_label};

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
    fn rows_are_lettered() {
        assert_eq!(row_label(1, 10), "A");
        assert_eq!(row_label(10, 10), "A");
        assert_eq!(row_label(11, 10), "B");
        assert_eq!(row_label(261, 10), "AA");
        assert_eq!(row_label(271, 10), "AB");
    }
}
