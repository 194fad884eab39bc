//! A whole node run from its config: load data, join the federation, save the student and the
//! report.

use std::path::{Path, PathBuf};

use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::data::{self, DataError, Standardiser, Table};
use crate::model::{ModelCard, ModelError, StudentConfig, matrix};
use crate::session::{SessionError, SessionPlan, run_session};
use crate::train::{Labelled, Learner, TrainConfig};

/// Why a node run failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A data file is unusable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] fd_certs::CertError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The session with the coordinator failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Outputs could not be written.
    #[error("{path}: cannot write: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The data does not fit the config.
    #[error("{0}")]
    Mismatch(String),
}

/// Privacy statement of the walking-skeleton node: labels leave without noise.
pub const NON_PRIVATE: &str =
    "none (non-private baseline: soft labels leave the node without noise)";

/// What a node writes to `report.json` at the end of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's identity (from its certificate).
    pub node: String,
    /// Privacy guarantee of what this node released.
    pub privacy: String,
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
    /// Held-out accuracy of the final student.
    pub accuracy: f64,
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
}

/// A node's data, ready to train on.
#[derive(Debug)]
pub struct PreparedData {
    /// Standardised private training split.
    pub train: Labelled,
    /// Standardised held-out split.
    pub holdout: Labelled,
    /// Standardised public set `[m, inputs]`.
    pub public: candle_core::Tensor,
    /// The model card (columns and standardisation) to save with the student.
    pub card: ModelCard,
}

/// Standardises (with statistics of the public set) and converts tables to tensors.
pub fn prepare(
    train: &Table,
    holdout: &Table,
    public: &Table,
    classes: usize,
    label_column: &str,
    training: &TrainConfig,
) -> Result<PreparedData, ModelError> {
    let standardiser = match training.image {
        Some(_) => Standardiser::fit_global(public),
        None => Standardiser::fit(public),
    };
    let width = public.width();
    Ok(PreparedData {
        train: Labelled::new(standardiser.apply(train), width, train.labels.clone())?,
        holdout: Labelled::new(standardiser.apply(holdout), width, holdout.labels.clone())?,
        public: matrix(standardiser.apply(public), width)?,
        card: ModelCard {
            student: StudentConfig {
                inputs: width,
                classes,
                hidden: training.hidden.clone(),
            },
            columns: public.columns.clone(),
            label_column: label_column.to_owned(),
            standardiser,
        },
    })
}

/// Runs a node from its config: joins, trains, and writes `model.safetensors`, `model.json` and
/// `report.json` into the output directory.
pub async fn run_node(config: &NodeConfig) -> Result<NodeReport, NodeError> {
    let private =
        data::read_labelled_csv(&config.private_csv, &config.label_column, config.classes)?;
    let public = data::read_public_csv(&config.public_csv, &private.columns)?;
    let (train, holdout) = private.split_holdout(
        config.holdout_fraction,
        &mut StdRng::seed_from_u64(config.seed),
    );
    if train.rows() == 0 {
        return Err(NodeError::Mismatch(format!(
            "{}: no training records left after holding out {}",
            config.private_csv.display(),
            config.holdout_fraction
        )));
    }
    let prepared = prepare(
        &train,
        &holdout,
        &public,
        config.classes,
        &config.label_column,
        &config.training,
    )?;
    let tls = fd_certs::tls::TlsIdentity::load(&config.ca, &config.cert, &config.key)?;
    let mut training = config.training.clone();
    training.seed = config.seed;
    let learner = Learner::new(training, config.classes, prepared.train, prepared.public)?;
    let plan = SessionPlan {
        coordinator: config.coordinator,
        server_name: config.server_name.clone(),
        tls,
        private_records: train.rows() as u32,
        holdout: prepared.holdout,
        max_frame_len: fd_protocol::DEFAULT_MAX_FRAME_LEN,
    };
    let outcome = run_session(plan, learner).await?;
    let student = outcome.learner.student();
    student.save(&config.output_dir, &prepared.card)?;
    let report = NodeReport {
        node: outcome.node,
        privacy: NON_PRIVATE.into(),
        private_records: train.rows(),
        holdout_records: holdout.rows(),
        public_records: public.rows(),
        rounds: outcome.rounds,
        round_accuracy: outcome.round_accuracy,
        accuracy: outcome.final_accuracy,
        bytes_up: outcome.bytes_up,
        bytes_down: outcome.bytes_down,
        seconds: outcome.seconds,
        student: student.config().clone(),
        student_parameters: student.parameters(),
    };
    write_json(&config.output_dir.join("report.json"), &report)?;
    Ok(report)
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
