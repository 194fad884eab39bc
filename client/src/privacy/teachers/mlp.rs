//! Small MLP teachers, one per shard, batched into one model: weights `[k, in, h]` and batched
//! matrix products (see the parent module for why that does not couple them).

use candle_core::{Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};

use crate::distill::FusedAdamW;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::EnsembleConfig;
use crate::distill::{ModelError, device, distillation_term};
use crate::seeds::Stream;

/// The `k` MLP teachers' weights, optimiser and batch stream.
pub(super) struct MlpTeachers {
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    optimiser: FusedAdamW,
    rng: StdRng,
}

fn uniform(rng: &mut StdRng, dims: &[usize], bound: f32) -> Result<Var, ModelError> {
    let n = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(
        values,
        dims,
        &device(),
    )?)?)
}

impl MlpTeachers {
    /// Fresh weights for `config.teachers` teachers, drawn from the ensemble's seed.
    pub(super) fn new(config: &EnsembleConfig) -> Result<MlpTeachers, ModelError> {
        let mut rng = StdRng::seed_from_u64(Stream::TeacherWeights.seed(config.seed));
        let (k, i, h, c) = (
            config.teachers,
            config.inputs,
            config.hidden,
            config.classes,
        );
        // PyTorch's nn.Linear default: uniform in +-1/sqrt(fan_in) for weights and biases.
        let w1 = uniform(&mut rng, &[k, i, h], 1.0 / (i as f32).sqrt())?;
        let b1 = uniform(&mut rng, &[k, 1, h], 1.0 / (i as f32).sqrt())?;
        let w2 = uniform(&mut rng, &[k, h, c], 1.0 / (h as f32).sqrt())?;
        let b2 = uniform(&mut rng, &[k, 1, c], 1.0 / (h as f32).sqrt())?;
        let optimiser = FusedAdamW::new(
            vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()],
            ParamsAdamW {
                lr: config.learning_rate,
                weight_decay: 0.0,
                ..ParamsAdamW::default()
            },
        )?;
        Ok(MlpTeachers {
            w1,
            b1,
            w2,
            b2,
            optimiser,
            rng,
        })
    }

    /// Trainable parameters of all teachers.
    pub(super) fn parameters(&self) -> usize {
        [&self.w1, &self.b1, &self.w2, &self.b2]
            .iter()
            .map(|v| v.elem_count())
            .sum()
    }

    /// Logits `[k, b, classes]` for inputs `[k, b, inputs]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = x
            .matmul(self.w1.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?
            .relu()?;
        Ok(h.matmul(self.w2.as_tensor())?
            .broadcast_add(self.b2.as_tensor())?)
    }

    /// Every teacher's probabilities for rows `x` `[m, inputs]`: `[k, m, classes]`.
    pub(super) fn probabilities(&self, x: &Tensor, teachers: usize) -> Result<Tensor, ModelError> {
        let (m, i) = x.dims2()?;
        let xs = x
            .unsqueeze(0)?
            .broadcast_as((teachers, m, i))?
            .contiguous()?;
        Ok(candle_nn::ops::softmax_last_dim(&self.forward(&xs)?)?)
    }

    /// Every teacher's hidden activations for rows `x`, side by side: `[m, k * hidden]`.
    pub(super) fn hidden(&self, x: &Tensor, config: &EnsembleConfig) -> Result<Tensor, ModelError> {
        let (m, i) = x.dims2()?;
        let (k, h) = (config.teachers, config.hidden);
        let xs = x.unsqueeze(0)?.broadcast_as((k, m, i))?.contiguous()?;
        let hidden = xs
            .matmul(self.w1.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?
            .relu()?;
        Ok(hidden.transpose(0, 1)?.contiguous()?.reshape((m, k * h))?)
    }

    /// Runs `steps` steps on the private records `(x, y)` split into `shards`; see
    /// [`super::TeacherEnsemble::train`].
    pub(super) fn train(
        &mut self,
        config: &EnsembleConfig,
        shards: &[Vec<u32>],
        (x, y): (&Tensor, &Tensor),
        steps: usize,
        alpha: f64,
        target: Option<(&Tensor, &Tensor)>,
    ) -> Result<(), ModelError> {
        let (k, c) = (config.teachers, config.classes);
        let inputs = config.inputs;
        let b = config.batch_size.max(1);
        for _ in 0..steps {
            let mut idx = Vec::with_capacity(k * b);
            for shard in shards {
                for _ in 0..b {
                    idx.push(shard[self.rng.random_range(0..shard.len())]);
                }
            }
            let idx = Tensor::new(idx.as_slice(), &device())?;
            let x = x.index_select(&idx, 0)?.reshape((k, b, inputs))?;
            let y = y.index_select(&idx, 0)?;
            let logits = self.forward(&x)?.reshape((k * b, c))?;
            // The mean over all k*b rows times k is the sum of the per-teacher means.
            let mut loss = (candle_nn::loss::cross_entropy(&logits, &y)? * k as f64)?;
            if let (Some((tx, tp)), true) = (target, alpha < 1.0) {
                let rows = tx.dims2()?.0;
                let pidx: Vec<u32> = (0..b)
                    .map(|_| self.rng.random_range(0..rows as u32))
                    .collect();
                let pidx = Tensor::new(pidx.as_slice(), &device())?;
                let px = tx.index_select(&pidx, 0)?;
                let pt = tp.index_select(&pidx, 0)?;
                let px = px
                    .unsqueeze(0)?
                    .broadcast_as((k, b, inputs))?
                    .contiguous()?;
                let pt = pt
                    .unsqueeze(0)?
                    .broadcast_as((k, b, c))?
                    .reshape((k * b, c))?;
                let plogits = self.forward(&px)?.reshape((k * b, c))?;
                let kd = distillation_term(&plogits, &pt, config.temperature)?;
                loss = ((loss * alpha)? + (kd * ((1.0 - alpha) * k as f64))?)?;
            }
            self.optimiser.backward_step(&loss)?;
        }
        Ok(())
    }
}
