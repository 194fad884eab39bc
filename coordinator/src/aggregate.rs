//! Combining the nodes' soft labels into the global target.

use std::collections::BTreeMap;

use fd_protocol::SoftLabels;

/// Uniform mean of the contributions, query by query. Every contribution must have been
/// validated against the same query ids and class count. Contributions are combined in the
/// order given (the caller sorts them by node) so the float sums are reproducible.
pub fn mean(contributions: &[&SoftLabels]) -> Option<SoftLabels> {
    let first = contributions.first()?;
    let n = contributions.len() as f32;
    let mut probs = vec![0f32; first.probs.len()];
    for c in contributions {
        for (acc, v) in probs.iter_mut().zip(&c.probs) {
            *acc += v / n;
        }
    }
    Some(SoftLabels {
        classes: first.classes,
        query_ids: first.query_ids.clone(),
        probs,
    })
}

/// The global target: the latest aggregate for every public record labelled so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    classes: u16,
    rows: BTreeMap<u32, Vec<f32>>,
}

impl Target {
    /// An empty target for `classes` classes.
    pub fn new(classes: u16) -> Target {
        Target {
            classes,
            rows: BTreeMap::new(),
        }
    }

    /// Replaces the rows of the aggregated queries.
    pub fn update(&mut self, aggregate: &SoftLabels) {
        for (i, &q) in aggregate.query_ids.iter().enumerate() {
            self.rows.insert(q, aggregate.row(i).to_vec());
        }
    }

    /// Number of public records with a target.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True before anything was aggregated.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The target as soft labels, ordered by query id.
    pub fn to_labels(&self) -> SoftLabels {
        SoftLabels {
            classes: self.classes,
            query_ids: self.rows.keys().copied().collect(),
            probs: self.rows.values().flatten().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_averages_each_query() {
        let a = SoftLabels {
            classes: 2,
            query_ids: vec![3, 5],
            probs: vec![1.0, 0.0, 0.5, 0.5],
        };
        let b = SoftLabels {
            classes: 2,
            query_ids: vec![3, 5],
            probs: vec![0.0, 1.0, 0.25, 0.75],
        };
        let m = mean(&[&a, &b]).unwrap();
        assert_eq!(m.probs, [0.5, 0.5, 0.375, 0.625]);
        assert_eq!(m.query_ids, [3, 5]);
        assert!(mean(&[]).is_none());
    }

    #[test]
    fn target_keeps_latest_row_per_query() {
        let mut t = Target::new(2);
        t.update(&SoftLabels {
            classes: 2,
            query_ids: vec![4, 1],
            probs: vec![1.0, 0.0, 0.0, 1.0],
        });
        t.update(&SoftLabels {
            classes: 2,
            query_ids: vec![4],
            probs: vec![0.5, 0.5],
        });
        let l = t.to_labels();
        assert_eq!(l.query_ids, [1, 4]);
        assert_eq!(l.probs, [0.0, 1.0, 0.5, 0.5]);
    }
}
