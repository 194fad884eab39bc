//! Classification metrics a node reports about its student.

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

#[cfg(test)]
mod tests {
    use super::*;

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
