//! Adapters to the two stores. Domain modules see only these narrow types:
//! [`redis::Redis`] runs Lua scripts (their JSON replies decoded in
//! [`reply`]) and a handful of plain commands,
//! [`pg::Pg`] hands out a guarded `sqlx` pool. Both put a per-call timeout
//! and a circuit breaker in front of every call through the one
//! [`guard::guard`] (for a Redis Cluster, one breaker per master, see
//! [`cluster`]), so a dead dependency costs
//! microseconds and surfaces as [`StoreError::Unavailable`] (HTTP 503).

pub mod breaker;
pub mod cluster;
pub mod coalesce;
pub mod guard;
pub mod keys;
pub mod pg;
pub mod redis;
pub mod reply;

/// Both stores, for work outside a request that uses both (the
/// background loops, the leased jobs, the reconciler, the demo loader);
/// cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub redis: redis::Redis,
    pub pg: pg::Pg,
}

/// Which dependency failed; used in logs, metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Redis,
    Postgres,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

/// A store call that did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The dependency is down, slow, or its breaker is open: retry later.
    #[error("{} unavailable: {reason}", dep.as_str())]
    Unavailable { dep: Dependency, reason: String },
    /// The dependency answered something we did not expect: a bug.
    #[error("{} error: {source:#}", dep.as_str())]
    Internal {
        dep: Dependency,
        #[source]
        source: anyhow::Error,
    },
}

impl StoreError {
    pub fn internal(dep: Dependency, source: impl Into<anyhow::Error>) -> Self {
        Self::Internal {
            dep,
            source: source.into(),
        }
    }

    /// The same error again, for each of several callers one failed call
    /// answered (an internal error's source becomes its text).
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Unavailable { dep, reason } => Self::Unavailable {
                dep: *dep,
                reason: reason.clone(),
            },
            Self::Internal { dep, source } => Self::Internal {
                dep: *dep,
                source: anyhow::anyhow!("{source:#}"),
            },
        }
    }
}
