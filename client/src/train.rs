//! The node's learner: its student, its data as tensors, and the training schedule.
//!
//! Everything here is synchronous and CPU-bound; the session runs it on a blocking thread.

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use fd_protocol::SoftLabels;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::model::{ModelError, Student, StudentConfig, distillation_loss, matrix};

/// How a node trains its student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Hidden layer widths of the MLP student.
    pub hidden: Vec<usize>,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Rows per mini-batch (for both the private and the public batch of a step).
    pub batch_size: usize,
    /// Optimiser steps on private data alone before the first contribution.
    pub local_steps: usize,
    /// Optimiser steps per round on the combined loss once a target exists.
    pub steps_per_round: usize,
    /// Distillation temperature T (2 suits images, 4 tabular data).
    pub temperature: f64,
    /// Weight of the private cross-entropy in the first round.
    pub alpha_start: f64,
    /// Weight of the private cross-entropy in the last round (linear in between).
    pub alpha_end: f64,
    /// Standard deviation of Gaussian jitter added to training inputs (in standardised units);
    /// 0 turns it off. A cheap regulariser for small data.
    pub input_noise: f64,
    /// Layout of image inputs (pixels row-major); enables image-wide standardisation and
    /// random shifts of training batches. `None` for tabular data.
    pub image: Option<ImageShape>,
    /// With `image`: training inputs are shifted by up to this many pixels in each direction
    /// (edge pixels repeated). 0 turns shifting off.
    pub max_shift: usize,
    /// Weight each public row's distillation term by the target's confidence in it
    /// (`1 - H(p) / ln C`), so rows the target is unsure of (e.g. noise-dominated private
    /// releases) teach little. Off by default; on for private nodes.
    pub confidence_weighting: bool,
    /// Seed of weight initialisation and batch sampling.
    pub seed: u64,
}

/// Height and width of image inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageShape {
    /// Rows of pixels.
    pub height: usize,
    /// Columns of pixels.
    pub width: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: vec![256],
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            batch_size: 64,
            local_steps: 300,
            steps_per_round: 200,
            temperature: 4.0,
            alpha_start: 0.7,
            alpha_end: 0.3,
            input_noise: 0.5,
            image: None,
            max_shift: 0,
            confidence_weighting: false,
            seed: 1,
        }
    }
}

impl TrainConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                self.learning_rate > 0.0 && self.learning_rate.is_finite(),
                "learning_rate must be > 0",
            ),
            (self.weight_decay >= 0.0, "weight_decay must be >= 0"),
            (self.batch_size > 0, "batch_size must be > 0"),
            (
                self.temperature > 0.0 && self.temperature.is_finite(),
                "temperature must be > 0",
            ),
            (
                (0.0..=1.0).contains(&self.alpha_start),
                "alpha_start must be in [0, 1]",
            ),
            (
                (0.0..=1.0).contains(&self.alpha_end),
                "alpha_end must be in [0, 1]",
            ),
            (!self.hidden.contains(&0), "hidden widths must be > 0"),
            (
                self.input_noise >= 0.0 && self.input_noise.is_finite(),
                "input_noise must be >= 0",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(format!("training.{msg}")),
            None => Ok(()),
        }
    }

    /// The cross-entropy weight in `round` of `rounds`: linear from `alpha_start` to `alpha_end`.
    pub fn alpha(&self, round: u32, rounds: u32) -> f64 {
        let t = if rounds <= 1 {
            1.0
        } else {
            (round as f64 / (rounds - 1) as f64).min(1.0)
        };
        self.alpha_start + (self.alpha_end - self.alpha_start) * t
    }
}

/// A labelled set as tensors.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// Standardised features `[n, inputs]`.
    pub x: Tensor,
    /// Labels as a `[n]` u32 tensor.
    pub y: Tensor,
    /// Labels as plain values.
    pub labels: Vec<u32>,
}

impl Labelled {
    /// Builds the tensors from standardised row-major features and labels.
    pub fn new(features: Vec<f32>, width: usize, labels: Vec<u32>) -> Result<Labelled, ModelError> {
        let y = Tensor::new(labels.as_slice(), &crate::model::device())?;
        Ok(Labelled {
            x: matrix(features, width)?,
            y,
            labels,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The student, its optimiser and the node's data.
pub struct Learner {
    student: Student,
    optimiser: AdamW,
    private: Labelled,
    public: Tensor,
    /// Public rows covered by the current target and their target probabilities.
    target: Option<(Tensor, Tensor)>,
    /// Per-row weights of the target's distillation terms (with `confidence_weighting`).
    target_weights: Option<Tensor>,
    config: TrainConfig,
    rng: StdRng,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("student", &self.student)
            .field("private_rows", &self.private.len())
            .finish()
    }
}

impl Learner {
    /// A fresh student for `private` (standardised, labelled) and `public` (standardised
    /// `[m, inputs]`) data.
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
        let student = Student::new(
            StudentConfig {
                inputs,
                classes,
                hidden: config.hidden.clone(),
            },
            config.seed,
        )?;
        let optimiser = AdamW::new(
            student.vars(),
            ParamsAdamW {
                lr: config.learning_rate,
                weight_decay: config.weight_decay,
                ..ParamsAdamW::default()
            },
        )?;
        Ok(Learner {
            student,
            optimiser,
            private,
            public,
            target: None,
            target_weights: None,
            rng: StdRng::seed_from_u64(config.seed ^ 0x5eed),
            config,
        })
    }

    /// The student.
    pub fn student(&self) -> &Student {
        &self.student
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Number of public records.
    pub fn public_records(&self) -> usize {
        self.public.dims()[0]
    }

    /// Installs the global target. `target` must have been validated against the public set
    /// size and class count (the session does).
    pub fn set_target(&mut self, target: &SoftLabels) -> Result<(), ModelError> {
        if target.is_empty() {
            self.target = None;
            return Ok(());
        }
        let device = crate::model::device();
        let ids = Tensor::new(target.query_ids.as_slice(), &device)?;
        let x = self.public.index_select(&ids, 0)?;
        let p = matrix(target.probs.clone(), target.classes as usize)?;
        self.target_weights = if self.config.confidence_weighting {
            Some(crate::model::row_confidence(&p)?)
        } else {
            None
        };
        self.target = Some((x, p));
        Ok(())
    }

    fn batch(&mut self, rows: usize) -> Result<Tensor, ModelError> {
        let n = self.config.batch_size.min(rows);
        let idx: Vec<u32> = (0..n)
            .map(|_| self.rng.random_range(0..rows as u32))
            .collect();
        Ok(Tensor::new(idx.as_slice(), &crate::model::device())?)
    }

    /// Perturbs a training batch: random image shifts, then Gaussian jitter, as configured.
    fn jitter(&mut self, x: Tensor) -> Result<Tensor, ModelError> {
        let x = match self.config.image {
            Some(shape) if self.config.max_shift > 0 => {
                let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
                let shifted = shift_images(&values, shape, self.config.max_shift, &mut self.rng);
                Tensor::from_vec(shifted, x.dims(), x.device())?
            }
            _ => x,
        };
        if self.config.input_noise <= 0.0 {
            return Ok(x);
        }
        let normal = rand_distr::Normal::new(0.0f32, self.config.input_noise as f32)
            .map_err(|e| ModelError::Config(e.to_string()))?;
        let noise: Vec<f32> = (0..x.elem_count())
            .map(|_| rand_distr::Distribution::sample(&normal, &mut self.rng))
            .collect();
        let noise = Tensor::from_vec(noise, x.dims(), x.device())?;
        Ok((x + noise)?)
    }

    /// Runs `steps` optimiser steps. Without a target (or with `alpha == 1`) the loss is the
    /// private cross-entropy alone; otherwise the full distillation loss. Returns the last loss.
    pub fn train(&mut self, steps: usize, alpha: f64) -> Result<f64, ModelError> {
        let mut last = f64::NAN;
        for _ in 0..steps {
            let idx = self.batch(self.private.len())?;
            let x = self.private.x.index_select(&idx, 0)?;
            let x = self.jitter(x)?;
            let y = self.private.y.index_select(&idx, 0)?;
            let logits = self.student.forward(&x)?;
            let loss = match self.target.clone() {
                Some((tx, tp)) if alpha < 1.0 => {
                    let idx = self.batch(tx.dims()[0])?;
                    let public_x = self.jitter(tx.index_select(&idx, 0)?)?;
                    let public_logits = self.student.forward(&public_x)?;
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
                        self.config.temperature,
                        weights.as_ref(),
                    )?
                }
                _ => candle_nn::loss::cross_entropy(&logits, &y)?,
            };
            self.optimiser.backward_step(&loss)?;
            last = loss.to_scalar::<f32>()? as f64;
        }
        Ok(last)
    }

    /// The current target: public rows `[t, inputs]` and their probabilities `[t, classes]`.
    pub fn target(&self) -> Option<(Tensor, Tensor)> {
        self.target.clone()
    }

    /// Standardised public rows for the given record ids.
    pub fn public_rows(&self, query_ids: &[u32]) -> Result<Tensor, ModelError> {
        let ids = Tensor::new(query_ids, &crate::model::device())?;
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
}

/// Shifts each image (row-major pixels of `shape`) by a random offset in `-max..=max` along each
/// axis, repeating edge pixels into the uncovered border.
pub fn shift_images(values: &[f32], shape: ImageShape, max: usize, rng: &mut StdRng) -> Vec<f32> {
    let (h, w) = (shape.height, shape.width);
    let pixels = h * w;
    let max = max as i64;
    let mut out = Vec::with_capacity(values.len());
    for image in values.chunks(pixels) {
        let dy = rng.random_range(-max..=max);
        let dx = rng.random_range(-max..=max);
        for y in 0..h as i64 {
            let sy = (y - dy).clamp(0, h as i64 - 1) as usize;
            for x in 0..w as i64 {
                let sx = (x - dx).clamp(0, w as i64 - 1) as usize;
                out.push(image[sy * w + sx]);
            }
        }
    }
    out
}

/// Trains a student on private data alone for `steps` steps: the local-only baseline.
pub fn train_local_only(
    config: &TrainConfig,
    classes: usize,
    private: Labelled,
    public: Tensor,
    steps: usize,
) -> Result<Learner, ModelError> {
    let mut learner = Learner::new(config.clone(), classes, private, public)?;
    learner.train(steps, 1.0)?;
    Ok(learner)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
