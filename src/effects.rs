//! Work that must run to its end once started, whoever stops waiting for
//! it: the payments, charges and refunds of requests that may be
//! abandoned half-way (`crate::http::to_the_end` says why).

use std::time::Duration;

use tokio::task::JoinError;
use tokio_util::task::TaskTracker;

/// The work of this instance running to its end.
#[derive(Debug, Clone, Default)]
pub struct Effects(TaskTracker);

impl Effects {
    /// Runs `work` on a task of its own and waits for it. Dropping the
    /// returned future drops the wait, not the work.
    ///
    /// # Errors
    /// `work` panicked, or was aborted (only when the runtime stops).
    pub async fn run<T, F>(&self, work: F) -> Result<T, JoinError>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        self.0.spawn(work).await
    }

    /// Waits, at most `limit`, for the work still running; true when none
    /// is left. Work started afterwards still runs (a request drained
    /// late), and is not waited for.
    pub async fn finish(&self, limit: Duration) -> bool {
        self.0.close();
        tokio::time::timeout(limit, self.0.wait()).await.is_ok()
    }
}
