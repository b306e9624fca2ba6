//! Wiring: connects the stores, builds the state and router, runs the
//! server and the background loops until shutdown.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::UserVerifier,
    config::Config,
    ids::{EventId, ScheduleId},
    store::{keys::Keys, pg::Pg, redis::Redis},
    token::TokenSigner,
};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub redis: Redis,
    pub pg: Pg,
    pub metrics: PrometheusHandle,
    pub tokens: Arc<TokenSigner>,
    /// Verifies user assertions (the platform's JWTs).
    pub users: Arc<UserVerifier>,
    pub limits: Arc<crate::http::limit::RateLimits>,
    pub confirmations: crate::payments::Confirmations,
    /// Schedule ids per event (immutable after creation), cached.
    pub schedule_ids: Arc<RwLock<HashMap<EventId, Arc<Vec<ScheduleId>>>>>,
    /// The public event list, cached for a second or two.
    pub public_catalog: Arc<crate::catalog::cache::PublicCatalog>,
    /// Fair start: draw seeds (immutable), cached.
    pub seeds: Arc<crate::fair::Seeds>,
    /// Open queue streams of this instance.
    pub streams: Arc<crate::queue::stream::Hub>,
    /// Admitted buyers' latency windows and the admission autopilot's view.
    pub autopilot: Arc<crate::queue::autopilot::Autopilot>,
}

/// A built, bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on its own address (`BOXOFFICE_METRICS_ADDR`), if set.
    metrics_listener: Option<TcpListener>,
    state: AppState,
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
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let metrics_listener =
            match config.metrics_addr {
                Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen on {addr} (BOXOFFICE_METRICS_ADDR)")
                })?),
                None => None,
            };
        let tokens = Arc::new(TokenSigner::new(config.token_secret.expose()));
        let limits = Arc::new(crate::http::limit::RateLimits::new(&config));
        let confirmations = crate::payments::Confirmations::start(pg.clone());
        let state = AppState {
            config: Arc::new(config),
            redis,
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
            limits,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
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
        } = self;
        let mut loops = tokio::task::JoinSet::new();
        if state.config.background {
            crate::background::spawn_all(&state, &shutdown, &mut loops);
        }
        let limits = state.config.http;
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
        let router = crate::http::router(state.clone());
        tracing::info!(addr = %listener.local_addr()?, "boxoffice listening");
        crate::server::serve(listener, router, limits, shutdown.clone())
            .await
            .context("server error")?;
        shutdown.cancel();
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

#[cfg(test)]
mod tests {
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
