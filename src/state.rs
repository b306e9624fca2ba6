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
    effects::Effects,
    fair::Seeds,
    holds::coalesce::Holds,
    jobs,
    payments::{Confirmations, reconcile},
    queue::{
        autopilot::Autopilot,
        coalesce::{Joins, Statuses},
        stream::Hub,
    },
    store::{Stores, coalesce::Coalescer, pg::Pg, redis::Redis},
    token::TokenSigner,
};

/// Everything a handler may need, reached through it (`state.redis`).
///
/// One `Arc` around the parts: every middleware layer and extractor takes
/// its own clone per request, and a clone of the parts one by one cost an
/// atomic increment (and later a decrement) per part: about 3 % of the
/// service's CPU on the status route (perf, issue 17).
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

impl AppState {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Parts {
    pub config: Arc<Config>,
    pub redis: Redis,
    /// Status polls, joins and holds, each coalesced into one Redis call
    /// per event and batch.
    pub status_polls: Arc<Coalescer<Statuses>>,
    pub joins: Arc<Coalescer<Joins>>,
    pub holds: Arc<Coalescer<Holds>>,
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
    /// Payments, charges and refunds running to their end
    /// (`crate::http::to_the_end`).
    pub effects: Effects,
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
