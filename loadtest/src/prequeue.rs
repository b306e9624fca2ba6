//! `loadtest prequeue`: a pre-queue of a million entries, and Redis's own
//! per-command latencies while the service works on it (issue 14: no Redis
//! command may block for more than a few ms with 1,000,000 pre-queue
//! entries).
//!
//! Not a Goose scenario: the run is a sequence of phases, each measured on
//! its own. Set-up: an event whose pre-queue is open and whose `opens_at`
//! is an hour ahead (admission on), then `LOADTEST_PREQUEUE` entries
//! (default 1,000,000) written straight into Redis exactly as
//! `lua/join_queue.lua` writes a pre-queue entry: the same keys
//! (`boxoffice::store::keys`), the draw score
//! `boxoffice::fair::draw_score(seed, user)` under the event's seed (read
//! from its Redis config, as the service reads it) in both `q:wait` and
//! `q:draw`, the entry in `q:pre:entry`, the last activity in `q:poll`,
//! the join sequence and `joined_total`. Tokens are signed with
//! `boxoffice::token::TokenSigner` under `BOXOFFICE_TOKEN_SECRET`.
//!
//! Phases, each `LOADTEST_PREQUEUE_SECONDS` long (default 15) with
//! `LOADTEST_PREQUEUE_CONCURRENCY` requests in flight (default 32):
//!
//! - `join`: joins over HTTP, half by new users (into the pre-queue), half
//!   by seeded users (found again: `existing`);
//! - `status-pre`: status polls of users in the back half of the draw;
//! - `opens_at`: `opens_at` is moved to 3 s ahead; the same polls go on
//!   while it passes and the service's admission tick starts admitting;
//! - `status-after`: status polls after the draw (positions now);
//! - `stream`: `LOADTEST_PREQUEUE_STREAMS` (default 2,000) users deep in the
//!   line hold `GET /v1/queue/stream` open (0 = skipped);
//! - `entries`: the admin entry list, pages of 10,000 at random offsets.
//!
//! Before each phase `CONFIG RESETSTAT` and `SLOWLOG RESET`; after it,
//! `INFO latencystats` (p50/p99/p99.9 of `FCALL`, the scripts), `INFO commandstats`,
//! `SLOWLOG GET` (the wrapper sets `slowlog-log-slower-than` 2000 µs) and
//! `LATENCY HISTOGRAM fcall` (an upper bound of the slowest call when
//! nothing reached the slow log). These are Redis's own timings of each
//! command, so they hold on a loaded machine far better than the client's
//! timings, which are given too. The Redis must be the service's alone
//! (`scripts/bench_prequeue.sh` starts a private one): RESETSTAT is
//! server-wide. Prints a Markdown table on stdout.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, HashesInterface, LuaInterface},
    types::{ClusterHash, CustomCommand, Value as RedisValue},
};
use serde_json::{Value, json};

use boxoffice::{
    fair::{Seed, draw_key, draw_score, score_arg},
    ids::{EventId, UserId},
    store::{keys::Keys, redis::ALL_SCRIPTS},
    token::{QueueClaims, TokenSigner},
};

use crate::common::env_u64;

/// Writes pre-queue entries `ARGV[3..]` (user, score pairs) with entries
/// `ARGV[1]`, `ARGV[1] + 1`, ... exactly like the pre-queue branch of
/// `join_queue.lua`; the last activity is Redis time now.
const SEED: &str = r"
-- KEYS: seq, wait, poll, stats, pre_entry, draw; ARGV: first entry, count, user1, score1, ...
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first, n = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 0, n - 1 do
  local u, s = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  redis.call('ZADD', KEYS[2], s, u)
  redis.call('HSET', KEYS[5], u, first + i)
  redis.call('ZADD', KEYS[6], s, u)
  redis.call('HSET', KEYS[3], u, now)
end
local last = first + n - 1
if tonumber(redis.call('GET', KEYS[1]) or '0') < last then redis.call('SET', KEYS[1], last) end
redis.call('HINCRBY', KEYS[4], 'joined_total', n)
return last
";

const BATCH: u64 = 2_000;
/// Tokens of deep users signed up front (the polls pick among them).
const DEEP_TOKENS: usize = 20_000;

fn user_of(n: u64) -> String {
    format!("p{n:012}")
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    what: String,
    requests: u64,
    unexpected: u64,
    /// The first unexpected answer (status and the start of the body).
    first_unexpected: Option<String>,
    client_ms: Vec<f64>,
    redis: RedisFigures,
    loadavg: String,
    seconds: f64,
}

#[derive(Default)]
struct RedisFigures {
    script_calls: u64,
    usec_per_call: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Slow-log entries (>= the threshold) and the slowest of them, µs.
    slow: Vec<(u64, String)>,
    /// The top of `LATENCY HISTOGRAM fcall`'s last bucket, µs.
    hist_max: Option<u64>,
    /// The slowest command of any kind per commandstats (name, p99.9 µs).
    worst_other: Option<(String, f64)>,
}

struct Run {
    host: String,
    key: String,
    event: String,
    http: reqwest::Client,
    concurrency: usize,
    seconds: u64,
}

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let mut host = "http://127.0.0.1:18080".to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-H" | "--host" => host = it.next().cloned().unwrap_or(host),
            other => anyhow::bail!("prequeue: unknown argument {other:?} (only --host URL)"),
        }
    }
    let service = boxoffice::config::Config::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let redis = crate::redis::connect(&service.redis_url).await?;
    let entries = env_u64("LOADTEST_PREQUEUE", 1_000_000);
    let ms = chrono::Utc::now().timestamp_millis();
    let run = Run {
        host: host.trim_end_matches('/').to_owned(),
        key: service.service_key.expose().to_owned(),
        event: format!("ltpq{ms}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build()?,
        concurrency: env_u64("LOADTEST_PREQUEUE_CONCURRENCY", 32) as usize,
        seconds: env_u64("LOADTEST_PREQUEUE_SECONDS", 15),
    };
    let streams = env_u64("LOADTEST_PREQUEUE_STREAMS", 2_000) as usize;

    // The event: pre-queue open now, opens_at an hour ahead, admission on.
    let at = |ahead_ms: i64| {
        (chrono::Utc::now() + chrono::Duration::milliseconds(ahead_ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    run.admin(
        reqwest::Method::POST,
        "/v1/admin/events",
        json!({
            "event_id": run.event,
            "name": "pre-queue at scale",
            "queue": {"admit_per_second": 1000, "max_active": 1000, "active_ttl_seconds": 600,
                      "idle_timeout_seconds": 86_400, "paused": false},
            "schedules": [{"schedule_id": "s1", "starts_at": "2030-01-01T19:00:00Z", "seats": 100_000,
                           "row_size": 50, "price": "1000", "hold_seconds": 600, "max_per_user": 4}],
        }),
    )
    .await?;
    run.admin(
        reqwest::Method::PATCH,
        &format!("/v1/admin/events/{}", run.event),
        json!({"sale": {"prequeue_opens_at": at(1_000), "opens_at": at(3_600_000)}}),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    // Seed the pre-queue.
    let event = EventId::parse(&run.event).map_err(|e| anyhow::anyhow!("{e}"))?;
    let k = Keys::new(service.redis_prefix.clone()).event(&event);
    let seed_hex: Option<String> = redis.hget(k.config(), "seed").await?;
    let seed = seed_hex
        .as_deref()
        .and_then(Seed::from_hex)
        .ok_or_else(|| anyhow::anyhow!("event {} has no seed in Redis", run.event))?;
    let keys = vec![
        k.queue_seq(),
        k.queue_waiting(),
        k.queue_polled(),
        k.queue_stats(),
        k.queue_pre_entries(),
        k.queue_draw(),
    ];
    let mem_before = crate::redis::used_memory(&redis).await?;
    let started = Instant::now();
    let mut first = 1;
    while first <= entries {
        let n = BATCH.min(entries - first + 1);
        let mut argv = Vec::with_capacity(2 + 2 * n as usize);
        argv.push(first.to_string());
        argv.push(n.to_string());
        for e in first..first + n {
            let u = user_of(e);
            let s = draw_score(&seed, &UserId::parse(&u).expect("valid user id"));
            argv.push(u);
            argv.push(score_arg(s));
        }
        let _: i64 = redis.eval(SEED, keys.clone(), argv).await?;
        first += n;
    }
    let seeded_in = started.elapsed().as_secs_f64();
    let mem_after = crate::redis::used_memory(&redis).await?;
    eprintln!(
        "prequeue: seeded {entries} pre-queue entries in {seeded_in:.1} s; used_memory {mem_before} -> {mem_after}"
    );

    // Users in the back half of the draw, and their tokens.
    let mut order: Vec<(u64, u64)> = (1..=entries)
        .map(|e| {
            let u = UserId::parse(&user_of(e)).expect("valid user id");
            (draw_key(&seed, &u), e)
        })
        .collect();
    order.sort_unstable();
    let deep: Vec<u64> = order[order.len() / 2..]
        .iter()
        .step_by((order.len() / 2 / DEEP_TOKENS).max(1))
        .map(|&(_, e)| e)
        .collect();
    drop(order);
    let signer = TokenSigner::new(service.token_secret.expose());
    let iat = chrono::Utc::now().timestamp();
    let tokens: Arc<Vec<String>> = Arc::new(
        deep.iter()
            .map(|&e| {
                signer.sign(&QueueClaims {
                    event: event.clone(),
                    user: UserId::parse(&user_of(e)).expect("valid user id"),
                    entry: e,
                    issued_at: iat,
                    expires_at: iat + 7_200,
                })
            })
            .collect(),
    );

    let mut phases = Vec::new();
    let new_users = Arc::new(AtomicU64::new(0));

    // (a) joins: new users and seeded ones.
    let (run, tokens) = (Arc::new(run), tokens);
    phases.push(
        measure(
            &redis,
            "join",
            "POST /v1/events/{e}/queue: half new users (pre-queue), half seeded users (existing)"
                .into(),
            {
                let (run, new_users) = (run.clone(), new_users.clone());
                move |i| {
                    let (run, new_users) = (run.clone(), new_users.clone());
                    async move {
                        let user = if i % 2 == 0 {
                            format!("n{:012}", new_users.fetch_add(1, Ordering::Relaxed))
                        } else {
                            user_of(rand::random_range(1..=entries))
                        };
                        let r = run
                            .http
                            .post(format!("{}/v1/events/{}/queue", run.host, run.event))
                            .header("x-api-key", &run.key)
                            .json(&json!({ "user_id": user }))
                            .send()
                            .await;
                        answer(r, |v| v["status"] == "prequeue").await
                    }
                }
            },
            &run,
        )
        .await?,
    );

    // (b) status polls deep in the pre-queue.
    let poll = |want: &'static [&'static str]| {
        let (run, tokens) = (run.clone(), tokens.clone());
        move |_| {
            let (run, tokens) = (run.clone(), tokens.clone());
            async move {
                let t = &tokens[rand::random_range(0..tokens.len())];
                let r = run
                    .http
                    .get(format!("{}/v1/queue/status", run.host))
                    .bearer_auth(t)
                    .send()
                    .await;
                answer(r, |v| want.iter().any(|w| v["status"] == *w)).await
            }
        }
    };
    phases.push(
        measure(
            &redis,
            "status-pre",
            "GET /v1/queue/status of users in the back half of the draw (prequeue)".into(),
            poll(&["prequeue"]),
            &run,
        )
        .await?,
    );

    // (c) opens_at passes with admission on.
    let opens_in = 3_000;
    run.admin(
        reqwest::Method::PATCH,
        &format!("/v1/admin/events/{}", run.event),
        json!({"sale": {"opens_at": at(opens_in)}}),
    )
    .await?;
    phases.push(
        measure(
            &redis,
            "opens_at",
            format!(
                "opens_at passes {} s into the phase, admission 1,000/s on; the same polls (prequeue, then waiting)",
                opens_in / 1000
            ),
            poll(&["prequeue", "waiting"]),
            &run,
        )
        .await?,
    );

    // (d) status polls after the draw.
    phases.push(
        measure(
            &redis,
            "status-after",
            "GET /v1/queue/status of the same users after the draw (waiting, with positions)"
                .into(),
            poll(&["waiting"]),
            &run,
        )
        .await?,
    );

    // (e) streams.
    if streams > 0 {
        phases.push(stream_phase(&redis, &run, &tokens, streams).await?);
    }

    // (f) the admin entry list.
    let total = entries + new_users.load(Ordering::Relaxed);
    phases.push(
        measure(
            &redis,
            "entries",
            "GET /v1/admin/events/{e}/draw/entries?offset=<random>&limit=10000, one request at a time (an auditor paging)".into(),
            {
                let run = run.clone();
                move |_| {
                    let run = run.clone();
                    async move {
                        let offset = rand::random_range(0..total.saturating_sub(10_000).max(1));
                        let r = run
                            .http
                            .get(format!(
                                "{}/v1/admin/events/{}/draw/entries?offset={offset}&limit=10000",
                                run.host, run.event
                            ))
                            .header("x-api-key", &run.key)
                            .send()
                            .await;
                        answer(r, |v| {
                            v["users"].as_array().is_some_and(|u| u.len() == 10_000)
                        })
                        .await
                    }
                }
            },
            &run,
        )
        .await?,
    );

    print_table(entries, seeded_in, mem_before, mem_after, &run, &phases);
    Ok(())
}

impl Run {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<()> {
        let r = self
            .http
            .request(method.clone(), format!("{}{path}", self.host))
            .header("x-api-key", &self.key)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        if !status.is_success() {
            anyhow::bail!("{method} {path}: {status}: {}", r.text().await?);
        }
        Ok(())
    }
}

/// `None` when the request succeeded and `ok` holds for its JSON body,
/// else what came back (status and the start of the body, or the error).
async fn answer(
    r: reqwest::Result<reqwest::Response>,
    ok: impl Fn(&Value) -> bool,
) -> Option<String> {
    match r {
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            if status.is_success() && ok(&v) {
                None
            } else {
                Some(format!(
                    "{status} {}",
                    body.chars().take(160).collect::<String>()
                ))
            }
        }
        Err(e) => Some(e.to_string()),
    }
}

/// Runs `one` from `run.concurrency` workers for `run.seconds`, between
/// a Redis statistics reset and a read. `one(i)` is `None` when the
/// answer was the expected one, else what came instead.
async fn measure<F, Fut>(
    redis: &Client,
    name: &'static str,
    what: String,
    one: F,
    run: &Run,
) -> anyhow::Result<Phase>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    eprintln!("prequeue: phase {name}");
    reset(redis).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs(run.seconds);
    let workers = if name == "entries" {
        1
    } else {
        run.concurrency as u64
    };
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let one = one.clone();
        set.spawn(async move {
            let (mut ms, mut bad, mut i, mut first) = (Vec::new(), 0u64, w, None);
            while Instant::now() < until {
                let t = Instant::now();
                if let Some(what) = one(i).await {
                    bad += 1;
                    first.get_or_insert(what);
                }
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
                i += workers;
            }
            (ms, bad, first)
        });
    }
    let mut client_ms = Vec::new();
    let (mut unexpected, mut first_unexpected) = (0, None);
    while let Some(r) = set.join_next().await {
        let (ms, bad, first) = r?;
        client_ms.extend(ms);
        unexpected += bad;
        first_unexpected = first_unexpected.or(first);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Phase {
        name,
        what,
        requests: client_ms.len() as u64,
        unexpected,
        first_unexpected,
        client_ms,
        redis: figures(redis).await?,
        loadavg: loadavg(),
        seconds,
    })
}

/// `streams` deep users hold the SSE stream open for `run.seconds`; a
/// stream counts as expected when it received at least one event.
async fn stream_phase(
    redis: &Client,
    run: &Arc<Run>,
    tokens: &Arc<Vec<String>>,
    streams: usize,
) -> anyhow::Result<Phase> {
    eprintln!("prequeue: phase stream ({streams} streams)");
    reset(redis).await?;
    let started = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(run.seconds);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..streams {
        let (run, token) = (run.clone(), tokens[i % tokens.len()].clone());
        set.spawn(async move {
            let t = Instant::now();
            let Ok(mut r) = run
                .http
                .get(format!("{}/v1/queue/stream", run.host))
                .bearer_auth(&token)
                .timeout(Duration::from_secs(run.seconds + 30))
                .send()
                .await
            else {
                return (0.0, 0u64);
            };
            let first_ms = t.elapsed().as_secs_f64() * 1000.0;
            let mut events = 0;
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, r.chunk()).await {
                events += chunk.windows(6).filter(|w| w == b"event:").count() as u64;
            }
            (first_ms, events)
        });
    }
    let (mut client_ms, mut unexpected, mut events) = (Vec::new(), 0, 0);
    while let Some(r) = set.join_next().await {
        let (ms, n) = r?;
        client_ms.push(ms);
        events += n;
        if n == 0 {
            unexpected += 1;
        }
    }
    Ok(Phase {
        name: "stream",
        what: format!(
            "{streams} users deep in the line hold GET /v1/queue/stream open ({events} events received; unexpected = no event within the phase, the far back gets fewer updates; client ms = time to the response head)"
        ),
        requests: streams as u64,
        unexpected,
        first_unexpected: None,
        client_ms,
        redis: figures(redis).await?,
        loadavg: loadavg(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn cmd<R: fred::types::FromValue>(
    redis: &Client,
    name: &'static str,
    args: Vec<&str>,
) -> anyhow::Result<R> {
    Ok(redis
        .custom(
            CustomCommand::new_static(name, ClusterHash::FirstKey, false),
            args,
        )
        .await?)
}

async fn reset(redis: &Client) -> anyhow::Result<()> {
    let _: RedisValue = cmd(redis, "CONFIG", vec!["RESETSTAT"]).await?;
    let _: RedisValue = cmd(redis, "SLOWLOG", vec!["RESET"]).await?;
    Ok(())
}

async fn figures(redis: &Client) -> anyhow::Result<RedisFigures> {
    let mut f = RedisFigures::default();
    let lat: String = cmd(redis, "INFO", vec!["latencystats"]).await?;
    for line in lat.lines() {
        let Some((cmd, rest)) = line
            .trim()
            .strip_prefix("latency_percentiles_usec_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let p = |k: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if cmd == "fcall" {
            (f.p50, f.p99, f.p999) = (p("p50="), p("p99="), p("p99.9="));
        } else if !matches!(cmd, "config" | "slowlog" | "info" | "latency")
            && f.worst_other.as_ref().is_none_or(|(_, w)| p("p99.9=") > *w)
        {
            f.worst_other = Some((cmd.to_owned(), p("p99.9=")));
        }
    }
    let stats: String = cmd(redis, "INFO", vec!["commandstats"]).await?;
    if let Some(l) = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("cmdstat_fcall:"))
    {
        let field = |k: &str| l.split(',').find_map(|kv| kv.strip_prefix(k));
        f.script_calls = field("calls=").and_then(|v| v.parse().ok()).unwrap_or(0);
        f.usec_per_call = field("usec_per_call=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
    }
    // SLOWLOG GET: [id, time, duration µs, [args...], client, name] each.
    let slow: RedisValue = cmd(redis, "SLOWLOG", vec!["GET", "1024"]).await?;
    if let RedisValue::Array(entries) = slow {
        for e in entries {
            if let RedisValue::Array(e) = e {
                let us = e.get(2).and_then(|v| v.as_u64()).unwrap_or(0);
                // FCALL <function> ...: the script's name (lua/<name>.lua);
                // any other command: its name.
                let what = match e.get(3) {
                    Some(RedisValue::Array(a)) => {
                        let arg = |i: usize| a.get(i).and_then(RedisValue::as_string);
                        let name = arg(0).unwrap_or_default().to_lowercase();
                        let function = arg(1).unwrap_or_default();
                        match ALL_SCRIPTS.iter().find(|s| s.function() == function) {
                            Some(script) if name == "fcall" => script.name.to_owned(),
                            _ => name,
                        }
                    }
                    _ => String::new(),
                };
                f.slow.push((us, what));
            }
        }
    }
    f.slow.sort_by_key(|s| std::cmp::Reverse(s.0));
    // LATENCY HISTOGRAM fcall: {fcall: {calls, histogram_usec: {bucket: cumulative}}}.
    let hist: RedisValue = cmd(redis, "LATENCY", vec!["HISTOGRAM", "fcall"]).await?;
    f.hist_max = last_bucket(&hist);
    Ok(f)
}

/// The top of the last (slowest) bucket in a `LATENCY HISTOGRAM` reply
/// (RESP2: `[name, [calls, n, histogram_usec, [bucket, count, ...]]]`).
fn last_bucket(v: &RedisValue) -> Option<u64> {
    let RedisValue::Array(items) = v else {
        return None;
    };
    for (i, item) in items.iter().enumerate() {
        if item.as_str().as_deref() == Some("histogram_usec") {
            let Some(RedisValue::Array(b)) = items.get(i + 1) else {
                return None;
            };
            return b.iter().rev().nth(1).and_then(RedisValue::as_u64);
        }
        if let found @ Some(_) = last_bucket(item) {
            return found;
        }
    }
    None
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn print_table(
    entries: u64,
    seeded_in: f64,
    mem_before: u64,
    mem_after: u64,
    run: &Run,
    phases: &[Phase],
) {
    let mut out = String::new();
    out.push_str(&format!(
        "Pre-queue of {entries} entries (seeded in {seeded_in:.1} s; Redis used_memory {:.0} MB → {:.0} MB), \
{} requests in flight, {} s per phase. Redis figures are Redis's own per-call timings of `FCALL` \
(`INFO latencystats`, `SLOWLOG` at 2 ms, `LATENCY HISTOGRAM`), reset before each phase; client figures are \
the load generator's, on the same loaded cores.\n\n",
        mem_before as f64 / 1e6,
        mem_after as f64 / 1e6,
        run.concurrency,
        run.seconds,
    ));
    out.push_str(
        "| phase | requests (unexpected) | script calls (FCALL) | Redis µs/call | Redis p50 / p99 / p99.9 µs | Redis max | slow log ≥ 2 ms | client p50 / p99 / max ms | load average |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for p in phases {
        let mut ms = p.client_ms.clone();
        ms.sort_by(f64::total_cmp);
        let r = &p.redis;
        let max = match r.slow.first() {
            Some((us, _)) => format!("{:.1} ms", *us as f64 / 1000.0),
            None => r.hist_max.map_or("< 2 ms".into(), |b| {
                format!("≤ {:.2} ms", b as f64 / 1000.0)
            }),
        };
        out.push_str(&format!(
            "| {} | {} ({}) | {} | {:.1} | {:.0} / {:.0} / {:.0} | {max} | {} | {:.1} / {:.1} / {:.1} | {} |\n",
            p.name,
            p.requests,
            p.unexpected,
            r.script_calls,
            r.usec_per_call,
            r.p50,
            r.p99,
            r.p999,
            r.slow.len(),
            pct(&ms, 0.5),
            pct(&ms, 0.99),
            ms.last().copied().unwrap_or(0.0),
            p.loadavg,
        ));
    }
    out.push('\n');
    for p in phases {
        out.push_str(&format!(
            "- **{}** ({:.0} s): {}",
            p.name, p.seconds, p.what
        ));
        if let Some((c, w)) = &p.redis.worst_other {
            out.push_str(&format!(
                "; slowest other command by p99.9: `{c}` {w:.0} µs"
            ));
        }
        if let Some(what) = &p.first_unexpected {
            out.push_str(&format!("; first unexpected answer: `{what}`"));
        }
        if !p.redis.slow.is_empty() {
            // Slow-log entries by script or command: count and slowest
            // (the list is sorted slowest first).
            let mut by: Vec<(&str, usize, u64)> = Vec::new();
            for (us, what) in &p.redis.slow {
                match by.iter_mut().find(|b| b.0 == what) {
                    Some(b) => b.1 += 1,
                    None => by.push((what, 1, *us)),
                }
            }
            let list: Vec<String> = by
                .iter()
                .map(|(what, n, us)| format!("`{what}` ×{n} (max {:.1} ms)", *us as f64 / 1000.0))
                .collect();
            out.push_str(&format!("; slow log ≥ 2 ms: {}", list.join(", ")));
        }
        out.push_str(".\n");
    }
    print!("{out}");
}
