//! poll-storm: a long queue, seeded straight into Redis, polled by tokens
//! deep in it.
//!
//! Joining 100k users over HTTP would take longer than the test itself, so
//! the waiting room is written the way `lua/join_queue.lua` writes a waiting
//! entry (same keys from `boxoffice::store::keys`, same members and
//! scores), in batches of one Lua call each, and the tokens are signed with
//! `boxoffice::token::TokenSigner` under the service's
//! `BOXOFFICE_TOKEN_SECRET`. Admission is paused, so every poll walks the
//! waiting path of `queue_status.lua` (ZRANK in a 100k sorted set).

use fred::{clients::Client, interfaces::LuaInterface};
use goose::prelude::*;
use serde_json::{Map, Value};

use boxoffice::{
    ids::{EventId, UserId},
    store::keys::Keys,
    token::{QueueClaims, TokenSigner},
};

use crate::common::{Auth, Ctx, call, ctx, fail};

/// Appends entries `ARGV[1]..=ARGV[2]` as waiting, exactly like the tail of
/// `join_queue.lua` (entry = join sequence; last poll = Redis time now).
/// User ids are 13 characters (`w` and 12 digits), like `u%012d` in the
/// redis-benchmark runs; the memory per waiting user depends on it.
const SEED: &str = r"
-- KEYS: seq, wait, poll, stats; ARGV: first, last, user prefix
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
for n = first, last do
  local u = ARGV[3] .. string.format('%012d', n)
  redis.call('ZADD', KEYS[2], n, u)
  redis.call('HSET', KEYS[3], u, now)
end
if tonumber(redis.call('GET', KEYS[1]) or '0') < last then redis.call('SET', KEYS[1], last) end
redis.call('HINCRBY', KEYS[4], 'joined_total', last - first + 1)
return last
";

const BATCH: u64 = 5_000;

pub async fn seed(
    ctx: &mut Ctx,
    redis: &Client,
    waiting: u64,
    extra: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let service = boxoffice::config::Config::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let event = EventId::parse(&ctx.event).map_err(|e| anyhow::anyhow!("{e}"))?;
    let k = Keys::new(service.redis_prefix.clone()).event(&event);
    let keys = vec![
        k.queue_seq(),
        k.queue_waiting(),
        k.queue_polled(),
        k.queue_stats(),
    ];
    let user_prefix = "w".to_owned();
    let before = crate::redis::used_memory(redis).await?;
    let started = std::time::Instant::now();
    let mut first = 1;
    while first <= waiting {
        let last = (first + BATCH - 1).min(waiting);
        let _: i64 = redis
            .eval(
                SEED,
                keys.clone(),
                vec![first.to_string(), last.to_string(), user_prefix.clone()],
            )
            .await?;
        first = last + 1;
    }
    let seeded_in = started.elapsed();
    let after = crate::redis::used_memory(redis).await?;

    // Tokens for the back half of the queue: the deepest ZRANKs, and the
    // longest poll intervals the service would hand out (ignored here).
    let signer = TokenSigner::new(service.token_secret.expose());
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let deep_from = waiting / 2 + 1;
    ctx.tokens = (deep_from..=waiting)
        .map(|n| {
            signer.sign(&QueueClaims {
                event: event.clone(),
                user: UserId::parse(&format!("{user_prefix}{n:012}")).expect("valid user id"),
                entry: n,
                issued_at: iat,
                expires_at: iat + 3600,
            })
        })
        .collect();

    let per_user = after.saturating_sub(before) as f64 / waiting as f64;
    println!(
        "poll-storm: seeded {waiting} waiting users in {:.2} s; Redis used_memory {before} -> {after} ({per_user:.0} B per waiting user)",
        seeded_in.as_secs_f64()
    );
    extra.insert("waiting_seeded".into(), waiting.into());
    extra.insert("seed_seconds".into(), seeded_in.as_secs_f64().into());
    extra.insert("seed_used_memory_before".into(), before.into());
    extra.insert("seed_used_memory_after".into(), after.into());
    extra.insert("redis_bytes_per_waiting_user".into(), per_user.into());
    extra.insert(
        "polled_positions".into(),
        format!("{deep_from}..={waiting}").into(),
    );
    Ok(())
}

/// One poll of a random deep token; it must still be waiting.
pub async fn poll(user: &mut GooseUser) -> TransactionResult {
    let tokens = &ctx().tokens;
    let token = &tokens[rand::random_range(0..tokens.len())];
    let r = call(
        user,
        GooseMethod::Get,
        "/v1/queue/status",
        "status(waiting)",
        Auth::Bearer(token),
        None,
        &[200],
    )
    .await?;
    if r.status == 200 && r.str("status") != Some("waiting") {
        return Err(fail(format!(
            "poll-storm: expected waiting, got {}",
            r.body()
        )));
    }
    Ok(())
}
