//! How long a waiting client should wait and poll. Pure functions.
//!
//! ETA: position divided by the *observed* admission rate (a moving average
//! kept in Redis by `admit_tick`), falling back to the configured rate
//! before anything was measured; unknown (`None`) while paused. Cloudflare
//! and the hand-rolled queues divide by a constant instead, so their ETAs
//! are wrong exactly when capacity, not the rate, is the bottleneck.
//!
//! p90 ETA: the same division by a pessimistic rate, the average minus
//! 1.28 standard deviations of the rate over the wait (the per-second
//! spread kept by `admit_tick`, shrinking as 1/√ETA since a longer wait
//! averages more seconds), never below a quarter of the average.
//!
//! Poll interval: a quarter of the ETA, clamped to 1–15 s, and never more
//! than a third of the idle timeout (each poll is the heartbeat that keeps
//! the entry). Near the head clients poll every second; far back every 15
//! s, so the polling load grows with ln(queue length), not linearly.

/// Where the entry is, for pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the pre-queue: no position until the draw.
    Prequeue,
    Waiting(u64),
    Admitted,
}

/// Inputs of the pacing rules.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    pub place: Place,
    pub observed_rate: f64,
    /// Standard deviation of admissions per second.
    pub rate_sd: f64,
    pub admit_per_second: u32,
    pub paused: bool,
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    pub eta_seconds: Option<u64>,
    /// 90 % of users at this place are admitted within this many seconds.
    pub eta_p90_seconds: Option<u64>,
    pub poll_after_ms: u64,
}

pub const MIN_POLL_MS: u64 = 1_000;
pub const MAX_POLL_MS: u64 = 15_000;
/// Below this observed rate the measurement is noise; use the setting.
const MIN_TRUSTED_RATE: f64 = 0.05;

pub fn pace(i: Inputs) -> Pacing {
    let heartbeat_cap = (i.idle_timeout_ms / 3).max(500);
    let position = match i.place {
        Place::Waiting(p) => p,
        // Admitted: nothing to wait for; polling only refreshes the state.
        Place::Admitted => {
            return Pacing {
                eta_seconds: Some(0),
                eta_p90_seconds: Some(0),
                poll_after_ms: MAX_POLL_MS.min(heartbeat_cap),
            };
        }
        // Pre-queue: the place is unknown until the draw; keep the
        // heartbeat going.
        Place::Prequeue => {
            return Pacing {
                eta_seconds: None,
                eta_p90_seconds: None,
                poll_after_ms: (MAX_POLL_MS / 3).min(heartbeat_cap),
            };
        }
    };
    let rate = if i.observed_rate >= MIN_TRUSTED_RATE {
        i.observed_rate
    } else {
        f64::from(i.admit_per_second)
    };
    let eta_seconds = if i.paused || rate <= 0.0 {
        None
    } else {
        Some((position as f64 / rate).ceil() as u64)
    };
    let eta_p90_seconds = eta_seconds.map(|eta| {
        let horizon = (eta.max(1) as f64).sqrt();
        let slow = (rate - 1.2816 * i.rate_sd / horizon).max(rate / 4.0);
        ((position as f64 / slow).ceil() as u64).max(eta)
    });
    let poll = match eta_seconds {
        Some(eta) => (eta * 1000 / 4).clamp(MIN_POLL_MS, MAX_POLL_MS),
        None => MAX_POLL_MS / 2,
    };
    Pacing {
        eta_seconds,
        eta_p90_seconds,
        poll_after_ms: poll.min(heartbeat_cap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: u64, rate: f64) -> Pacing {
        pace(Inputs {
            place: Place::Waiting(position),
            observed_rate: rate,
            rate_sd: 0.0,
            admit_per_second: 10,
            paused: false,
            idle_timeout_ms: 120_000,
        })
    }

    #[test]
    fn eta_uses_the_observed_rate_then_the_setting() {
        assert_eq!(at(100, 20.0).eta_seconds, Some(5));
        assert_eq!(
            at(100, 0.0).eta_seconds,
            Some(10),
            "falls back to admit_per_second"
        );
    }

    #[test]
    fn poll_interval_grows_with_position_within_bounds() {
        let near = at(1, 10.0).poll_after_ms;
        let mid = at(200, 10.0).poll_after_ms;
        let far = at(1_000_000, 10.0).poll_after_ms;
        assert_eq!(near, MIN_POLL_MS);
        assert!(near < mid && mid < far, "{near} {mid} {far}");
        assert_eq!(far, MAX_POLL_MS);
    }

    #[test]
    fn polls_often_enough_to_stay_alive() {
        let p = pace(Inputs {
            place: Place::Waiting(1_000_000),
            observed_rate: 1.0,
            rate_sd: 0.0,
            admit_per_second: 1,
            paused: false,
            idle_timeout_ms: 6_000,
        });
        assert!(p.poll_after_ms <= 2_000);
    }

    #[test]
    fn paused_has_no_eta() {
        let p = pace(Inputs {
            place: Place::Waiting(5),
            observed_rate: 3.0,
            rate_sd: 0.0,
            admit_per_second: 10,
            paused: true,
            idle_timeout_ms: 60_000,
        });
        assert_eq!(p.eta_seconds, None);
        assert_eq!(p.eta_p90_seconds, None);
    }

    #[test]
    fn p90_is_later_than_the_average_when_the_rate_wobbles() {
        let steady = at(100, 10.0);
        assert_eq!(steady.eta_p90_seconds, steady.eta_seconds);
        let wobbly = pace(Inputs {
            place: Place::Waiting(100),
            observed_rate: 10.0,
            rate_sd: 5.0,
            admit_per_second: 10,
            paused: false,
            idle_timeout_ms: 120_000,
        });
        assert_eq!(wobbly.eta_seconds, Some(10));
        let p90 = wobbly.eta_p90_seconds.unwrap();
        assert!(p90 > 10 && p90 <= 40, "{p90}");
    }
}
