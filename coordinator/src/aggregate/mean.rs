//! `mean`: every contribution weighs the same on every query.

use std::collections::BTreeMap;

use super::{Aggregate, Aggregator, AggregatorKind, Input, weighted};

/// The uniform mean.
pub(super) struct Mean {
    sharpen: f64,
    /// Reputations restored from an earlier run. The strategy keeps none of its own and hands
    /// these back unchanged.
    restored: BTreeMap<String, f64>,
}

impl Mean {
    /// The uniform mean, sharpened with temperature `sharpen`.
    pub(super) fn new(sharpen: f64) -> Mean {
        Mean {
            sharpen,
            restored: BTreeMap::new(),
        }
    }
}

impl Aggregator for Mean {
    fn kind(&self) -> AggregatorKind {
        AggregatorKind::Mean
    }

    fn aggregate(&mut self, inputs: &[Input<'_>]) -> Option<Aggregate> {
        let rows = inputs.first()?.labels.len();
        // The weighted mean under uniform weights, so every strategy shares one summation.
        let weights = vec![vec![1.0; rows]; inputs.len()];
        Some(weighted(inputs, &weights, self.sharpen))
    }

    fn reputations(&self) -> BTreeMap<String, f64> {
        self.restored.clone()
    }

    fn restore(&mut self, reputations: BTreeMap<String, f64>) {
        self.restored = reputations;
    }
}
