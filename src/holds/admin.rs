//! Per-schedule figures for the admin view: live counts from Redis,
//! revenue and payments from PostgreSQL.

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::{app::AppState, catalog::Event, http::ApiError, money::format_amount};

/// Adds `held`, `sold`, `available`, `revenue` and `payments` to each
/// schedule of an admin event body; the live ones (from Redis) are 0 while
/// the event is `restoring`.
///
/// # Errors
/// A store is unavailable.
pub async fn add_schedule_figures(
    state: &AppState,
    ev: &Event,
    restoring: bool,
    body: &mut Value,
) -> Result<(), ApiError> {
    let ids: Vec<_> = ev.schedules.iter().map(|s| s.schedule_id.clone()).collect();
    let live = if restoring {
        vec![]
    } else {
        super::overview(&state.redis, &ev.event_id, &ids, None).await?
    };
    // Revenue and payments that stand (refunded ones not counted), and how
    // many were refunded.
    let sales: Vec<(String, Decimal, i64, i64)> = state
        .pg
        .guard(
            sqlx::query_as(
                r"select schedule_id,
                         coalesce(sum(amount) filter (where refunded_at is null), 0),
                         count(*) filter (where refunded_at is null),
                         count(*) filter (where refunded_at is not null)
                  from payments where event_id = $1 group by schedule_id",
            )
            .bind(ev.event_id.as_str())
            .fetch_all(state.pg.pool()),
        )
        .await?;
    if let Some(list) = body["schedules"].as_array_mut() {
        for (i, s) in list.iter_mut().enumerate() {
            // Not in Redis (being restored): zero live figures.
            let (held, sold, available) = live
                .get(i)
                .filter(|f| !f.missing)
                .map_or((0, 0, 0), |f| (f.held, f.sold, f.available));
            let (revenue, payments, refunded) = sales
                .iter()
                .find(|(id, ..)| Some(id.as_str()) == s["schedule_id"].as_str())
                .map_or((Decimal::ZERO, 0, 0), |(_, r, n, f)| (*r, *n, *f));
            s["held"] = json!(held);
            s["sold"] = json!(sold);
            s["available"] = json!(available);
            s["revenue"] = json!(format_amount(revenue));
            s["payments"] = json!(payments);
            s["payments_refunded"] = json!(refunded);
        }
    }
    Ok(())
}
