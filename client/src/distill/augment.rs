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

/// Shifts each image (row-major pixels of `shape`) by a random sub-pixel offset in
/// `-max..=max` along each axis, interpolating bilinearly between neighbouring pixels (edge
/// pixels repeated). A milder augmentation than whole-pixel shifts on small images.
pub fn subpixel_shift_images(
    values: &[f32],
    shape: ImageShape,
    max: f64,
    rng: &mut StdRng,
) -> Vec<f32> {
    let (h, w) = (shape.height, shape.width);
    let pixels = h * w;
    let mut out = Vec::with_capacity(values.len());
    let sample = |image: &[f32], y: f64, x: f64| -> f32 {
        let y = y.clamp(0.0, (h - 1) as f64);
        let x = x.clamp(0.0, (w - 1) as f64);
        let (y0, x0) = (y.floor() as usize, x.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
        let (fy, fx) = ((y - y0 as f64) as f32, (x - x0 as f64) as f32);
        let top = image[y0 * w + x0] * (1.0 - fx) + image[y0 * w + x1] * fx;
        let bottom = image[y1 * w + x0] * (1.0 - fx) + image[y1 * w + x1] * fx;
        top * (1.0 - fy) + bottom * fy
    };
    for image in values.chunks(pixels) {
        let dy = rng.random_range(-max..=max);
        let dx = rng.random_range(-max..=max);
        for y in 0..h {
            for x in 0..w {
                out.push(sample(image, y as f64 - dy, x as f64 - dx));
            }
        }
    }
    out
}

/// [`subpixel_shift_images`] of a batch tensor (no change without `image` or with `max` 0).
pub(crate) fn subpixel_shift(
    rng: &mut StdRng,
    x: Tensor,
    image: Option<ImageShape>,
    max: f64,
) -> Result<Tensor, ModelError> {
    match image {
        Some(shape) if max > 0.0 => {
            let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let shifted = subpixel_shift_images(&values, shape, max, rng);
            Ok(Tensor::from_vec(shifted, x.dims(), x.device())?)
        }
        _ => Ok(x),
    }
}
