//! Public catalog: `GET /v1/events`.

use super::{ApiResult, schemas::EventList};
use crate::{app::AppState, catalog};
use axum::extract::State;

#[utoipa::path(get, path = "/v1/events", tag = "catalog",
    responses(
        (status = 200, description = "Every event with its schedules and prices", body = EventList),
    ))]
pub async fn list_events(State(state): State<AppState>) -> ApiResult<axum::Json<EventList>> {
    let events = catalog::public_list(&state.redis).await?;
    Ok(axum::Json(EventList { events }))
}
