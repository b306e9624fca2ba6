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
pub mod relay;

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    idempotency,
    ids::{HoldId, IdempotencyKey, UserId},
    money::format_amount,
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
}

/// The payment id of a hold, if it was paid.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn payment_of_hold(pg: &Pg, hold: &HoldId) -> Result<Option<Uuid>, StoreError> {
    pg.guard(
        sqlx::query_scalar(r"select payment_id from payments where hold_id = $1")
            .bind(hold.to_string())
            .fetch_optional(pg.pool()),
    )
    .await
}

/// Step 2: the one PostgreSQL transaction of a payment.
///
/// # Errors
/// PostgreSQL unavailable (nothing was written).
pub async fn record(
    pg: &Pg,
    user: &UserId,
    hold: &HoldId,
    seats: &[u32],
    key: Option<&IdempotencyKey>,
) -> Result<Recorded, StoreError> {
    let seats: Vec<i32> = seats.iter().map(|&s| s as i32).collect();
    let payment_id = Uuid::now_v7();
    let result = pg
        .guard(async {
            let mut tx = pg.pool().begin().await?;
            let price: Decimal = sqlx::query_scalar(r"select price from schedules where event_id = $1 and schedule_id = $2")
                .bind(hold.event.as_str())
                .bind(hold.schedule.as_str())
                .fetch_one(&mut *tx)
                .await?;
            let amount = price * Decimal::from(seats.len());
            // A hold paid before is refused by `payments_hold_once` below,
            // mapped to `AlreadyPaid` after the rollback.
            // Conditional debit: no read-modify-write, no negative balance.
            let Some(balance_after): Option<Decimal> = sqlx::query_scalar(
                r"update wallets set balance = balance - $2, updated_at = now()
                  where user_id = $1 and balance >= $2
                  returning balance",
            )
            .bind(user.as_str())
            .bind(amount)
            .fetch_optional(&mut *tx)
            .await?
            else {
                let balance: Option<Decimal> = sqlx::query_scalar(r"select balance from wallets where user_id = $1")
                    .bind(user.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                return Ok(Recorded::InsufficientFunds { balance: balance.unwrap_or_default().normalize(), amount: amount.normalize() });
            };
            let paid_at = Utc::now().trunc_subsecs(6);
            sqlx::query(
                r"insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats, paid_at)
                  values ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(payment_id)
            .bind(user.as_str())
            .bind(hold.event.as_str())
            .bind(hold.schedule.as_str())
            .bind(hold.to_string())
            .bind(amount)
            .bind(&seats)
            .bind(paid_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                r"insert into sold_seats (event_id, schedule_id, seat_no, payment_id)
                  select $1, $2, unnest($3::int[]), $4",
            )
            .bind(hold.event.as_str())
            .bind(hold.schedule.as_str())
            .bind(&seats)
            .bind(payment_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                r"insert into ledger (transaction_id, user_id, kind, amount, balance_after, payment_id)
                  values ($1, $2, 'payment', $3, $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(user.as_str())
            .bind(-amount)
            .bind(balance_after)
            .bind(payment_id)
            .execute(&mut *tx)
            .await?;
            let payment = Payment {
                payment_id,
                hold_id: hold.to_string(),
                event_id: hold.event.to_string(),
                schedule_id: hold.schedule.to_string(),
                seats: seats.clone(),
                amount: amount.normalize(),
                balance_after: balance_after.normalize(),
                paid_at,
            };
            let body = serde_json::to_string(&payment).expect("serializes");
            sqlx::query(r"insert into outbox (topic, user_id, payload) values ('payment.confirmed', $1, $2::jsonb)")
                .bind(user.as_str())
                .bind(&body)
                .execute(&mut *tx)
                .await?;
            if let Some(key) = key {
                idempotency::complete(&mut tx, user, key, 201, &body).await?;
            }
            tx.commit().await?;
            Ok(Recorded::Paid { payment, body })
        })
        .await;
    match result {
        Err(e) => match constraint_of(&e).as_deref() {
            Some("sold_seats_once") => Ok(Recorded::SeatTaken),
            Some("payments_hold_once") => match payment_of_hold(pg, hold).await? {
                Some(payment_id) => Ok(Recorded::AlreadyPaid { payment_id }),
                None => Err(e),
            },
            _ => Err(e),
        },
        ok => ok,
    }
}

/// Marks the payment's Redis side done.
pub async fn mark_confirmed(pg: &Pg, payment_id: Uuid) {
    let r = pg
        .guard(
            sqlx::query(r"update payments set redis_confirmed = true where payment_id = $1")
                .bind(payment_id)
                .execute(pg.pool()),
        )
        .await;
    if let Err(e) = r {
        tracing::warn!(%payment_id, error = %e, "could not mark payment confirmed; the reconciler will");
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
                         l.balance_after
                  from payments p left join ledger l on l.payment_id = p.payment_id
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
                         l.balance_after
                  from payments p left join ledger l on l.payment_id = p.payment_id
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
