//! Metrics a node reports about its student: classification quality, and how similar its
//! representation is to its teacher's (linear CKA).

use candle_core::{DType, Tensor};

/// Fraction of predictions equal to the labels (0 for no rows).
pub fn accuracy(predicted: &[u32], labels: &[u32]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let right = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / labels.len() as f64
}

/// Macro-averaged F1: the unweighted mean over classes of `2 TP / (2 TP + FP + FN)`, over the
/// classes that occur in the labels or the predictions (as scikit-learn's `f1_score(...,
/// average="macro")` does).
pub fn macro_f1(predicted: &[u32], labels: &[u32]) -> f64 {
    let classes = predicted
        .iter()
        .chain(labels)
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1);
    let (mut tp, mut fp, mut fnn) = (
        vec![0usize; classes],
        vec![0usize; classes],
        vec![0usize; classes],
    );
    for (&p, &l) in predicted.iter().zip(labels) {
        if p == l {
            tp[p as usize] += 1;
        } else {
            fp[p as usize] += 1;
            fnn[l as usize] += 1;
        }
    }
    let scores: Vec<f64> = (0..classes)
        .filter(|&c| tp[c] + fp[c] + fnn[c] > 0)
        .map(|c| 2.0 * tp[c] as f64 / (2 * tp[c] + fp[c] + fnn[c]) as f64)
        .collect();
    if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    }
}

/// Linear centred kernel alignment (Kornblith et al., 2019) between two representations of
/// the same `m` rows, `x` `[m, p]` and `y` `[m, q]` (widths may differ):
/// `<K, L>_F / (||K||_F ||L||_F)` with `K = Xc Xc^T`, `L = Yc Yc^T` and `Xc`, `Yc` the
/// column-centred features. 1 means the same representation up to rotation and isotropic
/// scale; 0 means unrelated. Computed through the `m x m` Gram matrices in f64, which is cheap
/// when the widths exceed the row count (a large teacher ensemble). A constant representation
/// has no alignment: 0.
pub fn linear_cka(x: &Tensor, y: &Tensor) -> Result<f64, candle_core::Error> {
    let gram = |a: &Tensor| -> Result<Tensor, candle_core::Error> {
        let a = a.to_dtype(DType::F64)?;
        let centred = a.broadcast_sub(&a.mean_keepdim(0)?)?;
        centred.matmul(&centred.t()?)
    };
    let (k, l) = (gram(x)?, gram(y)?);
    let dot = |a: &Tensor, b: &Tensor| -> Result<f64, candle_core::Error> {
        (a * b)?.sum_all()?.to_scalar::<f64>()
    };
    let denominator = (dot(&k, &k)? * dot(&l, &l)?).sqrt();
    if denominator <= 0.0 || !denominator.is_finite() {
        return Ok(0.0);
    }
    Ok(dot(&k, &l)? / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(rows: &[&[f32]]) -> Tensor {
        let width = rows[0].len();
        let values: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(values, (rows.len(), width), &candle_core::Device::Cpu).unwrap()
    }

    #[test]
    fn cka_matches_an_independent_computation() {
        let x = tensor(&[
            &[1.0, 2.0, 0.0],
            &[3.0, 1.0, 1.0],
            &[0.0, 0.0, 2.0],
            &[2.0, 5.0, 1.0],
            &[1.0, 1.0, 1.0],
        ]);
        let y = tensor(&[
            &[1.0, 0.0],
            &[0.0, 1.0],
            &[2.0, 2.0],
            &[2.0, 0.0],
            &[0.0, 3.0],
        ]);
        // Plain Python (lists and math only): centre the columns, Gram matrices K = Xc Xc^T,
        // L = Yc Yc^T, then sum(K*L) / sqrt(sum(K*K) * sum(L*L)) = 0.4963170148775016.
        let v = linear_cka(&x, &y).unwrap();
        assert!((v - 0.4963170148775016).abs() < 1e-6, "{v}");
        // Symmetric, and 1 against itself.
        assert!((linear_cka(&y, &x).unwrap() - v).abs() < 1e-9);
        assert!((linear_cka(&x, &x).unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn cka_ignores_rotation_scale_and_shift_but_not_shuffling() {
        let x = tensor(&[
            &[1.0, 2.0],
            &[3.0, 1.0],
            &[0.0, 0.0],
            &[2.0, 5.0],
            &[4.0, 1.0],
        ]);
        // Rotate by 90 degrees ([a, b] -> [-b, a]), scale by 3 and shift by 7.
        let y = tensor(&[
            &[1.0, 10.0],
            &[4.0, 16.0],
            &[7.0, 7.0],
            &[-8.0, 13.0],
            &[4.0, 19.0],
        ]);
        assert!((linear_cka(&x, &y).unwrap() - 1.0).abs() < 1e-9);
        // Shuffling the rows breaks the correspondence.
        let shuffled = tensor(&[
            &[0.0, 0.0],
            &[2.0, 5.0],
            &[1.0, 2.0],
            &[4.0, 1.0],
            &[3.0, 1.0],
        ]);
        assert!(linear_cka(&x, &shuffled).unwrap() < 0.9);
        // A constant representation aligns with nothing.
        let constant = tensor(&[&[1.0], &[1.0], &[1.0], &[1.0], &[1.0]]);
        assert_eq!(linear_cka(&x, &constant).unwrap(), 0.0);
    }

    #[test]
    fn macro_f1_matches_scikit_learn() {
        // sklearn.metrics.f1_score([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], average="macro")
        // = mean(F1_0 = 0.5, F1_1 = 0.8, F1_2 = 0.0) = 0.4333...
        let labels = [0, 0, 1, 1, 2];
        let predicted = [0, 1, 1, 1, 0];
        assert!((macro_f1(&predicted, &labels) - 1.3 / 3.0).abs() < 1e-12);
        assert!((accuracy(&predicted, &labels) - 0.6).abs() < 1e-12);
        assert_eq!(macro_f1(&labels, &labels), 1.0);
        assert_eq!(accuracy(&[], &[]), 0.0);
    }
}
