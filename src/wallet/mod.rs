//! Prepaid wallets: exact money in PostgreSQL.
//!
//! The balance is a cache of the ledger's sum, changed only together with a
//! ledger row in one transaction by a conditional update (`balance +
//! amount`, or `balance - amount where balance >= amount`), never by
//! read-modify-write: concurrent charges and payments on one wallet queue
//! on the row lock and none is lost. `check (balance >= 0)` is the last
//! line. Amounts are `rust_decimal`; they are never floats.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    idempotency,
    ids::{IdempotencyKey, UserId},
    money::{Money, format_amount},
    store::{StoreError, pg::Pg},
};

fn money<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_amount(*d))
}

/// A wallet's balance.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn balance(pg: &Pg, user: &UserId) -> Result<Decimal, StoreError> {
    let b: Option<Decimal> = pg
        .guard(
            sqlx::query_scalar(r"select balance from wallets where user_id = $1")
                .bind(user.as_str())
                .fetch_optional(pg.pool()),
        )
        .await?;
    Ok(b.unwrap_or(Decimal::ZERO).normalize())
}

/// A completed charge; serializes to the API response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Charged {
    pub transaction_id: Uuid,
    #[serde(serialize_with = "money")]
    #[schema(value_type = String, example = "50000")]
    pub amount: Decimal,
    #[serde(serialize_with = "money")]
    #[schema(value_type = String, example = "75000")]
    pub balance: Decimal,
}

/// Credits the wallet (creating it on first use), appends the ledger row
/// and the outbox message, and stores the idempotent response, in one
/// transaction. Returns the response body as stored.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn charge(
    pg: &Pg,
    user: &UserId,
    amount: Money,
    key: Option<&IdempotencyKey>,
) -> Result<(Charged, String), StoreError> {
    let transaction_id = Uuid::now_v7();
    let amount = amount.amount();
    pg.guard(async {
        let mut tx = pg.pool().begin().await?;
        let balance: Decimal = sqlx::query_scalar(
            r"insert into wallets (user_id, balance) values ($1, $2)
              on conflict (user_id) do update set balance = wallets.balance + excluded.balance, updated_at = now()
              returning balance",
        )
        .bind(user.as_str())
        .bind(amount)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            r"insert into ledger (transaction_id, user_id, kind, amount, balance_after)
              values ($1, $2, 'charge', $3, $4)",
        )
        .bind(transaction_id)
        .bind(user.as_str())
        .bind(amount)
        .bind(balance)
        .execute(&mut *tx)
        .await?;
        let charged = Charged { transaction_id, amount, balance: balance.normalize() };
        let body = serde_json::to_string(&charged).expect("serializes");
        sqlx::query(r"insert into outbox (topic, user_id, payload) values ('wallet.charged', $1, $2)")
            .bind(user.as_str())
            .bind(serde_json::json!({"user_id": user, "transaction_id": transaction_id,
                                     "amount": format_amount(amount), "balance": format_amount(balance)}))
            .execute(&mut *tx)
            .await?;
        if let Some(key) = key {
            idempotency::complete(&mut tx, user, key, 201, &body).await?;
        }
        tx.commit().await?;
        Ok((charged, body))
    })
    .await
}

/// One ledger entry; `amount` is signed (+ charge, − payment).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LedgerEntry {
    #[serde(skip)]
    pub seq: i64,
    pub transaction_id: Uuid,
    /// `charge` or `payment`.
    pub kind: String,
    #[serde(serialize_with = "money")]
    #[schema(value_type = String, example = "-50000")]
    pub amount: Decimal,
    #[serde(serialize_with = "money")]
    #[schema(value_type = String, example = "25000")]
    pub balance_after: Decimal,
    pub created_at: DateTime<Utc>,
}

/// A page of the ledger, newest first; `next` is the cursor of the next page.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn history(
    pg: &Pg,
    user: &UserId,
    limit: u32,
    before: Option<i64>,
) -> Result<(Vec<LedgerEntry>, Option<i64>), StoreError> {
    let mut rows: Vec<LedgerEntry> = pg
        .guard(
            sqlx::query_as(
                r"select seq, transaction_id, kind, amount, balance_after, created_at
                  from ledger
                  where user_id = $1 and ($2::bigint is null or seq < $2)
                  order by seq desc
                  limit $3",
            )
            .bind(user.as_str())
            .bind(before)
            .bind(i64::from(limit) + 1)
            .fetch_all(pg.pool()),
        )
        .await?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.seq)
    } else {
        None
    };
    Ok((rows, next))
}
