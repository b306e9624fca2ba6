//! Races the other suites do not run: admission at join time against
//! `max_active` and `admit_per_second` (invariant 6), and one hold paid
//! many times at once (invariants 2, 3, 5).

use std::{collections::HashMap, time::Duration};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

const TTL_MS: i64 = 600_000;

/// Admission time (ms) of an admitted entry: its window's end minus the
/// window (`active_ttl_seconds`), both set by the admitting script.
fn admitted_at(r: &Resp) -> Option<i64> {
    (r.body["status"] == "admitted").then(|| {
        chrono::DateTime::parse_from_rfc3339(r.body["admitted_until"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
            - TTL_MS
    })
}

#[tokio::test]
async fn two_hundred_joins_into_an_empty_queue_admit_within_the_rate_and_max_active() {
    // Loops on: the admission tick races the joins, as in production.
    let app = spawn_app().await;
    app.simple_event(
        "e1",
        json!({"admit_per_second": 3, "max_active": 5, "active_ttl_seconds": 600, "idle_timeout_seconds": 600}),
        20,
        300,
        4,
    )
    .await;
    let users: Vec<String> = (0..200).map(|i| format!("u{i}")).collect();
    let joins = join_all(users.iter().map(|u| app.join("e1", u))).await;
    let mut admitted: HashMap<String, i64> = HashMap::new();
    let mut tokens = Vec::new();
    for (i, r) in joins.iter().enumerate() {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        tokens.push(r.body["token"].as_str().unwrap().to_owned());
        if let Some(at) = admitted_at(r) {
            admitted.insert(format!("u{i}"), at);
        }
    }
    let at_join = admitted.len();
    assert!(at_join >= 1, "an empty queue admits at join time");
    assert!(at_join <= 3, "{at_join} admitted at join time, rate 3/s");

    // Watch everyone for at least 2.5 s, until the tick has admitted the
    // rest up to max_active (8 s at most on a slow machine).
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(2_500)
        || (admitted.len() < 5 && start.elapsed() < Duration::from_secs(8))
    {
        let polls = join_all(tokens.iter().map(|t| app.status(t))).await;
        for (i, r) in polls.iter().enumerate() {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            if let Some(at) = admitted_at(r) {
                let prev = admitted.insert(format!("u{i}"), at);
                assert!(prev.is_none_or(|p| p == at), "one admission per entry");
            }
        }
        let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
        let now = r.body["live"]["admitted_now"].as_u64().unwrap();
        assert!(now <= 5, "{now} admitted at once, max_active 5");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nobody left, so every admission ever made is live: at most 5, and
    // the queue did fill up (the test is not vacuous).
    assert_eq!(admitted.len(), 5, "{admitted:?}");
    let mut times: Vec<i64> = admitted.values().copied().collect();
    times.sort_unstable();
    // At most 3 in the first second, and in any second.
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| **u < t + 1_000).count();
        assert!(
            in_window <= 3,
            "{in_window} admissions within 1 s of {t}: {times:?}"
        );
    }
    let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(r.body["live"]["waiting"], 195, "{}", r.text);
    let a = boxoffice::audit::run(&app.state.pg, &app.state.redis)
        .await
        .unwrap();
    assert!(
        a.check("max_active").unwrap().passed(),
        "{:?}",
        a.violations
    );
}

#[tokio::test]
async fn one_hold_paid_twenty_times_at_once_without_a_key_debits_once() {
    let app = spawn_app().await;
    app.simple_event(
        "e1",
        json!({"admit_per_second": 1000, "max_active": 1000, "active_ttl_seconds": 600, "idle_timeout_seconds": 600}),
        20,
        300,
        4,
    )
    .await;
    let token = app.admitted_token("e1", "zoe").await;
    app.charge("zoe", "5000", None).await;
    let hold = app.hold_seats(&token, json!([3, 4])).await;
    let results = join_all((0..20).map(|_| app.pay(&token, &hold, None))).await;
    let paid: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(paid.len(), 1, "exactly one payment");
    for r in results.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert!(
            matches!(
                (r.status.as_u16(), r.code()),
                (409, "request_in_progress")
                    | (409, "hold_already_paid")
                    | (410, "queue_token_expired")
            ),
            "{}",
            r.text
        );
        assert_eq!(r.content_type(), "application/problem+json");
    }
    assert_eq!(app.balance("zoe").await, "3000", "one debit");
    let (sum, rows) = app.ledger("zoe").await;
    assert_eq!(sum, rust_decimal::Decimal::from(3000));
    assert_eq!(rows, 2, "one charge, one payment");
    assert_eq!(app.admin_seat("e1", 3).await, "sold");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}

#[tokio::test]
async fn a_payment_key_used_again_on_another_hold_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    app.simple_event(
        "e1",
        json!({"admit_per_second": 1000, "max_active": 1000, "active_ttl_seconds": 600, "idle_timeout_seconds": 600}),
        20,
        300,
        4,
    )
    .await;
    let token = app.admitted_token("e1", "yan").await;
    app.charge("yan", "5000", None).await;
    let first = app.hold_seats(&token, json!([1])).await;
    let r = app.pay(&token, &first, Some("k-1")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // The payment ended the entry; the buyer comes back for one more seat.
    let token = app.admitted_token("e1", "yan").await;
    let second = app.hold_seats(&token, json!([2])).await;
    let r = app.pay(&token, &second, Some("k-1")).await;
    r.assert_problem(422, "idempotency_key_reused");
    assert_eq!(app.balance("yan").await, "4000", "nothing moved");
    assert_eq!(
        app.admin_seat("e1", 2).await,
        "held",
        "the hold is untouched"
    );
    let r = app.pay(&token, &second, Some("k-2")).await;
    assert_eq!(r.status, StatusCode::CREATED, "still payable: {}", r.text);
    assert_eq!(app.balance("yan").await, "3000");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}
