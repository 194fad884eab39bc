//! [`NodeBuilder`]: the one way a config and data become a node. `fd-client` (from its TOML
//! config and CSV files) and `fd-sim` (from its in-memory split) both build their nodes here,
//! so a simulated node is wired exactly as a real one.

use crate::federation::secure::SecureIdentity;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fd_transport::TlsIdentity;

use crate::NodeError;
use crate::config::{PrivacyConfig, PrivacyMode};
use crate::data::{Labelled, Standardiser, Table, matrix};
use crate::distill::{Learner, ModelCard, ModelError, Temperature, TrainConfig};
use crate::federation::SessionPlan;
use crate::privacy::release::{Labeller, PrivateLabeller};
use crate::privacy::teachers::{EnsembleConfig, TeacherEnsemble, TeacherKind};
use crate::privacy::{Budget, PrivacyLedger};
use crate::seeds::Stream;

/// How to build a node: what it learns and how it releases.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    /// Classes of the task.
    pub classes: usize,
    /// The private file's label column (recorded in the model card).
    pub label_column: String,
    /// How the student trains, as configured (the builder adapts it to the privacy mode).
    pub training: TrainConfig,
    /// How labels are released.
    pub privacy: PrivacyConfig,
    /// Where the privacy ledger lives (private mode).
    pub ledger: PathBuf,
    /// The fingerprint of the node's whole private data ([`crate::data::Table::fingerprint`]),
    /// which the ledger is bound to.
    pub data_fingerprint: String,
}

/// A built node: everything its session needs, and what it saves afterwards.
#[derive(Debug)]
pub struct Node {
    /// The student, its optimiser and the node's data.
    pub learner: Learner,
    /// How it labels public records (the student, or the private shard ensemble).
    pub labeller: Labeller,
    /// The held-out split it measures itself on.
    pub holdout: Labelled,
    /// The model card (columns and standardisation) to save with the student.
    pub card: ModelCard,
    /// Records in the private training split (public under replace-one adjacency: Hello
    /// carries it).
    pub private_records: usize,
    /// Colluders assumed in secure-aggregation rounds (`privacy.colluders`).
    pub colluders: u32,
}

impl NodeBuilder {
    /// Builds a node from its private training split, its held-out split and the public set.
    pub fn build(&self, train: &Table, holdout: &Table, public: &Table) -> Result<Node, NodeError> {
        let training = student_training(&self.training, self.privacy.mode);
        let prepared = prepare(
            train,
            holdout,
            public,
            self.classes,
            &self.label_column,
            &training,
        )?;
        let learner = Learner::new(
            training.clone(),
            self.classes,
            prepared.train,
            prepared.public.clone(),
        )?;
        // The teachers see only the records the student trains on: the do-no-harm check's
        // held-out records must not reach the target through this node's own votes, or the
        // federated student would look better on them than it is.
        let labeller = build_labeller(
            &self.privacy,
            learner.private(),
            &prepared.public,
            self.classes,
            &training,
            &self.ledger,
            &self.data_fingerprint,
        )?;
        tracing::info!(privacy = %labeller.statement(), "privacy of released labels");
        let private_records = learner.private().len();
        Ok(Node {
            learner,
            labeller,
            holdout: prepared.holdout,
            card: prepared.card,
            private_records,
            colluders: self.privacy.colluders,
        })
    }
}

impl Node {
    /// The session plan for joining the coordinator at `coordinator` (whose certificate names
    /// `server_name`) with `tls`, retrying an unreachable coordinator for `join_retry` at first.
    pub fn plan(
        &self,
        coordinator: SocketAddr,
        server_name: &str,
        tls: TlsIdentity,
        join_retry: Duration,
    ) -> SessionPlan {
        // Private nodes can take part in secure-aggregation rounds; a key that cannot sign
        // adverts leaves them out (the session then says so if a round needs it).
        let secure = match &self.labeller {
            Labeller::Private(_) => match SecureIdentity::new(&tls, None, self.colluders) {
                Ok(identity) => Some(identity),
                Err(e) => {
                    tracing::warn!("secure aggregation unavailable to this node: {e}");
                    None
                }
            },
            Labeller::Student => None,
        };
        SessionPlan {
            secure,
            coordinator,
            server_name: server_name.to_owned(),
            tls,
            private_records: self.private_records as u32,
            holdout: self.holdout.clone(),
            max_frame_len: fd_protocol::DEFAULT_MAX_FRAME_LEN,
            join_retry,
            public_sha256: None,
        }
    }
}

/// A node's data as standardised tensors, ready to train on.
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

/// The share of its records (and of the target's rows) a private node holds out in each fold
/// of its do-no-harm check unless configured: 0.2, five folds, every record held out once
/// (see [`crate::distill::Learner::check_harm`]). The student the node keeps is trained on
/// every record either way, so the check costs the final student nothing; below
/// [`crate::distill::learner::MIN_RECORDS_TO_CHECK`] records there is no check.
pub const PRIVATE_VALIDATION_FRACTION: f64 = 0.2;

/// The student's training settings for a node in `mode`.
///
/// A private node's student learns from sharpened targets
/// ([`crate::distill::target::sharpen_private_target`]): arg-max rows weighted by how clearly they
/// stand above the noise. They are distilled at temperature 1 (cross-entropy on those rows; a
/// high temperature would only flatten a one-hot target) and each row counts by its
/// confidence, so rows that are noise alone teach almost nothing. This overrides any
/// configured temperature for the student (the shard ensemble's MLP teachers keep it).
///
/// In private mode the shard ensemble is the reference teacher for the compression metrics,
/// so a local teacher is trained only if the student distils from it.
///
/// A private node checks by default that the federation did not make it worse
/// ([`crate::distill::HarmCheck`], cross-validated with folds of
/// [`PRIVATE_VALIDATION_FRACTION`] unless `training.validation_fraction` says otherwise).
fn student_training(training: &TrainConfig, mode: PrivacyMode) -> TrainConfig {
    let mut t = training.clone();
    if mode == PrivacyMode::Shards {
        t.validation_fraction
            .get_or_insert(PRIVATE_VALIDATION_FRACTION);
        t.temperature = Temperature::Fixed(1.0);
        t.temperature_end = None;
        t.confidence_weighting = true;
        if !t.teacher.distils() {
            t.teacher.enabled = false;
        }
    }
    t
}

/// Refuses a noiseless run over a ledger that has charged private releases: the budget
/// belongs to the data, and noiseless labels would release it again exactly.
fn refuse_noiseless_over_spent(ledger: &Path) -> Result<(), NodeError> {
    let rho = crate::privacy::rho_charged_at(ledger)?;
    if rho > 0.0 {
        return Err(crate::privacy::PrivacyError::NoiselessOverSpent {
            path: ledger.to_path_buf(),
            rho,
        }
        .into());
    }
    Ok(())
}

/// Builds the node's labeller: the student itself (non-private), or a teacher ensemble on
/// disjoint shards of `private` with its ledger at `ledger_path` (private).
fn build_labeller(
    privacy: &PrivacyConfig,
    private: &Labelled,
    public: &candle_core::Tensor,
    classes: usize,
    training: &TrainConfig,
    ledger_path: &Path,
    data_fingerprint: &str,
) -> Result<Labeller, NodeError> {
    if privacy.mode == PrivacyMode::None {
        return Ok(Labeller::Student);
    }
    let budget = Budget {
        epsilon: privacy.epsilon,
        delta: privacy.delta,
    };
    let records = private.len();
    budget.validate_for(records)?;
    let teachers = privacy.teachers(records);
    let shard_size = (records / teachers.max(1)).max(1);
    let radius = match (privacy.shard_teacher, privacy.radius) {
        (TeacherKind::Mlp, _) => None,
        (TeacherKind::Nearest, Some(r)) => Some(r),
        (TeacherKind::Nearest, None) => {
            let rows = public
                .dims2()
                .map_err(ModelError::from)?
                .0
                .min(crate::privacy::teachers::RADIUS_SAMPLE);
            let r = crate::privacy::teachers::public_radius(
                public,
                (rows / (2 * classes.max(1))).max(1),
            )?;
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
            temperature: training.temperature.start(),
            seed: Stream::ShardTeachers.seed(training.seed),
        },
        private.x.clone(),
        private.y.clone(),
    )?;
    let ledger = if privacy.noiseless() {
        refuse_noiseless_over_spent(ledger_path)?;
        None
    } else {
        Some(PrivacyLedger::open(ledger_path, budget, data_fingerprint)?)
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
        min_snr: privacy.min_snr,
        trust_snr: privacy.trust_snr,
        plan: None,
        last_release: None,
        votes_per_teacher: privacy.vote_cap(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::{Charge, PrivacyError, release_rho, release_sensitivity};

    fn table(rows: usize, labelled: bool) -> Table {
        Table {
            columns: vec!["a".into(), "b".into()],
            features: (0..rows * 2).map(|v| (v % 13) as f32 / 4.0).collect(),
            labels: if labelled {
                (0..rows as u32).map(|i| i % 2).collect()
            } else {
                Vec::new()
            },
        }
    }

    fn builder(dir: &Path, epsilon: f64, data: &Table) -> NodeBuilder {
        NodeBuilder {
            classes: 2,
            label_column: "label".into(),
            training: TrainConfig {
                hidden: vec![4],
                local_steps: 1,
                ..TrainConfig::default()
            },
            privacy: PrivacyConfig {
                mode: PrivacyMode::Shards,
                epsilon,
                ..PrivacyConfig::default()
            },
            ledger: dir.join("ledger.sqlite"),
            data_fingerprint: data.fingerprint(),
        }
    }

    /// The audit's finding: a restart with `epsilon = inf` over a ledger that has spent would
    /// release the same records without noise. It is refused; before any charge it is not.
    #[test]
    fn a_noiseless_restart_over_a_spent_ledger_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (table(40, true), table(10, false));
        let holdout = table(4, true);
        builder(dir.path(), f64::INFINITY, &private)
            .build(&private, &holdout, &public)
            .expect("nothing spent yet: a noiseless run may start");
        let private_run = builder(dir.path(), 4.0, &private);
        private_run
            .build(&private, &holdout, &public)
            .expect("a private node");
        let budget = Budget {
            epsilon: 4.0,
            delta: private_run.privacy.delta,
        };
        let mut ledger =
            PrivacyLedger::open(&private_run.ledger, budget, &private_run.data_fingerprint)
                .unwrap();
        let sensitivity = release_sensitivity(10);
        ledger
            .charge(Charge {
                round: 0,
                queries: 10,
                sigma: 20.0,
                sensitivity,
                rho: release_rho(20, sensitivity, 20.0).unwrap(),
                floor_rho: None,
            })
            .unwrap();
        drop(ledger);
        let err = builder(dir.path(), f64::INFINITY, &private)
            .build(&private, &holdout, &public)
            .unwrap_err();
        assert!(
            matches!(
                err,
                NodeError::Privacy(PrivacyError::NoiselessOverSpent { .. })
            ),
            "{err}"
        );
        // Other data in the same ledger file is refused too.
        let other = table(41, true);
        let err = builder(dir.path(), 4.0, &other)
            .build(&other, &holdout, &public)
            .unwrap_err();
        assert!(
            matches!(
                err,
                NodeError::Privacy(PrivacyError::LedgerForOtherData { .. })
            ),
            "{err}"
        );
    }
}
