//! The state every request handler shares ([`AppState`]), built once by
//! `app.rs`. It holds no HTTP type (the rate limiters are handed to their
//! middleware by `http::router`), and the background side never sees it:
//! the loops, jobs and the reconciler get only the parts they work with
//! ([`AppState::stores`], [`AppState::jobs`], [`AppState::reconciler`]).

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    auth::UserVerifier,
    catalog::cache::{PublicCatalog, ScheduleIds},
    config::Config,
    fair::Seeds,
    jobs,
    payments::{Confirmations, reconcile},
    queue::{autopilot::Autopilot, stream::Hub},
    store::{Stores, pg::Pg, redis::Redis},
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
    pub confirmations: Confirmations,
    /// Schedule ids per event (immutable after creation), cached.
    pub schedule_ids: Arc<ScheduleIds>,
    /// The public event list, cached for a second or two.
    pub public_catalog: Arc<PublicCatalog>,
    /// Fair start: draw seeds (immutable), cached.
    pub seeds: Arc<Seeds>,
    /// Open queue streams of this instance.
    pub streams: Arc<Hub>,
    /// Admitted buyers' latency windows and the admission autopilot's view.
    pub autopilot: Arc<Autopilot>,
}

impl AppState {
    /// Both stores.
    pub fn stores(&self) -> Stores {
        Stores {
            redis: self.redis.clone(),
            pg: self.pg.clone(),
        }
    }

    /// What the leased jobs and background loops work with.
    pub fn jobs(&self) -> jobs::Context {
        jobs::Context {
            stores: self.stores(),
            config: self.config.clone(),
        }
    }

    /// What the reconciler works with (its loop, and the admin rebuild).
    pub fn reconciler(&self) -> reconcile::Context {
        reconcile::Context {
            jobs: self.jobs(),
            schedule_ids: self.schedule_ids.clone(),
        }
    }
}
