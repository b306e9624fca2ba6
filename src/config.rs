//! Configuration: read once from environment variables at start.
//!
//! Every setting has a working local default so `boxoffice serve` runs on a
//! developer machine with no set-up; invalid values fail start-up with one
//! line naming the variable. Secrets are wrapped in [`Secret`] so they can
//! never reach a log line through `Debug`.

use std::{collections::HashMap, fmt, net::IpAddr, net::SocketAddr, time::Duration};

use crate::money::Currency;

/// Where logs go and in which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// A string that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value; call sites are easy to audit with grep.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A trusted proxy: one address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Every setting of one boxoffice process.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub redis_url: String,
    pub database_url: String,
    pub service_key: Secret,
    pub token_secret: Secret,
    /// Prepended to every Redis key, outside the hash tag.
    pub redis_prefix: String,
    pub currency: Currency,
    /// Requests per second per client address on public routes; 0 = off.
    pub rate_per_ip: u32,
    /// Requests per second per queue token; 0 = off.
    pub rate_per_token: u32,
    pub trusted_proxies: Vec<IpBlock>,
    pub log_format: LogFormat,
    /// Run the background loops (admission tick, reconciler, outbox relay).
    /// Tests turn them off to prove correctness does not depend on them.
    pub background: bool,
    /// How often each instance runs the admission tick.
    pub tick_interval: Duration,
    /// How often the reconciler looks for unfinished payments and an empty Redis.
    pub reconcile_interval: Duration,
    /// Largest single wallet charge, in currency units.
    pub max_charge: rust_decimal::Decimal,
    /// How long a hold stays in *paying* before it is given back.
    pub paying_timeout: Duration,
    /// Test-only crash point (`crash_before_commit`, `crash_after_commit`;
    /// only with the `failpoints` feature): the payment path stops for good
    /// right before or after the PostgreSQL commit, for a test to kill the
    /// process there. `slow_pg_ms:<n>` keeps a payment's PostgreSQL
    /// connection n ms longer (see [`crate::store::pg::PgOptions`]).
    pub failpoint: Option<String>,
    /// The leased jobs and the public catalog cache (see `jobs`).
    pub jobs: JobsConfig,
    /// How user assertions (the platform's JWTs) are verified.
    pub user_jwt: UserJwtConfig,
    /// How long a queue token stays valid (re-joining hands out a fresh one
    /// for the same entry).
    pub queue_token_ttl: Duration,
    /// HTTP hygiene (see [`HttpLimits`]).
    pub http: HttpLimits,
    /// Where `/metrics` is served instead of the main address, if set.
    pub metrics_addr: Option<SocketAddr>,
    /// Most keys each rate limiter tracks at once (bounded memory).
    pub rate_max_keys: usize,
    /// Most PostgreSQL connections this instance opens
    /// (`BOXOFFICE_PG_MAX_CONNECTIONS`, default 24).
    pub pg_max_connections: u32,
}

/// Verification settings for user assertions: an HS256 secret, a PEM public
/// key (RS256, ES256 or EdDSA, told by the key), or both.
#[derive(Debug, Clone)]
pub struct UserJwtConfig {
    /// `BOXOFFICE_USER_JWT_SECRET`; the development default when neither it
    /// nor a public key is set.
    pub secret: Option<Secret>,
    /// The contents of the PEM file named by `BOXOFFICE_USER_JWT_PUBLIC_KEY`.
    pub public_key_pem: Option<Vec<u8>>,
    /// `BOXOFFICE_USER_JWT_AUDIENCE`: checked when set.
    pub audience: Option<String>,
    /// `BOXOFFICE_USER_JWT_ISSUER`: checked when set.
    pub issuer: Option<String>,
}

/// Limits of the HTTP server, each against one way a client can tie it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time allowed for a request's head (request line and headers) to
    /// arrive complete (slowloris): from the connection's start for its
    /// first request, from the head's first byte for the next ones.
    pub header_timeout: Duration,
    /// A connection with no request in flight and no byte moving either
    /// way for this long is closed. It bounds a keep-alive connection's
    /// wait for its next request, so its default (60 s) is far above the
    /// longest poll interval the queue hands out
    /// (`queue::pacing::MAX_POLL_MS`, 15 s): a waiting page keeps its
    /// connection between polls.
    pub idle_timeout: Duration,
    /// Time allowed for a whole request, body included, until its response
    /// head is ready.
    pub request_timeout: Duration,
    /// Open connections at most; beyond it new ones are refused at once.
    pub max_connections: usize,
    /// Connections the kernel may hold, handshake done, until the service
    /// accepts them (`listen(2)`'s backlog; the kernel caps it at
    /// `net.core.somaxconn`). Tokio's and the standard library's 128 fill
    /// in a few dozen milliseconds of a surge of new connections, and a
    /// connection the full queue turned away waits for the client's SYN
    /// retry: a second or more.
    pub listen_backlog: u32,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

/// A setting that could not be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

pub const DEV_SERVICE_KEY: &str = "dev-service-key";
pub const DEV_TOKEN_SECRET: &str = "dev-token-secret-change-me";
pub const DEV_USER_JWT_SECRET: &str = "dev-user-jwt-secret-change-me";

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// A variable that is set but cannot be parsed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_map(&std::env::vars().collect())
    }

    /// Reads settings from a map of variable names to values (tests use this).
    ///
    /// # Errors
    /// A variable that is set but cannot be parsed.
    pub fn from_map(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let parse = |k: &str, default: &str| -> Result<String, ConfigError> {
            Ok(get(k).unwrap_or_else(|| default.to_owned()))
        };
        let num = |k: &str, default: u64| -> Result<u64, ConfigError> {
            match get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| ConfigError(format!("{k}={v:?} is not a non-negative integer"))),
            }
        };

        let addr_s = parse("BOXOFFICE_ADDR", "127.0.0.1:8080")?;
        let addr = addr_s
            .parse()
            .map_err(|_| ConfigError(format!("BOXOFFICE_ADDR={addr_s:?} is not host:port")))?;

        let redis_url = parse("REDIS_URL", "redis://127.0.0.1:6379")?;
        if !(redis_url.starts_with("redis://")
            || redis_url.starts_with("rediss://")
            || redis_url.starts_with("redis-cluster://"))
        {
            return Err(ConfigError(format!(
                "REDIS_URL={redis_url:?} must start with redis://, rediss:// or redis-cluster://"
            )));
        }
        let database_url = parse(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/boxoffice",
        )?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError(
                "DATABASE_URL must start with postgres:// or postgresql://".into(),
            ));
        }

        let service_key = Secret::new(parse("BOXOFFICE_SERVICE_KEY", DEV_SERVICE_KEY)?);
        let token_secret = Secret::new(parse("BOXOFFICE_TOKEN_SECRET", DEV_TOKEN_SECRET)?);
        if token_secret.expose().len() < 16 {
            return Err(ConfigError(
                "BOXOFFICE_TOKEN_SECRET must be at least 16 characters".into(),
            ));
        }

        let redis_prefix = env
            .get("BOXOFFICE_REDIS_PREFIX")
            .cloned()
            .unwrap_or_default();
        if redis_prefix.contains(['{', '}', ' ']) {
            return Err(ConfigError(
                "BOXOFFICE_REDIS_PREFIX must not contain braces or spaces (it sits outside the hash tag)".into(),
            ));
        }

        let cur = parse("BOXOFFICE_CURRENCY", "KRW")?;
        let currency = Currency::from_code(&cur).ok_or_else(|| {
            ConfigError(format!(
                "BOXOFFICE_CURRENCY={cur:?} is not a supported ISO 4217 code"
            ))
        })?;

        let to_u32 = |k: &str, v: u64| {
            u32::try_from(v).map_err(|_| ConfigError(format!("{k} is too large")))
        };
        let rate_per_ip = to_u32("BOXOFFICE_RATE_PER_IP", num("BOXOFFICE_RATE_PER_IP", 50)?)?;
        let rate_per_token = to_u32(
            "BOXOFFICE_RATE_PER_TOKEN",
            num("BOXOFFICE_RATE_PER_TOKEN", 10)?,
        )?;

        let trusted_proxies = match get("BOXOFFICE_TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    IpBlock::parse(s).ok_or_else(|| {
                        ConfigError(format!(
                            "BOXOFFICE_TRUSTED_PROXIES: {s:?} is not an IP address or CIDR block"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };

        let log_format = match parse("BOXOFFICE_LOG_FORMAT", "pretty")?.as_str() {
            "pretty" | "text" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError(format!(
                    "BOXOFFICE_LOG_FORMAT={other:?} must be pretty or json"
                )));
            }
        };

        let background = match parse("BOXOFFICE_BACKGROUND", "on")?.as_str() {
            "on" | "1" | "true" => true,
            "off" | "0" | "false" => false,
            other => {
                return Err(ConfigError(format!(
                    "BOXOFFICE_BACKGROUND={other:?} must be on or off"
                )));
            }
        };
        let tick_ms = num("BOXOFFICE_TICK_MS", 200)?;
        if !(10..=5_000).contains(&tick_ms) {
            return Err(ConfigError(
                "BOXOFFICE_TICK_MS must be between 10 and 5000".into(),
            ));
        }
        let reconcile_ms = num("BOXOFFICE_RECONCILE_MS", 2_000)?;
        if !(50..=60_000).contains(&reconcile_ms) {
            return Err(ConfigError(
                "BOXOFFICE_RECONCILE_MS must be between 50 and 60000".into(),
            ));
        }
        let max_charge_s = parse("BOXOFFICE_MAX_CHARGE", "10000000")?;
        let max_charge: rust_decimal::Decimal = max_charge_s.parse().map_err(|_| {
            ConfigError(format!(
                "BOXOFFICE_MAX_CHARGE={max_charge_s:?} is not a decimal"
            ))
        })?;
        if max_charge <= rust_decimal::Decimal::ZERO {
            return Err(ConfigError("BOXOFFICE_MAX_CHARGE must be positive".into()));
        }
        let paying_s = num("BOXOFFICE_PAYING_TIMEOUT_SECONDS", 30)?;
        if !(1..=600).contains(&paying_s) {
            return Err(ConfigError(
                "BOXOFFICE_PAYING_TIMEOUT_SECONDS must be between 1 and 600".into(),
            ));
        }

        let jobs = JobsConfig::from_map(env, &redis_url)?;
        let user_jwt = user_jwt(&get)?;
        let queue_token_ttl_s = num("BOXOFFICE_QUEUE_TOKEN_TTL_SECONDS", 6 * 3600)?;
        if !(60..=7 * 24 * 3600).contains(&queue_token_ttl_s) {
            return Err(ConfigError(
                "BOXOFFICE_QUEUE_TOKEN_TTL_SECONDS must be between 60 and 604800".into(),
            ));
        }
        let ranged = |k: &str, default: u64, range: std::ops::RangeInclusive<u64>| {
            let v = num(k, default)?;
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError(format!(
                    "{k} must be between {} and {}",
                    range.start(),
                    range.end()
                )))
            }
        };
        let http = HttpLimits {
            header_timeout: Duration::from_millis(ranged(
                "BOXOFFICE_HTTP_HEADER_TIMEOUT_MS",
                10_000,
                100..=600_000,
            )?),
            idle_timeout: Duration::from_millis(ranged(
                "BOXOFFICE_HTTP_IDLE_TIMEOUT_MS",
                60_000,
                100..=3_600_000,
            )?),
            request_timeout: Duration::from_millis(ranged(
                "BOXOFFICE_HTTP_REQUEST_TIMEOUT_MS",
                15_000,
                100..=600_000,
            )?),
            max_connections: ranged("BOXOFFICE_HTTP_MAX_CONNECTIONS", 4_096, 1..=1_000_000)?
                as usize,
            listen_backlog: ranged("BOXOFFICE_HTTP_LISTEN_BACKLOG", 4_096, 1..=65_535)? as u32,
            max_body_bytes: ranged("BOXOFFICE_HTTP_MAX_BODY_BYTES", 65_536, 1_024..=16_777_216)?
                as usize,
        };
        let metrics_addr = match get("BOXOFFICE_METRICS_ADDR") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| {
                ConfigError(format!("BOXOFFICE_METRICS_ADDR={v:?} is not host:port"))
            })?),
        };
        let rate_max_keys = ranged("BOXOFFICE_RATE_MAX_KEYS", 100_000, 64..=100_000_000)? as usize;
        let pg_max_connections = ranged("BOXOFFICE_PG_MAX_CONNECTIONS", 24, 1..=1_000)? as u32;

        Ok(Self {
            addr,
            redis_url,
            database_url,
            service_key,
            token_secret,
            redis_prefix,
            currency,
            rate_per_ip,
            rate_per_token,
            trusted_proxies,
            log_format,
            background,
            tick_interval: Duration::from_millis(tick_ms),
            reconcile_interval: Duration::from_millis(reconcile_ms),
            max_charge,
            paying_timeout: Duration::from_secs(paying_s),
            failpoint: get("BOXOFFICE_FAILPOINT"),
            jobs,
            user_jwt,
            queue_token_ttl: Duration::from_secs(queue_token_ttl_s),
            http,
            metrics_addr,
            rate_max_keys,
            pg_max_connections,
        })
    }

    /// True when a secret still has its public development default.
    pub fn uses_dev_secrets(&self) -> bool {
        self.dev_secret_variable().is_some()
    }

    /// The first variable whose secret still has its public development
    /// default, if any.
    pub fn dev_secret_variable(&self) -> Option<&'static str> {
        if self.service_key.expose() == DEV_SERVICE_KEY {
            Some("BOXOFFICE_SERVICE_KEY")
        } else if self.token_secret.expose() == DEV_TOKEN_SECRET {
            Some("BOXOFFICE_TOKEN_SECRET")
        } else if self
            .user_jwt
            .secret
            .as_ref()
            .is_some_and(|s| s.expose() == DEV_USER_JWT_SECRET)
        {
            Some("BOXOFFICE_USER_JWT_SECRET")
        } else {
            None
        }
    }

    /// Development secrets are public: anyone could mint credentials with
    /// them. They are allowed only while the service listens on a
    /// loopback address, where nobody else can reach it.
    ///
    /// # Errors
    /// One line naming the variable to set.
    pub fn check_secrets_for_listening(&self) -> Result<(), ConfigError> {
        match self.dev_secret_variable() {
            Some(var) if !self.addr.ip().is_loopback() => Err(ConfigError(format!(
                "{var} has its public development default; set it to a real secret to listen on {} (development defaults work only on a loopback address)",
                self.addr
            ))),
            _ => Ok(()),
        }
    }
}

fn user_jwt(get: &dyn Fn(&str) -> Option<String>) -> Result<UserJwtConfig, ConfigError> {
    let public_key_pem = match get("BOXOFFICE_USER_JWT_PUBLIC_KEY") {
        None => None,
        Some(path) => Some(std::fs::read(&path).map_err(|e| {
            ConfigError(format!(
                "BOXOFFICE_USER_JWT_PUBLIC_KEY={path:?} cannot be read: {e}"
            ))
        })?),
    };
    let secret = match get("BOXOFFICE_USER_JWT_SECRET") {
        Some(s) if s.len() < 32 => {
            return Err(ConfigError(
                "BOXOFFICE_USER_JWT_SECRET must be at least 32 characters (HS256 needs 256 bits)"
                    .into(),
            ));
        }
        Some(s) => Some(Secret::new(s)),
        None if public_key_pem.is_none() => Some(Secret::new(DEV_USER_JWT_SECRET)),
        None => None,
    };
    Ok(UserJwtConfig {
        secret,
        public_key_pem,
        audience: get("BOXOFFICE_USER_JWT_AUDIENCE"),
        issuer: get("BOXOFFICE_USER_JWT_ISSUER"),
    })
}

/// Settings of the leased jobs (environment variables in brackets).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Independent Redis servers for the leases [`BOXOFFICE_LOCK_URLS`,
    /// comma-separated; default `REDIS_URL`].
    pub lock_urls: Vec<String>,
    /// Lease TTL [`BOXOFFICE_LEASE_TTL_MS`, default 10000].
    pub lease_ttl: Duration,
    /// [`BOXOFFICE_ROLLUP_MS`, default 60000]
    pub rollup_every: Duration,
    /// [`BOXOFFICE_AVAILABILITY_MS`, default 2000]
    pub availability_every: Duration,
    /// [`BOXOFFICE_PURGE_MS`, default 600000]
    pub purge_every: Duration,
    /// Published outbox rows are kept this long [`BOXOFFICE_OUTBOX_RETENTION_SECONDS`, default 86400].
    pub outbox_retention: Duration,
    /// In-process cache of the public catalog [`BOXOFFICE_CATALOG_CACHE_MS`, default 1000].
    pub catalog_cache: Duration,
    /// How this instance is named in `job_fences` and `job_runs`
    /// [`BOXOFFICE_INSTANCE_NAME`, default `pid<pid>@<addr>`].
    pub instance: Option<String>,
}

impl JobsConfig {
    /// Reads the settings; `redis_url` is the default lock server.
    ///
    /// # Errors
    /// A value out of range, or no lock server for a cluster `REDIS_URL`.
    pub fn from_map(env: &HashMap<String, String>, redis_url: &str) -> Result<Self, ConfigError> {
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let ms = |k: &str, default: u64, min: u64, max: u64| -> Result<Duration, ConfigError> {
            let v = match get(k) {
                None => default,
                Some(v) => v.parse().map_err(|_| {
                    ConfigError::new(format!("{k}={v:?} is not a non-negative integer"))
                })?,
            };
            if !(min..=max).contains(&v) {
                return Err(ConfigError::new(format!(
                    "{k} must be between {min} and {max}"
                )));
            }
            Ok(Duration::from_millis(v))
        };
        let lock_urls: Vec<String> = match get("BOXOFFICE_LOCK_URLS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None if redis_url.starts_with("redis-cluster://") => {
                return Err(ConfigError::new(
                    "BOXOFFICE_LOCK_URLS must name independent Redis servers when REDIS_URL is a cluster (a lease inside one cluster is not Redlock)",
                ));
            }
            None => vec![redis_url.to_owned()],
        };
        if lock_urls.is_empty()
            || lock_urls
                .iter()
                .any(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return Err(ConfigError::new(
                "BOXOFFICE_LOCK_URLS must be redis:// or rediss:// URLs, comma-separated",
            ));
        }
        Ok(Self {
            lock_urls,
            lease_ttl: ms("BOXOFFICE_LEASE_TTL_MS", 10_000, 200, 600_000)?,
            rollup_every: ms("BOXOFFICE_ROLLUP_MS", 60_000, 10, 3_600_000)?,
            availability_every: ms("BOXOFFICE_AVAILABILITY_MS", 2_000, 10, 600_000)?,
            purge_every: ms("BOXOFFICE_PURGE_MS", 600_000, 10, 86_400_000)?,
            outbox_retention: Duration::from_secs(
                ms("BOXOFFICE_OUTBOX_RETENTION_SECONDS", 86_400, 0, 31_536_000)?.as_millis() as u64,
            ),
            catalog_cache: ms("BOXOFFICE_CATALOG_CACHE_MS", 1_000, 0, 60_000)?,
            instance: get("BOXOFFICE_INSTANCE_NAME").map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_work_locally() {
        let c = Config::from_map(&env(&[])).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.currency.code(), "KRW");
        assert_eq!(c.currency.scale(), 0);
        assert!(c.uses_dev_secrets());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("BOXOFFICE_ADDR", "nope"),
            ("REDIS_URL", "http://x"),
            ("BOXOFFICE_RATE_PER_IP", "-1"),
            ("BOXOFFICE_CURRENCY", "XXX1"),
            ("BOXOFFICE_TRUSTED_PROXIES", "10.0.0.0/99"),
            ("BOXOFFICE_REDIS_PREFIX", "a{b}"),
            ("BOXOFFICE_TOKEN_SECRET", "short"),
            ("BOXOFFICE_USER_JWT_SECRET", "too-short-for-hs256"),
            ("BOXOFFICE_USER_JWT_PUBLIC_KEY", "/nonexistent/key.pem"),
            ("BOXOFFICE_QUEUE_TOKEN_TTL_SECONDS", "5"),
            ("BOXOFFICE_HTTP_HEADER_TIMEOUT_MS", "0"),
            ("BOXOFFICE_HTTP_IDLE_TIMEOUT_MS", "soon"),
            ("BOXOFFICE_HTTP_REQUEST_TIMEOUT_MS", "99"),
            ("BOXOFFICE_HTTP_MAX_CONNECTIONS", "0"),
            ("BOXOFFICE_HTTP_LISTEN_BACKLOG", "0"),
            ("BOXOFFICE_HTTP_MAX_BODY_BYTES", "10"),
            ("BOXOFFICE_METRICS_ADDR", "metrics"),
            ("BOXOFFICE_RATE_MAX_KEYS", "1"),
            ("BOXOFFICE_PG_MAX_CONNECTIONS", "0"),
        ] {
            let err = Config::from_map(&env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(k), "{err} should name {k}");
        }
    }

    #[test]
    fn development_secrets_only_on_loopback() {
        let local = Config::from_map(&env(&[])).unwrap();
        assert!(local.check_secrets_for_listening().is_ok());
        let open = Config::from_map(&env(&[("BOXOFFICE_ADDR", "0.0.0.0:8080")])).unwrap();
        let err = open.check_secrets_for_listening().unwrap_err().to_string();
        assert!(err.contains("BOXOFFICE_SERVICE_KEY"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        let real = [
            ("BOXOFFICE_ADDR", "[::]:8080"),
            ("BOXOFFICE_SERVICE_KEY", "a-real-service-key"),
            ("BOXOFFICE_TOKEN_SECRET", "a-real-token-secret-0123"),
        ];
        let err = Config::from_map(&env(&real))
            .unwrap()
            .check_secrets_for_listening()
            .unwrap_err()
            .to_string();
        assert!(err.contains("BOXOFFICE_USER_JWT_SECRET"), "{err}");
        let mut all = real.to_vec();
        all.push((
            "BOXOFFICE_USER_JWT_SECRET",
            "a-real-user-jwt-secret-0123456789abcdef",
        ));
        assert!(
            Config::from_map(&env(&all))
                .unwrap()
                .check_secrets_for_listening()
                .is_ok()
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = Config::from_map(&env(&[("BOXOFFICE_SERVICE_KEY", "s3cr3t-value")])).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn cidr_blocks_match() {
        let b = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(b.contains("10.1.200.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(
            IpBlock::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(
            IpBlock::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn lock_servers_default_to_redis_url_and_parse_a_list() {
        let c = JobsConfig::from_map(&env(&[]), "redis://r:6379").unwrap();
        assert_eq!(c.lock_urls, ["redis://r:6379"]);
        let c = JobsConfig::from_map(
            &env(&[(
                "BOXOFFICE_LOCK_URLS",
                "redis://a:1, redis://b:2,redis://c:3",
            )]),
            "redis://r:6379",
        )
        .unwrap();
        assert_eq!(c.lock_urls, ["redis://a:1", "redis://b:2", "redis://c:3"]);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (k, v, redis) in [
            ("BOXOFFICE_LOCK_URLS", "http://a:1", "redis://r"),
            ("BOXOFFICE_LEASE_TTL_MS", "50", "redis://r"),
            ("BOXOFFICE_ROLLUP_MS", "soon", "redis://r"),
            ("BOXOFFICE_CATALOG_CACHE_MS", "600000", "redis://r"),
            // A lease inside one cluster is not Redlock: name servers.
            ("BOXOFFICE_PURGE_MS", "1000", "redis-cluster://r:7000"),
        ] {
            let err = JobsConfig::from_map(&env(&[(k, v)]), redis)
                .unwrap_err()
                .to_string();
            let named = if redis.starts_with("redis-cluster") {
                "BOXOFFICE_LOCK_URLS"
            } else {
                k
            };
            assert!(err.contains(named), "{k}={v}: {err}");
        }
    }
}
