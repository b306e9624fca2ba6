//! Public catalog: `GET /v1/events`.

use axum::extract::State;
use serde_json::Value;

use super::ApiResult;
use crate::state::AppState;

#[utoipa::path(get, path = "/v1/events", tag = "catalog",
    responses(
        (status = 200, description = "Every event with its schedules and prices (cached for a second or two); with `\"stale\": true` when read from PostgreSQL because Redis is unavailable", body = super::schemas::EventList),
        (status = 503, description = "dependency_unavailable", body = super::openapi::Problem),
    ))]
pub async fn list_events(State(state): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let list = state
        .public_catalog
        .get(&state.redis, &state.pg, state.config.jobs.catalog_cache)
        .await?;
    Ok(axum::Json(list))
}
