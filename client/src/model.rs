//! The student: a candle MLP built from a serde config, its loss, and how it is saved.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::data::Standardiser;

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
}

/// Architecture of a student MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    /// Number of input features.
    pub inputs: usize,
    /// Number of classes.
    pub classes: usize,
    /// Widths of the hidden layers (ReLU after each).
    pub hidden: Vec<usize>,
}

/// A student MLP: `inputs -> hidden[0] -> ... -> classes`, ReLU between layers.
pub struct Student {
    config: StudentConfig,
    varmap: VarMap,
    layers: Vec<Linear>,
}

impl std::fmt::Debug for Student {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Student")
            .field("config", &self.config)
            .finish()
    }
}

/// The device: students are small and run on the CPU.
pub fn device() -> Device {
    Device::Cpu
}

impl Student {
    /// Builds a student with weights drawn from `seed` (uniform in ±1/sqrt(fan_in), as
    /// PyTorch's `nn.Linear` default), so runs are reproducible.
    pub fn new(config: StudentConfig, seed: u64) -> Result<Student, ModelError> {
        if config.inputs == 0 || config.classes < 2 || config.hidden.contains(&0) {
            return Err(ModelError::Config(format!(
                "need inputs >= 1, classes >= 2 and non-zero hidden widths, got {config:?}"
            )));
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device());
        let mut layers = Vec::new();
        let mut width = config.inputs;
        for (i, &h) in config.hidden.iter().chain([&config.classes]).enumerate() {
            layers.push(candle_nn::linear(width, h, vb.pp(format!("layer{i}")))?);
            width = h;
        }
        let student = Student {
            config,
            varmap,
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
            .map_err(|_| ModelError::Config("variable map poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let dims = var.dims().to_vec();
            // Weights are [out, in], biases [out]; both use fan_in = in of their layer.
            let fan_in = if dims.len() == 2 {
                dims[1]
            } else {
                let w = &data[&name.replace(".bias", ".weight")];
                w.dims()[1]
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            var.set(&Tensor::from_vec(values, dims, &device())?)?;
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

    /// Logits for a batch `[n, inputs]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
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

/// Builds a `[rows, width]` tensor from row-major values.
pub fn matrix(values: Vec<f32>, width: usize) -> Result<Tensor, ModelError> {
    let rows = values.len() / width.max(1);
    Ok(Tensor::from_vec(values, (rows, width), &device())?)
}

/// The distillation term `T^2 * KL(softmax(log p / T) || softmax(s / T))`, averaged over rows.
///
/// `teacher_probs` are probability vectors (the global target); tempering them as
/// `softmax(log p / T)` equals `softmax(t / T)` for any logits `t` with `softmax(t) = p`, so this
/// is exactly the field's `KL(softmax(t/T) || softmax(s/T))`.
pub fn distillation_term(
    student_logits: &Tensor,
    teacher_probs: &Tensor,
    temperature: f64,
) -> Result<Tensor, ModelError> {
    Ok(distillation_rows(student_logits, teacher_probs, temperature)?.mean_all()?)
}

/// The per-row terms `T^2 * KL(...)` of [`distillation_term`], shape `[n]`.
pub fn distillation_rows(
    student_logits: &Tensor,
    teacher_probs: &Tensor,
    temperature: f64,
) -> Result<Tensor, ModelError> {
    let log_teacher = temper_log(teacher_probs, temperature)?;
    let teacher = log_teacher.exp()?;
    let log_student = candle_nn::ops::log_softmax(&(student_logits / temperature)?, D::Minus1)?;
    let kl = (teacher * (log_teacher - log_student)?)?.sum(D::Minus1)?;
    Ok((kl * (temperature * temperature))?)
}

/// Confidence of each probability row: `1 - H(p) / ln(classes)`, in `[0, 1]` (0 for a uniform
/// row, 1 for a one-hot row). Shape `[n]`.
pub fn row_confidence(probs: &Tensor) -> Result<Tensor, ModelError> {
    let classes = probs.dims2()?.1.max(2);
    let p = probs.clamp(1e-7f32, 1f32)?;
    let entropy = (p.log()? * &p)?.sum(D::Minus1)?.neg()?;
    Ok((1.0 - (entropy / (classes as f64).ln())?)?.clamp(0f32, 1f32)?)
}

/// `log softmax(log p / T)` of probability rows, with `p` floored at 1e-7 so zeros stay finite.
fn temper_log(probs: &Tensor, temperature: f64) -> Result<Tensor, ModelError> {
    let logp = probs.clamp(1e-7f32, 1f32)?.log()?;
    Ok(candle_nn::ops::log_softmax(
        &(logp / temperature)?,
        D::Minus1,
    )?)
}

/// The full loss `alpha * CE(y, s) + (1 - alpha) * T^2 * KL(...)`, where the cross-entropy is
/// on a batch of private records and the distillation term on a batch of public records.
/// With `row_weights`, each public row's term is scaled by its weight (see [`row_confidence`]).
pub fn distillation_loss(
    private_logits: &Tensor,
    private_labels: &Tensor,
    public_logits: &Tensor,
    target_probs: &Tensor,
    alpha: f64,
    temperature: f64,
    row_weights: Option<&Tensor>,
) -> Result<Tensor, ModelError> {
    let ce = candle_nn::loss::cross_entropy(private_logits, private_labels)?;
    let rows = distillation_rows(public_logits, target_probs, temperature)?;
    let kd = match row_weights {
        Some(w) => (rows * w)?.mean_all()?,
        None => rows.mean_all()?,
    };
    Ok(((ce * alpha)? + (kd * (1.0 - alpha))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &Tensor) -> f64 {
        t.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn distillation_term_matches_a_hand_computed_kl() {
        // One row, T = 2. Student logits s = [1, 0]; teacher probs p = [0.8, 0.2].
        // Tempered teacher: softmax(ln p / 2) = [sqrt .8, sqrt .2] / (sqrt .8 + sqrt .2)
        //   = [2/3, 1/3] (since sqrt(.8) = 2 sqrt(.2)).
        // Tempered student: softmax([0.5, 0]) = [0.622459, 0.377541] (e^.5 / (1 + e^.5)).
        // KL = 2/3 ln((2/3)/0.622459) + 1/3 ln((1/3)/0.377541) = 0.0042295,
        // times T^2 = 4: 0.0169179. (Computed with Python's math module.)
        let s = Tensor::new(&[[1f32, 0.0]], &device()).unwrap();
        let p = Tensor::new(&[[0.8f32, 0.2]], &device()).unwrap();
        let v = scalar(&distillation_term(&s, &p, 2.0).unwrap());
        assert!((v - 0.0169179).abs() < 1e-5, "{v}");
    }

    #[test]
    fn distillation_term_is_zero_when_student_matches_teacher() {
        let s = Tensor::new(&[[2f32, -1.0, 0.5]], &device()).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        assert!(scalar(&distillation_term(&s, &p, 4.0).unwrap()).abs() < 1e-5);
    }

    #[test]
    fn loss_mixes_the_two_terms_by_alpha() {
        let s = Tensor::new(&[[1f32, 0.0]], &device()).unwrap();
        let y = Tensor::new(&[0u32], &device()).unwrap();
        let p = Tensor::new(&[[0.8f32, 0.2]], &device()).unwrap();
        // CE of [1, 0] against class 0 = ln(1 + e^-1) = 0.313262; KD term = 0.0169179 (above).
        let l = scalar(&distillation_loss(&s, &y, &s, &p, 0.7, 2.0, None).unwrap());
        let expected = 0.7 * 0.313262 + 0.3 * 0.0169179;
        assert!((l - expected).abs() < 1e-5, "{l} vs {expected}");
    }

    #[test]
    fn confidence_is_zero_for_uniform_and_one_for_one_hot_rows() {
        let p = Tensor::new(
            &[
                [0.25f32, 0.25, 0.25, 0.25],
                [1.0, 0.0, 0.0, 0.0],
                [0.5, 0.5, 0.0, 0.0],
            ],
            &device(),
        )
        .unwrap();
        let c: Vec<f32> = row_confidence(&p).unwrap().to_vec1().unwrap();
        assert!(c[0].abs() < 1e-5 && (c[1] - 1.0).abs() < 1e-4);
        // Two equal classes of four: H = ln 2, so 1 - ln 2 / ln 4 = 0.5.
        assert!((c[2] - 0.5).abs() < 1e-4, "{}", c[2]);
    }

    #[test]
    fn same_seed_same_weights_and_save_load_round_trips() {
        let cfg = StudentConfig {
            inputs: 3,
            classes: 2,
            hidden: vec![4],
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
}
