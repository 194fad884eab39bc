//! `confidence`: per-query weights `1 - H(p) / ln C` from each contribution's own entropy.

use std::collections::BTreeMap;

use super::{Aggregate, Aggregator, AggregatorKind, Input, confidences, weighted};

/// The confidence-weighted mean.
pub(super) struct Confidence {
    sharpen: f64,
    /// Reputations restored from an earlier run. The strategy keeps none of its own and hands
    /// these back unchanged.
    restored: BTreeMap<String, f64>,
}

impl Confidence {
    /// The confidence-weighted mean, sharpened with temperature `sharpen`.
    pub(super) fn new(sharpen: f64) -> Confidence {
        Confidence {
            sharpen,
            restored: BTreeMap::new(),
        }
    }
}

impl Aggregator for Confidence {
    fn kind(&self) -> AggregatorKind {
        AggregatorKind::Confidence
    }

    fn aggregate(&mut self, inputs: &[Input<'_>]) -> Option<Aggregate> {
        inputs.first()?;
        Some(weighted(inputs, &confidences(inputs), self.sharpen))
    }

    fn reputations(&self) -> BTreeMap<String, f64> {
        self.restored.clone()
    }

    fn restore(&mut self, reputations: BTreeMap<String, f64>) {
        self.restored = reputations;
    }
}
