//! Redis Cluster routing with one independent connection per master.
//!
//! Why not fred's clustered client: it runs every node's connection from
//! one router task, and while it reconnects to a dead master (until the
//! failover finishes, seconds) it sends nothing to the healthy ones either,
//! so one failing shard stalled every event (measured: requests to healthy
//! masters timed out during a failover). Here each master has its own
//! centralized fred client, so a dead master only delays the calls routed
//! to it (and its breaker in `redis.rs` turns those into fast 503s).
//!
//! Routing: the slot map comes from `CLUSTER SLOTS`, asked of any node that
//! answers (the known masters and every seed of `REDIS_URL`), at start,
//! every [`REFRESH_EVERY`] and at once after a call failed or was
//! redirected (`MOVED`), so a promoted replica takes over its slots within
//! a fraction of a second of the promotion. Every key of one event shares a
//! hash tag, so a script's first key names its slot.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, ClusterInterface},
    prelude::{Config, ServerConfig},
    types::{
        Value,
        cluster::{ClusterRouting, SlotRange},
        config::Server,
    },
};
use tokio::sync::Notify;

/// How often the slot map is re-read when nothing asks for it sooner.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// Upper bound of one `CLUSTER SLOTS` attempt.
const ASK_TIMEOUT: Duration = Duration::from_millis(300);

/// Builds one connected client for a node (the caller's connection,
/// timeout and reconnect settings).
pub type ClientFactory = Arc<dyn Fn(Config) -> Result<Client, fred::error::Error> + Send + Sync>;

pub struct ClusterRouter {
    /// The URL's settings (credentials, protocol) every node client copies.
    base: Config,
    seeds: Vec<Server>,
    factory: ClientFactory,
    slots: RwLock<Vec<SlotRange>>,
    clients: RwLock<HashMap<String, Client>>,
    refresh: Notify,
    /// Slot ranges whose master changed (a failover) since the reconciler
    /// last asked; see [`ClusterRouter::take_moved`].
    moved: std::sync::Mutex<Vec<(u16, u16)>>,
    /// Wakes the reconciler when `moved` grows.
    moved_signal: Notify,
}

impl std::fmt::Debug for ClusterRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRouter")
            .field("seeds", &self.seeds)
            .finish()
    }
}

impl ClusterRouter {
    /// Connects to the seeds, reads the slot map and starts the refresher.
    ///
    /// # Errors
    /// No seed answered `CLUSTER SLOTS`.
    pub async fn start(
        base: Config,
        seeds: Vec<Server>,
        factory: ClientFactory,
    ) -> Result<Arc<Self>, fred::error::Error> {
        let me = Arc::new(Self {
            base,
            seeds,
            factory,
            slots: RwLock::default(),
            clients: RwLock::default(),
            refresh: Notify::new(),
            moved: std::sync::Mutex::default(),
            moved_signal: Notify::new(),
        });
        me.refresh_now().await?;
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { break };
                let notified = me.refresh.notified();
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(REFRESH_EVERY) => {}
                }
                if let Err(e) = me.refresh_now().await {
                    tracing::debug!(error = %e, "cluster slot map refresh failed");
                }
                drop(me);
                // At most ten refreshes a second, however many calls fail.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(me)
    }

    fn name(server: &Server) -> String {
        format!("{}:{}", server.host, server.port)
    }

    /// The client of one node, created (connecting in the background) on
    /// first use.
    fn client(&self, server: &Server) -> Result<Client, fred::error::Error> {
        let name = Self::name(server);
        if let Some(c) = self.clients.read().expect("lock").get(&name) {
            return Ok(c.clone());
        }
        let mut config = self.base.clone();
        config.server = ServerConfig::new_centralized(server.host.to_string(), server.port);
        let client = (self.factory)(config)?;
        Ok(self
            .clients
            .write()
            .expect("lock")
            .entry(name)
            .or_insert(client)
            .clone())
    }

    /// Asks every known master and seed for `CLUSTER SLOTS` at once and
    /// takes the first answer.
    async fn refresh_now(&self) -> Result<(), fred::error::Error> {
        let mut servers: Vec<Server> = self
            .slots
            .read()
            .expect("lock")
            .iter()
            .map(|s| s.primary.clone())
            .collect();
        servers.extend(self.seeds.iter().cloned());
        servers.sort_by_key(Self::name);
        servers.dedup_by_key(|s| Self::name(s));
        let asks = servers.into_iter().map(|server| {
            let client = self.client(&server);
            Box::pin(async move {
                let client = client?;
                let v: Value = tokio::time::timeout(ASK_TIMEOUT, client.cluster_slots::<Value>())
                    .await
                    .map_err(|_| {
                        fred::error::Error::new(
                            fred::error::ErrorKind::Timeout,
                            "CLUSTER SLOTS timed out",
                        )
                    })??;
                ClusterRouting::from_cluster_slots(v, server.host.clone())
            })
        });
        let (routing, _) = futures::future::select_ok(asks).await?;
        let mut fresh = routing.slots().to_vec();
        fresh.sort_by_key(|s| s.start);
        if fresh.is_empty() {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Cluster,
                "empty slot map",
            ));
        }
        let mut slots = self.slots.write().expect("lock");
        let changed = slots.len() != fresh.len()
            || slots
                .iter()
                .zip(&fresh)
                .any(|(a, b)| a.start != b.start || a.end != b.end || a.primary != b.primary);
        if changed {
            // Ranges now served by another master than before: a failover
            // (or a resharding). The new master may lack the last writes
            // of the old one, so the reconciler restores those events.
            let moved: Vec<(u16, u16)> = fresh
                .iter()
                .filter(|new| {
                    slots.iter().any(|old| {
                        old.start <= new.end && new.start <= old.end && old.primary != new.primary
                    })
                })
                .map(|r| (r.start, r.end))
                .collect();
            if !moved.is_empty() {
                tracing::warn!(?moved, "Redis Cluster slots moved to another master");
                self.moved.lock().expect("lock").extend(moved);
                self.moved_signal.notify_one();
            }
            tracing::info!(
                masters = ?fresh.iter().map(|s| format!("{}-{} {}", s.start, s.end, Self::name(&s.primary))).collect::<Vec<_>>(),
                "Redis Cluster slot map"
            );
            *slots = fresh;
        }
        Ok(())
    }

    /// Slot ranges that moved to another master since the last call.
    pub fn take_moved(&self) -> Vec<(u16, u16)> {
        std::mem::take(&mut *self.moved.lock().expect("lock"))
    }

    /// Resolves when slot ranges moved since the last call (a failover).
    pub async fn moved(&self) {
        self.moved_signal.notified().await;
    }

    /// Gives back ranges the reconciler could not handle yet.
    pub fn requeue_moved(&self, moved: Vec<(u16, u16)>) {
        self.moved.lock().expect("lock").extend(moved);
    }

    /// Asks for a slot map refresh soon (after a failed or redirected call).
    pub fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// The master serving `key`'s slot (any master for None), its name and
    /// client.
    ///
    /// # Errors
    /// The slot map is empty (never read) or a client cannot be built.
    pub fn route(&self, key: Option<&str>) -> Result<(String, Client), fred::error::Error> {
        let server = {
            let slots = self.slots.read().expect("lock");
            let found = match key {
                Some(k) => {
                    let slot = ClusterRouting::hash_key(k.as_bytes());
                    slots.iter().find(|s| s.start <= slot && slot <= s.end)
                }
                None => slots.first(),
            };
            found.map(|s| s.primary.clone())
        };
        let Some(server) = server else {
            self.refresh_soon();
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Cluster,
                "no master serves this slot (yet)",
            ));
        };
        Ok((Self::name(&server), self.client(&server)?))
    }

    /// Every master's name and client (PING for readiness, shutdown).
    pub fn masters(&self) -> Vec<(String, Client)> {
        let mut servers: Vec<Server> = self
            .slots
            .read()
            .expect("lock")
            .iter()
            .map(|s| s.primary.clone())
            .collect();
        servers.sort_by_key(Self::name);
        servers.dedup_by_key(|s| Self::name(s));
        servers
            .iter()
            .filter_map(|s| Some((Self::name(s), self.client(s).ok()?)))
            .collect()
    }

    /// Closes every node connection.
    pub async fn quit(&self) {
        let clients: Vec<Client> = self
            .clients
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        for c in clients {
            let _ = c.quit().await;
        }
    }
}

/// The seed nodes of a `redis-cluster://` config, or None for one server.
pub fn seeds(config: &Config) -> Option<Vec<Server>> {
    match &config.server {
        ServerConfig::Clustered { hosts, .. } => Some(hosts.clone()),
        _ => None,
    }
}
