//! How a schedule is written out, in one place: the public view
//! (`schedule_id`, `starts_at`, `price`) and, for admins and the Redis
//! working copy, its configuration too. Times and amounts go through the
//! one format of each ([`crate::time`], [`crate::money::serde_amount`]).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::Schedule;
use crate::ids::ScheduleId;

/// A schedule as JSON; build it with [`Schedule::public_view`] or
/// [`Schedule::config_view`].
#[derive(Debug, Serialize)]
pub struct ScheduleView<'a> {
    pub schedule_id: &'a ScheduleId,
    #[serde(with = "crate::time::serde_rfc3339_ms")]
    pub starts_at: DateTime<Utc>,
    #[serde(with = "crate::money::serde_amount")]
    pub price: Decimal,
    #[serde(flatten)]
    pub config: Option<ScheduleConfig>,
}

/// What an admin set on a schedule besides its date and price.
#[derive(Debug, Serialize)]
pub struct ScheduleConfig {
    pub seats: u32,
    pub row_size: u32,
    pub hold_seconds: u32,
    pub max_per_user: u32,
    pub low_seats_threshold: u32,
}

impl Schedule {
    /// What anyone may see: `{"schedule_id","starts_at","price"}`.
    pub fn public_view(&self) -> ScheduleView<'_> {
        ScheduleView {
            schedule_id: &self.schedule_id,
            starts_at: self.starts_at,
            price: self.price,
            config: None,
        }
    }

    /// The public view plus the configuration (admin bodies, the Redis
    /// working copy).
    pub fn config_view(&self) -> ScheduleView<'_> {
        ScheduleView {
            config: Some(ScheduleConfig {
                seats: self.seats,
                row_size: self.row_size,
                hold_seconds: self.hold_seconds,
                max_per_user: self.max_per_user,
                low_seats_threshold: self.low_seats_threshold,
            }),
            ..self.public_view()
        }
    }
}
