//! A small circuit breaker, one per dependency (for Redis Cluster, one per
//! cluster node, so a failing shard fails fast alone).
//!
//! Why: when Redis or PostgreSQL is down, each call would otherwise wait for
//! its timeout (hundreds of milliseconds) and a flash-sale crowd would pile
//! up thousands of such waits. After [`FAILURES_TO_OPEN`] consecutive
//! failures the breaker opens and calls fail at once; every [`COOL_DOWN`] it
//! lets exactly one probe call through, and the first success closes it.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::Dependency;

pub const FAILURES_TO_OPEN: u32 = 5;
pub const COOL_DOWN: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Breaker {
    dep: Dependency,
    /// The server it guards (`host:port`), or "" for the whole dependency.
    node: String,
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which calls are refused; 0 = closed.
    open_until: AtomicU64,
}

impl Breaker {
    pub fn new(dep: Dependency) -> Self {
        Self::for_node(dep, "")
    }

    /// A breaker for one server of a dependency (a Redis Cluster node).
    pub fn for_node(dep: Dependency, node: impl Into<String>) -> Self {
        Self {
            dep,
            node: node.into(),
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    /// The dependency it guards.
    pub fn dependency(&self) -> Dependency {
        self.dep
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go ahead. While open, one caller per cool-down
    /// wins the compare-and-swap and becomes the probe.
    pub fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + COOL_DOWN.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(
                dependency = self.dep.as_str(),
                node = self.node,
                "dependency recovered; circuit closed"
            );
        }
    }

    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= FAILURES_TO_OPEN {
            let until = self.now_ms() + COOL_DOWN.as_millis() as u64;
            if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!(
                    dependency = self.dep.as_str(),
                    node = self.node,
                    "dependency failing; circuit opened"
                );
                metrics::counter!("boxoffice_circuit_opened_total", "dependency" => self.dep.as_str()).increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_and_lets_one_probe_through() {
        let b = Breaker::new(Dependency::Redis);
        for _ in 0..FAILURES_TO_OPEN {
            assert!(b.allow());
            b.failure();
        }
        assert!(b.is_open());
        assert!(!b.allow(), "open breaker refuses at once");
        std::thread::sleep(COOL_DOWN + Duration::from_millis(20));
        assert!(b.allow(), "one probe after the cool-down");
        assert!(!b.allow(), "only one probe");
        b.success();
        assert!(!b.is_open());
        assert!(b.allow());
    }
}
