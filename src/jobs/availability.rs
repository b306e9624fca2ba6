//! Availability notifications: when a schedule's free seats first drop to
//! its `low_seats_threshold` (default 10 % of its seats) an outbox message
//! `schedule.low_availability` is written, and when none are free and none
//! held, `schedule.sold_out`; the relay carries both to `boxoffice:events`.
//!
//! Each schedule's announced level (`ok`, `low`, `sold_out`) is kept in
//! `schedule_alerts`; a message is written only when the level changes
//! downwards, in the same fenced transaction as the new level, so each
//! crossing is announced exactly once. Seats coming back (a hold expiring,
//! a refund) raise the level again without a message, which re-arms it: the
//! next crossing is announced again.
//!
//! The gauge `boxoffice_seats_available{event,schedule}` is kept by every
//! instance ([`gauge_loop`]), so it never goes stale when the leader moves.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    Context,
    fence::{Fence, JobError},
};
use crate::{
    catalog,
    holds::{self, ScheduleFigures},
    ids::{EventId, ScheduleId},
    store::{StoreError, Stores, redis::Redis},
    telemetry::loop_failed,
};

/// The level of a schedule's free seats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Low,
    SoldOut,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Low => "low",
            Level::SoldOut => "sold_out",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "low" => Level::Low,
            "sold_out" => Level::SoldOut,
            _ => Level::Ok,
        }
    }

    /// The level of these figures under `threshold`.
    pub fn of(f: &ScheduleFigures, threshold: u32) -> Self {
        if f.available == 0 && f.held == 0 {
            Level::SoldOut
        } else if f.available <= threshold {
            Level::Low
        } else {
            Level::Ok
        }
    }
}

/// The messages a change from `from` to `to` announces: each level crossed
/// downwards once (straight from ok to sold out announces both).
pub fn announcements(from: Level, to: Level) -> Vec<&'static str> {
    let mut out = Vec::new();
    if from < Level::Low && to >= Level::Low {
        out.push("schedule.low_availability");
    }
    if from < Level::SoldOut && to == Level::SoldOut {
        out.push("schedule.sold_out");
    }
    out
}

/// Figures of every schedule of every event known to Redis.
async fn figures(redis: &Redis) -> Result<Vec<(EventId, ScheduleId, ScheduleFigures)>, StoreError> {
    let mut out = Vec::new();
    for event in catalog::known_events(redis).await? {
        let Some(ids) = catalog::schedule_ids(redis, &event).await? else {
            continue;
        };
        let figs = match holds::overview(redis, &event, &ids, None).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(%event, error = ?e, "no figures for this event");
                continue;
            }
        };
        for (id, f) in ids.into_iter().zip(figs) {
            if !f.missing {
                out.push((event.clone(), id, f));
            }
        }
    }
    Ok(out)
}

fn set_gauge(event: &EventId, schedule: &ScheduleId, f: &ScheduleFigures) {
    metrics::gauge!("boxoffice_seats_available", "event" => event.to_string(), "schedule" => schedule.to_string())
        .set(f64::from(f.available));
}

/// Keeps the seat gauges on every instance: free seats, and the threshold
/// they are compared with (so an alert rule can compare the two).
pub async fn gauge_loop(ctx: Context, shutdown: CancellationToken) {
    let Stores { redis, pg } = &ctx.stores;
    let every = ctx
        .config
        .jobs
        .availability_every
        .max(Duration::from_secs(1));
    while super::pause(&shutdown, every).await {
        match figures(redis).await {
            Ok(all) => {
                for (e, s, f) in &all {
                    set_gauge(e, s, f);
                }
            }
            Err(e) => loop_failed("seat_gauges", &e),
        }
        let thresholds: Result<Vec<(String, String, i32)>, _> = pg
            .guard(
                sqlx::query_as(
                    r"select event_id, schedule_id, coalesce(low_seats_threshold, seats / 10) from schedules",
                )
                .fetch_all(pg.pool()),
            )
            .await;
        match thresholds {
            Ok(all) => {
                for (e, s, t) in all {
                    metrics::gauge!("boxoffice_seats_low_threshold", "event" => e, "schedule" => s)
                        .set(f64::from(t));
                }
            }
            Err(e) => loop_failed("seat_gauges", &e),
        }
    }
}

/// One round: compares every schedule's level with the one announced and
/// writes the messages of the changes, under the fence.
///
/// # Errors
/// Fenced out, or a store failed (nothing of the round stays).
pub async fn round(ctx: &Context, fence: &Fence) -> Result<i64, JobError> {
    let all = figures(&ctx.stores.redis).await?;
    let mut tx = ctx.stores.pg.begin().await?;
    let started: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()")
        .fetch_one(&mut *tx)
        .await?;
    let mut written = 0;
    for (event, schedule, f) in &all {
        set_gauge(event, schedule, f);
        let row: Option<(i32, Option<String>)> = sqlx::query_as(
            r"select coalesce(s.low_seats_threshold, s.seats / 10), a.level
              from schedules s left join schedule_alerts a using (event_id, schedule_id)
              where s.event_id = $1 and s.schedule_id = $2",
        )
        .bind(event.as_str())
        .bind(schedule.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((threshold, level)) = row else {
            continue;
        };
        let threshold = threshold.max(0) as u32;
        let from = Level::parse(level.as_deref().unwrap_or("ok"));
        let to = Level::of(f, threshold);
        if from == to {
            continue;
        }
        sqlx::query(
            r"insert into schedule_alerts (event_id, schedule_id, level) values ($1, $2, $3)
              on conflict (event_id, schedule_id) do update set level = excluded.level, changed_at = now()",
        )
        .bind(event.as_str())
        .bind(schedule.as_str())
        .bind(to.as_str())
        .execute(&mut *tx)
        .await?;
        for topic in announcements(from, to) {
            let payload = json!({
                "event_id": event, "schedule_id": schedule, "seats_total": f.seats_total,
                "seats_available": f.available, "held": f.held, "sold": f.sold,
                "low_seats_threshold": threshold,
            });
            sqlx::query(r"insert into outbox (topic, user_id, payload) values ($1, '', $2)")
                .bind(topic)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
            written += 1;
            tracing::info!(%event, %schedule, topic, available = f.available, "availability crossing");
        }
    }
    fence.commit(tx, started, written).await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::{Level, announcements};

    #[test]
    fn each_crossing_is_announced_once() {
        assert_eq!(
            announcements(Level::Ok, Level::Low),
            ["schedule.low_availability"]
        );
        assert_eq!(
            announcements(Level::Low, Level::SoldOut),
            ["schedule.sold_out"]
        );
        assert_eq!(
            announcements(Level::Ok, Level::SoldOut),
            ["schedule.low_availability", "schedule.sold_out"]
        );
        // Seats coming back announce nothing; they re-arm the next crossing.
        assert!(announcements(Level::SoldOut, Level::Low).is_empty());
        assert!(announcements(Level::Low, Level::Ok).is_empty());
        assert_eq!(
            announcements(Level::Low, Level::SoldOut),
            ["schedule.sold_out"]
        );
    }
}
