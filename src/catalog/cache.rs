//! In-process caches of the catalog, each the one owner of its contents:
//! the public event list ([`PublicCatalog`]) and each event's schedule ids
//! ([`ScheduleIds`]).
//!
//! Every poll of the public event list (`GET /v1/events`) used to cost one
//! SMEMBERS plus one HGET per event. The list changes only when an admin
//! creates an event, so each instance keeps the answer for a second or two
//! (`BOXOFFICE_CATALOG_CACHE_MS`) and forgets it when this instance creates
//! an event; another instance's new event shows up within that time.
//!
//! When Redis is unavailable the list is read from PostgreSQL, where the
//! catalog is defined, and marked `"stale": true` (the definitions are
//! current; what may be stale is that Redis, which the queue and holds use,
//! has not got them back yet).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    catalog,
    ids::{EventId, ScheduleId},
    store::{StoreError, pg::Pg, redis::Redis},
};

/// The public event list, kept for `BOXOFFICE_CATALOG_CACHE_MS`.
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

/// The schedule ids of each event, read from Redis once per instance: they
/// never change after the event is created, so availability stays one
/// round trip. Filled by [`ScheduleIds::get_or_load`]; the reconciler
/// forgets an event it restores ([`ScheduleIds::forget`]) and everything
/// after a full rebuild ([`ScheduleIds::clear`]).
#[derive(Debug, Default)]
pub struct ScheduleIds {
    by_event: RwLock<HashMap<EventId, Arc<Vec<ScheduleId>>>>,
}

impl ScheduleIds {
    /// The event's schedule ids, from the cache or else from Redis; `None`
    /// when the event is not in Redis (nothing is cached then).
    ///
    /// # Errors
    /// Redis (the event's shard) unavailable.
    pub async fn get_or_load(
        &self,
        redis: &Redis,
        event: &EventId,
    ) -> Result<Option<Arc<Vec<ScheduleId>>>, StoreError> {
        if let Some(list) = self.by_event.read().expect("lock").get(event) {
            return Ok(Some(list.clone()));
        }
        let Some(list) = catalog::schedule_ids(redis, event).await? else {
            return Ok(None);
        };
        let list = Arc::new(list);
        self.by_event
            .write()
            .expect("lock")
            .insert(event.clone(), list.clone());
        Ok(Some(list))
    }

    /// Forgets one event's ids (it was restored from PostgreSQL).
    pub fn forget(&self, event: &EventId) {
        self.by_event.write().expect("lock").remove(event);
    }

    /// Forgets every event's ids (every event was restored).
    pub fn clear(&self) {
        self.by_event.write().expect("lock").clear();
    }
}
