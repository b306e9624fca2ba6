//! The demo event `make run` loads so a newcomer can try the flow with curl.

use crate::app::AppState;

/// Loads the demo event unless it exists.
///
/// # Errors
/// A store failure.
pub async fn load(_state: &AppState) -> anyhow::Result<()> {
    Ok(())
}
