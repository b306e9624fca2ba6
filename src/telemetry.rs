//! Logs (tracing) and metrics (Prometheus) set-up, once per process.

use std::{
    sync::{Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the level.
/// Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,fred=warn,tower_http=info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
}

/// The background loops outside the leased jobs, as counted in
/// `boxoffice_background_failures_total{loop}` (the leased jobs count under
/// their job name).
pub const BACKGROUND_LOOPS: &[&str] = &[
    "admission",
    "reconcile_restore",
    "reconcile_payments",
    "reconcile_refunds",
    "reconcile_stream",
    "idempotency_purge",
    "relay",
    "sweep",
    "seat_gauges",
    "stream",
    "autopilot",
];

/// At most one `warn` line per background loop this often.
pub const LOOP_WARN_EVERY: Duration = Duration::from_secs(30);

/// Counts a failed step of a background loop in
/// `boxoffice_background_failures_total{loop}` and logs it at `warn`, at
/// most once per [`LOOP_WARN_EVERY`] per loop (a dependency down for an
/// hour must not write a line per tick); the next line says how many were
/// left out.
pub fn loop_failed(name: &'static str, error: &dyn std::fmt::Display) {
    static WARNINGS: WarnLimiter = WarnLimiter::new(LOOP_WARN_EVERY);
    metrics::counter!("boxoffice_background_failures_total", "loop" => name).increment(1);
    if let Some(suppressed) = WARNINGS.due(name) {
        tracing::warn!(task = name, error = %error, suppressed, "background loop failed; retried next round");
    }
}

/// Rate-limits repeated warnings: at most one line per key per period;
/// the ones left out are counted for the next line.
pub struct WarnLimiter {
    every: Duration,
    /// Per key: when its last line was written, and how many were left out
    /// since.
    last: Mutex<Vec<(&'static str, Instant, u64)>>,
}

impl WarnLimiter {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(Vec::new()),
        }
    }

    /// `Some(lines left out since the last one)` when a line for `key` is
    /// due now; `None` (and one more left out) when not.
    pub fn due(&self, key: &'static str) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.iter_mut().find(|(k, ..)| *k == key) {
            Some((_, at, left_out)) if at.elapsed() < self.every => {
                *left_out += 1;
                None
            }
            Some((_, at, left_out)) => {
                *at = Instant::now();
                Some(std::mem::take(left_out))
            }
            None => {
                last.push((key, Instant::now(), 0));
                Some(0)
            }
        }
    }
}

/// Buckets of the `_seconds` histograms (HTTP and store call latency), in
/// seconds: fine enough below 100 ms for a p99 to be read off them.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static bucket list is not empty")
                .install_recorder()
                .inspect(|_| register_metrics())
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// Describes every metric family and registers it at zero, so dashboards
/// and alerts see each family from the first scrape.
pub fn register_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "boxoffice_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP latency by matched route and status"
    );
    describe_histogram!(
        "boxoffice_dependency_duration_seconds",
        Unit::Seconds,
        "Time of each Redis or PostgreSQL call, a pool's wait included, by dependency"
    );
    describe_histogram!(
        "boxoffice_script_batch",
        "Requests answered per Redis call, by script: joins and status polls of one event, holds of one schedule, that arrived during the previous call are answered together"
    );
    describe_gauge!("boxoffice_queue_waiting", "Entries waiting, per event");
    describe_gauge!(
        "boxoffice_queue_admitted",
        "Entries admitted now, per event"
    );
    describe_gauge!(
        "boxoffice_queue_admission_rate",
        "Observed admissions per second (10 s moving average), per event"
    );
    describe_gauge!(
        "boxoffice_admission_rate_target",
        "Admissions per second in use: admit_per_second, or the autopilot's rate in auto mode, per event"
    );
    describe_gauge!(
        "boxoffice_admitted_p99_ms",
        "Admitted buyers' p99 latency (seat maps, holds, payments) over the last 5 s, all instances merged, per event"
    );
    describe_counter!(
        "boxoffice_queue_admissions_total",
        "Entries admitted by admission ticks, per event"
    );
    describe_counter!(
        "boxoffice_queue_evictions_total",
        "Entries dropped: idle while waiting, or admission window over"
    );
    describe_counter!(
        "boxoffice_queue_joins_total",
        "Queue joins by outcome (created, existing)"
    );
    describe_counter!(
        "boxoffice_holds_total",
        "Hold requests by outcome (placed, conflict, limit, invalid, error)"
    );
    describe_counter!(
        "boxoffice_holds_released_total",
        "Holds released by their owner"
    );
    describe_counter!(
        "boxoffice_holds_expired_total",
        "Holds that expired (state held or paying)"
    );
    describe_counter!("boxoffice_payments_total", "Payment attempts by outcome");
    describe_counter!(
        "boxoffice_wallet_charges_total",
        "Wallet charges by outcome"
    );
    describe_counter!(
        "boxoffice_reconciler_fixes_total",
        "Repairs made by the reconciler"
    );
    describe_counter!(
        "boxoffice_reconciler_failures_total",
        "Reconciler steps that failed and are retried next round (one failing event or payment never stops the others)"
    );
    describe_counter!(
        "boxoffice_background_failures_total",
        "Failed steps of background loops and leased jobs, per loop (retried next round; logged at warn at most every 30 s per loop)"
    );
    for name in BACKGROUND_LOOPS {
        metrics::counter!("boxoffice_background_failures_total", "loop" => *name).increment(0);
    }
    describe_gauge!(
        "boxoffice_outbox_lag_seconds",
        "Age of the oldest unpublished outbox message"
    );
    describe_counter!(
        "boxoffice_outbox_published_total",
        "Outbox messages published to the stream"
    );
    describe_counter!(
        "boxoffice_dependency_errors_total",
        "Failed calls to Redis or PostgreSQL by kind (error, timeout, circuit_open, busy)"
    );
    describe_counter!(
        "boxoffice_circuit_opened_total",
        "Times a dependency circuit breaker opened"
    );
    describe_counter!(
        "boxoffice_rate_limited_total",
        "Requests refused by the per-address or per-token limit"
    );
    for dep in ["redis", "postgres"] {
        for kind in ["error", "timeout", "circuit_open"] {
            metrics::counter!("boxoffice_dependency_errors_total", "dependency" => dep, "kind" => kind).increment(0);
        }
    }
    for outcome in ["placed", "conflict", "limit", "invalid"] {
        metrics::counter!("boxoffice_holds_total", "outcome" => outcome).increment(0);
    }
    metrics::counter!("boxoffice_holds_released_total").increment(0);
    metrics::counter!("boxoffice_holds_expired_total", "state" => "held").increment(0);
    for outcome in [
        "paid",
        "insufficient_funds",
        "hold_expired",
        "hold_already_paid",
        "request_in_progress",
        "dependency_unavailable",
        "internal_error",
    ] {
        metrics::counter!("boxoffice_payments_total", "outcome" => outcome).increment(0);
    }
    for dep in ["redis", "postgres"] {
        metrics::counter!("boxoffice_circuit_opened_total", "dependency" => dep).increment(0);
    }
    metrics::counter!("boxoffice_holds_total", "outcome" => "error").increment(0);
    metrics::counter!("boxoffice_wallet_charges_total", "outcome" => "ok").increment(0);
    metrics::counter!("boxoffice_reconciler_fixes_total", "kind" => "payment_finished")
        .increment(0);
    metrics::counter!("boxoffice_outbox_published_total").increment(0);
    metrics::gauge!("boxoffice_outbox_lag_seconds").set(0.0);
    metrics::counter!("boxoffice_rate_limited_total", "by" => "ip").increment(0);
    for found in ["given_back", "settled", "gone", "failed"] {
        metrics::counter!("boxoffice_idempotency_releases_total", "found" => found).increment(0);
    }
    for found in ["given_back", "settled", "gone", "stale"] {
        metrics::counter!("boxoffice_idempotency_late_releases_total", "found" => found)
            .increment(0);
    }
    for found in [
        "restored",
        "expired",
        "gone",
        "paid",
        "never_paying",
        "barred",
        "unanswered",
    ] {
        metrics::counter!("boxoffice_payment_late_aborts_total", "found" => found).increment(0);
    }
    register_http_metrics();
}

/// The connection-level counters of `crate::server` and `http::hygiene`.
fn register_http_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "boxoffice_http_connections_refused_total",
        "Connections refused because BOXOFFICE_HTTP_MAX_CONNECTIONS were open"
    );
    describe_counter!(
        "boxoffice_http_idle_closed_total",
        "Connections closed after BOXOFFICE_HTTP_IDLE_TIMEOUT_MS without a request or a byte"
    );
    describe_counter!(
        "boxoffice_http_request_timeouts_total",
        "Requests cut by BOXOFFICE_HTTP_REQUEST_TIMEOUT_MS, by the slow party (client: body not received; server)"
    );
    metrics::counter!("boxoffice_http_connections_refused_total").increment(0);
    metrics::counter!("boxoffice_http_idle_closed_total").increment(0);
    for party in ["client", "server"] {
        metrics::counter!("boxoffice_http_request_timeouts_total", "party" => party).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::WarnLimiter;

    #[test]
    fn one_line_per_key_per_period_with_the_count_left_out() {
        let limiter = WarnLimiter::new(Duration::from_millis(200));
        assert_eq!(limiter.due("relay"), Some(0));
        assert_eq!(limiter.due("relay"), None);
        assert_eq!(limiter.due("relay"), None);
        // Another loop has its own period.
        assert_eq!(limiter.due("sweep"), Some(0));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limiter.due("relay"), Some(2), "the two left out");
        assert_eq!(limiter.due("relay"), None);
    }
}
