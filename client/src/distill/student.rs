//! The student: a candle network (an MLP, or a small CNN for images) built from a serde config,
//! its loss, and how it is saved.
//!
//! The same [`Student`] type also serves as a node's larger *local teacher* (see
//! [`crate::distill::LocalTeacherConfig`]): a teacher is just a bigger network of the same kinds.

use std::path::Path;

use candle_core::{D, DType, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::data::{Standardiser, device};
use crate::distill::conv::{convolve, max_pool_2x2};
use crate::distill::dense::add_bias;

/// Errors of model building, training and persistence.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shape mismatch and the like).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The model directory could not be read or written.
    #[error("{path}: {message}")]
    Files {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The config is unusable.
    #[error("invalid student config: {0}")]
    Config(String),
    /// A thread panicked while it held the model's variables; the model cannot be trusted.
    #[error("the model's variables were left half-updated by a thread that panicked")]
    Poisoned,
}

/// Architecture of a student: an MLP, or (with `conv`) a small CNN for images.
///
/// `model.json` carries this, so `fd-client predict` can rebuild any student a run wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    /// Number of input features.
    pub inputs: usize,
    /// Number of classes.
    pub classes: usize,
    /// Widths of the dense hidden layers (ReLU after each). With `conv` they follow the
    /// convolutions.
    pub hidden: Vec<usize>,
    /// Dropout probability after each dense hidden layer while training (0: none).
    #[serde(default)]
    pub dropout: f64,
    /// Convolutional layers in front of the dense ones (image inputs only); `None`: an MLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConvLayers>,
}

/// The convolutional part of a CNN student: same-padded convolutions, each followed by ReLU and,
/// except the last, by a `2x2` max-pool; the last maps, flattened, feed the dense layers.
/// (Pooling between convolutions keeps the wider layers on small maps: on 8x8 digits a second
/// convolution at full resolution made training several times slower on the CPU.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvLayers {
    /// Image rows (`height * width` must equal `inputs`; one channel).
    pub height: usize,
    /// Image columns.
    pub width: usize,
    /// Output channels of each convolution.
    pub channels: Vec<usize>,
    /// Square kernel size (odd, so same padding keeps the image size).
    pub kernel: usize,
}

impl StudentConfig {
    /// Checks the architecture; the message names the offending part.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.inputs == 0 || self.classes < 2 || self.hidden.contains(&0) {
            return bad(format!(
                "need inputs >= 1, classes >= 2 and non-zero hidden widths, got {self:?}"
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if let Some(c) = &self.conv {
            if c.height * c.width != self.inputs {
                return bad(format!(
                    "a CNN needs image inputs: {}x{} pixels, but there are {} features",
                    c.height, c.width, self.inputs
                ));
            }
            let halvings = 1usize << c.channels.len().saturating_sub(1);
            if c.height % halvings != 0 || c.width % halvings != 0 {
                return bad(format!(
                    "a CNN with {} convolutions pools {} times, so the image sides must be \
                     multiples of {halvings}, got {}x{}",
                    c.channels.len(),
                    c.channels.len().saturating_sub(1),
                    c.height,
                    c.width
                ));
            }
            if c.channels.is_empty() || c.channels.contains(&0) {
                return bad(format!(
                    "cnn channels must be a non-empty list of non-zero counts, got {:?}",
                    c.channels
                ));
            }
            if c.kernel % 2 == 0 {
                return bad(format!("cnn kernel must be odd, got {}", c.kernel));
            }
        }
        Ok(())
    }

    /// Width of the flattened convolution maps (or the inputs, for an MLP).
    fn feature_width_before_dense(&self) -> usize {
        match &self.conv {
            Some(c) => {
                let halvings = 1usize << c.channels.len().saturating_sub(1);
                (c.height / halvings) * (c.width / halvings) * c.channels.last().unwrap_or(&1)
            }
            None => self.inputs,
        }
    }

    /// Width of the representation fed to the final (classifier) layer.
    pub fn feature_width(&self) -> usize {
        match (self.hidden.last(), &self.conv) {
            (Some(&h), _) => h,
            (None, _) => self.feature_width_before_dense(),
        }
    }

    /// Multiply-adds of one record's forward pass, counted from the layer shapes: every
    /// convolution at its input's resolution (padded taps included, pooling halving the maps
    /// after all but the last), then every dense layer. Biases, ReLU, pooling and softmax
    /// are not counted.
    pub fn multiply_adds(&self) -> usize {
        let mut total = 0;
        let mut width = self.inputs;
        if let Some(c) = &self.conv {
            let (mut rows, mut cols, mut channels) = (c.height, c.width, 1);
            for (i, &out) in c.channels.iter().enumerate() {
                total += rows * cols * c.kernel * c.kernel * channels * out;
                channels = out;
                if i + 1 < c.channels.len() {
                    (rows, cols) = (rows / 2, cols / 2);
                }
            }
            width = rows * cols * channels;
        }
        for &out in self.hidden.iter().chain([&self.classes]) {
            total += width * out;
            width = out;
        }
        total
    }

    /// A short human-readable name, e.g. `mlp[256]` or `cnn[16,32]+[64]`.
    pub fn describe(&self) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match &self.conv {
            None => format!("mlp[{}]", list(&self.hidden)),
            Some(c) if self.hidden.is_empty() => format!("cnn[{}]", list(&c.channels)),
            Some(c) => format!("cnn[{}]+[{}]", list(&c.channels), list(&self.hidden)),
        }
    }
}

/// `layer` applied to `[n, inputs]` rows, then ReLU if `relu`: candle's product, and the
/// bias and ReLU as one op (see `distill::dense`).
fn dense(layer: &Linear, h: &Tensor, relu: bool) -> Result<Tensor, ModelError> {
    with_bias(h.matmul(&layer.weight().t()?)?, layer.bias(), relu)
}

/// `y` plus `bias` along its last dimension, then ReLU if `relu`.
fn with_bias(y: Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Tensor, ModelError> {
    Ok(match bias {
        Some(b) => add_bias(&y, b, relu)?,
        None if relu => y.relu()?,
        None => y,
    })
}

/// A student: optional convolutions and pooling, then `-> hidden[0] -> ... -> classes`, ReLU
/// between layers.
pub struct Student {
    config: StudentConfig,
    varmap: VarMap,
    convs: Vec<Conv2d>,
    layers: Vec<Linear>,
}

impl std::fmt::Debug for Student {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Student")
            .field("config", &self.config)
            .finish()
    }
}

impl Student {
    /// Builds a student with weights drawn from `seed` (uniform in ±1/sqrt(fan_in), as
    /// PyTorch's `nn.Linear` default), so runs are reproducible.
    pub fn new(config: StudentConfig, seed: u64) -> Result<Student, ModelError> {
        config.validate()?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device());
        let mut convs = Vec::new();
        let mut width = config.feature_width_before_dense();
        if let Some(c) = &config.conv {
            let conv = Conv2dConfig {
                padding: c.kernel / 2,
                ..Conv2dConfig::default()
            };
            let mut channels = 1;
            for (i, &out) in c.channels.iter().enumerate() {
                convs.push(candle_nn::conv2d(
                    channels,
                    out,
                    c.kernel,
                    conv,
                    vb.pp(format!("conv{i}")),
                )?);
                channels = out;
            }
        }
        let mut layers = Vec::new();
        for (i, &h) in config.hidden.iter().chain([&config.classes]).enumerate() {
            layers.push(candle_nn::linear(width, h, vb.pp(format!("layer{i}")))?);
            width = h;
        }
        let student = Student {
            config,
            varmap,
            convs,
            layers,
        };
        student.reinitialise(seed)?;
        Ok(student)
    }

    fn reinitialise(&self, seed: u64) -> Result<(), ModelError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| ModelError::Poisoned)?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let dims = var.dims().to_vec();
            // Weights are [out, in] (dense) or [out, in, k, k] (conv), biases [out]; both use
            // fan_in = in (times k * k) of their layer, as PyTorch does.
            let fan_in: usize = if dims.len() >= 2 {
                dims[1..].iter().product()
            } else {
                let w = &data[&name.replace(".bias", ".weight")];
                w.dims()[1..].iter().product()
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            var.set(&Tensor::from_vec(values, dims, &device())?)?;
        }
        Ok(())
    }

    /// Another handle on the same variables (training one trains both): lets a learner read
    /// the student while it mutably borrows itself for batches.
    pub fn shared(&self) -> Student {
        Student {
            config: self.config.clone(),
            varmap: self.varmap.clone(),
            convs: self.convs.clone(),
            layers: self.layers.clone(),
        }
    }

    /// An independent copy of the current weights (later training does not change it).
    pub fn snapshot(&self) -> Result<Student, ModelError> {
        let copy = Student::new(self.config.clone(), 0)?;
        let poisoned = || ModelError::Poisoned;
        let from = self.varmap.data().lock().map_err(|_| poisoned())?;
        let to = copy.varmap.data().lock().map_err(|_| poisoned())?;
        for (name, var) in from.iter() {
            if let Some(target) = to.get(name) {
                target.set(&var.as_tensor().copy()?)?;
            }
        }
        drop(to);
        Ok(copy)
    }

    /// Moves every weight `share` of the way towards `other`'s (same architecture):
    /// `w = (1 - share) w + share w_other`. With `share = 1 / k` on the k-th model this keeps
    /// a running mean of weights.
    pub fn blend(&self, other: &Student, share: f64) -> Result<(), ModelError> {
        let poisoned = || ModelError::Poisoned;
        let to = self.varmap.data().lock().map_err(|_| poisoned())?;
        let from = other.varmap.data().lock().map_err(|_| poisoned())?;
        for (name, var) in to.iter() {
            if let Some(source) = from.get(name) {
                let mixed = ((var.as_tensor() * (1.0 - share))? + (source.as_tensor() * share)?)?;
                var.set(&mixed)?;
            }
        }
        Ok(())
    }

    /// The architecture.
    pub fn config(&self) -> &StudentConfig {
        &self.config
    }

    /// Trainable variables, for the optimiser.
    pub fn vars(&self) -> Vec<candle_core::Var> {
        self.varmap.all_vars()
    }

    /// Number of trainable parameters.
    pub fn parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Logits for a batch `[n, inputs]` (inference: no dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_t(x, None)
    }

    /// Logits for a batch; with `dropout_rng` (training) dropout is applied as configured.
    pub fn forward_t(
        &self,
        x: &Tensor,
        dropout_rng: Option<&mut StdRng>,
    ) -> Result<Tensor, ModelError> {
        let h = self.features_t(x, dropout_rng)?;
        self.logits(&h)
    }

    /// The representation the classifier layer reads (the last hidden layer's activations, or
    /// the pooled convolution maps, or the inputs of a linear model), `[n, feature_width]`.
    /// Used for feature distillation and for CKA.
    pub fn features(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.features_t(x, None)
    }

    /// [`Student::features`] and logits in one pass, with optional training-time dropout.
    pub fn features_and_logits(
        &self,
        x: &Tensor,
        dropout_rng: Option<&mut StdRng>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let h = self.features_t(x, dropout_rng)?;
        let logits = self.logits(&h)?;
        Ok((h, logits))
    }

    /// Applies `layer`, the first dense layer, to the network's flattened input or maps: for
    /// a CNN the maps are flattened channels last, and the layer's weights, stored channel-major
    /// `[out, channels * rows * columns]`, are reordered to match (a copy of the small weight
    /// matrix instead of a transpose of every record's maps).
    fn dense_after_maps(
        &self,
        layer: &Linear,
        h: &Tensor,
        relu: bool,
    ) -> Result<Tensor, ModelError> {
        let Some(c) = &self.config.conv else {
            return dense(layer, h, relu);
        };
        let halvings = 1usize << c.channels.len().saturating_sub(1);
        let (rows, cols) = (c.height / halvings, c.width / halvings);
        let channels = c.channels.last().copied().unwrap_or(1);
        let out = layer.weight().dims2()?.0;
        let weight = layer
            .weight()
            .reshape((out, channels, rows, cols))?
            .permute((0, 2, 3, 1))?
            .reshape((out, rows * cols * channels))?;
        let y = h.matmul(&weight.t()?)?;
        with_bias(y, layer.bias(), relu)
    }

    /// The classifier applied to the representation `h` (the flattened maps themselves when a
    /// CNN has no dense hidden layer).
    fn logits(&self, h: &Tensor) -> Result<Tensor, ModelError> {
        if self.layers.len() == 1 {
            self.dense_after_maps(self.classifier(), h, false)
        } else {
            dense(self.classifier(), h, false)
        }
    }

    fn classifier(&self) -> &Linear {
        // `new` always pushes the classifier layer last.
        &self.layers[self.layers.len() - 1]
    }

    fn features_t(
        &self,
        x: &Tensor,
        mut dropout_rng: Option<&mut StdRng>,
    ) -> Result<Tensor, ModelError> {
        let mut h = x.clone();
        if let Some(c) = &self.config.conv {
            // Channels last, `[n, rows, columns, channels]`: each convolution is an unfold
            // and one matrix product (see `distill::conv`).
            let n = h.dims2()?.0;
            h = h.reshape((n, c.height, c.width, 1))?;
            for (i, conv) in self.convs.iter().enumerate() {
                h = convolve(&h, conv.weight(), None)?;
                // Pooling commutes with adding a per-channel bias and with ReLU (both are
                // monotone), so both run on the pooled quarter of the maps.
                if i + 1 < self.convs.len() {
                    h = max_pool_2x2(&h)?;
                }
                h = with_bias(h, conv.bias(), true)?;
            }
            // Flattened channels last; the first dense layer reads its weights (stored
            // channel-major, as candle's `[n, channels, rows, columns]` maps were) in that
            // order (see `dense_after_maps`).
            h = h.flatten_from(1)?;
        }
        let hidden = &self.layers[..self.layers.len() - 1];
        for (i, layer) in hidden.iter().enumerate() {
            h = if i == 0 {
                self.dense_after_maps(layer, &h, true)?
            } else {
                dense(layer, &h, true)?
            };
            if let Some(rng) = dropout_rng.as_deref_mut()
                && self.config.dropout > 0.0
            {
                h = dropout(&h, self.config.dropout, rng)?;
            }
        }
        Ok(h)
    }

    /// Class probabilities for a batch, row-major `[n * classes]`.
    pub fn probabilities(&self, x: &Tensor) -> Result<Vec<f32>, ModelError> {
        let p = candle_nn::ops::softmax_last_dim(&self.forward(x)?)?;
        Ok(p.flatten_all()?.to_vec1()?)
    }

    /// Fraction of rows whose arg-max prediction equals the label.
    pub fn accuracy(&self, x: &Tensor, labels: &[u32]) -> Result<f64, ModelError> {
        if labels.is_empty() {
            return Ok(0.0);
        }
        let pred: Vec<u32> = self.forward(x)?.argmax(D::Minus1)?.to_vec1()?;
        let right = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
        Ok(right as f64 / labels.len() as f64)
    }

    /// Writes `model.safetensors` and `model.json` (architecture, feature names and the
    /// standardisation) into `dir`.
    pub fn save(&self, dir: &Path, card: &ModelCard) -> Result<(), ModelError> {
        let files = |path: &Path, e: &dyn std::fmt::Display| ModelError::Files {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| files(dir, &e))?;
        let weights = dir.join("model.safetensors");
        self.varmap
            .save(&weights)
            .map_err(|e| files(&weights, &e))?;
        let json = dir.join("model.json");
        let text = serde_json::to_string_pretty(card).map_err(|e| files(&json, &e))?;
        std::fs::write(&json, text).map_err(|e| files(&json, &e))?;
        Ok(())
    }

    /// Loads a student written by [`Student::save`].
    pub fn load(dir: &Path) -> Result<(Student, ModelCard), ModelError> {
        let json = dir.join("model.json");
        let files = |path: &Path, e: &dyn std::fmt::Display| ModelError::Files {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let text = std::fs::read_to_string(&json).map_err(|e| files(&json, &e))?;
        let card: ModelCard = serde_json::from_str(&text).map_err(|e| files(&json, &e))?;
        let mut student = Student::new(card.student.clone(), 0)?;
        let weights = dir.join("model.safetensors");
        student
            .varmap
            .load(&weights)
            .map_err(|e| files(&weights, &e))?;
        // `VarMap::load` sets the variables in place, and the layers hold the same variables,
        // so nothing else needs rebuilding.
        Ok((student, card))
    }
}

/// Inverted dropout with a mask drawn from `rng` (so runs stay reproducible): each value is
/// zeroed with probability `p` and the survivors are scaled by `1 / (1 - p)`.
fn dropout(h: &Tensor, p: f64, rng: &mut StdRng) -> Result<Tensor, ModelError> {
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..h.elem_count())
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    Ok((h * Tensor::from_vec(mask, h.dims(), h.device())?)?)
}

/// What a saved model needs besides its weights to be used on new CSV rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Architecture.
    pub student: StudentConfig,
    /// Feature column names, in input order.
    pub columns: Vec<String>,
    /// Label column name in the training data.
    pub label_column: String,
    /// Standardisation fitted on the public set.
    pub standardiser: Standardiser,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_save_load_round_trips() {
        let cfg = StudentConfig {
            inputs: 3,
            classes: 2,
            hidden: vec![4],
            dropout: 0.0,
            conv: None,
        };
        let a = Student::new(cfg.clone(), 9).unwrap();
        let b = Student::new(cfg.clone(), 9).unwrap();
        let x = Tensor::new(&[[0.5f32, -1.0, 2.0]], &device()).unwrap();
        assert_eq!(a.probabilities(&x).unwrap(), b.probabilities(&x).unwrap());
        // 3*4 + 4 + 4*2 + 2 parameters.
        assert_eq!(a.parameters(), 26);

        let dir = tempfile::tempdir().unwrap();
        let card = ModelCard {
            student: cfg.clone(),
            columns: vec!["a".into(), "b".into(), "c".into()],
            label_column: "y".into(),
            standardiser: Standardiser {
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
        };
        a.save(dir.path(), &card).unwrap();
        let (c, back) = Student::load(dir.path()).unwrap();
        assert_eq!(back, card);
        assert_eq!(c.probabilities(&x).unwrap(), a.probabilities(&x).unwrap());
        let other = Student::new(cfg, 10).unwrap();
        assert_ne!(
            other.probabilities(&x).unwrap(),
            a.probabilities(&x).unwrap()
        );
    }

    fn cnn_config() -> StudentConfig {
        StudentConfig {
            inputs: 64,
            classes: 10,
            hidden: vec![],
            dropout: 0.0,
            conv: Some(ConvLayers {
                height: 8,
                width: 8,
                channels: vec![16, 32],
                kernel: 3,
            }),
        }
    }

    #[test]
    fn multiply_adds_are_counted_from_the_layer_shapes() {
        let mlp = StudentConfig {
            inputs: 64,
            classes: 10,
            hidden: vec![512, 256],
            dropout: 0.0,
            conv: None,
        };
        // 64 x 512 + 512 x 256 + 256 x 10.
        assert_eq!(mlp.multiply_adds(), 32_768 + 131_072 + 2_560);
        let cnn = StudentConfig {
            hidden: Vec::new(),
            conv: Some(ConvLayers {
                height: 8,
                width: 8,
                channels: vec![8, 16],
                kernel: 3,
            }),
            ..mlp
        };
        // 8 x 8 x 9 x 1 x 8, pooled to 4 x 4: 4 x 4 x 9 x 8 x 16, then 4 x 4 x 16 x 10.
        assert_eq!(cnn.multiply_adds(), 4_608 + 18_432 + 2_560);
    }

    #[test]
    fn cnn_has_the_expected_shape_and_round_trips_through_its_card() {
        let cfg = cnn_config();
        let cnn = Student::new(cfg.clone(), 3).unwrap();
        // conv0 16*1*3*3 + 16, (pool to 4x4) conv1 32*16*3*3 + 32, maps 4*4*32 = 512 -> 10:
        // 512*10 + 10.
        assert_eq!(cnn.parameters(), 160 + 4640 + 5130);
        assert_eq!(cfg.feature_width(), 512);
        assert_eq!(cfg.describe(), "cnn[16,32]");
        let x = Tensor::from_vec(
            (0..128).map(|v| (v % 7) as f32 - 3.0).collect::<Vec<_>>(),
            (2, 64),
            &device(),
        )
        .unwrap();
        assert_eq!(cnn.forward(&x).unwrap().dims(), &[2, 10]);
        assert_eq!(cnn.features(&x).unwrap().dims(), &[2, 512]);

        let dir = tempfile::tempdir().unwrap();
        let card = ModelCard {
            student: cfg,
            columns: (0..64).map(|i| format!("p{i}")).collect(),
            label_column: "label".into(),
            standardiser: Standardiser {
                mean: vec![0.0; 64],
                std: vec![1.0; 64],
            },
        };
        cnn.save(dir.path(), &card).unwrap();
        let json = std::fs::read_to_string(dir.path().join("model.json")).unwrap();
        assert!(
            json.contains("\"conv\"") && json.contains("\"channels\""),
            "{json}"
        );
        let (back, _) = Student::load(dir.path()).unwrap();
        assert_eq!(
            back.probabilities(&x).unwrap(),
            cnn.probabilities(&x).unwrap()
        );
    }

    #[test]
    fn model_cards_without_the_new_fields_still_load_as_mlps() {
        // model.json as written before CNN students existed.
        let old = r#"{"inputs": 3, "classes": 2, "hidden": [4]}"#;
        let cfg: StudentConfig = serde_json::from_str(old).unwrap();
        assert_eq!(cfg.conv, None);
        assert_eq!(cfg.dropout, 0.0);
    }

    #[test]
    fn bad_architectures_are_refused_with_the_reason() {
        let mut cfg = cnn_config();
        cfg.inputs = 30;
        let msg = Student::new(cfg, 1).unwrap_err().to_string();
        assert!(msg.contains("image") && msg.contains("30"), "{msg}");
        let mut cfg = cnn_config();
        cfg.conv.as_mut().unwrap().kernel = 2;
        assert!(
            Student::new(cfg, 1)
                .unwrap_err()
                .to_string()
                .contains("kernel")
        );
        let mut cfg = cnn_config();
        cfg.dropout = 1.0;
        assert!(
            Student::new(cfg, 1)
                .unwrap_err()
                .to_string()
                .contains("dropout")
        );
    }

    #[test]
    fn dropout_acts_only_in_training_and_snapshots_are_independent() {
        let cfg = StudentConfig {
            inputs: 4,
            classes: 3,
            hidden: vec![32],
            dropout: 0.5,
            conv: None,
        };
        let s = Student::new(cfg, 2).unwrap();
        let x = Tensor::new(&[[1f32, -1.0, 0.5, 2.0]], &device()).unwrap();
        let plain = s
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let dropped = s
            .forward_t(&x, Some(&mut rng))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_ne!(plain, dropped);
        assert_eq!(
            plain,
            s.forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        let snapshot = s.snapshot().unwrap();
        assert_eq!(
            s.probabilities(&x).unwrap(),
            snapshot.probabilities(&x).unwrap()
        );
        // Changing the original leaves the snapshot as it was.
        for v in s.vars() {
            v.set(&v.as_tensor().zeros_like().unwrap()).unwrap();
        }
        assert_ne!(
            s.probabilities(&x).unwrap(),
            snapshot.probabilities(&x).unwrap()
        );
    }
}
