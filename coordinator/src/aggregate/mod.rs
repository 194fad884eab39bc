//! Combining the nodes' soft labels into the global target.
//!
//! Every strategy implements [`Aggregator`]: it takes one round's validated contributions
//! (sorted by node, so float sums are reproducible) and returns one probability vector per query
//! plus the weight each node carried. The strategies are those of DESIGN.md ("Aggregation and
//! dynamic teacher weighting"):
//!
//! - `mean`: uniform;
//! - `median` / `trimmed-mean`: robust per coordinate, renormalised onto the simplex;
//! - `confidence`: per-query weights `1 - H(p) / ln C` from each contribution's own entropy;
//! - `reputation`: per-node weights from agreement with the leave-one-out consensus, kept as an
//!   exponential moving average across rounds;
//! - `dynamic` (the default): confidence x reputation.
//!
//! Any of them may sharpen the aggregate (`p^(1/tau)`, renormalised). Everything here uses only
//! the privatised labels the coordinator receives, so it is post-processing and costs no privacy.
//!
//! Each strategy is its own type, in its own file (`mean`, `robust` for median and trimmed mean,
//! `confidence`, `reputation`, `dynamic`); [`AggregationConfig::build`] picks the configured
//! one. This file holds what they share: the configuration, the trait, the weighted mean and the
//! final sharpening and renormalisation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use fd_protocol::SoftLabels;
use serde::{Deserialize, Serialize};

mod confidence;
mod dynamic;
mod mean;
mod reputation;
mod robust;

/// Which aggregation strategy the coordinator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AggregatorKind {
    /// Uniform mean.
    Mean,
    /// Coordinate-wise median, renormalised.
    Median,
    /// Coordinate-wise trimmed mean, renormalised.
    TrimmedMean,
    /// Per-query confidence weights.
    Confidence,
    /// Per-node reputation weights (agreement with the leave-one-out consensus, as an EMA).
    Reputation,
    /// Confidence x reputation.
    #[default]
    Dynamic,
}

impl AggregatorKind {
    /// Every strategy, in the order reports list them.
    pub const ALL: [AggregatorKind; 6] = [
        AggregatorKind::Mean,
        AggregatorKind::Median,
        AggregatorKind::TrimmedMean,
        AggregatorKind::Confidence,
        AggregatorKind::Reputation,
        AggregatorKind::Dynamic,
    ];

    /// The name used in config files, flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            AggregatorKind::Mean => "mean",
            AggregatorKind::Median => "median",
            AggregatorKind::TrimmedMean => "trimmed-mean",
            AggregatorKind::Confidence => "confidence",
            AggregatorKind::Reputation => "reputation",
            AggregatorKind::Dynamic => "dynamic",
        }
    }
}

impl fmt::Display for AggregatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AggregatorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AggregatorKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AggregatorKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown aggregator '{s}'; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How contributions are combined (`[aggregation]` in `federation.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    /// The strategy.
    pub strategy: AggregatorKind,
    /// Fraction trimmed from each end of every coordinate by `trimmed-mean`, in `[0, 0.5)`.
    pub trim: f64,
    /// Weight of the newest round in the reputation moving average, in `(0, 1]`.
    pub reputation_rate: f64,
    /// Sharpening temperature in `(0, 1]`: the aggregate becomes `p^(1/tau)` renormalised;
    /// 1 leaves it as it is.
    pub sharpen: f64,
    /// Secure aggregation: the coordinator learns only the sum of the nodes' noisy vote
    /// counts (pairwise masking; each node adds a share of the noise). `strategy`, `trim`,
    /// `reputation_rate` and `sharpen` then do not apply: nothing per node is visible.
    pub secure: bool,
    /// Secure aggregation: nodes that may collude with the coordinator. Sets the threshold
    /// of the secret sharing (more than `(nodes + colluders) / 2`).
    pub colluders: u32,
    /// Secure aggregation: nodes that may drop out after masking and still leave the sum
    /// decodable. Nodes help unmask only with at least `nodes - dropouts` survivors.
    pub dropouts: u32,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            strategy: AggregatorKind::Dynamic,
            trim: 0.2,
            reputation_rate: 0.5,
            sharpen: 1.0,
            secure: false,
            colluders: 1,
            dropouts: 2,
        }
    }
}

impl AggregationConfig {
    /// Checks the secure-aggregation terms for `nodes` nodes; the message names the field.
    pub fn validate_secure(&self, nodes: usize) -> Result<(), String> {
        if !self.secure {
            return Ok(());
        }
        if nodes > 255 {
            return Err(format!(
                "aggregation.secure takes at most 255 nodes (secret sharing over GF(256)), got {nodes}"
            ));
        }
        let (c, t) = (self.colluders as usize, self.dropouts as usize);
        let threshold = (nodes + c) / 2 + 1;
        if nodes < t + threshold || nodes <= c + t {
            return Err(format!(
                "aggregation.secure with {nodes} nodes cannot tolerate {c} colluders and {t} \
                 dropouts: the survivors ({}) must reach the threshold {threshold} (more than \
                 half of nodes + colluders) and outnumber the colluders; lower \
                 aggregation.dropouts or aggregation.colluders, or add nodes",
                nodes.saturating_sub(t)
            ));
        }
        Ok(())
    }

    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..0.5).contains(&self.trim) {
            return Err(format!(
                "aggregation.trim must be in [0, 0.5), got {}",
                self.trim
            ));
        }
        if !(self.reputation_rate > 0.0 && self.reputation_rate <= 1.0) {
            return Err(format!(
                "aggregation.reputation_rate must be in (0, 1], got {}",
                self.reputation_rate
            ));
        }
        if !(self.sharpen > 0.0 && self.sharpen <= 1.0) {
            return Err(format!(
                "aggregation.sharpen must be in (0, 1], got {}",
                self.sharpen
            ));
        }
        Ok(())
    }

    /// Builds the configured strategy.
    pub fn build(&self) -> Box<dyn Aggregator> {
        let sharpen = self.sharpen;
        match self.strategy {
            AggregatorKind::Mean => Box::new(mean::Mean::new(sharpen)),
            AggregatorKind::Median => Box::new(robust::Median::new(sharpen)),
            AggregatorKind::TrimmedMean => Box::new(robust::TrimmedMean::new(self.trim, sharpen)),
            AggregatorKind::Confidence => Box::new(confidence::Confidence::new(sharpen)),
            AggregatorKind::Reputation => {
                Box::new(reputation::Reputation::new(self.reputation_rate, sharpen))
            }
            AggregatorKind::Dynamic => {
                Box::new(dynamic::Dynamic::new(self.reputation_rate, sharpen))
            }
        }
    }
}

/// One node's validated contribution to a round.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The node (name from its certificate).
    pub node: &'a str,
    /// Its soft labels, validated against the round's query ids and class count.
    pub labels: &'a SoftLabels,
}

/// A round's aggregate and the weight each node carried in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// One probability vector per query.
    pub labels: SoftLabels,
    /// Each contributing node's share of the aggregate (mean over queries of its normalised
    /// weight); the shares sum to 1.
    pub weights: BTreeMap<String, f64>,
}

/// A way of combining contributions. Strategies with memory (reputation) keep it across
/// rounds; [`Aggregator::reputations`] and [`Aggregator::restore`] let it be persisted.
pub trait Aggregator: Send {
    /// The strategy's name.
    fn kind(&self) -> AggregatorKind;
    /// Combines one round's contributions (all validated against the same query ids and class
    /// count, sorted by node). `None` when there are none.
    fn aggregate(&mut self, inputs: &[Input<'_>]) -> Option<Aggregate>;
    /// The per-node reputations carried to the next round (empty if the strategy keeps none).
    fn reputations(&self) -> BTreeMap<String, f64>;
    /// Restores reputations saved from an earlier run.
    fn restore(&mut self, reputations: BTreeMap<String, f64>);
}

/// Smallest per-query confidence, so a row of pure noise still counts a little and a query
/// where every node is unsure still gets an aggregate.
const MIN_CONFIDENCE: f64 = 1e-3;

/// Per node, per query: `1 - H(p) / ln C`, at least [`MIN_CONFIDENCE`].
fn confidences(inputs: &[Input<'_>]) -> Vec<Vec<f64>> {
    inputs
        .iter()
        .map(|i| {
            let classes = i.labels.classes as usize;
            let ln_c = (classes as f64).ln();
            i.labels
                .probs
                .chunks(classes)
                .map(|row| {
                    let h: f64 = row
                        .iter()
                        .filter(|&&p| p > 0.0)
                        .map(|&p| -(p as f64) * (p as f64).ln())
                        .sum();
                    (1.0 - h / ln_c).max(MIN_CONFIDENCE)
                })
                .collect()
        })
        .collect()
}

/// Per-query weighted mean; returns the probabilities and each node's mean normalised weight.
fn weighted_mean(inputs: &[Input<'_>], weights: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let first = inputs[0].labels;
    let classes = first.classes as usize;
    let rows = first.len();
    let n = inputs.len();
    let mut probs = vec![0f64; first.probs.len()];
    let mut shares = vec![0f64; n];
    for q in 0..rows {
        let sum: f64 = weights.iter().map(|w| w[q]).sum();
        for (i, input) in inputs.iter().enumerate() {
            // All-zero weights cannot happen (floors above); fall back to uniform regardless.
            let w = if sum > 0.0 {
                weights[i][q] / sum
            } else {
                1.0 / n as f64
            };
            shares[i] += w / rows.max(1) as f64;
            let out = &mut probs[q * classes..(q + 1) * classes];
            for (o, &p) in out.iter_mut().zip(input.labels.row(q)) {
                *o += w * p as f64;
            }
        }
    }
    (probs, shares)
}

/// The aggregate of a weighted strategy: the per-query weighted mean under `weights`
/// (`weights[i][q]`: node i's unnormalised weight on query q), finished by [`finish`].
/// `inputs` must not be empty.
fn weighted(inputs: &[Input<'_>], weights: &[Vec<f64>], sharpen: f64) -> Aggregate {
    let (probs, shares) = weighted_mean(inputs, weights);
    finish(inputs, probs, shares, sharpen)
}

/// Sharpens (when `sharpen < 1`) and renormalises every row of `probs`, and pairs each node of
/// `inputs` with its share. `inputs` must not be empty.
fn finish(inputs: &[Input<'_>], mut probs: Vec<f64>, shares: Vec<f64>, sharpen: f64) -> Aggregate {
    let first = inputs[0].labels;
    let classes = first.classes as usize;
    for row in probs.chunks_mut(classes) {
        if sharpen < 1.0 {
            row.iter_mut().for_each(|v| *v = v.powf(1.0 / sharpen));
        }
        normalise(row);
    }
    Aggregate {
        labels: SoftLabels {
            classes: first.classes,
            query_ids: first.query_ids.clone(),
            probs: probs.into_iter().map(|v| v as f32).collect(),
        },
        weights: inputs
            .iter()
            .zip(shares)
            .map(|(i, w)| (i.node.to_owned(), w))
            .collect(),
    }
}

/// Rescales a row to sum 1; an all-zero row becomes uniform.
fn normalise(row: &mut [f64]) {
    let sum: f64 = row.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        row.iter_mut().for_each(|v| *v /= sum);
    } else {
        let u = 1.0 / row.len() as f64;
        row.iter_mut().for_each(|v| *v = u);
    }
}

/// Uniform mean of the contributions, query by query (the `mean` strategy without the trait).
pub fn mean(contributions: &[&SoftLabels]) -> Option<SoftLabels> {
    let inputs: Vec<Input<'_>> = contributions
        .iter()
        .map(|&labels| Input { node: "", labels })
        .collect();
    AggregationConfig {
        strategy: AggregatorKind::Mean,
        ..AggregationConfig::default()
    }
    .build()
    .aggregate(&inputs)
    .map(|a| a.labels)
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
    use super::reputation::MIN_REPUTATION;
    use super::*;

    fn labels(rows: &[&[f32]]) -> SoftLabels {
        SoftLabels {
            classes: rows[0].len() as u16,
            query_ids: (0..rows.len() as u32).collect(),
            probs: rows.iter().flat_map(|r| r.iter().copied()).collect(),
        }
    }

    fn run(kind: AggregatorKind, all: &[(&str, SoftLabels)]) -> Aggregate {
        let inputs: Vec<Input<'_>> = all
            .iter()
            .map(|(node, labels)| Input { node, labels })
            .collect();
        AggregationConfig {
            strategy: kind,
            ..AggregationConfig::default()
        }
        .build()
        .aggregate(&inputs)
        .unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for k in AggregatorKind::ALL {
            assert_eq!(k.name().parse::<AggregatorKind>(), Ok(k));
        }
        let err = "avg".parse::<AggregatorKind>().unwrap_err();
        assert!(err.contains("avg") && err.contains("trimmed-mean"), "{err}");
        assert_eq!(AggregatorKind::default(), AggregatorKind::Dynamic);
    }

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
    fn median_and_trimmed_mean_ignore_one_outlier() {
        let honest = labels(&[&[0.8, 0.2]]);
        let liar = labels(&[&[0.0, 1.0]]);
        let all = [
            ("a", honest.clone()),
            ("b", honest.clone()),
            ("c", labels(&[&[0.7, 0.3]])),
            ("d", honest.clone()),
            ("z", liar),
        ];
        // Median of [0.8, 0.8, 0.7, 0.8, 0.0] is 0.8; of [0.2, 0.2, 0.3, 0.2, 1.0] is 0.2.
        assert!(close(
            &run(AggregatorKind::Median, &all).labels.probs,
            &[0.8, 0.2]
        ));
        // trim 0.2 of 5 cuts one from each end: mean of [0.7, 0.8, 0.8] = 0.7667 and of
        // [0.2, 0.2, 0.3] = 0.2333 (already summing to 1).
        let t = run(AggregatorKind::TrimmedMean, &all);
        assert!(close(&t.labels.probs, &[0.766_666_7, 0.233_333_3]), "{t:?}");
        assert!((t.weights["a"] - 0.2).abs() < 1e-12);
    }

    #[test]
    fn confidence_leans_on_the_sure_contribution_per_query() {
        let sure_then_unsure = labels(&[&[1.0, 0.0], &[0.5, 0.5]]);
        let unsure_then_sure = labels(&[&[0.5, 0.5], &[0.0, 1.0]]);
        let a = run(
            AggregatorKind::Confidence,
            &[("a", sure_then_unsure), ("b", unsure_then_sure)],
        );
        // Query 0: weights 1 and MIN_CONFIDENCE (a uniform row has entropy ln 2), so the
        // aggregate is (1 + 0.001 * 0.5) / 1.001 = 0.9995 on class 0.
        assert!(close(&a.labels.probs[..2], &[0.999_500_5, 0.000_499_5]));
        assert!(close(&a.labels.probs[2..], &[0.000_499_5, 0.999_500_5]));
        // Symmetric: each node leads one query of two.
        assert!((a.weights["a"] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn reputation_and_dynamic_starve_a_flipping_minority() {
        // Seven nodes agree (with some spread); three put all mass on the wrong class.
        let mut all = Vec::new();
        for i in 0..7 {
            let p = 0.6 + 0.05 * i as f32;
            all.push((
                format!("h{i}"),
                labels(&[&[p, 1.0 - p, 0.0], &[0.0, p, 1.0 - p]]),
            ));
        }
        for i in 0..3 {
            all.push((
                format!("x{i}"),
                labels(&[&[0.0, 0.0, 1.0], &[1.0, 0.0, 0.0]]),
            ));
        }
        let all: Vec<(&str, SoftLabels)> =
            all.iter().map(|(n, l)| (n.as_str(), l.clone())).collect();
        for kind in [AggregatorKind::Reputation, AggregatorKind::Dynamic] {
            let a = run(kind, &all);
            let honest: f64 = (0..7).map(|i| a.weights[&format!("h{i}")]).sum::<f64>() / 7.0;
            let flipped: f64 = (0..3).map(|i| a.weights[&format!("x{i}")]).sum::<f64>() / 3.0;
            // The others' consensus backs class 0 on query 0 and class 1 on query 1 (seven
            // against two), never the flippers' class: they score 0, floored at
            // MIN_REPUTATION, against 1 for every honest node.
            assert!(flipped < 0.01 * honest, "{kind}: {flipped} vs {honest}");
            // The mean puts 0.3 on the wrong class 2 of query 0; these put ~0.
            assert!(a.labels.probs[2] < 0.01, "{kind}: {:?}", a.labels.probs);
            let total: f64 = a.weights.values().sum();
            assert!((total - 1.0).abs() < 1e-9);
        }
        let m = run(AggregatorKind::Mean, &all);
        assert!((m.labels.probs[2] - 0.3).abs() < 1e-6);
    }

    #[test]
    fn reputation_is_a_moving_average_that_can_be_restored() {
        let good = labels(&[&[1.0, 0.0]]);
        let bad = labels(&[&[0.0, 1.0]]);
        let mut agg = AggregationConfig {
            strategy: AggregatorKind::Reputation,
            ..AggregationConfig::default()
        }
        .build();
        let round = |agg: &mut Box<dyn Aggregator>, z: &SoftLabels| {
            let inputs = [
                Input {
                    node: "a",
                    labels: &good,
                },
                Input {
                    node: "b",
                    labels: &good,
                },
                Input {
                    node: "z",
                    labels: z,
                },
            ];
            agg.aggregate(&inputs).unwrap();
        };
        round(&mut agg, &bad);
        // z disagrees entirely: its score 0 is floored at MIN_REPUTATION.
        assert!((agg.reputations()["z"] - MIN_REPUTATION).abs() < 1e-12);
        round(&mut agg, &good);
        // Next round it agrees (score 1): rate 0.5 gives 0.5 * 0.001 + 0.5 * 1 = 0.5005.
        assert!((agg.reputations()["z"] - 0.5005).abs() < 1e-9);
        let saved = agg.reputations();
        let mut fresh = AggregationConfig::default().build();
        fresh.restore(saved.clone());
        assert_eq!(fresh.reputations(), saved);
    }

    #[test]
    fn sharpening_lowers_entropy_and_keeps_the_simplex() {
        let all = [("a", labels(&[&[0.6, 0.4]]))];
        let inputs: Vec<Input<'_>> = all
            .iter()
            .map(|(n, l)| Input { node: n, labels: l })
            .collect();
        let a = AggregationConfig {
            strategy: AggregatorKind::Mean,
            sharpen: 0.5,
            ..AggregationConfig::default()
        }
        .build()
        .aggregate(&inputs)
        .unwrap();
        // 0.36 / (0.36 + 0.16) = 0.6923.
        assert!(close(&a.labels.probs, &[0.692_307_7, 0.307_692_3]));
    }

    #[test]
    fn config_ranges_name_the_field() {
        let mut c = AggregationConfig::default();
        assert_eq!(c.validate(), Ok(()));
        c.trim = 0.5;
        assert!(c.validate().unwrap_err().contains("aggregation.trim"));
        c.trim = 0.1;
        c.sharpen = 0.0;
        assert!(c.validate().unwrap_err().contains("aggregation.sharpen"));
        c.sharpen = 1.0;
        c.reputation_rate = 1.5;
        assert!(c.validate().unwrap_err().contains("reputation_rate"));
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
