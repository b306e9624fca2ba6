//! What open keep-alive connections cost the service: a step of
//! `make bench` (scripts/bench.sh).
//!
//! ```text
//! conn_bench <host:port> <service_pid> <connections> <seconds> <interval_ms>
//! ```
//!
//! Opens `connections` keep-alive HTTP/1.1 connections to `host:port` (500
//! at a time), each making one `GET /healthz`, as a browser tab that has
//! loaded the page; then measures, from `/proc/<service_pid>`:
//! - the service's resident memory before and after (per connection);
//! - its CPU over 3 s (`CONN_BENCH_IDLE_SECONDS`) with every connection
//!   idle (right after one more request on each, so none reaches the idle
//!   timeout, which ends a keep-alive connection waiting 60 s, by default,
//!   for its next request);
//! - its CPU over `seconds` with every connection making one request every
//!   `interval_ms`, as a waiting page polling on its own connection (per
//!   request); a connection the service closed is opened again, as a
//!   browser would, and counted.
//!
//! Prints one JSON object. Raw sockets, no HTTP client: the figures are
//! the service's, and the client holds only its sockets.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
};

const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n";

#[path = "../procstat.rs"]
mod procstat;

#[path = "../loopback.rs"]
mod loopback;

/// Connection `index` to `server`, from its own loopback source address
/// (`loopback::source`), with Nagle off.
async fn open(server: SocketAddr, index: usize) -> anyhow::Result<TcpStream> {
    let conn = match loopback::source(server.ip(), index) {
        Some(from) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            socket.connect(server).await?
        }
        None => TcpStream::connect(server).await?,
    };
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// Resident memory (KiB) and CPU seconds (user + system) of `pid`.
fn usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    let pid = pid.to_string();
    let gone = || anyhow::anyhow!("no /proc entry for {pid}");
    Ok((
        procstat::rss_kib(&pid).ok_or_else(gone)?,
        procstat::cpu_seconds(&pid).ok_or_else(gone)?,
    ))
}

/// One request on `conn`, its whole response read (the head, then
/// content-length bytes).
async fn request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    conn.write_all(REQUEST).await?;
    buf.clear();
    loop {
        let mut chunk = [0u8; 1024];
        let n = conn.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?.to_ascii_lowercase();
            anyhow::ensure!(head.starts_with("http/1.1 200"), "answer: {head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = conn.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "connection closed");
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [addr, pid, n, seconds, interval_ms] = a.as_slice() else {
        anyhow::bail!(
            "usage: conn_bench <host:port> <service_pid> <connections> <seconds> <interval_ms>"
        );
    };
    let (pid, n): (u32, usize) = (pid.parse()?, n.parse()?);
    let server = tokio::net::lookup_host(addr.as_str())
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{addr}: no address"))?;
    let window = Duration::from_secs(seconds.parse()?);
    let interval = Duration::from_millis(interval_ms.parse()?);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, _) = usage(pid)?;
    let gate = Arc::new(Semaphore::new(500));
    let mut opening = Vec::with_capacity(n);
    for i in 0..n {
        let gate = gate.clone();
        opening.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await?;
            let mut conn = open(server, i).await?;
            request(&mut conn, &mut Vec::new()).await?;
            anyhow::Ok(conn)
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for o in opening {
        conns.push(o.await??);
    }
    let (rss1, _) = usage(pid)?;

    // One more request on each (so none is near the idle timeout), then
    // nothing moves for `idle`.
    let idle = Duration::from_secs(match std::env::var("CONN_BENCH_IDLE_SECONDS") {
        Ok(v) => v.parse()?,
        Err(_) => 3,
    });
    let refresh: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                request(&mut conn, &mut Vec::new()).await?;
                anyhow::Ok(conn)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(n);
    for r in refresh {
        conns.push(r.await??);
    }
    let (_, cpu1) = usage(pid)?;
    tokio::time::sleep(idle).await;
    let (rss2, cpu2) = usage(pid)?;

    // Polling: each connection one request every `interval`, spread out;
    // one the service closed is opened again and counted.
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let offset = interval.mul_f64(i as f64 / n as f64);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let (mut done, mut reopened) = (0u64, 0u64);
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(interval);
                while start.elapsed() + interval <= window + offset {
                    tick.tick().await;
                    if request(&mut conn, &mut buf).await.is_err() {
                        conn = open(server, i).await?;
                        request(&mut conn, &mut buf).await?;
                        reopened += 1;
                    }
                    done += 1;
                }
                anyhow::Ok((conn, done, reopened))
            })
        })
        .collect();
    let (mut requests, mut reopened) = (0, 0);
    let mut kept = Vec::with_capacity(n);
    for t in tasks {
        let (conn, done, again) = t.await??;
        requests += done;
        reopened += again;
        kept.push(conn);
    }
    let polled = start.elapsed().as_secs_f64();
    let (rss3, cpu3) = usage(pid)?;
    drop(kept);

    let per = |kib: u64, base: u64| (kib.saturating_sub(base) as f64 * 1024.0 / n as f64).round();
    println!(
        "{}",
        json!({
            "connections": n,
            "rss_before_kib": rss0,
            "rss_open_kib": rss1,
            "rss_bytes_per_connection": per(rss1, rss0),
            "rss_after_polling_kib": rss3,
            "rss_bytes_per_connection_after_polling": per(rss3, rss0),
            "idle_seconds": idle.as_secs_f64(),
            "idle_cpu_seconds": cpu2 - cpu1,
            "idle_cpu_share_of_a_core": (cpu2 - cpu1) / idle.as_secs_f64(),
            "rss_idle_kib": rss2,
            "poll_interval_ms": interval.as_millis() as u64,
            "poll_seconds": polled,
            "poll_requests": requests,
            "poll_reconnects": reopened,
            "poll_cpu_seconds": cpu3 - cpu2,
            "poll_cpu_us_per_request": (cpu3 - cpu2) * 1e6 / requests.max(1) as f64,
        })
    );
    Ok(())
}
