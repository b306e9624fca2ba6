//! Invariant 9 with a dependency that *hangs* (accepts, never answers):
//! every affected route answers 503 `dependency_unavailable` with
//! `Retry-After` within a bound derived from the service's call timeouts,
//! and every route works again once the dependency answers.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A 503 `dependency_unavailable` with `Retry-After`, in less than `bound`.
#[track_caller]
fn assert_fast_503(route: &str, r: &Resp, took: Duration, bound: Duration) {
    r.assert_problem(503, "dependency_unavailable");
    assert!(
        r.headers.contains_key("retry-after"),
        "{route}: no Retry-After"
    );
    assert!(took < bound, "{route} took {took:?}, bound {bound:?}");
    eprintln!("{route}: 503 in {took:?} (bound {bound:?})");
}

async fn timed<F: std::future::Future<Output = Resp>>(f: F) -> (Resp, Duration) {
    let start = Instant::now();
    let r = f.await;
    (r, start.elapsed())
}

/// An instance whose Redis is behind a proxy that can stall it, with
/// `settings` and the background loops off (their calls would trip the
/// breaker first, and the routes would never meet the hung server
/// themselves).
async fn with_stallable_redis(settings: Settings) -> (FaultProxy, TestApp) {
    let proxy = FaultProxy::start(resolve(&redis_url()).await).await;
    let app = spawn_with(
        settings
            .without_background()
            .set("REDIS_URL", &via(&redis_url(), proxy.addr)),
    )
    .await;
    (proxy, app)
}

/// [`with_stallable_redis`] with u1 admitted to e1, 5000 on the wallet and
/// seat 1 held: the proxy, the app, u1's queue token and the hold's id.
async fn stallable_with_a_hold() -> (FaultProxy, TestApp, String, String) {
    let (proxy, app) = with_stallable_redis(Settings::new()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "u1").await;
    app.charge("u1", "5000", None).await;
    let hold = app.hold_seats(&token, json!([1])).await;
    (proxy, app, token, hold)
}

#[tokio::test]
async fn redis_stalled_join_status_hold_and_pay_answer_503_in_bounded_time_and_recover() {
    let (proxy, app) =
        with_stallable_redis(Settings::new().set("BOXOFFICE_PAYING_TIMEOUT_SECONDS", "2")).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "u1").await;
    app.charge("u1", "5000", None).await;
    let hold = app.hold_seats(&token, json!([1])).await;

    proxy.stall();
    // Each route gives up after one Redis call timeout; the bound leaves
    // one more of slack, far below a hang (the client's 10 s). In the
    // first round the breaker is still closed (fewer failures than open
    // it), so each route meets the hung server itself and really waits
    // for the timeout; in the second the breaker is open: at once.
    let t = boxoffice::store::redis::CALL_TIMEOUT;
    let bound = t * 2;
    const { assert!(4 < boxoffice::store::breaker::FAILURES_TO_OPEN + 1) };
    for round in 0..2 {
        let check = |route: &str, r: &Resp, took: Duration| {
            assert_fast_503(route, r, took, bound);
            if round == 0 {
                assert!(
                    took >= t / 2,
                    "{route} answered in {took:?} without waiting for Redis"
                );
            }
        };
        let (r, took) = timed(app.join("e1", &format!("new-{round}"))).await;
        check("join", &r, took);
        let (r, took) = timed(app.status(&token)).await;
        check("status", &r, took);
        let (r, took) = timed(app.hold(&token, json!({"schedule_id": "d1", "seats": [2]}))).await;
        check("hold", &r, took);
        let (r, took) = timed(app.pay(&token, &hold, None)).await;
        check("pay", &r, took);
    }
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);

    proxy.restore();
    let back = app.ready_within(Duration::from_secs(10)).await;
    assert!(back, "ready again without a restart");
    // Every route works again.
    let r = app.join("e1", "after").await;
    assert_eq!(r.status, StatusCode::CREATED, "join: {}", r.text);
    let r = app.status(&token).await;
    assert_eq!(r.status, StatusCode::OK, "status: {}", r.text);
    assert_eq!(r.body["status"], "admitted");
    assert_eq!(app.balance("u1").await, "5000", "no money moved");
    // A write the service gave up on may still have reached Redis when
    // the network healed (the bytes were in flight): the hold on seat 2
    // asked for during the stall may exist, unknown to its client, until
    // its deadline. Either way the state is consistent (checked below).
    let seat2 = app.admin_seat("e1", 2).await;
    assert!(seat2 == "held" || seat2 == "available", "{seat2}");
    let r = app
        .hold(&token, json!({"schedule_id": "d1", "seats": [3]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "hold: {}", r.text);
    // The first hold's begin_payment, sent before the stall and answered
    // 503, may likewise have reached Redis late and made the hold *paying*
    // with nobody paying it; the instance gives that attempt back, so a
    // retry pays the hold (a_lost_begin_payment_call_does_not_keep_the_hold_paying).
    assert_eq!(app.balance("u1").await, "5000", "no money moved");
    retry_while_in_progress(|| app.pay(&token, &hold, None)).await;
    assert_eq!(app.balance("u1").await, "4000");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

#[tokio::test]
async fn postgres_stalled_pay_answers_503_in_bounded_time_while_queue_and_holds_work() {
    let db = create_database().await;
    let proxy = FaultProxy::start(resolve(&db).await).await;
    let app = spawn_with(
        Settings::new()
            .set("DATABASE_URL", &via(&db, proxy.addr))
            .set("BOXOFFICE_PAYING_TIMEOUT_SECONDS", "2"),
    )
    .await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "u1").await;
    app.charge("u1", "5000", None).await;
    let first = app.hold_seats(&token, json!([1])).await;

    proxy.stall();
    // The payment's transaction times out, then the service asks once
    // whether it committed after all (another call timeout at most, or at
    // once when the breaker is open): under two PostgreSQL call
    // timeouts, below a hang (the client's 10 s).
    let t = boxoffice::store::pg::CALL_TIMEOUT;
    let bound = t * 2;
    let (r, took) = timed(app.pay(&token, &first, None)).await;
    assert_fast_503("pay", &r, took, bound);
    // The queue and holds never touch PostgreSQL: fine, and faster than
    // half a PostgreSQL call timeout (they wait on nothing that hangs).
    let quick = t / 2;
    let (r, took) = timed(app.join("e1", "u2")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(took < quick, "join took {took:?}");
    let (r, took) = timed(app.status(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(took < quick, "status took {took:?}");
    let (r, took) = timed(app.hold(&token, json!({"schedule_id": "d1", "seats": [2]}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(took < quick, "hold took {took:?}");
    let second = r.body["hold_id"].as_str().unwrap().to_owned();
    let (r, took) = timed(app.pay(&token, &second, None)).await;
    assert_fast_503("pay again", &r, took, bound);

    proxy.restore();
    let back = app.ready_within(Duration::from_secs(10)).await;
    assert!(back, "ready again without a restart");
    // Nothing was committed while PostgreSQL hung; once the paying
    // deadline has passed the holds are held again or gone, and a new
    // payment goes through.
    assert_eq!(app.balance("u1").await, "5000", "no money moved");
    let r = app.join("e1", "u3").await;
    assert_eq!(r.status, StatusCode::CREATED, "join: {}", r.text);
    assert_eq!(app.status(&token).await.status, StatusCode::OK);
    let third = app.hold_seats(&token, json!([3])).await;
    let r = app.pay(&token, &third, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "pay: {}", r.text);
    assert_eq!(app.balance("u1").await, "4000");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalled_under_a_burst_of_polls_joins_and_holds_every_one_answers_503_in_bounded_time()
 {
    let (proxy, app) = with_stallable_redis(Settings::new()).await;
    app.simple_event("e1", json!({"admit_per_second": 1, "max_active": 1, "active_ttl_seconds": 600, "idle_timeout_seconds": 600, "paused": true}), 20, 300, 4).await;
    let users: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let mut tokens = Vec::new();
    for u in &users {
        let r = app.join("e1", u).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        tokens.push(r.body["token"].as_str().unwrap().to_owned());
    }
    app.simple_event("e2", open_queue(), 20, 300, 4).await;
    let mut buyers = Vec::new();
    for i in 0..100 {
        buyers.push(app.admitted_token("e2", &format!("b{i}")).await);
    }

    proxy.stall();
    // 100 polls, 100 joins and 100 holds at once against a Redis that
    // hangs: they are coalesced into a few calls per kind, and the calls behind the first
    // ones would each wait out a call timeout of their own before the
    // breaker opens (two timeouts in all). Every request, however far back
    // in its event's pending list, answers within one call timeout and
    // half of one of slack, as a lone request would.
    let t = boxoffice::store::redis::CALL_TIMEOUT;
    let bound = t + t / 2;
    let newcomers: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
    let polls = futures::future::join_all(tokens.iter().map(|tk| timed(app.status(tk))));
    let joins = futures::future::join_all(newcomers.iter().map(|u| timed(app.join("e1", u))));
    let holds = futures::future::join_all(
        buyers
            .iter()
            .map(|tk| timed(app.hold(tk, json!({"schedule_id": "d1", "count": 1})))),
    );
    let (polls, joins, holds) = tokio::join!(polls, joins, holds);
    let slowest = polls
        .iter()
        .chain(&joins)
        .chain(&holds)
        .map(|(_, took)| *took)
        .max()
        .unwrap();
    for (r, took) in polls.iter() {
        assert_fast_503("status", r, *took, bound);
    }
    for (r, took) in joins.iter() {
        assert_fast_503("join", r, *took, bound);
    }
    for (r, took) in holds.iter() {
        assert_fast_503("hold", r, *took, bound);
    }
    eprintln!("slowest of 300: {slowest:?}");

    proxy.restore();
    let back = app.ready_within(Duration::from_secs(10)).await;
    assert!(back, "ready again without a restart");
    // Every poll works again and every waiting entry kept its place.
    let polls = futures::future::join_all(tokens.iter().map(|tk| app.status(tk))).await;
    for (i, r) in polls.iter().enumerate() {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["position"], i + 1, "{}", r.text);
    }
    app.assert_script_invariants().await;
}

/// A payment whose client gave up while the service waited for a hung
/// Redis (the connection closed, as a browser's or a gateway's timeout
/// does) runs to its end anyway: the hold does not stay *paying* with
/// nobody paying it, and the client's retry with the same
/// `Idempotency-Key` gets the payment that was made, not `409
/// request_in_progress` until the claim goes stale a minute later.
#[tokio::test]
async fn a_payment_whose_client_gave_up_runs_to_its_end() {
    let (proxy, app) = with_stallable_redis(Settings::new()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "u1").await;
    app.charge("u1", "5000", None).await;
    let hold = app.hold_seats(&token, json!([1])).await;

    proxy.stall();
    give_up_after(Duration::from_millis(200), |c| {
        c.post(format!("{}/v1/payments", app.base))
            .bearer_auth(&token)
            .header("idempotency-key", "pay-once")
            .json(&json!({"hold_id": hold}))
    })
    .await;
    // Redis answers again well within the service's own call timeout:
    // the calls in flight get their answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.restore();

    let retry = retry_while_in_progress(|| app.pay(&token, &hold, Some("pay-once"))).await;
    assert_eq!(
        retry.replayed(),
        Some("true"),
        "the payment the first request made: {}",
        retry.text
    );
    assert_eq!(app.balance("u1").await, "4000", "paid once");
    assert_eq!(app.admin_seat("e1", 1).await, "sold");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

/// A hold whose client gave up while Redis hung (the answer lost, as a
/// browser's or a gateway's timeout loses it) is found again by its key:
/// the retry answers the hold the first request made once Redis is back,
/// and the buyer holds one seat, not two. Without the key the retry would
/// hold a second seat, and with `seats` meet its own hold as
/// `409 seats_unavailable`.
#[tokio::test]
async fn a_hold_whose_client_gave_up_is_found_again_by_its_key() {
    let (proxy, app) = with_stallable_redis(Settings::new()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "u1").await;

    proxy.stall();
    give_up_after(Duration::from_millis(200), |c| {
        c.post(format!("{}/v1/holds", app.base))
            .bearer_auth(&token)
            .header("idempotency-key", "hold-once")
            .json(&json!({"schedule_id": "d1", "count": 1}))
    })
    .await;
    // Redis answers again within the service's call timeout, and the call
    // in flight lands before the retry is sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let retry = app
        .hold_keyed(
            &token,
            "hold-once",
            json!({"schedule_id": "d1", "count": 1}),
        )
        .await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(
        retry.replayed(),
        Some("true"),
        "the hold the first request made: {}",
        retry.text
    );
    assert_eq!(retry.body["seats"], json!([1]));
    assert_eq!(app.admin_seat("e1", 1).await, "held");
    assert_eq!(
        app.admin_seat("e1", 2).await,
        "available",
        "one hold, not two"
    );
    let hold = retry.body["hold_id"].as_str().unwrap();
    let r = app
        .get_with_token(&format!("/v1/holds/{hold}"), &token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "the buyer's hold: {}", r.text);
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

/// A `begin_payment` call lost in a hung Redis (the service gave up on it
/// after its call timeout and answered 503) reaches Redis once the network
/// heals and makes the hold *paying*, with nobody paying it. The instance
/// aborts that attempt in the background, so the buyer's retry pays the
/// hold within seconds; without it the retry is refused as in progress
/// for the whole paying timeout (30 s), and the hold is then dropped and
/// the seat lost.
///
/// Whether the late call or one of the aborts held up with it reaches
/// Redis first is the draw of the healed connections: the hold is then
/// held again (`restored`), or the attempt barred before its call lands
/// (`barred`, as in the next test); either way not left paying.
#[tokio::test]
async fn a_lost_begin_payment_call_does_not_keep_the_hold_paying() {
    let (proxy, app, token, hold) = stallable_with_a_hold().await;
    let settled = || async {
        metric(
            &app,
            "boxoffice_payment_late_aborts_total{found=\"restored\"}",
        )
        .await
            + metric(
                &app,
                "boxoffice_payment_late_aborts_total{found=\"barred\"}",
            )
            .await
    };
    let before = settled().await;

    proxy.stall();
    let r = app.pay(&token, &hold, None).await;
    r.assert_problem(503, "dependency_unavailable");
    // The call waits in the proxy and runs as soon as Redis is reachable
    // again, ahead of the retry.
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(300)).await;

    retry_while_in_progress(|| app.pay(&token, &hold, None)).await;
    assert_eq!(app.balance("u1").await, "4000", "paid once");
    assert_eq!(app.admin_seat("e1", 1).await, "sold");
    assert!(
        settled().await > before,
        "the lost call's attempt was given back, or barred before it landed"
    );
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

/// A `begin_payment` call delayed on its way (only its connection: the
/// instance's other calls get through) after the instance answered 503
/// reaches Redis once the instance has settled its attempt: it is refused
/// and changes nothing, so the hold is not left *paying* with nobody
/// paying it, and the buyer's retry pays at once.
#[tokio::test]
async fn a_begin_payment_call_that_arrives_after_its_attempt_was_settled_changes_nothing() {
    let (proxy, app, token, hold) = stallable_with_a_hold().await;
    let barred = "boxoffice_payment_late_aborts_total{found=\"barred\"}";
    let before = metric(&app, barred).await;

    proxy.hold_back(b"begin_payment");
    let r = app.pay(&token, &hold, None).await;
    r.assert_problem(503, "dependency_unavailable");
    assert!(proxy.holding(), "the call is on its way");
    let settled = async {
        while metric(&app, barred).await <= before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .expect("the attempt was barred through another connection");
    proxy.release();
    // The late call and whatever queued behind it on its connection.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    assert_eq!(app.admin_seat("e1", 1).await, "held", "not paying");
    let r = app.pay(&token, &hold, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.balance("u1").await, "4000", "paid once");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

/// A transaction whose `BEGIN` was cancelled before its answer (our
/// timeouts cancel; here PostgreSQL hangs) must not leave its connection
/// inside a transaction nobody ends: sqlx counts a transaction only once
/// `BEGIN` is answered, so the server ran it, the connection went back to
/// the pool, and every later statement on it "succeeded" and never
/// committed (a payment answered 201 that never happened). A statement
/// after the cancelled transaction commits.
#[tokio::test]
async fn a_transaction_cancelled_in_its_begin_leaves_no_connection_inside_it() {
    use sqlx::{Connection, Executor};
    let db = create_database().await;
    let proxy = FaultProxy::start(resolve(&db).await).await;
    let pg = boxoffice::store::pg::Pg::connect_with(
        &via(&db, proxy.addr),
        boxoffice::store::pg::PgOptions {
            max_connections: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    pg.pool()
        .execute("create table marks (n int)")
        .await
        .unwrap();

    // The connection back in the pool (its release pings it) before the
    // stall, so the BEGIN, not the wait for a connection, is cancelled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.stall();
    let begun = tokio::time::timeout(Duration::from_millis(300), pg.begin()).await;
    assert!(begun.is_err(), "BEGIN hangs with PostgreSQL");
    proxy.restore();
    // The pool's only connection: whatever the cancelled BEGIN left on it.
    sqlx::query("insert into marks values (1)")
        .execute(pg.pool())
        .await
        .unwrap();
    let mut direct = sqlx::PgConnection::connect(&db).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from marks")
        .fetch_one(&mut direct)
        .await
        .unwrap();
    assert_eq!(n, 1, "the insert after the cancelled BEGIN committed");
}

/// A payment refused for good (402) gives its hold back to *held*; when
/// Redis is gone at that moment, the instance gives it back once Redis
/// answers again, so the buyer can top up and pay the same hold instead
/// of meeting `409` for the whole paying timeout and then losing the seat.
#[tokio::test]
async fn a_refused_payment_whose_abort_failed_gives_its_hold_back_later() {
    // The payment's connection is kept 1.5 s after its statement answered
    // (the test-only slow_pg_ms failpoint): Redis goes away in between.
    let (proxy, app) =
        with_stallable_redis(Settings::new().set("BOXOFFICE_FAILPOINT", "slow_pg_ms:1500")).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "u1").await;
    app.charge("u1", "500", None).await;
    let hold = app.hold_seats(&token, json!([1])).await;
    let (paid, ()) = tokio::join!(app.pay(&token, &hold, None), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.cut();
    });
    paid.assert_problem(402, "insufficient_funds");
    proxy.restore();
    let back = app.ready_within(Duration::from_secs(10)).await;
    assert!(back, "Redis reached again");

    app.charge("u1", "500", None).await;
    retry_while_in_progress(|| app.pay(&token, &hold, None)).await;
    assert_eq!(app.balance("u1").await, "0", "paid once");
    assert_eq!(app.admin_seat("e1", 1).await, "sold");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

/// A payment that ends while the pool is closing (a stopping instance
/// whose payment outlived the wait for it) gives its connection back
/// rather than keeping it for the next payment: the pool's close waits
/// for every connection, and a kept one would make it wait for ever.
#[tokio::test]
async fn a_payment_connection_given_back_while_the_pool_closes_lets_it_close() {
    let db = create_database().await;
    let pg = boxoffice::store::pg::Pg::connect_with(
        &db,
        boxoffice::store::pg::PgOptions {
            max_connections: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut conn = pg.payment_conn().await.unwrap();
    let row: Result<i32, sqlx::Error> = sqlx::query_scalar("select 1").fetch_one(&mut *conn).await;
    let closing = tokio::spawn({
        let pg = pg.clone();
        async move { pg.close().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!closing.is_finished(), "the close waits for the payment");
    pg.give_back_payment_conn(conn, &row).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), closing).await;
    assert!(closed.is_ok(), "the pool closed once the payment ended");
}
