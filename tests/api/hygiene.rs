//! HTTP hygiene against the real server: header-read, idle and
//! whole-request timeouts, the connection cap, the body limit, the Bearer
//! scheme, rate-limit keys and the separate metrics address. Most tests
//! speak raw HTTP/1.1 over TCP, because a well-behaved client cannot be
//! slow, idle or greedy on purpose.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

/// Reads until the peer closes (or resets) the connection; the bytes read
/// and when it closed. `None` if still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<(Vec<u8>, Instant)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((got, Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Asserts that the server closes `stream` without an answer, `lo` to
/// `hi` after `since`.
async fn assert_closed_between(stream: &mut TcpStream, since: Instant, lo: Duration, hi: Duration) {
    let (bytes, at) = closed_within(stream, hi)
        .await
        .unwrap_or_else(|| panic!("still open {hi:?} after"));
    assert!(bytes.is_empty(), "closed without an answer");
    let after = at.duration_since(since);
    assert!(after >= lo && after < hi, "closed {after:?} after");
}

/// An app with these idle and header-read timeouts (ms).
async fn with_timeouts(idle_ms: u64, header_ms: u64) -> TestApp {
    let settings = Settings::new()
        .set("BOXOFFICE_HTTP_IDLE_TIMEOUT_MS", &idle_ms.to_string())
        .set("BOXOFFICE_HTTP_HEADER_TIMEOUT_MS", &header_ms.to_string());
    spawn_with(settings).await
}

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
struct RawResp {
    status: u16,
    head: String,
    body: Value,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

fn parse_response(raw: &[u8]) -> Option<RawResp> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(RawResp {
        status,
        head: head.to_owned(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    })
}

/// A keep-alive HTTP/1.1 connection that sends whole requests.
struct Conn {
    stream: TcpStream,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// Sends `GET path` and reads one response (by Content-Length).
    async fn get(&mut self, path: &str) -> RawResp {
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return parse_response(&got).unwrap();
                }
            }
        }
    }
}

#[tokio::test]
async fn slow_header_connections_are_closed_by_the_header_timeout() {
    let app = spawn_with(Settings::new().set("BOXOFFICE_HTTP_HEADER_TIMEOUT_MS", "700")).await;
    let opened = Instant::now();
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        match i % 4 {
            // Nothing at all, or a few bytes of the HTTP/2 preface: stuck
            // before hyper knows which protocol it speaks.
            0 => {}
            1 => s.write_all(b"PRI * HT").await.unwrap(),
            // A request line, or a head, that never ends.
            2 => s.write_all(b"GET /healthz HT").await.unwrap(),
            _ => s
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: ")
                .await
                .unwrap(),
        }
        slow.push(s);
    }
    // The server still serves others while the 200 dangle.
    assert_eq!(Conn::open(app.addr).await.get("/healthz").await.status, 200);
    // Closed by the timeout, not at once.
    let (lo, hi) = (Duration::from_millis(500), Duration::from_secs(5));
    join_all(
        slow.iter_mut()
            .map(|s| assert_closed_between(s, opened, lo, hi)),
    )
    .await;
    // New connections are served as before (raw ones: a pooled keep-alive
    // connection idle for longer than the header timeout is closed too).
    assert_eq!(Conn::open(app.addr).await.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_while_open_ones_are_served() {
    let app = spawn_with(Settings::new().set("BOXOFFICE_HTTP_MAX_CONNECTIONS", "50")).await;
    let mut mine = Conn::open(app.addr).await;
    let mut baseline = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(mine.get("/healthz").await.status, 200);
        baseline.push(t.elapsed());
    }
    // A greedy client takes the other 49 slots, then opens 150 more.
    let mut held = Vec::new();
    for _ in 0..49 {
        let mut c = Conn::open(app.addr).await;
        assert_eq!(c.get("/healthz").await.status, 200);
        held.push(c);
    }
    let flood = async {
        let mut refused = Vec::new();
        for _ in 0..150 {
            let started = Instant::now();
            let mut s = TcpStream::connect(app.addr).await.unwrap();
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
                .await;
            let (bytes, at) = closed_within(&mut s, Duration::from_secs(2))
                .await
                .expect("a connection over the cap is closed at once");
            refused.push((parse_response(&bytes), at.duration_since(started)));
        }
        refused
    };
    let served = async {
        let mut during = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            assert_eq!(mine.get("/healthz").await.status, 200);
            during.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        during
    };
    let (refused, mut during) = tokio::join!(flood, served);

    for (resp, took) in &refused {
        assert!(*took < Duration::from_secs(1), "refused promptly: {took:?}");
        if let Some(r) = resp {
            assert_eq!(r.status, 503);
            assert_eq!(r.body["code"], "over_capacity");
            assert_eq!(r.header("retry-after"), Some("1"));
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
        }
    }
    let answered = refused.iter().filter(|(r, _)| r.is_some()).count();
    assert!(
        answered >= 100,
        "most refusals carry the 503: {answered} of 150"
    );
    // The connections already open are served within their usual latency.
    baseline.sort();
    during.sort();
    let (base_p50, p50, max) = (baseline[10], during[10], during[19]);
    eprintln!(
        "cap 50: {answered} of 150 over-cap connections got the 503; latency on an open connection: p50 {base_p50:?} before, p50 {p50:?} / max {max:?} during the flood"
    );
    assert!(
        p50 <= base_p50 * 5 + Duration::from_millis(20) && max < Duration::from_secs(1),
        "baseline p50 {base_p50:?}; during the flood p50 {p50:?}, max {max:?}"
    );
    // Slots come back as connections close.
    drop(held);
    assert!(
        eventually(Duration::from_secs(3), || async {
            let mut c = Conn::open(app.addr).await;
            c.stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
                .await
                .is_ok()
                && closed_within(&mut c.stream, Duration::from_millis(300))
                    .await
                    .is_none()
        })
        .await,
        "a new connection is served again once the greedy client leaves"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = with_timeouts(500, 10000).await;
    // A connection in use stays open past the idle timeout...
    let mut busy = Conn::open(app.addr).await;
    let first = Instant::now();
    for _ in 0..8 {
        assert_eq!(busy.get("/healthz").await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(first.elapsed() > Duration::from_millis(1_000));
    // ...an idle one is closed after it, long before the header timeout.
    let mut idle = Conn::open(app.addr).await;
    assert_eq!(idle.get("/healthz").await.status, 200);
    let last = Instant::now();
    let (lo, hi) = (Duration::from_millis(400), Duration::from_secs(3));
    assert_closed_between(&mut idle.stream, last, lo, hi).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_problem() {
    let app = spawn_with(Settings::new().set("BOXOFFICE_HTTP_MAX_BODY_BYTES", "2048")).await;
    let big = json!({"event_id": "e1", "name": "x".repeat(4000), "queue": queue_defaults(), "schedules": []});
    // With a Content-Length: refused before the handler reads anything.
    let r = app
        .admin(Method::POST, "/v1/admin/events", Some(big.clone()))
        .await;
    r.assert_problem(413, "payload_too_large");
    assert_eq!(r.body["limit_bytes"], 2048);
    // Chunked (no declared length): refused by the JSON extractor as it reads.
    let body = big.to_string();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/admin/events HTTP/1.1\r\nhost: test\r\nx-api-key: {SERVICE_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if parse_response(&got).is_some_and(|r| !r.body.is_null()) {
                break;
            }
        }
    })
    .await;
    let r = parse_response(&got).expect("an answer");
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.body["code"], "payload_too_large");
    assert_eq!(r.body["limit_bytes"], 2048);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // Nothing was written.
    let get = app.admin(Method::GET, "/v1/admin/events/e1", None).await;
    assert_eq!(get.status, StatusCode::NOT_FOUND);
    // A body under the limit is fine.
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
}

#[tokio::test]
async fn a_request_over_the_whole_request_timeout_is_answered_as_problem() {
    let app = spawn_with(
        Settings::new()
            .set("BOXOFFICE_HTTP_REQUEST_TIMEOUT_MS", "400")
            .set("BOXOFFICE_FAILPOINT", "slow_route"),
    )
    .await;
    // The server is the slow party: 503, retry.
    let t = Instant::now();
    let r = app.get("/__failpoints/sleep/3000").await;
    assert!(
        t.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        t.elapsed()
    );
    r.assert_problem(503, "dependency_unavailable");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.body["limit_ms"], 400);
    assert_eq!(
        app.get("/__failpoints/sleep/10").await.status,
        StatusCode::OK
    );

    // The client is the slow party (body never finished): 408, and the
    // connection is closed.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/admin/events HTTP/1.1\r\nhost: test\r\nx-api-key: {SERVICE_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"event_id\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (bytes, _) = closed_within(&mut s, Duration::from_secs(3))
        .await
        .expect("answered and closed");
    let r = parse_response(&bytes).expect("an answer before the close");
    assert_eq!(r.status, 408, "{}", r.head);
    assert_eq!(r.body["code"], "request_timeout");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    let token = app.join("e1", "alice").await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for auth in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("bEaReR   {token}  "),
    ] {
        let r = app
            .send(Req {
                method: Method::GET,
                path: "/v1/queue/status",
                body: None,
                raw: None,
                headers: vec![("authorization", auth.clone())],
            })
            .await;
        assert_eq!(r.status, StatusCode::OK, "{auth:?}: {}", r.text);
    }
    let r = app
        .send(Req {
            method: Method::GET,
            path: "/v1/queue/status",
            body: None,
            raw: None,
            headers: vec![("authorization", format!("Basic {token}"))],
        })
        .await;
    r.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn padding_the_authorization_header_does_not_escape_the_token_limit() {
    // 1/s per credential, burst 2; the per-IP limit is off.
    let app = spawn_with(Settings::new().set("BOXOFFICE_RATE_PER_TOKEN", "1")).await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    let token = app.join("e1", "alice").await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let variants: Vec<String> = (0..60)
        .map(|i| {
            let scheme = ["Bearer", "bearer", "BEARER"][i % 3];
            format!(
                "{scheme}{}{token}{}",
                " ".repeat(1 + i % 7),
                " ".repeat(i % 5)
            )
        })
        .collect();
    let started = Instant::now();
    let results = join_all(variants.iter().map(|auth| {
        app.send(Req {
            method: Method::GET,
            path: "/v1/queue/status",
            body: None,
            raw: None,
            headers: vec![("authorization", auth.clone())],
        })
    }))
    .await;
    let took = started.elapsed();
    let ok = results
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let limited: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + limited.len(), 60);
    // The burst (2) plus what refills (1/s) while the 60 run.
    let allowed = 2 + took.as_secs_f64().ceil() as usize;
    assert!(
        (2..=allowed).contains(&ok),
        "{ok} of 60 got through a burst of 2 in {took:?}"
    );
    limited[0].assert_problem(429, "rate_limited");
    // Another entry has its own bucket.
    let bob = app.join("e1", "bob").await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.status(&bob).await.status, StatusCode::OK);
    // A bearer value that does not verify buys no bucket: 30 invented ones
    // are refused by the route (401), not limited, and tracked nowhere.
    let invented: Vec<String> = (0..30).map(|i| format!("junk-{i}")).collect();
    let junk = join_all(
        invented
            .iter()
            .map(|t| app.get_with_token("/v1/queue/status", t)),
    )
    .await;
    for r in &junk {
        r.assert_problem(401, "unauthorized");
    }
    assert_eq!(
        app.limits.tracked_keys().1,
        4,
        "alice's entry and bob's, and their user assertions (from the joins)"
    );
}

#[tokio::test]
async fn metrics_can_move_to_their_own_address() {
    let app = spawn_with(Settings::new().set("BOXOFFICE_METRICS_ADDR", "127.0.0.1:0")).await;
    let metrics = app.metrics_addr.expect("a metrics address");
    assert_ne!(metrics, app.addr);
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    // Not on the main address any more...
    app.get("/metrics").await.assert_problem(404, "not_found");
    // ...but on its own, and only metrics there.
    let r = app
        .client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("boxoffice_http_request_duration_seconds"),
        "{}",
        &text[..text.len().min(300)]
    );
    let r = app
        .client
        .get(format!("http://{metrics}/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// A keep-alive connection waiting for its next request is bounded by the
/// idle timeout alone: a waiting page polling less often than the
/// header-read timeout keeps its connection (with hyper's own header
/// timer it was closed between polls, and every poll reconnected).
#[tokio::test]
async fn a_keep_alive_connection_waits_for_its_next_request_until_the_idle_timeout() {
    let app = with_timeouts(1500, 400).await;
    let mut conn = Conn::open(app.addr).await;
    for _ in 0..3 {
        assert_eq!(conn.get("/healthz").await.status, 200);
        // Twice the header-read timeout between requests.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    assert_eq!(conn.get("/healthz").await.status, 200, "still open");
    let last = Instant::now();
    let (lo, hi) = (Duration::from_millis(1_300), Duration::from_secs(4));
    assert_closed_between(&mut conn.stream, last, lo, hi).await;
}

/// On a keep-alive connection, the header-read timeout starts at the next
/// head's first byte: a head that then trickles is cut, however long the
/// connection had waited before it.
#[tokio::test]
async fn a_head_begun_on_a_keep_alive_connection_must_arrive_within_the_header_timeout() {
    let app = with_timeouts(60000, 700).await;
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut conn = Conn::open(app.addr).await;
        assert_eq!(conn.get("/healthz").await.status, 200);
        conns.push(conn);
    }
    // Longer than the header-read timeout, with no head on the way.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let started = Instant::now();
    for (i, conn) in conns.iter_mut().enumerate() {
        let part: &[u8] = if i % 2 == 0 {
            b"GET /healthz HT"
        } else {
            b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: "
        };
        conn.stream.write_all(part).await.unwrap();
    }
    let (lo, hi) = (Duration::from_millis(600), Duration::from_secs(3));
    join_all(
        conns
            .iter_mut()
            .map(|c| assert_closed_between(&mut c.stream, started, lo, hi)),
    )
    .await;
}

/// An HTTP/1 client whose first bytes look like the start of the HTTP/2
/// preface (a lone `P` of `POST`) is still held to the header-read timeout
/// on every later head: what exempts a connection is the protocol its
/// requests arrive in, not how its first read begins.
#[tokio::test]
async fn an_http1_connection_that_starts_like_http2_is_still_timed_on_later_heads() {
    let app = with_timeouts(60_000, 700).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"OST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 "), "served over HTTP/1.1");
    // Longer than the header timeout with no head on the way; then a head
    // that trickles.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let started = Instant::now();
    s.write_all(b"GET /healthz HT").await.unwrap();
    let (lo, hi) = (Duration::from_millis(600), Duration::from_secs(3));
    assert_closed_between(&mut s, started, lo, hi).await;
}

/// An HTTP/2 connection (prior knowledge) is held to the header-read
/// timeout only until its first request: the frames it sends between
/// requests (here a ping every 100 ms) are not a request head, so it is
/// still served after four times the header timeout.
#[tokio::test]
async fn an_http2_connection_is_not_cut_by_the_header_timeout_between_requests() {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let app = with_timeouts(60000, 300).await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let get = || {
        hyper::Request::get(format!("http://{}/healthz", app.addr))
            .body(String::new())
            .unwrap()
    };
    for _ in 0..3 {
        let r = sender
            .send_request(get())
            .await
            .expect("served over HTTP/2");
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), hyper::Version::HTTP_2);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert!(!driver.is_finished(), "the connection is still open");
}

/// Sends raw bytes on a fresh connection; the first answer read.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("an answer within 3 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn refusals_before_a_handler_are_problems_and_hypers_own_are_bodyless() {
    let app = spawn_app().await;
    // axum's path rejection (not UTF-8) is rewritten as problem+json.
    let answer = raw_exchange(
        app.addr,
        format!("GET /v1/admin/events/%FF HTTP/1.1\r\nhost: t\r\nx-api-key: {SERVICE_KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let r = parse_response(answer.as_bytes()).unwrap();
    assert_eq!(r.status, 400, "{answer}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.body["code"], "invalid_request");
    assert_eq!(r.body["status"], 400);
    // Unknown route and method: problem+json (the fallbacks).
    app.get("/nope").await.assert_problem(404, "not_found");
    // hyper answers a head it cannot parse by itself, before any service
    // runs: status right, body empty (documented in OPERATIONS.md).
    for (request, status) in [
        (
            format!(
                "GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
                "a".repeat(100_000)
            ),
            "431",
        ),
        ("NOT HTTP\r\n\r\n".to_owned(), "400"),
    ] {
        let answer = raw_exchange(app.addr, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(
            answer.to_lowercase().contains("content-length: 0"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_stops_accepting() {
    let app = spawn_with(Settings::new().set("BOXOFFICE_FAILPOINT", "slow_route")).await;
    let addr = app.addr;
    let mut idle = Conn::open(addr).await;
    assert_eq!(idle.get("/healthz").await.status, 200);
    let mut slow = Conn::open(addr).await;
    let in_flight = tokio::spawn(async move { slow.get("/__failpoints/sleep/800").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let stopping = tokio::spawn(app.stop());
    // The idle connection is closed at once, the slow request completes.
    assert!(
        closed_within(&mut idle.stream, Duration::from_secs(2))
            .await
            .is_some(),
        "idle keep-alive connection closed on shutdown"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the request in flight finished");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("stopped soon after the last request")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// The service listens with a deep queue of connections the kernel has
/// taken but the service not yet accepted: a surge of new connections
/// that arrives while nothing is being accepted (the accept loop behind,
/// the process descheduled) waits in it, up to `net.core.somaxconn`,
/// instead of being turned away to the client's SYN retry a second or
/// more later. Tokio's own `TcpListener::bind` listens with 128, which
/// such a surge overflows (checked too, as the premise).
#[tokio::test]
async fn a_surge_of_connections_waits_in_the_accept_queue() {
    const SURGE: usize = 600;
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(128);
    // Nothing accepts: a connect completes only while the queue has room.
    let completed = |addr: SocketAddr| async move {
        let tries = (0..SURGE)
            .map(|_| tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)));
        let open: Vec<TcpStream> = join_all(tries)
            .await
            .into_iter()
            .filter_map(|r| r.ok().and_then(Result::ok))
            .collect();
        open.len()
    };

    let ours = boxoffice::server::listen("127.0.0.1:0".parse().unwrap(), 4_096).unwrap();
    let n = completed(ours.local_addr().unwrap()).await;
    assert!(
        n >= SURGE.min(somaxconn),
        "{n} of {SURGE} connections completed (somaxconn {somaxconn})"
    );
    let default = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let n = completed(default.local_addr().unwrap()).await;
    assert!(n < SURGE, "the premise: 128 overflows ({n} completed)");

    // And the service listens so (its backlog as `ss` shows it: Send-Q of
    // a listening socket).
    let app = spawn_app().await;
    let port = app.base.rsplit(':').next().unwrap();
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) lists the listening sockets");
    let listing = String::from_utf8_lossy(&out.stdout);
    let backlog: usize = listing
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listening socket on {port}: {listing:?}"));
    assert_eq!(backlog, 4_096.min(somaxconn), "{listing}");
}
