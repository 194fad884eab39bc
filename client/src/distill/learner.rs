//! The node's learner: its student, its optimiser, its local teacher, and the loop that trains
//! them on the node's data and the global target.
//!
//! Everything here is synchronous and CPU-bound; the session runs it on a blocking thread.

use candle_core::{DType, Tensor};
use candle_nn::{Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use fd_protocol::SoftLabels;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::data::{Labelled, matrix};
use crate::distill::augment::perturb;
use crate::distill::config::{Architecture, LocalTeacherConfig, TrainConfig};
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
    /// Private records held out of the student's training for the do-no-harm check, and all
    /// the private records (the local-only student the check keeps is retrained on them).
    validation: Option<(Labelled, Labelled)>,
    /// The round count of the federation (from [`Learner::set_round`]).
    rounds: u32,
    /// The do-no-harm check, once made.
    harm: Option<HarmCheck>,
    /// The planner's verdict on the target, once given.
    trust: Option<TargetTrust>,
}

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

/// Fewer private records than this and no validation split is held out: a handful of records
/// cannot tell two students apart, and holding them back would cost the student more than the
/// check could save. The federated student is then kept unchecked.
pub const MIN_RECORDS_TO_CHECK: usize = 25;
/// The smallest validation split held out (when the fraction gives fewer).
pub const MIN_VALIDATION_RECORDS: usize = 5;

/// Do no harm: after the federation, the node compares on private records its student never
/// trained on the federated student with one trained on its records alone, and keeps the
/// better. The student a node keeps never leaves it, so this costs no privacy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HarmCheck {
    /// Private records held out to decide.
    pub validation_records: usize,
    /// The federated student's balanced accuracy on them.
    pub federated_validation_acc: f64,
    /// The local-only student's balanced accuracy on them.
    pub local_only_validation_acc: f64,
    /// Which student the node kept: `"federated"`, or `"local-only"` if strictly better.
    pub kept: String,
}

/// Splits off `fraction` of `private` (at least [`MIN_VALIDATION_RECORDS`]) as a validation
/// set, chosen by `seed`; none below [`MIN_RECORDS_TO_CHECK`] records or at fraction 0.
fn split_validation(
    private: Labelled,
    fraction: f64,
    seed: u64,
) -> Result<(Labelled, Option<(Labelled, Labelled)>), ModelError> {
    let n = private.len();
    if fraction <= 0.0 || n < MIN_RECORDS_TO_CHECK {
        return Ok((private, None));
    }
    let held = ((n as f64 * fraction).round() as usize).max(MIN_VALIDATION_RECORDS);
    let mut order: Vec<u32> = (0..n as u32).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut StdRng::seed_from_u64(seed));
    let (hold, keep) = order.split_at(held);
    let pick = |rows: &[u32]| -> Result<Labelled, ModelError> {
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        let ids = Tensor::new(rows.as_slice(), &crate::distill::device())?;
        Ok(Labelled {
            x: private.x.index_select(&ids, 0)?,
            y: private.y.index_select(&ids, 0)?,
            labels: rows.iter().map(|&r| private.labels[r as usize]).collect(),
        })
    };
    Ok((pick(keep)?, Some((pick(hold)?, private))))
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
        let (private, validation) = split_validation(
            private,
            config.validation_fraction.unwrap_or(0.0),
            Stream::Validation.seed(config.seed),
        )?;
        Ok(Learner {
            validation,
            rounds: 0,
            harm: None,
            trust: None,
            student,
            optimiser,
            private,
            public,
            target: None,
            target_weights: None,
            teacher,
            previous: None,
            temperature: config.temperature,
            rng: StdRng::seed_from_u64(Stream::StudentBatches.seed(config.seed)),
            public_rng: StdRng::seed_from_u64(Stream::PublicBatches.seed(config.seed)),
            config,
        })
    }

    /// A student trained on every private record alone (a validation split included), with as
    /// many steps as the federated student took: what the node would have had without joining.
    pub fn local_only(&self) -> Result<Learner, ModelError> {
        let all = self
            .validation
            .as_ref()
            .map_or(&self.private, |(_, all)| all);
        self.retrained(all.clone(), false)
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
                    self.validation = None;
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
    /// local steps, then each round's steps with that round's alpha, but all against the
    /// final target (`with_target`), or on the private records alone (without; then it is the
    /// local-only baseline exactly). No local teacher, no validation split.
    fn retrained(&self, private: Labelled, with_target: bool) -> Result<Learner, ModelError> {
        let classes = self.student.config().classes;
        let mut learner = Learner::new(alone(&self.config), classes, private, self.public.clone())?;
        learner.train(learner.config.local_steps, 1.0)?;
        let rounds = self.rounds.max(1);
        if with_target && self.target.is_some() {
            learner.target = self.target.clone();
            learner.target_weights = self.target_weights.clone();
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

    /// Do no harm (with a validation split). Two fresh students are trained on the records
    /// the student trained on (the validation split held out): one against the federation's
    /// final target, one on the records alone. The better on the held-out records is then
    /// trained again, the same way, on every
    /// private record and replaces the student (the local-only one only if strictly better, by
    /// balanced accuracy: see [`Learner::balanced_accuracy`]). Both candidates see the same records, so
    /// neither is favoured by data the other lacked, and a node that keeps the local-only
    /// student ends exactly where it would have stayed alone. Returns the check (`None`
    /// without a validation split); later calls return the first check.
    pub fn check_harm(&mut self) -> Result<Option<&HarmCheck>, ModelError> {
        let Some((validation, all)) = self.validation.clone() else {
            return Ok(None);
        };
        if self.harm.is_none() {
            let federated = self
                .retrained(self.private.clone(), true)?
                .balanced_accuracy(&validation)?;
            let local = self
                .retrained(self.private.clone(), false)?
                .balanced_accuracy(&validation)?;
            // A tie keeps the federated student: the held-out records come from the node's own
            // skewed mix of classes, where both often score perfectly, while the federation's
            // target also knows the classes the node barely holds.
            let keep_local = local > federated;
            self.student = self.retrained(all, !keep_local)?.student;
            self.harm = Some(HarmCheck {
                validation_records: validation.len(),
                federated_validation_acc: federated,
                local_only_validation_acc: local,
                kept: if keep_local {
                    "local-only"
                } else {
                    "federated"
                }
                .into(),
            });
        }
        Ok(self.harm.as_ref())
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
        self.temperature = self.config.temperature_at(round, rounds);
        if self.config.self_distillation > 0.0 && round > 0 {
            self.previous = Some(self.student.snapshot()?);
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
        let p = matrix(target.probs.clone(), target.classes as usize)?;
        self.target_weights = if self.config.confidence_weighting {
            Some(crate::distill::row_confidence(&p)?)
        } else {
            None
        };
        self.target = Some((x, p));
        Ok(())
    }

    fn batch(&mut self, rows: usize) -> Result<Tensor, ModelError> {
        batch_indices(&mut self.rng, self.config.batch_size, rows)
    }

    /// Perturbs a training batch: random image shifts, then Gaussian jitter, as configured.
    fn jitter(&mut self, x: Tensor) -> Result<Tensor, ModelError> {
        perturb(
            &mut self.rng,
            x,
            self.config.image,
            self.config.max_shift,
            self.config.input_noise,
        )
    }

    /// The private cross-entropy on a fresh batch, mixed with the distillation term towards
    /// the global target on a fresh public batch when there is one and `alpha < 1`.
    fn supervised_loss(
        &mut self,
        net: &Student,
        alpha: f64,
        dropout: bool,
    ) -> Result<Tensor, ModelError> {
        let idx = self.batch(self.private.len())?;
        let x = self.private.x.index_select(&idx, 0)?;
        let x = self.jitter(x)?;
        let y = self.private.y.index_select(&idx, 0)?;
        let mut rng = (dropout && net.config().dropout > 0.0)
            .then(|| StdRng::seed_from_u64(self.rng.random()));
        Ok(match self.target.clone() {
            Some((tx, tp)) if alpha < 1.0 => {
                let idx =
                    batch_indices(&mut self.public_rng, self.config.batch_size, tx.dims()[0])?;
                let public_x = perturb(
                    &mut self.public_rng,
                    tx.index_select(&idx, 0)?,
                    self.config.image,
                    self.config.max_shift,
                    self.config.input_noise,
                )?;
                // One forward pass over both batches: at batch 32 a pass is mostly per-op
                // overhead, so two passes cost nearly twice one of twice the rows.
                let rows = x.dims()[0];
                let both = net.forward_t(&Tensor::cat(&[&x, &public_x], 0)?, rng.as_mut())?;
                let logits = both.narrow(0, 0, rows)?;
                let public_logits = both.narrow(0, rows, both.dims()[0] - rows)?;
                let weights = match &self.target_weights {
                    Some(w) => Some(w.index_select(&idx, 0)?),
                    None => None,
                };
                distillation_loss(
                    &logits,
                    &y,
                    &public_logits,
                    &tp.index_select(&idx, 0)?,
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
    fn public_batch(&mut self) -> Result<Tensor, ModelError> {
        let rows = self.public_records();
        let idx = batch_indices(&mut self.public_rng, self.config.batch_size, rows)?;
        let x = self.public.index_select(&idx, 0)?;
        if !self.config.teacher.augment {
            return Ok(x);
        }
        let (shift, noise) = match self.config.image {
            Some(_) => (1, 0.0),
            None => (0, self.config.input_noise),
        };
        perturb(&mut self.public_rng, x, self.config.image, shift, noise)
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
                    let loss = self.supervised_loss(&teacher.net, alpha, false)?;
                    teacher.optimiser.backward_step(&loss)?;
                }
                Ok::<_, ModelError>(())
            })();
            std::mem::swap(&mut self.rng, &mut teacher.rng);
            std::mem::swap(&mut self.public_rng, &mut teacher.public_rng);
            self.teacher = Some(teacher);
            result?;
        }
        let student = self.student.shared();
        let mut last = f64::NAN;
        for _ in 0..steps {
            let mut loss = self.supervised_loss(&student, alpha, true)?;
            loss = (loss + self.teacher_terms(&student)?)?;
            if let (Some(previous), true) =
                (self.previous.as_ref(), self.config.self_distillation > 0.0)
            {
                let previous = previous.shared();
                let x = self.public_batch()?;
                let p = candle_nn::ops::softmax_last_dim(&previous.forward(&x)?)?;
                let kd = distillation_term(&student.forward(&x)?, &p.detach(), self.temperature)?;
                loss = (loss + (kd * self.config.self_distillation)?)?;
            }
            self.optimiser.backward_step(&loss)?;
            last = loss.to_scalar::<f32>()? as f64;
        }
        Ok(last)
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
        let x = self.public_batch()?;
        let Some(teacher) = self.teacher.as_ref() else {
            return Ok(zero);
        };
        let (t_features, t_logits) = teacher.net.features_and_logits(&x, None)?;
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

    /// Balanced accuracy of the student on a labelled set: the mean over the classes present of
    /// each class's recall. A node's records are skewed towards a few classes, where a student
    /// trained alone does well; each class it holds counts the same here.
    pub fn balanced_accuracy(&self, set: &Labelled) -> Result<f64, ModelError> {
        let predicted: Vec<u32> = self
            .student
            .forward(&set.x)?
            .argmax(candle_core::D::Minus1)?
            .to_vec1()?;
        Ok(balanced_accuracy(&predicted, &set.labels))
    }
}

/// The mean over the classes in `labels` of the share of each class predicted right (0 for no
/// labels).
pub fn balanced_accuracy(predicted: &[u32], labels: &[u32]) -> f64 {
    let mut per_class: std::collections::BTreeMap<u32, (usize, usize)> = Default::default();
    for (&p, &l) in predicted.iter().zip(labels) {
        let e = per_class.entry(l).or_default();
        e.0 += usize::from(p == l);
        e.1 += 1;
    }
    if per_class.is_empty() {
        return 0.0;
    }
    per_class
        .values()
        .map(|&(right, all)| right as f64 / all as f64)
        .sum::<f64>()
        / per_class.len() as f64
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
            temperature: 0.0,
            ..TrainConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("temperature"));
    }

    /// Two separable blobs: training must drive accuracy up from chance.
    #[test]
    fn balanced_accuracy_weighs_each_present_class_the_same() {
        // Class 0: 3 of 4 right; class 1: 0 of 1; class 2 absent. (3/4 + 0) / 2.
        assert_eq!(balanced_accuracy(&[0, 0, 0, 1, 0], &[0, 0, 0, 0, 1]), 0.375);
        assert_eq!(balanced_accuracy(&[], &[]), 0.0);
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
    fn the_validation_split_is_sized_and_skipped_for_tiny_nodes() {
        let (data, public) = blobs();
        let learner = Learner::new(checked(0.2), 2, data.clone(), public.clone()).unwrap();
        // 20% of 100 records held out; the student trains on the other 80.
        assert_eq!(learner.private().len(), 80);
        // Below MIN_RECORDS_TO_CHECK nothing is held out.
        let ids = Tensor::new(
            (0..20u32).collect::<Vec<_>>().as_slice(),
            &crate::distill::device(),
        )
        .unwrap();
        let tiny = Labelled {
            x: data.x.index_select(&ids, 0).unwrap(),
            y: data.y.index_select(&ids, 0).unwrap(),
            labels: data.labels[..20].to_vec(),
        };
        let (kept, held) = split_validation(tiny, 0.2, 1).unwrap();
        assert_eq!((kept.len(), held.is_none()), (20, true));
        // At least MIN_VALIDATION_RECORDS are held out when the fraction gives fewer.
        let (_, held) = split_validation(data, 0.01, 1).unwrap();
        assert_eq!(held.unwrap().0.len(), MIN_VALIDATION_RECORDS);
    }

    /// A target that names the wrong class for every record: the check sees the federated
    /// student lose on the held-out records and keeps the local-only one, which is then
    /// exactly the student trained alone on every record.
    #[test]
    fn a_harmful_target_is_refused_and_a_helpful_one_kept() {
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
        assert_eq!(check.validation_records, 20);
        assert!(check.local_only_validation_acc > check.federated_validation_acc);
        // 50 local steps and 50 a round for the 2 rounds.
        let alone = train_local_only(&checked(0.0), 2, data.clone(), public.clone(), 150).unwrap();
        assert_eq!(
            learner.label(&[0, 1, 2, 3]).unwrap(),
            alone.label(&[0, 1, 2, 3]).unwrap()
        );

        let right = SoftLabels {
            probs: data
                .labels
                .iter()
                .flat_map(|&l| if l == 0 { [1.0, 0.0] } else { [0.0, 1.0] })
                .collect(),
            ..wrong
        };
        let mut learner = Learner::new(checked(0.2), 2, data, public).unwrap();
        learner.set_round(0, 2).unwrap();
        learner.set_target(&right).unwrap();
        assert_eq!(learner.check_harm().unwrap().unwrap().kept, "federated");
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
            temperature: 4.0,
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
                let loss = learner.supervised_loss(&teacher.net, 1.0, false).unwrap();
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
