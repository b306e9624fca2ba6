//! The outbox relay: confirmed payments and charges, written to the
//! `outbox` table in the same transaction as the money, are published to
//! the Redis stream `boxoffice:events` (under the key prefix), at least
//! once, with the outbox row's `message_id` as the stable event id.
//!
//! Every instance runs it, and one at a time publishes: each batch's
//! transaction first takes a transaction-level advisory lock
//! ([`RELAY_LOCK`]), and a relay that finds it taken publishes nothing that
//! round. So the stream holds the messages in the order their rows are
//! taken (by id, among the committed ones), whichever instances relay, and
//! a message is published twice only if a relay dies between its `XADD`s
//! and its commit. Several relays taking batches side by side (`for update
//! skip locked`, as before) could append a later batch ahead of an earlier
//! one: a refund ahead of the payment it refunds.
//!
//! Redis may lose the stream (restarted empty, flushed, a failed-over
//! shard) after the rows were marked. The stream's ready mark goes with
//! it, and the relay then publishes nothing until the reconciler has put
//! every row PostgreSQL still keeps back in line ([`restore_stream`]):
//! those messages reach the new stream again, ahead of newer ones, and
//! consumers drop what they already had by `message_id`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    jobs::{
        self,
        fence::{Fence, JobError},
    },
    store::{StoreError, Stores, redis::RELAY_PUBLISH, reply::bad_reply},
};

/// Messages per batch, at most.
pub const BATCH: usize = 200;
/// Messages per script call, at most: a batch goes out in calls of this
/// many, one after the other. Redis runs one script at a time, and 200
/// `XADD`s in one call held every other command back for 3–16 ms during a
/// sale on the 2-core box (`SLOWLOG`); 50 hold it about a quarter as long.
/// The batch is still one PostgreSQL commit.
pub const PER_CALL: usize = 50;
/// Stream length kept (approximately).
const STREAM_MAXLEN: i64 = 1_000_000;
/// The lease (and `job_fences` name) of [`restore_stream`].
const RESTORE_LEASE: &str = "restore:outbox";
/// The advisory lock (`pg_try_advisory_xact_lock`) a relay holds while it
/// publishes a batch, and [`restore_stream`] while it makes rows pending
/// again: "boxout" in ASCII.
pub const RELAY_LOCK: i64 = 0x626f_786f_7574;

#[derive(sqlx::FromRow)]
struct Message {
    id: i64,
    message_id: Uuid,
    topic: String,
    user_id: String,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
}

/// Publishes up to one batch; returns how many were published (0 also
/// when another relay is publishing).
///
/// # Errors
/// A store is unavailable or the script's reply makes no sense (the batch
/// is retried later; nothing of it was marked).
pub async fn publish_batch(stores: &Stores) -> Result<usize, StoreError> {
    let Stores { redis, pg } = stores;
    let keys = vec![
        redis.keys().outbox_stream(),
        redis.keys().outbox_stream_ready(),
    ];
    // A Redis that fails a call comes out as `Ok(Err(..))`: what the calls
    // before it sent is marked (or, when none did, the transaction is
    // dropped) and the error is returned after the lag gauge, which must
    // keep growing through an outage.
    let outcome = pg
        .guard(async {
            let mut tx = pg.begin().await?;
            let mine: bool = sqlx::query_scalar(r"select pg_try_advisory_xact_lock($1)")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !mine {
                return Ok(Ok(0));
            }
            let batch: Vec<Message> = sqlx::query_as(
                r"select id, message_id, topic, user_id, payload, created_at from outbox
                  where published_at is null order by id limit $1",
            )
            .bind(BATCH as i64)
            .fetch_all(&mut *tx)
            .await?;
            if batch.is_empty() {
                return Ok(Ok(0));
            }
            // In order, [`PER_CALL`] messages a call (`lua/relay_publish.lua`),
            // until a call sends fewer than it was given: what went out is
            // marked, the rest waits for Redis (or, when the script answers
            // `lost`, for the stream's restore, which sends every kept
            // message again). A call that fails ends the batch too, after
            // the calls before it are marked.
            let (mut sent, mut failed) = (0, None);
            for part in batch.chunks(PER_CALL) {
                let mut args = Vec::with_capacity(1 + 6 * part.len());
                args.push(STREAM_MAXLEN.to_string());
                for m in part {
                    args.extend([
                        m.message_id.to_string(),
                        m.id.to_string(),
                        m.topic.clone(),
                        m.user_id.clone(),
                        m.payload.to_string(),
                        crate::time::rfc3339_ms(m.created_at),
                    ]);
                }
                let n = match redis.run(&RELAY_PUBLISH, keys.clone(), args).await {
                    Ok(reply) if reply == "lost" => 0,
                    Ok(reply) => match reply.parse::<usize>() {
                        Ok(n) if n <= part.len() => n,
                        _ => {
                            failed = Some(bad_reply(&RELAY_PUBLISH, reply));
                            break;
                        }
                    },
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                sent += n;
                if n < part.len() {
                    break;
                }
            }
            if sent > 0 {
                let ids: Vec<i64> = batch[..sent].iter().map(|m| m.id).collect();
                sqlx::query(r"update outbox set published_at = now() where id = any($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok(failed.map_or(Ok(sent), Err))
        })
        .await?;
    // The age of the oldest message waiting, by id: one step of the
    // pending index. (`min(created_at)` read every pending row, each batch:
    // with a backlog of 60,000 that was 7 ms of PostgreSQL per 200
    // published. Ids are taken in insert order and `created_at` is the
    // transaction's start, so the two orders differ by at most the length
    // of a payment transaction.)
    let lag: Option<f64> = pg
        .guard(
            sqlx::query_scalar(
                r"select extract(epoch from now() - created_at)::float8 from outbox
                  where published_at is null order by id limit 1",
            )
            .fetch_optional(pg.pool()),
        )
        .await?;
    metrics::gauge!("boxoffice_outbox_lag_seconds").set(lag.unwrap_or(0.0));
    let published = outcome?;
    metrics::counter!("boxoffice_outbox_published_total").increment(published as u64);
    Ok(published)
}

/// Puts the stream back after Redis lost it: when its ready mark is gone,
/// every outbox row PostgreSQL still keeps (the relayed ones until the
/// purge drops them, `BOXOFFICE_OUTBOX_RETENTION_SECONDS`) is made pending
/// again and the mark is set, so the relay sends them all again, in id
/// order, before anything newer. Returns how many were made pending, or
/// `None` when the stream was not lost (or another instance restores it).
///
/// Runs under the lease `restore:outbox`, its write fenced, so one loss is
/// restored once. Before making rows pending it takes the relays' lock
/// ([`RELAY_LOCK`]), so it waits for the relay holding a batch: one whose
/// `XADD`s went into the lost stream just before the loss commits its marks
/// first, and they are undone with the rest. A relay that takes a batch
/// after that is refused by the script until the mark is set.
///
/// # Errors
/// A store is unavailable (tried again next round).
pub async fn restore_stream(ctx: &jobs::Context) -> Result<Option<u64>, StoreError> {
    let redis = &ctx.stores.redis;
    let mark = redis.keys().outbox_stream_ready();
    if redis.exists(&mark).await? {
        return Ok(None);
    }
    let work = |fence: Fence| async move {
        if redis.exists(&mark).await? {
            return Ok(None);
        }
        let pending_again = requeue_relayed(ctx, &fence).await?;
        redis.set(&mark, "1").await?;
        Ok(Some(pending_again))
    };
    let run = match ctx.locker() {
        Ok(locker) => jobs::leased_once(ctx, &locker, RESTORE_LEASE, work).await,
        // No lease client (a lock URL it cannot parse): still fenced.
        Err(e) => {
            tracing::warn!(error = %e, "restoring the event stream without a lease");
            Some(
                match Fence::take(&ctx.stores.pg, RESTORE_LEASE, &ctx.holder()).await {
                    Ok(fence) => work(fence).await,
                    Err(e) => Err(e.into()),
                },
            )
        }
    };
    match run {
        None | Some(Err(JobError::Fenced { .. })) => Ok(None),
        Some(Ok(n)) => {
            // A new deployment's first round finds no mark and nothing
            // relayed: not worth a warning.
            if let Some(n @ 1..) = n {
                metrics::counter!("boxoffice_reconciler_fixes_total", "kind" => "stream_requeued")
                    .increment(n);
                tracing::warn!(
                    messages = n,
                    "the event stream was lost from Redis; every outbox message still kept is relayed again"
                );
            }
            Ok(n)
        }
        Some(Err(JobError::Store(e))) => Err(e),
    }
}

/// Marks every relayed row pending again, once the relay holding a batch
/// has committed (see [`restore_stream`]). A day of a busy sale's rows is
/// more than the service's 2.5 s statement timeout allows, and this runs
/// rarely and off every request's path, so it gets minutes.
async fn requeue_relayed(ctx: &jobs::Context, fence: &Fence) -> Result<u64, JobError> {
    let mut tx = ctx.stores.pg.begin().await?;
    let started = Utc::now();
    sqlx::query(r"set local statement_timeout = '300s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(r"select pg_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .execute(&mut *tx)
        .await?;
    let n = sqlx::query(r"update outbox set published_at = null where published_at is not null")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    fence.commit(tx, started, n as i64).await?;
    Ok(n)
}
