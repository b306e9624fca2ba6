//! flash-sale: every Goose user is one buyer and runs one iteration.
//!
//! A buyer joins, polls `GET /v1/queue/status` honouring `poll_after_ms`
//! until admitted, reads the schedules and (every other buyer) the seat map,
//! holds 1 or 2 seats (explicit seats from the map, or `count`; each hold
//! asked for with an `Idempotency-Key` of its own), charges
//! their wallet with the hold's amount and pays. A buyer whose hold gets a
//! 409 tries again with other seats at most 3 more times, then gives up and
//! leaves the queue; so does a buyer admitted after the sell-out.
//!
//! Sold-out time runs from the first join to the payment that sold the last
//! seat. Each buyer has its own HTTP client, so its own keep-alive
//! connection (or one per host when the shop has its own lane).

use std::{
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use goose::prelude::*;
use serde_json::{Map, Value, json};

use crate::common::{Auth, Ctx, Reply, call, ctx, fresh_user};

/// Retries after a lost hold, then the buyer gives up.
const RETRIES: u32 = 3;
/// No buyer waits longer than this in the queue (bounds the whole run).
const MAX_WAIT: Duration = Duration::from_secs(180);

static T0: OnceLock<Instant> = OnceLock::new();
static SEATS_SOLD: AtomicU64 = AtomicU64::new(0);
static BUYERS: AtomicU64 = AtomicU64::new(0);
static ADMITTED: AtomicU64 = AtomicU64::new(0);
static PAID: AtomicU64 = AtomicU64::new(0);
static SOLD_OUT_MS: AtomicU64 = AtomicU64::new(0);
static LAST_PAYMENT_MS: AtomicU64 = AtomicU64::new(0);
static LAST_DONE_MS: AtomicU64 = AtomicU64::new(0);
static HOLD_CONFLICTS: AtomicU64 = AtomicU64::new(0);
static RETRIED_AND_BOUGHT: AtomicU64 = AtomicU64::new(0);
static GAVE_UP_SOLD_OUT: AtomicU64 = AtomicU64::new(0);
static GAVE_UP_RETRIES: AtomicU64 = AtomicU64::new(0);
static EVICTED: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static WAITS_MS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Like a real client: a 429 or 503 is tried again after its
/// `Retry-After` (clamped to 0.2..2 s), at most this many times.
const BUSY_RETRIES: u32 = 5;
static BUSY_RETRIED: AtomicU64 = AtomicU64::new(0);
/// Payments answered `409 hold_already_paid`: an earlier attempt may have
/// been committed with its answer lost. Never counted as a purchase: the
/// seats sold and sold-out figures come from the service itself.
static ALREADY_PAID: AtomicU64 = AtomicU64::new(0);

/// [`call`] that waits out 429/503 answers and tries again.
async fn send(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &str,
    auth: Auth<'_>,
    body: Option<&Value>,
    expected: &[u16],
) -> Result<Reply, Box<TransactionError>> {
    let mut tries = 0;
    loop {
        let r = call(user, method, path, name, auth, body, expected).await?;
        if !matches!(r.status, 429 | 503) || tries >= BUSY_RETRIES {
            return Ok(r);
        }
        tries += 1;
        bump(&BUSY_RETRIED);
        let wait = r.retry_after_ms.unwrap_or(500).clamp(200, 2_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// A shop request's path: on the shop lane's host when there is one
/// (LOADTEST_SHOP_HOST), else on the waiting room's.
fn shop(c: &Ctx, path: String) -> String {
    match &c.shop_host {
        Some(host) => format!("{host}{path}"),
        None => path,
    }
}

fn since_t0_ms() -> u64 {
    T0.get().map_or(0, |t| t.elapsed().as_millis() as u64)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

enum Outcome {
    Bought { retried: bool },
    AlreadyPaid,
    SoldOut,
    Retries,
    Evicted,
    Error,
}

pub async fn buyer(user: &mut GooseUser) -> TransactionResult {
    T0.get_or_init(Instant::now);
    // A connection of its own, as a browser has. Goose shares the one
    // client `main` builds between all users, so without this the buyers
    // would take turns on the few dozen connections in use at any moment.
    // The client (and its connection) goes when the buyer is done. No TLS
    // roots: the service is plain HTTP here, and loading the system's
    // roots for each of 20,000 clients took the generator 2.8 ms of CPU a
    // buyer, both cores for the whole arrival.
    let mut client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .tls_certs_only(std::iter::empty());
    if let Some(from) = loopback_source(user) {
        client = client.local_address(from);
    }
    user.set_client_builder(client).await.map_err(Box::new)?;
    bump(&BUYERS);
    let outcome = buy(user).await;
    match &outcome {
        Ok(Outcome::Bought { retried }) => {
            bump(&PAID);
            if *retried {
                bump(&RETRIED_AND_BOUGHT);
            }
        }
        Ok(Outcome::AlreadyPaid) => bump(&ALREADY_PAID),
        Ok(Outcome::SoldOut) => bump(&GAVE_UP_SOLD_OUT),
        Ok(Outcome::Retries) => bump(&GAVE_UP_RETRIES),
        Ok(Outcome::Evicted) => bump(&EVICTED),
        Ok(Outcome::Error) | Err(_) => bump(&ERRORS),
    }
    LAST_DONE_MS.fetch_max(since_t0_ms(), Ordering::Relaxed);
    outcome.map(|_| ())
}

/// The buyer's own source address when the service is on this machine's
/// loopback (`loopback::source`).
fn loopback_source(user: &GooseUser) -> Option<std::net::IpAddr> {
    let server = user.base_url.host_str()?.parse().ok()?;
    crate::loopback::source(server, user.weighted_users_index)
}

async fn leave(user: &mut GooseUser, token: &str) -> Result<(), Box<TransactionError>> {
    send(
        user,
        GooseMethod::Delete,
        "/v1/queue",
        "leave",
        Auth::Bearer(token),
        None,
        &[204, 410],
    )
    .await?;
    Ok(())
}

async fn buy(user: &mut GooseUser) -> Result<Outcome, Box<TransactionError>> {
    let c = ctx();
    let idx = user.weighted_users_index as u64;
    let id = fresh_user("f");
    let mut want: u64 = if idx.is_multiple_of(3) { 2 } else { 1 };
    let explicit = idx.is_multiple_of(2);
    let schedule = c.schedules[0].as_str();

    // Queue.
    let joined = Instant::now();
    let join_path = format!("/v1/events/{}/queue", c.event);
    let jwt = crate::common::assertion(&id)?;
    let r = send(
        user,
        GooseMethod::Post,
        &join_path,
        "join",
        Auth::Bearer(&jwt),
        None,
        &[200, 201, 409],
    )
    .await?;
    if r.status == 409 {
        // sold_out (final): nothing left to wait for.
        return Ok(Outcome::SoldOut);
    }
    let Some(token) = r.str("token").map(str::to_owned) else {
        return Ok(Outcome::Error);
    };
    let mut last = r;
    // "prequeue": arrived before opens_at, placed by the draw then.
    while matches!(last.str("status"), Some("waiting" | "prequeue")) {
        if last.str("sold_out") == Some("final") {
            // Nothing can come back: stop waiting and free the place.
            leave(user, &token).await?;
            return Ok(Outcome::SoldOut);
        }
        if joined.elapsed() > MAX_WAIT {
            leave(user, &token).await?;
            return Ok(Outcome::Error);
        }
        let wait = last
            .u64("poll_after_ms")
            .unwrap_or(1_000)
            .clamp(100, 15_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let r = send(
            user,
            GooseMethod::Get,
            "/v1/queue/status",
            "status",
            Auth::Bearer(&token),
            None,
            &[200],
        )
        .await?;
        match r.status {
            200 => last = r,
            410 => return Ok(Outcome::Evicted),
            _ => {} // 429/503: poll again after the same pause
        }
    }
    if last.str("status") != Some("admitted") {
        return Ok(Outcome::Error);
    }
    bump(&ADMITTED);
    WAITS_MS
        .lock()
        .expect("lock")
        .push(joined.elapsed().as_millis() as u64);

    // Shop.
    let path = shop(c, format!("/v1/events/{}/schedules", c.event));
    let r = send(
        user,
        GooseMethod::Get,
        &path,
        "schedules",
        Auth::Bearer(&token),
        None,
        &[200],
    )
    .await?;
    let available = r.body()["schedules"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["schedule_id"] == schedule))
        .and_then(|s| s["seats_available"].as_u64())
        .unwrap_or(0);
    if r.status != 200 {
        return Ok(Outcome::Error);
    }
    if available == 0 {
        leave(user, &token).await?;
        return Ok(Outcome::SoldOut);
    }

    let mut attempt = 0;
    let hold = loop {
        let body = if explicit || attempt > 0 {
            // Read the map (again, after a lost race) and pick free seats.
            let path = shop(
                c,
                format!("/v1/events/{}/schedules/{schedule}/seats", c.event),
            );
            let r = send(
                user,
                GooseMethod::Get,
                &path,
                "seat-map",
                Auth::Bearer(&token),
                None,
                &[200],
            )
            .await?;
            if r.status != 200 {
                return Ok(Outcome::Error);
            }
            let free = free_seats(&r);
            if free.is_empty() {
                leave(user, &token).await?;
                return Ok(Outcome::SoldOut);
            }
            want = want.min(free.len() as u64);
            json!({ "schedule_id": schedule, "seats": pick(&free, want as usize) })
        } else {
            json!({ "schedule_id": schedule, "count": want })
        };
        // A key per hold asked for, as a careful client sends: a retry of
        // the same request after a 503 (`send`) gets the hold the first
        // made, if it was made; a new pick after a conflict is a new key.
        let key = format!("hold-{attempt}");
        let r = send(
            user,
            GooseMethod::Post,
            &shop(c, "/v1/holds".into()),
            "hold",
            Auth::BearerKeyed(&token, &key),
            Some(&body),
            &[201, 409],
        )
        .await?;
        match r.status {
            201 => break r,
            409 => {
                bump(&HOLD_CONFLICTS);
                attempt += 1;
                if attempt > RETRIES {
                    leave(user, &token).await?;
                    return Ok(Outcome::Retries);
                }
            }
            _ => {
                leave(user, &token).await?;
                return Ok(Outcome::Error);
            }
        }
    };
    let hold_id = hold.str("hold_id").unwrap_or_default().to_owned();
    let amount = hold.str("amount").unwrap_or("0").to_owned();
    let seats = hold.body()["seats"].as_array().map_or(0, Vec::len) as u64;

    // Pay.
    let path = shop(c, format!("/v1/users/{id}/wallet/charges"));
    let r = send(
        user,
        GooseMethod::Post,
        &path,
        "charge",
        Auth::ServiceKey,
        Some(&json!({ "amount": amount })),
        &[201],
    )
    .await?;
    if r.status != 201 {
        return Ok(Outcome::Error);
    }
    let r = send(
        user,
        GooseMethod::Post,
        &shop(c, "/v1/payments".into()),
        "pay",
        Auth::Bearer(&token),
        Some(&json!({ "hold_id": hold_id })),
        &[201, 409],
    )
    .await?;
    // 409 hold_already_paid: an earlier attempt may have been committed
    // with its answer lost. Counted apart, never as a purchase.
    if r.status == 409 && r.str("code") == Some("hold_already_paid") {
        return Ok(Outcome::AlreadyPaid);
    }
    if r.status != 201 {
        if r.status == 409 {
            user_failure_note(&r);
        }
        return Ok(Outcome::Error);
    }
    let now = since_t0_ms();
    LAST_PAYMENT_MS.fetch_max(now, Ordering::Relaxed);
    let sold = SEATS_SOLD.fetch_add(seats, Ordering::Relaxed) + seats;
    if sold >= c.seats {
        let _ = SOLD_OUT_MS.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }
    Ok(Outcome::Bought {
        retried: attempt > 0,
    })
}

/// A 409 other than hold_already_paid on a payment is unexpected.
fn user_failure_note(r: &Reply) {
    eprintln!("flash-sale: payment answered {} {}", r.status, r.body());
}

fn free_seats(map: &Reply) -> Vec<u64> {
    #[derive(serde::Deserialize)]
    struct Map<'a> {
        #[serde(borrow)]
        seats: Vec<Seat<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Seat<'a> {
        seat_no: u64,
        status: &'a str,
    }
    serde_json::from_slice::<Map>(&map.raw).map_or_else(
        |_| Vec::new(),
        |m| {
            m.seats
                .iter()
                .filter(|s| s.status == "available")
                .map(|s| s.seat_no)
                .collect()
        },
    )
}

/// `n` seats side by side from a random free seat on (adjacent when the
/// map allows; a real client picks near the best ones, so races happen).
fn pick(free: &[u64], n: usize) -> Vec<u64> {
    // Buyers crowd the front: pick among the first quarter of free seats.
    let n = n.min(free.len());
    let span = (free.len() / 4).max(1);
    let start = rand::random_range(0..span).min(free.len() - n);
    free[start..start + n].to_vec()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub async fn finish(c: &Ctx, extra: &mut Map<String, Value>) {
    let mut waits = WAITS_MS.lock().expect("lock").clone();
    waits.sort_unstable();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let sold_out = load(&SOLD_OUT_MS);
    let figures = [
        ("buyers", c.buyers.max(load(&BUYERS))),
        ("buyers_started", load(&BUYERS)),
        ("seats", c.seats),
        ("seats_sold", load(&SEATS_SOLD)),
        ("admitted", load(&ADMITTED)),
        ("payments", load(&PAID)),
        ("bought_after_retry", load(&RETRIED_AND_BOUGHT)),
        ("hold_conflicts", load(&HOLD_CONFLICTS)),
        ("gave_up_sold_out", load(&GAVE_UP_SOLD_OUT)),
        ("gave_up_after_retries", load(&GAVE_UP_RETRIES)),
        ("evicted", load(&EVICTED)),
        ("errors", load(&ERRORS)),
        ("busy_retries", load(&BUSY_RETRIED)),
        ("already_paid_answers", load(&ALREADY_PAID)),
        ("last_payment_ms", load(&LAST_PAYMENT_MS)),
        ("all_done_ms", load(&LAST_DONE_MS)),
        ("queue_wait_p50_ms", percentile(&waits, 0.50)),
        ("queue_wait_p99_ms", percentile(&waits, 0.99)),
        ("queue_wait_max_ms", waits.last().copied().unwrap_or(0)),
    ];
    for (k, v) in figures {
        extra.insert(k.into(), v.into());
    }
    extra.insert(
        "sold_out_ms".into(),
        if sold_out > 0 {
            sold_out.into()
        } else {
            Value::Null
        },
    );
    // The service's own view, to cross-check seats sold and revenue.
    match crate::setup::admin(
        c,
        reqwest::Method::GET,
        &format!("/v1/admin/events/{}", c.event),
        None,
    )
    .await
    {
        Ok(v) => {
            extra.insert("admin_live".into(), v["live"].clone());
            extra.insert("admin_schedules".into(), v["schedules"].clone());
        }
        Err(e) => eprintln!("flash-sale: admin figures: {e:#}"),
    }
}
