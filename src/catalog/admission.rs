//! An event's admission mode and the autopilot's settings: catalog data
//! (stored with the event in PostgreSQL, copied into Redis with it). The
//! controller that acts on them is `queue::autopilot`.

use serde::{Deserialize, Serialize};

/// Default `target_p99_ms`.
pub const DEFAULT_TARGET_P99_MS: u32 = 50;

/// How an event's admission rate is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = AdmissionMode)]
pub enum Mode {
    /// `admit_per_second`, as configured.
    Fixed,
    /// Steered by the autopilot between the bounds.
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Auto => "auto",
        }
    }

    /// A mode named in a request; `None` for anything else.
    pub fn from_request(s: &str) -> Option<Self> {
        match s {
            "fixed" => Some(Self::Fixed),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    /// A stored mode (the column's check allows only the two).
    pub fn parse(s: &str) -> Self {
        Self::from_request(s).unwrap_or(Self::Fixed)
    }
}

/// The autopilot's settings of one event (part of its admission settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = AutopilotSettings)]
pub struct Settings {
    /// `fixed` or `auto`.
    #[serde(rename = "admission_mode")]
    #[schema(rename = "admission_mode")]
    pub mode: Mode,
    /// Admitted buyers' p99 latency the autopilot keeps under (ms).
    pub target_p99_ms: u32,
    /// The autopilot never admits fewer per second.
    pub min_admit_per_second: u32,
    /// The autopilot never admits more per second.
    pub max_admit_per_second: u32,
}

impl Settings {
    /// Fixed admission with the default target and bounds 1..`admit_per_second`.
    pub fn fixed(admit_per_second: u32) -> Self {
        Self {
            mode: Mode::Fixed,
            target_p99_ms: DEFAULT_TARGET_P99_MS,
            min_admit_per_second: 1,
            max_admit_per_second: admit_per_second,
        }
    }

    /// `rate` within the bounds.
    pub fn clamp(&self, rate: u32) -> u32 {
        rate.clamp(
            self.min_admit_per_second,
            self.max_admit_per_second.max(self.min_admit_per_second),
        )
    }
}
