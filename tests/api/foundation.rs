//! Ops endpoints, error shape, request ids, metrics.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["redis"], "ok");
    assert_eq!(r.body["postgres"], "ok");
    assert_eq!(r.body["migrations"], "applied");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let a = app.get("/healthz").await;
    let b = app.get("/nope").await;
    let ida = a
        .headers
        .get("x-request-id")
        .expect("request id")
        .to_str()
        .unwrap()
        .to_owned();
    let idb = b
        .headers
        .get("x-request-id")
        .expect("request id on errors too")
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(ida, idb);
    // A caller's own id is kept.
    let r = app
        .send(Req {
            method: Method::GET,
            path: "/healthz",
            body: None,
            raw: None,
            headers: vec![("x-request-id", "abc-123".into())],
        })
        .await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "abc-123");
}

#[tokio::test]
async fn malformed_json_is_a_problem_not_plain_text() {
    let app = spawn_app().await;
    let headers = || vec![("x-api-key", SERVICE_KEY.to_owned())];
    let r = app
        .send(Req {
            method: Method::POST,
            path: "/v1/admin/events",
            body: None,
            raw: Some(("application/json", "{\"event_id\": ")),
            headers: headers(),
        })
        .await;
    r.assert_problem(400, "invalid_request");
    let r = app
        .send(Req {
            method: Method::POST,
            path: "/v1/admin/events",
            body: None,
            raw: Some(("text/plain", "hello")),
            headers: headers(),
        })
        .await;
    r.assert_problem(400, "invalid_request");
    let r = app
        .admin(
            Method::POST,
            "/v1/admin/events",
            Some(json!({"event_id": 5})),
        )
        .await;
    r.assert_problem(422, "invalid_request");
    let r = app.join_for("e1", "").await;
    assert!(r.status.is_client_error());
    assert_eq!(r.content_type(), "application/problem+json");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    app.get("/v1/nothing-here")
        .await
        .assert_problem(404, "not_found");
    let r = app
        .send(Req {
            method: Method::PUT,
            path: "/healthz",
            body: None,
            raw: None,
            headers: vec![],
        })
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.content_type(), "application/problem+json");
    r.assert_problem(405, "invalid_request");
}

#[tokio::test]
async fn metrics_show_latency_by_route_and_status() {
    let app = spawn_app().await;
    app.get("/readyz").await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text.contains(r#"boxoffice_http_request_duration_seconds_bucket{method="GET",route="/readyz",status="200""#),
        "{}",
        &r.text[..r.text.len().min(2000)]
    );
}

#[tokio::test]
async fn service_key_is_required_for_admin() {
    let app = spawn_app().await;
    let r = app.get("/v1/admin/events/x").await;
    r.assert_problem(401, "unauthorized");
    let r = app
        .send(Req {
            method: Method::GET,
            path: "/v1/admin/events/x",
            body: None,
            raw: None,
            headers: vec![("x-api-key", "wrong".into())],
        })
        .await;
    r.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn lua_scripts_reload_after_the_server_forgets_them() {
    // The function library is per server, so a dedicated redis-server
    // loses it, not the shared one.
    let Some(server) = PrivateRedis::start().await else {
        missing_tool("redis-server", "install Debian's redis-server");
        return;
    };
    let app = spawn_with(Settings::new().set("REDIS_URL", &server.url())).await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    server.cli(&["FUNCTION", "FLUSH"]).await;
    // The library is gone from the server: FCALL answers "Function not
    // found" and the wrapper must load it and call again.
    let r = app.join("e1", "u1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let libraries = server.cli(&["FUNCTION", "LIST"]).await;
    assert!(
        libraries.contains(&boxoffice::store::redis::library().name),
        "{libraries}"
    );
    let t = app.state.redis.now_ms().await.unwrap();
    assert!(t > 1_700_000_000_000);
}
