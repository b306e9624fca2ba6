//! The one timeout + circuit-breaker wrapper both stores put in front of
//! every call: a call whose breaker is open fails at once, a call that
//! outlives its timeout or fails with an outage counts against the breaker
//! and answers [`StoreError::Unavailable`], and an error the server
//! answered (a constraint, a script error) keeps the breaker closed and
//! answers [`StoreError::Internal`]. Each failure is counted in
//! `boxoffice_dependency_errors_total{dependency,kind}`, and every call's
//! whole time (a pool's wait included) goes into
//! `boxoffice_dependency_duration_seconds{dependency}`.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::{Dependency, StoreError, breaker::Breaker};

/// Records one call's time under its dependency. The handle is looked up
/// once per dependency (the recorder is installed before the stores
/// connect), so a call pays one atomic push, not a registry lookup.
fn record_duration(dep: Dependency, took: Duration) {
    static HANDLES: [OnceLock<metrics::Histogram>; 2] = [OnceLock::new(), OnceLock::new()];
    let i = match dep {
        Dependency::Redis => 0,
        Dependency::Postgres => 1,
    };
    HANDLES[i]
        .get_or_init(|| {
            metrics::histogram!("boxoffice_dependency_duration_seconds", "dependency" => dep.as_str())
        })
        .record(took.as_secs_f64());
}

/// How a store judges one of its client's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server is not answering (connection lost, pool exhausted).
    Outage,
    /// The client's own timeout fired: an outage counted as `timeout`.
    TimedOut,
    /// The server answered and said no: the connection is fine.
    Answered,
    /// The server answered "not now" (a lock wait or a serialization
    /// conflict it gave up on): the connection is fine, but the request may
    /// be retried, so it answers `Unavailable` without counting against the
    /// breaker: contention on one hot row must not shut out everyone.
    Busy,
}

/// Runs `call` under `timeout` behind `breaker`. `judge` classifies an
/// error of the call; `on_outage` runs after every outage or timeout
/// (`None` when the timeout fired), e.g. to refresh a cluster's routing.
///
/// # Errors
/// `Unavailable` when the breaker is open, the call timed out or `judge`
/// says outage; `Internal` wrapping the client's error otherwise.
pub async fn guard<T, E>(
    breaker: &Breaker,
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
    judge: impl FnOnce(&E) -> Verdict,
    on_outage: impl FnOnce(Option<&E>),
) -> Result<T, StoreError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let dep = breaker.dependency();
    let failed = |kind: &'static str, reason: String| {
        metrics::counter!("boxoffice_dependency_errors_total", "dependency" => dep.as_str(), "kind" => kind).increment(1);
        StoreError::Unavailable { dep, reason }
    };
    if !breaker.allow() {
        return Err(failed("circuit_open", "circuit open".into()));
    }
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, call).await;
    record_duration(dep, started.elapsed());
    match outcome {
        Ok(Ok(v)) => {
            breaker.success();
            Ok(v)
        }
        Ok(Err(e)) => match judge(&e) {
            Verdict::Answered => {
                breaker.success();
                Err(StoreError::internal(dep, e))
            }
            Verdict::Busy => {
                breaker.success();
                Err(failed("busy", e.to_string()))
            }
            verdict => {
                breaker.failure();
                on_outage(Some(&e));
                let kind = if verdict == Verdict::TimedOut {
                    "timeout"
                } else {
                    "error"
                };
                Err(failed(kind, e.to_string()))
            }
        },
        Err(_) => {
            breaker.failure();
            on_outage(None);
            Err(failed("timeout", "timed out".into()))
        }
    }
}
