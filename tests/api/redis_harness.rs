//! Redis servers the suite starts and breaks itself: a local Redis Cluster
//! (Debian's `redis-server` in cluster mode, on free ports) and a single
//! server that can be killed and restarted empty. Nothing here touches the
//! shared Redis; every process is killed when its owner is dropped.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{net::TcpStream, process::Child};

use crate::helpers::eventually;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !text.starts_with("ERR") {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

async fn wait_for_port(port: u16) -> bool {
    eventually(Duration::from_secs(5), || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await
}

/// Whether this `redis-server` can run in cluster mode. With the env var
/// `CI` set a missing capability fails the test instead of skipping it.
pub async fn cluster_supported() -> bool {
    let ok = match tokio::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .await
    {
        Ok(out) => {
            // Cluster mode exists since Redis 3; what we need (replica
            // promotion, `--cluster create`) since 5.
            let v = String::from_utf8_lossy(&out.stdout);
            v.split("v=")
                .nth(1)
                .and_then(|s| s.split('.').next())
                .and_then(|major| major.parse::<u32>().ok())
                .is_some_and(|major| major >= 5)
        }
        Err(_) => false,
    };
    if !ok {
        let msg = "SKIPPING Redis Cluster test: redis-server (>= 5, with cluster support) \
                   is not available on this machine";
        assert!(
            std::env::var_os("CI").is_none(),
            "{msg} (CI is set: failing)"
        );
        eprintln!("\n*** {msg} ***\n");
    }
    ok
}

/// One `redis-server` process of ours.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A local Redis Cluster: `masters` masters with `replicas` replicas each,
/// on free ports, no persistence (a restarted node comes back empty),
/// `cluster-node-timeout` 1 s and `cluster-require-full-coverage no` (one
/// shard down leaves the others serving, the setting docs/OPERATIONS.md
/// asks for).
pub struct LocalCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl LocalCluster {
    /// Starts the nodes, creates the cluster and waits until every node
    /// says `cluster_state:ok` and every replica is in sync. None (with a
    /// loud message) when `redis-server` cannot do cluster mode.
    pub async fn start(masters: usize, replicas: usize) -> Option<Self> {
        if !cluster_supported().await {
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("bx-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut me = Self { dir, nodes: vec![] };
        for _ in 0..masters * (1 + replicas) {
            let port = free_port();
            let child = me.spawn(port);
            me.nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        for n in &me.nodes {
            assert!(
                wait_for_port(n.port).await,
                "redis-server on {} starts",
                n.port
            );
        }
        let addrs: Vec<String> = me
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            me.wait_healthy(Duration::from_secs(20)).await,
            "cluster becomes healthy"
        );
        // Healthy is not yet complete: a node that `cluster create` asked
        // to replicate can still be an empty master for a moment on a busy
        // machine, and a test that kills a master needs its replica.
        let in_sync = eventually(Duration::from_secs(20), || async {
            me.replicas_in_sync().await == masters * replicas
        })
        .await;
        assert!(
            in_sync,
            "every master has its {replicas} replica(s) in sync"
        );
        Some(me)
    }

    /// How many nodes are replicas with their link to the master up.
    async fn replicas_in_sync(&self) -> usize {
        let mut n = 0;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            if let Ok(repl) = cli(node.port, &["info", "replication"]).await
                && repl.contains("role:slave")
                && repl.contains("master_link_status:up")
            {
                n += 1;
            }
        }
        n
    }

    fn spawn(&self, port: u16) -> Child {
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(&conf)
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts")
    }

    /// Every live node reports `cluster_state:ok`, every master owns slots
    /// it can serve and every live replica's link to its master is up.
    pub async fn wait_healthy(&self, timeout: Duration) -> bool {
        eventually(timeout, || async {
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                let Ok(info) = cli(n.port, &["cluster", "info"]).await else {
                    return false;
                };
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let Ok(repl) = cli(n.port, &["info", "replication"]).await else {
                    return false;
                };
                if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// `REDIS_URL` naming every master as a seed.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|n| n.port);
        let first = ports.next().expect("nodes");
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// `REDIS_URL` with only the first node as seed (accepted, with a
    /// warning at start).
    pub fn single_seed_url(&self) -> String {
        format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port)
    }

    /// Live masters and the slot ranges each serves, from `CLUSTER NODES`.
    pub async fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(text) = cli(n.port, &["cluster", "nodes"]).await else {
                continue;
            };
            let mut out = vec![];
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let port: u16 = f[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .expect("node address");
                let ranges = f[8..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .map(|r| match r.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (r.parse().unwrap(), r.parse().unwrap()),
                    })
                    .collect::<Vec<_>>();
                if !ranges.is_empty() {
                    out.push((port, ranges));
                }
            }
            out.sort();
            return out;
        }
        vec![]
    }

    /// The port of the master serving an event's keys now.
    pub async fn master_of(&self, event: &str) -> u16 {
        self.master_of_key(&format!("{{ev:{event}}}")).await
    }

    /// `redis-cli` on the master serving `key` now.
    pub async fn cli_for(&self, key: &str, args: &[&str]) -> String {
        cli(self.master_of_key(key).await, args).await.unwrap()
    }

    /// The port of the master serving `key`'s slot now.
    pub async fn master_of_key(&self, key: &str) -> u16 {
        let slot = hash_slot(key);
        self.masters()
            .await
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|(p, _)| p)
            .expect("a master serves every slot")
    }

    /// One event id per master (`<stem>-<n>`), in master order.
    pub async fn events_on_each_master(&self, stem: &str) -> Vec<(String, u16)> {
        let masters = self.masters().await;
        let mut found: Vec<(String, u16)> = vec![];
        for i in 0.. {
            let id = format!("{stem}-{i}");
            let slot = hash_slot(&format!("{{ev:{id}}}"));
            let port = masters
                .iter()
                .find(|(_, r)| r.iter().any(|&(a, b)| (a..=b).contains(&slot)))
                .map(|(p, _)| *p)
                .unwrap();
            if !found.iter().any(|(_, p)| *p == port) {
                found.push((id, port));
            }
            if found.len() == masters.len() {
                break;
            }
        }
        found
    }

    /// SIGKILLs the node on `port` (no clean shutdown, nothing saved).
    pub async fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("our node");
        if let Some(mut c) = node.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the node on `port` again with its cluster identity (its
    /// nodes.conf) and no data: a master that comes back empty.
    pub async fn restart_empty(&mut self, port: u16) {
        let child = self.spawn(port);
        assert!(wait_for_port(port).await, "redis-server on {port} restarts");
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("our node");
        node.child = Some(child);
    }

    /// The port of a replica of the master on `port`.
    pub async fn replica_of(&self, port: u16) -> Option<u16> {
        for n in self
            .nodes
            .iter()
            .filter(|n| n.child.is_some() && n.port != port)
        {
            if let Ok(repl) = cli(n.port, &["info", "replication"]).await
                && repl.contains("role:slave")
                && repl.contains(&format!("master_port:{port}"))
            {
                return Some(n.port);
            }
        }
        None
    }

    /// Waits until `port` is a master (a promoted replica); the time it took.
    pub async fn wait_master(&self, port: u16, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(role) = cli(port, &["role"]).await
                && role.starts_with("master")
            {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                let _ = c.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis Cluster's hash slot of a key (CRC16/XMODEM of the hash tag).
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A single `redis-server` without persistence that a test can kill and
/// restart empty on the same port.
pub struct SingleRedis {
    pub port: u16,
    child: Option<Child>,
}

impl SingleRedis {
    /// None (with a loud message; a failure when `CI` is set) when there
    /// is no `redis-server` to run.
    pub async fn start() -> Option<Self> {
        if tokio::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .await
            .is_err()
        {
            let msg = "SKIPPING Redis-loss test: redis-server is not installed";
            assert!(
                std::env::var_os("CI").is_none(),
                "{msg} (CI is set: failing)"
            );
            eprintln!("\n*** {msg} ***\n");
            return None;
        }
        let port = free_port();
        let mut me = Self { port, child: None };
        me.restart_empty().await;
        Some(me)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// (Re)starts the server with nothing in it.
    pub async fn restart_empty(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port).await,
            "redis-server on {} starts",
            self.port
        );
    }
}

impl Drop for SingleRedis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

#[test]
fn hash_slots_match_redis() {
    // Values from `CLUSTER KEYSLOT`.
    assert_eq!(hash_slot("foo"), 12182);
    assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
    assert_eq!(hash_slot("123456789"), 0x31C3); // CRC16/XMODEM check value
}
