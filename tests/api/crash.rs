//! Invariant 4 with real process deaths: the instance that takes the
//! payment is the `boxoffice` binary in a process of its own (background
//! loops off, so it cannot finish its own work), stopped at a failpoint
//! right before or right after the PostgreSQL commit and killed with
//! SIGKILL. A second instance then finishes (after the commit) or undoes
//! (before it) the payment; the audit and the ledger agree; with and
//! without an `Idempotency-Key`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

struct Crashed {
    survivor: TestApp,
    token: String,
    hold: String,
}

/// Buyer `jay` (5000 on the wallet) holds seats 5 and 6 (2000); the payment
/// goes to a separate process that stops at `failpoint` and is killed
/// there. Returns a second, normal instance (background loops on) on the
/// same stores.
async fn pay_and_kill(failpoint: &str, key: Option<&str>) -> Crashed {
    let setup = spawn_with(Settings::new().without_background()).await;
    // What every instance with its loops on does at start: load Redis from
    // PostgreSQL and mark it restored. (Without the mark, the survivor's
    // first round would be a full rebuild, which confirms an interrupted
    // payment without ending its buyer's queue entry.)
    boxoffice::payments::reconcile::rebuild(&setup.state.reconciler())
        .await
        .unwrap();
    setup.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = setup.admitted_token("e1", "jay").await;
    setup.charge("jay", "5000", key.map(|_| "top-up")).await;
    let hold = setup.hold_seats(&token, json!([5, 6])).await;

    let mut doomed = ProcessInstance::start(
        &setup
            .settings
            .clone()
            .set("BOXOFFICE_FAILPOINT", failpoint)
            .set("BOXOFFICE_PAYING_TIMEOUT_SECONDS", "1"),
    )
    .await;
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/payments", doomed.base))
        .bearer_auth(&token)
        .json(&json!({"hold_id": hold}));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let in_flight = tokio::spawn(req.send());
    doomed.wait_for_failpoint(failpoint).await;
    doomed.kill().await;
    let answer = in_flight.await.unwrap();
    assert!(
        answer.is_err(),
        "the killed process never answered: {answer:?}"
    );

    let settings = setup.settings.clone().set("BOXOFFICE_BACKGROUND", "on");
    setup.stop().await;
    let survivor = spawn_with(settings).await;
    Crashed {
        survivor,
        token,
        hold,
    }
}

/// Payments in PostgreSQL: (count, all confirmed in Redis).
async fn payments(app: &TestApp) -> (i64, bool) {
    sqlx::query_as(
        "select (select count(*) from payments), not exists (select 1 from payments_unconfirmed)",
    )
    .fetch_one(app.state.pg.pool())
    .await
    .unwrap()
}

async fn killed_after_commit(key: Option<&str>) {
    let Crashed {
        survivor: app,
        token,
        hold,
    } = pay_and_kill("crash_after_commit", key).await;
    // Committed before the death: money moved, the seats are PostgreSQL's.
    assert_eq!(app.balance("jay").await, "3000");
    // The second instance's reconciler finishes the Redis side.
    let finished = eventually(Duration::from_secs(10), || async {
        app.admin_seat("e1", 5).await == "sold"
            && app.admin_seat("e1", 6).await == "sold"
            && payments(&app).await == (1, true)
    })
    .await;
    assert!(finished, "seats sold and the payment confirmed");
    app.status(&token)
        .await
        .assert_problem(410, "queue_token_expired");
    let payment_id: uuid::Uuid = sqlx::query_scalar("select payment_id from payments")
        .fetch_one(app.state.pg.pool())
        .await
        .unwrap();

    match key {
        // The same key gets the first answer, stored with the effect.
        Some(k) => {
            let r = app.pay(&token, &hold, Some(k)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            assert_eq!(r.body["payment_id"], payment_id.to_string());
            assert_eq!(r.body["balance_after"], "3000");
        }
        // Without one: the hold is already paid, naming the payment.
        None => {
            app.pay(&token, &hold, None)
                .await
                .assert_problem(410, "queue_token_expired");
            let fresh = app.admitted_token("e1", "jay").await;
            let r = app.pay(&fresh, &hold, None).await;
            r.assert_problem(409, "hold_already_paid");
            assert_eq!(r.body["payment_id"], payment_id.to_string());
        }
    }
    assert_eq!(app.balance("jay").await, "3000", "debited once");
    let (sum, rows) = app.ledger("jay").await;
    assert_eq!(sum, rust_decimal::Decimal::from(3000));
    assert_eq!(rows, 2, "one charge, one payment");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

async fn killed_before_commit(key: Option<&str>) {
    let Crashed {
        survivor: app,
        token,
        hold,
    } = pay_and_kill("crash_before_commit", key).await;
    // Nothing committed; the hold was *paying* when the process died, and
    // its paying deadline (1 s) gives the seats back with no job at all.
    assert_eq!(payments(&app).await.0, 0);
    let freed = eventually(Duration::from_secs(5), || async {
        app.admin_seat("e1", 5).await == "available" && app.admin_seat("e1", 6).await == "available"
    })
    .await;
    assert!(freed, "the paying deadline freed the seats");
    assert_eq!(app.balance("jay").await, "5000", "no money moved");

    match key {
        Some(k) => {
            // The dead process's claim on the key names the process's mark
            // of life, which died with it: the claim is taken over at once
            // (not after the 60 s a claim of unknown owner waits) and
            // answered for good.
            let owner: Option<i32> =
                sqlx::query_scalar("select owner from idempotency where key = $1")
                    .bind(k)
                    .fetch_one(app.state.pg.pool())
                    .await
                    .unwrap();
            assert!(owner.is_some(), "the claim names its instance");
            let started = std::time::Instant::now();
            let r = loop {
                let r = app.pay(&token, &hold, Some(k)).await;
                if r.code() != "request_in_progress" || started.elapsed() > Duration::from_secs(5) {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            eprintln!(
                "the dead process's claim was taken over after {:?}",
                started.elapsed()
            );
            r.assert_problem(410, "hold_expired");
            let again = app.pay(&token, &hold, Some(k)).await;
            assert_eq!(again.text, r.text, "replayed");
        }
        None => {
            app.pay(&token, &hold, None)
                .await
                .assert_problem(410, "hold_expired");
        }
    }
    // The buyer can hold and pay again.
    let hold = app.hold_seats(&token, json!([5, 6])).await;
    let r = app.pay(&token, &hold, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.balance("jay").await, "3000");
    let (sum, rows) = app.ledger("jay").await;
    assert_eq!(sum, rust_decimal::Decimal::from(3000));
    assert_eq!(rows, 2, "one charge, one payment");
    let r = app.admin(Method::GET, "/v1/users/jay/payments", None).await;
    assert_eq!(r.body["payments"].as_array().unwrap().len(), 1);
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

#[tokio::test]
async fn killed_after_the_commit_without_a_key_the_survivor_finishes_the_payment() {
    killed_after_commit(None).await;
}

#[tokio::test]
async fn killed_after_the_commit_with_a_key_the_survivor_finishes_and_replays() {
    killed_after_commit(Some("pay-once")).await;
}

#[tokio::test]
async fn killed_before_the_commit_without_a_key_nothing_is_paid_and_the_seats_come_back() {
    killed_before_commit(None).await;
}

#[tokio::test]
async fn killed_before_the_commit_with_a_key_nothing_is_paid_and_the_claim_is_taken_over() {
    killed_before_commit(Some("pay-once")).await;
}

#[tokio::test]
async fn a_rebuild_right_after_the_crash_still_ends_the_buyers_entry() {
    let Crashed {
        survivor: app,
        token,
        ..
    } = pay_and_kill("crash_after_commit", None).await;
    // A full rebuild (POST /v1/admin/reconcile) before the reconciler's
    // own pass: it replays the sale but must not mark it done, or the
    // paid buyer's queue entry (and token) would live on.
    boxoffice::payments::reconcile::rebuild(&app.state.reconciler())
        .await
        .expect("rebuild");
    let ended = eventually(Duration::from_secs(10), || async {
        app.status(&token).await.status == reqwest::StatusCode::GONE
    })
    .await;
    assert!(ended, "the buyer's entry ends once the payment is finished");
    // The confirmation mark is written after the Redis side (the entry's
    // end) is done: it may trail the status by a moment.
    let confirmed = eventually(Duration::from_secs(10), || async {
        payments(&app).await == (1, true)
    })
    .await;
    assert!(
        confirmed,
        "one payment, confirmed: {:?}",
        payments(&app).await
    );
}

/// An instance stopped (SIGTERM) while a payment whose client gave up is
/// still running waits for it before it exits: the payment's statement has
/// committed, and its Redis step (the seats sold, the confirmation mark
/// gone) runs before the process ends. Without that wait the process exits
/// at once, and the seats stay *paying* with the payment unconfirmed until
/// another instance's reconciler finishes it. The `slow_pg_ms` failpoint
/// holds the payment 2 s between its commit and its Redis step; background
/// loops are off, so nobody else can finish it.
#[tokio::test]
async fn a_stopping_instance_finishes_a_payment_whose_client_gave_up_before_it_exits() {
    let setup = spawn_with(Settings::new().without_background()).await;
    setup.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = setup.admitted_token("e1", "jay").await;
    setup.charge("jay", "5000", None).await;
    let hold = setup.hold_seats(&token, json!([5, 6])).await;
    let stopping = ProcessInstance::start(
        &setup
            .settings
            .clone()
            .set("BOXOFFICE_FAILPOINT", "slow_pg_ms:2000"),
    )
    .await;
    give_up_after(Duration::from_millis(300), |c| {
        c.post(format!("{}/v1/payments", stopping.base))
            .bearer_auth(&token)
            .json(&json!({"hold_id": hold}))
    })
    .await;
    let committed = eventually(Duration::from_secs(5), || async {
        payments(&setup).await.0 == 1
    })
    .await;
    assert!(committed, "the payment's statement committed");
    assert_eq!(
        payments(&setup).await,
        (1, false),
        "its Redis step is still to come"
    );

    let exit = stopping.terminate().await;
    assert!(exit.success(), "a clean stop: {exit}");
    assert_eq!(setup.admin_seat("e1", 5).await, "sold");
    assert_eq!(setup.admin_seat("e1", 6).await, "sold");
    assert_eq!(
        payments(&setup).await,
        (1, true),
        "the stopping instance finished the payment before it exited"
    );
    assert_eq!(setup.balance("jay").await, "3000", "paid once");
    setup.assert_script_invariants().await;
}

/// A claim on an `Idempotency-Key` names the instance that works on it by
/// its mark of life (an advisory lock its session holds). Another instance
/// never takes over the claim of one that lives, and takes over that of
/// one that died at once, without waiting out the stale time.
#[tokio::test]
async fn a_claim_is_taken_over_as_soon_as_its_instance_dies_and_never_while_it_lives() {
    use boxoffice::{
        idempotency::{Claimed, KeyRefused, claim},
        ids::{IdempotencyKey, UserId},
        store::pg::Pg,
    };
    use tokio_util::sync::CancellationToken;
    let db = create_database().await;
    let start = |pg: &Pg| {
        let stop = CancellationToken::new();
        (stop.clone(), tokio::spawn(pg.clone().stay_alive(stop)))
    };
    let (a, b) = (
        Pg::connect(&db).await.unwrap(),
        Pg::connect(&db).await.unwrap(),
    );
    let (stop_a, alive_a) = start(&a);
    let (stop_b, alive_b) = start(&b);
    let both = eventually(Duration::from_secs(5), || async {
        a.alive_key().is_some() && b.alive_key().is_some()
    })
    .await;
    assert!(both, "each instance holds its mark of life");
    assert_ne!(a.alive_key(), b.alive_key());
    let (user, key) = (
        UserId::parse("u1").unwrap(),
        IdempotencyKey::parse("k1").unwrap(),
    );
    assert!(matches!(
        claim(&a, &user, &key, "fp").await,
        Ok(Claimed::Fresh(_))
    ));
    for _ in 0..3 {
        assert!(
            matches!(
                claim(&b, &user, &key, "fp").await,
                Err(KeyRefused::InFlight)
            ),
            "a lives: its claim is its own"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop_a.cancel();
    alive_a.await.unwrap();
    let started = std::time::Instant::now();
    let taken = loop {
        match claim(&b, &user, &key, "fp").await {
            Ok(Claimed::Fresh(_)) => break true,
            Err(KeyRefused::InFlight) if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a's abandoned claim: {other:?}"),
        }
    };
    assert!(taken);
    eprintln!("taken over {:?} after a died", started.elapsed());
    // Now b's, and b lives.
    assert!(matches!(
        claim(&a, &user, &key, "fp").await,
        Err(KeyRefused::InFlight)
    ));
    stop_b.cancel();
    alive_b.await.unwrap();
}

/// A live instance whose mark of life is lost (its session ended under it:
/// a PostgreSQL restart, a partition, an operator's
/// `pg_terminate_backend`) takes a new one within a couple of seconds, and
/// its claims from then on are its own again. A claim made under the lost
/// mark may be taken over meanwhile; that is safe, because the effect's
/// statement runs only under the claim it was given
/// (`giving_back_a_claim_that_was_taken_over_leaves_the_new_claim_open`,
/// `a_storm_of_keyed_charges_through_a_starved_pool_credits_each_key_once`).
#[tokio::test]
async fn an_instance_whose_mark_of_life_was_lost_takes_a_new_one() {
    use boxoffice::{
        idempotency::{Claimed, KeyRefused, claim},
        ids::{IdempotencyKey, UserId},
        store::pg::{ALIVE_LOCKS, Pg},
    };
    use tokio_util::sync::CancellationToken;
    let db = create_database().await;
    let (a, b) = (
        Pg::connect(&db).await.unwrap(),
        Pg::connect(&db).await.unwrap(),
    );
    let stop = CancellationToken::new();
    let alive = tokio::spawn(a.clone().stay_alive(stop.clone()));
    let up = eventually(Duration::from_secs(5), || async { a.alive_key().is_some() }).await;
    assert!(up, "a holds its mark of life");
    let lost = a.alive_key().unwrap();
    let user = UserId::parse("u1").unwrap();
    let key = |k: &str| IdempotencyKey::parse(k).unwrap();
    assert!(matches!(
        claim(&a, &user, &key("before"), "fp").await,
        Ok(Claimed::Fresh(_))
    ));

    let ended: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_locks
          where locktype = 'advisory' and granted and classid = $1::int::oid
            and objid = $2::int::oid and objsubid = 2
            and database = (select oid from pg_database where datname = current_database())",
    )
    .bind(ALIVE_LOCKS)
    .bind(lost)
    .fetch_all(b.pool())
    .await
    .unwrap();
    assert_eq!(ended, [true], "a's mark of life is one session");
    let renewed = eventually(Duration::from_secs(5), || async {
        a.alive_key().is_some_and(|k| k != lost)
    })
    .await;
    assert!(renewed, "a took a new mark of life");

    // The claim made under the lost mark looks abandoned: taken over.
    assert!(matches!(
        claim(&b, &user, &key("before"), "fp").await,
        Ok(Claimed::Fresh(_))
    ));
    // Claims made under the new mark are a's own again.
    assert!(matches!(
        claim(&a, &user, &key("after"), "fp").await,
        Ok(Claimed::Fresh(_))
    ));
    for _ in 0..3 {
        assert!(matches!(
            claim(&b, &user, &key("after"), "fp").await,
            Err(KeyRefused::InFlight)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    alive.await.unwrap();
}
