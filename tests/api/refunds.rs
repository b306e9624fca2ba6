//! Refunds and cancellations: money back exactly once, seats back on sale.

use std::time::Duration;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

impl TestApp {
    async fn refund(&self, payment_id: &str, key: Option<&str>) -> Resp {
        let mut headers = vec![("x-api-key", SERVICE_KEY.to_owned())];
        if let Some(k) = key {
            headers.push(("idempotency-key", k.to_owned()));
        }
        self.send(Req {
            method: Method::POST,
            path: &format!("/v1/admin/payments/{payment_id}/refund"),
            body: None,
            raw: None,
            headers,
        })
        .await
    }

    async fn cancel(&self, event: &str, schedule: &str) -> Resp {
        self.admin(
            Method::POST,
            &format!("/v1/admin/events/{event}/schedules/{schedule}/cancel"),
            None,
        )
        .await
    }

    async fn seat_status(&self, event: &str, seat: u64) -> String {
        let r = self
            .admin(
                Method::GET,
                &format!("/v1/admin/events/{event}/schedules/d1/seats"),
                None,
            )
            .await;
        r.body["seats"][usize::try_from(seat - 1).unwrap()]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(self.state.pg.pool())
            .await
            .unwrap()
    }

    /// Every wallet's balance equals the sum of its ledger rows, and the
    /// scripts' counters match their seats (refunds change both).
    async fn assert_ledger_exact(&self) {
        let off = self
            .count(
                "select count(*) from wallets w where w.balance <>
                   coalesce((select sum(amount) from ledger l where l.user_id = w.user_id), 0)",
            )
            .await;
        assert_eq!(off, 0, "a balance differs from its ledger sum");
        self.assert_script_invariants().await;
        let audit = boxoffice::audit::run(&self.state.pg, &self.state.redis)
            .await
            .expect("the audit runs");
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
    }
}

async fn paid(app: &TestApp, user: &str, seats: Value) -> String {
    let (_, r) = app.buy("e1", user, "10000", seats).await;
    r.body["payment_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn twenty_concurrent_refunds_credit_once() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 60, 4).await;
    let without_key = paid(&app, "ann", json!([1, 2])).await;
    let with_key = paid(&app, "ben", json!([3])).await;
    assert_eq!(app.balance("ann").await, "8000");

    let answers = join_all((0..20).map(|_| app.refund(&without_key, None))).await;
    let created: Vec<&Resp> = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "exactly one refund");
    assert!(
        created[0].replayed().is_none(),
        "a refund without a key is no replay"
    );
    let refund_id = created[0].body["refund_id"].as_str().unwrap();
    assert_eq!(created[0].body["amount"], "2000");
    assert_eq!(created[0].body["balance_after"], "10000");
    assert_eq!(created[0].body["seats"], json!([1, 2]));
    for r in answers.iter().filter(|r| r.status != StatusCode::CREATED) {
        r.assert_problem(409, "already_refunded");
        assert_eq!(r.body["refund_id"], refund_id, "names the one refund");
    }
    assert_eq!(app.balance("ann").await, "10000");

    // One key, twenty times at once: one credit; every other answer is the
    // replayed 201 or 409 while the first still runs.
    let answers = join_all((0..20).map(|_| app.refund(&with_key, Some("refund-ben-1")))).await;
    let first = answers
        .iter()
        .find(|r| r.status == StatusCode::CREATED)
        .expect("one 201");
    for r in &answers {
        if r.status == StatusCode::CREATED {
            assert_eq!(r.text, first.text, "the replay is byte-identical");
        } else {
            assert!(
                matches!(r.code(), "request_in_progress" | "already_refunded"),
                "{}",
                r.text
            );
        }
    }
    assert_eq!(app.balance("ben").await, "10000");
    let fresh = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED && r.replayed().is_none())
        .count();
    assert_eq!(fresh, 1, "only the first answer is not marked a replay");
    let replay = app.refund(&with_key, Some("refund-ben-1")).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.text, first.text);
    assert_eq!(replay.replayed(), Some("true"));

    for user in ["ann", "ben"] {
        let rows = app
            .count(&format!(
                "select count(*) from ledger where user_id = '{user}' and kind = 'refund'"
            ))
            .await;
        assert_eq!(rows, 1, "one refund ledger row for {user}");
    }
    assert_eq!(app.count("select count(*) from refunds").await, 2);
    app.assert_ledger_exact().await;
    // Unknown payments: 404; a refund reads back on the payment.
    app.refund(&uuid::Uuid::now_v7().to_string(), None)
        .await
        .assert_problem(404, "not_found");
    app.refund("not-a-uuid", None)
        .await
        .assert_problem(404, "not_found");
    let p = app
        .admin(Method::GET, &format!("/v1/payments/{without_key}"), None)
        .await;
    assert!(p.body["refunded_at"].is_string(), "{}", p.text);
    let ledger = app
        .admin(Method::GET, "/v1/users/ann/wallet/transactions", None)
        .await;
    assert_eq!(ledger.body["transactions"][0]["kind"], "refund");
    assert_eq!(ledger.body["transactions"][0]["amount"], "2000");

    // The audit sees a refund whose money never came back.
    sqlx::query("delete from ledger where kind = 'refund' and user_id = 'ann'")
        .execute(app.state.pg.pool())
        .await
        .unwrap();
    let audit = boxoffice::audit::run(&app.state.pg, &app.state.redis)
        .await
        .unwrap();
    assert!(
        audit
            .violations
            .iter()
            .any(|v| v.starts_with("refund_ledger:") && v.contains(&without_key)),
        "{:?}",
        audit.violations
    );
}

#[tokio::test]
async fn a_refunded_seat_is_on_sale_at_once_and_the_buyer_may_buy_again() {
    let app = spawn_app().await;
    // max_per_user 2: after a refund, ann may buy 2 again.
    app.simple_event("e1", open_queue(), 10, 60, 2).await;
    let payment = paid(&app, "ann", json!([1, 2])).await;
    let kept = paid(&app, "cy", json!([5])).await;
    assert_eq!(app.seat_status("e1", 1).await, "sold");
    let r = app.refund(&payment, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.seat_status("e1", 1).await, "available");
    assert_eq!(app.seat_status("e1", 2).await, "available");
    // Exactly the refunded payment's seats left sold_seats.
    let sold_by = |p: &str| format!("select count(*) from sold_seats where payment_id = '{p}'");
    assert_eq!(app.count(&sold_by(&payment)).await, 0);
    assert_eq!(app.count(&sold_by(&kept)).await, 1);
    assert_eq!(app.seat_status("e1", 5).await, "sold");

    // Another user buys seat 1 at once.
    let other = paid(&app, "bob", json!([1])).await;
    assert!(!other.is_empty());
    // ann buys two more: max_per_user counts only live purchases.
    let token = app.admitted_token("e1", "ann").await;
    let hold = app.hold_seats(&token, json!([2, 3])).await;
    let r = app.pay(&token, &hold, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // ... and not a third.
    let token = app.admitted_token("e1", "ann").await;
    app.hold(&token, json!({"schedule_id": "d1", "seats": [4]}))
        .await
        .assert_problem(409, "hold_limit_exceeded");
    app.assert_ledger_exact().await;
}

/// A payment refunded while its Redis confirmation is still owed (as after
/// a crash between the commit and `confirm_sale`): the reconciler never
/// finishes a refunded sale, so the refund settles what was owed and the
/// audit does not report the payment unconfirmed forever.
#[tokio::test]
async fn a_refund_settles_a_confirmation_still_owed() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 10, 60, 2).await;
    let payment = paid(&app, "ann", json!([1])).await;
    sqlx::query(
        r"insert into payments_unconfirmed (payment_id, paid_at)
          values ($1, now() - interval '2 minutes')
          on conflict (payment_id) do update set paid_at = excluded.paid_at",
    )
    .bind(uuid::Uuid::parse_str(&payment).unwrap())
    .execute(app.state.pg.pool())
    .await
    .unwrap();
    let r = app.refund(&payment, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        app.count("select count(*) from payments_unconfirmed").await,
        0
    );
    app.assert_ledger_exact().await;
}

#[tokio::test]
async fn refunds_racing_payments_and_charges_keep_balances_exact() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 60, 60, 20).await;
    // cat owns 10 paid seats (10 payments of 1000) and 100000 more.
    let mut payments = Vec::new();
    for seat in 1..=10 {
        payments.push(paid(&app, "cat", json!([seat])).await);
    }
    app.charge("cat", "100000", None).await;
    let before: i64 = app.balance("cat").await.parse().unwrap();
    // At once: 10 refunds, 10 new payments of cat's, 20 charges of 7.
    let token = app.admitted_token("e1", "cat").await;
    let mut holds = Vec::new();
    for seat in 11..=14 {
        holds.push(app.hold_seats(&token, json!([seat])).await);
    }
    let refunds = join_all(payments.iter().map(|p| app.refund(p, None)));
    let pays = join_all(holds.iter().map(|h| app.pay(&token, h, None)));
    let charges = join_all((0..20).map(|_| app.charge("cat", "7", None)));
    let (refunds, pays, charges) = tokio::join!(refunds, pays, charges);
    assert!(refunds.iter().all(|r| r.status == StatusCode::CREATED));
    assert!(charges.iter().all(|r| r.status == StatusCode::CREATED));
    let paid_now = pays
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count() as i64;
    // Only one payment can succeed per token (a payment ends the entry);
    // the rest are refused without moving money.
    assert!(paid_now >= 1, "at least one payment went through");
    let expected = before + 10 * 1000 - paid_now * 1000 + 20 * 7;
    assert_eq!(app.balance("cat").await, expected.to_string());
    app.assert_ledger_exact().await;
}

#[tokio::test]
async fn a_crash_between_refund_commit_and_redis_is_finished_once() {
    // Loops off: only the restarted instance can finish the refund, so the
    // test sees the reconciler of *another* process repair it.
    let crashing = spawn_with(
        Settings::new()
            .without_background()
            .set("BOXOFFICE_FAILPOINT", "crash_after_refund_commit"),
    )
    .await;
    crashing.simple_event("e1", open_queue(), 10, 60, 4).await;
    let payment = paid(&crashing, "dan", json!([4])).await;
    let r = crashing.refund(&payment, None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text);
    assert_eq!(crashing.balance("dan").await, "10000", "money is back");
    assert_eq!(crashing.seat_status("e1", 4).await, "sold", "Redis not yet");

    // The process dies; a new one on the same stores finishes the step.
    let settings = crashing
        .settings
        .clone()
        .set("BOXOFFICE_FAILPOINT", "")
        .set("BOXOFFICE_BACKGROUND", "on");
    crashing.stop().await;
    let restarted = spawn_with(settings).await;
    let freed = eventually(Duration::from_secs(10), || async {
        restarted.seat_status("e1", 4).await == "available"
    })
    .await;
    assert!(freed, "the reconciler put the seat back on sale");
    let confirmed = eventually(Duration::from_secs(5), || async {
        restarted
            .count("select count(*) from refunds where not redis_confirmed")
            .await
            == 0
    })
    .await;
    assert!(confirmed);
    // Once: a second refund is refused, the money moved once.
    restarted
        .refund(&payment, None)
        .await
        .assert_problem(409, "already_refunded");
    assert_eq!(restarted.balance("dan").await, "10000");
    assert_eq!(
        restarted
            .count("select count(*) from ledger where kind = 'refund'")
            .await,
        1
    );
    // The seat sells again.
    let again = paid(&restarted, "eve", json!([4])).await;
    assert!(!again.is_empty());
    restarted.assert_ledger_exact().await;
}

#[tokio::test]
async fn cancelling_a_schedule_refunds_every_payment_once_even_after_a_crash() {
    const BUYERS: usize = 500;
    let crashing = spawn_with(
        Settings::new()
            .without_background()
            .set("BOXOFFICE_FAILPOINT", "crash_during_cancel_after:200"),
    )
    .await;
    crashing
        .simple_event("e1", open_queue(), BUYERS as u32 + 10, 300, 1)
        .await;
    // 500 buyers, one seat each, 50 at a time.
    for chunk in (0..BUYERS).collect::<Vec<_>>().chunks(50) {
        let buys = chunk.iter().map(|&i| {
            let app = &crashing;
            async move {
                let user = format!("b{i}");
                let token = app.admitted_token("e1", &user).await;
                app.charge(&user, "1000", None).await;
                let hold = app.hold_seats(&token, json!([i + 1])).await;
                app.pay(&token, &hold, None).await.status
            }
        });
        for status in join_all(buys).await {
            assert_eq!(status, StatusCode::CREATED);
        }
    }
    // A live hold of someone else, dropped by the cancellation.
    let late = crashing.admitted_token("e1", "late").await;
    crashing.charge("late", "1000", None).await;
    let late_hold = crashing.hold_seats(&late, json!([BUYERS + 1])).await;

    // The first cancel dies after 200 refunds.
    let r = crashing.cancel("e1", "d1").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text);
    assert_eq!(
        crashing
            .count("select count(*) from payments where refunded_at is not null")
            .await,
        200
    );
    // Sales stopped at once: holds and payments of the schedule refused.
    crashing
        .hold(&late, json!({"schedule_id": "d1", "seats": [BUYERS + 2]}))
        .await
        .assert_problem(409, "sale_closed");
    let r = crashing.pay(&late, &late_hold, None).await;
    assert!(
        matches!(r.code(), "hold_expired" | "sale_closed"),
        "{}",
        r.text
    );
    assert_eq!(crashing.balance("late").await, "1000", "late paid nothing");

    // Called again on a new process: finishes, exactly once.
    let settings = crashing.settings.clone().set("BOXOFFICE_FAILPOINT", "");
    crashing.stop().await;
    let app = spawn_with(settings).await;
    let r = app.cancel("e1", "d1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["refunded"], 300);
    assert_eq!(r.body["already_refunded"], 200);
    let r = app.cancel("e1", "d1").await;
    assert_eq!(r.body["refunded"], 0, "a third call refunds nothing");
    assert_eq!(r.body["already_refunded"], BUYERS);
    assert_eq!(
        app.count("select count(*) from refunds").await,
        BUYERS as i64
    );
    assert_eq!(
        app.count("select count(*) from ledger where kind = 'refund'")
            .await,
        BUYERS as i64
    );
    assert_eq!(
        app.count("select count(*) from wallets where balance <> 1000")
            .await,
        0,
        "everyone has their 1000 back"
    );
    assert_eq!(app.count("select count(*) from sold_seats").await, 0);
    assert_eq!(
        app.count("select count(*) from outbox where topic = 'schedule.cancelled'")
            .await,
        1
    );
    app.assert_ledger_exact().await;
    // Nothing of the schedule is sold in Redis any more.
    for seat in [1, 250, BUYERS as u64] {
        assert_eq!(app.seat_status("e1", seat).await, "available");
    }
    app.cancel("e1", "nope")
        .await
        .assert_problem(404, "not_found");
}

/// A cancellation whose client gave up (a gateway's timeout while the
/// schedule's row was locked) still stops the sales and refunds every
/// payment, without a second call and with no reconciler running.
#[tokio::test]
async fn a_cancellation_whose_client_gave_up_runs_to_its_end() {
    use sqlx::{Connection, Executor, PgConnection};
    const BUYERS: usize = 5;
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 300, 1).await;
    for i in 0..BUYERS {
        paid(&app, &format!("c{i}"), json!([i + 1])).await;
    }
    let mut other = PgConnection::connect(&app.settings.env["DATABASE_URL"])
        .await
        .unwrap();
    other.execute("begin").await.unwrap();
    other
        .execute("select 1 from schedules where event_id = 'e1' and schedule_id = 'd1' for update")
        .await
        .unwrap();
    give_up_after(Duration::from_millis(300), |c| {
        c.post(format!(
            "{}/v1/admin/events/e1/schedules/d1/cancel",
            app.base
        ))
        .header("x-api-key", SERVICE_KEY)
    })
    .await;
    other.execute("rollback").await.unwrap();

    let refunded = "select count(*) from payments where refunded_at is not null";
    let all = async {
        while app.count(refunded).await < BUYERS as i64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("every payment refunded by the abandoned call");
    assert_eq!(
        app.count("select count(*) from wallets where balance <> 10000")
            .await,
        0,
        "everyone has their money back, once"
    );
    for seat in 1..=BUYERS as u64 {
        assert_eq!(app.seat_status("e1", seat).await, "available");
    }
    let r = app.cancel("e1", "d1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["refunded"], 0);
    assert_eq!(r.body["already_refunded"], BUYERS);
    app.assert_ledger_exact().await;
}

#[tokio::test]
async fn the_sales_report_counts_refunds_before_and_after_the_rollup() {
    // Rollup off at first (a long interval): everything is in the tail.
    let app = spawn_with(
        Settings::new()
            .set("BOXOFFICE_ROLLUP_MS", "3600000")
            .set("BOXOFFICE_LEASE_TTL_MS", "1000"),
    )
    .await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let kept = paid(&app, "ann", json!([1, 2])).await;
    let refunded = paid(&app, "bob", json!([3])).await;
    assert!(!kept.is_empty());
    assert_eq!(
        app.refund(&refunded, None).await.status,
        StatusCode::CREATED
    );
    let expect = |r: &Resp| {
        let s = &r.body["schedules"][0];
        assert_eq!(s["payments"], 2, "{}", r.text);
        assert_eq!(s["seats_sold"], 3, "{}", r.text);
        assert_eq!(s["seats_refunded"], 1, "{}", r.text);
        assert_eq!(s["revenue"], "2000", "net of the refund: {}", r.text);
    };
    let report = app
        .admin(Method::GET, "/v1/admin/events/e1/sales", None)
        .await;
    expect(&report);
    // The admin view counts only what stands.
    let view = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    let d1 = &view.body["schedules"][0];
    assert_eq!(d1["payments"], 1, "{}", view.text);
    assert_eq!(d1["payments_refunded"], 1, "{}", view.text);
    assert_eq!(d1["revenue"], "2000", "{}", view.text);
    assert_eq!(d1["sold"], 2, "{}", view.text);
    // The same figures once a rollup round has run: this instance stops
    // (handing its leases back) and a new one with a short interval runs
    // the rollup on the same stores.
    let settings = app.settings.clone().set("BOXOFFICE_ROLLUP_MS", "50");
    app.stop().await;
    let roller = spawn_with(settings).await;
    let rolled = eventually(Duration::from_secs(10), || async {
        roller
            .count("select count(*) from refunds where not rolled_up")
            .await
            == 0
            && roller
                .count("select count(*) from payments_not_rolled_up")
                .await
                == 0
    })
    .await;
    assert!(rolled, "the rollup took the payments and the refund");
    expect(
        &roller
            .admin(Method::GET, "/v1/admin/events/e1/sales", None)
            .await,
    );
    assert_eq!(
        roller
            .count("select coalesce(sum(refunds), 0)::int8 from sales_hourly")
            .await,
        1
    );
}

/// A refund that lands between a payment's commit and its Redis step 3
/// (`confirm_sale`), which then runs anyway: the request's own step after
/// the refund, or a reconciler that read the payment before it. The refund
/// found the seat still the hold's, so it freed nothing; the late
/// confirmation then sold it to the refunded payment, and nothing ever
/// undid that: a seat off sale for good, the buyer's bought count and the
/// schedule's sold count too high. Now the late confirmation sells nothing
/// and drops the hold: the seat is on sale at once.
#[tokio::test]
async fn a_confirmation_that_comes_after_the_refund_sells_nothing() {
    use boxoffice::{
        holds,
        ids::HoldId,
        payments::{Recorded, record},
    };
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 10, 60, 2).await;
    let token = app.admitted_token("e1", "cleo").await;
    app.charge("cleo", "5000", None).await;
    let hold = app.hold_seats(&token, json!([3])).await;
    let id = HoldId::parse(&hold).unwrap();
    let buyer = app.state.tokens.verify(&token).unwrap();
    // Steps 1 and 2 of the payment: paying in Redis, committed in PostgreSQL.
    holds::begin_payment(&app.state.redis, &id, &buyer, 30_000, "test")
        .await
        .unwrap();
    let Recorded::Paid { payment, .. } = record(&app.state.pg, &buyer.user, &id, &[3], None)
        .await
        .unwrap()
    else {
        panic!("paid");
    };
    let r = app.refund(&payment.payment_id.to_string(), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.balance("cleo").await, "5000");

    // Step 3, late.
    let late = holds::confirm_sale(
        &app.state.redis,
        holds::Sale {
            event: &id.event,
            schedule: &id.schedule,
            hold_n: id.n,
            user: "cleo",
            payment_id: payment.payment_id,
            seats: &[3],
            end_queue: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(late.newly_sold, 0);
    assert_eq!(app.admin_seat("e1", 3).await, "available");
    app.assert_script_invariants().await;
    let other = app.admitted_token("e1", "dora").await;
    app.hold_seats(&other, json!([3])).await;
    app.assert_ledger_exact().await;
}

/// A keyed refund whose claim was given back before its transaction
/// reached it (the request had timed out): the transaction writes nothing,
/// so the retry that claims the key again is the only refund and answers
/// 201, not `409 already_refunded`.
#[tokio::test]
async fn a_refund_whose_claim_was_given_back_writes_nothing() {
    use boxoffice::{
        idempotency::{NextAction, Released, release, try_processing},
        ids::{IdempotencyKey, PaymentId, UserId},
        payments::refund::{Refunded, record},
    };
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 10, 60, 2).await;
    let payment = paid(&app, "eli", json!([1])).await;
    let pg = &app.state.pg;
    let (owner, key) = (
        UserId::parse("eli").unwrap(),
        IdempotencyKey::parse("refund-1").unwrap(),
    );
    assert!(matches!(
        try_processing(pg, &owner, &key, "fp").await.unwrap(),
        NextAction::StartProcessing
    ));
    assert_eq!(
        release(pg, &owner, &key).await.unwrap(),
        Released::GivenBack
    );
    let id = PaymentId::parse(&payment).unwrap();
    assert!(matches!(
        record(pg, id, Some(&key)).await.unwrap(),
        Refunded::ClaimClosed
    ));
    assert_eq!(app.balance("eli").await, "9000", "nothing came back");
    let r = app.refund(&payment, Some("refund-1")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.balance("eli").await, "10000");
    app.assert_ledger_exact().await;
}
