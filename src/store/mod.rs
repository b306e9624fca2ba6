//! Adapters to the two stores. Domain modules see only these narrow types:
//! [`redis::Redis`] runs Lua scripts and a handful of plain commands,
//! [`pg::Pg`] hands out a guarded `sqlx` pool. Both put a per-call timeout
//! and a circuit breaker in front of every call through the one
//! [`guard::guard`] (for a Redis Cluster, one breaker per master, see
//! [`cluster`]), so a dead dependency costs
//! microseconds and surfaces as [`StoreError::Unavailable`] (HTTP 503).

pub mod breaker;
pub mod cluster;
pub mod guard;
pub mod keys;
pub mod pg;
pub mod redis;

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
}
