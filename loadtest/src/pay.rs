//! The `pay` scenario: the payment path alone.
//!
//! A payment ends its buyer's queue entry, so each one needs a buyer who
//! has joined and holds a seat. The `payment` scenario makes that whole
//! purchase per iteration (join, hold, pay), so two thirds of its requests
//! are not payments. Here every purchase is made ready before Goose starts
//! (a fresh buyer per purchase: wallet charged, joined, one seat held),
//! and each iteration only pays: POST /v1/payments against the same
//! statement pgbench runs alone.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use goose::prelude::*;
use serde_json::{Map, Value, json};

use crate::common::{Auth, Ctx, call};

/// One purchase made ready: the buyer's queue token and its hold.
struct Ready {
    token: String,
    hold_id: String,
}

static STOCK: Mutex<Vec<Ready>> = Mutex::new(Vec::new());
static STOCKED: AtomicU64 = AtomicU64::new(0);
static PAID: AtomicU64 = AtomicU64::new(0);
/// Iterations that found the stock empty (the run then measured less than
/// it should: the report says so).
static STOCK_OUT: AtomicU64 = AtomicU64::new(0);

/// Requests in flight while stocking.
const STOCKERS: u64 = 64;

/// Makes `n` purchases ready on the event of `ctx` (its schedules must
/// exist): per purchase a fresh buyer, a wallet charge of one seat's price,
/// a join (the queue admits at once) and a hold of one seat.
pub async fn stock(ctx: &Ctx, n: u64, extra: &mut Map<String, Value>) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..STOCKERS {
        let client = client.clone();
        let host = ctx.host.clone();
        let key = ctx.service_key.clone();
        let secret = ctx.user_jwt_secret.clone();
        let event = ctx.event.clone();
        let run = ctx.run.clone();
        let schedules = ctx.schedules.clone();
        let price = ctx.price;
        workers.spawn(async move {
            let mut ready = Vec::new();
            for i in (w..n).step_by(STOCKERS as usize) {
                let user = format!("{run}-p{i}");
                let schedule = &schedules[i as usize % schedules.len()];
                let r = make_ready(
                    &client, &host, &key, &secret, &event, &user, schedule, price,
                )
                .await
                .with_context(|| format!("making purchase {i} ready ({user})"))?;
                ready.push(r);
            }
            anyhow::Ok(ready)
        });
    }
    let mut all = Vec::with_capacity(n as usize);
    while let Some(done) = workers.join_next().await {
        all.extend(done??);
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "pay: {} purchases made ready in {took:.1} s (charge, join, hold each)",
        all.len()
    );
    STOCKED.store(all.len() as u64, Ordering::Relaxed);
    extra.insert("stock".into(), all.len().into());
    extra.insert("stock_seconds".into(), took.into());
    *STOCK.lock().expect("stock lock") = all;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn make_ready(
    client: &reqwest::Client,
    host: &str,
    key: &str,
    secret: &str,
    event: &str,
    user: &str,
    schedule: &str,
    price: u64,
) -> anyhow::Result<Ready> {
    async fn post(rb: reqwest::RequestBuilder, what: &str, want: &[u16]) -> anyhow::Result<Value> {
        let resp = rb.send().await.with_context(|| what.to_owned())?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        anyhow::ensure!(want.contains(&status), "{what}: {status} {text}");
        Ok(serde_json::from_str(&text)?)
    }
    let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_owned);

    post(
        client
            .post(format!("{host}/v1/users/{user}/wallet/charges"))
            .header("x-api-key", key)
            .json(&json!({ "amount": price.to_string() })),
        "charge",
        &[201],
    )
    .await?;
    let jwt = crate::common::mint_assertion(secret, user)?;
    let joined = post(
        client
            .post(format!("{host}/v1/events/{event}/queue"))
            .bearer_auth(jwt),
        "join",
        &[201],
    )
    .await?;
    let token = match (field(&joined, "status").as_deref(), field(&joined, "token")) {
        (Some("admitted"), Some(t)) => t,
        _ => anyhow::bail!("join: expected an admitted entry, got {joined}"),
    };
    let held = post(
        client
            .post(format!("{host}/v1/holds"))
            .bearer_auth(&token)
            .json(&json!({ "schedule_id": schedule, "count": 1 })),
        "hold",
        &[201],
    )
    .await?;
    let hold_id = field(&held, "hold_id").context("hold: no hold_id")?;
    Ok(Ready { token, hold_id })
}

/// One iteration: pay one purchase made ready.
pub async fn pay(user: &mut GooseUser) -> TransactionResult {
    let next = STOCK.lock().expect("stock lock").pop();
    let Some(ready) = next else {
        // Nothing left to pay: no request (a spinning user would only
        // steal the service's CPU); the report marks the run short.
        STOCK_OUT.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Ok(());
    };
    let body = json!({ "hold_id": ready.hold_id });
    let r = call(
        user,
        GooseMethod::Post,
        "/v1/payments",
        "pay",
        Auth::Bearer(&ready.token),
        Some(&body),
        &[201],
    )
    .await?;
    if r.status == 201 {
        PAID.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The scenario's figures beside Goose's own.
pub fn finish(extra: &mut Map<String, Value>) {
    let left = STOCK.lock().expect("stock lock").len() as u64;
    extra.insert("payments".into(), PAID.load(Ordering::Relaxed).into());
    extra.insert("stock_left".into(), left.into());
    extra.insert(
        "stock_out_iterations".into(),
        STOCK_OUT.load(Ordering::Relaxed).into(),
    );
    extra.insert(
        "stock_used".into(),
        (STOCKED.load(Ordering::Relaxed) - left).into(),
    );
}
