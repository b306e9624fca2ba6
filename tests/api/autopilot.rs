//! The admission autopilot against a PostgreSQL that got slow: with a fixed
//! rate far above capacity admitted buyers wait seconds; in auto mode the
//! autopilot lowers the rate until they are under the target again, while
//! the queue absorbs the crowd.
//!
//! PostgreSQL is "slowed" by the `slow_pg_ms:<n>` failpoint with a pool of
//! two connections: each payment keeps its connection n ms longer, so the
//! instance completes at most about 2 × 1000 / n payments per second. A
//! closed-loop crowd (join, poll until admitted, seat map, hold, pay,
//! leave, again) then offers more work than that whenever the admission
//! rate lets it in.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// Buyers in the crowd (each loops until the run ends).
const BUYERS: usize = 40;
/// Admitted buyers' p99 the autopilot keeps under: generous, since on a
/// loaded two-core machine running a debug build (and the test's own
/// buyers) a payment alone can take 300 ms even at two admissions a second;
/// still far below the seconds the slow PostgreSQL makes of a fixed rate.
const TARGET_MS: f64 = 500.0;
/// The auto run must be back under the target by then: the buyers admitted
/// at the starting rate's pace in the first seconds must finish (payments
/// failing after the pool's 2 s acquire timeout and a settling query take
/// 4 s), then their slow requests leave the 2 s window: 12 s measured on
/// a loaded two-core machine (12-18 s with the 5 s window of before).
const BACK_WITHIN: Duration = Duration::from_secs(20);
/// How long the auto run lasts.
const AUTO_RUN: Duration = Duration::from_secs(30);
/// How much longer each payment keeps its PostgreSQL connection.
const SLOW_PG_MS: &str = "100";
/// Fixed rate (and the autopilot's maximum): far above the ~20 payments a
/// second the slowed pool can do (2 connections, 100 ms each).
const FIXED_RATE: u32 = 100;

/// One admitted buyer's request: when it ended (since the crowd started)
/// and how long it took.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    ms: f64,
    kind: &'static str,
}

fn p99(samples: &[Sample], from: Duration, to: Duration) -> (f64, usize) {
    p99_of(samples, from, to, None)
}

/// p99 and count of one kind of request (`None`: every kind).
fn p99_of(samples: &[Sample], from: Duration, to: Duration, kind: Option<&str>) -> (f64, usize) {
    let mut ms: Vec<f64> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to && kind.is_none_or(|k| k == s.kind))
        .map(|s| s.ms)
        .collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return (0.0, 0);
    }
    let i = ((ms.len() as f64 * 0.99).ceil() as usize).clamp(1, ms.len()) - 1;
    (ms[i], ms.len())
}

/// An event in `mode` with the fixed rate, funded buyers, and two
/// instances sharing it: the buyers' one, whose PostgreSQL is slow, and a
/// normal one (which set everything up, and where operators look: its
/// figures and metrics come from the windows every instance publishes).
async fn instances(mode: &str) -> (TestApp, TestApp) {
    let setup = spawn_app().await;
    let r = setup
        .create_event(
            "e1",
            json!({"admit_per_second": FIXED_RATE, "max_active": 100000, "active_ttl_seconds": 600,
                   "idle_timeout_seconds": 600, "admission_mode": mode, "target_p99_ms": TARGET_MS as u32,
                   "min_admit_per_second": 2, "max_admit_per_second": FIXED_RATE}),
            json!([{"schedule_id": "d1", "starts_at": "2026-12-24T20:00:00Z", "seats": 600,
                    "row_size": 30, "price": "1000", "hold_seconds": 10, "max_per_user": 100}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["queue"]["admission_mode"], mode, "{}", r.text);
    let paths: Vec<String> = (0..BUYERS)
        .map(|i| format!("/v1/users/b{i}/wallet/charges"))
        .collect();
    let funded = join_all(
        paths
            .iter()
            .map(|p| setup.admin(Method::POST, p, Some(json!({"amount": "1000000"})))),
    )
    .await;
    assert!(funded.iter().all(|r| r.status == StatusCode::CREATED));
    let settings = setup
        .settings
        .clone()
        .set("BOXOFFICE_FAILPOINT", &format!("slow_pg_ms:{SLOW_PG_MS}"))
        .set("BOXOFFICE_PG_MAX_CONNECTIONS", "2")
        // The reconciler's rounds would take the small pool's connections
        // from the payments (the normal instance reconciles anyway).
        .set("BOXOFFICE_RECONCILE_MS", "10000");
    (setup, spawn_with(settings).await)
}

/// One buyer's loop until `until`: every seat map, hold and payment is
/// timed.
async fn buyer(
    app: Arc<TestApp>,
    user: String,
    start: Instant,
    until: Instant,
    out: Arc<Mutex<Vec<Sample>>>,
) {
    let timed = |kind: &'static str, r: Resp, t: Instant| {
        out.lock().unwrap().push(Sample {
            at: start.elapsed(),
            ms: t.elapsed().as_secs_f64() * 1000.0,
            kind,
        });
        r
    };
    while Instant::now() < until {
        let joined = app.join("e1", &user).await;
        let Some(token) = joined.body["token"].as_str().map(str::to_owned) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut admitted = joined.body["status"] == "admitted";
        while !admitted && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            admitted = app.status(&token).await.body["status"] == "admitted";
        }
        if !admitted {
            break;
        }
        let t = Instant::now();
        timed(
            "seats",
            app.get_with_token("/v1/events/e1/schedules/d1/seats", &token)
                .await,
            t,
        );
        let t = Instant::now();
        let hold = timed(
            "hold",
            app.hold(&token, json!({"schedule_id": "d1", "count": 1}))
                .await,
            t,
        );
        if let Some(hold_id) = hold.body["hold_id"].as_str() {
            let t = Instant::now();
            timed(
                "pay",
                app.post_with_token("/v1/payments", &token, json!({ "hold_id": hold_id }))
                    .await,
                t,
            );
        }
        app.leave(&token).await;
    }
}

/// The event's live figures (`{"unavailable": status}` when the instance
/// could not answer: the machine may be loaded, and one missed sample
/// says nothing about the autopilot).
async fn live(app: &TestApp) -> Value {
    let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    if r.status == StatusCode::OK {
        r.body["live"].clone()
    } else {
        json!({ "unavailable": r.status.as_u16(), "code": r.code() })
    }
}

/// Runs the crowd on `app` for `seconds`, sampling the live figures on
/// `ops` every second.
async fn crowd(
    app: TestApp,
    ops: &TestApp,
    seconds: u64,
) -> (Vec<Sample>, Vec<(Duration, Value)>, TestApp) {
    let app = Arc::new(app);
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let buyers: Vec<_> = (0..BUYERS)
        .map(|i| {
            tokio::spawn(buyer(
                app.clone(),
                format!("b{i}"),
                start,
                until,
                samples.clone(),
            ))
        })
        .collect();
    let mut figures = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        figures.push((start.elapsed(), live(ops).await));
    }
    for b in buyers {
        b.await.unwrap();
    }
    let samples = samples.lock().unwrap().clone();
    let app = Arc::into_inner(app).expect("every buyer is done");
    (samples, figures, app)
}

fn timeline(figures: &[(Duration, Value)], samples: &[Sample]) -> String {
    figures
        .iter()
        .map(|(at, f)| {
            let from = at.saturating_sub(Duration::from_secs(5));
            let (client, n) = p99(samples, from, *at);
            let kinds: Vec<String> = ["seats", "hold", "pay"]
                .iter()
                .map(|k| format!("{k} {:.0}", p99_of(samples, from, *at, Some(k)).0))
                .collect();
            format!(
                "{:>4.1}s rate {} server p99 {} (pool {}) client p99 {client:.0} ms of {n} ({}), waiting {} {}\n",
                at.as_secs_f64(),
                f["effective_admit_per_second"],
                f["admitted_p99_ms"],
                f["pool_wait_p99_ms"],
                kinds.join(", "),
                f["waiting"],
                f.get("code").map_or(String::new(), Value::to_string),
            )
        })
        .collect()
}

/// The last figures the operators' instance could give.
fn last_figures(figures: &[(Duration, Value)]) -> &Value {
    &figures
        .iter()
        .rev()
        .find(|(_, f)| f.get("unavailable").is_none())
        .expect("the figures were available at least once")
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autopilot_brings_admitted_buyers_back_under_target_where_a_fixed_rate_cannot() {
    // A fixed rate far above capacity: admitted buyers wait for the pool.
    let (ops, app) = instances("fixed").await;
    let (samples, figures, app) = crowd(app, &ops, 15).await;
    let shown = timeline(&figures, &samples);
    eprintln!("fixed:\n{shown}");
    let (fixed_late, n) = p99(&samples, Duration::from_secs(5), Duration::from_secs(15));
    assert!(
        n > 100,
        "too few admitted requests to judge ({n}):\n{shown}"
    );
    assert!(
        fixed_late > 3.0 * TARGET_MS,
        "fixed rate: admitted p99 {fixed_late:.0} ms should be far above the {TARGET_MS} ms target:\n{shown}"
    );
    let last = last_figures(&figures);
    assert_eq!(last["admission_mode"], "fixed", "{last}");
    assert_eq!(last["effective_admit_per_second"], FIXED_RATE, "{last}");
    assert!(
        last["admitted_p99_ms"].as_f64().unwrap() > 3.0 * TARGET_MS,
        "the server measures what buyers see: {last}\n{shown}"
    );
    app.stop().await;
    ops.stop().await;

    // The same crowd in auto mode, starting from the same rate: the rate
    // comes down, and once the buyers admitted at the start's pace have
    // paid, admitted buyers are back under the target.
    let (ops, app) = instances("auto").await;
    let (samples, figures, app) = crowd(app, &ops, AUTO_RUN.as_secs()).await;
    let shown = timeline(&figures, &samples);
    eprintln!("auto:\n{shown}");
    let rates: Vec<u64> = figures
        .iter()
        .filter_map(|(_, f)| f["effective_admit_per_second"].as_u64())
        .collect();
    assert!(
        rates.iter().min() < rates.first() && rates.iter().all(|&r| r >= 2),
        "the autopilot lowered the rate, never below its minimum:\n{shown}"
    );
    assert!(
        rates.iter().any(|&r| r < u64::from(FIXED_RATE) / 10),
        "the rate came far down:\n{shown}"
    );
    // The server's window (last 2 s, all instances merged) goes above the
    // target while the first buyers pay, then comes back under it...
    let p99_at = |f: &Value| f["admitted_p99_ms"].as_f64();
    let over = figures
        .iter()
        .position(|(_, f)| p99_at(f).is_some_and(|p| p > TARGET_MS))
        .unwrap_or_else(|| panic!("auto: the overload never showed:\n{shown}"));
    let Some((back_at, _)) = figures[over..]
        .iter()
        .find(|(at, f)| *at <= BACK_WITHIN && p99_at(f).is_some_and(|p| p <= TARGET_MS))
    else {
        panic!(
            "auto: admitted p99 never came back under {TARGET_MS} ms within {BACK_WITHIN:?}:\n{shown}"
        );
    };
    // ...and what the buyers themselves measured from then on is a fraction
    // of what they saw at the fixed rate, while the queue holds the rest.
    let (auto_late, n) = p99(&samples, *back_at, AUTO_RUN);
    assert!(
        n >= 20,
        "too few admitted requests after {back_at:?} ({n}):\n{shown}"
    );
    // The fixed rate's tail is the pool timeout (~2.1 s); with the rate
    // steered it is ~0.2-0.5 s on a quiet machine. The bound leaves room
    // for a 2-core machine busy with the rest of the suite (the buyers'
    // own clocks then count its scheduling too) and still fails when the
    // autopilot does nothing (both tails are then the pool timeout).
    assert!(
        auto_late < fixed_late * 0.75,
        "auto: buyers' p99 {auto_late:.0} ms after {back_at:?} vs {fixed_late:.0} ms at the fixed rate:\n{shown}"
    );
    // Buyers wait in line while the rate is low (at the fixed rate of 100/s
    // nobody of the 40 does). With the 2 s window the rate recovers sooner
    // than it did with 5 s, so the line is shorter: 2-6 of 40 measured.
    assert!(
        figures
            .iter()
            .any(|(_, f)| f["waiting"].as_u64() >= Some(2)),
        "the queue absorbs the crowd:\n{shown}"
    );
    assert_eq!(last_figures(&figures)["admission_mode"], "auto");
    // The rate the last decrease started from is kept for every instance
    // (q:autopilot), so whoever steers next rises gently near it.
    let cut_from = ops
        .state
        .redis
        .hget(&ops.event_keys("e1").autopilot(), "cut_from")
        .await
        .expect("Redis answers");
    let cut_from: u64 = cut_from
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("cut_from recorded: {cut_from:?}\n{shown}"));
    assert!(
        (2..=u64::from(FIXED_RATE)).contains(&cut_from),
        "cut_from {cut_from} is a rate within the bounds:\n{shown}"
    );
    let metrics = ops.get("/metrics").await.text;
    for family in [
        "boxoffice_admission_rate_target{event=\"e1\"}",
        "boxoffice_admitted_p99_ms{event=\"e1\"}",
    ] {
        assert!(metrics.contains(family), "/metrics lacks {family}");
    }
    app.stop().await;
    ops.stop().await;
}

#[tokio::test]
async fn autopilot_settings_are_validated_stored_and_drive_the_redis_rate() {
    let app = spawn_app().await;
    app.wait_for_startup_restore().await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    let cfg = || async {
        let key = app
            .state
            .redis
            .keys()
            .event(&boxoffice::ids::EventId::parse("e1").unwrap())
            .config();
        app.state
            .redis
            .hget(&key, "auto_admit_per_second")
            .await
            .unwrap()
    };
    // Fixed by default, with the defaults shown; no autopilot rate.
    let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(r.body["queue"]["admission_mode"], "fixed", "{}", r.text);
    assert_eq!(r.body["queue"]["target_p99_ms"], 50);
    assert_eq!(r.body["queue"]["min_admit_per_second"], 1);
    assert_eq!(r.body["queue"]["max_admit_per_second"], 1000);
    assert_eq!(r.body["live"]["admission_mode"], "fixed");
    assert_eq!(r.body["live"]["effective_admit_per_second"], 1000);
    assert_eq!(cfg().await, None);

    for bad in [
        json!({"admission_mode": "turbo"}),
        json!({"target_p99_ms": 0}),
        json!({"min_admit_per_second": 0}),
        json!({"max_admit_per_second": 100_001}),
        json!({"min_admit_per_second": 20, "max_admit_per_second": 10}),
    ] {
        let r = app.patch_queue("e1", bad.clone()).await;
        r.assert_problem(422, "invalid_request");
        let field = bad.as_object().unwrap().keys().next().unwrap().clone();
        assert!(r.text.contains(&field), "{bad}: {}", r.text);
    }

    // Auto: stored, and the rate starts at admit_per_second within the bounds.
    let r = app
        .patch_queue(
            "e1",
            json!({"admission_mode": "auto", "target_p99_ms": 80, "min_admit_per_second": 5, "max_admit_per_second": 300}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["queue"]["admission_mode"], "auto");
    assert_eq!(cfg().await.as_deref(), Some("300"));
    let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(r.body["queue"]["target_p99_ms"], 80, "{}", r.text);
    assert_eq!(r.body["queue"]["min_admit_per_second"], 5);
    // Nobody waits and nothing is slow: the rate holds where it is.
    let held = eventually(Duration::from_secs(5), || async {
        let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
        r.body["live"]["admission_mode"] == "auto"
            && r.body["live"]["effective_admit_per_second"] == 300
    })
    .await;
    assert!(held, "the autopilot's figures show the auto rate");

    // Back to fixed: the autopilot's rate is gone from Redis.
    let r = app
        .patch_queue("e1", json!({"admission_mode": "fixed"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(cfg().await, None);
}

/// The control step is taken once per interval however many instances
/// publish at once (`autopilot_publish.lua` hands it out on Redis TIME):
/// 300 concurrent publishes from 30 instance fields, two intervals apart,
/// give exactly one step in each, and every instance's window is read.
#[tokio::test]
async fn one_instance_takes_the_control_step_per_interval_whoever_publishes() {
    let app = spawn_app().await;
    let r = app
        .create_event(
            "e1",
            json!({"admit_per_second": 50, "max_active": 100, "active_ttl_seconds": 600,
                   "idle_timeout_seconds": 600, "admission_mode": "auto"}),
            json!([{"schedule_id": "d1", "starts_at": "2026-12-24T20:00:00Z", "seats": 10,
                    "row_size": 10, "price": "1000", "hold_seconds": 10, "max_per_user": 2}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let redis = &app.state.redis;
    let k = redis
        .keys()
        .event(&boxoffice::ids::EventId::parse("e1").unwrap());
    let publish = |i: usize| {
        let keys = vec![k.config(), k.autopilot(), k.queue_waiting()];
        // Field, an empty window (no pool figure, no counts), stale after
        // 3 s, one step per 60 s so both rounds below stay in one interval.
        let args = vec![
            format!("i:inst{}", i % 30),
            ";".into(),
            "3000".into(),
            "60000".into(),
        ];
        async move {
            let raw = redis
                .run(&boxoffice::store::redis::AUTOPILOT_PUBLISH, keys, args)
                .await
                .unwrap();
            serde_json::from_str::<Value>(&raw).unwrap()
        }
    };
    let replies = join_all((0..300).map(publish)).await;
    let steps = replies.iter().filter(|r| r["due"] == true).count();
    assert_eq!(steps, 1, "exactly one publisher took the step");
    assert!(replies.iter().all(|r| r["status"] == "ok"));
    let last = replies
        .iter()
        .map(|r| r["windows"].as_array().map_or(0, Vec::len))
        .max();
    assert_eq!(last, Some(30), "every instance's window is read back");
    // Still inside the interval: nobody gets another step.
    let again = join_all((0..100).map(publish)).await;
    assert!(
        again.iter().all(|r| r["due"] == false),
        "no second step in one interval"
    );
}

/// In auto mode every answer paces by the rate in use (the autopilot's),
/// not the configured one: a waiting buyer's status gives the same ETA as
/// the join did after the configured rate moved away from the autopilot's
/// (with the loops off nothing else moves either rate, and with no
/// admission tick the observed rate stays 0, so the ETA is position / rate).
#[tokio::test]
async fn status_and_join_pace_by_the_autopilots_rate_in_auto_mode() {
    let app = spawn_with(Settings::new().without_background()).await;
    let r = app
        .create_event(
            "e1",
            json!({"admit_per_second": 4, "max_active": 1, "active_ttl_seconds": 600,
                   "idle_timeout_seconds": 600, "admission_mode": "auto",
                   "min_admit_per_second": 1, "max_admit_per_second": 1000}),
            json!([{"schedule_id": "d1", "starts_at": "2026-12-24T20:00:00Z", "seats": 10,
                    "row_size": 10, "price": "1000", "hold_seconds": 10, "max_per_user": 2}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // The autopilot started at 4 per second; the configured rate moves to
    // 1000 and the autopilot's stays where it was.
    let r = app
        .patch_queue("e1", json!({"admit_per_second": 1000}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut last = None;
    for i in 0..21 {
        let r = app.join("e1", &format!("u{i}")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        last = Some(r.body);
    }
    let joined = last.unwrap();
    assert_eq!(joined["status"], "waiting", "{joined}");
    assert_eq!(joined["position"], 20, "{joined}");
    // 20 ahead at 4 per second: 5 s (at the configured 1000 it would be 1).
    assert_eq!(joined["eta_seconds"], 5, "{joined}");
    let token = joined["token"].as_str().unwrap();
    let r = app.status(token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["position"], 20, "{}", r.text);
    assert_eq!(
        r.body["eta_seconds"], joined["eta_seconds"],
        "status paces like the join did: {}",
        r.text
    );
}

/// Before `opens_at` nobody is admitted, so no admitted buyer measures
/// anything: the autopilot holds its starting rate through the pre-queue
/// instead of raising it every second on no evidence (it used to, and the
/// bench's sale then opened at 2.5 times a rate never tried:
/// docs/bench/surge-17.md, "Ninth run").
#[tokio::test]
async fn the_autopilot_does_not_raise_the_rate_without_admitted_buyers_to_judge_it() {
    let app = spawn_app().await;
    prequeue_event(
        &app,
        "e1",
        json!({"admit_per_second": 20, "max_active": 100, "active_ttl_seconds": 600,
               "idle_timeout_seconds": 600, "admission_mode": "auto",
               "min_admit_per_second": 2, "max_admit_per_second": 1000}),
        60_000,
    )
    .await;
    for i in 0..5 {
        let r = app.join("e1", &format!("u{i}")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["status"], "prequeue", "{}", r.text);
    }
    // Five control steps with people waiting and nobody admitted. The old
    // law raised the rate at each of them (by 5 % of the maximum then:
    // 20 → 270).
    let started = Instant::now();
    let mut steps = Vec::new();
    while started.elapsed() < Duration::from_millis(5_500) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let l = live(&app).await;
        steps.push((
            l["effective_admit_per_second"].clone(),
            l["admitted_p99_ms"].clone(),
            l["waiting"].clone(),
        ));
    }
    assert!(
        steps.iter().any(|(_, _, w)| w.as_u64() == Some(5)),
        "the pre-queue counts as waiting, so the old law would have raised: {steps:?}"
    );
    // Never above the starting rate. A cut is the law's answer to this
    // instance's PostgreSQL pool waiting over half the target, which the
    // rest of the suite, run beside this test on two cores, can cause
    // (seen in CI: 20 → 14 with no admitted request); it is not a rise.
    assert!(
        steps
            .iter()
            .all(|(rate, p99, _)| rate.as_u64().is_some_and(|r| r <= 20) && p99.is_null()),
        "no admitted request, no rise: {steps:?}"
    );
}
