//! Refunds and cancellations: the whole amount back to the wallet, the
//! seats back on sale, exactly once.
//!
//! A refund is two steps, like a payment:
//! 1. One PostgreSQL transaction ([`record`]): the payment row is locked,
//!    a `refunds` row written (unique per payment: the race's referee), the
//!    payment marked refunded, its `sold_seats` rows removed (so the seat
//!    can be sold again while the unique constraint keeps guarding every
//!    live sale), the wallet credited with a `refund` ledger row, the outbox
//!    message `payment.refunded` and the idempotent answer stored.
//! 2. `refund_seats.lua` puts the seats back on sale in Redis and shrinks
//!    the buyer's `ubought`. If the process dies before this step, the
//!    reconciler finishes it (`refunds.redis_confirmed = false`).
//!
//! [`Payments::refund`] runs a refund under the request's `Idempotency-Key`
//! the way a payment runs ([`idempotency::once`]): a [`Refusal`] is kept
//! for replays, every other [`RefundError`] gives the claim back.
//!
//! Cancelling a schedule stops its sales at once (PostgreSQL and Redis),
//! then refunds every payment of it, each in its own transaction, so a
//! crash half-way is finished by the next call or by the reconciler.

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use super::Payments;
use crate::{
    idempotency::{self, Answered, KeyRefused, Saved, Scope},
    ids::{EventId, IdempotencyKey, PaymentId, ScheduleId, UserId},
    store::{Dependency, StoreError, pg::Pg, redis::Redis},
};

/// Why a refund was refused for good: its answer, stored for the key's
/// replays.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The payment was refunded before, by this refund.
    #[error("the payment is already refunded")]
    AlreadyRefunded { refund_id: Uuid },
}

/// Why a refund did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// Refused for good (kept for the key's replays).
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("no such payment")]
    NoSuchPayment,
    /// The `Idempotency-Key` refused the request; nothing ran.
    #[error(transparent)]
    Key(#[from] KeyRefused),
    /// A store failed and nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RefundError {
    /// The refusal for good, if this is one: the refund's answer.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl Payments<'_> {
    /// `POST /v1/admin/payments/{payment_id}/refund`: the whole amount back
    /// to the wallet and the seats back on sale, at most once per `key`
    /// (scoped to the payment's owner, as a charge's key is to the wallet's
    /// user). Returns the refund's body (as stored for replays), or the
    /// key's stored answer; `answer` writes a [`Refusal`] the way the
    /// caller answers it, to be stored as the key's answer.
    ///
    /// # Errors
    /// See [`RefundError`].
    pub async fn refund(
        &self,
        payment_id: PaymentId,
        key: Option<&IdempotencyKey>,
        answer: impl FnOnce(&Refusal) -> Saved,
    ) -> Result<Answered<String>, RefundError> {
        let Some((owner, _)) = super::get(self.pg, payment_id).await? else {
            return Err(RefundError::NoSuchPayment);
        };
        let owner = UserId::parse(&owner).map_err(|e| StoreError::Internal {
            dep: Dependency::Postgres,
            source: e.into(),
        })?;
        let scope = key.map(|key| Scope::new(&owner, key, &["refund", &payment_id.to_string()]));
        let work = self.refund_once(payment_id, key);
        idempotency::once(self.pg, scope, work, |e| e.refusal().map(answer)).await
    }

    async fn refund_once(
        &self,
        payment_id: PaymentId,
        key: Option<&IdempotencyKey>,
    ) -> Result<String, RefundError> {
        match record(self.pg, payment_id, key).await? {
            Refunded::Done { body, seats, .. } => {
                metrics::counter!("boxoffice_refunds_total", "by" => "request").increment(1);
                // Test-only crash point (the `failpoints` feature): die
                // between the commit and the Redis step; the reconciler
                // finishes it.
                #[cfg(feature = "failpoints")]
                if self.failpoint == Some("crash_after_refund_commit") {
                    panic!("failpoint crash_after_refund_commit");
                }
                if let Err(e) = release_seats(self.redis, self.pg, &seats).await {
                    tracing::warn!(%payment_id, error = %e, "refund's Redis step failed; the reconciler will finish it");
                }
                Ok(body)
            }
            Refunded::Already { refund_id } => Err(Refusal::AlreadyRefunded { refund_id }.into()),
            Refunded::NoSuchPayment => Err(RefundError::NoSuchPayment),
            // `idempotency::once` finds out who answered the key.
            Refunded::ClaimClosed => Err(idempotency::claim_closed().into()),
        }
    }
}

/// A refund; serializes to the API response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Refund {
    pub refund_id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub payment_id: PaymentId,
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "100000")]
    pub amount: Decimal,
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "150000")]
    pub balance_after: Decimal,
    pub seats: Vec<i32>,
    #[serde(with = "crate::time::serde_rfc3339_ms")]
    #[schema(value_type = String)]
    pub refunded_at: DateTime<Utc>,
}

/// What a refund needs to put the seats back in Redis.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefundedSeats {
    pub payment_id: PaymentId,
    pub user_id: String,
    pub event_id: String,
    pub schedule_id: String,
    pub seats: Vec<i32>,
}

/// The outcome of step 1.
#[derive(Debug)]
pub enum Refunded {
    /// Refunded now; `body` is the stored answer.
    Done {
        refund: Box<Refund>,
        body: String,
        seats: RefundedSeats,
    },
    /// Refunded before.
    Already {
        refund_id: Uuid,
    },
    NoSuchPayment,
    /// The request's key claim was given back, or answered by another
    /// request: nothing was written.
    ClaimClosed,
}

#[derive(sqlx::FromRow)]
struct Locked {
    user_id: String,
    event_id: String,
    schedule_id: String,
    amount: Decimal,
    seats: Vec<i32>,
    refunded_at: Option<DateTime<Utc>>,
}

/// Step 1: the PostgreSQL transaction of a refund.
///
/// # Errors
/// PostgreSQL unavailable; nothing was written.
pub async fn record(
    pg: &Pg,
    payment_id: PaymentId,
    key: Option<&IdempotencyKey>,
) -> Result<Refunded, StoreError> {
    pg.guard(async {
        let mut tx = pg.begin().await?;
        // The row lock orders concurrent refunds of one payment; the
        // unique `refunds_once` would stop a second one anyway.
        let locked: Option<Locked> = sqlx::query_as(
            r"select user_id, event_id, schedule_id, amount, seats, refunded_at
              from payments where payment_id = $1 for update",
        )
        .bind(payment_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(p) = locked else {
            return Ok(Refunded::NoSuchPayment);
        };
        if p.refunded_at.is_some() {
            let refund_id: Uuid =
                sqlx::query_scalar(r"select refund_id from refunds where payment_id = $1")
                    .bind(payment_id)
                    .fetch_one(&mut *tx)
                    .await?;
            return Ok(Refunded::Already { refund_id });
        }
        // Under a key, the effect only while the request's claim is open,
        // and the claim locked to the commit: the rule the charge and
        // payment statements follow (`idempotency::Gated`), so a claim
        // given back after our timeout is never followed by the refund.
        if let Some(key) = key
            && !idempotency::lock_claim(&mut tx, &p.user_id, key).await?
        {
            return Ok(Refunded::ClaimClosed);
        }
        let refunded_at = Utc::now().trunc_subsecs(6);
        let refund_id = Uuid::now_v7();
        sqlx::query(r"insert into refunds (refund_id, payment_id, amount) values ($1, $2, $3)")
            .bind(refund_id)
            .bind(payment_id)
            .bind(p.amount)
            .execute(&mut *tx)
            .await?;
        sqlx::query(r"update payments set refunded_at = $2 where payment_id = $1")
            .bind(payment_id)
            .bind(refunded_at)
            .execute(&mut *tx)
            .await?;
        // By the primary key (event, schedule, seat): sold_seats has no
        // index on payment_id, and a scan of every sale ever made per
        // refund would hold this payment's row lock for as long.
        sqlx::query(
            r"delete from sold_seats
              where event_id = $2 and schedule_id = $3 and seat_no = any($4) and payment_id = $1",
        )
        .bind(payment_id)
        .bind(&p.event_id)
        .bind(&p.schedule_id)
        .bind(&p.seats)
        .execute(&mut *tx)
        .await?;
        // A sale refunded before its Redis side was confirmed is never
        // finished (the reconciler skips refunded payments): its
        // confirmation is owed no more.
        sqlx::query(r"delete from payments_unconfirmed where payment_id = $1")
            .bind(payment_id)
            .execute(&mut *tx)
            .await?;
        // A free registration (amount 0) moved no money and moves none back.
        let balance_after: Decimal = if p.amount > Decimal::ZERO {
            let balance: Decimal = sqlx::query_scalar(
                r"insert into wallets (user_id, balance) values ($1, $2)
                  on conflict (user_id) do update
                  set balance = wallets.balance + excluded.balance, updated_at = now()
                  returning balance",
            )
            .bind(&p.user_id)
            .bind(p.amount)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                r"insert into ledger (transaction_id, user_id, kind, amount, balance_after, payment_id)
                  values ($1, $2, 'refund', $3, $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(&p.user_id)
            .bind(p.amount)
            .bind(balance)
            .bind(payment_id)
            .execute(&mut *tx)
            .await?;
            balance
        } else {
            sqlx::query_scalar(r"select coalesce((select balance from wallets where user_id = $1), 0)")
                .bind(&p.user_id)
                .fetch_one(&mut *tx)
                .await?
        };
        let refund = Refund {
            refund_id,
            payment_id,
            amount: p.amount.normalize(),
            balance_after: balance_after.normalize(),
            seats: p.seats.clone(),
            refunded_at,
        };
        let body = serde_json::to_string(&refund).expect("a refund serializes");
        sqlx::query(r"insert into outbox (topic, user_id, payload) values ('payment.refunded', $1, $2::jsonb)")
            .bind(&p.user_id)
            .bind(&body)
            .execute(&mut *tx)
            .await?;
        if let Some(key) = key {
            sqlx::query(
                r"update idempotency set status = 201, response = $3 where user_id = $1 and key = $2",
            )
            .bind(&p.user_id)
            .bind(key.as_str())
            .bind(&body)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Refunded::Done {
            refund: Box::new(refund),
            body,
            seats: RefundedSeats {
                payment_id,
                user_id: p.user_id,
                event_id: p.event_id,
                schedule_id: p.schedule_id,
                seats: p.seats,
            },
        })
    })
    .await
}

/// Step 2: the seats back on sale in Redis, then the refund marked done.
/// Idempotent: the reconciler replays it for refunds left unconfirmed.
///
/// # Errors
/// Redis unavailable (the reconciler finishes the step later).
pub async fn release_seats(redis: &Redis, pg: &Pg, r: &RefundedSeats) -> Result<(), StoreError> {
    let (Ok(event), Ok(schedule)) = (
        EventId::parse(&r.event_id),
        ScheduleId::parse(&r.schedule_id),
    ) else {
        return Ok(());
    };
    crate::holds::refund_seats(redis, &event, &schedule, &r.user_id, r.payment_id, &r.seats)
        .await?;
    pg.guard(
        sqlx::query(r"update refunds set redis_confirmed = true where payment_id = $1")
            .bind(r.payment_id)
            .execute(pg.pool()),
    )
    .await?;
    Ok(())
}

/// Refunds whose Redis step did not run (a crash between the steps),
/// committed more than a second ago.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn unconfirmed(pg: &Pg) -> Result<Vec<RefundedSeats>, StoreError> {
    pg.guard(
        sqlx::query_as(
            r"select p.payment_id, p.user_id, p.event_id, p.schedule_id, p.seats
              from refunds r join payments p on p.payment_id = r.payment_id
              where not r.redis_confirmed and r.created_at < now() - interval '1 second'
              order by r.created_at limit 500",
        )
        .fetch_all(pg.pool()),
    )
    .await
}

/// What a cancellation did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Cancellation {
    pub event_id: String,
    pub schedule_id: String,
    /// When the schedule was first cancelled (RFC 3339).
    pub cancelled_at: String,
    /// Live holds dropped by this call.
    pub holds_dropped: u64,
    /// Payments refunded by this call.
    pub refunded: u64,
    /// Payments of the schedule that were refunded before this call.
    pub already_refunded: u64,
}

impl Payments<'_> {
    /// `POST /v1/admin/events/{e}/schedules/{s}/cancel`: stops the
    /// schedule's sales (PostgreSQL, then Redis), then refunds every payment
    /// of it. None when there is no such schedule.
    ///
    /// # Errors
    /// A store is unavailable; calling again finishes the cancellation (so
    /// does the reconciler).
    pub async fn cancel_schedule(
        &self,
        event: &EventId,
        schedule: &ScheduleId,
    ) -> Result<Option<Cancellation>, StoreError> {
        let Some(cancelled_at) = mark_cancelled(self.pg, event, schedule).await? else {
            return Ok(None);
        };
        // Sales stop in Redis before the refunds start: no hold or payment
        // of this schedule succeeds from here on.
        let holds_dropped = crate::holds::cancel_schedule(self.redis, event, schedule)
            .await?
            .unwrap_or(0);
        let already_refunded = refunded_count(self.pg, event, schedule).await?;
        // Test-only crash point (the `failpoints` feature): stop after n
        // refunds and die.
        let stop_after = self
            .failpoint
            .filter(|_| cfg!(feature = "failpoints"))
            .and_then(|f| f.strip_prefix("crash_during_cancel_after:"))
            .and_then(|n| n.parse().ok());
        let refunded = refund_schedule(self.redis, self.pg, event, schedule, stop_after).await?;
        if stop_after.is_some() {
            panic!("failpoint crash_during_cancel_after");
        }
        tracing::info!(%event, %schedule, refunded, "schedule cancelled");
        Ok(Some(Cancellation {
            event_id: event.to_string(),
            schedule_id: schedule.to_string(),
            cancelled_at: crate::time::rfc3339_ms(cancelled_at),
            holds_dropped,
            refunded,
            already_refunded,
        }))
    }
}

/// Marks a schedule cancelled in PostgreSQL (once: the first call writes
/// the outbox message `schedule.cancelled`). None when there is no such
/// schedule.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn mark_cancelled(
    pg: &Pg,
    event: &EventId,
    schedule: &ScheduleId,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    pg.guard(async {
        let mut tx = pg.begin().await?;
        let first: Option<DateTime<Utc>> = sqlx::query_scalar(
            r"update schedules set cancelled_at = now()
              where event_id = $1 and schedule_id = $2 and cancelled_at is null
              returning cancelled_at",
        )
        .bind(event.as_str())
        .bind(schedule.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(at) = first {
            sqlx::query(
                r"insert into outbox (topic, user_id, payload)
                  values ('schedule.cancelled', '', jsonb_build_object('event_id', $1::text, 'schedule_id', $2::text, 'cancelled_at', $3::text))",
            )
            .bind(event.as_str())
            .bind(schedule.as_str())
            .bind(crate::time::rfc3339_ms(at))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Some(at));
        }
        let at: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
            r"select cancelled_at from schedules where event_id = $1 and schedule_id = $2",
        )
        .bind(event.as_str())
        .bind(schedule.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        Ok(at.flatten())
    })
    .await
}

/// Payments of a schedule not refunded yet, oldest first, a batch at a time.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn live_payments(
    pg: &Pg,
    event: &EventId,
    schedule: &ScheduleId,
    limit: i64,
) -> Result<Vec<PaymentId>, StoreError> {
    pg.guard(
        sqlx::query_scalar(
            r"select payment_id from payments
              where event_id = $1 and schedule_id = $2 and refunded_at is null
              order by paid_at limit $3",
        )
        .bind(event.as_str())
        .bind(schedule.as_str())
        .bind(limit)
        .fetch_all(pg.pool()),
    )
    .await
}

/// Payments of a schedule refunded so far.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn refunded_count(
    pg: &Pg,
    event: &EventId,
    schedule: &ScheduleId,
) -> Result<u64, StoreError> {
    let n: i64 = pg
        .guard(
            sqlx::query_scalar(
                r"select count(*) from payments
                  where event_id = $1 and schedule_id = $2 and refunded_at is not null",
            )
            .bind(event.as_str())
            .bind(schedule.as_str())
            .fetch_one(pg.pool()),
        )
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Refunds every payment of a cancelled schedule not refunded yet, each
/// in its own transaction followed by its Redis step, until none is left
/// (payments that commit while this runs are caught by the next batch).
/// Stops after `stop_after` refunds when given (a test's crash point).
/// Returns how many this call refunded.
///
/// # Errors
/// A store is unavailable; what was refunded stays refunded, and the next
/// call (or the reconciler) goes on from there.
pub async fn refund_schedule(
    redis: &Redis,
    pg: &Pg,
    event: &EventId,
    schedule: &ScheduleId,
    stop_after: Option<u64>,
) -> Result<u64, StoreError> {
    use futures::{StreamExt, TryStreamExt};
    // Refunds of different payments are independent transactions: a few
    // at a time keep a 500-seat cancellation within seconds.
    const AT_ONCE: usize = 8;
    let mut refunded = 0;
    loop {
        let room = stop_after.map_or(100, |n| n.saturating_sub(refunded).min(100));
        if room == 0 {
            return Ok(refunded);
        }
        let batch = live_payments(pg, event, schedule, room as i64).await?;
        if batch.is_empty() {
            return Ok(refunded);
        }
        let done: Vec<bool> = futures::stream::iter(batch)
            .map(|payment_id| async move {
                let Refunded::Done { seats, .. } = record(pg, payment_id, None).await? else {
                    return Ok(false);
                };
                metrics::counter!("boxoffice_refunds_total", "by" => "cancellation").increment(1);
                if let Err(e) = release_seats(redis, pg, &seats).await {
                    tracing::warn!(%payment_id, error = %e, "refund's Redis step failed; the reconciler will finish it");
                }
                Ok::<_, StoreError>(true)
            })
            .buffer_unordered(AT_ONCE)
            .try_collect()
            .await?;
        refunded += done.iter().filter(|d| **d).count() as u64;
    }
}

/// Cancelled schedules that still have payments to refund (a cancellation
/// interrupted half-way), for the reconciler.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn unfinished_cancellations(pg: &Pg) -> Result<Vec<(String, String)>, StoreError> {
    pg.guard(
        sqlx::query_as(
            r"select distinct s.event_id, s.schedule_id from schedules s
              join payments p on p.event_id = s.event_id and p.schedule_id = s.schedule_id
              where s.cancelled_at is not null and p.refunded_at is null",
        )
        .fetch_all(pg.pool()),
    )
    .await
}
