//! The PostgreSQL adapter: an `sqlx` pool with per-statement and per-call
//! timeouts and a circuit breaker, plus the embedded migrations.
//!
//! PostgreSQL keeps only what must survive anything: catalog definitions,
//! money, confirmed payments, idempotency records, the outbox. It is never
//! touched on the queue or hold paths.

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{
    Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::{Mutex, MutexGuard};

use super::{Dependency, StoreError, breaker::Breaker};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Upper bound of one call (a query or a whole short transaction).
const CALL_TIMEOUT: Duration = Duration::from_millis(3_000);

/// Dedicated connections for the one-statement money paths (charge,
/// payment).
const LANES: usize = 16;

#[derive(Clone, Debug)]
pub struct Pg {
    pool: PgPool,
    lanes: Arc<Lanes>,
    breaker: Arc<Breaker>,
}

/// A fixed set of connections, each behind a mutex, for statements that
/// are a whole transaction. A pooled connection costs more than the
/// statement: sqlx returns it through a spawned task that first pings the
/// server (a second round trip), so under load a connection sits idle for
/// two trips through a long run queue before the next request may use it
/// (measured in the flash sale: PostgreSQL mostly idle, charges waiting
/// half a second for a connection). A lane is released when its guard
/// drops, at once; a lane whose statement did not finish (timeout,
/// cancelled request) or whose connection failed is closed and reconnects
/// on next use, so no half-read reply is ever seen by the next statement.
#[derive(Debug)]
struct Lanes {
    opts: PgConnectOptions,
    slots: Box<[Mutex<Option<PgConnection>>]>,
    next: AtomicUsize,
}

/// One lane, held for one statement; see [`Pg::on_lane`].
pub struct Lane<'a> {
    slot: MutexGuard<'a, Option<PgConnection>>,
    finished: bool,
}

impl Lane<'_> {
    /// The connection.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.slot
            .as_mut()
            .expect("a lane holds a connection once acquired")
    }
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped mid-statement: the reply may still be on the wire.
            self.slot.take();
        }
    }
}

fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        dep: Dependency::Postgres,
        reason: reason.into(),
    }
}

fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // 57P01 admin shutdown, 57P03 cannot connect now, 53300 too many
        // connections, 08xxx connection exceptions, 57014 statement timeout.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "57014")
        }),
        _ => false,
    }
}

impl Pg {
    /// Connects and applies pending migrations.
    ///
    /// # Errors
    /// Bad URL, unreachable server, or a migration that fails.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| unavailable(format!("bad DATABASE_URL: {e}")))?
            .options([("statement_timeout", "2500"), ("lock_timeout", "2000")]);
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .min_connections(1)
            .acquire_timeout(Duration::from_millis(2_000))
            .connect_with(opts)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::internal(
                Dependency::Postgres,
                anyhow::anyhow!("migrations failed: {e}"),
            )
        })?;
        let lanes = Lanes {
            opts: pool.connect_options().as_ref().clone(),
            slots: (0..LANES).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        Ok(Self {
            pool,
            lanes: Arc::new(lanes),
            breaker: Arc::new(Breaker::new(Dependency::Postgres)),
        })
    }

    /// Runs one statement that is a whole transaction on a dedicated
    /// connection ([`Lanes`]), with the timeout and breaker of
    /// [`Pg::guard`]; `run` gets the lane and runs the statement on
    /// [`Lane::conn`].
    ///
    /// # Errors
    /// As [`Pg::guard`].
    pub async fn on_lane<T>(
        &self,
        run: impl AsyncFnOnce(&mut Lane<'_>) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        self.guard(async {
            let mut lane = self.lanes.acquire().await;
            if lane.slot.is_none() {
                *lane.slot = Some(PgConnection::connect_with(&self.lanes.opts).await?);
            }
            let r = run(&mut lane).await;
            lane.finished = !matches!(&r, Err(e) if is_outage(e));
            r
        })
        .await
    }

    /// The pool, for use inside [`Pg::guard`].
    pub fn pool(&self) -> &PgPool {
        &self.pool
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
        if !self.breaker.allow() {
            metrics::counter!("boxoffice_dependency_errors_total", "dependency" => "postgres", "kind" => "circuit_open").increment(1);
            return Err(unavailable("circuit open"));
        }
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(e)) if is_outage(&e) => {
                self.breaker.failure();
                metrics::counter!("boxoffice_dependency_errors_total", "dependency" => "postgres", "kind" => "error").increment(1);
                Err(unavailable(e.to_string()))
            }
            Ok(Err(e)) => {
                self.breaker.success();
                Err(StoreError::internal(Dependency::Postgres, e))
            }
            Err(_) => {
                self.breaker.failure();
                metrics::counter!("boxoffice_dependency_errors_total", "dependency" => "postgres", "kind" => "timeout").increment(1);
                Err(unavailable("timed out"))
            }
        }
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

    pub async fn close(&self) {
        for slot in &self.lanes.slots {
            if let Some(conn) = slot.lock().await.take() {
                let _ = conn.close().await;
            }
        }
        self.pool.close().await;
    }
}

impl Lanes {
    /// A free lane if there is one, else the next in turn.
    async fn acquire(&self) -> Lane<'_> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.len();
        for i in 0..n {
            if let Ok(slot) = self.slots[(start + i) % n].try_lock() {
                return Lane {
                    slot,
                    finished: false,
                };
            }
        }
        Lane {
            slot: self.slots[start % n].lock().await,
            finished: false,
        }
    }
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
