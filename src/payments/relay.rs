//! The outbox relay: confirmed payments and charges, written to the
//! `outbox` table in the same transaction as the money, are published to
//! the Redis stream `boxoffice:events` (under the key prefix), at least
//! once, with the outbox row's `message_id` as the stable event id.
//!
//! Several instances may run it: `for update skip locked` keeps two relays
//! off the same rows, so a message is published twice only if a relay dies
//! between XADD and its commit. Rows are taken in id order, so one relay
//! publishes each user's messages in order.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::{StoreError, pg::Pg, redis::Redis};

/// Stream length kept (approximately).
const STREAM_MAXLEN: i64 = 1_000_000;

#[derive(sqlx::FromRow)]
struct Message {
    id: i64,
    message_id: Uuid,
    topic: String,
    user_id: String,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
}

/// Publishes up to one batch; returns how many were published.
///
/// # Errors
/// A store is unavailable (the batch is retried later).
pub async fn publish_batch(redis: &Redis, pg: &Pg) -> Result<usize, StoreError> {
    let stream = redis.keys().outbox_stream();
    let published = pg
        .guard(async {
            let mut tx = pg.pool().begin().await?;
            let batch: Vec<Message> = sqlx::query_as(
                r"select id, message_id, topic, user_id, payload, created_at from outbox
                  where published_at is null order by id limit 200
                  for update skip locked",
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut ids = Vec::with_capacity(batch.len());
            for m in &batch {
                let fields = vec![
                    ("message_id".to_owned(), m.message_id.to_string()),
                    ("outbox_id".to_owned(), m.id.to_string()),
                    ("topic".to_owned(), m.topic.clone()),
                    ("user_id".to_owned(), m.user_id.clone()),
                    ("payload".to_owned(), m.payload.to_string()),
                    (
                        "created_at".to_owned(),
                        crate::time::rfc3339_ms(m.created_at),
                    ),
                ];
                if redis.xadd(&stream, fields, STREAM_MAXLEN).await.is_err() {
                    // Publish what went out; the rest waits for Redis.
                    break;
                }
                ids.push(m.id);
            }
            sqlx::query(r"update outbox set published_at = now() where id = any($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(ids.len())
        })
        .await?;
    let lag: Option<f64> = pg
        .guard(
            sqlx::query_scalar(
                r"select extract(epoch from now() - min(created_at))::float8 from outbox where published_at is null",
            )
            .fetch_one(pg.pool()),
        )
        .await?;
    metrics::gauge!("boxoffice_outbox_lag_seconds").set(lag.unwrap_or(0.0));
    metrics::counter!("boxoffice_outbox_published_total").increment(published as u64);
    Ok(published)
}
