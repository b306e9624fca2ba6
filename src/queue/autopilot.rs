//! The admission autopilot: per event, optionally, steers the admission
//! rate so admitted buyers stay fast while the queue absorbs the surge.
//!
//! - **Measure** ([`Autopilot::record`], [`Autopilot::record_pool_wait`]):
//!   the latency of admitted buyers' requests (holds, seat maps, payments:
//!   the routes a queue token opens, see `http::admitted`) per event, and
//!   the PostgreSQL pool's acquire wait (sampled twice a second by a probe),
//!   each in a [`Window`]: two one-second slots of a fixed-bucket
//!   histogram of atomic counters, so recording takes a read lock and two
//!   atomic adds.
//! - **Share** (`lua/autopilot_publish.lua`): once a second every instance
//!   publishes its window per event to Redis (one hash field per instance,
//!   dropped when older than 3 s) and reads everyone's. The controller
//!   uses the p99 of the **merged** histograms (every admitted request of
//!   every instance counts once) and the **worst** instance's pool wait
//!   (each instance has its own pool; one starving pool is enough).
//! - **Decide** ([`decide`], pure): AIMD once per second per event; the
//!   publish script hands the step to exactly one instance per second (Redis
//!   TIME), which writes the new rate beside the event config
//!   (`auto_admit_per_second`, read by `admit_tick` and `join_queue`).
//!
//! See docs/QUEUE.md ("Admission autopilot") for the law and its bounds.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use crate::catalog::admission::{DEFAULT_TARGET_P99_MS, Mode, Settings};
use crate::{
    catalog,
    ids::EventId,
    store::{StoreError, Stores, pg::Pg, redis, redis::Redis},
    telemetry::loop_failed,
};

/// Multiplicative decrease.
pub const DECREASE: f64 = 0.7;
/// p99 below this share of the target (with people waiting) raises the rate.
pub const RAISE_BELOW: f64 = 0.8;
/// Seconds a window covers: short, so a step judges the requests of its
/// own rate and not those of a rate already cut (a 5 s window cut the rate
/// five times for one slow burst: docs/QUEUE.md).
pub const WINDOW_SECONDS: u64 = 2;
/// Near the rate last cut (within this share of it) the rate rises by
/// [`GENTLE_STEP`] of the maximum instead of [`STEP_UP`]: where the rate
/// was too much once, it is approached slowly.
pub const NEAR_CUT: f64 = 0.2;
/// The usual rise per step, as a share of the maximum. Small, because the
/// p99 that judges a rise lags the rate by one to three seconds (buyers
/// admitted now make their requests over the next few), so the rate climbs
/// that long past what is served before a slow p99 shows it: half of the
/// 5 % it was cut the sale's admitted p99 in each of six paired runs
/// (docs/QUEUE.md, docs/bench/surge-17.md, "Ninth run").
pub const STEP_UP: f64 = 0.025;
/// The rise per step near the rate last cut, as a share of the maximum.
pub const GENTLE_STEP: f64 = 0.01;
/// Admitted requests a window needs before its p99 may raise the rate:
/// this many, or one per buyer the window's rate admits (2 × rate) when
/// that is fewer. No requests, or a handful, is no evidence that a higher
/// rate would be served (before `opens_at` nobody is admitted at all, and
/// a rate raised then meets the sale's first second untested:
/// docs/QUEUE.md).
pub const RAISE_EVIDENCE: u64 = 20;
/// How often the control step runs (and each instance publishes).
const STEP: Duration = Duration::from_secs(1);
/// How often the pool probe measures the acquire wait.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A published window older than this is an instance that is gone.
const STALE_MS: u64 = 3_000;

/// What the control law sees each second.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// The rate now.
    pub rate: u32,
    /// Admitted buyers' p99 over the window (ms); `None` when nobody
    /// admitted made a request.
    pub p99_ms: Option<f64>,
    /// How many admitted requests the window holds.
    pub samples: u64,
    /// The PostgreSQL pool's acquire wait p99 (ms), worst instance.
    pub pool_wait_ms: Option<f64>,
    /// Entries waiting in line.
    pub waiting: u64,
    /// The rate the last decrease started from (the rate that was too
    /// much), if the event had one.
    pub cut_from: Option<u32>,
    pub settings: Settings,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Decrease,
    Increase,
    Hold,
}

/// The control law (AIMD): p99 above the target, or the pool's wait above
/// half of it → rate × [`DECREASE`] (not below the minimum); p99 of enough
/// requests ([`RAISE_EVIDENCE`]) under [`RAISE_BELOW`] × target with
/// people waiting → rate + max(1, 2.5 % of the maximum), or + max(1, 1 % of
/// it) while the rate is within 20 % of the rate last cut (not above the
/// maximum); otherwise hold. The result is always within the bounds.
pub fn decide(i: &Inputs) -> (Step, u32) {
    let s = i.settings;
    let rate = s.clamp(i.rate);
    let target = f64::from(s.target_p99_ms);
    let slow = i.p99_ms.is_some_and(|p| p > target);
    let pool_starved = i.pool_wait_ms.is_some_and(|w| w > target / 2.0);
    if slow || pool_starved {
        let cut = (f64::from(rate) * DECREASE).floor() as u32;
        return (Step::Decrease, s.clamp(cut));
    }
    let evidence = RAISE_EVIDENCE.min(2 * u64::from(rate));
    let fast = i.samples >= evidence && i.p99_ms.is_some_and(|p| p < RAISE_BELOW * target);
    if fast && i.waiting > 0 {
        let near_cut = i
            .cut_from
            .is_some_and(|c| (f64::from(rate) - f64::from(c)).abs() <= NEAR_CUT * f64::from(c));
        let share = if near_cut { GENTLE_STEP } else { STEP_UP };
        let step = ((f64::from(s.max_admit_per_second) * share) as u32).max(1);
        return (Step::Increase, s.clamp(rate.saturating_add(step)));
    }
    (Step::Hold, rate)
}

/// Upper bounds of the histogram buckets (ms); one more bucket holds
/// everything slower. Roughly ×1.25 apart, so a p99 read from them is off
/// by at most a few percent after interpolation.
const BOUNDS_MS: [f64; 38] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 80.0,
    100.0, 120.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1_000.0, 1_200.0,
    1_500.0, 2_000.0, 2_500.0, 3_000.0, 4_000.0, 5_000.0, 6_000.0, 8_000.0, 10_000.0,
];
const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// A latency histogram (counts per bucket), for merging and percentiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram([u64; BUCKETS]);

impl Default for Histogram {
    fn default() -> Self {
        Self([0; BUCKETS])
    }
}

fn bucket_of(ms: f64) -> usize {
    BOUNDS_MS.partition_point(|&b| b < ms)
}

impl Histogram {
    pub fn add(&mut self, ms: f64) {
        self.0[bucket_of(ms)] += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The 99th percentile (ms), interpolated inside its bucket; `None`
    /// when empty. Beyond the last bound it is that bound.
    pub fn p99(&self) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (n as f64 * 0.99).ceil().max(1.0);
        let mut before = 0.0;
        for (i, &c) in self.0.iter().enumerate() {
            let c = c as f64;
            if c > 0.0 && before + c >= rank {
                let Some(&hi) = BOUNDS_MS.get(i) else {
                    return Some(BOUNDS_MS[BOUNDS_MS.len() - 1]);
                };
                let lo = if i == 0 { 0.0 } else { BOUNDS_MS[i - 1] };
                return Some(lo + (hi - lo) * (rank - before) / c);
            }
            before += c;
        }
        None
    }

    /// `c0,c1,...` without trailing zero buckets.
    fn encode(&self) -> String {
        let used = self.0.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
        self.0[..used]
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn decode(s: &str) -> Option<Self> {
        let mut h = Self::default();
        if s.is_empty() {
            return Some(h);
        }
        for (i, c) in s.split(',').enumerate() {
            *h.0.get_mut(i)? = c.parse().ok()?;
        }
        Some(h)
    }
}

/// One instance's published window: its pool wait p99 and its latencies.
fn encode_window(pool_wait_ms: Option<f64>, h: &Histogram) -> String {
    let pool = pool_wait_ms.map_or_else(String::new, |w| format!("{w:.1}"));
    format!("{pool};{}", h.encode())
}

fn decode_window(s: &str) -> Option<(Option<f64>, Histogram)> {
    let (pool, counts) = s.split_once(';')?;
    let pool = if pool.is_empty() {
        None
    } else {
        Some(pool.parse().ok()?)
    };
    Some((pool, Histogram::decode(counts)?))
}

/// One second of a [`Window`].
struct Slot {
    /// Which second (since the window's start) the counts are for.
    second: AtomicU64,
    counts: [AtomicU32; BUCKETS],
}

/// The last [`WINDOW_SECONDS`] of latencies: a ring of one-second slots of
/// atomic counters. A slot is reset by the first request of a new second;
/// a request racing that reset may be lost, which a p99 does not notice.
pub struct Window {
    start: Instant,
    slots: [Slot; WINDOW_SECONDS as usize],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            slots: std::array::from_fn(|_| Slot {
                second: AtomicU64::new(u64::MAX),
                counts: std::array::from_fn(|_| AtomicU32::new(0)),
            }),
        }
    }
}

impl Window {
    fn now_s(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    pub fn record(&self, latency: Duration) {
        let now = self.now_s();
        let slot = &self.slots[(now % WINDOW_SECONDS) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != now
            && slot
                .second
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in &slot.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        let ms = latency.as_secs_f64() * 1_000.0;
        slot.counts[bucket_of(ms)].fetch_add(1, Ordering::Relaxed);
    }

    /// Everything recorded in the last [`WINDOW_SECONDS`] seconds.
    pub fn snapshot(&self) -> Histogram {
        let now = self.now_s();
        let mut h = Histogram::default();
        for slot in &self.slots {
            let s = slot.second.load(Ordering::Acquire);
            if s != u64::MAX && s + WINDOW_SECONDS > now {
                for (a, c) in h.0.iter_mut().zip(&slot.counts) {
                    *a += u64::from(c.load(Ordering::Relaxed));
                }
            }
        }
        h
    }
}

/// What operators see of one event's admission (admin figures, dashboard).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AdmissionFigures)]
pub struct Figures {
    /// `fixed` or `auto`.
    pub admission_mode: String,
    /// The rate admission uses now: `admit_per_second` in fixed mode, the
    /// autopilot's in auto mode.
    pub effective_admit_per_second: u32,
    /// Admitted buyers' p99 latency over the last 2 s, all instances
    /// merged (ms); null when none made a request.
    pub admitted_p99_ms: Option<f64>,
    /// The PostgreSQL pool's acquire wait p99 over the last 2 s, worst
    /// instance (ms).
    pub pool_wait_p99_ms: Option<f64>,
}

/// One instance's measurements and the figures its last step saw.
pub struct Autopilot {
    /// This instance's field in the shared hash.
    field: String,
    events: RwLock<HashMap<EventId, Arc<Window>>>,
    pool: Window,
    figures: RwLock<HashMap<EventId, Figures>>,
}

impl Default for Autopilot {
    fn default() -> Self {
        Self {
            field: format!("i:{}", uuid::Uuid::new_v4().simple()),
            events: RwLock::default(),
            pool: Window::default(),
            figures: RwLock::default(),
        }
    }
}

impl Autopilot {
    /// Records one admitted buyer's request of `event`.
    pub fn record(&self, event: &EventId, latency: Duration) {
        let found = self
            .events
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(event)
            .cloned();
        let window = found.unwrap_or_else(|| {
            self.events
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(event.clone())
                .or_default()
                .clone()
        });
        window.record(latency);
    }

    /// Records one wait for a PostgreSQL connection.
    pub fn record_pool_wait(&self, wait: Duration) {
        self.pool.record(wait);
    }

    fn window(&self, event: &EventId) -> Histogram {
        self.events
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(event)
            .map(|w| w.snapshot())
            .unwrap_or_default()
    }

    /// What the last step of this instance saw for `event`, or `None`
    /// before the first (background loops off, or just started).
    pub fn figures(&self, event: &EventId) -> Option<Figures> {
        self.figures
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(event)
            .cloned()
    }

    fn forget(&self, event: &EventId) {
        self.events
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(event);
        self.figures
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(event);
    }
}

/// `autopilot_publish.lua`'s reply.
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum PublishReply {
    NoEvent,
    Ok(Published),
}

#[derive(Deserialize)]
struct Published {
    mode: Mode,
    target_p99_ms: u32,
    min: u32,
    max: u32,
    admit_per_second: u32,
    /// The autopilot's rate; absent in fixed mode.
    #[serde(default)]
    rate: Option<u32>,
    waiting: u64,
    /// The rate the last decrease started from.
    #[serde(default)]
    cut_from: Option<u32>,
    /// This call took the event's control step for this second.
    due: bool,
    windows: Vec<String>,
}

/// `autopilot_apply.lua`'s reply.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(tag = "status")]
enum Applied {
    Ok,
    /// The event left auto mode meanwhile (a PATCH): nothing written.
    Fixed,
    NoEvent,
}

/// One second of one event: publish this instance's window, read every
/// instance's, and, if this instance got the step and the event is in auto
/// mode, apply the control law.
async fn step(redis: &Redis, ap: &Autopilot, event: &EventId) -> Result<(), StoreError> {
    let mine = encode_window(ap.pool.snapshot().p99(), &ap.window(event));
    let k = redis.keys().event(event);
    let reply = redis
        .eval_json(
            &redis::AUTOPILOT_PUBLISH,
            vec![k.config(), k.autopilot(), k.queue_waiting()],
            vec![
                ap.field.clone(),
                mine,
                STALE_MS.to_string(),
                // A little under a second, so steps do not drift apart.
                (STEP.as_millis() as u64 * 9 / 10).to_string(),
            ],
        )
        .await?;
    let r = match reply {
        PublishReply::Ok(r) => r,
        PublishReply::NoEvent => {
            ap.forget(event);
            return Ok(());
        }
    };
    let mut merged = Histogram::default();
    let mut pool_wait_ms: Option<f64> = None;
    for (pool, h) in r.windows.iter().filter_map(|w| decode_window(w)) {
        merged.merge(&h);
        pool_wait_ms = match (pool_wait_ms, pool) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let p99_ms = merged.p99();
    let settings = Settings {
        mode: r.mode,
        target_p99_ms: r.target_p99_ms,
        min_admit_per_second: r.min,
        max_admit_per_second: r.max,
    };
    let mut effective = match settings.mode {
        Mode::Fixed => r.admit_per_second,
        Mode::Auto => r.rate.unwrap_or_else(|| settings.clamp(r.admit_per_second)),
    };
    if r.due && settings.mode == Mode::Auto {
        let (what, next) = decide(&Inputs {
            rate: effective,
            p99_ms,
            samples: merged.count(),
            pool_wait_ms,
            waiting: r.waiting,
            cut_from: r.cut_from,
            settings,
        });
        if Some(next) != r.rate || what == Step::Decrease {
            let cut_from = if what == Step::Decrease {
                effective.to_string()
            } else {
                String::new()
            };
            let applied = redis
                .eval_json(
                    &redis::AUTOPILOT_APPLY,
                    vec![k.config(), k.autopilot()],
                    vec![next.to_string(), cut_from],
                )
                .await?;
            match applied {
                Applied::Ok => {}
                Applied::Fixed | Applied::NoEvent => return Ok(()),
            }
        }
        tracing::debug!(%event, ?what, from = effective, to = next, ?p99_ms, ?pool_wait_ms, "autopilot step");
        effective = next;
    }
    let ev = event.to_string();
    metrics::gauge!("boxoffice_admission_rate_target", "event" => ev.clone())
        .set(f64::from(effective));
    metrics::gauge!("boxoffice_admitted_p99_ms", "event" => ev).set(p99_ms.unwrap_or(0.0));
    ap.figures
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            event.clone(),
            Figures {
                admission_mode: settings.mode.as_str().to_owned(),
                effective_admit_per_second: effective,
                admitted_p99_ms: p99_ms.map(|p| (p * 10.0).round() / 10.0),
                pool_wait_p99_ms: pool_wait_ms,
            },
        );
    Ok(())
}

/// Measures how long taking a PostgreSQL connection waits, twice a second
/// (the connection is given back at once).
async fn probe_pool(pg: &Pg, ap: &Autopilot, shutdown: &CancellationToken) {
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        let start = Instant::now();
        // A failed acquire (timed out, or PostgreSQL down) waited as long
        // as it took: that is the wait a request would have seen.
        drop(pg.pool().acquire().await);
        ap.record_pool_wait(start.elapsed());
    }
}

/// The autopilot's loop (every instance runs one): a step per event every
/// second, plus the pool probe. Ends at shutdown. A failed step is counted
/// and warned as the `autopilot` loop (`telemetry::loop_failed`).
pub async fn run(stores: Stores, ap: Arc<Autopilot>, shutdown: CancellationToken) {
    let probe = probe_pool(&stores.pg, &ap, &shutdown);
    let steps = async {
        let mut every = tokio::time::interval(STEP);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            let events = match catalog::known_events(&stores.redis).await {
                Ok(events) => events,
                Err(e) => {
                    loop_failed("autopilot", &e);
                    continue;
                }
            };
            for event in events {
                if let Err(e) = step(&stores.redis, &ap, &event).await {
                    loop_failed("autopilot", &e);
                }
            }
        }
    };
    tokio::join!(probe, steps);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(min: u32, max: u32) -> Settings {
        Settings {
            mode: Mode::Auto,
            target_p99_ms: 200,
            min_admit_per_second: min,
            max_admit_per_second: max,
        }
    }

    fn inputs(rate: u32, p99: Option<f64>, pool: Option<f64>, waiting: u64) -> Inputs {
        Inputs {
            rate,
            p99_ms: p99,
            samples: if p99.is_some() { RAISE_EVIDENCE } else { 0 },
            pool_wait_ms: pool,
            waiting,
            cut_from: None,
            settings: auto(2, 100),
        }
    }

    #[test]
    fn slow_buyers_cut_the_rate_by_thirty_percent() {
        assert_eq!(
            decide(&inputs(100, Some(250.0), None, 10)),
            (Step::Decrease, 70)
        );
        assert_eq!(
            decide(&inputs(70, Some(201.0), None, 0)),
            (Step::Decrease, 49)
        );
    }

    #[test]
    fn a_starved_pool_cuts_the_rate_even_when_latency_looks_fine() {
        assert_eq!(
            decide(&inputs(50, Some(10.0), Some(101.0), 10)),
            (Step::Decrease, 35)
        );
        assert_eq!(
            decide(&inputs(50, Some(10.0), Some(100.0), 10)),
            (Step::Increase, 52)
        );
    }

    #[test]
    fn never_below_the_minimum() {
        assert_eq!(
            decide(&inputs(2, Some(900.0), None, 10)),
            (Step::Decrease, 2)
        );
        assert_eq!(
            decide(&inputs(3, Some(900.0), None, 10)),
            (Step::Decrease, 2)
        );
    }

    #[test]
    fn fast_buyers_with_a_line_raise_it_by_two_and_a_half_percent_of_the_maximum() {
        assert_eq!(
            decide(&inputs(10, Some(100.0), None, 1)),
            (Step::Increase, 12)
        );
        // At least one per second.
        let mut i = inputs(1, Some(1.0), None, 5);
        i.settings = auto(1, 10);
        assert_eq!(decide(&i), (Step::Increase, 2));
    }

    #[test]
    fn near_the_rate_last_cut_the_rate_rises_gently() {
        let near = |rate, cut| Inputs {
            cut_from: Some(cut),
            ..inputs(rate, Some(5.0), None, 10)
        };
        // Cut from 60: from 48 to 72 it rises by 1 % of the maximum.
        assert_eq!(decide(&near(48, 60)), (Step::Increase, 49));
        assert_eq!(decide(&near(60, 60)), (Step::Increase, 61));
        assert_eq!(decide(&near(72, 60)), (Step::Increase, 73));
        // Far from it, by 2.5 % (rounded down).
        assert_eq!(decide(&near(40, 60)), (Step::Increase, 42));
        assert_eq!(decide(&near(73, 60)), (Step::Increase, 75));
        // A slow p99 cuts near the rate last cut as anywhere.
        let slow = Inputs {
            cut_from: Some(60),
            ..inputs(60, Some(300.0), None, 10)
        };
        assert_eq!(decide(&slow), (Step::Decrease, 42));
    }

    #[test]
    fn never_above_the_maximum() {
        assert_eq!(
            decide(&inputs(98, Some(5.0), None, 10)),
            (Step::Increase, 100)
        );
        assert_eq!(
            decide(&inputs(100, Some(5.0), None, 10)),
            (Step::Increase, 100)
        );
        // A rate outside new bounds is brought inside them.
        assert_eq!(
            decide(&inputs(500, Some(180.0), None, 10)),
            (Step::Hold, 100)
        );
    }

    #[test]
    fn holds_near_the_target_or_without_a_line() {
        // Between 0.8 × target and the target.
        assert_eq!(decide(&inputs(40, Some(170.0), None, 10)), (Step::Hold, 40));
        assert_eq!(decide(&inputs(40, Some(200.0), None, 10)), (Step::Hold, 40));
        // Fast, but nobody waits: a higher rate would admit nobody more.
        assert_eq!(decide(&inputs(40, Some(5.0), None, 0)), (Step::Hold, 40));
    }

    #[test]
    fn without_evidence_the_rate_holds() {
        // Nobody admitted made a request (before opens_at nobody is
        // admitted at all): no sign that a higher rate would be served.
        assert_eq!(decide(&inputs(10, None, None, 1)), (Step::Hold, 10));
        // A fast p99 of too few requests is no evidence either...
        let few = Inputs {
            samples: RAISE_EVIDENCE - 1,
            ..inputs(10, Some(1.0), None, 1)
        };
        assert_eq!(decide(&few), (Step::Hold, 10));
        // ...one more request is.
        let enough = Inputs {
            samples: RAISE_EVIDENCE,
            ..few
        };
        assert_eq!(decide(&enough), (Step::Increase, 12));
        // At a low rate, one request per buyer the window admitted is.
        let low = Inputs {
            samples: 6,
            ..inputs(3, Some(1.0), None, 1)
        };
        assert_eq!(decide(&low), (Step::Increase, 5));
        let fewer = Inputs { samples: 5, ..low };
        assert_eq!(decide(&fewer), (Step::Hold, 3));
        // A slow p99 cuts whatever the count: one slow request is a fact.
        let slow = Inputs {
            samples: 1,
            ..inputs(10, Some(900.0), None, 1)
        };
        assert_eq!(decide(&slow), (Step::Decrease, 7));
    }

    #[test]
    fn p99_of_a_histogram_interpolates_inside_its_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.p99(), None);
        for _ in 0..99 {
            h.add(3.0);
        }
        h.add(900.0);
        // The 99th of 100 is in the 2..3 ms bucket, at its top.
        assert_eq!(h.p99(), Some(3.0));
        h.add(900.0);
        // Now the 100th of 101 (rank 100) is the first of the 800..1000 bucket.
        let p = h.p99().unwrap();
        assert!((800.0..=1000.0).contains(&p), "{p}");
        let mut slow = Histogram::default();
        slow.add(60_000.0);
        assert_eq!(slow.p99(), Some(10_000.0));
    }

    #[test]
    fn windows_round_trip_and_merge() {
        let mut h = Histogram::default();
        h.add(0.4);
        h.add(45.0);
        h.add(45.0);
        let s = encode_window(Some(12.5), &h);
        let (pool, back) = decode_window(&s).unwrap();
        assert_eq!((pool, &back), (Some(12.5), &h));
        let (none, empty) = decode_window(";").unwrap();
        assert_eq!((none, empty.count()), (None, 0));
        let mut m = back.clone();
        m.merge(&h);
        assert_eq!(m.count(), 6);
        assert!(decode_window("x;1").is_none());
        assert!(decode_window(&format!(";{}", vec!["1"; BUCKETS + 1].join(","))).is_none());
    }

    #[test]
    fn a_window_counts_the_last_seconds_only() {
        let w = Window::default();
        w.record(Duration::from_millis(30));
        w.record(Duration::from_millis(300));
        let h = w.snapshot();
        assert_eq!(h.count(), 2);
        assert_eq!(h.p99(), Some(300.0));
        // A slot from more than a window ago is not counted.
        let old = Window {
            start: Instant::now()
                .checked_sub(Duration::from_secs(WINDOW_SECONDS + 1))
                .unwrap(),
            ..Window::default()
        };
        old.slots[0].second.store(0, Ordering::Release);
        old.slots[0].counts[3].store(7, Ordering::Release);
        assert_eq!(old.snapshot().count(), 0);
    }
}
