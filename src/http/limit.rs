//! Per-process rate limits on public endpoints (governor, GCRA): one per
//! client address and one per verified credential. They only shed abusive
//! clients; the admission rate that matters is enforced in Redis, once for
//! all instances. `X-Forwarded-For` is believed only when the peer is a
//! trusted proxy, and then the nearest untrusted address in it is used.
//!
//! Keys are what a client cannot vary for free: the client's address (an
//! IPv6 client by its /64, the smallest block a subscriber is given) and
//! the *verified* credential ([`credential_key`]), never the raw header
//! (padding or re-casing `Authorization` must not give a fresh bucket).
//! Memory is bounded: each limiter tracks at most `BOXOFFICE_RATE_MAX_KEYS`
//! keys; see [`Bounded`] for what happens when it is full.
//!
//! The limiters are HTTP state, so they are not in `AppState`: `app.rs`
//! builds one [`RateLimits`] per process, prunes it ([`RateLimits::prune`])
//! and `http::router` hands it to the [`limit`] middleware along with the
//! state (`from_fn_with_state` with an `(AppState, Arc<RateLimits>)` pair).

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::HeaderMap,
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use super::{
    ApiError,
    auth::{VerifiedUser, bearer},
    extract::ServiceKey,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, IpBlock},
    ids::{EventId, UserId},
    state::AppState,
};

/// How often [`RateLimits::prune`] drops refilled buckets.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// What a request's per-credential limit is keyed on: an identity the
/// service verified, so every way of writing the same credential shares
/// one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// A queue entry, from a valid queue token of it (every token minted
    /// for the entry, e.g. after a re-join, shares the bucket).
    QueueEntry { event: EventId, entry: u64 },
    /// A user, from a valid user assertion (every assertion of the user
    /// shares the bucket).
    User(UserId),
}

/// The per-credential key of a request, or `None` when it carries no
/// credential this service can verify (then only the per-IP limit applies:
/// an unverifiable header must not buy a bucket of its own).
///
/// The one place that maps a request to its limiter key: a new kind of
/// credential (user assertions) gets a `LimitKey` variant and a branch here.
pub fn credential_key(state: &AppState, headers: &HeaderMap) -> Option<LimitKey> {
    let credential = bearer(headers)?;
    // A queue token starts with its version; anything else may be a JWT.
    if credential.starts_with("v1.") {
        let claims = state.tokens.verify(credential).ok()?;
        Some(LimitKey::QueueEntry {
            event: claims.event,
            entry: claims.entry,
        })
    } else {
        state.users.verify(credential).ok().map(LimitKey::User)
    }
}

/// The per-IP key of a client address: an IPv4 address as is; an IPv6
/// address by its /64 (one subscriber's block: a host can pick any of its
/// 2^64 addresses); an IPv4-mapped IPv6 address as the IPv4 address.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !(u128::MAX >> 64);
            IpAddr::V6(Ipv6Addr::from(net))
        }
    }
}

/// The outcome of one check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit; retry after this long.
    Wait(Duration),
    /// A new key while the limiter already tracks its maximum of keys.
    Full,
}

/// One GCRA bucket per key, in a sharded map holding at most `max_keys`.
///
/// A key whose bucket has refilled (no request for `burst / rate`) is
/// indistinguishable from a new one, so it can be dropped at any time: the
/// periodic [`Bounded::retain_recent`] does, and so does a full shard
/// before it refuses. When a shard is still full, a request with a key
/// that is not tracked is refused (`429`, counted in
/// `boxoffice_rate_limited_total{by="ip_full"|"credential_full"}`): memory
/// and load stay bounded, and the clients already tracked keep their own
/// limits. Being full means `max_keys` distinct clients each sent a request
/// in the last `burst / rate` seconds (2 s with the default burst), which
/// one instance only sees under a distributed flood; a key slot frees up
/// within that time of its client going quiet.
pub struct Bounded<K> {
    shards: Box<[Mutex<HashMap<K, Slot>>]>,
    hasher: RandomState,
    quota: Quota,
    per_shard: usize,
    /// How long an unused bucket takes to refill completely.
    window: Duration,
}

struct Slot {
    limiter: DefaultDirectRateLimiter,
    last: Instant,
}

const SHARDS: usize = 64;

impl<K: Hash + Eq + Clone> Bounded<K> {
    /// `per_second` requests per second with a burst of twice that;
    /// `None` when `per_second` is 0 (limit off).
    pub fn new(per_second: u32, max_keys: usize) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            quota,
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            window: quota.replenish_interval() * burst.get(),
        })
    }

    /// Counts one request of `key`.
    pub fn check(&self, key: &K) -> Verdict {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut map = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if map.len() >= self.per_shard && !map.contains_key(key) {
            map.retain(|_, s| now.duration_since(s.last) < self.window);
            if map.len() >= self.per_shard {
                return Verdict::Full;
            }
        }
        let slot = map.entry(key.clone()).or_insert_with(|| Slot {
            limiter: RateLimiter::direct(self.quota),
            last: now,
        });
        slot.last = now;
        match slot.limiter.check() {
            Ok(()) => Verdict::Allow,
            Err(not_until) => {
                Verdict::Wait(not_until.wait_time_from(DefaultClock::default().now()))
            }
        }
    }

    /// Drops the buckets that have refilled (called periodically).
    pub fn retain_recent(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut map = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.retain(|_, s| now.duration_since(s.last) < self.window);
            map.shrink_to_fit();
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct RateLimits {
    per_ip: Option<Bounded<IpAddr>>,
    per_credential: Option<Bounded<LimitKey>>,
    trusted: Vec<IpBlock>,
}

impl RateLimits {
    pub fn new(config: &Config) -> Self {
        Self {
            per_ip: Bounded::new(config.rate_per_ip, config.rate_max_keys),
            per_credential: Bounded::new(config.rate_per_token, config.rate_max_keys),
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// The client's address: the peer, or (behind trusted proxies) the
    /// right-most address in `X-Forwarded-For` that is not a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let trusted = |ip: IpAddr| self.trusted.iter().any(|b| b.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let Some(list) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in list.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }

    /// Keys tracked now: (client addresses, credentials).
    pub fn tracked_keys(&self) -> (usize, usize) {
        (
            self.per_ip.as_ref().map_or(0, Bounded::len),
            self.per_credential.as_ref().map_or(0, Bounded::len),
        )
    }

    /// Drops state of keys not seen lately (called periodically).
    pub fn retain_recent(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.per_credential {
            l.retain_recent();
        }
    }

    /// Calls [`RateLimits::retain_recent`] every 30 s until `shutdown`.
    pub async fn prune(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PRUNE_EVERY) => self.retain_recent(),
            }
        }
    }
}

fn refuse(verdict: Verdict, by: &'static str, full: &'static str) -> Option<Response> {
    let (wait, label) = match verdict {
        Verdict::Allow => return None,
        Verdict::Wait(wait) => (wait, by),
        Verdict::Full => (Duration::from_secs(1), full),
    };
    metrics::counter!("boxoffice_rate_limited_total", "by" => label).increment(1);
    Some(
        ApiError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
        .into_response(),
    )
}

/// Middleware: applies both limits to public `/v1` routes.
pub async fn limit(
    State((state, limits)): State<(AppState, Arc<RateLimits>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let public = path.starts_with("/v1/") && !path.starts_with("/v1/admin/");
    let service = ServiceKey::matches(&state.config, req.headers());
    if !public || service {
        return next.run(req).await;
    }
    if let Some(l) = &limits.per_ip {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = ip_key(limits.client_ip(peer, xff));
        if let Some(resp) = refuse(l.check(&ip), "ip", "ip_full") {
            return resp;
        }
    }
    if let Some(l) = &limits.per_credential
        && let Some(key) = credential_key(&state, req.headers())
    {
        if let Some(resp) = refuse(l.check(&key), "token", "credential_full") {
            return resp;
        }
        // The assertion is verified now: the handler's extractor takes this
        // instead of checking the signature a second time on every join
        // (with RS256 or EdDSA keys the check is the dearest step).
        if let LimitKey::User(user) = key {
            req.extensions_mut().insert(VerifiedUser(user));
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &[&str]) -> RateLimits {
        RateLimits {
            per_ip: None,
            per_credential: None,
            trusted: trusted.iter().map(|s| IpBlock::parse(s).unwrap()).collect(),
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(limits(&[]).client_ip(peer, Some("1.2.3.4")), peer);
        let l = limits(&["10.0.0.0/8"]);
        assert_eq!(
            l.client_ip(peer, Some("1.2.3.4")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // A client cannot spoof by prepending: the right-most untrusted hop wins.
        assert_eq!(
            l.client_ip(peer, Some("6.6.6.6, 1.2.3.4, 10.0.0.9")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(l.client_ip(peer, None), peer);
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_eq!(ip_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(ip_key(a), ip_key(other));
        // IPv4 stays per address; an IPv4-mapped IPv6 address is that IPv4.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(v4), v4);
        assert_ne!(ip_key(v4), ip_key("192.0.2.8".parse().unwrap()));
        assert_eq!(ip_key("::ffff:192.0.2.7".parse().unwrap()), v4);

        // One limiter: the whole /64 shares a burst of 2 at 1/s.
        let l = Bounded::new(1, 1000).unwrap();
        let hosts = (1..=5).map(|i| format!("2001:db8:1:2::{i:x}").parse::<IpAddr>().unwrap());
        let verdicts: Vec<Verdict> = hosts.map(|h| l.check(&ip_key(h))).collect();
        assert_eq!(verdicts[..2], [Verdict::Allow, Verdict::Allow]);
        assert!(
            verdicts[2..].iter().all(|v| matches!(v, Verdict::Wait(_))),
            "{verdicts:?}"
        );
        assert_eq!(l.check(&ip_key(other)), Verdict::Allow);
    }

    #[test]
    fn a_full_limiter_refuses_new_keys_and_keeps_limiting_known_ones() {
        // 64 keys at most (one per shard at least): fill it.
        let l = Bounded::<u32>::new(1, 64).unwrap();
        let mut admitted = Vec::new();
        for k in 0..10_000u32 {
            if l.check(&k) == Verdict::Allow {
                admitted.push(k);
            }
        }
        assert!(l.len() <= 64, "tracked {} keys", l.len());
        assert!(admitted.len() >= 32, "only {} keys fit", admitted.len());
        // A key not tracked is refused while full; a tracked one keeps its own bucket.
        let known = admitted[0];
        assert_eq!(l.check(&known), Verdict::Allow);
        assert!(matches!(l.check(&known), Verdict::Wait(_)));
        let refused = (0..10_000u32)
            .filter(|k| l.check(k) == Verdict::Full)
            .count();
        assert!(refused >= 10_000 - 64, "{refused}");
    }
}
