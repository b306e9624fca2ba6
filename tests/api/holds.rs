//! Seat holds: invariants 1, 7, 8 under concurrency.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::Duration,
};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

impl TestApp {
    pub async fn seat_statuses(&self, token: &str, event: &str) -> Vec<(u64, String)> {
        self.seat_statuses_of(token, event, "d1").await
    }

    pub async fn seat_statuses_of(
        &self,
        token: &str,
        event: &str,
        schedule: &str,
    ) -> Vec<(u64, String)> {
        let r = self
            .get_with_token(
                &format!("/v1/events/{event}/schedules/{schedule}/seats"),
                token,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["seats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["seat_no"].as_u64().unwrap(),
                    s["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// `n` users admitted at once (open queue), their tokens.
    pub async fn admitted_users(&self, event: &str, n: usize) -> Vec<String> {
        let joins =
            (0..n).map(|i| async move { self.admitted_token(event, &format!("buyer-{i}")).await });
        join_all(joins).await
    }
}

/// The seat map of `d1` shows held exactly the seats of the granted holds.
async fn assert_map_holds_exactly(app: &TestApp, token: &str, granted: &BTreeSet<u64>) {
    assert_schedule_holds_exactly(app, token, "d1", granted).await;
}

/// The seat map of `schedule` shows held exactly the seats of the granted
/// holds.
async fn assert_schedule_holds_exactly(
    app: &TestApp,
    token: &str,
    schedule: &str,
    granted: &BTreeSet<u64>,
) {
    let held = held_seats_of(app, token, schedule).await;
    assert_eq!(
        &held, granted,
        "the seat map is the union of the granted holds"
    );
}

/// The seats of `schedule` (of `e1`) held now, by the seat map.
pub async fn held_seats_of(app: &TestApp, token: &str, schedule: &str) -> BTreeSet<u64> {
    app.seat_statuses_of(token, "e1", schedule)
        .await
        .into_iter()
        .filter(|(_, s)| s == "held")
        .map(|(n, _)| n)
        .collect()
}

/// Adds a granted hold's seats to `granted`: none may be there already.
fn grant(granted: &mut BTreeSet<u64>, hold: &Resp) {
    for s in seats_of(hold) {
        assert!(granted.insert(s), "seat {s} is in two holds");
    }
}

fn seats_of(r: &Resp) -> Vec<u64> {
    r.body["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn five_hundred_users_race_for_one_seat_and_exactly_one_wins() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 100, 300, 4).await;
    let tokens = app.admitted_users("e1", 500).await;
    let results = join_all(
        tokens
            .iter()
            .map(|t| app.hold(t, json!({"schedule_id": "d1", "seats": [1]}))),
    )
    .await;
    let won: Vec<_> = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(won.len(), 1, "exactly one winner");
    for r in results.iter().filter(|r| r.status != StatusCode::CREATED) {
        r.assert_problem(409, "seats_unavailable");
        assert_eq!(r.body["unavailable_seats"], json!([1]));
    }
    let map = app.seat_statuses(&tokens[0], "e1").await;
    assert_eq!(map[0], (1, "held".to_owned()));
    assert!(map[1..].iter().all(|(_, s)| s == "available"));
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn overlapping_pairs_never_share_a_seat_and_conflicts_are_named() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 200, 300, 4).await;
    let tokens = app.admitted_users("e1", 90).await;
    let results = join_all(
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| app.hold(t, json!({"schedule_id": "d1", "seats": [i + 2, i + 3]}))),
    )
    .await;
    let mut granted: BTreeSet<u64> = BTreeSet::new();
    for r in results.iter().filter(|r| r.status == StatusCode::CREATED) {
        grant(&mut granted, r);
    }
    assert!(!granted.is_empty());
    for (i, r) in results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status != StatusCode::CREATED)
    {
        r.assert_problem(409, "seats_unavailable");
        let named: Vec<u64> = r.body["unavailable_seats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        assert!(!named.is_empty());
        let asked = [i as u64 + 2, i as u64 + 3];
        for s in &named {
            assert!(asked.contains(s), "names only seats it asked for");
            assert!(
                granted.contains(s),
                "a named seat is held by a granted hold"
            );
        }
    }
    assert_map_holds_exactly(&app, &tokens[0], &granted).await;
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn best_available_fills_exactly_the_schedule() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 100, 300, 4).await;
    let tokens = app.admitted_users("e1", 150).await;
    let results = join_all(
        tokens
            .iter()
            .map(|t| app.hold(t, json!({"schedule_id": "d1", "count": 1}))),
    )
    .await;
    let won: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(won.len(), 100);
    let seats: HashSet<u64> = won.iter().flat_map(|r| seats_of(r)).collect();
    assert_eq!(seats.len(), 100, "100 distinct seats");
    for r in results.iter().filter(|r| r.status != StatusCode::CREATED) {
        r.assert_problem(409, "seats_unavailable");
    }
    let r = app
        .get_with_token("/v1/events/e1/schedules", &tokens[0])
        .await;
    assert_eq!(r.body["schedules"][0]["seats_available"], 0, "{}", r.text);
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn best_available_prefers_adjacent_seats_in_one_row() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 30, 300, 10).await;
    let t = app.admitted_users("e1", 3).await;
    // Row A: take seats 1, 2 and 9: the first run of 3 is 3-4-5.
    assert_eq!(
        app.hold(&t[0], json!({"schedule_id": "d1", "seats": [1, 2, 9]}))
            .await
            .status,
        StatusCode::CREATED
    );
    let r = app
        .hold(&t[1], json!({"schedule_id": "d1", "count": 3}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(seats_of(&r), vec![3, 4, 5]);
    assert_eq!(r.body["adjacent"], true);
    assert_eq!(r.body["amount"], "3000", "price 1000 x 3 from the catalog");
    // 8 seats adjacent: row A has 6,7,8,10 left; row B is empty.
    let r = app
        .hold(&t[2], json!({"schedule_id": "d1", "count": 8}))
        .await;
    assert_eq!(seats_of(&r), (11..=18).collect::<Vec<_>>(), "{}", r.text);
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn a_hold_is_free_right_after_its_deadline_without_any_background_task() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 1, 4).await;
    let t = app.admitted_users("e1", 2).await;
    let r = app
        .hold(&t[0], json!({"schedule_id": "d1", "seats": [5, 6]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let hold_id = r.body["hold_id"].as_str().unwrap().to_owned();
    app.hold(&t[1], json!({"schedule_id": "d1", "seats": [6]}))
        .await
        .assert_problem(409, "seats_unavailable");

    let expires =
        chrono::DateTime::parse_from_rfc3339(r.body["expires_at"].as_str().unwrap()).unwrap();
    let wait =
        (expires.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0) as u64 + 50;
    tokio::time::sleep(Duration::from_millis(wait)).await;

    let map = app.seat_statuses(&t[1], "e1").await;
    assert_eq!(map[4].1, "available");
    assert_eq!(map[5].1, "available");
    let r = app
        .hold(&t[1], json!({"schedule_id": "d1", "seats": [6]}))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "a new hold agrees: {}",
        r.text
    );
    app.get_with_token(&format!("/v1/holds/{hold_id}"), &t[0])
        .await
        .assert_problem(410, "hold_expired");
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn per_user_limit_counts_every_live_hold() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 50, 300, 4).await;
    let t = app.admitted_users("e1", 1).await.remove(0);
    let r = app
        .hold(&t, json!({"schedule_id": "d1", "seats": [1, 2, 3, 4, 5]}))
        .await;
    r.assert_problem(409, "hold_limit_exceeded");
    assert_eq!(r.body["max_per_user"], 4);
    assert_eq!(
        app.hold(&t, json!({"schedule_id": "d1", "count": 4}))
            .await
            .status,
        StatusCode::CREATED
    );
    let r = app
        .hold(&t, json!({"schedule_id": "d1", "seats": [20]}))
        .await;
    r.assert_problem(409, "hold_limit_exceeded");
    assert_eq!(r.body["held"], 4);
    assert_eq!(held_seats(&app, &t).await.len(), 4);
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn bad_hold_requests_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 50, 300, 4).await;
    let t = app.admitted_users("e1", 1).await.remove(0);
    for body in [
        json!({"schedule_id": "d1", "seats": []}),
        json!({"schedule_id": "d1", "seats": [3, 3]}),
        json!({"schedule_id": "d1", "seats": [0]}),
        json!({"schedule_id": "d1", "seats": [-1]}),
        json!({"schedule_id": "d1", "seats": [51]}),
        json!({"schedule_id": "d1", "seats": [1.5]}),
        json!({"schedule_id": "d1", "seats": ["2"]}),
        json!({"schedule_id": "d1", "seats": [1], "count": 1}),
        json!({"schedule_id": "d1"}),
        json!({"schedule_id": "d1", "count": 0}),
        json!({"schedule_id": "d1", "count": -2}),
        json!({"schedule_id": "d1", "count": 1.5}),
        json!({"schedule_id": "d1", "count": 101}),
        json!({"schedule_id": "d1", "count": 51}),
        json!({"schedule_id": "d1", "seats": [1], "extra": true}),
        json!({"seats": [1]}),
    ] {
        let r = app.hold(&t, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.code(), "invalid_request");
    }
    app.hold(&t, json!({"schedule_id": "nope", "seats": [1]}))
        .await
        .assert_problem(404, "not_found");
    let map = app.seat_statuses(&t, "e1").await;
    assert!(map.iter().all(|(_, s)| s == "available"), "nothing written");
    app.get_with_token("/v1/events/e1/schedules/nope/seats", &t)
        .await
        .assert_problem(404, "not_found");
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn release_is_owner_only() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 50, 300, 4).await;
    let t = app.admitted_users("e1", 2).await;
    let r = app
        .hold(&t[0], json!({"schedule_id": "d1", "seats": [7]}))
        .await;
    let id = r.body["hold_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/holds/{id}");
    app.release_hold(&t[1], &id)
        .await
        .assert_problem(403, "forbidden");
    app.get_with_token(&path, &t[1])
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(
        app.seat_statuses(&t[0], "e1").await[6].1,
        "held",
        "another user's release changes nothing"
    );
    let r = app.get_with_token(&path, &t[0]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["seats"], json!([7]));
    assert_eq!(
        app.release_hold(&t[0], &id).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.seat_statuses(&t[0], "e1").await[6].1,
        "available",
        "free at once"
    );
    app.release_hold(&t[0], &id)
        .await
        .assert_problem(410, "hold_expired");
    app.get_with_token("/v1/holds/not-a-hold", &t[0])
        .await
        .assert_problem(404, "not_found");
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn waiting_and_foreign_tokens_cannot_hold() {
    let app = spawn_app().await;
    app.simple_event("e1", json!({"admit_per_second": 1, "max_active": 1, "active_ttl_seconds": 600, "idle_timeout_seconds": 600}), 10, 300, 4).await;
    app.simple_event("e2", open_queue(), 10, 300, 4).await;
    let first = app.admitted_token("e1", "first").await;
    let waiting = app.join("e1", "second").await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .hold(&waiting, json!({"schedule_id": "d1", "seats": [1]}))
        .await;
    r.assert_problem(403, "not_admitted");
    assert_eq!(r.body["position"], 1);
    app.get_with_token("/v1/events/e1/schedules", &waiting)
        .await
        .assert_problem(403, "not_admitted");
    let r = app
        .get_with_token("/v1/events/e1/schedules/d1/seats", &waiting)
        .await;
    r.assert_problem(403, "not_admitted");
    assert_eq!(r.body["position"], 1);
    let other = app.admitted_token("e2", "x").await;
    app.get_with_token("/v1/events/e1/schedules", &other)
        .await
        .assert_problem(403, "forbidden");
    // Gone: leave, then try.
    app.leave(&first).await;
    app.hold(&first, json!({"schedule_id": "d1", "seats": [1]}))
        .await
        .assert_problem(410, "queue_token_expired");
    for path in [
        "/v1/events/e1/schedules",
        "/v1/events/e1/schedules/d1/seats",
    ] {
        app.get_with_token(path, &first)
            .await
            .assert_problem(410, "queue_token_expired");
    }
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn one_seat_best_available_repairs_a_stale_map_and_never_sells_a_held_seat() {
    // The one-seat hot path (one BITPOS over the map) still lets the seats
    // hash have the last word: a lost map bit, or the whole map gone, is
    // repaired, never held through.
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 10).await;
    let t = app.admitted_users("e1", 3).await;
    let r = app
        .hold(&t[0], json!({"schedule_id": "d1", "seats": [1, 2]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let k = app.event_keys("e1");
    let map = k.seat_map(&boxoffice::ids::ScheduleId::parse("d1").unwrap());
    redis_cli(&["SETBIT", &map, "1", "0"]).await;
    let r = app
        .hold(&t[1], json!({"schedule_id": "d1", "count": 1}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        seats_of(&r),
        vec![3],
        "seat 1 is held: its lost bit is no free seat"
    );
    assert_eq!(
        redis_cli(&["GETBIT", &map, "1"]).await.trim(),
        "1",
        "the bit is repaired"
    );
    redis_cli(&["DEL", &map]).await;
    let r = app
        .hold(&t[2], json!({"schedule_id": "d1", "count": 1}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        seats_of(&r),
        vec![4],
        "seats 1 to 3 are held, the map is not"
    );
    for seat in ["1", "2", "3", "4"] {
        assert_eq!(
            redis_cli(&["GETBIT", &map, seat]).await.trim(),
            "1",
            "seat {seat}"
        );
    }
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn a_schedule_loaded_without_the_one_field_config_copy_holds_by_its_fields() {
    // place_hold reads seats, row size, price, hold time and limit from
    // cfg's `static` field; a schedule loaded before that field existed
    // has only the fields, and must hold exactly as before.
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let t = app.admitted_users("e1", 2).await;
    let k = app.event_keys("e1");
    let cfg = k.schedule(&boxoffice::ids::ScheduleId::parse("d1").unwrap());
    assert_eq!(redis_cli(&["HDEL", &cfg, "static"]).await.trim(), "1");
    let before = chrono::Utc::now().timestamp_millis();
    let r = app
        .hold(&t[0], json!({"schedule_id": "d1", "count": 3}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(seats_of(&r), vec![1, 2, 3]);
    assert_eq!(r.body["amount"], "3000", "price 1000 x 3 from the fields");
    let expires = chrono::DateTime::parse_from_rfc3339(r.body["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert!(
        (before + 299_000..=before + 302_000).contains(&expires),
        "300 s hold time from the fields: {expires} vs {before}"
    );
    // The limit comes from the fields too: 4 per user, 3 held.
    let r = app
        .hold(&t[0], json!({"schedule_id": "d1", "count": 2}))
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text);
    // Rows of 10 from the fields: seats 10 and 11 are in two rows.
    let r = app
        .hold(&t[1], json!({"schedule_id": "d1", "seats": [10, 11]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["adjacent"], false, "{}", r.text);
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn a_sold_out_schedule_whose_map_is_lost_refuses_one_seat_without_walking_the_seats() {
    // One seat is found by BITPOS alone; when the map proves stale, the
    // exact counters must still answer a sold-out schedule at once rather
    // than repair the map one seat per round.
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let t = app.admitted_users("e1", 6).await;
    for (i, token) in t.iter().take(5).enumerate() {
        let seats: Vec<u32> = (1..=4).map(|s| 4 * i as u32 + s).collect();
        let r = app
            .hold(token, json!({"schedule_id": "d1", "seats": seats}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let map = app
        .event_keys("e1")
        .seat_map(&boxoffice::ids::ScheduleId::parse("d1").unwrap());
    redis_cli(&["DEL", &map]).await;
    app.hold(&t[5], json!({"schedule_id": "d1", "count": 1}))
        .await
        .assert_problem(409, "seats_unavailable");
    let repaired: u32 = redis_cli(&["BITCOUNT", &map]).await.trim().parse().unwrap();
    assert!(
        repaired <= 1,
        "{repaired} map bits repaired for one refusal"
    );
}

#[tokio::test]
async fn three_hundred_concurrent_holds_are_coalesced_and_each_decided_as_if_alone() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 1_000, 300, 4).await;
    let tokens = app.admitted_users("e1", 150).await;
    let (limited, hot) = tokens.split_at(100);
    // 100 users each ask for 2, 2 and 1 seats at once (limit 4): whatever
    // the order, exactly two of a user's three holds fit. 50 more users
    // race for seat 1,000.
    let mut asks: Vec<(usize, Value)> = Vec::new();
    for (u, _) in limited.iter().enumerate() {
        for count in [2, 2, 1] {
            asks.push((u, json!({"schedule_id": "d1", "count": count})));
        }
    }
    for u in 0..hot.len() {
        asks.push((100 + u, json!({"schedule_id": "d1", "seats": [1000]})));
    }
    let results = coalesced(
        &app,
        "place_hold",
        asks.len(),
        join_all(
            asks.iter()
                .map(|(u, body)| app.hold(&tokens[*u], body.clone())),
        ),
    )
    .await;

    let mut granted: BTreeSet<u64> = BTreeSet::new();
    let mut per_user = vec![(0, 0); tokens.len()];
    for ((u, _), r) in asks.iter().zip(&results) {
        if r.status == StatusCode::CREATED {
            grant(&mut granted, r);
            per_user[*u].0 += 1;
            per_user[*u].1 += seats_of(r).len();
        } else if *u < 100 {
            r.assert_problem(409, "hold_limit_exceeded");
            let held = r.body["held"].as_u64().unwrap();
            assert!(
                held >= 3,
                "the limit counted the user's earlier holds: {held}"
            );
        } else {
            r.assert_problem(409, "seats_unavailable");
            assert_eq!(r.body["unavailable_seats"], json!([1000]));
        }
    }
    for (u, (holds, seats)) in per_user[..100].iter().enumerate() {
        assert_eq!(*holds, 2, "user {u}: exactly two of three holds fit");
        assert!((3..=4).contains(seats), "user {u} holds {seats} seats");
    }
    let hot_winners = per_user[100..].iter().filter(|(h, _)| *h == 1).count();
    assert_eq!(hot_winners, 1, "exactly one winner of seat 1000");
    assert_map_holds_exactly(&app, &tokens[0], &granted).await;
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn concurrent_holds_on_several_schedules_share_calls_and_each_schedule_decides_its_own() {
    let app = spawn_app().await;
    // One event, four schedule ids: `small` (10 seats), `big` (limit 2 a
    // user), `gone` (cancelled) and `nope` (no such schedule). Each of 60
    // users asks for one seat of `small`, three times one of `big`, one of
    // `gone` and one of `nope`, all at once: 360 holds, coalesced per
    // event, so a call carries holds of several schedules.
    let schedule = |id: &str, seats: u32, limit: u32| {
        json!({"schedule_id": id, "starts_at": "2026-12-24T20:00:00Z", "seats": seats,
               "row_size": 10, "price": "1000", "hold_seconds": 300, "max_per_user": limit})
    };
    let r = app
        .create_event(
            "e1",
            open_queue(),
            json!([
                schedule("small", 10, 4),
                schedule("big", 1_000, 2),
                schedule("gone", 50, 4)
            ]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .admin(
            Method::POST,
            "/v1/admin/events/e1/schedules/gone/cancel",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let tokens = app.admitted_users("e1", 60).await;
    let mut asks: Vec<(usize, &str)> = Vec::new();
    for u in 0..tokens.len() {
        for schedule in ["small", "big", "big", "big", "gone", "nope"] {
            asks.push((u, schedule));
        }
    }
    let results = coalesced(
        &app,
        "place_hold",
        asks.len(),
        join_all(asks.iter().map(|(u, schedule)| {
            app.hold(&tokens[*u], json!({"schedule_id": schedule, "count": 1}))
        })),
    )
    .await;

    let mut granted: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut big_per_user = vec![0; tokens.len()];
    for ((u, schedule), r) in asks.iter().zip(&results) {
        match (*schedule, r.status) {
            (_, StatusCode::CREATED) => {
                assert_eq!(r.body["schedule_id"], json!(schedule), "{}", r.text);
                grant(granted.entry(schedule).or_default(), r);
                if *schedule == "big" {
                    big_per_user[*u] += 1;
                }
            }
            ("small", _) => r.assert_problem(409, "seats_unavailable"),
            ("big", _) => r.assert_problem(409, "hold_limit_exceeded"),
            ("gone", _) => r.assert_problem(409, "sale_closed"),
            ("nope", _) => r.assert_problem(404, "not_found"),
            _ => unreachable!(),
        }
    }
    assert_eq!(granted["small"].len(), 10, "every seat of small, once");
    assert!(
        big_per_user.iter().all(|n| *n == 2),
        "each user got exactly two of three holds on big: {big_per_user:?}"
    );
    assert_eq!(granted["big"].len(), 2 * tokens.len());
    assert!(!granted.contains_key("gone") && !granted.contains_key("nope"));
    for (schedule, seats) in &granted {
        assert_schedule_holds_exactly(&app, &tokens[0], schedule, seats).await;
    }
    app.assert_script_invariants().await;
}

#[tokio::test]
async fn a_schedule_sold_out_by_concurrent_holds_holds_exactly_its_seats() {
    let app = spawn_app().await;
    // 11 seats, 60 buyers asking for 2 or 1 at once: the holds of one call
    // count each other's seats (the held counter is written once per call).
    app.simple_event("e1", open_queue(), 11, 300, 4).await;
    let tokens = app.admitted_users("e1", 60).await;
    let results = coalesced(
        &app,
        "place_hold",
        60,
        join_all(
            tokens
                .iter()
                .enumerate()
                .map(|(i, t)| app.hold(t, json!({"schedule_id": "d1", "count": 1 + i % 2}))),
        ),
    )
    .await;
    let mut granted: BTreeSet<u64> = BTreeSet::new();
    for r in &results {
        if r.status == StatusCode::CREATED {
            grant(&mut granted, r);
        } else {
            r.assert_problem(409, "seats_unavailable");
        }
    }
    // Only a last single seat can be left when every pair asks 2.
    assert!(granted.len() >= 10, "held {granted:?}");
    let figures = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    let schedule = &figures.body["schedules"][0];
    assert_eq!(
        (schedule["held"].as_u64(), schedule["available"].as_u64()),
        (Some(granted.len() as u64), Some(11 - granted.len() as u64)),
        "{}",
        figures.text
    );
    assert_map_holds_exactly(&app, &tokens[0], &granted).await;
    app.assert_script_invariants().await;
}

impl TestApp {
    /// `POST /v1/holds` with an `Idempotency-Key`.
    pub async fn hold_keyed(&self, token: &str, key: &str, body: Value) -> Resp {
        self.send(Req {
            method: Method::POST,
            path: "/v1/holds",
            body: Some(body),
            raw: None,
            headers: vec![
                ("authorization", format!("Bearer {token}")),
                ("idempotency-key", key.to_owned()),
            ],
        })
        .await
    }
}

/// The seats of `d1` held now, by the seat map.
async fn held_seats(app: &TestApp, token: &str) -> BTreeSet<u64> {
    held_seats_of(app, token, "d1").await
}

/// A hold whose answer was lost is asked for again with the same key: the
/// retry answers the hold the first request made, byte for byte, and holds
/// nothing more, also where a second hold would have been refused (the
/// limit). The key is the buyer's own, and names one request.
#[tokio::test]
async fn a_keyed_hold_asked_again_answers_the_same_hold_and_holds_nothing_more() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 50, 300, 4).await;
    let t = app.admitted_users("e1", 2).await;
    let first = app
        .hold_keyed(&t[0], "hold-1", json!({"schedule_id": "d1", "count": 2}))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.replayed(), None, "a first answer is not a replay");
    let again = app
        .hold_keyed(&t[0], "hold-1", json!({"schedule_id": "d1", "count": 2}))
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.replayed(), Some("true"));
    assert_eq!(again.text, first.text, "the same answer");
    let granted: BTreeSet<u64> = seats_of(&first).into_iter().collect();
    assert_eq!(held_seats(&app, &t[0]).await, granted, "one hold, not two");

    // The same key for another request is refused and changes nothing.
    app.hold_keyed(&t[0], "hold-1", json!({"schedule_id": "d1", "count": 1}))
        .await
        .assert_problem(422, "idempotency_key_reused");
    app.hold_keyed(
        &t[0],
        "hold-1",
        json!({"schedule_id": "d1", "seats": [20, 21]}),
    )
    .await
    .assert_problem(422, "idempotency_key_reused");
    assert_eq!(held_seats(&app, &t[0]).await, granted);

    // Exact seats in any order are one request.
    let pair = app
        .hold_keyed(
            &t[0],
            "hold-2",
            json!({"schedule_id": "d1", "seats": [31, 30]}),
        )
        .await;
    assert_eq!(pair.status, StatusCode::CREATED, "{}", pair.text);
    let swapped = app
        .hold_keyed(
            &t[0],
            "hold-2",
            json!({"schedule_id": "d1", "seats": [30, 31]}),
        )
        .await;
    assert_eq!(swapped.replayed(), Some("true"), "{}", swapped.text);
    assert_eq!(swapped.body["hold_id"], pair.body["hold_id"]);

    // The buyer now holds 4 seats, its limit: a new hold is refused, the
    // retry of one it made is not.
    app.hold_keyed(&t[0], "hold-3", json!({"schedule_id": "d1", "count": 1}))
        .await
        .assert_problem(409, "hold_limit_exceeded");
    let limited = app
        .hold_keyed(&t[0], "hold-1", json!({"schedule_id": "d1", "count": 2}))
        .await;
    assert_eq!(limited.replayed(), Some("true"), "{}", limited.text);

    // Another buyer's key of the same text is its own.
    let other = app
        .hold_keyed(&t[1], "hold-1", json!({"schedule_id": "d1", "count": 2}))
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
    assert_eq!(other.replayed(), None);
    assert_ne!(other.body["hold_id"], first.body["hold_id"]);
    assert_eq!(held_seats(&app, &t[0]).await.len(), 6);

    // A refused request made nothing, so its key is decided anew: the
    // third hold fits once the buyer released the first.
    let first_id = first.body["hold_id"].as_str().unwrap();
    let released = app
        .send(Req {
            method: Method::DELETE,
            path: &format!("/v1/holds/{first_id}"),
            body: None,
            raw: None,
            headers: vec![("authorization", format!("Bearer {}", t[0]))],
        })
        .await;
    assert_eq!(released.status, StatusCode::NO_CONTENT, "{}", released.text);
    let third = app
        .hold_keyed(&t[0], "hold-3", json!({"schedule_id": "d1", "count": 1}))
        .await;
    assert_eq!(third.status, StatusCode::CREATED, "{}", third.text);
    assert_eq!(third.replayed(), None);
    assert_eq!(held_seats(&app, &t[0]).await.len(), 5);
    app.assert_script_invariants().await;
}

/// Three hundred copies of one keyed request at once, as a client retrying
/// in a loop might send them: one hold is made, and every answer is that
/// hold. Many of them share a script call (the coalescer), so a key is
/// also found by a later hold of the same call.
#[tokio::test]
async fn three_hundred_concurrent_copies_of_a_keyed_hold_make_exactly_one() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 400, 300, 4).await;
    let t = app.admitted_users("e1", 1).await.remove(0);
    let answers = join_all(
        (0..300).map(|_| app.hold_keyed(&t, "one-hold", json!({"schedule_id": "d1", "count": 1}))),
    )
    .await;
    for r in &answers {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let ids: HashSet<&Value> = answers.iter().map(|r| &r.body["hold_id"]).collect();
    assert_eq!(ids.len(), 1, "one hold: {ids:?}");
    let fresh = answers.iter().filter(|r| r.replayed().is_none()).count();
    assert_eq!(fresh, 1, "exactly one answer is not a replay");
    assert_eq!(held_seats(&app, &t).await, BTreeSet::from([1]));
    let figures = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(figures.body["schedules"][0]["held"], 1, "{}", figures.text);
    app.assert_script_invariants().await;
}

/// A key lasts as long as the hold it made can be held: after the hold's
/// deadline the hold is gone, and the same request holds anew.
#[tokio::test]
async fn a_hold_key_is_forgotten_with_its_holds_deadline() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event("e1", open_queue(), 20, 1, 4).await;
    let t = app.admitted_users("e1", 1).await.remove(0);
    let first = app
        .hold_keyed(&t, "k", json!({"schedule_id": "d1", "count": 1}))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let expires =
        chrono::DateTime::parse_from_rfc3339(first.body["expires_at"].as_str().unwrap()).unwrap();
    let wait =
        (expires.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0) as u64 + 50;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let later = app
        .hold_keyed(&t, "k", json!({"schedule_id": "d1", "count": 1}))
        .await;
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.text);
    assert_eq!(later.replayed(), None, "a new hold: {}", later.text);
    assert_ne!(later.body["hold_id"], first.body["hold_id"]);
    assert_eq!(held_seats(&app, &t).await, BTreeSet::from([1]));
    app.assert_script_invariants().await;
}
