//! How a scheduled value (alpha, temperature) moves over the rounds.

use serde::{Deserialize, Serialize};

/// How a scheduled value moves from its start to its end over the rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleShape {
    /// The start value throughout.
    Constant,
    /// Straight line from start (first round) to end (last round).
    #[default]
    Linear,
    /// Half a cosine: `end + (start - end) * (1 + cos(pi * t)) / 2`, slow at both ends.
    Cosine,
}

impl ScheduleShape {
    /// The value in `round` (0-based) of `rounds`.
    pub fn value(self, start: f64, end: f64, round: u32, rounds: u32) -> f64 {
        let t = if rounds <= 1 {
            1.0
        } else {
            (round as f64 / (rounds - 1) as f64).min(1.0)
        };
        match self {
            ScheduleShape::Constant => start,
            ScheduleShape::Linear => start + (end - start) * t,
            ScheduleShape::Cosine => {
                end + (start - end) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}
