//! Streaming vs polling: one client process of the bench in
//! `scripts/bench_stream.sh` (which runs several, one per service
//! instance, because a process here may hold at most 20,000 sockets).
//!
//! ```text
//! stream_bench <poll|stream> <host> <event> <first_user> <users> <ready_file>
//! ```
//!
//! Joins `users` users (service key + user id; admission is paused, so
//! they all wait), then keeps them waiting the way a client does: `poll`
//! calls GET /v1/queue/status every `poll_after_ms` the service returns;
//! `stream` holds GET /v1/queue/stream open and reads its events. When
//! all users are in place it writes `ready_file`; the script measures
//! the service's CPU and Redis's command counts over a window and then
//! kills this process.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Attempts to open one user's stream before it gives up.
const OPEN_TRIES: u32 = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [mode, host, event, first, users, ready] = a.as_slice() else {
        anyhow::bail!(
            "usage: stream_bench <poll|stream> <host> <event> <first_user> <users> <ready_file>"
        );
    };
    let key = std::env::var("BOXOFFICE_SERVICE_KEY").unwrap_or_else(|_| "dev-service-key".into());
    let first: u64 = first.parse()?;
    let users: u64 = users.parse()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    // No idle pool: a stream holds its connection for good, and a pool
    // keeps spares it connected for a request that another connection
    // then served; the service closes a spare that sent nothing within its
    // header-read timeout (10 s), and an open put on it as it closes fails
    // (`IncompleteMessage`). With the pool, thousands of opens per client
    // failed so at 50,000 users (docs/bench/surge-17.md).
    let streaming_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;

    // Join everyone (64 at a time).
    let gate = Arc::new(Semaphore::new(64));
    let mut joins = Vec::new();
    for i in first..first + users {
        let (client, gate, host, event, key) = (
            client.clone(),
            gate.clone(),
            host.clone(),
            event.clone(),
            key.clone(),
        );
        joins.push(tokio::spawn(async move {
            let _p = gate.acquire().await.expect("open");
            for _ in 0..5 {
                let r = client
                    .post(format!("{host}/v1/events/{event}/queue"))
                    .header("x-api-key", &key)
                    .json(&json!({"user_id": format!("sb{i}")}))
                    .send()
                    .await;
                if let Ok(r) = r
                    && r.status().is_success()
                    && let Ok(v) = r.json::<Value>().await
                {
                    return Some(v);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None
        }));
    }
    let mut entries = Vec::new();
    for j in joins {
        if let Some(v) = j.await? {
            entries.push(v);
        }
    }
    eprintln!("{mode}: {} of {users} users joined", entries.len());

    let in_place = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    for (n, e) in entries.into_iter().enumerate() {
        let token = e["token"].as_str().unwrap_or_default().to_owned();
        let poll_ms = e["poll_after_ms"].as_u64().unwrap_or(1_000);
        let (client, streaming_client, host) =
            (client.clone(), streaming_client.clone(), host.clone());
        let (in_place, events, failures) = (in_place.clone(), events.clone(), failures.clone());
        let stream = mode == "stream";
        tokio::spawn(async move {
            if stream {
                // Spread the opening over ~5 s as real arrivals would be.
                tokio::time::sleep(Duration::from_millis((n as u64 * 7) % 5_000)).await;
                // A stream that cannot be opened (refused, timed out, a 503)
                // is tried again as a page would, and counted: a user that
                // gave up in silence kept the run from ever being in place.
                let mut opened = None;
                for _ in 0..OPEN_TRIES {
                    match streaming_client
                        .get(format!("{host}/v1/queue/stream"))
                        .bearer_auth(&token)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            opened = Some(r);
                            break;
                        }
                        failed => {
                            if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("stream: the first failed open: {failed:?}");
                            }
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                }
                let Some(mut resp) = opened else {
                    return;
                };
                in_place.fetch_add(1, Ordering::Relaxed);
                while let Ok(Some(chunk)) = resp.chunk().await {
                    let n = chunk.windows(6).filter(|w| w == b"event:").count();
                    events.fetch_add(n as u64, Ordering::Relaxed);
                }
            } else {
                // First poll at a random point of the client's interval.
                tokio::time::sleep(Duration::from_millis((n as u64 * 7919) % poll_ms.max(1))).await;
                in_place.fetch_add(1, Ordering::Relaxed);
                let mut wait = poll_ms;
                loop {
                    let r = client
                        .get(format!("{host}/v1/queue/status"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    events.fetch_add(1, Ordering::Relaxed);
                    if let Ok(r) = r
                        && let Ok(v) = r.json::<Value>().await
                    {
                        wait = v["poll_after_ms"].as_u64().unwrap_or(wait);
                    }
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        });
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = in_place.load(Ordering::Relaxed);
        if n as usize >= (users as usize * 99 / 100) {
            std::fs::write(ready, format!("{n}\n"))?;
            eprintln!("{mode}: {n} users in place");
            break;
        }
    }
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        eprintln!(
            "{mode}: {} in place, {} events/requests so far, {} failed stream opens",
            in_place.load(Ordering::Relaxed),
            events.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed)
        );
    }
}
