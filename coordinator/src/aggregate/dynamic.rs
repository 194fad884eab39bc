//! `dynamic` (the default): each contribution's per-query confidence times its node's
//! reputation.

use std::collections::BTreeMap;

use super::reputation::Reputations;
use super::{Aggregate, Aggregator, AggregatorKind, Input, confidences, weighted};

/// The confidence x reputation weighted mean.
pub(super) struct Dynamic {
    reputations: Reputations,
    sharpen: f64,
}

impl Dynamic {
    /// Confidence x reputation with reputation moving-average rate `rate`, sharpened with
    /// temperature `sharpen`.
    pub(super) fn new(rate: f64, sharpen: f64) -> Dynamic {
        Dynamic {
            reputations: Reputations::new(rate),
            sharpen,
        }
    }
}

impl Aggregator for Dynamic {
    fn kind(&self) -> AggregatorKind {
        AggregatorKind::Dynamic
    }

    fn aggregate(&mut self, inputs: &[Input<'_>]) -> Option<Aggregate> {
        inputs.first()?;
        let r = self.reputations.update(inputs);
        let mut c = confidences(inputs);
        for (ci, ri) in c.iter_mut().zip(&r) {
            ci.iter_mut().for_each(|v| *v *= ri);
        }
        Some(weighted(inputs, &c, self.sharpen))
    }

    fn reputations(&self) -> BTreeMap<String, f64> {
        self.reputations.by_node.clone()
    }

    fn restore(&mut self, reputations: BTreeMap<String, f64>) {
        self.reputations.by_node = reputations;
    }
}
