//! Requests that move money run to their end, whoever stops waiting for
//! them.
//!
//! A handler's future is dropped when its request is abandoned: the client
//! closed its connection (a browser tab, a gateway's timeout), or the
//! request ran out of time ([`super::hygiene::limits`]). Dropped half-way,
//! a payment leaves its hold *paying* with nobody paying it (the buyer
//! loses the seat at the paying deadline), and a keyed charge, payment or
//! refund leaves its `Idempotency-Key` claim open, so every retry meets
//! `409 request_in_progress` until the claim goes stale a minute later.
//!
//! So these requests run on a task of their own ([`to_the_end`]): the
//! handler only waits for it. Dropping the handler drops the wait, not the
//! work, which ends as it would have (every wait in it is bounded by a
//! store's timeout) and stores its answer under the key, where the retry
//! finds it. At shutdown the service waits for them
//! ([`crate::effects::Effects::finish`]).

use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::effects::Effects;

/// Runs `work` (a whole request's answer) on a task of its own and waits
/// for it: dropping this future does not stop `work`. A panic in `work`
/// is this request's panic (answered 500 as any other).
pub async fn to_the_end<F>(effects: Effects, work: F) -> Response
where
    F: Future<Output = Response> + Send + 'static,
{
    match effects.run(work).await {
        Ok(answer) => answer,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Aborted: only when the runtime stops under it, and then
            // nobody reads the answer.
            Err(e) => ApiError::Internal(e.into()).into_response(),
        },
    }
}
