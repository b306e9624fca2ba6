//! The HTTP server: the accept loop and each connection's limits.
//!
//! `axum::serve` does not expose hyper's connection settings, so boxoffice
//! runs its own loop on hyper-util's `auto` builder (HTTP/1.1, and HTTP/2
//! with prior knowledge). Each limit answers one way a client can tie the
//! server up (see `docs/OPERATIONS.md`, "HTTP limits"):
//!
//! - **header-read timeout**: a request head must arrive complete within
//!   it, so slowloris connections are closed. The first head is timed from
//!   the connection's start (protocol detection included), each later
//!   HTTP/1 head from its first byte. hyper's own header timer is off: it
//!   also times a keep-alive connection's wait for its next request, so it
//!   would close a waiting page's connection between its polls (up to
//!   15 s apart) unless the slowloris bound were as long as that;
//! - **idle timeout**: a connection with no request in flight and no byte
//!   moving either way for this long is closed (hyper has no such setting).
//!   It alone bounds a keep-alive connection's wait for its next request.
//!   The connection's reads and writes are timed here for both;
//! - **connection cap**: a semaphore; beyond it a new connection gets a
//!   canned `503 over_capacity` and is closed at once, and the connections
//!   already open are served as before;
//! - **graceful shutdown**: stop accepting, let every connection finish the
//!   request in flight (hyper-util's `GracefulShutdown`), bounded in time.
//!
//! The whole-request timeout and the body limit are middleware
//! (`http/hygiene.rs`), where the answer can be problem+json.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpLimits;

/// How many refused connections may be answered at the same time; beyond
/// that a refused connection is closed without an answer.
const REFUSALS_IN_FLIGHT: usize = 256;

/// The largest request head (request line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A listener on `addr` whose kernel queue of connections not yet
/// accepted holds `backlog` ([`HttpLimits::listen_backlog`]; the kernel
/// caps it at `net.core.somaxconn`), with `SO_REUSEADDR` as
/// `TcpListener::bind` sets it. `TcpListener::bind` itself listens with a
/// backlog of 128.
///
/// # Errors
/// The address cannot be bound (in use, not ours).
pub fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Longest wait for connections to finish after shutdown was requested.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting and waits (at most the request timeout plus a few seconds)
/// for the requests in flight to finish.
///
/// The router sees each request with `ConnectInfo<SocketAddr>` (the peer),
/// as `into_make_service_with_connect_info` would give it.
///
/// # Errors
/// Never in practice; accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Timed here instead (`HeadOverdue`).
        .header_read_timeout(None)
        // The read buffer bounds a request head: a larger one is refused
        // with hyper's 431 (its default would take 400 KiB).
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // instead of spinning (as axum::serve does).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("boxoffice_http_connections_refused_total").increment(1);
            refuse(stream, &refusals);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let io = TokioIo::new(Timed {
                inner: stream,
                activity: activity.clone(),
            });
            let seen = activity.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let busy = seen.busy(req.version() == hyper::Version::HTTP_2);
                let router = router.clone();
                async move {
                    let resp = router.oneshot(req).await;
                    drop(busy);
                    resp
                }
            });
            let conn = watcher.watch(builder.serve_connection(io, service));
            tokio::select! {
                // The connection first: a read it makes can start a head,
                // which `HeadOverdue`, polled next, then times.
                biased;
                res = conn => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                () = HeadOverdue::new(&activity, limits.header_timeout) => {
                    // `requests` 0 and `read` false: a connection a client
                    // opened and never used (an HTTP client's pool connects
                    // spares); `read` true: a head that came too slowly.
                    tracing::debug!(
                        %peer,
                        requests = activity.requests.load(Ordering::Relaxed),
                        read = activity.read_any.load(Ordering::Relaxed),
                        "closed a connection whose request head did not arrive in time"
                    );
                }
                () = activity.idle_for(limits.idle_timeout) => {
                    metrics::counter!("boxoffice_http_idle_closed_total").increment(1);
                    tracing::debug!(%peer, "closed an idle connection");
                }
            }
            drop(permit);
        });
    }
    // Stop accepting before draining: a closed listener refuses new
    // connections at the TCP level.
    drop(listener);
    let drain = limits.request_timeout + DRAIN_GRACE;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            after_ms = drain.as_millis() as u64,
            "connections still open after the drain time; closing them"
        );
    }
    Ok(())
}

/// The answer to a connection over the cap: written at once, without
/// reading the request (the client may not have sent it yet).
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 164\r\n\
\r\n\
{\"type\":\"urn:boxoffice:problem:over_capacity\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"too many open connections; retry shortly\",\"code\":\"over_capacity\"}";

/// Answers a connection over the cap with `503 over_capacity` and closes
/// it within a few milliseconds. The answer is best effort: the client's
/// request is read (and dropped) for at most 50 ms first, because closing
/// a socket with unread data makes the kernel send a reset that can
/// destroy the answer before the client reads it.
fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(slot) = refusals.clone().try_acquire_owned() else {
        return; // too many refusals at once: just close
    };
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.readable()).await;
        let _ = stream.try_read(&mut buf);
        let _ = tokio::time::timeout(Duration::from_millis(50), async {
            let _ = stream.write_all(OVER_CAPACITY).await;
            let _ = stream.shutdown().await;
        })
        .await;
        drop(slot);
    });
}

/// When a connection last moved a byte, and whether a request is in flight.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// When the request head being read began (ms since `start`), or
    /// [`NO_HEAD`]: the connection's start for its first request, then the
    /// first byte read while no request is in flight (HTTP/1 only).
    head_since_ms: AtomicU64,
    /// Its requests arrive over HTTP/2: the frames it sends between them
    /// (pings, window updates) are not a request head. Known from the
    /// first request's version, not from the first bytes: an HTTP/1
    /// client whose first read is the `P` of `POST` looks like the start
    /// of the HTTP/2 preface, and would escape the header timeout.
    http2: AtomicBool,
    /// Requests whose head arrived on it (for the log).
    requests: AtomicU32,
    /// A byte has been read from it (for the log).
    read_any: AtomicBool,
}

/// `head_since_ms` while no request head is being read.
const NO_HEAD: u64 = u64::MAX;

/// Marks a request in flight until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_since_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            requests: AtomicU32::new(0),
            read_any: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// `bytes` were read from the client. The first byte read while no
    /// request is in flight starts the next HTTP/1 head's clock.
    fn read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        self.read_any.store(true, Ordering::Relaxed);
        // Reads and `busy` run on the connection's task: no race between
        // the load and the store. A head already being read keeps its start.
        if self.head_since_ms.load(Ordering::Relaxed) == NO_HEAD
            && self.in_flight.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
        {
            self.head_since_ms.store(now, Ordering::Relaxed);
        }
    }

    /// A request head arrived complete (over HTTP/2 when `http2`): its
    /// request is in flight.
    fn busy(self: &Arc<Self>, http2: bool) -> Busy {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.head_since_ms.store(NO_HEAD, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once no request has been in flight and no byte has moved
    /// for `limit`.
    async fn idle_for(&self, limit: Duration) {
        let limit_ms = limit.as_millis() as u64;
        loop {
            let quiet = self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed));
            if quiet >= limit_ms && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wait = if quiet >= limit_ms {
                limit_ms
            } else {
                limit_ms - quiet
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

/// Resolves once a request head has been on its way for the header-read
/// timeout: from the connection's start for the first (a connection that
/// sends nothing, or a few bytes of the HTTP/2 preface, and stalls), from
/// its first byte for each later HTTP/1 head. Polled right after the
/// connection in the same task, so it sees a head that a read has just
/// started and sets its timer then; while no head is on its way it has no
/// timer running, so an idle keep-alive connection costs no wake-ups.
struct HeadOverdue<'a> {
    activity: &'a Activity,
    limit_ms: u64,
    /// The deadline (ms since the connection's start) the timer is set to.
    timer: Option<(u64, Pin<Box<tokio::time::Sleep>>)>,
}

impl<'a> HeadOverdue<'a> {
    fn new(activity: &'a Activity, limit: Duration) -> Self {
        Self {
            activity,
            limit_ms: limit.as_millis() as u64,
            timer: None,
        }
    }
}

impl Future for HeadOverdue<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let since = self.activity.head_since_ms.load(Ordering::Relaxed);
        if since == NO_HEAD {
            // A later poll, after the read that starts a head, sets it.
            return Poll::Pending;
        }
        let deadline = since.saturating_add(self.limit_ms);
        if self.activity.now_ms() >= deadline {
            return Poll::Ready(());
        }
        let at =
            tokio::time::Instant::from_std(self.activity.start + Duration::from_millis(deadline));
        let timer = match &mut self.timer {
            Some((set, timer)) => {
                if *set != deadline {
                    timer.as_mut().reset(at);
                    *set = deadline;
                }
                timer
            }
            none => {
                &mut none
                    .insert((deadline, Box::pin(tokio::time::sleep_until(at))))
                    .1
            }
        };
        timer.as_mut().poll(cx)
    }
}

/// A TCP stream that records when it last read or wrote a byte.
struct Timed {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        res
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn over_capacity_answer_has_the_right_length() {
        let text = std::str::from_utf8(super::OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "over_capacity");
    }
}
