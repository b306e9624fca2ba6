//! Invariant 9: a dead dependency gives a fast 503, never a hang, and the
//! service recovers by itself when it returns.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn redis_outage_is_a_fast_503_and_recovers() {
    let proxy = Proxy::start(resolve(&redis_url()).await).await;
    let app = spawn_with(Settings::new().set("REDIS_URL", &via(&redis_url(), proxy.addr))).await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);

    proxy.cut();
    for i in 0..10 {
        let start = Instant::now();
        let r = app.join("e1", &format!("u{i}")).await;
        let took = start.elapsed();
        r.assert_problem(503, "dependency_unavailable");
        assert!(r.headers.contains_key("retry-after"));
        assert!(took < Duration::from_millis(1_000), "join took {took:?}");
        let start = Instant::now();
        let r = app.get("/readyz").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.body["redis"], "unavailable");
        assert!(start.elapsed() < Duration::from_millis(1_000));
    }
    // The process is still up.
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);

    proxy.restore();
    let back = eventually(Duration::from_secs(10), || async {
        app.get("/readyz").await.status == StatusCode::OK
    })
    .await;
    assert!(back, "ready again without a restart");
    let r = app.join("e1", "after").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn postgres_outage_is_a_fast_503_while_the_queue_keeps_working() {
    let db = create_database().await;
    let pg = resolve(&db).await;
    let proxy = Proxy::start(pg).await;
    let app = spawn_with(Settings::new().set("DATABASE_URL", &via(&db, proxy.addr))).await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;

    proxy.cut();
    let start = Instant::now();
    let r = app.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["postgres"], "unavailable");
    assert!(
        start.elapsed() < Duration::from_millis(3_500),
        "readyz took {:?}",
        start.elapsed()
    );
    // Admin reads need PostgreSQL: 503 quickly once the breaker is open.
    for _ in 0..5 {
        let start = Instant::now();
        let r = app
            .admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
            .await;
        r.assert_problem(503, "dependency_unavailable");
        assert!(start.elapsed() < Duration::from_millis(3_500));
    }
    let start = Instant::now();
    let r = app
        .admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
        .await;
    r.assert_problem(503, "dependency_unavailable");
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "breaker open: {:?}",
        start.elapsed()
    );
    // The queue never touches PostgreSQL.
    let r = app.join("e1", "u1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(app.status(&token).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/events").await.status, StatusCode::OK);
    // Holds don't either; the wallet does, and answers 503.
    let r = app
        .hold(&token, serde_json::json!({"schedule_id": "d1", "count": 2}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app.get_as("/v1/users/u1/wallet", "u1").await;
    r.assert_problem(503, "dependency_unavailable");

    proxy.restore();
    let back = eventually(Duration::from_secs(10), || async {
        app.get("/readyz").await.status == StatusCode::OK
    })
    .await;
    assert!(back, "ready again without a restart");
    assert_eq!(
        app.admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn startup_fails_fast_with_a_clear_message() {
    let settings = Settings::new().set("REDIS_URL", "redis://127.0.0.1:1");
    let config = boxoffice::config::Config::from_map(&settings.env).unwrap();
    let start = Instant::now();
    let err = match boxoffice::app::Application::build(config).await {
        Ok(_) => panic!("must not start without Redis"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("cannot use Redis at redis://127.0.0.1:1"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}
