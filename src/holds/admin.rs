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
    // Revenue and payments that stand (a refund gives the whole amount
    // back), and how many were refunded.
    let sales = crate::payments::sales::per_schedule(&state.pg, &ev.event_id).await?;
    if let Some(list) = body["schedules"].as_array_mut() {
        for (i, s) in list.iter_mut().enumerate() {
            // Not in Redis (being restored): zero live figures.
            let (held, sold, available) = live
                .get(i)
                .filter(|f| !f.missing)
                .map_or((0, 0, 0), |f| (f.held, f.sold, f.available));
            let (revenue, payments, refunded) = sales
                .iter()
                .find(|f| Some(f.schedule_id.as_str()) == s["schedule_id"].as_str())
                .map_or((Decimal::ZERO, 0, 0), |f| {
                    (
                        f.sales.revenue,
                        f.sales.payments - f.payments_refunded,
                        f.payments_refunded,
                    )
                });
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
