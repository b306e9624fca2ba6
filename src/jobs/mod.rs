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

pub mod availability;
pub mod fence;
pub mod lease;
pub mod purge;
pub mod rollup;

use std::{collections::HashMap, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::{
    fence::{Fence, JobError},
    lease::Locker,
};
use crate::{app::AppState, config::ConfigError};

/// Settings of the leased jobs (environment variables in brackets).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Independent Redis servers for the leases [`BOXOFFICE_LOCK_URLS`,
    /// comma-separated; default `REDIS_URL`].
    pub lock_urls: Vec<String>,
    /// Lease TTL [`BOXOFFICE_LEASE_TTL_MS`, default 10000].
    pub lease_ttl: Duration,
    /// [`BOXOFFICE_ROLLUP_MS`, default 60000]
    pub rollup_every: Duration,
    /// [`BOXOFFICE_AVAILABILITY_MS`, default 2000]
    pub availability_every: Duration,
    /// [`BOXOFFICE_PURGE_MS`, default 600000]
    pub purge_every: Duration,
    /// Published outbox rows are kept this long [`BOXOFFICE_OUTBOX_RETENTION_SECONDS`, default 86400].
    pub outbox_retention: Duration,
    /// In-process cache of the public catalog [`BOXOFFICE_CATALOG_CACHE_MS`, default 1000].
    pub catalog_cache: Duration,
    /// How this instance is named in `job_fences` and `job_runs`
    /// [`BOXOFFICE_INSTANCE_NAME`, default `pid<pid>@<addr>`].
    pub instance: Option<String>,
}

impl JobsConfig {
    /// Reads the settings; `redis_url` is the default lock server.
    ///
    /// # Errors
    /// A value out of range, or no lock server for a cluster `REDIS_URL`.
    pub fn from_map(env: &HashMap<String, String>, redis_url: &str) -> Result<Self, ConfigError> {
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let ms = |k: &str, default: u64, min: u64, max: u64| -> Result<Duration, ConfigError> {
            let v = match get(k) {
                None => default,
                Some(v) => v.parse().map_err(|_| {
                    ConfigError::new(format!("{k}={v:?} is not a non-negative integer"))
                })?,
            };
            if !(min..=max).contains(&v) {
                return Err(ConfigError::new(format!(
                    "{k} must be between {min} and {max}"
                )));
            }
            Ok(Duration::from_millis(v))
        };
        let lock_urls: Vec<String> = match get("BOXOFFICE_LOCK_URLS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None if redis_url.starts_with("redis-cluster://") => {
                return Err(ConfigError::new(
                    "BOXOFFICE_LOCK_URLS must name independent Redis servers when REDIS_URL is a cluster (a lease inside one cluster is not Redlock)",
                ));
            }
            None => vec![redis_url.to_owned()],
        };
        if lock_urls.is_empty()
            || lock_urls
                .iter()
                .any(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return Err(ConfigError::new(
                "BOXOFFICE_LOCK_URLS must be redis:// or rediss:// URLs, comma-separated",
            ));
        }
        Ok(Self {
            lock_urls,
            lease_ttl: ms("BOXOFFICE_LEASE_TTL_MS", 10_000, 200, 600_000)?,
            rollup_every: ms("BOXOFFICE_ROLLUP_MS", 60_000, 10, 3_600_000)?,
            availability_every: ms("BOXOFFICE_AVAILABILITY_MS", 2_000, 10, 600_000)?,
            purge_every: ms("BOXOFFICE_PURGE_MS", 600_000, 10, 86_400_000)?,
            outbox_retention: Duration::from_secs(
                ms("BOXOFFICE_OUTBOX_RETENTION_SECONDS", 86_400, 0, 31_536_000)?.as_millis() as u64,
            ),
            catalog_cache: ms("BOXOFFICE_CATALOG_CACHE_MS", 1_000, 0, 60_000)?,
            instance: get("BOXOFFICE_INSTANCE_NAME").map(str::to_owned),
        })
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

    async fn round(self, state: &AppState, fence: &Fence) -> Result<i64, JobError> {
        match self {
            Job::Rollup => rollup::round(state, fence).await,
            Job::Availability => availability::round(state, fence).await,
            Job::Purge => purge::round(state, fence).await,
        }
    }
}

/// Who holds a lease, as written to `job_fences` and `job_runs`.
pub fn holder(state: &AppState) -> String {
    match &state.config.jobs.instance {
        Some(name) => name.clone(),
        None => format!("pid{}@{}", std::process::id(), state.config.addr),
    }
}

/// Starts one runner per leased job (plus the seat gauges, which every
/// instance keeps); they end when `shutdown` is cancelled.
pub fn spawn_all(state: &AppState, shutdown: &CancellationToken, set: &mut JoinSet<()>) {
    let locker = match Locker::new(
        &state.config.jobs.lock_urls,
        state.config.jobs.lease_ttl,
        state.redis.keys().prefix(),
    ) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "leased jobs not started");
            return;
        }
    };
    for job in Job::ALL {
        set.spawn(run_leased(
            state.clone(),
            locker.clone(),
            job,
            shutdown.clone(),
        ));
    }
    set.spawn(availability::gauge_loop(state.clone(), shutdown.clone()));
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
async fn run_leased(state: AppState, locker: Locker, job: Job, shutdown: CancellationToken) {
    let name = job.name();
    let retry = (locker.ttl() / 5).max(Duration::from_millis(20));
    let holder = holder(&state);
    loop {
        let Some(lease) = locker.try_acquire(name).await else {
            if pause(&shutdown, follower_wait(&locker, name, retry).await).await {
                continue;
            }
            return;
        };
        let fence = match Fence::take(&state.pg, name, &holder).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(job = name, error = %e, "no fencing token; lease given back");
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
            match job.round(&state, &fence).await {
                Ok(items) => {
                    metrics::counter!("boxoffice_job_rounds_total", "job_name" => name)
                        .increment(1);
                    tracing::debug!(job = name, items, "round done");
                }
                Err(e @ JobError::Fenced { .. }) => {
                    tracing::warn!(job = name, error = %e, "write refused: a newer leader took over");
                    break;
                }
                Err(JobError::Store(e)) => {
                    tracing::warn!(job = name, error = %e, "round failed; retried next interval");
                }
            }
            tokio::select! {
                () = lost.cancelled() => break,
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(job.every(&state.config.jobs)) => {}
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
/// from PostgreSQL: `leased_once(state, locker, "restore:<event>", ...)`).
/// `None` when another instance holds the lease. The lease is renewed
/// (every third of its TTL) while `work` runs, so work longer than the TTL
/// keeps it, and released afterwards. `work` must commit its writes with
/// [`Fence::commit`]: if a renewal fails (a pause, a partition) and another
/// instance takes over, those writes are refused.
///
/// # Errors
/// Whatever `work` returns.
pub async fn leased_once<T, F, Fut>(
    state: &AppState,
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
    let result = match Fence::take(&state.pg, name, &holder(state)).await {
        Ok(fence) => work(fence).await,
        Err(e) => Err(e.into()),
    };
    renewed.release(locker).await;
    Some(result)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::JobsConfig;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn lock_servers_default_to_redis_url_and_parse_a_list() {
        let c = JobsConfig::from_map(&env(&[]), "redis://r:6379").unwrap();
        assert_eq!(c.lock_urls, ["redis://r:6379"]);
        let c = JobsConfig::from_map(
            &env(&[(
                "BOXOFFICE_LOCK_URLS",
                "redis://a:1, redis://b:2,redis://c:3",
            )]),
            "redis://r:6379",
        )
        .unwrap();
        assert_eq!(c.lock_urls, ["redis://a:1", "redis://b:2", "redis://c:3"]);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (k, v, redis) in [
            ("BOXOFFICE_LOCK_URLS", "http://a:1", "redis://r"),
            ("BOXOFFICE_LEASE_TTL_MS", "50", "redis://r"),
            ("BOXOFFICE_ROLLUP_MS", "soon", "redis://r"),
            ("BOXOFFICE_CATALOG_CACHE_MS", "600000", "redis://r"),
            // A lease inside one cluster is not Redlock: name servers.
            ("BOXOFFICE_PURGE_MS", "1000", "redis-cluster://r:7000"),
        ] {
            let err = JobsConfig::from_map(&env(&[(k, v)]), redis)
                .unwrap_err()
                .to_string();
            let named = if redis.starts_with("redis-cluster") {
                "BOXOFFICE_LOCK_URLS"
            } else {
                k
            };
            assert!(err.contains(named), "{k}={v}: {err}");
        }
    }
}
