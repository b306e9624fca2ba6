//! What every scenario shares: the run's context (set up once, read by all
//! Goose users), unique ids, and one request helper.

use std::{
    path::PathBuf,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use goose::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Ceiling,
    Join,
    Status,
    Holds,
    HotSeat,
    Payment,
    Pay,
    FlashSale,
    PollStorm,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ceiling" => Self::Ceiling,
            "join" => Self::Join,
            "status" => Self::Status,
            "holds" => Self::Holds,
            "hot-seat" => Self::HotSeat,
            "payment" => Self::Payment,
            "pay" => Self::Pay,
            "flash-sale" => Self::FlashSale,
            "poll-storm" => Self::PollStorm,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ceiling => "ceiling",
            Self::Join => "join",
            Self::Status => "status",
            Self::Holds => "holds",
            Self::HotSeat => "hot-seat",
            Self::Payment => "payment",
            Self::Pay => "pay",
            Self::FlashSale => "flash-sale",
            Self::PollStorm => "poll-storm",
        }
    }

    pub fn default_host(self) -> &'static str {
        match self {
            Self::Ceiling => "http://127.0.0.1:18081",
            _ => "http://127.0.0.1:18080",
        }
    }
}

/// Everything set up before the Goose users start.
#[derive(Debug)]
pub struct Ctx {
    pub scenario: Scenario,
    pub host: String,
    /// Unique per run: prefixes event and user ids.
    pub run: String,
    pub service_key: String,
    /// The HS256 secret the platform's login signs user assertions with
    /// (the buyers join with their own assertion, as browsers would).
    pub user_jwt_secret: String,
    pub event: String,
    pub schedules: Vec<String>,
    /// Price of one seat, as the API writes it.
    pub price: u64,
    /// Seats of each schedule.
    pub seats: u64,
    /// poll-storm: signed tokens of entries deep in the queue.
    pub tokens: Vec<String>,
    /// flash-sale: buyers expected (Goose users).
    pub buyers: u64,
    /// flash-sale: where admitted buyers shop (schedules, seat map, holds,
    /// wallet, payments) when that is not `host` (LOADTEST_SHOP_HOST: a
    /// second lane of instances; the waiting room stays on `host`).
    pub shop_host: Option<String>,
}

impl Ctx {
    pub fn new(scenario: Scenario, host: &str, service: &boxoffice::config::Config) -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let short = match scenario {
            Scenario::Ceiling => "ce",
            Scenario::Join => "jn",
            Scenario::Status => "st",
            Scenario::Holds => "ho",
            Scenario::HotSeat => "hs",
            Scenario::Payment => "pa",
            Scenario::Pay => "py",
            Scenario::FlashSale => "fs",
            Scenario::PollStorm => "ps",
        };
        let run = format!("lt{short}{ms}");
        Self {
            scenario,
            host: host.trim_end_matches('/').to_owned(),
            event: run.clone(),
            run,
            service_key: service.service_key.expose().to_owned(),
            user_jwt_secret: service
                .user_jwt
                .secret
                .as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
            schedules: Vec::new(),
            price: 1000,
            seats: 0,
            tokens: Vec::new(),
            buyers: 0,
            shop_host: std::env::var("LOADTEST_SHOP_HOST")
                .ok()
                .map(|h| h.trim().trim_end_matches('/').to_owned())
                .filter(|h| !h.is_empty()),
        }
    }
}

static CTX: OnceLock<Ctx> = OnceLock::new();

pub fn install(ctx: Ctx) {
    CTX.set(ctx).expect("context installed once");
}

pub fn ctx() -> &'static Ctx {
    CTX.get().expect("context installed before the users start")
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A user id never used before in this run.
pub fn fresh_user(kind: &str) -> String {
    format!(
        "{}-{kind}{}",
        ctx().run,
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn report_dir() -> PathBuf {
    std::env::var_os("LOADTEST_REPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/reports")))
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Credentials of one request.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    /// A bearer token and the request's `Idempotency-Key` (the same on a
    /// retry of the same request).
    BearerKeyed(&'a str, &'a str),
    ServiceKey,
}

/// Status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The body as received; parsed into [`Reply::body`] on first use only
    /// (the client shares the service's cores, so it parses no more than
    /// it reads).
    pub raw: bytes::Bytes,
    parsed: std::sync::OnceLock<Value>,
    /// `Retry-After` (seconds) of a 429 or 503, in ms.
    pub retry_after_ms: Option<u64>,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn body(&self) -> &Value {
        self.parsed
            .get_or_init(|| serde_json::from_slice(&self.raw).unwrap_or(Value::Null))
    }
    pub fn str(&self, field: &str) -> Option<&str> {
        self.body().get(field).and_then(Value::as_str)
    }
    pub fn u64(&self, field: &str) -> Option<u64> {
        self.body().get(field).and_then(Value::as_u64)
    }
}

pub fn fail(msg: impl Into<String>) -> Box<TransactionError> {
    Box::new(TransactionError::Custom(msg.into()))
}

/// Sends one request through Goose (so it is measured under `name`) and
/// reads the whole body. `expected` lists the statuses that count as a
/// success: a non-2xx listed there is marked as a success, a 2xx not listed
/// as a failure, so Goose's failure column means "not what the scenario
/// expects".
pub async fn call(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &str,
    auth: Auth<'_>,
    body: Option<&Value>,
    expected: &[u16],
) -> Result<Reply, Box<TransactionError>> {
    let mut rb = user.get_request_builder(&method, path)?;
    match auth {
        Auth::None => {}
        Auth::Bearer(t) => rb = rb.bearer_auth(t),
        Auth::BearerKeyed(t, key) => rb = rb.bearer_auth(t).header("idempotency-key", key),
        Auth::ServiceKey => rb = rb.header("x-api-key", ctx().service_key.as_str()),
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let req = GooseRequest::builder()
        .method(method)
        .path(path)
        .name(name)
        .set_request_builder(rb)
        .build();
    let mut goose = user.request(req).await?;
    let resp = match goose.response {
        Ok(r) => r,
        Err(e) => return Err(fail(format!("{name}: {e}"))),
    };
    let status = resp.status().as_u16();
    let retry_after_ms = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| fail(format!("{name}: reading the body: {e}")))?;
    let ok = expected.contains(&status);
    if ok && !(200..300).contains(&status) {
        user.set_success(&mut goose.request)?;
    } else if !ok && (200..300).contains(&status) {
        user.set_failure(
            &format!("{name}: unexpected {status}"),
            &mut goose.request,
            None,
            None,
        )?;
    }
    Ok(Reply {
        status,
        raw: bytes,
        parsed: std::sync::OnceLock::new(),
        retry_after_ms,
    })
}

/// A user assertion for `user_id`, as the platform's login would issue it.
pub fn assertion(user_id: &str) -> Result<String, Box<TransactionError>> {
    mint_assertion(&ctx().user_jwt_secret, user_id).map_err(|e| fail(e.to_string()))
}

/// [`assertion`] with the secret given (before the context is installed).
pub fn mint_assertion(secret: &str, user_id: &str) -> anyhow::Result<String> {
    let user = boxoffice::ids::UserId::parse(user_id).map_err(|e| anyhow::anyhow!("{e}"))?;
    boxoffice::auth::mint_with_secret(secret, &user, std::time::Duration::from_secs(3600))
        .map_err(|e| anyhow::anyhow!("cannot mint a user assertion: {e}"))
}

/// Joins with the user's own assertion.
pub async fn join(
    user: &mut GooseUser,
    user_id: &str,
    name: &str,
) -> Result<Reply, Box<TransactionError>> {
    let path = format!("/v1/events/{}/queue", ctx().event);
    let jwt = assertion(user_id)?;
    call(
        user,
        GooseMethod::Post,
        &path,
        name,
        Auth::Bearer(&jwt),
        None,
        &[200, 201],
    )
    .await
}

/// Joins and requires the entry to be admitted at once (open queues).
pub async fn join_admitted(
    user: &mut GooseUser,
    user_id: &str,
    name: &str,
) -> Result<String, Box<TransactionError>> {
    let r = join(user, user_id, name).await?;
    match (r.str("status"), r.str("token")) {
        (Some("admitted"), Some(t)) => Ok(t.to_owned()),
        _ => Err(fail(format!(
            "{name}: expected an admitted entry, got {} {}",
            r.status,
            r.body()
        ))),
    }
}
