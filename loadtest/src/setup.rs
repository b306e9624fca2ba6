//! Per-scenario set-up through the service's admin API: each run creates
//! its own event (id = the run id), sized for that scenario.

use serde_json::{Map, Value, json};

use crate::common::{Ctx, Scenario, env_u64};

/// A far-future performance date: nothing in the service depends on it.
const STARTS_AT: &str = "2030-01-01T19:00:00Z";

/// Seats one user may hold plus buy per schedule: the service's maximum.
pub const MAX_PER_USER: u64 = 100;

struct Queue {
    admit_per_second: u64,
    max_active: u64,
    active_ttl_seconds: u64,
    idle_timeout_seconds: u64,
    paused: bool,
    /// `Some((target_p99_ms, start))`: admission mode `auto`, the autopilot
    /// starting at `start` per second and steering the rate between 1 and
    /// `admit_per_second` to keep admitted buyers' p99 under the target.
    auto: Option<(u64, u64)>,
}

/// Admits every join at once: nobody waits, capacity and rate never bind.
const OPEN: Queue = Queue {
    admit_per_second: 100_000,
    max_active: 10_000_000,
    active_ttl_seconds: 3_600,
    idle_timeout_seconds: 3_600,
    paused: false,
    auto: None,
};

fn schedule(
    id: &str,
    seats: u64,
    row_size: u64,
    price: u64,
    hold_seconds: u64,
    max_per_user: u64,
) -> Value {
    json!({
        "schedule_id": id,
        "starts_at": STARTS_AT,
        "seats": seats,
        "row_size": row_size,
        "price": price.to_string(),
        "hold_seconds": hold_seconds,
        "max_per_user": max_per_user,
    })
}

pub async fn admin(
    ctx: &Ctx,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    // Side calls (setup, final figures) must end even when the service or
    // its Redis is down: a bounded connect and a bounded whole request.
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut rb = client
        .request(method.clone(), format!("{}{path}", ctx.host))
        .header("x-api-key", &ctx.service_key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.map_err(|e| {
        anyhow::anyhow!(
            "{method} {path}: {e} (is the service running at {}?)",
            ctx.host
        )
    })?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        anyhow::bail!("{method} {path}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create_event(ctx: &Ctx, q: &Queue, schedules: Vec<Value>) -> anyhow::Result<()> {
    let mut queue = json!({
        "admit_per_second": q.admit_per_second,
        "max_active": q.max_active,
        "active_ttl_seconds": q.active_ttl_seconds,
        "idle_timeout_seconds": q.idle_timeout_seconds,
        "paused": q.paused,
    });
    if let Some((target, start)) = q.auto {
        // In auto mode admit_per_second is where the autopilot starts.
        queue["admit_per_second"] = start.min(q.admit_per_second).into();
        queue["admission_mode"] = "auto".into();
        queue["target_p99_ms"] = target.into();
        queue["min_admit_per_second"] = 1.into();
        queue["max_admit_per_second"] = q.admit_per_second.into();
    }
    let body = json!({
        "event_id": ctx.event,
        "name": format!("load test {} ({})", ctx.scenario.name(), ctx.run),
        "queue": queue,
        "schedules": schedules,
    });
    admin(ctx, reqwest::Method::POST, "/v1/admin/events", Some(body)).await?;
    Ok(())
}

/// Sets up `ctx` for its scenario; `users` is Goose's `-u`.
pub async fn prepare(
    ctx: &mut Ctx,
    users: usize,
    redis: Option<&fred::clients::Client>,
    extra: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let price = ctx.price;
    match ctx.scenario {
        Scenario::Ceiling => {}
        Scenario::Join | Scenario::Status => {
            ctx.schedules = vec!["s1".into()];
            ctx.seats = 100;
            create_event(ctx, &OPEN, vec![schedule("s1", 100, 10, price, 600, 10)]).await?;
        }
        Scenario::Holds | Scenario::Payment | Scenario::Pay => {
            // Ten large schedules: a user may hold or buy at most 100 seats
            // per schedule, so users move on to the next schedule (and
            // after the last, to a new user id) instead of hitting the limit.
            ctx.seats = 100_000;
            ctx.schedules = (0..10).map(|i| format!("s{i}")).collect();
            let list = ctx
                .schedules
                .iter()
                .map(|s| schedule(s, 100_000, 50, price, 3_600, MAX_PER_USER))
                .collect();
            create_event(ctx, &OPEN, list).await?;
            if ctx.scenario == Scenario::Pay {
                let n = env_u64("LOADTEST_PAY_STOCK", 30_000);
                crate::pay::stock(ctx, n, extra).await?;
            }
        }
        Scenario::HotSeat => {
            ctx.seats = 100;
            ctx.schedules = vec!["hot".into()];
            create_event(
                ctx,
                &OPEN,
                vec![schedule("hot", 100, 10, price, 3_600, MAX_PER_USER)],
            )
            .await?;
        }
        Scenario::FlashSale => {
            ctx.seats = env_u64("LOADTEST_SEATS", 5_000);
            ctx.buyers = env_u64("LOADTEST_BUYERS", users as u64);
            ctx.schedules = vec!["main".into()];
            let q = Queue {
                admit_per_second: env_u64("LOADTEST_ADMIT_PER_SECOND", 1_000),
                max_active: env_u64("LOADTEST_MAX_ACTIVE", 1_000),
                active_ttl_seconds: 300,
                idle_timeout_seconds: 60,
                paused: false,
                auto: match std::env::var("LOADTEST_ADMISSION").as_deref() {
                    Ok("auto") => Some((
                        env_u64("LOADTEST_TARGET_P99_MS", 50),
                        env_u64("LOADTEST_AUTO_START", 200),
                    )),
                    Ok("fixed") | Err(_) => None,
                    Ok(other) => {
                        anyhow::bail!("LOADTEST_ADMISSION must be fixed or auto, not {other}")
                    }
                },
            };
            extra.insert("admit_per_second".into(), q.admit_per_second.into());
            extra.insert(
                "admission".into(),
                (if q.auto.is_some() { "auto" } else { "fixed" }).into(),
            );
            if let Some((target, start)) = q.auto {
                extra.insert("auto_target_p99_ms".into(), target.into());
                extra.insert("auto_start".into(), start.min(q.admit_per_second).into());
            }
            extra.insert("max_active".into(), q.max_active.into());
            create_event(
                ctx,
                &q,
                vec![schedule("main", ctx.seats, 50, price, 120, 4)],
            )
            .await?;
            // The pre-queue phase: buyers arrive before opens_at and are
            // ordered by the draw (LOADTEST_PREQUEUE_SECONDS, 0 = none).
            let pre = env_u64("LOADTEST_PREQUEUE_SECONDS", 5);
            if pre > 0 {
                let at = |ms: i64| {
                    (chrono::Utc::now() + chrono::Duration::milliseconds(ms))
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                };
                let sale = json!({"sale": {"prequeue_opens_at": at(0), "opens_at": at(pre as i64 * 1000)}});
                let path = format!("/v1/admin/events/{}", ctx.event);
                admin(ctx, reqwest::Method::PATCH, &path, Some(sale)).await?;
                extra.insert("prequeue_seconds".into(), pre.into());
            }
        }
        Scenario::PollStorm => {
            ctx.seats = 100;
            ctx.schedules = vec!["s1".into()];
            let q = Queue {
                admit_per_second: 1_000,
                max_active: 1_000,
                active_ttl_seconds: 600,
                idle_timeout_seconds: 86_400,
                paused: true,
                auto: None,
            };
            create_event(ctx, &q, vec![schedule("s1", 100, 10, price, 600, 10)]).await?;
            let redis = redis.ok_or_else(|| {
                anyhow::anyhow!(
                    "poll-storm seeds the queue in Redis: REDIS_URL must reach the service's Redis"
                )
            })?;
            crate::poll_storm::seed(ctx, redis, env_u64("LOADTEST_WAITING", 100_000), extra)
                .await?;
        }
    }
    extra.insert("event_id".into(), ctx.event.clone().into());
    Ok(())
}
