//! Admin catalog endpoints: validation, conflicts, live tuning.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

fn schedule() -> Value {
    json!({"schedule_id": "d1", "starts_at": "2026-12-24T20:00:00+09:00", "seats": 50, "row_size": 10,
           "price": "12000", "hold_seconds": 300, "max_per_user": 4})
}

#[tokio::test]
async fn create_list_and_conflict() {
    let app = spawn_app().await;
    let r = app
        .create_event("concert", queue_defaults(), json!([schedule()]))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["schedules"][0]["price"], "12000");

    let r = app.get("/v1/events").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({"events": [{"event_id": "concert", "name": "Event concert",
            "schedules": [{"schedule_id": "d1", "starts_at": "2026-12-24T11:00:00.000Z", "price": "12000"}]}]})
    );

    let r = app
        .create_event("concert", queue_defaults(), json!([schedule()]))
        .await;
    r.assert_problem(409, "already_exists");
}

#[tokio::test]
async fn bad_event_definitions_are_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let mut cases: Vec<(Value, Value)> = Vec::new();
    for (field, bad) in [
        ("admit_per_second", json!(0)),
        ("max_active", json!(-1)),
        ("active_ttl_seconds", json!(0)),
        ("idle_timeout_seconds", json!(1)),
        ("admit_per_second", json!("ten")),
    ] {
        let mut q = queue_defaults();
        q[field] = bad;
        cases.push((q, json!([schedule()])));
    }
    for (field, bad) in [
        ("seats", json!(0)),
        ("seats", json!(100_001)),
        ("row_size", json!(0)),
        ("row_size", json!(51)),
        // "0" is a free schedule; any other spelling of zero is refused.
        ("price", json!("0.0")),
        ("low_seats_threshold", json!(51)),
        ("low_seats_threshold", json!(-1)),
        ("price", json!("-5")),
        ("price", json!("12.5")),
        ("price", json!(12000)),
        ("price", json!("abc")),
        ("hold_seconds", json!(0)),
        ("max_per_user", json!(0)),
        ("starts_at", json!("tomorrow")),
        ("schedule_id", json!("a b")),
    ] {
        let mut s = schedule();
        s[field] = bad;
        cases.push((queue_defaults(), json!([s])));
    }
    cases.push((queue_defaults(), json!([])));
    cases.push((queue_defaults(), json!([schedule(), schedule()])));
    let mut extra = schedule();
    extra["surprise"] = json!(1);
    cases.push((queue_defaults(), json!([extra])));

    for (queue, schedules) in cases {
        let r = app
            .create_event("bad", queue.clone(), schedules.clone())
            .await;
        r.assert_problem(422, "invalid_request");
    }
    let r = app
        .create_event("bad id!", queue_defaults(), json!([schedule()]))
        .await;
    r.assert_problem(422, "invalid_request");

    assert_eq!(app.get("/v1/events").await.body, json!({"events": []}));
    app.admin(Method::GET, "/v1/admin/events/bad", None)
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn admission_settings_change_live_and_bad_patches_change_nothing() {
    let app = spawn_app().await;
    // Under load the startup restore used to read the catalog before the
    // PATCH below and write it to Redis after, un-pausing the event.
    app.wait_for_startup_restore().await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;

    let r = app
        .patch_queue("e1", json!({"paused": true, "admit_per_second": 7}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["queue"]["paused"], true);
    assert_eq!(r.body["queue"]["admit_per_second"], 7);

    for bad in [
        json!({}),
        json!({"admit_per_second": 0}),
        json!({"paused": "yes"}),
        json!({"nope": 1}),
    ] {
        app.patch_queue("e1", bad)
            .await
            .assert_problem(422, "invalid_request");
    }
    app.patch_queue("missing", json!({"paused": false}))
        .await
        .assert_problem(404, "not_found");

    let r = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["queue"]["admit_per_second"], 7);
    assert_eq!(r.body["queue"]["paused"], true);
    assert_eq!(r.body["live"]["waiting"], 0);

    // Paused: joins wait even though the queue is empty.
    let r = app.join("e1", "u1").await;
    assert_eq!(r.body["status"], "waiting", "{}", r.text);
    assert_eq!(r.body["eta_seconds"], Value::Null);
    app.patch_queue("e1", json!({"paused": false})).await;
    let token = r.body["token"].as_str().unwrap();
    let admitted = eventually(std::time::Duration::from_secs(5), || async {
        app.status(token).await.body["status"] == "admitted"
    })
    .await;
    assert!(admitted, "resuming admits on the next tick");
}
