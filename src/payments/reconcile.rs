//! The reconciler: PostgreSQL is the truth for the catalog and for sold
//! seats; Redis is rebuilt from it, one event at a time.
//!
//! - [`finish_unconfirmed`] replays step 3 of payments whose process died
//!   between the PostgreSQL commit and the Redis confirm.
//! - [`restore_missing`] finds every event whose ready mark is gone from
//!   Redis (Redis restarted empty, flushed, or the event's cluster shard
//!   came back empty) and restores it with [`restore_event`]. The mark
//!   lives in the event's own slot, so the check is per event and per
//!   shard: a shard that lost its data is noticed even when every other
//!   shard is fine.
//! - [`rebuild`] restores every event on demand (`POST /v1/admin/reconcile`).
//!
//! A restore writes the catalog, then replays every payment of the event,
//! and only then sets the ready mark (`lua/finish_restore.lua`); until then
//! the hold and payment scripts answer `restoring` (HTTP 503), so a sold
//! seat is never free for a hold. Each restore takes a fresh epoch from
//! PostgreSQL and moves the hold counter into that epoch's range, so no
//! hold id minted after a loss repeats one minted before it.
//!
//! No pass stops at one failing item: every payment and every event is
//! tried each round; failures are counted in
//! `boxoffice_reconciler_failures_total{kind}` and logged at `warn`, at most
//! once per [`WARN_EVERY`] per kind. Every step is idempotent
//! (`confirm_sale.lua` only counts seats it newly marks), so running it on
//! several instances at once is harmless; restores run under a lease per
//! event all the same (`restore:<event>`), so each loss is restored once,
//! with one new epoch.
//!
//! The reconciler works with its [`Context`] (the jobs' stores and
//! settings, and the schedule-id cache whose restored events it forgets),
//! built in `app.rs` for the loop and by `crate::state` for the admin
//! rebuild.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use serde::Serialize;

use super::{refund, relay};
use crate::{
    catalog::{self, Event, cache::ScheduleIds},
    holds,
    ids::{EventId, HoldId, PaymentId, ScheduleId},
    jobs::{
        self,
        fence::{Fence, JobError},
        lease::Locker,
    },
    store::{StoreError, pg::Pg, redis::Redis},
    telemetry::WarnLimiter,
};

/// What the reconciler works with; cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// The stores and the lease settings (restores run under a lease).
    pub jobs: jobs::Context,
    /// Forgets each event it restores.
    pub schedule_ids: Arc<ScheduleIds>,
}

impl Context {
    fn redis(&self) -> &Redis {
        &self.jobs.stores.redis
    }

    fn pg(&self) -> &Pg {
        &self.jobs.stores.pg
    }
}

/// How many Redis calls one pass keeps in flight (replays, ready checks).
const IN_FLIGHT: usize = 32;
/// At most one `warn` line per failure kind this often; the rest are counted.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a reconcile pass changed.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub events_loaded: u64,
    /// Events that could not be restored this pass (their shard down, or
    /// PostgreSQL); tried again on the next pass.
    pub events_failed: u64,
    /// Events another instance was restoring under its lease this pass, or
    /// had restored by the time this one held the lease.
    pub events_busy: u64,
    pub payments_replayed: u64,
    /// Seats that were not `sold` in Redis and now are.
    pub seats_fixed: u64,
    /// Seats that Redis had given to a live hold although PostgreSQL sold them.
    pub holds_overridden: u64,
    /// Payments whose Redis side was unfinished and is now done.
    pub payments_finished: u64,
    /// Payments whose replay failed this pass (tried again next pass).
    pub payments_failed: u64,
    /// Outbox messages made pending again so the event stream gets them
    /// again (`POST /v1/admin/reconcile` only; see `relay::restore_stream`).
    pub stream_messages_requeued: u64,
}

#[derive(sqlx::FromRow)]
struct Sold {
    payment_id: PaymentId,
    user_id: String,
    event_id: String,
    schedule_id: String,
    hold_id: String,
    seats: Vec<i32>,
}

/// Counts a failure and logs it at `warn`, at most once per [`WARN_EVERY`]
/// per kind (a shard down for a minute must not write a line per event per
/// round).
fn failed(kind: &'static str, what: &str, e: &StoreError) {
    static WARNINGS: WarnLimiter = WarnLimiter::new(WARN_EVERY);
    metrics::counter!("boxoffice_reconciler_failures_total", "kind" => kind).increment(1);
    if let Some(suppressed) = WARNINGS.due(kind) {
        tracing::warn!(kind, what, error = %e, suppressed, "reconciler step failed; retried next round");
    }
}

async fn replay(ctx: &Context, p: &Sold, end_queue: bool) -> Result<holds::Confirmed, StoreError> {
    let (Ok(event), Ok(schedule)) = (
        EventId::parse(&p.event_id),
        ScheduleId::parse(&p.schedule_id),
    ) else {
        return Ok(holds::Confirmed::default());
    };
    let hold_n = HoldId::parse(&p.hold_id).map(|h| h.n).unwrap_or(0);
    let sale = holds::Sale {
        event: &event,
        schedule: &schedule,
        hold_n,
        user: &p.user_id,
        payment_id: p.payment_id,
        seats: &p.seats,
        end_queue,
    };
    let c = holds::confirm_sale(ctx.redis(), sale).await?;
    if !c.conflicts.is_empty() {
        tracing::error!(payment_id = %p.payment_id, seats = ?c.conflicts, "seat sold to another payment in Redis");
    }
    Ok(c)
}

fn add(report: &mut Report, c: &holds::Confirmed) {
    report.seats_fixed += u64::from(c.newly_sold);
    report.holds_overridden += c.overrode.len() as u64;
}

/// Finishes step 3 for payments committed more than a second ago whose
/// Redis side is not confirmed. A payment whose replay fails (its event's
/// shard down or not restored yet) is counted and left for the next pass;
/// the others go on.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn finish_unconfirmed(ctx: &Context) -> Result<Report, StoreError> {
    let rows: Vec<Sold> = ctx
        .pg()
        .guard(
            sqlx::query_as(
                r"select p.payment_id, p.user_id, p.event_id, p.schedule_id, p.hold_id, p.seats
                  from payments_unconfirmed u join payments p using (payment_id)
                  where p.refunded_at is null and u.paid_at < now() - interval '1 second'
                  order by u.paid_at limit 500",
            )
            .fetch_all(ctx.pg().pool()),
        )
        .await?;
    let mut report = Report::default();
    let mut results = futures::stream::iter(rows)
        .map(|p| {
            let ctx = ctx.clone();
            async move {
                let r = replay(&ctx, &p, true).await;
                (p, r)
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut done = Vec::new();
    while let Some((p, r)) = results.next().await {
        match r {
            Ok(c) => {
                add(&mut report, &c);
                done.push(p.payment_id);
                report.payments_finished += 1;
                metrics::counter!("boxoffice_reconciler_fixes_total", "kind" => "payment_finished")
                    .increment(1);
            }
            Err(e) => {
                report.payments_failed += 1;
                failed("finish_payment", &p.payment_id.to_string(), &e);
            }
        }
    }
    if !done.is_empty() {
        super::mark_confirmed(ctx.pg(), &done).await;
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
pub async fn finish_refunds(ctx: &Context) -> Result<u64, StoreError> {
    let mut finished = 0;
    // Every refund and every cancellation is tried each round: one that
    // fails (its event's shard down, say) does not hold up the others.
    for r in refund::unconfirmed(ctx.pg()).await? {
        match refund::release_seats(ctx.redis(), ctx.pg(), &r).await {
            Ok(()) => {
                finished += 1;
                metrics::counter!("boxoffice_reconciler_fixes_total", "kind" => "refund_finished")
                    .increment(1);
            }
            Err(e) => failed("refund", &r.payment_id.to_string(), &e),
        }
    }
    for (event, schedule) in refund::unfinished_cancellations(ctx.pg()).await? {
        let (Ok(event), Ok(schedule)) = (EventId::parse(&event), ScheduleId::parse(&schedule))
        else {
            continue;
        };
        let run = async {
            holds::cancel_schedule(ctx.redis(), &event, &schedule).await?;
            refund::refund_schedule(ctx.redis(), ctx.pg(), &event, &schedule, None).await
        };
        match run.await {
            Ok(n) => finished += n,
            Err(e) => failed("cancellation", &format!("{event}/{schedule}"), &e),
        }
    }
    if finished > 0 {
        tracing::warn!(finished, "reconciler finished interrupted refunds");
    }
    Ok(finished)
}

/// Restores one event into Redis from PostgreSQL: takes a new epoch, writes
/// the catalog, replays every payment of the event, then marks it ready
/// (moving the hold counter into the new epoch's range). Until the mark is
/// written, holds and payments of the event answer 503. Safe to run on
/// several instances at once and on an event that is already ready (the
/// admin rebuild does).
///
/// # Errors
/// A store is unavailable; nothing is marked ready then.
pub async fn restore_event(ctx: &Context, ev: &Event, epoch: u32) -> Result<Report, StoreError> {
    let mut report = Report::default();
    catalog::load_into_redis(ctx.redis(), ev).await?;
    // Cancelled schedules stay closed.
    for (event, schedule) in cancelled_schedules(ctx).await? {
        if event != ev.event_id.as_str() {
            continue;
        }
        if let Ok(schedule) = ScheduleId::parse(&schedule) {
            holds::cancel_schedule(ctx.redis(), &ev.event_id, &schedule).await?;
        }
    }
    let mut after: Option<PaymentId> = None;
    loop {
        let rows: Vec<Sold> = ctx
            .pg()
            .guard(
                sqlx::query_as(
                    r"select payment_id, user_id, event_id, schedule_id, hold_id, seats from payments
                      where event_id = $1 and ($2::uuid is null or payment_id > $2)
                        and refunded_at is null
                      order by payment_id limit 1000",
                )
                .bind(ev.event_id.as_str())
                .bind(after)
                .fetch_all(ctx.pg().pool()),
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.payment_id);
        // Independent and idempotent: replayed many at a time. One failure
        // fails the restore (the event must not be marked ready without
        // every sold seat), after the others have run.
        let results: Vec<_> = futures::stream::iter(rows)
            .map(|p| {
                let ctx = ctx.clone();
                async move { replay(&ctx, &p, false).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for r in results {
            add(&mut report, &r?);
            report.payments_replayed += 1;
        }
    }
    // No payment is marked confirmed here: one whose step 3 never ran
    // (a crash after the commit) still has its buyer's queue entry to end,
    // which this replay (end_queue off: a restore must not end entries of
    // payments long done) does not do. `finish_unconfirmed` replays those
    // with end_queue on and marks them.
    #[cfg(feature = "failpoints")]
    slow_restore(ctx).await;
    catalog::finish_restore(ctx.redis(), &ev.event_id, epoch).await?;
    ctx.schedule_ids.forget(&ev.event_id);
    report.events_loaded = 1;
    metrics::counter!("boxoffice_reconciler_fixes_total", "kind" => "seat_restored")
        .increment(report.seats_fixed);
    Ok(report)
}

/// Test-only (the `failpoints` feature): `slow_restore_ms:<n>` holds every
/// restore for `n` ms before it marks the event ready, so restores started
/// by several instances overlap (and a test can show that only one runs).
#[cfg(feature = "failpoints")]
async fn slow_restore(ctx: &Context) {
    if let Some(ms) = ctx
        .jobs
        .config
        .failpoint
        .as_deref()
        .and_then(|f| f.strip_prefix("slow_restore_ms:"))
        .and_then(|n| n.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn merge(into: &mut Report, r: &Report) {
    into.events_loaded += r.events_loaded;
    into.events_failed += r.events_failed;
    into.events_busy += r.events_busy;
    into.payments_replayed += r.payments_replayed;
    into.seats_fixed += r.seats_fixed;
    into.holds_overridden += r.holds_overridden;
    into.payments_finished += r.payments_finished;
    into.payments_failed += r.payments_failed;
}

/// Restores the given events, each on its own: one that fails (its shard
/// down) is counted and does not stop the others. With `only_missing`, an
/// event that is ready again by the time its lease is held (another
/// instance restored it in between) is left alone.
async fn restore_each(ctx: &Context, events: Vec<Event>, only_missing: bool) -> Report {
    let mut report = Report::default();
    let locker = match ctx.jobs.locker() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "restoring without leases");
            None
        }
    };
    let mut results = futures::stream::iter(events)
        .map(|ev| {
            let ctx = ctx.clone();
            let locker = locker.clone();
            async move {
                let r = restore_leased(&ctx, locker.as_ref(), &ev, only_missing).await;
                (ev, r)
            }
        })
        .buffer_unordered(8);
    while let Some((ev, r)) = results.next().await {
        match r {
            Ok(Some(r)) => merge(&mut report, &r),
            // Another instance holds this event's lease and restores it.
            Ok(None) => report.events_busy += 1,
            Err(e) => {
                report.events_failed += 1;
                failed("restore_event", ev.event_id.as_str(), &e);
            }
        }
    }
    report
}

/// Restores one event under the lease `restore:<event>`, so one instance
/// restores an event at a time: each loss then costs one epoch and one
/// replay, not one per instance. A lease and not a Lua script: the work
/// spans PostgreSQL and many Redis calls and may take seconds, which no
/// script may. The epoch bump (the restore's PostgreSQL write) carries the
/// lease's fencing token, so a restorer paused past its lease cannot take
/// an epoch after a newer one did; its late Redis writes are harmless (the
/// restore is idempotent, the hold counter only moves up). The lease is
/// renewed while the restore runs, however long it takes.
///
/// The lease alone would not make a restore happen once per loss: another
/// instance may have seen the event missing just before this one marked it
/// ready, and take the lease right after this one gave it back. So with
/// `only_missing` the ready mark is checked again under the lease. `None`
/// when another instance holds the lease or restored the event meanwhile,
/// or this one was fenced out.
///
/// # Errors
/// A store is unavailable.
async fn restore_leased(
    ctx: &Context,
    locker: Option<&Locker>,
    ev: &Event,
    only_missing: bool,
) -> Result<Option<Report>, StoreError> {
    let Some(locker) = locker else {
        let epoch = catalog::pg::bump_epoch(ctx.pg(), &ev.event_id).await?;
        return restore_event(ctx, ev, epoch).await.map(Some);
    };
    let name = format!("restore:{}", ev.event_id);
    let run = jobs::leased_once(&ctx.jobs, locker, &name, |fence| async move {
        if only_missing && catalog::is_ready(ctx.redis(), &ev.event_id).await? {
            return Ok(None);
        }
        let epoch = bump_epoch_fenced(ctx, &ev.event_id, &fence).await?;
        Ok(Some(restore_event(ctx, ev, epoch).await?))
    })
    .await;
    match run {
        None | Some(Err(JobError::Fenced { .. })) => Ok(None),
        Some(Ok(report)) => Ok(report),
        Some(Err(JobError::Store(e))) => Err(e),
    }
}

/// [`catalog::pg::bump_epoch`] in a transaction that commits only under
/// the newest fencing token of the event's restore lease.
async fn bump_epoch_fenced(ctx: &Context, event: &EventId, fence: &Fence) -> Result<u32, JobError> {
    let mut tx = ctx.pg().begin().await?;
    let started = chrono::Utc::now();
    let epoch = catalog::pg::bump_epoch_in(&mut tx, event).await?;
    fence.commit(tx, started, 1).await?;
    Ok(epoch)
}

/// Restores the catalog and every sold seat of every event from PostgreSQL,
/// sends every kept outbox message to the event stream again, and forgets
/// every cached schedule list.
///
/// # Errors
/// PostgreSQL unavailable, or no event could be restored (Redis down).
pub async fn rebuild(ctx: &Context) -> Result<Report, StoreError> {
    let events = catalog::pg::all(ctx.pg()).await?;
    let mut report = restore_each(ctx, events, false).await;
    ctx.schedule_ids.clear();
    // The stream too may have missed writes the service cannot see (a
    // Sentinel failover, an AOF restart): send it again as after a loss.
    let stream = match ctx
        .redis()
        .del(&ctx.redis().keys().outbox_stream_ready())
        .await
    {
        Ok(()) => relay::restore_stream(&ctx.jobs).await,
        Err(e) => Err(e),
    };
    match stream {
        Ok(n) => report.stream_messages_requeued = n.unwrap_or(0),
        Err(e) => failed("restore_stream", "event stream", &e),
    }
    if report.events_failed > 0 && report.events_loaded == 0 {
        // Nothing worked: say why, as a 503.
        ctx.redis().ping().await?;
    }
    Ok(report)
}

/// After a Redis Cluster failover the promoted replica may lack the old
/// master's last writes (a sale's seats, the last hold numbers, the last
/// stream messages): the events in the slots that moved lose their ready
/// mark here, so the pass below restores them (sold seats replayed, hold
/// ids in a new epoch) while their holds answer 503; so does the event
/// stream, which `relay::restore_stream` then fills again. A mark that
/// cannot be removed now is retried next round.
async fn forget_failed_over(ctx: &Context, events: &[Event]) {
    let moved = ctx.redis().take_moved_slots();
    if moved.is_empty() {
        return;
    }
    let mut retry = false;
    let keys = ctx.redis().keys();
    let marks = events
        .iter()
        .map(|ev| (ev.event_id.as_str(), keys.event(&ev.event_id).ready()))
        .chain([("event stream", keys.outbox_stream_ready())]);
    for (what, key) in marks {
        let slot = crate::store::redis::Redis::slot_of(&key);
        if !moved.iter().any(|&(a, b)| (a..=b).contains(&slot)) {
            continue;
        }
        tracing::warn!(what, "shard failed over; restoring it");
        if let Err(e) = ctx.redis().del(&key).await {
            failed("failover_reset", what, &e);
            retry = true;
        }
    }
    if retry {
        ctx.redis().requeue_moved_slots(moved);
    }
}

/// Restores every event whose ready mark is missing from Redis, and puts
/// every event back in the event index (which lives on one shard and may
/// have been lost apart from the events). Returns None when nothing was
/// missing.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn restore_missing(ctx: &Context) -> Result<Option<Report>, StoreError> {
    let events = catalog::pg::all(ctx.pg()).await?;
    // Also without events: the stream (wallet charges) may have moved.
    forget_failed_over(ctx, &events).await;
    if events.is_empty() {
        return Ok(None);
    }
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    if let Err(e) = ctx
        .redis()
        .sadd_many(&ctx.redis().keys().events_index(), &ids)
        .await
    {
        failed("event_index", "events index", &e);
    }
    let checks: Vec<(Event, Result<bool, StoreError>)> = futures::stream::iter(events)
        .map(|ev| {
            let redis = ctx.redis().clone();
            async move {
                let r = catalog::is_ready(&redis, &ev.event_id).await;
                (ev, r)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut missing = Vec::new();
    for (ev, ready) in checks {
        match ready {
            Ok(true) => {}
            Ok(false) => missing.push(ev),
            Err(e) => failed("ready_check", ev.event_id.as_str(), &e),
        }
    }
    if missing.is_empty() {
        return Ok(None);
    }
    let report = restore_each(ctx, missing, true).await;
    if report.events_loaded > 0 {
        tracing::warn!(
            ?report,
            "events missing from Redis were restored from PostgreSQL (catalog and sold seats)"
        );
    }
    Ok(Some(report))
}

async fn cancelled_schedules(ctx: &Context) -> Result<Vec<(String, String)>, StoreError> {
    ctx.pg()
        .guard(
            sqlx::query_as(
                r"select event_id, schedule_id from schedules where cancelled_at is not null",
            )
            .fetch_all(ctx.pg().pool()),
        )
        .await
}
