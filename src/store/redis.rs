//! The Redis adapter: a small fred pool (or, for a Redis Cluster, one fred
//! client per master, routed by [`super::cluster`]) behind a narrow
//! interface, with a circuit breaker per server.
//!
//! Domain code calls [`Redis::eval_json`] (in [`super::reply`]) with a
//! [`Script`] and gets the script's JSON reply (every script ends with
//! `cjson.encode`) decoded into the reply type of its family; [`Redis::run`]
//! returns it undecoded. fred never leaks past this file,
//! so replacing the client (fred has had no release since 2025) touches only
//! this module.
//!
//! Scripts are sent by SHA (`EVALSHA`); on `NOSCRIPT` (a restarted or
//! failed-over server has an empty script cache) the source is sent once
//! with `EVAL`, which also caches it again.

use std::{sync::OnceLock, time::Duration};

use fred::{
    clients::{Client, Pool},
    interfaces::{
        ClientLike, HashesInterface, KeysInterface, LuaInterface, SetsInterface, StreamsInterface,
    },
    prelude::{Builder, Config, ReconnectPolicy},
};

use super::{
    Dependency, StoreError,
    breaker::Breaker,
    cluster::{self, ClusterRouter},
    guard::{Verdict, guard},
    keys::Keys,
};
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

/// Upper bound of one Redis call, on top of fred's own command timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
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

/// Declares every script once, from `lua/<name>.lua`. Lua scripts cannot
/// import, so shared code is prepended: queue scripts get
/// `lua/lib/queue.lua` (`now_ms`, the queue key layout), schedule scripts
/// that and `lua/lib/schedule.lua` (lazy hold expiry and seat helpers), so
/// shared logic is written once and still runs inside each script.
/// `audit` scripts are schedule scripts left out of the start-up load
/// (`Redis::run` sends their source on `NOSCRIPT`).
macro_rules! schedule_source {
    ($file:literal) => {
        concat!(
            include_str!("../../lua/lib/queue.lua"),
            "\n",
            include_str!("../../lua/lib/schedule.lua"),
            "\n",
            include_str!(concat!("../../lua/", $file, ".lua"))
        )
    };
}

macro_rules! scripts {
    (
        plain: [$($ident:ident => $file:literal),* $(,)?],
        queue: [$($qident:ident => $qfile:literal),* $(,)?],
        schedule: [$($sident:ident => $sfile:literal),* $(,)?],
        audit: [$($aident:ident => $afile:literal),* $(,)?] $(,)?
    ) => {
        $(pub static $ident: Script = Script::new($file, include_str!(concat!("../../lua/", $file, ".lua")));)*
        $(pub static $qident: Script = Script::new(
            $qfile,
            concat!(include_str!("../../lua/lib/queue.lua"), "\n", include_str!(concat!("../../lua/", $qfile, ".lua"))),
        );)*
        $(pub static $sident: Script = Script::new($sfile, schedule_source!($sfile));)*
        $(pub static $aident: Script = Script::new($afile, schedule_source!($afile));)*
        /// Every script but the audit's, for loading at start-up.
        pub static ALL_SCRIPTS: &[&Script] = &[$(&$ident,)* $(&$qident,)* $(&$sident,)*];
    };
}

scripts! {
    plain: [
        LOAD_EVENT => "load_event",
        FINISH_RESTORE => "finish_restore",
        DRAW_ENTRIES => "draw_entries",
    ],
    queue: [
        SERVER_TIME => "server_time",
        JOIN_QUEUE => "join_queue",
        QUEUE_STATUS => "queue_status",
        LEAVE_QUEUE => "leave_queue",
        ADMIT_TICK => "admit_tick",
        QUEUE_FIGURES => "queue_figures",
        STREAM_STATUS => "stream_status",
        FAIR_INFO => "fair_info",
        AUTOPILOT_PUBLISH => "autopilot_publish",
        AUTOPILOT_APPLY => "autopilot_apply",
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
        REFUND_SEATS => "refund_seats",
        CANCEL_SCHEDULE => "cancel_schedule",
    ],
    audit: [
        CHECK_SCHEDULE => "check_schedule",
    ],
}

#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    keys: Keys,
    breakers: Arc<Breakers>,
}

/// One server (a small multiplexed pool), or a Redis Cluster routed by
/// `cluster.rs` with one independent client per master.
#[derive(Clone)]
enum Conn {
    Single(Pool),
    Cluster(Arc<ClusterRouter>),
}

/// The circuit breakers in front of Redis. One server: one breaker. A
/// Redis Cluster: one per master, so a dead master opens only its own
/// breaker and only the events in its slots answer 503 (invariant 11);
/// after a failover the slots route to the promoted replica, whose breaker
/// is fresh.
struct Breakers {
    whole: Arc<Breaker>,
    nodes: RwLock<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    fn new() -> Self {
        Self {
            whole: Arc::new(Breaker::new(Dependency::Redis)),
            nodes: RwLock::default(),
        }
    }

    fn for_node(&self, node: &str) -> Arc<Breaker> {
        if let Some(b) = self.nodes.read().expect("lock").get(node) {
            return b.clone();
        }
        self.nodes
            .write()
            .expect("lock")
            .entry(node.to_owned())
            .or_insert_with(|| Arc::new(Breaker::for_node(Dependency::Redis, node)))
            .clone()
    }
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

/// [`is_outage`] as the guard's verdict; fred's own timeout counts as one.
fn judge(e: &fred::error::Error) -> Verdict {
    if !is_outage(e) {
        Verdict::Answered
    } else if matches!(e.kind(), fred::error::ErrorKind::Timeout) {
        Verdict::TimedOut
    } else {
        Verdict::Outage
    }
}

impl Redis {
    /// Connects, failing at once if the server does not answer.
    ///
    /// # Errors
    /// Bad URL or unreachable server.
    pub async fn connect(url: &str, keys: Keys) -> Result<Self, StoreError> {
        let config =
            Config::from_url(url).map_err(|e| unavailable(format!("bad REDIS_URL: {e}")))?;
        let connection = |c: &mut fred::prelude::ConnectionConfig| {
            c.connection_timeout = Duration::from_millis(1_000);
            c.internal_command_timeout = Duration::from_millis(1_000);
            c.max_command_attempts = 1;
            c.tcp.nodelay = Some(true);
        };
        let performance = |p: &mut fred::prelude::PerformanceConfig| {
            p.default_command_timeout = Duration::from_millis(900);
        };
        // Reconnect forever, 50 ms doubling to 1 s: a returning Redis is
        // picked up within about a second.
        let policy = || ReconnectPolicy::new_exponential(0, 50, 1_000, 2);
        let conn = if let Some(seeds) = cluster::seeds(&config) {
            if seeds.len() < 2 {
                tracing::warn!(
                    "REDIS_URL names one Redis Cluster seed node: while that node is down \
                     the service cannot find the cluster again after a failover; list \
                     several, redis-cluster://host1:port?node=host2:port&node=host3:port"
                );
            }
            let factory: cluster::ClientFactory = Arc::new(move |config| {
                let client = Builder::from_config(config)
                    .with_connection_config(connection)
                    .with_performance_config(performance)
                    .set_policy(policy())
                    .build()?;
                // Connects (and reconnects) in the background; calls made
                // before it is up wait for it within their timeout.
                drop(client.connect());
                Ok(client)
            });
            match tokio::time::timeout(
                Duration::from_secs(3),
                ClusterRouter::start(config, seeds, factory),
            )
            .await
            {
                Ok(Ok(router)) => Conn::Cluster(router),
                Ok(Err(e)) => return Err(unavailable(format!("no cluster seed answered: {e}"))),
                Err(_) => return Err(unavailable("connect timed out after 3 s")),
            }
        } else {
            let pool = Builder::from_config(config)
                .with_connection_config(connection)
                .with_performance_config(performance)
                .set_policy(policy())
                .build_pool(POOL_SIZE)
                .map_err(|e| unavailable(e.to_string()))?;
            match tokio::time::timeout(Duration::from_secs(3), pool.init()).await {
                Ok(Ok(_handle)) => {}
                Ok(Err(e)) => return Err(unavailable(e.to_string())),
                Err(_) => return Err(unavailable("connect timed out after 3 s")),
            }
            Conn::Single(pool)
        };
        let redis = Self {
            conn,
            keys,
            breakers: Arc::new(Breakers::new()),
        };
        redis.load_scripts().await?;
        Ok(redis)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// `SCRIPT LOAD`s every script so the first calls skip the NOSCRIPT
    /// round trip. On a cluster, into every master that answers now (the
    /// others, and promoted replicas, get each script on its first NOSCRIPT).
    async fn load_scripts(&self) -> Result<(), StoreError> {
        let clients: Vec<(Option<String>, Client)> = match &self.conn {
            Conn::Single(pool) => vec![(None, pool.next().clone())],
            Conn::Cluster(router) => router
                .masters()
                .into_iter()
                .map(|(n, c)| (Some(n), c))
                .collect(),
        };
        for (node, client) in clients {
            for script in ALL_SCRIPTS {
                let load = client.script_load::<String, _>(script.source());
                let sha: String = match &node {
                    None => self.guard(None, |_| load).await?,
                    Some(node) => match self.guard_node(node, load).await {
                        Ok(sha) => sha,
                        Err(e) => {
                            tracing::warn!(node, error = %e, "could not load scripts into a cluster node");
                            break;
                        }
                    },
                };
                debug_assert_eq!(sha, script.sha());
            }
        }
        Ok(())
    }

    /// The client and breaker for a call on `key` (None: any server).
    fn route(&self, key: Option<&str>) -> Result<(Arc<Breaker>, Client), StoreError> {
        match &self.conn {
            Conn::Single(pool) => Ok((self.breakers.whole.clone(), pool.next().clone())),
            Conn::Cluster(router) => {
                let (node, client) = router.route(key).map_err(|e| unavailable(e.to_string()))?;
                Ok((self.breakers.for_node(&node), client))
            }
        }
    }

    /// After a failed, timed-out or redirected call on a cluster: re-read
    /// the slot map now rather than at the next tick.
    fn after_outage(&self, e: Option<&fred::error::Error>) {
        if let Conn::Cluster(router) = &self.conn {
            router.refresh_soon();
            if let Some(e) = e.filter(|e| e.details().starts_with("MOVED")) {
                tracing::debug!(error = %e, "slot moved; refreshing the cluster slot map");
            }
        }
    }

    /// [`Redis::guard`] for a call to one named cluster node.
    async fn guard_node<T>(
        &self,
        node: &str,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, StoreError> {
        let breaker = self.breakers.for_node(node);
        guard(&breaker, CALL_TIMEOUT, call, judge, |_| {}).await
    }

    /// Timeout + breaker (the one of the node that serves `key`) around
    /// one call; an outage on a cluster re-reads the slot map soon.
    async fn guard<T, F, Fut>(&self, key: Option<&str>, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        let (breaker, client) = self.route(key)?;
        guard(&breaker, CALL_TIMEOUT, call(client), judge, |e| {
            self.after_outage(e)
        })
        .await
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
        let first_key = keys.first().cloned();
        self.guard(first_key.as_deref(), |client| async move {
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

    /// Hash-slot ranges whose master changed (a Redis Cluster failover)
    /// since the last call; always empty for a single server.
    pub fn take_moved_slots(&self) -> Vec<(u16, u16)> {
        match &self.conn {
            Conn::Single(_) => vec![],
            Conn::Cluster(router) => router.take_moved(),
        }
    }

    /// Resolves when a Redis Cluster failover moved slots (never for a
    /// single server).
    pub async fn slots_moved(&self) {
        match &self.conn {
            Conn::Single(_) => std::future::pending().await,
            Conn::Cluster(router) => router.moved().await,
        }
    }

    /// Gives back ranges from [`Redis::take_moved_slots`] that could not be
    /// handled yet.
    pub fn requeue_moved_slots(&self, moved: Vec<(u16, u16)>) {
        if let Conn::Cluster(router) = &self.conn {
            router.requeue_moved(moved);
        }
    }

    /// The Redis Cluster hash slot of a key.
    pub fn slot_of(key: &str) -> u16 {
        fred::types::cluster::ClusterRouting::hash_key(key.as_bytes())
    }

    /// # Errors
    /// On an outage.
    pub async fn del(&self, key: &str) -> Result<(), StoreError> {
        self.guard(Some(key), |c| async move { c.del::<i64, _>(key).await })
            .await
            .map(drop)
    }

    /// Round trip to the server.
    ///
    /// # Errors
    /// On an outage.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if let Conn::Cluster(router) = &self.conn {
            // Ready while any master answers: one failing shard must not
            // take every instance out of its load balancer.
            let pings = router.masters().into_iter().map(|(node, client)| {
                Box::pin(async move { self.guard_node(&node, client.ping::<String>(None)).await })
            });
            return futures::future::select_ok(pings).await.map(drop);
        }
        self.guard(None, |c| async move { c.ping::<String>(None).await })
            .await
            .map(drop)
    }

    /// # Errors
    /// On an outage.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.guard(Some(key), |c| async move { c.exists::<i64, _>(key).await })
            .await
            .map(|n| n > 0)
    }

    /// # Errors
    /// On an outage.
    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.guard(Some(key), |c| async move {
            c.get::<Option<String>, _>(key).await
        })
        .await
    }

    /// Sets a key that never expires.
    ///
    /// # Errors
    /// On an outage.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.guard(Some(key), |c| async move {
            c.set::<(), _, _>(key, value, None, None, false).await
        })
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
        self.guard(Some(key), |c| async move {
            c.xadd::<String, _, _, _, _>(key, false, cap, "*", fields)
                .await
        })
        .await
    }

    /// # Errors
    /// On an outage.
    pub async fn sadd(&self, key: &str, member: &str) -> Result<(), StoreError> {
        self.guard(Some(key), |c| async move {
            c.sadd::<i64, _, _>(key, member).await
        })
        .await
        .map(drop)
    }

    /// Adds several members in one command.
    ///
    /// # Errors
    /// On an outage.
    pub async fn sadd_many(&self, key: &str, members: &[&str]) -> Result<(), StoreError> {
        let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        self.guard(Some(key), |c| async move {
            c.sadd::<i64, _, _>(key, members).await
        })
        .await
        .map(drop)
    }

    /// # Errors
    /// On an outage.
    pub async fn smembers(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.guard(Some(key), |c| async move {
            c.smembers::<Vec<String>, _>(key).await
        })
        .await
    }

    /// # Errors
    /// On an outage.
    pub async fn hget(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        self.guard(Some(key), |c| async move {
            c.hget::<Option<String>, _, _>(key, field).await
        })
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
        let t: T = self.eval_json(&SERVER_TIME, vec![], vec![]).await?;
        Ok(t.now_ms)
    }

    /// Closes the connections (graceful shutdown).
    pub async fn quit(&self) {
        match &self.conn {
            Conn::Single(pool) => {
                let _ = pool.quit().await;
            }
            Conn::Cluster(router) => router.quit().await,
        }
    }
}
