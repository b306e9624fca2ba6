//! The waiting room: FIFO, admission limits across instances, idle
//! eviction, leaving, tokens, bad input.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn thousand_joins_are_fifo_and_admission_respects_limits_across_three_instances() {
    let a = spawn_app().await;
    let b = spawn_sibling(&a).await;
    let c = spawn_sibling(&a).await;
    let apps = [&a, &b, &c];
    a.simple_event(
        "flash",
        json!({"admit_per_second": 10, "max_active": 40, "active_ttl_seconds": 600,
               "idle_timeout_seconds": 120, "paused": true}),
        100,
        60,
        4,
    )
    .await;

    // 1,000 concurrent joins spread over the three instances.
    let joins = (0..1000).map(|i| {
        let app = apps[i % 3];
        async move { (i, app.join("flash", &format!("user-{i}")).await) }
    });
    let results = join_all(joins).await;
    let mut positions: Vec<u64> = Vec::new();
    let mut by_position: HashMap<u64, (String, u64)> = HashMap::new();
    for (i, r) in &results {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["status"], "waiting");
        assert_eq!(r.body["eta_seconds"], Value::Null, "no ETA while paused");
        let p = r.body["position"].as_u64().unwrap();
        positions.push(p);
        by_position.insert(p, (r.body["token"].as_str().unwrap().to_owned(), *i as u64));
    }
    positions.sort_unstable();
    assert_eq!(
        positions,
        (1..=1000).collect::<Vec<_>>(),
        "positions are a permutation of 1..1000"
    );

    // Resume at 10/s with max_active 40, and watch from outside.
    let t0 = Instant::now();
    assert_eq!(
        a.patch_queue("flash", json!({"paused": false}))
            .await
            .status,
        StatusCode::OK
    );
    let mut reached = false;
    while t0.elapsed() < Duration::from_secs(9) {
        let r = b.admin(Method::GET, "/v1/admin/events/flash", None).await;
        let now = r.body["live"]["admitted_now"].as_u64().unwrap();
        let total = r.body["live"]["admitted_total"].as_u64().unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        assert!(now <= 40, "admitted {now} > max_active 40");
        // Sliding one-second window: at most 10 per started second.
        let allowed = 10 * (elapsed.floor() as u64 + 1);
        assert!(
            total <= allowed,
            "admitted {total} after {elapsed:.2}s > {allowed}"
        );
        if total >= 40 {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reached, "40 users admitted within 9 s at 10/s");
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "40 at 10/s cannot take under 3 s"
    );

    // Let more ticks pass: capacity is full, nobody else gets in.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for p in 1..=60u64 {
        let (token, _) = &by_position[&p];
        let r = apps[p as usize % 3].status(token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if p <= 40 {
            assert_eq!(r.body["status"], "admitted", "position {p}: {}", r.text);
            assert!(r.body["admitted_until"].is_string());
        } else {
            assert_eq!(r.body["status"], "waiting", "position {p}");
            assert_eq!(r.body["position"], p - 40, "everyone moved up by 40");
            assert!(r.body["eta_seconds"].is_u64());
        }
    }
    let r = a.admin(Method::GET, "/v1/admin/events/flash", None).await;
    assert_eq!(r.body["live"]["admitted_now"], 40);
    assert_eq!(r.body["live"]["waiting"], 960);
}

#[tokio::test]
async fn poll_interval_grows_with_position() {
    let app = spawn_app().await;
    app.simple_event(
        "e1",
        json!({"admit_per_second": 2, "max_active": 10000, "active_ttl_seconds": 600, "idle_timeout_seconds": 600}),
        10,
        60,
        4,
    )
    .await;
    for i in 0..300 {
        assert!(app.join("e1", &format!("u{i}")).await.status.is_success());
    }
    // Rejoining returns each user's place with fresh pacing; the head of
    // the line is the first user still waiting.
    let mut near = None;
    for i in 0..300 {
        let r = app.join("e1", &format!("u{i}")).await;
        if r.body["status"] == "waiting" {
            near = Some(r);
            break;
        }
    }
    let near = near.expect("someone is still waiting");
    assert_eq!(near.body["position"], 1, "{}", near.text);
    let far = app.join("e1", "u299").await;
    let (n, f) = (
        near.body["poll_after_ms"].as_u64().unwrap(),
        far.body["poll_after_ms"].as_u64().unwrap(),
    );
    assert!(
        (1000..=2000).contains(&n),
        "near the head polls about every second: {n} ({})",
        near.text
    );
    assert!(f > n && f <= 15_000, "far back polls less often: {f}");
    let (ne, fe) = (
        near.body["eta_seconds"].as_u64().unwrap(),
        far.body["eta_seconds"].as_u64().unwrap(),
    );
    assert!(ne <= 2, "about position / 2 per second: {ne}");
    assert!(fe >= 60, "far back waits minutes at 2 per second: {fe}");
}

#[tokio::test]
async fn join_is_idempotent_per_user() {
    let app = spawn_app().await;
    app.simple_event("e1", json!({"admit_per_second": 5, "max_active": 5, "active_ttl_seconds": 60, "idle_timeout_seconds": 60, "paused": true}), 10, 60, 4).await;
    app.join("e1", "first").await;
    let one = app.join("e1", "alice").await;
    let two = app.join("e1", "alice").await;
    assert_eq!(one.status, StatusCode::CREATED);
    assert_eq!(two.status, StatusCode::OK, "{}", two.text);
    assert_eq!(one.body["position"], 2);
    assert_eq!(two.body["position"], 2, "same place");
    for t in [&one, &two] {
        assert_eq!(
            app.status(t.body["token"].as_str().unwrap()).await.body["position"],
            2
        );
    }
}

#[tokio::test]
async fn idle_entries_are_dropped_and_leaving_frees_a_slot() {
    let app = spawn_app().await;
    app.simple_event(
        "e1",
        json!({"admit_per_second": 100, "max_active": 1, "active_ttl_seconds": 600, "idle_timeout_seconds": 2}),
        10,
        60,
        4,
    )
    .await;
    let first = app.join("e1", "a").await;
    assert_eq!(
        first.body["status"], "admitted",
        "empty queue with capacity admits at once"
    );
    let tok = |r: &Resp| r.body["token"].as_str().unwrap().to_owned();
    let (ta, tb, tc, td) = (
        tok(&first),
        tok(&app.join("e1", "b").await),
        tok(&app.join("e1", "c").await),
        tok(&app.join("e1", "d").await),
    );
    assert_eq!(app.status(&tc).await.body["position"], 2);

    // a (admitted), c and d keep making requests; b goes quiet.
    let deadline = Instant::now() + Duration::from_millis(3_000);
    while Instant::now() < deadline {
        assert_eq!(app.status(&ta).await.status, StatusCode::OK);
        assert_eq!(app.status(&tc).await.status, StatusCode::OK);
        assert_eq!(app.status(&td).await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    app.status(&tb)
        .await
        .assert_problem(410, "queue_token_expired");
    assert_eq!(
        app.status(&tc).await.body["position"],
        1,
        "everyone behind b moved up"
    );
    assert_eq!(app.status(&td).await.body["position"], 2);

    // a leaves: c gets the slot on the next tick.
    assert_eq!(app.leave(&ta).await.status, StatusCode::NO_CONTENT);
    app.status(&ta)
        .await
        .assert_problem(410, "queue_token_expired");
    app.leave(&ta)
        .await
        .assert_problem(410, "queue_token_expired");
    let admitted = eventually(Duration::from_secs(2), || async {
        app.status(&tc).await.body["status"] == "admitted"
    })
    .await;
    assert!(admitted);
    assert_eq!(app.status(&td).await.body["position"], 1);
}

#[tokio::test]
async fn the_tick_sweeps_out_silent_entries_and_never_admits_them() {
    let app = spawn_app().await;
    app.simple_event(
        "e1",
        json!({"admit_per_second": 100, "max_active": 1, "active_ttl_seconds": 600, "idle_timeout_seconds": 2}),
        10,
        60,
        4,
    )
    .await;
    let tok = |r: &Resp| r.body["token"].as_str().unwrap().to_owned();
    let ta = tok(&app.join("e1", "a").await);
    // b is at the head of the line and never polls again; c polls.
    let tb = tok(&app.join("e1", "b").await);
    let tc = tok(&app.join("e1", "c").await);
    assert_eq!(app.status(&tc).await.body["position"], 2);
    // a, admitted, stays active (a silent admitted user is released).
    let swept = eventually(Duration::from_secs(5), || async {
        app.status(&ta).await;
        app.status(&tc).await.body["position"] == 1
    })
    .await;
    assert!(swept, "b left the line without polling once");
    let live = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(live.body["live"]["evicted_total"], 1, "{}", live.text);
    assert_eq!(live.body["live"]["waiting"], 1, "{}", live.text);

    // The slot a frees goes to c, never to the silent b.
    assert_eq!(app.leave(&ta).await.status, StatusCode::NO_CONTENT);
    let admitted = eventually(Duration::from_secs(2), || async {
        app.status(&tc).await.body["status"] == "admitted"
    })
    .await;
    assert!(admitted);
    app.status(&tb)
        .await
        .assert_problem(410, "queue_token_expired");
}

#[tokio::test]
async fn idle_timeout_holds_without_any_background_loop() {
    let app = spawn_with(Settings::new().without_background()).await;
    app.simple_event(
        "e1",
        json!({"admit_per_second": 100, "max_active": 1, "active_ttl_seconds": 600, "idle_timeout_seconds": 2}),
        10,
        60,
        4,
    )
    .await;
    app.join("e1", "a").await;
    let b = app.join("e1", "b").await;
    let tb = b.body["token"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    app.status(tb)
        .await
        .assert_problem(410, "queue_token_expired");
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused() {
    let app = spawn_app().await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    let r = app.join("e1", "alice").await;
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(app.status(&token).await.status, StatusCode::OK);

    // Flip one character of the payload.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut payload = parts[2].clone().into_bytes();
    payload[3] = if payload[3] == b'A' { b'B' } else { b'A' };
    parts[2] = String::from_utf8(payload).unwrap();
    app.status(&parts.join("."))
        .await
        .assert_problem(401, "unauthorized");

    // A token signed by another deployment's secret.
    let other =
        spawn_with(Settings::new().set("BOXOFFICE_TOKEN_SECRET", "a-different-secret-987654"))
            .await;
    other.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    let foreign = other.join("e1", "alice").await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.status(&foreign)
        .await
        .assert_problem(401, "unauthorized");

    for bad in ["", "Bearer", "garbage", "v1.a.b.c"] {
        app.status(bad).await.assert_problem(401, "unauthorized");
    }
    let r = app.get("/v1/queue/status").await;
    r.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn bad_join_input_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    // With the service key the body must name a valid user; with a user
    // assertion it may only repeat the assertion's user.
    let service = ("x-api-key", SERVICE_KEY.to_owned());
    let assertion = ("authorization", format!("Bearer {}", user_token("ok")));
    for (body, credential) in [
        (json!({}), &service),
        (json!({"user_id": ""}), &service),
        (json!({"user_id": "a b"}), &service),
        (json!({"user_id": "x".repeat(129)}), &service),
        (json!({"user_id": 7}), &service),
        (json!({"user_id": "ok", "extra": 1}), &service),
        (json!([1]), &service),
        (json!({"user_id": 7}), &assertion),
        (json!({"user_id": "ok", "extra": 1}), &assertion),
        (json!([1]), &assertion),
    ] {
        let r = app
            .send(Req {
                method: Method::POST,
                path: "/v1/events/e1/queue",
                body: Some(body.clone()),
                raw: None,
                headers: vec![credential.clone()],
            })
            .await;
        assert!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.code(), "invalid_request");
    }
    app.join("nope", "u1")
        .await
        .assert_problem(404, "not_found");
    app.join("bad%20id", "u1")
        .await
        .assert_problem(404, "not_found");
    let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(
        r.body["live"]["joined_total"], 0,
        "nothing written: {}",
        r.text
    );
    assert_eq!(r.body["live"]["waiting"], 0);
}

#[tokio::test]
async fn concurrent_joins_of_one_user_make_one_place() {
    let app = spawn_app().await;
    app.simple_event("e1", json!({"admit_per_second": 5, "max_active": 5, "active_ttl_seconds": 60, "idle_timeout_seconds": 60, "paused": true}), 10, 60, 4).await;
    // 100 users, each joining twice at once: 200 concurrent joins.
    let joins = (0..200).map(|i| {
        let app = &app;
        async move { (i % 100, app.join("e1", &format!("u{}", i % 100)).await) }
    });
    let results = join_all(joins).await;
    let mut positions = vec![Vec::new(); 100];
    let mut created = vec![0; 100];
    for (user, r) in &results {
        assert!(r.status.is_success(), "{}", r.text);
        if r.status == StatusCode::CREATED {
            created[*user] += 1;
        }
        let token = r.body["token"].as_str().unwrap();
        positions[*user].push(app.status(token).await.body["position"].as_u64().unwrap());
    }
    assert!(
        created.iter().all(|&n| n == 1),
        "one entry per user: {created:?}"
    );
    let mut places: Vec<u64> = positions
        .iter()
        .map(|p| {
            assert_eq!(p[0], p[1], "both tokens of a user name one place");
            p[0]
        })
        .collect();
    places.sort_unstable();
    assert_eq!(places, (1..=100).collect::<Vec<_>>());
    let live = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(live.body["live"]["waiting"], 100);
    assert_eq!(live.body["live"]["joined_total"], 100);
}

#[tokio::test]
async fn concurrent_joins_on_an_open_queue_admit_exactly_up_to_capacity_at_once() {
    let a = spawn_app().await;
    let b = spawn_sibling(&a).await;
    // Open, room for 50 at once, no rate limit that binds: the first 50
    // joins are admitted on the spot (joins in one call share the counts
    // the script reads once), everyone after them waits in join order.
    a.simple_event("e1", json!({"admit_per_second": 10000, "max_active": 50, "active_ttl_seconds": 600, "idle_timeout_seconds": 600}), 10, 60, 4).await;
    let users: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
    let joins = coalesced(
        &a,
        "join_queue",
        150,
        join_all(
            users
                .iter()
                .enumerate()
                .map(|(i, u)| [&a, &b][i % 2].join("e1", u)),
        ),
    )
    .await;
    // (entry, position): the entry is the join order, from the token.
    let mut admitted = Vec::new();
    let mut waiting = Vec::new();
    for r in &joins {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let entry = a
            .state
            .tokens
            .verify(r.body["token"].as_str().unwrap())
            .unwrap()
            .entry;
        match r.body["status"].as_str() {
            Some("admitted") => admitted.push(entry),
            Some("waiting") => waiting.push((entry, r.body["position"].as_u64().unwrap())),
            _ => panic!("{}", r.text),
        }
    }
    assert_eq!(admitted.len(), 50, "exactly max_active admitted at once");
    // FIFO: the first 50 joins are the admitted ones, and the line is the
    // rest in join order.
    waiting.sort_unstable();
    let first_waiting = waiting[0].0;
    assert!(
        admitted.iter().all(|&e| e < first_waiting),
        "a later join was admitted ahead of an earlier one: {admitted:?}, first waiting {first_waiting}"
    );
    let positions: Vec<u64> = waiting.iter().map(|&(_, p)| p).collect();
    assert_eq!(
        positions,
        (1..=250).collect::<Vec<_>>(),
        "positions follow join order"
    );
    let live = a.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(live.body["live"]["admitted_now"], 50, "{}", live.text);
    assert_eq!(live.body["live"]["admitted_total"], 50);
    assert_eq!(live.body["live"]["joined_total"], 300);
    assert_eq!(live.body["live"]["waiting"], 250);
    assert_eq!(live.body["live"]["peak_active"], 50);
    // Everyone's heartbeat was written: nobody is swept as idle, and a
    // second join of each finds the same place.
    let again = join_all(users.iter().map(|u| b.join("e1", u))).await;
    let mut places = Vec::new();
    for r in &again {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.body["status"] == "waiting" {
            places.push(r.body["position"].as_u64().unwrap());
        }
    }
    places.sort_unstable();
    assert_eq!(places, (1..=250).collect::<Vec<_>>());
    assert_eq!(
        a.admin(Method::GET, "/v1/admin/events/e1", None).await.body["live"]["joined_total"],
        300
    );
}

#[tokio::test]
async fn the_sweep_racing_polls_drops_exactly_the_silent() {
    let app = spawn_app().await;
    // The idle timeout leaves room for 200 sequential joins on a busy
    // machine before the first poll.
    app.simple_event("e1", json!({"admit_per_second": 5, "max_active": 5, "active_ttl_seconds": 60, "idle_timeout_seconds": 4, "paused": true}), 10, 60, 4).await;
    let mut pollers = Vec::new();
    for i in 0..200 {
        let r = app.join("e1", &format!("u{i}")).await;
        if i % 2 == 0 {
            pollers.push(r.body["token"].as_str().unwrap().to_owned());
        }
        // Sequential joins can take longer than the idle timeout on a
        // loaded machine: the pollers already joined keep polling.
        if i % 50 == 49 {
            join_all(pollers.iter().map(|t| app.status(t))).await;
        }
    }
    // Half the line polls (100 at once, every 300 ms) while the ticks sweep.
    let until = Instant::now() + Duration::from_millis(5_000);
    while Instant::now() < until {
        let polls = join_all(pollers.iter().map(|t| app.status(t))).await;
        assert!(
            polls.iter().all(|r| r.status == StatusCode::OK),
            "a poller was dropped: {:?}",
            polls
                .iter()
                .find(|r| r.status != StatusCode::OK)
                .map(|r| &r.text)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let swept = eventually(Duration::from_secs(6), || async {
        let live = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
        live.body["live"]["waiting"] == 100
    })
    .await;
    assert!(swept, "the 100 silent entries are gone");
    let live = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(live.body["live"]["evicted_total"], 100);
    let places: Vec<u64> = join_all(pollers.iter().map(|t| app.status(t)))
        .await
        .iter()
        .map(|r| r.body["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        places,
        (1..=100).collect::<Vec<_>>(),
        "pollers keep their join order, the gaps closed"
    );
}

#[tokio::test]
async fn three_hundred_concurrent_joins_and_polls_are_coalesced_and_each_answered_as_if_alone() {
    let app = spawn_app().await;
    app.simple_event("e1", json!({"admit_per_second": 5, "max_active": 5, "active_ttl_seconds": 60, "idle_timeout_seconds": 600, "paused": true}), 10, 60, 4).await;
    let users: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
    let joins = coalesced(
        &app,
        "join_queue",
        300,
        join_all(users.iter().map(|u| app.join("e1", u))),
    )
    .await;
    let mut line: Vec<(u64, String)> = joins
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            (
                r.body["position"].as_u64().unwrap(),
                r.body["token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    line.sort();
    assert_eq!(
        line.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    // Every tenth leaves: their polls are answered gone, in the same
    // batches as the others' places.
    for (_, token) in line.iter().step_by(10) {
        assert_eq!(app.leave(token).await.status, StatusCode::NO_CONTENT);
    }
    let polls = coalesced(
        &app,
        "queue_status",
        300,
        join_all(line.iter().map(|(_, t)| app.status(t))),
    )
    .await;
    let mut expected = 0;
    for (i, r) in polls.iter().enumerate() {
        if i % 10 == 0 {
            r.assert_problem(410, "queue_token_expired");
        } else {
            expected += 1;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            assert_eq!(r.body["status"], "waiting", "{}", r.text);
            assert_eq!(r.body["position"], expected, "{}", r.text);
        }
    }
    assert_eq!(expected, 270);
    let live = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(live.body["live"]["waiting"], 270);
}

/// `find_entry` (lua/lib/queue.lua) looks in the line before the admitted
/// set and relies on this: a user is never in both. Hundreds of joins and
/// rejoins on two instances while admission moves users from the line and
/// short admissions run out; both sets are read in one script, so a move
/// between two reads cannot look like an overlap.
#[tokio::test]
async fn no_user_is_ever_both_waiting_and_admitted_under_concurrent_joins_and_admission() {
    let a = spawn_app().await;
    let b = spawn_sibling(&a).await;
    a.simple_event("e1", json!({"admit_per_second": 40, "max_active": 15, "active_ttl_seconds": 1, "idle_timeout_seconds": 60}), 10, 60, 4).await;
    let k = a.event_keys("e1");
    let (wait, adm) = (k.queue_waiting(), k.queue_admitted());
    const BOTH: &str = "local n = 0 for _, u in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do if redis.call('ZSCORE', KEYS[2], u) then n = n + 1 end end return n";
    let started = Instant::now();
    let mut samples = 0;
    let mut admitted_seen = 0;
    while started.elapsed() < Duration::from_secs(4) {
        // 150 users, each joining twice at once, through both instances.
        let joins = (0..300).map(|i| {
            let app = [&a, &b][i % 2];
            async move { app.join("e1", &format!("u{}", i % 150)).await }
        });
        for r in join_all(joins).await {
            assert!(r.status.is_success(), "{}", r.text);
            if r.body["status"] == "admitted" {
                admitted_seen += 1;
            }
        }
        let both = redis_cli(&["EVAL", BOTH, "2", &wait, &adm]).await;
        assert_eq!(both.trim(), "0", "users both waiting and admitted");
        samples += 1;
    }
    assert!(samples >= 2, "the sets were sampled while joins ran");
    assert!(
        admitted_seen > 0,
        "admission ran during the joins, so users did move between the sets"
    );
}
