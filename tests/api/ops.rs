//! Operability: OpenAPI coverage, Swagger UI, rate limits, metrics.

use std::{collections::BTreeSet, time::Duration};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

/// Every `.route("<path>", ...)` in the router source.
fn router_paths() -> BTreeSet<String> {
    let src = include_str!("../../src/http/mod.rs");
    src.match_indices(".route(")
        .map(|(i, m)| {
            let rest = src[i + m.len()..]
                .trim_start()
                .strip_prefix('"')
                .expect("route path literal");
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document() {
    let app = spawn_app().await;
    let r = app.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let documented: BTreeSet<String> = r.body["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let routes = router_paths();
    assert!(routes.len() > 20, "found {routes:?}");
    for route in &routes {
        assert!(
            documented.contains(route),
            "{route} is routed but not documented"
        );
    }
    let schemes = &r.body["components"]["securitySchemes"];
    assert_eq!(schemes["queue_token"]["scheme"], "bearer");
    assert_eq!(schemes["service_key"]["name"], "X-Api-Key");
    assert!(r.body["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app().await;
    let r = app.get("/docs/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text.contains("swagger-ui"),
        "{}",
        &r.text[..r.text.len().min(300)]
    );
    assert!(
        !r.text.contains("unpkg.com") && !r.text.contains("cdn."),
        "nothing loaded from the internet"
    );
}

#[tokio::test]
async fn a_burst_from_one_address_is_rate_limited() {
    let app = spawn_with(Settings::new().set("BOXOFFICE_RATE_PER_IP", "50")).await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    let results = join_all((0..600).map(|i| {
        let app = &app;
        async move { app.join("e1", &format!("u{i}")).await }
    }))
    .await;
    let limited: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        limited.len() >= 300,
        "only {} of 600 limited",
        limited.len()
    );
    for r in &limited {
        r.assert_problem(429, "rate_limited");
        let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(secs >= 1);
    }
    // Admin calls with the service key are not limited.
    assert_eq!(
        app.admin(Method::GET, "/v1/admin/events/e1", None)
            .await
            .status,
        StatusCode::OK
    );

    let open = spawn_with(Settings::new().set("BOXOFFICE_RATE_PER_IP", "0")).await;
    open.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    let results = join_all((0..600).map(|i| {
        let open = &open;
        async move { open.join("e1", &format!("u{i}")).await }
    }))
    .await;
    assert!(
        results.iter().all(|r| r.status == StatusCode::CREATED),
        "limit 0 is off"
    );
}

#[tokio::test]
async fn metrics_have_every_family_after_a_short_flow() {
    let app = spawn_app().await;
    app.simple_event("e1", json!({"admit_per_second": 100, "max_active": 100, "active_ttl_seconds": 60, "idle_timeout_seconds": 60}), 10, 60, 4).await;
    let token = app.admitted_token("e1", "m1").await;
    let hold = app
        .hold(&token, json!({"schedule_id": "d1", "count": 1}))
        .await;
    assert_eq!(hold.status, StatusCode::CREATED);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let text = app.get("/metrics").await.text;
    for family in [
        "boxoffice_http_request_duration_seconds_bucket",
        "boxoffice_queue_waiting",
        "boxoffice_queue_admitted",
        "boxoffice_queue_admission_rate",
        "boxoffice_queue_admissions_total",
        "boxoffice_queue_evictions_total",
        "boxoffice_holds_total",
        "boxoffice_holds_released_total",
        "boxoffice_holds_expired_total",
        "boxoffice_payments_total",
        "boxoffice_wallet_charges_total",
        "boxoffice_reconciler_fixes_total",
        "boxoffice_outbox_lag_seconds",
        "boxoffice_dependency_errors_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "{family} missing from /metrics"
        );
    }
    assert!(!text.contains("m1"), "no user ids in labels");
}

/// A background loop that keeps failing is counted per loop on `/metrics`
/// (here the outbox relay, its table renamed away under it). The instance
/// is a process of its own, so the count is its own: the other tests of
/// this binary share one metrics recorder.
#[tokio::test]
async fn a_failing_background_loop_is_counted_per_loop() {
    let db = create_database().await;
    let settings = Settings::new().set("DATABASE_URL", &db);
    let process = ProcessInstance::start(&settings).await;
    let relay_failures = || async {
        let text = reqwest::get(format!("{}/metrics", process.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(r#"boxoffice_background_failures_total{loop="relay"} "#))
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(
        relay_failures().await,
        Some(0.0),
        "registered at zero, and the relay works while its table is there"
    );
    let pg = sqlx::PgPool::connect(&db).await.unwrap();
    sqlx::query("alter table outbox rename to outbox_gone")
        .execute(&pg)
        .await
        .unwrap();
    let counted = eventually(Duration::from_secs(10), || async {
        relay_failures().await.is_some_and(|n| n >= 2.0)
    })
    .await;
    assert!(counted, "relay failures: {:?}", relay_failures().await);
}
