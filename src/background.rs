//! Background loops: each runs on every instance, is safe to run
//! concurrently (the Lua scripts are atomic and idempotent), and stops at a
//! safe point (between iterations) when shutdown is requested.
//!
//! Nothing correct depends on them: holds expire lazily inside every script
//! and idle entries are dropped by the status script too. The admission
//! loop is the only one that makes progress happen (it admits users).
//!
//! The loops get the parts they work with (the reconciler's
//! [`reconcile::Context`]: stores, settings, the schedule-id cache), built
//! in `app.rs`, never the HTTP state. A failing step is counted in
//! `boxoffice_background_failures_total{loop}` and logged at `warn`, at
//! most every 30 s per loop ([`crate::telemetry::loop_failed`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog, holds, idempotency,
    ids::EventId,
    payments::{reconcile, relay},
    queue::{self, autopilot, autopilot::Autopilot},
    store::{Stores, redis::Redis},
    telemetry::loop_failed,
};

/// Starts every loop (and the leased jobs' runners); they end when
/// `shutdown` is cancelled.
pub fn spawn_all(
    ctx: &reconcile::Context,
    autopilot: &Arc<Autopilot>,
    shutdown: &CancellationToken,
    set: &mut JoinSet<()>,
) {
    let stores = &ctx.jobs.stores;
    let config = &ctx.jobs.config;
    set.spawn(admission_loop(
        stores.redis.clone(),
        config.tick_interval,
        shutdown.clone(),
    ));
    set.spawn(reconcile_loop(ctx.clone(), shutdown.clone()));
    set.spawn(relay_loop(stores.clone(), shutdown.clone()));
    set.spawn(sweep_loop(stores.redis.clone(), shutdown.clone()));
    set.spawn(autopilot::run(
        stores.clone(),
        autopilot.clone(),
        shutdown.clone(),
    ));
    crate::jobs::spawn_all(&ctx.jobs, shutdown, set);
}

/// Waits `every` or until shutdown; false means stop.
async fn pause(shutdown: &CancellationToken, every: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(every) => true,
    }
}

/// Restores events missing from Redis (per event, so per cluster shard)
/// and the event stream if it was lost, and finishes interrupted payments;
/// runs at start and then every
/// `BOXOFFICE_RECONCILE_MS`.
async fn reconcile_loop(ctx: reconcile::Context, shutdown: CancellationToken) {
    let Stores { redis, pg } = &ctx.jobs.stores;
    let mut rounds: u64 = 0;
    loop {
        // Each step tries every event / payment and counts and logs its
        // own failures (see `reconcile`); what fails here is a whole step
        // (PostgreSQL down, say).
        if let Err(e) = reconcile::restore_missing(&ctx).await {
            loop_failed("reconcile_restore", &e);
        }
        if let Err(e) = relay::restore_stream(&ctx.jobs).await {
            loop_failed("reconcile_stream", &e);
        }
        if let Err(e) = reconcile::finish_unconfirmed(&ctx).await {
            loop_failed("reconcile_payments", &e);
        }
        if let Err(e) = reconcile::finish_refunds(&ctx).await {
            loop_failed("reconcile_refunds", &e);
        }
        if rounds.is_multiple_of(1800)
            && let Err(e) = idempotency::purge_old(pg).await
        {
            loop_failed("idempotency_purge", &e);
        }
        rounds += 1;
        // A Redis Cluster failover starts the next round at once: the
        // failed-over events answer 503 until they are restored.
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(ctx.jobs.config.reconcile_interval) => {}
            () = redis.slots_moved() => {}
        }
    }
}

async fn relay_loop(stores: Stores, shutdown: CancellationToken) {
    loop {
        let sent = match relay::publish_batch(&stores).await {
            Ok(n) => n,
            Err(e) => {
                loop_failed("relay", &e);
                0
            }
        };
        // Drain quickly while there is a backlog (a full batch). A batch
        // that was not full waits 100 ms for the next: while payments come
        // in, each relay commit (a WAL flush) then carries ten times as
        // many messages as at 10 ms, which left the payment scenario 5 %
        // faster on average (docs/bench/surge-17.md, "Eleventh run").
        let every = if sent == relay::BATCH {
            Duration::from_millis(10)
        } else if sent > 0 {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(500)
        };
        if !pause(&shutdown, every).await {
            break;
        }
    }
}

/// Expires due holds for the metrics; correctness never depends on it
/// (every script expires due holds itself first).
async fn sweep_loop(redis: Redis, shutdown: CancellationToken) {
    while pause(&shutdown, Duration::from_secs(5)).await {
        let events = match catalog::known_events(&redis).await {
            Ok(events) => events,
            Err(e) => {
                loop_failed("sweep", &e);
                continue;
            }
        };
        for event in events {
            let schedules = match catalog::schedule_ids(&redis, &event).await {
                Ok(list) => list.unwrap_or_default(),
                Err(e) => {
                    loop_failed("sweep", &e);
                    continue;
                }
            };
            for s in schedules {
                if let Err(e) = holds::sweep(&redis, &event, &s).await {
                    loop_failed("sweep", &e);
                }
            }
        }
    }
}

/// How often the list of events to tick is re-read from Redis.
const EVENTS_REFRESH: Duration = Duration::from_millis(500);

async fn admission_loop(redis: Redis, every: Duration, shutdown: CancellationToken) {
    // Instances tick independently; the script skips a tick that comes
    // sooner than half an interval after another instance's.
    let min_interval_ms = (every.as_millis() as u64 / 2).max(5);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut events: Vec<EventId> = Vec::new();
    let mut refreshed: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        if refreshed.is_none_or(|t| t.elapsed() >= EVENTS_REFRESH) {
            match catalog::known_events(&redis).await {
                Ok(list) => {
                    events = list;
                    refreshed = Some(Instant::now());
                }
                Err(e) => loop_failed("admission", &e),
            }
        }
        for event in &events {
            match queue::tick(&redis, event, min_interval_ms).await {
                Ok(t) => record_tick(event, &t),
                Err(e) => loop_failed("admission", &e),
            }
        }
    }
    tracing::debug!("admission loop stopped");
}

fn record_tick(event: &EventId, t: &queue::Tick) {
    if t.status == queue::TickStatus::NoEvent {
        return;
    }
    let ev = event.to_string();
    metrics::counter!("boxoffice_queue_admissions_total", "event" => ev.clone())
        .increment(t.admitted);
    metrics::counter!("boxoffice_queue_evictions_total", "event" => ev.clone(), "reason" => "idle")
        .increment(t.evicted);
    metrics::counter!("boxoffice_queue_evictions_total", "event" => ev.clone(), "reason" => "window_over").increment(t.expired);
    metrics::counter!("boxoffice_queue_evictions_total", "event" => ev.clone(), "reason" => "idle_admitted").increment(t.released);
    metrics::gauge!("boxoffice_queue_waiting", "event" => ev.clone()).set(t.waiting as f64);
    metrics::gauge!("boxoffice_queue_admitted", "event" => ev.clone()).set(t.active as f64);
    metrics::gauge!("boxoffice_queue_admission_rate", "event" => ev).set(t.rate);
}
