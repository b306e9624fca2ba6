//! The catalog: events, their admission settings and their schedules
//! (dates) with seat counts and prices.
//!
//! Defined in PostgreSQL (rarely written, by admins; survives a Redis loss)
//! and copied into Redis under the event's hash tag, where every Lua script
//! reads it. [`load_into_redis`] is idempotent, so create, live tuning and
//! the reconciler's restore all use it.

pub mod admission;
pub mod cache;
pub mod pg;
pub mod request;
pub mod views;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use crate::{
    ids::{EventId, ScheduleId},
    store::{StoreError, redis::Redis},
};

/// Admission settings of one event; live-tunable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueSettings {
    pub admit_per_second: u32,
    pub max_active: u32,
    pub active_ttl_seconds: u32,
    pub idle_timeout_seconds: u32,
    pub paused: bool,
    /// Fixed rate or the admission autopilot, and the autopilot's target
    /// and bounds (flat in the JSON: `queue.admission_mode`, ...).
    #[serde(flatten)]
    pub autopilot: admission::Settings,
}

/// One date of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub schedule_id: ScheduleId,
    pub starts_at: DateTime<Utc>,
    pub seats: u32,
    pub row_size: u32,
    pub price: Decimal,
    pub hold_seconds: u32,
    pub max_per_user: u32,
    /// Free seats at or below which low availability is announced.
    pub low_seats_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: EventId,
    pub name: String,
    pub queue: QueueSettings,
    pub schedules: Vec<Schedule>,
    /// Sale window, proof-of-work difficulty and the draw's seed.
    pub fair: crate::fair::FairStart,
}

impl Event {
    /// The public view: `{"event_id","name","schedules":[{"schedule_id","starts_at","price"}]}`.
    pub fn public_json(&self) -> serde_json::Value {
        json!({
            "event_id": self.event_id,
            "name": self.name,
            "schedules": self.schedules.iter().map(Schedule::public_view).collect::<Vec<_>>(),
        })
    }
}

/// Writes the event's working copy into Redis and lists it in the index.
///
/// # Errors
/// Redis unavailable.
pub async fn load_into_redis(redis: &Redis, ev: &Event) -> Result<(), StoreError> {
    let k = redis.keys().event(&ev.event_id);
    let mut keys = vec![k.config()];
    let mut args = vec![
        json!({
            "name": ev.name,
            "admit_per_second": ev.queue.admit_per_second,
            "max_active": ev.queue.max_active,
            "active_ttl_ms": u64::from(ev.queue.active_ttl_seconds) * 1000,
            "idle_timeout_ms": u64::from(ev.queue.idle_timeout_seconds) * 1000,
            "paused": u8::from(ev.queue.paused),
            // The autopilot's settings; `auto_start` is the rate it starts
            // from when switched on (see `lua/load_event.lua`).
            "admission_mode": ev.queue.autopilot.mode.as_str(),
            "target_p99_ms": ev.queue.autopilot.target_p99_ms,
            "min_admit_per_second": ev.queue.autopilot.min_admit_per_second,
            "max_admit_per_second": ev.queue.autopilot.max_admit_per_second,
            "auto_start": ev.queue.autopilot.clamp(ev.queue.admit_per_second),
            "schedules": ev.schedules.iter().map(|s| s.schedule_id.as_str()).collect::<Vec<_>>().join(","),
            "public": ev.public_json().to_string(),
            // Fair start: 0 = no such time.
            "pre_ms": ev.fair.sale.prequeue_opens_at.map_or(0, |t| t.timestamp_millis()),
            "open_ms": ev.fair.sale.opens_at.map_or(0, |t| t.timestamp_millis()),
            "close_ms": ev.fair.sale.closes_at.map_or(0, |t| t.timestamp_millis()),
            "pow_bits": ev.fair.difficulty_bits,
            "seed": ev.fair.seed.to_hex(),
        })
        .to_string(),
    ];
    for s in &ev.schedules {
        keys.push(k.schedule(&s.schedule_id));
        keys.push(k.seat_map(&s.schedule_id));
        // The admin view, plus the hold time in the scripts' milliseconds.
        let mut copy = json!(s.config_view());
        copy["hold_ms"] = json!(u64::from(s.hold_seconds) * 1000);
        args.push(copy.to_string());
    }
    let Done::Ok {} = redis
        .eval_json(&crate::store::redis::LOAD_EVENT, keys, args)
        .await?;
    redis
        .sadd(&redis.keys().events_index(), ev.event_id.as_str())
        .await
}

/// The reply of `load_event` and `finish_restore`: they validate their
/// arguments by raising an error, so `ok` is their only answer.
#[derive(serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Done {
    Ok {},
}

/// The public event list, read from Redis (no PostgreSQL on this path).
///
/// # Errors
/// Redis unavailable.
pub async fn public_list(redis: &Redis) -> Result<Vec<serde_json::Value>, StoreError> {
    let mut ids = redis.smembers(&redis.keys().events_index()).await?;
    ids.sort();
    let lookups = ids
        .iter()
        .filter_map(|id| EventId::parse(id).ok())
        .map(|id| {
            let key = redis.keys().event(&id).config();
            async move { redis.hget(&key, "public").await }
        });
    let found = futures::future::try_join_all(lookups).await?;
    Ok(found
        .into_iter()
        .flatten()
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect())
}

/// Event ids known to Redis (the admission loop ticks each of them).
///
/// # Errors
/// Redis unavailable.
pub async fn known_events(redis: &Redis) -> Result<Vec<EventId>, StoreError> {
    Ok(redis
        .smembers(&redis.keys().events_index())
        .await?
        .iter()
        .filter_map(|id| EventId::parse(id).ok())
        .collect())
}

/// The schedule ids of an event as Redis has them; `None` when the event is
/// not in Redis (unknown, lost or not loaded yet).
///
/// # Errors
/// Redis (the event's shard) unavailable.
pub async fn schedule_ids(
    redis: &Redis,
    event: &EventId,
) -> Result<Option<Vec<ScheduleId>>, StoreError> {
    let raw = redis
        .hget(&redis.keys().event(event).config(), "schedules")
        .await?;
    Ok(raw.map(|list| {
        list.split(',')
            .filter_map(|s| ScheduleId::parse(s).ok())
            .collect()
    }))
}

/// Marks an event ready in Redis (its catalog and sold seats are there)
/// and moves its hold counter into `epoch`'s range; see
/// `lua/finish_restore.lua`. `epoch` is 0 for a new event and the value
/// [`pg::bump_epoch`] returned for a restore.
///
/// # Errors
/// Redis unavailable.
pub async fn finish_restore(redis: &Redis, event: &EventId, epoch: u32) -> Result<(), StoreError> {
    let k = redis.keys().event(event);
    let Done::Ok {} = redis
        .eval_json(
            &crate::store::redis::FINISH_RESTORE,
            vec![k.ready(), k.hold_seq()],
            vec![epoch.to_string()],
        )
        .await?;
    Ok(())
}

/// Whether the event is ready in Redis (its ready mark is there). False
/// means missing or being restored: holds and payments answer 503.
///
/// # Errors
/// Redis (the event's shard) unavailable.
pub async fn is_ready(redis: &Redis, event: &EventId) -> Result<bool, StoreError> {
    redis.exists(&redis.keys().event(event).ready()).await
}
