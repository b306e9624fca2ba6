//! Wallet and payments: invariants 2-5 under concurrency, crash recovery,
//! Redis loss.

use std::time::Duration;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use sqlx::{Connection, Executor, PgConnection};

fn d1() -> boxoffice::ids::ScheduleId {
    boxoffice::ids::ScheduleId::parse("d1").unwrap()
}

impl TestApp {
    pub async fn charge(&self, user: &str, amount: &str, key: Option<&str>) -> Resp {
        let mut headers = vec![("x-api-key", SERVICE_KEY.to_owned())];
        if let Some(k) = key {
            headers.push(("idempotency-key", k.to_owned()));
        }
        self.send(Req {
            method: Method::POST,
            path: &format!("/v1/users/{user}/wallet/charges"),
            body: Some(json!({"amount": amount})),
            raw: None,
            headers,
        })
        .await
    }

    /// A transaction of its own that holds `user`'s wallet row locked
    /// until it ends (`commit` or `rollback` on the connection returned),
    /// as a concurrent payment or charge would.
    pub async fn lock_wallet(&self, user: &str) -> PgConnection {
        let mut lock = PgConnection::connect(&self.settings.env["DATABASE_URL"])
            .await
            .unwrap();
        lock.execute("begin").await.unwrap();
        sqlx::query("select 1 from wallets where user_id = $1 for update")
            .bind(user)
            .execute(&mut lock)
            .await
            .unwrap();
        lock
    }

    pub async fn balance(&self, user: &str) -> String {
        let r = self
            .admin(Method::GET, &format!("/v1/users/{user}/wallet"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["balance"].as_str().unwrap().to_owned()
    }

    pub async fn pay(&self, token: &str, hold_id: &str, key: Option<&str>) -> Resp {
        let mut headers = vec![("authorization", format!("Bearer {token}"))];
        if let Some(k) = key {
            headers.push(("idempotency-key", k.to_owned()));
        }
        self.send(Req {
            method: Method::POST,
            path: "/v1/payments",
            body: Some(json!({"hold_id": hold_id})),
            raw: None,
            headers,
        })
        .await
    }

    pub async fn hold_seats(&self, token: &str, seats: Value) -> String {
        let r = self
            .hold(token, json!({"schedule_id": "d1", "seats": seats}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["hold_id"].as_str().unwrap().to_owned()
    }

    pub async fn admin_seat(&self, event: &str, seat: usize) -> String {
        let r = self
            .admin(
                Method::GET,
                &format!("/v1/admin/events/{event}/schedules/d1/seats"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["seats"][seat - 1]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// An admitted buyer with `funds` pays for `seats` of schedule d1;
    /// returns the buyer's token and the payment response.
    pub async fn buy(&self, event: &str, user: &str, funds: &str, seats: Value) -> (String, Resp) {
        let token = self.admitted_token(event, user).await;
        self.charge(user, funds, None).await;
        let hold = self.hold_seats(&token, seats).await;
        let paid = self.pay(&token, &hold, None).await;
        assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
        (token, paid)
    }

    /// Buyers `<prefix>0`.. of `event`, `n` of them, each admitted with
    /// 5000 in its wallet and seat `first + i` held: (token, hold) each.
    pub async fn ready_to_pay(
        &self,
        event: &str,
        prefix: &str,
        n: usize,
        first: usize,
    ) -> Vec<(String, String)> {
        let mut buyers = Vec::new();
        for i in 0..n {
            let user = format!("{prefix}{i}");
            let token = self.admitted_token(event, &user).await;
            self.charge(&user, "5000", None).await;
            let hold = self.hold_seats(&token, json!([first + i])).await;
            buyers.push((token, hold));
        }
        buyers
    }

    /// Ledger sum and row count straight from PostgreSQL.
    pub async fn ledger(&self, user: &str) -> (rust_decimal::Decimal, i64) {
        sqlx::query_as("select coalesce(sum(amount), 0), count(*) from ledger where user_id = $1")
            .bind(user)
            .fetch_one(self.state.pg.pool())
            .await
            .unwrap()
    }
}

/// Concurrent requests with one `Idempotency-Key`: every 201 carries the
/// same body, every other answer is `409 request_in_progress`. Returns a 201.
fn one_answer_per_key(results: &[Resp]) -> &Resp {
    let created: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|r| r.text == created[0].text),
        "every 201 body identical"
    );
    for r in results.iter().filter(|r| r.status != StatusCode::CREATED) {
        r.assert_problem(409, "request_in_progress");
    }
    created[0]
}

#[tokio::test]
async fn concurrent_charges_are_all_applied() {
    let app = spawn_app().await;
    let results = join_all((0..200).map(|_| app.charge("alice", "7", None))).await;
    assert!(results.iter().all(|r| r.status == StatusCode::CREATED));
    assert_eq!(app.balance("alice").await, "1400");
    let (sum, rows) = app.ledger("alice").await;
    assert_eq!(sum, rust_decimal::Decimal::from(1400));
    assert_eq!(rows, 200);
    assert_eq!(app.balance("nobody").await, "0", "a user never seen has 0");
}

#[tokio::test]
async fn bad_amounts_and_foreign_callers_are_refused() {
    let app = spawn_app().await;
    for bad in ["0", "-5", "1.5", "abc", "", "1e3", "99999999999"] {
        app.charge("bob", bad, None)
            .await
            .assert_problem(422, "invalid_request");
    }
    assert_eq!(app.ledger("bob").await.1, 0, "nothing written");
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let token = app.admitted_token("e1", "carol").await;
    let r = app.get_as("/v1/users/dave/wallet", "carol").await;
    r.assert_problem(403, "forbidden");
    let r = app.get_as("/v1/users/carol/wallet", "carol").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.get("/v1/users/carol/wallet").await;
    r.assert_problem(401, "unauthorized");
    // A queue token is the credential of one queue entry, not of the user.
    let r = app.get_with_token("/v1/users/carol/wallet", &token).await;
    r.assert_problem(401, "unauthorized");
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn charge_replays_with_the_same_key_and_refuses_another_body() {
    let app = spawn_app().await;
    let a = app.charge("erin", "500", Some("k-1")).await;
    let b = app.charge("erin", "500", Some("k-1")).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(b.status, StatusCode::CREATED);
    assert_eq!(a.text, b.text, "byte-identical replay");
    assert!(
        a.headers.get("idempotent-replayed").is_none(),
        "the first answer is not a replay"
    );
    assert_eq!(
        b.headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(app.balance("erin").await, "500");
    app.charge("erin", "600", Some("k-1"))
        .await
        .assert_problem(422, "idempotency_key_reused");
}

#[tokio::test]
async fn ledger_pages_newest_first() {
    let app = spawn_app().await;
    for i in 1..=5 {
        app.charge("fay", &i.to_string(), None).await;
    }
    let r = app
        .admin(
            Method::GET,
            "/v1/users/fay/wallet/transactions?limit=2",
            None,
        )
        .await;
    let amounts: Vec<&str> = r.body["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["5", "4"]);
    let cursor = r.body["next_cursor"].as_str().unwrap().to_owned();
    let r = app
        .admin(
            Method::GET,
            &format!("/v1/users/fay/wallet/transactions?limit=10&cursor={cursor}"),
            None,
        )
        .await;
    let amounts: Vec<&str> = r.body["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["3", "2", "1"]);
    assert_eq!(r.body["next_cursor"], Value::Null);
    app.admin(
        Method::GET,
        "/v1/users/fay/wallet/transactions?limit=0",
        None,
    )
    .await
    .assert_problem(422, "invalid_request");
}

#[tokio::test]
async fn a_buyer_racing_five_payments_never_goes_negative() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 5).await;
    let token = app.admitted_token("e1", "gus").await;
    app.charge("gus", "2500", None).await;
    let mut holds = Vec::new();
    for s in 1..=5 {
        holds.push(app.hold_seats(&token, json!([s])).await);
    }
    let results = join_all(holds.iter().map(|h| app.pay(&token, h, None))).await;
    let paid: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(
        paid.len(),
        2,
        "2500 buys two 1000 seats: {:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in results.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert!(
            matches!(
                r.code(),
                "insufficient_funds" | "hold_expired" | "queue_token_expired"
            ),
            "{}",
            r.text
        );
    }
    assert_eq!(app.balance("gus").await, "500");
    let (sum, _) = app.ledger("gus").await;
    assert_eq!(
        sum,
        rust_decimal::Decimal::from(500),
        "balance = charges - payments"
    );
    for r in &paid {
        let seat = r.body["seats"][0].as_u64().unwrap() as usize;
        assert_eq!(app.admin_seat("e1", seat).await, "sold");
    }
    let sold: i64 = sqlx::query_scalar("select count(*) from sold_seats")
        .fetch_one(app.state.pg.pool())
        .await
        .unwrap();
    assert_eq!(sold, 2);
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn one_idempotency_key_debits_once() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "hal").await;
    app.charge("hal", "5000", None).await;
    let hold = app.hold_seats(&token, json!([3, 4])).await;
    let results = join_all((0..20).map(|_| app.pay(&token, &hold, Some("pay-1")))).await;
    let first = one_answer_per_key(&results);
    assert_eq!(app.balance("hal").await, "3000", "one debit");
    let fresh = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED && r.replayed().is_none())
        .count();
    assert_eq!(fresh, 1, "only the first answer is not marked a replay");
    // After completion, and with the queue token gone: the stored response.
    let again = app.pay(&token, &hold, Some("pay-1")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.text, first.text);
    assert_eq!(again.replayed(), Some("true"));
    app.status(&token)
        .await
        .assert_problem(410, "queue_token_expired");
    assert_eq!(app.balance("hal").await, "3000");
    // The payment is readable by its owner.
    let id = first.body["payment_id"].as_str().unwrap();
    let r = app
        .admin(Method::GET, &format!("/v1/payments/{id}"), None)
        .await;
    assert_eq!(r.body["seats"], json!([3, 4]));
    assert_eq!(r.body["amount"], "2000");
    let r = app.admin(Method::GET, "/v1/users/hal/payments", None).await;
    assert_eq!(r.body["payments"].as_array().unwrap().len(), 1);
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn expired_and_in_flight_holds_cannot_be_paid() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 1, 4).await;
    let token = app.admitted_token("e1", "ivy").await;
    app.charge("ivy", "5000", None).await;
    let hold = app.hold_seats(&token, json!([1])).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    app.pay(&token, &hold, None)
        .await
        .assert_problem(410, "hold_expired");
    assert_eq!(app.balance("ivy").await, "5000", "no money moved");

    // A hold being paid by another request.
    let hold = app.hold_seats(&token, json!([2])).await;
    let id = boxoffice::ids::HoldId::parse(&hold).unwrap();
    let buyer = app.state.tokens.verify(&token).unwrap();
    boxoffice::holds::begin_payment(&app.state.redis, &id, &buyer, 30_000, "test")
        .await
        .unwrap();
    app.pay(&token, &hold, None)
        .await
        .assert_problem(409, "request_in_progress");
    assert_eq!(app.balance("ivy").await, "5000");
    app.assert_script_invariants().await;
}

/// An app (no background loops) with ivy admitted to e1, 5000 on her
/// wallet and seat 2 held: the app, her queue token, the hold's id as
/// text and parsed, and her verified queue claims.
async fn ivy_holding_seat_2() -> (
    TestApp,
    String,
    String,
    boxoffice::ids::HoldId,
    boxoffice::token::QueueClaims,
) {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "ivy").await;
    app.charge("ivy", "5000", None).await;
    let hold = app.hold_seats(&token, json!([2])).await;
    let id = boxoffice::ids::HoldId::parse(&hold).unwrap();
    let buyer = app.state.tokens.verify(&token).unwrap();
    (app, token, hold, id, buyer)
}

/// A paying hold goes back to *held* only by the payment attempt that made
/// it paying: another request's abort, arriving late, leaves it alone.
#[tokio::test]
async fn only_its_own_attempt_gives_a_paying_hold_back() {
    use boxoffice::holds::{Aborted, Bar, abort_payment, begin_payment};
    let (app, token, hold, id, buyer) = ivy_holding_seat_2().await;
    let redis = &app.state.redis;
    begin_payment(redis, &id, &buyer, 30_000, "test")
        .await
        .unwrap();
    let other = abort_payment(redis, &id, &buyer.user, "other", Bar::No)
        .await
        .unwrap();
    assert_eq!(other, Aborted::NotPaying);
    app.pay(&token, &hold, None)
        .await
        .assert_problem(409, "request_in_progress");
    let own = abort_payment(redis, &id, &buyer.user, "test", Bar::No)
        .await
        .unwrap();
    assert!(matches!(own, Aborted::Restored { .. }), "{own:?}");
    let r = app.pay(&token, &hold, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.balance("ivy").await, "4000");
    app.assert_script_invariants().await;
}

/// A payment attempt whose `begin_payment` got no answer is barred on its
/// hold by the instance's late abort: the call, arriving later, cannot
/// make the hold *paying*. Barring twice is barring once; an attempt the
/// hold is paying for is given back, not barred; a hold keeps the last 32
/// barred attempts.
#[tokio::test]
async fn a_barred_payment_attempt_never_makes_its_hold_paying() {
    use boxoffice::holds::{Aborted, Bar, HoldError, abort_payment, begin_payment};
    let (app, token, hold, id, buyer) = ivy_holding_seat_2().await;
    let redis = &app.state.redis;
    let (id, user) = (&id, &buyer.user);
    let abort = |attempt: String, bar: Bar| async move {
        abort_payment(redis, id, user, &attempt, bar).await.unwrap()
    };

    for _ in 0..2 {
        assert_eq!(abort("lost".into(), Bar::Attempt).await, Aborted::Barred);
    }
    let late = begin_payment(redis, id, &buyer, 30_000, "lost").await;
    assert!(matches!(late, Err(HoldError::Barred)), "{late:?}");
    assert_eq!(app.admin_seat("e1", 2).await, "held");
    // Without the bar, a hold not paying for the attempt is left alone.
    assert_eq!(abort("other".into(), Bar::No).await, Aborted::NotPaying);
    begin_payment(redis, id, &buyer, 30_000, "other")
        .await
        .unwrap();
    begin_payment(redis, id, &buyer, 30_000, "next")
        .await
        .expect_err("paying already");
    // Paying for the attempt: given back (held again), not barred.
    let own = abort("other".into(), Bar::Attempt).await;
    assert!(matches!(own, Aborted::Restored { .. }), "{own:?}");

    // 33 more barred attempts: the hold keeps the last 32, so the first
    // of them (and "lost") are forgotten, the others refused.
    let names: Vec<String> = (0..33).map(|i| format!("a{i}")).collect();
    for name in &names {
        assert_eq!(abort(name.clone(), Bar::Attempt).await, Aborted::Barred);
    }
    for name in &names[1..] {
        let r = begin_payment(redis, id, &buyer, 30_000, name).await;
        assert!(matches!(r, Err(HoldError::Barred)), "{name}: {r:?}");
    }
    begin_payment(redis, id, &buyer, 30_000, "a0")
        .await
        .unwrap();
    let own = abort("a0".into(), Bar::No).await;
    assert!(matches!(own, Aborted::Restored { .. }), "{own:?}");
    assert_eq!(app.admin_seat("e1", 2).await, "held");
    let r = app.pay(&token, &hold, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.balance("ivy").await, "4000");
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn insufficient_funds_keeps_the_hold_and_someone_elses_hold_is_forbidden() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let poor = app.admitted_token("e1", "poor").await;
    let other = app.admitted_token("e1", "other").await;
    let hold = app.hold_seats(&poor, json!([8])).await;
    let r = app.pay(&poor, &hold, None).await;
    r.assert_problem(402, "insufficient_funds");
    assert_eq!(r.body["amount"], "1000");
    assert_eq!(app.admin_seat("e1", 8).await, "held", "the hold stays");
    app.pay(&other, &hold, None)
        .await
        .assert_problem(403, "forbidden");
    app.charge("poor", "1000", None).await;
    let paid = app.pay(&poor, &hold, None).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    // The payment ended the buyer's queue entry: the old token is gone...
    app.pay(&poor, &hold, None)
        .await
        .assert_problem(410, "queue_token_expired");
    // ... and with a fresh one the hold is already paid, naming its payment.
    let fresh = app.admitted_token("e1", "poor").await;
    let r = app.pay(&fresh, &hold, None).await;
    r.assert_problem(409, "hold_already_paid");
    assert_eq!(r.body["payment_id"], paid.body["payment_id"]);
    assert_eq!(app.balance("poor").await, "0", "paid once");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

#[tokio::test]
async fn a_refusal_for_good_is_the_keys_answer_and_only_its_replay_says_so() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "pia").await;
    let hold = app.hold_seats(&token, json!([5])).await;
    let first = app.pay(&token, &hold, Some("pia-1")).await;
    first.assert_problem(402, "insufficient_funds");
    assert!(
        first.replayed().is_none(),
        "the first answer is not a replay"
    );
    // The money arrives, but the key's answer stays the refusal.
    app.charge("pia", "1000", None).await;
    let again = app.pay(&token, &hold, Some("pia-1")).await;
    again.assert_problem(402, "insufficient_funds");
    assert_eq!(again.text, first.text, "byte-identical replay");
    assert_eq!(again.replayed(), Some("true"));
    assert_eq!(app.balance("pia").await, "1000", "nothing debited");
    // Another key pays; its first answer is no replay either.
    let paid = app.pay(&token, &hold, Some("pia-2")).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert!(paid.replayed().is_none());
    assert_eq!(app.balance("pia").await, "0");
    app.assert_script_invariants().await;
}

async fn wipe_prefix(prefix: &str) {
    let script = format!(
        "redis-cli -u '{}' --scan --pattern '{}*' | xargs -r redis-cli -u '{}' del > /dev/null",
        redis_url(),
        prefix,
        redis_url()
    );
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn an_emptied_redis_is_restored_from_postgres() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    app.buy("e1", "lee", "5000", json!([9, 10])).await;

    let prefix = app.settings.env["BOXOFFICE_REDIS_PREFIX"].clone();
    wipe_prefix(&prefix).await;
    let back = eventually(Duration::from_secs(5), || async {
        app.get("/v1/events").await.body["events"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
            && app.admin_seat("e1", 9).await == "sold"
            // Ready: holds are refused with 503 until the restore is done.
            && app.admin(Method::GET, "/v1/admin/events/e1", None).await.body["restoring"] == false
    })
    .await;
    assert!(
        back,
        "catalog and sold seats back within seconds, with no call"
    );
    let buyer = app.admitted_token("e1", "mo").await;
    let r = app
        .hold(&buyer, json!({"schedule_id": "d1", "seats": [10]}))
        .await;
    r.assert_problem(409, "seats_unavailable");

    // On demand, with a report of what changed: on an instance without
    // background loops, once the looping one is gone, so no loop can win
    // the race and the report is exact.
    // The wipe took the stream too; the looping instance sent the charge
    // and the payment again.
    assert!(
        eventually(Duration::from_secs(5), || async {
            outbox_rows(app.state.pg.pool()).await.1 == 2
        })
        .await
    );
    let quiet = spawn_with(app.settings.clone().without_background()).await;
    app.stop().await;
    let pool = quiet.state.pg.pool();
    let (_, before) = outbox_rows(pool).await;
    let r = quiet.admin(Method::POST, "/v1/admin/reconcile", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["seats_fixed"], 0, "nothing to fix now: {}", r.text);
    // The stream may have missed writes too (a Sentinel failover): every
    // kept message is pending again, for the relay to send once more.
    assert_eq!(r.body["stream_messages_requeued"], before, "{}", r.text);
    assert_eq!(outbox_rows(pool).await.1, 0);
    wipe_prefix(&prefix).await;
    let r = quiet.admin(Method::POST, "/v1/admin/reconcile", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["events_loaded"], 1, "{}", r.text);
    assert_eq!(r.body["seats_fixed"], 2, "seats 9 and 10: {}", r.text);
    assert_eq!(quiet.admin_seat("e1", 9).await, "sold");
    assert_eq!(quiet.admin_seat("e1", 10).await, "sold");
    quiet.assert_script_invariants().await;
    quiet.assert_audit_clean().await;
}

#[tokio::test]
async fn sales_report_and_outbox_stream() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    app.buy("e1", "ned", "5000", json!([1, 2, 3])).await;
    let r = app
        .admin(Method::GET, "/v1/admin/events/e1/sales", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["schedules"][0]["seats_sold"], 3);
    assert_eq!(r.body["schedules"][0]["revenue"], "3000");
    assert_eq!(r.body["hourly"][0]["payments"], 1);
    let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(r.body["schedules"][0]["sold"], 3);
    assert_eq!(r.body["schedules"][0]["revenue"], "3000");

    let published = eventually(Duration::from_secs(5), || async {
        let n: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is not null")
                .fetch_one(app.state.pg.pool())
                .await
                .unwrap();
        n == 2
    })
    .await;
    assert!(published, "charge and payment relayed");
    let stream = app.state.redis.keys().outbox_stream();
    assert_eq!(redis_cli(&["XLEN", &stream]).await.trim(), "2");
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn the_audit_passes_after_sales_and_catches_corruption() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    app.buy("e1", "olga", "5000", json!([4, 5])).await;

    let a = boxoffice::audit::run(&app.state.pg, &app.state.redis)
        .await
        .unwrap();
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    for name in [
        "redis_pg_sold",
        "payment_amount",
        "payment_ledger",
        "wallet_ledger",
    ] {
        let c = a.check(name).unwrap();
        assert!(c.examined > 0, "{name} examined nothing");
    }

    // Redis forgets a sold seat; a wallet drifts from its ledger.
    let seats_key = app.event_keys("e1").seats(&d1());
    assert_eq!(redis_cli(&["HDEL", &seats_key, "4"]).await.trim(), "1");
    sqlx::query("update wallets set balance = balance + 1 where user_id = 'olga'")
        .execute(app.state.pg.pool())
        .await
        .unwrap();
    let a = boxoffice::audit::run(&app.state.pg, &app.state.redis)
        .await
        .unwrap();
    // The seats hash lost seat 4; the counter and both bitmaps still count it.
    assert_eq!(
        a.failed(),
        [
            "wallet_ledger",
            "redis_pg_sold",
            "script:sold_counter",
            "script:map_bits",
            "script:sold_bits"
        ],
        "{:?}",
        a.violations
    );
    assert!(
        a.violations
            .iter()
            .any(|v| v.contains("sold in PostgreSQL but not in Redis: [4]"))
    );
    assert!(
        a.violations
            .iter()
            .any(|v| v.contains("seat 4: map bit 1 but the seat is free"))
    );
    assert!(a.violations.iter().any(|v| v.contains("wallet olga")));
}

#[tokio::test]
async fn concurrent_charges_with_one_key_credit_once() {
    let app = spawn_app().await;
    let results = join_all((0..20).map(|_| app.charge("pia", "700", Some("top-up-1")))).await;
    let first = one_answer_per_key(&results);
    assert_eq!(app.balance("pia").await, "700", "credited once");
    assert_eq!(app.ledger("pia").await.1, 1);
    let again = app.charge("pia", "700", Some("top-up-1")).await;
    assert_eq!(again.text, first.text);
}

#[tokio::test]
async fn charges_and_payments_racing_on_one_wallet_lose_nothing() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 40, 300, 20).await;
    let token = app.admitted_token("e1", "quinn").await;
    app.charge("quinn", "3000", None).await;
    let mut holds = Vec::new();
    for s in 1..=10 {
        holds.push(app.hold_seats(&token, json!([s])).await);
    }
    // 10 payments of 1000 race 100 charges of 10 on the same wallet.
    let pays = join_all(holds.iter().map(|h| app.pay(&token, h, None)));
    let charges = join_all((0..100).map(|_| app.charge("quinn", "10", None)));
    let (pays, charges) = tokio::join!(pays, charges);
    assert!(charges.iter().all(|r| r.status == StatusCode::CREATED));
    let paid = pays
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count() as i64;
    for r in pays.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert!(
            matches!(r.code(), "insufficient_funds" | "queue_token_expired"),
            "{}",
            r.text
        );
    }
    assert!(paid >= 3, "3000 up front buys at least three seats: {paid}");
    let expected = rust_decimal::Decimal::from(3000 + 100 * 10 - 1000 * paid);
    assert_eq!(app.balance("quinn").await, expected.to_string());
    let (sum, rows) = app.ledger("quinn").await;
    assert_eq!(sum, expected, "balance = ledger sum");
    assert_eq!(rows, 1 + 100 + paid);
    let a = boxoffice::audit::run(&app.state.pg, &app.state.redis)
        .await
        .unwrap();
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn a_payment_racing_its_holds_expiry_never_sells_a_seat_twice() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 10, 1, 4).await;
    let owner = app.admitted_token("e1", "rae").await;
    app.charge("rae", "5000", None).await;
    let others = app.admitted_users("e1", 40).await;
    let hold = app.hold_seats(&owner, json!([1])).await;
    let r = app
        .get_with_token(&format!("/v1/holds/{hold}"), &owner)
        .await;
    let expires =
        chrono::DateTime::parse_from_rfc3339(r.body["expires_at"].as_str().unwrap()).unwrap();
    let wait = expires.timestamp_millis() - chrono::Utc::now().timestamp_millis() - 20;
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;

    // At the deadline: the owner pays while 40 others grab the seat.
    let grabs = join_all(
        others
            .iter()
            .map(|t| app.hold(t, json!({"schedule_id": "d1", "seats": [1]}))),
    );
    let (pay, grabs) = tokio::join!(app.pay(&owner, &hold, None), grabs);
    let grabbed = grabs
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let paid = pay.status == StatusCode::CREATED;
    assert!(
        usize::from(paid) + grabbed <= 1,
        "paid {paid} and {grabbed} new holds on one seat"
    );
    if paid {
        assert_eq!(app.balance("rae").await, "4000");
        assert_eq!(app.admin_seat("e1", 1).await, "sold");
    } else {
        pay.assert_problem(410, "hold_expired");
        assert_eq!(app.balance("rae").await, "5000", "no money moved");
        if grabbed == 0 {
            // Every grab ran before the deadline: the seat is not lost,
            // the first grab after the deadline gets it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = app
                .hold(&others[0], json!({"schedule_id": "d1", "seats": [1]}))
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        }
        assert_eq!(app.admin_seat("e1", 1).await, "held", "one new owner");
    }
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

#[tokio::test]
async fn postgres_refuses_a_double_sale_that_redis_no_longer_sees() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    app.buy("e1", "sam", "5000", json!([7])).await;

    // Redis forgets the sale (a lost write after a failover, say).
    let k = app.event_keys("e1");
    redis_cli(&["HDEL", &k.seats(&d1()), "7"]).await;
    redis_cli(&["SETBIT", &k.seat_map(&d1()), "7", "0"]).await;
    // Racing buyers can now hold seat 7 one after another, but none can pay.
    let token = app.admitted_token("e1", "tia").await;
    app.charge("tia", "5000", None).await;
    let hold = app.hold_seats(&token, json!([7])).await;
    let r = app.pay(&token, &hold, None).await;
    r.assert_problem(409, "seats_unavailable");
    assert_eq!(r.body["unavailable_seats"], json!([7]));
    assert_eq!(app.balance("tia").await, "5000", "no money moved");
    let sold: i64 = sqlx::query_scalar("select count(*) from sold_seats where seat_no = 7")
        .fetch_one(app.state.pg.pool())
        .await
        .unwrap();
    assert_eq!(sold, 1);
}

#[tokio::test]
async fn a_hold_paid_before_is_already_paid_even_when_the_money_is_gone() {
    // The payment statement itself tells a second attempt on a paid hold
    // (possible when an attempt's outcome was unknown) from a short wallet.
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    app.charge("rhea", "1000", None).await;
    let user = boxoffice::ids::UserId::parse("rhea").unwrap();
    let hold = boxoffice::ids::HoldId::parse("e1.d1.7").unwrap();
    let first = boxoffice::payments::record(&app.state.pg, &user, &hold, &[3], None)
        .await
        .unwrap();
    let boxoffice::payments::Recorded::Paid { payment, .. } = first else {
        panic!("first attempt pays: {first:?}");
    };
    assert_eq!(app.balance("rhea").await, "0");
    let again = boxoffice::payments::record(&app.state.pg, &user, &hold, &[3], None)
        .await
        .unwrap();
    assert!(
        matches!(again, boxoffice::payments::Recorded::AlreadyPaid { payment_id } if payment_id == payment.payment_id),
        "{again:?}"
    );
    assert_eq!(app.balance("rhea").await, "0", "nothing moved twice");
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn a_payment_whose_answer_was_lost_is_settled_by_asking_again() {
    use boxoffice::{
        ids::{HoldId, UserId},
        payments::{Recorded, record, settle},
        store::{Dependency, StoreError},
    };
    let lost = || StoreError::Unavailable {
        dep: Dependency::Postgres,
        reason: "timed out".into(),
    };
    let db = create_database().await;
    let proxy = Proxy::start(resolve(&db).await).await;
    let app = spawn_with(
        Settings::new()
            .without_background()
            .set("DATABASE_URL", &via(&db, proxy.addr)),
    )
    .await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    app.charge("sven", "5000", None).await;
    let user = UserId::parse("sven").unwrap();
    let paid = HoldId::parse("e1.d1.1").unwrap();
    let Recorded::Paid { body, .. } = record(&app.state.pg, &user, &paid, &[1], None)
        .await
        .unwrap()
    else {
        panic!("paid");
    };

    // Committed, answer lost: paid after all, with the same body.
    match settle(&app.state.pg, &user, &paid, None, lost())
        .await
        .unwrap()
    {
        Recorded::Paid { body: again, .. } => assert_eq!(again, body),
        other => panic!("{other:?}"),
    }
    // Never committed: the error stands (the caller may undo).
    let unpaid = HoldId::parse("e1.d1.2").unwrap();
    assert!(
        settle(&app.state.pg, &user, &unpaid, None, lost())
            .await
            .is_err()
    );
    // Cannot ask: unknown, so nothing may be undone.
    proxy.cut();
    assert!(matches!(
        settle(&app.state.pg, &user, &unpaid, None, lost()).await,
        Ok(Recorded::Unknown(_))
    ));
}

/// Every timestamp that goes out (responses, outbox messages) is RFC 3339
/// in UTC with milliseconds and a `Z`: `2026-12-24T11:00:00.000Z`.
#[tokio::test]
async fn every_timestamp_goes_out_with_milliseconds_in_utc() {
    fn assert_ms(v: &Value, what: &str) {
        let s = v
            .as_str()
            .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
        let (_, frac) = s.rsplit_once('.').unwrap_or_else(|| panic!("{what}: {s}"));
        assert!(
            frac.len() == 4 && frac.ends_with('Z') && frac[..3].bytes().all(|b| b.is_ascii_digit()),
            "{what} is not RFC 3339 with milliseconds and Z: {s}"
        );
        chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{what}: {s}: {e}"));
    }
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let token = app.admitted_token("e1", "tia").await;
    app.charge("tia", "5000", None).await;
    let r = app
        .hold(&token, json!({"schedule_id": "d1", "seats": [1]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_ms(&r.body["expires_at"], "hold expires_at");
    let paid = app
        .pay(&token, r.body["hold_id"].as_str().unwrap(), None)
        .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_ms(&paid.body["paid_at"], "paid_at");

    let r = app
        .admin(Method::GET, "/v1/users/tia/wallet/transactions", None)
        .await;
    for t in r.body["transactions"].as_array().unwrap() {
        assert_ms(&t["created_at"], "ledger created_at");
    }
    let r = app.get("/v1/events").await;
    assert_ms(
        &r.body["events"][0]["schedules"][0]["starts_at"],
        "starts_at",
    );
    let r = app
        .admin(Method::GET, "/v1/admin/events/e1/sales", None)
        .await;
    assert_ms(&r.body["hourly"][0]["hour"], "sales hour");

    let confirmed: Value = sqlx::query_scalar(
        "select payload from outbox where topic = 'payment.confirmed' and user_id = 'tia'",
    )
    .fetch_one(app.state.pg.pool())
    .await
    .unwrap();
    assert_ms(&confirmed["paid_at"], "outbox paid_at");
}

/// A backlog larger than a batch goes out in batches of 200, every
/// message once and in id order, and the rows are marked.
#[tokio::test]
async fn an_outbox_backlog_is_relayed_once_each_in_id_order() {
    let (app, stores, ids) = outbox_backlog(Settings::new(), 450).await;
    let pool = app.state.pg.pool();
    // The stream refuses every XADD (its key holds a string): nothing is
    // marked published, and the batch goes out once the stream takes it.
    let stream = app.state.redis.keys().outbox_stream();
    redis_cli(&["SET", &stream, "not a stream"]).await;
    let refused = boxoffice::payments::relay::publish_batch(&stores)
        .await
        .unwrap();
    assert_eq!(refused, 0);
    redis_cli(&["DEL", &stream]).await;
    let mut sent = Vec::new();
    loop {
        let n = boxoffice::payments::relay::publish_batch(&stores)
            .await
            .unwrap();
        sent.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(sent, [200, 200, 50, 0]);
    let relayed = outbox_stream_ids(&app).await;
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(relayed, expected, "each message once, in id order");
    let (pending, _) = outbox_rows(pool).await;
    assert_eq!(pending, 0);
}

/// A batch goes out in script calls of at most 50 messages (each call
/// holds Redis, which runs one script at a time), still in id order and
/// marked in one commit: 200 messages, 4 calls. Counted on a Redis of the
/// test's own, where nothing else calls scripts.
#[tokio::test]
async fn a_relay_batch_goes_out_in_calls_of_fifty() {
    use boxoffice::payments::relay::publish_batch;
    let Some(redis) = PrivateRedis::start().await else {
        return missing_tool("redis-server", "apt-get install redis-server");
    };
    let (app, stores, ids) =
        outbox_backlog(Settings::new().set("REDIS_URL", &redis.url()), 200).await;
    let calls = async || -> u64 {
        let stats = redis.cli(&["INFO", "commandstats"]).await;
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
            .and_then(|l| l.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let before = calls().await;
    assert_eq!(publish_batch(&stores).await.unwrap(), 200);
    assert_eq!(calls().await - before, 4, "200 messages in calls of 50");
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(outbox_stream_ids(&app).await, expected, "in id order");
    assert_eq!(outbox_rows(app.state.pg.pool()).await, (0, 200));
}

/// A relay that finds another in the middle of a batch publishes nothing:
/// taking the rows after that batch would put them in the stream ahead of
/// it (a refund ahead of its payment, say).
#[tokio::test]
async fn a_relay_publishes_nothing_while_another_holds_a_batch() {
    let (app, stores, mut ids) = outbox_backlog(Settings::new(), 300).await;
    // The other relay, mid-batch: it holds what any relay holds then, the
    // relays' lock and its rows.
    let mut other = app.state.pg.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(boxoffice::payments::relay::RELAY_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("select id from outbox order by id limit 200 for update")
        .execute(&mut *other)
        .await
        .unwrap();
    let sent = boxoffice::payments::relay::publish_batch(&stores)
        .await
        .unwrap();
    assert_eq!(sent, 0);
    assert_eq!(outbox_stream_ids(&app).await, Vec::<i64>::new());
    // It gave up its batch (rolled back): everything goes out, in order.
    other.rollback().await.unwrap();
    while boxoffice::payments::relay::publish_batch(&stores)
        .await
        .unwrap()
        > 0
    {}
    ids.sort_unstable();
    assert_eq!(outbox_stream_ids(&app).await, ids);
}

/// The stream's restore waits for the relay holding a batch: a relay whose
/// messages went into the stream just before it was lost, and that marks
/// them after the restore began, has its marks undone with the rest, so
/// those messages are sent again too.
#[tokio::test]
async fn the_stream_restore_waits_for_a_relay_caught_mid_batch() {
    let (app, _stores, ids) = outbox_backlog(Settings::new(), 10).await;
    let pool = app.state.pg.pool();
    let mark = |ids: &[i64]| {
        sqlx::query("update outbox set published_at = now() where id = any($1)").bind(ids.to_vec())
    };
    mark(&ids[..5]).execute(pool).await.unwrap();
    // A relay mid-batch: the relays' lock, its five rows marked, not yet
    // committed; its XADDs went into the stream that is now lost.
    let mut relay = app.state.pg.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(boxoffice::payments::relay::RELAY_LOCK)
        .execute(&mut *relay)
        .await
        .unwrap();
    mark(&ids[5..]).execute(&mut *relay).await.unwrap();
    app.state
        .redis
        .del(&app.state.redis.keys().outbox_stream_ready())
        .await
        .unwrap();
    let jobs = app.state.jobs();
    let restore =
        tokio::spawn(async move { boxoffice::payments::relay::restore_stream(&jobs).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!restore.is_finished(), "the restore waits for the relay");
    relay.commit().await.unwrap();
    assert_eq!(restore.await.unwrap().unwrap(), Some(10));
    let (pending, _) = outbox_rows(pool).await;
    assert_eq!(pending, 10, "every message is sent again");
}

/// However many instances find the stream lost at once, it is restored
/// once (the lease `restore:outbox`, its fencing token, and the mark
/// checked again under it; with neither lease nor token two restore).
#[tokio::test]
async fn a_lost_stream_is_restored_once_by_concurrent_reconcilers() {
    let (app, stores, _) = outbox_backlog(Settings::new(), 50).await;
    while boxoffice::payments::relay::publish_batch(&stores)
        .await
        .unwrap()
        > 0
    {}
    app.state
        .redis
        .del(&app.state.redis.keys().outbox_stream_ready())
        .await
        .unwrap();
    let restores = join_all((0..8).map(|_| {
        let jobs = app.state.jobs();
        async move {
            boxoffice::payments::relay::restore_stream(&jobs)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(restores.iter().flatten().count(), 1, "{restores:?}");
    assert_eq!(restores.iter().flatten().sum::<u64>(), 50, "{restores:?}");
}

/// Relays on several instances at once: one publishes at a time (the
/// relays' advisory lock), so with nobody dying every message reaches the
/// stream exactly once and in id order.
#[tokio::test]
async fn concurrent_relays_publish_each_message_exactly_once() {
    let (app, stores, mut ids) = outbox_backlog(Settings::new(), 1000).await;
    let relays = (0..8).map(|_| {
        let stores = stores.clone();
        async move {
            let mut total = 0;
            loop {
                match boxoffice::payments::relay::publish_batch(&stores)
                    .await
                    .unwrap()
                {
                    0 => return total,
                    n => total += n,
                }
            }
        }
    });
    let totals = join_all(relays).await;
    assert_eq!(totals.iter().sum::<usize>(), 1000, "{totals:?}");
    let relayed = outbox_stream_ids(&app).await;
    ids.sort_unstable();
    assert_eq!(relayed, ids, "each message exactly once, in id order");
}

/// A keyed charge whose statement outlives our timeout and commits on the
/// server (it waited for a pool connection, then for the wallet's row
/// lock): the request had already failed in our eyes, and its claim was
/// given back, so the client's retry with the same key credited again.
/// Here the work fails at once, as a timed-out call does, while its
/// statement waits on the wallet a test transaction holds. Giving the
/// claim back now waits for that statement and finds its answer, which
/// becomes the request's answer; the retry replays it: one credit.
#[tokio::test]
async fn a_keyed_charge_that_commits_after_our_timeout_is_answered_and_never_credited_twice() {
    use boxoffice::{
        idempotency::{Answered, KeyRefused, Scope, once},
        ids::{IdempotencyKey, UserId},
        money::Money,
        wallet,
    };
    /// The work's failure: a timed-out call.
    #[derive(Debug)]
    struct Failed;
    impl From<KeyRefused> for Failed {
        fn from(e: KeyRefused) -> Self {
            panic!("the key refused: {e}")
        }
    }
    let app = spawn_with(Settings::new().without_background()).await;
    app.charge("tove", "1000", None).await;
    let pg = app.state.pg.clone();
    let (user, key) = (
        UserId::parse("tove").unwrap(),
        IdempotencyKey::parse("topup-7").unwrap(),
    );
    let amount = Money::parse_amount("500", app.state.config.currency, 10_000.into()).unwrap();
    let scope = || Some(Scope::new(&user, &key, &["charge", "tove", "500"]));

    let mut lock = app.lock_wallet("tove").await;
    let statement = std::sync::Arc::new(tokio::sync::OnceCell::new());
    let work = {
        let (pg, user, key, statement) = (pg.clone(), user.clone(), key.clone(), statement.clone());
        async move {
            let running =
                tokio::spawn(async move { wallet::charge(&pg, &user, amount, Some(&key)).await });
            // The statement is on the server, waiting for the row lock.
            tokio::time::sleep(Duration::from_millis(300)).await;
            statement.set(running).unwrap();
            Err::<(), _>(Failed)
        }
    };
    let unlock = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        lock.execute("commit").await.unwrap();
    });
    let answered = once(&pg, scope(), work, |_| None).await.unwrap();
    unlock.await.unwrap();
    let Answered::Replayed(saved) = answered else {
        panic!("the committed charge's answer, not a fresh run");
    };
    assert_eq!(saved.status, 201);
    let running = std::sync::Arc::into_inner(statement)
        .and_then(tokio::sync::OnceCell::into_inner)
        .unwrap();
    let (charged, body) = running.await.unwrap().unwrap();
    assert_eq!(saved.body, body, "the statement's own answer");
    assert_eq!(charged.balance.to_string(), "1500");

    // The client retries with the key: the same answer, no second credit.
    let ran_again = async { panic!("ran again") };
    let retry: Answered<()> = once(&pg, scope(), ran_again, |_: &Failed| None)
        .await
        .unwrap();
    assert!(
        matches!(retry, Answered::Replayed(ref s) if s.body == body),
        "{retry:?}"
    );
    assert_eq!(app.balance("tove").await, "1500");
    let charges: i64 = sqlx::query_scalar("select count(*) from ledger where user_id = 'tove'")
        .fetch_one(pg.pool())
        .await
        .unwrap();
    assert_eq!(charges, 2, "the first charge and this one, once");
}

/// A claim given back before the effect's statement reaches it (the
/// statement was still on its way when our timeout fired): the statement
/// then writes nothing, so a retry that claims the key again is the only
/// credit. Unkeyed, the same statement credits as before.
#[tokio::test]
async fn a_charge_whose_claim_was_given_back_writes_nothing() {
    use boxoffice::{
        idempotency::{NextAction, Released, release, try_processing},
        ids::{IdempotencyKey, UserId},
        money::Money,
        store::StoreError,
        wallet,
    };
    let app = spawn_with(Settings::new().without_background()).await;
    app.charge("ulla", "1000", None).await;
    let pg = &app.state.pg;
    let (user, key) = (
        UserId::parse("ulla").unwrap(),
        IdempotencyKey::parse("topup-8").unwrap(),
    );
    let amount = Money::parse_amount("500", app.state.config.currency, 10_000.into()).unwrap();
    assert!(matches!(
        try_processing(pg, &user, &key, "fp").await.unwrap(),
        NextAction::StartProcessing
    ));
    assert_eq!(release(pg, &user, &key).await.unwrap(), Released::GivenBack);
    assert!(matches!(
        wallet::charge(pg, &user, amount, Some(&key)).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert_eq!(app.balance("ulla").await, "1000", "nothing was credited");
    assert_eq!(release(pg, &user, &key).await.unwrap(), Released::Gone);
    let (charged, _) = wallet::charge(pg, &user, amount, None).await.unwrap();
    assert_eq!(charged.balance.to_string(), "1500");
}

/// A keyed charge whose client gave up while PostgreSQL was slow to take
/// its claim (the connection closed, as a gateway's timeout does) runs to
/// its end anyway: the retry with the same key gets that charge, credited
/// once, not `409 request_in_progress` until the claim goes stale a minute
/// later. PostgreSQL is made slow at exactly that step by another
/// transaction inserting the same claim and holding it uncommitted.
#[tokio::test]
async fn a_charge_whose_client_gave_up_runs_to_its_end() {
    let app = spawn_with(Settings::new().without_background()).await;
    let mut other = PgConnection::connect(&app.settings.env["DATABASE_URL"])
        .await
        .unwrap();
    other.execute("begin").await.unwrap();
    other
        .execute(
            "insert into idempotency (user_id, key, fingerprint) values ('vera', 'topup-gone', 'x')",
        )
        .await
        .unwrap();
    give_up_after(Duration::from_millis(300), |c| {
        c.post(format!("{}/v1/users/vera/wallet/charges", app.base))
            .header("x-api-key", SERVICE_KEY)
            .header("idempotency-key", "topup-gone")
            .json(&json!({"amount": "700"}))
    })
    .await;
    other.execute("rollback").await.unwrap();

    let retry = retry_while_in_progress(|| app.charge("vera", "700", Some("topup-gone"))).await;
    assert_eq!(
        retry.replayed(),
        Some("true"),
        "the charge the first request made: {}",
        retry.text
    );
    assert_eq!(app.balance("vera").await, "700", "credited once");
    assert_eq!(app.ledger("vera").await.1, 1);
}

/// A claim is given back only by its own request: once a stale claim was
/// taken over, giving back the first request's claim (as its background
/// retry would, late) leaves the new one open, and the new request's own
/// release gives it back.
#[tokio::test]
async fn giving_back_a_claim_that_was_taken_over_leaves_the_new_claim_open() {
    use boxoffice::{
        idempotency::{Claimed, Released, claim, give_back},
        ids::{IdempotencyKey, UserId},
    };
    let app = spawn_with(Settings::new().without_background()).await;
    let pg = &app.state.pg;
    let (user, key) = (
        UserId::parse("tess").unwrap(),
        IdempotencyKey::parse("topup-9").unwrap(),
    );
    let Claimed::Fresh(first) = claim(pg, &user, &key, "fp").await.unwrap() else {
        panic!("a new key is claimed");
    };
    let open = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from idempotency where user_id = 'tess' and status is null",
        )
        .fetch_one(pg.pool())
        .await
        .unwrap()
    };
    // The first request crashed, as far as anyone can tell: its claim
    // goes stale and the next request with the key takes it over.
    sqlx::query(
        "update idempotency set created_at = created_at - interval '61 seconds' where user_id = 'tess'",
    )
    .execute(pg.pool())
    .await
    .unwrap();
    let Claimed::Fresh(second) = claim(pg, &user, &key, "fp").await.unwrap() else {
        panic!("a stale claim is taken over");
    };
    assert_ne!(first, second);
    assert_eq!(
        give_back(pg, &user, &key, Some(first)).await.unwrap(),
        Released::Gone
    );
    assert_eq!(open().await, 1, "the second request's claim is still open");
    assert_eq!(
        give_back(pg, &user, &key, Some(second)).await.unwrap(),
        Released::GivenBack
    );
    assert_eq!(open().await, 0);
}

/// A keyed payment whose statement is still running on the server when
/// our call times out (it waits for the wallet's row lock): "not paid"
/// would put the hold back to *held* and give the key back, and the debit
/// would commit after. Settling gives the claim back first, which waits for
/// that statement: the answer is "paid", with its own body.
#[tokio::test]
async fn a_keyed_payment_still_running_after_our_timeout_is_settled_as_paid() {
    use boxoffice::{
        idempotency::{NextAction, try_processing},
        ids::{HoldId, IdempotencyKey, UserId},
        payments::{Recorded, record, settle},
        store::{Dependency, StoreError},
    };
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    app.charge("vera", "5000", None).await;
    let pg = app.state.pg.clone();
    let (user, key, hold) = (
        UserId::parse("vera").unwrap(),
        IdempotencyKey::parse("pay-1").unwrap(),
        HoldId::parse("e1.d1.1").unwrap(),
    );
    assert!(matches!(
        try_processing(&pg, &user, &key, "fp").await.unwrap(),
        NextAction::StartProcessing
    ));
    let mut lock = app.lock_wallet("vera").await;
    let running = {
        let (pg, user, key, hold) = (pg.clone(), user.clone(), key.clone(), hold.clone());
        tokio::spawn(async move { record(&pg, &user, &hold, &[1], Some(&key)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unlock = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lock.execute("commit").await.unwrap();
    });
    let lost = StoreError::Unavailable {
        dep: Dependency::Postgres,
        reason: "timed out".into(),
    };
    let settled = settle(&pg, &user, &hold, Some(&key), lost).await.unwrap();
    unlock.await.unwrap();
    let Ok(Recorded::Paid { body, .. }) = running.await.unwrap() else {
        panic!("the statement paid");
    };
    match settled {
        Recorded::Paid { body: again, .. } => assert_eq!(again, body),
        other => panic!("settled as {other:?} while the payment committed"),
    }
    assert_eq!(app.balance("vera").await, "4000");
}

/// PostgreSQL gives up on a row lock (`lock_timeout`, 2 s): a busy wallet,
/// not a failing database. Each charge answers 503 with `Retry-After` (not
/// a 500) and writes nothing, and the breaker stays closed: eight such
/// answers at once (five open it) leave the next request, another user's,
/// served at once instead of refused with `circuit_open`.
#[tokio::test]
async fn a_lock_timeout_is_a_retryable_503_that_leaves_the_breaker_closed() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.charge("wenke", "1000", None).await;
    let mut lock = app.lock_wallet("wenke").await;
    let errors = |kind: &str| {
        format!(r#"boxoffice_dependency_errors_total{{dependency="postgres",kind="{kind}"}}"#)
    };
    let busy = metric(&app, &errors("busy")).await;
    let open = metric(&app, &errors("circuit_open")).await;
    let answers = join_all((0..8).map(|_| app.charge("wenke", "500", None))).await;
    for r in &answers {
        r.assert_problem(503, "dependency_unavailable");
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    }
    // Most give up on the lock (`busy`); a waiter queued behind the others
    // may reach the statement timeout first, an `error`. Five consecutive
    // failures would open the breaker.
    assert!(metric(&app, &errors("busy")).await >= busy + 5.0);
    let r = app.charge("xenia", "500", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(metric(&app, &errors("circuit_open")).await, open);
    lock.execute("rollback").await.unwrap();
    assert_eq!(app.balance("wenke").await, "1000", "nothing was written");
    let r = app.charge("wenke", "500", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.balance("wenke").await, "1500");
}

/// A payment keeps its PostgreSQL connection out of the pool for the next
/// one (`Pg::payment_conn`: sqlx would ping it on its way back), but never
/// the pool's last: with a pool of one connection, a charge right after a
/// payment gets the connection at once instead of waiting out the pool's
/// acquire timeout (2 s) and answering 503.
#[tokio::test]
async fn a_payment_never_keeps_the_last_connection_of_the_pool() {
    let app = spawn_with(
        Settings::new()
            .set("BOXOFFICE_PG_MAX_CONNECTIONS", "1")
            .without_background(),
    )
    .await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    for (i, user) in ["kim", "lea", "max"].into_iter().enumerate() {
        app.buy("e1", user, "5000", json!([i + 1])).await;
        let started = std::time::Instant::now();
        let r = app.charge(user, "10", None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the charge waited {:?} for a connection",
            started.elapsed()
        );
    }
}

/// The payment's kept connections: the next payment gets the one given
/// back last (same backend), a connection given back unanswered goes back
/// to the pool instead, and at most a quarter of the pool is kept.
#[tokio::test]
async fn payments_reuse_their_kept_connection_and_keep_at_most_a_quarter_of_the_pool() {
    let app = spawn_with(Settings::new().without_background()).await;
    let pg = &app.state.pg;
    async fn backend(conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>) -> i32 {
        sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
    }
    let mut first = pg.payment_conn().await.unwrap();
    let answered = Ok::<(), sqlx::Error>(());
    let pid = backend(&mut first).await;
    pg.give_back_payment_conn(first, &answered).await;
    let mut again = pg.payment_conn().await.unwrap();
    assert_eq!(
        backend(&mut again).await,
        pid,
        "the kept connection is reused"
    );
    let failed = Err::<(), _>(sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()));
    pg.give_back_payment_conn(again, &failed).await;
    // Given back unanswered: not kept, so the pool's count of connections
    // out drops back to none.
    let out = || pg.pool().size() as usize - pg.pool().num_idle();
    assert!(eventually(Duration::from_secs(2), || async { out() == 0 }).await);

    // Eight payments at once on the default pool of 24: six are kept.
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(pg.payment_conn().await.unwrap());
    }
    for conn in conns {
        pg.give_back_payment_conn(conn, &answered).await;
    }
    assert!(eventually(Duration::from_secs(2), || async { out() == 6 }).await);
}

/// Ends every backend of the test's database but `admin`'s own, as a
/// PostgreSQL restart or failover would; how many it ended.
async fn end_every_other_backend(admin: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
         where datname = current_database() and pid <> pg_backend_pid()) t",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

/// A real fault under the connections payments keep (`Pg::payment_conn`):
/// PostgreSQL ends every backend of the service (as a restart or a
/// failover does) right after a payment. Payments then go on at once,
/// each on a kept connection or a pooled one that was busy a moment ago,
/// neither checked before use. At most one request may meet a dead
/// connection, and it answers 503 with `Retry-After` having moved nothing;
/// every buyer's retry pays, and each wallet and the seats sold are exact.
#[tokio::test]
async fn payments_right_after_postgresql_ends_every_backend_lose_nothing() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    app.buy("e1", "warm", "5000", json!([1])).await;
    let buyers = app.ready_to_pay("e1", "after", 6, 2).await;
    // Each buyer just paid or charged: the kept connection and the pool's
    // were all busy within the second.
    let mut admin = PgConnection::connect(&app.settings.env["DATABASE_URL"])
        .await
        .unwrap();
    let ended = end_every_other_backend(&mut admin).await;
    assert!(ended >= 1, "no backend of the service was ended");

    let mut refused = 0;
    for (token, hold) in &buyers {
        loop {
            let r = app.pay(token, hold, None).await;
            if r.status == StatusCode::CREATED {
                break;
            }
            r.assert_problem(503, "dependency_unavailable");
            assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
            refused += 1;
            assert!(refused <= 10, "still refused after the backends came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(refused <= 1, "{refused} payments met a dead connection");
    for i in 0..6 {
        let user = format!("after{i}");
        let (sum, rows) = app.ledger(&user).await;
        assert_eq!(app.balance(&user).await, "4000", "{user}");
        assert_eq!(
            (sum, rows),
            (rust_decimal::Decimal::from(4000), 2),
            "{user}"
        );
    }
    let sold: i64 = sqlx::query_scalar("select count(*) from sold_seats where event_id = 'e1'")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(sold, 7);
}

/// The same fault, first noticed by the check a connection idle for a
/// second gets before use: that connection is found dead, and so are the
/// others suspect, the one the last payment kept included. The payment
/// right after does not meet it: it pays at once, on a connection that
/// was checked. (Before, only a failed call marked the others suspect:
/// the payment took the kept connection unchecked and answered 503.)
#[tokio::test]
async fn a_connection_found_dead_before_use_keeps_the_next_payment_off_the_others() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let buyers = app.ready_to_pay("e1", "checked", 2, 1).await;
    let pool = app.state.pg.pool();
    // Several pooled connections, then all of them idle past the second
    // after which a connection is checked before use.
    join_all((0..4).map(|_| sqlx::query("select pg_sleep(0.05)").execute(pool))).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The first payment checks an idle connection, pays, and keeps it.
    let r = app.pay(&buyers[0].0, &buyers[0].1, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let mut admin = PgConnection::connect(&app.settings.env["DATABASE_URL"])
        .await
        .unwrap();
    let ended = end_every_other_backend(&mut admin).await;
    assert!(ended >= 2, "the service's backends were ended: {ended}");
    // Any statement now takes an idle connection, whose check fails; the
    // pool then opens a new one.
    let mut read = false;
    for _ in 0..5 {
        if sqlx::query("select 1").execute(pool).await.is_ok() {
            read = true;
            break;
        }
    }
    assert!(read, "the pool opened a new connection");
    // Within the second the kept connection would be used unchecked.
    let r = app.pay(&buyers[1].0, &buyers[1].1, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.balance("checked1").await, "4000");
    let (sum, rows) = app.ledger("checked1").await;
    assert_eq!((sum, rows), (rust_decimal::Decimal::from(4000), 2));
}

/// The same fault under concurrency: 60 buyers pay at once, each with its
/// own `Idempotency-Key`, while PostgreSQL ends every backend of the
/// service three times. A payment pays (201), or answers 503 with
/// `Retry-After` and is retried with its key, or meets its own earlier
/// attempt still open (`409 request_in_progress`: that attempt's statement
/// died with its connection, its outcome unknown to the buyer). Whatever
/// each buyer saw, every wallet is charged at most once, and exactly once
/// where a 201 said so; a seat is sold for each payment and for nothing
/// else; the ledger matches every balance; the audit is clean.
#[tokio::test]
async fn payments_racing_postgresql_ending_every_backend_charge_each_buyer_at_most_once() {
    const BUYERS: usize = 60;
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 100, 300, 4).await;
    let buyers: Vec<(String, String, String)> = app
        .ready_to_pay("e1", "race", BUYERS, 1)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, (token, hold))| (format!("race{i}"), token, hold))
        .collect();
    let url = app.settings.env["DATABASE_URL"].clone();
    let killer = tokio::spawn(async move {
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let mut ended = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            ended += end_every_other_backend(&mut admin).await;
        }
        ended
    });
    let paid: Vec<bool> = join_all(buyers.iter().map(|(user, token, hold)| {
        let app = &app;
        async move {
            let key = format!("pay-{user}");
            for _ in 0..50 {
                let r = app.pay(token, hold, Some(&key)).await;
                match r.status {
                    StatusCode::CREATED => return true,
                    StatusCode::CONFLICT => {
                        r.assert_problem(409, "request_in_progress");
                        return false;
                    }
                    _ => {
                        r.assert_problem(503, "dependency_unavailable");
                        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            panic!("{user}: still refused after the backends came back");
        }
    }))
    .await;
    assert!(
        killer.await.unwrap() >= 1,
        "no backend of the service was ended"
    );
    let confirmed = paid.iter().filter(|p| **p).count();
    eprintln!("{confirmed} of {BUYERS} payments answered 201");

    // Connections idle for a second are checked before use: the reads
    // below meet none that the last termination left dead.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut charged = 0;
    for ((user, _, _), paid) in buyers.iter().zip(&paid) {
        let balance = app.balance(user).await;
        let (sum, rows) = app.ledger(user).await;
        assert_eq!(
            sum,
            balance.parse::<rust_decimal::Decimal>().unwrap(),
            "{user}: the ledger is the balance"
        );
        match balance.as_str() {
            "4000" => {
                assert_eq!(rows, 2, "{user}");
                charged += 1;
            }
            "5000" => assert!(!paid, "{user}: a 201 moved no money"),
            other => panic!("{user}: balance {other}"),
        }
    }
    let mut admin = PgConnection::connect(&app.settings.env["DATABASE_URL"])
        .await
        .unwrap();
    let (sold, payments): (i64, i64) = sqlx::query_as(
        "select (select count(*) from sold_seats where event_id = 'e1'),
                (select count(*) from payments where event_id = 'e1')",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!((sold, payments), (charged, charged));
    assert!(charged >= confirmed as i64);
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

/// The claim gate under a storm of requests, through HTTP. 50 keyed
/// top-ups of one wallet, each key sent 4 times, 200 requests spread over
/// 4 s, through a pool of 4 connections while a transaction locks the
/// wallet three times for 1.7 s: requests time out waiting for a
/// connection or behind statements blocked on the lock, the breaker
/// opens, and releases of claims fail. Those claims are given back in the
/// background once PostgreSQL answers again: within seconds of the storm
/// no claim is open, and no retry meets `request_in_progress` (before,
/// such a claim stayed open until taken over after 60 s). However each
/// request ends, every key credits exactly once once it is retried, and
/// every 201 of a key (first answer or replay) is byte for byte the same.
#[tokio::test]
async fn a_storm_of_keyed_charges_through_a_starved_pool_credits_each_key_once() {
    const KEYS: usize = 50;
    let app = spawn_with(
        Settings::new()
            .set("BOXOFFICE_PG_MAX_CONNECTIONS", "4")
            .without_background(),
    )
    .await;
    app.charge("vera", "1000", None).await;
    let app = &app;
    let failed = r#"boxoffice_idempotency_releases_total{found="failed"}"#;
    let given_back_later = r#"boxoffice_idempotency_late_releases_total{found="given_back"}"#;
    let (failed_before, later_before) = (
        metric(app, failed).await,
        metric(app, given_back_later).await,
    );
    let locker = async {
        for _ in 0..3 {
            let mut lock = app.lock_wallet("vera").await;
            tokio::time::sleep(Duration::from_millis(1_700)).await;
            lock.execute("commit").await.unwrap();
        }
    };
    let key = |i: usize| format!("storm-{}", i % KEYS);
    let storm = join_all((0..4 * KEYS).map(|i| async move {
        tokio::time::sleep(Duration::from_millis((i * 37 % 4_000) as u64)).await;
        (key(i), app.charge("vera", "10", Some(&key(i))).await)
    }));
    let ((), storm) = tokio::join!(locker, storm);

    let mut answers: std::collections::HashMap<String, Vec<Resp>> = Default::default();
    let (mut created, mut unavailable) = (0, 0);
    for (k, r) in storm {
        match r.status.as_u16() {
            201 => created += 1,
            409 => r.assert_problem(409, "request_in_progress"),
            503 => {
                unavailable += 1;
                assert!(
                    matches!(r.code(), "dependency_unavailable" | "circuit_open"),
                    "{}",
                    r.text
                );
                assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
            }
            _ => panic!("{}: {}", r.status, r.text),
        }
        answers.entry(k).or_default().push(r);
    }
    assert!(
        created > 0 && unavailable > 0,
        "the storm both credited and failed: {created} created, {unavailable} unavailable"
    );

    assert!(
        metric(app, failed).await > failed_before,
        "some releases failed in the storm"
    );
    // The claims they left open are given back in the background: none is
    // left within seconds (the storm's statements end within their 2.5 s
    // timeout), long before the 60 s after which a claim is taken over.
    let open_claims = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from idempotency where user_id = 'vera' and status is null",
        )
        .fetch_one(app.state.pg.pool())
        .await
        .unwrap()
    };
    let released = eventually(Duration::from_secs(10), || async {
        open_claims().await == 0
    })
    .await;
    assert!(released, "{} claims still open", open_claims().await);
    assert!(
        metric(app, given_back_later).await > later_before,
        "claims were given back in the background"
    );
    for i in 0..KEYS {
        let mut tries = 0;
        loop {
            let r = app.charge("vera", "10", Some(&key(i))).await;
            assert_ne!(
                r.status,
                StatusCode::CONFLICT,
                "{}: no claim is open: {}",
                key(i),
                r.text
            );
            let done = r.status == StatusCode::CREATED;
            answers.get_mut(&key(i)).unwrap().push(r);
            if done {
                break;
            }
            tries += 1;
            assert!(tries < 50, "{} never settled", key(i));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (k, rs) in &answers {
        let bodies: std::collections::HashSet<&str> = rs
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .map(|r| r.text.as_str())
            .collect();
        assert_eq!(bodies.len(), 1, "{k}: one answer, replayed: {bodies:?}");
    }
    assert_one_credit_per_key(app, "vera", 1000, 10, KEYS).await;
}

/// `user`'s wallet holds `start` plus `amount` for each of `keys` keyed
/// charges, one ledger row each, and no claim of theirs is left open.
async fn assert_one_credit_per_key(
    app: &TestApp,
    user: &str,
    start: i64,
    amount: i64,
    keys: usize,
) {
    let expected = rust_decimal::Decimal::from(start + amount * keys as i64);
    assert_eq!(app.balance(user).await, expected.to_string());
    let (sum, rows) = app.ledger(user).await;
    assert_eq!((sum, rows), (expected, 1 + keys as i64), "one credit a key");
    let open: i64 = sqlx::query_scalar(
        "select count(*) from idempotency where user_id = $1 and status is null",
    )
    .bind(user)
    .fetch_one(app.state.pg.pool())
    .await
    .unwrap();
    assert_eq!(open, 0, "no claim left open");
}

/// The race the claim gate exists for, 200 times: a request gives its
/// claim back while its own statement is on the server. 50 keys, 4
/// requests each, run as a keyed charge runs (`idempotency::once`); each
/// request's statement runs on a task of its own, as it would on the
/// server whatever became of the request, and the request fails after up
/// to 400 ms, as a timeout would, or at once, before its statement is
/// sent, while a transaction locks the wallet on and off. So releases
/// meet statements not yet at the claim (which then write nothing),
/// waiting on the wallet (the release waits for them and finds their
/// answer) and done. Then every key is retried until it answers: one
/// credit and one answer a key.
#[tokio::test]
async fn keyed_charges_timing_out_while_their_statements_run_credit_each_key_once() {
    use boxoffice::{
        idempotency::{Answered, KeyRefused, Scope, once},
        ids::{IdempotencyKey, UserId},
        money::Money,
        wallet,
    };
    const KEYS: usize = 50;
    #[derive(Debug)]
    enum Failed {
        TimedOut,
        Refused(KeyRefused),
    }
    impl From<KeyRefused> for Failed {
        fn from(e: KeyRefused) -> Self {
            Self::Refused(e)
        }
    }
    let app = spawn_with(Settings::new().without_background()).await;
    app.charge("wim", "1000", None).await;
    let pg = &app.state.pg;
    let user = UserId::parse("wim").unwrap();
    let keys: Vec<IdempotencyKey> = (0..KEYS)
        .map(|k| IdempotencyKey::parse(&format!("race-{k}")).unwrap())
        .collect();
    let amount = Money::parse_amount("10", app.state.config.currency, 10_000.into()).unwrap();
    let scope = |k: usize| Some(Scope::new(&user, &keys[k], &["charge", "wim", "10"]));
    let behind = std::sync::Mutex::new(Vec::new());

    let locker = async {
        for _ in 0..8 {
            let mut lock = app.lock_wallet("wim").await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            lock.execute("commit").await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    };
    let request = |i: usize| {
        let (user, key, behind) = (user.clone(), keys[i % KEYS].clone(), &behind);
        let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ran_out = timed_out.clone();
        let work = async move {
            let pg = pg.clone();
            // Every fifth fails at once, before its statement reaches
            // the server (as a call still waiting for a connection does).
            let (late, timeout) = match i % 5 {
                0 => (20, 0),
                _ => (0, (i * 53 % 400) as u64),
            };
            let mut statement = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(late)).await;
                wallet::charge(&pg, &user, amount, Some(&key)).await
            });
            let timeout = Duration::from_millis(timeout);
            tokio::select! {
                done = &mut statement => match done.unwrap() {
                    Ok((_, body)) => Ok(body),
                    Err(_) => Err(Failed::TimedOut),
                },
                () = tokio::time::sleep(timeout) => {
                    ran_out.store(true, std::sync::atomic::Ordering::Relaxed);
                    behind.lock().unwrap().push(statement);
                    Err(Failed::TimedOut)
                }
            }
        };
        async move {
            tokio::time::sleep(Duration::from_millis((i * 13 % 2_000) as u64)).await;
            let answered = once(pg, scope(i % KEYS), work, |_| None).await;
            (
                i % KEYS,
                timed_out.load(std::sync::atomic::Ordering::Relaxed),
                answered,
            )
        }
    };
    let ((), storm) = tokio::join!(locker, join_all((0..4 * KEYS).map(request)));
    let mut bodies: Vec<std::collections::HashSet<String>> = vec![Default::default(); KEYS];
    let (mut settled, mut given_back) = (0, 0);
    for (k, timed_out, answered) in storm {
        match answered {
            Ok(Answered::Fresh(body)) => drop(bodies[k].insert(body)),
            Ok(Answered::Replayed(saved)) => {
                assert_eq!(saved.status, 201);
                // After its own work timed out, a request is answered
                // with a replay only when its statement committed after
                // all, while the release waited for it.
                settled += usize::from(timed_out);
                bodies[k].insert(saved.body);
            }
            Err(Failed::TimedOut) if timed_out => given_back += 1,
            Err(Failed::TimedOut | Failed::Refused(KeyRefused::InFlight)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    // The statements left running end once the wallet is free.
    for statement in behind.into_inner().unwrap() {
        let _ = statement.await.unwrap();
    }
    assert!(
        settled > 0,
        "some statements committed after their request failed"
    );
    assert!(
        given_back > 0,
        "some claims were given back before their statement"
    );

    // Each key retried until it answers, as a client would.
    for (k, seen) in bodies.iter_mut().enumerate() {
        let retry = async {
            wallet::charge(pg, &user, amount, Some(&keys[k]))
                .await
                .map(|(_, body)| body)
                .map_err(|_| Failed::TimedOut)
        };
        match once(pg, scope(k), retry, |_| None).await {
            Ok(Answered::Fresh(body)) => drop(seen.insert(body)),
            Ok(Answered::Replayed(saved)) => drop(seen.insert(saved.body)),
            Err(e) => panic!("race-{k}: {e:?}"),
        }
        assert_eq!(seen.len(), 1, "race-{k}: one answer: {seen:?}");
    }
    assert_one_credit_per_key(&app, "wim", 1000, 10, KEYS).await;
}
