//! Exactly-once effects for charges, payments and refunds
//! (`Idempotency-Key`).
//!
//! pretix semantics: the first request with a key claims it (an in-flight
//! row with no status); a retry with the same key and the same request gets
//! the stored response byte for byte, also days later (kept at least 24 h);
//! the same key with a different request is `422 idempotency_key_reused`;
//! while the first is still running, `409 request_in_progress`. The
//! response is stored in the same transaction as the effect, so a replay
//! can never disagree with what happened. A claim left behind by a crashed
//! process is taken over as soon as its instance's mark of life is gone
//! ([`Pg::stay_alive`]), or after [`STALE_CLAIM_SECONDS`] when its instance
//! is unknown; one whose release
//! failed in a live process (PostgreSQL did not answer) is given back in
//! the background as soon as PostgreSQL answers again ([`once`]).
//!
//! The effect's statement runs only under an open claim and locks it first
//! ([`CLAIM_ROW`]). A statement can outlive our timeout on the server (the
//! timeout counts the wait for a connection too) and commit afterwards. So
//! a claim is given back ([`release`]) only in a way that either comes
//! first, and the statement then writes nothing, or waits for the
//! statement and finds its answer, which is then the request's answer.
//!
//! One rule for every keyed request, [`once`]: [`try_processing`] claims the
//! key or returns its saved answer ([`NextAction`], after
//! zero-to-production); then the work runs, and a failure is either stored
//! as the key's answer (the caller's refusals for good) or gives the claim
//! back. Answers are stored as status and bytes ([`Saved`]); how they are
//! written is the caller's business, so nothing here knows HTTP.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{
    ids::{IdempotencyKey, UserId},
    later::{self, Later, Step},
    store::{
        StoreError,
        pg::{ALIVE_LOCKS, Pg},
    },
};

/// An in-flight claim older than this is considered abandoned, whoever
/// made it.
pub const STALE_CLAIM_SECONDS: i64 = 60;

/// Whether a claim row is abandoned: older than the stale time (`$3`
/// seconds), or made by an instance that no longer holds its mark of life
/// (the advisory lock in namespace `$4` under the row's `owner`, in this
/// database: instances of other databases on the server are not ours;
/// [`Pg::stay_alive`]), that is, a process that died. Either way a takeover
/// is safe: the effect's statement runs only under the claim it was given
/// ([`CLAIM_ROW`]).
macro_rules! abandoned {
    () => {
        r"(created_at < now() - make_interval(secs => $3)
          or (owner is not null and not exists (
            select 1 from pg_locks where locktype = 'advisory' and granted
              and database = (select oid from pg_database where datname = current_database())
              and classid = $4::int::oid and objid = owner::oid and objsubid = 2)))"
    };
}

/// When PostgreSQL stamped a claim (`created_at`, stamped again when a
/// stale claim is taken over): it tells a request's own claim from a later
/// one under the same key.
pub type Stamp = chrono::DateTime<chrono::Utc>;

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

/// A stored answer: what the first request with a key answered, replayed
/// byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub status: u16,
    pub body: String,
}

/// What to do with a request that carries a key (zero-to-production's
/// `try_processing`).
#[derive(Debug)]
pub enum NextAction {
    /// This request owns the key: run it, and its answer is stored.
    StartProcessing,
    /// The key's stored answer.
    ReturnSavedResponse(Saved),
}

/// Why the key itself refuses the request; nothing ran.
#[derive(Debug, thiserror::Error)]
pub enum KeyRefused {
    /// The first request with this key is still running.
    #[error("a request with this Idempotency-Key is still being processed")]
    InFlight,
    /// The key was used with a different request.
    #[error("this Idempotency-Key was used with a different request")]
    Reused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request's key: scoped to a user, with the request's [`fingerprint`].
#[derive(Debug)]
pub struct Scope<'a> {
    pub user: &'a UserId,
    pub key: &'a IdempotencyKey,
    pub fingerprint: String,
}

impl<'a> Scope<'a> {
    /// `user`'s `key` for the request that does `parts` (what, to what).
    pub fn new(user: &'a UserId, key: &'a IdempotencyKey, parts: &[&str]) -> Self {
        Self {
            user,
            key,
            fingerprint: fingerprint(parts),
        }
    }
}

/// The answer of a request run under [`once`].
#[derive(Debug)]
pub enum Answered<T> {
    /// This request ran (its answer stored with its effect).
    Fresh(T),
    /// An earlier request with the key ran: its stored answer.
    Replayed(Saved),
}

/// Runs `work` at most once per key (without a key, just runs it).
///
/// A success stores its own answer, in the effect's transaction, so a
/// replay can never disagree with what happened. A failure that `kept`
/// turns into an answer is stored as the key's answer (a refusal for good:
/// insufficient funds, already paid ...); any other failure changed
/// nothing and gives the claim back, so a retry runs again.
///
/// # Errors
/// The key's refusal ([`KeyRefused`]) or `work`'s error.
pub async fn once<T, E: From<KeyRefused>>(
    pg: &Pg,
    scope: Option<Scope<'_>>,
    work: impl Future<Output = Result<T, E>>,
    kept: impl FnOnce(&E) -> Option<Saved>,
) -> Result<Answered<T>, E> {
    let Some(Scope {
        user,
        key,
        fingerprint,
    }) = scope
    else {
        return work.await.map(Answered::Fresh);
    };
    let stamp = match claim(pg, user, key, &fingerprint).await? {
        Claimed::Fresh(stamp) => stamp,
        Claimed::Saved(saved) => return Ok(Answered::Replayed(saved)),
    };
    let e = match work.await {
        Ok(done) => return Ok(Answered::Fresh(done)),
        Err(e) => e,
    };
    match kept(&e) {
        Some(saved) if complete_now(pg, user, key, &saved).await.is_ok() => {}
        // The work may have failed only in our eyes: its statement timed
        // out here and committed on the server. Then the key holds that
        // statement's answer, and that is this request's answer too.
        _ => match give_back(pg, user, key, Some(stamp)).await {
            Ok(Released::Settled(saved)) => return Ok(Answered::Replayed(saved)),
            Ok(Released::GivenBack | Released::Gone) => {}
            // PostgreSQL did not answer: the claim stays open, and the
            // client's retries would meet `request_in_progress` until it
            // goes stale. Given back as soon as PostgreSQL answers again.
            Err(_) => release_later(pg, user, key, stamp),
        },
    }
    Err(e)
}

/// Claims `key` for `user`, or returns its stored answer.
///
/// # Errors
/// The key is in flight or was used with another request; PostgreSQL
/// unavailable.
pub async fn try_processing(
    pg: &Pg,
    user: &UserId,
    key: &IdempotencyKey,
    fp: &str,
) -> Result<NextAction, KeyRefused> {
    Ok(match claim(pg, user, key, fp).await? {
        Claimed::Fresh(_) => NextAction::StartProcessing,
        Claimed::Saved(saved) => NextAction::ReturnSavedResponse(saved),
    })
}

/// What [`claim`] found: the key is this request's now, stamped; or its
/// stored answer.
#[derive(Debug)]
pub enum Claimed {
    /// This request owns the key, under this claim.
    Fresh(Stamp),
    /// The key's stored answer.
    Saved(Saved),
}

/// [`try_processing`], with the claim's stamp.
///
/// # Errors
/// As [`try_processing`].
pub async fn claim(
    pg: &Pg,
    user: &UserId,
    key: &IdempotencyKey,
    fp: &str,
) -> Result<Claimed, KeyRefused> {
    enum Claim {
        Fresh(Stamp),
        Replay(Saved),
        InFlight,
        Mismatch,
    }
    let claim = pg
        .guard(async {
            // The claim's commit does not wait for its WAL flush: the effect's
            // commit, which does, flushes everything before it, claim included;
            // a claim lost in a crash guarded no effect.
            let inserted: Option<Stamp> = sqlx::query_scalar(
                r"with relaxed as (select set_config('synchronous_commit', 'off', true))
              insert into idempotency (user_id, key, fingerprint, owner)
              select $1, $2, $3, $4 from relaxed
              on conflict (user_id, key) do nothing returning created_at",
            )
            .bind(user.as_str())
            .bind(key.as_str())
            .bind(fp)
            .bind(pg.alive_key())
            .fetch_optional(pg.pool())
            .await?;
            if let Some(stamp) = inserted {
                return Ok(Claim::Fresh(stamp));
            }
            let row: Option<(String, Option<i16>, Option<String>, bool)> = sqlx::query_as(concat!(
                r"select fingerprint, status, response, ",
                abandoned!(),
                r" from idempotency where user_id = $1 and key = $2"
            ))
            .bind(user.as_str())
            .bind(key.as_str())
            .bind(STALE_CLAIM_SECONDS as f64)
            .bind(ALIVE_LOCKS)
            .fetch_optional(pg.pool())
            .await?;
            Ok(match row {
                // Deleted between our insert and select (an abandoned claim): retry later.
                None => Claim::InFlight,
                Some((f, _, _, _)) if f != fp => Claim::Mismatch,
                Some((_, Some(status), Some(body), _)) => Claim::Replay(Saved {
                    status: status as u16,
                    body,
                }),
                Some((_, _, _, true)) => {
                    // Abandoned by a crashed request: take it over, once.
                    let took: Option<Stamp> = sqlx::query_scalar(concat!(
                        r"update idempotency set created_at = now(), owner = $5
                      where user_id = $1 and key = $2 and status is null and ",
                        abandoned!(),
                        " returning created_at"
                    ))
                    .bind(user.as_str())
                    .bind(key.as_str())
                    .bind(STALE_CLAIM_SECONDS as f64)
                    .bind(ALIVE_LOCKS)
                    .bind(pg.alive_key())
                    .fetch_optional(pg.pool())
                    .await?;
                    took.map_or(Claim::InFlight, Claim::Fresh)
                }
                Some(_) => Claim::InFlight,
            })
        })
        .await?;
    match claim {
        Claim::Fresh(stamp) => Ok(Claimed::Fresh(stamp)),
        Claim::Replay(saved) => Ok(Claimed::Saved(saved)),
        Claim::InFlight => Err(KeyRefused::InFlight),
        Claim::Mismatch => Err(KeyRefused::Reused),
    }
}

/// Stores a refusal as the key's answer (a 402, a 410...), outside any
/// effect. A success is stored by the effect's own statement (the charge,
/// payment and refund SQL in `wallet` and `payments`), so it cannot
/// disagree with what happened.
async fn complete_now(
    pg: &Pg,
    user: &UserId,
    key: &IdempotencyKey,
    saved: &Saved,
) -> Result<(), StoreError> {
    pg.guard(
        sqlx::query(
            r"update idempotency set status = $3, response = $4 where user_id = $1 and key = $2",
        )
        .bind(user.as_str())
        .bind(key.as_str())
        .bind(saved.status as i16)
        .bind(&saved.body)
        .execute(pg.pool()),
    )
    .await
    .map(drop)
}

/// What giving a claim back found ([`release`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Released {
    /// The claim was still unanswered and is gone now: no statement that
    /// checks it ([`CLAIM_ROW`]) can take effect any more.
    GivenBack,
    /// A statement under the claim committed first: its stored answer.
    Settled(Saved),
    /// No claim under this key (given back before).
    Gone,
}

/// The open claim of a user's key, locked to the end of the
/// transaction: one row while the claim is unanswered, none once it was
/// given back or answered. An effect runs only under it, so [`release`]
/// either comes first, and the effect then does nothing, or waits for the
/// effect and finds its answer. The refund's transaction runs it as it is
/// ([`lock_claim`]); one-statement effects start with it ([`Gated`]).
const CLAIM_ROW: &str = "select 1 as ok from idempotency where user_id = {user} and key = {key} and status is null for update";

/// [`CLAIM_ROW`] with the parameter numbers (`"$2"`) of the user and the
/// key.
fn claim_row(user: &str, key: &str) -> String {
    CLAIM_ROW.replace("{user}", user).replace("{key}", key)
}

/// An effect's one statement in its two forms: `effect` (the text after
/// `with`) reads the CTE `claimed`, which has one row when the statement
/// may write. Under a key, `claimed` is the request's open claim
/// ([`CLAIM_ROW`]); without one it always has its row and nothing in
/// `idempotency` is read or locked (its own prepared statement, so an
/// unkeyed payment's plan has no claim in it at all).
pub struct Gated {
    keyed: String,
    unkeyed: String,
}

impl Gated {
    /// `effect`'s two forms; `user` and `key` are its parameter numbers
    /// (`"$2"`) for the user and the `Idempotency-Key`.
    pub fn new(effect: &str, user: &str, key: &str) -> Self {
        let claim = claim_row(user, key);
        Self {
            keyed: format!("with claimed as ({claim}), {effect}"),
            unkeyed: format!("with claimed as (select 1 as ok), {effect}"),
        }
    }

    /// The form for a request with or without a key.
    pub fn sql(&self, keyed: bool) -> &str {
        if keyed { &self.keyed } else { &self.unkeyed }
    }
}

/// Locks the open claim of `user`'s `key` in `tx` ([`CLAIM_ROW`]): false
/// when it was given back or answered, and the effect must not run.
///
/// # Errors
/// The query failed.
pub async fn lock_claim(
    tx: &mut sqlx::PgConnection,
    user: &str,
    key: &IdempotencyKey,
) -> Result<bool, sqlx::Error> {
    let open: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(claim_row("$1", "$2")))
        .bind(user)
        .bind(key.as_str())
        .fetch_optional(tx)
        .await?;
    Ok(open.is_some())
}

/// The error of an effect that found its claim no longer open: nothing
/// was written. [`once`] then finds out whether another statement answered
/// the key (its answer is this request's) or it was given back (retry).
pub fn claim_closed() -> StoreError {
    StoreError::Unavailable {
        dep: crate::store::Dependency::Postgres,
        reason: "the request's Idempotency-Key claim is no longer open".into(),
    }
}

/// Gives a claim back after a failure, so a retry can run again instead
/// of seeing `request_in_progress`; or finds that the effect took place
/// after all (a statement that outlived our timeout and committed), and
/// its answer.
///
/// # Errors
/// PostgreSQL unavailable (the claim then expires after
/// [`STALE_CLAIM_SECONDS`]).
pub async fn release(pg: &Pg, user: &UserId, key: &IdempotencyKey) -> Result<Released, StoreError> {
    give_back(pg, user, key, None).await
}

/// [`release`] of the claim stamped `stamp` only, when given: a claim
/// that went stale and was taken over by a later request is that
/// request's, and is left alone ([`Released::Gone`]).
///
/// # Errors
/// As [`release`].
pub async fn give_back(
    pg: &Pg,
    user: &UserId,
    key: &IdempotencyKey,
    stamp: Option<Stamp>,
) -> Result<Released, StoreError> {
    // Two statements: when the delete waited for a statement holding the
    // claim, that statement's answer committed after the delete's
    // snapshot was taken, so only a later statement can read it.
    let row: Result<Option<Option<(i16, String)>>, StoreError> = pg
        .guard(async {
            let given = sqlx::query(
                r"delete from idempotency where user_id = $1 and key = $2 and status is null
                  and ($3::timestamptz is null or created_at = $3)",
            )
            .bind(user.as_str())
            .bind(key.as_str())
            .bind(stamp)
            .execute(pg.pool())
            .await?
            .rows_affected()
                == 1;
            if given {
                return Ok(None);
            }
            sqlx::query_as(
                r"select status, response from idempotency
                  where user_id = $1 and key = $2 and status is not null and response is not null",
            )
            .bind(user.as_str())
            .bind(key.as_str())
            .fetch_optional(pg.pool())
            .await
            .map(Some)
        })
        .await;
    let (found, released) = match row {
        Ok(None) => ("given_back", Ok(Released::GivenBack)),
        Ok(Some(Some((status, body)))) => (
            "settled",
            Ok(Released::Settled(Saved {
                status: status as u16,
                body,
            })),
        ),
        Ok(Some(None)) => ("gone", Ok(Released::Gone)),
        Err(e) => {
            tracing::warn!(error = %e, "could not release an idempotency claim");
            ("failed", Err(e))
        }
    };
    metrics::counter!("boxoffice_idempotency_releases_total", "found" => found).increment(1);
    released
}

/// Claims being given back in the background ([`release_later`]), at
/// most 10,000 at once; past that a failed release leaves its claim to go
/// stale, as a crash does.
static LATER: Later = Later::new(10_000);

/// Gives back, in the background, a claim whose release failed
/// ([`later::retry`], at most every 2 s), until PostgreSQL answers or the
/// claim is stale, when any request may take it over anyway. Only that
/// claim (`stamp`) is given back, so a retry that took the key over in
/// the meantime keeps it; and a statement that committed under it
/// meanwhile is found as its answer, as by [`release`]. The client's
/// retries meet `409 request_in_progress` until then, not for the whole
/// [`STALE_CLAIM_SECONDS`].
fn release_later(pg: &Pg, user: &UserId, key: &IdempotencyKey, stamp: Stamp) {
    let Some(slot) = LATER.slot() else {
        tracing::warn!(
            "{} claims already being given back: this one expires in {STALE_CLAIM_SECONDS} s",
            LATER.most()
        );
        return;
    };
    let (pg, user, key) = (pg.clone(), user.clone(), key.clone());
    tokio::spawn(async move {
        let stale = Duration::from_secs(STALE_CLAIM_SECONDS as u64);
        let found = later::retry(stale, Duration::from_secs(2), || async {
            match give_back(&pg, &user, &key, Some(stamp)).await {
                Ok(Released::GivenBack) => Step::Done("given_back"),
                Ok(Released::Settled(_)) => Step::Done("settled"),
                Ok(Released::Gone) => Step::Done("gone"),
                Err(_) => Step::Again("stale"),
            }
        })
        .await;
        drop(slot);
        tracing::info!(found, "retried the release of an idempotency claim");
        metrics::counter!("boxoffice_idempotency_late_releases_total", "found" => found)
            .increment(1);
    });
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
