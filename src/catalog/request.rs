//! Admin request bodies for the catalog, parsed into domain types.
//! Every field error is collected so one 422 names all of them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{Event, QueueSettings, Schedule, admission};
use crate::{
    fair::{FairStart, SaleWindow},
    ids::{EventId, ScheduleId},
    money::{Currency, Money},
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewQueue {
    /// Users admitted per second at most (1..100000).
    pub admit_per_second: i64,
    /// Admitted users at one time at most (1..10000000).
    pub max_active: i64,
    /// How long an admitted user may shop (1..86400 s).
    pub active_ttl_seconds: i64,
    /// A waiting entry not polled for this long is dropped (2..86400 s).
    pub idle_timeout_seconds: i64,
    /// Start with admission paused (joins still wait in line).
    #[serde(default)]
    pub paused: bool,
    /// `fixed` (default: admit `admit_per_second`) or `auto` (the
    /// autopilot steers the rate between the bounds below to keep admitted
    /// buyers' p99 under `target_p99_ms`; see docs/QUEUE.md).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "auto")]
    pub admission_mode: Option<String>,
    /// The autopilot's target for admitted buyers' p99 latency (1..60000
    /// ms; default 50).
    #[serde(default)]
    pub target_p99_ms: Option<i64>,
    /// The autopilot never admits fewer per second (1..100000; default 1).
    #[serde(default)]
    pub min_admit_per_second: Option<i64>,
    /// The autopilot never admits more per second (1..100000, at least the
    /// minimum; default `admit_per_second`).
    #[serde(default)]
    pub max_admit_per_second: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    pub schedule_id: String,
    /// RFC 3339 timestamp.
    pub starts_at: String,
    /// Seats numbered 1..seats (1..100000).
    pub seats: i64,
    /// Seats per row (rows A, B, ...).
    pub row_size: i64,
    /// Price per seat, a decimal string in the service currency.
    pub price: String,
    /// How long a hold lasts (1..3600 s).
    pub hold_seconds: i64,
    /// Seats one user may hold plus buy in this schedule (1..100).
    pub max_per_user: i64,
    /// Free seats at or below which `schedule.low_availability` is
    /// announced (0..seats; default 10 % of the seats).
    #[serde(default)]
    pub low_seats_threshold: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    pub event_id: String,
    pub name: String,
    pub queue: NewQueue,
    pub schedules: Vec<NewSchedule>,
    /// Optional sale window (fair start).
    #[serde(default)]
    pub sale: Option<SaleFields>,
    /// Optional proof of work on joins.
    #[serde(default)]
    pub challenge: Option<ChallengeFields>,
    /// The admission mode at the top level, as SPEC section 3 (Admin)
    /// writes the create body: the same as `queue.admission_mode`; giving
    /// both with different values is refused.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "auto")]
    pub admission_mode: Option<String>,
}

/// A sale window: RFC 3339 times, each optional. In a PATCH, an absent
/// field is unchanged and `null` removes the time.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaleFields {
    /// Joins from here until `opens_at` wait in the pre-queue.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub prequeue_opens_at: Option<serde_json::Value>,
    /// The draw, and joins in join order after it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub opens_at: Option<serde_json::Value>,
    /// No joins after this (admitted users may finish).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub closes_at: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeFields {
    /// Leading zero bits of sha256(challenge ‖ nonce) a join needs (0..28; 0 = off).
    pub difficulty_bits: i64,
}

/// `PATCH /v1/admin/events/{id}`: the fair-start settings.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventPatch {
    #[serde(default)]
    pub sale: Option<SaleFields>,
    #[serde(default)]
    pub challenge: Option<ChallengeFields>,
}

/// One sale time from a request: `None` = absent (unchanged), `Some(None)`
/// = null (no such time).
fn sale_time(
    field: &str,
    v: Option<&serde_json::Value>,
    e: &mut Errors,
) -> Option<Option<DateTime<Utc>>> {
    match v? {
        serde_json::Value::Null => Some(None),
        serde_json::Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(Some(t.with_timezone(&Utc))),
            Err(_) => {
                e.0.push(format!(
                    "sale.{field} must be an RFC 3339 timestamp or null"
                ));
                None
            }
        },
        _ => {
            e.0.push(format!(
                "sale.{field} must be an RFC 3339 timestamp or null"
            ));
            None
        }
    }
}

/// Applies sale fields over `current`; `now` (Redis time) decides what
/// has passed. A time that has passed cannot be changed, and a new time
/// cannot be in the past (changing it then would rewrite history).
fn apply_sale(
    f: &SaleFields,
    current: SaleWindow,
    now: Option<DateTime<Utc>>,
    e: &mut Errors,
) -> SaleWindow {
    let mut w = current;
    type Field<'a> = (
        &'a str,
        Option<&'a serde_json::Value>,
        &'a mut Option<DateTime<Utc>>,
    );
    let fields: [Field<'_>; 3] = [
        (
            "prequeue_opens_at",
            f.prequeue_opens_at.as_ref(),
            &mut w.prequeue_opens_at,
        ),
        ("opens_at", f.opens_at.as_ref(), &mut w.opens_at),
        ("closes_at", f.closes_at.as_ref(), &mut w.closes_at),
    ];
    for (name, raw, slot) in fields {
        let Some(new) = sale_time(name, raw, e) else {
            continue;
        };
        if new == *slot {
            continue;
        }
        if let Some(now) = now {
            if slot.is_some_and(|t| t <= now) {
                e.0.push(format!("sale.{name} has passed and can no longer change"));
                continue;
            }
            if new.is_some_and(|t| t < now - chrono::Duration::seconds(1)) {
                e.0.push(format!("sale.{name} must not be in the past"));
                continue;
            }
        }
        *slot = new;
    }
    if let Err(msg) = w.check() {
        e.0.push(msg);
    }
    w
}

fn difficulty(c: &ChallengeFields, e: &mut Errors) -> u8 {
    let max = crate::fair::MAX_DIFFICULTY_BITS;
    e.range("challenge.difficulty_bits", c.difficulty_bits, 0, max) as u8
}

impl EventPatch {
    /// Applies the patch; `now` is Redis time.
    ///
    /// # Errors
    /// An empty patch, a bad or passed time, or a bad difficulty.
    pub fn apply(&self, current: &FairStart, now: DateTime<Utc>) -> Result<FairStart, Vec<String>> {
        let mut e = Errors(Vec::new());
        if self.sale.is_none() && self.challenge.is_none() {
            return Err(vec![
                "the patch changes nothing; give sale or challenge".into(),
            ]);
        }
        let mut f = current.clone();
        if let Some(s) = &self.sale {
            f.sale = apply_sale(s, current.sale, Some(now), &mut e);
        }
        if let Some(c) = &self.challenge {
            f.difficulty_bits = difficulty(c, &mut e);
        }
        if e.0.is_empty() { Ok(f) } else { Err(e.0) }
    }
}

/// `PATCH /v1/admin/events/{id}/queue`: any subset of the settings.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuePatch {
    pub admit_per_second: Option<i64>,
    pub max_active: Option<i64>,
    pub active_ttl_seconds: Option<i64>,
    pub idle_timeout_seconds: Option<i64>,
    pub paused: Option<bool>,
    /// `fixed` or `auto`.
    #[schema(value_type = Option<String>, example = "auto")]
    pub admission_mode: Option<String>,
    pub target_p99_ms: Option<i64>,
    pub min_admit_per_second: Option<i64>,
    pub max_admit_per_second: Option<i64>,
}

struct Errors(Vec<String>);

impl Errors {
    fn range(&mut self, field: &str, v: i64, lo: i64, hi: i64) -> u32 {
        if (lo..=hi).contains(&v) {
            v as u32
        } else {
            self.0
                .push(format!("{field} must be between {lo} and {hi}"));
            0
        }
    }
}

const MAX_SCHEDULES: usize = 50;

/// Highest `admit_per_second` (and autopilot bound).
const MAX_ADMIT_PER_SECOND: i64 = 100_000;

/// The autopilot's settings; absent fields take their defaults (`fixed`,
/// 50 ms, 1, `admit_per_second`).
fn autopilot_settings(q: &NewQueue, e: &mut Errors) -> admission::Settings {
    let mode = match q.admission_mode.as_deref() {
        None => admission::Mode::Fixed,
        Some(m) => admission::Mode::from_request(m).unwrap_or_else(|| {
            e.0.push("queue.admission_mode must be \"fixed\" or \"auto\"".into());
            admission::Mode::Fixed
        }),
    };
    let target_p99_ms = e.range(
        "queue.target_p99_ms",
        q.target_p99_ms
            .unwrap_or(admission::DEFAULT_TARGET_P99_MS.into()),
        1,
        60_000,
    );
    let min = q.min_admit_per_second.unwrap_or(1);
    let max = q.max_admit_per_second.unwrap_or(q.admit_per_second);
    let min_admit_per_second = e.range("queue.min_admit_per_second", min, 1, MAX_ADMIT_PER_SECOND);
    let max_admit_per_second = e.range("queue.max_admit_per_second", max, 1, MAX_ADMIT_PER_SECOND);
    if min_admit_per_second > 0 && max_admit_per_second > 0 && min > max {
        e.0.push("queue.min_admit_per_second must not exceed queue.max_admit_per_second".into());
    }
    admission::Settings {
        mode,
        target_p99_ms,
        min_admit_per_second,
        max_admit_per_second,
    }
}

fn queue_settings(q: &NewQueue, e: &mut Errors) -> QueueSettings {
    QueueSettings {
        admit_per_second: e.range(
            "queue.admit_per_second",
            q.admit_per_second,
            1,
            MAX_ADMIT_PER_SECOND,
        ),
        max_active: e.range("queue.max_active", q.max_active, 1, 10_000_000),
        active_ttl_seconds: e.range("queue.active_ttl_seconds", q.active_ttl_seconds, 1, 86_400),
        idle_timeout_seconds: e.range(
            "queue.idle_timeout_seconds",
            q.idle_timeout_seconds,
            2,
            86_400,
        ),
        paused: q.paused,
        autopilot: autopilot_settings(q, e),
    }
}

impl NewEvent {
    /// # Errors
    /// Every invalid field, described.
    pub fn parse(self, currency: Currency) -> Result<Event, Vec<String>> {
        let mut e = Errors(Vec::new());
        let event_id = EventId::parse(&self.event_id)
            .map_err(|err| e.0.push(err.to_string()))
            .ok();
        let name = self.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            e.0.push("name must be 1 to 200 characters".into());
        }
        // PostgreSQL text cannot hold NUL, and no control character
        // belongs in a name shown to buyers.
        if name.chars().any(char::is_control) {
            e.0.push("name must not contain control characters".into());
        }
        let mut queue_fields = self.queue;
        match (&self.admission_mode, &queue_fields.admission_mode) {
            (Some(top), Some(inner)) if top != inner => {
                e.0.push("admission_mode and queue.admission_mode differ: give one of them".into())
            }
            (Some(top), _) => queue_fields.admission_mode = Some(top.clone()),
            (None, _) => {}
        }
        let queue = queue_settings(&queue_fields, &mut e);
        if self.schedules.is_empty() || self.schedules.len() > MAX_SCHEDULES {
            e.0.push(format!(
                "schedules must list 1 to {MAX_SCHEDULES} schedules"
            ));
        }
        let mut schedules = Vec::with_capacity(self.schedules.len());
        for (i, s) in self.schedules.iter().enumerate() {
            let f = |name: &str| format!("schedules[{i}].{name}");
            let schedule_id = ScheduleId::parse(&s.schedule_id)
                .map_err(|err| e.0.push(format!("schedules[{i}]: {err}")))
                .ok();
            if schedule_id.is_some()
                && self.schedules[..i]
                    .iter()
                    .any(|o| o.schedule_id == s.schedule_id)
            {
                e.0.push(format!("{} is duplicated", f("schedule_id")));
            }
            let starts_at = DateTime::parse_from_rfc3339(&s.starts_at)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    e.0.push(format!("{} must be an RFC 3339 timestamp", f("starts_at")))
                })
                .ok();
            let seats = e.range(&f("seats"), s.seats, 1, 100_000);
            let row_size = e.range(&f("row_size"), s.row_size, 1, s.seats.clamp(1, 100_000));
            // "0" is a free schedule (a first-come signup); any other price
            // is an amount like a charge.
            let price = if s.price == "0" {
                Some(Decimal::ZERO)
            } else {
                Money::parse_amount(&s.price, currency, Decimal::from(1_000_000_000_i64))
                    .map(|m| m.amount())
                    .map_err(|err| e.0.push(format!("{}: {err}", f("price"))))
                    .ok()
            };
            let hold_seconds = e.range(&f("hold_seconds"), s.hold_seconds, 1, 3_600);
            let max_per_user = e.range(&f("max_per_user"), s.max_per_user, 1, 100);
            let low_seats_threshold = match s.low_seats_threshold {
                Some(t) => e.range(&f("low_seats_threshold"), t, 0, s.seats.clamp(0, 100_000)),
                None => seats / 10,
            };
            if let (Some(schedule_id), Some(starts_at), Some(price)) =
                (schedule_id, starts_at, price)
            {
                schedules.push(Schedule {
                    schedule_id,
                    starts_at,
                    seats,
                    row_size,
                    price,
                    hold_seconds,
                    max_per_user,
                    low_seats_threshold,
                });
            }
        }
        let mut fair = FairStart::new();
        if let Some(sale) = &self.sale {
            fair.sale = apply_sale(sale, SaleWindow::default(), None, &mut e);
        }
        if let Some(c) = &self.challenge {
            fair.difficulty_bits = difficulty(c, &mut e);
        }
        match event_id {
            Some(event_id) if e.0.is_empty() => Ok(Event {
                event_id,
                name,
                queue,
                schedules,
                fair,
            }),
            _ => Err(e.0),
        }
    }
}

impl QueuePatch {
    /// Applies the patch to the current settings.
    ///
    /// # Errors
    /// An empty patch or an out-of-range value.
    pub fn apply(&self, current: &QueueSettings) -> Result<QueueSettings, Vec<String>> {
        let mut e = Errors(Vec::new());
        if self.admit_per_second.is_none()
            && self.max_active.is_none()
            && self.active_ttl_seconds.is_none()
            && self.idle_timeout_seconds.is_none()
            && self.paused.is_none()
            && self.admission_mode.is_none()
            && self.target_p99_ms.is_none()
            && self.min_admit_per_second.is_none()
            && self.max_admit_per_second.is_none()
        {
            return Err(vec![
                "the patch changes nothing; give at least one setting".into(),
            ]);
        }
        let q = NewQueue {
            admit_per_second: self
                .admit_per_second
                .unwrap_or(current.admit_per_second.into()),
            max_active: self.max_active.unwrap_or(current.max_active.into()),
            active_ttl_seconds: self
                .active_ttl_seconds
                .unwrap_or(current.active_ttl_seconds.into()),
            idle_timeout_seconds: self
                .idle_timeout_seconds
                .unwrap_or(current.idle_timeout_seconds.into()),
            paused: self.paused.unwrap_or(current.paused),
            admission_mode: Some(
                self.admission_mode
                    .clone()
                    .unwrap_or_else(|| current.autopilot.mode.as_str().to_owned()),
            ),
            target_p99_ms: Some(
                self.target_p99_ms
                    .unwrap_or(current.autopilot.target_p99_ms.into()),
            ),
            min_admit_per_second: Some(
                self.min_admit_per_second
                    .unwrap_or(current.autopilot.min_admit_per_second.into()),
            ),
            max_admit_per_second: Some(
                self.max_admit_per_second
                    .unwrap_or(current.autopilot.max_admit_per_second.into()),
            ),
        };
        let s = queue_settings(&q, &mut e);
        if e.0.is_empty() { Ok(s) } else { Err(e.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krw() -> Currency {
        Currency::from_code("KRW").unwrap()
    }

    fn good() -> NewEvent {
        NewEvent {
            event_id: "e1".into(),
            name: "Concert".into(),
            queue: NewQueue {
                admit_per_second: 10,
                max_active: 100,
                active_ttl_seconds: 600,
                idle_timeout_seconds: 30,
                paused: false,
                admission_mode: None,
                target_p99_ms: None,
                min_admit_per_second: None,
                max_admit_per_second: None,
            },
            schedules: vec![NewSchedule {
                schedule_id: "d1".into(),
                starts_at: "2026-12-24T20:00:00+09:00".into(),
                seats: 50,
                row_size: 10,
                price: "12000".into(),
                hold_seconds: 300,
                max_per_user: 4,
                low_seats_threshold: None,
            }],
            sale: None,
            challenge: None,
            admission_mode: None,
        }
    }

    #[test]
    fn parses_a_good_event() {
        let ev = good().parse(krw()).unwrap();
        assert_eq!(ev.schedules[0].price, Decimal::from(12000));
        assert_eq!(
            ev.schedules[0].starts_at.to_rfc3339(),
            "2026-12-24T11:00:00+00:00"
        );
    }

    #[test]
    fn takes_the_admission_mode_at_the_top_level_as_the_spec_writes_it() {
        let mut ev = good();
        ev.admission_mode = Some("auto".into());
        let parsed = ev.parse(krw()).unwrap();
        assert_eq!(parsed.queue.autopilot.mode, admission::Mode::Auto);

        let mut ev = good();
        ev.admission_mode = Some("auto".into());
        ev.queue.admission_mode = Some("fixed".into());
        let errs = ev.parse(krw()).unwrap_err().join("; ");
        assert!(
            errs.contains("admission_mode and queue.admission_mode differ"),
            "{errs}"
        );

        let mut ev = good();
        ev.admission_mode = Some("turbo".into());
        let errs = ev.parse(krw()).unwrap_err().join("; ");
        assert!(errs.contains("queue.admission_mode"), "{errs}");
    }

    #[test]
    fn names_every_bad_field() {
        let mut ev = good();
        ev.queue.max_active = 0;
        ev.schedules[0].price = "12.5".into();
        ev.schedules[0].row_size = 51;
        ev.schedules.push(NewSchedule {
            schedule_id: "d1".into(),
            ..good().schedules.remove(0)
        });
        let errs = ev.parse(krw()).unwrap_err();
        let all = errs.join("; ");
        for needle in [
            "queue.max_active",
            "schedules[0].price",
            "schedules[0].row_size",
            "schedules[1].schedule_id is duplicated",
        ] {
            assert!(all.contains(needle), "{all} lacks {needle}");
        }
    }

    #[test]
    fn patch_needs_a_change_and_checks_ranges() {
        let cur = good().parse(krw()).unwrap().queue;
        assert!(QueuePatch::default().apply(&cur).is_err());
        let p = QueuePatch {
            paused: Some(true),
            ..Default::default()
        };
        assert!(p.apply(&cur).unwrap().paused);
        let p = QueuePatch {
            admit_per_second: Some(0),
            ..Default::default()
        };
        assert!(p.apply(&cur).is_err());
    }

    #[test]
    fn autopilot_settings_default_and_validate() {
        let cur = good().parse(krw()).unwrap().queue;
        assert_eq!(cur.autopilot, admission::Settings::fixed(10));
        let p = QueuePatch {
            admission_mode: Some("auto".into()),
            min_admit_per_second: Some(2),
            ..Default::default()
        };
        let s = p.apply(&cur).unwrap().autopilot;
        assert_eq!(s.mode, admission::Mode::Auto);
        assert_eq!((s.min_admit_per_second, s.max_admit_per_second), (2, 10));
        assert_eq!(s.target_p99_ms, 50);
        for (patch, needle) in [
            (
                QueuePatch {
                    admission_mode: Some("turbo".into()),
                    ..Default::default()
                },
                "queue.admission_mode",
            ),
            (
                QueuePatch {
                    min_admit_per_second: Some(11),
                    ..Default::default()
                },
                "must not exceed",
            ),
            (
                QueuePatch {
                    max_admit_per_second: Some(100_001),
                    ..Default::default()
                },
                "queue.max_admit_per_second must be between",
            ),
            (
                QueuePatch {
                    target_p99_ms: Some(0),
                    ..Default::default()
                },
                "queue.target_p99_ms",
            ),
        ] {
            let all = patch.apply(&cur).unwrap_err().join("; ");
            assert!(all.contains(needle), "{all} lacks {needle}");
        }
    }
}
