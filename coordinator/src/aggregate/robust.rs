//! `median` and `trimmed-mean`: robust per coordinate, renormalised onto the simplex. Every
//! node carries the same share.

use std::collections::BTreeMap;

use super::{Aggregate, Aggregator, AggregatorKind, Input, finish};

/// The coordinate-wise median.
pub(super) struct Median {
    sharpen: f64,
    /// Reputations restored from an earlier run. The strategy keeps none of its own and hands
    /// these back unchanged.
    restored: BTreeMap<String, f64>,
}

impl Median {
    /// The coordinate-wise median, sharpened with temperature `sharpen`.
    pub(super) fn new(sharpen: f64) -> Median {
        Median {
            sharpen,
            restored: BTreeMap::new(),
        }
    }
}

impl Aggregator for Median {
    fn kind(&self) -> AggregatorKind {
        AggregatorKind::Median
    }

    fn aggregate(&mut self, inputs: &[Input<'_>]) -> Option<Aggregate> {
        inputs.first()?;
        Some(robust(inputs, None, self.sharpen))
    }

    fn reputations(&self) -> BTreeMap<String, f64> {
        self.restored.clone()
    }

    fn restore(&mut self, reputations: BTreeMap<String, f64>) {
        self.restored = reputations;
    }
}

/// The coordinate-wise trimmed mean.
pub(super) struct TrimmedMean {
    trim: f64,
    sharpen: f64,
    /// Reputations restored from an earlier run. The strategy keeps none of its own and hands
    /// these back unchanged.
    restored: BTreeMap<String, f64>,
}

impl TrimmedMean {
    /// The mean of every coordinate once the fraction `trim` is cut from each end, sharpened
    /// with temperature `sharpen`.
    pub(super) fn new(trim: f64, sharpen: f64) -> TrimmedMean {
        TrimmedMean {
            trim,
            sharpen,
            restored: BTreeMap::new(),
        }
    }
}

impl Aggregator for TrimmedMean {
    fn kind(&self) -> AggregatorKind {
        AggregatorKind::TrimmedMean
    }

    fn aggregate(&mut self, inputs: &[Input<'_>]) -> Option<Aggregate> {
        inputs.first()?;
        Some(robust(inputs, Some(self.trim), self.sharpen))
    }

    fn reputations(&self) -> BTreeMap<String, f64> {
        self.restored.clone()
    }

    fn restore(&mut self, reputations: BTreeMap<String, f64>) {
        self.restored = reputations;
    }
}

/// The coordinate-wise median (`trim` = `None`) or trimmed mean, with equal shares, finished.
/// `inputs` must not be empty.
fn robust(inputs: &[Input<'_>], trim: Option<f64>, sharpen: f64) -> Aggregate {
    let n = inputs.len();
    let probs = coordinatewise(inputs, trim);
    finish(inputs, probs, vec![1.0 / n as f64; n], sharpen)
}

/// Coordinate-wise median (`trim` = `None`) or trimmed mean.
fn coordinatewise(inputs: &[Input<'_>], trim: Option<f64>) -> Vec<f64> {
    let n = inputs.len();
    let len = inputs[0].labels.probs.len();
    let mut column = Vec::with_capacity(n);
    (0..len)
        .map(|k| {
            column.clear();
            column.extend(inputs.iter().map(|i| i.labels.probs[k] as f64));
            column.sort_by(f64::total_cmp);
            match trim {
                None if n % 2 == 1 => column[n / 2],
                None => (column[n / 2 - 1] + column[n / 2]) / 2.0,
                Some(t) => {
                    // Keep at least one value.
                    let cut = ((t * n as f64).floor() as usize).min((n - 1) / 2);
                    let kept = &column[cut..n - cut];
                    kept.iter().sum::<f64>() / kept.len() as f64
                }
            }
        })
        .collect()
}
