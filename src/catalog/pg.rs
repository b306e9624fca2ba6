//! The catalog's definitions in PostgreSQL, the source of truth.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{Event, QueueSettings, Schedule};
use crate::{
    fair::{FairStart, SaleWindow, Seed},
    ids::{EventId, ScheduleId},
    store::{Dependency, StoreError, pg::Pg},
};

#[derive(sqlx::FromRow)]
struct EventRow {
    event_id: String,
    name: String,
    admit_per_second: i32,
    max_active: i32,
    active_ttl_seconds: i32,
    idle_timeout_seconds: i32,
    paused: bool,
    admission_mode: String,
    target_p99_ms: i32,
    min_admit_per_second: i32,
    max_admit_per_second: i32,
    sale_prequeue_opens_at: Option<DateTime<Utc>>,
    sale_opens_at: Option<DateTime<Utc>>,
    sale_closes_at: Option<DateTime<Utc>>,
    challenge_difficulty_bits: i32,
    draw_seed: Option<Vec<u8>>,
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    event_id: String,
    schedule_id: String,
    starts_at: DateTime<Utc>,
    seats: i32,
    row_size: i32,
    price: Decimal,
    hold_seconds: i32,
    max_per_user: i32,
    low_seats_threshold: Option<i32>,
}

fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn assemble(events: Vec<EventRow>, schedules: Vec<ScheduleRow>) -> Vec<Event> {
    events
        .into_iter()
        .filter_map(|e| {
            let event_id = EventId::parse(&e.event_id).ok()?;
            let schedules = schedules
                .iter()
                .filter(|s| s.event_id == e.event_id)
                .filter_map(|s| {
                    Some(Schedule {
                        schedule_id: ScheduleId::parse(&s.schedule_id).ok()?,
                        starts_at: s.starts_at,
                        seats: to_u32(s.seats),
                        row_size: to_u32(s.row_size),
                        price: s.price.normalize(),
                        hold_seconds: to_u32(s.hold_seconds),
                        max_per_user: to_u32(s.max_per_user),
                        low_seats_threshold: s
                            .low_seats_threshold
                            .map_or(to_u32(s.seats) / 10, to_u32),
                    })
                })
                .collect();
            Some(Event {
                event_id,
                name: e.name,
                queue: QueueSettings {
                    admit_per_second: to_u32(e.admit_per_second),
                    max_active: to_u32(e.max_active),
                    active_ttl_seconds: to_u32(e.active_ttl_seconds),
                    idle_timeout_seconds: to_u32(e.idle_timeout_seconds),
                    paused: e.paused,
                    autopilot: super::admission::Settings {
                        mode: super::admission::Mode::parse(&e.admission_mode),
                        target_p99_ms: to_u32(e.target_p99_ms),
                        min_admit_per_second: to_u32(e.min_admit_per_second),
                        max_admit_per_second: to_u32(e.max_admit_per_second),
                    },
                },
                schedules,
                fair: FairStart {
                    sale: SaleWindow {
                        prequeue_opens_at: e.sale_prequeue_opens_at,
                        opens_at: e.sale_opens_at,
                        closes_at: e.sale_closes_at,
                    },
                    difficulty_bits: u8::try_from(e.challenge_difficulty_bits).unwrap_or(0),
                    // Events made before fair start existed have no seed
                    // until `ensure_seed` gives them one.
                    seed: e
                        .draw_seed
                        .as_deref()
                        .and_then(Seed::from_bytes)
                        .unwrap_or_else(Seed::generate),
                },
            })
        })
        .collect()
}

/// Inserts a new event with its schedules; `Ok(false)` if the id exists.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn insert(pg: &Pg, ev: &Event) -> Result<bool, StoreError> {
    pg.guard(async {
        let mut tx = pg.begin().await?;
        let inserted = sqlx::query(
            r"insert into events (event_id, name, admit_per_second, max_active, active_ttl_seconds, idle_timeout_seconds, paused,
                                  sale_prequeue_opens_at, sale_opens_at, sale_closes_at, challenge_difficulty_bits, draw_seed,
                                  admission_mode, target_p99_ms, min_admit_per_second, max_admit_per_second)
              values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
              on conflict (event_id) do nothing",
        )
        .bind(ev.event_id.as_str())
        .bind(&ev.name)
        .bind(ev.queue.admit_per_second as i32)
        .bind(ev.queue.max_active as i32)
        .bind(ev.queue.active_ttl_seconds as i32)
        .bind(ev.queue.idle_timeout_seconds as i32)
        .bind(ev.queue.paused)
        .bind(ev.fair.sale.prequeue_opens_at)
        .bind(ev.fair.sale.opens_at)
        .bind(ev.fair.sale.closes_at)
        .bind(i32::from(ev.fair.difficulty_bits))
        .bind(ev.fair.seed.as_bytes())
        .bind(ev.queue.autopilot.mode.as_str())
        .bind(ev.queue.autopilot.target_p99_ms as i32)
        .bind(ev.queue.autopilot.min_admit_per_second as i32)
        .bind(ev.queue.autopilot.max_admit_per_second as i32)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            return Ok(false);
        }
        for s in &ev.schedules {
            sqlx::query(
                r"insert into schedules (event_id, schedule_id, starts_at, seats, row_size, price, hold_seconds, max_per_user, low_seats_threshold)
                  values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(ev.event_id.as_str())
            .bind(s.schedule_id.as_str())
            .bind(s.starts_at)
            .bind(s.seats as i32)
            .bind(s.row_size as i32)
            .bind(s.price)
            .bind(s.hold_seconds as i32)
            .bind(s.max_per_user as i32)
            .bind(s.low_seats_threshold as i32)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    })
    .await
}

macro_rules! event_columns {
    () => {
        "event_id, name, admit_per_second, max_active, active_ttl_seconds, idle_timeout_seconds, paused, sale_prequeue_opens_at, sale_opens_at, sale_closes_at, challenge_difficulty_bits, draw_seed, admission_mode, target_p99_ms, min_admit_per_second, max_admit_per_second"
    };
}
macro_rules! schedule_columns {
    () => {
        "event_id, schedule_id, starts_at, seats, row_size, price, hold_seconds, max_per_user, low_seats_threshold"
    };
}

/// Every event with its schedules.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn all(pg: &Pg) -> Result<Vec<Event>, StoreError> {
    let (events, schedules) = pg
        .guard(async {
            let events: Vec<EventRow> = sqlx::query_as(concat!(
                "select ",
                event_columns!(),
                " from events order by event_id"
            ))
            .fetch_all(pg.pool())
            .await?;
            let schedules: Vec<ScheduleRow> = sqlx::query_as(concat!(
                "select ",
                schedule_columns!(),
                " from schedules order by event_id, starts_at, schedule_id"
            ))
            .fetch_all(pg.pool())
            .await?;
            Ok((events, schedules))
        })
        .await?;
    Ok(assemble(events, schedules))
}

/// One event with its schedules.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn get(pg: &Pg, id: &EventId) -> Result<Option<Event>, StoreError> {
    let (events, schedules) = pg
        .guard(async {
            let events: Vec<EventRow> = sqlx::query_as(concat!(
                "select ",
                event_columns!(),
                " from events where event_id = $1"
            ))
            .bind(id.as_str())
            .fetch_all(pg.pool())
            .await?;
            let schedules: Vec<ScheduleRow> = sqlx::query_as(concat!(
                "select ",
                schedule_columns!(),
                " from schedules where event_id = $1 order by starts_at, schedule_id"
            ))
            .bind(id.as_str())
            .fetch_all(pg.pool())
            .await?;
            Ok((events, schedules))
        })
        .await?;
    Ok(assemble(events, schedules).into_iter().next())
}

/// Stores new admission settings.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn update_queue(pg: &Pg, id: &EventId, q: &QueueSettings) -> Result<bool, StoreError> {
    pg.guard(
        sqlx::query(
            r"update events set admit_per_second = $2, max_active = $3, active_ttl_seconds = $4,
                     idle_timeout_seconds = $5, paused = $6, admission_mode = $7, target_p99_ms = $8,
                     min_admit_per_second = $9, max_admit_per_second = $10, updated_at = now()
              where event_id = $1",
        )
        .bind(id.as_str())
        .bind(q.admit_per_second as i32)
        .bind(q.max_active as i32)
        .bind(q.active_ttl_seconds as i32)
        .bind(q.idle_timeout_seconds as i32)
        .bind(q.paused)
        .bind(q.autopilot.mode.as_str())
        .bind(q.autopilot.target_p99_ms as i32)
        .bind(q.autopilot.min_admit_per_second as i32)
        .bind(q.autopilot.max_admit_per_second as i32)
        .execute(pg.pool()),
    )
    .await
    .map(|r| r.rows_affected() == 1)
}

/// Takes the event's next Redis epoch (1, 2, ...), for a restore; see
/// `migrations/*_redis_epochs.sql`. Each call returns a value no other call
/// ever returned for this event, so two restores never share a hold range.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn bump_epoch(pg: &Pg, id: &EventId) -> Result<u32, StoreError> {
    let epoch: i64 = pg
        .guard(
            sqlx::query_scalar(BUMP_EPOCH)
                .bind(id.as_str())
                .fetch_one(pg.pool()),
        )
        .await?;
    checked_epoch(id, epoch)
}

/// [`bump_epoch`] inside a transaction of the caller's (a leased restore
/// commits it under its fencing token).
///
/// # Errors
/// PostgreSQL failed.
pub async fn bump_epoch_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    id: &EventId,
) -> Result<u32, StoreError> {
    let epoch: i64 = sqlx::query_scalar(BUMP_EPOCH)
        .bind(id.as_str())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| StoreError::internal(Dependency::Postgres, e))?;
    checked_epoch(id, epoch)
}

const BUMP_EPOCH: &str = r"insert into redis_epochs (event_id, epoch) values ($1, 1)
    on conflict (event_id) do update
    set epoch = redis_epochs.epoch + 1, restored_at = now()
    returning epoch";

fn checked_epoch(id: &EventId, epoch: i64) -> Result<u32, StoreError> {
    u32::try_from(epoch)
        .ok()
        .filter(|&e| e <= MAX_EPOCH)
        .ok_or_else(|| {
            StoreError::internal(
                Dependency::Postgres,
                anyhow::anyhow!("event {id} used up its Redis epochs ({epoch} > {MAX_EPOCH})"),
            )
        })
}

/// Highest epoch `lua/finish_restore.lua` accepts (hold numbers stay below
/// 1e14, which the scripts' JSON encodes exactly).
pub const MAX_EPOCH: u32 = 99_999;
/// Stores new fair-start settings (the seed never changes once stored;
/// an event without one gets the given one, see [`assemble`]).
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn update_fair(pg: &Pg, id: &EventId, f: &FairStart) -> Result<bool, StoreError> {
    pg.guard(
        sqlx::query(
            r"update events set sale_prequeue_opens_at = $2, sale_opens_at = $3, sale_closes_at = $4,
                     challenge_difficulty_bits = $5, draw_seed = coalesce(draw_seed, $6), updated_at = now()
              where event_id = $1",
        )
        .bind(id.as_str())
        .bind(f.sale.prequeue_opens_at)
        .bind(f.sale.opens_at)
        .bind(f.sale.closes_at)
        .bind(i32::from(f.difficulty_bits))
        .bind(f.seed.as_bytes())
        .execute(pg.pool()),
    )
    .await
    .map(|r| r.rows_affected() == 1)
}
