//! `boxoffice audit`: checks the invariants against the live stores after
//! a load test (or any time); exits 1 on any violation. It changes nothing
//! of substance: like `serve` it applies pending migrations; it reads Redis
//! with read-only scripts (it does not even expire due holds).
//!
//! Every check is reported as passed or failed, with how many things it
//! examined and how many violations it found:
//!
//! - PostgreSQL: no seat is in two payments; sold seats within 1..N; every
//!   balance equals its ledger sum and is not negative; every payment's
//!   amount is price × seats and it has exactly one ledger row of minus that
//!   amount; no user bought more than `max_per_user` seats of a schedule;
//!   no payment left unconfirmed in Redis for over a minute.
//! - Redis, per schedule, by `lua/check_schedule.lua` (the invariants at the
//!   top of `lua/lib/schedule.lua`): seats within 1..N, counters (`held`,
//!   `sold`, `uheld`) equal the seats hash, both bitmaps equal the seats,
//!   every hold has a deadline and back, each `h:` seat belongs to a hold
//!   that lists it, held + bought per user within `max_per_user`.
//! - Both: every event and schedule of the catalog is loaded in Redis (a
//!   missing one is a violation, and the audit goes on); the seats sold in
//!   Redis are exactly those sold in PostgreSQL, each to the same payment;
//!   no hold stuck in *paying* for over a minute; the admitted count never
//!   exceeded `max_active` (peak kept by the admission scripts; compared
//!   with the current setting, so lowering `max_active` after a sale can
//!   report a violation that was none).

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    catalog,
    holds::{HoldError, check::check_schedule},
    queue::{self, QueueError},
    store::{pg::Pg, redis::Redis},
};

/// The script checks, in report order, with what each means.
pub const SCRIPT_CHECKS: &[(&str, &str)] = &[
    ("seat_range", "Redis seat numbers are within 1..N"),
    (
        "seat_value",
        "every Redis seat value is h:<hold> or s:<payment>",
    ),
    (
        "held_counter",
        "cfg.held equals the h: seats of the seats hash",
    ),
    (
        "sold_counter",
        "cfg.sold equals the s: seats of the seats hash",
    ),
    ("uheld", "uheld equals the seats each user's holds own"),
    ("map_bits", "the taken bitmap equals the seats hash"),
    ("sold_bits", "the sold bitmap equals the sold seats"),
    (
        "hold_deadline",
        "every hold has its deadline in the deadline set",
    ),
    ("deadline_hold", "every deadline belongs to a hold"),
    ("hold_record", "every hold record is readable"),
    (
        "seat_owner",
        "every h: seat belongs to a hold that lists it",
    ),
    (
        "max_per_user",
        "held + bought per user within max_per_user (Redis)",
    ),
    (
        "static_cfg",
        "a schedule's one-field config copy equals its fields",
    ),
];

/// One check of the audit.
#[derive(Debug, Clone)]
pub struct Check {
    /// Stable name, shown in the report (`redis_pg_sold`, `script:uheld`, ...).
    pub name: String,
    pub description: String,
    /// How many things it looked at (seats, payments, wallets, ...).
    pub examined: u64,
    pub violations: Vec<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The audit's findings.
#[derive(Debug, Default)]
pub struct Audit {
    pub checks: Vec<Check>,
    /// Every violation, prefixed with its check's name.
    pub violations: Vec<String>,
}

impl Audit {
    /// The check of this name.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Names of the failed checks.
    pub fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.passed())
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// Accumulates the checks in a fixed order.
#[derive(Default)]
struct Report {
    checks: BTreeMap<String, Check>,
    order: Vec<String>,
}

impl Report {
    fn declare(&mut self, name: &str, description: &str) {
        self.order.push(name.to_owned());
        self.checks.insert(
            name.to_owned(),
            Check {
                name: name.to_owned(),
                description: description.to_owned(),
                examined: 0,
                violations: Vec::new(),
            },
        );
    }
    fn examined(&mut self, name: &str, n: u64) {
        if let Some(c) = self.checks.get_mut(name) {
            c.examined += n;
        }
    }
    /// A violation of `name`; a name never declared (a script check this
    /// binary does not know) becomes a check of its own, never dropped.
    fn fail(&mut self, name: &str, v: String) {
        if !self.checks.contains_key(name) {
            self.declare(name, "(undeclared check)");
        }
        if let Some(c) = self.checks.get_mut(name) {
            c.violations.push(v);
        }
    }
    fn finish(mut self) -> Audit {
        let mut a = Audit::default();
        for name in &self.order {
            let c = self.checks.remove(name).expect("declared");
            for v in &c.violations {
                a.violations.push(format!("{}: {v}", c.name));
            }
            a.checks.push(c);
        }
        a
    }
}

/// A hold stuck in *paying*, or a payment unconfirmed, this long is a
/// violation (the reconciler finishes payments within seconds).
const STUCK_MS: i64 = 60_000;

/// Runs every check.
///
/// # Errors
/// A store is unavailable (a missing event or schedule in Redis is a
/// violation, not an error).
pub async fn run(pg: &Pg, redis: &Redis) -> anyhow::Result<Audit> {
    let mut r = Report::default();
    r.declare("no_double_sale", "no seat is in two payments (PostgreSQL)");
    r.declare("pg_seat_range", "seats sold in PostgreSQL are within 1..N");
    r.declare(
        "wallet_ledger",
        "every balance equals its ledger sum and is not negative",
    );
    r.declare("payment_amount", "every payment's amount is price × seats");
    r.declare(
        "payment_ledger",
        "every payment has exactly one ledger row of minus its amount",
    );
    r.declare(
        "refund_ledger",
        "every refunded payment has one refund and, unless free, exactly one refund ledger row of plus its amount",
    );
    r.declare(
        "pg_max_per_user",
        "no user bought more than max_per_user seats of a schedule (PostgreSQL)",
    );
    r.declare(
        "sales_counted",
        "every payment is counted once by the sales figures: in the rollup or in its tail",
    );
    r.declare(
        "unconfirmed_payments",
        "no payment unconfirmed in Redis for over a minute",
    );
    r.declare(
        "catalog_in_redis",
        "every event and schedule is loaded in Redis",
    );
    r.declare(
        "redis_pg_sold",
        "Redis and PostgreSQL sell the same seats, each to the same payment",
    );
    for (name, what) in SCRIPT_CHECKS {
        r.declare(&format!("script:{name}"), what);
    }
    r.declare("stuck_paying", "no hold is paying for over a minute");
    r.declare("max_active", "admitted never exceeded max_active");

    pg_checks(pg, &mut r).await?;

    let unconfirmed: Vec<(Uuid, String)> = pg
        .guard(
            sqlx::query_as(
                r"select p.payment_id, p.user_id
                  from payments_unconfirmed u join payments p using (payment_id)
                  where u.paid_at < now() - interval '1 minute'",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    let total: i64 = pg
        .guard(sqlx::query_scalar("select count(*) from payments").fetch_one(pg.pool()))
        .await?;
    r.examined("unconfirmed_payments", total as u64);
    for (p, user) in unconfirmed {
        r.fail(
            "unconfirmed_payments",
            format!("payment {p} of {user} is not confirmed in Redis after a minute"),
        );
    }

    for ev in catalog::pg::all(pg).await? {
        r.examined("catalog_in_redis", 1);
        // Whether the event is loaded is asked first: `queue::figures`
        // cannot decode its own no_event reply.
        let loaded = redis
            .exists(&redis.keys().event(&ev.event_id).config())
            .await?;
        let figures = if loaded {
            queue::figures(redis, &ev.event_id).await
        } else {
            Err(QueueError::NoEvent)
        };
        match figures {
            Ok(f) => {
                r.examined("max_active", 1);
                if f.peak_active > u64::from(ev.queue.max_active) {
                    r.fail(
                        "max_active",
                        format!(
                            "{}: {} admitted at once, above max_active {}",
                            ev.event_id, f.peak_active, ev.queue.max_active
                        ),
                    );
                }
            }
            Err(QueueError::NoEvent) => r.fail(
                "catalog_in_redis",
                format!("event {} is not loaded in Redis", ev.event_id),
            ),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", ev.event_id)),
        }
        for s in &ev.schedules {
            r.examined("catalog_in_redis", 1);
            let at = format!("{}/{}", ev.event_id, s.schedule_id);
            let c = match check_schedule(redis, &ev.event_id, &s.schedule_id).await {
                Ok(c) => c,
                Err(HoldError::NoSchedule) => {
                    r.fail(
                        "catalog_in_redis",
                        format!("schedule {at} is not loaded in Redis"),
                    );
                    continue;
                }
                Err(e) => return Err(anyhow::anyhow!("{at}: {e}")),
            };
            for (name, _) in SCRIPT_CHECKS {
                r.examined(&format!("script:{name}"), c.counts.seats + c.counts.holds);
            }
            for v in &c.violations {
                r.fail(
                    &format!("script:{}", v.check),
                    format!("{at}: {}", v.detail),
                );
            }
            for t in &c.totals {
                let listed = c.violations.iter().filter(|v| v.check == t.check).count() as u64;
                if t.count > listed {
                    r.fail(
                        &format!("script:{}", t.check),
                        format!("{at}: and {} more", t.count - listed),
                    );
                }
            }
            for (hold, created, deadline) in &c.paying {
                // Paying began at most hold_ms after creation, so this is a
                // hold that has been paying for over a minute.
                if c.now - created > c.hold_ms as i64 + STUCK_MS {
                    r.fail(
                        "stuck_paying",
                        format!(
                            "{at}: hold {hold} has been paying for over a minute (deadline {deadline}, now {})",
                            c.now
                        ),
                    );
                }
            }
            r.examined("stuck_paying", c.counts.holds);

            let sold_pg: BTreeMap<u32, Uuid> = pg
                .guard(
                    sqlx::query_as::<_, (i32, Uuid)>(
                        r"select seat_no, payment_id from sold_seats
                          where event_id = $1 and schedule_id = $2",
                    )
                    .bind(ev.event_id.as_str())
                    .bind(s.schedule_id.as_str())
                    .fetch_all(pg.pool()),
                )
                .await?
                .into_iter()
                .map(|(n, p)| (n as u32, p))
                .collect();
            let sold_redis: BTreeMap<u32, Option<Uuid>> = c.sold_payments().collect();
            r.examined(
                "redis_pg_sold",
                sold_pg
                    .keys()
                    .chain(sold_redis.keys())
                    .collect::<BTreeSet<_>>()
                    .len() as u64,
            );
            let missing: Vec<u32> = sold_pg
                .keys()
                .filter(|k| !sold_redis.contains_key(k))
                .copied()
                .collect();
            let extra: Vec<u32> = sold_redis
                .keys()
                .filter(|k| !sold_pg.contains_key(k))
                .copied()
                .collect();
            if !missing.is_empty() {
                r.fail(
                    "redis_pg_sold",
                    format!("{at}: sold in PostgreSQL but not in Redis: {missing:?}"),
                );
            }
            if !extra.is_empty() {
                r.fail(
                    "redis_pg_sold",
                    format!("{at}: sold in Redis without a payment: {extra:?}"),
                );
            }
            for (seat, pg_id) in &sold_pg {
                if let Some(redis_id) = sold_redis.get(seat)
                    && *redis_id != Some(*pg_id)
                {
                    let shown = c
                        .sold
                        .iter()
                        .find(|(n, _)| n == seat)
                        .map_or("", |(_, p)| p.as_str());
                    r.fail(
                        "redis_pg_sold",
                        format!(
                            "{at}: seat {seat} is sold to payment {shown} in Redis but to {pg_id} in PostgreSQL"
                        ),
                    );
                }
            }
        }
    }
    Ok(r.finish())
}

/// The checks that read PostgreSQL only.
async fn pg_checks(pg: &Pg, r: &mut Report) -> anyhow::Result<()> {
    let (payments, seats): (i64, i64) = pg
        .guard(
            sqlx::query_as(
                r"select count(*), coalesce(sum(cardinality(seats)), 0)::bigint from payments",
            )
            .fetch_one(pg.pool()),
        )
        .await?;
    let doubles: Vec<(String, String, i32, i64)> = pg
        .guard(
            sqlx::query_as(
                r"select event_id, schedule_id, s, count(*) from payments, unnest(seats) s
                  where refunded_at is null
                  group by 1, 2, 3 having count(*) > 1",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    r.examined("no_double_sale", seats as u64);
    for (e, s, seat, n) in &doubles {
        r.fail(
            "no_double_sale",
            format!("seat {seat} of {e}/{s} is in {n} payments"),
        );
    }

    let out_of_range: Vec<(String, String, i32, i32)> = pg
        .guard(
            sqlx::query_as(
                r"select p.event_id, p.schedule_id, s, sc.seats
                  from payments p join schedules sc using (event_id, schedule_id), unnest(p.seats) s
                  where s < 1 or s > sc.seats
                  union all
                  select ss.event_id, ss.schedule_id, ss.seat_no, sc.seats
                  from sold_seats ss join schedules sc using (event_id, schedule_id)
                  where ss.seat_no < 1 or ss.seat_no > sc.seats",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    r.examined("pg_seat_range", seats as u64);
    for (e, s, seat, n) in &out_of_range {
        r.fail(
            "pg_seat_range",
            format!("{e}/{s}: seat {seat} sold, outside 1..{n}"),
        );
    }

    let wallets: i64 = pg
        .guard(sqlx::query_scalar("select count(*) from wallets").fetch_one(pg.pool()))
        .await?;
    let drift: Vec<(String, Decimal, Decimal)> = pg
        .guard(
            sqlx::query_as(
                r"select w.user_id, w.balance, coalesce(sum(l.amount), 0)
                  from wallets w left join ledger l on l.user_id = w.user_id
                  group by w.user_id, w.balance
                  having w.balance <> coalesce(sum(l.amount), 0) or w.balance < 0",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    r.examined("wallet_ledger", wallets as u64);
    for (user, balance, sum) in &drift {
        r.fail(
            "wallet_ledger",
            format!("wallet {user}: balance {balance} but ledger sum {sum}"),
        );
    }

    let wrong_amount: Vec<(String, String, Uuid, Decimal, Decimal, i32)> = pg
        .guard(
            sqlx::query_as(
                r"select p.event_id, p.schedule_id, p.payment_id, p.amount, sc.price,
                         cardinality(p.seats)
                  from payments p join schedules sc using (event_id, schedule_id)
                  where p.amount <> sc.price * cardinality(p.seats)",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    r.examined("payment_amount", payments as u64);
    for (e, s, p, amount, price, n) in &wrong_amount {
        r.fail(
            "payment_amount",
            format!(
                "{e}/{s}: payment {p}: amount {} but price {} × {n} seats",
                amount.normalize(),
                price.normalize()
            ),
        );
    }

    // A free payment (amount 0) moves no money and has no ledger row.
    // (event, schedule, payment, ledger rows, their sum); no event for a
    // ledger row whose payment does not exist.
    type LedgerRow = (Option<String>, Option<String>, String, i64, Decimal);
    let wrong_ledger: Vec<LedgerRow> = pg
        .guard(
            sqlx::query_as(
                r"select p.event_id, p.schedule_id, coalesce(p.payment_id, l.payment_id)::text,
                         count(l.seq), coalesce(sum(l.amount), 0)
                  from payments p
                  full join (select * from ledger where kind = 'payment') l
                    on l.payment_id = p.payment_id
                  group by p.event_id, p.schedule_id, coalesce(p.payment_id, l.payment_id), p.amount
                  having p.amount is null
                      or (p.amount > 0 and (count(l.seq) <> 1 or sum(l.amount) <> -p.amount))
                      or (p.amount = 0 and count(l.seq) <> 0)",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    r.examined("payment_ledger", payments as u64);
    for (e, s, p, rows, sum) in &wrong_ledger {
        let at = match (e, s) {
            (Some(e), Some(s)) => format!("{e}/{s}: payment {p}"),
            _ => format!("no payment {p}"),
        };
        r.fail(
            "payment_ledger",
            format!("{at}: {rows} ledger rows summing to {}", sum.normalize()),
        );
    }

    // (event, schedule, payment, refunds rows, refund ledger rows, their sum)
    type RefundRow = (String, String, String, i64, i64, Decimal);
    let wrong_refunds: Vec<RefundRow> = pg
        .guard(
            sqlx::query_as(
                r"select p.event_id, p.schedule_id, p.payment_id::text,
                         (select count(*) from refunds r where r.payment_id = p.payment_id),
                         count(l.seq), coalesce(sum(l.amount), 0)
                  from payments p
                  left join ledger l on l.payment_id = p.payment_id and l.kind = 'refund'
                  group by p.event_id, p.schedule_id, p.payment_id, p.amount, p.refunded_at
                  having (p.refunded_at is null and (count(l.seq) <> 0
                            or exists (select 1 from refunds r where r.payment_id = p.payment_id)))
                      or (p.refunded_at is not null and (
                            (select count(*) from refunds r where r.payment_id = p.payment_id) <> 1
                            or (p.amount > 0 and (count(l.seq) <> 1 or sum(l.amount) <> p.amount))
                            or (p.amount = 0 and count(l.seq) <> 0)))",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    r.examined("refund_ledger", payments as u64);
    for (e, s, p, refunds, rows, sum) in &wrong_refunds {
        r.fail(
            "refund_ledger",
            format!(
                "{e}/{s}: payment {p}: {refunds} refunds, {rows} refund ledger rows summing to {}",
                sum.normalize()
            ),
        );
    }

    let over: Vec<(String, String, String, i64, i32)> = pg
        .guard(
            sqlx::query_as(
                r"select p.event_id, p.schedule_id, p.user_id,
                         sum(cardinality(p.seats))::bigint, sc.max_per_user
                  from payments p join schedules sc using (event_id, schedule_id)
                  where p.refunded_at is null
                  group by 1, 2, 3, sc.max_per_user
                  having sum(cardinality(p.seats)) > sc.max_per_user",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    r.examined("pg_max_per_user", payments as u64);
    for (e, s, user, n, max) in &over {
        r.fail(
            "pg_max_per_user",
            format!("{e}/{s}: {user} bought {n} seats, above max_per_user {max}"),
        );
    }

    // Once a flag on the payment row, "not rolled up yet" is now a row of
    // its own, so a payment can be lost from the sales report (a payment
    // recorded without it) or counted twice: per schedule, the rollup
    // plus the tail must count what the payments count, and every tail row
    // must name a payment of its event. One statement, one snapshot (the
    // rollup moves a batch from the tail to the rollup in one commit).
    let miscounted: Vec<(String, String, i64, i64, i64, i64)> = pg
        .guard(
            sqlx::query_as(
                r"with paid as (
                      select event_id, schedule_id, count(*) as n, sum(cardinality(seats))::int8 as seats
                      from payments group by 1, 2
                  ), counted as (
                      select event_id, schedule_id, sum(n)::int8 as n, sum(seats)::int8 as seats from (
                          select event_id, schedule_id, payments as n, seats from sales_hourly
                          union all
                          select p.event_id, p.schedule_id, 1, cardinality(p.seats)
                          from payments_not_rolled_up t join payments p using (payment_id)
                          where p.event_id = t.event_id
                      ) x group by 1, 2
                  )
                  select event_id, schedule_id, coalesce(a.n, 0), coalesce(a.seats, 0),
                         coalesce(b.n, 0), coalesce(b.seats, 0)
                  from paid a full join counted b using (event_id, schedule_id)
                  where coalesce(a.n, 0) <> coalesce(b.n, 0) or coalesce(a.seats, 0) <> coalesce(b.seats, 0)
                  union all
                  select t.event_id, '(a tail row of payment ' || t.payment_id || ')', 0, 0, 1, 0
                  from payments_not_rolled_up t left join payments p using (payment_id)
                  where p.payment_id is null or p.event_id <> t.event_id",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    r.examined("sales_counted", payments as u64);
    for (e, s, paid, seats, counted, counted_seats) in &miscounted {
        r.fail(
            "sales_counted",
            format!(
                "{e}/{s}: {paid} payments of {seats} seats, the rollup and its tail count {counted} of {counted_seats}"
            ),
        );
    }
    Ok(())
}
