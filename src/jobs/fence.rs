//! Fencing tokens: what makes a lease safe to rely on.
//!
//! Each time an instance acquires a job's lease it takes the next token
//! from `job_fences` (`fence + 1`, one row per job). Every PostgreSQL write
//! the job makes runs in a transaction that, as its last statement before
//! the commit, reads the job's row `for share` and refuses to commit when
//! the token there is newer than its own. Taking a token updates that row,
//! so it waits for any such transaction that already passed the check; a
//! write is therefore ordered either before the new leader's token (and the
//! new leader sees it) or after (and is refused). A leader paused by GC,
//! `SIGSTOP` or a slow disk past its lease wakes up with an old token and
//! its late writes are rolled back, whatever its clock believes.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use crate::store::{StoreError, pg::Pg};

/// Why a job's write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A newer leader took a token: this instance must stop writing.
    #[error("fenced out: token {mine} is older than {newest}")]
    Fenced { mine: i64, newest: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::internal(crate::store::Dependency::Postgres, e))
    }
}

/// The token of one lease acquisition.
#[derive(Debug, Clone)]
pub struct Fence {
    pub job: String,
    pub token: i64,
    pub holder: String,
}

impl Fence {
    /// Takes the next token for `job` (call right after acquiring its lease).
    ///
    /// # Errors
    /// PostgreSQL unavailable.
    pub async fn take(pg: &Pg, job: &str, holder: &str) -> Result<Self, StoreError> {
        let token: i64 = pg
            .guard(
                sqlx::query_scalar(
                    r"insert into job_fences (name, fence, holder) values ($1, 1, $2)
                      on conflict (name) do update
                      set fence = job_fences.fence + 1, holder = excluded.holder,
                          acquired_at = clock_timestamp()
                      returning fence",
                )
                .bind(job)
                .bind(holder)
                .fetch_one(pg.pool()),
            )
            .await?;
        Ok(Self {
            job: job.to_owned(),
            token,
            holder: holder.to_owned(),
        })
    }

    /// The last statement of a job's transaction: checks that this token is
    /// still the newest, records the round in `job_runs` and commits. On a
    /// newer token the transaction is rolled back and nothing it did stays.
    ///
    /// # Errors
    /// [`JobError::Fenced`] when superseded; a store error otherwise.
    pub async fn commit(
        &self,
        mut tx: Transaction<'static, Postgres>,
        started_at: DateTime<Utc>,
        items: i64,
    ) -> Result<(), JobError> {
        let newest: i64 =
            sqlx::query_scalar(r"select fence from job_fences where name = $1 for share")
                .bind(&self.job)
                .fetch_one(&mut *tx)
                .await?;
        if newest != self.token {
            tx.rollback().await?;
            metrics::counter!("boxoffice_job_fenced_total", "job_name" => self.job.clone())
                .increment(1);
            return Err(JobError::Fenced {
                mine: self.token,
                newest,
            });
        }
        sqlx::query(
            r"insert into job_runs (name, fence, holder, started_at, items) values ($1, $2, $3, $4, $5)",
        )
        .bind(&self.job)
        .bind(self.token)
        .bind(&self.holder)
        .bind(started_at)
        .bind(items)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
