//! The Gaussian release of a node's aggregated teacher votes.
//!
//! # Mechanism and its proof obligations
//!
//! A node partitions its private records into `k` disjoint teachers. For each of `queries`
//! public records every teacher casts a vote in `{v >= 0, sum v <= 1}` (a probability vector,
//! a one-hot vector, or zero when it abstains), and the node sums the `k` votes. Under
//! replace-one adjacency one private record lies in exactly one teacher, so it can change only
//! that teacher's votes. Two points of that set differ by at most `sqrt(2)` in L2 (its
//! diameter, the distance between two of its vertices `e_i`, `e_j`), so the whole
//! `queries x classes` matrix of sums moves by at most `sqrt(2 * queries)` in L2
//! ([`release_sensitivity`]).
//!
//! The matrix is released through OpenDP's `make_gaussian` over a sized
//! `VectorDomain<AtomDomain<f64>>` with `L2Distance<f64>` and `ZeroConcentratedDivergence`.
//! Its privacy map at `d_in = release_sensitivity(queries)` is the release's `rho`. OpenDP
//! rounds the inputs to multiples of `2^k` (here `k = -40`) and adds the worst-case rounding
//! error to `d_in` inside the map, so the `rho` already covers the discretisation.
//!
//! The caller must uphold: (1) the teachers are trained on disjoint subsets of the private
//! records, (2) every teacher's vote per query lies in `{v >= 0, sum v <= 1}`, and (3) the sums
//! passed in are exactly the sums of those vectors. The guarantee covers nothing else.
//!
//! Noise is drawn only by OpenDP; `rho` comes only from OpenDP's privacy map, and the `rho`
//! charged to the ledger is read from the same `Measurement` that then draws the noise.

use opendp::{
    core::Measurement,
    domains::{AtomDomain, VectorDomain},
    measurements::make_gaussian,
    measures::ZeroConcentratedDivergence,
    metrics::L2Distance,
    traits::{InfCast, InfMul, InfSqrt},
};

use super::search::{self, Boundary, Side};
use super::{Charge, PrivacyError, PrivacyLedger, Receipt};
pub use fd_protocol::Projection;

/// OpenDP's noise granularity: noise is a multiple of `2^GRANULARITY_K` (about 9.1e-13).
///
/// OpenDP's default (the smallest subnormal step, `2^-1074`) makes every sample a huge-integer
/// computation; `2^-40` is about ten times faster and far finer than anything the soft labels
/// need. The price is an increase of the sensitivity by `2^-40 * sqrt(len)`, which OpenDP adds
/// inside the privacy map (a relative cost in `rho` of order `1e-11` here).
const GRANULARITY_K: i32 = -40;

/// The OpenDP measurement a release runs: Gaussian noise on a fixed-length `f64` vector.
type GaussianMeasurement = Measurement<
    VectorDomain<AtomDomain<f64>>,
    L2Distance<f64>,
    ZeroConcentratedDivergence,
    Vec<f64>,
>;

/// One Gaussian release, built once: its cost is read from the measurement's own privacy
/// map, and the same measurement draws the noise, so the `rho` charged is the `rho` of the
/// noise actually drawn.
pub(crate) struct PreparedRelease {
    measurement: GaussianMeasurement,
    len: usize,
    rho: f64,
}

impl PreparedRelease {
    /// Builds the measurement for `len` values with noise std `sigma` and reads its `rho` at
    /// `d_in = sensitivity`.
    pub(crate) fn new(
        len: usize,
        sensitivity: f64,
        sigma: f64,
    ) -> Result<PreparedRelease, PrivacyError> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(PrivacyError::InvalidParameter {
                what: "sigma",
                value: sigma,
                location: "privacy::mechanism (Gaussian release)",
                expected: "a finite noise standard deviation > 0",
            });
        }
        if !(sensitivity.is_finite() && sensitivity >= 0.0) {
            return Err(PrivacyError::InvalidParameter {
                what: "sensitivity",
                value: sensitivity,
                location: "privacy::mechanism (Gaussian release)",
                expected: "a finite L2 sensitivity >= 0",
            });
        }
        // A sized domain: OpenDP needs the length to bound the rounding to 2^k in L2.
        let domain = VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(len);
        let measurement = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            domain,
            L2Distance::<f64>::default(),
            sigma,
            Some(GRANULARITY_K),
        )
        .map_err(|e| PrivacyError::opendp("building the Gaussian measurement", e))?;
        let rho = measurement
            .map(&sensitivity)
            .map_err(|e| PrivacyError::opendp("evaluating the Gaussian privacy map", e))?;
        Ok(PreparedRelease {
            measurement,
            len,
            rho,
        })
    }

    /// The zCDP cost of one invocation, from the measurement's privacy map.
    pub(crate) fn rho(&self) -> f64 {
        self.rho
    }

    /// Draws the noise: returns `values` plus OpenDP Gaussian noise.
    pub(crate) fn invoke(&self, values: &[f64]) -> Result<Vec<f64>, PrivacyError> {
        if values.len() != self.len {
            return Err(PrivacyError::InvalidShape {
                len: values.len(),
                classes: self.len,
                location: "privacy::mechanism (the release was built for a different length)",
            });
        }
        check_finite(values, "privacy::mechanism::gaussian_release")?;
        self.measurement
            .invoke(&values.to_vec())
            .map_err(|e| PrivacyError::opendp("drawing Gaussian noise", e))
    }
}

/// Fails on the first NaN or infinite value: the domain's guarantee covers finite inputs only.
fn check_finite(values: &[f64], location: &'static str) -> Result<(), PrivacyError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(PrivacyError::NonFiniteInput {
            index,
            value: values[index],
            location,
        }),
        None => Ok(()),
    }
}

/// L2 sensitivity of releasing the sums of `k` teachers' probability vectors for `queries`
/// public records under replace-one adjacency: `sqrt(2 * queries)`.
///
/// One private record changes one teacher, and that teacher's probability vector for each
/// query moves by at most `sqrt(2)` in L2, so the `queries` rows together move by at most
/// `sqrt(2 * queries)`.
///
/// The result rounds *up*: `2 * queries` is converted and multiplied with OpenDP's
/// upward-rounding `inf_cast`/`inf_mul` and the root is taken with OpenDP's `inf_sqrt`, which
/// returns the smallest `f64` that is `>= sqrt(2 * queries)`. A sensitivity rounded to
/// nearest could be one ulp *below* the true one, and the privacy map would then understate
/// `rho`; rounding up can only overstate it. If OpenDP cannot represent the value the result
/// is `+inf`, which makes the release's cost infinite and so refused.
pub fn release_sensitivity(queries: usize) -> f64 {
    f64::inf_cast(queries)
        .and_then(|q| q.inf_mul(&2.0))
        .and_then(|squared| squared.inf_sqrt())
        .unwrap_or(f64::INFINITY)
}

/// The zCDP cost (`rho`) of one Gaussian release of `len` values with L2 sensitivity
/// `sensitivity` and noise std `sigma`.
///
/// Read from OpenDP's privacy map of the same measurement [`gaussian_release`] uses to add
/// the noise (sized domain of `len`, granularity `2^-40`), at `d_in = sensitivity`. It is never
/// below the textbook `sensitivity^2 / (2 sigma^2)`: OpenDP rounds up and adds the rounding
/// error of the discretisation to the sensitivity.
pub fn release_rho(len: usize, sensitivity: f64, sigma: f64) -> Result<f64, PrivacyError> {
    Ok(PreparedRelease::new(len, sensitivity, sigma)?.rho())
}

/// Adds Gaussian noise of std `sigma` to `values` with OpenDP's `make_gaussian` (zCDP, sized
/// vector domain of `values.len()`, `k = -40`), and returns the noisy values with the `rho`
/// from that measurement's privacy map at `d_in = sensitivity`.
///
/// This draws noise without charging a ledger; a node's rounds go through
/// [`private_release`], which charges first.
pub fn gaussian_release(
    values: &[f64],
    sensitivity: f64,
    sigma: f64,
) -> Result<(Vec<f64>, f64), PrivacyError> {
    check_finite(values, "privacy::mechanism::gaussian_release")?;
    let release = PreparedRelease::new(values.len(), sensitivity, sigma)?;
    let noisy = release.invoke(values)?;
    Ok((noisy, release.rho()))
}

/// [`Projection`] with a renormalised row: clamp each value at `floor` and rescale to sum 1.
pub fn to_simplex(noisy: &[f64], classes: usize, floor: f64) -> Vec<f32> {
    Projection {
        floor,
        full_mass: None,
    }
    .apply(noisy, classes)
}

/// Smallest `sigma` such that a release of `len` values with `sensitivity` costs at most
/// `rho` according to [`release_rho`] (OpenDP's map).
///
/// Found by bisection on the bit patterns of positive `f64`s (ordered like their values), so
/// it ends on two adjacent floats `lo < hi` with `release_rho(hi) <= rho < release_rho(lo)`,
/// and returns `hi`: the answer is always on the affordable side. No closed-form formula is
/// used. Errors if `rho <= 0` or is not finite, or if `sensitivity` is not finite and `> 0`.
pub fn sigma_for_rho(len: usize, sensitivity: f64, rho: f64) -> Result<f64, PrivacyError> {
    const LOCATION: &str = "privacy::mechanism::sigma_for_rho";
    if !(rho.is_finite() && rho > 0.0) {
        return Err(PrivacyError::InvalidParameter {
            what: "rho",
            value: rho,
            location: LOCATION,
            expected: "a finite zCDP budget > 0",
        });
    }
    if !(sensitivity.is_finite() && sensitivity > 0.0) {
        return Err(PrivacyError::InvalidParameter {
            what: "sensitivity",
            value: sensitivity,
            location: LOCATION,
            expected: "a finite L2 sensitivity > 0",
        });
    }
    let affordable = |sigma: f64| -> Result<bool, PrivacyError> {
        Ok(release_rho(len, sensitivity, sigma)? <= rho)
    };
    // The smallest sigma that is affordable.
    match search::boundary(affordable, Side::Above)? {
        Boundary::At(sigma) => Ok(sigma),
        Boundary::Zero => Err(PrivacyError::NoSolution {
            what: "sigma",
            detail: format!("every sigma > 0 costs at most rho = {rho}"),
        }),
        Boundary::Infinity => Err(PrivacyError::NoSolution {
            what: "sigma",
            detail: format!("no finite sigma brings the cost down to rho = {rho}"),
        }),
    }
}

/// One round's private release of the teachers' aggregated votes.
///
/// `sums` holds the sums of the teachers' probability vectors, row-major, `queries x classes`;
/// `sigma` is the noise std. In this order, and only in this order:
///
/// 1. build OpenDP's Gaussian measurement for `sums.len()` values and read its `rho` at
///    `d_in = release_sensitivity(queries)`;
/// 2. [`PrivacyLedger::charge`] that `rho` (durable before it returns);
/// 3. only then invoke the same measurement to draw the noise;
/// 4. project the noisy rows onto the simplex ([`to_simplex`]).
///
/// If the ledger refuses (budget exhausted) or any check fails, no noise is drawn and only the
/// error is returned. If drawing the noise fails after the charge, the budget stays spent
/// (the conservative side) and nothing is released. The caller may send the labels only
/// after this returns `Ok`.
pub fn private_release(
    ledger: &mut PrivacyLedger,
    round: u32,
    sums: &[f64],
    classes: usize,
    sigma: f64,
    projection: &Projection,
) -> Result<(Vec<f32>, Receipt), PrivacyError> {
    const LOCATION: &str = "privacy::private_release";
    if classes == 0 || sums.is_empty() || !sums.len().is_multiple_of(classes) {
        return Err(PrivacyError::InvalidShape {
            len: sums.len(),
            classes,
            location: LOCATION,
        });
    }
    check_finite(sums, LOCATION)?;
    let queries = sums.len() / classes;
    let sensitivity = release_sensitivity(queries);
    let release = PreparedRelease::new(sums.len(), sensitivity, sigma)?;
    let queries = u32::try_from(queries).map_err(|_| PrivacyError::InvalidShape {
        len: sums.len(),
        classes,
        location: "privacy::private_release (more than u32::MAX queries)",
    })?;
    let receipt = ledger.charge(Charge {
        round,
        queries,
        sigma,
        sensitivity,
        rho: release.rho(),
        floor_rho: None,
    })?;
    let noisy = release.invoke(sums)?;
    Ok((projection.apply(&noisy, classes), receipt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::{Budget, PrivacyError, PrivacyLedger, epsilon_for};
    use opendp::combinators::{make_fix_delta, make_zCDP_to_approxDP};

    fn mean_std(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn privacy_sensitivity_rounds_up_and_is_tight() {
        // sqrt(2 * 2) = 2 exactly and sqrt(2 * 8) = 4 exactly: no rounding needed.
        assert_eq!(release_sensitivity(2), 2.0);
        assert_eq!(release_sensitivity(8), 4.0);
        // Zero queries: nothing can change.
        assert_eq!(release_sensitivity(0), 0.0);
        for q in 1..=2000usize {
            let s = release_sensitivity(q);
            let x = 2.0 * q as f64; // exact below 2^53
            // s*s - x computed with one rounding (fma): its sign is exact. s >= sqrt(x) ...
            assert!(s.mul_add(s, -x) >= 0.0, "q = {q}: {s} is below sqrt({x})");
            // ... and the next float down is below sqrt(x): s is the smallest such float.
            let below = f64::from_bits(s.to_bits() - 1);
            assert!(below.mul_add(below, -x) < 0.0, "q = {q}: {s} is not tight");
        }
    }

    #[test]
    fn privacy_gaussian_noise_has_the_calibrated_std() {
        // 20_000 draws at sigma 3.0 (from the brief). The std of a sample std is about
        // sigma / sqrt(2n) = 3 / 200 = 0.015 (0.5 %), so a 5 % band is ~10 standard errors:
        // it fails for a mis-scaled sigma, not by chance.
        let sigma = 3.0;
        let n = 20_000;
        // Varying inputs, as teacher sums would be: 0.0, 0.5, ..., 4.5 repeating.
        let input: Vec<f64> = (0..n).map(|i| (i % 10) as f64 * 0.5).collect();
        let start = std::time::Instant::now();
        let (noisy, rho) = gaussian_release(&input, 1.0, sigma).expect("release");
        eprintln!("20000 Gaussian draws took {:?}", start.elapsed());
        assert_eq!(noisy.len(), n);
        let diff: Vec<f64> = noisy.iter().zip(&input).map(|(y, x)| y - x).collect();
        let (mean, std) = mean_std(&diff);
        eprintln!("noise mean {mean}, std {std}, rho {rho}");
        assert!(
            (std - sigma).abs() <= 0.05 * sigma,
            "std {std} vs sigma {sigma}"
        );
        // Standard error of the mean is sigma / sqrt(n) = 0.021; 0.1 is ~4.7 standard errors.
        assert!(mean.abs() < 0.1, "mean {mean}");
        // The noise is not degenerate: at sigma 3 about 1/(3 sqrt(2 pi)) of mass lies within
        // +-0.5 of 0, so almost every draw differs from its input.
        assert!(diff.iter().filter(|d| **d == 0.0).count() < 10);
    }

    #[test]
    fn privacy_release_rho_matches_textbook_from_above() {
        // Sanity check only (the code never uses this formula): Gaussian zCDP cost is
        // rho = Delta^2 / (2 sigma^2) (Bun & Steinke 2016, Prop 1.6). OpenDP's map adds the
        // 2^-40 rounding (relative ~1e-11 here) and rounds up, so it must be >= and close.
        for (queries, classes, sigma) in [(1usize, 10usize, 1.0), (100, 10, 5.0), (500, 3, 20.0)] {
            let len = queries * classes;
            let delta_2 = release_sensitivity(queries);
            let ours = release_rho(len, delta_2, sigma).expect("rho");
            let textbook = delta_2 * delta_2 / (2.0 * sigma * sigma);
            eprintln!(
                "queries {queries} classes {classes} sigma {sigma}: rho {ours} (textbook {textbook})"
            );
            assert!(ours >= textbook, "{ours} < textbook {textbook}");
            // 1e-9 relative: far above the ~1e-11 rounding term, far below any real error.
            assert!((ours - textbook) / textbook < 1e-9, "{ours} vs {textbook}");
        }
        // gaussian_release reports the same rho as release_rho for the same parameters.
        let values = vec![0.25; 30];
        let (_, rho) = gaussian_release(&values, release_sensitivity(3), 2.0).expect("release");
        assert_eq!(
            rho,
            release_rho(30, release_sensitivity(3), 2.0).expect("rho")
        );
    }

    #[test]
    fn privacy_epsilon_for_agrees_with_opendp_combinator_chain() {
        // epsilon_for(rho) must equal what make_zCDP_to_approxDP + make_fix_delta give for the
        // real Gaussian measurement whose map gives that rho.
        let (queries, classes, sigma, delta) = (50usize, 10usize, 8.0, 1e-5);
        let sens = release_sensitivity(queries);
        let domain =
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(queries * classes);
        let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            domain,
            L2Distance::<f64>::default(),
            sigma,
            Some(GRANULARITY_K),
        )
        .expect("gaussian");
        let m = make_fix_delta(&make_zCDP_to_approxDP(m).expect("cast"), delta).expect("fix");
        let (eps_chain, delta_chain) = m.map(&sens).expect("map");
        let rho = release_rho(queries * classes, sens, sigma).expect("rho");
        let eps = epsilon_for(rho, delta).expect("eps");
        eprintln!("rho {rho}: epsilon {eps} (chain {eps_chain}) at delta {delta_chain}");
        assert_eq!(eps, eps_chain);
        assert_eq!(delta_chain, delta);
    }

    #[test]
    fn privacy_sigma_for_rho_is_tight_and_affordable() {
        for (len, sens, rho) in [
            (10usize, 1.0, 0.1),
            (1000, release_sensitivity(100), 0.01),
            (4, 3.0, 2.0),
        ] {
            let sigma = sigma_for_rho(len, sens, rho).expect("sigma");
            let got = release_rho(len, sens, sigma).expect("rho");
            eprintln!("len {len} sens {sens} rho {rho}: sigma {sigma} costs {got}");
            assert!(got <= rho, "{got} > {rho}");
            // Within 0.1 % (from the brief); bisection ends on adjacent floats, so ~1e-15.
            assert!(got >= rho * (1.0 - 1e-3), "{got} much below {rho}");
            // And the next float down is too expensive: sigma is the smallest.
            let below = f64::from_bits(sigma.to_bits() - 1);
            assert!(release_rho(len, sens, below).expect("rho") > rho);
        }
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                sigma_for_rho(10, 1.0, bad),
                Err(PrivacyError::InvalidParameter { what: "rho", .. })
            ));
        }
    }

    #[test]
    fn privacy_rejects_bad_release_parameters() {
        assert!(matches!(
            release_rho(10, 1.0, 0.0),
            Err(PrivacyError::InvalidParameter { what: "sigma", .. })
        ));
        assert!(matches!(
            release_rho(10, f64::NAN, 1.0),
            Err(PrivacyError::InvalidParameter {
                what: "sensitivity",
                ..
            })
        ));
        assert!(matches!(
            gaussian_release(&[1.0, f64::NAN], 1.0, 1.0),
            Err(PrivacyError::NonFiniteInput { index: 1, .. })
        ));
    }

    #[test]
    fn privacy_to_simplex_clamps_and_normalises() {
        // Row 1: [-1, 1, 3] -> clamp [0, 1, 3] -> sum 4 -> [0, 0.25, 0.75].
        // Row 2: all negative -> uniform 1/3.
        // Row 3: [2, 2, 0] -> [0.5, 0.5, 0].
        let noisy = [-1.0, 1.0, 3.0, -0.5, -2.0, -0.1, 2.0, 2.0, 0.0];
        let out = to_simplex(&noisy, 3, 0.0);
        let expected = [
            0.0,
            0.25,
            0.75,
            1.0 / 3.0,
            1.0 / 3.0,
            1.0 / 3.0,
            0.5,
            0.5,
            0.0,
        ];
        assert_eq!(out.len(), 9);
        for (got, want) in out.iter().zip(expected) {
            assert!((*got as f64 - want).abs() < 1e-7, "{out:?}");
        }
        for row in out.chunks(3) {
            assert!(row.iter().all(|p| *p >= 0.0));
            // f32 rounding of three terms: within a few ulps of 1.
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!(to_simplex(&noisy, 0, 0.0).is_empty());
    }

    /// The coordinator's mean of vote-mass rows ranks classes exactly as the nodes' summed
    /// votes do, whatever each node's own total.
    #[test]
    fn privacy_vote_mass_rows_average_to_summed_votes() {
        let sigma = 2.0;
        let p = Projection::vote_mass(10, 3, sigma);
        // B = 8, F = 10 + 24 + 6 * sqrt(3).
        let f = 10.0 + 24.0 + 6.0 * 3f64.sqrt();
        assert_eq!(p.floor, -8.0);
        assert!((p.full_mass.unwrap() - f).abs() < 1e-12);
        // Node A: 9 of 10 teachers voted class 0; node B: 2 voted class 1 (noise included).
        // Normalised rows would give class 1 the larger mean (1.0 + 0.0 vs 0.9 + 0.1).
        let a = p.apply(&[9.0, 1.0, 0.0], 3);
        let b = p.apply(&[0.0, 2.0, 0.0], 3);
        let mean: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(x + y) / 2.0)
            .collect();
        // Summed votes: [9, 3, 0].
        assert!(mean[0] > mean[1] && mean[1] > mean[2], "{mean:?}");
        // Differences between classes are the vote differences over 2F.
        assert!(
            (mean[0] - mean[1] - 6.0 / (2.0 * f)).abs() < 1e-6,
            "{mean:?}"
        );
        for row in a.chunks(3).chain(b.chunks(3)) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn privacy_projection_with_full_mass_keeps_vote_counts() {
        // 4 teachers, 3 classes. Row 1: [2, 1, 0] of 4 -> [0.5, 0.25, 0] + 0.25/3 each.
        // Row 2: noise pushed the sum to 5 > 4 -> plain renormalising: [0.8, 0.2, 0].
        // Row 3: nothing above 0 -> uniform.
        let p = Projection {
            floor: 0.0,
            full_mass: Some(4.0),
        };
        let out = p.apply(&[2.0, 1.0, -0.5, 4.0, 1.0, 0.0, -1.0, 0.0, -2.0], 3);
        let r = 0.25 / 3.0;
        let expected = [
            0.5 + r,
            0.25 + r,
            r,
            0.8,
            0.2,
            0.0,
            1.0 / 3.0,
            1.0 / 3.0,
            1.0 / 3.0,
        ];
        for (got, want) in out.iter().zip(expected) {
            assert!((*got as f64 - want).abs() < 1e-7, "{out:?}");
        }
        // The mean of two nodes' rows ranks classes like their summed votes: node A voted
        // [3, 0, 0] of 4, node B [0, 1, 0] of 4. Renormalised rows would tie classes 0 and 1.
        let a = p.apply(&[3.0, 0.0, 0.0], 3);
        let b = p.apply(&[0.0, 1.0, 0.0], 3);
        let mean: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
        assert!(mean[0] > mean[1] && mean[1] > mean[2], "{mean:?}");
    }

    #[test]
    fn privacy_private_release_charges_then_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = Budget {
            epsilon: 10.0,
            delta: 1e-5,
        };
        let mut ledger =
            PrivacyLedger::open(&dir.path().join("l.sqlite"), budget, "data").expect("open");
        // 4 queries x 3 classes; each row sums to 5 (5 teachers).
        let sums = [5.0, 0.0, 0.0, 1.0, 2.0, 2.0, 0.0, 0.0, 5.0, 2.5, 2.5, 0.0];
        let (labels, receipt) =
            private_release(&mut ledger, 7, &sums, 3, 2.0, &Projection::PLAIN).expect("release");
        assert_eq!(labels.len(), 12);
        for row in labels.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let rho = release_rho(12, release_sensitivity(4), 2.0).expect("rho");
        assert_eq!(receipt.rho, rho);
        assert_eq!(receipt.round, 7);
        assert_eq!(receipt.sensitivity, release_sensitivity(4));
        assert_eq!(ledger.rho_spent().expect("spent"), rho);
        assert_eq!(ledger.charges().expect("charges")[0].queries, 4);
        // A malformed release is refused before anything is charged.
        assert!(matches!(
            private_release(&mut ledger, 8, &sums[..11], 3, 2.0, &Projection::PLAIN),
            Err(PrivacyError::InvalidShape { .. })
        ));
        assert!(matches!(
            private_release(
                &mut ledger,
                8,
                &[f64::INFINITY, 0.0],
                2,
                2.0,
                &Projection::PLAIN
            ),
            Err(PrivacyError::NonFiniteInput { .. })
        ));
        assert_eq!(ledger.charges().expect("charges").len(), 1);
    }
}
