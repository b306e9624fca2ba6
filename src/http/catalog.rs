//! Public catalog: `GET /v1/events`.

use axum::extract::State;
use serde_json::{Value, json};

use super::ApiResult;
use crate::{app::AppState, catalog};

#[utoipa::path(get, path = "/v1/events", tag = "catalog",
    responses(
        (status = 200, description = "Every event with its schedules and prices"),
        (status = 503, description = "dependency_unavailable", body = super::openapi::Problem),
    ))]
pub async fn list_events(State(state): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let events = catalog::public_list(&state.redis).await?;
    Ok(axum::Json(json!({ "events": events })))
}
