//! What the student benchmarks share: the digits shapes, the models compared, random batches.

use candle_core::Tensor;
use fd_client::distill::{ConvLayers, StudentConfig, device};
use rand::{RngExt, rngs::StdRng};

/// The digits public set of the default split (20% of 1,797 records).
pub const PUBLIC: usize = 359;
pub const BATCH: usize = 32;
pub const PIXELS: usize = 64;
pub const CLASSES: usize = 10;

fn mlp(hidden: Vec<usize>) -> StudentConfig {
    StudentConfig {
        inputs: PIXELS,
        classes: CLASSES,
        hidden,
        dropout: 0.0,
        conv: None,
    }
}

fn cnn(channels: Vec<usize>) -> StudentConfig {
    StudentConfig {
        conv: Some(ConvLayers {
            height: 8,
            width: 8,
            channels,
            kernel: 3,
        }),
        ..mlp(Vec::new())
    }
}

/// The MLP teacher of the default digits run.
pub fn teacher() -> StudentConfig {
    mlp(vec![512, 256])
}

/// `(name, model)`: the digits students (the default MLP, the default and the earlier CNN),
/// then the teacher.
pub fn models() -> Vec<(String, StudentConfig)> {
    let students = [mlp(vec![128]), cnn(vec![8, 16]), cnn(vec![16, 32])];
    students
        .into_iter()
        .map(|c| (format!("student {}", c.describe()), c))
        .chain([(format!("teacher {}", teacher().describe()), teacher())])
        .collect()
}

/// `rows` records of uniform pixels in `[-1, 1)`.
pub fn random(rows: usize, rng: &mut StdRng) -> Tensor {
    let values: Vec<f32> = (0..rows * PIXELS)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(values, (rows, PIXELS), &device()).expect("a batch")
}
