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
    // Output pixel `i` along an axis reads source pixels `lo[i]` and `hi[i]`, weighted
    // `1 - f` and `f`: one offset per image, so the taps are computed once per axis.
    let taps = |n: usize, shift: f64, lo: &mut Vec<usize>, hi: &mut Vec<usize>| -> f32 {
        let base = (-shift).floor();
        let clamp = |v: i64| v.clamp(0, n as i64 - 1) as usize;
        lo.clear();
        lo.extend((0..n as i64).map(|i| clamp(i + base as i64)));
        hi.clear();
        hi.extend((0..n as i64).map(|i| clamp(i + base as i64 + 1)));
        (-shift - base) as f32
    };
    let (mut y_lo, mut y_hi, mut x_lo, mut x_hi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Each source row interpolated along x once, then output rows mix two of those along y:
    // the same products and sums, in the same order, as interpolating each output pixel's
    // two rows on its own.
    let mut rows = vec![0f32; pixels];
    for image in values.chunks(pixels) {
        let dy = rng.random_range(-max..=max);
        let dx = rng.random_range(-max..=max);
        let fy = taps(h, dy, &mut y_lo, &mut y_hi);
        let fx = taps(w, dx, &mut x_lo, &mut x_hi);
        for (source, row) in image.chunks(w).zip(rows.chunks_mut(w)) {
            for ((r, &lo), &hi) in row.iter_mut().zip(&x_lo).zip(&x_hi) {
                *r = source[lo] * (1.0 - fx) + source[hi] * fx;
            }
        }
        for y in 0..h {
            let (top, bottom) = (&rows[y_lo[y] * w..][..w], &rows[y_hi[y] * w..][..w]);
            out.extend(top.iter().zip(bottom).map(|(t, b)| t * (1.0 - fy) + b * fy));
        }
    }
    out
}

/// A training batch's augmentation: sub-pixel shifts of up to `subpixel` pixels (with `image`;
/// 0: none), then [`perturb`]. Without whole-pixel shifts the sub-pixel shifts and the jitter
/// are made in one pass over the batch's values (the same values, drawn in the same order, as
/// the two steps one after the other).
pub(crate) fn augment(
    rng: &mut StdRng,
    x: Tensor,
    image: Option<ImageShape>,
    subpixel: f64,
    max_shift: usize,
    noise: f64,
) -> Result<Tensor, ModelError> {
    match image {
        Some(shape) if subpixel > 0.0 && max_shift == 0 => {
            let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let mut shifted = subpixel_shift_images(&values, shape, subpixel, rng);
            if noise > 0.0 {
                let normal = rand_distr::Normal::new(0.0f32, noise as f32)
                    .map_err(|e| ModelError::Config(e.to_string()))?;
                let mut fast = Xoshiro256PlusPlus::seed_from_u64(rng.random());
                for v in &mut shifted {
                    *v += rand_distr::Distribution::sample(&normal, &mut fast);
                }
            }
            Ok(Tensor::from_vec(shifted, x.dims(), x.device())?)
        }
        _ => {
            let x = subpixel_shift(rng, x, image, subpixel)?;
            perturb(rng, x, image, max_shift, noise)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subpixel_shifts_interpolate_between_neighbours_and_repeat_edges() {
        let shape = ImageShape {
            height: 1,
            width: 4,
        };
        let img = [0.0f32, 1.0, 2.0, 3.0];
        let mut rng = StdRng::seed_from_u64(7);
        // A ramp shifted by d reads x - d, clamped to the edges: [0, 1 - d, 2 - d, 3 - d] for
        // 0 <= d <= 1 (and [d', 1 + d', 2 + d', 3] for d' = -d > 0).
        for _ in 0..100 {
            let out = subpixel_shift_images(&img, shape, 0.5, &mut rng);
            let d = 1.0 - out[1];
            assert!(d.abs() <= 0.5 + 1e-6, "{out:?}");
            if d >= 0.0 {
                assert!(out[0].abs() < 1e-5, "{out:?}");
                assert!((out[3] - (3.0 - d)).abs() < 1e-5, "{out:?}");
            } else {
                assert!((out[3] - 3.0).abs() < 1e-5, "{out:?}");
                assert!((out[0] + d).abs() < 1e-5, "{out:?}");
            }
            assert!((out[2] - out[1] - 1.0).abs() < 1e-5, "{out:?}");
        }
        assert_eq!(subpixel_shift_images(&img, shape, 0.0, &mut rng), img);
    }
}
