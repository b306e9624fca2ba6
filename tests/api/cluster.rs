//! Invariant 11 and SPEC section 4 against a real local Redis Cluster
//! (three masters, started by the suite; see `redis_harness`): the whole
//! purchase flow on events spread over the masters, a master killed and
//! failed over mid-sale, and a master without a replica that comes back
//! empty.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{helpers::*, redis_harness::LocalCluster};

/// An app against the cluster, with every master as a seed.
async fn app_on(cluster: &LocalCluster) -> TestApp {
    // Leases need independent servers, not the cluster: the shared test
    // Redis (keys under the test's own prefix).
    spawn_with(
        Settings::new()
            .set("REDIS_URL", &cluster.url())
            .set("BOXOFFICE_LOCK_URLS", &redis_url()),
    )
    .await
}

/// Seats sold per schedule d1 of `event`, from PostgreSQL.
pub async fn sold_in_pg(app: &TestApp, event: &str) -> Vec<i32> {
    let mut seats: Vec<i32> = sqlx::query_scalar(
        "select seat_no from sold_seats where event_id = $1 and schedule_id = 'd1' order by seat_no",
    )
    .bind(event)
    .fetch_all(app.state.pg.pool())
    .await
    .unwrap();
    seats.sort_unstable();
    seats
}

/// Seats sold in Redis (the admin seat map).
pub async fn sold_in_redis(app: &TestApp, event: &str) -> Option<Vec<i32>> {
    let r = app
        .admin(
            Method::GET,
            &format!("/v1/admin/events/{event}/schedules/d1/seats"),
            None,
        )
        .await;
    if r.status != StatusCode::OK {
        return None;
    }
    Some(
        r.body["seats"]
            .as_array()?
            .iter()
            .filter(|s| s["status"] == "sold")
            .map(|s| s["seat_no"].as_i64().unwrap() as i32)
            .collect(),
    )
}

#[tokio::test]
async fn the_purchase_flow_works_on_events_spread_over_three_masters() {
    let Some(cluster) = LocalCluster::start(3, 1).await else {
        return;
    };
    let app = app_on(&cluster).await;
    let events = cluster.events_on_each_master("flow").await;
    assert_eq!(events.len(), 3, "one event per master: {events:?}");
    for (i, (event, _)) in events.iter().enumerate() {
        app.simple_event(event, queue_defaults(), 20, 300, 4).await;
        let user = format!("buyer{i}");
        let (token, paid) = app.buy(event, &user, "5000", json!([3, 4])).await;
        assert_eq!(paid.body["seats"], json!([3, 4]), "{}", paid.text);
        app.status(&token)
            .await
            .assert_problem(410, "queue_token_expired");
        assert_eq!(app.admin_seat(event, 3).await, "sold");
        // Someone else cannot hold a sold seat.
        let other = app.admitted_token(event, &format!("other{i}")).await;
        app.hold(&other, json!({"schedule_id": "d1", "seats": [4]}))
            .await
            .assert_problem(409, "seats_unavailable");
        // A keyed hold's key lives in the event's slot, on its master.
        let body = json!({"schedule_id": "d1", "seats": [5]});
        let first = app.hold_keyed(&other, "k", body.clone()).await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
        let again = app.hold_keyed(&other, "k", body).await;
        assert_eq!(again.replayed(), Some("true"), "{}", again.text);
        assert_eq!(again.text, first.text);
        let r = app
            .admin(Method::GET, &format!("/v1/admin/events/{event}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["restoring"], false);
        assert_eq!(r.body["schedules"][0]["sold"], 2);
    }
    let r = app.get("/v1/events").await;
    assert_eq!(r.body["events"].as_array().unwrap().len(), 3, "{}", r.text);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);

    // One seed is accepted (with a warning at start) and finds every master.
    let single = spawn_with(
        app.settings
            .clone()
            .set("REDIS_URL", &cluster.single_seed_url())
            .set("BOXOFFICE_LOCK_URLS", &redis_url()),
    )
    .await;
    for (i, (event, _)) in events.iter().enumerate() {
        let (_, paid) = single
            .buy(event, &format!("seed{i}"), "5000", json!([7]))
            .await;
        assert_eq!(paid.status, StatusCode::CREATED);
    }
}

/// What one buyer's attempt ended with, and when (since the sale began).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub event: usize,
    pub at: Duration,
    /// The first non-success status on the way, or 201 for a payment.
    pub status: u16,
    pub step: &'static str,
    /// The hold granted on the way, if any, and its seats.
    pub hold: Option<(String, Vec<i64>)>,
    /// When (since the sale began) the hold was asked for.
    pub hold_asked: Duration,
}

/// One attempt: join (admitted at once with these settings), hold the best
/// available seat, pay. The wallet is charged beforehand.
pub async fn attempt(
    app: &TestApp,
    event: &str,
    user: &str,
    t0: Instant,
) -> (Outcome, Option<serde_json::Value>) {
    let mut o = Outcome {
        event: 0,
        at: Duration::ZERO,
        status: 0,
        step: "join",
        hold: None,
        hold_asked: Duration::ZERO,
    };
    let r = app.join(event, user).await;
    o.status = r.status.as_u16();
    let Some(token) = r.body["token"].as_str().map(str::to_owned) else {
        return (o, None);
    };
    if r.body["status"] != "admitted" {
        o.status = 299;
        return (o, None);
    }
    o.hold_asked = t0.elapsed();
    let r = app
        .hold(&token, json!({"schedule_id": "d1", "count": 1}))
        .await;
    o.step = "hold";
    o.status = r.status.as_u16();
    if r.status != StatusCode::CREATED {
        return (o, None);
    }
    let hold = r.body["hold_id"].as_str().unwrap().to_owned();
    let seats = r.body["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect();
    o.hold = Some((hold.clone(), seats));
    let r = app.pay(&token, &hold, None).await;
    o.step = "pay";
    o.status = r.status.as_u16();
    if r.status != StatusCode::CREATED {
        return (o, None);
    }
    (o, Some(r.body))
}

/// Every attempt's outcome, every payment body, the buyer tasks.
pub type Sale = (
    Arc<Mutex<Vec<Outcome>>>,
    Arc<Mutex<Vec<serde_json::Value>>>,
    Vec<tokio::task::JoinHandle<()>>,
);

/// Runs `workers` buyers per event until `stop`.
pub fn start_sale(
    app: &Arc<TestApp>,
    events: &[String],
    workers: usize,
    stop: &Arc<AtomicBool>,
    t0: Instant,
) -> Sale {
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let paid: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for (ei, event) in events.iter().enumerate() {
        for _ in 0..workers {
            let (app, event, stop) = (app.clone(), event.clone(), stop.clone());
            let (outcomes, paid, next) = (outcomes.clone(), paid.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let user = format!("u{}", next.fetch_add(1, Ordering::Relaxed));
                    let charged = app.charge(&user, "1000", None).await;
                    assert_eq!(charged.status, StatusCode::CREATED, "{}", charged.text);
                    let (mut o, body) = attempt(&app, &event, &user, t0).await;
                    o.event = ei;
                    o.at = t0.elapsed();
                    let status = o.status;
                    outcomes.lock().unwrap().push(o);
                    if let Some(b) = body {
                        paid.lock().unwrap().push(b);
                    }
                    if status != 201 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }
    (outcomes, paid, tasks)
}

#[tokio::test]
async fn a_master_killed_mid_sale_fails_over_and_only_its_events_wait() {
    let Some(mut cluster) = LocalCluster::start(3, 1).await else {
        return;
    };
    let app = Arc::new(app_on(&cluster).await);
    let mut placed = cluster.events_on_each_master("fo").await;
    // The victim also serves the event stream.
    let stream = app.state.redis.keys().outbox_stream();
    let stream_master = cluster.master_of_key(&stream).await;
    let first = placed.iter().position(|p| p.1 == stream_master).unwrap();
    placed.swap(0, first);
    let events: Vec<String> = placed.iter().map(|(e, _)| e.clone()).collect();
    for e in &events {
        app.simple_event(e, queue_defaults(), 2000, 300, 4).await;
    }
    let victim_port = placed[0].1;
    let replica = cluster.replica_of(victim_port).await.expect("a replica");

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let (outcomes, paid, tasks) = start_sale(&app, &events, 3, &stop, t0);
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let killed_at = t0.elapsed();
    cluster.kill(victim_port).await;
    let failover = cluster
        .wait_master(replica, Duration::from_secs(15))
        .await
        .expect("the replica is promoted");
    let promoted_at = killed_at + failover;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let outcomes = outcomes.lock().unwrap().clone();
    let unavailable: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 503).collect();
    let last_503 = unavailable.iter().map(|o| o.at).max();
    eprintln!(
        "failover: killed at {killed_at:?}, replica promoted after {failover:?}; \
         {} attempts, {} answered 503, the last at {last_503:?}",
        outcomes.len(),
        unavailable.len()
    );
    // Only the killed master's event ever waits ...
    for o in &unavailable {
        assert_eq!(
            o.event, 0,
            "an event on a healthy master answered 503: {o:?}"
        );
        assert!(o.at >= killed_at, "503 before the kill: {o:?}");
        assert!(
            o.at <= promoted_at + Duration::from_millis(1_500),
            "503 {:?} after the promotion: {o:?}",
            o.at.saturating_sub(promoted_at)
        );
    }
    // ... every other answer is a sale (or, rarely, a hold that lost a race).
    for o in outcomes.iter().filter(|o| o.status != 503) {
        assert!(
            o.status == 201 || (o.status == 409 && o.step == "hold"),
            "unexpected answer: {o:?}"
        );
    }
    for (i, _) in events.iter().enumerate() {
        let sold_after = outcomes
            .iter()
            .filter(|o| {
                o.event == i && o.status == 201 && o.at > promoted_at + Duration::from_millis(1_500)
            })
            .count();
        assert!(sold_after > 0, "event {i} sells again after the failover");
    }

    // Nothing lost: every 201 is in PostgreSQL, and every seat PostgreSQL
    // sold is sold in Redis (after the reconciler, at most a few seconds).
    let paid = paid.lock().unwrap().clone();
    let ids: HashSet<String> = paid
        .iter()
        .map(|p| p["payment_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), paid.len());
    let in_pg: i64 = sqlx::query_scalar("select count(*) from payments")
        .fetch_one(app.state.pg.pool())
        .await
        .unwrap();
    assert_eq!(
        in_pg as usize,
        paid.len(),
        "every 201 is a payment, and only those"
    );
    for e in &events {
        let want = sold_in_pg(&app, e).await;
        let same = eventually(Duration::from_secs(5), || async {
            sold_in_redis(&app, e).await.as_deref() == Some(&want[..])
        })
        .await;
        assert!(
            same,
            "{e}: Redis sells what PostgreSQL sold ({} seats)",
            want.len()
        );
    }
    // The promoted replica may have missed the old master's last hold
    // numbers: the failed-over event now mints hold ids in a new epoch, the
    // others go on in theirs.
    for (i, e) in events.iter().enumerate() {
        let token = app.admitted_token(e, &format!("after{i}")).await;
        let r = app
            .hold(&token, json!({"schedule_id": "d1", "count": 1}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let n: u64 = r.body["hold_id"]
            .as_str()
            .unwrap()
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n > 1_000_000_000, i == 0, "event {e}: hold {n}");
    }
    // The promoted replica may also have missed the stream's last
    // messages: the stream is sent again from the outbox, so it ends with
    // every message PostgreSQL keeps, each once, after the ones it had.
    // (Sorted: payments that commit out of id order while the restored
    // stream is being sent are relayed in commit order.)
    let kept: Vec<i64> = sqlx::query_scalar("select id from outbox order by id")
        .fetch_all(app.state.pg.pool())
        .await
        .unwrap();
    let in_stream = || async {
        outbox_ids_in(
            &cluster
                .cli_for(&stream, &["XRANGE", &stream, "-", "+"])
                .await,
        )
    };
    let resent = eventually(Duration::from_secs(10), || async {
        let ids = in_stream().await;
        if ids.len() <= kept.len() {
            return false;
        }
        let mut tail = ids[ids.len() - kept.len()..].to_vec();
        tail.sort_unstable();
        tail == kept
    })
    .await;
    let ids = in_stream().await;
    assert!(
        resent,
        "the failed-over stream was not sent again: {} messages kept, {} in the stream, ending {:?}",
        kept.len(),
        ids.len(),
        &ids[ids.len().saturating_sub(5)..]
    );
}

/// What a hold probe saw.
#[derive(Debug, Default)]
pub struct Probed {
    /// Holds granted on a seat PostgreSQL had sold (must stay empty).
    pub sold_seat_holds: Vec<String>,
    /// When (since `t0`) the first best-available hold was granted.
    pub first_hold: Option<Duration>,
    pub rounds: u64,
    pub unavailable: u64,
}

/// Probes `event` in a tight loop until `stop`, from `tasks` tasks: each
/// round a fresh buyer joins and, once admitted, asks for one seat that
/// PostgreSQL sold (never to be granted) and for the best available seat
/// (never to be a sold one; released at once).
pub async fn probe_holds(
    app: &Arc<TestApp>,
    event: &str,
    sold: &[i32],
    tasks: usize,
    stop: &Arc<AtomicBool>,
    t0: Instant,
) -> Probed {
    assert!(!sold.is_empty());
    let found: Arc<Mutex<Probed>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let mut handles = vec![];
    for _ in 0..tasks {
        let (app, event, stop, found, next) = (
            app.clone(),
            event.to_owned(),
            stop.clone(),
            found.clone(),
            next.clone(),
        );
        let sold: Vec<i32> = sold.to_vec();
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let r = app.join(&event, &format!("probe{n}")).await;
                let token = match r.body["token"].as_str() {
                    Some(t) if r.body["status"] == "admitted" => t.to_owned(),
                    _ => {
                        if r.status == StatusCode::SERVICE_UNAVAILABLE {
                            found.lock().unwrap().unavailable += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let seat = sold[n as usize % sold.len()];
                let r = app
                    .hold(&token, json!({"schedule_id": "d1", "seats": [seat]}))
                    .await;
                if r.status == StatusCode::CREATED {
                    found.lock().unwrap().sold_seat_holds.push(r.text.clone());
                }
                let r = app
                    .hold(&token, json!({"schedule_id": "d1", "count": 1}))
                    .await;
                {
                    let mut f = found.lock().unwrap();
                    f.rounds += 1;
                    if r.status == StatusCode::SERVICE_UNAVAILABLE {
                        f.unavailable += 1;
                    }
                    if r.status == StatusCode::CREATED {
                        let got = r.body["seats"][0].as_i64().unwrap() as i32;
                        if sold.contains(&got) {
                            f.sold_seat_holds.push(r.text.clone());
                        }
                        f.first_hold.get_or_insert(t0.elapsed());
                    }
                }
                if r.status == StatusCode::CREATED {
                    let id = r.body["hold_id"].as_str().unwrap();
                    app.send(Req {
                        method: Method::DELETE,
                        path: &format!("/v1/holds/{id}"),
                        body: None,
                        raw: None,
                        headers: vec![("authorization", format!("Bearer {token}"))],
                    })
                    .await;
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    Arc::try_unwrap(found).unwrap().into_inner().unwrap()
}

#[tokio::test]
async fn a_master_without_replica_that_comes_back_empty_is_restored_by_itself() {
    let Some(mut cluster) = LocalCluster::start(3, 0).await else {
        return;
    };
    let app = Arc::new(app_on(&cluster).await);
    let placed = cluster.events_on_each_master("re").await;
    for (e, _) in &placed {
        app.simple_event(e, queue_defaults(), 200, 300, 4).await;
    }
    let (victim, victim_port) = placed[0].clone();
    let healthy = placed[1].0.clone();
    // 30 seats sold on the victim's event, 2 on another.
    for i in 0..15 {
        app.buy(
            &victim,
            &format!("b{i}"),
            "5000",
            json!([2 * i + 1, 2 * i + 2]),
        )
        .await;
    }
    app.buy(&healthy, "h0", "5000", json!([1, 2])).await;
    let sold = sold_in_pg(&app, &victim).await;
    assert_eq!(sold.len(), 30);

    cluster.kill(victim_port).await;
    // The shard is down: its event answers 503 quickly, the others sell.
    let mut down = false;
    for i in 0..20 {
        let start = Instant::now();
        let r = app.join(&victim, &format!("w{i}")).await;
        assert!(
            start.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            start.elapsed()
        );
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            r.assert_problem(503, "dependency_unavailable");
            down = true;
            break;
        }
    }
    assert!(down, "the dead shard's event answers 503");
    let (_, paid) = app.buy(&healthy, "h1", "5000", json!([3])).await;
    assert_eq!(paid.status, StatusCode::CREATED);

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    cluster.restart_empty(victim_port).await;
    let restarted = t0.elapsed();
    let probing = {
        let (app, stop, victim, sold) = (app.clone(), stop.clone(), victim.clone(), sold.clone());
        tokio::spawn(async move { probe_holds(&app, &victim, &sold, 3, &stop, t0).await })
    };
    let back = eventually(Duration::from_secs(10), || async {
        sold_in_redis(&app, &victim).await.as_deref() == Some(&sold[..])
    })
    .await;
    // Keep probing a little after the restore.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let probed = probing.await.unwrap();
    eprintln!("restart empty: restarted after {restarted:?}; probes: {probed:?}");
    assert!(
        back,
        "the emptied shard's event is back with its sold seats, by itself"
    );
    assert!(
        probed.sold_seat_holds.is_empty(),
        "holds granted on sold seats: {:?}",
        probed.sold_seat_holds
    );
    let first = probed.first_hold.expect("holds are granted again");
    assert!(
        first < Duration::from_secs(6),
        "event back {first:?} after the restart"
    );
    // New holds live in a new epoch; a later buyer pays.
    let token = app.admitted_token(&victim, "later").await;
    app.charge("later", "5000", None).await;
    let r = app
        .hold(&token, json!({"schedule_id": "d1", "count": 2}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let hold = r.body["hold_id"].as_str().unwrap().to_owned();
    let n: u64 = hold.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        n > 1_000_000_000,
        "hold numbers restart in a fresh epoch: {hold}"
    );
    let r = app.pay(&token, &hold, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}
