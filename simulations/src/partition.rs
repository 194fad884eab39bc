//! Splitting a dataset into test, public and per-client private parts.

use fd_client::data::Table;
use rand::{Rng, seq::SliceRandom};
use rand_distr::{Distribution, Gamma};

/// The parts of a simulated federation's data.
#[derive(Debug, Clone)]
pub struct Split {
    /// Shared test set every student is measured on.
    pub test: Table,
    /// Public reference set (its labels are dropped before anyone sees it).
    pub public: Table,
    /// The public set's true labels, kept aside only to measure the target's accuracy.
    pub public_labels: Vec<u32>,
    /// Private records of each client.
    pub clients: Vec<Table>,
}

/// Shuffles rows, takes `test` and `public` fractions off the top and splits the rest across
/// `clients` by a Dirichlet(`beta`) distribution over labels.
pub fn split(
    table: &Table,
    classes: usize,
    clients: usize,
    beta: f64,
    test: f64,
    public: f64,
    rng: &mut impl Rng,
) -> Split {
    let n = table.rows();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let n_test = (n as f64 * test).round() as usize;
    let n_public = (n as f64 * public).round() as usize;
    let test_rows = &order[..n_test];
    let public_rows = &order[n_test..n_test + n_public];
    let private_rows = &order[n_test + n_public..];
    let private = table.select(private_rows);
    let parts = dirichlet_partition(&private.labels, classes, clients, beta, rng);
    let mut public = table.select(public_rows);
    let public_labels = std::mem::take(&mut public.labels);
    Split {
        public_labels,
        test: table.select(test_rows),
        public,
        clients: parts.iter().map(|rows| private.select(rows)).collect(),
    }
}

/// Assigns row indices to `clients` so that each class is spread by proportions drawn from
/// Dirichlet(`beta`) (small `beta`: very skewed; large: close to IID), as the NIID-Bench
/// partitioner (Li et al., "Federated Learning on Non-IID Data Silos", 2022) does: a client that
/// already holds its fair share (`n / clients` rows) gets no rows of the classes drawn after that,
/// and the whole draw is repeated (up to 1000 times) until every client holds at least 10
/// records or as many as the data allows.
pub fn dirichlet_partition(
    labels: &[u32],
    classes: usize,
    clients: usize,
    beta: f64,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    let min_size = 10.min(labels.len() / clients.max(1));
    let gamma = Gamma::new(beta, 1.0).ok();
    let mut best: Vec<Vec<usize>> = Vec::new();
    let fair_share = labels.len() as f64 / clients.max(1) as f64;
    for _ in 0..1000 {
        let mut parts = vec![Vec::new(); clients];
        for class in 0..classes as u32 {
            let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
            rows.shuffle(rng);
            let mut weights: Vec<f64> = (0..clients)
                .map(|c| {
                    let w = gamma.as_ref().map_or(1.0, |g| g.sample(rng));
                    if (parts[c].len() as f64) < fair_share {
                        w
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total <= 0.0 || !total.is_finite() {
                weights = vec![1.0; clients];
            }
            let total: f64 = weights.iter().sum();
            let mut start = 0;
            let mut cumulative = 0.0;
            for (c, w) in weights.iter().enumerate() {
                cumulative += w / total;
                let end = if c + 1 == clients {
                    rows.len()
                } else {
                    ((cumulative * rows.len() as f64).round() as usize).min(rows.len())
                };
                parts[c].extend_from_slice(&rows[start..end.max(start)]);
                start = end.max(start);
            }
        }
        let smallest = parts.iter().map(Vec::len).min().unwrap_or(0);
        let best_smallest = best.iter().map(Vec::len).min().unwrap_or(0);
        if best.is_empty() || smallest > best_smallest {
            best = parts;
        }
        if smallest >= min_size {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn partition_uses_every_row_once_and_respects_the_minimum() {
        let labels: Vec<u32> = (0..1000).map(|i| i % 10).collect();
        let parts = dirichlet_partition(&labels, 10, 10, 0.5, &mut StdRng::seed_from_u64(1));
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert!(parts.iter().all(|p| p.len() >= 10));
    }

    #[test]
    fn small_beta_is_skewed_large_beta_is_balanced() {
        let labels: Vec<u32> = (0..2000).map(|i| i % 2).collect();
        // Share of class 0 in each client's data; IID would be 0.5 everywhere.
        let spread = |beta: f64| {
            let parts = dirichlet_partition(&labels, 2, 5, beta, &mut StdRng::seed_from_u64(2));
            parts
                .iter()
                .map(|p| {
                    let zeros = p.iter().filter(|&&i| labels[i] == 0).count();
                    (zeros as f64 / p.len() as f64 - 0.5).abs()
                })
                .fold(0.0, f64::max)
        };
        assert!(spread(0.1) > 0.3, "beta 0.1 should give lopsided clients");
        assert!(spread(1000.0) < 0.1, "beta 1000 should be close to IID");
    }

    #[test]
    fn split_fractions_and_dropped_public_labels() {
        let t = Table {
            columns: vec!["a".into()],
            features: (0..100).map(|v| v as f32).collect(),
            labels: (0..100).map(|i| i % 2).collect(),
        };
        let s = split(&t, 2, 4, 0.5, 0.2, 0.2, &mut StdRng::seed_from_u64(3));
        assert_eq!((s.test.rows(), s.public.rows()), (20, 20));
        assert!(s.public.labels.is_empty());
        assert_eq!(s.clients.iter().map(Table::rows).sum::<usize>(), 60);
    }
}
