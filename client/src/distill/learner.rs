//! The node's learner: its student, its optimiser, its local teacher, and the loop that trains
//! them on the node's data and the global target.
//!
//! Everything here is synchronous and CPU-bound; the session runs it on a blocking thread.

use candle_core::{DType, Tensor};
use candle_nn::{Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use fd_protocol::SoftLabels;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::data::{Labelled, matrix};
use crate::distill::augment::{augment, perturb};
use crate::distill::config::{
    AUTO_TEMPERATURES, Architecture, LocalTeacherConfig, Temperature, TrainConfig,
};
use crate::distill::loss::{distillation_loss, distillation_term};
use crate::distill::optim::FusedAdamW;
use crate::distill::student::{ModelError, Student};
use crate::seeds::Stream;

/// The student, its optimiser and the node's data.
pub struct Learner {
    student: Student,
    optimiser: FusedAdamW,
    private: Labelled,
    public: Tensor,
    /// Public rows covered by the current target and their target probabilities.
    target: Option<(Tensor, Tensor)>,
    /// Per-row weights of the target's distillation terms (with `confidence_weighting`).
    target_weights: Option<Tensor>,
    /// With `dynamic_weighting` and a local teacher: per target row, 1 where the local
    /// teacher's top class is the target's and [`DISAGREEMENT_WEIGHT`] where it is not,
    /// computed once each time the teacher has trained (see [`Learner::train`]).
    target_agreement: Option<Tensor>,
    /// The local teacher's features and logits on every public record, computed once each
    /// time it has trained, when the student distils from it on unperturbed records (see
    /// [`Learner::cache_teacher_outputs`]).
    teacher_public: Option<(Tensor, Tensor)>,
    /// The larger local teacher and what feature distillation needs (see [`LocalTeacher`]).
    teacher: Option<LocalTeacher>,
    /// The student as it was at the end of the previous round (with `self_distillation`).
    previous: Option<Student>,
    /// The temperature of the current round (see [`Learner::set_round`]).
    temperature: f64,
    config: TrainConfig,
    /// Private batches, their jitter and dropout.
    rng: StdRng,
    /// Public batches and their jitter ([`Stream::PublicBatches`]).
    public_rng: StdRng,
    /// The do-no-harm check's cross-validation folds (`None`: no check).
    folds: Option<usize>,
    /// The round count of the federation (from [`Learner::set_round`]).
    rounds: u32,
    /// The do-no-harm check, once made.
    harm: Option<HarmCheck>,
    /// The planner's verdict on the target, once given.
    trust: Option<TargetTrust>,
    /// With `average_rounds`: the running mean of the student's weights at the ends of the
    /// last rounds, and how many it holds.
    average: Option<(Student, usize)>,
    /// With `temperature = "auto"`: the search, once made (at the first target).
    temperature_search: Option<TemperatureSearch>,
}

/// What `temperature = "auto"` found (see [`Learner::search_temperature`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TemperatureSearch {
    /// The temperature the node then trained at, in every round.
    pub chosen: f64,
    /// Private records held out to measure the validation loss (0: too few records to
    /// search; the first temperature is kept).
    pub validation_records: usize,
    /// Optimiser steps of each trial student.
    pub trial_steps: usize,
    /// Each temperature tried, in order, with the trial student's validation loss.
    pub curve: Vec<TemperaturePoint>,
}

/// One temperature of a [`TemperatureSearch`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TemperaturePoint {
    /// The temperature.
    pub temperature: f64,
    /// The trial student's cross-entropy on the held-out private records.
    pub validation_loss: f64,
    /// Its accuracy on them.
    pub validation_acc: f64,
}

/// Rounds of distillation each trial student of a temperature search takes after its local
/// steps (at the first rounds' alpha), against the first target.
pub const TEMPERATURE_TRIAL_ROUNDS: u32 = 3;

/// The search stops once the validation loss has risen this many times in a row.
pub const TEMPERATURE_PATIENCE: usize = 2;

/// The share of private records a temperature search holds out (the first of the do-no-harm
/// check's folds at its default fraction).
pub const TEMPERATURE_VALIDATION_FRACTION: f64 = 0.2;

/// Do no harm by prediction: a private node whose planner predicts its vote sums to be mostly
/// noise (signal-to-noise below `privacy.trust_snr`) does not let the federation's target
/// teach its student, and keeps the student it would have trained alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetTrust {
    /// The planner's signal-to-noise ratio (see `privacy::plan`).
    pub predicted_snr: f64,
    /// The threshold it was held against.
    pub trust_snr: f64,
    /// `"federated"` or `"local-only"`.
    pub kept: String,
}

/// Fewer private records than this and no do-no-harm check is made: a handful of records
/// cannot tell two students apart. The federated student is then kept unchecked (a private
/// node that small is usually stopped earlier, by the planner: see [`TargetTrust`]).
pub const MIN_RECORDS_TO_CHECK: usize = 25;
/// The most cross-validation folds a check uses (a validation fraction of 0.1 or less).
pub const MAX_FOLDS: usize = 10;

/// The fold count of a validation fraction: `1 / fraction` rounded, from 2 to [`MAX_FOLDS`]
/// (0.2: five folds, each a fifth of the records).
pub fn folds_for(fraction: f64) -> usize {
    ((1.0 / fraction).round() as usize).clamp(2, MAX_FOLDS)
}

/// The fold of each of `n` records: a shuffle by `seed` dealt round-robin into `folds` folds,
/// so their sizes differ by at most one.
fn fold_of(n: usize, folds: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut StdRng::seed_from_u64(seed));
    let mut fold = vec![0; n];
    for (position, &record) in order.iter().enumerate() {
        fold[record] = position % folds;
    }
    fold
}

/// How many standard errors the federated student must lead the local-only one by on the
/// held-out target rows to be kept, and must not trail it by on the held-out private records
/// (see [`Learner::check_harm`]): 1.645 is the one-sided 5% point of the normal distribution,
/// so two students that are equally good keep the federated one in at most about one check in
/// twenty. A node that keeps the local-only student ends exactly where it would have stood
/// alone, so doubt resolves that way.
pub const KEEP_FEDERATED_Z: f64 = 1.645;

/// Do no harm: after the federation, the node compares a student trained against the
/// federation's target with one trained on its records alone, each predicting records it never
/// trained on, and keeps the federated one only if the evidence says it is better (see
/// [`Learner::check_harm`]). The student a node keeps never leaves it, so this costs no
/// privacy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HarmCheck {
    /// Private records held out to decide (each once, over the folds).
    pub validation_records: usize,
    /// Cross-validation folds.
    pub folds: usize,
    /// The federated student's class-weighted accuracy on them (see [`class_weights`]).
    pub federated_validation_acc: f64,
    /// The local-only student's class-weighted accuracy on them.
    pub local_only_validation_acc: f64,
    /// The federated student's lead in class-weighted accuracy on the private records over
    /// its standard error (see [`paired_gain`]; 0 when the two students agree on every one).
    pub z: f64,
    /// Target rows held out to decide (each once, over the same number of folds).
    pub target_rows: usize,
    /// The federated student's agreement with the held-out target rows' top classes, each
    /// row weighted by its confidence (see [`crate::distill::row_confidence`]).
    pub federated_target_agreement: f64,
    /// The local-only student's agreement with them.
    pub local_only_target_agreement: f64,
    /// The federated student's lead in that agreement over its standard error (see
    /// [`sign_flip`]).
    pub target_z: f64,
    /// Which student the node kept: `"federated"` if `target_z` reached
    /// [`KEEP_FEDERATED_Z`] and `z` stayed above minus it, otherwise `"local-only"`.
    pub kept: String,
}

/// A class with fewer private records than this weighs in the do-no-harm check as if it had
/// this many (see [`class_weights`]): its recall over a handful of records is mostly noise.
/// On fd-sim's synthetic data (Dirichlet 0.5, 5,000 records a node) plain balanced accuracy
/// let classes of one to five records set the check's standard error, and nodes whose
/// federated students led by 15 to 23 points kept their local-only ones (z 1.3-1.5).
pub const CLASS_WEIGHT_FLOOR: usize = 20;

/// The weight of each record in the do-no-harm check's accuracy: record `i` of class `c`
/// weighs `1 / max(n_c, CLASS_WEIGHT_FLOOR)`, normalised to sum to 1, where `n_c` counts the
/// records of class `c` in `labels`. Classes of at least [`CLASS_WEIGHT_FLOOR`] records count
/// the same, as in balanced accuracy; rarer ones count in proportion to their records.
///
/// Balanced, not plain, accuracy: a node's records are skewed towards a few classes, where
/// its local-only student is at its strongest and where a federated student, which also
/// learns the classes the node barely holds, gives a little up (on the synthetic set at
/// epsilon 2 every node's federated student lost in plain accuracy on its own records while
/// gaining about ten points on the test set). The classes the node lacks cannot be measured,
/// and the federated student is the one that knows them.
pub fn class_weights(labels: &[u32]) -> Vec<f64> {
    let mut per_class: std::collections::BTreeMap<u32, usize> = Default::default();
    for &l in labels {
        *per_class.entry(l).or_default() += 1;
    }
    let raw: Vec<f64> = labels
        .iter()
        .map(|l| 1.0 / per_class[l].max(CLASS_WEIGHT_FLOOR) as f64)
        .collect();
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / total).collect()
}

/// The class-weighted accuracy of `predicted` against `labels` ([`class_weights`]; 0 for no
/// labels).
pub fn weighted_accuracy(predicted: &[u32], labels: &[u32]) -> f64 {
    predicted
        .iter()
        .zip(labels)
        .zip(class_weights(labels))
        .map(|((p, l), w)| if p == l { w } else { 0.0 })
        .sum()
}

/// The federated student's lead over the local-only one on the same labelled records, in
/// class-weighted accuracy ([`class_weights`]), and that lead over its standard error (see
/// [`sign_flip`]).
pub fn paired_gain(federated: &[u32], local: &[u32], labels: &[u32]) -> (f64, f64) {
    sign_flip(federated, local, labels, &class_weights(labels))
}

/// A paired test of two classifiers on the same weighted records. The lead is
/// `D = sum w_i (f_i - l_i)` with `f_i` and `l_i` each classifier's 0/1 agreement with label
/// `i`; under the hypothesis that the two are equally good each disagreement is equally
/// likely to fall either way, so `D` has variance `sum w_i^2 (f_i - l_i)^2` (a sign-flip
/// test). Returns `(D, D / sqrt(variance))`, and `(0, 0)` when the two never disagree.
pub fn sign_flip(federated: &[u32], local: &[u32], labels: &[u32], weights: &[f64]) -> (f64, f64) {
    let (mut lead, mut variance) = (0.0, 0.0);
    for (((&f, &l), &y), &w) in federated.iter().zip(local).zip(labels).zip(weights) {
        let d = f64::from(u8::from(f == y)) - f64::from(u8::from(l == y));
        lead += w * d;
        variance += w * w * d * d;
    }
    if variance == 0.0 {
        return (0.0, 0.0);
    }
    (lead, lead / variance.sqrt())
}

/// A node's larger local teacher, its optimiser, and the learned projection from the student's
/// representation to the teacher's (trained with the student, used only for feature
/// distillation, never saved).
struct LocalTeacher {
    net: Student,
    optimiser: FusedAdamW,
    /// The teacher's own batch stream, so adding a teacher leaves the student's batches as
    /// they were.
    rng: StdRng,
    /// The teacher's own public batch stream.
    public_rng: StdRng,
    projection: Linear,
    _projection_vars: VarMap,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("student", &self.student)
            .field("teacher", &self.teacher.as_ref().map(|t| &t.net))
            .field("private_rows", &self.private.len())
            .finish()
    }
}

fn adamw(vars: Vec<candle_core::Var>, config: &TrainConfig) -> Result<FusedAdamW, ModelError> {
    Ok(FusedAdamW::new(
        vars,
        ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: config.weight_decay,
            ..ParamsAdamW::default()
        },
    )?)
}

impl Learner {
    /// A fresh student for `private` (standardised, labelled) and `public` (standardised
    /// `[m, inputs]`) data, and the local teacher if `config.teacher.enabled`.
    pub fn new(
        config: TrainConfig,
        classes: usize,
        private: Labelled,
        public: Tensor,
    ) -> Result<Learner, ModelError> {
        let inputs = private.x.dims2()?.1;
        if let Some(shape) = config.image
            && shape.height * shape.width != inputs
        {
            return Err(ModelError::Config(format!(
                "training.image is {}x{} = {} pixels, but the data has {inputs} features",
                shape.height,
                shape.width,
                shape.height * shape.width
            )));
        }
        if config.architecture == Architecture::Cnn && config.image.is_none() {
            return Err(ModelError::Config(
                "training.architecture = \"cnn\" needs image data: set training.image".into(),
            ));
        }
        let student = Student::new(
            config.student_config(inputs, classes),
            Stream::StudentWeights.seed(config.seed),
        )?;
        let mut student_vars = student.vars();
        let teacher = match config.teacher_config(inputs, classes) {
            Some(tc) => {
                let net = Student::new(tc, Stream::TeacherWeights.seed(config.seed))?;
                let optimiser = adamw(net.vars(), &config)?;
                let vars = VarMap::new();
                let vb = VarBuilder::from_varmap(&vars, DType::F32, &crate::distill::device());
                let projection = candle_nn::linear(
                    student.config().feature_width(),
                    net.config().feature_width(),
                    vb.pp("projection"),
                )?;
                if config.teacher.feature_weight > 0.0 {
                    student_vars.extend(vars.all_vars());
                }
                Some(LocalTeacher {
                    net,
                    optimiser,
                    rng: StdRng::seed_from_u64(Stream::TeacherBatches.seed(config.seed)),
                    public_rng: StdRng::seed_from_u64(
                        Stream::TeacherPublicBatches.seed(config.seed),
                    ),
                    projection,
                    _projection_vars: vars,
                })
            }
            None => None,
        };
        let optimiser = adamw(student_vars, &config)?;
        let fraction = config.validation_fraction.unwrap_or(0.0);
        let folds =
            (fraction > 0.0 && private.len() >= MIN_RECORDS_TO_CHECK).then(|| folds_for(fraction));
        Ok(Learner {
            folds,
            rounds: 0,
            harm: None,
            trust: None,
            average: None,
            temperature_search: None,
            student,
            optimiser,
            private,
            public,
            target: None,
            target_weights: None,
            target_agreement: None,
            teacher_public: None,
            teacher,
            previous: None,
            temperature: config.temperature.start(),
            rng: StdRng::seed_from_u64(Stream::StudentBatches.seed(config.seed)),
            public_rng: StdRng::seed_from_u64(Stream::PublicBatches.seed(config.seed)),
            config,
        })
    }

    /// A student trained on every private record alone, with as many steps as the federated
    /// student took: what the node would have had without joining.
    pub fn local_only(&self) -> Result<Learner, ModelError> {
        self.retrained(self.private.clone(), None)
    }

    /// Do no harm by prediction: with `predicted_snr` below `trust_snr` the student is
    /// replaced by [`Learner::local_only`]'s, exactly the student the node would have trained
    /// alone, and no validation check follows. Later calls return the first verdict.
    pub fn weigh_target(
        &mut self,
        predicted_snr: f64,
        trust_snr: f64,
    ) -> Result<&TargetTrust, ModelError> {
        let verdict = match self.trust.take() {
            Some(verdict) => verdict,
            None => {
                let trusted = predicted_snr >= trust_snr;
                if !trusted {
                    self.student = self.local_only()?.student;
                    // The validation check would compare a student that is no longer kept.
                    self.folds = None;
                }
                TargetTrust {
                    predicted_snr,
                    trust_snr,
                    kept: if trusted { "federated" } else { "local-only" }.into(),
                }
            }
        };
        Ok(self.trust.insert(verdict))
    }

    /// The planner's verdict on the target, if one was given.
    pub fn target_trust(&self) -> Option<&TargetTrust> {
        self.trust.as_ref()
    }

    /// A fresh student trained on `private` as the federated one was, step for step: the
    /// local steps, then each round's steps with that round's alpha, but all against the rows
    /// `target_rows` of the final target (`Some`; all of them: [`Learner::all_target_rows`]),
    /// or on the private records alone (`None`; then it is the local-only baseline exactly).
    /// No local teacher, no validation split.
    fn retrained(
        &self,
        private: Labelled,
        target_rows: Option<&[u32]>,
    ) -> Result<Learner, ModelError> {
        let classes = self.student.config().classes;
        let mut learner = Learner::new(alone(&self.config), classes, private, self.public.clone())?;
        learner.train(learner.config.local_steps, 1.0)?;
        let rounds = self.rounds.max(1);
        let target = match (target_rows, &self.target) {
            (Some(rows), Some((x, p))) if !rows.is_empty() => {
                let ids = Tensor::new(rows, &crate::distill::device())?;
                let weights = match &self.target_weights {
                    Some(w) => Some(w.index_select(&ids, 0)?),
                    None => None,
                };
                Some((
                    (x.index_select(&ids, 0)?, p.index_select(&ids, 0)?),
                    weights,
                ))
            }
            _ => None,
        };
        if let Some((rows, weights)) = target {
            learner.target = Some(rows);
            learner.target_weights = weights;
            for round in 0..rounds {
                learner.set_round(round, rounds)?;
                let alpha = learner.config.alpha(round, rounds);
                learner.train(learner.config.steps_per_round, alpha)?;
            }
        } else {
            learner.train(learner.config.steps_per_round * rounds as usize, 1.0)?;
        }
        Ok(learner)
    }

    /// Every row of the current target (none without one).
    fn all_target_rows(&self) -> Vec<u32> {
        let rows = self
            .target
            .as_ref()
            .map_or(0, |(x, _)| x.dim(0).unwrap_or(0));
        (0..rows as u32).collect()
    }

    /// Do no harm (with `validation_fraction`), by cross-validation on two kinds of records.
    ///
    /// The private records are dealt into [`folds_for`] folds, and so are the rows of the
    /// federation's final target. For each fold two fresh students are trained on the other
    /// folds, one against the other folds' target rows and one on the records alone, and both
    /// predict the fold's private records and target rows. Every private record and every
    /// target row is thus predicted once by students that never trained on it. Then:
    ///
    /// - On the target rows, which cover every class the federation labels, the federated
    ///   student must agree with the target's top classes (rows weighted by confidence) more
    ///   than the local-only one by [`KEEP_FEDERATED_Z`] standard errors ([`sign_flip`]). The
    ///   node's own records cannot show this: they hold only its own classes, where a student
    ///   trained alone is at its strongest, while what the federation adds is mostly the
    ///   classes the node lacks.
    /// - On the private records, whose labels are true where the target's may be noise, the
    ///   federated student must not be worse by as many standard errors ([`paired_gain`]).
    ///
    /// Both must hold to keep the federated student; the student kept is then trained again,
    /// the same way, on every private record (and every target row) and replaces the student.
    /// A node that keeps the local-only student thus ends exactly where it would have stood
    /// alone, and without evidence (no target, a target of a few rows) that is what it keeps.
    /// Returns the check (`None` without one); later calls return the first check.
    pub fn check_harm(&mut self) -> Result<Option<&HarmCheck>, ModelError> {
        let Some(folds) = self.folds else {
            return Ok(None);
        };
        if self.harm.is_none() {
            let n = self.private.len();
            let fold = fold_of(n, folds, Stream::Validation.seed(self.config.seed));
            let all_rows = self.all_target_rows();
            let t = all_rows.len();
            let target_fold = fold_of(t, folds, Stream::TargetValidation.seed(self.config.seed));
            let (target_x, target_labels, target_weights) = match &self.target {
                Some((x, p)) => {
                    let labels: Vec<u32> = p.argmax(candle_core::D::Minus1)?.to_vec1()?;
                    // The training weights are these confidences when confidence weighting
                    // is on ([`Learner::set_target`]); otherwise they are computed here.
                    let confidence: Vec<f32> = match &self.target_weights {
                        Some(w) => w.to_vec1()?,
                        None => crate::distill::row_confidence(p)?.to_vec1()?,
                    };
                    let total: f64 = confidence.iter().map(|&c| f64::from(c)).sum();
                    let weights = confidence
                        .iter()
                        .map(|&c| {
                            if total > 0.0 {
                                f64::from(c) / total
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    (Some(x.clone()), labels, weights)
                }
                None => (None, Vec::new(), Vec::new()),
            };
            let (mut federated, mut local) = (vec![0u32; n], vec![0u32; n]);
            let (mut federated_t, mut local_t) = (vec![0u32; t], vec![0u32; t]);
            for f in 0..folds {
                let (held, rest): (Vec<u32>, Vec<u32>) =
                    (0..n as u32).partition(|&r| fold[r as usize] == f);
                let (held_t, rest_t): (Vec<u32>, Vec<u32>) = all_rows
                    .iter()
                    .partition(|&&r| target_fold[r as usize] == f);
                let (train, test) = (self.private.rows(&rest)?, self.private.rows(&held)?);
                let with = self.retrained(train.clone(), Some(&rest_t))?;
                let alone = self.retrained(train, None)?;
                for ((&r, p), a) in held
                    .iter()
                    .zip(with.predictions(&test.x)?)
                    .zip(alone.predictions(&test.x)?)
                {
                    federated[r as usize] = p;
                    local[r as usize] = a;
                }
                if let Some(x) = target_x.as_ref().filter(|_| !held_t.is_empty()) {
                    let x = x.index_select(&Tensor::new(held_t.as_slice(), x.device())?, 0)?;
                    for ((&r, p), a) in held_t
                        .iter()
                        .zip(with.predictions(&x)?)
                        .zip(alone.predictions(&x)?)
                    {
                        federated_t[r as usize] = p;
                        local_t[r as usize] = a;
                    }
                }
            }
            let labels = &self.private.labels;
            let (_, z) = paired_gain(&federated, &local, labels);
            let (_, target_z) = sign_flip(&federated_t, &local_t, &target_labels, &target_weights);
            // A lead within the noise keeps the local-only student: the node then ends exactly
            // where it would have stood alone, while a federated student kept on luck can end
            // below it.
            let keep_federated = target_z >= KEEP_FEDERATED_Z && z > -KEEP_FEDERATED_Z;
            let agreement = |predicted: &[u32]| -> f64 {
                predicted
                    .iter()
                    .zip(&target_labels)
                    .zip(&target_weights)
                    .map(|((p, l), w)| if p == l { *w } else { 0.0 })
                    .sum()
            };
            let target = keep_federated.then_some(all_rows.as_slice());
            self.student = self.retrained(self.private.clone(), target)?.student;
            self.harm = Some(HarmCheck {
                validation_records: n,
                folds,
                federated_validation_acc: weighted_accuracy(&federated, labels),
                local_only_validation_acc: weighted_accuracy(&local, labels),
                z,
                target_rows: t,
                federated_target_agreement: agreement(&federated_t),
                local_only_target_agreement: agreement(&local_t),
                target_z,
                kept: if keep_federated {
                    "federated"
                } else {
                    "local-only"
                }
                .into(),
            });
        }
        Ok(self.harm.as_ref())
    }

    /// `temperature = "auto"`: picks the distillation temperature by the playbook's procedure,
    /// on the node's own records and the current target only (so it costs no privacy).
    ///
    /// A fifth of the private records ([`TEMPERATURE_VALIDATION_FRACTION`]) is held out. For
    /// each temperature of [`AUTO_TEMPERATURES`] in turn, from 1 up in steps of 0.5, a fresh
    /// trial student (no local teacher) trains on the other records as the federated one does
    /// (its local steps, then [`TEMPERATURE_TRIAL_ROUNDS`] rounds against the current target
    /// at that temperature), and its cross-entropy on the held-out records is the point of the
    /// curve. The search stops once the loss has risen [`TEMPERATURE_PATIENCE`] times in a row
    /// and keeps the temperature of the lowest loss. With fewer than [`MIN_RECORDS_TO_CHECK`]
    /// records (or no target) there is nothing to measure and the first temperature is kept.
    pub fn search_temperature(&self) -> Result<TemperatureSearch, ModelError> {
        let n = self.private.len();
        let trial_steps = self.config.local_steps
            + self.config.steps_per_round * TEMPERATURE_TRIAL_ROUNDS as usize;
        let unsearched = TemperatureSearch {
            chosen: AUTO_TEMPERATURES[0],
            validation_records: 0,
            trial_steps: 0,
            curve: Vec::new(),
        };
        let Some(target) = self.target.clone() else {
            return Ok(unsearched);
        };
        if n < MIN_RECORDS_TO_CHECK {
            return Ok(unsearched);
        }
        let folds = folds_for(TEMPERATURE_VALIDATION_FRACTION);
        let fold = fold_of(n, folds, Stream::Validation.seed(self.config.seed));
        let (held, rest): (Vec<u32>, Vec<u32>) =
            (0..n as u32).partition(|&r| fold[r as usize] == 0);
        let (train, validation) = (self.private.rows(&rest)?, self.private.rows(&held)?);
        let rounds = self.rounds.max(TEMPERATURE_TRIAL_ROUNDS);
        let classes = self.student.config().classes;
        let mut curve: Vec<TemperaturePoint> = Vec::new();
        let mut rises = 0;
        for &t in &AUTO_TEMPERATURES {
            let config = TrainConfig {
                temperature: Temperature::Fixed(t),
                average_rounds: 0,
                ..alone(&self.config)
            };
            let mut trial = Learner::new(config, classes, train.clone(), self.public.clone())?;
            trial.train(trial.config.local_steps, 1.0)?;
            trial.target = Some(target.clone());
            trial.target_weights = self.target_weights.clone();
            for round in 0..TEMPERATURE_TRIAL_ROUNDS {
                trial.set_round(round, rounds)?;
                let alpha = trial.config.alpha(round, rounds);
                trial.train(trial.config.steps_per_round, alpha)?;
            }
            let logits = trial.student.forward(&validation.x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &validation.y)?;
            let point = TemperaturePoint {
                temperature: t,
                validation_loss: f64::from(loss.to_scalar::<f32>()?),
                validation_acc: trial.accuracy(&validation)?,
            };
            rises = match curve.last() {
                Some(last) if point.validation_loss > last.validation_loss => rises + 1,
                _ => 0,
            };
            curve.push(point);
            if rises >= TEMPERATURE_PATIENCE {
                break;
            }
        }
        let best = curve
            .iter()
            .min_by(|a, b| a.validation_loss.total_cmp(&b.validation_loss))
            .map_or(AUTO_TEMPERATURES[0], |p| p.temperature);
        Ok(TemperatureSearch {
            chosen: best,
            validation_records: held.len(),
            trial_steps,
            curve,
        })
    }

    /// The temperature search, if one was made (`temperature = "auto"`).
    pub fn temperature_search(&self) -> Option<&TemperatureSearch> {
        self.temperature_search.as_ref()
    }

    /// The do-no-harm check, if it was made.
    pub fn harm_check(&self) -> Option<&HarmCheck> {
        self.harm.as_ref()
    }

    /// The student.
    pub fn student(&self) -> &Student {
        &self.student
    }

    /// The local teacher, if the config enables one.
    pub fn local_teacher(&self) -> Option<&Student> {
        self.teacher.as_ref().map(|t| &t.net)
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Number of public records.
    pub fn public_records(&self) -> usize {
        self.public.dims()[0]
    }

    /// All standardised public records `[m, inputs]`.
    pub fn public(&self) -> &Tensor {
        &self.public
    }

    /// The temperature training uses now.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// Moves to `round` of `rounds`: sets the scheduled temperature and, with
    /// `self_distillation`, snapshots the student as the previous round's model.
    pub fn set_round(&mut self, round: u32, rounds: u32) -> Result<(), ModelError> {
        self.rounds = rounds;
        self.temperature = match &self.temperature_search {
            Some(search) => search.chosen,
            None => self.config.temperature_at(round, rounds),
        };
        if self.config.learning_rate_end.is_some() {
            self.optimiser
                .set_learning_rate(self.config.learning_rate_at(round, rounds));
        }
        let averaged = self.config.average_rounds as u32;
        if averaged > 0 && round > 0 && round + averaged > rounds {
            // The student now is the one at the end of round `round - 1`.
            self.add_to_average()?;
        }
        if self.config.self_distillation > 0.0 && round > 0 {
            self.previous = Some(self.student.snapshot()?);
        }
        Ok(())
    }

    /// Adds the current student's weights to the running mean (see `average_rounds`).
    fn add_to_average(&mut self) -> Result<(), ModelError> {
        match &mut self.average {
            Some((mean, count)) => {
                *count += 1;
                mean.blend(&self.student, 1.0 / *count as f64)?;
            }
            None => self.average = Some((self.student.snapshot()?, 1)),
        }
        Ok(())
    }

    /// With `average_rounds`: adds the student after the final distillation to the running
    /// mean of the last rounds' students and keeps the mean as the student. Nothing without.
    pub fn finish_average(&mut self) -> Result<(), ModelError> {
        if self.config.average_rounds == 0 {
            return Ok(());
        }
        self.add_to_average()?;
        if let Some((mean, _)) = self.average.take() {
            self.student.blend(&mean, 1.0)?;
        }
        Ok(())
    }

    /// Installs the global target. `target` must have been validated against the public set
    /// size and class count (the session does).
    pub fn set_target(&mut self, target: &SoftLabels) -> Result<(), ModelError> {
        if target.is_empty() {
            self.target = None;
            return Ok(());
        }
        let device = crate::distill::device();
        let ids = Tensor::new(target.query_ids.as_slice(), &device)?;
        let x = self.public.index_select(&ids, 0)?;
        let mut p = matrix(target.probs.clone(), target.classes as usize)?;
        if let Some(t) = self.config.target_temperature {
            let logp = p.clamp(1e-7f32, 1f32)?.log()?;
            p = candle_nn::ops::softmax_last_dim(&(logp / t)?)?;
        }
        self.target_weights = if self.config.confidence_weighting {
            Some(crate::distill::row_confidence(&p)?)
        } else {
            None
        };
        self.target = Some((x, p));
        // The teacher's agreement with the new rows is computed when it next trains.
        self.target_agreement = None;
        if self.config.temperature.is_auto() && self.temperature_search.is_none() {
            let search = self.search_temperature()?;
            tracing::info!(
                chosen = search.chosen,
                validation_records = search.validation_records,
                curve = ?search
                    .curve
                    .iter()
                    .map(|p| (p.temperature, p.validation_loss))
                    .collect::<Vec<_>>(),
                "temperature search: T = {} (validation loss by T)",
                search.chosen
            );
            self.temperature = search.chosen;
            self.temperature_search = Some(search);
        }
        Ok(())
    }

    fn batch(&mut self, rows: usize) -> Result<Tensor, ModelError> {
        batch_indices(&mut self.rng, self.config.batch_size, rows)
    }

    /// Perturbs a training batch: random image shifts, then Gaussian jitter, as configured.
    fn jitter(&mut self, x: Tensor) -> Result<Tensor, ModelError> {
        augment(
            &mut self.rng,
            x,
            self.config.image,
            self.config.subpixel_shift,
            self.config.max_shift,
            self.config.input_noise,
        )
    }

    /// The private cross-entropy on a fresh batch, mixed with the distillation term towards
    /// the global target on a fresh public batch when there is one and `alpha < 1`.
    /// `public_batch` is the public batch's row count. `student`: the loss is the student's
    /// (with its dropout and, with `dynamic_weighting`, dynamic row weights), not the local
    /// teacher's.
    fn supervised_loss(
        &mut self,
        net: &Student,
        alpha: f64,
        student: bool,
        public_batch: usize,
    ) -> Result<Tensor, ModelError> {
        let idx = self.batch(self.private.len())?;
        let x = self.private.x.index_select(&idx, 0)?;
        let x = self.jitter(x)?;
        let y = self.private.y.index_select(&idx, 0)?;
        let mut rng = (student && net.config().dropout > 0.0)
            .then(|| StdRng::seed_from_u64(self.rng.random()));
        Ok(match self.target.clone() {
            Some((tx, tp)) if alpha < 1.0 => {
                let idx = batch_indices(&mut self.public_rng, public_batch, tx.dims()[0])?;
                let mut public_x = tx.index_select(&idx, 0)?;
                let mut public_p = tp.index_select(&idx, 0)?;
                let mut weights = match &self.target_weights {
                    Some(w) => Some(w.index_select(&idx, 0)?),
                    None => None,
                };
                let dynamic = student && self.config.dynamic_weighting;
                if dynamic {
                    // The rows' reliability, before mixup so that mixing carries it along.
                    let confidence = match weights {
                        Some(w) => w,
                        None => crate::distill::row_confidence(&public_p)?,
                    };
                    weights = Some(match &self.target_agreement {
                        Some(a) => (confidence * a.index_select(&idx, 0)?)?,
                        None => confidence,
                    });
                }
                if self.config.public_mixup > 0.0 {
                    (public_x, public_p, weights) = mixup(
                        &mut self.public_rng,
                        public_x,
                        public_p,
                        weights,
                        self.config.public_mixup,
                    )?;
                }
                let public_x = augment(
                    &mut self.public_rng,
                    public_x,
                    self.config.image,
                    self.config.subpixel_shift,
                    self.config.max_shift,
                    self.config.input_noise,
                )?;
                // One forward pass over both batches: at batch 32 a pass is mostly per-op
                // overhead, so two passes cost nearly twice one of twice the rows.
                let rows = x.dims()[0];
                let both = net.forward_t(&Tensor::cat(&[&x, &public_x], 0)?, rng.as_mut())?;
                let logits = both.narrow(0, 0, rows)?;
                let public_logits = both.narrow(0, rows, both.dims()[0] - rows)?;
                if let (true, Some(reliability)) = (dynamic, &weights) {
                    weights = Some(dynamic_weights(&public_logits, &public_p, reliability)?);
                }
                distillation_loss(
                    &logits,
                    &y,
                    &public_logits,
                    &public_p,
                    alpha,
                    self.temperature,
                    weights.as_ref(),
                )?
            }
            _ => candle_nn::loss::cross_entropy(&net.forward_t(&x, rng.as_mut())?, &y)?,
        })
    }

    /// A batch of public records for the teacher and self-distillation terms: perturbed (one
    /// pixel shifts for images, Gaussian jitter otherwise) with `teacher.augment`.
    /// Returns the rows' indices and the (perturbed) rows.
    fn public_batch(&mut self) -> Result<(Tensor, Tensor), ModelError> {
        let rows = self.public_records();
        let idx = batch_indices(&mut self.public_rng, self.config.batch_size, rows)?;
        let x = self.public.index_select(&idx, 0)?;
        if !self.config.teacher.augment {
            return Ok((idx, x));
        }
        let (shift, noise) = match self.config.image {
            Some(_) => (1, 0.0),
            None => (0, self.config.input_noise),
        };
        let x = perturb(&mut self.public_rng, x, self.config.image, shift, noise)?;
        Ok((idx, x))
    }

    /// Runs `steps` optimiser steps. Without a target (or with `alpha == 1`) the loss is the
    /// private cross-entropy alone; otherwise the full distillation loss. The local teacher
    /// (if any) trains first on the same kind of loss, then its logits and features are
    /// distilled into the student as configured. Returns the last loss.
    pub fn train(&mut self, steps: usize, alpha: f64) -> Result<f64, ModelError> {
        if let Some(mut teacher) = self.teacher.take() {
            let teacher_steps = if steps == 0 {
                0
            } else if self.target.is_none() {
                self.config.teacher.local_steps
            } else {
                self.config.teacher.steps_per_round
            };
            // The teacher draws its batches from its own stream.
            std::mem::swap(&mut self.rng, &mut teacher.rng);
            std::mem::swap(&mut self.public_rng, &mut teacher.public_rng);
            let result = (|| {
                for _ in 0..teacher_steps {
                    // The local teacher is a reference: `public_batch_size` is the student's.
                    let batch = self.config.batch_size;
                    let loss = self.supervised_loss(&teacher.net, alpha, false, batch)?;
                    teacher.optimiser.backward_step(&loss)?;
                }
                Ok::<_, ModelError>(())
            })();
            std::mem::swap(&mut self.rng, &mut teacher.rng);
            std::mem::swap(&mut self.public_rng, &mut teacher.public_rng);
            self.teacher = Some(teacher);
            result?;
            self.cache_teacher_outputs()?;
        }
        let student = self.student.shared();
        let mut last = f64::NAN;
        let public_batch = self
            .config
            .public_batch_size
            .unwrap_or(self.config.batch_size);
        for _ in 0..steps {
            let mut loss = self.supervised_loss(&student, alpha, true, public_batch)?;
            loss = (loss + self.teacher_terms(&student)?)?;
            if let (Some(previous), true) =
                (self.previous.as_ref(), self.config.self_distillation > 0.0)
            {
                let previous = previous.shared();
                let (_, x) = self.public_batch()?;
                let p = candle_nn::ops::softmax_last_dim(&previous.forward(&x)?)?;
                let kd = distillation_term(&student.forward(&x)?, &p.detach(), self.temperature)?;
                loss = (loss + (kd * self.config.self_distillation)?)?;
            }
            self.optimiser.backward_step(&loss)?;
            last = loss.to_scalar::<f32>()? as f64;
        }
        Ok(last)
    }

    /// Computes what the student's steps need from the local teacher as it stands after its
    /// steps: its features and logits on the public records when the student distils from it
    /// (unperturbed), and with `dynamic_weighting` its agreement with each target row. Once per
    /// `train` call (a round), rather than a teacher pass over every public batch.
    fn cache_teacher_outputs(&mut self) -> Result<(), ModelError> {
        // Unperturbed public records: the teacher terms index these instead of a teacher pass
        // over each step's batch (with `teacher.augment` each batch is new, so nothing to keep).
        self.teacher_public = match &self.teacher {
            Some(teacher) if self.config.teacher.distils() && !self.config.teacher.augment => {
                Some(teacher.net.features_and_logits(&self.public, None)?)
            }
            _ => None,
        };
        let (Some(teacher), Some((x, p)), true) = (
            self.teacher.as_ref(),
            self.target.as_ref(),
            self.config.dynamic_weighting,
        ) else {
            return Ok(());
        };
        let teacher_top = teacher.net.forward(x)?.argmax(candle_core::D::Minus1)?;
        let target_top = p.argmax(candle_core::D::Minus1)?;
        let same = teacher_top.eq(&target_top)?.to_dtype(DType::F32)?;
        // 1 where they agree, DISAGREEMENT_WEIGHT where they do not.
        self.target_agreement = Some(same.affine(1.0 - DISAGREEMENT_WEIGHT, DISAGREEMENT_WEIGHT)?);
        Ok(())
    }

    /// `logit_weight * T^2 KL(teacher_T || student_T) + feature_weight * MSE(P s, t)` on a
    /// public batch; a zero scalar without a teacher or with both weights 0.
    fn teacher_terms(&mut self, student: &Student) -> Result<Tensor, ModelError> {
        let zero = Tensor::new(0f32, &crate::distill::device())?;
        let (feature_weight, logit_weight) = (
            self.config.teacher.feature_weight,
            self.config.teacher.logit_weight,
        );
        if self.teacher.is_none() || (feature_weight == 0.0 && logit_weight == 0.0) {
            return Ok(zero);
        }
        let (idx, x) = self.public_batch()?;
        let Some(teacher) = self.teacher.as_ref() else {
            return Ok(zero);
        };
        let (t_features, t_logits) = match &self.teacher_public {
            Some((features, logits)) => (
                features.index_select(&idx, 0)?,
                logits.index_select(&idx, 0)?,
            ),
            None => teacher.net.features_and_logits(&x, None)?,
        };
        let (s_features, s_logits) = student.features_and_logits(&x, None)?;
        let mut loss = zero;
        if logit_weight > 0.0 {
            let p = candle_nn::ops::softmax_last_dim(&t_logits.detach())?;
            let kd = distillation_term(&s_logits, &p, self.temperature)?;
            loss = (loss + (kd * logit_weight)?)?;
        }
        if feature_weight > 0.0 {
            let projected = teacher.projection.forward(&s_features)?;
            let mse = candle_nn::loss::mse(&projected, &t_features.detach())?;
            loss = (loss + (mse * feature_weight)?)?;
        }
        Ok(loss)
    }

    /// The current target: public rows `[t, inputs]` and their probabilities `[t, classes]`.
    pub fn target(&self) -> Option<(Tensor, Tensor)> {
        self.target.clone()
    }

    /// Standardised public rows for the given record ids.
    pub fn public_rows(&self, query_ids: &[u32]) -> Result<Tensor, ModelError> {
        let ids = Tensor::new(query_ids, &crate::distill::device())?;
        Ok(self.public.index_select(&ids, 0)?)
    }

    /// The private training set.
    pub fn private(&self) -> &Labelled {
        &self.private
    }

    /// The student's probability vectors for the given public records.
    pub fn label(&self, query_ids: &[u32]) -> Result<SoftLabels, ModelError> {
        let x = self.public_rows(query_ids)?;
        Ok(SoftLabels {
            classes: self.student.config().classes as u16,
            query_ids: query_ids.to_vec(),
            probs: self.student.probabilities(&x)?,
        })
    }

    /// Accuracy of the student on a labelled set.
    pub fn accuracy(&self, set: &Labelled) -> Result<f64, ModelError> {
        self.student.accuracy(&set.x, &set.labels)
    }

    /// The student's predicted class of each row of `x`.
    fn predictions(&self, x: &Tensor) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .student
            .forward(x)?
            .argmax(candle_core::D::Minus1)?
            .to_vec1()?)
    }
}

/// The weight, relative to 1, of a target row whose top class the node's local teacher does
/// not share (with `dynamic_weighting`).
pub const DISAGREEMENT_WEIGHT: f64 = 0.5;

/// Dynamic distillation weights of a public batch (with `dynamic_weighting`): each row's
/// `reliability` (the target's confidence, `row_confidence`, times its agreement with the local
/// teacher where there is one: see [`Learner::supervised_loss`]) times its difficulty for the
/// student (`0.5 + (1 - q)`, with `q` the student's probability of the target's top class),
/// scaled to average 1 over the batch so that alpha keeps its meaning.
fn dynamic_weights(
    student_logits: &Tensor,
    target: &Tensor,
    reliability: &Tensor,
) -> Result<Tensor, ModelError> {
    let q = candle_nn::ops::softmax_last_dim(&student_logits.detach())?;
    let top = target.argmax_keepdim(candle_core::D::Minus1)?;
    let difficulty = q.gather(&top, 1)?.squeeze(1)?.affine(-1.0, 1.5)?;
    let raw = (reliability * difficulty)?;
    let mean = raw.mean_all()?.to_scalar::<f32>()?.max(1e-6);
    Ok((raw / f64::from(mean))?)
}

/// Mixup of a public batch: row `i` becomes `l_i x_i + (1 - l_i) x_j` for a random pairing
/// `j` within the batch and `l_i ~ Beta(concentration, concentration)`, and its target
/// probabilities and weight are mixed by the same `l_i`.
fn mixup(
    rng: &mut StdRng,
    x: Tensor,
    p: Tensor,
    weights: Option<Tensor>,
    concentration: f64,
) -> Result<(Tensor, Tensor, Option<Tensor>), ModelError> {
    let n = x.dim(0)?;
    let beta = rand_distr::Beta::new(concentration, concentration)
        .map_err(|e| ModelError::Config(e.to_string()))?;
    let shares: Vec<f32> = (0..n)
        .map(|_| rand_distr::Distribution::sample(&beta, rng) as f32)
        .collect();
    let mut pairing: Vec<u32> = (0..n as u32).collect();
    rand::seq::SliceRandom::shuffle(pairing.as_mut_slice(), rng);
    let device = x.device().clone();
    let share = Tensor::from_vec(shares, (n, 1), &device)?;
    let rest = share.affine(-1.0, 1.0)?;
    let pairing = Tensor::new(pairing.as_slice(), &device)?;
    let mix = |t: &Tensor, share: &Tensor, rest: &Tensor| -> Result<Tensor, ModelError> {
        let other = t.index_select(&pairing, 0)?;
        Ok((share.broadcast_mul(t)? + rest.broadcast_mul(&other)?)?)
    };
    let weights = match weights {
        Some(w) => Some(mix(&w, &share.squeeze(1)?, &rest.squeeze(1)?)?),
        None => None,
    };
    Ok((mix(&x, &share, &rest)?, mix(&p, &share, &rest)?, weights))
}

fn batch_indices(rng: &mut StdRng, batch_size: usize, rows: usize) -> Result<Tensor, ModelError> {
    let n = batch_size.min(rows);
    let idx: Vec<u32> = (0..n).map(|_| rng.random_range(0..rows as u32)).collect();
    Ok(Tensor::new(idx.as_slice(), &crate::distill::device())?)
}

/// Trains a student on private data alone for `steps` steps: the local-only baseline.
pub fn train_local_only(
    config: &TrainConfig,
    classes: usize,
    private: Labelled,
    public: Tensor,
    steps: usize,
) -> Result<Learner, ModelError> {
    let mut learner = Learner::new(alone(config), classes, private, public)?;
    learner.train(steps, 1.0)?;
    Ok(learner)
}

/// `config` for a student alone on every record it is given: no local teacher to train or
/// distil from, no validation split.
fn alone(config: &TrainConfig) -> TrainConfig {
    TrainConfig {
        validation_fraction: Some(0.0),
        teacher: LocalTeacherConfig {
            enabled: false,
            feature_weight: 0.0,
            logit_weight: 0.0,
            ..config.teacher.clone()
        },
        ..config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::augment::shift_images;
    use crate::distill::config::{CnnConfig, ImageShape};
    use crate::distill::schedule::ScheduleShape;

    #[test]
    fn alpha_falls_linearly_from_start_to_end() {
        let c = TrainConfig::default();
        assert!((c.alpha(0, 20) - 0.7).abs() < 1e-12);
        assert!((c.alpha(19, 20) - 0.3).abs() < 1e-12);
        // Halfway between rounds 0 and 18 of 19 is 0.5.
        assert!((c.alpha(9, 19) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn shifts_move_pixels_and_repeat_edges() {
        let shape = ImageShape {
            height: 2,
            width: 3,
        };
        let img = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..200 {
            let out = shift_images(&img, shape, 1, &mut rng);
            // Every output pixel is some input pixel, and the image keeps its size.
            assert_eq!(out.len(), 6);
            assert!(out.iter().all(|v| img.contains(v)));
            seen.insert(out.iter().map(|v| *v as u8).collect::<Vec<_>>());
        }
        // 3 x 3 offsets; on a 2-row image dy = +1 and dy = -1 differ, so all 9 are distinct.
        assert_eq!(seen.len(), 9);
        // Shifting right by one repeats the left column: [1,1,2 / 4,4,5] must be among them.
        assert!(seen.contains(&vec![1, 1, 2, 4, 4, 5]));
        assert_eq!(shift_images(&img, shape, 0, &mut rng), img);
    }

    #[test]
    fn validate_names_the_field() {
        let c = TrainConfig {
            temperature: Temperature::Fixed(0.0),
            ..TrainConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("temperature"));
    }

    /// Two blobs of 100 records, and a public set that is the same points.
    fn blobs() -> (Labelled, Tensor) {
        let mut rng = StdRng::seed_from_u64(3);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in 0..100u32 {
            let c = i % 2;
            xs.push(if c == 0 { -2.0 } else { 2.0 } + rng.random_range(-1.0f32..1.0));
            xs.push(rng.random_range(-1.0f32..1.0));
            ys.push(c);
        }
        (
            Labelled::new(xs.clone(), 2, ys).unwrap(),
            matrix(xs, 2).unwrap(),
        )
    }

    fn checked(fraction: f64) -> TrainConfig {
        TrainConfig {
            hidden: vec![8],
            local_steps: 50,
            steps_per_round: 50,
            validation_fraction: Some(fraction),
            teacher: LocalTeacherConfig {
                enabled: false,
                ..LocalTeacherConfig::default()
            },
            ..TrainConfig::default()
        }
    }

    #[test]
    fn folds_cover_every_record_once_and_tiny_nodes_are_not_checked() {
        // 0.2: five folds; 0.5: two; 0.01 would be 100 folds, capped at MAX_FOLDS.
        assert_eq!(
            (folds_for(0.2), folds_for(0.5), folds_for(0.01)),
            (5, 2, MAX_FOLDS)
        );
        let fold = fold_of(103, 5, 7);
        let mut sizes = [0usize; 5];
        for &f in &fold {
            sizes[f] += 1;
        }
        // 103 records dealt round-robin into 5 folds: three of 21 and two of 20.
        let mut sorted = sizes;
        sorted.sort_unstable();
        assert_eq!(sorted, [20, 20, 21, 21, 21]);
        // The deal depends on the seed, not on the records' order alone.
        assert_ne!(fold, fold_of(103, 5, 8));

        let (data, public) = blobs();
        let learner = Learner::new(checked(0.2), 2, data.clone(), public.clone()).unwrap();
        assert_eq!(learner.folds, Some(5));
        // The student trains on every record: cross-validation holds none out for good.
        assert_eq!(learner.private().len(), 100);
        let tiny = data
            .rows(&(0..MIN_RECORDS_TO_CHECK as u32 - 1).collect::<Vec<_>>())
            .unwrap();
        let mut learner = Learner::new(checked(0.2), 2, tiny, public).unwrap();
        assert_eq!(learner.folds, None);
        assert!(learner.check_harm().unwrap().is_none());
    }

    /// Hand-computed: 40 records of class 0 and 2 of class 1 (below CLASS_WEIGHT_FLOOR, 20).
    /// Raw weights 1/40 and 1/20, totalling 40/40 + 2/20 = 1.1, so 1/44 and 1/22 once
    /// normalised. The federated student alone is right on both class-1 records (d = +1) and
    /// the local-only one alone on one class-0 record (d = -1): lead 2/22 - 1/44 = 3/44,
    /// variance 2/22^2 + 1/44^2 = 9/44^2, so z = 1.
    #[test]
    fn paired_gain_is_the_weighted_lead_over_its_sign_flip_deviation() {
        let labels: Vec<u32> = [vec![0; 40], vec![1; 2]].concat();
        let mut federated = labels.clone();
        federated[0] = 1;
        let mut local = labels.clone();
        local[40] = 0;
        local[41] = 0;
        let (lead, z) = paired_gain(&federated, &local, &labels);
        assert!((lead - 3.0 / 44.0).abs() < 1e-12, "{lead}");
        assert!((z - 1.0).abs() < 1e-12, "{z}");
        // The lead is the difference of the two weighted accuracies (41/44 - 42/44 + ...).
        let difference =
            weighted_accuracy(&federated, &labels) - weighted_accuracy(&local, &labels);
        assert!((lead - difference).abs() < 1e-12);
        // 39 class-0 records of 1/44 and 2 class-1 records of 1/22.
        assert!((weighted_accuracy(&federated, &labels) - 43.0 / 44.0).abs() < 1e-12);
        // Classes of at least 20 records weigh the same whatever their size: plain balanced
        // accuracy (class 0: 20 of 20 right, class 1: 0 of 60).
        let big: Vec<u32> = [vec![0; 20], vec![1; 60]].concat();
        assert!((weighted_accuracy(&[0; 80], &big) - 0.5).abs() < 1e-12);
        // Students that never disagree: no evidence either way.
        assert_eq!(paired_gain(&local, &local, &labels), (0.0, 0.0));
        // Swapping the students flips the sign.
        let (back, z_back) = paired_gain(&local, &federated, &labels);
        assert!((back + lead).abs() < 1e-12 && (z_back + z).abs() < 1e-12);
    }

    /// A target that names the wrong class for every record: the check sees the federated
    /// student lose on the held-out records and keeps the local-only one, which is then
    /// exactly the student trained alone on every record.
    #[test]
    fn a_harmful_target_is_refused() {
        let (data, public) = blobs();
        let wrong = SoftLabels {
            classes: 2,
            query_ids: (0..100).collect(),
            probs: data
                .labels
                .iter()
                .flat_map(|&l| if l == 0 { [0.0, 1.0] } else { [1.0, 0.0] })
                .collect(),
        };
        let mut learner = Learner::new(checked(0.2), 2, data.clone(), public.clone()).unwrap();
        learner.set_round(0, 2).unwrap();
        learner.set_target(&wrong).unwrap();
        let check = learner.check_harm().unwrap().cloned().unwrap();
        assert_eq!(check.kept, "local-only", "{check:?}");
        // Every record held out once, over five folds.
        assert_eq!((check.validation_records, check.folds), (100, 5));
        assert!(check.local_only_validation_acc > check.federated_validation_acc);
        // The target rows alone cannot tell: the federated student agrees with the wrong
        // target there. The node's true labels refuse it.
        assert!(check.target_z > KEEP_FEDERATED_Z, "{check:?}");
        assert!(check.z < -KEEP_FEDERATED_Z, "{check:?}");
        // 50 local steps and 50 a round for the 2 rounds.
        let alone = train_local_only(&checked(0.0), 2, data, public, 150).unwrap();
        assert_eq!(
            learner.label(&[0, 1, 2, 3]).unwrap(),
            alone.label(&[0, 1, 2, 3]).unwrap()
        );
    }

    /// A node that holds nine records of class 0 for each of class 1, the classes overlapping
    /// (x0 ~ N(-1, 1) against N(+1, 1)): alone, its student pushes the boundary into class 1
    /// (cross-entropy's optimum sits at x0 = ln(9) / 2 = 1.1, class-1 recall about 0.46); a
    /// target of balanced public records labelled by the true class pulls it back towards 0
    /// (balanced accuracy at most 0.84 there), so the federated student leads clearly in
    /// balanced accuracy on the node's own records, and is kept.
    #[test]
    fn a_helpful_target_is_kept() {
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = StdRng::seed_from_u64(5);
        let mut draw = |labels: &[u32]| -> Vec<f32> {
            labels
                .iter()
                .flat_map(|&y| {
                    let centre = if y == 0 { -1.0 } else { 1.0 };
                    let a: f32 = StandardNormal.sample(&mut rng);
                    let b: f32 = StandardNormal.sample(&mut rng);
                    [centre + a, b]
                })
                .collect()
        };
        let private_labels: Vec<u32> = (0..600).map(|i| u32::from(i % 10 == 0)).collect();
        let private = Labelled::new(draw(&private_labels), 2, private_labels).unwrap();
        let public_labels: Vec<u32> = (0..400).map(|i| i % 2).collect();
        let public = matrix(draw(&public_labels), 2).unwrap();
        let target = SoftLabels {
            classes: 2,
            query_ids: (0..400).collect(),
            probs: public_labels
                .iter()
                .flat_map(|&l| if l == 0 { [1.0, 0.0] } else { [0.0, 1.0] })
                .collect(),
        };
        let mut learner = Learner::new(checked(0.2), 2, private, public).unwrap();
        learner.set_round(0, 2).unwrap();
        learner.set_target(&target).unwrap();
        let check = learner.check_harm().unwrap().cloned().unwrap();
        assert_eq!(check.kept, "federated", "{check:?}");
        assert!(check.target_z >= KEEP_FEDERATED_Z, "{check:?}");
        assert!(check.federated_validation_acc > check.local_only_validation_acc);
    }

    /// `temperature = "auto"`: the search runs at the first target, tries temperatures from
    /// 1 up in steps of 0.5, stops after two rises in a row (or at the last), keeps the lowest
    /// validation loss, and the learner then trains at that temperature in every round.
    #[test]
    fn temperature_search_keeps_the_lowest_validation_loss_and_trains_at_it() {
        let (private, public) = blobs();
        let target = SoftLabels {
            classes: 2,
            query_ids: (0..100).collect(),
            probs: private
                .labels
                .iter()
                .flat_map(|&l| if l == 0 { [0.9, 0.1] } else { [0.1, 0.9] })
                .collect(),
        };
        let config = TrainConfig {
            temperature: Temperature::Auto,
            local_steps: 20,
            steps_per_round: 10,
            ..checked(0.0)
        };
        let mut learner = Learner::new(config, 2, private, public).unwrap();
        learner.set_round(0, 5).unwrap();
        assert!(learner.temperature_search().is_none());
        learner.set_target(&target).unwrap();
        let search = learner.temperature_search().cloned().unwrap();
        // blobs() holds 100 records; the first of five folds holds out 20.
        assert_eq!(search.validation_records, 20);
        assert_eq!(
            search.trial_steps,
            20 + 10 * TEMPERATURE_TRIAL_ROUNDS as usize
        );
        let tried: Vec<f64> = search.curve.iter().map(|p| p.temperature).collect();
        assert_eq!(tried, AUTO_TEMPERATURES[..tried.len()].to_vec());
        assert!(search.curve.iter().all(|p| p.validation_loss.is_finite()));
        let best = search
            .curve
            .iter()
            .min_by(|a, b| a.validation_loss.total_cmp(&b.validation_loss))
            .unwrap();
        assert_eq!(search.chosen, best.temperature);
        // It stopped at the end or after two rises in a row.
        let n = search.curve.len();
        let loss = |i: usize| search.curve[i].validation_loss;
        assert!(
            n == AUTO_TEMPERATURES.len()
                || (loss(n - 1) > loss(n - 2) && loss(n - 2) > loss(n - 3))
        );
        assert_eq!(learner.temperature(), search.chosen);
        learner.set_round(3, 5).unwrap();
        assert_eq!(learner.temperature(), search.chosen);
        // A second target does not search again.
        learner.set_target(&target).unwrap();
        assert_eq!(learner.temperature_search(), Some(&search));
    }

    /// The local teacher's outputs on the public records are computed once after it trains,
    /// match a fresh pass of the teacher as trained, and are not kept when each batch is
    /// perturbed (`teacher.augment`) or the student does not learn from the teacher.
    #[test]
    fn teacher_outputs_are_cached_after_it_trains_only_when_the_student_uses_them_unperturbed() {
        let (private, public) = blobs();
        let config = |augment: bool, logit_weight: f64| TrainConfig {
            hidden: vec![8],
            validation_fraction: Some(0.0),
            teacher: LocalTeacherConfig {
                hidden: vec![16],
                local_steps: 5,
                steps_per_round: 2,
                logit_weight,
                augment,
                ..LocalTeacherConfig::default()
            },
            ..TrainConfig::default()
        };
        let mut learner =
            Learner::new(config(false, 0.5), 2, private.clone(), public.clone()).unwrap();
        learner.train(5, 1.0).unwrap();
        let (_, cached) = learner.teacher_public.clone().expect("cached");
        let teacher = learner.local_teacher().unwrap();
        let (_, fresh) = teacher.features_and_logits(learner.public(), None).unwrap();
        assert_eq!(cached.dims(), &[100, 2]);
        let gap: f32 = (cached - fresh)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(gap < 1e-5, "{gap}");
        for (augment, weight) in [(true, 0.5), (false, 0.0)] {
            let mut other =
                Learner::new(config(augment, weight), 2, private.clone(), public.clone()).unwrap();
            other.train(5, 1.0).unwrap();
            assert!(
                other.teacher_public.is_none(),
                "augment {augment}, weight {weight}"
            );
        }
    }

    /// Dynamic weights average 1 over a batch, and rank a row the student already gets right
    /// below one it gets wrong, and an unsure target row below a confident one.
    #[test]
    fn dynamic_weights_average_one_and_follow_difficulty_and_reliability() {
        let device = crate::distill::device();
        // Rows: student right and target sure; student wrong and target sure; student wrong
        // and target unsure.
        let student = Tensor::new(&[[4f32, -4.0], [-4.0, 4.0], [-4.0, 4.0]], &device).unwrap();
        let target = Tensor::new(&[[0.99f32, 0.01], [0.99, 0.01], [0.6, 0.4]], &device).unwrap();
        let confidence = crate::distill::row_confidence(&target).unwrap();
        let w: Vec<f32> = dynamic_weights(&student, &target, &confidence)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mean = w.iter().sum::<f32>() / 3.0;
        assert!((mean - 1.0).abs() < 1e-5, "{w:?}");
        assert!(w[0] < w[1] && w[2] < w[1], "{w:?}");
        // A local teacher that disagrees with row 1 halves it relative to the others.
        let agreement = Tensor::new(&[1f32, DISAGREEMENT_WEIGHT as f32, 1.0], &device).unwrap();
        let reliability = (&confidence * &agreement).unwrap();
        let v: Vec<f32> = dynamic_weights(&student, &target, &reliability)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((v[1] / v[0] - DISAGREEMENT_WEIGHT as f32 * w[1] / w[0]).abs() < 1e-4);
    }

    /// The case the target rows are there for: a node that holds two of three classes. On its
    /// own records both students are nearly perfect (no evidence either way), but only the
    /// federated one knows the third class, which the target's rows show.
    #[test]
    fn a_target_that_teaches_a_missing_class_is_kept() {
        let centres = [(-4.0f32, 0.0f32), (4.0, 0.0), (0.0, 4.0)];
        let mut rng = StdRng::seed_from_u64(9);
        let mut draw = |labels: &[u32]| -> Vec<f32> {
            labels
                .iter()
                .flat_map(|&y| {
                    let (cx, cy) = centres[y as usize];
                    [
                        cx + rng.random_range(-0.5f32..0.5),
                        cy + rng.random_range(-0.5f32..0.5),
                    ]
                })
                .collect()
        };
        let private_labels: Vec<u32> = (0..100).map(|i| i % 2).collect();
        let private = Labelled::new(draw(&private_labels), 2, private_labels).unwrap();
        let public_labels: Vec<u32> = (0..150).map(|i| i % 3).collect();
        let public = matrix(draw(&public_labels), 2).unwrap();
        let target = SoftLabels {
            classes: 3,
            query_ids: (0..150).collect(),
            probs: public_labels
                .iter()
                .flat_map(|&l| (0..3).map(move |j| if j == l { 1.0 } else { 0.0 }))
                .collect(),
        };
        let mut learner = Learner::new(checked(0.2), 3, private, public).unwrap();
        learner.set_round(0, 6).unwrap();
        learner.set_target(&target).unwrap();
        let check = learner.check_harm().unwrap().cloned().unwrap();
        assert_eq!(check.kept, "federated", "{check:?}");
        assert_eq!(check.target_rows, 150);
        // The local-only student never names class 2: at most the two thirds of the target's
        // rows that are classes 0 and 1.
        assert!(
            check.local_only_target_agreement <= 2.0 / 3.0 + 1e-9,
            "{check:?}"
        );
        assert!(check.federated_target_agreement > 0.9, "{check:?}");
        // The kept student names class 2 where the target does.
        let labelled = learner.label(&[2, 5, 8]).unwrap();
        assert!((0..3).all(|q| labelled.top_class(q) == 2), "{labelled:?}");
    }

    #[test]
    fn training_learns_a_separable_problem() {
        let mut rng = StdRng::seed_from_u64(3);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in 0..200u32 {
            let c = i % 2;
            let centre = if c == 0 { -2.0 } else { 2.0 };
            xs.push(centre + rng.random_range(-1.0f32..1.0));
            xs.push(rng.random_range(-1.0f32..1.0));
            ys.push(c);
        }
        let data = Labelled::new(xs.clone(), 2, ys).unwrap();
        let public = matrix(xs, 2).unwrap();
        let cfg = TrainConfig {
            hidden: vec![8],
            teacher: LocalTeacherConfig {
                enabled: false,
                ..LocalTeacherConfig::default()
            },
            ..TrainConfig::default()
        };
        let mut learner = Learner::new(cfg, 2, data.clone(), public).unwrap();
        learner.train(200, 1.0).unwrap();
        // The blobs are 2 apart with noise of half-width 1: perfectly separable at x = 0.
        assert!(learner.accuracy(&data).unwrap() > 0.95);

        // Distilling towards a target that says "class 1" for every public row moves the
        // student's predictions on those rows towards class 1.
        let before = learner.label(&[0, 2, 4]).unwrap();
        let target = SoftLabels {
            classes: 2,
            query_ids: (0..200).collect(),
            probs: (0..200).flat_map(|_| [0.0, 1.0]).collect(),
        };
        learner.set_target(&target).unwrap();
        learner.train(200, 0.0).unwrap();
        let after = learner.label(&[0, 2, 4]).unwrap();
        for r in 0..3 {
            assert!(after.row(r)[1] > before.row(r)[1]);
        }
    }

    #[test]
    fn schedules_are_constant_linear_or_cosine() {
        let at = |shape: ScheduleShape, round| shape.value(0.7, 0.3, round, 5);
        for round in 0..5 {
            assert_eq!(at(ScheduleShape::Constant, round), 0.7);
        }
        // Rounds 0..=4 are t = 0, 0.25, 0.5, 0.75, 1.
        assert!((at(ScheduleShape::Linear, 1) - 0.6).abs() < 1e-12);
        // Cosine: 0.3 + 0.4 * (1 + cos(pi / 4)) / 2 = 0.6414213562373094 (Python math).
        assert!((at(ScheduleShape::Cosine, 1) - 0.6414213562373094).abs() < 1e-12);
        // Both shapes meet the ends and cross the middle together.
        for shape in [ScheduleShape::Linear, ScheduleShape::Cosine] {
            assert!((at(shape, 0) - 0.7).abs() < 1e-12);
            assert!((at(shape, 2) - 0.5).abs() < 1e-12);
            assert!((at(shape, 4) - 0.3).abs() < 1e-12);
        }
        let c = TrainConfig {
            temperature: Temperature::Fixed(4.0),
            temperature_end: Some(1.0),
            temperature_schedule: ScheduleShape::Cosine,
            alpha_schedule: ScheduleShape::Constant,
            ..TrainConfig::default()
        };
        assert_eq!(c.temperature_at(0, 5), 4.0);
        assert!((c.temperature_at(2, 5) - 2.5).abs() < 1e-12);
        assert_eq!(c.temperature_at(4, 5), 1.0);
        assert_eq!(c.alpha(4, 5), 0.7);
        // Without an end the temperature stays put.
        assert_eq!(TrainConfig::default().temperature_at(3, 5), 4.0);
    }

    #[test]
    fn new_settings_are_validated_by_name() {
        let bad = [
            (
                TrainConfig {
                    architecture: Architecture::Cnn,
                    ..TrainConfig::default()
                },
                "architecture",
            ),
            (
                TrainConfig {
                    dropout: 1.5,
                    ..TrainConfig::default()
                },
                "dropout",
            ),
            (
                TrainConfig {
                    temperature_end: Some(0.0),
                    ..TrainConfig::default()
                },
                "temperature_end",
            ),
            (
                TrainConfig {
                    teacher: LocalTeacherConfig {
                        enabled: false,
                        feature_weight: 1.0,
                        ..LocalTeacherConfig::default()
                    },
                    ..TrainConfig::default()
                },
                "teacher.feature_weight",
            ),
        ];
        for (config, field) in bad {
            let msg = config.validate().unwrap_err();
            assert!(msg.contains(field), "{msg} should name {field}");
        }
    }

    /// Four-by-four images of a vertical or a horizontal bar at a random position.
    fn bars(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in 0..n {
            let class = (i % 2) as u32;
            let at = rng.random_range(0..4usize);
            for y in 0..4 {
                for x in 0..4 {
                    let on = if class == 0 { x == at } else { y == at };
                    xs.push(if on { 1.0 } else { -0.3 } + rng.random_range(-0.2f32..0.2));
                }
            }
            ys.push(class);
        }
        (xs, ys)
    }

    fn image_config() -> TrainConfig {
        TrainConfig {
            architecture: Architecture::Cnn,
            image: Some(ImageShape {
                height: 4,
                width: 4,
            }),
            cnn: CnnConfig {
                channels: vec![4],
                kernel: 3,
                hidden: vec![],
            },
            input_noise: 0.0,
            learning_rate: 0.01,
            teacher: LocalTeacherConfig {
                hidden: vec![32],
                local_steps: 60,
                ..LocalTeacherConfig::default()
            },
            ..TrainConfig::default()
        }
    }

    #[test]
    fn a_cnn_student_learns_images() {
        let (xs, ys) = bars(200, 1);
        let data = Labelled::new(xs.clone(), 16, ys).unwrap();
        let mut learner =
            Learner::new(image_config(), 2, data.clone(), matrix(xs, 16).unwrap()).unwrap();
        assert!(learner.student().config().conv.is_some());
        learner.train(150, 1.0).unwrap();
        let (test_x, test_y) = bars(100, 2);
        let test = Labelled::new(test_x, 16, test_y).unwrap();
        // Bars are either a full row or a full column: a 3x3 convolution sees the difference.
        assert!(learner.accuracy(&test).unwrap() > 0.95);
        let teacher = learner.local_teacher().unwrap();
        assert_eq!(teacher.config().hidden, vec![32]);
        assert!(teacher.accuracy(&test.x, &test.labels).unwrap() > 0.9);
    }

    /// Feature distillation trains the projection and the student towards the teacher's
    /// features: the MSE term falls.
    #[test]
    fn feature_distillation_pulls_the_student_towards_the_teacher() {
        let (xs, ys) = bars(200, 3);
        let data = Labelled::new(xs.clone(), 16, ys).unwrap();
        let mut config = image_config();
        config.teacher.feature_weight = 1.0;
        config.teacher.logit_weight = 1.0;
        config.teacher.augment = true;
        let mut learner = Learner::new(config, 2, data, matrix(xs, 16).unwrap()).unwrap();
        // Train the teacher only (the student takes 0 steps) by running its local phase.
        let teacher_only = learner.config().teacher.local_steps;
        {
            let mut teacher = learner.teacher.take().unwrap();
            std::mem::swap(&mut learner.rng, &mut teacher.rng);
            for _ in 0..teacher_only {
                let loss = learner
                    .supervised_loss(&teacher.net, 1.0, false, 32)
                    .unwrap();
                teacher.optimiser.backward_step(&loss).unwrap();
            }
            std::mem::swap(&mut learner.rng, &mut teacher.rng);
            learner.teacher = Some(teacher);
        }
        let student = learner.student().shared();
        let before = learner
            .teacher_terms(&student)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        learner.config.teacher.local_steps = 0;
        learner.train(150, 1.0).unwrap();
        let after = learner
            .teacher_terms(&student)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(after < 0.5 * before, "teacher terms {before} -> {after}");
    }

    #[test]
    fn self_distillation_snapshots_the_previous_round() {
        let (xs, ys) = bars(50, 4);
        let data = Labelled::new(xs.clone(), 16, ys).unwrap();
        let mut config = image_config();
        config.self_distillation = 1.0;
        config.teacher.enabled = false;
        let mut learner = Learner::new(config, 2, data, matrix(xs, 16).unwrap()).unwrap();
        learner.set_round(0, 3).unwrap();
        assert!(learner.previous.is_none(), "no previous round in round 0");
        learner.train(20, 1.0).unwrap();
        learner.set_round(1, 3).unwrap();
        let ids: Vec<u32> = (0..10).collect();
        let at_snapshot = learner.label(&ids).unwrap();
        let previous = learner.previous.as_ref().unwrap().shared();
        let rows = learner.public_rows(&ids).unwrap();
        assert_eq!(previous.probabilities(&rows).unwrap(), at_snapshot.probs);
        learner.train(20, 1.0).unwrap();
        // The student moved on; the snapshot did not.
        assert_ne!(learner.label(&ids).unwrap().probs, at_snapshot.probs);
        assert_eq!(previous.probabilities(&rows).unwrap(), at_snapshot.probs);
    }
}
