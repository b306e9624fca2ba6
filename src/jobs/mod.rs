//! Work that must run on one instance at a time: the sales rollup
//! ([`rollup`]), the availability notifications ([`availability`]) and the
//! purges of old rows ([`purge`]).
//!
//! Every instance runs a runner per job; the runners compete for the job's
//! Redlock lease ([`lease`]), the winner takes a fencing token ([`fence`])
//! and runs rounds every interval while it renews the lease (every third of
//! its TTL). Each round's PostgreSQL writes commit only if its token is
//! still the newest, so a leader that lost its lease without noticing (a
//! pause longer than the TTL) cannot write. The others read how long the
//! lease has left and try again when it runs out (at the latest every fifth
//! of the TTL), so a dead leader is replaced as soon as its lease expires,
//! at most one TTL after its last renewal (see [`follower_wait`]).
//!
//! The restore of Redis from PostgreSQL runs under a lease too, one per
//! event (`restore:<event>`): the reconciler calls [`leased_once`], which
//! renews the lease while the work runs and returns `None` when another
//! instance holds it.
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
            if pause(&shutdown, follower_wait(&locker, name, retry).await).await {
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
        let renewed = Renewed::start(&locker, lease);
        let lost = renewed.lost.clone();
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
        renewed.release(&locker).await;
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// How long a follower waits before trying the lease again: until the
/// current lease runs out on a majority of the servers, and at most `retry`
/// (a lease given back on shutdown is free before it expires), plus a
/// random 1 ms to TTL/100 so followers that wake together do not split the
/// servers' votes between them.
///
/// This is what bounds a takeover. A leader renews every third of the TTL
/// to a full TTL, so when it dies its lease outlives it by two thirds of a
/// TTL to one TTL (nobody can take it sooner: that is the lease). Polling
/// every `retry` would add up to `retry` on top; waking when the lease runs
/// out adds only the jitter and one Redlock round.
async fn follower_wait(locker: &Locker, name: &str, retry: Duration) -> Duration {
    let until_free = locker.expires_in(name).await.unwrap_or(retry);
    let ttl_ms = u64::try_from(locker.ttl().as_millis()).unwrap_or(u64::MAX);
    let jitter = 1 + (uuid::Uuid::new_v4().as_u128() as u64) % (ttl_ms / 100).max(1);
    until_free.min(retry) + Duration::from_millis(jitter)
}

/// A lease kept alive by a renewal task until [`Renewed::release`];
/// `lost` is cancelled when a renewal fails.
struct Renewed {
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<lease::Lease>,
}

impl Renewed {
    fn start(locker: &Locker, lease: lease::Lease) -> Self {
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew_loop(locker.clone(), lease, lost.clone()));
        Self { lost, renewer }
    }

    /// Stops renewing and gives the lease back.
    async fn release(self, locker: &Locker) {
        self.lost.cancel();
        if let Ok(lease) = self.renewer.await {
            locker.release(&lease).await;
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
/// `None` when another instance holds the lease. The lease is renewed
/// (every third of its TTL) while `work` runs, so work longer than the TTL
/// keeps it, and released afterwards. `work` must commit its writes with
/// [`Fence::commit`]: if a renewal fails (a pause, a partition) and another
/// instance takes over, those writes are refused.
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
    let renewed = Renewed::start(locker, lease);
    let result = match Fence::take(&ctx.stores.pg, name, &ctx.holder()).await {
        Ok(fence) => work(fence).await,
        Err(e) => Err(e.into()),
    };
    renewed.release(locker).await;
    Some(result)
}
