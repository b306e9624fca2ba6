//! The public event list (`GET /v1/events`), cached in-process.
//!
//! Every poll of the list used to cost one SMEMBERS plus one HGET per event.
//! The list changes only when an admin creates an event, so each instance
//! keeps the answer for a second or two (`BOXOFFICE_CATALOG_CACHE_MS`) and
//! forgets it when this instance creates an event; another instance's new
//! event shows up within that time.
//!
//! When Redis is unavailable the list is read from PostgreSQL, where the
//! catalog is defined, and marked `"stale": true` (the definitions are
//! current; what may be stale is that Redis, which the queue and holds use,
//! has not got them back yet).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    catalog,
    store::{StoreError, pg::Pg, redis::Redis},
};

#[derive(Debug, Default)]
pub struct PublicCatalog {
    cached: Mutex<Option<(Instant, Value)>>,
}

impl PublicCatalog {
    /// The list, from the cache when younger than `ttl`, else from Redis,
    /// else (Redis down) from PostgreSQL with `"stale": true`.
    ///
    /// # Errors
    /// Both Redis and PostgreSQL unavailable.
    pub async fn get(&self, redis: &Redis, pg: &Pg, ttl: Duration) -> Result<Value, StoreError> {
        if let Some((at, v)) = &*self.cached.lock().expect("lock")
            && at.elapsed() < ttl
        {
            return Ok(v.clone());
        }
        let answer = match catalog::public_list(redis).await {
            Ok(events) => json!({ "events": events }),
            Err(e @ StoreError::Unavailable { .. }) => {
                tracing::debug!(error = %e, "event list from PostgreSQL (Redis unavailable)");
                let events = catalog::pg::all(pg).await?;
                let list: Vec<Value> = events.iter().map(catalog::Event::public_json).collect();
                json!({ "events": list, "stale": true })
            }
            Err(e) => return Err(e),
        };
        *self.cached.lock().expect("lock") = Some((Instant::now(), answer.clone()));
        Ok(answer)
    }

    /// Forgets the cached list (an event was created here).
    pub fn invalidate(&self) {
        *self.cached.lock().expect("lock") = None;
    }
}
