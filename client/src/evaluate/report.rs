//! The report a node writes at the end of a run (`report.json`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::NodeError;
use crate::distill::StudentConfig;
use crate::evaluate::StudentMetrics;

/// What a node writes to `report.json` at the end of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's identity (from its certificate).
    pub node: String,
    /// Privacy guarantee of what this node released.
    pub privacy: String,
    /// Privacy unit (`"record"` in private mode).
    pub privacy_unit: String,
    /// Epsilon spent over the whole life of the ledger, at `delta` (private mode).
    pub epsilon_spent: Option<f64>,
    /// With secure aggregation: the epsilon at `delta` from this node's own noise shares alone
    /// (what holds if every other node colluded with the coordinator); `epsilon_spent` is then
    /// the guarantee of the sums.
    #[serde(default)]
    pub floor_epsilon_spent: Option<f64>,
    /// zCDP rho spent over the whole life of the ledger (private mode).
    pub rho_spent: Option<f64>,
    /// The budget's delta (private mode).
    pub delta: Option<f64>,
    /// Noise standard deviation per release (private mode).
    pub sigma: Option<f64>,
    /// Number of teachers (private mode).
    pub teachers: Option<usize>,
    /// Why the node stopped contributing early, if it did.
    pub left: Option<String>,
    /// Private records trained on.
    pub private_records: usize,
    /// Private records held out for measurement.
    pub holdout_records: usize,
    /// Public reference records.
    pub public_records: usize,
    /// Rounds contributed to.
    pub rounds: u32,
    /// Held-out accuracy after each round.
    pub round_accuracy: Vec<f64>,
    /// Held-out accuracy of the final student (the one the node kept).
    pub accuracy: f64,
    /// Held-out accuracy of a student trained on the same private records alone, so the
    /// node sees whether joining paid.
    pub local_only_acc: f64,
    /// The do-no-harm check (private mode by default): both students on private records held
    /// out of training, and which one the node kept.
    pub harm_check: Option<crate::distill::HarmCheck>,
    /// Do no harm by prediction (private mode): the planner's signal-to-noise ratio, the
    /// threshold it was held against, and which student the node kept.
    pub target_trust: Option<crate::distill::TargetTrust>,
    /// With `temperature = "auto"`: the temperature chosen and the validation-loss curve.
    pub temperature_search: Option<crate::distill::TemperatureSearch>,
    /// The privacy plan made before the first release (private mode with a budget).
    pub privacy_plan: Option<crate::privacy::plan::Plan>,
    /// Bytes sent to the coordinator.
    pub bytes_up: u64,
    /// Bytes received from the coordinator.
    pub bytes_down: u64,
    /// Wall time of the session in seconds.
    pub seconds: f64,
    /// The student's architecture.
    pub student: StudentConfig,
    /// The student's parameter count.
    pub student_parameters: usize,
    /// The student against its teacher (see [`crate::evaluate::compare`]): accuracy and macro-F1 on
    /// the held-out split, compression ratio, measured speed-up and CKA.
    pub student_metrics: StudentMetrics,
}

/// Writes a value as pretty JSON, atomically (temp file, then rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), NodeError> {
    let output = |source| NodeError::Output {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_string_pretty(value).map_err(|e| output(e.into()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(output)?;
    std::fs::rename(&tmp, path).map_err(output)
}
