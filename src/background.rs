//! Background loops: each runs on every instance, is safe to run
//! concurrently (the Lua scripts are atomic and idempotent), and stops at a
//! safe point (between iterations) when shutdown is requested.
//!
//! Nothing correct depends on them: holds expire lazily inside every script
//! and idle entries are dropped by the status script too. The admission
//! loop is the only one that makes progress happen (it admits users).

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    app::AppState,
    catalog, holds, idempotency,
    ids::{EventId, ScheduleId},
    payments::{reconcile, relay},
    queue,
};

/// Starts every loop; they end when `shutdown` is cancelled.
pub fn spawn_all(state: &AppState, shutdown: &CancellationToken, set: &mut JoinSet<()>) {
    set.spawn(admission_loop(state.clone(), shutdown.clone()));
    set.spawn(reconcile_loop(state.clone(), shutdown.clone()));
    set.spawn(relay_loop(state.clone(), shutdown.clone()));
    set.spawn(sweep_loop(state.clone(), shutdown.clone()));
    set.spawn(queue::autopilot::run(state.clone(), shutdown.clone()));
    crate::jobs::spawn_all(state, shutdown, set);
    let limits = state.limits.clone();
    let stop = shutdown.clone();
    set.spawn(async move {
        while pause(&stop, Duration::from_secs(30)).await {
            limits.retain_recent();
        }
    });
}

/// Waits `every` or until shutdown; false means stop.
async fn pause(shutdown: &CancellationToken, every: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(every) => true,
    }
}

/// Restores events missing from Redis (per event, so per cluster shard)
/// and finishes interrupted payments; runs at start and then every
/// `BOXOFFICE_RECONCILE_MS`.
async fn reconcile_loop(state: AppState, shutdown: CancellationToken) {
    let mut rounds: u64 = 0;
    loop {
        // Each step tries every event / payment and counts and logs its
        // own failures (see `reconcile`); what is left here is PostgreSQL
        // itself being down, which the breaker already reports.
        if let Err(e) = reconcile::restore_missing(&state).await {
            tracing::debug!(error = %e, "restore check failed");
        }
        if let Err(e) = reconcile::finish_unconfirmed(&state).await {
            tracing::debug!(error = %e, "finishing payments failed");
        }
        if let Err(e) = reconcile::finish_refunds(&state).await {
            tracing::warn!(error = %e, "finishing refunds failed");
        }
        if rounds.is_multiple_of(1800)
            && let Err(e) = idempotency::purge_old(&state.pg).await
        {
            tracing::debug!(error = %e, "idempotency purge failed");
        }
        rounds += 1;
        // A Redis Cluster failover starts the next round at once: the
        // failed-over events answer 503 until they are restored.
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(state.config.reconcile_interval) => {}
            () = state.redis.slots_moved() => {}
        }
    }
}

async fn relay_loop(state: AppState, shutdown: CancellationToken) {
    loop {
        let busy = match relay::publish_batch(&state).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::debug!(error = %e, "outbox relay failed");
                false
            }
        };
        // Drain quickly while there is a backlog.
        let every = if busy {
            Duration::from_millis(10)
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
async fn sweep_loop(state: AppState, shutdown: CancellationToken) {
    while pause(&shutdown, Duration::from_secs(5)).await {
        let Ok(events) = catalog::known_events(&state.redis).await else {
            continue;
        };
        for event in events {
            let key = state.redis.keys().event(&event).config();
            let Ok(Some(list)) = state.redis.hget(&key, "schedules").await else {
                continue;
            };
            for s in list.split(',').filter_map(|s| ScheduleId::parse(s).ok()) {
                let _ = holds::sweep(&state.redis, &event, &s).await;
            }
        }
    }
}

/// How often the list of events to tick is re-read from Redis.
const EVENTS_REFRESH: Duration = Duration::from_millis(500);

async fn admission_loop(state: AppState, shutdown: CancellationToken) {
    let every = state.config.tick_interval;
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
        if refreshed.is_none_or(|t| t.elapsed() >= EVENTS_REFRESH)
            && let Ok(list) = catalog::known_events(&state.redis).await
        {
            events = list;
            refreshed = Some(Instant::now());
        }
        for event in &events {
            match queue::tick(&state.redis, event, min_interval_ms).await {
                Ok(t) => record_tick(event, &t),
                Err(e) => tracing::debug!(%event, error = %e, "admission tick failed"),
            }
        }
    }
    tracing::debug!("admission loop stopped");
}

fn record_tick(event: &EventId, t: &queue::Tick) {
    if t.status == "no_event" {
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
