//! Perturbed public records for augmentation distillation: one-pixel image shifts and Gaussian
//! jitter.

use candle_core::Tensor;
use rand::rngs::{StdRng, Xoshiro256PlusPlus};
use rand::{RngExt, SeedableRng};

use crate::distill::config::ImageShape;
use crate::distill::student::ModelError;

/// Random image shifts of up to `max_shift` pixels (with `image`), then Gaussian jitter of
/// standard deviation `noise` (0: none).
pub(crate) fn perturb(
    rng: &mut StdRng,
    x: Tensor,
    image: Option<ImageShape>,
    max_shift: usize,
    noise: f64,
) -> Result<Tensor, ModelError> {
    let x = match image {
        Some(shape) if max_shift > 0 => {
            let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let shifted = shift_images(&values, shape, max_shift, rng);
            Tensor::from_vec(shifted, x.dims(), x.device())?
        }
        _ => x,
    };
    if noise <= 0.0 {
        return Ok(x);
    }
    let normal = rand_distr::Normal::new(0.0f32, noise as f32)
        .map_err(|e| ModelError::Config(e.to_string()))?;
    // Augmentation noise, not privacy noise: a fast generator seeded from `rng` (ChaCha drew
    // these values at about 5% of a default digits run's CPU). Privacy noise comes from
    // opendp's samplers alone.
    let mut fast = Xoshiro256PlusPlus::seed_from_u64(rng.random());
    let values: Vec<f32> = (0..x.elem_count())
        .map(|_| rand_distr::Distribution::sample(&normal, &mut fast))
        .collect();
    let values = Tensor::from_vec(values, x.dims(), x.device())?;
    Ok((x + values)?)
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
