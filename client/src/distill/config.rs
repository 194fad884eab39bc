//! How a node trains its student: the serde configuration types of the `[training]` table.

use serde::{Deserialize, Serialize};

use crate::distill::schedule::ScheduleShape;
use crate::distill::student::{ConvLayers, StudentConfig};

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
    /// Distillation temperature T (2 suits images, 4 tabular data), or `"auto"`: the node
    /// searches for it on a validation split of its own records when the first target arrives
    /// (see [`crate::distill::Learner::search_temperature`]).
    pub temperature: Temperature,
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
    /// Dynamic distillation: weight each public row of the student's distillation term by
    /// the target's reliability there (its confidence, and its agreement with the local
    /// teacher) and the row's difficulty for the student, averaging 1 over a batch.
    pub dynamic_weighting: bool,
    /// Seed of weight initialisation and batch sampling.
    pub seed: u64,
    /// The student's kind: `"mlp"` (dense layers `hidden`) or `"cnn"` (layers `cnn`, image
    /// data only). Nodes of one federation may differ: only soft labels are exchanged.
    pub architecture: Architecture,
    /// The CNN student's layers (with `architecture = "cnn"`).
    pub cnn: CnnConfig,
    /// Dropout probability after each dense hidden layer of the student while training.
    pub dropout: f64,
    /// How alpha moves from `alpha_start` to `alpha_end` over the rounds.
    pub alpha_schedule: ScheduleShape,
    /// Temperature in the last round; unset: `temperature` throughout.
    pub temperature_end: Option<f64>,
    /// How the temperature moves from `temperature` to `temperature_end` over the rounds.
    pub temperature_schedule: ScheduleShape,
    /// The node's larger local teacher: the reference for compression, speed-up and CKA in
    /// non-private mode, and the source of feature distillation.
    pub teacher: LocalTeacherConfig,
    /// Self-distillation across rounds: weight of a `T^2 * KL` term pulling the student towards
    /// its own snapshot from the end of the previous round, on public records (0: off).
    pub self_distillation: f64,
    /// Do no harm: after the federation, choose between a student trained against the
    /// federation's target and one trained on the node's records alone by cross-validation
    /// (see [`crate::distill::Learner::check_harm`]); this is the share of the private
    /// records (and of the target's rows) each fold holds out, so 0.2 makes five folds and
    /// every record is held out once. `None`: 0.2 for a private node, off for a non-private
    /// one (whose target carries no noise); 0: off.
    pub validation_fraction: Option<f64>,
    /// Mixup of public records: each public row of a batch is mixed with another row of the
    /// same batch by a weight drawn from Beta(`public_mixup`, `public_mixup`), and its target
    /// probabilities (and confidence weight) by the same weight (0: off).
    pub public_mixup: f64,
    /// Rows of each step's public batch; unset: `batch_size`.
    pub public_batch_size: Option<usize>,
    /// Optimiser steps of the final distillation after the last round; unset:
    /// `steps_per_round`.
    pub final_steps: Option<usize>,
    /// Learning rate in the last round and the final distillation; unset: `learning_rate`
    /// throughout.
    pub learning_rate_end: Option<f64>,
    /// How the learning rate moves from `learning_rate` to `learning_rate_end` over the
    /// rounds (the local steps before the first target use `learning_rate`).
    pub learning_rate_schedule: ScheduleShape,
    /// Weight averaging: the student kept after the final distillation is the mean of its
    /// weights at the end of this many last rounds and after the final distillation (0: off,
    /// the final student as trained).
    pub average_rounds: usize,
    /// With `image`: training inputs (private and public batches) are shifted by a random
    /// sub-pixel offset of up to this many pixels along each axis, bilinearly interpolated
    /// (0: off).
    pub subpixel_shift: f64,
    /// Sharpen (below 1) or soften (above 1) the target's probabilities as
    /// `softmax(log p / target_temperature)` before distilling; unset: as received.
    pub target_temperature: Option<f64>,
}

/// The distillation temperature: a number, or `"auto"` (written so in TOML and on the command
/// line).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Temperature {
    /// T as given.
    Fixed(f64),
    /// T searched for on the node's own validation split from [`AUTO_TEMPERATURES`]'s first
    /// value up.
    Auto,
}

/// The temperatures `"auto"` tries, in order: the playbook's procedure, from T = 1 in steps of
/// 0.5, stopping once the validation loss has risen for two steps in a row.
pub const AUTO_TEMPERATURES: [f64; 15] = [
    1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0,
];

impl Temperature {
    /// The temperature before any search: the fixed value, or the first one `"auto"` tries.
    pub fn start(self) -> f64 {
        match self {
            Temperature::Fixed(t) => t,
            Temperature::Auto => AUTO_TEMPERATURES[0],
        }
    }

    /// Whether the node searches for T.
    pub fn is_auto(self) -> bool {
        self == Temperature::Auto
    }
}

impl std::str::FromStr for Temperature {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Temperature::Auto);
        }
        match s.trim().parse::<f64>() {
            Ok(t) if t > 0.0 && t.is_finite() => Ok(Temperature::Fixed(t)),
            _ => Err(format!(
                "temperature must be a number > 0 or \"auto\", not {s:?}"
            )),
        }
    }
}

impl Serialize for Temperature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Temperature::Fixed(t) => serializer.serialize_f64(*t),
            Temperature::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Temperature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom("temperature must be a number > 0 or \"auto\""))?
        {
            // Ranges are checked by `TrainConfig::validate`, which names the field.
            Raw::Number(t) => Ok(Temperature::Fixed(t)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The kind of student network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Dense layers (`hidden`), any data.
    #[default]
    Mlp,
    /// Convolutions, pooling and dense layers (`cnn`); needs `image`.
    Cnn,
}

/// The layers of a CNN student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnnConfig {
    /// Output channels of each same-padded convolution (ReLU after each, and a 2x2 max-pool
    /// after each but the last).
    pub channels: Vec<usize>,
    /// Square kernel size (odd).
    pub kernel: usize,
    /// Dense hidden widths between the last maps and the classifier.
    pub hidden: Vec<usize>,
}

impl Default for CnnConfig {
    fn default() -> Self {
        // On 8x8 digits (fd-sim seed 1) 8 and 16 channels reached 0.958 federated against
        // 0.953 for 16 and 32, at half the inference time.
        CnnConfig {
            channels: vec![8, 16],
            kernel: 3,
            hidden: Vec::new(),
        }
    }
}

/// A node's larger local teacher: an MLP trained on the node's private records (and the global
/// target, like the student). It never leaves the node and never labels for the federation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalTeacherConfig {
    /// Train a local teacher at all. Without one (and without private teachers) compression
    /// ratio, speed-up and CKA are not reported.
    pub enabled: bool,
    /// Hidden widths of the teacher MLP.
    pub hidden: Vec<usize>,
    /// Teacher steps on private data before the first round.
    pub local_steps: usize,
    /// Teacher steps per round once a target exists.
    pub steps_per_round: usize,
    /// Weight of the feature-distillation term: MSE between a learned linear projection of the
    /// student's representation and the teacher's (0: off).
    pub feature_weight: f64,
    /// Weight of a `T^2 * KL(teacher_T || student_T)` term on public records (0: off).
    pub logit_weight: f64,
    /// Augmentation distillation: the teacher terms use perturbed public records (one-pixel
    /// shifts for images, Gaussian jitter of `input_noise` for tabular data), the teacher
    /// labelling the same perturbed record the student sees.
    pub augment: bool,
}

impl LocalTeacherConfig {
    /// Whether the student learns from the teacher (a feature or logit term is on).
    pub fn distils(&self) -> bool {
        self.enabled && (self.feature_weight > 0.0 || self.logit_weight > 0.0)
    }
}

impl Default for LocalTeacherConfig {
    fn default() -> Self {
        LocalTeacherConfig {
            enabled: true,
            hidden: vec![512, 256],
            local_steps: 200,
            steps_per_round: 20,
            feature_weight: 0.0,
            logit_weight: 0.0,
            augment: false,
        }
    }
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
            temperature: Temperature::Fixed(4.0),
            alpha_start: 0.7,
            alpha_end: 0.3,
            input_noise: 0.5,
            image: None,
            max_shift: 0,
            confidence_weighting: false,
            dynamic_weighting: false,
            seed: 1,
            architecture: Architecture::Mlp,
            cnn: CnnConfig::default(),
            dropout: 0.0,
            alpha_schedule: ScheduleShape::Linear,
            temperature_end: None,
            temperature_schedule: ScheduleShape::Constant,
            teacher: LocalTeacherConfig::default(),
            self_distillation: 0.0,
            validation_fraction: None,
            public_mixup: 0.0,
            public_batch_size: None,
            final_steps: None,
            learning_rate_end: None,
            learning_rate_schedule: ScheduleShape::Linear,
            average_rounds: 0,
            subpixel_shift: 0.0,
            target_temperature: None,
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
                match self.temperature {
                    Temperature::Fixed(t) => t > 0.0 && t.is_finite(),
                    Temperature::Auto => true,
                },
                "temperature must be > 0 or \"auto\"",
            ),
            (
                !self.temperature.is_auto() || self.temperature_end.is_none(),
                "temperature_end needs a fixed temperature (\"auto\" picks one T for all rounds)",
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
            (
                (0.0..1.0).contains(&self.dropout),
                "dropout must be in [0, 1)",
            ),
            (
                self.temperature_end
                    .is_none_or(|t| t > 0.0 && t.is_finite()),
                "temperature_end must be > 0",
            ),
            (
                self.architecture != Architecture::Cnn || self.image.is_some(),
                "architecture = \"cnn\" needs image data (set training.image)",
            ),
            (
                !self.cnn.channels.is_empty() && !self.cnn.channels.contains(&0),
                "cnn.channels must be a non-empty list of counts > 0",
            ),
            (self.cnn.kernel % 2 == 1, "cnn.kernel must be odd"),
            (
                !self.cnn.hidden.contains(&0),
                "cnn.hidden widths must be > 0",
            ),
            (
                !self.teacher.hidden.contains(&0),
                "teacher.hidden widths must be > 0",
            ),
            (
                self.teacher.feature_weight >= 0.0 && self.teacher.feature_weight.is_finite(),
                "teacher.feature_weight must be >= 0",
            ),
            (
                self.teacher.logit_weight >= 0.0 && self.teacher.logit_weight.is_finite(),
                "teacher.logit_weight must be >= 0",
            ),
            (
                self.teacher.enabled
                    || (self.teacher.feature_weight == 0.0 && self.teacher.logit_weight == 0.0),
                "teacher.feature_weight and teacher.logit_weight need teacher.enabled = true",
            ),
            (
                self.self_distillation >= 0.0 && self.self_distillation.is_finite(),
                "self_distillation must be >= 0",
            ),
            (
                self.validation_fraction
                    .is_none_or(|f| (0.0..=0.5).contains(&f)),
                "validation_fraction must be between 0 and 0.5",
            ),
            (
                self.public_mixup >= 0.0 && self.public_mixup.is_finite(),
                "public_mixup must be >= 0",
            ),
            (
                self.public_batch_size.is_none_or(|b| b > 0),
                "public_batch_size must be > 0",
            ),
            (
                self.learning_rate_end
                    .is_none_or(|lr| lr > 0.0 && lr.is_finite()),
                "learning_rate_end must be > 0",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(format!("training.{msg}")),
            None => Ok(()),
        }
    }

    /// The cross-entropy weight in `round` of `rounds`: from `alpha_start` to `alpha_end`
    /// along `alpha_schedule` (linear by default).
    pub fn alpha(&self, round: u32, rounds: u32) -> f64 {
        self.alpha_schedule
            .value(self.alpha_start, self.alpha_end, round, rounds)
    }

    /// The temperature in `round` of `rounds`: from `temperature` to `temperature_end` along
    /// `temperature_schedule` (constant by default).
    pub fn temperature_at(&self, round: u32, rounds: u32) -> f64 {
        let start = self.temperature.start();
        let end = self.temperature_end.unwrap_or(start);
        self.temperature_schedule.value(start, end, round, rounds)
    }

    /// The learning rate in `round` of `rounds`: from `learning_rate` to `learning_rate_end`
    /// along `learning_rate_schedule` (constant without `learning_rate_end`).
    pub fn learning_rate_at(&self, round: u32, rounds: u32) -> f64 {
        match self.learning_rate_end {
            Some(end) => self
                .learning_rate_schedule
                .value(self.learning_rate, end, round, rounds),
            None => self.learning_rate,
        }
    }

    /// The student's architecture for data of `inputs` features and `classes` classes.
    pub fn student_config(&self, inputs: usize, classes: usize) -> StudentConfig {
        match (self.architecture, self.image) {
            (Architecture::Cnn, Some(shape)) => StudentConfig {
                inputs,
                classes,
                hidden: self.cnn.hidden.clone(),
                dropout: self.dropout,
                conv: Some(ConvLayers {
                    height: shape.height,
                    width: shape.width,
                    channels: self.cnn.channels.clone(),
                    kernel: self.cnn.kernel,
                }),
            },
            _ => StudentConfig {
                inputs,
                classes,
                hidden: self.hidden.clone(),
                dropout: self.dropout,
                conv: None,
            },
        }
    }

    /// The local teacher's architecture (an MLP), if one is enabled.
    pub fn teacher_config(&self, inputs: usize, classes: usize) -> Option<StudentConfig> {
        self.teacher.enabled.then(|| StudentConfig {
            inputs,
            classes,
            hidden: self.teacher.hidden.clone(),
            dropout: 0.0,
            conv: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Only {
        temperature: Temperature,
    }

    #[test]
    fn temperature_reads_a_number_or_auto_and_names_itself_otherwise() {
        let read = |text: &str| toml::from_str::<Only>(text).map(|o| o.temperature);
        assert_eq!(read("temperature = 2").unwrap(), Temperature::Fixed(2.0));
        assert_eq!(read("temperature = 1.5").unwrap(), Temperature::Fixed(1.5));
        assert_eq!(read("temperature = \"auto\"").unwrap(), Temperature::Auto);
        let err = read("temperature = \"hot\"").unwrap_err().to_string();
        assert!(err.contains("temperature") && err.contains("auto"), "{err}");
        assert_eq!("auto".parse::<Temperature>().unwrap(), Temperature::Auto);
        assert!("0".parse::<Temperature>().is_err());
        let auto_with_end = TrainConfig {
            temperature: Temperature::Auto,
            temperature_end: Some(2.0),
            ..TrainConfig::default()
        };
        assert!(
            auto_with_end
                .validate()
                .unwrap_err()
                .contains("temperature_end")
        );
        assert_eq!(
            toml::to_string(&TrainConfig {
                temperature: Temperature::Auto,
                ..TrainConfig::default()
            })
            .unwrap()
            .lines()
            .find(|l| l.starts_with("temperature ="))
            .unwrap(),
            "temperature = \"auto\""
        );
    }
}
