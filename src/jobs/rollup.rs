//! The sales rollup: adds confirmed payments to `sales_hourly` (per event,
//! schedule and hour) so the sales report reads a few rows per schedule and
//! hour plus the short tail of payments not rolled up yet, whatever the
//! number of payments.
//!
//! A payment is in the rollup or in the tail, never both and never twice:
//! one transaction takes a batch of the tail (`payments_not_rolled_up`,
//! a row per payment written by the payment's own statement), deletes those
//! rows and adds their payments' sums, and it commits only under the newest
//! fencing token. A late commit (a payment whose transaction ends after a
//! later one) is simply found by the next round: the tail's rows, not a
//! time or id watermark, say what is left. `for update skip locked` lets a
//! new leader roll up around rows a paused old leader still has locked;
//! those stay in the tail when the old leader is refused.
//!
//! Refunds go much the same way (a `rolled_up` flag on refund rows, which
//! are few), their seats added to `refunds` and their amount taken off
//! `revenue` in the hour of the refund (so `revenue` is net, `seats` counts
//! every seat ever sold and `refunds` the seats given back).

use chrono::{DateTime, Utc};

use super::{
    Context,
    fence::{Fence, JobError},
};

/// Payments per transaction: bounds the locks and the transaction's length.
const BATCH: i64 = 5_000;

const ROLL_UP: &str = r"
with taken as (
    select event_id, payment_id from payments_not_rolled_up
    order by event_id, payment_id
    limit $1
    for update skip locked
), done as (
    delete from payments_not_rolled_up t using taken k
    where t.event_id = k.event_id and t.payment_id = k.payment_id
), batch as (
    select p.payment_id, p.event_id, p.schedule_id, p.paid_at, p.seats, p.amount
    from taken k join payments p using (payment_id)
), sums as (
    select event_id, schedule_id, date_trunc('hour', paid_at) as hour,
           count(*) as payments, sum(cardinality(seats))::int8 as seats, sum(amount) as revenue
    from batch group by 1, 2, 3
), added as (
    insert into sales_hourly as h (event_id, schedule_id, hour, seats, revenue, payments)
    select event_id, schedule_id, hour, seats, revenue, payments from sums
    on conflict (event_id, schedule_id, hour) do update
    set seats = h.seats + excluded.seats,
        revenue = h.revenue + excluded.revenue,
        payments = h.payments + excluded.payments
)
select count(*) from batch";

const ROLL_UP_REFUNDS: &str = r"
with batch as (
    select r.refund_id, p.event_id, p.schedule_id, r.created_at, p.seats, r.amount
    from refunds r join payments p on p.payment_id = r.payment_id
    where not r.rolled_up
    order by r.refund_id
    limit $1
    for update of r skip locked
), flip as (
    update refunds r set rolled_up = true from batch b where r.refund_id = b.refund_id
), sums as (
    select event_id, schedule_id, date_trunc('hour', created_at) as hour,
           sum(cardinality(seats))::int8 as refunds, sum(amount) as amount
    from batch group by 1, 2, 3
), added as (
    insert into sales_hourly as h (event_id, schedule_id, hour, seats, refunds, revenue, payments)
    select event_id, schedule_id, hour, 0, refunds, -amount, 0 from sums
    on conflict (event_id, schedule_id, hour) do update
    set refunds = h.refunds + excluded.refunds,
        revenue = h.revenue + excluded.revenue
)
select count(*) from batch";

/// One round: rolls up every payment and every refund not rolled up yet,
/// in batches.
///
/// # Errors
/// Fenced out, or PostgreSQL failed (nothing of that batch stays).
pub async fn round(ctx: &Context, fence: &Fence) -> Result<i64, JobError> {
    let mut total = 0;
    loop {
        let mut tx = ctx.stores.pg.begin().await?;
        let started: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()")
            .fetch_one(&mut *tx)
            .await?;
        let n: i64 = sqlx::query_scalar(ROLL_UP)
            .bind(BATCH)
            .fetch_one(&mut *tx)
            .await?;
        // Test-only: a leader that stalls mid-rollup (the tests SIGSTOP it
        // here, past its lease).
        #[cfg(feature = "failpoints")]
        if n > 0 && ctx.config.failpoint.as_deref() == Some("slow_rollup") {
            tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        }
        fence.commit(tx, started, n).await?;
        total += n;
        if n < BATCH {
            break;
        }
    }
    metrics::counter!("boxoffice_rollup_payments_total").increment(total as u64);
    loop {
        let mut tx = ctx.stores.pg.begin().await?;
        let started: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()")
            .fetch_one(&mut *tx)
            .await?;
        let n: i64 = sqlx::query_scalar(ROLL_UP_REFUNDS)
            .bind(BATCH)
            .fetch_one(&mut *tx)
            .await?;
        fence.commit(tx, started, n).await?;
        total += n;
        if n < BATCH {
            break;
        }
    }
    Ok(total)
}
