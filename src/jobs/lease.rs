//! Leases: which instance runs a job right now, decided by Redlock over
//! `BOXOFFICE_LOCK_URLS` with the `redlock` crate.
//!
//! Why a lease and not a Lua script: the seat and queue transitions are
//! Lua scripts because each one is a single atomic step on one shard. A job
//! is not one step: a rollup reads PostgreSQL, writes PostgreSQL, and may run
//! for seconds. No script can span that, and a Redis key cannot make a
//! PostgreSQL transaction atomic with it. What the job needs is *mutual
//! exclusion over time* between instances, across independent Redis servers
//! (so that losing one does not stop or duplicate the jobs): that is a
//! lease. A lease alone is only as good as its timing assumptions, so every
//! write a job makes also carries a fencing token (see [`super::fence`]):
//! the lease makes double work rare, the fence makes it harmless.
//!
//! How the crate is used. `redlock` 2.0 is synchronous (it opens a blocking
//! connection per call) and its multi-server `lock()` gives up on the first
//! server that does not answer, so with one of three servers down it would
//! never lock. Here each server gets its own single-server `RedLock`; the
//! attempts run in parallel on the blocking pool, and this module counts the
//! majority, computes the validity (TTL minus elapsed time minus clock
//! drift, as the algorithm prescribes) and releases partial acquisitions
//! itself. The crate has no extension either: a lease is renewed with the
//! usual compare-and-`PEXPIRE` script sent through the crate's own clients.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use redlock::{Lock, RedLock};

/// Compare-and-extend: renews the key only while it still holds our value.
const EXTEND_SCRIPT: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
else
  return 0
end";

/// Per-server time budget of one lock, unlock or extend call.
const SERVER_TIMEOUT: Duration = Duration::from_millis(500);

/// A Redlock lock manager over independent Redis servers.
#[derive(Clone)]
pub struct Locker {
    servers: Vec<Arc<RedLock>>,
    ttl: Duration,
    prefix: String,
}

impl std::fmt::Debug for Locker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locker")
            .field("servers", &self.servers.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A lease held on a majority of the servers until `valid_until`.
#[derive(Debug)]
pub struct Lease {
    resource: Vec<u8>,
    /// The value this lease set on each server, where it succeeded.
    values: Vec<Option<Vec<u8>>>,
    valid_until: Instant,
}

impl Lease {
    /// True while the lease is still valid by this process's clock.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }
}

/// Clock drift allowance of the Redlock algorithm: 1 % of the TTL plus 2 ms.
fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

impl Locker {
    /// One lock manager per server URL; `prefix` (the Redis key prefix)
    /// keeps several deployments or test runs sharing servers apart.
    ///
    /// # Errors
    /// A URL the Redis client cannot parse.
    pub fn new(urls: &[String], ttl: Duration, prefix: &str) -> Result<Self, String> {
        let servers = urls
            .iter()
            .map(|url| {
                // redlock unwraps the client's URL parse; turn that into an error.
                let u = url.clone();
                std::panic::catch_unwind(move || {
                    let mut rl = RedLock::new(vec![u.as_str()]);
                    // One attempt per call; this module does the retrying.
                    rl.set_retry(1, 1);
                    Arc::new(rl)
                })
                .map_err(|_| format!("BOXOFFICE_LOCK_URLS: {url:?} is not a Redis URL"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            servers,
            ttl,
            prefix: prefix.to_owned(),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many servers must agree.
    pub fn quorum(&self) -> usize {
        self.servers.len() / 2 + 1
    }

    fn resource(&self, name: &str) -> Vec<u8> {
        format!("{}boxoffice:lease:{name}", self.prefix).into_bytes()
    }

    /// One Redlock round: SET NX PX on every server in parallel; the lease
    /// is ours when a majority agreed and time is left after subtracting the
    /// elapsed time and the drift. Otherwise whatever was set is released.
    pub async fn try_acquire(&self, name: &str) -> Option<Lease> {
        let resource = self.resource(name);
        let ttl_ms = self.ttl.as_millis() as usize;
        let start = Instant::now();
        let attempts = self.servers.iter().map(|rl| {
            let (rl, res) = (rl.clone(), resource.clone());
            blocking(move || {
                // The crate computes the validity in `usize` and underflows
                // (a panic in debug builds) when a server is slower than the
                // TTL; a panic is a failed attempt here.
                rl.lock(&res, ttl_ms).ok().flatten().map(|l| l.val)
            })
        });
        let values: Vec<Option<Vec<u8>>> = futures::future::join_all(attempts)
            .await
            .into_iter()
            .map(Option::flatten)
            .collect();
        let agreed = values.iter().filter(|v| v.is_some()).count();
        let elapsed = start.elapsed();
        let lease = Lease {
            resource,
            values,
            valid_until: start + self.ttl.saturating_sub(drift(self.ttl)),
        };
        if agreed >= self.quorum() && self.ttl > elapsed + drift(self.ttl) {
            Some(lease)
        } else {
            self.release(&lease).await;
            None
        }
    }

    /// Extends the lease by a full TTL on every server that still holds our
    /// value; true when a majority did so in time. False means the lease is
    /// lost: another instance may hold it now.
    pub async fn renew(&self, lease: &mut Lease) -> bool {
        if !lease.is_valid() {
            return false;
        }
        let start = Instant::now();
        let ttl_ms = self.ttl.as_millis() as u64;
        let calls = self.servers.iter().zip(&lease.values).map(|(rl, v)| {
            let (rl, res, v) = (rl.clone(), lease.resource.clone(), v.clone());
            blocking(move || {
                let v = v?;
                let mut con = connect(&rl)?;
                let n: i64 = redis::Script::new(EXTEND_SCRIPT)
                    .key(res)
                    .arg(v)
                    .arg(ttl_ms)
                    .invoke(&mut con)
                    .ok()?;
                (n == 1).then_some(())
            })
        });
        let renewed = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|r| matches!(r, Some(Some(()))))
            .count();
        let elapsed = start.elapsed();
        if renewed >= self.quorum() && self.ttl > elapsed + drift(self.ttl) {
            lease.valid_until = start + self.ttl.saturating_sub(drift(self.ttl));
            true
        } else {
            false
        }
    }

    /// How long until the lease `name`, held by whoever holds it, runs out
    /// on a majority of the servers (zero when it is free there already);
    /// `None` when too few servers answered to tell. A follower sleeps this
    /// long instead of polling blindly, so it tries again the moment a dead
    /// leader's lease expires.
    pub async fn expires_in(&self, name: &str) -> Option<Duration> {
        let resource = self.resource(name);
        let calls = self.servers.iter().map(|rl| {
            let (rl, res) = (rl.clone(), resource.clone());
            blocking(move || {
                let mut con = connect(&rl)?;
                let ms: i64 = redis::cmd("PTTL").arg(res).query(&mut con).ok()?;
                // -2: no such key (free); -1: no expiry (not ours to judge:
                // treat as a full TTL).
                Some(match ms {
                    -2 => 0,
                    -1 => u64::MAX,
                    ms => u64::try_from(ms).unwrap_or(0),
                })
            })
        });
        let mut left: Vec<u64> = futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        left.sort_unstable();
        let ms = *left.get(self.quorum() - 1)?;
        Some(Duration::from_millis(ms).min(self.ttl))
    }

    /// Releases the lease on every server that holds our value (best
    /// effort: what is not released expires with its TTL).
    pub async fn release(&self, lease: &Lease) {
        let calls = self
            .servers
            .iter()
            .zip(&lease.values)
            .filter_map(|(rl, v)| Some((rl.clone(), v.clone()?)))
            .map(|(rl, val)| {
                let resource = lease.resource.clone();
                blocking(move || {
                    rl.unlock(&Lock {
                        resource,
                        val,
                        validity_time: 0,
                        lock_manager: &rl,
                    });
                })
            });
        futures::future::join_all(calls).await;
    }
}

/// A connection of redis-rs to the one server of `rl`, with the per-call
/// time budget on connect, read and write.
fn connect(rl: &RedLock) -> Option<redis::Connection> {
    let client = rl.servers.first()?;
    let con = client.get_connection_with_timeout(SERVER_TIMEOUT).ok()?;
    con.set_read_timeout(Some(SERVER_TIMEOUT)).ok()?;
    con.set_write_timeout(Some(SERVER_TIMEOUT)).ok()?;
    Some(con)
}

/// Runs a blocking Redis call on the blocking pool with a time budget;
/// `None` when it failed, panicked or took too long. (A call stuck on a
/// frozen server keeps its thread until the socket gives up; the lease logic
/// has moved on by then.)
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::time::timeout(SERVER_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    }
}
