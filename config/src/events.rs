//! Events the data planes raise for the control plane.

use serde::{Deserialize, Serialize};

/// Figures of one side of a canary over the abort window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SideFigures {
    pub requests: u64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
}

/// Something the router decided on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RouterEvent {
    /// The canary's 5xx rate was significantly worse than stable's: its weight is now 0.
    CanaryAborted {
        app: String,
        canary_release: u32,
        stable: SideFigures,
        canary: SideFigures,
        z: f64,
        reason: String,
    },
}
