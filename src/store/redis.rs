//! The Redis adapter: a small fred pool behind a narrow interface.
//!
//! Domain code calls [`Redis::run`] with a [`Script`] and gets the script's
//! JSON reply back as a string (every script ends with `cjson.encode`), which
//! the script's one typed wrapper decodes. fred never leaks past this file,
//! so replacing the client (fred has had no release since 2025) touches only
//! this module.
//!
//! Scripts are sent by SHA (`EVALSHA`); on `NOSCRIPT` (a restarted or
//! failed-over server has an empty script cache) the source is sent once
//! with `EVAL`, which also caches it again.

use std::{sync::OnceLock, time::Duration};

use fred::{
    clients::Pool,
    interfaces::{
        ClientLike, HashesInterface, KeysInterface, LuaInterface, SetsInterface, StreamsInterface,
    },
    prelude::{Builder, Config, ReconnectPolicy},
};

use super::{Dependency, StoreError, breaker::Breaker, keys::Keys};
use std::sync::Arc;

/// Upper bound of one Redis call, on top of fred's own command timeout.
const CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Pool size: 2–4 multiplexed connections was the measured sweet spot.
const POOL_SIZE: usize = 4;

/// One Lua script from `lua/`, compiled into the binary.
#[derive(Debug)]
pub struct Script {
    pub name: &'static str,
    src: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    pub const fn new(name: &'static str, src: &'static str) -> Self {
        Self {
            name,
            src,
            sha: OnceLock::new(),
        }
    }
    pub fn sha(&self) -> &str {
        self.sha.get_or_init(|| fred::util::sha1_hash(self.src))
    }
    pub fn source(&self) -> &'static str {
        self.src
    }
}

/// Declares every script once, from `lua/<name>.lua`. Schedule scripts get
/// `lua/lib/schedule.lua` (lazy hold expiry and seat helpers) prepended, so
/// that shared logic is written once and still runs inside each script.
macro_rules! scripts {
    (plain: [$($ident:ident => $file:literal),* $(,)?], schedule: [$($sident:ident => $sfile:literal),* $(,)?] $(,)?) => {
        $(pub static $ident: Script = Script::new($file, include_str!(concat!("../../lua/", $file, ".lua")));)*
        $(pub static $sident: Script = Script::new(
            $sfile,
            concat!(include_str!("../../lua/lib/schedule.lua"), "\n", include_str!(concat!("../../lua/", $sfile, ".lua"))),
        );)*
        /// Every script, for loading at start-up.
        pub static ALL_SCRIPTS: &[&Script] = &[$(&$ident,)* $(&$sident,)*];
    };
}

scripts! {
    plain: [
        SERVER_TIME => "server_time",
        LOAD_EVENT => "load_event",
        JOIN_QUEUE => "join_queue",
        QUEUE_STATUS => "queue_status",
        LEAVE_QUEUE => "leave_queue",
        ADMIT_TICK => "admit_tick",
        QUEUE_FIGURES => "queue_figures",
        STREAM_STATUS => "stream_status",
        FAIR_INFO => "fair_info",
        DRAW_ENTRIES => "draw_entries",
    ],
    schedule: [
        PLACE_HOLD => "place_hold",
        RELEASE_HOLD => "release_hold",
        HOLD_INFO => "hold_info",
        SEAT_MAP => "seat_map",
        SOLD_SEATS => "sold_seats",
        SCHEDULES_OVERVIEW => "schedules_overview",
        SWEEP_HOLDS => "sweep_holds",
        BEGIN_PAYMENT => "begin_payment",
        ABORT_PAYMENT => "abort_payment",
        CONFIRM_SALE => "confirm_sale",
    ],
}

#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    keys: Keys,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        dep: Dependency::Redis,
        reason: reason.into(),
    }
}

/// Errors that mean "Redis is not answering right now" rather than "Redis
/// answered and said no". Anything not recognisably an answer counts as an
/// outage: a fast 503 is the safe side of a misclassification.
fn is_outage(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind as K;
    let answered = matches!(e.kind(), K::InvalidCommand | K::InvalidArgument | K::Parse)
        || ["ERR", "WRONGTYPE", "NOSCRIPT", "NOPERM", "EXECABORT"]
            .iter()
            .any(|p| e.details().starts_with(p));
    !answered
}

impl Redis {
    /// Connects, failing at once if the server does not answer.
    ///
    /// # Errors
    /// Bad URL or unreachable server.
    pub async fn connect(url: &str, keys: Keys) -> Result<Self, StoreError> {
        let config =
            Config::from_url(url).map_err(|e| unavailable(format!("bad REDIS_URL: {e}")))?;
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_millis(1_000);
                c.internal_command_timeout = Duration::from_millis(1_000);
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(900))
            // Reconnect forever, 50 ms doubling to 1 s: a returning Redis is
            // picked up within about a second.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .build_pool(POOL_SIZE)
            .map_err(|e| unavailable(e.to_string()))?;
        match tokio::time::timeout(Duration::from_secs(3), pool.init()).await {
            Ok(Ok(_handle)) => {}
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable("connect timed out after 3 s")),
        }
        let redis = Self {
            pool,
            keys,
            breaker: Arc::new(Breaker::new(Dependency::Redis)),
        };
        redis.load_scripts().await?;
        Ok(redis)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// `SCRIPT LOAD`s every script so the first calls skip the NOSCRIPT round trip.
    async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in ALL_SCRIPTS {
            let sha: String = self
                .guard(self.pool.next().script_load::<String, _>(script.source()))
                .await?;
            debug_assert_eq!(sha, script.sha());
        }
        Ok(())
    }

    /// Timeout + breaker around one call, with metrics on failure.
    async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, StoreError> {
        if !self.breaker.allow() {
            metrics::counter!("boxoffice_dependency_errors_total", "dependency" => "redis", "kind" => "circuit_open").increment(1);
            return Err(unavailable("circuit open"));
        }
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(e)) if is_outage(&e) => {
                self.breaker.failure();
                let kind = if matches!(e.kind(), fred::error::ErrorKind::Timeout) {
                    "timeout"
                } else {
                    "error"
                };
                metrics::counter!("boxoffice_dependency_errors_total", "dependency" => "redis", "kind" => kind).increment(1);
                Err(unavailable(e.to_string()))
            }
            Ok(Err(e)) => {
                // Redis answered: the connection is fine, the request was not.
                self.breaker.success();
                Err(StoreError::internal(
                    Dependency::Redis,
                    anyhow::anyhow!("{e}"),
                ))
            }
            Err(_) => {
                self.breaker.failure();
                metrics::counter!("boxoffice_dependency_errors_total", "dependency" => "redis", "kind" => "timeout").increment(1);
                Err(unavailable("timed out"))
            }
        }
    }

    /// Runs a script and returns its JSON reply.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] on an outage; `Internal` if the script
    /// raised an error (a bug: scripts validate before writing).
    pub async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<String, StoreError> {
        self.run_as(script, keys, args).await
    }

    /// [`Redis::run`] for a script whose reply is an array of binary
    /// strings (a JSON head and raw bitmaps).
    ///
    /// # Errors
    /// As [`Redis::run`].
    pub async fn run_bulk(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<bytes::Bytes>, StoreError> {
        self.run_as(script, keys, args).await
    }

    async fn run_as<R: fred::types::FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, StoreError> {
        let client = self.pool.next();
        self.guard(async {
            match client
                .evalsha::<R, _, _, _>(script.sha(), keys.clone(), args.clone())
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    tracing::info!(
                        script = script.name,
                        "script cache empty on server; sending source"
                    );
                    client.eval::<R, _, _, _>(script.source(), keys, args).await
                }
                other => other,
            }
        })
        .await
        .map_err(|e| match e {
            StoreError::Internal { dep, source } => StoreError::Internal {
                dep,
                source: source.context(format!("script {}", script.name)),
            },
            other => other,
        })
    }

    /// Round trip to the server.
    ///
    /// # Errors
    /// On an outage.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.guard(self.pool.next().ping::<String>(None))
            .await
            .map(drop)
    }

    /// # Errors
    /// On an outage.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.guard(self.pool.next().exists::<i64, _>(key))
            .await
            .map(|n| n > 0)
    }

    /// Sets a key that never expires.
    ///
    /// # Errors
    /// On an outage.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.guard(
            self.pool
                .next()
                .set::<(), _, _>(key, value, None, None, false),
        )
        .await
    }

    /// Appends fields to a stream with an automatic id, capped near `maxlen`.
    ///
    /// # Errors
    /// On an outage.
    pub async fn xadd(
        &self,
        key: &str,
        fields: Vec<(String, String)>,
        maxlen: i64,
    ) -> Result<String, StoreError> {
        use fred::types::streams::{XCap, XCapKind, XCapTrim};
        let cap: XCap = (XCapKind::MaxLen, XCapTrim::AlmostExact, maxlen)
            .try_into()
            .map_err(|e: fred::error::Error| {
                StoreError::internal(Dependency::Redis, anyhow::anyhow!("{e}"))
            })?;
        self.guard(
            self.pool
                .next()
                .xadd::<String, _, _, _, _>(key, false, cap, "*", fields),
        )
        .await
    }

    /// # Errors
    /// On an outage.
    pub async fn sadd(&self, key: &str, member: &str) -> Result<(), StoreError> {
        self.guard(self.pool.next().sadd::<i64, _, _>(key, member))
            .await
            .map(drop)
    }

    /// # Errors
    /// On an outage.
    pub async fn smembers(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.guard(self.pool.next().smembers::<Vec<String>, _>(key))
            .await
    }

    /// # Errors
    /// On an outage.
    pub async fn hget(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        self.guard(self.pool.next().hget::<Option<String>, _, _>(key, field))
            .await
    }

    /// Reads Redis TIME (the clock every instance agrees on), in ms.
    ///
    /// # Errors
    /// On an outage.
    pub async fn now_ms(&self) -> Result<i64, StoreError> {
        #[derive(serde::Deserialize)]
        struct T {
            now_ms: i64,
        }
        let r = self.run(&SERVER_TIME, vec![], vec![]).await?;
        serde_json::from_str::<T>(&r)
            .map(|t| t.now_ms)
            .map_err(|e| StoreError::internal(Dependency::Redis, e))
    }

    /// Closes the connections (graceful shutdown).
    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }
}
