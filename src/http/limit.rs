//! Per-process rate limits on public endpoints (governor, GCRA): one per
//! client address and one per queue token. They only shed abusive
//! clients; the admission rate that matters is enforced in Redis, once for
//! all instances. `X-Forwarded-For` is believed only when the peer is a
//! trusted proxy, and then the nearest untrusted address in it is used.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use super::{ApiError, extract::constant_time_eq};
use crate::{
    app::AppState,
    config::{Config, IpBlock},
};

pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_token: Option<DefaultKeyedRateLimiter<u64>>,
    trusted: Vec<IpBlock>,
}

fn limiter<K: Hash + Eq + Clone>(per_second: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl RateLimits {
    pub fn new(config: &Config) -> Self {
        Self {
            per_ip: limiter(config.rate_per_ip),
            per_token: limiter(config.rate_per_token),
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

    /// Drops state of keys not seen lately (called periodically).
    pub fn retain_recent(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_token {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

fn refuse(wait: std::time::Duration, by: &'static str) -> Response {
    metrics::counter!("boxoffice_rate_limited_total", "by" => by).increment(1);
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
    .into_response()
}

/// Middleware: applies both limits to public `/v1` routes.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let public = path.starts_with("/v1/") && !path.starts_with("/v1/admin/");
    let service = req.headers().get("x-api-key").is_some_and(|k| {
        constant_time_eq(k.as_bytes(), state.config.service_key.expose().as_bytes())
    });
    if !public || service {
        return next.run(req).await;
    }
    let limits = &state.limits;
    if let Some(l) = &limits.per_ip {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = limits.client_ip(peer, xff);
        if let Err(not_until) = l.check_key(&ip) {
            return refuse(
                not_until.wait_time_from(DefaultClock::default().now()),
                "ip",
            );
        }
    }
    if let Some(l) = &limits.per_token
        && let Some(token) = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    {
        let mut h = DefaultHasher::new();
        token.hash(&mut h);
        if let Err(not_until) = l.check_key(&h.finish()) {
            return refuse(
                not_until.wait_time_from(DefaultClock::default().now()),
                "token",
            );
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
            per_token: None,
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
}
