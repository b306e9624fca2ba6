//! Payments: a hold paid from the wallet, all or nothing, exactly once.
//!
//! The order (see `docs/PAYMENTS.md`):
//! 1. `begin_payment.lua` moves the hold from *held* to *paying* after
//!    checking owner and deadline; a paying hold cannot expire or be
//!    released, and carries a short paying deadline so a crashed payer
//!    cannot block the seats for long.
//! 2. One PostgreSQL transaction ([`record`]): conditional debit, payment,
//!    sold seats (unique per seat: the last line against a double sale),
//!    ledger row, outbox message, idempotent response.
//! 3. `confirm_sale.lua` marks the seats sold, drops the hold and ends the
//!    queue entry. If the process dies before this step, the reconciler
//!    finishes it from PostgreSQL (`redis_confirmed = false`).
//!
//! The price comes from the catalog in PostgreSQL, never from the client.

pub mod reconcile;
pub mod refund;
pub mod relay;

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    ids::{HoldId, IdempotencyKey, UserId},
    money::{SLOT, cut_slots, format_amount},
    store::{StoreError, pg::Pg, pg::constraint_of},
};

fn money<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_amount(*d))
}

fn time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// A confirmed payment; serializes to the API response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Payment {
    pub payment_id: Uuid,
    pub hold_id: String,
    pub event_id: String,
    pub schedule_id: String,
    pub seats: Vec<i32>,
    #[serde(serialize_with = "money")]
    #[schema(value_type = String, example = "100000")]
    pub amount: Decimal,
    #[serde(serialize_with = "money")]
    #[schema(value_type = String, example = "25000")]
    pub balance_after: Decimal,
    #[serde(serialize_with = "time")]
    #[schema(value_type = String)]
    pub paid_at: DateTime<Utc>,
    /// When the payment was refunded; absent while it stands.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_time")]
    #[schema(value_type = Option<String>)]
    pub refunded_at: Option<DateTime<Utc>>,
}

fn opt_time<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => time(t, s),
        None => s.serialize_none(),
    }
}

/// What the payment transaction decided.
#[derive(Debug)]
pub enum Recorded {
    Paid {
        payment: Payment,
        body: String,
    },
    InsufficientFunds {
        balance: Decimal,
        amount: Decimal,
    },
    /// This hold was paid before.
    AlreadyPaid {
        payment_id: Uuid,
    },
    /// A seat is already sold in PostgreSQL (Redis lost it): refused.
    SeatTaken,
    /// The schedule was cancelled: nothing of it is sold any more.
    Cancelled,
    /// The statement was sent but its answer was lost (a timeout, a
    /// connection gone), and asking again failed too: it may have
    /// committed. Nothing may be undone on this basis.
    Unknown(StoreError),
}

/// The payment id of a hold, if it was paid.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn payment_of_hold(pg: &Pg, hold: &HoldId) -> Result<Option<Uuid>, StoreError> {
    Ok(paid_hold(pg, hold).await?.map(|(id, _)| id))
}

/// The payment of a hold with the user who paid it, if it was paid.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn paid_hold(pg: &Pg, hold: &HoldId) -> Result<Option<(Uuid, String)>, StoreError> {
    pg.guard(
        sqlx::query_as(r"select payment_id, user_id from payments where hold_id = $1")
            .bind(hold.to_string())
            .fetch_optional(pg.pool()),
    )
    .await
}

/// Step 2 as one statement, so one round trip and one commit: price from
/// the catalog, conditional debit (none for a free schedule), payment, sold seats (unique per seat),
/// ledger row, outbox message and the idempotent response, all or nothing.
/// Data-modifying CTEs run exactly once each on one snapshot; a constraint
/// violation anywhere undoes the whole statement.
const RECORD: &str = r"
with price as (
    select price * cardinality($6::int[]) as amount
    from schedules where event_id = $3 and schedule_id = $4 and cancelled_at is null
), debit as (
    update wallets w set balance = w.balance - p.amount, updated_at = now()
    from price p
    where w.user_id = $2 and p.amount > 0 and w.balance >= p.amount
    returning w.balance, p.amount
), free as (
    -- A free schedule: no wallet row is written (or created), no ledger
    -- row; the zero-amount payment is the registration.
    select coalesce((select balance from wallets where user_id = $2), 0) as balance, p.amount
    from price p where p.amount = 0
), settled as (
    select balance, amount from debit union all select balance, amount from free
), paid as (
    insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats, paid_at)
    select $1, $2, $3, $4, $5, d.amount, $6, $7 from settled d
    returning payment_id
), sold as (
    insert into sold_seats (event_id, schedule_id, seat_no, payment_id)
    select $3, $4, unnest($6::int[]), p.payment_id from paid p
), entry as (
    insert into ledger (transaction_id, user_id, kind, amount, balance_after, payment_id)
    select $8, $2, 'payment', -d.amount, d.balance, $1 from debit d
), body as (
    select $9 || trim_scale(d.amount)::text || $10 || trim_scale(d.balance)::text || $11 as text
    from settled d
), message as (
    insert into outbox (topic, user_id, payload)
    select 'payment.confirmed', $2, b.text::jsonb from body b
), answer as (
    update idempotency i set status = 201, response = b.text
    from body b where i.user_id = $2 and i.key = $12
)
select p.amount, d.balance, b.text,
       (select balance from wallets where user_id = $2) as balance_before,
       (select payment_id from payments where hold_id = $5) as paid_before
from (select) one left join price p on true left join settled d on true left join body b on true";

/// What [`RECORD`] returns: amount (none for a cancelled schedule),
/// balance after (when debited), the stored body (when debited), the
/// balance before, and the payment of this hold if it was paid before.
type RecordRow = (
    Option<Decimal>,
    Option<Decimal>,
    Option<String>,
    Option<Decimal>,
    Option<Uuid>,
);

/// Step 2: the one PostgreSQL transaction of a payment ([`RECORD`]). When
/// the statement's answer is lost, the outcome is settled by asking again:
/// paid after all, not paid (an error), or [`Recorded::Unknown`].
///
/// # Errors
/// PostgreSQL unavailable and nothing was written.
pub async fn record(
    pg: &Pg,
    user: &UserId,
    hold: &HoldId,
    seats: &[u32],
    key: Option<&IdempotencyKey>,
) -> Result<Recorded, StoreError> {
    let seats: Vec<i32> = seats.iter().map(|&s| s as i32).collect();
    let mut payment = Payment {
        payment_id: Uuid::now_v7(),
        hold_id: hold.to_string(),
        event_id: hold.event.to_string(),
        schedule_id: hold.schedule.to_string(),
        seats,
        amount: SLOT,
        balance_after: SLOT,
        paid_at: Utc::now().trunc_subsecs(6),
        refunded_at: None,
    };
    let template = serde_json::to_string(&payment).expect("serializes");
    let pieces = cut_slots(&template, &["amount", "balance_after"]);
    let result = pg
        .guard(async {
            let mut conn = pg.pool().acquire().await?;
            let row = sqlx::query_as::<_, RecordRow>(RECORD)
                .bind(payment.payment_id)
                .bind(user.as_str())
                .bind(hold.event.as_str())
                .bind(hold.schedule.as_str())
                .bind(&payment.hold_id)
                .bind(&payment.seats)
                .bind(payment.paid_at)
                .bind(Uuid::now_v7())
                .bind(&pieces[0])
                .bind(&pieces[1])
                .bind(&pieces[2])
                .bind(key.map(IdempotencyKey::as_str))
                .fetch_one(&mut *conn)
                .await;
            pg.give_back_payment_conn(conn).await;
            row
        })
        .await;
    match result {
        Ok((Some(amount), Some(balance_after), Some(body), _, _)) => {
            payment.amount = amount.normalize();
            payment.balance_after = balance_after.normalize();
            debug_assert_eq!(body, serde_json::to_string(&payment).expect("serializes"));
            Ok(Recorded::Paid { payment, body })
        }
        // Not debited because this hold was paid before (whatever the
        // balance now), or because the balance is short.
        Ok((_, _, _, _, Some(payment_id))) => Ok(Recorded::AlreadyPaid { payment_id }),
        Ok((None, _, _, _, None)) => Ok(Recorded::Cancelled),
        Ok((Some(amount), _, _, balance, None)) => Ok(Recorded::InsufficientFunds {
            balance: balance.unwrap_or_default().normalize(),
            amount: amount.normalize(),
        }),
        Err(e @ StoreError::Unavailable { .. }) => settle(pg, hold, e).await,
        Err(e) => match constraint_of(&e).as_deref() {
            Some("sold_seats_once") => Ok(Recorded::SeatTaken),
            // A hold paid before.
            Some("payments_hold_once") => match payment_of_hold(pg, hold).await? {
                Some(payment_id) => Ok(Recorded::AlreadyPaid { payment_id }),
                None => Err(e),
            },
            _ => Err(e),
        },
    }
}

/// After an outage error the statement may still have committed (sent,
/// then the answer lost): asks PostgreSQL whether this hold was paid.
///
/// # Errors
/// `e` itself when the hold was not paid (nothing was written).
pub async fn settle(pg: &Pg, hold: &HoldId, e: StoreError) -> Result<Recorded, StoreError> {
    let paid = match payment_of_hold(pg, hold).await {
        Ok(Some(id)) => get(pg, id).await,
        Ok(None) => return Err(e),
        Err(again) => Err(again),
    };
    match paid {
        Ok(Some((_, payment))) => {
            let body = serde_json::to_string(&payment).expect("serializes");
            Ok(Recorded::Paid { payment, body })
        }
        _ => Ok(Recorded::Unknown(e)),
    }
}

/// Marks payments' Redis side done. The commit does not wait for its WAL
/// flush (`synchronous_commit` off for this transaction only): losing a
/// mark in a crash is harmless, the reconciler replays the idempotent step
/// for rows still unconfirmed after a second.
pub async fn mark_confirmed(pg: &Pg, payment_ids: &[Uuid]) {
    let r = pg
        .guard(
            sqlx::query(
                r"with relaxed as (select set_config('synchronous_commit', 'off', true))
                  update payments set redis_confirmed = true
                  from relaxed where payment_id = any($1)",
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
/// statement for every payment confirmed while the previous one ran.
#[derive(Clone, Debug)]
pub struct Confirmations(mpsc::Sender<Uuid>);

impl Confirmations {
    /// Starts the writer; it ends when the last handle is dropped.
    pub fn start(pg: Pg) -> Self {
        const PENDING: usize = 10_000;
        const BATCH: usize = 500;
        let (tx, mut rx) = mpsc::channel(PENDING);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                mark_confirmed(&pg, &batch).await;
                batch.clear();
            }
        });
        Self(tx)
    }

    /// Queues a mark; when the writer is far behind the mark is dropped and
    /// left to the reconciler.
    pub fn push(&self, payment_id: Uuid) {
        if self.0.try_send(payment_id).is_err() {
            tracing::debug!(%payment_id, "confirmation queue full; the reconciler will mark it");
        }
    }
}

#[derive(sqlx::FromRow)]
struct PaymentRow {
    payment_id: Uuid,
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
pub async fn get(pg: &Pg, id: Uuid) -> Result<Option<(String, Payment)>, StoreError> {
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
