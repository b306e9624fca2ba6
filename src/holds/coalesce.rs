//! Holds coalesced per event ([`crate::store::coalesce`]): when a sale
//! opens, every admitted buyer holds on the event's few schedules at
//! once, and the holds of one event that arrive while its previous call
//! is in flight go in one call of `lua/place_hold.lua`, whichever of its
//! schedules they are for (the event's keys share one hash tag, so one
//! script may touch them all, on Redis Cluster too). The script decides
//! each as if alone, in arrival order, inside one atomic step: a seat
//! taken by one hold of the call is unavailable to the next, a user's
//! second hold on a schedule counts the first against its limit, and no
//! seat is ever held twice, as with one call per hold.

use super::{HoldAsk, HoldError, Placement};
use crate::{
    ids::EventId,
    store::{
        coalesce::{Batch, unavailable},
        redis::Redis,
    },
};

/// Hold placements (`place_hold`), per event.
pub struct Holds {
    pub redis: Redis,
}

impl Batch for Holds {
    type Key = EventId;
    type Request = HoldAsk;
    type Answer = Result<Placement, HoldError>;
    const SCRIPT: &'static str = "place_hold";

    async fn answer(&self, key: &Self::Key, asks: Vec<HoldAsk>) -> Vec<Self::Answer> {
        super::place(&self.redis, key, &asks).await
    }

    fn unavailable(reason: &'static str) -> Self::Answer {
        Err(unavailable(reason).into())
    }
}
