//! The demo event `make run` loads so a newcomer can try the flow with curl:
//! one concert, two dates, 50 seats each (rows of 10), admitting 5 users
//! per second.

use chrono::{Duration, Utc};
use rust_decimal::Decimal;

use crate::{
    catalog::{self, Event, QueueSettings, Schedule},
    ids::{EventId, ScheduleId},
    store::Stores,
};

pub const DEMO_EVENT: &str = "demo-concert";

pub fn demo_event() -> Event {
    let day = |d: i64| {
        (Utc::now() + Duration::days(d))
            .date_naive()
            .and_hms_opt(20, 0, 0)
            .expect("valid time")
            .and_utc()
    };
    let schedule = |id: &str, d: i64| Schedule {
        schedule_id: ScheduleId::parse(id).expect("valid id"),
        starts_at: day(d),
        seats: 50,
        row_size: 10,
        price: Decimal::from(50_000),
        hold_seconds: 300,
        max_per_user: 4,
        low_seats_threshold: 5,
    };
    Event {
        event_id: EventId::parse(DEMO_EVENT).expect("valid id"),
        name: "Demo Concert".into(),
        queue: QueueSettings {
            admit_per_second: 5,
            max_active: 100,
            active_ttl_seconds: 900,
            idle_timeout_seconds: 60,
            paused: false,
            autopilot: crate::queue::autopilot::Settings::fixed(5),
        },
        schedules: vec![schedule("day-1", 30), schedule("day-2", 31)],
        fair: crate::fair::FairStart::new(),
    }
}

/// Loads the demo event unless it exists (then only refreshes Redis).
///
/// # Errors
/// A store failure.
pub async fn load(stores: &Stores) -> anyhow::Result<()> {
    let ev = demo_event();
    let created = catalog::pg::insert(&stores.pg, &ev).await?;
    let ev = if created {
        ev
    } else {
        catalog::pg::get(&stores.pg, &ev.event_id)
            .await?
            .unwrap_or(ev)
    };
    catalog::load_into_redis(&stores.redis, &ev).await?;
    if created {
        // Nothing sold yet: ready at once. An existing demo event that Redis
        // lost is restored, sold seats first, by the reconciler.
        catalog::finish_restore(&stores.redis, &ev.event_id, 0).await?;
    }
    tracing::info!(event_id = DEMO_EVENT, created, "demo event ready");
    Ok(())
}
