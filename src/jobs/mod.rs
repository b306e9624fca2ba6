//! Work that must run on one instance at a time: the sales rollup
//! ([`rollup`]), the availability notifications ([`availability`]) and the
//! purges of old rows ([`purge`]).
//!
//! Every instance runs a runner per job; the runners compete for the job's
//! Redlock lease ([`lease`]), the winner takes a fencing token ([`fence`])
//! and runs rounds every interval while it renews the lease (every third of
//! its TTL). Each round's PostgreSQL writes commit only if its token is
//! still the newest, so a leader that lost its lease without noticing (a
//! pause longer than the TTL) cannot write. The others retry the lease every
//! fifth of the TTL, so a dead leader is replaced within about one TTL.
//!
//! The restore of Redis from PostgreSQL can be wrapped the same way: call
//! [`leased_once`] with a job name per event (`restore:<event>`); it returns
//! `None` when another instance holds that lease.
//!
//! The jobs get their [`Context`] (the stores and the settings), built in
//! `app.rs`; they never see the HTTP layer's state.

pub mod availability;
pub mod fence;
pub mod lease;
pub mod purge;
pub mod rollup;

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::{
    fence::{Fence, JobError},
    lease::Locker,
};
use crate::{
    config::{Config, JobsConfig},
    store::Stores,
    telemetry::loop_failed,
};

/// What the jobs (and the reconciler's leased restores) work with: the
/// stores and the settings; cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub stores: Stores,
    pub config: Arc<Config>,
}

impl Context {
    /// Who holds a lease, as written to `job_fences` and `job_runs`.
    pub fn holder(&self) -> String {
        match &self.config.jobs.instance {
            Some(name) => name.clone(),
            None => format!("pid{}@{}", std::process::id(), self.config.addr),
        }
    }

    /// The lease client over the lock servers (`BOXOFFICE_LOCK_URLS`).
    ///
    /// # Errors
    /// A lock server URL that is not a Redis URL.
    pub fn locker(&self) -> Result<Locker, String> {
        Locker::new(
            &self.config.jobs.lock_urls,
            self.config.jobs.lease_ttl,
            self.stores.redis.keys().prefix(),
        )
    }
}

/// The leased jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Rollup,
    Availability,
    Purge,
}

impl Job {
    pub const ALL: [Job; 3] = [Job::Rollup, Job::Availability, Job::Purge];

    /// The lease name and `job_fences.name`.
    pub fn name(self) -> &'static str {
        match self {
            Job::Rollup => "sales_rollup",
            Job::Availability => "availability",
            Job::Purge => "purge",
        }
    }

    fn every(self, c: &JobsConfig) -> Duration {
        match self {
            Job::Rollup => c.rollup_every,
            Job::Availability => c.availability_every,
            Job::Purge => c.purge_every,
        }
    }

    async fn round(self, ctx: &Context, fence: &Fence) -> Result<i64, JobError> {
        match self {
            Job::Rollup => rollup::round(ctx, fence).await,
            Job::Availability => availability::round(ctx, fence).await,
            Job::Purge => purge::round(ctx, fence).await,
        }
    }
}

/// Starts one runner per leased job (plus the seat gauges, which every
/// instance keeps); they end when `shutdown` is cancelled.
pub fn spawn_all(ctx: &Context, shutdown: &CancellationToken, set: &mut JoinSet<()>) {
    let locker = match ctx.locker() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "leased jobs not started");
            return;
        }
    };
    for job in Job::ALL {
        metrics::counter!("boxoffice_background_failures_total", "loop" => job.name()).increment(0);
        set.spawn(run_leased(
            ctx.clone(),
            locker.clone(),
            job,
            shutdown.clone(),
        ));
    }
    set.spawn(availability::gauge_loop(ctx.clone(), shutdown.clone()));
}

/// Waits `every` or until `stop`; false means stop.
async fn pause(stop: &CancellationToken, every: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(every) => true,
    }
}

/// One job's runner: wait for the lease, take a token, run rounds while the
/// lease is renewed, give the lease back on shutdown.
async fn run_leased(ctx: Context, locker: Locker, job: Job, shutdown: CancellationToken) {
    let name = job.name();
    let retry = (locker.ttl() / 5).max(Duration::from_millis(20));
    let holder = ctx.holder();
    loop {
        let Some(lease) = locker.try_acquire(name).await else {
            if pause(&shutdown, retry).await {
                continue;
            }
            return;
        };
        let fence = match Fence::take(&ctx.stores.pg, name, &holder).await {
            Ok(f) => f,
            Err(e) => {
                loop_failed(name, &e);
                locker.release(&lease).await;
                if pause(&shutdown, retry).await {
                    continue;
                }
                return;
            }
        };
        tracing::info!(job = name, token = fence.token, %holder, "lease acquired");
        metrics::counter!("boxoffice_job_leases_total", "job_name" => name).increment(1);
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew_loop(locker.clone(), lease, lost.clone()));
        loop {
            match job.round(&ctx, &fence).await {
                Ok(items) => {
                    metrics::counter!("boxoffice_job_rounds_total", "job_name" => name)
                        .increment(1);
                    tracing::debug!(job = name, items, "round done");
                }
                Err(e @ JobError::Fenced { .. }) => {
                    tracing::warn!(job = name, error = %e, "write refused: a newer leader took over");
                    break;
                }
                Err(JobError::Store(e)) => loop_failed(name, &e),
            }
            tokio::select! {
                () = lost.cancelled() => break,
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(job.every(&ctx.config.jobs)) => {}
            }
            if lost.is_cancelled() {
                break;
            }
        }
        if lost.is_cancelled() && !shutdown.is_cancelled() {
            tracing::warn!(job = name, token = fence.token, "lease lost");
        }
        lost.cancel();
        if let Ok(lease) = renewer.await {
            locker.release(&lease).await;
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Renews the lease every third of its TTL; cancels `lost` (and returns
/// the lease for release) when renewal fails or `lost` is cancelled.
async fn renew_loop(
    locker: Locker,
    mut lease: lease::Lease,
    lost: CancellationToken,
) -> lease::Lease {
    let every = locker.ttl() / 3;
    loop {
        if !pause(&lost, every).await {
            return lease;
        }
        if !locker.renew(&mut lease).await {
            lost.cancel();
            return lease;
        }
    }
}

/// Runs `work` once under the lease `name` with a fresh fencing token, for
/// work that is triggered rather than periodic (e.g. restoring one event
/// from PostgreSQL: `leased_once(ctx, locker, "restore:<event>", ...)`).
/// `None` when another instance holds the lease; the lease is released
/// afterwards. `work` must commit its writes with [`Fence::commit`].
///
/// # Errors
/// Whatever `work` returns.
pub async fn leased_once<T, F, Fut>(
    ctx: &Context,
    locker: &Locker,
    name: &str,
    work: F,
) -> Option<Result<T, JobError>>
where
    F: FnOnce(Fence) -> Fut,
    Fut: Future<Output = Result<T, JobError>>,
{
    let lease = locker.try_acquire(name).await?;
    let result = match Fence::take(&ctx.stores.pg, name, &ctx.holder()).await {
        Ok(fence) => work(fence).await,
        Err(e) => Err(e.into()),
    };
    locker.release(&lease).await;
    Some(result)
}
