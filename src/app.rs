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
    pub limits: Arc<crate::http::limit::RateLimits>,
    pub confirmations: crate::payments::Confirmations,
    /// Schedule ids per event (immutable after creation), cached.
    pub schedule_ids: Arc<RwLock<HashMap<EventId, Arc<Vec<ScheduleId>>>>>,
    /// Fair start: draw seeds (immutable), cached.
    pub seeds: Arc<crate::fair::Seeds>,
    /// Open queue streams of this instance.
    pub streams: Arc<crate::queue::stream::Hub>,
}

/// A built, bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Connects to Redis and PostgreSQL (applying migrations) and binds the
    /// listener.
    ///
    /// # Errors
    /// Unreachable dependency, failed migration, or an address in use; the
    /// message says which.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = crate::telemetry::metrics_handle();
        let keys = Keys::new(config.redis_prefix.clone());
        let redis = Redis::connect(&config.redis_url, keys)
            .await
            .with_context(|| format!("cannot use Redis at {}", redact(&config.redis_url)))?;
        let pg = Pg::connect(&config.database_url).await.with_context(|| {
            format!("cannot use PostgreSQL at {}", redact(&config.database_url))
        })?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
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
            schedule_ids: Arc::default(),
            seeds: Arc::default(),
            streams: Arc::default(),
            limits,
        };
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
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
        let Self { listener, state } = self;
        let mut loops = tokio::task::JoinSet::new();
        if state.config.background {
            crate::background::spawn_all(&state, &shutdown, &mut loops);
        }
        // Streams are served whether or not the background loops run.
        loops.spawn(state.streams.clone().run(
            state.redis.clone(),
            state.config.tick_interval,
            shutdown.clone(),
        ));
        let router = crate::http::router(state.clone());
        tracing::info!(addr = %listener.local_addr()?, "boxoffice listening");
        let stop = shutdown.clone();
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
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
