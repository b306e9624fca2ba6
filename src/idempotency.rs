//! Exactly-once effects for charges and payments (`Idempotency-Key`).
//!
//! pretix semantics: the first request with a key claims it (an in-flight
//! row with no status); a retry with the same key and the same request gets
//! the stored response byte for byte, also days later (kept at least 24 h);
//! the same key with a different request is `422 idempotency_key_reused`;
//! while the first is still running, `409 request_in_progress`. The
//! response is stored in the same transaction as the effect, so a replay
//! can never disagree with what happened. A claim left behind by a crashed
//! process is taken over after [`STALE_CLAIM_SECONDS`].

use sha2::{Digest, Sha256};

use crate::{
    ids::{IdempotencyKey, UserId},
    store::{StoreError, pg::Pg},
};

/// An in-flight claim older than this is considered abandoned.
pub const STALE_CLAIM_SECONDS: i64 = 60;

/// A request's identity for idempotency: what it does, to what.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        h.finalize(),
    )
}

#[derive(Debug)]
pub enum Claim {
    /// This request owns the key; run it and store the response.
    Fresh,
    /// The stored first response.
    Replay {
        status: u16,
        body: String,
    },
    InFlight,
    Mismatch,
}

/// Claims `key` for `user`, or says why not.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn claim(
    pg: &Pg,
    user: &UserId,
    key: &IdempotencyKey,
    fp: &str,
) -> Result<Claim, StoreError> {
    pg.guard(async {
        // The claim's commit does not wait for its WAL flush: the effect's
        // commit, which does, flushes everything before it, claim included;
        // a claim lost in a crash guarded no effect.
        let inserted = sqlx::query(
            r"with relaxed as (select set_config('synchronous_commit', 'off', true))
              insert into idempotency (user_id, key, fingerprint) select $1, $2, $3 from relaxed
              on conflict (user_id, key) do nothing",
        )
        .bind(user.as_str())
        .bind(key.as_str())
        .bind(fp)
        .execute(pg.pool())
        .await?
        .rows_affected()
            == 1;
        if inserted {
            return Ok(Claim::Fresh);
        }
        let row: Option<(String, Option<i16>, Option<String>, bool)> = sqlx::query_as(
            r"select fingerprint, status, response,
                     created_at < now() - make_interval(secs => $3)
              from idempotency where user_id = $1 and key = $2",
        )
        .bind(user.as_str())
        .bind(key.as_str())
        .bind(STALE_CLAIM_SECONDS as f64)
        .fetch_optional(pg.pool())
        .await?;
        Ok(match row {
            // Deleted between our insert and select (an abandoned claim): retry later.
            None => Claim::InFlight,
            Some((f, _, _, _)) if f != fp => Claim::Mismatch,
            Some((_, Some(status), Some(body), _)) => Claim::Replay {
                status: status as u16,
                body,
            },
            Some((_, _, _, true)) => {
                // Abandoned by a crashed request: take it over, once.
                let took = sqlx::query(
                    r"update idempotency set created_at = now()
                      where user_id = $1 and key = $2 and status is null
                        and created_at < now() - make_interval(secs => $3)",
                )
                .bind(user.as_str())
                .bind(key.as_str())
                .bind(STALE_CLAIM_SECONDS as f64)
                .execute(pg.pool())
                .await?
                .rows_affected()
                    == 1;
                if took { Claim::Fresh } else { Claim::InFlight }
            }
            Some(_) => Claim::InFlight,
        })
    })
    .await
}

/// Stores a refusal as the key's answer (a 402, a 410...), outside any
/// effect. A success is stored by the effect's own statement (the charge
/// and payment SQL in `wallet` and `payments`), so it cannot disagree with
/// what happened.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn complete_now(
    pg: &Pg,
    user: &UserId,
    key: &IdempotencyKey,
    status: u16,
    body: &str,
) -> Result<(), StoreError> {
    pg.guard(
        sqlx::query(
            r"update idempotency set status = $3, response = $4 where user_id = $1 and key = $2",
        )
        .bind(user.as_str())
        .bind(key.as_str())
        .bind(status as i16)
        .bind(body)
        .execute(pg.pool()),
    )
    .await
    .map(drop)
}

/// Gives a claim back after a failure that changed nothing, so a retry can
/// run again instead of seeing `request_in_progress`.
pub async fn release(pg: &Pg, user: &UserId, key: &IdempotencyKey) {
    let r = pg
        .guard(
            sqlx::query(
                r"delete from idempotency where user_id = $1 and key = $2 and status is null",
            )
            .bind(user.as_str())
            .bind(key.as_str())
            .execute(pg.pool()),
        )
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not release an idempotency claim; it expires in {STALE_CLAIM_SECONDS} s");
    }
}

/// Deletes records older than 25 hours (the promise is at least 24).
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn purge_old(pg: &Pg) -> Result<u64, StoreError> {
    pg.guard(
        sqlx::query(r"delete from idempotency where created_at < now() - interval '25 hours'")
            .execute(pg.pool()),
    )
    .await
    .map(|r| r.rows_affected())
}
