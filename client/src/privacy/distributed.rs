//! The distributed discrete Gaussian: a node's share of the noise of a securely aggregated sum.
//!
//! # Mechanism
//!
//! With secure aggregation the coordinator sees only the sum, over the round's survivors, of
//! each node's integer vote counts plus that node's noise share. Each node adds discrete
//! Gaussian noise `N_Z(0, s^2)` to every count, drawn by OpenDP's `make_gaussian` over big
//! integers. If at least `h` honest nodes' shares are in the sum, the sum carries at least `h`
//! independent shares, and a record of an honest node is protected by all of them: the noise
//! of the sum is close to `N_Z(0, h s^2)`.
//!
//! # Guarantees
//!
//! Votes are integers: a teacher casts one vote (its top class, or the label of its shard's
//! nearest record) or abstains. One record changes one teacher, which moves one vote per
//! query: L2 sensitivity `sqrt(2 m)` and L1 sensitivity `2 m` over `m` queries, in `d = m *
//! classes` coordinates.
//!
//! - **The sum**, assuming at least `h` honest shares: Proposition 14 of Kairouz, Liu and
//!   Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
//!   Aggregation" (ICML 2021; arXiv 2102.06387). For the sum of `h` independent `N_Z(0, s^2)`
//!   per coordinate and `s >= 1/2`, with `l2 = D2 / (sqrt(h) s)`, `l1 = D1 / (sqrt(h) s)` and
//!   `tau = 10 sum_{k=1}^{h-1} exp(-2 pi^2 s^2 k / (k + 1))`, the Renyi divergence of order
//!   `a` is at most `min(a l2^2 / 2 + tau d, a (l2^2 + 2 l1 tau + tau^2 d) / 2,
//!   a (l2 + sqrt(d) tau)^2 / 2)`. Each term is at most `a rho` for all `a >= 1` with `rho`
//!   equal to, in order, `l2^2 / 2 + tau d`, `(l2^2 + 2 l1 tau + tau^2 d) / 2` and
//!   `(l2 + sqrt(d) tau)^2 / 2`, so the sum is `rho`-zCDP for the least of the three
//!   ([`sum_rho`]). `l2^2 / 2` itself is read from OpenDP's privacy map of the discrete
//!   Gaussian at scale `sqrt(h) s` (rounded down, so the map rounds `rho` up); the `tau`
//!   terms, which OpenDP has no map for, are computed here with every step rounded up. For
//!   the shares nodes draw (`s` of a few units) `tau` is below `1e-100`.
//! - **The floor**, if every other node colludes with the coordinator: the node's own share
//!   alone, the plain discrete Gaussian of Canonne, Kamath and Steinke (NeurIPS 2020),
//!   `rho = D2^2 / (2 s^2)`, read from the privacy map of the very measurement that draws the
//!   share ([`ShareRelease::floor_rho`]).
//!
//! Which `h`: with `n` nodes, `c` colluders tolerated and `t` dropouts tolerated, nodes help
//! unmask only when at least `n - t` nodes survive, and at most `c` of those collude, so at
//! least `h = n - t - c` honest shares are in every sum that is ever decoded
//! ([`DistributedPlan`]).

use dashu::integer::IBig;
use dashu::rational::RBig;
use opendp::{
    core::Measurement,
    domains::{AtomDomain, VectorDomain},
    measurements::make_gaussian,
    measures::ZeroConcentratedDivergence,
    metrics::L2Distance,
    traits::{InfAdd, InfCast, InfDiv, InfExp, InfMul, InfSqrt},
};

use super::PrivacyError;

type ShareMeasurement = Measurement<
    VectorDomain<AtomDomain<IBig>>,
    L2Distance<RBig>,
    ZeroConcentratedDivergence,
    Vec<IBig>,
>;

/// Who is counted on: `nodes` in the round, of whom up to `colluders` may pool what they know
/// with the coordinator and up to `dropouts` may vanish after masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistributedPlan {
    /// Nodes that shared keys in the round.
    pub nodes: usize,
    /// Nodes that may collude with the coordinator.
    pub colluders: usize,
    /// Nodes that may drop out after masking.
    pub dropouts: usize,
}

impl DistributedPlan {
    /// The fewest survivors a node helps to unmask: `nodes - dropouts`.
    pub fn min_survivors(&self) -> Result<usize, PrivacyError> {
        self.honest()?;
        Ok(self.nodes - self.dropouts)
    }

    /// The fewest honest shares in any decoded sum: `nodes - dropouts - colluders`, at least 1.
    pub fn honest(&self) -> Result<usize, PrivacyError> {
        match self
            .nodes
            .checked_sub(self.dropouts)
            .and_then(|s| s.checked_sub(self.colluders))
        {
            Some(h) if h >= 1 => Ok(h),
            _ => Err(PrivacyError::Distributed(format!(
                "secure aggregation of {} nodes tolerating {} colluders and {} dropouts leaves no \
                 honest node's noise in the sum; lower the tolerances",
                self.nodes, self.colluders, self.dropouts
            ))),
        }
    }

    /// Each node's share `s` so that `honest` shares reach `sigma`: `sigma / sqrt(honest)`,
    /// to within an ulp or two. Only a target: what is charged is [`sum_rho`] of the share
    /// actually drawn, so the rounding here cannot understate a cost.
    pub fn share_sigma(&self, sigma: f64) -> Result<f64, PrivacyError> {
        let h = f64::inf_cast(self.honest()? as u64).map_err(map_err)?;
        // Divided by the rounded-up root, with the quotient rounded up and one ulp more.
        Ok(sigma
            .inf_div(&h.inf_sqrt().map_err(map_err)?)
            .map_err(map_err)?
            .next_up())
    }
}

fn map_err(e: opendp::error::Error) -> PrivacyError {
    PrivacyError::OpenDp {
        action: "computing the distributed discrete Gaussian",
        message: e.to_string(),
    }
}

/// L2 and L1 sensitivity of integer vote counts in which one teacher votes on at most
/// `queries` rows (one vote moves per row it votes on), as exact rationals: `sqrt(2 m)` is
/// rounded up to the next `f64`.
pub fn vote_sensitivity(queries: usize) -> Result<(RBig, RBig), PrivacyError> {
    let m = f64::inf_cast(queries as u64).map_err(map_err)?;
    let l2 = m
        .inf_mul(&2.0)
        .and_then(|v| v.inf_sqrt())
        .map_err(map_err)?;
    let l2 =
        RBig::try_from(l2).map_err(|e| PrivacyError::Distributed(format!("sensitivity: {e}")))?;
    Ok((l2, RBig::from(IBig::from(2 * queries))))
}

/// A node's noise share for one release of `len` counts, built once: the floor guarantee is
/// read from the measurement that draws the share.
pub struct ShareRelease {
    measurement: ShareMeasurement,
    len: usize,
    share_sigma: f64,
}

impl ShareRelease {
    /// Discrete Gaussian shares of scale `share_sigma` on `len` integer counts.
    pub fn new(len: usize, share_sigma: f64) -> Result<ShareRelease, PrivacyError> {
        let measurement = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            VectorDomain::new(AtomDomain::<IBig>::default()).with_size(len),
            L2Distance::<RBig>::default(),
            share_sigma,
            None,
        )
        .map_err(map_err)?;
        Ok(ShareRelease {
            measurement,
            len,
            share_sigma,
        })
    }

    /// The node's own guarantee if every other node colluded: `rho` of its share alone.
    pub fn floor_rho(&self, l2: &RBig) -> Result<f64, PrivacyError> {
        self.measurement.map(l2).map_err(map_err)
    }

    /// `counts` plus this node's share, drawn by OpenDP.
    pub fn invoke(&self, counts: &[i64]) -> Result<Vec<i64>, PrivacyError> {
        if counts.len() != self.len {
            return Err(PrivacyError::Distributed(format!(
                "noise share: {} counts for a release of {}",
                counts.len(),
                self.len
            )));
        }
        let input: Vec<IBig> = counts.iter().map(|&c| IBig::from(c)).collect();
        let noisy = self.measurement.invoke(&input).map_err(map_err)?;
        noisy
            .into_iter()
            .map(|v| {
                i64::try_from(v).map_err(|_| {
                    PrivacyError::Distributed("a noisy count does not fit in 64 bits".into())
                })
            })
            .collect()
    }

    /// The share's scale `s`.
    pub fn share_sigma(&self) -> f64 {
        self.share_sigma
    }
}

/// The smallest share scale, on a grid of steps of 0.1% up from the share that `plan`'s honest
/// shares need to reach the Gaussian `sigma` at `rho`, whose sum's cost ([`sum_rho`], the
/// distributed bound with its `tau` terms) is at most `rho`, for `len` counts in which one
/// teacher votes on at most `queries` rows. Errors if none is found within a factor of 2.
pub fn share_sigma_for(
    plan: &DistributedPlan,
    len: usize,
    queries: usize,
    rho: f64,
) -> Result<f64, PrivacyError> {
    let (l2, l1) = vote_sensitivity(queries)?;
    let sigma = super::sigma_for_rho(len, super::release_sensitivity(queries), rho)?;
    let honest = plan.honest()?;
    let first = plan.share_sigma(sigma)?.max(0.5);
    let mut share = first;
    while share <= 2.0 * first {
        if sum_rho(len, &l2, &l1, share, honest)? <= rho {
            return Ok(share);
        }
        share *= 1.001;
    }
    Err(PrivacyError::NoSolution {
        what: "the noise share of a secure release",
        detail: format!("no share up to {share} keeps the sum's rho within {rho}"),
    })
}

/// A secure-aggregation release: prices the sum (`rho` of [`sum_rho`] under `plan`) and the
/// floor (the share alone), charges the ledger durably, and only then draws the share and adds
/// it to `counts` (`queries` rows of integer votes, in which each teacher voted on at most
/// `votes_per_teacher` rows, what the sensitivity is read at).
pub fn secure_release(
    ledger: &mut super::PrivacyLedger,
    round: u32,
    counts: &[i64],
    queries: usize,
    votes_per_teacher: usize,
    plan: &DistributedPlan,
    share_sigma: f64,
) -> Result<(Vec<i64>, super::Receipt), PrivacyError> {
    let (l2, l1) = vote_sensitivity(votes_per_teacher.min(queries))?;
    let share = ShareRelease::new(counts.len(), share_sigma)?;
    let rho = sum_rho(counts.len(), &l2, &l1, share.share_sigma(), plan.honest()?)?;
    let floor_rho = share.floor_rho(&l2)?;
    let receipt = ledger.charge(super::Charge {
        round,
        queries: u32::try_from(queries)
            .map_err(|_| PrivacyError::Distributed("more than u32::MAX queries".into()))?,
        sigma: share.share_sigma(),
        sensitivity: l2.to_f64().value(),
        rho,
        floor_rho: Some(floor_rho),
    })?;
    let noisy = share.invoke(counts)?;
    Ok((noisy, receipt))
}

/// `tau = 10 sum_{k=1}^{h-1} exp(-2 pi^2 s^2 k / (k + 1))`, every step rounded up.
pub fn tau(share_sigma: f64, honest: usize) -> Result<f64, PrivacyError> {
    // 2 pi^2 s^2 rounded down (each product is within half an ulp; one step down after each
    // puts it below the exact value), so that each exp(-...) rounds up.
    let pi = std::f64::consts::PI.next_down();
    let two_pi_sq_s_sq = ((((2.0 * pi).next_down() * pi).next_down() * share_sigma).next_down()
        * share_sigma)
        .next_down();
    let mut sum = 0.0f64;
    for k in 1..honest {
        // The exponent's magnitude rounded down makes the term round up.
        let ratio = (k as f64 / (k + 1) as f64).next_down();
        let exponent = -(two_pi_sq_s_sq * ratio).next_down();
        sum = sum
            .inf_add(&exponent.inf_exp().map_err(map_err)?)
            .map_err(map_err)?;
    }
    sum.inf_mul(&10.0).map_err(map_err)
}

/// `rho` of the securely aggregated sum of `len` counts with at least `honest` shares of scale
/// `share_sigma`, under L2 sensitivity `l2` and L1 sensitivity `l1` (Proposition 14 of
/// Kairouz, Liu and Steinke; see the module documentation).
pub fn sum_rho(
    len: usize,
    l2: &RBig,
    l1: &RBig,
    share_sigma: f64,
    honest: usize,
) -> Result<f64, PrivacyError> {
    if share_sigma < 0.5 {
        return Err(PrivacyError::Distributed(format!(
            "noise share {share_sigma} below 1/2, where the distributed discrete Gaussian \
             analysis does not hold"
        )));
    }
    // The sum's scale sqrt(h) s, rounded down so that OpenDP's map rounds rho up.
    let h = honest as f64;
    let sum_sigma = (h.sqrt().next_down() * share_sigma).next_down();
    let base = ShareRelease::new(len, sum_sigma)?.floor_rho(l2)?;
    let tau = tau(share_sigma, honest)?;
    if tau == 0.0 {
        return Ok(base);
    }
    let up = |r: Result<f64, opendp::error::Error>| r.map_err(map_err);
    let d = f64::inf_cast(len as u64).map_err(map_err)?;
    // l1 / (sqrt(h) s), rounded up.
    let l1 = up(f64::inf_cast(l1.clone()))?;
    let l1_scale = up(l1.inf_div(&sum_sigma))?;
    // sqrt(2 base) is l2 / (sqrt(h) s).
    let l2_scale = up(up(base.inf_mul(&2.0))?.inf_sqrt())?;
    let first = up(base.inf_add(&up(tau.inf_mul(&d))?))?;
    let second = up(up(
        up(base.inf_mul(&2.0))?.inf_add(&up(up(l1_scale.inf_mul(&2.0))?.inf_mul(&tau))?)
    )?
    .inf_add(&up(up(tau.inf_mul(&tau))?.inf_mul(&d))?))?;
    let second = up(second.inf_div(&2.0))?;
    let third = up(l2_scale.inf_add(&up(up(d.inf_sqrt())?.inf_mul(&tau))?))?;
    let third = up(up(third.inf_mul(&third))?.inf_div(&2.0))?;
    Ok(first.min(second).min(third))
}

/// An upper bound on the probability that a securely aggregated sum wraps modulo 2^32:
/// that `|votes + noise|` reaches `2^31`, where the coordinator's centred reading
/// (`fd_secagg::centred`) would flip its sign.
///
/// The votes add up to at most `max_votes` in absolute value (every survivor's teachers, one
/// vote each per count). Each share `N_Z(0, s^2)` is `s`-subgaussian (shown by Canonne, Kamath
/// and Steinke 2020 for the discrete Gaussian), so `shares` of them sum to a `sqrt(shares) s`-subgaussian
/// value, and `P(|noise| >= x) <= 2 exp(-x^2 / (2 shares s^2))` with `x = 2^31 - max_votes`.
/// The arithmetic rounds the bound up. Wrapping would corrupt the round's sum, not its
/// privacy: the noise is in the sum either way.
pub fn wrap_probability(max_votes: u64, share_sigma: f64, shares: usize) -> f64 {
    let limit = 2f64.powi(31);
    if max_votes as f64 >= limit {
        return 1.0;
    }
    // The margin rounded down, the variance rounded up: the exponent's magnitude is rounded
    // down, so the bound rounds up.
    let x = (limit - max_votes as f64).next_down();
    let variance = (shares as f64 * share_sigma * share_sigma)
        .next_up()
        .next_up();
    let exponent = ((x * x).next_down() / (2.0 * variance).next_up()).next_down();
    (2.0 * (-exponent).exp()).next_up().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(nodes: usize, colluders: usize, dropouts: usize) -> DistributedPlan {
        DistributedPlan {
            nodes,
            colluders,
            dropouts,
        }
    }

    #[test]
    fn the_plan_counts_honest_shares_and_refuses_none() {
        let p = plan(10, 1, 2);
        assert_eq!(p.min_survivors().unwrap(), 8);
        assert_eq!(p.honest().unwrap(), 7);
        // sigma 13.59 over 7 honest shares: 13.59 / sqrt(7) = 5.1365...
        let s = p.share_sigma(13.59).unwrap();
        assert!(
            s >= 13.59 / 7f64.sqrt() && s < 13.59 / 7f64.sqrt() + 1e-12,
            "{s}"
        );
        assert!(plan(3, 1, 2).honest().is_err());
        assert!(plan(2, 0, 3).min_survivors().is_err());
    }

    /// Against an independent computation of Proposition 14 (Kairouz, Liu and Steinke 2021)
    /// in Python for the same parameters: s = 1, h = 7, one query of 10 classes (d = 10,
    /// D2 = sqrt(2), D1 = 2):
    ///
    /// ```text
    /// from math import *
    /// s, h, d, D2, D1 = 1.0, 7, 10, sqrt(2), 2.0
    /// tau = 10 * sum(exp(-2 * pi**2 * s**2 * k / (k + 1)) for k in range(1, h))
    /// l2, l1 = D2 / (sqrt(h) * s), D1 / (sqrt(h) * s)
    /// min(l2**2 / 2 + tau * d, (l2**2 + 2 * l1 * tau + tau**2 * d) / 2,
    ///     (l2 + sqrt(d) * tau)**2 / 2)
    /// # tau = 5.427763849570105e-04; the terms 0.148284906706713, 0.14326891626876748 and
    /// # 0.14377607543038834: rho = 0.14326891626876748 (the second)
    /// ```
    ///
    /// At s = 5 tau is below 1e-100 and rho is D2^2 / (2 h s^2) = 2 / 350 = 0.0057142857...
    #[test]
    fn the_sums_rho_matches_an_independent_computation_of_the_bound() {
        let (l2, l1) = vote_sensitivity(1).unwrap();
        let t = tau(1.0, 7).unwrap();
        assert!((t - 5.427763849570105e-4).abs() < 1e-15, "{t}");
        let rho = sum_rho(10, &l2, &l1, 1.0, 7).unwrap();
        // Rounded up, never below the exact bound, and within rounding of it.
        assert!(rho >= 0.14326891626876748, "{rho}");
        assert!(rho < 0.14326891626876748 + 1e-9, "{rho}");
        let rho = sum_rho(10, &l2, &l1, 5.0, 7).unwrap();
        assert!((2.0 / 350.0..2.0 / 350.0 + 1e-12).contains(&rho), "{rho}");
        // Below s = 1/2 the analysis does not apply: refused.
        assert!(sum_rho(10, &l2, &l1, 0.4, 7).is_err());
        // The floor: the node's share alone, D2^2 / (2 s^2) = 2 / 50 at s = 5.
        let floor = ShareRelease::new(10, 5.0).unwrap().floor_rho(&l2).unwrap();
        assert!((0.04..0.04 + 1e-12).contains(&floor), "{floor}");
    }

    #[test]
    fn sums_of_votes_and_noise_shares_do_not_wrap_in_practice() {
        // Digits: 1,079 records (at most one vote each per count) over 10 nodes with shares of
        // s = 5.14: the bound underflows (to the smallest f64 above 0, rounded up).
        assert!(wrap_probability(1079, 5.14, 10) < 1e-300);
        // 255 nodes of a million records each and shares of s = 1000 still leave the bound
        // below 1e-300 (x = 2^31 - 2.55e8, variance 2.55e8: exponent about 7e9).
        assert!(wrap_probability(255_000_000, 1000.0, 255) < 1e-300);
        // The bound is not vacuous: 4 shares of s = 2^31 / 2 sum to a standard deviation of
        // 2^31, a margin of one: 2 exp(-1/2) = 1.213, capped at 1; at three standard
        // deviations (s / 3), 2 exp(-4.5) = 0.0222.
        let s = 2f64.powi(31) / 2.0;
        assert_eq!(wrap_probability(0, s, 4), 1.0);
        let p = wrap_probability(0, s / 3.0, 4);
        assert!((p - 2.0 * (-4.5f64).exp()).abs() < 1e-12, "{p}");
        assert_eq!(wrap_probability(1 << 31, 1.0, 1), 1.0);
    }

    /// The summed noise of seven shares has the variance its target says: 7 s^2 at s = 5 (the
    /// discrete Gaussian's variance differs from s^2 by less than 1e-100 there), within 5% over
    /// 20,000 coordinates (the sample variance's relative standard error is about 1%).
    /// The share chosen for a budget is the least on its grid whose sum fits: the next step
    /// down would cost more than the budget; the charge of a real release matches, and its
    /// floor is about `h` times the sum's.
    #[test]
    fn the_share_for_a_budget_is_the_least_that_fits_and_the_release_is_charged_both_ways() {
        // 10 nodes, 1 colluder, 2 dropouts: 7 honest shares. One vote a teacher over 18 rows of
        // 10 classes; rho 0.108 / 20 rounds (epsilon 2, delta 1e-5, as fd-sim's digits runs).
        let p = plan(10, 1, 2);
        let (len, votes, rho) = (180, 1, 0.108 / 20.0);
        let share = share_sigma_for(&p, len, votes, rho).unwrap();
        let (l2, l1) = vote_sensitivity(votes).unwrap();
        assert!(sum_rho(len, &l2, &l1, share, 7).unwrap() <= rho);
        assert!(sum_rho(len, &l2, &l1, share / 1.001, 7).unwrap() > rho);
        // The Gaussian's sigma for rho and sensitivity sqrt(2) is sqrt(2 / (2 rho)) = 13.6;
        // over sqrt(7) honest shares, 5.14.
        assert!((share - 5.14).abs() < 0.01, "{share}");

        let dir = tempfile::tempdir().unwrap();
        let budget = super::super::Budget {
            epsilon: 2.0,
            delta: 1e-5,
        };
        let mut ledger =
            super::super::PrivacyLedger::open(&dir.path().join("l.sqlite"), budget, "d").unwrap();
        let counts = vec![3i64; len];
        let (noisy, receipt) =
            secure_release(&mut ledger, 0, &counts, 18, votes, &p, share).unwrap();
        assert_eq!(noisy.len(), len);
        assert!(noisy != counts, "noise was added");
        let charged = ledger.charges().unwrap();
        assert_eq!(charged.len(), 1);
        let floor = charged[0].floor_rho.unwrap();
        assert!(charged[0].rho <= rho && (floor / charged[0].rho - 7.0).abs() < 0.1);
        assert!(receipt.floor_epsilon_total.unwrap() > receipt.epsilon_total);
        assert_eq!(
            ledger.floor_epsilon_spent().unwrap(),
            receipt.floor_epsilon_total
        );
    }

    #[test]
    fn seven_shares_sum_to_the_target_variance() {
        let (len, honest, s) = (20_000, 7, 5.0);
        let release = ShareRelease::new(len, s).unwrap();
        let mut sum = vec![0i64; len];
        for _ in 0..honest {
            let share = release.invoke(&vec![0; len]).unwrap();
            for (t, v) in sum.iter_mut().zip(share) {
                *t += v;
            }
        }
        let mean = sum.iter().sum::<i64>() as f64 / len as f64;
        let var = sum.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (len - 1) as f64;
        let target = honest as f64 * s * s;
        assert!(
            (var / target - 1.0).abs() < 0.05,
            "variance {var} against {target}"
        );
        assert!(release.invoke(&[1, 2]).is_err());
    }
}
