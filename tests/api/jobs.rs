//! Leased jobs: Redlock leases with fencing tokens, run by several real
//! `boxoffice` processes; the sales rollup; availability alerts; free
//! schedules; the event list while Redis is down.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use boxoffice::jobs::lease::Locker;
use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

/// Lease TTL of the tests (the real default is 10 s).
const TTL_MS: u64 = 1_000;

/// Settings with fast jobs: every job every 50 ms, leases of [`TTL_MS`].
fn fast_jobs(settings: Settings) -> Settings {
    settings
        .set("BOXOFFICE_LEASE_TTL_MS", &TTL_MS.to_string())
        .set("BOXOFFICE_ROLLUP_MS", "50")
        .set("BOXOFFICE_AVAILABILITY_MS", "50")
        .set("BOXOFFICE_PURGE_MS", "200")
}

async fn pool(settings: &Settings) -> PgPool {
    PgPool::connect(&settings.env["DATABASE_URL"])
        .await
        .expect("test database")
}

/// A `boxoffice` process of its own (the binary under test), so it can be
/// killed, stopped and continued like a real instance.
struct Instance {
    child: tokio::process::Child,
    pid: u32,
    base: String,
}

impl Instance {
    async fn start(settings: &Settings) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("bx-jobs-{port}.log")))
            .expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
            .env_clear()
            .envs(&settings.env)
            .env("BOXOFFICE_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "boxoffice=debug")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the boxoffice binary starts");
        let pid = child.id().expect("running");
        let me = Self {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let up = eventually(Duration::from_secs(15), || async {
            client
                .get(format!("{}/healthz", me.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "instance on port {port} did not come up");
        me
    }

    fn holds(&self, holder: &str) -> bool {
        holder.starts_with(&format!("pid{}@", self.pid))
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} {}", self.pid);
    }

    async fn metric(&self, name_and_labels: &str) -> f64 {
        let Ok(r) = reqwest::get(format!("{}/metrics", self.base)).await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(name_and_labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// A fresh database and key prefix for processes started by [`Instance`].
async fn shared_settings() -> Settings {
    let mut s = fast_jobs(Settings::new());
    s.env.insert("DATABASE_URL".into(), create_database().await);
    s.env
        .insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    s
}

/// (fence, holder) of a job, if it was ever leased.
async fn fence_of(db: &PgPool, job: &str) -> Option<(i64, String)> {
    sqlx::query_as("select fence, holder from job_fences where name = $1")
        .bind(job)
        .fetch_optional(db)
        .await
        .unwrap()
}

/// Asserts that no two rounds of `job` run by different holders overlap
/// in time; returns the number of rounds.
async fn assert_rounds_never_overlap(db: &PgPool, job: &str) -> usize {
    type Run = (
        i64,
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    );
    let runs: Vec<Run> = sqlx::query_as(
        "select fence, holder, started_at, finished_at from job_runs where name = $1 order by started_at",
    )
    .bind(job)
    .fetch_all(db)
    .await
    .unwrap();
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            b.0 >= a.0,
            "{job}: a round of token {} after one of token {}",
            b.0,
            a.0
        );
        if a.1 != b.1 {
            assert!(a.3 <= b.2, "{job}: rounds of {} and {} overlap", a.1, b.1);
        }
    }
    runs.len()
}

/// Inserts `n` payments straight into PostgreSQL (the rollup's input),
/// spread over two schedules and three hours, `tasks` writers at once.
async fn insert_payments(db: &PgPool, event: &str, n: usize, tasks: usize, tag: &str) {
    let per = n / tasks;
    let writers = (0..tasks).map(|t| {
        let db = db.clone();
        let (event, tag) = (event.to_owned(), tag.to_owned());
        tokio::spawn(async move {
            for i in 0..per {
                let k = t * per + i;
                sqlx::query(
                    r"with paid as (
                        insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats, paid_at)
                        values (gen_random_uuid(), $1, $2, $3, $4, $5, $6, now() - make_interval(hours => $7))
                        returning event_id, payment_id
                      )
                      insert into payments_not_rolled_up (event_id, payment_id) select event_id, payment_id from paid",
                )
                .bind(format!("u{k}"))
                .bind(&event)
                .bind(if k.is_multiple_of(2) { "d1" } else { "d2" })
                .bind(format!("{event}.{tag}.{k}"))
                .bind(Decimal::from(1000 * (1 + k % 3) as i64))
                .bind(vec![1_i32; 1 + k % 3])
                .bind((k % 3) as i32)
                .execute(&db)
                .await
                .unwrap();
            }
        })
    });
    for w in futures::future::join_all(writers).await {
        w.unwrap();
    }
}

async fn two_schedule_event(app_base: &str, event: &str) {
    let client = reqwest::Client::new();
    let schedule = |id: &str| {
        json!({"schedule_id": id, "starts_at": "2026-12-24T20:00:00Z", "seats": 100,
        "row_size": 10, "price": "1000", "hold_seconds": 60, "max_per_user": 4})
    };
    let r = client
        .post(format!("{app_base}/v1/admin/events"))
        .header("x-api-key", SERVICE_KEY)
        .json(
            &json!({"event_id": event, "name": event, "queue": queue_defaults(),
                      "schedules": [schedule("d1"), schedule("d2")]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

type Sums = Vec<(String, chrono::DateTime<chrono::Utc>, i64, i64, Decimal)>;

/// (schedule, hour, payments, seats, revenue) straight from `payments`.
async fn direct_group_by(db: &PgPool, event: &str) -> Sums {
    sqlx::query_as(
        r"select schedule_id, date_trunc('hour', paid_at), count(*), sum(cardinality(seats))::int8, sum(amount)
          from payments where event_id = $1 group by 1, 2 order by 1, 2",
    )
    .bind(event)
    .fetch_all(db)
    .await
    .unwrap()
}

/// The same figures from the rollup table alone.
async fn rolled_up(db: &PgPool, event: &str) -> Sums {
    sqlx::query_as(
        r"select schedule_id, hour, payments, seats, revenue
          from sales_hourly where event_id = $1 order by 1, 2",
    )
    .bind(event)
    .fetch_all(db)
    .await
    .unwrap()
}

async fn tail_len(db: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from payments_not_rolled_up")
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn three_instances_run_each_job_on_one_at_a_time_and_a_killed_leader_is_replaced() {
    let settings = shared_settings().await;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start(&settings).await);
    }
    let db = pool(&settings).await;
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;

    // Each job's lease went to one instance and stayed there: every
    // acquisition takes a token, so three instances that all believed they
    // led would have taken at least three (and fenced each other out, taking
    // more). One lost renewal on this shared, loaded machine is tolerated.
    // Every round ran on the holder of its token, never overlapping.
    for job in ["sales_rollup", "availability", "purge"] {
        let (fence, _) = fence_of(&db, job).await.expect("job leased");
        assert!(fence <= 2, "{job} changed hands {fence} times in 3 TTLs");
        let holders_per_token: Vec<i64> = sqlx::query_scalar(
            "select count(distinct holder) from job_runs where name = $1 group by fence",
        )
        .bind(job)
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(
            holders_per_token.iter().all(|&n| n == 1),
            "{job}: a token used by two instances"
        );
        assert!(
            assert_rounds_never_overlap(&db, job).await >= 5,
            "{job} barely ran"
        );
    }

    // Kill the rollup's leader. Its lease outlives it: the leader renewed
    // it to a full TTL at most a third of a TTL ago, and nobody may take it
    // before it runs out. What the followers control is how soon after
    // that they take it: they read the lease's remaining time and wake when
    // it runs out (plus a jitter of at most TTL / 100), instead of polling
    // every TTL / 5. So the takeover, from the kill, is the remaining
    // validity (at most one TTL) plus a reaction of one Redlock round and a
    // fencing token, held here to TTL / 10 (measured: 4 to 36 ms on two
    // busy cores with the other job tests alongside; polling every TTL / 5
    // took up to 111 ms). Both ends are read from the servers' clocks (this
    // host's, for Redis and PostgreSQL alike): the lease's end from Redis
    // (`TIME` + `PTTL`), the takeover from `job_fences.acquired_at`, so how
    // soon this test looks does not count.
    let (_, leader) = fence_of(&db, "sales_rollup").await.unwrap();
    let i = instances.iter().position(|x| x.holds(&leader)).unwrap();
    let mut dead = instances.remove(i);
    let lease_key = format!(
        "{}boxoffice:lease:sales_rollup",
        settings.env["BOXOFFICE_REDIS_PREFIX"]
    );
    let mut lock_server = redis::Client::open(settings.env["REDIS_URL"].as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let (before, _) = fence_of(&db, "sales_rollup").await.unwrap();
    dead.child.kill().await.unwrap();
    let killed = chrono::Utc::now();
    // Read after the kill, so no renewal can move it.
    let ((secs, micros), left): ((i64, i64), i64) = redis::pipe()
        .atomic()
        .cmd("TIME")
        .cmd("PTTL")
        .arg(&lease_key)
        .query(&mut lock_server)
        .unwrap();
    assert!(
        (1..=TTL_MS as i64).contains(&left),
        "the dead leader's lease has {left} ms left (TTL {TTL_MS} ms)"
    );
    let lease_end = chrono::DateTime::from_timestamp(secs, micros as u32 * 1_000).unwrap()
        + chrono::Duration::milliseconds(left);
    let took_over = eventually(Duration::from_secs(5), || async {
        fence_of(&db, "sales_rollup").await.unwrap().0 > before
    })
    .await;
    assert!(took_over, "nobody took over the rollup");
    let acquired_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select acquired_at from job_fences where name = 'sales_rollup'")
            .fetch_one(&db)
            .await
            .unwrap();
    let after_kill = (acquired_at - killed).to_std().unwrap();
    println!(
        "rollup takeover {after_kill:?} after the kill, {:.1} ms after the dead lease ran out ({left} ms left at the kill, TTL {TTL_MS} ms)",
        (acquired_at - lease_end).num_microseconds().unwrap() as f64 / 1_000.0
    );
    // Not before the dead leader's lease ran out (Redis expires keys to
    // the millisecond) ...
    assert!(
        acquired_at + chrono::Duration::milliseconds(1) >= lease_end,
        "taken over {:?} before the old lease ran out",
        lease_end - acquired_at
    );
    // ... and promptly after: within one TTL of the leader's last renewal
    // plus the reaction.
    let reaction = Duration::from_millis(TTL_MS / 10);
    let after_end = (acquired_at - lease_end).to_std().unwrap_or_default();
    assert!(
        after_end <= reaction,
        "taken over {after_end:?} after the old lease ran out (allowed {reaction:?})"
    );
    assert!(after_kill <= Duration::from_millis(TTL_MS) + reaction);
    let (_, new_leader) = fence_of(&db, "sales_rollup").await.unwrap();
    assert!(instances.iter().any(|x| x.holds(&new_leader)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_rounds_never_overlap(&db, "sales_rollup").await;
}

/// Every restore run of `event` recorded by its fenced epoch bump.
async fn restore_runs(db: &PgPool, event: &str) -> i64 {
    sqlx::query_scalar("select count(*) from job_runs where name = $1")
        .bind(format!("restore:{event}"))
        .fetch_one(db)
        .await
        .unwrap()
}

/// The event's Redis epoch in PostgreSQL (0: never restored).
async fn epoch_of(db: &PgPool, event: &str) -> i64 {
    sqlx::query_scalar("select coalesce(max(epoch), 0) from redis_epochs where event_id = $1")
        .bind(event)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lost_event_is_restored_by_exactly_one_of_three_instances() {
    // Every restore stalls 2.5 s before it marks the event ready: longer
    // than the lease TTL (so only renewal keeps the lease) and far longer
    // than the instances' reconcile interval, so all three see the event
    // missing, again and again, while it is being restored.
    let settings = shared_settings()
        .await
        .set("BOXOFFICE_FAILPOINT", "slow_restore_ms:2500")
        .set("BOXOFFICE_RECONCILE_MS", "100")
        // The other jobs at their usual pace: this test is about restores.
        .set("BOXOFFICE_ROLLUP_MS", "60000")
        .set("BOXOFFICE_AVAILABILITY_MS", "2000")
        .set("BOXOFFICE_PURGE_MS", "600000");
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start(&settings).await);
    }
    // An in-process app with its loops off: the test's hands and eyes only.
    let app = spawn_with(settings.clone().without_background()).await;
    let db = pool(&settings).await;
    app.simple_event("e1", queue_defaults(), 20, 300, 4).await;
    app.buy("e1", "ann", "5000", json!([1, 2])).await;
    app.buy("e1", "bob", "5000", json!([5])).await;
    let cat = app.admitted_token("e1", "cat").await;
    app.hold_seats(&cat, json!([7, 8])).await;
    let sold = crate::cluster::sold_in_pg(&app, "e1").await;
    assert_eq!(sold, [1, 2, 5]);
    assert_eq!(
        crate::cluster::sold_in_redis(&app, "e1").await.unwrap(),
        sold
    );
    assert_eq!(epoch_of(&db, "e1").await, 0);

    // The event's Redis state is lost for real: every key of it goes.
    let pattern = format!("{}{{ev:e1}}*", settings.env["BOXOFFICE_REDIS_PREFIX"]);
    let keys = redis_cli(&["--scan", "--pattern", &pattern]).await;
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(keys.len() > 3, "the event's keys: {keys:?}");
    let mut del = vec!["DEL"];
    del.extend(&keys);
    redis_cli(&del).await;
    let event = boxoffice::ids::EventId::parse("e1").unwrap();
    assert!(
        !boxoffice::catalog::is_ready(&app.state.redis, &event)
            .await
            .unwrap()
    );

    let restored = eventually(Duration::from_secs(15), || async {
        boxoffice::catalog::is_ready(&app.state.redis, &event)
            .await
            .unwrap()
    })
    .await;
    assert!(restored, "nobody restored the event");
    // Long enough for a second restore to start and bump the epoch (the
    // others check every 100 ms) had the first one not held them off.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Exactly one restore: one epoch taken, one fenced run recorded.
    assert_eq!(
        epoch_of(&db, "e1").await,
        1,
        "the epoch was bumped more than once"
    );
    assert_eq!(restore_runs(&db, "e1").await, 1, "restored more than once");
    let (_, restorer) = fence_of(&db, "restore:e1").await.expect("restore leased");
    assert!(
        instances.iter().any(|x| x.holds(&restorer)),
        "restored by one of the three: {restorer}"
    );
    // ... and it is right: the sold seats as before, cat's hold gone with
    // Redis (seats 7 and 8 free again), new holds in epoch 1's range.
    assert_eq!(
        crate::cluster::sold_in_redis(&app, "e1").await.unwrap(),
        sold
    );
    assert_eq!(app.admin_seat("e1", 7).await, "available");
    let dan = app.admitted_token("e1", "dan").await;
    app.charge("dan", "5000", None).await;
    let hold = app.hold_seats(&dan, json!([7])).await;
    let n: u64 = hold.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        (1_000_000_000..2_000_000_000).contains(&n),
        "the hold number is in epoch 1: {hold}"
    );
    let r = app.pay(&dan, &hold, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        crate::cluster::sold_in_redis(&app, "e1").await.unwrap(),
        [1, 2, 5, 7]
    );
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_is_fenced_out_and_nothing_counts_twice() {
    let settings = shared_settings()
        .await
        // Every leader stalls 1.5 s inside each rollup transaction.
        .set("BOXOFFICE_FAILPOINT", "slow_rollup");
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start(&settings).await);
    }
    let db = pool(&settings).await;
    two_schedule_event(&instances[0].base, "fence").await;

    // Payments keep arriving, so the leader is inside a rollup most of the time.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                insert_payments(&db, "fence", 20, 4, &format!("r{round}")).await;
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // SIGSTOP the leader while it is inside a rollup transaction.
    let mut caught = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some((token, leader)) = fence_of(&db, "sales_rollup").await else {
            continue;
        };
        let l = instances.iter().find(|x| x.holds(&leader)).unwrap();
        l.signal("-STOP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mid_rollup: i64 = sqlx::query_scalar(
            r"select count(*) from pg_stat_activity
              where datname = current_database() and state = 'idle in transaction'
                and query like '%delete from payments_not_rolled_up%'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if mid_rollup > 0 {
            caught = Some((token, l.pid));
            break;
        }
        l.signal("-CONT");
    }
    let (old_token, paused_pid) = caught.expect("never caught the leader inside a rollup");
    let paused = instances.iter().find(|x| x.pid == paused_pid).unwrap();

    // Past its lease another instance takes over and rolls up around the
    // rows the paused one still has locked.
    let took_over = eventually(Duration::from_secs(5), || async {
        fence_of(&db, "sales_rollup").await.unwrap().0 > old_token
    })
    .await;
    assert!(took_over, "nobody took over from the paused leader");
    let (_, new_leader) = fence_of(&db, "sales_rollup").await.unwrap();
    assert!(!paused.holds(&new_leader));

    // Wake it up: its rollup's commit is refused by the fence.
    paused.signal("-CONT");
    let refused = eventually(Duration::from_secs(5), || async {
        paused
            .metric(r#"boxoffice_job_fenced_total{job_name="sales_rollup"}"#)
            .await
            >= 1.0
    })
    .await;
    assert!(refused, "the paused leader's late write was not refused");

    // Nothing counted twice (nor lost): once everything is rolled up, the
    // rollup equals a direct group by.
    stop.store(true, Ordering::SeqCst);
    feeder.await.unwrap();
    let drained = eventually(Duration::from_secs(15), || async {
        tail_len(&db).await == 0
    })
    .await;
    assert!(drained, "the rollup did not catch up");
    assert_eq!(
        rolled_up(&db, "fence").await,
        direct_group_by(&db, "fence").await
    );
    // The refused round left no trace in job_runs either.
    let late: i64 = sqlx::query_scalar(
        r"select count(*) from job_runs r where name = 'sales_rollup' and fence = $1
          and finished_at > (select min(started_at) from job_runs where name = 'sales_rollup' and fence > $1)",
    )
    .bind(old_token)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        late, 0,
        "a round of the old token committed after the new leader's"
    );
    assert_rounds_never_overlap(&db, "sales_rollup").await;
}

#[tokio::test]
async fn leases_need_a_majority_of_the_lock_servers() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        match PrivateRedis::start().await {
            Some(s) => servers.push(s),
            None => panic!("redis-server is needed for this test"),
        }
    }
    let urls: Vec<String> = servers.iter().map(PrivateRedis::url).collect();
    let ttl = Duration::from_millis(TTL_MS);
    let a = Locker::new(&urls, ttl, "t:").unwrap();
    let b = Locker::new(&urls, ttl, "t:").unwrap();

    // Exclusive: while A holds the lease, B cannot take it.
    let mut lease = a.try_acquire("job").await.expect("A leases");
    assert!(b.try_acquire("job").await.is_none(), "two holders at once");
    // B can tell how long A's lease has left (what a follower sleeps).
    let left = b.expires_in("job").await.expect("3 servers answer");
    assert!(left > ttl / 2 && left <= ttl, "{left:?} left");

    // One server down: A still renews, B still cannot take it.
    drop(servers.remove(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.renew(&mut lease).await, "renewal with 2 of 3 servers");
    assert!(
        b.try_acquire("job").await.is_none(),
        "two holders with one server down"
    );
    let left = b.expires_in("job").await.expect("2 of 3 servers answer");
    assert!(left > ttl / 2 && left <= ttl, "{left:?} left");
    a.release(&lease).await;
    assert_eq!(b.expires_in("job").await, Some(Duration::ZERO));
    let lease_b = b
        .try_acquire("job")
        .await
        .expect("B leases with 2 of 3 servers");
    b.release(&lease_b).await;

    // Jobs of a running app work with one server down ...
    let settings = fast_jobs(Settings::new()).set(
        "BOXOFFICE_LOCK_URLS",
        &urls.join(","), // the first is already down
    );
    let app = spawn_with(settings).await;
    let db = pool(&app.settings).await;
    let runs = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from job_runs where name = 'sales_rollup'")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || async { runs().await >= 5 }).await);

    // ... and none runs at all without a majority.
    drop(servers.remove(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fence = fence_of(&db, "sales_rollup").await.unwrap().0;
    assert!(
        a.try_acquire("other").await.is_none(),
        "a lease with 1 of 3 servers"
    );
    assert_eq!(a.expires_in("other").await, None, "1 of 3 cannot tell");
    // The lease cannot be renewed any more: the leader stops within a TTL.
    tokio::time::sleep(Duration::from_millis(TTL_MS + 300)).await;
    let before = runs().await;
    tokio::time::sleep(Duration::from_millis(2 * TTL_MS)).await;
    assert_eq!(runs().await, before, "a job ran without a majority");
    assert_eq!(
        fence_of(&db, "sales_rollup").await.unwrap().0,
        fence,
        "a lease was taken without a majority"
    );
}

#[tokio::test]
async fn the_rollup_equals_a_direct_group_by_after_a_burst_and_a_leader_change() {
    let first =
        spawn_with(fast_jobs(Settings::new()).set("BOXOFFICE_INSTANCE_NAME", "first")).await;
    let second = spawn_with(
        first
            .settings
            .clone()
            .set("BOXOFFICE_INSTANCE_NAME", "second"),
    )
    .await;
    let db = pool(&first.settings).await;
    two_schedule_event(&first.base, "burst").await;

    // 5,000 payments from 50 writers while the rollup runs; halfway, the
    // current leader shuts down and the other instance takes over.
    let burst = {
        let db = db.clone();
        tokio::spawn(async move { insert_payments(&db, "burst", 5_000, 50, "b").await })
    };
    let halfway = eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>("select count(*) from payments")
            .fetch_one(&db)
            .await
            .unwrap()
            >= 2_500
    })
    .await;
    assert!(halfway);
    let (_, leader) = fence_of(&db, "sales_rollup").await.expect("leased");
    let (stay, go) = if leader == "first" {
        (second, first)
    } else {
        (first, second)
    };
    go.stop().await;
    burst.await.unwrap();

    // The report (rollup + tail) is exact at any moment ...
    let report = stay
        .admin(Method::GET, "/v1/admin/events/burst/sales", None)
        .await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text);
    let direct = direct_group_by(&db, "burst").await;
    let total: i64 = direct.iter().map(|r| r.2).sum();
    assert_eq!(total, 5_000);
    let reported: i64 = report.body["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["payments"].as_i64().unwrap())
        .sum();
    assert_eq!(reported, 5_000);
    let hourly = report.body["hourly"].as_array().unwrap();
    assert_eq!(hourly.len(), 3);
    let revenue: Decimal = direct.iter().map(|r| r.4).sum();
    let reported_revenue: Decimal = report.body["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["revenue"].as_str().unwrap().parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(reported_revenue, revenue);

    // ... and once the tail is rolled up, the rollup alone equals the group
    // by: nothing counted twice across the leader change, nothing lost.
    assert!(
        eventually(Duration::from_secs(10), || async {
            tail_len(&db).await == 0
        })
        .await
    );
    assert_eq!(rolled_up(&db, "burst").await, direct);
    let (fence, _) = fence_of(&db, "sales_rollup").await.unwrap();
    assert!(fence >= 2, "the leader did not change");
    assert_rounds_never_overlap(&db, "sales_rollup").await;
}

/// Real payments (the service's own statement, which writes each payment's
/// tail row) made while the rollup runs every 50 ms: at every moment each
/// payment is counted once by the sales figures, in the rollup or in its
/// tail (the audit's `sales_counted`, run again and again during the
/// burst), and once the tail is drained the rollup alone equals a direct
/// count of the payments.
#[tokio::test]
async fn payments_made_while_the_rollup_runs_are_each_counted_once() {
    let app = spawn_with(fast_jobs(Settings::new())).await;
    app.simple_event("rush", queue_defaults(), 300, 300, 4)
        .await;
    const BUYERS: u32 = 240;
    let done = AtomicBool::new(false);
    let buys = async {
        let buys = (0..BUYERS).map(|i| {
            let app = &app;
            async move {
                let user = format!("rush{i}");
                let token = admitted_retrying(app, "rush", &user).await;
                app.charge(&user, "1000", None).await;
                let h =
                    retry_503(|| app.hold(&token, json!({"schedule_id": "d1", "seats": [i + 1]})))
                        .await;
                assert_eq!(h.status, StatusCode::CREATED, "{}", h.text);
                let hold = h.body["hold_id"].as_str().unwrap();
                let p = retry_503(|| app.pay(&token, hold, None)).await;
                assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
            }
        });
        futures::future::join_all(buys).await;
        done.store(true, Ordering::SeqCst);
    };
    let audits = async {
        let mut rounds = 0;
        while !done.load(Ordering::SeqCst) || rounds < 3 {
            let a = boxoffice::audit::run(&app.state.pg, &app.state.redis)
                .await
                .expect("the audit runs");
            // Mid-payment the other checks may see a sale Redis has not
            // confirmed yet; the sales figures must be exact throughout.
            let miscounted: Vec<_> = a
                .violations
                .iter()
                .filter(|v| v.starts_with("sales_counted"))
                .collect();
            assert!(miscounted.is_empty(), "{miscounted:?}");
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rounds
    };
    let ((), rounds) = tokio::join!(buys, audits);
    assert!(rounds >= 3, "the audit ran during the burst");

    let db = pool(&app.settings).await;
    let direct = direct_group_by(&db, "rush").await;
    assert_eq!(direct.iter().map(|r| r.2).sum::<i64>(), i64::from(BUYERS));
    assert!(
        eventually(Duration::from_secs(10), || async {
            tail_len(&db).await == 0
        })
        .await,
        "the rollup drains the tail"
    );
    assert_eq!(rolled_up(&db, "rush").await, direct);
    app.assert_audit_clean().await;
}

/// Calls `f` again while it answers 503 (at most 50 times, 100 ms apart).
async fn retry_503<F, Fut>(mut f: F) -> Resp
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    for _ in 0..50 {
        let r = f().await;
        if r.status != StatusCode::SERVICE_UNAVAILABLE {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still 503 after 50 tries");
}

/// Joins (retrying 503s) and polls until admitted; returns the token.
async fn admitted_retrying(app: &TestApp, event: &str, user: &str) -> String {
    let r = retry_503(|| app.join(event, user)).await;
    assert!(r.status.is_success(), "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_owned();
    let mut status = r.body["status"].clone();
    for _ in 0..200 {
        if status == "admitted" {
            return token;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = retry_503(|| app.status(&token)).await.body["status"].clone();
    }
    panic!("{user} was not admitted within 10 s");
}

#[tokio::test]
async fn five_hundred_applicants_for_a_free_thirty_seat_lecture() {
    let app = spawn_app().await;
    let r = app
        .create_event(
            "lecture",
            queue_defaults(),
            json!([{"schedule_id": "l1", "starts_at": "2026-12-01T10:00:00Z", "seats": 30, "row_size": 10,
                    "price": "0", "hold_seconds": 60, "max_per_user": 1}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Apply = hold one seat + pay; the first 100 applicants apply twice at
    // once. Like real clients they retry a 503 (on this shared machine 600
    // concurrent callers can trip the Redis time bounds).
    let apply = |user: String| {
        let app = &app;
        async move {
            let token = admitted_retrying(app, "lecture", &user).await;
            let h = retry_503(|| app.hold(&token, json!({"schedule_id": "l1", "count": 1}))).await;
            if h.status != StatusCode::CREATED {
                assert!(
                    [
                        "seats_unavailable",
                        "hold_limit_exceeded",
                        "queue_token_expired"
                    ]
                    .contains(&h.code()),
                    "{}",
                    h.text
                );
                return None;
            }
            assert_eq!(h.body["amount"], "0");
            let hold_id = h.body["hold_id"].as_str().unwrap();
            let p = retry_503(|| app.pay(&token, hold_id, None)).await;
            assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
            assert_eq!(p.body["amount"], "0");
            Some(user)
        }
    };
    let attempts = (0..500)
        .map(|i| format!("student{i}"))
        .chain((0..100).map(|i| format!("student{i}")))
        .map(apply);
    let registered: Vec<String> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect();

    assert_eq!(registered.len(), 30, "exactly 30 registrations");
    let mut distinct = registered.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 30, "somebody registered twice");
    let db = pool(&app.settings).await;
    let (payments, users, amount): (i64, i64, Decimal) = sqlx::query_as(
        "select count(*), count(distinct user_id), coalesce(sum(amount), 0) from payments where event_id = 'lecture'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((payments, users, amount), (30, 30, Decimal::ZERO));
    let wallet_rows: (i64, i64) =
        sqlx::query_as("select (select count(*) from wallets), (select count(*) from ledger)")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(wallet_rows, (0, 0), "a free registration touched a wallet");

    // "Have I applied?" is the user's payment list.
    let mine = app
        .admin(
            Method::GET,
            &format!("/v1/users/{}/payments", registered[0]),
            None,
        )
        .await;
    assert_eq!(mine.body["payments"].as_array().unwrap().len(), 1);
    let none = app
        .admin(Method::GET, "/v1/users/nobody/payments", None)
        .await;
    assert_eq!(none.body["payments"], json!([]));
}

/// Topics of the availability messages of an event, in order.
async fn alert_topics(db: &PgPool, event: &str) -> Vec<String> {
    sqlx::query_scalar(
        r"select topic from outbox where topic like 'schedule.%' and payload->>'event_id' = $1 order by id",
    )
    .bind(event)
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn each_availability_crossing_is_announced_once_and_reaches_the_stream() {
    let app = spawn_with(fast_jobs(Settings::new())).await;
    let db = pool(&app.settings).await;
    let r = app
        .create_event(
            "alerts",
            queue_defaults(),
            json!([{"schedule_id": "d1", "starts_at": "2026-12-01T10:00:00Z", "seats": 10, "row_size": 10,
                    "price": "0", "hold_seconds": 1, "max_per_user": 10, "low_seats_threshold": 3}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let low = "schedule.low_availability";
    let topics = || alert_topics(&db, "alerts");

    // 7 of 10 held: 3 free, the threshold. Announced once, however many rounds.
    let a = app.admitted_token("alerts", "a").await;
    let h = app.hold(&a, json!({"schedule_id": "d1", "count": 7})).await;
    assert_eq!(h.status, StatusCode::CREATED, "{}", h.text);
    assert!(eventually(Duration::from_secs(5), || async { topics().await == [low] }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(topics().await, [low]);

    // The hold expires: seats come back, which re-arms the alert ...
    let rearmed = eventually(Duration::from_secs(5), || async {
        sqlx::query_scalar::<_, String>(
            "select level from schedule_alerts where event_id = 'alerts'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
            == "ok"
    })
    .await;
    assert!(rearmed);
    assert_eq!(topics().await, [low]);

    // ... so crossing again is announced again; selling out once more.
    let b = app.admitted_token("alerts", "b").await;
    let h = app.hold(&b, json!({"schedule_id": "d1", "count": 7})).await;
    assert_eq!(h.status, StatusCode::CREATED, "{}", h.text);
    let p = app.pay(&b, h.body["hold_id"].as_str().unwrap(), None).await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
    assert!(
        eventually(Duration::from_secs(5), || async {
            topics().await == [low, low]
        })
        .await
    );
    let c = app.admitted_token("alerts", "c").await;
    let h = app.hold(&c, json!({"schedule_id": "d1", "count": 3})).await;
    assert_eq!(h.status, StatusCode::CREATED, "{}", h.text);
    let p = app.pay(&c, h.body["hold_id"].as_str().unwrap(), None).await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
    let sold_out = "schedule.sold_out";
    assert!(
        eventually(Duration::from_secs(5), || async {
            topics().await == [low, low, sold_out]
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(topics().await, [low, low, sold_out]);

    // The relay carries them to the stream; the gauge shows 0 free seats.
    let stream = app.state.redis.keys().outbox_stream();
    let relayed = eventually(Duration::from_secs(5), || async {
        let out = redis_cli(&["XRANGE", &stream, "-", "+"]).await;
        out.matches(low).count() == 2 && out.matches(sold_out).count() == 1
    })
    .await;
    assert!(relayed, "the messages did not reach {stream}");
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"boxoffice_seats_available{event="alerts",schedule="d1"} 0"#),
        "gauge missing"
    );
}

#[tokio::test]
async fn with_redis_down_the_event_list_comes_from_postgres_and_holds_are_refused() {
    let proxy = Proxy::start(resolve(&redis_url()).await).await;
    let app = spawn_with(
        Settings::new()
            .set("REDIS_URL", &via(&redis_url(), proxy.addr))
            .set("BOXOFFICE_CATALOG_CACHE_MS", "500"),
    )
    .await;
    app.simple_event("listed", queue_defaults(), 10, 60, 4)
        .await;
    let token = app.admitted_token("listed", "u1").await;
    let fresh = app.get("/v1/events").await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.body["events"][0]["event_id"], "listed");
    assert!(fresh.body.get("stale").is_none());

    proxy.cut();
    // Within the cache's life the list costs no Redis round trip at all.
    let cached = app.get("/v1/events").await;
    assert_eq!(cached.body, fresh.body);

    tokio::time::sleep(Duration::from_millis(600)).await;
    let stale = app.get("/v1/events").await;
    assert_eq!(stale.status, StatusCode::OK, "{}", stale.text);
    assert_eq!(stale.body["stale"], true);
    assert_eq!(stale.body["events"], fresh.body["events"]);

    let h = app
        .hold(&token, json!({"schedule_id": "d1", "count": 1}))
        .await;
    h.assert_problem(503, "dependency_unavailable");
    assert!(h.headers.contains_key("retry-after"));

    proxy.restore();
    let back = eventually(Duration::from_secs(10), || async {
        app.get("/v1/events").await.body.get("stale").is_none()
    })
    .await;
    assert!(back, "the list did not come back from Redis");
}

#[tokio::test]
async fn the_purge_drops_expired_idempotency_records_and_relayed_outbox_rows() {
    let app =
        spawn_with(fast_jobs(Settings::new()).set("BOXOFFICE_OUTBOX_RETENTION_SECONDS", "60"))
            .await;
    let db = pool(&app.settings).await;
    // Rows marked relayed stay so only once this Redis's stream is in place:
    // before, the reconciler's stream restore would send them again.
    let mark = app.state.redis.keys().outbox_stream_ready();
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.state.redis.exists(&mark).await.unwrap()
        })
        .await
    );
    sqlx::query(
        r"insert into idempotency (user_id, key, fingerprint, status, response, created_at) values
          ('u', 'old', 'f', 201, '{}', now() - interval '26 hours'),
          ('u', 'recent', 'f', 201, '{}', now() - interval '23 hours')",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        r"insert into outbox (topic, user_id, payload, created_at, published_at) values
          ('t.relayed_long_ago', 'u', '{}', now() - interval '2 hours', now() - interval '2 hours'),
          ('t.relayed_just_now', 'u', '{}', now(), now())",
    )
    .execute(&db)
    .await
    .unwrap();
    // (The reconciler also drops expired idempotency records; the outbox
    // rows are the purge job's alone.)
    let topics = || async {
        sqlx::query_scalar::<_, String>(
            "select topic from outbox where topic like 't.%' order by id",
        )
        .fetch_all(&db)
        .await
        .unwrap()
    };
    let purged = eventually(Duration::from_secs(5), || async {
        topics().await == ["t.relayed_just_now"]
    })
    .await;
    assert!(
        purged,
        "relayed outbox rows past the retention are still there: {:?}",
        topics().await
    );
    let keys: Vec<String> = sqlx::query_scalar("select key from idempotency")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        keys,
        ["recent"],
        "expired records kept or a live one purged"
    );
}
