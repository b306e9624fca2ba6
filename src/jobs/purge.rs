//! Purges: idempotency records past their 24 h promise (kept 25 h),
//! outbox rows relayed longer ago than the retention, and job rounds older
//! than a day. Deletes go in bounded batches so no purge holds long locks.

use chrono::{DateTime, Utc};

use super::{
    Context,
    fence::{Fence, JobError},
};

const BATCH: i64 = 10_000;

const PURGE: &str = r"
with idem as (
    delete from idempotency where ctid in (
        select ctid from idempotency where created_at < now() - interval '25 hours' limit $1)
    returning 1
), relayed as (
    delete from outbox where id in (
        select id from outbox
        where published_at is not null and published_at < now() - make_interval(secs => $2)
        limit $1)
    returning 1
), runs as (
    delete from job_runs where id in (
        select id from job_runs where finished_at < now() - interval '24 hours' limit $1)
    returning 1
)
select (select count(*) from idem), (select count(*) from relayed), (select count(*) from runs)";

/// One round: purges until less than a batch is left.
///
/// # Errors
/// Fenced out, or PostgreSQL failed.
pub async fn round(ctx: &Context, fence: &Fence) -> Result<i64, JobError> {
    let retention = ctx.config.jobs.outbox_retention.as_secs_f64();
    let mut total = 0;
    loop {
        let mut tx = ctx.stores.pg.begin().await?;
        let started: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()")
            .fetch_one(&mut *tx)
            .await?;
        let (idem, relayed, runs): (i64, i64, i64) = sqlx::query_as(PURGE)
            .bind(BATCH)
            .bind(retention)
            .fetch_one(&mut *tx)
            .await?;
        let n = idem + relayed + runs;
        fence.commit(tx, started, n).await?;
        metrics::counter!("boxoffice_purged_total", "table" => "idempotency")
            .increment(idem as u64);
        metrics::counter!("boxoffice_purged_total", "table" => "outbox").increment(relayed as u64);
        total += n;
        if idem.max(relayed).max(runs) < BATCH {
            return Ok(total);
        }
    }
}
