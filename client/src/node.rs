//! A whole node run from its config: load data, join the federation, save the student and the
//! report.

use std::path::{Path, PathBuf};

use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::compression::{StudentMetrics, measure, reference};
use crate::config::{NodeConfig, PrivacyConfig, PrivacyMode};
use crate::data::{self, DataError, Standardiser, Table};
use crate::ensemble::{EnsembleConfig, TeacherEnsemble, TeacherKind, default_shards};
use crate::labeller::{Labeller, PrivateLabeller};
use crate::model::{ModelCard, ModelError, StudentConfig, matrix};
use crate::privacy::{Budget, PrivacyError, PrivacyLedger};
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
    /// The privacy ledger or budget is unusable.
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
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
    /// Privacy unit (`"record"` in private mode).
    pub privacy_unit: String,
    /// Epsilon spent over the whole life of the ledger, at `delta` (private mode).
    pub epsilon_spent: Option<f64>,
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
    /// The student against its teacher (see [`crate::compression`]): accuracy and macro-F1 on
    /// the held-out split, compression ratio, measured speed-up and CKA.
    pub student_metrics: StudentMetrics,
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
            student: training.student_config(width, classes),
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
    let mut training = student_training(&config.training, config.privacy.mode);
    training.seed = config.seed;
    let ledger_path = config
        .privacy
        .ledger
        .clone()
        .unwrap_or_else(|| config.output_dir.join("privacy-ledger.sqlite"));
    if config.privacy.mode != PrivacyMode::None {
        std::fs::create_dir_all(&config.output_dir).map_err(|source| NodeError::Output {
            path: config.output_dir.clone(),
            source,
        })?;
    }
    let labeller = build_labeller(
        &config.privacy,
        &prepared.train,
        &prepared.public,
        config.classes,
        &training,
        &ledger_path,
    )?;
    tracing::info!(privacy = %labeller.statement(), "privacy of released labels");
    let learner = Learner::new(training, config.classes, prepared.train, prepared.public)?;
    let plan = SessionPlan {
        coordinator: config.coordinator,
        server_name: config.server_name.clone(),
        tls,
        private_records: train.rows() as u32,
        holdout: prepared.holdout.clone(),
        max_frame_len: fd_protocol::DEFAULT_MAX_FRAME_LEN,
    };
    let outcome = run_session(plan, learner, labeller).await?;
    let student = outcome.learner.student();
    student.save(&config.output_dir, &prepared.card)?;
    let student_metrics = measure(
        student,
        reference(&outcome.labeller, &outcome.learner),
        &prepared.holdout,
        outcome.learner.public(),
    )?;
    tracing::info!(
        accuracy = student_metrics.accuracy,
        macro_f1 = student_metrics.macro_f1,
        compression_ratio = student_metrics.compression_ratio,
        speedup = student_metrics.speedup,
        cka = student_metrics.cka,
        teacher = student_metrics.teacher,
        "student against its teacher (speed-up measured)"
    );
    let spent = outcome.labeller.spent()?;
    let report = NodeReport {
        privacy: outcome.labeller.statement(),
        privacy_unit: privacy_unit(&outcome.labeller).into(),
        epsilon_spent: spent.map(|(e, _)| e),
        rho_spent: spent.map(|(_, r)| r),
        delta: private_part(&outcome.labeller).map(|p| p.budget.delta),
        sigma: private_part(&outcome.labeller).and_then(|p| p.sigma),
        teachers: private_part(&outcome.labeller).map(|p| p.ensemble.config().teachers),
        left: outcome.left.clone(),
        node: outcome.node,
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
        student_metrics,
    };
    write_json(&config.output_dir.join("report.json"), &report)?;
    Ok(report)
}

/// Predicts every row of `input` (the model's feature columns, any order, no label) with the
/// student saved in `model_dir`, and writes `output`: a `predicted` class and one probability
/// column per class. Returns the number of rows.
pub fn predict_csv(model_dir: &Path, input: &Path, output: &Path) -> Result<usize, NodeError> {
    let (student, card) = crate::model::Student::load(model_dir)?;
    let table = data::read_public_csv(input, &card.columns)?;
    let x = matrix(card.standardiser.apply(&table), table.width())?;
    let probs = student.probabilities(&x)?;
    let classes = card.student.classes;
    let out = |source| NodeError::Output {
        path: output.to_path_buf(),
        source,
    };
    let mut text = String::from("predicted");
    for c in 0..classes {
        text.push_str(&format!(",p{c}"));
    }
    text.push('\n');
    for row in probs.chunks(classes) {
        let best = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        text.push_str(&best.to_string());
        for p in row {
            text.push_str(&format!(",{p:.6}"));
        }
        text.push('\n');
    }
    std::fs::write(output, text).map_err(out)?;
    Ok(table.rows())
}

/// Accuracy and macro-F1 of the student saved in `model_dir` on a labelled CSV (the model's
/// feature columns plus its label column).
pub fn evaluate_csv(model_dir: &Path, input: &Path) -> Result<(usize, f64, f64), NodeError> {
    let (student, card) = crate::model::Student::load(model_dir)?;
    let table = data::read_labelled_csv(input, &card.label_column, card.student.classes)?
        .reorder(&card.columns, input)?;
    let x = matrix(card.standardiser.apply(&table), table.width())?;
    let predicted: Vec<u32> = student
        .forward(&x)?
        .argmax(candle_core::D::Minus1)
        .map_err(ModelError::from)?
        .to_vec1()
        .map_err(ModelError::from)?;
    Ok((
        table.rows(),
        crate::metrics::accuracy(&predicted, &table.labels),
        crate::metrics::macro_f1(&predicted, &table.labels),
    ))
}

/// The private labeller, if the node runs one.
pub fn private_part(labeller: &Labeller) -> Option<&PrivateLabeller> {
    match labeller {
        Labeller::Private(p) => Some(p),
        Labeller::Student => None,
    }
}

/// The privacy unit of a labeller's releases: `"record"`, or `"none"` without noise.
pub fn privacy_unit(labeller: &Labeller) -> &'static str {
    match private_part(labeller) {
        Some(p) if p.ledger.is_some() => crate::privacy::PRIVACY_UNIT,
        _ => "none",
    }
}

/// The student's training settings for a node in `mode`.
///
/// A private node's student learns from sharpened targets
/// ([`crate::labeller::sharpen_private_target`]): arg-max rows weighted by how clearly they
/// stand above the noise. They are distilled at temperature 1 (cross-entropy on those rows; a
/// high temperature would only flatten a one-hot target) and each row counts by its
/// confidence, so rows that are noise alone teach almost nothing. This overrides any
/// configured temperature for the student (the shard ensemble's MLP teachers keep it).
///
/// In private mode the shard ensemble is the reference teacher for the compression metrics,
/// so a local teacher is trained only if the student distils from it.
pub fn student_training(training: &TrainConfig, mode: PrivacyMode) -> TrainConfig {
    let mut t = training.clone();
    if mode == PrivacyMode::Shards {
        t.temperature = 1.0;
        t.temperature_end = None;
        t.confidence_weighting = true;
        if !t.teacher.distils() {
            t.teacher.enabled = false;
        }
    }
    t
}

/// Builds the node's labeller: the student itself (non-private), or a teacher ensemble on
/// disjoint shards of `private` with its ledger at `ledger_path` (private).
pub fn build_labeller(
    privacy: &PrivacyConfig,
    private: &Labelled,
    public: &candle_core::Tensor,
    classes: usize,
    training: &TrainConfig,
    ledger_path: &Path,
) -> Result<Labeller, NodeError> {
    if privacy.mode == PrivacyMode::None {
        return Ok(Labeller::Student);
    }
    let budget = Budget {
        epsilon: privacy.epsilon,
        delta: privacy.delta,
    };
    budget.validate()?;
    let records = private.len();
    let teachers = if privacy.shards == 0 {
        default_shards(records, privacy.shard_teacher)
    } else {
        privacy.shards
    };
    let shard_size = (records / teachers.max(1)).max(1);
    let radius = match (privacy.shard_teacher, privacy.radius) {
        (TeacherKind::Mlp, _) => None,
        (TeacherKind::Nearest, Some(r)) => Some(r),
        (TeacherKind::Nearest, None) => {
            let rows = public
                .dims2()
                .map_err(ModelError::from)?
                .0
                .min(crate::ensemble::RADIUS_SAMPLE);
            let r = crate::ensemble::public_radius(public, (rows / (2 * classes.max(1))).max(1))?;
            tracing::info!(
                radius = r,
                "nearest-neighbour teachers abstain beyond this distance (read off the public set)"
            );
            r
        }
    };
    let ensemble = TeacherEnsemble::new(
        EnsembleConfig {
            kind: privacy.shard_teacher,
            radius,
            teachers,
            hidden: privacy.teacher_hidden,
            inputs: private.x.dims2().map_err(ModelError::from)?.1,
            classes,
            learning_rate: training.learning_rate,
            batch_size: shard_size.min(privacy.teacher_batch_size),
            temperature: training.temperature,
            seed: training.seed ^ 0x5a4d,
        },
        private.x.clone(),
        private.y.clone(),
    )?;
    let noiseless = budget.epsilon.is_infinite() && privacy.sigma.is_none();
    let ledger = if noiseless {
        None
    } else {
        Some(PrivacyLedger::open(ledger_path, budget)?)
    };
    if let Some(l) = &ledger {
        tracing::info!(
            ledger = %ledger_path.display(),
            epsilon_spent = l.epsilon_spent()?,
            budget_epsilon = budget.epsilon,
            delta = budget.delta,
            teachers,
            records,
            "privacy ledger opened (unit: one record of this node's private data)"
        );
    }
    Ok(Labeller::Private(Box::new(PrivateLabeller {
        ensemble,
        ledger,
        budget,
        fixed_sigma: privacy.sigma,
        local_steps: privacy.teacher_local_steps,
        steps_per_round: privacy.teacher_steps_per_round,
        sigma: None,
        clamp_floor: privacy.clamp_floor,
        votes: privacy.votes,
        rows: privacy.rows,
        balance: privacy.balances_classes(),
        last_release: None,
    })))
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
