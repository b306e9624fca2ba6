//! Wiring: connects the stores, builds the state ([`crate::state`]), the
//! rate limiters and the router, runs the server and the background loops
//! (handing each its own parts) until shutdown.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::UserVerifier,
    config::Config,
    effects::Effects,
    holds::coalesce::Holds,
    http::limit::RateLimits,
    queue::coalesce::{Joins, Statuses},
    state::AppState,
    store::{coalesce::Coalescer, keys::Keys, pg::Pg, redis::Redis},
    token::TokenSigner,
};

/// How long a stopping service waits for the payments, charges and
/// refunds still running to their end after their connections are gone
/// (each of their waits is bounded by a store's timeout, seconds at most).
const EFFECTS_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a stopping service waits for its queued confirmation marks
/// (one statement per 500; PostgreSQL's statement timeout bounds each).
const MARKS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A built, bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on its own address (`BOXOFFICE_METRICS_ADDR`), if set.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    /// The HTTP rate limiters (per process).
    limits: Arc<RateLimits>,
}

impl Application {
    /// Connects to Redis and PostgreSQL (applying migrations) and binds the
    /// listener.
    ///
    /// # Errors
    /// Development secrets on a non-loopback address, an unusable user
    /// assertion key, an unreachable dependency, a failed migration, or an
    /// address in use; the message says which.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.check_secrets_for_listening()?;
        let users = Arc::new(UserVerifier::new(&config.user_jwt)?);
        let metrics = crate::telemetry::metrics_handle();
        let keys = Keys::new(config.redis_prefix.clone());
        let redis = Redis::connect(&config.redis_url, keys)
            .await
            .with_context(|| format!("cannot use Redis at {}", redact(&config.redis_url)))?;
        let pg = Pg::connect_with(&config.database_url, pg_options(&config))
            .await
            .with_context(|| {
                format!("cannot use PostgreSQL at {}", redact(&config.database_url))
            })?;
        let backlog = config.http.listen_backlog;
        let listener = crate::server::listen(config.addr, backlog)
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(
                crate::server::listen(addr, backlog)
                    .with_context(|| format!("cannot listen on {addr} (BOXOFFICE_METRICS_ADDR)"))?,
            ),
            None => None,
        };
        let tokens = Arc::new(TokenSigner::new(config.token_secret.expose()));
        let limits = Arc::new(RateLimits::new(&config));
        let confirmations = crate::payments::Confirmations::start(pg.clone());
        let status_polls = Arc::new(Coalescer::new(Statuses {
            redis: redis.clone(),
        }));
        let joins = Arc::new(Coalescer::new(Joins {
            redis: redis.clone(),
        }));
        let holds = Arc::new(Coalescer::new(Holds {
            redis: redis.clone(),
        }));
        let state = AppState::new(crate::state::Parts {
            config: Arc::new(config),
            redis,
            status_polls,
            joins,
            holds,
            pg,
            confirmations,
            metrics,
            tokens,
            users,
            schedule_ids: Arc::default(),
            public_catalog: Arc::default(),
            seeds: Arc::default(),
            streams: Arc::default(),
            autopilot: Arc::default(),
            effects: Effects::default(),
        });
        Ok(Self {
            listener,
            metrics_listener,
            state,
            limits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where `/metrics` is served when it has its own address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The HTTP rate limiters this service's router uses.
    pub fn limits(&self) -> &Arc<RateLimits> {
        &self.limits
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, finishes
    /// in-flight requests and stops the background loops at a safe point.
    ///
    /// # Errors
    /// The server failed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            metrics_listener,
            state,
            limits: rate_limits,
        } = self;
        let mut loops = tokio::task::JoinSet::new();
        if state.config.background {
            crate::background::spawn_all(
                &state.reconciler(),
                &state.autopilot,
                &shutdown,
                &mut loops,
            );
        }
        loops.spawn(rate_limits.clone().prune(shutdown.clone()));
        // The mark of life other instances read to take over what a dead
        // one claimed (docs/PAYMENTS.md), whether or not the loops run.
        loops.spawn(state.pg.clone().stay_alive(shutdown.clone()));
        let limits = state.config.http;
        warn_if_polls_reconnect(limits);
        if let Some(l) = metrics_listener {
            tracing::info!(addr = %l.local_addr()?, "metrics listening");
            let router = crate::http::metrics_router(state.clone());
            let stop = shutdown.clone();
            loops.spawn(async move {
                if let Err(e) = crate::server::serve(l, router, limits, stop).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
        }
        // Streams are served whether or not the background loops run.
        loops.spawn(state.streams.clone().run(
            state.redis.clone(),
            state.config.tick_interval,
            shutdown.clone(),
        ));
        let router = crate::http::router(state.clone(), rate_limits);
        tracing::info!(addr = %listener.local_addr()?, "boxoffice listening");
        crate::server::serve(listener, router, limits, shutdown.clone())
            .await
            .context("server error")?;
        shutdown.cancel();
        // Requests that run to their end outlive their connections; their
        // every wait is bounded by a store's timeout.
        if !state.effects.finish(EFFECTS_GRACE).await {
            tracing::warn!("payments or charges still running at shutdown");
        }
        // Their confirmation marks, and any still queued, before the pool
        // closes (a mark lost is replayed by another instance's reconciler).
        if !state.confirmations.finish(MARKS_GRACE).await {
            tracing::warn!("confirmation marks still unwritten at shutdown");
        }
        while loops.join_next().await.is_some() {}
        state.redis.quit().await;
        state.pg.close().await;
        tracing::info!("boxoffice stopped");
        Ok(())
    }
}

/// The pool size, and the `slow_pg_ms:<n>` failpoint (test builds only).
fn pg_options(config: &Config) -> crate::store::pg::PgOptions {
    #[cfg(feature = "failpoints")]
    let slow_payment = config
        .failpoint
        .as_deref()
        .and_then(|f| f.strip_prefix("slow_pg_ms:"))
        .and_then(|n| n.parse().ok())
        .map(std::time::Duration::from_millis);
    #[cfg(not(feature = "failpoints"))]
    let slow_payment = None;
    crate::store::pg::PgOptions {
        max_connections: config.pg_max_connections,
        slow_payment,
    }
}

/// Hides the password of a URL for log lines and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutdown signal received; draining");
}

/// A keep-alive connection waits for its next request at most the idle
/// timeout; a waiting page that polls less often than that reconnects for
/// every poll (in a measured sale, two connections a buyer instead of one:
/// docs/bench/surge-17.md).
fn warn_if_polls_reconnect(limits: crate::config::HttpLimits) {
    if polls_reconnect(limits) {
        tracing::warn!(
            idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
            longest_poll_ms = crate::queue::pacing::MAX_POLL_MS,
            "BOXOFFICE_HTTP_IDLE_TIMEOUT_MS is at most the longest poll interval: waiting pages reconnect for their polls"
        );
    }
}

/// Whether a page polling at the longest interval the queue hands out
/// would find its keep-alive connection closed.
fn polls_reconnect(limits: crate::config::HttpLimits) -> bool {
    limits.idle_timeout.as_millis() <= u128::from(crate::queue::pacing::MAX_POLL_MS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_limits_keep_a_polling_page_connected() {
        let defaults = std::collections::HashMap::new();
        let mut limits = crate::config::Config::from_map(&defaults).unwrap().http;
        assert!(!super::polls_reconnect(limits));
        // The header-read timeout no longer bounds the wait between polls.
        limits.header_timeout = std::time::Duration::from_secs(1);
        assert!(!super::polls_reconnect(limits));
        limits.idle_timeout = std::time::Duration::from_secs(10);
        assert!(super::polls_reconnect(limits));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
