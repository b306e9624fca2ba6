//! The reconciler: PostgreSQL is the truth for the catalog and for sold
//! seats; Redis is rebuilt from it.
//!
//! - [`finish_unconfirmed`] replays step 3 of payments whose process died
//!   between the PostgreSQL commit and the Redis confirm.
//! - [`restore_if_empty`] notices a Redis that lost its data (the marker key
//!   written at the last restore is gone) and restores every event and
//!   every sold seat by itself.
//! - [`rebuild`] does the full restore on demand (`POST /v1/admin/reconcile`).
//!
//! Every step is idempotent (`confirm_sale.lua` only counts seats it newly
//! marks), so running it on several instances at once is harmless.

use serde::Serialize;
use uuid::Uuid;

use super::refund;
use crate::{
    app::AppState,
    catalog, holds,
    ids::{EventId, HoldId, ScheduleId},
    store::StoreError,
};

/// What a reconcile pass changed.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub events_loaded: u64,
    pub payments_replayed: u64,
    /// Seats that were not `sold` in Redis and now are.
    pub seats_fixed: u64,
    /// Seats that Redis had given to a live hold although PostgreSQL sold them.
    pub holds_overridden: u64,
    /// Payments whose Redis side was unfinished and is now done.
    pub payments_finished: u64,
}

#[derive(sqlx::FromRow)]
struct Sold {
    payment_id: Uuid,
    user_id: String,
    event_id: String,
    schedule_id: String,
    hold_id: String,
    seats: Vec<i32>,
}

async fn replay(
    state: &AppState,
    p: &Sold,
    end_queue: bool,
    report: &mut Report,
) -> Result<(), StoreError> {
    let (Ok(event), Ok(schedule)) = (
        EventId::parse(&p.event_id),
        ScheduleId::parse(&p.schedule_id),
    ) else {
        return Ok(());
    };
    let hold_n = HoldId::parse(&p.hold_id).map(|h| h.n).unwrap_or(0);
    let c = holds::confirm_sale(
        &state.redis,
        &event,
        &schedule,
        hold_n,
        &p.user_id,
        &p.payment_id.to_string(),
        &p.seats,
        end_queue,
    )
    .await?;
    report.seats_fixed += u64::from(c.newly_sold);
    report.holds_overridden += c.overrode.len() as u64;
    if !c.conflicts.is_empty() {
        tracing::error!(payment_id = %p.payment_id, seats = ?c.conflicts, "seat sold to another payment in Redis");
    }
    Ok(())
}

/// Finishes step 3 for payments committed more than a second ago whose
/// Redis side is not confirmed.
///
/// # Errors
/// A store is unavailable.
pub async fn finish_unconfirmed(state: &AppState) -> Result<Report, StoreError> {
    let rows: Vec<Sold> = state
        .pg
        .guard(
            sqlx::query_as(
                r"select payment_id, user_id, event_id, schedule_id, hold_id, seats from payments
                  where not redis_confirmed and refunded_at is null
                    and paid_at < now() - interval '1 second'
                  order by paid_at limit 500",
            )
            .fetch_all(state.pg.pool()),
        )
        .await?;
    let mut report = Report::default();
    for p in &rows {
        replay(state, p, true, &mut report).await?;
        super::mark_confirmed(&state.pg, &[p.payment_id]).await;
        report.payments_finished += 1;
        metrics::counter!("boxoffice_reconciler_fixes_total", "kind" => "payment_finished")
            .increment(1);
    }
    if report.payments_finished > 0 {
        tracing::warn!(?report, "reconciler finished interrupted payments");
    }
    Ok(report)
}

/// Finishes refunds whose Redis step did not run (seats back on sale) and
/// cancellations interrupted half-way (every payment refunded), and keeps
/// cancelled schedules closed in Redis (also after a restore).
///
/// # Errors
/// A store is unavailable.
pub async fn finish_refunds(state: &AppState) -> Result<u64, StoreError> {
    let mut finished = 0;
    for r in refund::unconfirmed(&state.pg).await? {
        refund::release_seats(&state.redis, &state.pg, &r).await?;
        finished += 1;
        metrics::counter!("boxoffice_reconciler_fixes_total", "kind" => "refund_finished")
            .increment(1);
    }
    for (event, schedule) in refund::unfinished_cancellations(&state.pg).await? {
        let (Ok(event), Ok(schedule)) = (EventId::parse(&event), ScheduleId::parse(&schedule))
        else {
            continue;
        };
        holds::cancel_schedule(&state.redis, &event, &schedule).await?;
        finished +=
            refund::refund_schedule(&state.redis, &state.pg, &event, &schedule, None).await?;
    }
    if finished > 0 {
        tracing::warn!(finished, "reconciler finished interrupted refunds");
    }
    Ok(finished)
}

/// Restores the catalog and every sold seat from PostgreSQL.
///
/// # Errors
/// A store is unavailable.
pub async fn rebuild(state: &AppState) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for ev in catalog::pg::all(&state.pg).await? {
        catalog::load_into_redis(&state.redis, &ev).await?;
        report.events_loaded += 1;
    }
    // Cancelled schedules stay closed.
    for (event, schedule) in cancelled_schedules(state).await? {
        if let (Ok(event), Ok(schedule)) = (EventId::parse(&event), ScheduleId::parse(&schedule)) {
            holds::cancel_schedule(&state.redis, &event, &schedule).await?;
        }
    }
    let mut after: Option<Uuid> = None;
    let mut replayed: Vec<Uuid> = Vec::new();
    loop {
        let rows: Vec<Sold> = state
            .pg
            .guard(
                sqlx::query_as(
                    r"select payment_id, user_id, event_id, schedule_id, hold_id, seats from payments
                      where ($1::uuid is null or payment_id > $1) and refunded_at is null
                      order by payment_id limit 1000",
                )
                .bind(after)
                .fetch_all(state.pg.pool()),
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.payment_id);
        for p in &rows {
            replay(state, p, false, &mut report).await?;
            report.payments_replayed += 1;
            replayed.push(p.payment_id);
        }
    }
    // Only the payments replayed above: one committed during the rebuild
    // must keep `redis_confirmed = false` until its own step 3 (or the
    // reconciler) has run.
    state
        .pg
        .guard(
            sqlx::query(r"update payments set redis_confirmed = true where payment_id = any($1) and not redis_confirmed")
                .bind(&replayed)
                .execute(state.pg.pool()),
        )
        .await?;
    state
        .redis
        .set(
            &state.redis.keys().restored_marker(),
            &chrono::Utc::now().to_rfc3339(),
        )
        .await?;
    metrics::counter!("boxoffice_reconciler_fixes_total", "kind" => "seat_restored")
        .increment(report.seats_fixed);
    Ok(report)
}

/// Rebuilds when Redis has lost its data (the restore marker is gone).
///
/// # Errors
/// A store is unavailable.
pub async fn restore_if_empty(state: &AppState) -> Result<Option<Report>, StoreError> {
    if state
        .redis
        .exists(&state.redis.keys().restored_marker())
        .await?
    {
        return Ok(None);
    }
    let report = rebuild(state).await?;
    state.schedule_ids.write().expect("lock").clear();
    tracing::warn!(
        ?report,
        "Redis had no restore marker: catalog and sold seats restored from PostgreSQL"
    );
    Ok(Some(report))
}

async fn cancelled_schedules(state: &AppState) -> Result<Vec<(String, String)>, StoreError> {
    state
        .pg
        .guard(
            sqlx::query_as(
                r"select event_id, schedule_id from schedules where cancelled_at is not null",
            )
            .fetch_all(state.pg.pool()),
        )
        .await
}
