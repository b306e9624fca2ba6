//! Background loops: each runs on every instance, is safe to run
//! concurrently (the Lua scripts are atomic and idempotent), and stops at a
//! safe point (between iterations) when shutdown is requested.

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;

/// Starts every loop; they end when `shutdown` is cancelled.
pub fn spawn_all(_state: &AppState, _shutdown: &CancellationToken, _set: &mut JoinSet<()>) {}
