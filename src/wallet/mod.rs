//! Prepaid wallets: exact money in PostgreSQL.
//!
//! The balance is a cache of the ledger's sum, changed only together with a
//! ledger row in one transaction by a conditional update (`balance +
//! amount`, or `balance - amount where balance >= amount`), never by
//! read-modify-write: concurrent charges and payments on one wallet queue
//! on the row lock and none is lost. `check (balance >= 0)` is the last
//! line. Amounts are `rust_decimal`; they are never floats.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    idempotency,
    ids::{IdempotencyKey, UserId},
    money::{Money, SLOT, cut_slots},
    store::{StoreError, pg::Pg},
};

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
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "50000")]
    pub amount: Decimal,
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "75000")]
    pub balance: Decimal,
}

/// A charge as one statement (one round trip, one commit): credit the
/// wallet (created on first use), ledger row, outbox message and the
/// idempotent response, all or nothing; under a key, only while the
/// request's claim is unanswered ([`idempotency::Gated`]), so a claim
/// given back after our timeout cannot be followed by the credit. No row
/// when nothing was written.
static CHARGE: LazyLock<idempotency::Gated> =
    LazyLock::new(|| idempotency::Gated::new(CHARGE_EFFECT, "$1", "$6"));
const CHARGE_EFFECT: &str = r"
wallet as (
    insert into wallets (user_id, balance) select $1, $2::numeric from claimed
    on conflict (user_id) do update set balance = wallets.balance + excluded.balance, updated_at = now()
    returning balance
), entry as (
    insert into ledger (transaction_id, user_id, kind, amount, balance_after)
    select $3, $1, 'charge', $2, w.balance from wallet w
), body as (
    select $4 || trim_scale(w.balance)::text || $5 as text from wallet w
), message as (
    insert into outbox (topic, user_id, payload)
    select 'wallet.charged', $1,
           jsonb_build_object('user_id', $1::text, 'transaction_id', $3::uuid,
                              'amount', trim_scale($2)::text, 'balance', trim_scale(w.balance)::text)
    from wallet w
), answer as (
    update idempotency i set status = 201, response = b.text
    from body b where i.user_id = $1 and i.key = $6
)
select w.balance, b.text from wallet w, body b";

/// Credits the wallet ([`CHARGE`]). Returns the response body as stored.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn charge(
    pg: &Pg,
    user: &UserId,
    amount: Money,
    key: Option<&IdempotencyKey>,
) -> Result<(Charged, String), StoreError> {
    let mut charged = Charged {
        transaction_id: Uuid::now_v7(),
        amount: amount.amount().normalize(),
        balance: SLOT,
    };
    let template = serde_json::to_string(&charged).expect("serializes");
    let pieces = cut_slots(&template, &["balance"]);
    let charged_row: Option<(Decimal, String)> = pg
        .guard(
            sqlx::query_as(CHARGE.sql(key.is_some()))
                .bind(user.as_str())
                .bind(amount.amount())
                .bind(charged.transaction_id)
                .bind(&pieces[0])
                .bind(&pieces[1])
                .bind(key.map(IdempotencyKey::as_str))
                .fetch_optional(pg.pool()),
        )
        .await?;
    // The claim was given back or answered by another request with the
    // key (`idempotency::once` finds out which): nothing was written.
    let Some((balance, body)) = charged_row else {
        return Err(idempotency::claim_closed());
    };
    charged.balance = balance.normalize();
    debug_assert_eq!(body, serde_json::to_string(&charged).expect("serializes"));
    Ok((charged, body))
}

/// One ledger entry; `amount` is signed (+ charge, − payment).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LedgerEntry {
    #[serde(skip)]
    pub seq: i64,
    pub transaction_id: Uuid,
    /// `charge` or `payment`.
    pub kind: String,
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "-50000")]
    pub amount: Decimal,
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "25000")]
    pub balance_after: Decimal,
    #[serde(with = "crate::time::serde_rfc3339_ms")]
    #[schema(value_type = String)]
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
