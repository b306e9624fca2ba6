//! Money per schedule of one event, from the payments that stand: what the
//! admin event view shows next to each schedule's live seat counts. (The
//! sales report, per schedule and hour, reads the hourly rollup instead.)

use rust_decimal::Decimal;

use crate::{
    ids::EventId,
    store::{StoreError, pg::Pg},
};

/// One schedule's payments; a schedule without any has no row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ScheduleMoney {
    pub schedule_id: String,
    /// Paid and not refunded.
    pub revenue: Decimal,
    /// Payments that stand (refunded ones not counted).
    pub payments: i64,
    /// Payments refunded.
    pub refunded: i64,
}

/// The money of every schedule of `event` that has a payment.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn by_schedule(pg: &Pg, event: &EventId) -> Result<Vec<ScheduleMoney>, StoreError> {
    pg.guard(
        sqlx::query_as(
            r"select schedule_id,
                     coalesce(sum(amount) filter (where refunded_at is null), 0) as revenue,
                     count(*) filter (where refunded_at is null) as payments,
                     count(*) filter (where refunded_at is not null) as refunded
              from payments where event_id = $1 group by schedule_id",
        )
        .bind(event.as_str())
        .fetch_all(pg.pool()),
    )
    .await
}
