//! Invariant 9: a dead dependency gives a fast 503, never a hang, and the
//! service recovers by itself when it returns.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::*;

/// An instance whose PostgreSQL (a database of its own, returned) is
/// behind a proxy that can cut it, with the background loops off.
async fn with_cuttable_postgres() -> (String, Proxy, TestApp) {
    let db = create_database().await;
    let proxy = Proxy::start(resolve(&db).await).await;
    let app = spawn_with(
        Settings::new()
            .set("DATABASE_URL", &via(&db, proxy.addr))
            .without_background(),
    )
    .await;
    (db, proxy, app)
}

#[tokio::test]
async fn redis_outage_is_a_fast_503_and_recovers() {
    let proxy = Proxy::start(resolve(&redis_url()).await).await;
    let app = spawn_with(Settings::new().set("REDIS_URL", &via(&redis_url(), proxy.addr))).await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);

    proxy.cut();
    // A refused connection fails at once; the bound is the service's own
    // call timeout plus as much again of slack (tests/api/stall.rs covers
    // a server that hangs instead).
    let bound = boxoffice::store::redis::CALL_TIMEOUT * 2;
    for i in 0..10 {
        let start = Instant::now();
        let r = app.join("e1", &format!("u{i}")).await;
        let took = start.elapsed();
        r.assert_problem(503, "dependency_unavailable");
        assert!(r.headers.contains_key("retry-after"));
        assert!(took < bound, "join took {took:?}");
        let start = Instant::now();
        let r = app.get("/readyz").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.body["redis"], "unavailable");
        assert!(start.elapsed() < bound);
    }
    // The process is still up.
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);

    proxy.restore();
    let back = app.ready_within(Duration::from_secs(10)).await;
    assert!(back, "ready again without a restart");
    let r = app.join("e1", "after").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn postgres_outage_is_a_fast_503_while_the_queue_keeps_working() {
    let db = create_database().await;
    let pg = resolve(&db).await;
    let proxy = Proxy::start(pg).await;
    let app = spawn_with(Settings::new().set("DATABASE_URL", &via(&db, proxy.addr))).await;
    app.simple_event("e1", queue_defaults(), 10, 60, 4).await;

    proxy.cut();
    let bound = boxoffice::store::pg::CALL_TIMEOUT + Duration::from_millis(500);
    let start = Instant::now();
    let r = app.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["postgres"], "unavailable");
    assert!(start.elapsed() < bound, "readyz took {:?}", start.elapsed());
    // Admin reads need PostgreSQL: 503 quickly once the breaker is open.
    for _ in 0..5 {
        let start = Instant::now();
        let r = app
            .admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
            .await;
        r.assert_problem(503, "dependency_unavailable");
        assert!(start.elapsed() < bound);
    }
    let start = Instant::now();
    let r = app
        .admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
        .await;
    r.assert_problem(503, "dependency_unavailable");
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "breaker open: {:?}",
        start.elapsed()
    );
    // The queue never touches PostgreSQL.
    let r = app.join("e1", "u1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(app.status(&token).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/events").await.status, StatusCode::OK);
    // Holds don't either; the wallet does, and answers 503.
    let r = app
        .hold(&token, serde_json::json!({"schedule_id": "d1", "count": 2}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app.get_as("/v1/users/u1/wallet", "u1").await;
    r.assert_problem(503, "dependency_unavailable");

    proxy.restore();
    let back = app.ready_within(Duration::from_secs(10)).await;
    assert!(back, "ready again without a restart");
    assert_eq!(
        app.admin(reqwest::Method::GET, "/v1/admin/events/e1", None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn startup_fails_fast_with_a_clear_message() {
    let settings = Settings::new().set("REDIS_URL", "redis://127.0.0.1:1");
    let config = boxoffice::config::Config::from_map(&settings.env).unwrap();
    let start = Instant::now();
    let err = match boxoffice::app::Application::build(config).await {
        Ok(_) => panic!("must not start without Redis"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("cannot use Redis at redis://127.0.0.1:1"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// PostgreSQL goes down while a keyed request runs: its work fails and the
/// release of its claim finds nothing to answer, so the claim stays open
/// and the key answers `request_in_progress`. Once PostgreSQL is back the
/// instance gives that claim back by itself within seconds (not after the
/// 60 s that let any request take a claim over), and the key runs again.
#[tokio::test]
async fn a_claim_left_open_by_postgresql_going_down_is_given_back_once_it_is_up() {
    use boxoffice::{
        idempotency::{Claimed, KeyRefused, Scope, claim, once},
        ids::{IdempotencyKey, UserId},
    };
    use sqlx::Connection;
    /// The work's failure, or the key's refusal (printed by the panic).
    #[derive(Debug)]
    enum Failed {
        Down,
        Refused(#[allow(dead_code)] KeyRefused),
    }
    impl From<KeyRefused> for Failed {
        fn from(e: KeyRefused) -> Self {
            Self::Refused(e)
        }
    }
    let (db, proxy, app) = with_cuttable_postgres().await;
    let pg = &app.state.pg;
    let (user, key) = (
        UserId::parse("dora").unwrap(),
        IdempotencyKey::parse("topup-down").unwrap(),
    );
    let parts = ["charge", "dora", "10"];
    // The work runs under the claim and meets PostgreSQL gone.
    let failed = once(
        pg,
        Some(Scope::new(&user, &key, &parts)),
        async {
            proxy.cut();
            Err::<(), _>(Failed::Down)
        },
        |_| None,
    )
    .await;
    assert!(matches!(failed, Err(Failed::Down)), "{failed:?}");
    // Seen on a connection of our own, around the proxy: the claim is open.
    let mut direct = sqlx::PgConnection::connect(&db).await.unwrap();
    let open = async |c: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar(
            "select count(*) from idempotency where user_id = 'dora' and status is null",
        )
        .fetch_one(c)
        .await
        .unwrap()
    };
    assert_eq!(
        open(&mut direct).await,
        1,
        "the release could not reach PostgreSQL"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        open(&mut direct).await,
        1,
        "nothing gave it back while PostgreSQL was down"
    );

    proxy.restore();
    let start = Instant::now();
    let mut given_back = false;
    while start.elapsed() < Duration::from_secs(10) {
        if open(&mut direct).await == 0 {
            given_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        given_back,
        "the claim is still open 10 s after PostgreSQL came back"
    );
    eprintln!(
        "given back {:?} after PostgreSQL came back",
        start.elapsed()
    );
    assert!(matches!(
        claim(
            pg,
            &user,
            &key,
            &boxoffice::idempotency::fingerprint(&parts)
        )
        .await,
        Ok(Claimed::Fresh(_))
    ));
}

/// A payment whose statement's fate PostgreSQL could not tell (the
/// connection lost while the statement waited on the server, and
/// PostgreSQL then unreachable to ask) answers 503 and leaves its hold
/// *paying*. Once PostgreSQL answers that the hold was not paid, the
/// instance gives the hold back, and the buyer's retry pays it. Without
/// that the retry is refused as in progress for the whole paying timeout
/// (30 s), and the hold is then dropped and the seat lost.
#[tokio::test]
async fn a_payment_whose_fate_was_unknown_gives_its_hold_back_once_postgresql_answers() {
    use sqlx::{Connection, Executor, PgConnection};
    let (db, proxy, app) = with_cuttable_postgres().await;
    app.simple_event("e1", open_queue(), 20, 300, 4).await;
    let token = app.admitted_token("e1", "u1").await;
    app.charge("u1", "5000", None).await;
    let hold = app.hold_seats(&token, serde_json::json!([1])).await;
    // On connections of our own, around the proxy: the wallet locked, so
    // the payment's statement waits on the server.
    let mut lock = PgConnection::connect(&db).await.unwrap();
    lock.execute("begin").await.unwrap();
    lock.execute("select 1 from wallets where user_id = 'u1' for update")
        .await
        .unwrap();
    let mut admin = PgConnection::connect(&db).await.unwrap();
    let (paid, ()) = tokio::join!(app.pay(&token, &hold, None), async {
        let waiting = "select count(*) from pg_stat_activity
                       where datname = current_database() and wait_event_type = 'Lock'";
        let start = Instant::now();
        while sqlx::query_scalar::<_, i64>(waiting)
            .fetch_one(&mut admin)
            .await
            .unwrap()
            == 0
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no statement waits"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The service cut off from PostgreSQL, and the statement ended on
        // the server before it could commit.
        proxy.cut();
        admin
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
            )
            .await
            .unwrap();
        lock.execute("rollback").await.unwrap();
    });
    paid.assert_problem(503, "dependency_unavailable");
    assert_eq!(app.admin_seat("e1", 1).await, "held", "paying, in Redis");

    proxy.restore();
    let back = app.ready_within(Duration::from_secs(10)).await;
    assert!(back, "PostgreSQL reached again");
    retry_while_in_progress(|| app.pay(&token, &hold, None)).await;
    assert_eq!(app.balance("u1").await, "4000", "paid once");
    assert_eq!(app.admin_seat("e1", 1).await, "sold");
    app.assert_script_invariants().await;
    app.assert_audit_clean().await;
}
