//! Sales figures per schedule and per hour, read in one place: the rollup
//! (`jobs::rollup`'s `sales_hourly`) plus the payments and refunds not
//! rolled up yet, in one snapshot. The admin sales report and the admin
//! event view both read them here.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};

use crate::{
    ids::EventId,
    store::{StoreError, pg::Pg},
};

/// `sales`: the sales rows of event `$1`: the rollup plus the payments and
/// refunds not rolled up yet (`payments_not_rolled_up` and a partial index
/// on refunds find them; a refund counts in the hour it was made, its
/// amount off the revenue), so a read touches about as many rows at a
/// million payments as at a hundred.
macro_rules! sales_rows {
    () => {
        r"
with sales as (
    select schedule_id, hour, payments, seats, refunds, revenue
    from sales_hourly where event_id = $1
    union all
    select p.schedule_id, date_trunc('hour', p.paid_at), count(*), sum(cardinality(p.seats))::int8, 0, sum(p.amount)
    from payments_not_rolled_up t join payments p using (payment_id)
    where t.event_id = $1
    group by 1, 2
    union all
    select p.schedule_id, date_trunc('hour', r.created_at), 0, 0, sum(cardinality(p.seats))::int8, -sum(r.amount)
    from refunds r join payments p on p.payment_id = r.payment_id
    where p.event_id = $1 and not r.rolled_up
    group by 1, 2
)
"
    };
}

/// Every schedule of the event, with or without sales. `payments_refunded`
/// is read from `refunds` (one per payment, few), not from the rollup.
const PER_SCHEDULE: &str = concat!(
    sales_rows!(),
    r"select s.schedule_id,
             coalesce(sum(r.payments), 0)::int8 as payments,
             coalesce(sum(r.seats), 0)::int8 as seats_sold,
             coalesce(sum(r.refunds), 0)::int8 as seats_refunded,
             coalesce(sum(r.revenue), 0) as revenue,
             (select count(*) from refunds f join payments p on p.payment_id = f.payment_id
              where p.event_id = $1 and p.schedule_id = s.schedule_id) as payments_refunded
      from schedules s left join sales r using (schedule_id)
      where s.event_id = $1
      group by s.schedule_id order by s.schedule_id"
);

const PER_HOUR: &str = concat!(
    sales_rows!(),
    r"select hour, sum(payments)::int8 as payments, sum(seats)::int8 as seats_sold,
             sum(refunds)::int8 as seats_refunded, sum(revenue) as revenue
      from sales group by hour order by hour"
);

/// Sold, refunded and earned in a schedule or an hour. `payments` counts
/// every payment made, refunded or not; `revenue` is net of refunds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Sales {
    pub payments: i64,
    pub seats_sold: i64,
    pub seats_refunded: i64,
    #[serde(with = "crate::money::serde_amount")]
    pub revenue: Decimal,
}

/// One schedule's [`Sales`].
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ScheduleSales {
    pub schedule_id: String,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub sales: Sales,
    /// How many of `payments` were refunded.
    #[serde(skip)]
    pub payments_refunded: i64,
}

/// One hour's [`Sales`] (all schedules).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HourSales {
    #[serde(with = "crate::time::serde_rfc3339_ms")]
    pub hour: DateTime<Utc>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub sales: Sales,
}

/// A read-only snapshot whose tail is read through its partial index:
/// after a burst the index keeps the pages it grew to, which makes the
/// planner price it like the whole table and prefer scanning a million
/// rolled-up payments instead.
async fn snapshot(pg: &Pg) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    let mut tx = pg.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    sqlx::query("set local enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn schedules_in(
    c: &mut PgConnection,
    event: &EventId,
) -> Result<Vec<ScheduleSales>, sqlx::Error> {
    sqlx::query_as(PER_SCHEDULE)
        .bind(event.as_str())
        .fetch_all(c)
        .await
}

/// Sales per schedule of `event` (empty: no such event).
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn per_schedule(pg: &Pg, event: &EventId) -> Result<Vec<ScheduleSales>, StoreError> {
    pg.guard(async {
        let mut tx = snapshot(pg).await?;
        let s = schedules_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(s)
    })
    .await
}

/// Sales per schedule and per hour of `event`, from one snapshot.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn report(
    pg: &Pg,
    event: &EventId,
) -> Result<(Vec<ScheduleSales>, Vec<HourSales>), StoreError> {
    pg.guard(async {
        let mut tx = snapshot(pg).await?;
        let s = schedules_in(&mut tx, event).await?;
        let h = sqlx::query_as(PER_HOUR)
            .bind(event.as_str())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((s, h))
    })
    .await
}
