//! Invariant 11 on a single Redis: restarted empty mid-sale, nothing is
//! resurrected — no hold on a sold seat at any moment, no hold id minted
//! twice, and every later buyer can pay.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::{
    cluster::{probe_holds, sold_in_pg, sold_in_redis, start_sale},
    helpers::*,
    redis_harness::SingleRedis,
};

#[tokio::test]
async fn a_redis_restarted_empty_mid_sale_resurrects_nothing() {
    let Some(mut redis) = SingleRedis::start().await else {
        return;
    };
    let app = Arc::new(spawn_with(Settings::new().set("REDIS_URL", &redis.url())).await);
    app.simple_event("e1", queue_defaults(), 400, 300, 4).await;
    let events = vec!["e1".to_owned()];

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let (outcomes, paid, tasks) = start_sale(&app, &events, 3, &stop, t0);
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    redis.kill().await;
    let killed_at = t0.elapsed();
    // Payments already past their Redis step commit within milliseconds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sold = sold_in_pg(&app, "e1").await;
    assert!(sold.len() >= 10, "the sale had sold seats: {}", sold.len());
    redis.restart_empty().await;
    let restarted_at = t0.elapsed();

    let probe_stop = Arc::new(AtomicBool::new(false));
    let probing = {
        let (app, stop, sold) = (app.clone(), probe_stop.clone(), sold.clone());
        tokio::spawn(async move { probe_holds(&app, "e1", &sold, 2, &stop, t0).await })
    };
    let back = eventually(Duration::from_secs(10), || async {
        sold_in_redis(&app, "e1")
            .await
            .is_some_and(|now| sold.iter().all(|s| now.contains(s)))
    })
    .await;
    assert!(back, "sold seats restored by themselves");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    probe_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let probed = probing.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    eprintln!(
        "single Redis restarted empty: killed at {killed_at:?}, back up at {restarted_at:?}; \
         {} sale attempts; probes: {probed:?}",
        outcomes.len()
    );

    // No hold was ever granted on a seat PostgreSQL had sold before the loss.
    assert!(
        probed.sold_seat_holds.is_empty(),
        "probe holds on sold seats: {:?}",
        probed.sold_seat_holds
    );
    for o in &outcomes {
        if let Some((id, seats)) = &o.hold
            && o.hold_asked > killed_at
        {
            assert!(
                seats.iter().all(|s| !sold.contains(&(*s as i32))),
                "hold {id} on a sold seat after the loss: {seats:?}"
            );
        }
    }
    // No hold id minted twice, across the loss.
    let ids: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| o.hold.as_ref().map(|(id, _)| id))
        .collect();
    let distinct: HashSet<&&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "a hold id was minted twice");
    // Every hold granted after the restore was paid: no 409
    // hold_already_paid naming someone else's payment, nothing stuck.
    let after: Vec<_> = outcomes
        .iter()
        .filter(|o| o.hold_asked > restarted_at && o.hold.is_some())
        .collect();
    assert!(!after.is_empty(), "the sale went on after the restore");
    for o in &after {
        assert_eq!(
            o.status, 201,
            "a buyer after the restore could not pay: {o:?}"
        );
    }
    // Every 201 is a payment in PostgreSQL, and Redis sells exactly those seats.
    let paid = paid.lock().unwrap().clone();
    let in_pg: i64 = sqlx::query_scalar("select count(*) from payments")
        .fetch_one(app.state.pg.pool())
        .await
        .unwrap();
    assert_eq!(in_pg as usize, paid.len());
    let want = sold_in_pg(&app, "e1").await;
    let same = eventually(Duration::from_secs(5), || async {
        sold_in_redis(&app, "e1").await.as_deref() == Some(&want[..])
    })
    .await;
    assert!(same, "Redis sells exactly what PostgreSQL sold");
    assert_eq!(
        app.admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_admin_view_of_an_event_missing_from_redis_says_restoring() {
    let Some(redis) = SingleRedis::start().await else {
        return;
    };
    // Background off: nothing restores the event behind the test's back.
    let app = spawn_with(
        Settings::new()
            .set("REDIS_URL", &redis.url())
            .without_background(),
    )
    .await;
    app.simple_event("e1", queue_defaults(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "early").await;
    let r = redis_cli_on(redis.port, &["FLUSHALL"]).await;
    assert_eq!(r.trim(), "OK");

    let r = app
        .admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["restoring"], true, "{}", r.text);
    assert_eq!(r.body["live"]["waiting"], 0);
    assert_eq!(r.body["schedules"][0]["sold"], 0);
    // Holds wait for the restore: 503 with Retry-After, not 404.
    let r = app
        .hold(&token, serde_json::json!({"schedule_id": "d1", "count": 1}))
        .await;
    r.assert_problem(503, "dependency_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    // ... and so does a buyer's seat map: it would show sold seats free.
    app.get_with_token("/v1/events/e1/schedules/d1/seats", &token)
        .await
        .assert_problem(503, "dependency_unavailable");

    let r = app
        .admin(reqwest::Method::POST, "/v1/admin/reconcile", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
        .await;
    assert_eq!(r.body["restoring"], false, "{}", r.text);
}

/// The outbox messages made pending again because the stream was lost.
const FIXES_STREAM: &str = r#"boxoffice_reconciler_fixes_total{kind="stream_requeued"}"#;

/// The event stream lives only in Redis. Restarted empty, it gets every
/// message PostgreSQL still keeps again, in outbox order and ahead of any
/// newer one (at least once: consumers drop repeats by `message_id`).
#[tokio::test]
async fn a_redis_restarted_empty_gets_every_kept_outbox_message_again() {
    let Some(mut redis) = SingleRedis::start().await else {
        return;
    };
    let app = spawn_with(Settings::new().set("REDIS_URL", &redis.url())).await;
    app.simple_event("e1", queue_defaults(), 20, 300, 4).await;
    app.buy("e1", "ann", "5000", serde_json::json!([1])).await;
    app.buy("e1", "bob", "5000", serde_json::json!([2])).await;
    let kept = || async {
        sqlx::query_scalar::<_, i64>("select id from outbox order by id")
            .fetch_all(app.state.pg.pool())
            .await
            .unwrap()
    };
    // Waits until the stream holds exactly `want` (outbox ids, in order).
    let shows = |want: Vec<i64>, what: &'static str| {
        let app = &app;
        async move {
            let seen = || outbox_stream_ids(app);
            let ok = eventually(Duration::from_secs(15), || async { seen().await == want }).await;
            assert!(ok, "{what}: {:?}, want {want:?}", seen().await);
        }
    };
    let before = kept().await;
    assert_eq!(before.len(), 4, "two charges and two payments");
    shows(before.clone(), "relayed before the loss").await;

    let requeued_before = metric(&app, FIXES_STREAM).await;
    redis.kill().await;
    redis.restart_empty().await;
    let restarted = Instant::now();
    shows(before, "the lost stream, refilled").await;
    eprintln!(
        "event stream lost with Redis: refilled {:?} after the restart",
        restarted.elapsed()
    );
    // Counted (the recorder is the test process's: others may add to it).
    let requeued = metric(&app, FIXES_STREAM).await;
    assert!(
        requeued >= requeued_before + 4.0,
        "{requeued_before} -> {requeued}"
    );
    // The sale goes on (once its event is restored) and newer messages
    // follow the old ones.
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
                .await
                .body["restoring"]
                == false
        })
        .await
    );
    app.buy("e1", "cat", "5000", serde_json::json!([3])).await;
    let after = kept().await;
    assert_eq!(after.len(), 6);
    shows(after, "each kept message once, in id order").await;
    assert_eq!(
        outbox_rows(app.state.pg.pool()).await.0,
        0,
        "nothing pending"
    );
}

/// A relay whose Redis is gone marks nothing and says so (the relay loop
/// counts it in `boxoffice_background_failures_total{loop="relay"}`); once
/// Redis is back and the stream restored, every message goes out once.
#[tokio::test]
async fn a_relay_whose_redis_is_killed_marks_nothing_and_fails_loud() {
    let Some(mut redis) = SingleRedis::start().await else {
        return;
    };
    let (app, stores, ids) =
        outbox_backlog(Settings::new().set("REDIS_URL", &redis.url()), 30).await;
    let jobs = app.state.jobs();
    let relay = || boxoffice::payments::relay::publish_batch(&stores);
    let pending = || async { outbox_rows(app.state.pg.pool()).await.0 };

    redis.kill().await;
    let r = relay().await;
    assert!(r.is_err(), "a dead Redis is an error, not 0 sent: {r:?}");
    assert_eq!(pending().await, 30, "nothing marked");

    redis.restart_empty().await;
    // Back empty: refused until the stream is restored, then all of it.
    let back = eventually(Duration::from_secs(10), || async {
        relay().await.is_ok_and(|n| n == 0)
    })
    .await;
    assert!(back, "the relay works again once Redis answers");
    assert_eq!(pending().await, 30);
    assert!(
        boxoffice::payments::relay::restore_stream(&jobs)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(relay().await.unwrap(), 30);
    assert_eq!(outbox_stream_ids(&app).await, ids);
}

async fn redis_cli_on(port: u16, args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn one_payment_that_cannot_be_replayed_does_not_block_the_others() {
    let app = spawn_app().await;
    app.simple_event("e1", queue_defaults(), 20, 300, 4).await;
    let (_, paid) = app.buy("e1", "ann", "5000", serde_json::json!([1])).await;
    let ann = paid.body["payment_id"].as_str().unwrap().to_owned();
    let pool = app.state.pg.pool();
    // A payment whose Redis step can never succeed (seat 999 of a 20-seat
    // schedule), older than ann's, and ann's own step marked unfinished.
    sqlx::query(
        r"with paid as (
            insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats, paid_at)
            values ($1, 'bogus', 'e1', 'd1', 'e1.d1.999999', 1000, '{999}', now() - interval '10 seconds')
            returning payment_id, paid_at
          )
          insert into payments_unconfirmed (payment_id, paid_at) select payment_id, paid_at from paid",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        r"with older as (
            update payments set paid_at = now() - interval '5 seconds' where payment_id = $1
            returning payment_id, paid_at
          )
          insert into payments_unconfirmed (payment_id, paid_at) select payment_id, paid_at from older
          on conflict (payment_id) do update set paid_at = excluded.paid_at",
    )
    .bind(uuid::Uuid::parse_str(&ann).unwrap())
    .execute(pool)
    .await
    .unwrap();

    let finished = eventually(Duration::from_secs(5), || async {
        sqlx::query_scalar::<_, bool>(
            "select not exists (select 1 from payments_unconfirmed where payment_id = $1)",
        )
        .bind(uuid::Uuid::parse_str(&ann).unwrap())
        .fetch_one(pool)
        .await
        .unwrap()
    })
    .await;
    assert!(finished, "ann's payment was finished past the broken one");
    let counted =
        eventually(Duration::from_secs(3), || async {
            app.get("/metrics").await.text.lines().any(|l| {
                l.starts_with("boxoffice_reconciler_failures_total{kind=\"finish_payment\"}")
            })
        })
        .await;
    assert!(counted, "the failure is counted");
}

/// A hold's `Idempotency-Key` lives in Redis with the hold it names
/// (docs/HOLDS.md), so a Redis that comes back empty loses both: the key
/// never answers a hold that no longer exists. After the restore the
/// buyer, in line again, retries with the same key and gets a new hold,
/// under an id of the new epoch, and the seat map shows that hold alone.
#[tokio::test]
async fn a_hold_key_is_lost_with_its_hold_and_never_replays_a_vanished_hold() {
    let Some(mut redis) = SingleRedis::start().await else {
        return;
    };
    let app = spawn_with(Settings::new().set("REDIS_URL", &redis.url())).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let body = serde_json::json!({"schedule_id": "d1", "count": 1});
    let token = app.admitted_token("e1", "u1").await;
    let first = app.hold_keyed(&token, "k", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    redis.kill().await;
    redis.restart_empty().await;
    let restored = eventually(Duration::from_secs(10), || async {
        let r = app
            .admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
            .await;
        r.status == StatusCode::OK && r.body["restoring"] == false
    })
    .await;
    assert!(restored, "the event is restored from PostgreSQL");

    let token = app.admitted_token("e1", "u1").await;
    let again = app.hold_keyed(&token, "k", body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(
        again.replayed(),
        None,
        "not the vanished hold: {}",
        again.text
    );
    assert_ne!(again.body["hold_id"], first.body["hold_id"]);
    assert_eq!(
        crate::holds::held_seats_of(&app, &token, "d1").await,
        std::collections::BTreeSet::from([1]),
        "the new hold alone"
    );
    app.assert_script_invariants().await;
}
