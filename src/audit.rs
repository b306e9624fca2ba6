//! `boxoffice audit`: checks the invariants against the live stores after
//! a load test (or any time); exits non-zero on any violation. It changes
//! nothing of substance: like `serve` it applies pending migrations, and
//! reading a seat map expires due holds, as every read does.
//!
//! - no seat is sold twice (PostgreSQL payments);
//! - every seat sold in PostgreSQL is `sold` in Redis, and Redis sells
//!   nothing PostgreSQL has not;
//! - every wallet's balance equals its ledger sum and is not negative;
//! - seats sold never exceed seats offered;
//! - the admitted count never exceeded `max_active` (peak kept by the
//!   admission scripts; compared with the current setting, so lowering
//!   `max_active` after a sale can report a violation that was none).

use std::collections::BTreeSet;

use rust_decimal::Decimal;

use crate::{
    catalog, holds, queue,
    store::{pg::Pg, redis::Redis},
};

/// The audit's findings.
#[derive(Debug, Default)]
pub struct Audit {
    pub checked: Vec<String>,
    pub violations: Vec<String>,
}

/// Runs every check.
///
/// # Errors
/// A store is unavailable.
pub async fn run(pg: &Pg, redis: &Redis) -> anyhow::Result<Audit> {
    let mut a = Audit::default();

    let doubles: Vec<(String, String, i32, i64)> = pg
        .guard(
            sqlx::query_as(
                r"select event_id, schedule_id, s, count(*) from payments, unnest(seats) s
                  group by 1, 2, 3 having count(*) > 1",
            )
            .fetch_all(pg.pool()),
        )
        .await?;
    for (e, s, seat, n) in &doubles {
        a.violations
            .push(format!("seat {seat} of {e}/{s} is in {n} payments"));
    }
    a.checked.push("no seat is sold twice".into());

    let wallets: Vec<(String, Decimal, Decimal)> = pg
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
    for (user, balance, sum) in &wallets {
        a.violations.push(format!(
            "wallet {user}: balance {balance} but ledger sum {sum}"
        ));
    }
    a.checked
        .push("every balance equals its ledger sum and is not negative".into());

    for ev in catalog::pg::all(pg).await? {
        for s in &ev.schedules {
            let sold_pg: BTreeSet<u32> = pg
                .guard(
                    sqlx::query_scalar::<_, i32>(
                        r"select seat_no from sold_seats where event_id = $1 and schedule_id = $2",
                    )
                    .bind(ev.event_id.as_str())
                    .bind(s.schedule_id.as_str())
                    .fetch_all(pg.pool()),
                )
                .await?
                .into_iter()
                .map(|n| n as u32)
                .collect();
            let sold: Vec<u32> = holds::sold_seats(redis, &ev.event_id, &s.schedule_id)
                .await
                .map_err(|e| anyhow::anyhow!("{}/{}: {e}", ev.event_id, s.schedule_id))?;
            let sold_redis: BTreeSet<u32> = sold.iter().copied().collect();
            let missing: Vec<_> = sold_pg.difference(&sold_redis).collect();
            let extra: Vec<_> = sold_redis.difference(&sold_pg).collect();
            // The seat map buyers see is kept beside the seats hash; it
            // must show exactly the sold seats.
            let map = holds::seat_map(redis, &ev.event_id, &s.schedule_id, None)
                .await
                .map_err(|e| anyhow::anyhow!("{}/{}: {e}", ev.event_id, s.schedule_id))?;
            let shown: BTreeSet<u32> = map.sold().collect();
            if shown != sold_redis {
                a.violations.push(format!(
                    "{}/{}: the seat map shows sold {:?} but the seats hash has {:?}",
                    ev.event_id,
                    s.schedule_id,
                    shown.difference(&sold_redis).collect::<Vec<_>>(),
                    sold_redis.difference(&shown).collect::<Vec<_>>()
                ));
            }
            if !missing.is_empty() {
                a.violations.push(format!(
                    "{}/{}: sold in PostgreSQL but not in Redis: {missing:?}",
                    ev.event_id, s.schedule_id
                ));
            }
            if !extra.is_empty() {
                a.violations.push(format!(
                    "{}/{}: sold in Redis without a payment: {extra:?}",
                    ev.event_id, s.schedule_id
                ));
            }
            if sold_pg.len() > s.seats as usize || sold.len() > s.seats as usize {
                a.violations.push(format!(
                    "{}/{}: more seats sold than offered",
                    ev.event_id, s.schedule_id
                ));
            }
        }
        let f = queue::figures(redis, &ev.event_id)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", ev.event_id))?;
        if f.peak_active > u64::from(ev.queue.max_active) {
            a.violations.push(format!(
                "{}: {} admitted at once, above max_active {}",
                ev.event_id, f.peak_active, ev.queue.max_active
            ));
        }
    }
    a.checked
        .push("Redis and PostgreSQL agree on every sold seat".into());
    a.checked
        .push("seats sold never exceed seats offered".into());
    a.checked.push("admitted never exceeded max_active".into());
    Ok(a)
}
