//! The PostgreSQL adapter: an `sqlx` pool with per-statement and per-call
//! timeouts and a circuit breaker, plus the embedded migrations.
//!
//! PostgreSQL keeps only what must survive anything: catalog definitions,
//! money, confirmed payments, idempotency records, the outbox. It is never
//! touched on the queue or hold paths.

use std::{
    str::FromStr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{
    Connection as _, PgPool, Postgres,
    migrate::Migrator,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    Dependency, StoreError,
    breaker::Breaker,
    guard::{Verdict, guard},
};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Upper bound of one call (a query or a whole short transaction).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(3_000);

/// A pooled connection idle at least this long is pinged before use.
const IDLE_PING_AFTER: Duration = Duration::from_secs(1);

/// For this long after a connection was found lost, every connection is
/// pinged before use and none is kept ([`Lost`]).
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// How the pool is sized (and, in tests, slowed).
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    /// Connections at most.
    pub max_connections: u32,
    /// Test-only (the `slow_pg_ms:<n>` failpoint): a payment's transaction
    /// keeps its connection this much longer, so the pool completes at
    /// most `max_connections / delay` payments per second, like a
    /// PostgreSQL that got slow.
    pub slow_payment: Option<Duration>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 24,
            slow_payment: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Pg {
    pool: PgPool,
    breaker: Arc<Breaker>,
    slow_payment: Option<Duration>,
    kept: Arc<Kept>,
    lost: Arc<Lost>,
    alive: Arc<AtomicI32>,
}

/// The advisory lock namespace of the instances' marks of life
/// ([`Pg::stay_alive`]): `pg_try_advisory_lock(ALIVE_LOCKS, key)`, shown in
/// `pg_locks` as `classid = ALIVE_LOCKS, objid = key, objsubid = 2`.
pub const ALIVE_LOCKS: i32 = 0x0062_6f78; // "box"

/// How often the mark of life's connection is checked.
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// When a connection was last found lost (its backend ended, its socket
/// failed, or its ping before use failed). The others were opened to the
/// same server and may be gone too: a restart or a failover ends them all.
/// Connections are not pinged before use while they are in steady use, so
/// for [`SUSPECT_FOR`] after such a loss each one is, and no payment keeps
/// one; a request after a restart then meets at most the one dead
/// connection that told, and none when a ping told first.
#[derive(Debug)]
struct Lost {
    epoch: Instant,
    /// Milliseconds since `epoch` plus one; 0: never.
    at: AtomicU64,
}

impl Lost {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn mark(&self) {
        self.at.store(self.now(), Ordering::Relaxed);
    }

    fn recent(&self) -> bool {
        let at = self.at.load(Ordering::Relaxed);
        at != 0 && self.now() - at < SUSPECT_FOR.as_millis() as u64
    }
}

/// Connections the payment statement keeps out of the pool between
/// payments ([`Pg::payment_conn`]). sqlx pings every connection it takes
/// back into its pool, a round trip per statement that pgbench does not
/// make; a connection kept here skips it, and its next payment skips the
/// pool's bookkeeping too. At most a quarter of the pool (one at least)
/// is kept, and only while the pool could still serve a waiter (it has an
/// idle connection or room for a new one), so the other statements always
/// have the rest; one kept for a second or more goes back to the pool
/// when the next payment finds it. Once the pool is closing none is
/// kept: the pool's close waits for every connection to come back.
#[derive(Debug)]
struct Kept {
    conns: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    most: usize,
    /// Set, under the lock, when [`Pg::close`] starts.
    closing: AtomicBool,
}

fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        dep: Dependency::Postgres,
        reason: reason.into(),
    }
}

fn is_outage(e: &sqlx::Error) -> bool {
    connection_lost(e)
        || match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            // 53300 too many connections, 57014 statement timeout.
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| matches!(c.as_ref(), "53300" | "57014")),
            _ => false,
        }
}

/// The connection itself is gone: its socket failed, or the server ended
/// its backend (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
/// connect now, 08xxx connection exceptions).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// The server gave up on a row it had to wait for: 55P03 lock not
/// available (`lock_timeout`), 40P01 deadlock, 40001 serialization
/// failure. Nothing was written; the same request may succeed again.
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| matches!(c.as_ref(), "55P03" | "40P01" | "40001")))
}

impl Pg {
    /// Connects with the default pool and applies pending migrations.
    ///
    /// # Errors
    /// Bad URL, unreachable server, or a migration that fails.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// [`Pg::connect`] with a pool of `options`.
    ///
    /// # Errors
    /// As [`Pg::connect`].
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| unavailable(format!("bad DATABASE_URL: {e}")))?
            .options([("statement_timeout", "2500"), ("lock_timeout", "2000")]);
        let lost = Arc::new(Lost {
            epoch: Instant::now(),
            at: AtomicU64::new(0),
        });
        let suspect = Arc::clone(&lost);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_millis(2_000))
            // sqlx pings every connection it hands out (a round trip
            // before each statement). A connection in steady use was
            // alive a moment ago; one that sat idle (PostgreSQL may have
            // restarted meanwhile), or any while another was just found
            // lost ([`Lost`]), is still checked first. A check that
            // fails finds a connection lost as a failed call does: the
            // others, kept ones included, are suspect from then on.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let check = (meta.idle_for >= IDLE_PING_AFTER || suspect.recent())
                    .then(|| Arc::clone(&suspect));
                Box::pin(async move {
                    if let Some(suspect) = check
                        && let Err(e) = conn.ping().await
                    {
                        if connection_lost(&e) {
                            suspect.mark();
                        }
                        return Err(e);
                    }
                    Ok(true)
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::internal(
                Dependency::Postgres,
                anyhow::anyhow!("migrations failed: {e}"),
            )
        })?;
        Ok(Self {
            pool,
            breaker: Arc::new(Breaker::new(Dependency::Postgres)),
            slow_payment: options.slow_payment,
            kept: Arc::new(Kept {
                conns: Mutex::new(Vec::new()),
                most: (options.max_connections as usize / 4).max(1),
                closing: AtomicBool::new(false),
            }),
            lost,
            alive: Arc::new(AtomicI32::new(0)),
        })
    }

    /// The pool, for use inside [`Pg::guard`].
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction on a pooled connection; every transaction
    /// starts here, never with `PgPool::begin`.
    ///
    /// sqlx (0.9) counts a transaction only once its `BEGIN` is answered.
    /// A `BEGIN` cancelled before that (our timeouts cancel) still runs on
    /// the server, and its connection went back to the pool inside a
    /// transaction nobody would end: every later statement on it seemed to
    /// succeed and never committed (a payment answered 201 that never
    /// happened, seen once in the PostgreSQL stall test). So the `BEGIN`
    /// runs on a task of its own: cancelled, it still ends, and the
    /// transaction it opened is dropped, so rolled back, before its
    /// connection returns to the pool.
    ///
    /// # Errors
    /// As `PgPool::begin`.
    #[allow(clippy::disallowed_methods)] // the one place it may be called
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        let pool = self.pool.clone();
        match tokio::spawn(async move { pool.begin().await }).await {
            Ok(begun) => begun,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Aborted: only when the runtime stops under it.
                Err(_) => Err(sqlx::Error::PoolClosed),
            },
        }
    }

    /// A connection for a payment's transaction: the one a payment gave
    /// back last, if it was given back within the second (see [`Kept`]),
    /// else one from the pool. Just after a connection was found lost
    /// ([`Lost`]) every kept one goes back to the pool, which checks it.
    ///
    /// # Errors
    /// As `PgPool::acquire`.
    pub async fn payment_conn(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let kept = if self.lost.recent() {
            // Dropped outside the lock (each drop spawns sqlx's return).
            drop(std::mem::take(&mut *lock(&self.kept.conns)));
            None
        } else {
            lock(&self.kept.conns).pop()
        };
        if let Some((conn, since)) = kept {
            if since.elapsed() < IDLE_PING_AFTER {
                return Ok(conn);
            }
            // Unused for a while: back to the pool (which checks it).
            drop(conn);
        }
        self.pool.acquire().await
    }

    /// Gives back the connection of a payment's transaction with what its
    /// statement returned; with the test-only `slow_pg_ms` failpoint it
    /// stays taken for that delay first (see [`PgOptions::slow_payment`]).
    /// A statement that got PostgreSQL's answer (a row, a refusal, a
    /// constraint) left the connection ready for the next one, and it may
    /// be kept. Otherwise (the connection failed, or the server ended it)
    /// it goes back to the pool, which checks it; a call cut short never
    /// gets here, and its connection, dropped, goes the same way.
    pub async fn give_back_payment_conn<T>(
        &self,
        conn: PoolConnection<Postgres>,
        outcome: &Result<T, sqlx::Error>,
    ) {
        if let Some(delay) = self.slow_payment {
            tokio::time::sleep(delay).await;
        }
        let answered = match outcome {
            Ok(_) => true,
            Err(e) => matches!(e, sqlx::Error::Database(_)) && !connection_lost(e),
        };
        if !answered || self.lost.recent() {
            return drop(conn);
        }
        // Keep it only while a waiter of the pool could still be served
        // without it.
        let pool = &self.pool;
        if pool.num_idle() > 0 || pool.size() < pool.options().get_max_connections() {
            let mut conns = lock(&self.kept.conns);
            if conns.len() < self.kept.most && !self.kept.closing.load(Ordering::Relaxed) {
                conns.push((conn, Instant::now()));
                return;
            }
        }
        drop(conn);
    }

    /// Runs one query or transaction with the timeout and breaker.
    ///
    /// # Errors
    /// `Unavailable` on an outage; `Internal` wrapping the `sqlx::Error`
    /// otherwise (see [`constraint_of`]).
    pub async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        guard(
            &self.breaker,
            CALL_TIMEOUT,
            call,
            |e| {
                if is_outage(e) {
                    Verdict::Outage
                } else if is_busy(e) {
                    Verdict::Busy
                } else {
                    Verdict::Answered
                }
            },
            |e| {
                if e.is_some_and(connection_lost) {
                    self.lost.mark();
                }
            },
        )
        .await
    }

    /// True when every migration compiled into this binary is applied.
    ///
    /// # Errors
    /// On an outage.
    pub async fn migrations_applied(&self) -> Result<bool, StoreError> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> = self
            .guard(
                sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
                    .fetch_one(&self.pool),
            )
            .await?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    /// The key of the advisory lock this instance holds while it lives
    /// ([`Pg::stay_alive`]), if it holds it now. Work it claims (an
    /// `Idempotency-Key`) names it, so another instance can tell a claim
    /// of a dead process from one still being worked on.
    pub fn alive_key(&self) -> Option<i32> {
        Some(self.alive.load(Ordering::Relaxed)).filter(|&k| k != 0)
    }

    /// Holds this instance's mark of life until `stop`: a session advisory
    /// lock on a connection of its own, outside the pool, under a random
    /// key ([`Pg::alive_key`]). PostgreSQL releases it when that session
    /// ends, so when the process dies (a crash, SIGKILL, a lost host) the
    /// lock is gone as soon as the server sees the connection close. The
    /// connection is checked every second; a failed check (a restart, a
    /// partition) drops the key until a new lock is taken. A live instance
    /// without its lock only makes its claims look abandoned, which
    /// [`crate::idempotency`] handles safely anyway.
    pub async fn stay_alive(self, stop: tokio_util::sync::CancellationToken) {
        use sqlx::Connection;
        loop {
            if let Some(mut conn) = self.take_alive_lock().await {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => {
                            self.alive.store(0, Ordering::Relaxed);
                            let _ = tokio::time::timeout(CALL_TIMEOUT, conn.close()).await;
                            return;
                        }
                        () = tokio::time::sleep(ALIVE_CHECK) => {}
                    }
                    let ping = tokio::time::timeout(CALL_TIMEOUT, conn.ping()).await;
                    if !matches!(ping, Ok(Ok(()))) {
                        break;
                    }
                }
                self.alive.store(0, Ordering::Relaxed);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(ALIVE_CHECK) => {}
            }
        }
    }

    /// A connection holding a fresh mark-of-life lock (its key stored), or
    /// None when PostgreSQL cannot be reached.
    async fn take_alive_lock(&self) -> Option<sqlx::PgConnection> {
        use sqlx::ConnectOptions;
        let opts = self.pool.connect_options();
        let mut conn = tokio::time::timeout(CALL_TIMEOUT, opts.connect())
            .await
            .ok()?
            .ok()?;
        // A key another live instance holds is refused: draw again.
        for _ in 0..8 {
            let key = (uuid::Uuid::new_v4().as_u128() as i32 & i32::MAX).max(1);
            let took: bool = tokio::time::timeout(
                CALL_TIMEOUT,
                sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
                    .bind(ALIVE_LOCKS)
                    .bind(key)
                    .fetch_one(&mut conn),
            )
            .await
            .ok()?
            .ok()?;
            if took {
                self.alive.store(key, Ordering::Relaxed);
                return Some(conn);
            }
        }
        None
    }

    /// Closes the pool once every connection is back: the kept ones at
    /// once, those of statements still running as they end (a payment
    /// that ends from now on gives its connection back instead of keeping
    /// it, or the close would wait for it for ever).
    pub async fn close(&self) {
        let kept = {
            let mut conns = lock(&self.kept.conns);
            self.kept.closing.store(true, Ordering::Relaxed);
            std::mem::take(&mut *conns)
        };
        drop(kept);
        self.pool.close().await;
    }
}

/// The kept connections' lock; a panic while it was held left only a
/// plain list behind.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The name of the constraint a failed statement violated, if any.
pub fn constraint_of(err: &StoreError) -> Option<String> {
    match err {
        StoreError::Internal { source, .. } => source
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.constraint().map(str::to_owned)),
        StoreError::Unavailable { .. } => None,
    }
}
