//! Invariant 7, strictly: a hold lasts exactly `hold_seconds` by the Redis
//! clock, is still held just before its deadline, and is free for exactly
//! one of many racing grabbers right after it; the same for a hold whose
//! *paying* deadline passes (seats free, the owner's count back, no money
//! moved). No background loop runs in these tests.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Redis `TIME`, in ms: the one clock deadlines are decided by (read
/// through the app's own client: one round trip, no process to start).
async fn redis_now_ms(app: &TestApp) -> i64 {
    app.state.redis.now_ms().await.unwrap()
}

fn rfc3339_ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Sleeps until Redis' clock reads `at_ms` (or a little after).
async fn sleep_until_redis(app: &TestApp, at_ms: i64) {
    let left = at_ms - redis_now_ms(app).await;
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// 100 other admitted users grab `seat` at once: exactly one wins, every
/// other is told the seat is unavailable.
async fn exactly_one_grabs(app: &TestApp, grabbers: &[String], seat: u64) {
    let results = join_all(
        grabbers
            .iter()
            .map(|t| app.hold(t, json!({"schedule_id": "d1", "seats": [seat]}))),
    )
    .await;
    let won = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(won, 1, "exactly one grabber wins the freed seat");
    for r in results.iter().filter(|r| r.status != StatusCode::CREATED) {
        r.assert_problem(409, "seats_unavailable");
    }
}

/// At `deadline` − 100 ms (Redis clock) a grab of `seat` is refused and
/// the seat map says held. Returns false when the machine was too slow to
/// tell (the grab's answer came after the deadline): the caller tries again
/// with a fresh hold rather than conclude anything.
async fn held_just_before(app: &TestApp, grabber: &str, seat: u64, deadline: i64) -> bool {
    sleep_until_redis(app, deadline - 100).await;
    let r = app
        .hold(grabber, json!({"schedule_id": "d1", "seats": [seat]}))
        .await;
    let after = redis_now_ms(app).await;
    if after >= deadline {
        eprintln!(
            "inconclusive: the grab was answered {} ms past the deadline",
            after - deadline
        );
        return false;
    }
    r.assert_problem(409, "seats_unavailable");
    assert_eq!(app.admin_seat("e1", seat as usize).await, "held");
    true
}

#[tokio::test]
async fn a_hold_lasts_hold_seconds_by_the_redis_clock_then_exactly_one_grabber_wins() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 2, 4).await;
    let owner = app.admitted_token("e1", "owner").await;
    let grabbers = app.admitted_users("e1", 100).await;

    // Up to three holds (seats 5, 6, 7): the first whose check is
    // conclusive is the one the grabbers race for.
    let mut held = None;
    for seat in 5..8u64 {
        let before = redis_now_ms(&app).await;
        let r = app
            .hold(&owner, json!({"schedule_id": "d1", "seats": [seat]}))
            .await;
        let after = redis_now_ms(&app).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let deadline = rfc3339_ms(&r.body["expires_at"]);
        // expires_at - Redis now = hold_seconds (2 s), to the request's time.
        assert!(
            deadline - after <= 2_000 && deadline - before >= 2_000 - 1,
            "expires_at is {} ms after the hold (hold_seconds 2)",
            deadline - before
        );
        let hold_id = r.body["hold_id"].as_str().unwrap().to_owned();
        let r = app
            .get_with_token(&format!("/v1/holds/{hold_id}"), &owner)
            .await;
        assert_eq!(rfc3339_ms(&r.body["expires_at"]), deadline);
        // 100 ms before the deadline: still held.
        if held_just_before(&app, &grabbers[0], seat, deadline).await {
            held = Some((seat, deadline, hold_id));
            break;
        }
    }
    let (seat, deadline, hold_id) = held.expect("a conclusive check in three tries");

    // From the deadline on: free, for exactly one of 100 racing grabbers.
    sleep_until_redis(&app, deadline + 1).await;
    exactly_one_grabs(&app, &grabbers, seat).await;
    app.get_with_token(&format!("/v1/holds/{hold_id}"), &owner)
        .await
        .assert_problem(410, "hold_expired");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

#[tokio::test]
async fn a_paying_hold_past_its_paying_deadline_frees_its_seats_and_moves_no_money() {
    let app = spawn_with(
        Settings::new()
            .without_background()
            .set("BOXOFFICE_PAYING_TIMEOUT_SECONDS", "1"),
    )
    .await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let owner = app.admitted_token("e1", "owner").await;
    app.charge("owner", "5000", None).await;
    let grabbers = app.admitted_users("e1", 100).await;
    let paying_ms = app.state.config.paying_timeout.as_millis() as u64;
    let buyer = app.state.tokens.verify(&owner).unwrap();

    // A payment begins (the hold turns *paying*) and never finishes: the
    // process that began it died before its PostgreSQL step. Up to three
    // tries (seats 5-6, then 7-8, 9-10) for a conclusive check just before
    // the paying deadline; an earlier try's hold is gone by then.
    let mut found = None;
    for first in [5u64, 7, 9] {
        let hold = app.hold_seats(&owner, json!([first, first + 1])).await;
        let id = boxoffice::ids::HoldId::parse(&hold).unwrap();
        let before = redis_now_ms(&app).await;
        boxoffice::holds::begin_payment(&app.state.redis, &id, &buyer, paying_ms, "test")
            .await
            .unwrap();
        let after = redis_now_ms(&app).await;
        let k = app.state.redis.keys().event(&id.event);
        let deadline: i64 =
            redis_cli(&["ZSCORE", &k.hold_deadlines(&id.schedule), &id.n.to_string()])
                .await
                .trim()
                .parse()
                .unwrap();
        assert!(
            deadline - after <= paying_ms as i64 && deadline - before >= paying_ms as i64 - 1,
            "paying deadline {} ms after the call (timeout {paying_ms} ms)",
            deadline - before
        );
        let uheld = k.user_held(&id.schedule);
        assert_eq!(redis_cli(&["HGET", &uheld, "owner"]).await.trim(), "2");
        if held_just_before(&app, &grabbers[0], first, deadline).await {
            found = Some((first, deadline, hold, uheld));
            break;
        }
        sleep_until_redis(&app, deadline + 1).await;
    }
    let (first, deadline, hold, uheld) = found.expect("a conclusive check in three tries");

    sleep_until_redis(&app, deadline + 1).await;
    exactly_one_grabs(&app, &grabbers, first + 1).await;
    // The owner's count is back (the field is gone at 0), the hold is
    // gone, and no money moved.
    assert_eq!(redis_cli(&["HEXISTS", &uheld, "owner"]).await.trim(), "0");
    assert_eq!(app.admin_seat("e1", first as usize).await, "available");
    app.pay(&owner, &hold, None)
        .await
        .assert_problem(410, "hold_expired");
    assert_eq!(app.balance("owner").await, "5000");
    assert_eq!(app.ledger("owner").await.1, 1, "only the charge");
    let payments: i64 = sqlx::query_scalar("select count(*) from payments")
        .fetch_one(app.state.pg.pool())
        .await
        .unwrap();
    assert_eq!(payments, 0);
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}
