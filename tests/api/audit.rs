//! `boxoffice audit`, the real binary: passes on an honest state, and
//! for each check, a state broken on purpose makes it exit 1 naming the
//! check (and the event it was broken in).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

fn d1() -> boxoffice::ids::ScheduleId {
    boxoffice::ids::ScheduleId::parse("d1").unwrap()
}

async fn sql(app: &TestApp, q: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(q.to_owned()))
        .execute(app.state.pg.pool())
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
}

/// An event `event` (schedule d1, 20 seats, max 4 per user) where `buyer`
/// bought seats 1 and 2 and holds seat 3; returns the hold id.
async fn sale(app: &TestApp, event: &str) -> String {
    app.simple_event(event, open_queue(), 20, 300, 4).await;
    let buyer = format!("{event}-buyer");
    let (token, _) = app.buy(event, &buyer, "5000", json!([1, 2])).await;
    // The payment ended the buyer's queue entry: hold with a fresh one.
    let _ = token;
    let token = app.admitted_token(event, &format!("{event}-holder")).await;
    app.hold_seats(&token, json!([3])).await
}

/// `boxoffice audit` exits 1, reports `check` as FAILED and names `event`
/// in one of its violations.
#[track_caller]
fn assert_fails(code: i32, out: &str, check: &str, event: &str) {
    assert_eq!(code, 1, "{check}: exit 1 expected:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("FAILED {check}: "))),
        "{check} is not reported FAILED:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("  VIOLATION {check}: ")) && l.contains(event)),
        "no {check} violation names {event}:\n{out}"
    );
}

#[tokio::test]
async fn the_audit_binary_names_each_broken_invariant_and_exits_1() {
    // Background loops off: no reconciler repairs what we break.
    let app = spawn_with(Settings::new().without_background()).await;

    // (check, event): each corruption in its own event.
    let cases = [
        "held-counter",
        "sold-counter",
        "uheld",
        "map-bits",
        "sold-bits",
        "hold-deadline",
        "deadline-hold",
        "seat-owner",
        "seat-range",
        "seat-value",
        "hold-record",
        "max-per-user",
        "static-cfg",
        "stuck-paying",
        "redis-pg-sold",
        "other-payment",
        "pg-seat-range",
        "no-double-sale",
        "wallet-ledger",
        "payment-amount",
        "payment-ledger",
        "pg-max-per-user",
        "unconfirmed",
        "sales-counted",
        "max-active",
        "no-event",
        "no-schedule",
    ];
    let mut holds = std::collections::HashMap::new();
    for ev in cases {
        holds.insert(ev, sale(&app, ev).await);
    }

    let (code, out) = run_audit_binary(&app).await;
    assert_eq!(code, 0, "an honest state passes:\n{out}");
    assert!(!out.contains("FAILED"), "{out}");
    // Every check ran and examined something.
    for line in out.lines().filter(|l| l.starts_with("passed ")) {
        assert!(!line.contains("(0 examined"), "examined nothing: {line}");
    }
    assert!(
        out.lines().filter(|l| l.starts_with("passed ")).count() >= 20,
        "{out}"
    );
    app.assert_script_invariants().await;

    let n = |ev: &str| holds[ev].rsplit('.').next().unwrap().to_owned();
    let cli = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(&args).await
    };
    let s = |v: &str| v.to_owned();
    let d = d1();

    // One corruption at a time, each followed by a run of the binary.
    let steps: Vec<(&str, &str)> = vec![
        ("held-counter", "script:held_counter"),
        ("sold-counter", "script:sold_counter"),
        ("uheld", "script:uheld"),
        ("map-bits", "script:map_bits"),
        ("sold-bits", "script:sold_bits"),
        ("hold-deadline", "script:hold_deadline"),
        ("deadline-hold", "script:deadline_hold"),
        ("seat-owner", "script:seat_owner"),
        ("seat-range", "script:seat_range"),
        ("seat-value", "script:seat_value"),
        ("hold-record", "script:hold_record"),
        ("max-per-user", "script:max_per_user"),
        ("static-cfg", "script:static_cfg"),
        ("stuck-paying", "stuck_paying"),
        ("redis-pg-sold", "redis_pg_sold"),
        ("other-payment", "redis_pg_sold"),
        ("pg-seat-range", "pg_seat_range"),
        ("no-double-sale", "no_double_sale"),
        ("wallet-ledger", "wallet_ledger"),
        ("payment-amount", "payment_amount"),
        ("payment-ledger", "payment_ledger"),
        ("pg-max-per-user", "pg_max_per_user"),
        ("unconfirmed", "unconfirmed_payments"),
        ("sales-counted", "sales_counted"),
        ("max-active", "max_active"),
        ("no-event", "catalog_in_redis"),
        ("no-schedule", "catalog_in_redis"),
    ];
    for (ev, check) in steps {
        let k = app.event_keys(ev);
        match ev {
            "held-counter" => {
                cli(vec![s("HINCRBY"), k.schedule(&d), s("held"), s("1")]).await;
            }
            "sold-counter" => {
                cli(vec![s("HINCRBY"), k.schedule(&d), s("sold"), s("-1")]).await;
            }
            "uheld" => {
                cli(vec![
                    s("HINCRBY"),
                    k.user_held(&d),
                    format!("{ev}-holder"),
                    s("1"),
                ])
                .await;
            }
            "map-bits" => {
                cli(vec![s("SETBIT"), k.seat_map(&d), s("15"), s("1")]).await;
            }
            "sold-bits" => {
                cli(vec![s("SETBIT"), k.sold_map(&d), s("16"), s("1")]).await;
            }
            "hold-deadline" => {
                cli(vec![s("ZREM"), k.hold_deadlines(&d), n(ev)]).await;
            }
            "deadline-hold" => {
                cli(vec![
                    s("ZADD"),
                    k.hold_deadlines(&d),
                    s("99999999999999"),
                    s("424242"),
                ])
                .await;
            }
            "seat-owner" => {
                // Seat 3 moved to a hold that does not list it.
                cli(vec![s("HSET"), k.seats(&d), s("3"), s("h:424242")]).await;
            }
            "seat-range" => {
                cli(vec![
                    s("HSET"),
                    k.seats(&d),
                    s("21"),
                    format!("h:{}", n(ev)),
                ])
                .await;
            }
            "seat-value" => {
                cli(vec![s("HSET"), k.seats(&d), s("3"), s("x:garbage")]).await;
            }
            "hold-record" => {
                cli(vec![s("HSET"), k.holds(&d), n(ev), s("not json")]).await;
            }
            "max-per-user" => {
                cli(vec![
                    s("HINCRBY"),
                    k.user_bought(&d),
                    format!("{ev}-buyer"),
                    s("3"),
                ])
                .await;
            }
            "static-cfg" => {
                // The copy says 3 minutes to hold, the field 5.
                let cfg = k.schedule(&d);
                let raw = cli(vec![s("HGET"), cfg.clone(), s("static")]).await;
                let mut c: Value = serde_json::from_str(raw.trim()).unwrap();
                c["hold_ms"] = json!(180_000);
                cli(vec![s("HSET"), cfg, s("static"), c.to_string()]).await;
            }
            "stuck-paying" => {
                // The hold entered payment long ago and never finished.
                let raw = cli(vec![s("HGET"), k.holds(&d), n(ev)]).await;
                let mut rec: Value = serde_json::from_str(raw.trim()).unwrap();
                rec["state"] = json!("paying");
                rec["created"] = json!(rec["created"].as_i64().unwrap() - 400_000 - 120_000);
                cli(vec![s("HSET"), k.holds(&d), n(ev), rec.to_string()]).await;
            }
            "redis-pg-sold" => {
                // Redis forgets a sale (counter, bitmaps and all).
                cli(vec![s("HDEL"), k.seats(&d), s("2")]).await;
                cli(vec![s("HINCRBY"), k.schedule(&d), s("sold"), s("-1")]).await;
                cli(vec![s("SETBIT"), k.seat_map(&d), s("2"), s("0")]).await;
                cli(vec![s("SETBIT"), k.sold_map(&d), s("2"), s("0")]).await;
            }
            "other-payment" => {
                cli(vec![
                    s("HSET"),
                    k.seats(&d),
                    s("1"),
                    format!("s:{}", uuid::Uuid::now_v7()),
                ])
                .await;
            }
            "pg-seat-range" => {
                sql(
                    &app,
                    &format!(
                        "update sold_seats set seat_no = 99 where event_id = '{ev}' and seat_no = 2"
                    ),
                )
                .await;
            }
            "no-double-sale" => {
                sql(&app, &format!(
                    "insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats)
                     values (gen_random_uuid(), 'intruder', '{ev}', 'd1', '{ev}.d1.999', 1000, '{{1}}')"
                ))
                .await;
            }
            "wallet-ledger" => {
                sql(
                    &app,
                    &format!(
                        "update wallets set balance = balance + 1 where user_id = '{ev}-buyer'"
                    ),
                )
                .await;
            }
            "payment-amount" => {
                // Amount and ledger changed together: only the price rule breaks.
                sql(
                    &app,
                    &format!(
                        "update payments set amount = 1500 where event_id = '{ev}';
                     update ledger set amount = -1500, balance_after = balance_after + 500
                       where payment_id = (select payment_id from payments where event_id = '{ev}');
                     update wallets set balance = balance + 500 where user_id = '{ev}-buyer'"
                    ),
                )
                .await;
            }
            "payment-ledger" => {
                // A second payment row in the ledger, balance kept equal to the sum.
                sql(&app, &format!(
                    "insert into ledger (transaction_id, user_id, kind, amount, balance_after, payment_id)
                       select gen_random_uuid(), user_id, 'payment', -1, 0, payment_id
                       from payments where event_id = '{ev}';
                     update wallets set balance = balance - 1 where user_id = '{ev}-buyer'"
                ))
                .await;
            }
            "pg-max-per-user" => {
                sql(
                    &app,
                    &format!("update schedules set max_per_user = 1 where event_id = '{ev}'"),
                )
                .await;
            }
            "unconfirmed" => {
                sql(&app, &format!(
                    "update payments set paid_at = now() - interval '2 minutes' where event_id = '{ev}';
                     insert into payments_unconfirmed (payment_id, paid_at)
                       select payment_id, paid_at from payments where event_id = '{ev}'
                     on conflict (payment_id) do update set paid_at = excluded.paid_at"
                ))
                .await;
            }
            "sales-counted" => {
                // A payment the sales figures lost: not rolled up, and no
                // longer in the tail either.
                sql(
                    &app,
                    &format!("delete from payments_not_rolled_up where event_id = '{ev}'"),
                )
                .await;
            }
            "max-active" => {
                cli(vec![
                    s("HSET"),
                    k.queue_stats(),
                    s("peak_active"),
                    s("100001"),
                ])
                .await;
            }
            "no-event" => {
                cli(vec![s("DEL"), k.config()]).await;
            }
            "no-schedule" => {
                cli(vec![s("DEL"), k.schedule(&d)]).await;
            }
            other => unreachable!("{other}"),
        }
        let (code, out) = run_audit_binary(&app).await;
        assert_fails(code, &out, check, ev);
    }
}

#[tokio::test]
async fn the_checker_passes_on_live_holds_and_sales_and_sees_a_broken_counter() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 30, 300, 4).await;
    app.buy("e1", "a", "5000", json!([1, 2])).await;
    let t = app.admitted_token("e1", "b").await;
    app.hold_seats(&t, json!([5, 6, 7])).await;
    app.assert_script_invariants().await;
    let e = boxoffice::ids::EventId::parse("e1").unwrap();
    let c = boxoffice::holds::check::check_schedule(&app.state.redis, &e, &d1())
        .await
        .unwrap();
    assert_eq!((c.counts.held, c.counts.sold, c.counts.holds), (3, 2, 1));
    assert_eq!(c.sold.len(), 2);

    redis_cli(&["HINCRBY", &app.event_keys("e1").user_held(&d1()), "b", "-1"]).await;
    let c = boxoffice::holds::check::check_schedule(&app.state.redis, &e, &d1())
        .await
        .unwrap();
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    assert_eq!(c.violations[0].check, "uheld");
    let r = app.get_with_token("/v1/events/e1/schedules", &t).await;
    assert_eq!(r.status, StatusCode::OK);
}
