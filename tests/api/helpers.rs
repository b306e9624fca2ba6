//! Test harness: spawn the app, talk to it, break its dependencies.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use boxoffice::{app::Application, config::Config};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::OnceCell,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

pub const SERVICE_KEY: &str = "test-service-key";
/// The HS256 secret the platform's login shares with the service in tests.
pub const USER_JWT_SECRET: &str = "test-user-jwt-secret-0123456789abcdef";

/// A user assertion for `user`, valid for an hour, as the platform's login
/// would issue it.
pub fn user_token(user: &str) -> String {
    boxoffice::auth::mint_with_secret(
        USER_JWT_SECRET,
        &boxoffice::ids::UserId::parse(user).expect("valid test user id"),
        Duration::from_secs(3600),
    )
    .expect("mints")
}

fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `postgres://.../<db>` with the database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let cut = base
        .rfind('/')
        .filter(|&i| i > "postgres://".len())
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..cut])
}

/// Drops test databases older than an hour (left by earlier runs).
async fn clean_old_databases() {
    let Ok(mut conn) =
        PgConnection::connect(&with_database(&base_database_url(), "postgres")).await
    else {
        return;
    };
    let cutoff = chrono::Utc::now().timestamp() - 3600;
    let names: Vec<String> =
        sqlx::query_scalar("select datname from pg_database where datname like 'bx_test_%'")
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
    for name in names {
        let ts = name
            .split('_')
            .nth(2)
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(i64::MAX);
        if ts < cutoff {
            let _ = conn
                .execute(sqlx::AssertSqlSafe(format!(
                    r#"drop database if exists "{name}" with (force)"#
                )))
                .await;
        }
    }
}

/// The Redis key prefix of one test instance: `t-<unix seconds>-<uuid>:`.
/// The time tells a later run that the keys are old
/// ([`clean_old_redis_keys`]).
fn test_prefix() -> String {
    format!(
        "t-{}-{}:",
        chrono::Utc::now().timestamp(),
        uuid::Uuid::new_v4().simple()
    )
}

/// When a key of this suite was made, read from its prefix:
/// `Some(Some(seconds))` for `t-<unix seconds>-<32 hex>:…`, `Some(None)`
/// for the earlier shape without the time, `t-<32 hex>:…`, and `None` for
/// anything else, which is not this suite's.
///
/// A key with a space, quote or backslash is never counted: the clean-up
/// sends keys to `redis-cli` one command a line, and such a key would be
/// read as something else.
fn test_key_made(key: &str) -> Option<Option<i64>> {
    if key.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\')) {
        return None;
    }
    let (head, _) = key.strip_prefix("t-")?.split_once(':')?;
    let uuid = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match head.split_once('-') {
        None if uuid(head) => Some(None),
        Some((secs, id)) if uuid(id) && secs.bytes().all(|b| b.is_ascii_digit()) => {
            Some(Some(secs.parse().ok()?))
        }
        _ => None,
    }
}

/// Removes what earlier runs of this suite left in the shared Redis, as
/// [`clean_old_databases`] does with their databases: the keys under a
/// test prefix made more than an hour ago. An instance does not delete its
/// keys when it stops (a sibling, or the same instance restarted, goes on
/// with them), so every run leaves its keys until a later run clears them.
/// A key of the earlier prefix shape, which carries no time, goes once
/// Redis has seen it unused for an hour (`OBJECT IDLETIME`; a string
/// holding a small integer is a value Redis shares, idle since the server
/// started, so such a key goes an hour after that). Only keys of
/// these two shapes are touched: the shared Redis holds others' keys too.
async fn clean_old_redis_keys() {
    let server = ["-u", &redis_url()].map(str::to_owned);
    let Some(listed) = redis_cli_lines(&server, &["--scan", "--pattern", "t-*"], None).await else {
        return;
    };
    let cutoff = chrono::Utc::now().timestamp() - 3600;
    let (mut old, mut undated) = (Vec::new(), Vec::new());
    for key in listed {
        match test_key_made(&key) {
            Some(Some(made)) if made < cutoff => old.push(key),
            Some(None) => undated.push(key),
            _ => {}
        }
    }
    if !undated.is_empty() {
        let asks: String = undated
            .iter()
            .map(|k| format!("OBJECT IDLETIME {k}\n"))
            .collect();
        if let Some(idle) = redis_cli_lines(&server, &[], Some(asks)).await {
            let idle_long = |s: &String| s.parse::<i64>().is_ok_and(|s| s > 3600);
            old.extend(
                undated
                    .into_iter()
                    .zip(idle)
                    .filter_map(|(k, s)| idle_long(&s).then_some(k)),
            );
        }
    }
    for keys in old.chunks(500) {
        let unlink = format!("UNLINK {}\n", keys.join(" "));
        redis_cli_lines(&server, &[], Some(unlink)).await;
    }
}

#[test]
fn test_keys_are_told_by_their_prefix() {
    let id = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        test_key_made(&format!("t-1796140000-{id}:{{ev:e1}}:q:wait")),
        Some(Some(1_796_140_000))
    );
    assert_eq!(test_key_made(&format!("t-{id}:ready")), Some(None));
    assert_eq!(
        test_key_made(&test_prefix()).map(|t| t.is_some()),
        Some(true)
    );
    for other in [
        format!("t-{id}"),
        format!("t-1796140000-{id}"),
        format!("t-1796140000-{}:x", &id[1..]),
        format!("t-17x6-{id}:x"),
        format!("t--{id}:x"),
        format!("t-1796140000-{id}:a b"),
        format!("t-{id}:\"x\""),
        format!("bench-1796140000:{id}:x"),
        "t-mine:x".to_owned(),
    ] {
        assert_eq!(test_key_made(&other), None, "{other}");
    }
}

/// On the shared Redis: an hour-old test key goes; a fresh one, one of the
/// earlier shape that was just used, and a key of another shape stay.
#[tokio::test]
async fn old_test_keys_are_cleaned_and_nothing_else() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = chrono::Utc::now().timestamp();
    let old = format!("t-{}-{id}:x", now - 7200);
    let kept = [
        format!("t-{now}-{id}:x"),
        format!("t-{id}:x"),
        format!("t-other-{id}:x"),
    ];
    for key in std::iter::once(&old).chain(&kept) {
        // Not a small integer: Redis shares those, and a shared value's
        // idle time is the server's, not the key's.
        redis_cli(&["set", key, "kept"]).await;
    }
    clean_old_redis_keys().await;
    assert_eq!(redis_cli(&["exists", &old]).await.trim(), "0");
    for key in &kept {
        assert_eq!(redis_cli(&["exists", key]).await.trim(), "1", "{key}");
    }
    redis_cli(&[&["del"][..], &kept.each_ref().map(String::as_str)].concat()).await;
}

/// `redis-cli` with `args`, and `input` (commands, one a line) on its
/// standard input; its output's lines, or `None` when it could not run or
/// failed. Best effort: for housekeeping, never for what a test asserts.
async fn redis_cli_lines(
    server: &[String],
    args: &[&str],
    input: Option<String>,
) -> Option<Vec<String>> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("redis-cli")
        .args(server)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    stdin
        .write_all(input.unwrap_or_default().as_bytes())
        .await
        .ok()?;
    drop(stdin);
    let out = child.wait_with_output().await.ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    })
}

/// Creates an empty database for one test.
pub async fn create_database() -> String {
    static CLEANED: OnceCell<()> = OnceCell::const_new();
    CLEANED
        .get_or_init(|| async {
            clean_old_databases().await;
            clean_old_redis_keys().await;
        })
        .await;
    let name = format!(
        "bx_test_{}_{}",
        chrono::Utc::now().timestamp(),
        uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap()
    );
    let mut conn = PgConnection::connect(&with_database(&base_database_url(), "postgres"))
        .await
        .expect("PostgreSQL answers at DATABASE_URL (run `make test`, which starts it)");
    conn.execute(sqlx::AssertSqlSafe(format!(r#"create database "{name}""#)))
        .await
        .expect("create test database");
    with_database(&base_database_url(), &name)
}

/// What a test may change about the app's configuration.
#[derive(Clone)]
pub struct Settings {
    pub env: HashMap<String, String>,
}

impl Settings {
    pub fn new() -> Self {
        let mut env = HashMap::new();
        for (k, v) in [
            ("BOXOFFICE_ADDR", "127.0.0.1:0"),
            ("BOXOFFICE_SERVICE_KEY", SERVICE_KEY),
            ("BOXOFFICE_TOKEN_SECRET", "test-token-secret-0123456789"),
            ("BOXOFFICE_USER_JWT_SECRET", USER_JWT_SECRET),
            ("BOXOFFICE_RATE_PER_IP", "0"),
            ("BOXOFFICE_RATE_PER_TOKEN", "0"),
            ("BOXOFFICE_TICK_MS", "50"),
            ("BOXOFFICE_RECONCILE_MS", "300"),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
        env.insert("REDIS_URL".into(), redis_url());
        env.insert("BOXOFFICE_REDIS_PREFIX".into(), test_prefix());
        Self { env }
    }

    pub fn set(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_owned(), v.to_owned());
        self
    }

    /// Background loops off: proves correctness does not depend on them.
    pub fn without_background(self) -> Self {
        self.set("BOXOFFICE_BACKGROUND", "off")
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `BOXOFFICE_METRICS_ADDR` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub base: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub state: boxoffice::state::AppState,
    /// The HTTP rate limiters of this instance.
    pub limits: std::sync::Arc<boxoffice::http::limit::RateLimits>,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_with(Settings::new()).await
}

pub async fn spawn_with(mut settings: Settings) -> TestApp {
    if !settings.env.contains_key("DATABASE_URL") {
        let db = create_database().await;
        settings.env.insert("DATABASE_URL".into(), db);
    }
    start(settings).await
}

/// Another instance sharing this one's database and Redis prefix.
pub async fn spawn_sibling(of: &TestApp) -> TestApp {
    start(of.settings.clone()).await
}

async fn start(settings: Settings) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        boxoffice::telemetry::init_logging(boxoffice::config::LogFormat::Pretty);
    }
    let config = Config::from_map(&settings.env).expect("test config is valid");
    let app = Application::build(config).await.expect("app builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let state = app.state().clone();
    let limits = app.limits().clone();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run(stop.clone()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    TestApp {
        addr,
        metrics_addr,
        base: format!("http://{addr}"),
        client,
        settings,
        state,
        limits,
        stop,
        handle: Some(handle),
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The `Idempotent-Replayed` header: `Some("true")` on a replay of an
    /// `Idempotency-Key`'s stored answer, absent on every first answer.
    pub fn replayed(&self) -> Option<&str> {
        self.headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap_or("(not text)"))
    }
    /// Asserts a problem+json with the given status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "body: {}",
            self.text
        );
        assert_eq!(self.code(), code, "body: {}", self.text);
        for field in ["type", "title", "status", "detail", "code"] {
            assert!(
                self.body.get(field).is_some(),
                "problem lacks {field}: {}",
                self.text
            );
        }
        assert_eq!(
            self.body["status"], status,
            "the body's status is the answer's: {}",
            self.text
        );
    }
}

/// One request's parts.
pub struct Req<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Option<Value>,
    pub raw: Option<(&'a str, &'a str)>,
    pub headers: Vec<(&'a str, String)>,
}

impl TestApp {
    pub async fn send(&self, r: Req<'_>) -> Resp {
        let mut b = self
            .client
            .request(r.method, format!("{}{}", self.base, r.path));
        for (k, v) in r.headers {
            b = b.header(k, v);
        }
        if let Some(body) = r.body {
            b = b.json(&body);
        }
        if let Some((ct, raw)) = r.raw {
            b = b.header("content-type", ct).body(raw.to_owned());
        }
        let resp = b.send().await.expect("request reaches the app");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Req {
            method: Method::GET,
            path,
            body: None,
            raw: None,
            headers: vec![],
        })
        .await
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> Resp {
        self.send(Req {
            method: Method::GET,
            path,
            body: None,
            raw: None,
            headers: vec![("authorization", format!("Bearer {token}"))],
        })
        .await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.send(Req {
            method,
            path,
            body,
            raw: None,
            headers: vec![("x-api-key", SERVICE_KEY.into())],
        })
        .await
    }

    /// Creates an event; `queue` and `schedules` override the defaults.
    pub async fn create_event(&self, event_id: &str, queue: Value, schedules: Value) -> Resp {
        self.admin(
            Method::POST,
            "/v1/admin/events",
            Some(json!({"event_id": event_id, "name": format!("Event {event_id}"), "queue": queue, "schedules": schedules})),
        )
        .await
    }

    /// An event with one schedule `d1` of `seats` seats in rows of 10.
    pub async fn simple_event(
        &self,
        event_id: &str,
        queue: Value,
        seats: u32,
        hold_seconds: u32,
        max_per_user: u32,
    ) {
        let r = self
            .create_event(
                event_id,
                queue,
                json!([{"schedule_id": "d1", "starts_at": "2026-12-24T20:00:00Z", "seats": seats,
                        "row_size": 10, "price": "1000", "hold_seconds": hold_seconds, "max_per_user": max_per_user}]),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }

    /// Joins as `user` with the user's own assertion (no body).
    pub async fn join(&self, event_id: &str, user: &str) -> Resp {
        self.send(Req {
            method: Method::POST,
            path: &format!("/v1/events/{event_id}/queue"),
            body: None,
            raw: None,
            headers: vec![("authorization", format!("Bearer {}", user_token(user)))],
        })
        .await
    }

    /// Joins on `user`'s behalf with the service key, as the platform's
    /// backend does.
    pub async fn join_for(&self, event_id: &str, user: &str) -> Resp {
        self.send(Req {
            method: Method::POST,
            path: &format!("/v1/events/{event_id}/queue"),
            body: Some(json!({ "user_id": user })),
            raw: None,
            headers: vec![("x-api-key", SERVICE_KEY.into())],
        })
        .await
    }

    /// A GET with `user`'s own assertion.
    pub async fn get_as(&self, path: &str, user: &str) -> Resp {
        self.get_with_token(path, &user_token(user)).await
    }

    pub async fn status(&self, token: &str) -> Resp {
        self.get_with_token("/v1/queue/status", token).await
    }

    /// `DELETE /v1/holds/{hold}` with a queue token.
    pub async fn release_hold(&self, token: &str, hold: &str) -> Resp {
        self.send(Req {
            method: Method::DELETE,
            path: &format!("/v1/holds/{hold}"),
            body: None,
            raw: None,
            headers: vec![("authorization", format!("Bearer {token}"))],
        })
        .await
    }

    pub async fn leave(&self, token: &str) -> Resp {
        self.send(Req {
            method: Method::DELETE,
            path: "/v1/queue",
            body: None,
            raw: None,
            headers: vec![("authorization", format!("Bearer {token}"))],
        })
        .await
    }

    pub async fn post_with_token(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send(Req {
            method: Method::POST,
            path,
            body: Some(body),
            raw: None,
            headers: vec![("authorization", format!("Bearer {token}"))],
        })
        .await
    }

    pub async fn hold(&self, token: &str, body: Value) -> Resp {
        self.post_with_token("/v1/holds", token, body).await
    }

    pub async fn patch_queue(&self, event_id: &str, patch: Value) -> Resp {
        self.admin(
            Method::PATCH,
            &format!("/v1/admin/events/{event_id}/queue"),
            Some(patch),
        )
        .await
    }

    /// Joins and waits until admitted; returns the token.
    pub async fn admitted_token(&self, event_id: &str, user: &str) -> String {
        let r = self.join(event_id, user).await;
        assert!(r.status.is_success(), "{}", r.text);
        let token = r.body["token"].as_str().unwrap().to_owned();
        if r.body["status"] == "admitted" {
            return token;
        }
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.status(&token).await.body["status"] == "admitted" {
                return token;
            }
        }
        panic!("{user} was not admitted within 10 s");
    }

    /// Stops the app (graceful shutdown) and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A TCP proxy that can be cut and restored, to simulate a dependency
/// going away and coming back without touching the shared servers.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, cs) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            cut,
            conns,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// host:port of a redis:// or postgres:// URL.
pub async fn resolve(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap();
    let hostport = rest
        .rsplit('@')
        .next()
        .unwrap()
        .split(['/', '?'])
        .next()
        .unwrap();
    tokio::net::lookup_host(hostport)
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// Replaces host:port of a URL with `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (creds, after) = match rest.rsplit_once('@') {
        Some((c, a)) => (format!("{c}@"), a),
        None => (String::new(), rest),
    };
    let tail = after.find(['/', '?']).map_or("", |i| &after[i..]);
    format!("{scheme}://{creds}{addr}{tail}")
}

/// Polls `f` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A queue that admits everyone at once and keeps them admitted: for
/// tests about what admitted buyers do.
pub fn open_queue() -> Value {
    json!({"admit_per_second": 100000, "max_active": 100000, "active_ttl_seconds": 600, "idle_timeout_seconds": 600})
}

pub fn queue_defaults() -> Value {
    json!({"admit_per_second": 1000, "max_active": 10000, "active_ttl_seconds": 600, "idle_timeout_seconds": 60})
}

/// A redis-server of our own on a free port, for tests that must do
/// server-wide things (SCRIPT FLUSH, shutdown) without touching the shared one.
pub struct PrivateRedis {
    pub port: u16,
    child: tokio::process::Child,
}

impl PrivateRedis {
    pub async fn start() -> Option<Self> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            l.local_addr().ok()?.port()
        };
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let me = Self { port, child };
        let ok = eventually(Duration::from_secs(5), || async {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        ok.then_some(me)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn cli(&self, args: &[&str]) -> String {
        run_redis_cli(&["-p", &self.port.to_string()], args).await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `redis-cli` against the shared Redis (REDIS_URL); its output.
pub async fn redis_cli(args: &[&str]) -> String {
    run_redis_cli(&["-u", &redis_url()], args).await
}

async fn run_redis_cli(server: &[&str], args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(server)
        .args(args)
        .output()
        .await
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `boxoffice audit` (the real binary) against this app's stores;
/// its exit code and stdout.
pub async fn run_audit_binary(app: &TestApp) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
        .arg("audit")
        .envs(&app.settings.env)
        .output()
        .await
        .expect("boxoffice audit runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{stdout}{}",
            if stderr.is_empty() {
                String::new()
            } else {
                format!("\nstderr: {stderr}")
            }
        ),
    )
}

impl TestApp {
    /// Redis keys of `event`, built by the service's own key builder.
    pub fn event_keys(&self, event: &str) -> boxoffice::store::keys::EventKeys {
        let e = boxoffice::ids::EventId::parse(event).unwrap();
        self.state.redis.keys().event(&e)
    }

    /// Runs the script-invariant checker (`lua/check_schedule.lua`: the
    /// invariants at the top of `lua/lib/schedule.lua`) on every schedule
    /// of every event and fails the test on any violation. Called at the
    /// end of the hold and payment tests.
    pub async fn assert_script_invariants(&self) {
        let events = boxoffice::catalog::pg::all(&self.state.pg)
            .await
            .expect("catalog reads");
        let mut checked = 0;
        for ev in &events {
            for s in &ev.schedules {
                let c = boxoffice::holds::check::check_schedule(
                    &self.state.redis,
                    &ev.event_id,
                    &s.schedule_id,
                )
                .await
                .unwrap_or_else(|e| panic!("{}/{}: {e}", ev.event_id, s.schedule_id));
                assert!(
                    c.violations.is_empty(),
                    "{}/{}: script invariants broken: {:?}",
                    ev.event_id,
                    s.schedule_id,
                    c.violations
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "no schedule to check");
    }

    /// The whole audit (`boxoffice::audit::run`) finds nothing.
    pub async fn assert_audit_clean(&self) {
        let a = boxoffice::audit::run(&self.state.pg, &self.state.redis)
            .await
            .expect("the audit runs");
        assert!(a.violations.is_empty(), "audit: {:?}", a.violations);
    }
}

/// A TCP proxy that can *stall* a dependency (connections stay open and
/// accepted, but no byte is forwarded either way: a hung server, a
/// blackholed network) as well as cut it, and restore it. On restore the
/// held bytes flow again, as after a network partition heals.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// 0 = forwarding, 1 = stalled, 2 = cut.
    mode: Arc<std::sync::atomic::AtomicU8>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    held: Arc<HeldBack>,
    accept: JoinHandle<()>,
}

/// One chunk towards the server held back ([`FaultProxy::hold_back`]).
#[derive(Default)]
struct HeldBack {
    /// What the next chunk to hold contains; None when not armed.
    pattern: std::sync::Mutex<Option<Vec<u8>>>,
    holding: std::sync::atomic::AtomicBool,
    released: std::sync::atomic::AtomicBool,
}

impl HeldBack {
    /// Whether `chunk` is the one to hold (the first to contain the
    /// pattern once armed).
    fn catches(&self, chunk: &[u8]) -> bool {
        let mut pattern = self.pattern.lock().unwrap();
        let caught = pattern
            .as_ref()
            .is_some_and(|p| chunk.windows(p.len()).any(|w| w == p.as_slice()));
        if caught {
            *pattern = None;
            self.holding.store(true, Ordering::SeqCst);
        }
        caught
    }
}

const FORWARD: u8 = 0;
const STALL: u8 = 1;
const CUT: u8 = 2;

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::AtomicU8;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let held = Arc::new(HeldBack::default());
        let (m, cs, h) = (mode.clone(), conns.clone(), held.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if m.load(Ordering::SeqCst) == CUT {
                    drop(inbound);
                    continue;
                }
                let (m, h) = (m.clone(), h.clone());
                let task = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        _ = pump(ri, wo, m.clone(), Some(h)) => {}
                        _ = pump(ro, wi, m, None) => {}
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            mode,
            conns,
            held,
            accept,
        }
    }

    /// Every connection, open or new, stops forwarding; nothing is closed.
    pub fn stall(&self) {
        self.mode.store(STALL, Ordering::SeqCst);
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.mode.store(FORWARD, Ordering::SeqCst);
    }

    /// Holds back the next chunk sent towards the server that contains
    /// `pattern`, and everything after it on its connection, until
    /// [`Self::release`]; every other connection goes on forwarding: a
    /// call delayed on its way (a TCP segment retransmitted late) while
    /// the client's other calls get through.
    pub fn hold_back(&self, pattern: &[u8]) {
        *self.held.pattern.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Whether a chunk is being held back.
    pub fn holding(&self) -> bool {
        self.held.holding.load(Ordering::SeqCst) && !self.held.released.load(Ordering::SeqCst)
    }

    /// Lets the held-back chunk go on, and its connection with it.
    pub fn release(&self) {
        self.held.released.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is stalled,
/// and (towards the server, `held`) the chunk held back until released.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<std::sync::atomic::AtomicU8>,
    held: Option<Arc<HeldBack>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Stalled: do not even read, so the sender's buffers fill up too.
        while mode.load(Ordering::SeqCst) == STALL {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(held) = held.as_ref().filter(|h| h.catches(&buf[..n])) {
            while !held.released.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        while mode.load(Ordering::SeqCst) == STALL {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if mode.load(Ordering::SeqCst) == CUT || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The `boxoffice` binary (built with the `failpoints` feature for the
/// tests) serving in a process of its own, so a test can kill it for real.
pub struct ProcessInstance {
    pub base: String,
    child: tokio::process::Child,
    reached: tokio::sync::watch::Receiver<Vec<String>>,
}

impl ProcessInstance {
    /// Starts `boxoffice serve` with `settings` and waits until it answers.
    pub async fn start(settings: &Settings) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
            .arg("serve")
            .envs(&settings.env)
            .env("BOXOFFICE_ADDR", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the boxoffice binary starts");
        let (tx, reached) = tokio::sync::watch::channel(Vec::new());
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(name) = line.strip_prefix("boxoffice: failpoint ") {
                    let name = name.trim_end_matches(" reached").to_owned();
                    tx.send_modify(|v| v.push(name));
                } else {
                    eprintln!("[boxoffice process] {line}");
                }
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let up = eventually(Duration::from_secs(20), || async {
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "the boxoffice process answers on {base}");
        Self {
            base,
            child,
            reached,
        }
    }

    /// Waits until the process reports it stopped at failpoint `name`.
    pub async fn wait_for_failpoint(&mut self, name: &str) {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            self.reached.wait_for(|v| v.iter().any(|n| n == name)),
        )
        .await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "failpoint {name} never reached (is the binary built with the failpoints feature?)"
        );
    }

    /// SIGTERM, as an orchestrator stops an instance; waits (20 s at most)
    /// until the process has exited, and returns how.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the process is running");
        let pid = i32::try_from(pid).expect("a pid fits in pid_t");
        // SAFETY: kill(2) has no memory effects; the pid is our own child,
        // not yet waited for, so it is not reused.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the process exits within 20 s of SIGTERM")
            .expect("the process ends")
    }

    /// SIGKILL: no clean-up, no graceful shutdown; waits until it is dead.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let status = self.child.wait().await.expect("the process ends");
        assert!(!status.success(), "killed, not exited: {status}");
    }
}

/// A tool a test needs is missing: under CI (the `CI` variable set, as
/// `.ci/run` and every CI service do) the test fails; elsewhere it says
/// SKIP on stderr and the caller returns.
#[track_caller]
pub fn missing_tool(tool: &str, hint: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(!ci, "{tool} is missing and CI is set: {hint}");
    eprintln!("SKIP: {tool} is missing ({hint})");
}

impl TestApp {
    /// Waits until every event of PostgreSQL is ready in Redis and one more
    /// reconcile round has passed: a restore (of an event it found without
    /// its ready mark) loads a catalog snapshot read before it writes, so an
    /// admin change made in between would be overwritten in Redis by the
    /// older settings. A test that changes settings right after creating an
    /// event waits for this first.
    pub async fn wait_for_startup_restore(&self) {
        let done = eventually(Duration::from_secs(10), || async {
            let Ok(events) = boxoffice::catalog::pg::all(&self.state.pg).await else {
                return false;
            };
            for ev in &events {
                let ready = self.state.redis.keys().event(&ev.event_id).ready();
                if !self.state.redis.exists(&ready).await.unwrap_or(false) {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(done, "the events were not ready in Redis");
        tokio::time::sleep(self.state.config.reconcile_interval).await;
    }
}

/// One sample of `/metrics` (`name` with its labels, as printed), 0 when
/// absent. The recorder is the process's: other tests add to it too.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    sample(&app.get("/metrics").await.text, name)
}

/// One sample of a `/metrics` text, 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    let name = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name)?.parse().ok())
        .unwrap_or(0.0)
}

/// `boxoffice_script_batch`'s sum (requests) and count (calls) for one
/// script: 0 before its first batch.
pub async fn batch_figures(app: &TestApp, script: &str) -> (f64, f64) {
    // Both from one scrape: other tests' batches land between two.
    let text = app.get("/metrics").await.text;
    let figure = |part: &str| {
        sample(
            &text,
            &format!(r#"boxoffice_script_batch_{part}{{script="{script}"}}"#),
        )
    };
    (figure("sum"), figure("count"))
}

/// Runs `requests` (`n` of them, at once) and checks they went through
/// `script`'s batches in fewer calls than requests. Other tests in this
/// process make these calls too: the figures only grow, and a call per
/// request would make them grow alike.
pub async fn coalesced<T>(
    app: &TestApp,
    script: &str,
    n: usize,
    requests: impl std::future::Future<Output = T>,
) -> T {
    let before = batch_figures(app, script).await;
    let out = requests.await;
    let after = batch_figures(app, script).await;
    let (sum, count) = (after.0 - before.0, after.1 - before.1);
    assert!(
        sum >= n as f64,
        "every request went through a {script} batch: {sum}"
    );
    assert!(
        count < sum,
        "{n} concurrent requests took {count} {script} calls for {sum}: none coalesced"
    );
    out
}

/// An RFC 3339 time `ms` milliseconds from now (negative: in the past).
/// Sends a request from a client of its own that gives up after `after`,
/// closing its connection (as a browser or a gateway's timeout does), and
/// asserts that it gave up before any answer came.
pub async fn give_up_after(
    after: Duration,
    request: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
) {
    let impatient = reqwest::Client::builder().timeout(after).build().unwrap();
    let r = request(&impatient).send().await;
    assert!(
        r.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client gave up: {r:?}"
    );
}

/// Retries a keyed request while it is answered `409
/// request_in_progress`, for 5 s at most; asserts that its last answer is
/// a 201 and returns it.
pub async fn retry_while_in_progress<F, Fut>(mut retry: F) -> Resp
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let start = std::time::Instant::now();
    let r = loop {
        let r = retry().await;
        if r.code() != "request_in_progress" || start.elapsed() > Duration::from_secs(5) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r.status, StatusCode::CREATED, "retry: {}", r.text);
    eprintln!("the retry got a 201 after {:?}", start.elapsed());
    r
}

impl TestApp {
    /// Whether `/readyz` answers 200 within `within` (polled).
    pub async fn ready_within(&self, within: Duration) -> bool {
        eventually(within, || async {
            self.get("/readyz").await.status == StatusCode::OK
        })
        .await
    }
}

pub fn rfc3339_in(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An event whose pre-queue is open now and whose draw is `opens_in_ms` away.
pub async fn prequeue_event(app: &TestApp, id: &str, queue: Value, opens_in_ms: i64) {
    let r = app
        .admin(
            Method::POST,
            "/v1/admin/events",
            Some(json!({"event_id": id, "name": id, "queue": queue,
                "schedules": [{"schedule_id": "d1", "starts_at": "2026-12-24T20:00:00Z", "seats": 10,
                               "row_size": 10, "price": "1000", "hold_seconds": 60, "max_per_user": 4}],
                "sale": {"prequeue_opens_at": rfc3339_in(-1_000), "opens_at": rfc3339_in(opens_in_ms)}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

/// An instance on `settings` without background loops (so no relay runs
/// by itself), `n` messages waiting in its outbox (their ids), and its
/// stores for calling the relay by hand; its event stream restored (as the
/// reconciler would), so the relay may publish.
pub async fn outbox_backlog(
    settings: Settings,
    n: i64,
) -> (TestApp, boxoffice::store::Stores, Vec<i64>) {
    let app = spawn_with(settings.without_background()).await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "insert into outbox (topic, user_id, payload)
         select 'test.backlog', 'u' || g, jsonb_build_object('n', g) from generate_series(1, $1) g
         returning id",
    )
    .bind(n)
    .fetch_all(app.state.pg.pool())
    .await
    .unwrap();
    let stores = boxoffice::store::Stores {
        redis: app.state.redis.clone(),
        pg: app.state.pg.clone(),
    };
    // This Redis never had the stream: the relay sends nothing until the
    // stream's restore has run (nothing was relayed, so nothing is pending
    // again), which runs once.
    let relay = || boxoffice::payments::relay::publish_batch(&stores);
    assert_eq!(relay().await.unwrap(), 0);
    assert_eq!(outbox_stream_ids(&app).await, Vec::<i64>::new());
    let jobs = app.state.jobs();
    let restore = || boxoffice::payments::relay::restore_stream(&jobs);
    assert_eq!(restore().await.unwrap(), Some(0));
    assert_eq!(restore().await.unwrap(), None, "restored once");
    (app, stores, ids)
}

/// Outbox rows waiting to be relayed, and rows marked relayed.
pub async fn outbox_rows(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "select count(*) filter (where published_at is null),
                count(*) filter (where published_at is not null) from outbox",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The `outbox_id` of every message in the app's event stream (on the app's
/// own Redis), in stream order.
pub async fn outbox_stream_ids(app: &TestApp) -> Vec<i64> {
    let stream = app.state.redis.keys().outbox_stream();
    let server = &app.settings.env["REDIS_URL"];
    outbox_ids_in(&run_redis_cli(&["-u", server], &["XRANGE", &stream, "-", "+"]).await)
}

/// The `outbox_id` of every message in an `XRANGE` of the event stream
/// (as `redis-cli` prints it), in stream order.
pub fn outbox_ids_in(xrange: &str) -> Vec<i64> {
    xrange
        .lines()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "outbox_id")
        .map(|w| w[1].parse().unwrap())
        .collect()
}
