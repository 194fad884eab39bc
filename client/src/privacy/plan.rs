//! The privacy planner: what a private node's releases will be worth, from public facts alone,
//! before it spends anything.
//!
//! Inputs are facts the node may state without cost: its record count and teacher count (the
//! record count is public under replace-one adjacency, and the teacher count follows from it
//! and the config), the class count, the budget and the coordinator's planned queries. The
//! noise is computed exactly as the release will draw it ([`release_sigma`], OpenDP's maps).
//!
//! The signal it is set against is the vote sum of one class for one query. A node's teachers
//! cast at most one vote each per query, so no class can ever get more than `teachers` votes:
//! noise above that swamps any possible vote. A query's votes spread over the classes, so the
//! planner's signal-to-noise ratio is that of the average class share, `teachers / classes`,
//! over `sigma`. On digits (10 nodes of 48 to 153 records, one nearest-neighbour teacher per
//! record, 20 planned queries) a node of 108 records gets 0.42, 0.79, 1.5 and 2.7 at epsilon 1,
//! 2, 4 and 8.

use serde::{Deserialize, Serialize};

use crate::privacy::{
    Budget, PrivacyError, epsilon_for, release_rho, release_sensitivity, rho_for, sigma_for_rho,
};

/// The planner's signal-to-noise ratio below which a node's student does not trust the
/// federation's target by default (`privacy.trust_snr`): it keeps the student it would have
/// trained alone.
///
/// Measured with `fd-sim --privacy shards --epsilon 1,2,4,8 --repeats 3` (digits, 30
/// client-runs per epsilon): client-runs that ended more than 0.5 points below their
/// local-only twin were 18, 13, 6 and 0 with `--trust-snr 0` (always trust; federated mean
/// 0.588, 0.621, 0.678, 0.741) and 0, 0, 2 and 2 at 1.5 (0.608, 0.608, 0.633, 0.710; local-only
/// 0.608). The threshold removes the harm where the target is mostly noise, at the price of
/// the gains of small nodes at epsilon 8; what harm remains at 4 and 8 moves from run to run
/// with the noise (the same run at 1.5 once gave 1 and 0).
pub const DEFAULT_TRUST_SNR: f64 = 1.5;

/// The ratio a node's plan aims its suggestions at: the higher of `min_snr` (declining to
/// spend) and `trust_snr` (trusting the target).
pub fn wanted_snr(min_snr: Option<f64>, trust_snr: f64) -> f64 {
    min_snr.unwrap_or(0.0).max(trust_snr)
}

/// The public facts a plan is made from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    /// Records in the node's private data.
    pub records: usize,
    /// Teachers (disjoint shards) whose votes are summed.
    pub teachers: usize,
    /// Classes.
    pub classes: usize,
    /// The node's whole budget.
    pub budget: Budget,
    /// Labels the coordinator plans to ask of the node over the whole run.
    pub planned_queries: u64,
    /// Queries per release (per round).
    pub queries_per_release: usize,
}

/// What the node's releases will be worth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The facts it was made from.
    pub input: PlanInput,
    /// Noise standard deviation of every vote sum (0 without noise).
    pub sigma: f64,
    /// The largest vote sum of one class for one query the node can release: its teacher count.
    pub largest_vote_sum: f64,
    /// `teachers / classes / sigma` (infinite without noise).
    pub snr: f64,
    /// Whether the noise is above the largest possible vote sum.
    pub swamped: bool,
    /// An epsilon (same delta and plan) that would reach `wanted_snr`, if one up to 10,000
    /// does (the budget's own if it already does).
    pub epsilon_for_wanted: Option<f64>,
    /// The most queries over the run (same budget) that would still reach `wanted_snr`; `None`
    /// if even one release's worth is not enough.
    pub queries_for_wanted: Option<u64>,
    /// The ratio the suggestions aim for.
    pub wanted_snr: f64,
}

/// Noise of each vote sum in a release of `queries_per_release` queries when the budget's rho
/// is spread evenly over `planned_queries`: the very computation a release makes.
pub fn release_sigma(
    budget: Budget,
    classes: usize,
    planned_queries: u64,
    queries_per_release: usize,
) -> Result<f64, PrivacyError> {
    let rho_release = release_rho_target(budget, planned_queries, queries_per_release)?;
    if rho_release.is_infinite() {
        return Ok(0.0);
    }
    let m = queries_per_release.max(1);
    sigma_for_rho(m * classes.max(1), release_sensitivity(m), rho_release)
}

/// The rho of one release of `queries_per_release` queries when the budget is spread evenly
/// over `planned_queries` (infinite for an infinite budget).
pub fn release_rho_target(
    budget: Budget,
    planned_queries: u64,
    queries_per_release: usize,
) -> Result<f64, PrivacyError> {
    let rho_total = rho_for(budget)?;
    if rho_total.is_infinite() {
        return Ok(f64::INFINITY);
    }
    let m = queries_per_release.max(1);
    let planned = planned_queries.max(m as u64) as f64;
    // A hair under the even share, so that float rounding in the sum of the planned releases
    // can never push the last one over the budget.
    Ok(rho_total * m as f64 / planned * (1.0 - 1e-9))
}

/// `teachers / classes / sigma`, infinite when `sigma` is 0.
fn snr_of(teachers: usize, classes: usize, sigma: f64) -> f64 {
    let share = teachers as f64 / classes.max(1) as f64;
    if sigma > 0.0 {
        share / sigma
    } else {
        f64::INFINITY
    }
}

/// Makes the plan for `input`, with suggestions aimed at `wanted_snr`.
///
/// The suggestions come from OpenDP's maps directly: the noise that would reach `wanted_snr`
/// is priced with the Gaussian's map ([`release_rho`]), scaled up to the run by the even split
/// of the budget, and turned into epsilon at the same delta ([`epsilon_for`]); the query count
/// is the largest whose share of the budget affords that noise, checked against
/// [`release_sigma`].
pub fn plan(input: PlanInput, wanted_snr: f64) -> Result<Plan, PrivacyError> {
    let classes = input.classes.max(1);
    let m = input.queries_per_release.max(1);
    let sigma = release_sigma(input.budget, classes, input.planned_queries, m)?;
    let snr = snr_of(input.teachers, classes, sigma);
    let reaches = |sigma: f64| snr_of(input.teachers, classes, sigma) >= wanted_snr;
    let (epsilon_for_wanted, queries_for_wanted) = if reaches(sigma) {
        (Some(input.budget.epsilon), Some(input.planned_queries))
    } else if wanted_snr.is_nan() || wanted_snr <= 0.0 || input.teachers == 0 {
        (None, None)
    } else {
        // The largest noise that still reaches the ratio, and what one release at it costs.
        let wanted_sigma = input.teachers as f64 / classes as f64 / wanted_snr;
        let rho_release = release_rho(m * classes, release_sensitivity(m), wanted_sigma)?;
        let planned = input.planned_queries.max(m as u64) as f64;
        // A millionth up: the budget's rho is found by rounding down from its epsilon, and
        // the suggestion must reach the ratio, not fall a rounding short of it.
        let epsilon =
            epsilon_for(rho_release * planned / m as f64, input.budget.delta)? * (1.0 + 1e-6);
        let epsilon = (epsilon <= 1e4).then_some(epsilon);
        let rho_total = rho_for(input.budget)?;
        let mut queries = (rho_total * m as f64 / rho_release).floor().min(1e15) as u64;
        // The even split rounds: step to the exact boundary with the release's own noise.
        let at = |q: u64| release_sigma(input.budget, classes, q, m);
        while queries > m as u64 && !reaches(at(queries)?) {
            queries -= 1;
        }
        while reaches(at(queries + 1)?) {
            queries += 1;
        }
        let queries = (queries >= m as u64 && reaches(at(queries)?)).then_some(queries);
        (epsilon, queries)
    };
    Ok(Plan {
        input,
        sigma,
        largest_vote_sum: input.teachers as f64,
        snr,
        swamped: sigma > input.teachers as f64,
        epsilon_for_wanted,
        queries_for_wanted,
        wanted_snr,
    })
}

impl Plan {
    /// The plan in one line, for logs.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "sigma {:.2} on every vote sum, largest possible vote sum {}, signal-to-noise \
             (teachers / classes / sigma) {:.2}",
            self.sigma, self.largest_vote_sum, self.snr
        );
        if self.swamped {
            out += ": the noise is above the largest vote sum this node can release";
        } else if self.snr < self.wanted_snr {
            out += &format!(
                ": below {}, the target is unlikely to help",
                self.wanted_snr
            );
        }
        if self.snr < self.wanted_snr {
            match self.epsilon_for_wanted {
                Some(e) => out += &format!("; epsilon {e:.2} would reach {}", self.wanted_snr),
                None => out += "; no epsilon up to 10,000 would reach it",
            }
            if let Some(q) = self.queries_for_wanted {
                out += &format!(", or at most {q} planned queries");
            }
        }
        out
    }

    /// The plan in a few lines, for `fd-client plan`.
    pub fn describe(&self) -> String {
        let i = &self.input;
        let mut out = format!(
            "{} records, {} teachers, {} classes, epsilon {} delta {}, {} planned queries \
             ({} a release)\n",
            i.records,
            i.teachers,
            i.classes,
            i.budget.epsilon,
            i.budget.delta,
            i.planned_queries,
            i.queries_per_release.max(1)
        );
        out += &format!(
            "noise sigma {:.2} on every vote sum; largest possible vote sum {}; \
             signal-to-noise (teachers / classes / sigma) {:.2}\n",
            self.sigma, self.largest_vote_sum, self.snr
        );
        if self.swamped {
            out += "WARNING: the noise is above the largest vote sum this node can release: \
                    its releases carry almost no information\n";
        } else if self.snr < self.wanted_snr {
            out += &format!(
                "WARNING: signal-to-noise {:.2} is below {}: the target is unlikely to help \
                 this node's student\n",
                self.snr, self.wanted_snr
            );
        }
        if self.snr < self.wanted_snr {
            match self.epsilon_for_wanted {
                Some(e) => out += &format!("  epsilon {e:.2} would reach {}\n", self.wanted_snr),
                None => out += "  no epsilon up to 10,000 would reach it\n",
            }
            match self.queries_for_wanted {
                Some(q) => {
                    out +=
                        &format!("  at this epsilon, at most {q} planned queries would reach it\n")
                }
                None => out += "  at this epsilon, not even one query a release would\n",
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(records: usize, epsilon: f64) -> PlanInput {
        PlanInput {
            records,
            teachers: records,
            classes: 10,
            budget: Budget {
                epsilon,
                delta: 1e-5,
            },
            planned_queries: 20,
            queries_per_release: 1,
        }
    }

    #[test]
    fn the_plan_uses_the_release_noise_and_scales_with_records() {
        let small = plan(input(100, 2.0), DEFAULT_TRUST_SNR).unwrap();
        let large = plan(input(5000, 2.0), DEFAULT_TRUST_SNR).unwrap();
        // Same budget and queries, so the same noise; the signal grows with the teachers.
        assert_eq!(small.sigma, large.sigma);
        assert_eq!(
            small.sigma,
            release_sigma(small.input.budget, 10, 20, 1).unwrap()
        );
        assert!((large.snr / small.snr - 50.0).abs() < 1e-9);
        // fd-sim prints sigma 13.59 at epsilon 2 with 20 planned queries.
        assert!((small.sigma - 13.59).abs() < 0.01, "{}", small.sigma);
        assert!(!small.swamped && small.snr < DEFAULT_TRUST_SNR);
        assert!(large.snr >= DEFAULT_TRUST_SNR && large.describe().find("WARNING").is_none());
    }

    #[test]
    fn suggestions_reach_the_wanted_ratio_and_no_further() {
        let p = plan(input(100, 2.0), DEFAULT_TRUST_SNR).unwrap();
        let e = p.epsilon_for_wanted.unwrap();
        let at = |epsilon: f64| plan(input(100, epsilon), DEFAULT_TRUST_SNR).unwrap().snr;
        assert!(
            at(e) >= DEFAULT_TRUST_SNR && at(e * 0.99) < DEFAULT_TRUST_SNR,
            "{e}"
        );
        let q = p.queries_for_wanted.unwrap();
        let with = |queries: u64| {
            let mut i = input(100, 2.0);
            i.planned_queries = queries;
            plan(i, DEFAULT_TRUST_SNR).unwrap().snr
        };
        assert!(
            with(q) >= DEFAULT_TRUST_SNR && with(q + 1) < DEFAULT_TRUST_SNR,
            "{q}"
        );
        assert!(p.describe().contains("WARNING"));
    }

    #[test]
    fn a_tiny_node_is_swamped() {
        // 5 teachers against sigma 25.6 (epsilon 1, 20 queries): no vote can show.
        let p = plan(input(5, 1.0), DEFAULT_TRUST_SNR).unwrap();
        assert!(p.swamped && p.sigma > 5.0);
        assert!(p.describe().contains("above the largest vote sum"));
        let noiseless = plan(input(5, f64::INFINITY), DEFAULT_TRUST_SNR).unwrap();
        assert_eq!(noiseless.sigma, 0.0);
        assert!(noiseless.snr.is_infinite() && !noiseless.swamped);
    }
}
