//! Invariant 11 and SPEC section 4 against a real local Redis Cluster
//! (three masters, started by the suite; see `redis_harness`): the whole
//! purchase flow on events spread over the masters, a master killed and
//! failed over mid-sale, and a master without a replica that comes back
//! empty.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{helpers::*, redis_harness::LocalCluster};

/// An app against the cluster, with every master as a seed.
async fn app_on(cluster: &LocalCluster) -> TestApp {
    spawn_with(Settings::new().set("REDIS_URL", &cluster.url())).await
}

fn open_queue() -> serde_json::Value {
    queue_defaults()
}

/// Seats sold per schedule d1 of `event`, from PostgreSQL.
async fn sold_in_pg(app: &TestApp, event: &str) -> Vec<i32> {
    let mut seats: Vec<i32> = sqlx::query_scalar(
        "select seat_no from sold_seats where event_id = $1 and schedule_id = 'd1' order by seat_no",
    )
    .bind(event)
    .fetch_all(app.state.pg.pool())
    .await
    .unwrap();
    seats.sort_unstable();
    seats
}

/// Seats sold in Redis (the admin seat map).
async fn sold_in_redis(app: &TestApp, event: &str) -> Option<Vec<i32>> {
    let r = app
        .admin(
            Method::GET,
            &format!("/v1/admin/events/{event}/schedules/d1/seats"),
            None,
        )
        .await;
    if r.status != StatusCode::OK {
        return None;
    }
    Some(
        r.body["seats"]
            .as_array()?
            .iter()
            .filter(|s| s["status"] == "sold")
            .map(|s| s["seat_no"].as_i64().unwrap() as i32)
            .collect(),
    )
}

#[tokio::test]
async fn the_purchase_flow_works_on_events_spread_over_three_masters() {
    let Some(cluster) = LocalCluster::start(3, 1).await else {
        return;
    };
    let app = app_on(&cluster).await;
    let events = cluster.events_on_each_master("flow").await;
    assert_eq!(events.len(), 3, "one event per master: {events:?}");
    for (i, (event, _)) in events.iter().enumerate() {
        app.simple_event(event, open_queue(), 20, 300, 4).await;
        let user = format!("buyer{i}");
        let (token, paid) = app.buy(event, &user, "5000", json!([3, 4])).await;
        assert_eq!(paid.body["seats"], json!([3, 4]), "{}", paid.text);
        app.status(&token)
            .await
            .assert_problem(410, "queue_token_expired");
        assert_eq!(app.admin_seat(event, 3).await, "sold");
        // Someone else cannot hold a sold seat.
        let other = app.admitted_token(event, &format!("other{i}")).await;
        app.hold(&other, json!({"schedule_id": "d1", "seats": [4]}))
            .await
            .assert_problem(409, "seats_unavailable");
        let r = app
            .admin(Method::GET, &format!("/v1/admin/events/{event}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["restoring"], false);
        assert_eq!(r.body["schedules"][0]["sold"], 2);
    }
    let r = app.get("/v1/events").await;
    assert_eq!(r.body["events"].as_array().unwrap().len(), 3, "{}", r.text);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
}
