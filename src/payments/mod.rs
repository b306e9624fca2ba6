//! Payments: a hold paid from the wallet, all or nothing, exactly once.
//! Money moves only here: a payment in [`pay`], a refund in [`refund`]
//! (the HTTP handlers parse, call [`Payments`], and map the result).
//!
//! The order of a payment ([`Payments::pay`], see `docs/PAYMENTS.md`):
//! 1. `begin_payment.lua` moves the hold from *held* to *paying* after
//!    checking owner and deadline; a paying hold cannot expire or be
//!    released, and carries a short paying deadline so a crashed payer
//!    cannot block the seats for long.
//! 2. One PostgreSQL transaction ([`record`]): conditional debit, payment,
//!    sold seats (unique per seat: the last line against a double sale),
//!    ledger row, outbox message, idempotent response.
//! 3. `confirm_sale.lua` marks the seats sold, drops the hold and ends the
//!    queue entry. If the process dies before this step, the reconciler
//!    finishes it from PostgreSQL (the payment's row in
//!    `payments_unconfirmed`, deleted by the confirmation mark).
//!
//! The price comes from the catalog in PostgreSQL, never from the client.

pub mod pay;
pub mod reconcile;
pub mod refund;
pub mod relay;
pub mod sales;

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use pay::{PayError, Recorded, Refusal, record, settle, why_gone};
pub use refund::RefundError;

use crate::{
    ids::{PaymentId, UserId},
    store::{StoreError, pg::Pg, redis::Redis},
};

/// The payment flow's parts, borrowed from the running service: what
/// [`Payments::pay`], [`Payments::refund`] and [`Payments::cancel_schedule`]
/// need, and nothing of HTTP.
#[derive(Debug, Clone, Copy)]
pub struct Payments<'a> {
    pub redis: &'a Redis,
    pub pg: &'a Pg,
    pub confirmations: &'a Confirmations,
    /// How long a hold may stay *paying* (`BOXOFFICE_PAYING_TIMEOUT_SECONDS`).
    pub paying_timeout: Duration,
    /// A test's crash point (`BOXOFFICE_FAILPOINT`), effective only with
    /// the `failpoints` feature.
    pub failpoint: Option<&'a str>,
}

/// A confirmed payment; serializes to the API response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Payment {
    #[schema(value_type = String, format = Uuid)]
    pub payment_id: PaymentId,
    pub hold_id: String,
    pub event_id: String,
    pub schedule_id: String,
    pub seats: Vec<i32>,
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "100000")]
    pub amount: Decimal,
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "25000")]
    pub balance_after: Decimal,
    #[serde(with = "crate::time::serde_rfc3339_ms")]
    #[schema(value_type = String)]
    pub paid_at: DateTime<Utc>,
    /// When the payment was refunded; absent while it stands.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::time::serde_rfc3339_ms::option"
    )]
    #[schema(value_type = Option<String>)]
    pub refunded_at: Option<DateTime<Utc>>,
}

/// Marks payments' Redis side done. The commit does not wait for its WAL
/// flush (`synchronous_commit` off for this transaction only): losing a
/// mark in a crash is harmless, the reconciler replays the idempotent step
/// for rows still unconfirmed after a second.
pub async fn mark_confirmed(pg: &Pg, payment_ids: &[PaymentId]) {
    let r = pg
        .guard(
            sqlx::query(
                r"with relaxed as (select set_config('synchronous_commit', 'off', true))
                  delete from payments_unconfirmed
                  using relaxed where payment_id = any($1)",
            )
            .bind(payment_ids)
            .execute(pg.pool()),
        )
        .await;
    if let Err(e) = r {
        tracing::warn!(payments = payment_ids.len(), error = %e, "could not mark payments confirmed; the reconciler will");
    }
}

/// Confirmation marks, written off the answer's path in batches: one
/// statement for the payments confirmed while the previous one ran and
/// during a short linger after the first, so that a busy second's marks
/// cost a few statements and commits rather than one per few payments.
/// A stopping instance writes the marks still queued ([`Self::finish`]),
/// so a clean stop leaves no payment for another instance to replay.
#[derive(Clone, Debug)]
pub struct Confirmations {
    queue: mpsc::Sender<PaymentId>,
    closing: CancellationToken,
    writer: TaskTracker,
}

impl Confirmations {
    /// Starts the writer; it ends when the last handle is dropped or
    /// [`Self::finish`] is called.
    pub fn start(pg: Pg) -> Self {
        const PENDING: usize = 10_000;
        const BATCH: usize = 500;
        // Far below the reconciler's second: a mark is never that late.
        const LINGER: Duration = Duration::from_millis(20);
        let (queue, mut rx) = mpsc::channel(PENDING);
        let closing = CancellationToken::new();
        let writer = TaskTracker::new();
        let stop = closing.clone();
        writer.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut closed = false;
            loop {
                tokio::select! {
                    got = rx.recv_many(&mut batch, BATCH) => if got == 0 { break },
                    // No more marks are taken; those queued are written.
                    () = stop.cancelled(), if !closed => {
                        rx.close();
                        closed = true;
                        continue;
                    }
                }
                if batch.len() < BATCH && !closed {
                    tokio::time::sleep(LINGER).await;
                    while batch.len() < BATCH
                        && let Ok(id) = rx.try_recv()
                    {
                        batch.push(id);
                    }
                }
                mark_confirmed(&pg, &batch).await;
                batch.clear();
            }
        });
        writer.close();
        Self {
            queue,
            closing,
            writer,
        }
    }

    /// Queues a mark; when the writer is far behind (or stopped) the mark
    /// is dropped and left to the reconciler.
    pub fn push(&self, payment_id: PaymentId) {
        if self.queue.try_send(payment_id).is_err() {
            tracing::debug!(%payment_id, "confirmation queue full; the reconciler will mark it");
        }
    }

    /// Stops taking marks and waits, at most `limit`, until those queued
    /// are written; true when they are.
    pub async fn finish(&self, limit: Duration) -> bool {
        self.closing.cancel();
        tokio::time::timeout(limit, self.writer.wait())
            .await
            .is_ok()
    }
}

#[derive(sqlx::FromRow)]
struct PaymentRow {
    payment_id: PaymentId,
    user_id: String,
    event_id: String,
    schedule_id: String,
    hold_id: String,
    amount: Decimal,
    seats: Vec<i32>,
    paid_at: DateTime<Utc>,
    balance_after: Option<Decimal>,
    refunded_at: Option<DateTime<Utc>>,
}

impl PaymentRow {
    fn into_payment(self) -> (String, Payment) {
        (
            self.user_id,
            Payment {
                payment_id: self.payment_id,
                hold_id: self.hold_id,
                event_id: self.event_id,
                schedule_id: self.schedule_id,
                seats: self.seats,
                amount: self.amount.normalize(),
                balance_after: self.balance_after.unwrap_or_default().normalize(),
                paid_at: self.paid_at,
                refunded_at: self.refunded_at,
            },
        )
    }
}

/// One payment with its owner.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn get(pg: &Pg, id: PaymentId) -> Result<Option<(String, Payment)>, StoreError> {
    let row: Option<PaymentRow> = pg
        .guard(
            sqlx::query_as(
                r"select p.payment_id, p.user_id, p.event_id, p.schedule_id, p.hold_id, p.amount, p.seats, p.paid_at,
                         l.balance_after, p.refunded_at
                  from payments p
                  left join ledger l on l.payment_id = p.payment_id and l.kind = 'payment'
                  where p.payment_id = $1",
            )
            .bind(id)
            .fetch_optional(pg.pool()),
        )
        .await?;
    Ok(row.map(PaymentRow::into_payment))
}

/// A user's payments, newest first.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn of_user(pg: &Pg, user: &UserId) -> Result<Vec<Payment>, StoreError> {
    let rows: Vec<PaymentRow> = pg
        .guard(
            sqlx::query_as(
                r"select p.payment_id, p.user_id, p.event_id, p.schedule_id, p.hold_id, p.amount, p.seats, p.paid_at,
                         l.balance_after, p.refunded_at
                  from payments p
                  left join ledger l on l.payment_id = p.payment_id and l.kind = 'payment'
                  where p.user_id = $1
                  order by p.paid_at desc
                  limit 500",
            )
            .bind(user.as_str())
            .fetch_all(pg.pool()),
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.into_payment().1).collect())
}
