//! Holds coalesced per schedule ([`crate::store::coalesce`]): when a
//! sale opens, every admitted buyer holds on the same few schedules at
//! once, and the holds of one schedule that arrive while its previous
//! call is in flight go in one call of `lua/place_hold.lua`. The script
//! decides each as if alone, in arrival order, inside one atomic step: a
//! seat taken by one hold of the call is unavailable to the next, a
//! user's second hold counts the first against the limit, and no seat is
//! ever held twice, as with one call per hold.

use super::{Hold, HoldAsk, HoldError};
use crate::{
    ids::{EventId, ScheduleId},
    store::{
        coalesce::{Batch, unavailable},
        redis::Redis,
    },
};

/// Hold placements (`place_hold`), per schedule of an event.
pub struct Holds {
    pub redis: Redis,
}

impl Batch for Holds {
    type Key = (EventId, ScheduleId);
    type Request = HoldAsk;
    type Answer = Result<Hold, HoldError>;
    const SCRIPT: &'static str = "place_hold";

    async fn answer(&self, key: &Self::Key, asks: Vec<HoldAsk>) -> Vec<Self::Answer> {
        super::place(&self.redis, &key.0, &key.1, &asks).await
    }

    fn unavailable(reason: &'static str) -> Self::Answer {
        Err(unavailable(reason).into())
    }
}
